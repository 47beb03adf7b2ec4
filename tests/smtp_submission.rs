//! SMTP submission through the proxy to a real Dovecot submission server: delivery, AUTH,
//! no open relay, pipelining, SIZE, 8-bit bodies, and what malformed input gets.

mod support;

use std::time::Duration;

use support::provider::Provider;
use support::proxy::Proxy;
use support::smtp_client::{SmtpClient, data_block, wait_for_inbox};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";

/// A provider and a proxy relaying to its submission port (plain; it is on loopback).
fn setup() -> (Provider, Proxy) {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .start();
    assert!(proxy.smtp_port != 0 && proxy.smtps_port != 0, "SMTP listeners:\n{}", proxy.log());
    (provider, proxy)
}

fn has(messages: &[Vec<u8>], needle: &[u8]) -> bool {
    messages.iter().any(|m| m.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn delivered_to_the_recipients_inbox_over_tls_both_ways() {
    let provider = Provider::start();
    // To the provider's implicit-TLS port, trusting its self-signed certificate (an account
    // routes the domain there, since the harness writes [upstream] itself).
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .extra(&format!(
            "[[account]]\ndomain = \"example.org\"\nsmtp = \"smtps://localhost:{}\"\nca_file = {:?}\n",
            provider.smtps_port,
            provider.ca_cert.display().to_string()
        ))
        .start();
    let mut c = proxy.connect_smtps();
    assert!(c.greeting.code == 220, "{:?}", c.greeting);
    c.login(ALICE, "secret");
    let message = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: over TLS\r\nMessage-ID: <tls-1@example.org>\r\n\r\nHello Bob.\r\n";
    let reply = c.send_message(ALICE, &[BOB], message);
    assert_eq!(reply.code, 250, "{}", c.transcript());
    assert!(reply.text().contains("queued as"), "{reply:?}");
    c.expect("QUIT", 221);
    let inbox = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let delivered = support::smtp_client::without_autocrypt(&inbox[0]);
    assert!(delivered.ends_with(message), "delivered bytes differ:\n{}", String::from_utf8_lossy(&inbox[0]));
    let log = proxy.wait_for_log("relayed: delivered to 1", Duration::from_secs(5));
    assert!(!log.contains("AHNlY3JldA") && !log.contains("\0secret"), "no AUTH payload in the log");

    // And through STARTTLS on the plain listener.
    let mut c = SmtpClient::connect(proxy.smtp_port).starttls(&proxy.ca_path());
    c.login(ALICE, "secret");
    let reply = c.send_message(ALICE, &[BOB], b"Subject: starttls\r\n\r\nagain\r\n");
    assert_eq!(reply.code, 250, "{}", c.transcript());
    wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| m.len() == 2);
}

#[test]
fn auth_good_and_bad_and_only_after_starttls_when_required() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect_smtp();
    let ehlo = c.ehlo();
    assert!(ehlo.has_line("AUTH PLAIN LOGIN") && ehlo.has_line("STARTTLS"), "{ehlo:?}");
    let bad = c.auth_plain(ALICE, "wrong");
    assert_eq!((bad.code, bad.text().starts_with("5.7.8")), (535, true), "{bad:?}");
    // AUTH LOGIN, step by step.
    assert_eq!(c.command("AUTH LOGIN").code, 334);
    assert_eq!(c.command("Ym9iQGV4YW1wbGUub3Jn").code, 334);
    let ok = c.command("c2VjcmV0");
    assert_eq!(ok.code, 235, "{}", c.transcript());
    assert_eq!(c.auth_plain(BOB, "secret").code, 503, "a second AUTH");

    // A listener that requires TLS first does not offer AUTH in the clear.
    let provider = Provider::start();
    let strict = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .listen("plaintext_auth = false")
        .start();
    let mut c = strict.connect_smtp();
    let ehlo = c.ehlo();
    assert!(!ehlo.text().contains("AUTH") && ehlo.has_line("STARTTLS"), "{ehlo:?}");
    assert_eq!(c.auth_plain(ALICE, "secret").code, 538);
    assert_eq!(c.command(&format!("MAIL FROM:<{ALICE}>")).code, 530);
    let mut c = c.starttls(&strict.ca_path());
    let ehlo = c.ehlo();
    assert!(ehlo.has_line("AUTH PLAIN LOGIN") && !ehlo.has_line("STARTTLS"), "{ehlo:?}");
    assert_eq!(c.auth_plain(ALICE, "secret").code, 235);
}

