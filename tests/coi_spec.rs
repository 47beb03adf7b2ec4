//! COI as the spec says (issue 25), against a real Dovecot with METADATA off and on: a polling
//! plain client never sees a chat message under `active`; filtering goes on after a restart with
//! no client; instances over one provider follow each other's configuration; mailbox names as
//! the provider resolves them; RENAME of the root; `seen` after a switch; the minor items; one
//! worker per account.

mod support;

use std::time::{Duration, Instant};

use support::imap_client::ImapClient;
use support::mailbox::{
    ALICE, ENABLED, FILTER, chat_message, count, direct, enable, enabled, flags_of, login, mail_message, message_ids,
    wait_until,
};
use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

fn provider(metadata: bool) -> Provider {
    Provider::start_with(ProviderOptions { metadata, ..Default::default() })
}

fn proxy_with(provider: &Provider, extra: &str) -> Proxy {
    Proxy::builder().upstream(format!("imap://127.0.0.1:{}", provider.imap_port)).extra(extra).start()
}

/// alice's account with a password the proxy can get by itself.
const ALICE_ACCOUNT: &str = "[[account]]\nlogin = \"alice@example.org\"\npassword_command = \"printf secret\"\n";

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// The `n` of `* n WORD` lines.
fn numbered(line: &str, word: &str) -> Option<usize> {
    let rest = line.strip_prefix("* ")?;
    let (n, w) = rest.trim_end().split_once(' ')?;
    w.eq_ignore_ascii_case(word).then(|| n.parse().ok()).flatten()
}

/// A plain client polling INBOX, checking every line it is told: no chat message, no count it
/// was not given, nothing expunged (nothing is deleted in these tests).
struct Poller {
    c: ImapClient,
    exists: usize,
}

impl Poller {
    fn check(&mut self, lines: &[String], what: &str) {
        for line in lines {
            let transcript = self.c.transcript();
            let tail = &transcript[transcript.len().saturating_sub(3000)..];
            assert!(!line.contains("chat.example"), "{what}: the client saw a chat message: {line}\n{tail}");
            assert!(numbered(line, "EXPUNGE").is_none(), "{what}: a message came and went: {line}\n{tail}");
            if let Some(n) = numbered(line, "EXISTS") {
                self.exists = n;
            }
        }
    }

    fn run(&mut self, command: &str) -> Vec<String> {
        let lines = self.c.expect_ok(command);
        self.check(&lines, command);
        lines
    }

    /// Every way of looking at INBOX, each checked against what the client was told.
    fn look_everywhere(&mut self, other: &mut ImapClient) {
        self.run("n NOOP");
        self.run("k CHECK");
        let known = self.exists;
        let fetched = self.run("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
        assert_eq!(fetched.iter().filter(|l| l.contains(" FETCH ")).count(), known, "FETCH 1:*: {fetched:?}");
        let fetched = self.run("u UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
        assert_eq!(fetched.iter().filter(|l| l.contains(" FETCH ")).count(), known, "UID FETCH 1:*: {fetched:?}");
        for search in ["s SEARCH ALL", "s UID SEARCH ALL", "s UID SEARCH UID 1:*"] {
            let found = self.run(search);
            let n = found.iter().find(|l| l.starts_with("* SEARCH")).map_or(0, |l| l.split_whitespace().count() - 2);
            assert_eq!(n, known, "{search}: {found:?}");
        }
        for items in ["MESSAGES", "MESSAGES UIDNEXT UNSEEN"] {
            let status = self.run(&format!("t STATUS INBOX ({items})"));
            assert!(status[0].contains(&format!("MESSAGES {known}")), "STATUS ({items}): {status:?}");
            // A session with no mailbox selected asks too.
            let status = other.expect_ok(&format!("t STATUS INBOX ({items})"));
            assert!(status[0].contains(&format!("MESSAGES {known}")), "other session, STATUS ({items}): {status:?}");
        }
    }
}

#[test]
fn a_polling_plain_client_never_sees_a_chat_message_under_active() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = proxy_with(&p, "");
        let mut setup = login(&proxy, ALICE);
        enable(&mut setup, "active");
        proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
        p.deliver("bob@example.org", ALICE, &mail_message("m0@mail.example"));
        let mut poller = Poller { c: login(&proxy, ALICE), exists: 0 };
        let mut other = login(&proxy, ALICE);
        poller.run("s SELECT INBOX");
        assert_eq!(poller.exists, 1);

        let mut d = direct(&p, ALICE);
        let (mut chat_noops, mut mail_delays) = (Vec::new(), Vec::new());
        for round in 0..4 {
            // A chat message: the first NOOP after its delivery, then every way of looking.
            p.deliver("bob@example.org", ALICE, &chat_message(&format!("c{round}@chat.example")));
            let sent = Instant::now();
            poller.run("n NOOP");
            chat_noops.push(sent.elapsed());
            poller.look_everywhere(&mut other);
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(100));
                poller.run("n NOOP");
            }
            assert_eq!(count(&mut d, "COI.Chats"), round + 1, "round {round}: moved to Chats");
            // Ordinary mail is still shown, by the first NOOP that can.
            let known = poller.exists;
            p.deliver("bob@example.org", ALICE, &mail_message(&format!("m{}@mail.example", round + 1)));
            let sent = Instant::now();
            while poller.exists == known {
                assert!(sent.elapsed() < Duration::from_secs(5), "ordinary mail never shown");
                poller.run("n NOOP");
            }
            mail_delays.push(sent.elapsed());
            poller.look_everywhere(&mut other);
        }
        // Selected while a chat message is just in: the counts leave it out.
        p.deliver("bob@example.org", ALICE, &chat_message("c9@chat.example"));
        let mut fresh = Poller { c: login(&proxy, ALICE), exists: 0 };
        fresh.run("s SELECT INBOX");
        assert_eq!(fresh.exists, 5, "SELECT right after a chat");
        fresh.look_everywhere(&mut other);
        let ids = message_ids(&mut fresh.c);
        assert_eq!(ids.len(), 5, "{ids:?}");
        let slowest = chat_noops.iter().max().unwrap();
        eprintln!(
            "metadata={metadata}: a NOOP right after a chat message took {chat_noops:?} (slowest {slowest:?}); ordinary mail shown after {mail_delays:?}"
        );
    }
}

