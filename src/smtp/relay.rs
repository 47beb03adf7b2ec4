//! A small SMTP client for the provider's submission server: greeting, EHLO, STARTTLS, AUTH
//! PLAIN (or XOAUTH2 / OAUTHBEARER with a token of the account's OAuth2 grant), then transactions (MAIL with parameters, RCPT per recipient, DATA with dot-stuffing)
//! and QUIT. Own code rather than lettre or mail-send because the queue needs the exact reply of
//! every recipient (temporary or permanent) and control over MAIL/RCPT parameters (BODY,
//! SMTPUTF8, and the DSN ones).
//!
//! The message bytes go out exactly as the client sent them: only the transparency dots are
//! added back. Reply parsing ([`parse_reply`]) and dot-stuffing ([`dot_stuff`]) are plain
//! functions, tested without sockets.

use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Security, ServerUrl, SmtpProvider};
use crate::context::Context;
use crate::net::{NetError, Phase, Stream, TlsProblem, tcp_connect, tls_handshake};
use crate::oauth::sasl::{Challenge, Mechanism};
use crate::oauth::{self, OAuthError};
use crate::secret::Secret;
use crate::store::{QueuedBody, QueuedMessage, RecipientState};
use crate::tls::UpstreamTls;

/// Longest reply line accepted from a provider (RFC 5321 says 512; be generous).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply (an EHLO answer has one per extension).
const MAX_REPLY_LINES: usize = 200;
/// How long a provider may take for any one reply (RFC 5321 4.5.3.2 suggests 5 to 10 minutes).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// One SMTP reply: the code and the text of all its lines (enhanced status code included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A malformed reply: the provider is not speaking SMTP (or not to us).
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    TooLong,
    Malformed(String),
}

/// Parses one complete reply from the front of `buf`; `Ok(None)` if more bytes are needed,
/// `Ok(Some((reply, consumed)))` otherwise. Lines are joined with `" / "`.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut text = String::new();
    for n in 0.. {
        if n >= MAX_REPLY_LINES {
            return Err(ReplyError::TooLong);
        }
        let rest = &buf[pos..];
        let Some(end) = memchr::memchr(b'\n', rest) else {
            return if rest.len() > MAX_REPLY_LINE { Err(ReplyError::TooLong) } else { Ok(None) };
        };
        if end > MAX_REPLY_LINE {
            return Err(ReplyError::TooLong);
        }
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        pos += end + 1;
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(&line[..line.len().min(100)]).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let code: u16 = std::str::from_utf8(&line[..3]).map_err(|_| malformed())?.parse().map_err(|_| malformed())?;
        if !(200..600).contains(&code) {
            return Err(malformed());
        }
        let (last, line_text) = match line.get(3) {
            None => (true, &[][..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        if !text.is_empty() {
            text.push_str(" / ");
        }
        text.push_str(String::from_utf8_lossy(line_text).trim_end());
        if last {
            return Ok(Some((Reply { code, text }, pos)));
        }
    }
    unreachable!("the loop returns")
}

/// What a provider's EHLO says it supports (only what the proxy uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderCaps {
    /// `SIZE n`; `Some(0)` means announced without a limit.
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub pipelining: bool,
    pub auth_plain: bool,
    /// The bearer-token mechanism to use, where one is offered.
    pub auth_bearer: Option<Mechanism>,
    /// `XCLIENT` with `ADDR`: the server takes the client's address from us (it trusts us).
    pub xclient_addr: bool,
}

impl ProviderCaps {
    /// Reads the keywords of an EHLO reply (its first line is the greeting, skipped).
    pub fn from_ehlo(reply: &Reply) -> ProviderCaps {
        let mut caps = ProviderCaps::default();
        for line in reply.text.split(" / ").skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            match keyword.as_str() {
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "PIPELINING" => caps.pipelining = true,
                "AUTH" => {
                    let mechanisms: Vec<&str> = words.collect();
                    caps.auth_plain = mechanisms.iter().any(|m| m.eq_ignore_ascii_case("PLAIN"));
                    caps.auth_bearer = Mechanism::choose(mechanisms);
                }
                "XCLIENT" => caps.xclient_addr = words.any(|a| a.eq_ignore_ascii_case("ADDR")),
                _ => {}
            }
        }
        caps
    }
}

