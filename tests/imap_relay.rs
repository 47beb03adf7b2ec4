//! The transparent gateway against a real Dovecot: login forms, routing, mailbox commands,
//! literals, pipelining, IDLE, and equivalence with a direct connection.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine;
use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

fn setup() -> (Provider, Proxy) {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    (provider, proxy)
}

#[test]
fn greeting_and_pre_login_commands_come_from_the_proxy() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect();
    assert!(c.greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "), "{}", c.greeting);
    assert!(c.greeting.contains("STARTTLS") && c.greeting.contains("AUTH=PLAIN"), "{}", c.greeting);
    let caps = c.expect_ok("a CAPABILITY");
    assert!(caps[0].starts_with("* CAPABILITY IMAP4rev1"), "{caps:?}");
    c.expect_ok("b NOOP");
    let id = c.expect_ok("c ID (\"name\" \"test\")");
    assert!(id[0].starts_with("* ID (\"name\" \"coi-proxy\""), "{id:?}");
    let sel = c.command("d SELECT INBOX");
    assert!(last(&sel).starts_with("d BAD"), "{sel:?}");
    let bye = c.command("e LOGOUT");
    assert!(bye[0].starts_with("* BYE"), "{bye:?}");
    c.expect_eof();
}

#[test]
fn login_forms_and_wrong_passwords() {
    let (_provider, proxy) = setup();
    // LOGIN, quoted and with literals (synchronizing and LITERAL+).
    let mut c = proxy.connect();
    let ok = c.login("alice@example.org", "secret");
    assert!(last(&ok).contains("[CAPABILITY IMAP4rev1"), "{ok:?}");
    assert!(!last(&ok).contains("AUTH=") && !last(&ok).contains("STARTTLS"), "{ok:?}");
    let mut c = proxy.connect();
    c.send_raw(b"a1 LOGIN {17}\r\n");
    assert!(c.read_line().starts_with("+ "));
    c.send_raw(b"alice@example.org {6+}\r\nsecret\r\n");
    assert!(c.read_line().starts_with("a1 OK [CAPABILITY"));
    let mut c = proxy.connect();
    let no = c.command("a2 LOGIN alice@example.org wrong");
    assert!(last(&no).starts_with("a2 NO [AUTHENTICATIONFAILED]"), "{no:?}");
    c.login("alice@example.org", "secret");

    // AUTHENTICATE PLAIN with SASL-IR, then as a continuation, then with a wrong password.
    let mut c = proxy.connect();
    let ok = c.command(&format!("p1 AUTHENTICATE PLAIN {}", b64("\0bob@example.org\0secret")));
    assert!(last(&ok).starts_with("p1 OK [CAPABILITY"), "{ok:?}");
    let mut c = proxy.connect();
    c.send_raw(b"p2 AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.read_line(), "+ \r\n");
    c.send_raw(format!("{}\r\n", b64("bob@example.org\0bob@example.org\0secret")).as_bytes());
    assert!(c.read_line().starts_with("p2 OK [CAPABILITY"));
    c.expect_ok("p3 SELECT INBOX");
    let mut c = proxy.connect();
    let no = c.command(&format!("p4 AUTHENTICATE PLAIN {}", b64("\0bob@example.org\0nope")));
    assert!(last(&no).starts_with("p4 NO"), "{no:?}");
    let bad = c.command("p5 AUTHENTICATE PLAIN !!!");
    assert!(last(&bad).starts_with("p5 BAD"), "{bad:?}");
    c.send_raw(b"p6 AUTHENTICATE PLAIN\r\n");
    c.read_line();
    c.send_raw(b"*\r\n");
    assert!(c.read_line().starts_with("p6 BAD"));

    // AUTHENTICATE LOGIN (Outlook's favourite).
    let mut c = proxy.connect();
    c.send_raw(b"l1 AUTHENTICATE LOGIN\r\n");
    assert_eq!(c.read_line(), "+ VXNlcm5hbWU6\r\n");
    c.send_raw(format!("{}\r\n", b64("carol@example.org")).as_bytes());
    assert_eq!(c.read_line(), "+ UGFzc3dvcmQ6\r\n");
    c.send_raw(format!("{}\r\n", b64("secret")).as_bytes());
    assert!(c.read_line().starts_with("l1 OK"));
}

#[test]
fn three_failed_logins_close_the_connection() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect();
    for i in 0..2 {
        assert!(last(&c.command(&format!("t{i} LOGIN alice@example.org bad"))).starts_with(&format!("t{i} NO")));
    }
    c.send_raw(b"t2 LOGIN alice@example.org bad\r\n");
    assert!(c.read_line().starts_with("t2 NO"));
    assert!(c.read_line().starts_with("* BYE"));
    c.expect_eof();
}

