//! Delta Chat on any provider (a wing): what Delta Chat reads from a chatmail relay, served by
//! the proxy. Delta Chat registers a device token for push only with a server that advertises
//! `XDELTAPUSH` (or answers `/shared/vendor/deltachat/maxsmtprecipients`); the proxy does both,
//! keeps the tokens itself (never at the provider), and when the account worker sees new mail
//! that the user did not send, POSTs each token to Delta Chat's notification service, which
//! wakes the phone.
//!
//! - `entries`: the METADATA side (the server's entries, the device tokens), plugged into the
//!   COI interceptor by the session;
//! - `schedule`: when to notify which device (retries, coalescing), sans-I/O;
//! - `notifier`: the task that does it over HTTP, started by `app`.
//!
//! Tokens live in the local store (`store::deltachat`) and are secrets: they never reach a log.

pub mod entries;
pub mod notifier;
pub mod schedule;

use crate::config::Config;
use crate::secret::Secret;
use crate::store::Store;

/// The capability added after login while push is on.
pub const CAPABILITY: &str = "XDELTAPUSH";
/// Where Delta Chat sets its device token (on INBOX).
pub const DEVICE_TOKEN: &str = "/private/devicetoken";
/// The server entries of Delta Chat's own, all answered by the proxy.
pub const VENDOR_SUBTREE: &str = "/shared/vendor/deltachat";
pub const MAX_SMTP_RECIPIENTS: &str = "/shared/vendor/deltachat/maxsmtprecipients";
pub const COMMENT: &str = "/shared/comment";
pub const ADMIN: &str = "/shared/admin";
/// A token not set again for this long is dropped (as chatmail's relay does).
pub const TOKEN_MAX_AGE: u64 = 90 * 24 * 60 * 60;
/// Devices per account; setting one more drops the least recently set.
pub const TOKENS_PER_ACCOUNT: usize = 16;
/// Longest token accepted (Delta Chat sends none longer).
pub const MAX_TOKEN: usize = 4096;

/// `XDELTAPUSH` while push is on.
pub fn capability(config: &Config) -> Option<&'static str> {
    config.deltachat.push().then_some(CAPABILITY)
}

/// The account's device tokens (an unreadable store counts as none).
pub fn tokens(store: &Store, login: &str) -> Vec<Secret> {
    store.dc_tokens(login, crate::clock::now_unsigned(), TOKEN_MAX_AGE).unwrap_or_else(|e| {
        tracing::warn!("cannot read Delta Chat device tokens: {e}");
        Vec::new()
    })
}

/// Whether `login` needs its account worker for Delta Chat push: push is on and a device is
/// registered.
pub fn wanted(store: &Store, config: &Config, login: &str) -> bool {
    config.deltachat.push() && !tokens(store, login).is_empty()
}

/// The account worker saw new INBOX messages (UID and header fields, `From` among them): the
/// newest one the user did not send, whose arrival wakes the account's devices (one
/// notification covers them all: a woken device fetches everything new). `None` while push is
/// off or when the user sent all of them.
pub fn news_for_devices<'a>(
    config: &Config,
    login: &str,
    messages: impl IntoIterator<Item = (u32, &'a [u8])>,
) -> Option<u32> {
    if !config.deltachat.push() {
        return None;
    }
    messages.into_iter().filter(|(_, header)| !sent_by(header, login)).map(|(uid, _)| uid).max()
}

/// Whether a message with these header fields was sent by `login` itself (its own copy, which
/// must not wake its own phone): the `From` address is the login, or for a login without a
/// domain, its local part.
fn sent_by(header: &[u8], login: &str) -> bool {
    let from = crate::mail::fields(header)
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("from"))
        .and_then(|(_, value)| crate::mail::address(&value));
    let Some(from) = from else { return false };
    if login.contains('@') {
        from.eq_ignore_ascii_case(login)
    } else {
        from.split('@').next().is_some_and(|local| local.eq_ignore_ascii_case(login))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_message_not_sent_by_the_user_wakes_the_devices() {
        let config = Config::defaults();
        let mail: [(u32, &[u8]); 3] =
            [(7, b"From: bob@x\r\n\r\n"), (9, b"From: carol@x\r\n\r\n"), (11, b"From: alice@x\r\n\r\n")];
        assert_eq!(news_for_devices(&config, "alice@x", mail), Some(9));
        assert_eq!(news_for_devices(&config, "alice@x", [mail[2]]), None, "own copy: no wake-up");
    }

    #[test]
    fn own_mail_is_told_apart_by_its_from_address() {
        assert!(sent_by(b"From: Alice <Alice@Example.org>\r\nTo: bob@x\r\n\r\n", "alice@example.org"));
        assert!(!sent_by(b"From: bob@example.org\r\n\r\n", "alice@example.org"));
        assert!(!sent_by(b"Subject: no sender\r\n\r\n", "alice@example.org"), "unknown: notify");
        assert!(sent_by(b"From: alice@example.org\r\n\r\n", "alice"));
        assert!(!sent_by(b"From: alice2@example.org\r\n\r\n", "alice"));
    }
}
