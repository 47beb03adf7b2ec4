//! The attacks of issue 23, each against a real Dovecot (and the real daemon): a password
//! guesser must not lock anyone else out, clients that do not read take bounded memory, one
//! large command does not stall everyone, peer input cannot forge or flood the log, SMTP has a
//! login timeout and binds the sender to the login, logins that differ in case are different
//! accounts on a case-sensitive provider, push endpoints cannot reach the proxy's network, and
//! the smaller items. Figures (login times, RSS, command time) are printed with
//! `--nocapture` for the closing notes in SECURITY.md.

#[path = "support/push_endpoint.rs"]
#[allow(dead_code)]
mod push_endpoint;
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use push_endpoint::{Device, PushEndpoint};
use support::imap_client::ImapClient;
use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;
use support::smtp_client::SmtpClient;

const SUBS: &str = "/private/vendor/vendor.dovecot/webpush/subscriptions";
const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";

/// A plain connection to `port` from the loopback address `source`.
fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = socket2_bind(source);
    let tcp = socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let tcp = tcp.unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp
}

/// A socket bound to `source` (any port), ready to connect.
fn socket2_bind(source: &str) -> Bound {
    Bound(source.parse().unwrap())
}

struct Bound(std::net::IpAddr);

impl Bound {
    fn connect(self, to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        let tcp = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(self.0, 0))?;
            socket.connect(to).await
        })?;
        let tcp = tcp.into_std()?;
        tcp.set_nonblocking(false)?;
        Ok(tcp)
    }
}

/// The daemon's resident set now, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the daemon's RSS every 50 ms while `running` is set; the largest value, KiB.
fn sample_peak(pid: u32, running: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while running.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak.max(rss_kib(pid))
    })
}

fn imap_proxy(dovecot: &Provider, extra: &str) -> Proxy {
    Proxy::builder().upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port)).extra(extra).log("info").start()
}

fn timed_login(port: u16, user: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut c = ImapClient::from_stream(connect_from("127.0.0.1", port));
    let lines = c.command(&format!("t LOGIN {user} secret"));
    (started.elapsed(), lines.last().cloned().unwrap_or_default())
}

/// Finding 1: about two wrong passwords a second for bob, from rotating addresses and without
/// waiting for answers, locked every user out (the provider's per-address penalty hit the
/// proxy's one address). Now the proxy decides first (per address and per account back-off),
/// passes the client's address on (Dovecot trusts it from `login_trusted_networks`), and a
/// login with the account's last verified password is never held behind others' failures.
#[test]
fn a_password_guesser_locks_out_no_one_else() {
    let dovecot = Provider::start_with(ProviderOptions { trusted_proxy: true, ..Default::default() });
    let proxy = imap_proxy(&dovecot, "");
    // bob logged in before the attack: his password is the verified one.
    let (_, ok) = timed_login(proxy.imap_port, "bob@example.org");
    assert!(ok.starts_with("t OK"), "{ok}");

    let running = Arc::new(AtomicBool::new(true));
    let guesses = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (running, guesses, port) = (running.clone(), guesses.clone(), proxy.imap_port);
        std::thread::spawn(move || {
            let mut open = Vec::new();
            let mut n = 0u32;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let source = format!("127.0.61.{}", n % 250 + 1);
                if let Ok(mut tcp) = socket2_bind(&source).connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))) {
                    let _ = tcp.write_all(format!("a LOGIN bob@example.org guess{n}\r\n").as_bytes());
                    guesses.fetch_add(1, Ordering::Relaxed);
                    open.push(tcp);
                }
                if open.len() > 40 {
                    open.remove(0);
                }
                std::thread::sleep(Duration::from_millis(450));
            }
        })
    };
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        std::thread::sleep(Duration::from_secs(2));
        for user in ["alice@example.org", "bob@example.org", "carol@example.org"] {
            let (took, status) = timed_login(proxy.imap_port, user);
            assert!(status.starts_with("t OK"), "{user} after {:?} of attack: {status}", started.elapsed());
            times.push((user, took));
        }
    }
    running.store(false, Ordering::Relaxed);
    attacker.join().unwrap();
    let worst = times.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "FIGURE finding 1: {} guesses in {:?}; logins of alice, bob (verified) and carol (first login) took at most {worst:?}: {times:?}",
        guesses.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(worst < Duration::from_secs(1), "a legitimate login took {worst:?} under the attack: {times:?}");
    // Guesses for an account under back-off never reached the provider; those that did came
    // with the guesser's address, which Dovecot counted instead of the proxy's.
    let log = proxy.log();
    assert!(log.contains("login refused by the proxy"), "{log}");
    let provider_log = std::fs::read_to_string(&dovecot.log).unwrap();
    assert!(provider_log.contains("rip=127.0.61."), "{provider_log}");
}

