//! WebPush latency against a real Dovecot (issue 5, Benchmark): LMTP delivery → push received at
//! a push service on loopback, p50/p99 over `PUSH_MESSAGES` (200) messages, and in the same run
//! the provider's own IDLE floor: delivery → `* n EXISTS` at a client idling directly at Dovecot.
//! Both clocks start at the same delivery, so "push minus floor" is what the proxy adds.
//!
//! Run with `cargo bench --bench push`; bench/README.md has the figures.

// The harnesses serve the integration tests too; the benchmark uses only part of them.
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;
#[allow(dead_code)]
#[path = "../tests/support/push_endpoint.rs"]
mod push_endpoint;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Proxy;
use provider::Provider;
use push_endpoint::{Device, PushEndpoint};

const SUBS: &str = "/private/vendor/vendor.dovecot/webpush/subscriptions";
const ALICE: &str = "alice@example.org";
const PATH: &str = "/bench";
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let messages: usize = std::env::var("PUSH_MESSAGES")
        .ok()
        .map_or(200, |v| v.parse().unwrap_or_else(|_| panic!("PUSH_MESSAGES={v}: not a number")));
    println!("coi-proxy push latency: {messages} messages, delivery -> push vs. delivery -> direct IDLE EXISTS");

    let provider = Provider::start();
    let proxy = Proxy::start(&format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n",
        provider.imap_port
    ));
    let ep = PushEndpoint::start();
    let dev = Device::new();

    // Subscribe through the proxy and validate; the session stays open for the whole run.
    let mut sub = Imap::connect(proxy.port);
    sub.ok(&format!("a LOGIN \"{ALICE}\" \"secret\""));
    let json = dev.subscription(&ep.url(PATH), "all");
    sub.ok(&format!("s SETMETADATA \"\" ({SUBS}/bench-0001 {{{}}}\r\n{json})", json.len()));
    let validation = ep.wait(PATH, 1, TIMEOUT).pop().unwrap();
    let token = dev.decrypt(&validation)["validation"].as_str().expect("a validation push").to_string();
    sub.ok(&format!("t SETMETADATA \"\" ({SUBS}/bench-0001/validate \"{token}\")"));

    // The floor: a client idling directly at Dovecot, its EXISTS responses timed by a reader thread.
    let mut idle = Imap::connect(provider.imap_port);
    idle.ok(&format!("a LOGIN \"{ALICE}\" \"secret\""));
    idle.ok("b SELECT INBOX");
    idle.send("c IDLE");
    while !idle.line().starts_with("+ ") {}
    let (tx, exists) = mpsc::channel::<(usize, Instant)>();
    let mut reader = idle.reader;
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let at = Instant::now();
            if let Some(n) = line.strip_prefix("* ").and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
                && let Ok(n) = n.parse()
                && tx.send((n, at)).is_err()
            {
                return;
            }
        }
    });
    // Let the proxy's worker settle into IDLE too before the first delivery.
    std::thread::sleep(Duration::from_secs(1));

    let (mut push, mut floor) = (Vec::with_capacity(messages), Vec::with_capacity(messages));
    for i in 1..=messages {
        let sent = Instant::now();
        provider.deliver("bob@example.org", ALICE, &message(i));
        let seen = loop {
            let (n, at) = exists.recv_timeout(TIMEOUT).unwrap_or_else(|_| panic!("message {i}: no EXISTS"));
            if n >= i {
                break at;
            }
        };
        let got = wait_push(&ep, i + 1, &proxy, i);
        let payload = dev.decrypt(&got);
        assert_eq!(payload["msg-id"], format!("<bench-{i}@example.org>"), "{payload}");
        push.push(got.at.duration_since(sent));
        floor.push(seen.duration_since(sent));
    }

    let diff: Vec<Duration> = push.iter().zip(&floor).map(|(p, f)| p.saturating_sub(*f)).collect();
    println!("\n  {:<28} {:>9} {:>9} {:>9} {:>9}", "", "p50", "p99", "min", "max");
    for (what, v) in
        [("delivery -> push", &push), ("delivery -> direct EXISTS", &floor), ("push minus floor (per msg)", &diff)]
    {
        let s = sorted(v);
        println!(
            "  {what:<28} {:>9} {:>9} {:>9} {:>9}",
            ms(pct(&s, 50)),
            ms(pct(&s, 99)),
            ms(s[0]),
            ms(s[s.len() - 1])
        );
    }
    let (p, f) = (sorted(&push), sorted(&floor));
    println!(
        "  push minus floor, of the percentiles: p50 {}, p99 {}",
        ms(pct(&p, 50).saturating_sub(pct(&f, 50))),
        ms(pct(&p, 99).saturating_sub(pct(&f, 99)))
    );
    let extra = ep.received(PATH).len() - 1 - messages;
    if extra > 0 {
        println!("  {extra} pushes more than messages");
    }
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Bob Example <bob@example.org>\r\nTo: {ALICE}\r\nDate: Sat, 17 Aug 2019 13:48:13 +0200\r\n\
Message-ID: <bench-{i}@example.org>\r\nSubject: push bench {i}\r\n\r\nhello push {i}\r\n"
    )
    .into_bytes()
}

/// Waits for the `n`th push; on timeout, fails with the proxy's log.
fn wait_push(ep: &PushEndpoint, n: usize, proxy: &Proxy, i: usize) -> push_endpoint::Received {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(r) = ep.received(PATH).into_iter().nth(n - 1) {
            return r;
        }
        if Instant::now() > deadline {
            panic!("message {i}: no push; proxy log:\n{}", fs::read_to_string(&proxy.log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s
}

/// Nearest-rank percentile of sorted values.
fn pct(s: &[Duration], p: usize) -> Duration {
    s[(s.len() * p).div_ceil(100).clamp(1, s.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A minimal line-based IMAP client.
struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Imap {
    fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect IMAP");
        s.set_nodelay(true).unwrap();
        let mut c = Imap { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    fn send(&mut self, command: &str) {
        self.writer.write_all(format!("{command}\r\n").as_bytes()).expect("write IMAP");
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.reader.read_line(&mut l).expect("read IMAP") > 0, "IMAP connection closed");
        l
    }

    /// Sends a command (literals included, sent at once) and panics unless it ends in OK.
    fn ok(&mut self, command: &str) {
        let tag = command.split(' ').next().unwrap().to_string();
        self.send(command);
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                break;
            }
        }
        assert!(lines.last().unwrap().starts_with(&format!("{tag} OK")), "{command}: {lines:?}");
    }
}