#[test]
fn logins_are_routed_to_their_provider() {
    let first = Provider::start();
    let second = Provider::start_with(support::provider::ProviderOptions {
        users: Some(vec!["dave".into()]),
        password: Some("other".into()),
        ..Default::default()
    });
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", first.imap_port))
        .extra(&format!(
            "[[account]]\nlogin = \"dave@example.org\"\nimap = \"imap://127.0.0.1:{}\"\n",
            second.imap_port
        ))
        .start();
    proxy.connect().login("alice@example.org", "secret");
    proxy.connect().login("dave@example.org", "other");
    // dave exists only on the second provider, alice only on the first.
    assert!(last(&proxy.connect().command("x LOGIN alice@example.org other")).starts_with("x NO"));
    let log = proxy.log();
    assert!(log.contains(&format!("provider=\"127.0.0.1:{}\"", second.imap_port)), "{log}");
    assert!(log.contains(&format!("provider=\"127.0.0.1:{}\"", first.imap_port)), "{log}");
}

#[test]
fn mailbox_commands_pass_through() {
    let (provider, proxy) = setup();
    for i in 1..=3 {
        provider.deliver(
            "bob@example.org",
            "alice@example.org",
            format!("Subject: m{i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
    }
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let list = c.expect_ok("a LIST \"\" \"*\"");
    assert!(list.iter().any(|l| l.contains("INBOX")) && list.iter().any(|l| l.contains("\\Trash")), "{list:?}");
    c.expect_ok("b CREATE Archive");
    let ex = c.expect_ok("c EXAMINE INBOX");
    assert!(ex.iter().any(|l| l == "* 3 EXISTS\r\n"), "{ex:?}");
    assert!(last(&ex).starts_with("c OK [READ-ONLY]"), "{ex:?}");
    c.expect_ok("d SELECT INBOX");
    let s = c.expect_ok("e SEARCH SUBJECT m2");
    assert_eq!(s[0], "* SEARCH 2\r\n");
    let st = c.expect_ok("f STORE 1 +FLAGS (\\Flagged)");
    assert!(st[0].contains("\\Flagged"), "{st:?}");
    c.expect_ok("g COPY 1 Archive");
    let mv = c.expect_ok("h MOVE 2 Archive");
    assert!(mv.iter().any(|l| l.contains("EXPUNGE")), "{mv:?}");
    let uids = c.expect_ok("i UID SEARCH ALL");
    let uid = uids[0].trim_end().rsplit(' ').next().unwrap().to_string();
    c.expect_ok(&format!("j UID MOVE {uid} Archive"));
    c.expect_ok("k SELECT Archive");
    c.expect_ok("l STORE 1:* +FLAGS (\\Deleted)");
    let ex = c.expect_ok("m EXPUNGE");
    assert_eq!(ex.iter().filter(|l| l.ends_with("EXPUNGE\r\n")).count(), 3, "{ex:?}");
    let bye = c.command("n LOGOUT");
    assert!(bye[0].starts_with("* BYE") && last(&bye).starts_with("n OK"), "{bye:?}");
    c.expect_eof();
}

/// A message of `size` bytes with varied content (all byte values in the body would be invalid
/// without BINARY; keep it 7-bit with long lines of pseudo-random text).
fn big_message(size: usize) -> Vec<u8> {
    let mut msg = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let mut x: u32 = 12345;
    while msg.len() < size - 2 {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        let c = b'!' + ((x >> 16) % 90) as u8;
        msg.push(c);
        if msg.len().is_multiple_of(998) {
            msg.extend_from_slice(b"\r\n");
        }
    }
    msg.truncate(size - 2);
    msg.extend_from_slice(b"\r\n");
    msg
}

#[test]
fn append_with_both_literal_forms_and_fetch_a_10mb_message() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    // Synchronizing literal: the provider's "+" is relayed.
    let small = b"Subject: sync\r\n\r\nhello\r\n";
    c.send_raw(format!("a1 APPEND INBOX {{{}}}\r\n", small.len()).as_bytes());
    assert!(c.read_line().starts_with("+ "));
    c.send_raw(small);
    c.send_raw(b"\r\n");
    assert!(c.read_line().starts_with("a1 OK [APPENDUID"));
    // Non-synchronizing 10 MB literal.
    let big = big_message(10 * 1024 * 1024);
    let mut cmd = format!("a2 APPEND INBOX (\\Seen) {{{}+}}\r\n", big.len()).into_bytes();
    cmd.extend_from_slice(&big);
    cmd.extend_from_slice(b"\r\n");
    c.send_raw(&cmd);
    let ok = c.read_line();
    assert!(ok.starts_with("a2 OK [APPENDUID"), "{ok}");
    c.expect_ok("a3 SELECT INBOX");
    c.send_raw(b"a4 FETCH 2 BODY.PEEK[]\r\n");
    let resp = c.read_response_bytes();
    let header = format!("* 2 FETCH (BODY[] {{{}}}\r\n", big.len());
    assert!(resp.starts_with(header.as_bytes()), "{}", String::from_utf8_lossy(&resp[..80]));
    assert_eq!(&resp[header.len()..header.len() + big.len()], &big[..], "fetched bytes differ");
    assert!(c.read_line().starts_with("a4 OK"));
    c.send_raw(b"a5 FETCH 1 BODY.PEEK[]\r\n");
    let resp = c.read_response_bytes();
    assert!(resp.ends_with(b"hello\r\n)\r\n"), "{}", String::from_utf8_lossy(&resp));
}

#[test]
fn ten_pipelined_commands_are_all_answered() {
    let (provider, proxy) = setup();
    provider.deliver("bob@example.org", "alice@example.org", b"Subject: p\r\n\r\nx\r\n");
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    let cmds = [
        "p0 SELECT INBOX",
        "p1 NOOP",
        "p2 FETCH 1 FLAGS",
        "p3 SEARCH ALL",
        "p4 STATUS INBOX (MESSAGES)",
        "p5 LIST \"\" INBOX",
        "p6 STORE 1 +FLAGS (\\Seen)",
        "p7 CAPABILITY",
        "p8 NAMESPACE",
        "p9 NOOP",
    ];
    let mut batch = Vec::new();
    for cmd in cmds {
        batch.extend_from_slice(cmd.as_bytes());
        batch.extend_from_slice(b"\r\n");
    }
    c.send_raw(&batch);
    let mut tagged = Vec::new();
    while tagged.len() < cmds.len() {
        let line = c.read_line();
        if line.starts_with("* CAPABILITY") {
            assert!(!line.contains("STARTTLS") && !line.contains("AUTH="), "{line}");
        }
        if line.starts_with('p') {
            tagged.push(line);
        }
    }
    // Dovecot may answer pipelined commands out of order; each must be answered once, OK.
    tagged.sort();
    for (i, line) in tagged.iter().enumerate() {
        assert!(line.starts_with(&format!("p{i} OK")), "{tagged:?}");
    }
}

#[test]
fn idle_is_woken_by_a_delivery() {
    let (provider, proxy) = setup();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.expect_ok("i1 SELECT INBOX");
    c.send_raw(b"i2 IDLE\r\n");
    assert!(c.read_line().starts_with("+ "));
    let sent = Instant::now();
    provider.submit("bob@example.org", "bob@example.org", &["alice@example.org"], b"Subject: wake\r\n\r\nup\r\n");
    c.set_timeout(Duration::from_secs(2));
    let line = c.read_line();
    let waited = sent.elapsed();
    assert_eq!(line, "* 1 EXISTS\r\n");
    assert!(waited < Duration::from_secs(2), "woken after {waited:?}");
    c.set_timeout(Duration::from_secs(10));
    c.send_raw(b"DONE\r\n");
    loop {
        let l = c.read_line();
        if l.starts_with("i2 ") {
            assert!(l.starts_with("i2 OK"), "{l}");
            break;
        }
    }
}

#[test]
fn commands_the_proxy_cannot_carry_are_refused_cleanly() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    assert!(last(&c.command("c1 COMPRESS DEFLATE")).starts_with("c1 NO [CANNOT]"));
    assert!(last(&c.command("c2 STARTTLS")).starts_with("c2 BAD"));
    c.expect_ok("c3 NOOP");
}

