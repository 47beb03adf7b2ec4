//! One stream type for every connection the proxy holds, plain or TLS, so sessions can upgrade
//! with STARTTLS in place and the relay code is written once; and opening one to a provider's
//! server (IMAP or SMTP): DNS, TCP, TLS, with errors that name the server and the cause.

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
    #[error("timed out {stage} {server}")]
    Timeout { stage: &'static str, server: String },
    #[error("cannot reach {server}: {detail}")]
    Network { server: String, detail: String },
    #[error("TLS with {server} failed: {detail}")]
    Tls { server: String, detail: String },
    #[error("{server} closed the connection")]
    Closed { server: String },
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
        std::io::ErrorKind::TimedOut => NetError::Timeout { stage: "connecting to", server: name },
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
    let server_name = ServerName::try_from(server.host.clone())
        .map_err(|_| NetError::Tls { server: name.clone(), detail: "invalid host name".into() })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(server_name, tcp).await {
        Ok(tls) => Ok(Stream::ClientTls(Box::new(tls))),
        Err(e) => Err(NetError::Tls { server: name, detail: tls_detail(&e) }),
    }
}

/// A user-facing explanation of a failed TLS handshake.
fn tls_detail(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the handshake (is this a TLS port?)".into()
            }
            _ => e.to_string(),
        };
    };
    match inner {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "certificate not trusted (unknown issuer; add the provider's CA as ca_file)".into()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "certificate is for another host name".into(),
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "certificate has expired".into()
        }
        Error::InvalidCertificate(CertificateError::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            "certificate not trusted (self-signed; add the provider's certificate as ca_file)".into()
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "the server does not speak TLS on this port".into()
        }
        other => other.to_string(),
    }
}
