//! A small DNS client for `setup`: SRV (RFC 6186/8314) and MX questions over UDP, TCP when the
//! answer is truncated. Small on purpose: two record types, no cache, no recursion; answers
//! are peer input, parsed by a bounded, panic-free decoder (fuzzed: fuzz/fuzz_targets/setup.rs).
//! Nothing here is authenticated (no DNSSEC): `setup` says so next to what it found this way.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TYPE_MX: u16 = 15;
pub const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
/// The UDP payload size we offer with EDNS(0): the DNS flag day's safe size.
const EDNS_SIZE: u16 = 1232;
/// Longest name on the wire (RFC 1035 2.3.4) and most compression jumps we follow.
const MAX_NAME: usize = 255;
const MAX_JUMPS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot; `.` (empty here) means "no such service" (RFC 2782).
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Srv(Srv),
    Mx(Mx),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("`{0}` is not a valid domain name")]
    BadName(String),
    #[error("the DNS answer is malformed ({0})")]
    Malformed(&'static str),
    #[error("the DNS server answered {0}")]
    Rcode(&'static str),
    #[error("no DNS server answered within {0} s")]
    Timeout(u64),
    #[error("cannot reach the DNS server {server}: {detail}")]
    Network { server: SocketAddr, detail: String },
    #[error("no DNS server is configured (/etc/resolv.conf has no nameserver; use --dns)")]
    NoServer,
}

/// What a server said about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records of the asked type (possibly none: the name exists without them).
    Records(Vec<Record>),
    /// NXDOMAIN.
    NoSuchName,
    /// TC set: ask again over TCP.
    Truncated,
}

/// The query message for `name`/`qtype` with transaction `id`, with an EDNS(0) OPT record.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // one question, one additional (OPT)
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(DnsError::BadName(name.into()));
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(DnsError::BadName(name.into()));
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root name, type 41, class = UDP size, TTL 0, no options.
    m.extend_from_slice(&[0, 0, 41]);
    m.extend_from_slice(&EDNS_SIZE.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(m)
}