/// The session of an IDLE client that the proxy serves itself (a provider without IDLE) is
/// quiet too, and its counts stay right for the commands after DONE.
#[test]
fn an_emulated_idle_client_never_sees_a_chat_message_under_active() {
    let p = Provider::start_with(ProviderOptions { no_idle: true, ..Default::default() });
    let proxy = proxy_with(&p, "[coi]\npoll_secs = 1\n");
    let mut setup = login(&proxy, ALICE);
    enable(&mut setup, "active");
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    let mut poller = Poller { c: login(&proxy, ALICE), exists: 0 };
    poller.run("s SELECT INBOX");
    poller.c.send_raw(b"i IDLE\r\n");
    assert!(poller.c.read_line().starts_with("+ "));
    p.deliver("bob@example.org", ALICE, &chat_message("e1@chat.example"));
    p.deliver("bob@example.org", ALICE, &mail_message("e2@mail.example"));
    // Flag news (the new `$Chat` keyword) may come first.
    loop {
        let line = poller.c.read_line();
        poller.check(std::slice::from_ref(&line), "IDLE");
        if line.contains("EXISTS") {
            assert_eq!(line, "* 1 EXISTS\r\n", "only the mail is announced");
            break;
        }
        assert!(
            line.starts_with("* FLAGS") || line.starts_with("* OK [PERMANENTFLAGS") || line.contains("RECENT"),
            "{line}"
        );
    }
    poller.c.send_raw(b"DONE\r\n");
    loop {
        let line = poller.c.read_line();
        poller.check(std::slice::from_ref(&line), "IDLE");
        if line.starts_with("i ") {
            break;
        }
    }
    let mut other = login(&proxy, ALICE);
    poller.look_everywhere(&mut other);
}

#[test]
fn after_a_restart_chat_messages_are_filtered_with_no_client() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let mut proxy = if metadata {
            // A fresh instance: COI was switched on elsewhere (here: straight at the provider).
            direct(&p, ALICE).expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
            proxy_with(&p, ALICE_ACCOUNT)
        } else {
            let mut proxy = proxy_with(&p, ALICE_ACCOUNT);
            let mut c = login(&proxy, ALICE);
            enable(&mut c, "active");
            c.command("z LOGOUT");
            proxy.restart();
            proxy
        };
        std::thread::sleep(Duration::from_secs(2));
        p.deliver("bob@example.org", ALICE, &chat_message("r1@chat.example"));
        let mut d = direct(&p, ALICE);
        let took = wait_until("the chat moved with no client logged in", Duration::from_secs(5), || {
            count(&mut d, "COI.Chats") == 1
        });
        eprintln!("metadata={metadata}: moved {took:?} after delivery, no client since the start");
        assert_eq!(count(&mut d, "INBOX"), 0);
        proxy.stop();
    }
}

