//! A real etcd for a test (Debian's `etcd-server`): one member on two free loopback ports, a
//! private data directory, ready once `/health` says so; stopped (SIGTERM) and removed on drop.
//! `pause` / `resume` (SIGSTOP / SIGCONT) make it unreachable without losing its data.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary, or a panic that says how to get it.
pub fn require(binary: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let path = PathBuf::from(dir).join(binary);
        if path.exists() {
            return path;
        }
    }
    panic!("`{binary}` is not installed: run tests/setup-debian.sh (it installs {package})");
}

impl Etcd {
    pub fn start() -> Etcd {
        let binary = require("etcd", "etcd-server");
        let dir = tempfile::Builder::new().prefix("coi-etcd.").tempdir().unwrap();
        let mut etcd = Etcd { child: None, dir, client_port: free_port(), peer_port: free_port() };
        etcd.spawn(&binary);
        etcd
    }

    fn spawn(&mut self, binary: &PathBuf) {
        let (c, p) = (self.client_port, self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(binary)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{p}")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", &format!("t-{}", std::process::id())])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "etcd never became healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// `GET /health` says `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.client_port)) else { return false };
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut reply = String::new();
        let _ = tcp.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }

    /// Makes etcd unreachable (SIGSTOP): connections hang, as with a network cut.
    pub fn pause(&self) {
        super::proxy::signal(self.child.as_ref().unwrap().id(), 19);
    }

    pub fn resume(&self) {
        super::proxy::signal(self.child.as_ref().unwrap().id(), 18);
    }

    /// `etcdctl` against this etcd; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(require("etcdctl", "etcd-client"))
            .arg(format!("--endpoints={}", self.url()))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::proxy::signal(child.id(), 18);
            super::proxy::signal(child.id(), 15);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
