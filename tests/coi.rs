//! COI server emulation against a real Dovecot, with its METADATA off (its default) and on.

mod support;

use std::time::{Duration, Instant};

use support::imap_client::ImapClient;
use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
const ROOT: &str = "/private/vendor/vendor.dovecot/coi/config/mailbox-root";

fn provider(metadata: bool) -> Provider {
    Provider::start_with(ProviderOptions { metadata, ..Default::default() })
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// Drops Dovecot's timing text, e.g. ` (0.001 + 0.000 secs)`.
fn untimed(line: &str) -> String {
    match line.find(" (0.") {
        Some(i) => format!("{}{}", &line[..i], line[i..].find(')').map_or("", |e| &line[i + e + 1..])),
        None => line.to_string(),
    }
}

fn login(proxy: &Proxy, user: &str) -> ImapClient {
    let mut c = proxy.connect();
    c.login(user, "secret");
    c
}

fn direct(provider: &Provider, user: &str) -> ImapClient {
    let mut c = ImapClient::connect(provider.imap_port);
    c.login(user, "secret");
    c
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn count(c: &mut ImapClient, mailbox: &str) -> usize {
    let status = c.expect_ok(&format!("s STATUS {mailbox} (MESSAGES)"));
    let line = status.iter().find(|l| l.starts_with("* STATUS")).expect("STATUS response");
    let n = line.split("MESSAGES ").nth(1).unwrap().trim_end_matches(|c: char| !c.is_ascii_digit());
    n.parse().unwrap()
}

fn chat_message(id: &str) -> Vec<u8> {
    format!("From: bob@example.org\r\nTo: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <{id}>\r\nSubject: chat {id}\r\n\r\nhello\r\n").into_bytes()
}

fn mail_message(id: &str, extra: &str) -> Vec<u8> {
    format!("From: bob@example.org\r\nTo: alice@example.org\r\nMessage-ID: <{id}>\r\n{extra}Subject: mail {id}\r\n\r\nhello\r\n").into_bytes()
}

fn enable(c: &mut ImapClient, filter: &str) {
    c.expect_ok(&format!("e1 SETMETADATA \"\" ({ENABLED} yes {FILTER} {filter})"));
}

#[test]
fn capabilities_after_login_only() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = Proxy::for_port(p.imap_port);
        let mut c = proxy.connect();
        assert!(!c.greeting.contains("COI"), "{}", c.greeting);
        let ok = c.login("alice@example.org", "secret");
        let caps = last(&ok);
        assert!(caps.contains(" COI"), "{caps}");
        assert_eq!(caps.matches(" METADATA").count(), 1, "METADATA once, emulated or the provider's: {caps}");
        let caps = c.expect_ok("c CAPABILITY");
        assert!(caps[0].contains(" COI") && caps[0].contains(" METADATA"), "{caps:?}");
    }
}

#[test]
fn the_specs_metadata_examples_byte_for_byte() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = Proxy::for_port(p.imap_port);
        let mut c = login(&proxy, "alice@example.org");
        let r = c.command(&format!("a SETMETADATA \"\" ({ENABLED} yes)"));
        assert_eq!(r, vec!["a OK SETMETADATA complete\r\n"], "metadata={metadata}");
        c.expect_ok(&format!("b SETMETADATA \"\" ({FILTER} active)"));
        let r = c.command("a5 GETMETADATA (DEPTH 1) \"\" (/private/vendor/vendor.dovecot/coi/config)");
        assert_eq!(
            r[0],
            "* METADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled {3}\r\n\
yes /private/vendor/vendor.dovecot/coi/config/mailbox-root {3}\r\n\
COI /private/vendor/vendor.dovecot/coi/config/message-filter {6}\r\n\
active)\r\n",
            "metadata={metadata}"
        );
        assert_eq!(untimed(&r[1]), "a5 OK Getmetadata completed.\r\n");
        let r = c.command(&format!("a SETMETADATA \"\" ({ENABLED} true)"));
        assert_eq!(r, vec![format!("a NO [CANNOT] invalid value for {ENABLED}: \"true\"\r\n")]);
        let r = c.command(&format!("a SETMETADATA \"\" ({FILTER} inactive)"));
        assert_eq!(r, vec![format!("a NO [CANNOT] invalid value for {FILTER}: inactive\r\n")]);
        let r = c.command(&format!("a SETMETADATA \"\" ({ROOT} Other)"));
        assert!(r[0].starts_with("a NO [CANNOT]"), "{r:?}");
        c.expect_ok(&format!("a SETMETADATA \"\" ({ENABLED} NIL)"));
        let r = c.command(&format!("g GETMETADATA \"\" ({ENABLED} {ROOT})"));
        assert_eq!(r[0], format!("* METADATA \"\" ({ENABLED} NIL {ROOT} {{3}}\r\nCOI)\r\n"));
    }
}

