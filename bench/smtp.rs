//! SMTP submission throughput against a real Dovecot (issue 4, Benchmark).
//!
//! `SMTP_MESSAGES` (1,000) messages of 20 KB over one authenticated connection (AUTH PLAIN,
//! MAIL/RCPT/DATA pipelined), first straight to Dovecot's submission port, then through the
//! proxy's submission listener (`[upstream] smtp` = that port), in one run; prints messages/s for
//! both and the ratio (target >= 0.8; the proxy fsyncs every accepted message). Then it polls the
//! recipient's INBOX at Dovecot over IMAP (STATUS, fresh connection each time) until the
//! proxy's queue has relayed everything, and prints how long that took.
//!
//! Then concurrent submitters through the proxy (issue 13, item 4): for each N of
//! `SMTP_CONCURRENCY` (1, 8, 32), N connections, each its own account, share `SMTP_MESSAGES`
//! messages; messages/s = all of them / time from the first MAIL to the last `250`. Each `250`
//! still waits for the commit that holds its message; concurrent commits may share one fsync.
//! Between the levels the queue is left to drain, so that each level starts from an empty queue.
//!
//! Run with `cargo bench --bench smtp`; bench/README.md has the figures.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::Engine;

use common::{Proxy, env_list, env_usize, load_average, print_problems, verdict};
use data_block::data_block;
use provider::{Provider, ProviderOptions};

const SENDER: &str = "alice@example.org";
/// Recipient of the direct run.
const DIRECT_RCPT: &str = "carol@example.org";
/// Recipient of the proxied run, whose INBOX is polled for the queue's relaying.
const PROXIED_RCPT: &str = "bob@example.org";
const MESSAGE_SIZE: usize = 20 * 1024;
/// Untimed messages each way first (to the sender's own INBOX).
const WARMUP: usize = 10;
/// Gives up if the recipient's INBOX does not grow for this long.
const RELAY_STALL: Duration = Duration::from_secs(120);
/// Most concurrent submitters of a level; each logs in as its own user (`sub01`…).
const MAX_SUBMITTERS: usize = 32;

fn main() {
    let messages = env_usize("SMTP_MESSAGES", 1_000);
    let levels = env_list("SMTP_CONCURRENCY", &[1, 8, 32]);
    assert!(
        levels.iter().all(|&n| (1..=MAX_SUBMITTERS).contains(&n)),
        "SMTP_CONCURRENCY: each level must be 1 to {MAX_SUBMITTERS}"
    );
    println!(
        "coi-proxy SMTP submission bench: {messages} messages of {MESSAGE_SIZE} bytes each way (load average before: {})",
        load_average()
    );
    let users = ["alice", "bob", "carol"].map(String::from).into_iter().chain((1..=MAX_SUBMITTERS).map(submitter));
    let provider = Provider::start_with(ProviderOptions { users: Some(users.collect()), ..Default::default() });
    let password = provider.password.clone();
    let proxy = Proxy::start(&format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\nsmtp = \"smtp://127.0.0.1:{}\"\n\
         [listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\nsmtp = \"127.0.0.1:0\"\nsmtps = \"127.0.0.1:0\"\n",
        provider.imap_port, provider.smtp_port
    ));

    // Direct.
    let mut c = Smtp::login(provider.smtp_port, SENDER, &password);
    c.send_many(SENDER, SENDER, WARMUP, "warm-direct");
    let direct = c.send_many(SENDER, DIRECT_RCPT, messages, "direct");
    c.quit();

    // Through the proxy.
    let mut c = Smtp::login(proxy.smtp_port.expect("the proxy's smtp listener"), SENDER, &password);
    c.send_many(SENDER, SENDER, WARMUP, "warm-proxied");
    let base = inbox_count(provider.imap_port, PROXIED_RCPT, &password);
    let started = Instant::now();
    let proxied = c.send_many(SENDER, PROXIED_RCPT, messages, "proxied");
    let accepted = started.elapsed();
    c.quit();

    // Until the queue has relayed everything.
    let relayed = wait_for_relay(provider.imap_port, &password, base, messages, started);
    let direct_rate = messages as f64 / direct.as_secs_f64();
    let proxied_rate = messages as f64 / proxied.as_secs_f64();
    let ratio = proxied_rate / direct_rate;
    println!("\nSubmission, {messages} x {MESSAGE_SIZE} bytes, one connection, AUTH PLAIN, MAIL/RCPT/DATA pipelined");
    println!("  direct   {direct_rate:8.1} msg/s  ({:.2} s)", direct.as_secs_f64());
    println!("  proxied  {proxied_rate:8.1} msg/s  ({:.2} s)", proxied.as_secs_f64());
    println!("  ratio    {ratio:8.3}   target >= 0.8: {}", verdict(ratio >= 0.8));
    println!(
        "Queue: all {messages} relayed to Dovecot {:.2} s after the first submission ({:.2} s after the last 250)",
        relayed.as_secs_f64(),
        (relayed - accepted).as_secs_f64()
    );

    // Concurrent submitters through the proxy.
    let proxy_port = proxy.smtp_port.expect("the proxy's smtp listener");
    println!(
        "\nConcurrent submission through the proxy, {messages} x {MESSAGE_SIZE} bytes per level, one account per connection"
    );
    for &n in &levels {
        let base = inbox_count(provider.imap_port, PROXIED_RCPT, &password);
        let (took, started) = submit_concurrently(proxy_port, &password, n, messages);
        let relayed = wait_for_relay(provider.imap_port, &password, base, messages, started);
        println!(
            "  {n:>2} submitters {:8.1} msg/s  ({:.2} s; queue relayed all {:.2} s after the first MAIL)",
            messages as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            relayed.as_secs_f64()
        );
    }
    print_problems(&[("coi-proxy", proxy.problems())]);
}

