//! nginx's mail proxy in front of the same Dovecot, as the peer coi-proxy is measured against
//! (Debian `nginx-light` + `libnginx-mod-mail`): a private instance from a temporary config, with
//! `proxy_buffer 64k`, a plain and an implicit-TLS IMAP listener (nginx cannot speak TLS to its
//! backend), and its `auth_http` answered by a tiny HTTP responder in the bench that sends every
//! login to the Dovecot. Figures count nginx's worker processes (the master only supervises).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{Processes, children, log_problems, stop, wrapped_command};

const NGINX: &str = "/usr/sbin/nginx";
const MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";
/// Worker processes, one per core of the bench machine, as `worker_processes auto` would give.
const WORKERS: usize = 2;

pub struct Nginx {
    child: Child,
    /// Runs under a tool (`NGINX_BENCH_WRAP`), which needs time to write its output at the end.
    wrapped: bool,
    pub port: u16,
    pub tls_port: u16,
    pub log: PathBuf,
    /// Answers as long as nginx runs.
    _auth: AuthResponder,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Why nginx's mail proxy cannot run here, if it cannot.
    pub fn missing() -> Option<String> {
        let missing: Vec<&str> = [(NGINX, "nginx-light"), (MAIL_MODULE, "libnginx-mod-mail")]
            .into_iter()
            .filter(|(path, _)| !Path::new(path).exists())
            .map(|(_, package)| package)
            .collect();
        (!missing.is_empty()).then(|| format!("apt-get install {}", missing.join(" ")))
    }

    /// Starts nginx in front of Dovecot's plain IMAP port, for up to `connections` client
    /// connections (each also holds one to Dovecot); `cert` and `key` serve its TLS listener.
    pub fn start(dovecot_port: u16, cert: &Path, key: &Path, connections: usize) -> Nginx {
        let dir = tempfile::Builder::new().prefix("nginx-bench.").tempdir().expect("temp dir");
        let auth = AuthResponder::start(dovecot_port);
        let (port, tls_port) = (free_port(), free_port());
        let log = dir.path().join("error.log");
        // Either worker may get every connection: each must have room for all of them, twice.
        let worker_connections = 2 * connections + 64;
        let config = format!(
            "load_module {MAIL_MODULE};
pid {dir}/nginx.pid;
error_log {log} warn;
worker_processes {WORKERS};
worker_rlimit_nofile {nofile};
events {{ worker_connections {worker_connections}; }}
mail {{
    server_name localhost;
    auth_http 127.0.0.1:{auth}/auth;
    proxy_buffer 64k;
    proxy_pass_error_message on;
    imap_auth login plain;
    imap_capabilities IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{ listen 127.0.0.1:{port}; protocol imap; }}
    server {{ listen 127.0.0.1:{tls_port} ssl; protocol imap; }}
}}
",
            dir = dir.path().display(),
            log = log.display(),
            nofile = worker_connections + 64,
            auth = auth.port,
            cert = cert.display(),
            key = key.display(),
        );
        let config_path = dir.path().join("nginx.conf");
        fs::write(&config_path, config).expect("write nginx.conf");
        // As COI_BENCH_WRAP for coi-proxy: a tool that execs nginx in place, e.g. valgrind
        // (whose output then comes per worker process, as they are forked).
        let (mut command, wrapped) = wrapped_command("NGINX_BENCH_WRAP", Path::new(NGINX));
        let child = command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(&log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, wrapped, port, tls_port, log, _auth: auth, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(if wrapped { 300 } else { 20 });
        while !(greets(port) && nginx.pids().len() == WORKERS) {
            if let Some(status) = nginx.child.try_wait().expect("wait for nginx") {
                panic!("nginx exited ({status}):\n{}", fs::read_to_string(&nginx.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "nginx did not start:\n{}", nginx.problems().join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn problems(&self) -> Vec<String> {
        log_problems(&self.log)
    }
}

impl Processes for Nginx {
    fn pids(&self) -> Vec<u32> {
        children(self.child.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master only would leave the workers serving: ask for a fast shutdown
        // (SIGTERM), which takes the workers down too.
        stop(&mut self.child, Some(Duration::from_secs(if self.wrapped { 120 } else { 10 })));
    }
}

/// Whether an IMAP greeting comes from the port.
fn greets(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("* OK")
}

/// A port that was free a moment ago (nginx needs fixed ports in its config).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Answers nginx's `auth_http` requests: every login goes to the Dovecot (which checks the
/// password itself when nginx logs in there). One thread, one request per connection
/// (nginx speaks HTTP/1.0 to it).
struct AuthResponder {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AuthResponder {
    fn start(dovecot_port: u16) -> AuthResponder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the auth responder");
        let port = listener.local_addr().expect("auth responder port").port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        // A failed answer fails nginx's login, which the bench reports.
                        let _ = answer(stream, dovecot_port);
                    }
                }
            }
        });
        AuthResponder { port, stop, thread: Some(thread) }
    }
}

impl Drop for AuthResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request's head and sends the login to Dovecot.
fn answer(stream: TcpStream, dovecot_port: u16) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let response =
        format!("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: {dovecot_port}\r\n\r\n");
    reader.get_mut().write_all(response.as_bytes())
}