/// Why talking to the provider failed (not: what it replied). The text names the server and
/// the cause, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{server} sent an unexpected greeting: {reply}")]
    Greeting { server: String, reply: Reply },
    #[error("{server} refused STARTTLS: {reply}")]
    StartTls { server: String, reply: Reply },
    #[error("{server} does not offer AUTH PLAIN")]
    NoAuthPlain { server: String },
    #[error("{server} offers neither AUTH XOAUTH2 nor AUTH OAUTHBEARER for an OAuth2 sign-in")]
    NoBearerAuth { server: String },
    #[error("{server} refused EHLO: {reply}")]
    Ehlo { server: String, reply: Reply },
    #[error("{server} sent a malformed reply: {detail}")]
    Protocol { server: String, detail: String },
    #[error("{server} did not answer within {} s", REPLY_TIMEOUT.as_secs())]
    Timeout { server: String },
    /// The queued message could not be read back while it was being sent.
    #[error("cannot read the queued message: {detail}")]
    Body { detail: String },
}

impl RelayError {
    /// The cause, as `/metrics` labels it (one of `metrics::CAUSES`).
    pub fn cause(&self) -> &'static str {
        match self {
            RelayError::Net(e) => e.cause(),
            RelayError::Greeting { .. } => "greeting",
            RelayError::StartTls { .. } => "starttls",
            RelayError::NoAuthPlain { .. } | RelayError::Ehlo { .. } | RelayError::Protocol { .. } => "protocol",
            RelayError::Timeout { .. } => "timeout",
            // As on the IMAP side: the server does not take this kind of sign-in.
            RelayError::NoBearerAuth { .. } => "login_disabled",
            // Ours, never a connection's: only for completeness.
            RelayError::Body { .. } => "network",
        }
    }
}

/// What the provider said to one transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail: Reply,
    /// For each recipient that was pending, in order: its address and the RCPT reply.
    pub rcpts: Vec<(String, Reply)>,
    /// The reply to DATA (`354` refused) or to the end of data; `None` if DATA was not sent.
    pub data: Option<Reply>,
}

impl Transaction {
    /// The reply that decides a recipient's fate: its own RCPT refusal, else MAIL's refusal,
    /// else the final DATA reply.
    pub fn outcome(&self, address: &str) -> Option<&Reply> {
        if !self.mail.is_positive() {
            return Some(&self.mail);
        }
        let (_, rcpt) = self.rcpts.iter().find(|(a, _)| a == address)?;
        if !rcpt.is_positive() {
            return Some(rcpt);
        }
        self.data.as_ref()
    }
}

/// A connection to a provider's submission server, greeted with EHLO (and TLS if configured).
pub struct SmtpClient {
    stream: Stream,
    buf: BytesMut,
    /// Host and port, as OAUTHBEARER names them.
    url: ServerUrl,
    pub server: String,
    pub caps: ProviderCaps,
}

