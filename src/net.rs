//! One stream type for every connection the proxy holds, plain or TLS, so sessions can upgrade
//! with STARTTLS in place and the relay code is written once; opening one to a provider's
//! server (IMAP or SMTP): DNS, TCP, TLS, with errors that name the server, the cause and the
//! step that timed out; and a look at a client's first bytes, so that a listener can tell a
//! client in the wrong TLS mode so at once (a TLS hello on a plain port, plain text or silence on
//! an implicit-TLS port).

pub mod proxied;
pub mod proxy_header;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ServerUrl;
use crate::deflate::{Counters, Deflate};

/// Why the network under a provider connection (IMAP or SMTP) failed: while connecting, in
/// TLS, or later. The text is fit to show the user: it names the server and the cause, never a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot resolve {host}: {detail}")]
    Dns { host: String, detail: String },
    #[error("connection refused by {server}")]
    Refused { server: String },
    #[error("timed out {phase} {server}{}", if *phase == Phase::Greeting { " (connected; it sent nothing)" } else { "" })]
    Timeout { phase: Phase, server: String },
    #[error("cannot reach {server}: {detail}")]
    Network { server: String, detail: String },
    #[error("TLS with {server} failed: {detail}")]
    Tls { server: String, detail: String, problem: TlsProblem },
    #[error("{server} closed the connection")]
    Closed { server: String },
}

/// The step of opening a connection to a provider, so that a timeout says which one took too
/// long (connected but no greeting is a different mistake from no connection at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    TlsHandshake,
    Greeting,
    StartTls,
    Capabilities,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connecting => "connecting to",
            Phase::TlsHandshake => "in the TLS handshake with",
            Phase::Greeting => "waiting for the greeting of",
            Phase::StartTls => "in STARTTLS with",
            Phase::Capabilities => "waiting for the capabilities of",
        })
    }
}

/// What went wrong in a TLS handshake with a provider, for the fix to suggest (`check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server answered in plain text: a port without implicit TLS.
    NotTls,
    /// Its certificate chains to no trusted CA (or is self-signed).
    Untrusted,
    /// Its certificate names another host.
    WrongHost,
    Expired,
    /// The server closed the connection during the handshake.
    Closed,
    /// The local TLS setup (e.g. a `ca_file` that cannot be read).
    Setup,
    Other,
}

impl NetError {
    /// The cause, as `/metrics` labels it.
    pub fn cause(&self) -> &'static str {
        match self {
            NetError::Dns { .. } => "dns",
            NetError::Refused { .. } => "refused",
            NetError::Timeout { .. } => "timeout",
            NetError::Network { .. } => "network",
            NetError::Tls { .. } => "tls",
            NetError::Closed { .. } => "closed",
        }
    }
}

/// A TCP connection, possibly wrapped in TLS (as server towards clients, as client towards
/// providers).
pub enum Stream {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Any of the above with COMPRESS=DEFLATE on it (RFC 4978), once a side asked for it.
    Deflate(Box<Deflate<Stream>>),
    /// Only while an upgrade is in progress.
    Upgrading,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::ServerTls(_) | Stream::ClientTls(_) => true,
            Stream::Deflate(inner) => inner.get_ref().is_tls(),
            Stream::Plain(_) | Stream::Upgrading => false,
        }
    }

    /// Puts COMPRESS=DEFLATE on the stream; `already_read` are bytes read after the command
    /// that started it. The counters say how many bytes go over the wire.
    pub fn compress(self, already_read: &[u8]) -> (Stream, Arc<Counters>) {
        let deflate = Deflate::new(self, already_read, crate::deflate::LEVEL);
        let counters = deflate.counters();
        (Stream::Deflate(Box::new(deflate)), counters)
    }

    pub fn is_compressed(&self) -> bool {
        matches!(self, Stream::Deflate(_))
    }

    /// Takes the plain TCP stream out for a STARTTLS upgrade.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Upgrading) {
            Stream::Plain(tcp) => Some(tcp),
            other => {
                *self = other;
                None
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::ServerTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::ClientTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Deflate($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Upgrading => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS upgrade failed"))),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            Stream::Deflate(_) | Stream::Upgrading => false,
        }
    }
}

/// How long a client on an implicit-TLS listener may send nothing before it is taken for one
/// that waits for a plain greeting (set to STARTTLS or no security): TLS clients send their
/// hello right after connecting. Not shorter: on a lossy mobile link a lost hello is sent again
/// after about 1 s, and again 2 s later.
pub const TLS_HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// What a client sent first on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS ClientHello (a TLS handshake record).
    TlsHello,
    /// Something else: a plain-text protocol line.
    Text,
    /// Nothing within the wait: a client waiting for the server to speak first.
    Silent,
    /// The client closed the connection (or it failed).
    Closed,
}

/// Whether `first` (a connection's first bytes) starts a TLS handshake: a handshake record
/// (22) of a TLS 1.x/SSL 3 version.
pub fn is_tls_hello(first: &[u8]) -> bool {
    first.first() == Some(&0x16) && first.get(1).is_none_or(|major| *major == 0x03)
}

