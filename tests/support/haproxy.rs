//! A real HAProxy in TCP mode in front of one or more coi-proxy instances, as a deployment of
//! many instances runs it (README, "Deployment: many instances"): frontends on free loopback
//! ports, every server line with `send-proxy-v2` and health checks (IMAP by `tcp-check`
//! greeting + LOGOUT, submission by `option smtpchk`, IMAPS the same IMAP check over TLS), an
//! admin socket for `show stat`. The config is checked with `haproxy -c -f` first, then run in
//! the foreground (`-db`); stopped on drop.
//!
//! ```ignore
//! let haproxy = Haproxy::start(&[("node-a", proxy.imap_port, proxy.smtp_port)]);
//! haproxy.wait_up("be_imap", "node-a", Duration::from_secs(10));
//! let client = TcpStream::connect(("127.0.0.1", haproxy.imap_port));
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the tests look for the binary (Debian's `haproxy` package).
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// One coi-proxy instance behind HAProxy: its listeners' ports.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The server name in HAProxy (`show stat`'s `svname`), e.g. `node-a`.
    pub name: String,
    pub imap: u16,
    pub smtp: u16,
    /// The implicit-TLS IMAP listener, when the test wants TLS end to end through HAProxy.
    pub imaps: Option<u16>,
}

impl Backend {
    pub fn new(name: &str, imap: u16, smtp: u16) -> Backend {
        Backend { name: name.to_string(), imap, smtp, imaps: None }
    }

    pub fn with_imaps(mut self, imaps: u16) -> Backend {
        self.imaps = Some(imaps);
        self
    }
}

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// The backend (`be_imap`, `be_smtp`, `be_imaps`).
    pub backend: String,
    pub server: String,
    /// `UP`, `DOWN`, `UP 1/2`, `no check`, …
    pub status: String,
    /// Sessions forwarded to this server so far.
    pub sessions: u64,
    /// The last check's result, e.g. `L7OK`, `L4CON`, `L7RSP`.
    pub check_status: String,
}

pub struct Haproxy {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub admin_socket: PathBuf,
    /// The frontends' ports on 127.0.0.1.
    pub imap_port: u16,
    pub smtp_port: u16,
    /// 0 unless a backend has `imaps`.
    pub imaps_port: u16,
}

impl Haproxy {
    /// HAProxy in front of `backends`: `(server name, IMAP port, submission port)` each.
    pub fn start(backends: &[(&str, u16, u16)]) -> Haproxy {
        let backends: Vec<Backend> = backends.iter().map(|(n, i, s)| Backend::new(n, *i, *s)).collect();
        Haproxy::start_with(&backends)
    }

