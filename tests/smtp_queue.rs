//! The durable queue against a real Dovecot: mail accepted while the provider's submission
//! server is down goes out when it is back; a permanent refusal becomes a failure report in the
//! sender's INBOX; a SIGKILL during 200 submissions loses no acknowledged message.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::provider::Provider;
use support::proxy::{Proxy, signal};
use support::smtp_client::{data_block, inbox, wait_for_inbox};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// Quick retries, so the tests need not wait minutes.
const FAST_RETRIES: &str = "[queue]\nretry_initial_secs = 1\nretry_max_secs = 2\n";

fn has(message: &[u8], needle: &str) -> bool {
    message.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A TCP forwarder from a local port to `target`, standing in for a submission server that
/// comes back. Stops accepting when dropped.
struct Forwarder {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(listener: TcpListener, target: u16) -> Forwarder {
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Forwarder { port, stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn accepted_while_the_provider_is_down_and_delivered_when_it_returns() {
    let provider = Provider::start();
    // A port where nothing listens yet.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{port}"))
        .extra(FAST_RETRIES)
        .start();
    let mut c = proxy.connect_smtp();
    // The login is checked at the IMAP server while submission is unreachable.
    c.login(ALICE, "secret");
    let message = b"Subject: while you were away\r\n\r\nqueued\r\n";
    let reply = c.send_message(ALICE, &[BOB], message);
    assert_eq!(reply.code, 250, "{}", c.transcript());
    c.expect("QUIT", 221);
    proxy.wait_for_log("delivery deferred: connection refused", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(inbox(provider.imap_port, BOB, "secret").is_empty());

    let _forwarder = Forwarder::start(TcpListener::bind(("127.0.0.1", port)).unwrap(), provider.smtp_port);
    let started = Instant::now();
    let arrived = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());
    assert!(arrived[0].ends_with(message));
    println!("delivered {:?} after the provider came back", started.elapsed());
    // The proxy logs once it has read the provider's 250, which may come after the message is
    // visible in the INBOX.
    proxy.wait_for_log("relayed: delivered to 1", Duration::from_secs(10));
}

#[test]
fn permanent_refusal_puts_a_failure_report_into_the_senders_inbox() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .extra(FAST_RETRIES)
        .start();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    let message = b"From: alice@example.org\r\nSubject: to someone who is not there\r\n\r\nhello?\r\n";
    // The proxy accepts both recipients; the provider refuses one of them for good.
    let reply = c.send_message(ALICE, &[BOB, "nobody@example.org"], message);
    assert_eq!(reply.code, 250, "{}", c.transcript());
    c.expect("QUIT", 221);

    wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let reports = wait_for_inbox(provider.imap_port, ALICE, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let report = &reports[0];
    let text = String::from_utf8_lossy(report);
    assert!(has(report, "Subject: Undelivered mail: to someone who is not there"), "{text}");
    assert!(has(report, "multipart/report; report-type=delivery-status"), "{text}");
    assert!(has(report, "  nobody@example.org\r\n      The provider refused it: 550 5.1.1"), "{text}");
    assert!(has(report, "Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1"), "{text}");
    assert!(has(report, "It was delivered to the other 1 recipient(s)."), "{text}");
    assert!(has(report, "text/rfc822-headers\r\n\r\nFrom: alice@example.org\r\nSubject: to someone"), "{text}");
    assert!(!has(report, "hello?"), "the body is not quoted");
    proxy.wait_for_log("failure report put into the sender's INBOX", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(inbox(provider.imap_port, ALICE, "secret").len(), 1, "exactly one report");
}

#[test]
fn a_full_account_queue_answers_452_and_loses_nothing() {
    let provider = Provider::start();
    // Submission unreachable: everything accepted stays queued.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{port}"))
        .extra(&format!("{FAST_RETRIES}max_messages_per_account = 2\nmax_bytes_per_account = 3000\n"))
        .start();
    let body = |subject: &str, size: usize| {
        let mut m = format!("Subject: {subject}\r\n\r\n").into_bytes();
        m.resize(size - 2, b'x');
        m.extend_from_slice(b"\r\n");
        m
    };
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    assert_eq!(c.send_message(ALICE, &[BOB], &body("first", 1000)).code, 250, "{}", c.transcript());
    // No SIZE declared: the byte limit is noticed when the message is complete.
    let reply = c.send_message(ALICE, &[BOB], &body("too big for what is left", 2500));
    assert_eq!(reply.code, 452, "{}", c.transcript());
    assert!(reply.text().contains("4.3.1 Queue full: 1000 bytes of this account's mail are waiting"), "{reply:?}");
    // SIZE declared: refused at MAIL, before the client sends anything.
    let reply = c.command("MAIL FROM:<alice@example.org> SIZE=2500");
    assert_eq!(reply.code, 452, "{}", c.transcript());
    // What could never fit is refused for good: SIZE itself stays within the byte limit.
    assert!(c.ehlo().has_line("SIZE 3000"), "{}", c.transcript());
    assert_eq!(c.command("MAIL FROM:<alice@example.org> SIZE=3001").code, 552, "{}", c.transcript());
    assert_eq!(c.send_message(ALICE, &[BOB], &body("second", 500)).code, 250, "{}", c.transcript());
    let reply = c.send_message(ALICE, &[BOB], &body("third", 100));
    assert_eq!(reply.code, 452, "{}", c.transcript());
    assert!(reply.text().contains("4.3.1 Queue full: 2 messages of this account are waiting"), "{reply:?}");
    // The session goes on, and another account is not affected.
    c.expect("NOOP", 250);
    let mut other = proxy.connect_smtp();
    other.login("carol@example.org", "secret");
    assert_eq!(other.send_message("carol@example.org", &[BOB], &body("carol's", 2900)).code, 250);

    // A reload that raises the limit applies to the next message.
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(&proxy.config_path, config.replace("max_messages_per_account = 2", "max_messages_per_account = 3"))
        .unwrap();
    signal(proxy.pid(), 1);
    proxy.wait_for_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(c.send_message(ALICE, &[BOB], &body("third", 100)).code, 250, "{}", c.transcript());
    let reply = c.send_message(ALICE, &[BOB], &body("fourth", 100));
    assert!(reply.text().contains("3 messages of this account are waiting"), "{reply:?}");

    // The provider returns: what was accepted arrives, and alice has room again.
    let _forwarder = Forwarder::start(TcpListener::bind(("127.0.0.1", port)).unwrap(), provider.smtp_port);
    let arrived = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| m.len() >= 4);
    let subjects: BTreeSet<String> = arrived
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m).lines().find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned)).unwrap()
        })
        .collect();
    assert_eq!(subjects, BTreeSet::from(["first".into(), "second".into(), "third".into(), "carol's".into()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = c.send_message(ALICE, &[BOB], &body("fourth", 100));
        if reply.code == 250 {
            break;
        }
        assert!(reply.code == 452 && Instant::now() < deadline, "{}", c.transcript());
        std::thread::sleep(Duration::from_millis(200));
    }
    c.expect("QUIT", 221);
    wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| m.len() == 5);
}

