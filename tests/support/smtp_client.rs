//! A raw SMTP client for the tests: sends exactly the bytes a test gives it (so malformed input
//! can be sent too) and reads whole replies, keeping a transcript for failure messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;

pub use super::data_block::data_block;

/// One reply: its code and the text of each line (after `NNN-`/`NNN `).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines, space separated.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
    pub fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l.eq_ignore_ascii_case(line))
    }
}

pub struct SmtpClient<S: Read + Write = TcpStream> {
    conn: BufReader<S>,
    pub greeting: Reply,
    transcript: String,
}

impl SmtpClient<TcpStream> {
    pub fn connect(port: u16) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        SmtpClient::from_stream(tcp)
    }

    /// STARTTLS, then the TLS handshake trusting `ca`.
    pub fn starttls(mut self, ca: &std::path::Path) -> SmtpClient<super::proxy::TlsStream> {
        self.expect("STARTTLS", 220);
        let tcp = self.conn.into_inner();
        let tls = super::proxy::tls_client(tcp, ca, "localhost");
        SmtpClient {
            conn: BufReader::new(tls),
            greeting: Reply { code: 220, lines: Vec::new() },
            transcript: self.transcript,
        }
    }
}

impl<S: Read + Write> SmtpClient<S> {
    /// Wraps a connected stream and reads the greeting.
    pub fn from_stream(stream: S) -> Self {
        let mut c = SmtpClient {
            conn: BufReader::new(stream),
            greeting: Reply { code: 0, lines: Vec::new() },
            transcript: String::new(),
        };
        c.greeting = c.read_reply();
        c
    }

    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\ntranscript:\n{}", self.transcript)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        self.transcript += &format!("C: {shown}{}\n", if bytes.len() > 300 { "…" } else { "" });
        if let Err(e) = self.conn.get_mut().write_all(bytes).and_then(|_| self.conn.get_mut().flush()) {
            self.fail(&format!("write failed: {e}"));
        }
    }

    /// Reads one whole reply.
    pub fn read_reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.conn.read_line(&mut line) {
                Ok(0) => self.fail("connection closed while waiting for a reply"),
                Ok(_) => self.transcript += &format!("S: {line}"),
                Err(e) => self.fail(&format!("read failed: {e}")),
            }
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or_else(|| self.fail("not a reply"));
            lines.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Reply { code, lines };
            }
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn command(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Like `command`, and checks the code.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.command(line);
        if reply.code != code {
            self.fail(&format!("`{line}`: expected {code}, got {reply:?}"));
        }
        reply
    }

    pub fn ehlo(&mut self) -> Reply {
        self.expect("EHLO test.client", 250)
    }

    /// AUTH PLAIN with an initial response; returns the reply (235 on success).
    pub fn auth_plain(&mut self, user: &str, password: &str) -> Reply {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.command(&format!("AUTH PLAIN {b64}"))
    }

    /// EHLO and a successful AUTH PLAIN.
    pub fn login(&mut self, user: &str, password: &str) {
        self.ehlo();
        let reply = self.auth_plain(user, password);
        if reply.code != 235 {
            self.fail(&format!("AUTH failed: {reply:?}"));
        }
    }

    /// One transaction, not pipelined; returns the reply to the end of data (or the first
    /// refusal before it).
    pub fn send_message(&mut self, from: &str, to: &[&str], message: &[u8]) -> Reply {
        let reply = self.command(&format!("MAIL FROM:<{from}>"));
        if reply.code != 250 {
            return reply;
        }
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>"));
            if reply.code != 250 {
                self.expect("RSET", 250);
                return reply;
            }
        }
        self.expect("DATA", 354);
        self.send_raw(&data_block(message));
        self.read_reply()
    }

    /// Waits for the server to close the connection.
    pub fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.conn.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => {}
            Ok(_) => self.fail(&format!("expected EOF, got {:?}", String::from_utf8_lossy(&rest))),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => self.fail(&format!("expected EOF, got error {e}")),
        }
    }
}

/// Every message in `user`'s INBOX at the provider (read directly, not through the proxy), as
/// the raw bytes of `BODY[]`.
pub fn inbox(imap_port: u16, user: &str, password: &str) -> Vec<Vec<u8>> {
    use super::imap_client::ImapClient;
    let mut c = ImapClient::connect(imap_port);
    c.login(user, password);
    let select = c.expect_ok("s SELECT INBOX");
    let exists = select
        .iter()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS\r\n")?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut messages = Vec::new();
    if exists > 0 {
        c.send_raw(b"f FETCH 1:* BODY.PEEK[]\r\n");
        loop {
            let resp = c.read_response_bytes();
            if resp.starts_with(b"f ") {
                break;
            }
            let Some(open) = resp.iter().position(|&b| b == b'{') else { continue };
            let close = open + resp[open..].iter().position(|&b| b == b'}').unwrap();
            let len: usize = std::str::from_utf8(&resp[open + 1..close]).unwrap().parse().unwrap();
            let start = close + 3;
            messages.push(resp[start..start + len].to_vec());
        }
    }
    c.command("z LOGOUT");
    messages
}

/// Polls `user`'s INBOX until `done` says so; panics after `timeout` with what was there.
pub fn wait_for_inbox(
    imap_port: u16,
    user: &str,
    password: &str,
    timeout: Duration,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let messages = inbox(imap_port, user, password);
        if done(&messages) {
            return messages;
        }
        if std::time::Instant::now() > deadline {
            let shown: Vec<String> = messages.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
            panic!(
                "{user}'s INBOX never got what the test waited for; it has {} message(s):\n{shown:#?}",
                messages.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The message without the `Autocrypt` field the proxy adds (`[autocrypt]` is on by default;
/// tests/openpgp_gateway.rs tests what it adds): everything else must arrive byte for byte.
pub fn without_autocrypt(message: &[u8]) -> Vec<u8> {
    let Some(at) = message.windows(13).position(|w| w == b"\r\nAutocrypt: ") else {
        panic!("the proxy adds its Autocrypt header:\n{}", String::from_utf8_lossy(message));
    };
    let mut end = at + 2;
    loop {
        let next = end + message[end..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        end = next;
        if !matches!(message.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    [&message[..at + 2], &message[end..]].concat()
}