#[test]
fn every_instance_follows_a_configuration_change_made_elsewhere() {
    let p = provider(true);
    let bound = "[coi]\nconfig_check_secs = 2\n";
    let one = proxy_with(&p, bound);
    let mut c = login(&one, ALICE);
    enable(&mut c, "active");
    one.wait_for_log("watching INBOX", Duration::from_secs(10));
    c.command("z LOGOUT");
    let mut d = direct(&p, ALICE);
    p.deliver("bob@example.org", ALICE, &chat_message("x0@chat.example"));
    wait_until("instance 1 moves", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);

    // Instance 2 switches the filter to none, then COI off, and goes away.
    let mut two = proxy_with(&p, bound);
    let mut c2 = login(&two, ALICE);
    c2.expect_ok(&format!("f SETMETADATA \"\" ({FILTER} none)"));
    p.deliver("bob@example.org", ALICE, &chat_message("x1@chat.example"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mut d, "COI.Chats"), 1, "instance 1 moved a chat after the filter became none");
    assert!(flags_of(&p, ALICE, "INBOX", "x1@chat.example").unwrap().contains("$Chat"), "none still marks");
    c2.expect_ok(&format!("f SETMETADATA \"\" ({ENABLED} NIL)"));
    c2.command("z LOGOUT");
    two.stop();
    p.deliver("bob@example.org", ALICE, &chat_message("x2@chat.example"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mut d, "COI.Chats"), 1, "instance 1 moved a chat after COI was switched off");
    let flags = flags_of(&p, ALICE, "INBOX", "x2@chat.example").unwrap();
    assert!(!flags.contains("$Chat"), "instance 1 marked a chat after COI was switched off: {flags}");

    // Switched on again elsewhere: instance 1 follows within the bound.
    d.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    std::thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    p.deliver("bob@example.org", ALICE, &chat_message("x3@chat.example"));
    wait_until("instance 1 moves again", Duration::from_secs(5), || {
        flags_of(&p, ALICE, "COI.Chats", "x3@chat.example").is_some()
    });
    eprintln!("switched on elsewhere: instance 1 moved the next chat {:?} after delivery", sent.elapsed());
    assert_eq!(one.log().matches("account worker started").count(), 1, "one worker all along");
}

#[test]
fn mailbox_names_are_compared_as_the_provider_resolves_them() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = proxy_with(&p, "");
        let mut c = login(&proxy, ALICE);
        // Dovecot drops a trailing separator: this creates COI.Chats.
        c.expect_ok("c1 CREATE COI.Chats.");
        assert!(enabled(&mut c), "metadata={metadata}: CREATE COI.Chats. enables");
        // (Dovecot refuses DELETE with a trailing separator.)
        c.expect_ok("c2 DELETE COI.Chats");
        assert!(!enabled(&mut c), "metadata={metadata}: DELETE COI.Chats disables");
    }
    // A root outside ASCII goes to the provider in modified UTF-7, and is recognised so.
    let p = provider(false);
    let proxy = proxy_with(&p, "[coi]\nmailbox_root = \"Ärger\"\n");
    let mut c = login(&proxy, ALICE);
    c.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes)"));
    let list = direct(&p, ALICE).expect_ok("l LIST \"\" \"*\"").join("");
    assert!(list.contains("&AMQ-rger.Chats") && list.contains("&AMQ-rger.Contacts"), "{list}");
    let root = c.expect_ok("g GETMETADATA \"\" /private/vendor/vendor.dovecot/coi/config/mailbox-root");
    assert!(root[0].contains("&AMQ-rger"), "{root:?}");
    c.expect_ok("d DELETE &AMQ-rger.Chats");
    assert!(!enabled(&mut c));
    c.expect_ok("c CREATE &AMQ-rger.Chats");
    assert!(enabled(&mut c));
}

#[test]
fn renaming_the_root_follows_the_chats_folder() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = proxy_with(&p, "");
        let mut c = login(&proxy, ALICE);
        enable(&mut c, "none");
        let no = c.command("r1 RENAME COI COI2");
        assert!(last(&no).starts_with("r1 NO [CANNOT]"), "metadata={metadata}: {no:?}");
        assert!(enabled(&mut c));
        assert!(last(&direct(&p, ALICE).expect_ok("l LIST \"\" COI.Chats")).contains("OK"));
        assert!(direct(&p, ALICE).expect_ok("l LIST \"\" COI.Chats")[0].contains("COI.Chats"));
        c.expect_ok("r2 RENAME COI Trash.COI");
        assert!(!enabled(&mut c), "metadata={metadata}: the root moved into Trash disables");
        let list = direct(&p, ALICE).expect_ok("l LIST \"\" \"*\"").join("");
        assert!(list.contains("Trash.COI.Chats"), "{list}");
    }
}