impl SmtpClient {
    /// Connects, reads the greeting, says EHLO and upgrades with STARTTLS where configured; the
    /// whole setup within `timeout`.
    pub async fn connect(
        provider: &SmtpProvider,
        tls: &UpstreamTls,
        timeout: Duration,
    ) -> Result<SmtpClient, RelayError> {
        let server = provider.smtp.to_string();
        let mut phase = Phase::Connecting;
        let result = match tokio::time::timeout(timeout, Self::connect_inner(provider, tls, &mut phase)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout { phase, server }.into()),
        };
        if let Err(e) = &result {
            crate::metrics::submission_connect_failed(e.cause());
        }
        result
    }

    async fn connect_inner(
        provider: &SmtpProvider,
        tls: &UpstreamTls,
        phase: &mut Phase,
    ) -> Result<SmtpClient, RelayError> {
        let url: &ServerUrl = &provider.smtp;
        let server = url.to_string();
        let tcp = tcp_connect(url).await?;
        let _ = tcp.set_nodelay(true);
        let tls_config = || {
            tls.config(provider.ca_file.as_deref()).map_err(|e| NetError::Tls {
                server: server.clone(),
                detail: e.to_string(),
                problem: TlsProblem::Setup,
            })
        };
        let stream = match url.security {
            Security::Implicit => {
                *phase = Phase::TlsHandshake;
                tls_handshake(tcp, url, tls_config()?).await?
            }
            _ => Stream::Plain(tcp),
        };
        *phase = Phase::Greeting;
        let mut client = SmtpClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            url: url.clone(),
            server: server.clone(),
            caps: Default::default(),
        };
        let greeting = client.read_reply().await?;
        if greeting.code != 220 {
            return Err(RelayError::Greeting { server, reply: greeting });
        }
        *phase = Phase::Capabilities;
        client.ehlo().await?;
        if url.security == Security::StartTls {
            *phase = Phase::StartTls;
            let reply = client.command(b"STARTTLS\r\n").await?;
            if reply.code != 220 {
                return Err(RelayError::StartTls { server, reply });
            }
            if !client.buf.is_empty() {
                // Bytes after the 220 arrived in plaintext and could be injected.
                let detail = "data after the STARTTLS reply".to_string();
                return Err(RelayError::Protocol { server, detail });
            }
            let tcp = client.stream.take_plain().expect("plain before STARTTLS");
            client.stream = tls_handshake(tcp, url, tls_config()?).await?;
            client.ehlo().await?;
        }
        Ok(client)
    }

    async fn ehlo(&mut self) -> Result<(), RelayError> {
        let reply = self.command(b"EHLO coi-proxy\r\n").await?;
        if reply.code != 250 {
            return Err(RelayError::Ehlo { server: self.server.clone(), reply });
        }
        self.caps = ProviderCaps::from_ehlo(&reply);
        Ok(())
    }

    /// Tells a server that offers `XCLIENT ADDR` (Postfix, Dovecot submission, to hosts they
    /// trust) which address the client connects from, so that its penalty for failed logins
    /// hits that address and not the proxy's; then EHLO again, as XCLIENT resets the session.
    /// Does nothing where it is not offered or not accepted.
    pub async fn forward_client_address(&mut self, client: std::net::IpAddr) -> Result<(), RelayError> {
        if !self.caps.xclient_addr {
            return Ok(());
        }
        let addr = match client.to_canonical() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("IPV6:{v6}"),
        };
        let reply = self.command(format!("XCLIENT ADDR={addr}\r\n").as_bytes()).await?;
        if reply.code == 220 {
            self.ehlo().await?;
        }
        Ok(())
    }

    /// AUTH PLAIN with an initial response. The provider's reply says whether the credentials
    /// are good (`235`), wrong (`535`) or could not be checked now (`454`).
    pub async fn authenticate(&mut self, login: &str, password: &Secret) -> Result<Reply, RelayError> {
        if !self.caps.auth_plain {
            return Err(RelayError::NoAuthPlain { server: self.server.clone() });
        }
        let mut plain = Vec::with_capacity(login.len() + password.len() + 2);
        plain.push(0);
        plain.extend_from_slice(login.as_bytes());
        plain.push(0);
        plain.extend_from_slice(password.expose());
        let plain = Secret::new(plain);
        let b64 = Secret::new(base64::engine::general_purpose::STANDARD.encode(plain.expose()).into_bytes());
        let mut cmd = b"AUTH PLAIN ".to_vec();
        cmd.extend_from_slice(b64.expose());
        cmd.extend_from_slice(b"\r\n");
        let cmd = Secret::new(cmd);
        self.command(cmd.expose()).await
    }

    /// AUTH with a bearer token, XOAUTH2 or OAUTHBEARER as offered: `AUTH <mechanism>`, the
    /// `334`, then the response on a line of its own (Dovecot refuses a 2 KB AUTH line, and
    /// RFC 4954 allows both). A refusal's `334` challenge is answered as the mechanism wants; the
    /// final reply is returned (`235`, `535` …).
    pub async fn authenticate_bearer(&mut self, login: &str, token: &Secret) -> Result<Reply, RelayError> {
        let Some(mechanism) = self.caps.auth_bearer else {
            return Err(RelayError::NoBearerAuth { server: self.server.clone() });
        };
        let reply = self.command(format!("AUTH {}\r\n", mechanism.name()).as_bytes()).await?;
        if reply.code != 334 {
            return Ok(reply);
        }
        let response = mechanism.initial_response_b64(login, token, &self.url.host, self.url.port);
        let line = Secret::new([response.expose(), b"\r\n"].concat());
        let reply = self.command(line.expose()).await?;
        if reply.code != 334 {
            return Ok(reply);
        }
        let why = Challenge::parse(reply.text.as_bytes()).map_or_else(|| "no details".into(), |c| c.describe());
        tracing::debug!(mechanism = mechanism.name(), "the provider refused the token ({why})");
        self.command(format!("{}\r\n", mechanism.abort_response_b64()).as_bytes()).await
    }

    /// Signs in with `token` of `login`'s OAuth2 grant; a token the provider refuses for good is
    /// refreshed once and tried again. `Ok(Err)`: no usable token (the grant is gone or the
    /// identity provider unreachable).
    pub async fn authenticate_oauth2(
        &mut self,
        shared: &Context,
        login: &str,
        token: Secret,
    ) -> Result<Result<Reply, OAuthError>, RelayError> {
        let reply = self.authenticate_bearer(login, &token).await?;
        if reply.is_positive() || reply.is_transient() {
            return Ok(Ok(reply));
        }
        tracing::info!(login, "{} turned the access token down ({reply}); refreshing it once", self.server);
        match oauth::access_token(shared, login, Some(&token)).await {
            Ok(fresh) => Ok(Ok(self.authenticate_bearer(login, &fresh).await?)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Offers `body` for the pending recipients of `msg`. With PIPELINING, MAIL, the RCPTs and
    /// DATA go out in one write (RFC 2920). A body in a file is read as it is sent, a chunk at
    /// a time, never whole.
    pub async fn send(&mut self, msg: &QueuedMessage, body: QueuedBody) -> Result<Transaction, RelayError> {
        let rcpts: Vec<_> = msg.recipients.iter().filter(|r| r.state == RecipientState::Pending).collect();
        let mut mail = format!("MAIL FROM:<{}>", msg.from);
        if self.caps.size.is_some() {
            let len = match &body {
                QueuedBody::Bytes(bytes) => bytes.len() as u64,
                QueuedBody::File { len, .. } => *len,
            };
            mail.push_str(&format!(" SIZE={len}"));
        }
        if msg.params.eight_bit && self.caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.params.smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            if let Some(ret) = &msg.params.ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = &msg.params.envid {
                mail.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .map(|r| {
                let mut line = format!("RCPT TO:<{}>", r.address);
                if self.caps.dsn {
                    if let Some(notify) = &r.notify {
                        line.push_str(&format!(" NOTIFY={notify}"));
                    }
                    if let Some(orcpt) = &r.orcpt {
                        line.push_str(&format!(" ORCPT=rfc822;{}", xtext(orcpt)));
                    }
                }
                line.push_str("\r\n");
                line
            })
            .collect();

        let mut tx = if self.caps.pipelining {
            let mut batch = mail.into_bytes();
            rcpt_lines.iter().for_each(|l| batch.extend_from_slice(l.as_bytes()));
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch).await?;
            let mail = self.read_reply().await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            for r in &rcpts {
                replies.push((r.address.clone(), self.read_reply().await?));
            }
            let data = self.read_reply().await?;
            Transaction { mail, rcpts: replies, data: Some(data) }
        } else {
            let mail = self.command(mail.as_bytes()).await?;
            let mut tx = Transaction { mail, rcpts: Vec::new(), data: None };
            if tx.mail.is_positive() {
                for (r, line) in rcpts.iter().zip(&rcpt_lines) {
                    let reply = self.command(line.as_bytes()).await?;
                    tx.rcpts.push((r.address.clone(), reply));
                }
                if tx.rcpts.iter().any(|(_, r)| r.is_positive()) {
                    tx.data = Some(self.command(b"DATA\r\n").await?);
                }
            }
            tx
        };
        let accepted = tx.mail.is_positive() && tx.rcpts.iter().any(|(_, r)| r.is_positive());
        match &tx.data {
            Some(data) if data.code == 354 && accepted => {
                self.write_body(body).await?;
                tx.data = Some(self.read_reply().await?);
            }
            Some(data) if data.code == 354 => {
                // Pipelined DATA accepted although no recipient was: end it empty-handed.
                self.write(b".\r\n").await?;
                self.read_reply().await?;
                tx.data = None;
            }
            _ => {}
        }
        if !(tx.mail.is_positive() && tx.data.as_ref().is_some_and(Reply::is_positive)) {
            // Leave the connection clean for the next message.
            self.command(b"RSET\r\n").await?;
        }
        Ok(tx)
    }

    /// Says goodbye; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.command(b"QUIT\r\n")).await;
        let _ = self.stream.shutdown().await;
    }

    async fn write_body(&mut self, body: QueuedBody) -> Result<(), RelayError> {
        const CHUNK: usize = 64 * 1024;
        let mut out = Vec::with_capacity(CHUNK + 1024);
        let mut at_line_start = true;
        // The last two bytes sent: whether the data ended with CRLF.
        let mut tail = *b"\r\n";
        let mut stuffed = async |this: &mut Self, chunk: &[u8]| {
            out.clear();
            at_line_start = dot_stuff(chunk, at_line_start, &mut out);
            match chunk {
                [.., a, b] => tail = [*a, *b],
                [b] => tail = [tail[1], *b],
                [] => {}
            }
            this.write_raw(&out).await
        };
        match body {
            QueuedBody::Bytes(bytes) => {
                for chunk in bytes.chunks(CHUNK) {
                    stuffed(self, chunk).await?;
                }
            }
            QueuedBody::File { file, .. } => {
                let mut file = tokio::fs::File::from_std(file);
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = file.read(&mut buf).await.map_err(|e| RelayError::Body { detail: e.to_string() })?;
                    if n == 0 {
                        break;
                    }
                    stuffed(self, &buf[..n]).await?;
                }
            }
        }
        let end: &[u8] = if &tail == b"\r\n" { b".\r\n" } else { b"\r\n.\r\n" };
        self.write(end).await
    }

    async fn command(&mut self, line: &[u8]) -> Result<Reply, RelayError> {
        self.write(line).await?;
        self.read_reply().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.write_raw(bytes).await?;
        self.stream.flush().await.map_err(|e| self.io_error(e))
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        match tokio::time::timeout(REPLY_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(result) => result.map_err(|e| self.io_error(e)),
            Err(_) => Err(RelayError::Timeout { server: self.server.clone() }),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, RelayError> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.advance(used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    let detail = match e {
                        ReplyError::TooLong => "reply too long".to_string(),
                        ReplyError::Malformed(line) => format!("`{line}`"),
                    };
                    return Err(RelayError::Protocol { server: self.server.clone(), detail });
                }
            }
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Ok(Ok(0)) => return Err(NetError::Closed { server: self.server.clone() }.into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.io_error(e)),
                Err(_) => return Err(RelayError::Timeout { server: self.server.clone() }),
            }
        }
    }

    fn io_error(&self, e: std::io::Error) -> RelayError {
        NetError::Network { server: self.server.clone(), detail: e.to_string() }.into()
    }
}

