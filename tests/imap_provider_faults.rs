//! A provider that fails in every way a real one can: it closes mid-literal, mid-IDLE, after `+`
//! and between responses, stalls, sends a 1 GB literal or garbage, or breaks TLS. Each time the
//! client gets a clear `BYE`/`NO` with the reason where the protocol leaves room for one, the
//! daemon and other sessions (a real Dovecot behind the same proxy) go on, and memory stays
//! bounded. The failing providers are scripted fakes (tests/support/fake_provider.rs), one per
//! login, routed there by `[[account]]` entries.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::fake_provider::{FakeProvider, Step, TestPki, greet_and_login};
use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::{Proxy, ProxyBuilder};

/// A proxy whose default provider is `dovecot`, with each `(login, url, ca_file)` routed elsewhere.
fn proxy_with(dovecot: &Provider, accounts: &[(&str, String, Option<&std::path::Path>)]) -> ProxyBuilder {
    let mut builder = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", dovecot.imap_port));
    for (login, url, ca) in accounts {
        let mut account = format!("[[account]]\nlogin = {login:?}\nimap = {url:?}\n");
        if let Some(ca) = ca {
            account.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
        }
        builder = builder.extra(&account);
    }
    builder
}

/// A session to the real provider that must outlive every fault.
fn bystander(proxy: &Proxy) -> ImapClient {
    let mut c = proxy.connect();
    c.login("bob@example.org", "secret");
    c.expect_ok("b0 SELECT INBOX");
    c
}

/// A plain connection, logged in; the raw reader sees exactly what the proxy sends.
fn raw_login(proxy: &Proxy, login: &str) -> BufReader<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", proxy.imap_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    r.get_mut().write_all(format!("L LOGIN {login} secret\r\n").as_bytes()).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("L OK"), "{line}");
    r
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// The daemon's resident memory, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

#[test]
fn provider_closing_at_any_point_ends_only_that_session() {
    let dovecot = Provider::start();
    let mut mid_literal = greet_and_login();
    mid_literal.extend([
        Step::Expect("FETCH"),
        Step::Send([&b"* 1 FETCH (BODY[] {1000}\r\n"[..], &[b'm'; 100]].concat()),
        Step::Stall(Duration::from_millis(200)),
        Step::Close,
    ]);
    let mut mid_idle = greet_and_login();
    mid_idle.extend([
        Step::Expect("IDLE"),
        Step::send("+ idling\r\n"),
        Step::Stall(Duration::from_millis(200)),
        Step::Close,
    ]);
    let mut after_plus = greet_and_login();
    after_plus.extend([Step::Expect("APPEND"), Step::send("+ Ready for literal data\r\n"), Step::Close]);
    let mut between = greet_and_login();
    between.extend([Step::Expect("NOOP"), Step::Expect("NOOP"), Step::send("n1 OK NOOP completed\r\n"), Step::Close]);
    let fakes = [mid_literal, mid_idle, after_plus, between].map(FakeProvider::start);
    let logins = ["literal@example.org", "idle@example.org", "plus@example.org", "between@example.org"];
    let accounts: Vec<_> = logins.iter().zip(&fakes).map(|(l, f)| (*l, f.url(), None)).collect();
    let proxy = proxy_with(&dovecot, &accounts).start();
    let mut other = bystander(&proxy);

    // Mid-literal: a BYE inside the literal would become message content, so the client sees
    // the literal cut short by the close, and never a made-up end of it.
    let mut c = raw_login(&proxy, "literal@example.org");
    c.get_mut().write_all(b"f1 FETCH 1 BODY[]\r\n").unwrap();
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, "* 1 FETCH (BODY[] {1000}\r\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, vec![b'm'; 100]);
    proxy.wait_for_log("the provider closed the connection", Duration::from_secs(5));
    other.expect_ok("b1 NOOP");

    // Mid-IDLE.
    let mut c = proxy.connect();
    c.login("idle@example.org", "secret");
    c.send_raw(b"i1 IDLE\r\n");
    assert_eq!(c.read_line(), "+ idling\r\n");
    assert_eq!(c.read_line(), "* BYE [UNAVAILABLE] The provider closed the connection\r\n");
    c.expect_eof();
    other.expect_ok("b2 NOOP");

    // Right after the provider's "+" for a literal.
    let mut c = proxy.connect();
    c.login("plus@example.org", "secret");
    c.send_raw(b"p1 APPEND INBOX {10}\r\n");
    assert_eq!(c.read_line(), "+ Ready for literal data\r\n");
    assert_eq!(c.read_line(), "* BYE [UNAVAILABLE] The provider closed the connection\r\n");
    c.expect_eof();
    other.expect_ok("b3 NOOP");

    // Between two tagged responses of pipelined commands.
    let mut c = proxy.connect();
    c.login("between@example.org", "secret");
    c.send_raw(b"n1 NOOP\r\nn2 NOOP\r\n");
    assert_eq!(c.read_line(), "n1 OK NOOP completed\r\n");
    assert_eq!(c.read_line(), "* BYE [UNAVAILABLE] The provider closed the connection\r\n");
    c.expect_eof();
    other.expect_ok("b4 NOOP");

    for fake in &fakes {
        fake.wait_for_event("closed by the script", Duration::from_secs(5));
    }
}

