//! What every benchmark needs around the proxy: the release binary started in front of the
//! harness's Dovecot with a temporary proxy.toml, its ports read from its log, its CPU and memory
//! (and any other proxy's) read from /proc, the open-files limit raised for many sessions, and
//! the small statistics the reports share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `coi-proxy` process with its own state dir; killed on drop.
///
/// `COI_PROXY_BIN` in the environment starts another build instead of this crate's (to measure
/// a change without committing it); `COI_BENCH_WRAP` runs it under a tool that execs it in place, e.g.
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p` (see bench/README.md, Profiling);
/// such a proxy is ended with SIGTERM, so that the tool writes its output.
pub struct Proxy {
    child: Child,
    wrapped: bool,
    /// The plain IMAP listener.
    pub port: u16,
    /// The implicit-TLS IMAP listener, when the config has one.
    pub tls_port: Option<u16>,
    /// The plain submission listener, when the config has an SMTP provider.
    pub smtp_port: Option<u16>,
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy; `config` is the proxy.toml after `state_dir` (the `[upstream]`,
    /// `[listen]` and `[limits]` tables). Listeners should use port 0.
    pub fn start(config: &str) -> Proxy {
        // `COI_PROXY_BIN` runs another build (e.g. the one before a change) under the same bench.
        match std::env::var_os("COI_PROXY_BIN").filter(|b| !b.is_empty()) {
            Some(binary) => Proxy::start_binary(Path::new(&binary), config),
            None => Proxy::start_binary(Path::new(env!("CARGO_BIN_EXE_coi-proxy")), config),
        }
    }

    /// Like [`Proxy::start`] with another build of coi-proxy, to compare two in one run.
    pub fn start_binary(binary: &Path, config: &str) -> Proxy {
        let dir = tempfile::Builder::new().prefix("coi-proxy-bench.").tempdir().expect("temp dir");
        let config_path = dir.path().join("proxy.toml");
        let log = dir.path().join("proxy.log");
        let state = dir.path().join("state");
        fs::write(&config_path, format!("state_dir = {:?}\n{config}", state.display().to_string()))
            .expect("write proxy.toml");
        let (mut command, wrapped) = wrapped_command("COI_BENCH_WRAP", binary);
        let child = command
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
        let mut proxy = Proxy { child, wrapped, port: 0, tls_port: None, smtp_port: None, log, dir };
        // A tool such as valgrind starts it many times slower.
        let deadline = Instant::now() + Duration::from_secs(if wrapped { 300 } else { 20 });
        loop {
            let text = fs::read_to_string(&proxy.log).unwrap_or_default();
            let imap = listening_port(&text, "imap");
            let smtp = listening_port(&text, "smtp");
            if let (true, Some(imap)) = (text.contains("coi-proxy ready"), imap)
                && (smtp.is_some() || !wants_smtp)
            {
                proxy.port = imap;
                proxy.tls_port = listening_port(&text, "imaps");
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

    /// A KiB figure of /proc/PID/status, e.g. `VmRSS:` or `VmHWM:` (peak RSS).
    pub fn status_kib(&self, field: &str) -> u64 {
        status_kib(self.pid(), field)
    }

    /// The certificate the implicit-TLS listener presents (the proxy's own local CA issued it).
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.path().join("state/tls/cert.pem")
    }

    pub fn problems(&self) -> Vec<String> {
        log_problems(&self.log)
    }
}

impl Processes for Proxy {
    fn pids(&self) -> Vec<u32> {
        vec![self.pid()]
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A tool needs time to write its output; a plain proxy has nothing to save.
        stop(&mut self.child, self.wrapped.then_some(Duration::from_secs(120)));
    }
}

/// Ends a child the bench started: with `grace`, SIGTERM first and SIGKILL only if it has not
/// exited by then; without, SIGKILL at once.
pub fn stop(child: &mut Child, grace: Option<Duration>) {
    if let Some(grace) = grace {
        terminate(child.id());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A command for `program`, run under the tool (with arguments) that the environment variable
/// `wrap` names, if any, e.g. `valgrind --tool=massif`; and whether it is.
pub fn wrapped_command(wrap: &str, program: &Path) -> (Command, bool) {
    let wrap = std::env::var(wrap).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        Some(tool) => {
            let mut command = Command::new(tool);
            command.args(words).arg(program);
            (command, true)
        }
        None => (Command::new(program), false),
    }
}

/// The port of the `listening on 127.0.0.1:PORT (<kind>, ...)` log line.
fn listening_port(log: &str, kind: &str) -> Option<u16> {
    log.lines()
        .filter_map(|l| l.split_once("listening on ")?.1.split_once(&format!(" ({kind},")))
        .find_map(|(addr, _)| addr.rsplit(':').next()?.parse().ok())
}

/// What marks a warning or error line in the proxy's, Dovecot's and nginx's logs.
const PROBLEM_MARKERS: [&str; 8] = [" WARN ", " ERROR ", "Warning:", "Error:", "Fatal:", "Panic:", "[warn]", "[error]"];

/// The warning and error lines of a proxy, Dovecot or nginx log.
pub fn log_problems(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| PROBLEM_MARKERS.iter().any(|m| l.contains(m))).map(str::to_owned).collect()
}

/// Prints each log's problems at the end of a report: the distinct ones (first 10), with counts.
pub fn print_problems(logs: &[(&str, Vec<String>)]) {
    for (what, lines) in logs {
        if !lines.is_empty() {
            println!("\n{what} logged {} warnings/errors; distinct ones (first 10), with counts:", lines.len());
            for (text, count) in distinct(lines).iter().take(10) {
                println!("  {count:6} x {text}");
            }
        }
    }
}

/// Log lines grouped by their text from the severity marker on (dropping times, pids and
/// session ids), most frequent first, so that one repeated warning does not hide the others.
fn distinct(lines: &[String]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in lines {
        let at = PROBLEM_MARKERS.iter().filter_map(|m| line.find(m.trim())).min();
        *counts.entry(line[at.unwrap_or(0)..].to_owned()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
}

/// A target's verdict in a report.
pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Raises this process's limit of open files to at least `want`: it holds every session's
/// socket, and the proxy, nginx and Dovecot inherit the limit (the proxy needs two per session).
/// The hard limit is raised too where allowed (with CAP_SYS_RESOURCE), else the soft one as far
/// as the hard one lets it. Returns the limit now in force.
pub fn raise_fd_limit(want: u64) -> u64 {
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
    // SAFETY: plain libc calls on properly laid out structs that outlive them.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) != 0 || limit.cur >= want {
            return limit.cur;
        }
        if setrlimit(RLIMIT_NOFILE, &Rlimit { cur: want, max: limit.max.max(want) }) == 0 {
            return want;
        }
        let capped = Rlimit { cur: want.min(limit.max), max: limit.max };
        if setrlimit(RLIMIT_NOFILE, &capped) != 0 {
            return limit.cur;
        }
        if capped.cur < want {
            eprintln!("warning: open files limited to {} (the hard limit); {want} are needed", capped.cur);
        }
        capped.cur
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

/// The processes that do a proxy's work, whose CPU time and memory its figures count: the one
/// coi-proxy process, or nginx's workers.
pub trait Processes {
    fn pids(&self) -> Vec<u32>;

    /// VmRSS of all of them, KiB.
    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(|pid| status_kib(pid, "VmRSS:")).sum()
    }

    /// CPU time all of them have used so far.
    fn cpu_secs(&self) -> f64 {
        self.pids().into_iter().map(cpu_secs).sum()
    }
}

/// A process and its children, e.g. Dovecot's master and the services it starts.
pub struct Tree(pub u32);

impl Processes for Tree {
    fn pids(&self) -> Vec<u32> {
        let mut pids = children(self.0);
        pids.insert(0, self.0);
        pids
    }
}

/// Dovecot's processes: its master and the services it started.
pub fn dovecot(provider: &crate::provider::Provider) -> Tree {
    Tree(provider.env["PROVIDER_PID"].parse().expect("PROVIDER_PID"))
}

/// CPU time the calling thread has used so far (a bench's client runs on it).
pub fn thread_cpu_secs() -> f64 {
    schedstat_secs(Path::new("/proc/thread-self/schedstat"))
}

fn schedstat_secs(path: &Path) -> f64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0) as f64 / 1e9
}

/// A KiB figure of /proc/PID/status, e.g. `VmRSS:`.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// CPU time a process has used so far, all its threads: the scheduler's exact run time
/// (`/proc/PID/task/*/schedstat`, ns) rather than utime + stime, which count 10 ms ticks and
/// miss most of a short, busy FETCH.
pub fn cpu_secs(pid: u32) -> f64 {
    // A process that has exited counts nothing (Dovecot ends idle processes).
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks.filter_map(|t| Some(schedstat_secs(&t.ok()?.path().join("schedstat")))).sum()
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat")).ok().is_some_and(|stat| {
                // ppid is field 4, the second after the parenthesised command name.
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Sends SIGTERM to a process the bench started.
pub fn terminate(pid: u32) {
    signal(pid, 15);
}

/// Sends SIGINT to a process the bench started (a profiler then writes its summary).
pub fn interrupt(pid: u32) {
    signal(pid, 2);
}

fn signal(pid: u32, signal: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: a plain libc call; the pid is a child of this process, not yet reaped.
    unsafe {
        kill(pid as i32, signal);
    }
}

/// The open file descriptors of a process, and its limit (the `Max open files` soft limit).
pub fn fds(pid: u32) -> (usize, String) {
    let open = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let limit = fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into());
    (open, limit)
}

/// The load average, for the first line of a report: other work on this machine skews every
/// figure.
pub fn load_average() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A numeric environment variable, or `default`; the benches take their parameters this way
/// since `cargo bench` passes arguments awkwardly.
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

/// The length of the literal announced at the end of `line` (`{n}` or `{n+}` before CRLF).
pub fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// The value at rank `p` (0..=1) of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Bytes in MB (10^6), as throughput figures are given.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
