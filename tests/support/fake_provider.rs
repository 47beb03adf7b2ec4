//! A scriptable fake IMAP provider on 127.0.0.1, for the faults a real Dovecot cannot be made to
//! commit on purpose: closing mid-literal, stalling, a 1 GB literal, garbage, broken TLS.
//!
//! Every accepted connection runs its own copy of the script in a thread (blocking std I/O).
//! When the script runs out, the connection is held open and drained until the proxy closes it,
//! so only an explicit [`Step::Close`] closes it. What happened is recorded in
//! [`FakeProvider::events`] instead of panicking, because a panic in a server thread would go
//! unnoticed; tests assert on the events.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One thing the fake does, in order.
#[derive(Clone)]
pub enum Step {
    /// Sends these bytes as they are.
    Send(Vec<u8>),
    /// Reads one line from the proxy and checks that its command (what follows the tag), or for
    /// an untagged line such as `DONE` the whole line, starts with this, case-insensitively; the
    /// first word is kept as the tag for [`Step::Reply`]. An empty prefix takes any line.
    Expect(&'static str),
    /// Sends `<tag of the last Expect> <text>\r\n`.
    Reply(&'static str),
    /// Closes the connection (TCP FIN; a TLS connection without close_notify).
    Close,
    /// Says nothing for this long.
    Stall(Duration),
    /// `* 1 FETCH (BODY[] {n}` and then n bytes, produced as they are written (never held in
    /// memory), then `)`. The count written so far is in [`FakeProvider::literal_sent`].
    HugeLiteral(u64),
    /// Performs the server side of a TLS handshake; everything after it is encrypted.
    Tls(Arc<rustls::ServerConfig>),
}

impl Step {
    pub fn send(text: &str) -> Step {
        Step::Send(text.as_bytes().to_vec())
    }
}

/// Greeting and LOGIN as the proxy performs them: no AUTH=PLAIN, so it uses LOGIN.
pub fn greet_and_login() -> Vec<Step> {
    vec![
        Step::send("* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] fake provider ready\r\n"),
        Step::Expect("LOGIN"),
        Step::Reply("OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] Logged in"),
    ]
}

pub struct FakeProvider {
    pub port: u16,
    events: Arc<Mutex<Vec<String>>>,
    literal_sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FakeProvider {
    /// Listens on a free loopback port and serves `script` to every connection.
    pub fn start(script: Vec<Step>) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake provider");
        let port = listener.local_addr().unwrap().port();
        let fake = FakeProvider { port, events: Arc::default(), literal_sent: Arc::default(), stop: Arc::default() };
        let (events, sent, stop) = (fake.events.clone(), fake.literal_sent.clone(), fake.stop.clone());
        std::thread::spawn(move || {
            for (n, tcp) in listener.incoming().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let (script, events, sent) = (script.clone(), events.clone(), sent.clone());
                std::thread::spawn(move || {
                    let note = |e: String| events.lock().unwrap().push(format!("connection {n}: {e}"));
                    note("accepted".into());
                    match run(tcp, &script, &sent) {
                        Ok(end) => note(end),
                        Err(e) => note(format!("error: {e}")),
                    }
                });
            }
        });
        fake
    }

    /// `imap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("imap://127.0.0.1:{}", self.port)
    }

    /// What happened so far, one line per event, each starting with `connection N:`.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until an event contains `needle`; panics with all events after `timeout`.
    pub fn wait_for_event(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e.contains(needle)) {
                return e;
            }
            assert!(std::time::Instant::now() < deadline, "fake provider never saw {needle:?}: {:?}", self.events());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bytes of the [`Step::HugeLiteral`] written to the proxy so far.
    pub fn literal_sent(&self) -> u64 {
        self.literal_sent.load(Ordering::SeqCst)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Gone,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Gone => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Gone => Err(ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Gone => Ok(()),
        }
    }
}

/// Runs one connection's script; the text says how it ended.
fn run(tcp: TcpStream, script: &[Step], sent: &AtomicU64) -> std::io::Result<String> {
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut conn = Conn::Plain(tcp);
    let mut pending = Vec::new();
    let mut tag = String::new();
    for step in script {
        match step {
            Step::Send(bytes) => conn.write_all(bytes).and_then(|()| conn.flush())?,
            Step::Expect(prefix) => {
                let line = read_line(&mut conn, &mut pending)?;
                let text = String::from_utf8_lossy(&line).into_owned();
                let mut words = text.splitn(2, ' ');
                tag = words.next().unwrap_or_default().to_string();
                let command = words.next().unwrap_or_default().to_ascii_uppercase();
                let prefix = prefix.to_ascii_uppercase();
                // A line without a tag (DONE, literal data) is matched as a whole.
                if !command.starts_with(&prefix) && !text.to_ascii_uppercase().starts_with(&prefix) {
                    return Ok(format!("expected {prefix}, got {:?}", text.trim_end()));
                }
            }
            Step::Reply(text) => conn.write_all(format!("{tag} {text}\r\n").as_bytes()).and_then(|()| conn.flush())?,
            Step::Close => {
                let tcp = match &conn {
                    Conn::Plain(s) => Some(s),
                    Conn::Tls(s) => Some(&s.sock),
                    Conn::Gone => None,
                };
                if let Some(tcp) = tcp {
                    let _ = tcp.shutdown(std::net::Shutdown::Both);
                }
                return Ok("closed by the script".into());
            }
            Step::Stall(d) => std::thread::sleep(*d),
            Step::HugeLiteral(n) => {
                conn.write_all(format!("* 1 FETCH (BODY[] {{{n}}}\r\n").as_bytes())?;
                let chunk = [b'x'; 64 * 1024];
                let mut left = *n;
                while left > 0 {
                    let len = left.min(chunk.len() as u64) as usize;
                    if let Err(e) = conn.write_all(&chunk[..len]) {
                        return Ok(format!("proxy gone after {} literal bytes: {e}", sent.load(Ordering::SeqCst)));
                    }
                    left -= len as u64;
                    sent.fetch_add(len as u64, Ordering::SeqCst);
                }
                conn.write_all(b")\r\n")?;
            }
            Step::Tls(config) => {
                let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Gone) else {
                    return Ok("TLS twice in one script".into());
                };
                let server = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
                let mut tls = rustls::StreamOwned::new(server, tcp);
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        return Ok(format!("TLS handshake failed: {e}"));
                    }
                }
                conn = Conn::Tls(Box::new(tls));
            }
        }
    }
    // Held open, and what the proxy sends is read and dropped, until it closes.
    let mut sink = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut sink) {
            Ok(0) => return Ok("script done; the proxy closed".into()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Ok(format!("script done; the proxy connection failed: {e}")),
        }
    }
}

/// Reads up to and including `\n`; bytes read past it stay in `pending`.
fn read_line(conn: &mut Conn, pending: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            return Ok(pending.drain(..=end).collect());
        }
        let mut chunk = [0u8; 4096];
        match conn.read(&mut chunk)? {
            0 => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "the proxy closed before a full line")),
            n => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A CA and a server certificate it signed, for TLS cases; the CA's PEM is written to a file to
/// use as `ca_file`.
pub struct TestPki {
    pub ca_file: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    /// A fresh CA, and a server certificate for `names` (DNS names or IP addresses).
    pub fn new(dir: &Path, names: &[&str]) -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "fake provider CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca_file = dir.join(format!("fake-ca-{}.pem", names.join("_")));
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TestPki { ca_file, server: Arc::new(server) }
    }
}
