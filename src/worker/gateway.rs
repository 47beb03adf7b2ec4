//! The OpenPGP gateway's part of the account worker: each new INBOX message of an account that
//! has a key goes to `openpgp::incoming` (SecureJoin steps answered, Autocrypt and gossip
//! learnt), with no client connected too; what it answers is queued for the account's relay.
//! Encrypted messages are fetched whole (up to the size the wing decrypts), others by header.

use tracing::warn;

use crate::context::Context;
use crate::imap::upstream::{OwnWorkError, Upstream};
use crate::imap::wire::response::uid_set;
use crate::openpgp::commands;
use crate::openpgp::decrypt::MAX_MESSAGE;
use crate::openpgp::identity::Identity;
use crate::openpgp::incoming::{self, Handled};

/// Header fields the gateway reads of every new message.
const FIELDS: &str = "FROM DATE AUTOCRYPT CONTENT-TYPE";

/// Whether the account takes part in the gateway: it has a key (made by `key export`,
/// `invite`, `join`, or its first message through the proxy's SMTP).
pub fn wanted(identity: Option<&Identity>, login: &str) -> bool {
    identity.is_some_and(|i| i.store().has_account_key(login).unwrap_or(false))
}

/// Handles the new messages `uids` of INBOX; returns the UIDs that were SecureJoin messages.
pub async fn on_new(
    shared: &Context,
    identity: &Identity,
    up: &mut Upstream,
    login: &str,
    uids: &[u32],
) -> Result<Vec<u32>, OwnWorkError> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let cmd = format!("UID FETCH {} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({FIELDS})])\r\n", uid_set(uids));
    let (untagged, _) = up.command(cmd.as_bytes()).await?;
    let mut handshakes = Vec::new();
    for resp in &untagged {
        let Some(item) = super::account::FetchItem::parse(resp) else { continue };
        if !uids.contains(&item.uid) {
            continue;
        }
        let message = if incoming::is_encrypted(&item.header) {
            if size_of(resp).is_some_and(|s| s > MAX_MESSAGE) {
                continue;
            }
            let (body, _) = up.command(format!("UID FETCH {} (UID BODY.PEEK[])\r\n", item.uid).as_bytes()).await?;
            match body.iter().find_map(|r| super::account::FetchItem::parse(r).filter(|i| i.uid == item.uid)) {
                Some(full) => full.header,
                None => continue,
            }
        } else {
            item.header
        };
        let (id, who) = (identity.clone(), login.to_string());
        let now = crate::clock::now();
        let handled = tokio::task::spawn_blocking(move || incoming::handle(&id, &who, &message, now)).await;
        let handled: Handled = match handled {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                warn!("OpenPGP gateway: {e}");
                continue;
            }
            Err(e) => {
                warn!("OpenPGP gateway task failed: {e}");
                continue;
            }
        };
        if handled.handshake {
            handshakes.push(item.uid);
        }
        let give_up = shared.config().queue.give_up_after_secs;
        for send in handled.send {
            let (id, who) = (identity.clone(), login.to_string());
            let queued =
                tokio::task::spawn_blocking(move || commands::queue(&id, &who, &send, crate::clock::now(), give_up))
                    .await;
            match queued {
                Ok(Ok(qid)) => shared.queue.wake(qid, login.to_string()),
                Ok(Err(e)) => warn!("cannot queue a SecureJoin answer: {e}"),
                Err(e) => warn!("cannot queue a SecureJoin answer: {e}"),
            }
        }
    }
    Ok(handshakes)
}

/// `RFC822.SIZE n` of a FETCH response.
fn size_of(resp: &[u8]) -> Option<usize> {
    let head = String::from_utf8_lossy(&resp[..resp.len().min(200)]).to_ascii_uppercase();
    let at = head.find("RFC822.SIZE ")? + 12;
    head[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_is_read_from_the_fetch_response() {
        assert_eq!(
            super::size_of(b"* 1 FETCH (UID 4 RFC822.SIZE 1234 BODY[HEADER.FIELDS (FROM)] {2}\r\n\r\n)"),
            Some(1234)
        );
        assert_eq!(super::size_of(b"* 1 FETCH (UID 4)"), None);
    }
}
