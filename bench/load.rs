//! Load test and account-worker soak against a real Dovecot (issue 7, item 5).
//!
//! 1. Load: `LOAD_SESSIONS` (1,000) concurrent authenticated sessions loop over IDLE, FETCH,
//!    APPEND and NOOP for `LOAD_SECONDS` (300), first directly against Dovecot, then through
//!    `coi-proxy`, so that the proxy's errors come with the direct baseline of the same run.
//! 2. Soak: COI with the `active` filter for one account, `SOAK_MESSAGES` (10,000) LMTP
//!    deliveries, half of them chat messages; every chat message must end in COI.Chats and every
//!    other one stay in INBOX.
//!
//! Run with `cargo bench --bench load` (parameters as environment variables, since cargo bench
//! passes arguments awkwardly); bench/README.md says what is measured and how.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::{Proxy, Rng, env_usize, log_problems, raise_fd_limit};
use provider::{Provider, ProviderOptions};

/// Users the sessions are spread over, so that no user's INBOX sees all the traffic.
const USERS: usize = 25;
/// The account the soak enables COI for; the load never touches it.
const SOAK_USER: &str = "soak";
const PASSWORD: &str = "secret";
/// Messages APPENDed to each user's INBOX before the load, so that FETCH has targets at once.
const SEED_MESSAGES: usize = 10;
/// Parallel LMTP connections of the soak (`Provider::deliver` opens one per message).
const DELIVERERS: usize = 4;
/// How long any one read may take (IDLE excepted) before the connection counts as dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The soak gives up if the worker moves nothing for this long.
const SOAK_STALL: Duration = Duration::from_secs(120);
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";

fn main() {
    let sessions = env_usize("LOAD_SESSIONS", 1_000);
    let seconds = env_usize("LOAD_SECONDS", 300) as u64;
    let soak_messages = env_usize("SOAK_MESSAGES", 10_000);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "coi-proxy load test: {sessions} sessions x {seconds} s each way, soak of {soak_messages} messages \
         (load average before: {})",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    // Every session's socket, twice over for the proxy (which inherits the limit).
    raise_fd_limit(2 * sessions as u64 + 1024);

    let users: Vec<String> = (1..=USERS).map(|i| format!("user{i:02}")).chain([SOAK_USER.to_owned()]).collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        // All sessions of a user come from 127.0.0.1; leave room for the soak's and the worker's.
        max_conns: Some(sessions as u32 + 10),
        ..Default::default()
    });
    let logins: Vec<String> = users[..USERS].iter().map(|u| format!("{u}@example.org")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");

    runtime.block_on(seed(provider.imap_port, &logins));
    let direct = runtime.block_on(run_load(provider.imap_port, &logins, sessions, seconds, None));
    // Let Dovecot reap the direct sessions' processes before the proxied ones need them.
    std::thread::sleep(Duration::from_secs(5));

    let proxy = Proxy::start(&format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n",
        provider.imap_port,
        max = sessions + 100
    ));
    let rss_before = proxy.status_kib("VmRSS:");
    let cpu_before = proxy.cpu_secs();
    let proxied = runtime.block_on(run_load(proxy.port, &logins, sessions, seconds, Some(&proxy)));
    let cpu_load = proxy.cpu_secs() - cpu_before;
    let rss_after_load = proxy.status_kib("VmRSS:");

    let cpu_before = proxy.cpu_secs();
    let soak = runtime.block_on(run_soak(&provider, &proxy, soak_messages));
    let cpu_soak = proxy.cpu_secs() - cpu_before;

    println!(
        "\nLoad: {sessions} sessions, {seconds} s each way, {USERS} users; mix IDLE (DONE after 1-5 s) / FETCH BODY.PEEK[] / APPEND 5-50 KB / NOOP"
    );
    println!(
        "  {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "", "commands", "IDLE", "FETCH", "APPEND", "NOOP", "LOGIN", "errors", "dropped"
    );
    for (what, r) in [("direct", &direct), ("proxied", &proxied)] {
        r.print(what);
    }
    println!(
        "  proxy: VmRSS {rss_before} KiB before, peak {} KiB sampled during the load (VmHWM {} KiB), {rss_after_load} KiB after",
        proxied.peak_rss_kib,
        proxy.status_kib("VmHWM:")
    );
    println!(
        "  proxy CPU: {cpu_load:.1} s over {seconds} s of load ({:.0}% of one core)",
        100.0 * cpu_load / seconds as f64
    );
    for (what, r) in [("direct", &direct), ("proxied", &proxied)] {
        for e in r.samples.lock().unwrap().iter() {
            println!("  {what} error: {e}");
        }
    }
    soak.print(cpu_soak);
    println!("  proxy VmRSS after the soak: {} KiB", proxy.status_kib("VmRSS:"));

    let problems = log_problems(&proxy.log);
    drop(proxy);
    for (what, lines) in [("coi-proxy", problems), ("Dovecot", log_problems(&provider.log))] {
        if !lines.is_empty() {
            println!("\n{what} logged {} warnings/errors; distinct ones (first 10), with counts:", lines.len());
            for (text, count) in distinct(&lines).iter().take(10) {
                println!("  {count:6} x {text}");
            }
        }
    }
}