#[test]
fn configuration_round_trips_across_connections_and_restarts() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let mut proxy = Proxy::for_port(p.imap_port);
        let mut first = login(&proxy, "alice@example.org");
        first.expect_ok(&format!("s SETMETADATA \"\" ({ENABLED} yes {FILTER} seen /private/comment {{5}}\r\nhello)"));
        let expect = |c: &mut ImapClient| {
            let r = c.expect_ok(&format!("g GETMETADATA \"\" ({ENABLED} {FILTER} /private/comment)"));
            assert_eq!(
                r[0],
                format!(
                    "* METADATA \"\" ({ENABLED} {{3}}\r\nyes {FILTER} {{4}}\r\nseen /private/comment {{5}}\r\nhello)\r\n"
                ),
                "metadata={metadata}"
            );
        };
        expect(&mut login(&proxy, "alice@example.org"));
        // Other accounts have their own configuration.
        let r = login(&proxy, "bob@example.org").expect_ok(&format!("g GETMETADATA \"\" {ENABLED}"));
        assert_eq!(r[0], format!("* METADATA \"\" ({ENABLED} NIL)\r\n"));
        drop(first);
        proxy.restart();
        expect(&mut login(&proxy, "alice@example.org"));
        if metadata {
            // Stored on the provider, where every device and proxy instance sees it.
            let r = direct(&p, "alice@example.org").expect_ok(&format!("d GETMETADATA \"\" ({ENABLED} {FILTER})"));
            assert_eq!(r[0], format!("* METADATA \"\" ({ENABLED} {{3}}\r\nyes {FILTER} {{4}}\r\nseen)\r\n"));
        }
    }
}

#[test]
fn enabling_creates_the_folders_with_the_providers_separator() {
    for (slash, chats, contacts) in [(false, "COI.Chats", "COI.Contacts"), (true, "COI/Chats", "COI/Contacts")] {
        let p = Provider::start_with(ProviderOptions { slash_separator: slash, ..Default::default() });
        let proxy = Proxy::for_port(p.imap_port);
        let mut c = login(&proxy, "alice@example.org");
        c.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes)"));
        // Created before the OK: a direct connection sees them at once.
        let mut d = direct(&p, "alice@example.org");
        let list = d.expect_ok("l LIST \"\" \"COI*\"").join("");
        assert!(list.contains(chats) && list.contains(contacts), "{list}");
        let lsub = d.expect_ok("l LSUB \"\" \"COI*\"").join("");
        assert!(lsub.contains(chats) && !lsub.contains(contacts), "Chats subscribed, Contacts not: {lsub}");
        // Enabling again is fine with the folders there.
        c.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes)"));
    }
}

#[test]
fn chats_folder_commands_switch_coi_on_and_off() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = Proxy::for_port(p.imap_port);
        let mut c = login(&proxy, "alice@example.org");
        let enabled = |c: &mut ImapClient| c.expect_ok(&format!("g GETMETADATA \"\" {ENABLED}"))[0].contains("yes");
        c.expect_ok("c1 CREATE COI.Chats");
        assert!(enabled(&mut c), "CREATE Chats enables");
        assert!(last(&direct(&p, "alice@example.org").expect_ok("l LIST \"\" COI.Contacts")).contains("OK"));
        c.expect_ok("c2 DELETE COI.Chats");
        assert!(!enabled(&mut c), "DELETE Chats disables");
        c.expect_ok("c3 CREATE Old");
        c.expect_ok("c4 RENAME Old COI.Chats");
        assert!(enabled(&mut c), "RENAME onto Chats enables");
        let no = c.command("c5 RENAME COI.Chats Elsewhere");
        assert_eq!(no, vec!["c5 NO [CANNOT] COI mailbox can't be renamed\r\n"]);
        assert!(enabled(&mut c));
        c.expect_ok("c6 RENAME COI.Chats Trash.Chats");
        assert!(!enabled(&mut c), "RENAME into Trash disables");
        // Other mailboxes are untouched by all this.
        c.expect_ok("c7 CREATE Work");
        c.expect_ok("c8 RENAME Work Play");
        c.expect_ok("c9 DELETE Play");
        assert!(!enabled(&mut c));
    }
}

