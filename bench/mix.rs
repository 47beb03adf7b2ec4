//! The mixed load of many concurrent sessions (tokio tasks, one per session): each logs in,
//! selects INBOX and loops over equally likely IDLE (DONE after 1-5 s), FETCH of a random message,
//! APPEND of 5-50 KB (synchronizing literal) and NOOP, reconnecting after a dropped connection;
//! plus the minimal async IMAP client it runs on, which the load's soak also uses.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::client::PASSWORD;
use crate::common::{Processes, Rng, literal_len};

/// How long any one read may take (IDLE excepted) before the connection counts as dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages APPENDed to each user's INBOX before the load, so that FETCH has targets at once.
const SEED_MESSAGES: usize = 10;

/// The commands of the mix, indexes into `LoadResult::done`/`failed`.
#[derive(Clone, Copy)]
pub enum Op {
    Idle,
    Fetch,
    Append,
    Noop,
    Login,
}

const OPS: usize = 5;

/// Counters shared by all sessions of one load run.
#[derive(Default)]
pub struct LoadResult {
    done: [AtomicU64; OPS],
    /// Non-OK tagged responses, per command.
    failed: [AtomicU64; OPS],
    /// Connections that broke (EOF, reset, read timeout); the session reconnects.
    dropped: AtomicU64,
    /// The first few failures, for the report.
    samples: Mutex<Vec<String>>,
    /// The proxy's VmRSS, sampled every second.
    pub peak_rss_kib: u64,
}

