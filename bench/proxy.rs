//! End-to-end benchmark: the same IMAP workloads against a real Dovecot, once directly and once
//! through `coi-proxy`, in one run, so that every figure comes with its direct baseline.
//!
//! Run with `cargo bench --bench proxy`; bench/README.md says what is measured and how.

// The provider harness serves the integration tests too; the benchmark uses only part of it.
#[allow(dead_code)]
mod common;
#[path = "../tests/support/data_block.rs"]
mod data_block;
#[allow(dead_code)]
#[path = "../tests/support/provider.rs"]
mod provider;

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Proxy, Rng, log_problems, raise_fd_limit};
use provider::{Provider, ProviderOptions};

/// Messages put into alice's INBOX, and their size range; sizes are skewed towards the small end
/// (`MIN + (MAX - MIN) * u^2.5`) so that the mailbox comes to ~100 MB.
const MESSAGES: usize = 2_000;
const MIN_SIZE: usize = 10_000;
const MAX_SIZE: usize = 150_000;

const FETCH_ROUNDS: usize = 20;
const NOOPS: usize = 10_000;
const NOOP_ROUNDS: usize = 5;
/// NOOPs sent before each round is timed, so connection warm-up is not measured.
const NOOP_WARMUP: usize = 500;
const IDLE_SESSIONS: usize = 1_000;
/// Dovecot allows 100 connections per user and IP (the harness's default
/// `mail_max_userip_connections`, which `ProviderOptions` cannot raise): the idle sessions are
/// spread over this many users.
const USERS: usize = 20;
const PASSWORD: &str = "secret";

const TARGET_THROUGHPUT_RATIO: f64 = 0.97;
const TARGET_ADDED_P50_US: f64 = 50.0;
const TARGET_KIB_PER_SESSION: f64 = 50.0;

/// Read buffer of the connections whose reading speed matters.
const FAST_BUFFER: usize = 1 << 20;
/// Read buffer of the idle sessions, which read only short responses.
const SMALL_BUFFER: usize = 4 << 10;
/// How long any one read may take before the benchmark gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    // Other work on this machine skews every figure: say how busy it was.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "coi-proxy benchmark (load average before: {})",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    raise_fd_limit(2 * IDLE_SESSIONS as u64 + 512);
    let users: Vec<String> = ["alice", "bob", "carol"]
        .into_iter()
        .map(str::to_owned)
        .chain((4..=USERS).map(|i| format!("user{i:02}")))
        .collect();
    let provider = Provider::start_with(ProviderOptions {
        users: Some(users.clone()),
        password: Some(PASSWORD.into()),
        ..Default::default()
    });
    let logins: Vec<String> = users.iter().map(|u| format!("{u}@example.org")).collect();
    let alice = &logins[0];

    let started = Instant::now();
    let stored = fill_mailbox(provider.imap_port, alice);
    println!(
        "{MESSAGES} messages, {:.1} MB in {alice}'s INBOX (APPENDed in {:.1} s)\n",
        mb(stored),
        started.elapsed().as_secs_f64()
    );

    // Each figure is printed as soon as it is measured, so a later failure does not lose it.
    let config = &format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions_per_ip = {}\n",
        provider.imap_port,
        // Every session of the benchmark comes from 127.0.0.1.
        IDLE_SESSIONS + 100
    );
    let proxy = Proxy::start(config);
    print_fetch(&bench_fetch(provider.imap_port, &proxy, alice, stored));
    print_noop(&bench_noop(provider.imap_port, proxy.port, alice));
    let mut problems = proxy.problems();
    drop(proxy);

    // A fresh proxy, so that memory the allocator kept from the FETCH runs cannot hide the cost.
    let proxy = Proxy::start(config);
    print_idle(&bench_idle(&proxy, &logins));
    problems.extend(proxy.problems());
    drop(proxy);

    let dovecot_problems = log_problems(&provider.log);
    for (what, lines) in [("coi-proxy", &problems), ("Dovecot", &dovecot_problems)] {
        if !lines.is_empty() {
            println!("\n{what} logged {} warnings/errors (first 10):", lines.len());
            for line in lines.iter().take(10) {
                println!("  {line}");
            }
        }
    }
}

struct FetchResult {
    /// MB/s of each round.
    direct: Vec<f64>,
    proxied: Vec<f64>,
    bytes: u64,
    /// CPU time the proxy used per second of proxied FETCH (1.0 = one core busy).
    proxy_cpu_share: f64,
}

