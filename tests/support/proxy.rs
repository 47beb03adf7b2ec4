//! Runs the real `coi-proxy` binary for a test: its own state dir and config, listeners on
//! port 0 (the harness reads the bound ports from the log), stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::imap_client::ImapClient;
use super::smtp_client::SmtpClient;

/// How to start a proxy.
#[derive(Clone)]
pub struct ProxyBuilder {
    upstream: Option<String>,
    upstream_smtp: Option<String>,
    listen_extra: String,
    extra: String,
    log_filter: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    state: Option<PathBuf>,
}

pub struct Proxy {
    child: Option<Child>,
    pub state_dir: tempfile::TempDir,
    /// The daemon's `state_dir` (`state_dir/state` unless the builder named another).
    pub state: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub imap_port: u16,
    pub imaps_port: u16,
    /// 0 unless a submission server is configured (`upstream_smtp`, or `smtp` in an account).
    pub smtp_port: u16,
    pub smtps_port: u16,
    /// 0 unless `[listen] metrics` is set (e.g. `.listen("metrics = \"127.0.0.1:0\"")`).
    pub metrics_port: u16,
    builder: ProxyBuilder,
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl ProxyBuilder {
    /// The provider every login goes to unless an `[[account]]` in `extra` says otherwise.
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = Some(url.into());
        self
    }
    /// `[upstream] smtp`: the provider's submission server (needs `upstream` too).
    pub fn upstream_smtp(mut self, url: impl Into<String>) -> Self {
        self.upstream_smtp = Some(url.into());
        self
    }
    /// Lines added to `[listen]`, e.g. `plaintext_auth = false`.
    pub fn listen(mut self, lines: &str) -> Self {
        self.listen_extra.push_str(lines);
        self.listen_extra.push('\n');
        self
    }
    /// TOML appended to the config (tables such as `[limits]` or `[[account]]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
    /// `RUST_LOG` for the proxy (default `debug`).
    pub fn log(mut self, filter: &str) -> Self {
        self.log_filter = filter.into();
        self
    }
    /// Arguments after `run`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
    /// The daemon's `state_dir` (default: `state` in the proxy's temporary directory).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state = Some(dir.to_path_buf());
        self
    }
    /// An environment variable for the daemon (e.g. `NOTIFY_SOCKET`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn start(self) -> Proxy {
        let state_dir = tempfile::Builder::new().prefix("coi-proxy-test.").tempdir().expect("temp dir");
        let config_path = state_dir.path().join("proxy.toml");
        let log_path = state_dir.path().join("proxy.log");
        let state = self.state.clone().unwrap_or_else(|| state_dir.path().join("state"));
        let mut proxy = Proxy {
            child: None,
            state_dir,
            state,
            config_path,
            log_path,
            imap_port: 0,
            imaps_port: 0,
            smtp_port: 0,
            smtps_port: 0,
            metrics_port: 0,
            builder: self,
        };
        proxy.write_config();
        proxy.spawn();
        proxy
    }
}

impl Proxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder {
            upstream: None,
            upstream_smtp: None,
            listen_extra: String::new(),
            extra: String::new(),
            log_filter: "debug".into(),
            args: Vec::new(),
            env: Vec::new(),
            state: None,
        }
    }

    /// A proxy in front of one plain loopback provider port.
    pub fn for_port(imap_port: u16) -> Proxy {
        Proxy::builder().upstream(format!("imap://127.0.0.1:{imap_port}")).start()
    }

    fn write_config(&self) {
        let mut toml = format!("state_dir = {:?}\n", self.state.display().to_string());
        if let Some(up) = &self.builder.upstream {
            toml.push_str(&format!("[upstream]\nimap = {up:?}\n"));
            if let Some(smtp) = &self.builder.upstream_smtp {
                toml.push_str(&format!("smtp = {smtp:?}\n"));
            }
        }
        toml.push_str("[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n");
        toml.push_str("smtp = \"127.0.0.1:0\"\nsmtps = \"127.0.0.1:0\"\n");
        toml.push_str(&self.builder.listen_extra);
        toml.push_str(&self.builder.extra);
        std::fs::write(&self.config_path, toml).expect("write config");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let start_len = std::fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0) as usize;
        let child = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .args(&self.builder.args)
            .env("RUST_LOG", &self.builder.log_filter)
            .envs(self.builder.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn coi-proxy");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log();
            let new = &text[start_len.min(text.len())..];
            if new.contains("coi-proxy ready") {
                self.imap_port = port_after(new, "(imap,").unwrap_or(0);
                self.imaps_port = port_after(new, "(imaps,").unwrap_or(0);
                self.smtp_port = port_after(new, "(smtp,").unwrap_or(0);
                self.smtps_port = port_after(new, "(smtps,").unwrap_or(0);
                self.metrics_port = port_after(new, "(metrics,").unwrap_or(0);
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("coi-proxy exited early ({status}):\n{new}");
            }
            if Instant::now() > deadline {
                panic!("coi-proxy did not become ready:\n{new}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts the daemon with the same config and state (ports change).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle` (panics after `timeout`).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("log never showed {needle:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc_kill(child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A counter or gauge without labels from the metrics listener (`[listen] metrics`).
    pub fn metric(&self, name: &str) -> f64 {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics listener");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).unwrap();
        let prefix = format!("{name} ");
        let value = response.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        value.unwrap_or_else(|| panic!("no {name} in:\n{response}")).trim().parse().unwrap()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.state.join("tls/ca.pem")
    }

    /// A plain connection to the imap listener.
    pub fn connect(&self) -> ImapClient {
        ImapClient::connect(self.imap_port)
    }

    /// A plain connection to the smtp listener, greeting read.
    pub fn connect_smtp(&self) -> SmtpClient {
        SmtpClient::connect(self.smtp_port)
    }

    /// An implicit-TLS connection to the smtps listener, trusting the proxy's CA.
    pub fn connect_smtps(&self) -> SmtpClient<TlsStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.smtps_port)).expect("connect smtps");
        SmtpClient::from_stream(tls_client(tcp, &self.ca_path(), "localhost"))
    }

    /// An implicit-TLS connection to the imaps listener, trusting the proxy's CA.
    pub fn connect_tls(&self) -> ImapClient<TlsStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.imaps_port)).expect("connect imaps");
        ImapClient::from_stream(tls_client(tcp, &self.ca_path(), "localhost"))
    }
}

/// A TLS client stream over `tcp`, trusting only `ca` (the handshake completes on first use).
pub fn tls_client(tcp: TcpStream, ca: &Path, name: &str) -> TlsStream {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read CA");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.flush().unwrap();
    stream
}

use rustls::pki_types::pem::PemObject;

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    unsafe { libc_kill(pid as i32, signal) };
}

fn port_after(log: &str, marker: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("listening on") && l.contains(marker))?;
    let addr = line.split("listening on ").nth(1)?.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