/// Looks at what a client sends first, without taking it from the socket, waiting at most
/// `wait`.
pub async fn first_bytes(tcp: &TcpStream, wait: std::time::Duration) -> FirstBytes {
    let mut buf = [0u8; 2];
    match tokio::time::timeout(wait, tcp.peek(&mut buf)).await {
        Err(_) => FirstBytes::Silent,
        Ok(Ok(0) | Err(_)) => FirstBytes::Closed,
        Ok(Ok(n)) if is_tls_hello(&buf[..n]) => FirstBytes::TlsHello,
        Ok(Ok(_)) => FirstBytes::Text,
    }
}

/// Whether `server`'s port answers a TLS ClientHello with a TLS record (a handshake or an
/// alert), within `wait`: for telling a port that speaks TLS from the first byte from one that
/// is silent for another reason (`check`, when a STARTTLS or plain server sends no greeting).
pub async fn speaks_tls(server: &ServerUrl, wait: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(server.host.clone()).ok()?;
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).ok()?;
        let mut tcp = tcp_connect(server).await.ok()?;
        tcp.write_all(&hello).await.ok()?;
        let mut first = [0u8; 1];
        tcp.read_exact(&mut first).await.ok()?;
        // 22: handshake (ServerHello), 21: alert; a text protocol starts with a letter or `*`.
        Some(matches!(first[0], 0x15 | 0x16))
    };
    tokio::time::timeout(wait, probe).await.ok().flatten().unwrap_or(false)
}

pub async fn tcp_connect(server: &ServerUrl) -> Result<TcpStream, NetError> {
    let name = server.to_string();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|e| NetError::Dns { host: server.host.clone(), detail: dns_detail(&e) })?
        .collect();
    if addrs.is_empty() {
        return Err(NetError::Dns { host: server.host.clone(), detail: "no addresses".into() });
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one address was tried");
    Err(match e.kind() {
        std::io::ErrorKind::ConnectionRefused => NetError::Refused { server: name },
        std::io::ErrorKind::TimedOut => NetError::Timeout { phase: Phase::Connecting, server: name },
        _ => NetError::Network { server: name, detail: e.to_string() },
    })
}

fn dns_detail(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("failed to lookup address information") { "no such host (DNS lookup failed)".into() } else { text }
}

pub async fn tls_handshake(
    tcp: TcpStream,
    server: &ServerUrl,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Stream, NetError> {
    let name = server.to_string();
    let server_name = ServerName::try_from(server.host.clone()).map_err(|_| NetError::Tls {
        server: name.clone(),
        detail: "invalid host name".into(),
        problem: TlsProblem::Setup,
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(server_name, tcp).await {
        Ok(tls) => Ok(Stream::ClientTls(Box::new(tls))),
        Err(e) => {
            let (problem, detail) = tls_detail(&e);
            Err(NetError::Tls { server: name, detail, problem })
        }
    }
}

/// A user-facing explanation of a failed TLS handshake, and what kind of problem it is.
fn tls_detail(e: &std::io::Error) -> (TlsProblem, String) {
    use rustls::{CertificateError, Error};
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => (
                TlsProblem::Closed,
                "the server closed the connection during the handshake (is this a TLS port?)".into(),
            ),
            _ => (TlsProblem::Other, e.to_string()),
        };
    };
    match inner {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            (TlsProblem::Untrusted, "certificate not trusted (unknown issuer; add the provider's CA as ca_file)".into())
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => (TlsProblem::WrongHost, "certificate is for another host name".into()),
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            (TlsProblem::Expired, "certificate has expired".into())
        }
        Error::InvalidCertificate(CertificateError::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            (
                TlsProblem::Untrusted,
                "certificate not trusted (self-signed; add the provider's certificate as ca_file)".into(),
            )
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            (TlsProblem::NotTls, "the server does not speak TLS on this port".into())
        }
        other => (TlsProblem::Other, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_hello_is_told_from_text() {
        assert!(is_tls_hello(&[0x16, 0x03]) && is_tls_hello(&[0x16]));
        for text in [&b"a1 CAPABILITY"[..], b"EHLO x", b"\x16\x41", b""] {
            assert!(!is_tls_hello(text), "{text:?}");
        }
    }

    #[tokio::test]
    async fn first_bytes_are_peeked_not_taken() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let wait = std::time::Duration::from_millis(200);
        for (sent, expected) in
            [(&b"\x16\x03\x01"[..], FirstBytes::TlsHello), (b"EHLO x\r\n", FirstBytes::Text), (b"", FirstBytes::Silent)]
        {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            assert_eq!(first_bytes(&server, wait).await, expected, "{sent:?}");
            if !sent.is_empty() {
                let mut buf = vec![0u8; sent.len()];
                server.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, sent, "still there to read");
            }
            drop(client);
            assert_eq!(first_bytes(&server, wait).await, FirstBytes::Closed);
        }
    }
}
