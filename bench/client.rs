//! A blocking IMAP client made to read fast, for the benches that time single connections:
//! one large buffer, and no parsing beyond what finds the end of a response (line ends and
//! literal lengths), so the client is not the bottleneck. Plain TCP or TLS (trusting exactly
//! the server's own certificate).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::common::literal_len;

/// Every bench user's password.
pub const PASSWORD: &str = "secret";
/// Read buffer of the connections whose reading speed matters.
pub const FAST_BUFFER: usize = 1 << 20;
/// Read buffer of connections that read only short responses.
pub const SMALL_BUFFER: usize = 4 << 10;
/// How long any one read may take before the bench gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command's response consisted of.
pub struct Response {
    /// Everything read before the tagged status line (whose text may carry timings).
    pub bytes: u64,
    /// The literals' share of `bytes` (the message bodies of a FETCH).
    pub literal_bytes: u64,
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

pub struct Client {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    next_tag: u32,
}

impl Client {
    /// Connects over plain TCP, logs in and selects INBOX; panics if any of that fails.
    pub fn login(port: u16, user: &str, buffer: usize) -> Client {
        Client::login_over(port, None, user, buffer)
    }

    /// Like [`Client::login`], over TLS when `tls` is given.
    pub fn login_over(port: u16, tls: Option<&Tls>, user: &str, buffer: usize) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        let stream: Box<dyn Io> = match tls {
            Some(tls) => {
                let conn =
                    rustls::ClientConnection::new(tls.0.clone(), ServerName::try_from("localhost").expect("name"))
                        .expect("TLS client");
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
            None => Box::new(tcp),
        };
        let mut client = Client { stream, buf: vec![0; buffer], start: 0, end: 0, next_tag: 1 };
        let greeting = client.line().unwrap_or_else(|e| panic!("no greeting from port {port}: {e}"));
        assert!(greeting.starts_with(b"* OK"), "greeting: {}", String::from_utf8_lossy(&greeting));
        client.run(&format!("LOGIN {user} {PASSWORD}"));
        client.run("SELECT INBOX");
        client
    }

    /// Runs one command (without CRLF) and reads its response; panics unless it is OK.
    pub fn run(&mut self, command: &str) -> Response {
        self.run_bytes(format!("{command}\r\n").as_bytes())
    }

    /// Like `run` for a command given as bytes, CRLF and any literals included.
    pub fn run_bytes(&mut self, command: &[u8]) -> Response {
        let tag = format!("b{}", self.next_tag);
        self.next_tag += 1;
        // One write, so that a short command travels in one segment, as a real client's does.
        let line = [tag.as_bytes(), b" ", command].concat();
        if let Err(e) = self.stream.write_all(&line).and_then(|()| self.stream.flush()) {
            panic!("cannot send {tag}: {e}");
        }
        self.response(&tag).unwrap_or_else(|e| panic!("no response to {tag}: {e}"))
    }

    fn response(&mut self, tag: &str) -> io::Result<Response> {
        let mut response = Response { bytes: 0, literal_bytes: 0 };
        loop {
            let line = self.line()?;
            if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
                let status = &line[tag.len() + 1..];
                if !status.starts_with(b"OK") {
                    let text = String::from_utf8_lossy(status);
                    return Err(io::Error::other(format!("server said {}", text.trim_end())));
                }
                return Ok(response);
            }
            response.bytes += line.len() as u64;
            if let Some(n) = literal_len(&line) {
                self.skip(n as u64)?;
                response.bytes += n as u64;
                response.literal_bytes += n as u64;
            }
        }
    }

    /// The next line, CRLF included.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.buf[self.start..=self.start + i].to_vec();
                self.start += i + 1;
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// Consumes `n` bytes without looking at them.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let available = (self.end - self.start) as u64;
            if n <= available {
                self.start += n as usize;
                return Ok(());
            }
            n -= available;
            self.start = self.end;
            self.fill()?;
        }
    }

    /// Reads more after the unread bytes, moving or growing the buffer if they fill it.
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buf.len() {
                self.buf.resize(2 * self.buf.len(), 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..])? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }
}

/// A TLS client configuration that trusts exactly the certificates of a PEM file: the bench
/// knows which certificate each server presents (Dovecot's self-signed one, or the proxy's leaf
/// with its local CA). The proxy's own upstream configuration does just that for a `ca_file`.
pub struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    pub fn pinned(cert_pem: &Path) -> Tls {
        let configs = coi_proxy::tls::UpstreamTls::default();
        Tls(configs.config(Some(cert_pem)).unwrap_or_else(|e| panic!("{}: {e}", cert_pem.display())))
    }
}
