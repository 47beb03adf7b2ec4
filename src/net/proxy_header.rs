//! The PROXY protocol header (v1 text, v2 binary; HAProxy's proxy-protocol.txt) that a load
//! balancer puts before a client's first byte, read sans-I/O: [`parse`] says either what the
//! header holds and how long it was, or how many more bytes it needs *at least*. Reading no
//! more than that never reads past the header's end, so the bytes after it (a pipelined
//! command, a TLS ClientHello) stay in the socket for the client protocol. Peer input: every
//! malformed header is a [`HeaderError`], never a panic, and a header is at most
//! [`MAX_HEADER`] bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 line starts with this.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (the spec's 107).
pub const V1_MAX: usize = 107;
/// The shortest header of either version: `PROXY UNKNOWN\r\n`.
const MIN_HEADER: usize = 15;
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;
/// The longest v2 header taken, fixed part included. The spec sizes a header with its usual
/// TLVs to fit 536 bytes; HAProxy's optional TLVs (unique id up to 128 bytes, SSL details)
/// stay well within this, and nothing longer is buffered.
pub const MAX_HEADER: usize = 1024;

/// Which version of the protocol a header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// PROXY: the addresses are the client's; LOCAL: the balancer's own connection (health
/// checks), the socket's addresses stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Local,
    Proxy,
}

/// The address family the header declares (v1 `TCP4`/`TCP6`/`UNKNOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

/// One type-length-value field after a v2 header's addresses (ALPN 0x01, AUTHORITY 0x02,
/// UNIQUE_ID 0x05, SSL 0x20, …). Kept for the log and tests; none changes what the proxy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub kind: u8,
    pub value: Vec<u8>,
}

/// A whole, valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub command: Command,
    pub family: Family,
    /// The client's (source) and the balancer's (destination) address: only for PROXY over
    /// TCP/IPv4 or TCP/IPv6. `None` means: use the socket's own addresses.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub tlvs: Vec<Tlv>,
}

impl Header {
    /// The client's address: the header's source, else the socket's peer.
    pub fn client(&self, socket_peer: SocketAddr) -> SocketAddr {
        self.addresses.map_or(socket_peer, |(source, _)| source)
    }
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The header, and its length: the bytes after it belong to the client protocol.
    Complete(Header, usize),
    /// Not whole yet: read at least this many more bytes (never more than the header has left).
    Incomplete(usize),
}

/// Why bytes are not a PROXY header. The texts quote no peer bytes except the escaped start
/// of something that is no header at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header (the connection began with \"{0}\")")]
    NotProxy(String),
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY v1 line not ended by CRLF")]
    V1LineEnd,
    #[error("PROXY v1 line has a byte outside printable US-ASCII")]
    V1NotAscii,
    #[error("PROXY v1 line has an unknown protocol (neither TCP4, TCP6 nor UNKNOWN)")]
    V1Protocol,
    #[error("PROXY v1 line does not have exactly four fields after {0}")]
    V1Fields(&'static str),
    #[error("PROXY v1 line has a bad {0}")]
    V1Field(&'static str),
    #[error("PROXY v2 header has version {0}, not 2")]
    V2Version(u8),
    #[error("PROXY v2 header has command {0}, neither LOCAL (0) nor PROXY (1)")]
    V2Command(u8),
    #[error("PROXY v2 header has address family {0}, not 0-3")]
    V2Family(u8),
    #[error("PROXY v2 header has transport {0}, not 0-2")]
    V2Transport(u8),
    #[error("PROXY v2 header of {0} bytes is longer than the {MAX_HEADER} taken")]
    V2TooLong(usize),
    #[error("PROXY v2 header too short for its address family ({got} of {needed} bytes)")]
    V2Addresses { needed: usize, got: usize },
    #[error("PROXY v2 header has a TLV that runs past its end")]
    V2Tlv,
}

/// Reads a header from the start of `buf` (which may hold bytes after it).
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete(MIN_HEADER)),
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Err(not_proxy(buf)),
    }
}

