//! Chat copies, read receipts for plain clients and delivery receipts (issue 4 parts 5–7)
//! against a real Dovecot; the delivery receipts with a real Postfix issuing DSNs.

mod support;

use std::time::Duration;

use support::imap_client::ImapClient;
use support::mailbox::{ALICE, BOB, ENABLED, FILTER, flags_of, uid_of, wait_until};
use support::provider::{Provider, ProviderOptions};
use support::receipts::{chat_from_alice, has, mdns_about, proxy_with_smtp, queue_list};
use support::smtp_client::{inbox, wait_for_inbox};

#[test]
fn read_receipt_for_a_plain_client_exactly_once() {
    let provider = Provider::start();
    let proxy = proxy_with_smtp(&provider, "[[account]]\nlogin = \"bob@example.org\"\nread_receipts = true\n");
    // Read before read receipts started: no receipt, ever.
    provider.deliver(ALICE, BOB, &chat_from_alice("old@example.org", BOB));
    let mut direct = ImapClient::connect(provider.imap_port);
    direct.login(BOB, "secret");
    direct.expect_ok("s SELECT INBOX");
    direct.expect_ok("t STORE 1 +FLAGS (\\Seen)");
    direct.command("z LOGOUT");

    let mut bob = proxy.connect();
    bob.login(BOB, "secret");
    proxy.wait_for_log("read receipts start now", Duration::from_secs(10));
    assert!(flags_of(&provider, BOB, "INBOX", "old@example.org").unwrap().contains("$MDNSent"));

    provider.deliver(ALICE, BOB, &chat_from_alice("new@example.org", BOB));
    // An ordinary message asking for a receipt is the plain client's own business.
    provider.deliver(
        ALICE,
        BOB,
        b"From: alice@example.org\r\nTo: bob@example.org\r\nMessage-ID: <mail@example.org>\r\nDisposition-Notification-To: alice@example.org\r\n\r\nhi\r\n",
    );
    bob.expect_ok("s SELECT INBOX");
    let uid = uid_of(&mut bob, "new@example.org");
    let mail = uid_of(&mut bob, "mail@example.org");
    bob.expect_ok(&format!("t UID STORE {uid},{mail} +FLAGS (\\Seen)"));

    let alice = wait_for_inbox(provider.imap_port, ALICE, "secret", Duration::from_secs(20), |m| {
        mdns_about(m, "new@example.org") > 0
    });
    let mdn = alice.iter().find(|m| has(m, "Original-Message-ID: <new@example.org>")).unwrap();
    let text = String::from_utf8_lossy(mdn);
    for needle in [
        "From: <bob@example.org>",
        "Subject: Chat: Read receipt",
        "Chat-Version: 1.0",
        "Auto-Submitted: auto-replied",
        "Content-Type: multipart/report; report-type=disposition-notification;",
        "Content-Type: message/disposition-notification",
        "Disposition: manual-action/MDN-sent-automatically; displayed",
        "Final-Recipient: rfc822;bob@example.org",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert!(!text.contains("hello new@example.org"), "no copy of the original:\n{text}");
    wait_until("$MDNSent on the original", Duration::from_secs(10), || {
        flags_of(&provider, BOB, "INBOX", "new@example.org").is_some_and(|f| f.contains("$MDNSent"))
    });

    // Unseen and seen again, from another plain session: still one receipt.
    bob.expect_ok(&format!("u UID STORE {uid} -FLAGS (\\Seen $MDNSent)"));
    bob.expect_ok(&format!("v UID STORE {uid} +FLAGS (\\Seen)"));
    let mut other = proxy.connect();
    other.login(BOB, "secret");
    other.expect_ok("s SELECT INBOX");
    other.expect_ok(&format!("w UID STORE {uid} +FLAGS (\\Seen)"));
    wait_until("$MDNSent again", Duration::from_secs(10), || {
        flags_of(&provider, BOB, "INBOX", "new@example.org").is_some_and(|f| f.contains("$MDNSent"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let alice = inbox(provider.imap_port, ALICE, "secret");
    assert_eq!(mdns_about(&alice, "new@example.org"), 1, "exactly one receipt");
    assert_eq!(mdns_about(&alice, "old@example.org"), 0, "none for what was read before");
    assert_eq!(mdns_about(&alice, "mail@example.org"), 0, "none for ordinary mail");
    assert!(!flags_of(&provider, BOB, "INBOX", "mail@example.org").unwrap().contains("$MDNSent"));

    // A chat client sends its own receipts: its `\Seen` gets `$MDNSent` and no receipt.
    provider.deliver(ALICE, BOB, &chat_from_alice("dc@example.org", BOB));
    let mut dc = proxy.connect();
    dc.expect_ok("i ID (\"name\" \"Delta Chat\")");
    dc.login(BOB, "secret");
    dc.expect_ok("s SELECT INBOX");
    let uid = uid_of(&mut dc, "dc@example.org");
    dc.expect_ok(&format!("t UID STORE {uid} +FLAGS (\\Seen)"));
    wait_until("$MDNSent after the chat client read it", Duration::from_secs(10), || {
        flags_of(&provider, BOB, "INBOX", "dc@example.org").is_some_and(|f| f.contains("$MDNSent"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mdns_about(&inbox(provider.imap_port, ALICE, "secret"), "dc@example.org"), 0);
}

#[test]
fn chat_copy_delivery_and_read_ticks_with_postfix() {
    if !std::path::Path::new("/usr/sbin/postfix").exists() {
        panic!("Postfix is needed for DSNs: tests/setup-debian.sh installs it");
    }
    let provider = Provider::start_with(ProviderOptions { postfix: true, ..Default::default() });
    let proxy = proxy_with_smtp(&provider, "[[account]]\nlogin = \"bob@example.org\"\nread_receipts = true\n");

    let mut alice = proxy.connect();
    alice.login(ALICE, "secret");
    alice.expect_ok(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} none)"));
    let mut bob = proxy.connect();
    bob.login(BOB, "secret");
    proxy.wait_for_log("read receipts start now", Duration::from_secs(10));

    let mut smtp = proxy.connect_smtp();
    smtp.login(ALICE, "secret");
    let id = "tick@example.org";
    assert_eq!(smtp.send_message(ALICE, &[BOB], &chat_from_alice(id, BOB)).code, 250, "{}", smtp.transcript());
    smtp.command("QUIT");

    // The copy in Chats, seen, once; `$Delivered` from Postfix's DSN.
    wait_until("$Delivered on the copy in COI.Chats", Duration::from_secs(30), || {
        flags_of(&provider, ALICE, "COI.Chats", id).is_some_and(|f| f.contains("$Delivered"))
    });
    let flags = flags_of(&provider, ALICE, "COI.Chats", id).unwrap();
    assert!(flags.contains("\\Seen"), "{flags}");
    let mut direct = ImapClient::connect(provider.imap_port);
    direct.login(ALICE, "secret");
    direct.expect_ok("s SELECT COI.Chats");
    let found = direct.expect_ok(&format!("f UID SEARCH HEADER Message-ID \"<{id}>\""));
    assert_eq!(found.iter().find(|l| l.starts_with("* SEARCH")).unwrap().split_whitespace().count(), 3, "one copy");
    let list = queue_list(&proxy);
    assert!(list.contains(&format!("<{id}>  account alice@example.org")), "{list}");
    assert!(list.contains("to bob@example.org: delivered"), "{list}");

    // Bob reads it in a plain client; his proxy's receipt makes it `$Read` at alice's.
    bob.expect_ok("s SELECT INBOX");
    let uid = uid_of(&mut bob, id);
    bob.expect_ok(&format!("t UID STORE {uid} +FLAGS (\\Seen)"));
    wait_until("$Read on the copy", Duration::from_secs(30), || {
        flags_of(&provider, ALICE, "COI.Chats", id).is_some_and(|f| f.contains("$Read"))
    });
    let list = queue_list(&proxy);
    assert!(list.contains("to bob@example.org: read"), "{list}");
}
