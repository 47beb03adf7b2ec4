//! What every benchmark needs around the proxy: the release binary started in front of the
//! harness's Dovecot with a temporary proxy.toml, its ports read from its log, its CPU and memory
//! read from /proc, and the open-files limit raised for many sessions.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `coi-proxy` process with its own state dir; killed on drop.
pub struct Proxy {
    child: Child,
    /// The plain IMAP listener.
    pub port: u16,
    /// The plain submission listener, when the config has an SMTP provider.
    pub smtp_port: Option<u16>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy; `config` is the proxy.toml after `state_dir` (the `[upstream]`,
    /// `[listen]` and `[limits]` tables). Listeners should use port 0.
    pub fn start(config: &str) -> Proxy {
        let dir = tempfile::Builder::new().prefix("coi-proxy-bench.").tempdir().expect("temp dir");
        let config_path = dir.path().join("proxy.toml");
        let log = dir.path().join("proxy.log");
        let state = dir.path().join("state");
        fs::write(&config_path, format!("state_dir = {:?}\n{config}", state.display().to_string()))
            .expect("write proxy.toml");
        // `COI_PROXY_BIN` runs another build (e.g. the one before a change) under the same bench.
        let binary =
            std::env::var_os("COI_PROXY_BIN").map_or(PathBuf::from(env!("CARGO_BIN_EXE_coi-proxy")), PathBuf::from);
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            // Warnings only, so logging costs nothing per session; the servers' own info lines
            // give the listening ports.
            .env("RUST_LOG", "warn,coi_proxy::app=info,coi_proxy::smtp::server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create proxy.log"))
            .spawn()
            .expect("spawn coi-proxy");
        let wants_smtp = config.contains("\nsmtp = ");
        let mut proxy = Proxy { child, port: 0, smtp_port: None, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&proxy.log).unwrap_or_default();
            let imap = listening_port(&text, "imap");
            let smtp = listening_port(&text, "smtp");
            if let (true, Some(imap)) = (text.contains("coi-proxy ready"), imap)
                && (smtp.is_some() || !wants_smtp)
            {
                proxy.port = imap;
                proxy.smtp_port = smtp;
                return proxy;
            }
            if let Some(status) = proxy.child.try_wait().expect("wait for coi-proxy") {
                panic!("coi-proxy exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "coi-proxy did not become ready:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time so far, in the kernel's 10 ms ticks (USER_HZ is 100 on Linux).
    pub fn cpu_secs(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read the proxy's stat");
        // utime and stime are fields 14 and 15; the command name before them is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("comm in /proc/PID/stat").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        ticks as f64 / 100.0
    }

    /// A KiB figure of /proc/PID/status, e.g. `VmRSS:` or `VmHWM:` (peak RSS).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read the proxy's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    pub fn problems(&self) -> Vec<String> {
        log_problems(&self.log)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of the `listening on 127.0.0.1:PORT (<kind>, ...)` log line.
fn listening_port(log: &str, kind: &str) -> Option<u16> {
    log.lines()
        .filter_map(|l| l.split_once("listening on ")?.1.split_once(&format!(" ({kind},")))
        .find_map(|(addr, _)| addr.rsplit(':').next()?.parse().ok())
}

/// The warning and error lines of a proxy or Dovecot log.
pub fn log_problems(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let markers = [" WARN ", " ERROR ", "Warning:", "Error:", "Fatal:", "Panic:"];
    text.lines().filter(|l| markers.iter().any(|m| l.contains(m))).map(str::to_owned).collect()
}

/// Raises this process's soft limit of open files to at least `want` (as far as the hard limit
/// allows): it holds every session's socket, and the proxy inherits the limit and needs two per
/// session.
pub fn raise_fd_limit(want: u64) {
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    unsafe extern "C" {
        fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7;
    let mut limit = Rlimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls on a properly laid out struct that outlives them.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) == 0 && limit.cur < want {
            let raised = Rlimit { cur: want.min(limit.max), max: limit.max };
            if setrlimit(RLIMIT_NOFILE, &raised) != 0 || raised.cur < want {
                eprintln!("warning: open files limited to {}; {want} are needed", raised.cur.max(limit.cur));
            }
        }
    }
}

/// xorshift64*: deterministic choices and test data without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A number from the environment, or `default`; panics on anything else.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

/// A comma-separated list of numbers from the environment, or `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name}={v}: not a list of numbers")))
            .collect(),
        Err(_) => default.to_vec(),
    }
}
