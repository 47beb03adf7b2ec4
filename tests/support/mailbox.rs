//! Helpers of the COI tests that look at mailboxes: logins through the proxy or straight at the
//! provider, message counts, flags, and the chat and mail messages they deliver.

use std::time::{Duration, Instant};

use super::imap_client::ImapClient;
use super::provider::Provider;
use super::proxy::Proxy;

pub const ALICE: &str = "alice@example.org";
pub const BOB: &str = "bob@example.org";
pub const CAROL: &str = "carol@example.org";
pub const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
pub const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";

/// A session through the proxy, logged in as `user`.
pub fn login(proxy: &Proxy, user: &str) -> ImapClient {
    let mut c = proxy.connect();
    c.login(user, "secret");
    c
}

/// A session straight at the provider, logged in as `user`.
pub fn direct(provider: &Provider, user: &str) -> ImapClient {
    let mut c = ImapClient::connect(provider.imap_port);
    c.login(user, "secret");
    c
}

/// Waits until `check` holds (panics after `timeout`); how long it took.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The number of messages in `mailbox` (STATUS MESSAGES); 0 if it does not exist.
pub fn count(c: &mut ImapClient, mailbox: &str) -> usize {
    let status = c.command(&format!("s STATUS {mailbox} (MESSAGES)"));
    let Some(line) = status.iter().find(|l| l.starts_with("* STATUS")) else { return 0 };
    let n = line.split("MESSAGES ").nth(1).unwrap().trim_end_matches(|c: char| !c.is_ascii_digit());
    n.parse().unwrap()
}

/// A chat message (Chat-Version) from bob to alice.
pub fn chat_message(id: &str) -> Vec<u8> {
    format!("From: bob@example.org\r\nTo: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <{id}>\r\nSubject: chat {id}\r\n\r\nhello\r\n").into_bytes()
}

/// An ordinary mail from bob to alice.
pub fn mail_message(id: &str) -> Vec<u8> {
    format!(
        "From: bob@example.org\r\nTo: alice@example.org\r\nMessage-ID: <{id}>\r\nSubject: mail {id}\r\n\r\nhello\r\n"
    )
    .into_bytes()
}

/// Switches COI on with `filter`.
pub fn enable(c: &mut ImapClient, filter: &str) {
    c.expect_ok(&format!("e1 SETMETADATA \"\" ({ENABLED} yes {FILTER} {filter})"));
}

/// Whether `enabled` reads `yes` in this session.
pub fn enabled(c: &mut ImapClient) -> bool {
    c.expect_ok(&format!("g GETMETADATA \"\" {ENABLED}"))[0].contains("yes")
}

/// The Message-IDs of the messages in the selected mailbox (FETCH 1:*).
pub fn message_ids(c: &mut ImapClient) -> Vec<String> {
    let lines = c.expect_ok("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])");
    lines.iter().filter_map(|l| Some(l.split_once('<')?.1.split_once('>')?.0.to_string())).collect()
}

/// The flags of the message with Message-ID `id` in `mailbox`, read straight at the provider.
pub fn flags_of(provider: &Provider, user: &str, mailbox: &str, id: &str) -> Option<String> {
    let mut c = direct(provider, user);
    if !c.command(&format!("s SELECT {mailbox}")).last()?.starts_with("s OK") {
        return None;
    }
    let search = c.expect_ok(&format!("f UID SEARCH HEADER Message-ID \"<{id}>\""));
    let uid = search.iter().find_map(|l| l.strip_prefix("* SEARCH ")?.split_whitespace().next().map(str::to_string))?;
    let fetch = c.expect_ok(&format!("g UID FETCH {uid} (FLAGS)"));
    c.command("z LOGOUT");
    fetch.iter().find(|l| l.contains("FLAGS (")).cloned()
}

/// The UID of the message with Message-ID `id` in the selected mailbox.
pub fn uid_of(c: &mut ImapClient, id: &str) -> String {
    let search = c.expect_ok(&format!("f UID SEARCH HEADER Message-ID \"<{id}>\""));
    search
        .iter()
        .find_map(|l| l.strip_prefix("* SEARCH ")?.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| panic!("no message <{id}>: {search:?}"))
}
