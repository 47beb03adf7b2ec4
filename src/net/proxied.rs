//! Reading the PROXY protocol header off a freshly accepted connection (`[listen]
//! proxy_protocol = true`, behind HAProxy's `send-proxy-v2`), before anything else happens on
//! it: no greeting, no TLS handshake. Only the header's bytes are read (what
//! [`proxy_header::parse`] asks for at least), so what the client sent after it stays in the
//! socket for the session.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::proxy_header::{self, Header, HeaderError, Parsed};

/// How long a connection may take to send its whole header. The spec asks for at least 3 s (a
/// lost segment is sent again after about 1 s, then 2 s later); HAProxy sends the header with
/// its first segment, so only a broken or foreign sender ever waits this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection's PROXY header was not taken; the connection is closed with no greeting.
#[derive(Debug, thiserror::Error)]
pub enum ProxiedError {
    #[error("no complete PROXY header within {} s ({got} bytes came)", after.as_secs_f64())]
    Timeout { after: Duration, got: usize },
    #[error("the connection closed before a complete PROXY header ({got} bytes came)")]
    Closed { got: usize },
    #[error("reading the PROXY header failed: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// The client's address of a connection just accepted on `listener` (`imap`, `imaps`, `smtp`,
/// `smtps`): with `proxy_protocol`, the one its header gives (read within [`HEADER_TIMEOUT`]);
/// else the socket's peer. `None`: the header was missing or bad (logged and counted); close
/// the connection without a word.
pub async fn client_address(
    tcp: &mut TcpStream,
    socket_peer: SocketAddr,
    proxy_protocol: bool,
    listener: &str,
) -> Option<SocketAddr> {
    if !proxy_protocol {
        return Some(socket_peer);
    }
    match read_header(tcp, socket_peer, HEADER_TIMEOUT).await {
        Ok((client, header)) => {
            debug!(listener, %client, via = %socket_peer, command = ?header.command, version = ?header.version, "PROXY header read");
            Some(client)
        }
        Err(e) => {
            warn!(listener, via = %socket_peer, "connection closed without a greeting ([listen] proxy_protocol): {e}");
            crate::metrics::proxy_header_refused(listener);
            None
        }
    }
}

/// Reads the header from `io` within `timeout`; the client's address is the header's source,
/// or `socket_peer` for LOCAL (HAProxy's health checks) and UNSPEC/UNKNOWN headers.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    socket_peer: SocketAddr,
    timeout: Duration,
) -> Result<(SocketAddr, Header), ProxiedError> {
    let mut buf = Vec::with_capacity(64);
    match tokio::time::timeout(timeout, read_whole(io, &mut buf)).await {
        Ok(Ok(header)) => Ok((header.client(socket_peer), header)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxiedError::Timeout { after: timeout, got: buf.len() }),
    }
}

async fn read_whole<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> Result<Header, ProxiedError> {
    loop {
        let wanted = match proxy_header::parse(buf)? {
            Parsed::Complete(header, _) => return Ok(header),
            Parsed::Incomplete(wanted) => wanted,
        };
        // `wanted` is below MAX_HEADER: the parser refuses longer headers before asking.
        let mut chunk = [0u8; proxy_header::MAX_HEADER];
        let n = io.read(&mut chunk[..wanted.min(proxy_header::MAX_HEADER)]).await.map_err(ProxiedError::Io)?;
        if n == 0 {
            return Err(ProxiedError::Closed { got: buf.len() });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[tokio::test]
    async fn a_fragmented_header_is_read_and_the_bytes_after_it_stay() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let header = proxy_header::encode_v2(
            Some(("203.0.113.9:5000".parse().unwrap(), "127.0.0.1:1143".parse().unwrap())),
            &[],
        );
        let writer = tokio::spawn(async move {
            for piece in header.chunks(5) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.write_all(b"a1 CAPABILITY\r\n").await.unwrap();
            client
        });
        let (client_addr, header) = read_header(&mut server, peer(), HEADER_TIMEOUT).await.unwrap();
        assert_eq!(client_addr, "203.0.113.9:5000".parse().unwrap());
        assert_eq!(header.command, proxy_header::Command::Proxy);
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 15];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"a1 CAPABILITY\r\n");
    }

    #[tokio::test]
    async fn local_keeps_the_socket_peer() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&proxy_header::encode_v2(None, &[])).await.unwrap();
        let (client_addr, _) = read_header(&mut server, peer(), HEADER_TIMEOUT).await.unwrap();
        assert_eq!(client_addr, peer());
    }

    #[tokio::test]
    async fn silence_and_half_headers_time_out() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"PROXY TCP4 1.2").await.unwrap();
        let e = read_header(&mut server, peer(), Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, ProxiedError::Timeout { got: 14, .. }), "{e:?}");
        assert_eq!(e.to_string(), "no complete PROXY header within 0.2 s (14 bytes came)");
    }

    #[tokio::test]
    async fn a_close_inside_the_header_and_garbage_are_refused() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&proxy_header::V2_SIGNATURE[..7]).await.unwrap();
        drop(client);
        let e = read_header(&mut server, peer(), HEADER_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ProxiedError::Closed { got: 7 }), "{e:?}");

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"* OK hello\r\n").await.unwrap();
        let e = read_header(&mut server, peer(), HEADER_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ProxiedError::Header(HeaderError::NotProxy(_))), "{e:?}");
    }
}