/// The login of the `i`th concurrent submitter (1-based).
fn submitter(i: usize) -> String {
    format!("sub{i:02}")
}

/// `n` connections, each logged in as its own submitter, send `messages` to the proxied
/// recipient between them; the time from the first MAIL to the last `250`, and when the first
/// MAIL went out.
fn submit_concurrently(port: u16, password: &str, n: usize, messages: usize) -> (Duration, Instant) {
    let start = Barrier::new(n + 1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let start = &start;
                scope.spawn(move || {
                    let login = format!("{}@example.org", submitter(i + 1));
                    let mut c = Smtp::login(port, &login, password);
                    let share = messages / n + usize::from(i < messages % n);
                    start.wait();
                    c.send_many(&login, PROXIED_RCPT, share, &format!("concurrent{n}-{i}"));
                    c.quit();
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        for t in threads {
            t.join().expect("a submitter failed");
        }
        (started.elapsed(), started)
    })
}

/// Polls the proxied recipient's INBOX until it holds `base + messages`; the time since
/// `started`.
fn wait_for_relay(imap_port: u16, password: &str, base: usize, messages: usize, started: Instant) -> Duration {
    let mut last = (base, Instant::now());
    loop {
        let n = inbox_count(imap_port, PROXIED_RCPT, password);
        if n >= base + messages {
            return started.elapsed();
        }
        if n != last.0 {
            last = (n, Instant::now());
        }
        assert!(
            last.1.elapsed() < RELAY_STALL,
            "the queue relayed nothing for {RELAY_STALL:?}: {} of {messages} arrived",
            n - base
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 20 KB plain-text message with a unique Message-ID, CRLF line ends.
fn message(from: &str, to: &str, id: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: bench {id}\r\nMessage-ID: <{id}@bench.example.org>\r\n\
         Date: Mon, 2 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrstu\r\n";
    while m.len() + line.len() <= MESSAGE_SIZE {
        m.extend_from_slice(line);
    }
    m.resize(MESSAGE_SIZE - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

/// A minimal blocking SMTP client (after tests/support/smtp_client.rs).
struct Smtp {
    conn: BufReader<TcpStream>,
    pipelining: bool,
}

impl Smtp {
    fn login(port: u16, user: &str, password: &str) -> Smtp {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut c = Smtp { conn: BufReader::new(tcp), pipelining: false };
        c.expect(220, "greeting");
        c.send(b"EHLO bench.client\r\n");
        let ehlo = c.expect(250, "EHLO");
        c.pipelining = ehlo.iter().any(|l| l.eq_ignore_ascii_case("PIPELINING"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        c.send(format!("AUTH PLAIN {b64}\r\n").as_bytes());
        c.expect(235, "AUTH PLAIN");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        let s = self.conn.get_mut();
        s.write_all(bytes).and_then(|_| s.flush()).expect("write to the SMTP server");
    }

    /// Reads one whole reply: its code and lines.
    fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.conn.read_line(&mut line).expect("read from the SMTP server");
            assert!(n > 0, "the SMTP server closed the connection; replies so far: {lines:?}");
            let code: u16 =
                line.get(..3).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not a reply: {line:?}"));
            lines.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, lines);
            }
        }
    }

    fn expect(&mut self, code: u16, what: &str) -> Vec<String> {
        let (got, lines) = self.reply();
        assert_eq!(got, code, "{what}: expected {code}, got {got} {lines:?}");
        lines
    }

    /// Sends `n` messages from `from` to `to`; returns the time from the first MAIL to the last 250.
    fn send_many(&mut self, from: &str, to: &str, n: usize, tag: &str) -> Duration {
        let bodies: Vec<Vec<u8>> = (0..n).map(|i| data_block(&message(from, to, &format!("{tag}-{i}")))).collect();
        let start = Instant::now();
        for body in &bodies {
            let envelope = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
            if self.pipelining {
                self.send(envelope.as_bytes());
                self.expect(250, "MAIL");
                self.expect(250, "RCPT");
                self.expect(354, "DATA");
            } else {
                for (line, code) in envelope.split_inclusive("\r\n").zip([250, 250, 354]) {
                    self.send(line.as_bytes());
                    self.expect(code, line.trim_end());
                }
            }
            self.send(body);
            self.expect(250, "end of data");
        }
        start.elapsed()
    }

    fn quit(mut self) {
        self.send(b"QUIT\r\n");
        self.expect(221, "QUIT");
    }
}

/// The number of messages in `user`'s INBOX at Dovecot (STATUS over a fresh connection).
fn inbox_count(imap_port: u16, user: &str, password: &str) -> usize {
    let tcp = TcpStream::connect(("127.0.0.1", imap_port)).expect("connect to Dovecot's IMAP");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut conn = BufReader::new(tcp);
    let read_until = |conn: &mut BufReader<TcpStream>, tag: &str| -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(conn.read_line(&mut line).expect("read from Dovecot") > 0, "Dovecot closed: {lines:?}");
            let done = line.starts_with(tag);
            lines.push(line);
            if done {
                return lines;
            }
        }
    };
    read_until(&mut conn, "* OK");
    conn.get_mut()
        .write_all(format!("a LOGIN \"{user}\" \"{password}\"\r\nb STATUS INBOX (MESSAGES)\r\nc LOGOUT\r\n").as_bytes())
        .expect("write to Dovecot");
    let login = read_until(&mut conn, "a ");
    assert!(login.last().unwrap().starts_with("a OK"), "LOGIN {user}: {login:?}");
    let status = read_until(&mut conn, "b ");
    status
        .iter()
        .find_map(|l| l.split_once("(MESSAGES ")?.1.split(')').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("STATUS INBOX: {status:?}"))
}