/// Submits messages `first..first+count` on one connection, each with Subject `crash-N`, and
/// records every one that got `250` after its data. Stops quietly at the first error (the
/// daemon is killed under it).
fn submit_until_killed(port: u16, first: usize, count: usize, attempted: &AtomicUsize, acked: &Mutex<Vec<usize>>) {
    let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) else { return };
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut w = tcp;
    let mut reply = || -> Option<u16> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.get(..3)?.parse().ok();
            }
        }
    };
    let auth = base64_plain(ALICE, "secret");
    let greet = format!("EHLO crash.test\r\nAUTH PLAIN {auth}\r\n");
    if reply() != Some(220) || w.write_all(greet.as_bytes()).is_err() || reply() != Some(250) || reply() != Some(235) {
        return;
    }
    for n in first..first + count {
        let body =
            format!("From: {ALICE}\r\nTo: {BOB}\r\nSubject: crash-{n}\r\n\r\nmessage {n}\r\n{}\r\n", "x".repeat(2000));
        let mut batch = format!("MAIL FROM:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n").into_bytes();
        attempted.fetch_add(1, Ordering::SeqCst);
        if w.write_all(&batch).is_err() || reply() != Some(250) || reply() != Some(250) || reply() != Some(354) {
            return;
        }
        batch = data_block(body.as_bytes());
        if w.write_all(&batch).is_err() {
            return;
        }
        match reply() {
            Some(250) => acked.lock().unwrap().push(n),
            _ => return,
        }
    }
    let _ = w.write_all(b"QUIT\r\n");
    let mut rest = Vec::new();
    let _ = w.read_to_end(&mut rest);
}

fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

