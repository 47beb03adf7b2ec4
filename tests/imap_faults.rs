//! Bad input and failures: each gets a clear answer, and the daemon and other sessions go on.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use support::imap_client::ImapClient;
use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// A logged-in bystander session, to show that one session's trouble does not touch another.
fn bystander(proxy: &Proxy) -> ImapClient {
    let mut c = proxy.connect();
    c.login("bob@example.org", "secret");
    c.expect_ok("b0 SELECT INBOX");
    c
}

#[test]
fn overlong_lines_get_bad_and_the_session_goes_on() {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    let mut other = bystander(&proxy);
    // Before login.
    let mut c = proxy.connect();
    let long = "x".repeat(70 * 1024);
    let bad = c.command(&format!("o1 LOGIN {long} secret"));
    assert!(last(&bad).starts_with("o1 BAD"), "{bad:?}");
    // After login: the line never reaches the provider.
    c.login("alice@example.org", "secret");
    let bad = c.command(&format!("o2 SEARCH SUBJECT \"{long}\""));
    assert_eq!(bad, vec!["o2 BAD Command line too long\r\n".to_string()]);
    c.expect_ok("o3 NOOP");
    // An overlong line that also announces a literal: refused, the literal never sent.
    c.send_raw(format!("o4 APPEND INBOX \"{long}\" {{10}}\r\n").as_bytes());
    assert_eq!(c.read_line(), "o4 BAD Command line too long\r\n");
    c.expect_ok("o5 NOOP");
    other.expect_ok("b1 NOOP");
}

#[test]
fn literals_over_the_limit_are_refused_without_losing_the_connection() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .extra("[limits]\nmax_literal = 1000")
        .start();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    // Synchronizing: NO [TOOBIG] instead of "+", so the client never sends the bytes.
    let no = c.command("l1 APPEND INBOX {5000}");
    assert_eq!(no.len(), 1, "{no:?}");
    assert!(no[0].starts_with("l1 NO [TOOBIG]"), "{no:?}");
    // Non-synchronizing: the bytes come anyway and are dropped.
    let mut cmd = b"l2 APPEND INBOX {5000+}\r\n".to_vec();
    cmd.extend(std::iter::repeat_n(b'a', 5000));
    cmd.extend_from_slice(b"\r\n");
    c.send_raw(&cmd);
    assert!(c.read_line().starts_with("l2 BAD [TOOBIG]"));
    c.expect_ok("l3 NOOP");
    // Within the limit it still works.
    let mut cmd = b"l4 APPEND INBOX {22+}\r\n".to_vec();
    cmd.extend_from_slice(b"Subject: ok\r\n\r\nsmall\r\n\r\n");
    c.send_raw(&cmd);
    assert!(c.read_line().starts_with("l4 OK"));
    let status = c.expect_ok("l5 STATUS INBOX (MESSAGES)");
    assert!(status[0].contains("MESSAGES 1"), "{status:?}");
}

#[test]
fn binary_garbage_gets_bad_and_the_session_goes_on() {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    let mut other = bystander(&proxy);
    let garbage: Vec<u8> =
        (0..600u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).filter(|&b| b != b'\n').collect();
    // Before login.
    let mut c = proxy.connect();
    let mut line = garbage[..200].to_vec();
    line.extend_from_slice(b"\r\n");
    c.send_raw(&line);
    assert!(c.read_line().contains("BAD"));
    c.expect_ok("g1 NOOP");
    // After login: the provider answers BAD; the proxy relays it and stays in step.
    c.login("alice@example.org", "secret");
    let mut line = b"g2 ".to_vec();
    line.extend_from_slice(&garbage[200..400]);
    line.extend_from_slice(b"\r\n");
    c.send_raw(&line);
    let reply = c.read_line();
    assert!(reply.contains("BAD"), "{reply}");
    c.expect_ok("g3 NOOP");
    other.expect_ok("b1 NOOP");
}