/// The commands of the mix, indexes into `LoadResult::done`/`failed`.
#[derive(Clone, Copy)]
enum Op {
    Idle,
    Fetch,
    Append,
    Noop,
    Login,
}

const OPS: usize = 5;

/// Counters shared by all sessions of one load run.
#[derive(Default)]
struct LoadResult {
    done: [AtomicU64; OPS],
    /// Non-OK tagged responses, per command.
    failed: [AtomicU64; OPS],
    /// Connections that broke (EOF, reset, read timeout); the session reconnects.
    dropped: AtomicU64,
    /// The first few failures, for the report.
    samples: Mutex<Vec<String>>,
    peak_rss_kib: u64,
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

    fn print(&self, what: &str) {
        let n = |a: &[AtomicU64; OPS], op: Op| a[op as usize].load(Ordering::Relaxed);
        let total: u64 = self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        let errors: u64 = self.failed.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        let dropped = self.dropped.load(Ordering::Relaxed);
        println!(
            "  {what:<8} {total:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {dropped:>8}",
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
async fn seed(port: u16, logins: &[String]) {
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
async fn run_load(port: u16, logins: &[String], sessions: usize, seconds: u64, proxy: Option<&Proxy>) -> LoadResult {
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
            peak = peak.max(proxy.status_kib("VmRSS:"));
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
fn message(to: &str, id: &str, chat: bool, rng: &mut Rng) -> Vec<u8> {
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

fn random_id(rng: &mut Rng) -> String {
    format!("<load-{:x}@example.net>", rng.next_u64())
}

struct SoakResult {
    messages: usize,
    deliver_secs: f64,
    /// From the first delivery until both folders held what they should.
    caught_up_secs: Option<f64>,
    inbox: usize,
    chats: usize,
    /// Message-IDs in the wrong folder, missing, or duplicated.
    wrong: Vec<String>,
}

impl SoakResult {
    fn print(&self, cpu: f64) {
        let chats = self.messages / 2;
        println!(
            "\nSoak: {} LMTP deliveries ({chats} with Chat-Version, {} without) over {DELIVERERS} connections in {:.1} s ({:.0}/s)",
            self.messages,
            self.messages - chats,
            self.deliver_secs,
            self.messages as f64 / self.deliver_secs
        );
        match self.caught_up_secs {
            Some(s) => println!("  worker caught up {s:.1} s after the first delivery"),
            None => println!("  worker did NOT catch up (nothing moved for {} s)", SOAK_STALL.as_secs()),
        }
        println!(
            "  INBOX {} (want {}), COI.Chats {} (want {chats}); proxy CPU {cpu:.1} s",
            self.inbox,
            self.messages - chats,
            self.chats
        );
        if self.wrong.is_empty() {
            println!("  Message-ID sets: every chat message in COI.Chats, every other one in INBOX: PASS");
        } else {
            println!("  Message-ID sets: {} misplaced, missing or duplicated: FAIL", self.wrong.len());
            for w in self.wrong.iter().take(10) {
                println!("    {w}");
            }
        }
    }
}

async fn run_soak(provider: &Provider, proxy: &Proxy, messages: usize) -> SoakResult {
    let login = format!("{SOAK_USER}@example.org");
    // Through the proxy: LOGIN gives it the credentials its worker logs in with.
    let mut client = Conn::login(proxy.port, &login).await.expect("soak login through the proxy");
    let reply =
        client.command(&format!("SETMETADATA \"\" ({ENABLED} yes {FILTER} active)")).await.expect("SETMETADATA");
    assert!(reply.ok, "SETMETADATA: {}", reply.status);

    let chat_id = |i: usize| format!("<soak-chat-{i}@example.net>");
    let plain_id = |i: usize| format!("<soak-plain-{i}@example.net>");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for d in 0..DELIVERERS {
            let login = &login;
            scope.spawn(move || {
                let mut rng = Rng(0x1234_5678 + d as u64);
                for i in (d..messages).step_by(DELIVERERS) {
                    // Even numbers are chat messages, so chats and others interleave.
                    let (id, chat) = if i % 2 == 0 { (chat_id(i), true) } else { (plain_id(i), false) };
                    provider.deliver("sender@example.net", login, &message(login, &id, chat, &mut rng));
                }
            });
        }
    });
    let deliver_secs = started.elapsed().as_secs_f64();

    // Directly at Dovecot, so that the proxy's view of the folders plays no part.
    let want_chats = messages.div_ceil(2);
    let want_inbox = messages - want_chats;
    let mut direct = Conn::login(provider.imap_port, &login).await.expect("direct soak login");
    let (mut last, mut progressed) = ((0, 0), Instant::now());
    let caught_up_secs = loop {
        // Dovecot answers STATUS of the selected INBOX from the session's view: sync it first.
        assert!(direct.command("NOOP").await.expect("NOOP").ok, "NOOP");
        let counts = (direct.status_messages("INBOX").await, direct.status_messages("COI.Chats").await);
        if counts == (want_inbox, want_chats) {
            break Some(started.elapsed().as_secs_f64());
        }
        if counts != last {
            (last, progressed) = (counts, Instant::now());
        } else if progressed.elapsed() > SOAK_STALL {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let inbox = direct.message_ids("INBOX").await;
    let chats = direct.message_ids("COI.Chats").await;
    let mut wrong = Vec::new();
    for (folder, ids, want) in [
        ("INBOX", &inbox, (0..messages).filter(|i| i % 2 == 1).map(plain_id).collect::<BTreeSet<_>>()),
        ("COI.Chats", &chats, (0..messages).filter(|i| i % 2 == 0).map(chat_id).collect()),
    ] {
        let have: BTreeSet<String> = ids.iter().cloned().collect();
        if have.len() != ids.len() {
            wrong.push(format!("{folder}: {} duplicates", ids.len() - have.len()));
        }
        wrong.extend(want.difference(&have).map(|id| format!("{folder}: missing {id}")));
        wrong.extend(have.difference(&want).map(|id| format!("{folder}: unexpected {id}")));
    }
    let _ = client.command("LOGOUT").await;
    SoakResult { messages, deliver_secs, caught_up_secs, inbox: inbox.len(), chats: chats.len(), wrong }
}

/// A tagged response, with the untagged data before it (literals included).
struct Reply {
    ok: bool,
    /// The tagged line after the tag.
    status: String,
    data: Vec<u8>,
}

/// A minimal async IMAP client: finds the ends of responses (line ends, literal lengths) and
/// tracks the selected mailbox's EXISTS, nothing more.
struct Conn {
    stream: BufReader<TcpStream>,
    /// A line read so far; kept across a read that timed out (`read_until` appends).
    partial: Vec<u8>,
    next_tag: u32,
    exists: u32,
}

impl Conn {
    /// Connects, logs in and selects INBOX.
    async fn login(port: u16, login: &str) -> io::Result<Conn> {
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

    async fn command(&mut self, command: &str) -> io::Result<Reply> {
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
    async fn append(&mut self, message: &[u8]) -> io::Result<Reply> {
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
    async fn idle(&mut self, wait: Duration) -> io::Result<Reply> {
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
    async fn status_messages(&mut self, mailbox: &str) -> usize {
        let reply = self.command(&format!("STATUS {mailbox} (MESSAGES)")).await.expect("STATUS");
        if !reply.ok {
            return 0; // COI.Chats does not exist before the worker's first move
        }
        let text = String::from_utf8_lossy(&reply.data);
        let n = text.split("(MESSAGES ").nth(1).and_then(|r| r.split(')').next()?.parse().ok());
        n.unwrap_or_else(|| panic!("STATUS {mailbox}: {text}"))
    }

    /// Every Message-ID in `mailbox`, in UID order (soak only).
    async fn message_ids(&mut self, mailbox: &str) -> Vec<String> {
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

/// The length of the literal announced at the end of `line` (`{n}` or `{n+}` before CRLF).
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// Log lines grouped by their text from the severity marker on (dropping times, pids and
/// session ids), most frequent first, so that one repeated warning does not hide the others.
fn distinct(lines: &[String]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in lines {
        let at = ["WARN", "ERROR", "Warning:", "Error:", "Fatal:", "Panic:"].iter().filter_map(|m| line.find(m)).min();
        *counts.entry(line[at.unwrap_or(0)..].to_owned()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
}