#[test]
fn a_one_gigabyte_literal_is_streamed_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let dovecot = Provider::start();
    let mut script = greet_and_login();
    script.extend([Step::Expect("FETCH"), Step::HugeLiteral(GIB), Step::Reply("OK Fetch completed")]);
    let fake = FakeProvider::start(script);
    let proxy = proxy_with(&dovecot, &[("big@example.org", fake.url(), None)]).log("info").start();
    let mut other = bystander(&proxy);

    // A slow reader: the proxy must hold the provider back instead of buffering for the client.
    let mut c = raw_login(&proxy, "big@example.org");
    c.get_mut().write_all(b"f1 FETCH 1 BODY[]\r\n").unwrap();
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    assert_eq!(line, format!("* 1 FETCH (BODY[] {{{GIB}}}\r\n"));
    let mut chunk = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    let mut peak = 0;
    while read < 48 << 20 {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0 && chunk[..n].iter().all(|&b| b == b'x'));
        read += n as u64;
        if read % (4 << 20) < n as u64 {
            peak = peak.max(rss(proxy.pid()));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let ahead = fake.literal_sent() - read;
    // Socket buffers on both legs hold some; the proxy itself holds a read chunk or two.
    assert!(ahead < 32 << 20, "the provider got {ahead} bytes ahead of a slow client");
    assert!(peak < 64 << 20, "proxy RSS {peak} bytes while relaying a 1 GB literal");

    // The client drops mid-literal: the provider connection is closed, nothing else happens.
    drop(c);
    let gone = fake.wait_for_event("proxy gone after", Duration::from_secs(10));
    assert!(fake.literal_sent() < GIB, "{gone}");
    other.expect_ok("b1 NOOP");
    assert!(rss(proxy.pid()) < 64 << 20);
}

#[test]
fn malformed_responses_get_a_reason_or_are_relayed_in_bounded_memory() {
    let dovecot = Provider::start();
    let garbage_greeting = vec![Step::Send(b"\x00\xff\xfe garbage \x07\r\n".to_vec())];
    let long_greeting = vec![Step::Send([&b"* OK "[..], &vec![b'g'; 1 << 20], b"\r\n"].concat())];
    let mut garbage_login = greet_and_login()[..2].to_vec();
    garbage_login.extend([Step::Send(b"\x01\x02 what is this\r\n".to_vec()), Step::Close]);
    // After login the relay is byte-exact and does not judge responses: garbage and an overlong
    // line (10 MB, no literal) reach the client as they are, streamed, and the session goes on.
    let mut relayed = greet_and_login();
    relayed.extend([
        Step::Expect("NOOP"),
        Step::Send(b"* \x00\xff garbage\r\n".to_vec()),
        Step::Send([&b"* OK "[..], &vec![b'y'; 10 << 20], b"\r\n"].concat()),
        Step::Reply("OK NOOP completed"),
        Step::Expect("NOOP"),
        Step::Reply("OK NOOP completed"),
    ]);
    let fakes = [garbage_greeting, long_greeting, garbage_login, relayed].map(FakeProvider::start);
    let logins = ["garbage@example.org", "long@example.org", "badlogin@example.org", "relay@example.org"];
    let accounts: Vec<_> = logins.iter().zip(&fakes).map(|(l, f)| (*l, f.url(), None)).collect();
    let proxy = proxy_with(&dovecot, &accounts).start();
    let mut other = bystander(&proxy);

    let mut c = proxy.connect();
    let no = c.command("g1 LOGIN garbage@example.org secret");
    let prefix = format!("g1 NO [UNAVAILABLE] 127.0.0.1:{} sent no usable greeting: ", fakes[0].port);
    assert!(last(&no).starts_with(&prefix), "{no:?}");
    let no = c.command("g2 LOGIN long@example.org secret");
    assert_eq!(last(&no), format!("g2 NO [UNAVAILABLE] 127.0.0.1:{} sent a malformed response\r\n", fakes[1].port));
    let no = c.command("g3 LOGIN badlogin@example.org secret");
    assert_eq!(last(&no), format!("g3 NO [UNAVAILABLE] 127.0.0.1:{} closed the connection\r\n", fakes[2].port));
    c.expect_ok("g4 NOOP");

    let mut c = proxy.connect();
    c.login("relay@example.org", "secret");
    let lines = c.command("r1 NOOP");
    assert_eq!(lines.len(), 3, "{}", lines.iter().map(|l| &l[..l.len().min(80)]).collect::<String>());
    assert_eq!(lines[0], String::from_utf8_lossy(b"* \x00\xff garbage\r\n"));
    assert_eq!(lines[1].len(), 5 + (10 << 20) + 2);
    assert_eq!(lines[2], "r1 OK NOOP completed\r\n");
    c.expect_ok("r2 NOOP");
    assert!(rss(proxy.pid()) < 64 << 20);
    other.expect_ok("b1 NOOP");
}