    /// As [`Haproxy::start`], with IMAPS where a backend has it.
    pub fn start_with(backends: &[Backend]) -> Haproxy {
        assert!(!backends.is_empty(), "HAProxy needs at least one backend");
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: these tests run a real HAProxy; install it with tests/setup-debian.sh \
             (apt-get install haproxy; its system service stays off)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut haproxy = Haproxy {
            child: None,
            config_path: dir.path().join("haproxy.cfg"),
            log_path: dir.path().join("haproxy.log"),
            admin_socket: dir.path().join("admin.sock"),
            dir,
            imap_port: 0,
            smtp_port: 0,
            imaps_port: 0,
        };
        let mut last_error = String::new();
        // A free port found by binding port 0 may be taken again before HAProxy binds it.
        for _ in 0..3 {
            haproxy.imap_port = free_port();
            haproxy.smtp_port = free_port();
            haproxy.imaps_port = if backends.iter().any(|b| b.imaps.is_some()) { free_port() } else { 0 };
            std::fs::write(&haproxy.config_path, haproxy.config(backends)).expect("write haproxy.cfg");
            let check =
                Command::new(HAPROXY).arg("-c").arg("-f").arg(&haproxy.config_path).output().expect("haproxy -c");
            assert!(
                check.status.success(),
                "haproxy -c rejected the generated config:\n{}\n{}{}",
                std::fs::read_to_string(&haproxy.config_path).unwrap_or_default(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            match haproxy.spawn() {
                Ok(()) => return haproxy,
                Err(e) => last_error = e,
            }
        }
        panic!("HAProxy did not start: {last_error}");
    }

    /// The configuration for `backends` (scale-out.md, section 2, with this harness's ports).
    fn config(&self, backends: &[Backend]) -> String {
        let mut cfg = format!(
            "global\n    stats socket {} mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 35m\n    timeout server 35m\n    \
             timeout check 5s\n\n",
            self.admin_socket.display()
        );
        // IMAP: the greeting, then LOGOUT answered; `tcp-check` sends the PROXY header of the
        // server line first (the implicit connect takes its settings).
        let imap_check = "    option tcp-check\n    tcp-check expect string \"* OK\"\n    \
                          tcp-check send-binary 6863204c4f474f55540d0a\n    tcp-check expect string \"hc OK\"\n";
        let servers = |port: fn(&Backend) -> Option<u16>, extra: &str| {
            backends
                .iter()
                .filter_map(|b| port(b).map(|p| (b, p)))
                .map(|(b, p)| {
                    format!("    server {} 127.0.0.1:{p} send-proxy-v2 check inter 1s fall 2 rise 1{extra}\n", b.name)
                })
                .collect::<String>()
        };
        cfg.push_str(&format!(
            "frontend fe_imap\n    bind 127.0.0.1:{}\n    default_backend be_imap\n\n\
             backend be_imap\n    balance roundrobin\n{imap_check}{}\n",
            self.imap_port,
            servers(|b| Some(b.imap), "")
        ));
        cfg.push_str(&format!(
            "frontend fe_smtp\n    bind 127.0.0.1:{}\n    default_backend be_smtp\n\n\
             backend be_smtp\n    balance roundrobin\n    option smtpchk EHLO haproxy.test\n{}\n",
            self.smtp_port,
            servers(|b| Some(b.smtp), "")
        ));
        if self.imaps_port != 0 {
            // TLS stays end to end: HAProxy passes the bytes; only its checks speak TLS
            // (`check-ssl`, after the PROXY header) to see the greeting.
            cfg.push_str(&format!(
                "frontend fe_imaps\n    bind 127.0.0.1:{}\n    default_backend be_imaps\n\n\
                 backend be_imaps\n    balance roundrobin\n{imap_check}{}\n",
                self.imaps_port,
                servers(|b| b.imaps, " check-ssl verify none")
            ));
        }
        cfg
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log_path).expect("haproxy log");
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&self.config_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {HAPROXY}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("haproxy exited ({status}):\n{}", self.log()));
            }
            let ports = [self.imap_port, self.smtp_port, self.imaps_port];
            let bound =
                ports.iter().filter(|p| **p != 0).all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if bound && self.admin("show info").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("haproxy not ready after 10 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// HAProxy's own output (warnings, alerts; `-db` keeps it in the foreground).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// One command on the admin socket, e.g. `show stat`; its whole answer.
    pub fn admin(&self, command: &str) -> std::io::Result<String> {
        let mut socket = std::os::unix::net::UnixStream::connect(&self.admin_socket)?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        socket.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        socket.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The server rows of `show stat` (not the FRONTEND/BACKEND summary rows).
    pub fn stats(&self) -> Vec<ServerStat> {
        let text = self.admin("show stat").expect("show stat on the admin socket");
        parse_stat(&text)
    }

    /// The row of `server` in `backend`.
    pub fn stat(&self, backend: &str, server: &str) -> Option<ServerStat> {
        self.stats().into_iter().find(|s| s.backend == backend && s.server == server)
    }

    /// Waits until `server` in `backend` is UP with a passed check; panics with the last row
    /// and HAProxy's log otherwise.
    pub fn wait_up(&self, backend: &str, server: &str, timeout: Duration) -> ServerStat {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.stat(backend, server);
            if let Some(row) = &row
                && row.status == "UP"
                && row.check_status.starts_with('L')
                && row.check_status.ends_with("OK")
            {
                return row.clone();
            }
            assert!(Instant::now() < deadline, "{backend}/{server} not UP within {timeout:?}: {row:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops HAProxy (SIGTERM is not needed: it holds nothing to flush).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where the config and socket live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server rows of a `show stat` CSV (its first line names the columns after `# `).
pub fn parse_stat(text: &str) -> Vec<ServerStat> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else { return Vec::new() };
    let columns: Vec<&str> = head.trim_start_matches("# ").split(',').collect();
    let at = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status), Some(stot), Some(check)) =
        (at("pxname"), at("svname"), at("status"), at("stot"), at("check_status"))
    else {
        return Vec::new();
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > check.max(stot))
        .filter(|f| f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| ServerStat {
            backend: f[px].to_string(),
            server: f[sv].to_string(),
            status: f[status].to_string(),
            sessions: f[stot].parse().unwrap_or(0),
            check_status: f[check].to_string(),
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