/// `UID FETCH 1:* BODY.PEEK[]` of the whole mailbox, direct and proxied in alternating order,
/// over one connection each; every response must carry the same bytes.
fn bench_fetch(direct_port: u16, proxy: &Proxy, user: &str, stored: u64) -> FetchResult {
    let mut direct = Client::login(direct_port, user, FAST_BUFFER);
    let mut proxied = Client::login(proxy.port, user, FAST_BUFFER);
    let mut bytes = 0;
    let mut fetch = |client: &mut Client, what: &str| {
        let started = Instant::now();
        let response = client.run("UID FETCH 1:* BODY.PEEK[]");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(response.literal_bytes, stored, "{what}: the FETCH returned other message bytes than were stored");
        if bytes == 0 {
            bytes = response.bytes;
        }
        assert_eq!(response.bytes, bytes, "{what}: the FETCH response differs in size");
        secs
    };
    // The first FETCH of each kind fills Dovecot's caches.
    fetch(&mut direct, "direct");
    fetch(&mut proxied, "proxied");
    let (mut direct_secs, mut proxied_secs) = (Vec::new(), Vec::new());
    let mut proxy_cpu = 0.0;
    for round in 0..FETCH_ROUNDS {
        // Alternate which goes first, so neither always runs on a machine the other just warmed.
        for via_proxy in [round % 2 == 1, round % 2 == 0] {
            if via_proxy {
                let cpu = proxy.cpu_secs();
                proxied_secs.push(fetch(&mut proxied, "proxied"));
                proxy_cpu += proxy.cpu_secs() - cpu;
            } else {
                direct_secs.push(fetch(&mut direct, "direct"));
            }
        }
    }
    let rates = |secs: &[f64]| secs.iter().map(|s| mb(bytes) / s).collect();
    FetchResult {
        direct: rates(&direct_secs),
        proxied: rates(&proxied_secs),
        bytes,
        proxy_cpu_share: proxy_cpu / proxied_secs.iter().sum::<f64>(),
    }
}

/// (p50, p99) in µs of each round.
struct NoopResult {
    direct: Vec<(f64, f64)>,
    proxied: Vec<(f64, f64)>,
}

/// Sequential NOOP round trips on a selected mailbox, direct and proxied in alternating rounds.
fn bench_noop(direct_port: u16, proxy_port: u16, user: &str) -> NoopResult {
    let mut direct = Client::login(direct_port, user, SMALL_BUFFER);
    let mut proxied = Client::login(proxy_port, user, SMALL_BUFFER);
    let mut result = NoopResult { direct: Vec::new(), proxied: Vec::new() };
    for _ in 0..NOOP_ROUNDS {
        result.direct.push(noop_round(&mut direct));
        result.proxied.push(noop_round(&mut proxied));
    }
    result
}