/// Stores `n` METADATA entries of `size` bytes for `c`'s account (the provider has no METADATA,
/// so the proxy keeps them).
fn fill_metadata(c: &mut ImapClient, n: usize, size: usize) {
    let value = "v".repeat(size);
    let per_command = ((900 * 1024) / (size + 40)).max(1);
    let mut i = 0;
    while i < n {
        let mut cmd = String::from("f SETMETADATA \"\" (");
        for j in i..(i + per_command).min(n) {
            cmd.push_str(&format!("/private/e{j:05} {{{size}+}}\r\n{value} "));
        }
        cmd.pop();
        cmd.push(')');
        let t = Instant::now();
        c.expect_ok(&cmd);
        if std::env::var("PROBE").is_ok() {
            eprintln!("SETMETADATA of {} bytes: {:?}", cmd.len(), t.elapsed());
        }
        i += per_command;
    }
}

/// Finding 2 (IMAP): sessions that send `GETMETADATA (DEPTH infinity) "" /private` over many
/// large entries and never read made the proxy hold each reply whole (and copies of it), and
/// much of it after the sockets closed. Now the reply is streamed: a client that does not read
/// stops being served.
#[test]
fn metadata_readers_that_do_not_read_take_bounded_memory() {
    let sessions: usize = std::env::var("ATTACK_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dovecot = Provider::start();
    let proxy = imap_proxy(&dovecot, "");
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let t = Instant::now();
    fill_metadata(&mut c, 990, 64 * 1024);
    eprintln!("stored 990 entries in {:?}", t.elapsed());
    // The entries are there, and read back whole by a client that reads.
    let t = Instant::now();
    let got = c.expect_ok("g GETMETADATA (DEPTH infinity) \"\" /private");
    assert_eq!(got.concat().matches("{65536}").count(), 990);
    drop(got);
    eprintln!("read them back in {:?}", t.elapsed());
    let filled = rss_kib(proxy.pid());
    // The filling session ends: what it made the daemon allocate is freed and returned to the
    // OS (at a session's end). Measured from a baseline that still held it, the attack's memory
    // depended on which runtime thread (so which allocator arena) each session ran on: RSS rose
    // less where it reused that freed memory, more under load, where it landed in other arenas.
    c.expect_ok("z LOGOUT");
    drop(c);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(proxy.pid());
    eprintln!("RSS after filling {filled} KiB, once that session ended {before} KiB");
    let running = Arc::new(AtomicBool::new(true));
    let peak = sample_peak(proxy.pid(), running.clone());
    let mut idle = Vec::new();
    for i in 0..sessions {
        let mut c = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
        c.login("alice@example.org", "secret");
        c.send_raw(format!("x{i} GETMETADATA (DEPTH infinity) \"\" /private\r\n").as_bytes());
        idle.push(c);
    }
    std::thread::sleep(Duration::from_secs(8));
    // Another session is served meanwhile.
    let mut other = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
    other.login("alice@example.org", "secret");
    other.expect_ok("n NOOP");
    drop(other);
    let during = rss_kib(proxy.pid());
    drop(idle);
    std::thread::sleep(Duration::from_secs(3));
    running.store(false, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let after = rss_kib(proxy.pid());
    eprintln!(
        "FIGURE finding 2 (IMAP, {sessions} sessions): RSS before {before} KiB, during {during} KiB, peak {peak} KiB, after close {after} KiB"
    );
    // SECURITY.md: at most 4 MiB per session for what a client makes the proxy hold.
    let bound = before + sessions as u64 * 4 * 1024;
    assert!(peak <= bound, "peak RSS {peak} KiB over the bound {bound} KiB (before: {before} KiB)");
    assert!(after <= before + 16 * 1024, "RSS {after} KiB after the sessions closed (before: {before} KiB)");
}

/// Finding 2 (SMTP): sessions trickling message data without the final dot made the proxy hold
/// every body in memory, with no time limit. Now DATA goes to a spool file on disk and has a
/// deadline.
#[test]
fn smtp_data_goes_to_disk_not_memory() {
    let sessions: usize = std::env::var("ATTACK_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dovecot = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", dovecot.smtp_port))
        .extra("[limits]\ndata_timeout_secs = 20")
        .log("info")
        .start();
    let before = rss_kib(proxy.pid());
    let running = Arc::new(AtomicBool::new(true));
    let peak = sample_peak(proxy.pid(), running.clone());
    let chunk = "x".repeat(998) + "\r\n";
    let mut open = Vec::new();
    for _ in 0..sessions {
        let mut s = SmtpClient::from_stream(connect_from("127.0.0.1", proxy.smtp_port));
        s.login("alice@example.org", "secret");
        s.expect("MAIL FROM:<alice@example.org>", 250);
        s.expect("RCPT TO:<bob@example.org>", 250);
        s.expect("DATA", 354);
        s.send_raw(b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n");
        open.push(s);
    }
    // 8 MB each, never finished.
    for _ in 0..8 * 1024 {
        for s in &mut open {
            s.send_raw(chunk.as_bytes());
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kib(proxy.pid());
    // The deadline ends them: 421, and the partial message is not queued.
    for s in &mut open {
        let reply = s.read_reply();
        assert_eq!(reply.code, 421, "{reply:?}");
    }
    drop(open);
    std::thread::sleep(Duration::from_secs(2));
    running.store(false, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let after = rss_kib(proxy.pid());
    eprintln!(
        "FIGURE finding 2 (SMTP, {sessions} sessions x 8 MB): RSS before {before} KiB, during {during} KiB, peak {peak} KiB, after {after} KiB"
    );
    let bound = before + sessions as u64 * 2 * 1024;
    assert!(peak <= bound, "peak RSS {peak} KiB over the bound {bound} KiB (before: {before} KiB)");
    let spool = proxy.state_dir.path().join("state/spool");
    let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "spool files of unfinished messages are removed");
}

/// Finding 3: `GETMETADATA "" (` + 40,000 literal entry names took 14.7 s on a runtime thread
/// (quadratic selection), and stalled other sessions. Now the work is linear and runs off the
/// runtime.
#[test]
fn forty_thousand_entry_names_stall_no_one() {
    let dovecot = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .listen("metrics = \"127.0.0.1:0\"")
        .log("info")
        .start();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let mut cmd = b"big GETMETADATA \"\" (".to_vec();
    for i in 0..40_000 {
        let name = format!("/private/e{i:05}");
        cmd.extend_from_slice(format!("{{{}+}}\r\n{name} ", name.len()).as_bytes());
    }
    cmd.pop();
    cmd.extend_from_slice(b")\r\n");
    assert!(cmd.len() < 1024 * 1024, "{} bytes", cmd.len());
    let mut other = proxy.connect();
    other.login("bob@example.org", "secret");
    let started = Instant::now();
    c.send_raw(&cmd);
    // Meanwhile another session's commands and a fresh login are answered at once.
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        other.expect_ok(&format!("n{i} NOOP"));
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (login, ok) = timed_login(proxy.imap_port, "carol@example.org");
    assert!(ok.starts_with("t OK"), "{ok}");
    let reply = read_tagged(&mut c, b"big ");
    let took = started.elapsed();
    assert!(String::from_utf8_lossy(reply.last().unwrap()).starts_with("big OK"), "{:?}", reply.last());
    assert!(String::from_utf8_lossy(&reply[0]).contains("/private/e39999 NIL"));
    drop(other);
    // The runtime threads' CPU time for the command alone (the daemon names its runtime worker
    // threads `coi-runtime`; the kernel counts each thread's time on a CPU), against the same
    // stretch with nothing sent; tokio's busy time (wall time while not parked) for comparison.
    std::thread::sleep(Duration::from_secs(1));
    let idle = {
        let before = runtime_cpu(proxy.pid());
        std::thread::sleep(took.min(Duration::from_secs(3)));
        runtime_cpu(proxy.pid()) - before
    };
    let (before, busy_before) = (runtime_cpu(proxy.pid()), runtime_busy(proxy.metrics_port));
    let again = Instant::now();
    cmd[..3].copy_from_slice(b"bi2");
    c.send_raw(&cmd);
    let reply = read_tagged(&mut c, b"bi2 ");
    let wall = again.elapsed();
    let (cpu, busy) = (runtime_cpu(proxy.pid()) - before, runtime_busy(proxy.metrics_port) - busy_before);
    assert!(String::from_utf8_lossy(reply.last().unwrap()).starts_with("bi2 OK"), "{:?}", reply.last());
    eprintln!(
        "FIGURE finding 3: GETMETADATA of 40,000 names answered in {took:?}; NOOP at worst {worst:?}, login {login:?}; \
         alone: {wall:?}, {cpu:?} CPU time on runtime threads (tokio busy {busy:?}; idle over as long: {idle:?})"
    );
    assert!(worst < Duration::from_millis(500), "NOOP waited {worst:?}");
    assert!(login < Duration::from_secs(1), "a login waited {login:?}");
    assert!(took < Duration::from_secs(10), "the command took {took:?}");
    // Issue 23: at most 50 ms of runtime thread time per command, for the daemon as shipped
    // (release). A debug build's framing and copying run several times slower; its figure is
    // checked against 4 times the bound (`cargo test --release --test security` checks 50 ms).
    let limit = Duration::from_millis(if cfg!(debug_assertions) { 200 } else { 50 });
    assert!(cpu < limit, "the command took {cpu:?} of runtime thread time (limit {limit:?})");
}

/// CPU time the daemon's runtime worker threads (named `coi-runtime`) have used so far.
fn runtime_cpu(pid: u32) -> Duration {
    let mut total = 0u64;
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "coi-runtime" {
            continue;
        }
        workers += 1;
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
    }
    assert!(workers > 0, "no thread of {pid} is named coi-runtime");
    Duration::from_nanos(total)
}

/// Responses up to and including the one starting with `tag`.
fn read_tagged(c: &mut ImapClient, tag: &[u8]) -> Vec<Vec<u8>> {
    let mut reply = Vec::new();
    loop {
        let line = c.read_response_bytes();
        let done = line.starts_with(tag);
        reply.push(line);
        if done {
            return reply;
        }
    }
}

/// The daemon's runtime threads' busy time so far (`/metrics`).
fn runtime_busy(port: u16) -> Duration {
    use std::io::{Read, Write};
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let value = response
        .lines()
        .find_map(|l| l.strip_prefix("coi_proxy_runtime_busy_seconds_total "))
        .unwrap_or_else(|| panic!("no busy time in {response}"));
    Duration::from_secs_f64(value.trim().parse().unwrap())
}

/// Memory per account: many sessions of one account, each holding a command the proxy
/// collects whole (a SETMETADATA with a ~900 KB literal, never finished), made the daemon hold
/// ~0.9 MB each however many there were. Now what one account makes the proxy hold is charged
/// to its share of the memory budget (`max_memory_per_account`): beyond it a session gets
/// `NO [LIMIT]` and its data is not kept, and other accounts are still served.
#[test]
fn many_sessions_of_one_account_stay_within_its_share() {
    let sessions: usize = std::env::var("ATTACK_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let share: u64 = 16 << 20;
    let dovecot = Provider::start();
    let proxy = imap_proxy(&dovecot, &format!("[limits]\nmax_memory_per_account = {share}\nmax_sessions_per_ip = 200"));
    // Warm up (the account's worker, the store) before the baseline.
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.expect_ok("a SETMETADATA \"\" (/private/warm \"x\")");
    drop(c);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(proxy.pid());
    let running = Arc::new(AtomicBool::new(true));
    let peak = sample_peak(proxy.pid(), running.clone());
    const LITERAL: usize = 900_000;
    let part = "v".repeat(LITERAL - 1000);
    let (mut held, mut refused) = (Vec::new(), 0);
    for i in 0..sessions {
        let mut c = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
        c.login("alice@example.org", "secret");
        c.send_raw(format!("x{i} SETMETADATA \"\" (/private/big {{{LITERAL}}}\r\n").as_bytes());
        let answer = String::from_utf8_lossy(&c.read_response_bytes()).to_string();
        if answer.starts_with('+') {
            // Most of the literal, never the rest: the proxy holds it.
            c.send_raw(part.as_bytes());
            held.push(c);
        } else {
            assert!(answer.starts_with(&format!("x{i} NO [LIMIT]")), "{answer}");
            assert!(answer.contains("max_memory_per_account"), "{answer}");
            // The session goes on.
            c.expect_ok("n NOOP");
            refused += 1;
            held.push(c);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kib(proxy.pid());
    // Another account is served, its own commands collected as usual.
    let mut bob = ImapClient::from_stream(connect_from("127.0.0.1", proxy.imap_port));
    bob.login("bob@example.org", "secret");
    let value = "b".repeat(60_000);
    bob.expect_ok(&format!("b SETMETADATA \"\" (/private/note {{{}+}}\r\n{value})", value.len()));
    drop(bob);
    drop(held);
    std::thread::sleep(Duration::from_secs(3));
    running.store(false, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let after = rss_kib(proxy.pid());
    eprintln!(
        "FIGURE memory per account ({sessions} sessions of one account, {LITERAL} B each, share {share} B): \
         {refused} refused, RSS before {before} KiB, during {during} KiB, peak {peak} KiB, after {after} KiB"
    );
    let fits = (share as usize / LITERAL).min(sessions);
    assert!(refused >= sessions - fits, "{refused} of {sessions} refused; the share fits {fits}");
    // SECURITY.md: an account's share, plus the fixed part of each session (512 KiB at most).
    let bound = before + share / 1024 + sessions as u64 * 512;
    assert!(peak <= bound, "peak RSS {peak} KiB over the bound {bound} KiB (before: {before} KiB)");
}

/// Finding 4: an ID name with CR LF and ESC forged log lines, and repeating a long ID before
/// login grew the log by hundreds of MB. Now peer values are escaped and truncated, and
/// repeated events are counted instead of logged one by one.
#[test]
fn peer_input_cannot_forge_or_flood_the_log() {
    let dovecot = Provider::start();
    let proxy = imap_proxy(&dovecot, "");
    let mut c = proxy.connect();
    let forged = b"Evil\r\n2026-01-01 INFO forged line \x1b[31mred";
    c.send_raw(&[format!("a ID (\"name\" {{{}+}}\r\n", forged.len()).as_bytes(), forged, b")\r\n"].concat());
    c.read_line();
    c.read_line();
    let long = "n".repeat(15_000);
    let size_before = proxy.log().len();
    for i in 0..300 {
        c.expect_ok(&format!("i{i} ID (\"name\" \"{long}\")"));
    }
    c.login("alice@example.org", "secret");
    c.send_raw(b"b ID (\"name\" {11+}\r\nPost\rlogin\x1b)\r\n");
    c.read_line();
    c.read_line();
    c.expect_ok("z LOGOUT");
    proxy.wait_for_log("session ended", Duration::from_secs(5));
    let log = proxy.log();
    let grown = log.len() - size_before;
    eprintln!("FIGURE finding 4: 300 IDs of 15,000 bytes grew the log by {grown} bytes");
    assert!(grown < 64 * 1024, "the log grew by {grown} bytes");
    assert!(!log.contains('\x1b'), "a raw ESC reached the log");
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01 INFO forged")), "{log}");
    assert!(!log.contains("Post\rlogin"), "{log}");
    assert!(log.contains("Evil\\r\\n2026-01-01 INFO forged line \\x1b[31mred"), "{log}");
    assert!(log.contains("repeated"), "{log}");
}

/// Finding 5: an SMTP connection that never logs in (NOOP every 15 s) lived forever; IMAP's is
/// closed after `login_timeout_secs`. Now SMTP has the same limit.
#[test]
fn smtp_has_a_login_timeout() {
    let dovecot = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", dovecot.smtp_port))
        .extra("[limits]\nlogin_timeout_secs = 2")
        .start();
    let mut s = proxy.connect_smtp();
    s.ehlo();
    let started = Instant::now();
    let mut closed = None;
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(500));
        let reply = s.command("NOOP");
        if reply.code == 421 {
            closed = Some((started.elapsed(), reply));
            break;
        }
        assert_eq!(reply.code, 250);
    }
    let (after, reply) = closed.expect("the unauthenticated session was never closed");
    assert!(reply.text().contains("Login timed out"), "{reply:?}");
    assert!(after < Duration::from_secs(4), "{after:?}");
    s.expect_eof();
    // A client that logs in in time is not affected.
    let mut s = proxy.connect_smtp();
    s.login("alice@example.org", "secret");
    std::thread::sleep(Duration::from_secs(3));
    s.expect("NOOP", 250);
}

/// Finding 6: on a provider where `Bob@…` and `bob@…` are two users, every state key was the
/// lowercased login: `Bob` read bob's push subscriptions, turned his COI off and overwrote
/// his remembered password. Now the key is the login as the provider knows it.
#[test]
fn logins_that_differ_in_case_are_different_accounts() {
    let dovecot = Provider::start_with(ProviderOptions {
        case_sensitive: true,
        users: Some(vec!["bob".into(), "Bob".into()]),
        ..Default::default()
    });
    let endpoint = PushEndpoint::start();
    let proxy = imap_proxy(&dovecot, "[push]\nprivate_endpoints = true");
    let device = Device::new();
    let mut bob = proxy.connect();
    bob.login("bob@example.org", "secret");
    bob.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes)"));
    bob.expect_ok("c SETMETADATA \"\" (/private/comment \"bob's own\")");
    let json = device.subscription(&endpoint.url("/bob"), "all");
    let r = bob.command(&format!("s SETMETADATA \"\" ({SUBS}/bobsdevice01 {{{}}}\r\n{json})", json.len()));
    assert!(r.last().unwrap().starts_with("s OK"), "{r:?}");

    let mut other = proxy.connect();
    other.login("Bob@example.org", "secret");
    let got = other.expect_ok(&format!("g GETMETADATA (DEPTH infinity) \"\" (/private/comment {SUBS} {ENABLED})"));
    let got = got.concat();
    assert!(!got.contains("bob's own"), "{got}");
    assert!(!got.contains("bobsdevice01"), "{got}");
    // COI is off for Bob: the entry has no value (omitted at DEPTH infinity, or NIL).
    assert!(got.matches(ENABLED).count() == got.matches(&format!("{ENABLED} NIL")).count(), "{got}");
    assert!(!got.contains("yes"), "{got}");
    // Bob's changes stay his.
    other.expect_ok(&format!("d SETMETADATA \"\" ({ENABLED} NIL)"));
    other.expect_ok(&format!("u SETMETADATA \"\" ({SUBS}/bobsdevice01 NIL)"));
    let mine = bob.expect_ok(&format!("g GETMETADATA (DEPTH infinity) \"\" ({SUBS} {ENABLED})")).concat();
    assert!(mine.contains("bobsdevice01") && mine.contains(&format!("{ENABLED} {{3}}\r\nyes")), "{mine}");
}

fn push_proxy(dovecot: &Provider, private: bool) -> Proxy {
    imap_proxy(dovecot, &format!("[push]\nprivate_endpoints = {private}"))
}

/// Finding 7: push endpoints reached the proxy's own network (`https://localhost`, any port of
/// `http://127.0.0.1`, IPv4-compatible and NAT64 forms of loopback, benchmark and reserved
/// ranges), the refusal told a port scanner what it found, and subscribe/unsubscribe churn made
/// hundreds of POSTs.
#[test]
fn push_endpoints_cannot_reach_the_local_network() {
    let dovecot = Provider::start();
    let endpoint = PushEndpoint::start();
    let device = Device::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxy = push_proxy(&dovecot, false);
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let mut answers = Vec::new();
    for (i, url) in [
        "https://localhost/p".to_string(),
        "https://LOCALHOST./p".to_string(),
        endpoint.url("/p"),
        format!("http://127.0.0.1:{closed}/p"),
        "https://[::127.0.0.1]/p".to_string(),
        "https://[64:ff9b::7f00:1]/p".to_string(),
        "https://198.18.0.1/p".to_string(),
        "https://240.0.0.1/p".to_string(),
        "https://127.1/p".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let json = device.subscription(url, "all");
        let r = c.command(&format!("s SETMETADATA \"\" ({SUBS}/subscription{i:02} {{{}}}\r\n{json})", json.len()));
        let status = r.last().unwrap().clone();
        assert!(status.starts_with("s NO "), "{url}: {status}");
        answers.push(status);
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "one refusal text for all: {answers:?}");
    assert!(endpoint.received("/p").is_empty(), "a refused endpoint was posted to");
    let log = proxy.log();
    assert!(log.contains("push endpoint refused"), "{log}");

    // A push server on the LAN needs private_endpoints; churn is rate-limited per account.
    let proxy = push_proxy(&dovecot, true);
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let started = Instant::now();
    for i in 0..60 {
        let json = device.subscription(&endpoint.url("/churn"), "all");
        c.command(&format!("s SETMETADATA \"\" ({SUBS}/churnchurn{i:02} {{{}}}\r\n{json})", json.len()));
        c.command(&format!("u SETMETADATA \"\" ({SUBS}/churnchurn{i:02} NIL)"));
    }
    let posts = endpoint.received("/churn").len();
    eprintln!("FIGURE finding 7: 60 subscribe/unsubscribe pairs in {:?} made {posts} POSTs", started.elapsed());
    assert!(posts <= 20, "{posts} POSTs");
}

fn smtp_proxy(dovecot: &Provider, extra: &str) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", dovecot.smtp_port))
        .extra(extra)
        .start()
}

/// Finding 8: authenticated as alice, `MAIL FROM:<bob@…>` with `From: bob@…` was relayed. Now
/// the envelope sender and the From: field must be one of the account's addresses (its login
/// and `[[account]] addresses`), unless `allow_any_sender` says otherwise.
#[test]
fn the_sender_is_tied_to_the_login() {
    let dovecot = Provider::start();
    let proxy = smtp_proxy(
        &dovecot,
        "[[account]]\nlogin = \"alice@example.org\"\naddresses = [\"Alice.Alias@example.org\"]\n\
         [[account]]\nlogin = \"carol@example.org\"\nallow_any_sender = true\n",
    );
    let mut s = proxy.connect_smtp();
    s.login("alice@example.org", "secret");
    let reply = s.command("MAIL FROM:<bob@example.org>");
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("not an address of this account"), "{reply:?}");
    let forged = b"From: bob@example.org\r\nTo: carol@example.org\r\nSubject: forged\r\n\r\nhi\r\n";
    let reply = s.send_message("alice@example.org", &["carol@example.org"], forged);
    assert_eq!(reply.code, 550, "{reply:?}");
    let alias = b"From: Alice <alice.alias@example.org>\r\nTo: carol@example.org\r\nSubject: ok\r\n\r\nhi\r\n";
    assert_eq!(s.send_message("alice.alias@example.org", &["carol@example.org"], alias).code, 250);
    // Bounces (empty reverse path) are the account's own, with its From:.
    let own = b"From: alice@example.org\r\nTo: carol@example.org\r\nSubject: ok\r\n\r\nhi\r\n";
    assert_eq!(s.send_message("", &["carol@example.org"], own).code, 250);
    let mut s = proxy.connect_smtp();
    s.login("carol@example.org", "secret");
    let other = b"From: list@example.net\r\nTo: bob@example.org\r\nSubject: ok\r\n\r\nhi\r\n";
    assert_eq!(s.send_message("list@example.net", &["bob@example.org"], other).code, 250);
}

/// Finding 9, SMTP: bare CR in DATA was relayed (a receiver that ends lines at CR sees the end
/// of data there), and `SIZE=` beyond 64 bits overflowed to 250.
#[test]
fn smtp_bare_cr_and_huge_size_are_refused() {
    let dovecot = Provider::start();
    let proxy = smtp_proxy(&dovecot, "");
    let mut s = proxy.connect_smtp();
    s.login("alice@example.org", "secret");
    let reply = s.command("MAIL FROM:<alice@example.org> SIZE=99999999999999999999999");
    assert!(reply.code == 552 || reply.code == 501, "{reply:?}");
    for smuggled in [&b"hi\r.\r\nMAIL FROM:<x>\r\n"[..], b"hi\r\n\r.\r\r\nmore\r\n"] {
        s.expect("MAIL FROM:<alice@example.org>", 250);
        s.expect("RCPT TO:<bob@example.org>", 250);
        s.expect("DATA", 354);
        let mut data = b"From: alice@example.org\r\nTo: bob@example.org\r\n\r\n".to_vec();
        data.extend_from_slice(smuggled);
        data.extend_from_slice(b".\r\n");
        s.send_raw(&data);
        let reply = s.read_reply();
        assert_eq!(reply.code, 550, "{reply:?}");
        assert!(reply.text().contains("bare CR"), "{reply:?}");
    }
    s.expect("NOOP", 250);
}

/// Finding 9, IMAP: a refused COI value was echoed unescaped (a literal with CR LF made a
/// separate `* BYE` line), and GET/SETMETADATA on a mailbox that does not exist answered OK.
#[test]
fn metadata_refusals_are_one_line_and_name_missing_mailboxes() {
    let dovecot = Provider::start();
    let proxy = imap_proxy(&dovecot, "");
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.send_raw(format!("r SETMETADATA \"\" ({ENABLED} {{8+}}\r\nx\r\n* BYE)\r\n").as_bytes());
    let line = c.read_line();
    assert!(line.starts_with("r NO [CANNOT]"), "{line:?}");
    assert_eq!(line.matches("\r\n").count(), 1, "{line:?}");
    c.expect_ok("n NOOP");
    let no = c.command("m GETMETADATA NoSuchBox /private/comment");
    assert!(no.last().unwrap().starts_with("m NO [NONEXISTENT]"), "{no:?}");
    let no = c.command("m SETMETADATA NoSuchBox (/private/comment \"x\")");
    assert!(no.last().unwrap().starts_with("m NO [NONEXISTENT]"), "{no:?}");
    c.expect_ok("m SETMETADATA INBOX (/private/comment \"x\")");
}

/// The proxy's own commands never take a client's tag: `coip1 NOOP` is answered (the fuller
/// check is `tests/imap_relay.rs`).
#[test]
fn a_client_tag_like_the_proxys_is_answered() {
    let dovecot = Provider::start();
    let proxy = imap_proxy(&dovecot, "");
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.expect_ok("coip1 NOOP");
    c.expect_ok("coips1 GETMETADATA \"\" /private/comment");
}
