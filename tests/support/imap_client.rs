//! A tiny blocking IMAP client for tests that must see the exact bytes on
//! the wire: no parsing beyond "where does a response end", and every failure
//! (timeout, EOF, NO/BAD where OK was expected) panics with the transcript.
//!
//! Generic over the stream so that TLS can be layered under it; plain TCP via
//! [`ImapClient::connect`].

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Read timeout of a new connection; long enough for a loaded CI machine,
/// short enough that a hanging test fails visibly.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One IMAP connection; lines are kept with their CRLF, as sent.
pub struct ImapClient<S: Read + Write = TcpStream> {
    /// The server greeting, CRLF included.
    pub greeting: String,
    conn: BufReader<S>,
    transcript: String,
    next_tag: u32,
}

impl ImapClient<TcpStream> {
    /// Connects to 127.0.0.1:`port` and reads the greeting.
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("IMAP: cannot connect to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT)).expect("set_read_timeout");
        Self::from_stream(stream)
    }

    /// Changes the read timeout, e.g. to wait longer for an IDLE update.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.conn.get_ref().set_read_timeout(Some(timeout)).expect("set_read_timeout");
    }

    /// The next line if one arrives within `timeout`, `None` if the server stays silent.
    pub fn line_within(&mut self, timeout: Duration) -> Option<String> {
        self.set_timeout(timeout);
        let mut line = Vec::new();
        let result = self.conn.read_until(b'\n', &mut line);
        self.set_timeout(DEFAULT_TIMEOUT);
        match result {
            Ok(_) if !line.is_empty() => {
                let line = String::from_utf8_lossy(&line).into_owned();
                self.transcript += &format!("S: {line}");
                Some(line)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) && line.is_empty() => None,
            Ok(_) => self.fail("connection closed by the server"),
            Err(e) => self.read_error(e),
        }
    }
}

impl<S: Read + Write> ImapClient<S> {
    /// Wraps an established connection (set its read timeout first) and
    /// reads the greeting.
    pub fn from_stream(stream: S) -> Self {
        let mut client = ImapClient {
            greeting: String::new(),
            conn: BufReader::new(stream),
            transcript: String::new(),
            next_tag: 1,
        };
        client.greeting = client.read_line();
        client
    }

    /// Wraps a connection whose greeting was already read (e.g. after STARTTLS).
    pub fn from_stream_no_greeting(stream: S) -> Self {
        ImapClient { greeting: String::new(), conn: BufReader::new(stream), transcript: String::new(), next_tag: 1 }
    }

    /// Everything sent ("C: ") and received ("S: ") so far, lossily as UTF-8.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Panics with `msg` and the transcript.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("IMAP: {msg}\ntranscript:\n{}", self.transcript)
    }

    /// Sends bytes as they are (no CRLF added).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.transcript += &format!("C: {}", String::from_utf8_lossy(bytes));
        if !bytes.ends_with(b"\n") {
            self.transcript.push('\n');
        }
        if let Err(e) = self.conn.get_mut().write_all(bytes).and_then(|()| self.conn.get_mut().flush()) {
            self.fail(&format!("write failed: {e}"));
        }
    }

    /// Reads one complete response: a CRLF-terminated line, and if it ends in
    /// a literal announcement (`{n}`, `{n+}`, `~{n}`), the n bytes plus the
    /// rest of the response, as often as needed. CRLF included.
    pub fn read_response_bytes(&mut self) -> Vec<u8> {
        let mut response = Vec::new();
        loop {
            let start = response.len();
            match self.conn.read_until(b'\n', &mut response) {
                Ok(0) => self.fail("connection closed by the server"),
                Ok(_) if response.ends_with(b"\n") => {}
                Ok(_) => self.fail("connection closed by the server mid-line"),
                Err(e) => self.read_error(e),
            }
            let line = &response[start..];
            self.transcript += &format!("S: {}", String::from_utf8_lossy(line));
            let Some(n) = literal_len(line) else {
                return response;
            };
            let mut literal = vec![0; n];
            if let Err(e) = self.conn.read_exact(&mut literal) {
                self.read_error(e);
            }
            self.transcript += &String::from_utf8_lossy(&literal);
            response.extend_from_slice(&literal);
        }
    }

    /// [`read_response_bytes`](Self::read_response_bytes), lossily as UTF-8.
    pub fn read_line(&mut self) -> String {
        String::from_utf8_lossy(&self.read_response_bytes()).into_owned()
    }

    /// Sends `"{tag_and_command}\r\n"` and reads responses up to the tagged
    /// one (the first word is the tag). Returns all of them, CRLFs included;
    /// the last is the tagged status. Continuation requests (`+ `) are
    /// returned too, so a synchronising literal needs `send_raw` instead.
    pub fn command(&mut self, tag_and_command: &str) -> Vec<String> {
        let tag = tag_and_command.split(' ').next().unwrap_or_default();
        let tag_prefix = format!("{tag} ");
        self.send_raw(format!("{tag_and_command}\r\n").as_bytes());
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            let done = line.starts_with(&tag_prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Like [`command`](Self::command), but panics unless the status is OK.
    pub fn expect_ok(&mut self, tag_and_command: &str) -> Vec<String> {
        let lines = self.command(tag_and_command);
        let tag = tag_and_command.split(' ').next().unwrap_or_default();
        if !lines.last().is_some_and(|l| l.starts_with(&format!("{tag} OK"))) {
            self.fail(&format!("expected OK for {tag_and_command:?}"));
        }
        lines
    }

    /// LOGIN with quoted credentials; panics unless OK.
    pub fn login(&mut self, user: &str, pass: &str) -> Vec<String> {
        let tag = format!("L{}", self.next_tag);
        self.next_tag += 1;
        self.expect_ok(&format!("{tag} LOGIN {} {}", quote(user), quote(pass)))
    }

    /// Panics unless the server closes the connection before sending more.
    pub fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.conn.read_until(b'\n', &mut rest) {
            Ok(0) => {}
            Ok(_) => {
                self.transcript += &format!("S: {}", String::from_utf8_lossy(&rest));
                self.fail("expected the connection to be closed");
            }
            // an RST instead of a FIN still means closed
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => self.read_error(e),
        }
    }

    fn read_error(&self, e: std::io::Error) -> ! {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.fail("timed out waiting for the server"),
            _ => self.fail(&format!("read failed: {e}")),
        }
    }
}

/// The n of a literal announced at the end of `line` (`{n}`, `{n+}`, and
/// `~{n}` for literal8, which ends the same way).
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