#[test]
fn sigkill_during_200_submissions_loses_no_acknowledged_message() {
    const TOTAL: usize = 200;
    const CLIENTS: usize = 4;
    let provider = Provider::start();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .extra(FAST_RETRIES)
        .log("info")
        .start();
    let attempted = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let port = proxy.smtp_port;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (attempted, acked) = (attempted.clone(), acked.clone());
            std::thread::spawn(move || {
                submit_until_killed(port, i * (TOTAL / CLIENTS), TOTAL / CLIENTS, &attempted, &acked)
            })
        })
        .collect();
    // Kill once a good part is acknowledged, while the rest is in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < TOTAL * 2 / 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(proxy.pid(), 9);
    for c in clients {
        c.join().unwrap();
    }
    let acked: BTreeSet<usize> = acked.lock().unwrap().iter().copied().collect();
    let attempted = attempted.load(Ordering::SeqCst);
    assert!(!acked.is_empty() && acked.len() < TOTAL, "the kill must come mid-way: {} acknowledged", acked.len());

    // After the restart no password is known (memory only): the queue waits for a login.
    proxy.restart();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    c.expect("QUIT", 221);

    let subject_of = |m: &Vec<u8>| -> Option<usize> {
        let text = String::from_utf8_lossy(m);
        text.split("Subject: crash-").nth(1)?.split("\r\n").next()?.parse().ok()
    };
    let messages = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(90), |msgs| {
        let got: BTreeSet<usize> = msgs.iter().filter_map(subject_of).collect();
        acked.is_subset(&got)
    });
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for n in messages.iter().filter_map(subject_of) {
        *counts.entry(n).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "crash test: {attempted} submitted, {} acknowledged with 250, {} distinct arrived ({} beyond the acknowledged ones), {duplicates} duplicate(s)",
        acked.len(),
        counts.len(),
        counts.len() - acked.len()
    );
    let missing: Vec<_> = acked.iter().filter(|n| !counts.contains_key(n)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(counts.len() <= attempted, "nothing arrives that was not submitted");
}