#[test]
fn a_client_vanishing_mid_literal_closes_its_provider_connection_only() {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    let mut other = bystander(&proxy);
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let mut cmd = b"v1 APPEND INBOX {1000000+}\r\n".to_vec();
    cmd.extend(std::iter::repeat_n(b'z', 4000));
    c.send_raw(&cmd);
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    // Dovecot logs the provider side of the session ending inside the APPEND.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&provider.log).unwrap_or_default();
        if log.lines().any(|l| l.contains("alice@example.org") && l.contains("Disconnected") && l.contains("APPEND")) {
            break;
        }
        assert!(Instant::now() < deadline, "provider connection not closed:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    other.expect_ok("b1 NOOP");
    proxy.connect().login("alice@example.org", "secret");
    let mut status = proxy.connect();
    status.login("alice@example.org", "secret");
    let s = status.expect_ok("s STATUS INBOX (MESSAGES)");
    assert!(s[0].contains("MESSAGES 0"), "a partial message must not be stored: {s:?}");
}

#[test]
fn provider_down_gives_no_unavailable_with_the_reason() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = Proxy::for_port(port);
    let mut c = proxy.connect();
    let started = Instant::now();
    let no = c.command("d1 LOGIN alice@example.org secret");
    assert_eq!(no, vec![format!("d1 NO [UNAVAILABLE] connection refused by 127.0.0.1:{port}\r\n")]);
    assert!(started.elapsed() < Duration::from_secs(5));
    c.expect_ok("d2 NOOP");
    assert!(
        proxy.log().contains(&format!("provider unavailable cause=connection refused by 127.0.0.1:{port}")),
        "{}",
        proxy.log()
    );

    // A provider that accepts but never greets: a timeout, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", silent.local_addr().unwrap().port()))
        .extra("[limits]\nconnect_timeout_secs = 1")
        .start();
    let mut c = proxy.connect();
    let no = c.command("d3 LOGIN alice@example.org secret");
    // Connected, but no greeting: the timeout says which step it was.
    assert!(last(&no).starts_with("d3 NO [UNAVAILABLE] timed out waiting for the greeting of 127.0.0.1:"), "{no:?}");
    assert!(last(&no).contains("(connected; it sent nothing)"), "{no:?}");
}

#[test]
fn provider_tls_is_verified() {
    let provider = Provider::start();
    // Implicit TLS without trusting the provider's self-signed certificate.
    let proxy = Proxy::builder().upstream(format!("imaps://127.0.0.1:{}", provider.imaps_port)).start();
    let no = proxy.connect().command("t1 LOGIN alice@example.org secret");
    assert!(last(&no).starts_with("t1 NO [UNAVAILABLE] TLS with 127.0.0.1:"), "{no:?}");
    assert!(last(&no).contains("certificate not trusted"), "{no:?}");
    // With its CA as ca_file: implicit TLS and STARTTLS both work.
    let ca = provider.ca_cert.display().to_string();
    for url in [
        format!("imaps://127.0.0.1:{}", provider.imaps_port),
        format!("imap+starttls://localhost:{}", provider.imap_port),
    ] {
        let proxy = Proxy::builder().extra(&format!("[upstream]\nimap = {url:?}\nca_file = {ca:?}\n")).start();
        let mut c = proxy.connect();
        c.login("alice@example.org", "secret");
        c.expect_ok("t2 SELECT INBOX");
    }
}

#[test]
fn tls_on_the_plain_port_gets_a_log_hint() {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    let mut tcp = TcpStream::connect(("127.0.0.1", proxy.imap_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The start of a TLS ClientHello record, as a client set to "SSL/TLS" sends it.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03]).unwrap();
    let mut seen = Vec::new();
    let _ = tcp.read_to_end(&mut seen);
    assert!(seen.starts_with(b"* OK ") && seen.ends_with(b"\r\n"), "only the greeting, then close");
    let log = proxy.wait_for_log("client started TLS on the plain IMAP port", Duration::from_secs(5));
    assert!(log.contains(&format!("port 127.0.0.1:{}", proxy.imap_port)), "{log}");
    proxy.connect().login("alice@example.org", "secret");
}

#[test]
fn no_plaintext_login_before_starttls_where_disabled() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .listen("plaintext_auth = false")
        .start();
    let mut c = proxy.connect();
    assert!(c.greeting.contains("LOGINDISABLED") && !c.greeting.contains("AUTH=PLAIN"), "{}", c.greeting);
    let no = c.command("p1 LOGIN alice@example.org secret");
    assert!(last(&no).starts_with("p1 NO [PRIVACYREQUIRED]"), "{no:?}");
    let ir = base64::engine::general_purpose::STANDARD.encode("\0alice@example.org\0secret");
    let no = c.command(&format!("p2 AUTHENTICATE PLAIN {ir}"));
    assert!(last(&no).starts_with("p2 NO [PRIVACYREQUIRED]"), "{no:?}");
    // The provider never saw a login attempt.
    let log = std::fs::read_to_string(&provider.log).unwrap_or_default();
    assert!(!log.contains("alice@example.org"), "{log}");
    // Implicit TLS works.
    proxy.connect_tls().login("alice@example.org", "secret");
}

