//! Delta Chat on any provider (issue 17), against a real Dovecot:
//!
//! 1. Push latency: LMTP delivery → the device token's POST at a notifier on loopback, p50/p99
//!    over `DC_MESSAGES` (100) messages `DC_GAP_MS` (2000) apart, then back to back, next to the provider's own floor in the same run:
//!    delivery → `* n EXISTS` at a client idling directly at Dovecot. The proxy reaches Dovecot
//!    through a tap that timestamps each `* n EXISTS` Dovecot sends the account worker: "POST
//!    minus the worker's EXISTS" is what the proxy adds after the provider announced the message
//!    to it (target: under 100 ms). Dovecot delays each IDLE session's announcement by up to
//!    500 ms after the change it noticed first (`NOTIFY_DELAY_MSECS`), a timer per session, so
//!    the direct client and the worker can hear of one message up to half a second apart:
//!    "POST minus direct EXISTS" carries that phase too.
//! 2. COMPRESS=DEFLATE: a whole mailbox fetched through the proxy with and without compression
//!    (bytes on the wire as the client counts them, time, the proxy's CPU), and the provider
//!    side compressed too.
//! 3. A Delta Chat session (`tests/deltachat/dc_chat.py`, two real Delta Chat 2.65 accounts
//!    through the proxy): the bytes on the wire against the bytes relayed, from the proxy's
//!    session lines. `DC_PARTS` (`latency,compress,session`) picks the parts.
//!
//! Run with `cargo bench --bench deltachat`; bench/README.md has the figures.

#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/notifier.rs"]
mod notifier;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Proxy, Rng, cpu_secs, env_usize};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use notifier::Notifier;
use provider::{Provider, ProviderOptions};

const ALICE: &str = "alice@example.org";
const TOKEN: &str = "openpgp:wcDMA1Jx0zPqd2tbAQv+benchmark/device/token==";
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let messages = env_usize("DC_MESSAGES", 100);
    let parts = std::env::var("DC_PARTS").unwrap_or_else(|_| "latency,compress,session".into());
    if parts.contains("latency") {
        // Mail spaced as in real life (the worker back in a long IDLE), then back to back.
        latency(messages, Duration::from_millis(env_usize("DC_GAP_MS", 2000) as u64));
        latency(messages, Duration::ZERO);
    }
    if parts.contains("compress") {
        compression();
    }
    if parts.contains("session") {
        delta_chat_session();
    }
}

fn latency(messages: usize, gap: Duration) {
    println!(
        "\nDelta Chat push: {messages} messages {:.1} s apart, delivery -> notifier POST vs. delivery -> direct IDLE EXISTS",
        gap.as_secs_f64()
    );
    let provider = Provider::start();
    let notifier = Notifier::start();
    let tap = Tap::start(provider.imap_port);
    let proxy = Proxy::start(&format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [deltachat]\nnotifier_url = \"{}\"\n",
        tap.port,
        notifier.url()
    ));
    // The device registers as Delta Chat does, then the client goes: no client from here on.
    let mut dc = Imap::connect(proxy.port);
    dc.ok(&format!("a LOGIN \"{ALICE}\" \"secret\""));
    dc.ok(&format!("b SETMETADATA \"INBOX\" (/private/devicetoken \"{TOKEN}\")"));
    dc.ok("c LOGOUT");

    // The floor: a client idling directly at Dovecot, its EXISTS timed by a reader thread.
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
    // The worker settles into IDLE.
    std::thread::sleep(Duration::from_secs(2));

    let (mut post, mut floor, mut added, mut own) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=messages {
        std::thread::sleep(gap);
        let sent = Instant::now();
        provider.deliver("bob@example.org", ALICE, &message(i));
        let seen = loop {
            let (n, at) = exists.recv_timeout(TIMEOUT).unwrap_or_else(|_| panic!("message {i}: no EXISTS"));
            if n >= i {
                break at;
            }
        };
        let got = notifier.wait(i, TIMEOUT)[i - 1].at;
        let told = tap.announced(i).unwrap_or_else(|| panic!("message {i}: POSTed but never announced to the worker"));
        post.push(got.duration_since(sent));
        floor.push(seen.duration_since(sent));
        added.push(got.saturating_duration_since(seen));
        own.push(got.saturating_duration_since(told));
    }
    println!("\n  {:<30} {:>9} {:>9} {:>9} {:>9}", "", "p50", "p99", "min", "max");
    for (what, v) in [
        ("delivery -> notifier POST", &post),
        ("delivery -> direct EXISTS", &floor),
        ("POST minus direct EXISTS", &added),
        ("POST minus worker's EXISTS", &own),
    ] {
        let s = sorted(v);
        println!(
            "  {what:<30} {:>9} {:>9} {:>9} {:>9}",
            ms(pct(&s, 50)),
            ms(pct(&s, 99)),
            ms(s[0]),
            ms(s[s.len() - 1])
        );
    }
    let p99 = pct(&sorted(&own), 99);
    let verdict = if p99 <= Duration::from_millis(100) { "PASS" } else { "MISS" };
    println!("  POST within 100 ms of the provider's EXISTS to the worker, p99: {verdict}");
    let extra = notifier.posts().len().saturating_sub(messages);
    if extra > 0 {
        println!("  {extra} POSTs more than messages");
    }
    print_problems(&proxy);
}