/// RFC 3461 xtext: `+`, `=`, controls, space and non-ASCII as `+HH`.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Appends `data` to `out` with a dot doubled at the start of every line (RFC 5321 4.5.2).
/// `at_line_start` says whether `data` begins a line; the return value says whether the byte
/// after `data` would.
pub fn dot_stuff(data: &[u8], mut at_line_start: bool, out: &mut Vec<u8>) -> bool {
    let mut rest = data;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                return false;
            }
        }
    }
    at_line_start
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XOAUTH2 as Dovecot, Gmail and Microsoft take it: `AUTH XOAUTH2`, the `334`, the response
    /// on its own line; a refused token's `334 <JSON>` is answered with an empty line.
    #[tokio::test]
    async fn bearer_auth_waits_for_334_and_answers_a_refusal() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let token = Secret::new(b"tok".to_vec());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let response = b64("user=a@x\x01auth=Bearer tok\x01\x01");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tcp = BufReader::new(tcp);
            let mut line = String::new();
            let mut expect = async |tcp: &mut BufReader<tokio::net::TcpStream>, want: &str, reply: &str| {
                line.clear();
                tcp.read_line(&mut line).await.unwrap();
                assert_eq!(line, want);
                tcp.get_mut().write_all(reply.as_bytes()).await.unwrap();
            };
            tcp.get_mut().write_all(b"220 ready\r\n").await.unwrap();
            expect(&mut tcp, "EHLO coi-proxy\r\n", "250-mail.example\r\n250 AUTH PLAIN XOAUTH2 OAUTHBEARER\r\n").await;
            expect(&mut tcp, "AUTH XOAUTH2\r\n", "334 \r\n").await;
            let challenge = format!("334 {}\r\n", b64(r#"{"status":"401","schemes":"bearer","scope":"mail"}"#));
            expect(&mut tcp, &format!("{response}\r\n"), &challenge).await;
            expect(&mut tcp, "\r\n", "535 5.7.8 Authentication failed\r\n").await;
            expect(&mut tcp, "AUTH XOAUTH2\r\n", "334 \r\n").await;
            expect(&mut tcp, &format!("{response}\r\n"), "235 2.7.0 Authenticated\r\n").await;
        });
        let smtp = ServerUrl::parse_smtp(&format!("smtp://127.0.0.1:{port}")).unwrap();
        let provider = SmtpProvider { smtp, ca_file: None };
        let mut client = SmtpClient::connect(&provider, &UpstreamTls::default(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(client.caps.auth_bearer, Some(Mechanism::XOAuth2));
        assert_eq!(client.authenticate_bearer("a@x", &token).await.unwrap().code, 535);
        assert_eq!(client.authenticate_bearer("a@x", &token).await.unwrap().code, 235);
        server.await.unwrap();
        client.caps.auth_bearer = None;
        assert!(matches!(client.authenticate_bearer("a@x", &token).await, Err(RelayError::NoBearerAuth { .. })));
    }

    #[test]
    fn replies_single_multi_partial_and_bad() {
        assert_eq!(parse_reply(b"250 2.1.0 Ok\r\n"), Ok(Some((Reply { code: 250, text: "2.1.0 Ok".into() }, 14))));
        assert_eq!(parse_reply(b"250-mail.example\r\n250-SIZE 100\r\n"), Ok(None));
        let ehlo =
            b"250-mail.example\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\nX";
        let (reply, used) = parse_reply(ehlo).unwrap().unwrap();
        assert_eq!(used, ehlo.len() - 1);
        let caps = ProviderCaps::from_ehlo(&reply);
        assert_eq!(
            caps,
            ProviderCaps {
                size: Some(52428800),
                eight_bit: true,
                pipelining: true,
                auth_plain: true,
                auth_bearer: None,
                ..Default::default()
            }
        );
        assert_eq!(parse_reply(b"220\r\n").unwrap().unwrap().0.code, 220);
        assert!(matches!(parse_reply(b"HTTP/1.1 400\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse_reply(b"250x\r\n"), Err(ReplyError::Malformed(_))));
        assert_eq!(parse_reply(&vec![b'2'; MAX_REPLY_LINE + 10]), Err(ReplyError::TooLong));
        assert!(Reply { code: 451, text: String::new() }.is_transient());
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("hi there+=x"), "hi+20there+2B+3Dx");
    }

    #[test]
    fn dot_stuffing_across_chunks() {
        let mut out = Vec::new();
        let next = dot_stuff(b".a\r\nb\r\n..c\r", true, &mut out);
        assert!(!next);
        let next = dot_stuff(b"\n.", next, &mut out);
        assert!(!next);
        assert_eq!(out, b"..a\r\nb\r\n...c\r\n..");
        let mut out = Vec::new();
        assert!(dot_stuff(b"x\r\n", true, &mut out));
        assert!(!dot_stuff(b".", true, &mut out) && out == b"x\r\n..");
    }
}