#[test]
fn login_timeout_says_bye() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .extra("[limits]\nlogin_timeout_secs = 1")
        .start();
    let mut c = proxy.connect();
    c.set_timeout(Duration::from_secs(5));
    c.expect_ok("n NOOP");
    assert_eq!(c.read_line(), "* BYE Login timed out\r\n");
    c.expect_eof();
}

#[test]
fn sigterm_says_bye_to_every_client_and_exits_cleanly() {
    let provider = Provider::start();
    let mut proxy = Proxy::for_port(provider.imap_port);
    let mut logged_in = bystander(&proxy);
    let mut idle = proxy.connect();
    idle.login("alice@example.org", "secret");
    idle.expect_ok("i0 SELECT INBOX");
    idle.send_raw(b"i1 IDLE\r\n");
    assert!(idle.read_line().starts_with("+ "));
    let mut fresh = proxy.connect();
    let status = proxy.stop().expect("was running");
    assert!(status.success(), "{status:?}");
    assert_eq!(logged_in.read_line(), "* BYE coi-proxy is shutting down\r\n");
    logged_in.expect_eof();
    assert_eq!(idle.read_line(), "* BYE coi-proxy is shutting down\r\n");
    assert_eq!(fresh.read_line(), "* BYE coi-proxy is shutting down\r\n");
    assert!(proxy.log().contains("all sessions closed"), "{}", proxy.log());
}

#[test]
fn no_secret_reaches_a_trace_level_log() {
    let password = "Tr0ub4dor&3-pw\"x";
    let provider = Provider::start_with(ProviderOptions { password: Some(password.into()), ..Default::default() });
    let proxy = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", provider.imap_port)).log("trace").start();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let plain = b64(&format!("\0alice@example.org\0{password}"));
    // LOGIN quoted, LOGIN with literals, AUTHENTICATE PLAIN both forms, AUTHENTICATE LOGIN, a wrong one.
    proxy.connect().login("alice@example.org", password);
    let mut c = proxy.connect();
    c.send_raw(format!("a LOGIN alice@example.org {{{}}}\r\n", password.len()).as_bytes());
    assert!(c.read_line().starts_with("+"));
    c.send_raw(format!("{password}\r\n").as_bytes());
    assert!(c.read_line().starts_with("a OK"));
    assert!(last(&proxy.connect().command(&format!("b AUTHENTICATE PLAIN {plain}"))).starts_with("b OK"));
    let mut c = proxy.connect();
    c.send_raw(b"c AUTHENTICATE PLAIN\r\n");
    c.read_line();
    c.send_raw(format!("{plain}\r\n").as_bytes());
    assert!(c.read_line().starts_with("c OK"));
    let mut c = proxy.connect();
    c.send_raw(b"d AUTHENTICATE LOGIN\r\n");
    c.read_line();
    c.send_raw(format!("{}\r\n", b64("alice@example.org")).as_bytes());
    c.read_line();
    c.send_raw(format!("{}\r\n", b64(password)).as_bytes());
    assert!(c.read_line().starts_with("d OK"));
    let wrong = format!("{password}-wrong");
    assert!(
        last(&proxy.connect().command(&format!("e LOGIN alice@example.org \"{}\"", wrong.replace('"', "\\\""))))
            .starts_with("e NO")
    );
    // The same through implicit TLS (rustls logs at trace level too).
    proxy.connect_tls().login("alice@example.org", password);

    let log = proxy.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "trace logging must be on:\n{log}");
    assert!(log.contains("logged in"), "{log}");
    for secret in [password, &plain, &b64(password), "Tr0ub4dor"] {
        assert!(!log.contains(secret), "secret {secret:?} found in the log");
    }
}

#[test]
fn a_plain_client_on_the_implicit_tls_port_is_told_at_once() {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    // Set to STARTTLS or no security: the client waits for a greeting that TLS never sends.
    let (line, took) = support::first_line(proxy.imaps_port, b"");
    assert!(line.starts_with("* BYE ") && line.contains("SSL/TLS"), "{line:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let (line, took) = support::first_line(proxy.imaps_port, b"a1 CAPABILITY\r\n");
    assert!(line.starts_with("* BYE ") && took < Duration::from_secs(1), "{line:?} after {took:?}");
    let log = proxy.wait_for_log("on the implicit-TLS IMAP port", Duration::from_secs(5));
    assert!(log.contains("set the client to SSL/TLS here"), "{log}");
    // A TLS client still connects.
    proxy.connect_tls().expect_ok("t1 CAPABILITY");
}