fn compression() {
    let count = env_usize("DC_COMPRESS_MESSAGES", 400);
    println!("\nCOMPRESS=DEFLATE: UID FETCH 1:* BODY.PEEK[] of {count} text messages through the proxy");
    for provider_compress in [false, true] {
        let provider = Provider::start_with(ProviderOptions { compress: provider_compress, ..Default::default() });
        let proxy = Proxy::start_logging(
            &format!(
                "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n",
                provider.imap_port
            ),
            "warn,coi_proxy::app=info,coi_proxy::imap::session=info",
        );
        let mut rng = Rng(17);
        let mut up = Imap::connect(provider.imap_port);
        up.ok(&format!("a LOGIN \"{ALICE}\" \"secret\""));
        let mut plain_total = 0;
        for i in 0..count {
            let m = text_message(&mut rng, i);
            plain_total += m.len();
            up.send_raw(format!("p{i} APPEND INBOX {{{}+}}\r\n", m.len()).as_bytes());
            up.send_raw(&m);
            up.send_raw(b"\r\n");
        }
        for i in 0..count {
            up.until_tag(&format!("p{i}"));
        }
        println!(
            "  (provider {} COMPRESS; {:.1} MB of mail)",
            if provider_compress { "with" } else { "without" },
            plain_total as f64 / 1e6
        );
        for compress in [false, true] {
            // Warm Dovecot's caches once, then measure.
            for timed in [false, true] {
                let mut c = Wire::connect(proxy.port);
                c.command("a", &format!("LOGIN \"{ALICE}\" \"secret\""));
                if compress {
                    c.command("z", "COMPRESS DEFLATE");
                    c.deflate();
                }
                c.command("b", "SELECT INBOX");
                let (cpu, wire_in, plain_in) = (cpu_secs(proxy.pid()), c.wire_in, c.plain_in);
                let started = Instant::now();
                c.command("f", "UID FETCH 1:* BODY.PEEK[]");
                let secs = started.elapsed().as_secs_f64();
                let cpu = cpu_secs(proxy.pid()) - cpu;
                let (wire, plain) = (c.wire_in - wire_in, c.plain_in - plain_in);
                if timed {
                    println!(
                        "    client {:<13} {:>6.1} MB on the wire for {:>6.1} MB, ratio {:>4.2}, {:>6.0} ms, proxy CPU {:>5.2} s",
                        if compress { "compressed" } else { "uncompressed" },
                        wire as f64 / 1e6,
                        plain as f64 / 1e6,
                        plain as f64 / wire as f64,
                        secs * 1000.0,
                        cpu
                    );
                }
                c.command("l", "LOGOUT");
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
        if provider_compress {
            let line =
                log.lines().rfind(|l| l.contains("provider compressed")).unwrap_or("(no provider compression line)");
            println!("    last session: {}", line.split("; ").skip(1).collect::<Vec<_>>().join("; "));
        }
        print_problems(&proxy);
    }
}

fn delta_chat_session() {
    println!("\nA Delta Chat session through the proxy (tests/deltachat/dc_chat.py, filter none)");
    let provider = Provider::start();
    let proxy = Proxy::start_logging(
        &format!(
            "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n",
            provider.imap_port
        ),
        "warn,coi_proxy::app=info,coi_proxy::imap::session=info",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_chat.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--proxy-imap", &proxy.port.to_string()])
        .args(["--provider-imap", &provider.imap_port.to_string()])
        .args(["--provider-smtp", &provider.smtp_port.to_string()])
        .args(["--filter", "none"])
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!("  skipped: Delta Chat failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            return;
        }
        Err(e) => {
            println!("  skipped: python3: {e}");
            return;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(provider);
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    let (mut sessions, mut totals) = (0, [0u64; 4]);
    for line in log.lines().filter(|l| l.contains("client compressed:")) {
        let numbers: Vec<u64> = line
            .split("client compressed:")
            .nth(1)
            .unwrap_or_default()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .take(4)
            .collect();
        if let [wi, pi, wo, po] = numbers[..] {
            sessions += 1;
            for (t, v) in totals.iter_mut().zip([wi, pi, wo, po]) {
                *t += v;
            }
        }
    }
    let [wi, pi, wo, po] = totals;
    println!("  {sessions} compressed sessions (Delta Chat asked for COMPRESS in each)");
    println!(
        "  client -> proxy: {wi} bytes on the wire for {pi} ({:.2}x); proxy -> client: {wo} for {po} ({:.2}x); both: {:.2}x",
        pi as f64 / wi.max(1) as f64,
        po as f64 / wo.max(1) as f64,
        (pi + po) as f64 / (wi + wo).max(1) as f64
    );
}

fn print_problems(proxy: &Proxy) {
    for p in proxy.problems() {
        println!("  proxy: {p}");
    }
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.org>\r\nTo: {ALICE}\r\nMessage-ID: <dc-bench-{i}@example.org>\r\n\
Chat-Version: 1.0\r\nSubject: Message from bob\r\n\r\nhello {i}\r\n"
    )
    .into_bytes()
}

/// Mail-like text: headers and 2-40 KB of prose from a small vocabulary.
fn text_message(rng: &mut Rng, i: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "mail",
        "proxy",
        "message",
        "chat",
        "delta",
        "provider",
        "server",
        "client",
        "folder",
        "inbox",
        "compression",
        "meeting",
        "tomorrow",
        "please",
        "thanks",
        "regards",
        "project",
        "report",
        "attached",
        "schedule",
        "question",
        "answer",
        "about",
        "with",
        "from",
        "which",
        "would",
        "could",
        "there",
    ];
    let mut m = format!(
        "From: Bob <bob@example.org>\r\nTo: {ALICE}\r\nMessage-ID: <text-{i}-{}@example.org>\r\n\
Date: Sat, 05 Dec 2026 12:00:00 +0000\r\nSubject: report {i}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        rng.next_u64()
    );
    let size = 2_000 + rng.below(38_000);
    let mut col = 0;
    while m.len() < size {
        let w = WORDS[rng.below(WORDS.len())];
        m.push_str(w);
        col += w.len() + 1;
        if col > 70 {
            m.push_str("\r\n");
            col = 0;
        } else {
            m.push(' ');
        }
    }
    m.push_str("\r\n");
    m.into_bytes()
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
        self.send_raw(format!("{command}\r\n").as_bytes());
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write IMAP");
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.reader.read_line(&mut l).expect("read IMAP") > 0, "IMAP connection closed");
        l
    }

    fn until_tag(&mut self, tag: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(&format!("{tag} ")) {
                return l;
            }
        }
    }

    /// Sends a command and panics unless it ends in OK.
    fn ok(&mut self, command: &str) {
        let tag = command.split(' ').next().unwrap().to_string();
        self.send(command);
        let status = self.until_tag(&tag);
        assert!(status.starts_with(&format!("{tag} OK")), "{command}: {status}");
    }
}