#[test]
fn seen_moves_every_chat_message_that_becomes_seen_after_a_switch() {
    let p = provider(false);
    let proxy = proxy_with(&p, "");
    let mut c = login(&proxy, ALICE);
    enable(&mut c, "none");
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    p.deliver("bob@example.org", ALICE, &chat_message("s1@chat.example"));
    wait_until("$Chat", Duration::from_secs(5), || {
        flags_of(&p, ALICE, "INBOX", "s1@chat.example").is_some_and(|f| f.contains("$Chat"))
    });
    c.expect_ok(&format!("f SETMETADATA \"\" ({FILTER} seen)"));
    let mut d = direct(&p, ALICE);
    d.expect_ok("s SELECT INBOX");
    d.expect_ok("t STORE 1 +FLAGS (\\Seen)");
    d.expect_ok("u UNSELECT");
    wait_until("the chat in Chats once seen", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
}

#[test]
fn minor_items() {
    for metadata in [false, true] {
        let p = provider(metadata);
        let proxy = proxy_with(&p, "");
        let mut c = login(&proxy, ALICE);
        let r = c.command("a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/foo bar)");
        assert!(last(&r).starts_with("a NO"), "metadata={metadata}: an unknown COI entry is refused: {r:?}");
        let r = c.expect_ok("b GETMETADATA \"\" /private/vendor/vendor.dovecot/coi/config/foo");
        assert!(!r.join("").contains("bar"), "{r:?}");
        let r =
            c.command("w SETMETADATA INBOX (/private/vendor/vendor.dovecot/webpush/subscriptions/abcdefghij12 NIL)");
        assert!(last(&r).starts_with("w NO") && last(&r).contains("WebPush"), "metadata={metadata}: {r:?}");
        let r = c.command(&format!("x SETMETADATA INBOX ({ENABLED} yes)"));
        assert!(last(&r).starts_with("x NO") && last(&r).contains("COI"), "{r:?}");
    }
}

#[test]
fn one_worker_per_account_started_once_over_a_metadata_provider() {
    let p = provider(true);
    direct(&p, ALICE).expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    let mut proxy = proxy_with(&p, "[coi]\nconfig_check_secs = 2\n");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(login(&proxy, ALICE));
    }
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    clients[0].expect_ok(&format!("f SETMETADATA \"\" ({FILTER} none)"));
    clients[1].expect_ok(&format!("f SETMETADATA \"\" ({ENABLED} NIL)"));
    clients[2].expect_ok(&format!("f SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    std::thread::sleep(Duration::from_secs(1));
    p.deliver("bob@example.org", ALICE, &chat_message("o1@chat.example"));
    let mut d = direct(&p, ALICE);
    wait_until("the chat in Chats", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
    drop(clients);
    let status = proxy.stop().expect("stopped");
    assert!(status.success(), "{status:?}");
    let log = proxy.log();
    assert_eq!(log.matches("account worker started").count(), 1, "{log}");
    assert_eq!(log.matches("account worker stopped").count(), 1, "{log}");
}

/// An account whose password the proxy cannot get by itself: after a restart the log says why
/// nothing moves yet, and its first login starts the filtering again.
#[test]
fn after_a_restart_an_account_without_password_command_filters_from_its_first_login() {
    let p = provider(false);
    let mut proxy = proxy_with(&p, "");
    let mut c = login(&proxy, ALICE);
    enable(&mut c, "active");
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    c.command("z LOGOUT");
    proxy.restart();
    proxy.wait_for_log("COI filtering waits for a login", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proxy.log().matches("watching INBOX").count(), 1, "no worker before a login");
    let _c = login(&proxy, ALICE);
    wait_until("a worker after the login", Duration::from_secs(10), || {
        proxy.log().matches("watching INBOX").count() == 2
    });
    p.deliver("bob@example.org", ALICE, &chat_message("w1@chat.example"));
    let mut d = direct(&p, ALICE);
    wait_until("the chat moved once the account logged in", Duration::from_secs(5), || count(&mut d, "COI.Chats") == 1);
}