#[test]
fn filter_none_marks_chat_messages_and_leaves_them() {
    let p = provider(false);
    let proxy = Proxy::for_port(p.imap_port);
    let mut c = login(&proxy, "alice@example.org");
    enable(&mut c, "none");
    p.deliver("bob@example.org", "alice@example.org", &chat_message("n1@example.org"));
    p.deliver("bob@example.org", "alice@example.org", &mail_message("n2@example.org", ""));
    c.expect_ok("x SELECT INBOX");
    wait_until("$Chat on the chat message", Duration::from_secs(5), || {
        c.expect_ok("f FETCH 1:* (FLAGS)").iter().filter(|l| l.contains("$Chat")).count() == 1
    });
    let flags = c.expect_ok("f FETCH 2 (FLAGS)");
    assert!(!flags[0].contains("$Chat"), "{flags:?}");
    assert_eq!(count(&mut c, "INBOX"), 2);
}

#[test]
fn filter_active_moves_chat_messages_and_keeps_mail() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = Proxy::for_port(p.imap_port);
        let mut c = login(&proxy, "alice@example.org");
        enable(&mut c, "active");
        let mut d = direct(&p, "alice@example.org");
        let started = Instant::now();
        p.deliver("bob@example.org", "alice@example.org", &chat_message("a1@example.org"));
        let moved = wait_until("the chat message in Chats", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
        eprintln!("metadata={metadata}: delivery -> in Chats after {moved:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "moved after {:?}", started.elapsed());
        // The spec's other rules, a reply to a known chat, and ordinary mail.
        p.deliver("bob@example.org", "alice@example.org", &mail_message("chat$a2@example.org", ""));
        p.deliver(
            "bob@example.org",
            "alice@example.org",
            &mail_message("a3@example.org", "References: <chat$x@example.org>\r\n"),
        );
        p.deliver(
            "bob@example.org",
            "alice@example.org",
            &mail_message("a4@example.org", "In-Reply-To: <a1@example.org>\r\n"),
        );
        p.deliver("bob@example.org", "alice@example.org", &mail_message("a5@example.org", ""));
        wait_until("four chat messages in Chats", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 4);
        assert_eq!(count(&mut d, "INBOX"), 1);
        d.expect_ok("x SELECT COI.Chats");
        let flags = d.expect_ok("f FETCH 1:* (FLAGS)");
        assert_eq!(flags.iter().filter(|l| l.contains("$Chat")).count(), 4, "{flags:?}");
        d.expect_ok("y SELECT INBOX");
        let subject = d.expect_ok("f FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
        assert!(subject[0].contains("a5@example.org"), "{subject:?}");
    }
}

#[test]
fn filter_seen_moves_once_seen_by_any_client() {
    let p = provider(false);
    let proxy = Proxy::for_port(p.imap_port);
    let mut c = login(&proxy, "alice@example.org");
    enable(&mut c, "seen");
    let mut d = direct(&p, "alice@example.org");
    p.deliver("bob@example.org", "alice@example.org", &chat_message("s1@example.org"));
    p.deliver("bob@example.org", "alice@example.org", &chat_message("s2@example.org"));
    c.expect_ok("x SELECT INBOX");
    wait_until("$Chat on both", Duration::from_secs(5), || {
        c.expect_ok("f FETCH 1:* (FLAGS)").iter().filter(|l| l.contains("$Chat")).count() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&mut d, "COI.Chats"), 0, "unseen chat messages stay in INBOX");
    // Seen through the proxy.
    c.expect_ok("st STORE 1 +FLAGS (\\Seen)");
    wait_until("the first in Chats", Duration::from_secs(3), || count(&mut d, "COI.Chats") == 1);
    // Seen by another client, straight at the provider.
    d.expect_ok("y SELECT INBOX");
    d.expect_ok("st STORE 1 +FLAGS (\\Seen)");
    d.expect_ok("z UNSELECT");
    wait_until("the second in Chats", Duration::from_secs(3), || count(&mut d, "COI.Chats") == 2);
    d.expect_ok("y SELECT COI.Chats");
    let flags = d.expect_ok("f FETCH 1:* (FLAGS)");
    assert_eq!(
        flags.iter().filter(|l| l.contains("\\Seen") && l.contains("$Chat")).count(),
        2,
        "flags kept: {flags:?}"
    );
}

#[test]
fn a_chat_client_sees_chats_in_place_of_inbox_when_active() {
    let p = provider(false);
    let proxy = Proxy::for_port(p.imap_port);
    let mut c = login(&proxy, "alice@example.org");
    enable(&mut c, "active");
    p.deliver("bob@example.org", "alice@example.org", &chat_message("d1@example.org"));
    p.deliver("bob@example.org", "alice@example.org", &mail_message("d2@example.org", ""));
    let mut d = direct(&p, "alice@example.org");
    wait_until("the chat in Chats", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
    let mut dc = proxy.connect();
    dc.login("alice@example.org", "secret");
    dc.expect_ok("i ID (\"name\" \"Delta Chat\" \"version\" \"2.0\")");
    let sel = dc.expect_ok("s SELECT INBOX");
    assert!(sel.iter().any(|l| l == "* 1 EXISTS\r\n"), "{sel:?}");
    let msg = dc.expect_ok("f FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
    assert!(msg[0].contains("d1@example.org"), "{msg:?}");
    let status = dc.expect_ok("t STATUS INBOX (MESSAGES)");
    assert_eq!(status[0], "* STATUS INBOX (MESSAGES 1)\r\n");
    // A plain client sees the real INBOX.
    let mut plain = login(&proxy, "alice@example.org");
    let msg = plain.expect_ok("s SELECT INBOX");
    assert!(msg.iter().any(|l| l == "* 1 EXISTS\r\n"), "{msg:?}");
    let msg = plain.expect_ok("f FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
    assert!(msg[0].contains("d2@example.org"), "{msg:?}");
}

#[test]
fn malformed_and_oversized_metadata_commands() {
    let p = provider(false);
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", p.imap_port))
        .extra("[coi]\nmax_metadata_entries = 3\nmax_metadata_size = 100")
        .start();
    let mut c = login(&proxy, "alice@example.org");
    for bad in [
        "b1 GETMETADATA",
        "b2 GETMETADATA \"\"",
        "b3 GETMETADATA (DEPTH 7) \"\" /private",
        "b4 GETMETADATA \"\" /nonsense",
        "b5 SETMETADATA \"\" /private/x",
        "b6 SETMETADATA \"\" (/private/x)",
        "b7 SETMETADATA \"\" (/private/x \"unterminated)",
    ] {
        let r = c.command(bad);
        let tag = bad.split(' ').next().unwrap();
        assert!(last(&r).starts_with(&format!("{tag} BAD")), "{bad}: {r:?}");
    }
    let big = "x".repeat(101);
    let r = c.command(&format!("m1 SETMETADATA \"\" (/private/big {{101}}\r\n{big})"));
    assert_eq!(last(&r), "m1 NO [METADATA MAXSIZE 100] Entry value too large\r\n", "{r:?}");
    c.expect_ok("m2 SETMETADATA \"\" (/private/a 1 /private/b 2 /private/c 3)");
    let r = c.command("m3 SETMETADATA \"\" (/private/d 4)");
    assert_eq!(last(&r), "m3 NO [METADATA TOOMANY] Too many entries\r\n");
    let r = c.expect_ok("m4 GETMETADATA (MAXSIZE 0) \"\" (/private/a /private/b)");
    assert_eq!(untimed(last(&r)), "m4 OK [METADATA LONGENTRIES 1] Getmetadata completed.\r\n");
    // A literal value with a synchronizing literal: the proxy sends "+" itself.
    c.send_raw(b"m5 SETMETADATA \"\" (/private/a {3}\r\n");
    assert!(c.read_line().starts_with("+ "));
    c.send_raw(b"new)\r\n");
    assert_eq!(c.read_line(), "m5 OK SETMETADATA complete\r\n");
    c.expect_ok("m6 NOOP");
}

/// Dovecot's IDLE keepalive, sent every `imap_idle_notify_interval` at a moment that depends
/// on the user and the connection: no news about the mailbox, so no wake-up by a chat.
const KEEPALIVE: &str = "* OK Still here\r\n";

/// The next line within `timeout` other than the IDLE keepalive; `None` if nothing else comes.
fn news_within(c: &mut ImapClient, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
        match c.line_within(left) {
            Some(line) if line == KEEPALIVE => continue,
            other => return other,
        }
    }
}

#[test]
fn an_idle_client_is_not_woken_by_chat_messages_in_active_mode() {
    let p = provider(false);
    let proxy = Proxy::for_port(p.imap_port);
    let mut setup = login(&proxy, "alice@example.org");
    enable(&mut setup, "active");
    p.deliver("bob@example.org", "alice@example.org", &mail_message("q0@example.org", ""));
    let mut c = login(&proxy, "alice@example.org");
    let sel = c.expect_ok("s SELECT INBOX");
    assert!(sel.iter().any(|l| l == "* 1 EXISTS\r\n"), "{sel:?}");
    c.send_raw(b"i IDLE\r\n");
    assert!(c.read_line().starts_with("+ "));
    // A chat message: moved to Chats, and the idling client hears nothing.
    p.deliver("bob@example.org", "alice@example.org", &chat_message("q1@example.org"));
    let mut d = direct(&p, "alice@example.org");
    wait_until("the chat in Chats", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
    assert_eq!(news_within(&mut c, Duration::from_millis(2500)), None, "woken by a chat message");
    // Ordinary mail still wakes it promptly.
    c.set_timeout(Duration::from_secs(2));
    let sent = Instant::now();
    p.deliver("bob@example.org", "alice@example.org", &mail_message("q2@example.org", ""));
    // Flag news held back during the chat's hold (the new `$Chat` keyword) may come first, and
    // Dovecot's IDLE keepalive, whose first one can come at any moment (seen once).
    while let Some(line) = news_within(&mut c, Duration::from_secs(2)) {
        if line == "* 2 EXISTS\r\n" {
            break;
        }
        assert!(
            line.starts_with("* FLAGS")
                || line.starts_with("* OK [PERMANENTFLAGS")
                || line.contains("RECENT")
                || line == "* OK Still here\r\n",
            "{line}"
        );
    }
    eprintln!("ordinary mail woke the idle client after {:?}", sent.elapsed());
    assert!(sent.elapsed() < Duration::from_secs(2));
    c.set_timeout(Duration::from_secs(10));
    c.send_raw(b"DONE\r\n");
    loop {
        let line = c.read_line();
        assert!(!line.contains("EXPUNGE"), "{line}");
        if line.starts_with("i ") {
            assert!(line.starts_with("i OK"), "{line}");
            break;
        }
    }
    let f = c.expect_ok("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").join("");
    assert!(f.contains("q0@") && f.contains("q2@") && !f.contains("q1@"), "{f}");
}

#[test]
fn the_worker_reconnects_when_the_provider_drops_it() {
    let p = provider(false);
    let proxy = Proxy::for_port(p.imap_port);
    let mut c = login(&proxy, "alice@example.org");
    enable(&mut c, "active");
    drop(c);
    proxy.wait_for_log("watching INBOX", Duration::from_secs(5));
    // Disconnect every session of alice at the provider, the worker's included.
    let conf = p.state_dir.join("dovecot.conf");
    let kicked = std::process::Command::new("doveadm")
        .arg("-c")
        .arg(&conf)
        .args(["kick", "alice@example.org"])
        .output()
        .unwrap();
    assert!(kicked.status.success(), "{}", String::from_utf8_lossy(&kicked.stderr));
    let log = proxy.wait_for_log("retrying in", Duration::from_secs(5));
    assert!(log.contains("account worker"), "{log}");
    wait_until("a second 'watching INBOX'", Duration::from_secs(10), || {
        proxy.log().matches("watching INBOX").count() >= 2
    });
    p.deliver("bob@example.org", "alice@example.org", &chat_message("r1@example.org"));
    let mut d = direct(&p, "alice@example.org");
    wait_until("the chat in Chats after the reconnect", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
}

/// One worker per account however often it is asked for (each login, COI enabled in two
/// sessions), and none started once the daemon shuts down.
#[test]
fn one_worker_per_account_and_none_after_shutdown() {
    let p = provider(false);
    let mut proxy = Proxy::for_port(p.imap_port);
    let mut a = login(&proxy, "alice@example.org");
    enable(&mut a, "active");
    proxy.wait_for_log("watching INBOX", Duration::from_secs(5));
    let mut b = login(&proxy, "alice@example.org");
    enable(&mut b, "seen");
    let mut c = login(&proxy, "ALICE@example.org");
    c.expect_ok("n NOOP");
    p.deliver("bob@example.org", "alice@example.org", &chat_message("w1@example.org"));
    // The worker is busy and still the only one: in seen mode the chat waits in INBOX.
    proxy.wait_for_log("chat messages", Duration::from_secs(5));
    drop((a, b, c));
    let status = proxy.stop().expect("stopped");
    assert!(status.success(), "{status:?}");
    let log = proxy.log();
    assert_eq!(log.matches("account worker started").count(), 1, "{log}");
    assert_eq!(log.matches("account worker stopped").count(), 1, "{log}");
}