/// DATA goes to a spool file as it arrives: a SIGKILL in the middle of a message leaves a partial
/// file, which the restarted daemon removes and never queues; a message acknowledged with `250`
/// (its body in the queue directory) survives the same kill and is delivered.
#[test]
fn a_crash_mid_data_queues_nothing_and_keeps_what_was_acknowledged() {
    let provider = Provider::start();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", "1"))
        .extra(FAST_RETRIES)
        .log("info")
        .start();
    let state = proxy.state_dir.path().join("state");
    let files = |dir: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(state.join(dir)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    let done = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: spooled-done\r\n\r\nkept\r\n";
    assert_eq!(c.send_message(ALICE, &[BOB], done).code, 250);
    assert_eq!(files("queue").len(), 1, "the acknowledged body is a file in the queue directory");
    c.expect(&format!("MAIL FROM:<{ALICE}>"), 250);
    c.expect(&format!("RCPT TO:<{BOB}>"), 250);
    c.expect("DATA", 354);
    c.send_raw(b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: spooled-partial\r\n\r\n");
    c.send_raw("partial line\r\n".repeat(4000).as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    let spooled = |f: &Vec<std::path::PathBuf>| f.iter().map(|p| p.metadata().map_or(0, |m| m.len())).sum::<u64>();
    while spooled(&files("spool")) < 50_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(files("spool").len(), 1, "the message being received is on disk");
    assert!(spooled(&files("spool")) >= 50_000, "the data goes to disk as it comes");
    signal(proxy.pid(), 9);
    drop(c);
    assert_eq!(files("spool").len(), 1, "the crash leaves the partial file");

    proxy.restart();
    proxy.wait_for_log("removed the partial message data", Duration::from_secs(10));
    assert!(files("spool").is_empty(), "{:?}", files("spool"));
    let (ok, list) = queue_cli(&proxy, &["list"]);
    assert!(ok && list.contains("\n1 message(s) in the queue:"), "{list}");
    assert_eq!(files("queue").len(), 1, "the acknowledged message is still queued");
}

#[test]
fn giving_up_puts_a_failure_report_into_the_senders_inbox() {
    let provider = Provider::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{port}"))
        .extra("[queue]\nretry_initial_secs = 1\nretry_max_secs = 1\ngive_up_after_secs = 3\n")
        .start();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    let reply = c.send_message(ALICE, &[BOB], b"Subject: never to arrive\r\n\r\nx\r\n");
    assert_eq!(reply.code, 250, "{}", c.transcript());
    c.expect("QUIT", 221);
    let reports = wait_for_inbox(provider.imap_port, ALICE, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let text = String::from_utf8_lossy(&reports[0]);
    assert!(has(&reports[0], "Subject: Undelivered mail: never to arrive"), "{text}");
    assert!(has(&reports[0], "      gave up after "), "{text}");
    assert!(has(&reports[0], "connection refused"), "the last error is named: {text}");
    assert!(has(&reports[0], "Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 4.4.7"), "{text}");
    assert!(inbox(provider.imap_port, BOB, "secret").is_empty());
}

/// `coi-proxy queue ...` with the test proxy's config; (exit success, stdout + stderr).
fn queue_cli(proxy: &Proxy, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(&proxy.config_path)
        .arg("queue")
        .args(args)
        .output()
        .expect("run coi-proxy queue");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn queue_list_retry_and_drop_while_the_daemon_runs_and_after() {
    let provider = Provider::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{port}"))
        .extra("[queue]\nretry_initial_secs = 3600\nretry_max_secs = 3600\n")
        .start();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    for subject in ["first", "second"] {
        let reply = c.send_message(ALICE, &[BOB], format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes());
        assert_eq!(reply.code, 250, "{}", c.transcript());
    }
    c.expect("QUIT", 221);
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (ok, text) = queue_cli(&proxy, &["list"]);
        assert!(ok, "{text}");
        let settled = text.matches("deferred: connection refused").count() == 2 && !text.contains("being sent now");
        if settled || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed.starts_with("state directory: ") && listed.contains("answered by the running daemon"), "{listed}");
    assert!(listed.contains("\n2 message(s) in the queue:"), "{listed}");
    assert!(listed.contains("#1  from alice@example.org") && listed.contains("#2  from"), "{listed}");
    assert!(listed.contains("to bob@example.org: pending") && listed.contains("next attempt in "), "{listed}");
    assert!(listed.matches("deferred: connection refused").count() == 2, "{listed}");

    let (ok, text) = queue_cli(&proxy, &["drop", "1"]);
    assert!(ok && text.contains("removed"), "{text}");
    let (ok, text) = queue_cli(&proxy, &["drop", "#1"]);
    assert!(!ok && text.contains("no message #1"), "{text}");

    // The provider is back; without `retry` the next attempt would be in an hour.
    let _forwarder = Forwarder::start(TcpListener::bind(("127.0.0.1", port)).unwrap(), provider.smtp_port);
    let (ok, text) = queue_cli(&proxy, &["retry", "2"]);
    assert!(ok, "{text}");
    let arrived = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(10), |m| !m.is_empty());
    assert_eq!(arrived.len(), 1);
    assert!(has(&arrived[0], "Subject: second"));
    proxy.wait_for_log("relayed: delivered to 1", Duration::from_secs(5));
    assert!(queue_cli(&proxy, &["list"]).1.contains("\nThe queue is empty.\n"));

    // With the daemon stopped, the command line opens the store itself.
    proxy.stop();
    let (ok, text) = queue_cli(&proxy, &["list"]);
    assert!(ok && text.contains("no daemon is running") && text.contains("\nThe queue is empty.\n"), "{text}");
}

/// A submission server that defers one recipient once (`451`), which Dovecot cannot be made to
/// do; it records the recipients of every transaction that reached DATA.
fn flaky_server(listener: TcpListener, transactions: Arc<Mutex<Vec<Vec<String>>>>) {
    std::thread::spawn(move || {
        let mut deferred_once = false;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut w = stream;
            let _ = w.write_all(b"220 flaky.test ESMTP\r\n");
            let mut rcpts = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let upper = line.to_ascii_uppercase();
                let reply: &[u8] = if upper.starts_with("EHLO") {
                    b"250-flaky.test\r\n250-8BITMIME\r\n250 AUTH PLAIN\r\n"
                } else if upper.starts_with("AUTH") {
                    b"235 2.7.0 ok\r\n"
                } else if upper.starts_with("MAIL") || upper.starts_with("RSET") {
                    rcpts.clear();
                    b"250 2.1.0 ok\r\n"
                } else if upper.starts_with("RCPT") {
                    if line.contains("carol") && !deferred_once {
                        deferred_once = true;
                        b"451 4.2.0 carol's mailbox is busy, try later\r\n"
                    } else {
                        rcpts.push(line.trim_end().to_string());
                        b"250 2.1.5 ok\r\n"
                    }
                } else if upper.starts_with("DATA") {
                    let _ = w.write_all(b"354 go on\r\n");
                    let mut data = String::new();
                    while !data.ends_with("\r\n.\r\n") {
                        if r.read_line(&mut data).unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    transactions.lock().unwrap().push(std::mem::take(&mut rcpts));
                    b"250 2.0.0 accepted\r\n"
                } else if upper.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n");
                    break;
                } else {
                    b"500 5.5.1 what?\r\n"
                };
                let _ = w.write_all(reply);
            }
        }
    });
}

#[test]
fn a_deferred_recipient_is_retried_alone() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let transactions = Arc::new(Mutex::new(Vec::new()));
    flaky_server(listener, transactions.clone());
    let proxy = Proxy::builder()
        .upstream("imap://127.0.0.1:1")
        .upstream_smtp(format!("smtp://127.0.0.1:{port}"))
        .extra(FAST_RETRIES)
        .start();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    let reply = c.send_message(ALICE, &[BOB, "carol@example.org"], b"Subject: partly later\r\n\r\nx\r\n");
    assert_eq!(reply.code, 250, "{}", c.transcript());
    c.expect("QUIT", 221);
    proxy.wait_for_log("relayed: delivered to 1, deferred for 1: 451 4.2.0", Duration::from_secs(10));
    proxy.wait_for_log("relayed: delivered to 1 id=1", Duration::from_secs(10));
    let transactions = transactions.lock().unwrap().clone();
    assert_eq!(
        transactions,
        vec![vec![format!("RCPT TO:<{BOB}>")], vec!["RCPT TO:<carol@example.org>".to_string()]],
        "bob got it once, carol on the retry"
    );
}