#[test]
fn mail_before_auth_is_refused() {
    let (provider, proxy) = setup();
    let mut c = proxy.connect_smtp();
    c.ehlo();
    let reply = c.command(&format!("MAIL FROM:<{ALICE}>"));
    assert_eq!(reply.code, 530, "{reply:?}");
    assert!(reply.text().starts_with("5.7.0"), "{reply:?}");
    assert_eq!(c.command(&format!("RCPT TO:<{BOB}>")).code, 503);
    assert_eq!(c.command("DATA").code, 503);
    c.expect("QUIT", 221);
    std::thread::sleep(Duration::from_millis(300));
    assert!(support::smtp_client::inbox(provider.imap_port, BOB, "secret").is_empty());
}

#[test]
fn pipelined_transaction() {
    let (provider, proxy) = setup();
    let mut c = proxy.connect_smtp();
    let ehlo = c.ehlo();
    assert!(ehlo.has_line("PIPELINING") && ehlo.has_line("ENHANCEDSTATUSCODES"), "{ehlo:?}");
    assert_eq!(c.auth_plain(ALICE, "secret").code, 235);
    // Everything up to DATA in one write (RFC 2920), then the body, then two more commands.
    c.send_raw(
        format!("MAIL FROM:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\nRCPT TO:<{CAROL}>\r\nRCPT TO:<bad address>\r\nDATA\r\n")
            .as_bytes(),
    );
    let codes: Vec<u16> = (0..5).map(|_| c.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 501, 354], "{}", c.transcript());
    let mut rest = data_block(b"Subject: pipelined\r\n\r\n.leading dot\r\n");
    rest.extend_from_slice(b"NOOP\r\nQUIT\r\n");
    c.send_raw(&rest);
    let codes: Vec<u16> = (0..3).map(|_| c.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 221], "{}", c.transcript());
    for user in [BOB, CAROL] {
        let inbox = wait_for_inbox(provider.imap_port, user, "secret", Duration::from_secs(20), |m| !m.is_empty());
        assert!(inbox[0].ends_with(b"Subject: pipelined\r\n\r\n.leading dot\r\n"), "{user}");
    }
}

#[test]
fn size_over_the_providers_limit_is_refused_at_mail() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    // Learnt from the provider's EHLO: `SIZE 52428800`.
    let ehlo = c.ehlo();
    assert!(ehlo.has_line("SIZE 52428800"), "{ehlo:?}");
    let reply = c.command(&format!("MAIL FROM:<{ALICE}> SIZE=52428801"));
    assert_eq!(reply.code, 552, "{reply:?}");
    assert!(reply.text().starts_with("5.3.4"), "{reply:?}");
    assert_eq!(c.command(&format!("MAIL FROM:<{ALICE}> SIZE=52428800")).code, 250);
}

#[test]
fn eight_bit_and_utf8_bodies_arrive_intact() {
    let (provider, proxy) = setup();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    let ehlo = c.ehlo();
    assert!(ehlo.has_line("8BITMIME"), "{ehlo:?}");
    // Dovecot's submission does not offer SMTPUTF8, so neither does the proxy.
    assert!(!ehlo.has_line("SMTPUTF8"), "{ehlo:?}");
    assert_eq!(c.command(&format!("MAIL FROM:<{ALICE}> SMTPUTF8")).code, 555);

    let mut message = "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: Grüße — 你好 🎉\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
        Ünïcödé body: ÄÖÜ ß € 日本語\r\n.a line that starts with a dot\r\n..two dots\r\n"
        .as_bytes()
        .to_vec();
    // Bytes that are not UTF-8 at all, and a long line.
    message.extend_from_slice(b"latin-1: \xe4\xf6\xfc\xff\r\n");
    message.extend(std::iter::repeat_n(b'x', 5000));
    message.extend_from_slice(b"\r\n");
    c.expect(&format!("MAIL FROM:<{ALICE}> BODY=8BITMIME"), 250);
    c.expect(&format!("RCPT TO:<{BOB}>"), 250);
    c.expect("DATA", 354);
    c.send_raw(&data_block(&message));
    assert_eq!(c.read_reply().code, 250, "{}", c.transcript());
    let inbox = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());
    let delivered = support::smtp_client::without_autocrypt(&inbox[0]);
    assert!(delivered.ends_with(&message), "bytes changed:\n{}", String::from_utf8_lossy(&inbox[0]));
}