fn noop_round(client: &mut Client) -> (f64, f64) {
    for _ in 0..NOOP_WARMUP {
        client.run("NOOP");
    }
    let mut micros: Vec<f64> = (0..NOOPS)
        .map(|_| {
            let started = Instant::now();
            client.run("NOOP");
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    (percentile(&micros, 0.50), percentile(&micros, 0.99))
}

/// The proxy's VmRSS (KiB) around `IDLE_SESSIONS` authenticated, selected, idle sessions.
struct IdleResult {
    before: u64,
    with_sessions: u64,
    after_close: u64,
    open_secs: f64,
    proxy_fds: usize,
    proxy_fd_limit: String,
}

fn bench_idle(proxy: &Proxy, logins: &[String]) -> IdleResult {
    // One session first, so that one-time setup (worker threads, TLS config, ...) is in the baseline.
    drop(Client::login(proxy.port, &logins[0], SMALL_BUFFER));
    settle();
    let before = proxy.rss_kib();
    let started = Instant::now();
    let sessions: Vec<Client> =
        (0..IDLE_SESSIONS).map(|i| Client::login(proxy.port, &logins[i % logins.len()], SMALL_BUFFER)).collect();
    let open_secs = started.elapsed().as_secs_f64();
    settle();
    let with_sessions = proxy.rss_kib();
    let proxy_fds = fs::read_dir(format!("/proc/{}/fd", proxy.pid())).map_or(0, Iterator::count);
    let proxy_fd_limit = fs::read_to_string(format!("/proc/{}/limits", proxy.pid()))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into());
    drop(sessions);
    settle();
    IdleResult { before, with_sessions, after_close: proxy.rss_kib(), open_secs, proxy_fds, proxy_fd_limit }
}

/// Gives the proxy time to finish handling what was just sent before its memory is read.
fn settle() {
    std::thread::sleep(Duration::from_secs(1));
}

fn print_fetch(fetch: &FetchResult) {
    let (direct, proxied) = (median(&fetch.direct), median(&fetch.proxied));
    let ratio = proxied / direct;
    println!(
        "FETCH throughput, UID FETCH 1:* BODY.PEEK[] ({:.1} MB response; median of {FETCH_ROUNDS} interleaved rounds)",
        mb(fetch.bytes)
    );
    let (direct_best, proxied_best) = (max(&fetch.direct), max(&fetch.proxied));
    println!("  direct   {direct:8.1} MB/s   best {direct_best:7.1}   rounds: {}", list(&fetch.direct));
    println!("  proxied  {proxied:8.1} MB/s   best {proxied_best:7.1}   rounds: {}", list(&fetch.proxied));
    println!(
        "  ratio    {ratio:8.3}        best {:7.3}   target >= {TARGET_THROUGHPUT_RATIO}: {}",
        proxied_best / direct_best,
        verdict(ratio >= TARGET_THROUGHPUT_RATIO)
    );
    println!("  proxy CPU while relaying: {:.0}% of one core\n", 100.0 * fetch.proxy_cpu_share);
}

fn print_noop(noop: &NoopResult) {
    let p50 = |r: &[(f64, f64)]| median(&r.iter().map(|x| x.0).collect::<Vec<_>>());
    let p99 = |r: &[(f64, f64)]| median(&r.iter().map(|x| x.1).collect::<Vec<_>>());
    let (d50, d99, p50p, p99p) = (p50(&noop.direct), p99(&noop.direct), p50(&noop.proxied), p99(&noop.proxied));
    println!("NOOP round trip, {NOOPS} sequential per round (median of {NOOP_ROUNDS} rounds' percentiles)");
    println!("  direct   p50 {d50:7.1} µs  p99 {d99:7.1} µs   rounds (p50/p99): {}", pairs(&noop.direct));
    println!("  proxied  p50 {p50p:7.1} µs  p99 {p99p:7.1} µs   rounds (p50/p99): {}", pairs(&noop.proxied));
    let (added50, added99) = (p50p - d50, p99p - d99);
    println!(
        "  added    p50 {added50:+7.1} µs  p99 {added99:+7.1} µs   target p50 <= +{TARGET_ADDED_P50_US} µs: {}\n",
        verdict(added50 <= TARGET_ADDED_P50_US)
    );
}

fn print_idle(idle: &IdleResult) {
    let per_session = idle.with_sessions.saturating_sub(idle.before) as f64 / IDLE_SESSIONS as f64;
    println!(
        "Proxy memory, {IDLE_SESSIONS} idle sessions (LOGIN + SELECT INBOX, opened sequentially in {:.1} s)",
        idle.open_secs
    );
    println!("  VmRSS before         {:8} KiB", idle.before);
    println!(
        "  VmRSS with sessions  {:8} KiB   ({} fds open, limit {})",
        idle.with_sessions, idle.proxy_fds, idle.proxy_fd_limit
    );
    println!("  VmRSS after closing  {:8} KiB", idle.after_close);
    println!(
        "  per session          {per_session:8.1} KiB   target <= {TARGET_KIB_PER_SESSION} KiB: {}",
        verdict(per_session <= TARGET_KIB_PER_SESSION)
    );
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Creates the test messages and APPENDs them over one direct connection; returns their total size.
fn fill_mailbox(port: u16, user: &str) -> u64 {
    let mut client = Client::login(port, user, SMALL_BUFFER);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut total = 0;
    for i in 0..MESSAGES {
        let size = MIN_SIZE + ((MAX_SIZE - MIN_SIZE) as f64 * rng.unit().powf(2.5)) as usize;
        let message = message(i, size, user, &mut rng);
        total += message.len() as u64;
        let mut command = format!("APPEND INBOX {{{}+}}\r\n", message.len()).into_bytes();
        command.extend_from_slice(&message);
        command.extend_from_slice(b"\r\n");
        client.run_bytes(&command);
    }
    total
}

/// A plain 7-bit text message of `size` bytes: headers, then random words in CRLF lines of at
/// most 78 characters.
fn message(i: usize, size: usize, to: &str, rng: &mut Rng) -> Vec<u8> {
    let mut m = format!(
        "From: Bench Sender <sender{}@example.net>\r\nTo: {to}\r\nSubject: Benchmark message {i}\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench-{i}@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        i % 50
    )
    .into_bytes();
    let mut line = 0;
    while m.len() + 2 < size {
        let word = 1 + rng.below(10);
        if line + word + 1 > 78 {
            m.extend_from_slice(b"\r\n");
            line = 0;
        } else if line > 0 {
            m.push(b' ');
            line += 1;
        }
        for _ in 0..word.min(size - m.len() - 2) {
            m.push(b'a' + rng.below(26) as u8);
        }
        line += word;
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// What a command's response consisted of.
struct Response {
    /// Everything read before the tagged status line (whose text may carry timings).
    bytes: u64,
    /// The literals' share of `bytes` (the message bodies of a FETCH).
    literal_bytes: u64,
}

/// A blocking IMAP client made to read fast: one large buffer, and no parsing beyond what finds
/// the end of a response (line ends and literal lengths), so the client is not the bottleneck.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    next_tag: u32,
}

impl Client {
    /// Connects, logs in and selects INBOX; panics if any of that fails.
    fn login(port: u16, user: &str, buffer: usize) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        let mut client = Client { stream, buf: vec![0; buffer], start: 0, end: 0, next_tag: 1 };
        let greeting = client.line().unwrap_or_else(|e| panic!("no greeting from port {port}: {e}"));
        assert!(greeting.starts_with(b"* OK"), "greeting: {}", String::from_utf8_lossy(&greeting));
        client.run(&format!("LOGIN {user} {PASSWORD}"));
        client.run("SELECT INBOX");
        client
    }

    /// Runs one command (without CRLF) and reads its response; panics unless it is OK.
    fn run(&mut self, command: &str) -> Response {
        self.run_bytes(format!("{command}\r\n").as_bytes())
    }

    /// Like `run` for a command given as bytes, CRLF and any literals included.
    fn run_bytes(&mut self, command: &[u8]) -> Response {
        let tag = format!("b{}", self.next_tag);
        self.next_tag += 1;
        // One write, so that a short command travels in one segment, as a real client's does.
        let line = [tag.as_bytes(), b" ", command].concat();
        if let Err(e) = self.stream.write_all(&line) {
            panic!("cannot send {tag}: {e}");
        }
        self.response(&tag).unwrap_or_else(|e| panic!("no response to {tag}: {e}"))
    }

    fn response(&mut self, tag: &str) -> io::Result<Response> {
        let mut response = Response { bytes: 0, literal_bytes: 0 };
        loop {
            let line = self.line()?;
            if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
                let status = &line[tag.len() + 1..];
                if !status.starts_with(b"OK") {
                    let text = String::from_utf8_lossy(status);
                    return Err(io::Error::other(format!("server said {}", text.trim_end())));
                }
                return Ok(response);
            }
            response.bytes += line.len() as u64;
            if let Some(n) = literal_len(&line) {
                self.skip(n)?;
                response.bytes += n;
                response.literal_bytes += n;
            }
        }
    }

    /// The next line, CRLF included.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.buf[self.start..=self.start + i].to_vec();
                self.start += i + 1;
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// Consumes `n` bytes without looking at them.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let available = (self.end - self.start) as u64;
            if n <= available {
                self.start += n as usize;
                return Ok(());
            }
            n -= available;
            self.start = self.end;
            self.fill()?;
        }
    }

    /// Reads more after the unread bytes, moving or growing the buffer if they fill it.
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buf.len() {
                self.buf.resize(2 * self.buf.len(), 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..])? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }
}

/// The length of the literal announced at the end of `line` (`{n}` or `{n+}` before CRLF).
fn literal_len(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MIN, f64::max)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn list(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
}

fn pairs(values: &[(f64, f64)]) -> String {
    values.iter().map(|(a, b)| format!("{a:.0}/{b:.0}")).collect::<Vec<_>>().join(" ")
}