/// `queue list` until it contains `needle` (10 s at most); the listing.
fn list_until(proxy: &Proxy, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, text) = queue_cli(proxy, &["list"]);
        if ok && text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "queue list never showed {needle:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn queue_list_says_why_each_message_waits_and_what_went_out() {
    let provider = Provider::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{port}"))
        .extra(FAST_RETRIES)
        .start();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    assert_eq!(c.send_message(ALICE, &[BOB], b"Subject: waits\r\n\r\nx\r\n").code, 250, "{}", c.transcript());
    proxy.wait_for_log("delivery deferred", Duration::from_secs(10));

    // After a restart no password is known until alice logs in again: the listing says so.
    proxy.restart();
    let listed = list_until(&proxy, "waiting:");
    assert!(listed.contains("waiting: no password known for alice@example.org"), "{listed}");
    assert!(!listed.contains("next attempt now"), "{listed}");

    // A password_command that fails: its error, not "not tried yet".
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let failing = format!("{config}[[account]]\nlogin = \"{ALICE}\"\npassword_command = \"exit 3\"\n");
    std::fs::write(&proxy.config_path, &failing).unwrap();
    proxy.restart();
    let listed = list_until(&proxy, "waiting:");
    assert!(listed.contains("waiting: password_command for alice@example.org failed: exited with"), "{listed}");
    assert!(!listed.contains("not tried yet"), "{listed}");

    // The provider is back and alice's password known: `retry '#1'` as listed sends it, and the
    // delivery stays listed with the provider's answer.
    std::fs::write(
        &proxy.config_path,
        config.replace(
            "[queue]",
            &format!("[[account]]\nlogin = \"{ALICE}\"\npassword_command = \"echo secret\"\n[queue]"),
        ),
    )
    .unwrap();
    proxy.restart();
    let _forwarder = Forwarder::start(TcpListener::bind(("127.0.0.1", port)).unwrap(), provider.smtp_port);
    let (ok, text) = queue_cli(&proxy, &["retry", "#1"]);
    assert!(ok && text.contains("#1 will be tried again now"), "{text}");
    wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let listed = list_until(&proxy, "Recent deliveries");
    assert!(listed.contains("The queue is empty."), "{listed}");
    let line = listed.lines().find(|l| l.contains(BOB)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("#1") && line.contains("delivered") && line.contains("250"), "{line}");
    // Kept when the daemon is stopped, too.
    proxy.stop();
    let (ok, text) = queue_cli(&proxy, &["list"]);
    assert!(ok && text.contains("no daemon is running") && text.contains(BOB), "{text}");
}

#[test]
fn queue_commands_time_out_on_a_stopped_daemon() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .start();
    signal(proxy.pid(), 19); // SIGSTOP: the socket accepts, nobody answers
    let started = Instant::now();
    let (ok, text) = queue_cli(&proxy, &["list"]);
    signal(proxy.pid(), 18); // SIGCONT
    assert!(!ok && text.contains("did not answer") && text.contains("stopped or hung"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}