#[test]
fn bad_input_gets_the_right_code_and_the_session_goes_on() {
    let (provider, proxy) = setup();
    let mut c = proxy.connect_smtp();
    c.login(ALICE, "secret");
    let noop = |c: &mut SmtpClient| assert_eq!(c.command("NOOP").code, 250, "{}", c.transcript());

    // A bare LF ends no SMTP line.
    c.send_raw(b"NOOP\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.text().starts_with("5.5.2")), (500, true), "{r:?}");
    noop(&mut c);
    // An overlong command line (RFC 5321 4.5.3.1.10: "500 Line too long").
    c.send_raw(&[vec![b'A'; 100_000], b"\r\n".to_vec()].concat());
    assert_eq!(c.read_reply().code, 500);
    noop(&mut c);
    // Unknown command.
    let r = c.command("FROBNICATE now");
    assert_eq!((r.code, r.text().starts_with("5.5.1")), (500, true), "{r:?}");
    // RCPT without MAIL, DATA without RCPT.
    assert_eq!(c.command(&format!("RCPT TO:<{BOB}>")).code, 503);
    c.expect(&format!("MAIL FROM:<{ALICE}>"), 250);
    assert_eq!(c.command("DATA").code, 554);
    c.expect("RSET", 250);
    // A 10 MB header line: read to the end, refused, nothing delivered.
    c.expect(&format!("MAIL FROM:<{ALICE}>"), 250);
    c.expect(&format!("RCPT TO:<{BOB}>"), 250);
    c.expect("DATA", 354);
    let mut huge = b"Subject: huge\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'h', 10 * 1024 * 1024));
    huge.extend_from_slice(b"\r\n\r\nbody\r\n");
    c.send_raw(&data_block(&huge));
    let r = c.read_reply();
    assert_eq!((r.code, r.text().starts_with("5.3.4")), (552, true), "{r:?}");
    noop(&mut c);
    // Bare LF inside a message: the whole message is refused.
    c.expect(&format!("MAIL FROM:<{ALICE}>"), 250);
    c.expect(&format!("RCPT TO:<{BOB}>"), 250);
    c.expect("DATA", 354);
    c.send_raw(b"Subject: bare\n\nbody\n.\nmore\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.text().starts_with("5.6.0")), (550, true), "{r:?}");
    // After all that, a good message still goes through.
    let r = c.send_message(ALICE, &[BOB], b"Subject: still fine\r\n\r\nok\r\n");
    assert_eq!(r.code, 250, "{}", c.transcript());
    c.expect("QUIT", 221);
    let inbox = wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let inbox = if inbox.len() == 1 { support::smtp_client::inbox(provider.imap_port, BOB, "secret") } else { inbox };
    assert_eq!(inbox.len(), 1, "only the good message arrives");
    assert!(has(&inbox, b"Subject: still fine"));
}

#[test]
fn shutdown_says_421_to_an_idle_client_and_exits_cleanly() {
    // (Three failed logins closing the connection is a unit test: Dovecot delays each failure
    // by seconds.)
    let (_provider, mut proxy) = setup();
    let mut idle = proxy.connect_smtp();
    idle.login(ALICE, "secret");
    let status = proxy.stop().expect("was running");
    assert!(status.success(), "{status:?}");
    let r = idle.read_reply();
    assert!(r.code == 421 && r.text().contains("shutting down"), "{r:?}");
    idle.expect_eof();
}

#[test]
fn a_client_in_the_wrong_tls_mode_is_told_at_once() {
    let (_provider, proxy) = setup();
    // STARTTLS (or no security) set for the implicit-TLS port: the client waits for a greeting.
    let (line, took) = support::first_line(proxy.smtps_port, b"");
    assert!(line.starts_with("554 5.7.0 ") && line.contains("SSL/TLS"), "{line:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // A client that speaks first gets the answer at once.
    let (line, took) = support::first_line(proxy.smtps_port, b"EHLO client.example\r\n");
    assert!(line.starts_with("554 5.7.0 ") && took < Duration::from_secs(1), "{line:?} after {took:?}");
    proxy.wait_for_log("on the implicit-TLS SMTP port", Duration::from_secs(5));

    // SSL/TLS set for the STARTTLS port: the client's hello is recognised and the log says so.
    let tcp = std::net::TcpStream::connect(("127.0.0.1", proxy.smtp_port)).unwrap();
    let tls = std::panic::catch_unwind(|| support::proxy::tls_client(tcp, &proxy.ca_path(), "localhost"));
    assert!(tls.is_err(), "no TLS on the plain port");
    let log = proxy.wait_for_log("client started TLS on the plain SMTP port", Duration::from_secs(5));
    assert!(log.contains("set the client to STARTTLS here, or to SSL/TLS on the smtps port"), "{log}");
}