impl LoadResult {
    fn fail(&self, op: Option<Op>, what: String) {
        match op {
            Some(op) => self.failed[op as usize].fetch_add(1, Ordering::Relaxed),
            None => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 10 {
            samples.push(what);
        }
    }

    pub fn print_header() {
        println!("  mix: IDLE (DONE after 1-5 s) / FETCH BODY.PEEK[] / APPEND 5-50 KB / NOOP, equally likely");
        println!(
            "  {:<18} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
            "", "commands", "IDLE", "FETCH", "APPEND", "NOOP", "LOGIN", "errors", "dropped"
        );
    }

    /// The first few failures.
    pub fn print_errors(&self, what: &str) {
        for e in self.samples.lock().unwrap().iter() {
            println!("  {what} error: {e}");
        }
    }

    /// Commands completed, all kinds together.
    pub fn commands(&self) -> u64 {
        self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// Failed commands and dropped connections.
    pub fn errors(&self) -> u64 {
        self.failed.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>() + self.dropped.load(Ordering::Relaxed)
    }

    pub fn print(&self, what: &str) {
        let n = |a: &[AtomicU64; OPS], op: Op| a[op as usize].load(Ordering::Relaxed);
        let total: u64 = self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        let errors: u64 = self.failed.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        let dropped = self.dropped.load(Ordering::Relaxed);
        println!(
            "  {what:<18} {total:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {dropped:>8}",
            n(&self.done, Op::Idle),
            n(&self.done, Op::Fetch),
            n(&self.done, Op::Append),
            n(&self.done, Op::Noop),
            n(&self.done, Op::Login),
            errors + dropped,
        );
    }
}

/// Puts a few messages into every user's INBOX, directly.
pub async fn seed(port: u16, logins: &[String]) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for login in logins {
        let mut conn = Conn::login(port, login).await.expect("seed login");
        for _ in 0..SEED_MESSAGES {
            let reply = conn.append(&message(login, &random_id(&mut rng), false, &mut rng)).await.expect("seed APPEND");
            assert!(reply.ok, "seed APPEND: {}", reply.status);
        }
    }
}

/// Runs `sessions` looping sessions for `seconds`; logins are spread over the first tenth of
/// the time (at most 10 s), so that Dovecot's login processes are not the test. With a proxy,
/// its VmRSS is sampled every second.
pub async fn run_load(
    port: u16,
    logins: &[String],
    sessions: usize,
    seconds: u64,
    proxy: Option<&dyn Processes>,
) -> LoadResult {
    let result = Arc::new(LoadResult::default());
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let ramp = Duration::from_secs(seconds.div_ceil(10).min(10));
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let login = logins[i % logins.len()].clone();
            let start = started + ramp.mul_f64(i as f64 / sessions as f64);
            let result = result.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                session(port, login, deadline.into_std(), i as u64, &result).await;
            })
        })
        .collect();
    let mut peak = 0;
    while tokio::time::Instant::now() < deadline {
        if let Some(proxy) = proxy {
            peak = peak.max(proxy.rss_kib());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for task in tasks {
        task.await.expect("session task");
    }
    let mut result = Arc::into_inner(result).expect("every session has ended");
    result.peak_rss_kib = peak;
    result
}

/// One client: logs in, then runs random commands of the mix until `deadline`; reconnects
/// after a dropped connection.
async fn session(port: u16, login: String, deadline: Instant, seed: u64, result: &LoadResult) {
    let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    while Instant::now() < deadline {
        let mut conn = match Conn::login(port, &login).await {
            Ok(conn) => conn,
            Err(e) => {
                result.fail(Some(Op::Login), format!("{login}: login: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        result.done[Op::Login as usize].fetch_add(1, Ordering::Relaxed);
        while Instant::now() < deadline {
            let op = [Op::Idle, Op::Fetch, Op::Append, Op::Noop][rng.below(4)];
            let reply = match op {
                Op::Idle => conn.idle(Duration::from_millis(1_000 + rng.below(4_001) as u64)).await,
                Op::Fetch if conn.exists > 0 => {
                    conn.command(&format!("FETCH {} BODY.PEEK[]", 1 + rng.below(conn.exists as usize))).await
                }
                Op::Append => conn.append(&message(&login, &random_id(&mut rng), false, &mut rng)).await,
                _ => conn.command("NOOP").await,
            };
            match reply {
                Ok(reply) if reply.ok => {
                    result.done[op as usize].fetch_add(1, Ordering::Relaxed);
                }
                Ok(reply) => result.fail(Some(op), format!("{login}: {}", reply.status)),
                Err(e) => {
                    result.fail(None, format!("{login}: connection: {e}"));
                    break;
                }
            }
        }
    }
}

/// A 5-50 KB text message; `chat` adds the header that makes it a chat message.
pub fn message(to: &str, id: &str, chat: bool, rng: &mut Rng) -> Vec<u8> {
    let size = 5_000 + rng.below(45_001);
    let chat_header = if chat { "Chat-Version: 1.0\r\n" } else { "" };
    let mut m = format!(
        "From: Load <load@example.net>\r\nTo: {to}\r\nSubject: load\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: {id}\r\n{chat_header}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    while m.len() + 78 < size {
        m.extend((0..76).map(|_| b'a' + rng.below(26) as u8));
        m.extend_from_slice(b"\r\n");
    }
    m
}

pub fn random_id(rng: &mut Rng) -> String {
    format!("<load-{:x}@example.net>", rng.next_u64())
}

/// A tagged response, with the untagged data before it (literals included).
pub struct Reply {
    pub ok: bool,
    /// The tagged line after the tag.
    pub status: String,
    pub data: Vec<u8>,
}

/// A minimal async IMAP client: finds the ends of responses (line ends, literal lengths) and
/// tracks the selected mailbox's EXISTS, nothing more.
pub struct Conn {
    stream: BufReader<TcpStream>,
    /// A line read so far; kept across a read that timed out (`read_until` appends).
    partial: Vec<u8>,
    next_tag: u32,
    pub exists: u32,
}

impl Conn {
    /// Connects, logs in and selects INBOX.
    pub async fn login(port: u16, login: &str) -> io::Result<Conn> {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await??;
        stream.set_nodelay(true)?;
        let mut conn = Conn { stream: BufReader::new(stream), partial: Vec::new(), next_tag: 1, exists: 0 };
        let greeting = conn.line().await?;
        if !greeting.starts_with(b"* OK") {
            return Err(io::Error::other(format!("greeting {}", String::from_utf8_lossy(&greeting).trim_end())));
        }
        for command in [format!("LOGIN {login} {PASSWORD}"), "SELECT INBOX".into()] {
            let reply = conn.command(&command).await?;
            if !reply.ok {
                return Err(io::Error::other(format!("{command}: {}", reply.status)));
            }
        }
        Ok(conn)
    }

    /// The next line, CRLF included; counts the mailbox size on the way.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        tokio::time::timeout(READ_TIMEOUT, self.line_untimed())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))?
    }

    /// Cancel-safe: a partial line stays in `partial` for the next call.
    async fn line_untimed(&mut self) -> io::Result<Vec<u8>> {
        if self.stream.read_until(b'\n', &mut self.partial).await? == 0 || !self.partial.ends_with(b"\n") {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = std::mem::take(&mut self.partial);
        if let Some(n) = line.strip_prefix(b"* ").and_then(|l| l.strip_suffix(b" EXISTS\r\n")) {
            self.exists = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()).unwrap_or(self.exists);
        }
        Ok(line)
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("l{}", self.next_tag)
    }

    pub async fn command(&mut self, command: &str) -> io::Result<Reply> {
        let tag = self.tag();
        self.stream.get_mut().write_all(format!("{tag} {command}\r\n").as_bytes()).await?;
        self.reply(&tag).await
    }

    /// Reads up to and including the tagged response.
    async fn reply(&mut self, tag: &str) -> io::Result<Reply> {
        let mut data = Vec::new();
        loop {
            let line = self.line().await?;
            if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
                let status = String::from_utf8_lossy(&line[tag.len() + 1..]).trim_end().to_owned();
                return Ok(Reply { ok: status.starts_with("OK"), status, data });
            }
            data.extend_from_slice(&line);
            if let Some(n) = literal_len(&line) {
                let start = data.len();
                data.resize(start + n, 0);
                tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut data[start..]))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "literal timed out"))??;
            }
        }
    }

    /// Reads untagged lines until the continuation request; a tagged line instead is the reply.
    async fn continuation(&mut self, tag: &str) -> io::Result<Option<Reply>> {
        loop {
            let line = self.line().await?;
            if line.starts_with(b"+") {
                return Ok(None);
            }
            if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
                let status = String::from_utf8_lossy(&line[tag.len() + 1..]).trim_end().to_owned();
                return Ok(Some(Reply { ok: false, status, data: Vec::new() }));
            }
        }
    }

    /// APPEND to INBOX with a synchronizing literal, as clients without LITERAL+ do.
    pub async fn append(&mut self, message: &[u8]) -> io::Result<Reply> {
        let tag = self.tag();
        let stream = self.stream.get_mut();
        stream.write_all(format!("{tag} APPEND INBOX {{{}}}\r\n", message.len()).as_bytes()).await?;
        if let Some(refused) = self.continuation(&tag).await? {
            return Ok(refused);
        }
        let stream = self.stream.get_mut();
        stream.write_all(&[message, b"\r\n"].concat()).await?;
        self.reply(&tag).await
    }

    /// IDLE for `wait`, reading whatever the server reports meanwhile, then DONE.
    pub async fn idle(&mut self, wait: Duration) -> io::Result<Reply> {
        let tag = self.tag();
        self.stream.get_mut().write_all(format!("{tag} IDLE\r\n").as_bytes()).await?;
        if let Some(refused) = self.continuation(&tag).await? {
            return Ok(refused);
        }
        let done = tokio::time::Instant::now() + wait;
        while let Ok(line) = tokio::time::timeout_at(done, self.line_untimed()).await {
            line?;
        }
        self.stream.get_mut().write_all(b"DONE\r\n").await?;
        self.reply(&tag).await
    }

    /// MESSAGES of a mailbox by STATUS; panics on failure (soak only).
    pub async fn status_messages(&mut self, mailbox: &str) -> usize {
        let reply = self.command(&format!("STATUS {mailbox} (MESSAGES)")).await.expect("STATUS");
        if !reply.ok {
            return 0; // COI.Chats does not exist before the worker's first move
        }
        let text = String::from_utf8_lossy(&reply.data);
        let n = text.split("(MESSAGES ").nth(1).and_then(|r| r.split(')').next()?.parse().ok());
        n.unwrap_or_else(|| panic!("STATUS {mailbox}: {text}"))
    }

    /// Every Message-ID in `mailbox`, in UID order (soak only).
    pub async fn message_ids(&mut self, mailbox: &str) -> Vec<String> {
        let reply = self.command(&format!("EXAMINE {mailbox}")).await.expect("EXAMINE");
        assert!(reply.ok, "EXAMINE {mailbox}: {}", reply.status);
        if self.exists == 0 {
            return Vec::new();
        }
        let reply = self.command("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").await.expect("FETCH");
        assert!(reply.ok, "FETCH Message-IDs in {mailbox}: {}", reply.status);
        String::from_utf8_lossy(&reply.data)
            .lines()
            .filter_map(|l| l.strip_prefix("Message-ID: ").or_else(|| l.strip_prefix("Message-Id: ")))
            .map(|id| id.trim().to_owned())
            .collect()
    }
}
