//! Read and delivery confirmations (issue 22) with a real Postfix in front of Dovecot: a read by
//! FETCH sends its read receipt once, each report is recorded once (also across a restart and
//! when it comes twice), and a read is credited to the recipient who read.

mod support;

use std::time::{Duration, Instant};

use support::imap_client::ImapClient;
use support::mailbox::{ALICE, BOB, CAROL, ENABLED, FILTER, direct, flags_of, login, uid_of, wait_until};
use support::provider::{Provider, ProviderOptions};
use support::receipts::{chat_from_alice, mdns_about, proxy_with_smtp, queue_list};
use support::smtp_client::{inbox, wait_for_inbox};

fn postfix_provider() -> Provider {
    assert!(std::path::Path::new("/usr/sbin/postfix").exists(), "Postfix is needed: tests/setup-debian.sh installs it");
    Provider::start_with(ProviderOptions { postfix: true, ..Default::default() })
}

/// A read receipt from `reader` about `original`, as a chat client writes it.
fn mdn(reader: &str, original: &str, report_id: &str) -> Vec<u8> {
    format!(
        "From: <{reader}>\r\nTo: <alice@example.org>\r\nSubject: Chat: Read receipt\r\nMessage-ID: <{report_id}>\r\n\
         Chat-Version: 1.0\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=disposition-notification; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nread\r\n\r\n--b\r\nContent-Type: message/disposition-notification\r\n\r\n\
         Reporting-UA: test\r\nFinal-Recipient: rfc822;{reader}\r\nOriginal-Message-ID: <{original}>\r\n\
         Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--b--\r\n"
    )
    .into_bytes()
}

