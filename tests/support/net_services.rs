//! Real DNS and HTTP servers on loopback for `coi-proxy setup` tests: dnsmasq answering SRV and
//! MX questions from its command line, and Python's http.server serving autoconfig files from a
//! directory. Each is stopped on drop; `None` (with a SKIPPED note) where the program is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dns {
    child: Child,
    _dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
}

impl Dns {
    /// dnsmasq on a free loopback port, authoritative-ish for `local_domains` (unknown names
    /// there get NXDOMAIN), with `records`: dnsmasq options such as
    /// `--srv-host=_imaps._tcp.example.org,localhost,993` or `--mx-host=example.net,mx.example,10`.
    pub fn start(local_domains: &[&str], records: &[String]) -> Option<Dns> {
        let Some(dnsmasq) = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| Path::new(p).exists())
        else {
            eprintln!(
                "SKIPPED: dnsmasq is not installed (apt-get install dnsmasq-base); the DNS steps were not tested"
            );
            return None;
        };
        let mut dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dnsmasq.log");
        for _ in 0..3 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut cmd = Command::new(dnsmasq);
            cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces"])
                .args(["--listen-address=127.0.0.1", "--conf-file=/dev/null"])
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .arg(format!("--log-facility={}", log.display()))
                .arg(format!("--port={port}"));
            if nix_is_root() {
                cmd.arg("--user=root");
            }
            for d in local_domains {
                cmd.arg(format!("--local=/{d}/"));
            }
            // dnsmasq reports a failed bind on stderr (before its log is open) and exits with 2.
            let errors = dir.path().join("dnsmasq.err");
            let stderr = std::fs::File::create(&errors).unwrap();
            cmd.args(records).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
            // Dropped (and so killed) on any panic below.
            let mut server =
                Dns { child: cmd.spawn().expect("spawn dnsmasq"), _dir: dir, addr: ([127, 0, 0, 1], port).into() };
            // Ready once it answers; a taken port makes it exit at once.
            let deadline = Instant::now() + Duration::from_secs(5);
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04test\x00\x00\x01\x00\x01";
            loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    let err = std::fs::read_to_string(&log).unwrap_or_default()
                        + &std::fs::read_to_string(&errors).unwrap_or_default();
                    // The free UDP port may be taken for TCP (dnsmasq binds both): try another.
                    if err.contains("in use") || status.code() == Some(2) {
                        dir = std::mem::replace(&mut server._dir, tempfile::tempdir().unwrap());
                        break;
                    }
                    panic!("dnsmasq exited ({status}): {err}");
                }
                let _ = probe.send_to(query, ("127.0.0.1", port));
                let mut buf = [0u8; 512];
                if probe.recv(&mut buf).is_ok() {
                    return Some(server);
                }
                assert!(Instant::now() < deadline, "dnsmasq did not answer on port {port}");
            }
        }
        panic!("no free port for dnsmasq");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `python3 -m http.server` over a directory of its own.
pub struct Web {
    child: Child,
    pub root: tempfile::TempDir,
    pub port: u16,
}

impl Web {
    pub fn start() -> Web {
        let root = tempfile::tempdir().unwrap();
        let log = root.path().join(".log");
        let child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        // Dropped (and so killed) on any panic below.
        let mut web = Web { child, root, port: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(port) = text.split("port ").nth(1).and_then(|r| r.split_whitespace().next()) {
                web.port = port.parse().expect("http.server port");
                return web;
            }
            assert!(Instant::now() < deadline, "http.server did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serves `text` at `path` (e.g. `/mail/config-v1.1.xml`).
    pub fn put(&self, path: &str, text: &str) -> PathBuf {
        let file = self.root.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        file
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