#[test]
fn broken_provider_tls_gets_no_with_the_reason() {
    let dovecot = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let other_name = TestPki::new(dir.path(), &["imap.other.example"]);
    let right_name = TestPki::new(dir.path(), &["localhost"]);
    let mut tls_ok = vec![Step::Tls(right_name.server.clone())];
    tls_ok.extend(greet_and_login());
    let fakes = [
        vec![Step::Tls(other_name.server.clone())],
        tls_ok,
        // Plain IMAP where TLS was expected.
        greet_and_login(),
        // Closes before the handshake.
        vec![Step::Close],
    ]
    .map(FakeProvider::start);
    let url = |i: usize, host: &str| format!("imaps://{host}:{}", fakes[i].port);
    let proxy = proxy_with(
        &dovecot,
        &[
            ("wrongname@example.org", url(0, "localhost"), Some(&other_name.ca_file)),
            ("tlsok@example.org", url(1, "localhost"), Some(&right_name.ca_file)),
            ("plain@example.org", url(2, "127.0.0.1"), None),
            ("closes@example.org", url(3, "127.0.0.1"), None),
        ],
    )
    .start();
    let mut other = bystander(&proxy);
    let mut c = proxy.connect();
    let no = c.command("t1 LOGIN wrongname@example.org secret");
    assert_eq!(
        last(&no),
        format!(
            "t1 NO [UNAVAILABLE] TLS with localhost:{} failed: certificate is for another host name\r\n",
            fakes[0].port
        )
    );
    // The same fake with a certificate for the right name: the failure above was the name.
    c.login("tlsok@example.org", "secret");
    let mut c = proxy.connect();
    let no = c.command("t2 LOGIN plain@example.org secret");
    assert!(last(&no).starts_with(&format!("t2 NO [UNAVAILABLE] TLS with 127.0.0.1:{} failed: ", fakes[2].port)));
    assert!(last(&no).contains("does not speak TLS on this port"), "{no:?}");
    let no = c.command("t3 LOGIN closes@example.org secret");
    assert!(last(&no).contains("closed the connection during the handshake"), "{no:?}");
    c.expect_ok("t4 NOOP");
    other.expect_ok("b1 NOOP");
    fakes[0].wait_for_event("TLS handshake failed", Duration::from_secs(5));
}