#[test]
fn client_tags_like_the_proxys_own_are_answered() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    // The proxy's own commands are tagged `coips<n>`; a client may use such tags too.
    c.expect_ok("coip1 NOOP");
    c.expect_ok("coips1 NOOP");
    // CREATE is the proxy's to carry out (with its own commands); so is the answer.
    c.expect_ok("coips1 CREATE Tagged");
    c.expect_ok("coips2 SELECT Tagged");
    c.expect_ok("coips3 NOOP");
}

/// Replaces what legitimately differs between two runs of the same script.
fn normalise(transcript: &str) -> String {
    transcript
        .lines()
        // The greeting is the proxy's own.
        .skip(1)
        .map(|l| {
            let mut l = l.to_string();
            if let Some(i) = l.find("[CAPABILITY ") {
                let end = l[i..].find(']').map_or(l.len(), |e| i + e);
                l.replace_range(i..end, "[CAPABILITY …");
            }
            if l.starts_with("S: * CAPABILITY") {
                l = "S: * CAPABILITY …".into();
            }
            // Timing text and UIDVALIDITY differ between any two mailboxes.
            if let Some(i) = l.find(" (0.") {
                l.truncate(i);
            }
            for key in ["UIDVALIDITY ", "APPENDUID ", "COPYUID ", "MODSEQ ", "HIGHESTMODSEQ "] {
                while let Some(i) = l.find(key) {
                    let start = i + key.len();
                    let end = l[start..].find(|c: char| !c.is_ascii_digit()).map_or(l.len(), |e| start + e);
                    l.replace_range(i..end, &key.to_lowercase().replace(' ', "#"));
                }
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn scripted_session(c: &mut ImapClient) {
    let script = [
        "s01 CAPABILITY",
        "s02 NOOP",
        "s03 LIST \"\" \"*\"",
        "s04 LSUB \"\" \"*\"",
        "s05 NAMESPACE",
        "s06 CREATE Work",
        "s07 CREATE Work.Sub",
        "s08 SUBSCRIBE Work",
        "s09 STATUS INBOX (MESSAGES UNSEEN UIDNEXT)",
        "s10 SELECT INBOX",
        "s11 FETCH 1:* (FLAGS UID RFC822.SIZE)",
        "s12 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])",
        "s13 FETCH 2 (BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
        "s14 SEARCH UNSEEN",
        "s15 UID SEARCH SUBJECT \"two\"",
        "s16 STORE 1 +FLAGS (\\Seen $Label)",
        "s17 FETCH 1 FLAGS",
        "s18 COPY 1:2 Work",
        "s19 UID FETCH 1:* (UID FLAGS)",
        "s20 MOVE 3 Work.Sub",
        "s21 STORE 2 +FLAGS.SILENT (\\Deleted)",
        "s22 EXPUNGE",
        "s23 ESEARCH RETURN (MIN MAX COUNT) ALL",
        "s24 EXAMINE Work",
        "s25 FETCH 1:* (ENVELOPE)",
        "s26 RENAME Work.Sub Work.Other",
        "s27 LIST \"\" \"Work*\"",
        "s28 UNSELECT",
        "s29 DELETE Work.Other",
        "s30 BOGUS command",
        "s31 FETCH",
        "s32 LOGOUT",
    ];
    for cmd in script {
        c.command(cmd);
    }
}

#[test]
fn a_scripted_session_looks_the_same_direct_and_proxied() {
    let mut transcripts = Vec::new();
    for proxied in [false, true] {
        let provider = Provider::start();
        for (i, subject) in ["one", "two", "three"].iter().enumerate() {
            let msg = format!(
                "From: bob@example.org\r\nSubject: {subject}\r\nMessage-ID: <{i}@example.org>\r\n\r\nbody {i}\r\n"
            );
            provider.deliver("bob@example.org", "alice@example.org", msg.as_bytes());
        }
        let proxy = proxied.then(|| Proxy::for_port(provider.imap_port));
        let mut c = ImapClient::connect(proxy.as_ref().map_or(provider.imap_port, |p| p.imap_port));
        c.login("alice@example.org", "secret");
        scripted_session(&mut c);
        c.expect_eof();
        transcripts.push(normalise(c.transcript()));
    }
    let (direct, proxied) = (&transcripts[0], &transcripts[1]);
    assert!(direct.lines().count() > 60, "{direct}");
    for (d, p) in direct.lines().zip(proxied.lines()) {
        assert_eq!(d, p, "first difference (direct left, proxied right); proxied transcript:\n{proxied}");
    }
    assert_eq!(direct.lines().count(), proxied.lines().count());
}

#[test]
fn implicit_tls_and_starttls_listeners() {
    let (_provider, proxy) = setup();
    let mut c = proxy.connect_tls();
    assert!(!c.greeting.contains("STARTTLS"), "{}", c.greeting);
    c.login("alice@example.org", "secret");
    c.expect_ok("t1 SELECT INBOX");

    let mut c = proxy.connect();
    c.expect_ok("s1 STARTTLS");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", proxy.imap_port)).unwrap();
    drop(c);
    // A fresh connection that upgrades: read the greeting, STARTTLS, then TLS.
    let mut plain = ImapClient::from_stream(tcp.try_clone().unwrap());
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.expect_ok("s2 STARTTLS");
    let mut tls = support::proxy::tls_client(tcp, &proxy.ca_path(), "127.0.0.1");
    tls.write_all(b"s3 CAPABILITY\r\n").unwrap();
    let mut c = ImapClient::from_stream_no_greeting(tls);
    let caps = c.read_line();
    assert!(caps.starts_with("* CAPABILITY") && !caps.contains("STARTTLS"), "{caps}");
    assert!(c.read_line().starts_with("s3 OK"));
    c.login("alice@example.org", "secret");
}
