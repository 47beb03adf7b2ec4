//! `[listen] proxy_protocol = true` (issue 21, part 1): coi-proxy behind a real HAProxy that
//! sends PROXY v2 headers (health checks with LOCAL ones) in front of a real Dovecot, and by
//! hand-written v1/v2 headers where HAProxy cannot make the case (two client addresses,
//! fragments, garbage, silence).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::connect_from;
use support::haproxy::{Backend, Haproxy, parse_stat};
use support::imap_client::ImapClient;
use support::provider::{Provider, ProviderOptions};
use support::proxy::{Proxy, tls_client};
use support::smtp_client::{SmtpClient, wait_for_inbox};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// A proxy with `[listen] proxy_protocol = true` in front of `provider` (IMAP and submission).
fn proxied(provider: &Provider, extra: &str) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .listen("proxy_protocol = true")
        .extra(extra)
        .start()
}

/// A PROXY v2 header written byte by byte from the spec (not with the crate's encoder): PROXY,
/// TCP over IPv4, `source` to 127.0.0.1:`port`.
fn v2_header(source: [u8; 4], source_port: u16, port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0x00, 12]);
    h.extend(source);
    h.extend([127, 0, 0, 1]);
    h.extend(source_port.to_be_bytes());
    h.extend(port.to_be_bytes());
    h
}

/// A connection to the proxy's `port` that first sends `header`.
fn connect_with(port: u16, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(header).unwrap();
    tcp
}

/// Panics unless the server closes `tcp` without sending a byte.
fn closed_without_a_word(mut tcp: TcpStream, what: &str) {
    let mut got = Vec::new();
    match tcp.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "{what}: got {:?} instead of a close", String::from_utf8_lossy(&got)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

/// The body of `GET path` on the metrics listener.
fn http_get(port: u16, path: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(response)
}

/// Every log line of the session whose client is `client` (`client=` in its span).
fn lines_of<'a>(log: &'a str, client: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(&format!("client={client}"))).collect()
}