/// The escaped start of what came instead of a header, for the log (16 bytes at most).
fn not_proxy(buf: &[u8]) -> HeaderError {
    let shown: String = buf.iter().take(16).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    let more = if buf.len() > 16 { "..." } else { "" };
    HeaderError::NotProxy(format!("{shown}{more}"))
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let prefix = buf.len().min(V1_PREFIX.len());
    if buf[..prefix] != V1_PREFIX[..prefix] {
        return Err(not_proxy(buf));
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.iter().position(|b| *b == b'\n') else {
        if window.len() == V1_MAX {
            return Err(HeaderError::V1TooLong);
        }
        // CRLF still to come: two bytes, or one after a CR; and at least the shortest line.
        let ending = if window.last() == Some(&b'\r') { 1 } else { 2 };
        let wanted = ending.max(MIN_HEADER.saturating_sub(window.len()));
        return Ok(Parsed::Incomplete(wanted.min(V1_MAX - window.len())));
    };
    if end == 0 || window[end - 1] != b'\r' {
        return Err(HeaderError::V1LineEnd);
    }
    let line = &window[V1_PREFIX.len().min(end - 1)..end - 1];
    if line.iter().any(|b| !(0x20..0x7f).contains(b)) {
        return Err(if line.contains(&b'\r') { HeaderError::V1LineEnd } else { HeaderError::V1NotAscii });
    }
    // Checked ASCII above.
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::V1NotAscii)?;
    let mut fields = line.split(' ');
    let (family, v6) = match fields.next() {
        Some("UNKNOWN") => {
            let header = Header {
                version: Version::V1,
                command: Command::Proxy,
                family: Family::Unspec,
                addresses: None,
                tlvs: vec![],
            };
            return Ok(Parsed::Complete(header, end + 1));
        }
        Some("TCP4") => (Family::Inet, false),
        Some("TCP6") => (Family::Inet6, true),
        _ => return Err(HeaderError::V1Protocol),
    };
    let name = if v6 { "TCP6" } else { "TCP4" };
    let rest: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = rest[..] else {
        return Err(HeaderError::V1Fields(name));
    };
    let ip = |text: &str, what| -> Result<IpAddr, HeaderError> {
        match v6 {
            false => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            true => text.parse::<Ipv6Addr>().map(IpAddr::V6),
        }
        .map_err(|_| HeaderError::V1Field(what))
    };
    let source = SocketAddr::new(ip(source, "source address")?, port(source_port, "source port")?);
    let destination =
        SocketAddr::new(ip(destination, "destination address")?, port(destination_port, "destination port")?);
    let header = Header {
        version: Version::V1,
        command: Command::Proxy,
        family,
        addresses: Some((source, destination)),
        tlvs: vec![],
    };
    Ok(Parsed::Complete(header, end + 1))
}

/// A v1 port: decimal, no leading zero, at most 65535.
fn port(text: &str, what: &'static str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(HeaderError::V1Field(what));
    }
    text.parse().map_err(|_| HeaderError::V1Field(what))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let signed = buf.len().min(V2_SIGNATURE.len());
    if buf[..signed] != V2_SIGNATURE[..signed] {
        return Err(not_proxy(buf));
    }
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete(V2_FIXED - buf.len()));
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::V2Version(version));
    }
    let command = match command {
        0 => Command::Local,
        1 => Command::Proxy,
        other => return Err(HeaderError::V2Command(other)),
    };
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let family = match family {
        0 => Family::Unspec,
        1 => Family::Inet,
        2 => Family::Inet6,
        3 => Family::Unix,
        other => return Err(HeaderError::V2Family(other)),
    };
    if transport > 2 {
        return Err(HeaderError::V2Transport(transport));
    }
    let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER {
        return Err(HeaderError::V2TooLong(total));
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete(total - buf.len()));
    }
    let block = &buf[V2_FIXED..total];
    let done = |addresses, tlvs| {
        Ok(Parsed::Complete(Header { version: Version::V2, command, family, addresses, tlvs }, total))
    };
    // LOCAL: the receiver discards the whole block, family included (spec 2.2).
    if command == Command::Local {
        return done(None, vec![]);
    }
    let needed = match family {
        Family::Unspec => return done(None, vec![]),
        Family::Inet => 12,
        Family::Inet6 => 36,
        Family::Unix => 216,
    };
    if block.len() < needed {
        return Err(HeaderError::V2Addresses { needed, got: block.len() });
    }
    let (addresses, rest) = block.split_at(needed);
    let tlvs = tlvs(rest)?;
    // Addresses are the client's only for a stream over IP (transport 1).
    if transport != 1 || family == Family::Unix {
        return done(None, tlvs);
    }
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    let pair = match family {
        Family::Inet => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&addresses[at..at + 4]).unwrap_or_default());
            (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
        }
        _ => {
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&addresses[at..at + 16]).unwrap_or_default());
            (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
        }
    };
    done(Some(pair), tlvs)
}

/// The TLVs of `bytes`, each inside them.
fn tlvs(mut bytes: &[u8]) -> Result<Vec<Tlv>, HeaderError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let [kind, high, low, rest @ ..] = bytes else { return Err(HeaderError::V2Tlv) };
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        if rest.len() < len {
            return Err(HeaderError::V2Tlv);
        }
        out.push(Tlv { kind: *kind, value: rest[..len].to_vec() });
        bytes = &rest[len..];
    }
    Ok(out)
}

/// A v2 header, as a balancer writes it (tests and the fuzz target's seeds). `addresses`
/// `None` writes LOCAL with no addresses.
pub fn encode_v2(addresses: Option<(SocketAddr, SocketAddr)>, tlvs: &[Tlv]) -> Vec<u8> {
    let mut block = Vec::new();
    let (command, family) = match addresses {
        None => (0x20, 0x00),
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            block.extend(s.ip().octets());
            block.extend(d.ip().octets());
            block.extend(s.port().to_be_bytes());
            block.extend(d.port().to_be_bytes());
            (0x21, 0x11)
        }
        Some((s, d)) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            block.extend(v6(s).octets());
            block.extend(v6(d).octets());
            block.extend(s.port().to_be_bytes());
            block.extend(d.port().to_be_bytes());
            (0x21, 0x21)
        }
    };
    for tlv in tlvs {
        block.push(tlv.kind);
        block.extend(u16::try_from(tlv.value.len()).unwrap_or(u16::MAX).to_be_bytes());
        block.extend(&tlv.value);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([command, family]);
    out.extend(u16::try_from(block.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend(block);
    out
}

#[cfg(test)]
mod tests;