#[test]
fn a_stalled_provider_times_out_but_idle_and_slow_uploads_do_not() {
    let dovecot = Provider::start();
    let mut stalls = greet_and_login();
    stalls.extend([Step::Expect("NOOP"), Step::Stall(Duration::from_secs(30))]);
    let mut quiet = greet_and_login();
    quiet.extend([
        Step::Expect("IDLE"),
        Step::send("+ idling\r\n"),
        Step::Stall(Duration::from_secs(4)),
        Step::send("* 1 EXISTS\r\n"),
        Step::Expect("DONE"),
        Step::send("i1 OK Idle completed\r\n"),
        // A literal sent slowly: the provider is silent, but the client is the one still talking.
        Step::Expect("APPEND"),
        Step::Expect(""),
        Step::Expect(""),
        Step::Expect(""),
        Step::send("a1 OK Append completed\r\n"),
        Step::Expect("NOOP"),
        Step::Reply("OK NOOP completed"),
    ]);
    let mut stalls_after_done = greet_and_login();
    stalls_after_done.extend([
        Step::Expect("IDLE"),
        Step::send("+ idling\r\n"),
        Step::Expect("DONE"),
        Step::Stall(Duration::from_secs(30)),
    ]);
    let fakes = [stalls, quiet, stalls_after_done].map(FakeProvider::start);
    let accounts = [
        ("stall@example.org", fakes[0].url(), None),
        ("quiet@example.org", fakes[1].url(), None),
        ("done@example.org", fakes[2].url(), None),
    ];
    let proxy = proxy_with(&dovecot, &accounts).extra("[limits]\nprovider_timeout_secs = 2").start();
    let mut other = bystander(&proxy);

    let mut c = proxy.connect();
    c.login("stall@example.org", "secret");
    // Silence while nothing is asked is fine.
    std::thread::sleep(Duration::from_secs(3));
    c.send_raw(b"s1 NOOP\r\n");
    let started = std::time::Instant::now();
    assert_eq!(c.read_line(), "* BYE [UNAVAILABLE] The provider did not answer for 2 seconds; timed out\r\n");
    assert!(started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(5));
    c.expect_eof();
    proxy.wait_for_log("the provider timed out", Duration::from_secs(5));
    other.expect_ok("b1 NOOP");

    let mut c = proxy.connect();
    c.login("quiet@example.org", "secret");
    c.send_raw(b"i1 IDLE\r\n");
    assert_eq!(c.read_line(), "+ idling\r\n");
    c.set_timeout(Duration::from_secs(10));
    assert_eq!(c.read_line(), "* 1 EXISTS\r\n");
    c.send_raw(b"DONE\r\n");
    assert_eq!(c.read_line(), "i1 OK Idle completed\r\n");
    c.send_raw(b"a1 APPEND INBOX {14+}\r\nline1\r\n");
    std::thread::sleep(Duration::from_millis(1500));
    c.send_raw(b"line2\r\n");
    std::thread::sleep(Duration::from_millis(1500));
    c.send_raw(b"\r\n");
    assert_eq!(c.read_line(), "a1 OK Append completed\r\n");
    c.expect_ok("n1 NOOP");
    other.expect_ok("b2 NOOP");

    // An IDLE may be silent for long; once the client says DONE, the provider owes the answer.
    let mut c = proxy.connect();
    c.login("done@example.org", "secret");
    c.send_raw(b"i2 IDLE\r\n");
    assert_eq!(c.read_line(), "+ idling\r\n");
    std::thread::sleep(Duration::from_secs(3));
    c.send_raw(b"DONE\r\n");
    let started = std::time::Instant::now();
    assert_eq!(c.read_line(), "* BYE [UNAVAILABLE] The provider did not answer for 2 seconds; timed out\r\n");
    assert!(started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(5));
    c.expect_eof();
    other.expect_ok("b3 NOOP");
}

#[test]
fn sigterm_mid_fetch_ends_the_session_with_a_log_line_before_the_daemon_exits() {
    const GIB: u64 = 1 << 30;
    let dovecot = Provider::start();
    let mut script = greet_and_login();
    script.extend([Step::Expect("FETCH"), Step::HugeLiteral(GIB), Step::Reply("OK Fetch completed")]);
    let fake = FakeProvider::start(script);
    let mut proxy = proxy_with(&dovecot, &[("big@example.org", fake.url(), None)]).log("info").start();
    // A client that asks for a huge message and reads none of it: the response cannot end.
    let mut c = raw_login(&proxy, "big@example.org");
    c.get_mut().write_all(b"f1 FETCH 1 BODY[]\r\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.literal_sent() < 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "the literal never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    let status = proxy.stop().expect("it was running");
    assert!(status.success(), "{status:?}:\n{}", proxy.log());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    let log = proxy.log();
    let ended = log.lines().find(|l| l.contains("session ended") && l.contains("big@example.org"));
    let ended = ended.unwrap_or_else(|| panic!("no 'session ended' line for the FETCH:\n{log}"));
    assert!(ended.contains("shutdown") && ended.contains("mid-response"), "{ended}");
    assert!(log.contains("all sessions closed"), "{log}");
}