/// Decodes a response to query `id` for `qtype`; records of other types (CNAMEs on the way,
/// DNSSEC signatures) are skipped.
pub fn parse_response(id: u16, qtype: u16, msg: &[u8]) -> Result<Answer, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    let got_id = r.u16()?;
    let flags = r.u16()?;
    if got_id != id {
        return Err(DnsError::Malformed("answer to another question"));
    }
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Ok(Answer::Truncated);
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Answer::NoSuchName),
        2 => return Err(DnsError::Rcode("SERVFAIL (it could not resolve the name)")),
        5 => return Err(DnsError::Rcode("REFUSED (it does not serve this machine)")),
        _ => return Err(DnsError::Rcode("with an error code")),
    }
    let (qd, an) = (r.u16()?, r.u16()?);
    r.u16()?;
    r.u16()?;
    for _ in 0..qd {
        r.name()?;
        r.take(4)?;
    }
    let mut records = Vec::new();
    for _ in 0..an {
        r.name()?;
        let (rtype, class) = (r.u16()?, r.u16()?);
        r.take(4)?;
        let len = usize::from(r.u16()?);
        let start = r.pos;
        let end = start.checked_add(len).filter(|&e| e <= msg.len()).ok_or(DnsError::Malformed("record too long"))?;
        if class == CLASS_IN && rtype == qtype {
            let mut rd = Reader { msg, pos: start };
            let record = match rtype {
                TYPE_SRV => {
                    Record::Srv(Srv { priority: rd.u16()?, weight: rd.u16()?, port: rd.u16()?, target: rd.name()? })
                }
                TYPE_MX => Record::Mx(Mx { preference: rd.u16()?, exchange: rd.name()? }),
                _ => return Err(DnsError::Malformed("unexpected type")),
            };
            if rd.pos != end {
                return Err(DnsError::Malformed("record length does not match its data"));
            }
            records.push(record);
        }
        r.pos = end;
    }
    Ok(Answer::Records(records))
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DnsError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.msg.len()).ok_or(DnsError::Malformed("too short"))?;
        let s = &self.msg[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A possibly compressed name, lower-cased, without the trailing dot ("" for the root).
    fn name(&mut self) -> Result<String, DnsError> {
        let mut out = String::new();
        let mut pos = self.pos;
        let mut resume = None;
        let mut jumps = 0;
        loop {
            let len = *self.msg.get(pos).ok_or(DnsError::Malformed("name runs past the end"))?;
            match len {
                0 => {
                    pos += 1;
                    break;
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self.msg.get(pos + 1).ok_or(DnsError::Malformed("cut compression pointer"))?;
                    jumps += 1;
                    if jumps > MAX_JUMPS {
                        return Err(DnsError::Malformed("compression loop"));
                    }
                    resume.get_or_insert(pos + 2);
                    pos = (usize::from(l & 0x3f) << 8) | usize::from(low);
                }
                l if l & 0xc0 != 0 => return Err(DnsError::Malformed("unknown label type")),
                l => {
                    let l = usize::from(l);
                    let label = self.msg.get(pos + 1..pos + 1 + l).ok_or(DnsError::Malformed("label past the end"))?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    for &b in label {
                        // Host names are LDH; anything else is kept visible but harmless.
                        let c = if b.is_ascii_graphic() && b != b'.' { b.to_ascii_lowercase() as char } else { '?' };
                        out.push(c);
                    }
                    if out.len() > MAX_NAME {
                        return Err(DnsError::Malformed("name too long"));
                    }
                    pos += 1 + l;
                }
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(out)
    }
}

/// The `nameserver` lines of a resolv.conf, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.split('%').next()?.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Asks DNS servers, one after the other, within a timeout per question.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Resolver {
    /// The servers of /etc/resolv.conf.
    pub fn system(timeout: Duration) -> Resolver {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Resolver { servers: parse_resolv_conf(&text), timeout }
    }

    pub async fn srv(&self, name: &str) -> Result<Vec<Srv>, DnsError> {
        let records = self.lookup(name, TYPE_SRV).await?;
        let mut srv: Vec<Srv> =
            records.into_iter().filter_map(|r| if let Record::Srv(s) = r { Some(s) } else { None }).collect();
        // Lowest priority first; among equals the heaviest (a deterministic stand-in for
        // RFC 2782's weighted choice, so that `setup` says the same thing twice).
        srv.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        Ok(srv)
    }

    pub async fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError> {
        let records = self.lookup(name, TYPE_MX).await?;
        let mut mx: Vec<Mx> =
            records.into_iter().filter_map(|r| if let Record::Mx(m) = r { Some(m) } else { None }).collect();
        mx.sort_by_key(|m| m.preference);
        Ok(mx)
    }

    /// The records of `qtype` at `name`; none for NXDOMAIN.
    pub async fn lookup(&self, name: &str, qtype: u16) -> Result<Vec<Record>, DnsError> {
        if self.servers.is_empty() {
            return Err(DnsError::NoServer);
        }
        let secs = self.timeout.as_secs().max(1);
        let mut last = DnsError::Timeout(secs);
        for &server in &self.servers {
            match tokio::time::timeout(self.timeout, self.ask(server, name, qtype)).await {
                Ok(Ok(Answer::Records(r))) => return Ok(r),
                Ok(Ok(Answer::NoSuchName)) => return Ok(Vec::new()),
                Ok(Ok(Answer::Truncated)) => last = DnsError::Malformed("truncated over TCP too"),
                Ok(Err(e)) => last = e,
                Err(_) => last = DnsError::Timeout(secs),
            }
        }
        Err(last)
    }

    async fn ask(&self, server: SocketAddr, name: &str, qtype: u16) -> Result<Answer, DnsError> {
        let mut id = [0u8; 2];
        getrandom::getrandom(&mut id).expect("the operating system's random source");
        let id = u16::from_be_bytes(id);
        let query = encode_query(id, name, qtype)?;
        let net = |e: std::io::Error| DnsError::Network { server, detail: e.to_string() };
        let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(net)?;
        socket.connect(server).await.map_err(net)?;
        socket.send(&query).await.map_err(net)?;
        let mut buf = vec![0u8; 65535];
        let answer = loop {
            let n = socket.recv(&mut buf).await.map_err(net)?;
            match parse_response(id, qtype, &buf[..n]) {
                // A stray or spoofed datagram with another id: keep waiting for ours.
                Err(DnsError::Malformed("answer to another question")) => continue,
                other => break other?,
            }
        };
        if answer != Answer::Truncated {
            return Ok(answer);
        }
        let mut tcp = tokio::net::TcpStream::connect(server).await.map_err(net)?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        tcp.write_all(&framed).await.map_err(net)?;
        let len = tcp.read_u16().await.map_err(net)?;
        let mut msg = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut msg).await.map_err(net)?;
        parse_response(id, qtype, &msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `query` with the given answer records (name, type, rdata) appended.
    fn response(query: &[u8], rcode: u8, answers: &[(&[u8], u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] |= 0x80;
        m[3] = (m[3] & 0xf0) | rcode;
        m[7] = answers.len() as u8;
        m[11] = 0; // drop the OPT record from the copy
        let opt = m.len() - 11;
        m.truncate(opt);
        for (name, t, rdata) in answers {
            m.extend_from_slice(name);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 1, 0]);
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    #[test]
    fn srv_with_compressed_names() {
        let q = encode_query(7, "_imaps._tcp.example.org", TYPE_SRV).unwrap();
        let mut rdata = vec![0, 10, 0, 5, 0x03, 0xe1];
        rdata.extend_from_slice(b"\x04imap\xc0\x18"); // imap + pointer to "example.org" in the question
        let m = response(&q, 0, &[(b"\xc0\x0c", TYPE_SRV, rdata)]);
        let a = parse_response(7, TYPE_SRV, &m).unwrap();
        let want = Srv { priority: 10, weight: 5, port: 993, target: "imap.example.org".into() };
        assert_eq!(a, Answer::Records(vec![Record::Srv(want)]));
    }

    #[test]
    fn mx_other_types_nxdomain_and_truncation() {
        let q = encode_query(9, "Example.ORG.", TYPE_MX).unwrap();
        let cname = b"\x02mx\xc0\x0c".to_vec();
        let mx = b"\x00\x05\x02mx\x07EXAMPLE\x03net\x00".to_vec();
        let m = response(&q, 0, &[(b"\xc0\x0c", 5, cname), (b"\xc0\x0c", TYPE_MX, mx)]);
        let a = parse_response(9, TYPE_MX, &m).unwrap();
        assert_eq!(a, Answer::Records(vec![Record::Mx(Mx { preference: 5, exchange: "mx.example.net".into() })]));
        assert_eq!(parse_response(9, TYPE_MX, &response(&q, 3, &[])).unwrap(), Answer::NoSuchName);
        assert!(parse_response(9, TYPE_MX, &response(&q, 2, &[])).unwrap_err().to_string().contains("SERVFAIL"));
        let mut tc = response(&q, 0, &[]);
        tc[2] |= 0x02;
        assert_eq!(parse_response(9, TYPE_MX, &tc).unwrap(), Answer::Truncated);
        assert_eq!(parse_response(8, TYPE_MX, &tc).unwrap_err(), DnsError::Malformed("answer to another question"));
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let q = encode_query(1, "example.org", TYPE_MX).unwrap();
        // A pointer to itself, a cut record, a label past the end, a wrong rdata length.
        let looped = response(&q, 0, &[(b"\xc0\x0c", TYPE_MX, b"\x00\x01\xc0\x1e".to_vec())]);
        let mut looped2 = looped.clone();
        let at = looped2.len() - 2;
        looped2[at + 1] = at as u8;
        assert!(parse_response(1, TYPE_MX, &looped2).is_err());
        let full = response(&q, 0, &[(b"\xc0\x0c", TYPE_MX, b"\x00\x01\x00".to_vec())]);
        for cut in 0..full.len() {
            let _ = parse_response(1, TYPE_MX, &full[..cut]);
        }
        let long = response(&q, 0, &[(b"\xc0\x0c", TYPE_MX, b"\x00\x01\x00\x00".to_vec())]);
        assert_eq!(
            parse_response(1, TYPE_MX, &long),
            Err(DnsError::Malformed("record length does not match its data"))
        );
        assert!(parse_response(1, TYPE_MX, &response(&q, 0, &[(b"\x3f", TYPE_MX, vec![])])).is_err());
    }

    #[test]
    fn names_and_resolv_conf() {
        assert!(encode_query(1, "a..b", TYPE_MX).is_err());
        assert!(encode_query(1, "bad name.org", TYPE_MX).is_err());
        assert!(encode_query(1, &"a".repeat(64), TYPE_MX).is_err());
        let servers = parse_resolv_conf("# x\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nsearch lan\n");
        assert_eq!(servers, vec!["192.0.2.1:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
    }
}