/// Waits until a log line of the session whose client is `client` contains `needle` (the log
/// is written after the answer the test has read); panics with the log otherwise.
fn wait_for_session_line(proxy: &Proxy, client: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = proxy.log();
        if lines_of(&log, client).iter().any(|l| l.contains(needle)) {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} for client={client}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Through HAProxy (send-proxy-v2, health checks) to coi-proxy to Dovecot: IMAP login and
/// SELECT, mail submitted over SMTP and delivered, IMAP over TLS end to end (HAProxy only
/// passes the bytes); the sessions carry the client's address from the header (the test
/// connects from 127.0.0.2, HAProxy from 127.0.0.1), and the LOCAL-headed health checks keep
/// every server UP without one refused connection.
#[test]
fn imap_smtp_and_tls_through_haproxy_with_the_clients_address() {
    let provider = Provider::start_with(ProviderOptions { trusted_proxy: true, ..Default::default() });
    let proxy = proxied(&provider, "");
    let backend = Backend::new("node-a", proxy.imap_port, proxy.smtp_port).with_imaps(proxy.imaps_port);
    let haproxy = Haproxy::start_with(&[backend]);
    for be in ["be_imap", "be_smtp", "be_imaps"] {
        haproxy.wait_up(be, "node-a", Duration::from_secs(20));
    }

    let mut imap = ImapClient::from_stream(connect_from("127.0.0.2", haproxy.imap_port));
    assert!(imap.greeting.starts_with("* OK"), "{}", imap.greeting);
    imap.login(ALICE, "secret");
    imap.expect_ok("s1 SELECT INBOX");
    let imap_client_port = {
        let log = proxy.wait_for_log("client=127.0.0.2:", Duration::from_secs(5));
        let line = log
            .lines()
            .find(|l| l.contains("client=127.0.0.2:") && l.contains("logged in"))
            .unwrap_or_else(|| panic!("no login logged with the header's address:\n{log}"));
        line.split("client=127.0.0.2:").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().to_string()
    };
    assert!(!imap_client_port.is_empty());

    let mut smtp = SmtpClient::from_stream(connect_from("127.0.0.2", haproxy.smtp_port));
    assert_eq!(smtp.greeting.code, 220, "{:?}", smtp.greeting);
    smtp.login(ALICE, "secret");
    let message = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: via HAProxy\r\nMessage-ID: <haproxy-1@example.org>\r\n\r\nThrough the balancer.\r\n";
    let reply = smtp.send_message(ALICE, &[BOB], message);
    assert_eq!(reply.code, 250, "{}", smtp.transcript());
    smtp.expect("QUIT", 221);
    let inbox = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(30), |m| {
        m.iter().any(|m| m.windows(9).any(|w| w == b"via HAPro"))
    });
    assert!(!inbox.is_empty());

    let tcp = connect_from("127.0.0.2", haproxy.imaps_port);
    let mut tls = ImapClient::from_stream(tls_client(tcp, &proxy.ca_path(), "localhost"));
    assert!(tls.greeting.starts_with("* OK"), "{}", tls.greeting);
    tls.login(BOB, "secret");
    tls.expect_ok("t1 SELECT INBOX");
    tls.expect_ok("t2 LOGOUT");
    imap.expect_ok("s2 LOGOUT");

    // IMAP, SMTP and IMAPS logins, each under the header's address.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = proxy.log();
        let logins: Vec<&str> = lines_of(&log, "127.0.0.2:").into_iter().filter(|l| l.contains("logged in")).collect();
        if logins.len() == 3 && logins.iter().any(|l| l.contains("smtp{")) {
            break;
        }
        assert!(Instant::now() < deadline, "logins under the header's address: {logins:#?}\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Dovecot trusts the proxy and was told the client's address, not HAProxy's or the proxy's.
    let provider_log = std::fs::read_to_string(&provider.log).unwrap();
    assert!(provider_log.contains("rip=127.0.0.2"), "{provider_log}");
    // Several health-check rounds have passed by now, all with LOCAL headers.
    std::thread::sleep(Duration::from_secs(2));
    for be in ["be_imap", "be_smtp", "be_imaps"] {
        let row = haproxy.stat(be, "node-a").unwrap();
        assert_eq!(row.status, "UP", "{row:?}");
        assert!(row.sessions >= 1, "{row:?}");
    }
    let log = proxy.log();
    assert!(!log.contains("without a greeting"), "a connection from HAProxy was refused:\n{log}");
    assert!(log.contains("command=Local"), "health checks come with LOCAL headers:\n{log}");
}

/// `max_sessions_per_ip` counts the address in the header: the third session of one address is
/// refused, another address's sessions are not (all of them come from 127.0.0.1, as through
/// HAProxy), and SMTP shares the budget.
#[test]
fn session_limits_count_the_headers_address() {
    let provider = Provider::start();
    let proxy = proxied(&provider, "[limits]\nmax_sessions_per_ip = 2\n");
    let a = [192, 0, 2, 1];
    let b = [198, 51, 100, 7];
    let mut first = ImapClient::from_stream(connect_with(proxy.imap_port, &v2_header(a, 1001, proxy.imap_port)));
    assert!(first.greeting.starts_with("* OK"), "{}", first.greeting);
    first.login(ALICE, "secret");
    let second = ImapClient::from_stream(connect_with(proxy.imap_port, &v2_header(a, 1002, proxy.imap_port)));
    assert!(second.greeting.starts_with("* OK"), "{}", second.greeting);
    let mut third = ImapClient::from_stream(connect_with(proxy.imap_port, &v2_header(a, 1003, proxy.imap_port)));
    assert_eq!(third.greeting, "* BYE [UNAVAILABLE] Too many connections from your address\r\n");
    third.expect_eof();
    let smtp = SmtpClient::from_stream(connect_with(proxy.smtp_port, &v2_header(a, 1004, proxy.smtp_port)));
    assert_eq!(smtp.greeting.code, 421, "{:?}", smtp.greeting);

    // Another address, from the same socket address: two sessions, both open at once.
    let mut others = Vec::new();
    for port in [2001, 2002] {
        let mut other = ImapClient::from_stream(connect_with(proxy.imap_port, &v2_header(b, port, proxy.imap_port)));
        assert!(other.greeting.starts_with("* OK"), "{}", other.greeting);
        other.login(BOB, "secret");
        others.push(other);
    }
    first.expect_ok("n1 NOOP");
    for other in &mut others {
        other.expect_ok("n2 NOOP");
    }
    wait_for_session_line(&proxy, "192.0.2.1:1001", "logged in");
    wait_for_session_line(&proxy, "192.0.2.1:1003", "Too many connections from your address");
    wait_for_session_line(&proxy, "198.51.100.7:2002", "logged in");
}

/// The failed-login books count the header's address: after five failures from one header
/// address a correct login from it is refused by the proxy, the same login from another header
/// address goes through; and Dovecot (trusting the proxy) is told the header's address.
#[test]
fn failed_logins_count_and_the_provider_hears_the_headers_address() {
    let provider = Provider::start_with(ProviderOptions { trusted_proxy: true, ..Default::default() });
    let proxy = proxied(&provider, "");
    // A connection each time (a session ends after three failures), from the same address.
    let guesser = |n: u16| {
        let header = v2_header([203, 0, 113, 50], 3330 + n, proxy.imap_port);
        ImapClient::from_stream(connect_with(proxy.imap_port, &header))
    };
    for n in 1..=5 {
        // Other accounts each time: only the address's books grow.
        let lines = guesser(n).command(&format!("f{n} LOGIN nobody{n}@example.org wrong"));
        assert!(lines.last().unwrap().starts_with(&format!("f{n} NO")), "{lines:?}");
    }
    let lines = guesser(6).command("f6 LOGIN bob@example.org secret");
    assert!(lines.last().unwrap().starts_with("f6 NO"), "the guesser's address is under back-off: {lines:?}");
    let other = v2_header([198, 51, 100, 9], 4444, proxy.imap_port);
    let mut c = ImapClient::from_stream(connect_with(proxy.imap_port, &other));
    c.login(BOB, "secret");

    wait_for_session_line(&proxy, "203.0.113.50:3336", "login refused by the proxy");
    wait_for_session_line(&proxy, "198.51.100.9:4444", "logged in");
    let provider_log = std::fs::read_to_string(&provider.log).unwrap();
    assert!(provider_log.contains("rip=203.0.113.50"), "failures under the header's address:\n{provider_log}");
    assert!(provider_log.contains("rip=198.51.100.9"), "the login under the header's address:\n{provider_log}");
}

/// No header, garbage, a TLS hello and silence: closed with no greeting, on every listener; the
/// log says why with the peer's bytes escaped and cut.
#[test]
fn connections_without_a_valid_header_are_closed_without_a_greeting() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .listen("proxy_protocol = true\nmetrics = \"127.0.0.1:0\"")
        .start();
    let ports = [
        ("imap", proxy.imap_port),
        ("imaps", proxy.imaps_port),
        ("smtp", proxy.smtp_port),
        ("smtps", proxy.smtps_port),
    ];
    for (name, port) in ports {
        closed_without_a_word(connect_with(port, b"a1 CAPABILITY\r\n"), name);
    }
    closed_without_a_word(
        connect_with(proxy.imap_port, b"\x1b[31mEHLO \x00\xffgarbage that goes on and on\r\n"),
        "garbage",
    );
    closed_without_a_word(
        connect_with(proxy.imaps_port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        "a ClientHello",
    );
    closed_without_a_word(connect_with(proxy.imap_port, b"PROXY TCP4 1.2.3.4 1.2.3.5 99999 1\r\n"), "bad v1 port");
    let mut bad_v2 = v2_header([192, 0, 2, 1], 1, proxy.imap_port);
    bad_v2[12] = 0x11;
    closed_without_a_word(connect_with(proxy.imap_port, &bad_v2), "v2 header with version 1");
    // Silence (and half a header) is closed after the header timeout.
    let started = Instant::now();
    closed_without_a_word(connect_with(proxy.imap_port, &v2_header([192, 0, 2, 1], 1, 1)[..10]), "half a header");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(20), "{waited:?}");

    let log = proxy.wait_for_log("no complete PROXY header within 5 s (10 bytes came)", Duration::from_secs(5));
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("connection closed without a greeting")).collect();
    assert_eq!(refusals.len(), 9, "{log}");
    for listener in ["imap", "imaps", "smtp", "smtps"] {
        assert!(refusals.iter().any(|l| l.contains(&format!("listener=\"{listener}\""))), "{listener}: {refusals:#?}");
    }
    // Escaped, and no more than was read to tell it is no header (15 bytes).
    assert!(log.contains(r#"began with "\x1b[31mEHLO \x00\xffgar""#), "escaped and cut:\n{log}");
    assert!(!log.contains('\u{1b}') && !log.contains("goes on"), "peer bytes raw in the log:\n{log}");
    assert!(log.contains("PROXY v1 line has a bad source port"), "{log}");
    assert!(log.contains("PROXY v2 header has version 1, not 2"), "{log}");
    assert!(!log.contains("session ended"), "no session was started:\n{log}");
    let metrics = http_get(proxy.metrics_port, "/metrics");
    for (listener, refused) in [("imap", 5), ("imaps", 2), ("smtp", 1), ("smtps", 1)] {
        let series = format!("coi_proxy_proxy_headers_refused_total{{listener=\"{listener}\"}} {refused}\n");
        assert!(metrics.contains(&series), "{series}{metrics}");
        let opened = format!("coi_proxy_sessions_total{{listener=\"{listener}\"}} 0\n");
        assert!(metrics.contains(&opened), "no session counted: {opened}{metrics}");
    }
}

/// A header split over several writes, with the first command right behind its last piece in
/// the same segment: the command is kept and answered. A v1 header works the same, and so
/// does TLS right after a header.
#[test]
fn fragmented_headers_pipelined_commands_v1_and_tls_after_the_header() {
    let provider = Provider::start();
    let proxy = proxied(&provider, "");
    let header = v2_header([192, 0, 2, 9], 4242, proxy.imap_port);
    let mut tcp = TcpStream::connect(("127.0.0.1", proxy.imap_port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for piece in [&header[..5], &header[5..13], &header[13..20]] {
        tcp.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut last = header[20..].to_vec();
    last.extend(b"a1 CAPABILITY\r\na2 LOGIN alice@example.org secret\r\n");
    tcp.write_all(&last).unwrap();
    let mut c = ImapClient::from_stream(tcp);
    assert!(c.greeting.starts_with("* OK"), "{}", c.greeting);
    let caps = c.read_line();
    assert!(caps.starts_with("* CAPABILITY IMAP4rev1"), "{caps}");
    assert!(c.read_line().starts_with("a1 OK"), "{}", c.transcript());
    let mut login = c.read_line();
    while login.starts_with('*') {
        login = c.read_line();
    }
    assert!(login.starts_with("a2 OK"), "{}", c.transcript());
    c.expect_ok("a3 SELECT INBOX");

    let v1 = format!("PROXY TCP4 203.0.113.77 127.0.0.1 5555 {}\r\n", proxy.imap_port);
    let mut c = ImapClient::from_stream(connect_with(proxy.imap_port, v1.as_bytes()));
    c.login(BOB, "secret");
    let v6 = format!("PROXY TCP6 2001:db8::77 ::1 6666 {}\r\n", proxy.smtp_port);
    let mut smtp = SmtpClient::from_stream(connect_with(proxy.smtp_port, v6.as_bytes()));
    assert_eq!(smtp.greeting.code, 220);
    smtp.expect("QUIT", 221);

    let tcp = connect_with(proxy.smtps_port, &v2_header([192, 0, 2, 10], 4343, proxy.smtps_port));
    let mut smtps = SmtpClient::from_stream(tls_client(tcp, &proxy.ca_path(), "localhost"));
    assert_eq!(smtps.greeting.code, 220, "{:?}", smtps.greeting);
    smtps.login(ALICE, "secret");
    smtps.expect("QUIT", 221);

    wait_for_session_line(&proxy, "192.0.2.9:4242", "logged in");
    wait_for_session_line(&proxy, "203.0.113.77:5555", "logged in");
    wait_for_session_line(&proxy, "[2001:db8::77]:6666", "connected");
    wait_for_session_line(&proxy, "192.0.2.10:4343", "logged in");
}

/// Off by default; a reload (SIGHUP) turns it on for the connections accepted after it.
#[test]
fn a_reload_turns_it_on_for_new_connections() {
    let provider = Provider::start();
    let proxy = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", provider.imap_port)).start();
    let mut before = proxy.connect();
    assert!(before.greeting.starts_with("* OK"), "off by default: {}", before.greeting);
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    let config = config.replace("[listen]\n", "[listen]\nproxy_protocol = true\n");
    std::fs::write(&proxy.config_path, config).unwrap();
    support::proxy::signal(proxy.pid(), 1);
    proxy.wait_for_log("proxy_protocol on (for connections accepted from now on)", Duration::from_secs(10));
    closed_without_a_word(connect_with(proxy.imap_port, b"a1 CAPABILITY\r\n"), "no header after the reload");
    let mut c = ImapClient::from_stream(connect_with(proxy.imap_port, &v2_header([192, 0, 2, 3], 7, 1)));
    c.login(ALICE, "secret");
    // The session accepted before goes on as it was.
    before.login(BOB, "secret");
}

/// The harness itself: the generated config passes `haproxy -c`, HAProxy runs, and `show stat`
/// lists one row per server and backend; nothing listens on the servers' ports, so their
/// checks fail and they go DOWN.
#[test]
fn haproxy_harness_starts_and_reports_servers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let haproxy = Haproxy::start_with(&[
        Backend::new("node-a", closed, closed),
        Backend::new("node-b", closed, closed).with_imaps(closed),
    ]);
    assert_ne!(haproxy.imaps_port, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = haproxy.stats();
        let rows: Vec<_> = stats.iter().map(|s| (s.backend.as_str(), s.server.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("be_imap", "node-a"),
                ("be_imap", "node-b"),
                ("be_smtp", "node-a"),
                ("be_smtp", "node-b"),
                ("be_imaps", "node-b")
            ],
            "{stats:?}"
        );
        if stats.iter().all(|s| s.status == "DOWN" && s.check_status == "L4CON") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "checks did not fail on a closed port: {stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn show_stat_csv_is_read_by_column_name() {
    let text = "# pxname,svname,qcur,status,stot,check_status\n\
                fe_imap,FRONTEND,,OPEN,3,\n\
                be_imap,node-a,0,UP,7,L7OK\n\
                be_imap,BACKEND,0,UP,7,\n";
    let rows = parse_stat(text);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].server.as_str(), rows[0].status.as_str(), rows[0].sessions), ("node-a", "UP", 7));
    assert_eq!(rows[0].check_status, "L7OK");
}