/// An IMAP client that counts the bytes on the wire and can speak COMPRESS=DEFLATE.
struct Wire {
    tcp: TcpStream,
    deflate: Option<(Compress, Decompress)>,
    /// Plain bytes read and not yet consumed.
    buf: Vec<u8>,
    wire_in: u64,
    plain_in: u64,
}

impl Wire {
    fn connect(port: u16) -> Wire {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect IMAP");
        tcp.set_nodelay(true).unwrap();
        let mut c = Wire { tcp, deflate: None, buf: Vec::new(), wire_in: 0, plain_in: 0 };
        c.response(None);
        c
    }

    fn deflate(&mut self) {
        assert!(self.buf.is_empty(), "nothing may follow the OK uncompressed");
        self.deflate = Some((Compress::new(Compression::new(6), false), Decompress::new(false)));
    }

    fn command(&mut self, tag: &str, command: &str) {
        let line = format!("{tag} {command}\r\n");
        match &mut self.deflate {
            Some((c, _)) => {
                let mut out = Vec::with_capacity(line.len() + 64);
                c.compress_vec(line.as_bytes(), &mut out, FlushCompress::Sync).unwrap();
                self.tcp.write_all(&out).unwrap();
            }
            None => self.tcp.write_all(line.as_bytes()).unwrap(),
        }
        let status = self.response(Some(tag));
        assert!(status.starts_with(&format!("{tag} OK")) || command == "LOGOUT", "{command}: {status}");
    }

