//! A real etcd for a test (Debian's `etcd-server`): one member on two free loopback ports, a
//! private data directory, ready once `/health` says so; stopped (SIGTERM) and removed on drop.
//! `pause` / `resume` (SIGSTOP / SIGCONT) make it unreachable without losing its data.
//! `start_tls` serves clients over TLS only, with certificates made here ([`EtcdPki`]: a CA, a
//! server certificate for 127.0.0.1, a client certificate etcd requires).

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
    /// Where `/health` is served in plain HTTP (the client port, or a metrics port under TLS).
    health_port: u16,
    pub pki: Option<EtcdPki>,
}

/// The PEM files of a TLS etcd: its CA, and a client certificate and key signed by it.
pub struct EtcdPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, which signed nothing etcd serves (a client trusting it must fail).
    pub other_ca: PathBuf,
}

impl EtcdPki {
    fn new(dir: &std::path::Path) -> EtcdPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("test etcd CA");
        let (other_pem, _) = ca("unrelated CA");
        let leaf = |names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(&["127.0.0.1", "localhost"]);
        let (client_cert, client_key) = leaf(&["coi-proxy"]);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        EtcdPki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other_pem),
        }
    }
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
        let client_port = free_port();
        let mut etcd =
            Etcd { child: None, dir, client_port, peer_port: free_port(), health_port: client_port, pki: None };
        etcd.spawn(&binary);
        etcd
    }

    /// Clients over TLS only, each with a client certificate signed by the test CA.
    pub fn start_tls() -> Etcd {
        let binary = require("etcd", "etcd-server");
        let dir = tempfile::Builder::new().prefix("coi-etcd.").tempdir().unwrap();
        let pki = EtcdPki::new(dir.path());
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            health_port: free_port(),
            pki: Some(pki),
        };
        etcd.spawn(&binary);
        etcd
    }

    fn spawn(&mut self, binary: &PathBuf) {
        let (c, p) = (self.client_port, self.peer_port);
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        let mut tls: Vec<String> = Vec::new();
        if let Some(pki) = &self.pki {
            let path = |p: &PathBuf| p.to_str().unwrap().to_string();
            tls.extend(["--cert-file".into(), path(&pki.server_cert), "--key-file".into(), path(&pki.server_key)]);
            tls.extend(["--trusted-ca-file".into(), path(&pki.ca), "--client-cert-auth".into()]);
            tls.extend(["--listen-metrics-urls".into(), format!("http://127.0.0.1:{}", self.health_port)]);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(binary)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &format!("{scheme}://127.0.0.1:{c}")])
            .args(["--advertise-client-urls", &format!("{scheme}://127.0.0.1:{c}")])
            .args(&tls)
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
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// `[cluster]`'s TLS keys for this etcd (nothing for a plain one).
    pub fn tls_config(&self) -> String {
        match &self.pki {
            Some(pki) => format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                pki.ca.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ),
            None => String::new(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// `GET /health` says `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.health_port)) else { return false };
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
        let mut tls: Vec<String> = Vec::new();
        if let Some(pki) = &self.pki {
            tls.push(format!("--cacert={}", pki.ca.display()));
            tls.push(format!("--cert={}", pki.client_cert.display()));
            tls.push(format!("--key={}", pki.client_key.display()));
        }
        let out = Command::new(require("etcdctl", "etcd-client"))
            .arg(format!("--endpoints={}", self.url()))
            .args(&tls)
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