#[test]
fn a_read_by_fetch_sends_its_read_receipt_once() {
    let p = postfix_provider();
    let proxy = proxy_with_smtp(&p, "[[account]]\nlogin = \"bob@example.org\"\nread_receipts = true\n");
    let mut bob = login(&proxy, BOB);
    proxy.wait_for_log("read receipts start now", Duration::from_secs(10));
    let ids = ["body@example.org", "peek@example.org", "rfc822@example.org", "text@example.org", "other@example.org"];
    for id in ids {
        p.deliver(ALICE, BOB, &chat_from_alice(id, BOB));
    }
    bob.expect_ok("s SELECT INBOX");
    let uids: Vec<String> = ids.iter().map(|id| uid_of(&mut bob, id)).collect();
    // Read as mutt and imaplib users read: a body fetch that sets `\Seen`.
    bob.expect_ok(&format!("a UID FETCH {} (BODY[])", uids[0]));
    bob.expect_ok(&format!("b UID FETCH {} (BODY.PEEK[])", uids[1]));
    bob.expect_ok(&format!("c UID FETCH {} (RFC822)", uids[2]));
    bob.expect_ok(&format!("d UID FETCH {} (RFC822.TEXT)", uids[3]));
    // Read in another client, straight at the provider: bob's session hears of the new flags.
    let mut elsewhere = direct(&p, BOB);
    elsewhere.expect_ok("s SELECT INBOX");
    elsewhere.expect_ok(&format!("t UID STORE {} +FLAGS (\\Seen)", uids[4]));
    bob.expect_ok("n NOOP");

    let read = [ids[0], ids[2], ids[3], ids[4]];
    wait_for_inbox(p.imap_port, ALICE, "secret", Duration::from_secs(30), |m| {
        read.iter().all(|id| mdns_about(m, id) > 0)
    });
    for id in read {
        wait_until("$MDNSent", Duration::from_secs(10), || {
            flags_of(&p, BOB, "INBOX", id).is_some_and(|f| f.contains("$MDNSent"))
        });
    }
    // Read again, in a new session: still one receipt each, and none for the peek.
    let mut again = login(&proxy, BOB);
    again.expect_ok("s SELECT INBOX");
    again.expect_ok(&format!("a UID FETCH {} (BODY[])", uids[0]));
    std::thread::sleep(Duration::from_secs(2));
    let alice = inbox(p.imap_port, ALICE, "secret");
    for id in read {
        assert_eq!(mdns_about(&alice, id), 1, "{id}: exactly one receipt");
    }
    assert_eq!(mdns_about(&alice, ids[1]), 0, "a PEEK reads nothing");
    assert!(!flags_of(&p, BOB, "INBOX", ids[1]).unwrap().contains("\\Seen"));

    // A chat client sends its own receipts: its FETCH gets `$MDNSent` and no receipt from the proxy.
    p.deliver(ALICE, BOB, &chat_from_alice("dc@example.org", BOB));
    let mut dc = proxy.connect();
    dc.expect_ok("i ID (\"name\" \"Delta Chat\")");
    dc.login(BOB, "secret");
    dc.expect_ok("s SELECT INBOX");
    let uid = uid_of(&mut dc, "dc@example.org");
    dc.expect_ok(&format!("f UID FETCH {uid} (BODY[])"));
    wait_until("$MDNSent after the chat client read it", Duration::from_secs(10), || {
        flags_of(&p, BOB, "INBOX", "dc@example.org").is_some_and(|f| f.contains("$MDNSent"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mdns_about(&inbox(p.imap_port, ALICE, "secret"), "dc@example.org"), 0);
}

/// The number of messages in alice's INBOX and the flags of her copy of `id` in Chats.
fn alice_state(d: &mut ImapClient, id: &str) -> (usize, String) {
    let select = d.expect_ok("s EXAMINE INBOX");
    let exists = select.iter().find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS\r\n")?.parse().ok());
    d.expect_ok("c EXAMINE COI.Chats");
    let found = d.expect_ok(&format!("f UID SEARCH HEADER Message-ID \"<{id}>\""));
    let uid = found.iter().find_map(|l| l.strip_prefix("* SEARCH ")?.split_whitespace().next().map(str::to_string));
    let flags = match uid {
        Some(uid) => d.expect_ok(&format!("g UID FETCH {uid} (FLAGS)")).join(""),
        None => String::new(),
    };
    (exists.unwrap_or(0), flags)
}

#[test]
fn a_read_is_credited_to_the_recipient_who_read() {
    let p = postfix_provider();
    let proxy = proxy_with_smtp(&p, "[[account]]\nlogin = \"bob@example.org\"\nread_receipts = true\n");
    let mut alice = login(&proxy, ALICE);
    alice.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} none)"));
    let mut bob = login(&proxy, BOB);
    proxy.wait_for_log("read receipts start now", Duration::from_secs(10));

    let id = "group@example.org";
    let mut smtp = proxy.connect_smtp();
    smtp.login(ALICE, "secret");
    let to = format!("{CAROL}, {BOB}");
    let reply = smtp.send_message(ALICE, &[CAROL, BOB], &chat_from_alice(id, &to));
    assert_eq!(reply.code, 250, "{}", smtp.transcript());
    smtp.command("QUIT");

    // The delivery tick: from the DSN's arrival in alice's INBOX to `$Delivered` on her copy.
    let mut d = direct(&p, ALICE);
    let (mut dsn_at, start) = (None, Instant::now());
    let delivered_after = loop {
        let (exists, flags) = alice_state(&mut d, id);
        if exists > 0 && dsn_at.is_none() {
            dsn_at = Some(Instant::now());
        }
        if flags.contains("$Delivered") {
            break dsn_at.map(|t| t.elapsed());
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no $Delivered: {flags}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let reports_before = alice_state(&mut d, id).0;

    // Only bob reads (the first of the two recipients is carol).
    bob.expect_ok("s SELECT INBOX");
    let uid = uid_of(&mut bob, id);
    bob.expect_ok(&format!("t UID STORE {uid} +FLAGS (\\Seen)"));
    let (mut mdn_at, start) = (None, Instant::now());
    let read_after = loop {
        let (exists, flags) = alice_state(&mut d, id);
        if exists > reports_before && mdn_at.is_none() {
            mdn_at = Some(Instant::now());
        }
        if flags.contains("$Read") {
            break mdn_at.map(|t| t.elapsed());
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no $Read: {flags}");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "delivered tick {delivered_after:?} after the DSN arrived; read tick {read_after:?} after the MDN arrived"
    );

    // A receipt from someone the message did not go to counts for nobody.
    p.deliver("dave@example.org", ALICE, &mdn("dave@example.org", id, "dave-mdn@example.org"));
    proxy.wait_for_log("not a recipient", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let list = queue_list(&proxy);
    assert!(list.contains("to bob@example.org: read"), "{list}");
    assert!(list.contains("to carol@example.org: delivered"), "carol did not read it: {list}");

    // Each report was handed over and recorded once.
    let reports = inbox(p.imap_port, ALICE, "secret").len();
    let log = proxy.log();
    assert_eq!(log.matches("report received").count(), reports, "{log}");
    assert_eq!(log.matches("report recorded").count(), reports - 1, "all but dave's: {log}");
}

#[test]
fn a_report_is_recorded_once_across_a_restart_and_when_it_comes_twice() {
    let p = postfix_provider();
    let extra = "[[account]]\nlogin = \"alice@example.org\"\npassword_command = \"printf secret\"\n";
    let mut proxy = proxy_with_smtp(&p, extra);
    let mut alice = login(&proxy, ALICE);
    alice.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} none)"));
    let id = "restart@example.org";
    let mut smtp = proxy.connect_smtp();
    smtp.login(ALICE, "secret");
    assert_eq!(smtp.send_message(ALICE, &[BOB], &chat_from_alice(id, BOB)).code, 250, "{}", smtp.transcript());
    smtp.command("QUIT");
    wait_until("$Delivered", Duration::from_secs(30), || {
        flags_of(&p, ALICE, "COI.Chats", id).is_some_and(|f| f.contains("$Delivered"))
    });
    drop(alice);

    // The read receipt arrives while the proxy is down; nobody logs in after the restart.
    proxy.stop();
    p.deliver(BOB, ALICE, &mdn(BOB, id, "bob-mdn@example.org"));
    proxy.restart();
    wait_until("$Read after the restart", Duration::from_secs(20), || {
        flags_of(&p, ALICE, "COI.Chats", id).is_some_and(|f| f.contains("$Read"))
    });
    // The same report again (a mail loop, a resend): recorded once all the same.
    p.deliver(BOB, ALICE, &mdn(BOB, id, "bob-mdn@example.org"));
    proxy.wait_for_log("already recorded", Duration::from_secs(10));
    proxy.restart();
    std::thread::sleep(Duration::from_secs(3));
    let log = proxy.log();
    assert_eq!(log.matches("report recorded").count(), 2, "the DSN and bob's receipt, once each: {log}");
    assert!(queue_list(&proxy).contains("to bob@example.org: read"));
}