    fn fill(&mut self) {
        let mut chunk = vec![0; 256 * 1024];
        let n = self.tcp.read(&mut chunk).expect("read IMAP");
        assert!(n > 0, "IMAP connection closed");
        self.wire_in += n as u64;
        let before = self.buf.len();
        match &mut self.deflate {
            Some((_, d)) => {
                let mut input = &chunk[..n];
                while !input.is_empty() {
                    self.buf.reserve(input.len() * 8 + 64 * 1024);
                    let used = d.total_in();
                    d.decompress_vec(input, &mut self.buf, FlushDecompress::None).expect("inflate");
                    input = &input[(d.total_in() - used) as usize..];
                }
            }
            None => self.buf.extend_from_slice(&chunk[..n]),
        }
        self.plain_in += (self.buf.len() - before) as u64;
    }

    /// Reads responses (literals skipped) until the tagged one for `tag`, or the greeting.
    fn response(&mut self, tag: Option<&str>) -> String {
        let mut pos = 0;
        loop {
            let Some(end) = self.buf[pos..].windows(2).position(|w| w == b"\r\n").map(|e| pos + e + 2) else {
                self.fill();
                continue;
            };
            let line = String::from_utf8_lossy(&self.buf[pos..end]).into_owned();
            let literal = line
                .trim_end()
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            if let Some(n) = literal {
                while self.buf.len() < end + n {
                    self.fill();
                }
                pos = end + n;
                continue;
            }
            pos = end;
            let done = match tag {
                Some(tag) => line.starts_with(&format!("{tag} ")),
                None => true,
            };
            if done {
                self.buf.drain(..pos);
                return line;
            }
        }
    }
}

/// A TCP hop between the proxy and Dovecot that notes when Dovecot sends `* n EXISTS` on any
/// connection: the account worker's is the only one that idles, so the first time a count
/// reaches n is when the provider announced message n to the worker.
struct Tap {
    port: u16,
    exists: Announcements,
}

/// (count, when) of each `* n EXISTS`, in the order seen.
type Announcements = Arc<Mutex<Vec<(usize, Instant)>>>;

impl Tap {
    fn start(provider_port: u16) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("tap listens");
        let port = listener.local_addr().expect("tap port").port();
        let exists = Arc::new(Mutex::new(Vec::new()));
        let seen = exists.clone();
        std::thread::spawn(move || {
            for proxy_side in listener.incoming().flatten() {
                let Ok(provider_side) = TcpStream::connect(("127.0.0.1", provider_port)) else { continue };
                let _ = (proxy_side.set_nodelay(true), provider_side.set_nodelay(true));
                let (up_read, down_write) =
                    (provider_side.try_clone().expect("clone"), proxy_side.try_clone().expect("clone"));
                std::thread::spawn(move || Tap::copy(proxy_side, provider_side, None));
                let seen = seen.clone();
                std::thread::spawn(move || Tap::copy(up_read, down_write, Some(seen)));
            }
        });
        Tap { port, exists }
    }

    /// Copies `from` to `to` as bytes arrive; with `seen`, notes each `* n EXISTS` line.
    fn copy(mut from: TcpStream, mut to: TcpStream, seen: Option<Announcements>) {
        let (mut buf, mut line) = (vec![0u8; 64 * 1024], Vec::new());
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = Instant::now();
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            let Some(seen) = &seen else { continue };
            for &b in &buf[..n] {
                line.push(b);
                if b != b'\n' {
                    continue;
                }
                let text = String::from_utf8_lossy(&line);
                if let Some(count) = text.strip_prefix("* ").and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
                    && let Ok(count) = count.parse()
                {
                    seen.lock().expect("tap lock").push((count, at));
                }
                line.clear();
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }

    /// When the provider first announced a count of at least `n`.
    fn announced(&self, n: usize) -> Option<Instant> {
        self.exists.lock().expect("tap lock").iter().find(|(count, _)| *count >= n).map(|(_, at)| *at)
    }
}
