//! Spam rescue: chat mail that the provider filed in its Junk folder is moved back where the
//! chat client looks (INBOX, or Chats in `active` mode). Delta Chat watches INBOX only, so a
//! chat message that Gmail or Outlook call spam is otherwise never seen. Chat mail is what
//! `coi::classify` says (a `Chat-Version` header, or a reply to a known chat), and any mail
//! whose `From` is a verified contact of the account (SecureJoin, or gossip from one: the
//! OpenPGP gateway's peer store). The `From` is not checked against a signature here (the
//! worker reads header fields only): a spammer who knows whom the user verified can have one
//! message rescued per forged sender, as with a reply to a known chat.
//!
//! The worker keeps INBOX open (EXAMINEd, see `account`) and in IDLE; Junk is looked at with one
//! `STATUS (UIDNEXT UIDVALIDITY)` each time the worker wakes, and at least every `[coi]
//! junk_poll_secs` (the IDLE is renewed that often): one small exchange per minute per account
//! by default, and a rescue at most that long after the provider filed the message (at once
//! when other mail wakes the worker). Only when UIDNEXT moved is Junk EXAMINEd, its new
//! messages' header fields fetched and classified (`coi::classify`, as for INBOX); only when
//! some are chat mail is it SELECTed, to move them the provider profile's way (`MovePlan`).
//! Then INBOX is opened again as the worker watches it. (Where UIDs change between EXAMINE and
//! SELECT, imap4d, Junk is SELECTed at once.) (NOTIFY, RFC 5465, could report Junk during IDLE,
//! but few providers offer it; STATUS works everywhere.)

use tracing::{debug, info, warn};

use super::account::{FetchItem, open_inbox, run_plan};
use crate::coi::classify::{self, ChatHeaders, FIELDS};
use crate::context::Context;
use crate::imap::upstream::{OwnWorkError, Upstream};
use crate::imap::wire::command;
use crate::imap::wire::response::{list_mailbox_with, status_number};
use crate::openpgp::identity::Identity;
use crate::provider_profile::move_plan::MovePlan;

/// On the first look, at most this many of Junk's newest messages are classified.
const FIRST_LOOK: u32 = 200;

/// The worker's view of the provider's Junk folder.
pub(super) struct Junk {
    name: String,
    /// Junk's UIDVALIDITY when last looked at (0: not yet).
    uidvalidity: u32,
    /// The next UID not yet classified.
    next_uid: u32,
}

impl Junk {
    /// The Junk folder to watch: `[coi] junk_folder`, else the one marked `\Junk`; `None` when
    /// rescue is off or the provider has none.
    pub(super) async fn find(shared: &Context, up: &mut Upstream) -> Result<Option<Junk>, OwnWorkError> {
        let config = shared.config();
        if !config.coi.rescue_junk {
            return Ok(None);
        }
        let name = match &config.coi.junk_folder {
            Some(name) => Some(name.clone()),
            None => {
                let list: &[u8] = if up.has("SPECIAL-USE") || up.has("LIST-EXTENDED") {
                    b"LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n"
                } else {
                    b"LIST \"\" \"*\"\r\n"
                };
                let (untagged, _) = up.command(list).await?;
                untagged.iter().find_map(|line| list_mailbox_with(line, "\\Junk"))
            }
        };
        match name {
            Some(name) => {
                info!(junk = %name, "watching Junk for chat mail");
                Ok(Some(Junk { name, uidvalidity: 0, next_uid: 1 }))
            }
            None => {
                debug!("the provider has no Junk folder (set [coi] junk_folder if it has one)");
                Ok(None)
            }
        }
    }

    /// Looks at Junk and moves its new chat messages to `target`; INBOX is opened again after,
    /// EXAMINEd (or SELECTed where the profile watches it so). How many were rescued.
    pub(super) async fn check(
        &mut self,
        shared: &Context,
        identity: Option<&Identity>,
        login: &str,
        up: &mut Upstream,
        target: &str,
    ) -> Result<usize, OwnWorkError> {
        let quoted = String::from_utf8_lossy(&command::astring(self.name.as_bytes(), false)).into_owned();
        let (untagged, status) = up.command(format!("STATUS {quoted} (UIDNEXT UIDVALIDITY)\r\n").as_bytes()).await?;
        if !status.starts_with(b"OK") {
            warn!(junk = %self.name, "cannot look at Junk: {}", String::from_utf8_lossy(&status).trim_end());
            return Ok(0);
        }
        let (Some(uidnext), Some(uidvalidity)) = (
            untagged.iter().find_map(|r| status_number(r, "UIDNEXT")),
            untagged.iter().find_map(|r| status_number(r, "UIDVALIDITY")),
        ) else {
            return Ok(0);
        };
        if uidvalidity != self.uidvalidity {
            self.uidvalidity = uidvalidity;
            self.next_uid = uidnext.saturating_sub(FIRST_LOOK).max(1);
        }
        if uidnext <= self.next_uid {
            return Ok(0);
        }
        let rescued = self.rescue(shared, identity, login, up, &quoted, target).await;
        // Back to INBOX, whatever happened in Junk.
        let watch = if up.profile().examine_uids_stable { "EXAMINE" } else { "SELECT" };
        open_inbox(up, watch).await?;
        self.next_uid = uidnext;
        rescued
    }

    async fn rescue(
        &mut self,
        shared: &Context,
        identity: Option<&Identity>,
        login: &str,
        up: &mut Upstream,
        quoted: &str,
        target: &str,
    ) -> Result<usize, OwnWorkError> {
        // Read-only while looking: a SELECT would take the `\Recent` flags of the user's clients.
        let stable = up.profile().examine_uids_stable;
        if !self.open(up, quoted, if stable { "EXAMINE" } else { "SELECT" }).await? {
            return Ok(0);
        }
        let cmd = format!("UID FETCH {}:* (UID FLAGS BODY.PEEK[HEADER.FIELDS ({FIELDS})])\r\n", self.next_uid);
        let (untagged, _) = up.command(cmd.as_bytes()).await?;
        let mut chat = Vec::new();
        for item in untagged.iter().filter_map(|r| FetchItem::parse(r)) {
            if item.uid < self.next_uid {
                continue;
            }
            let is_chat =
                |h: &ChatHeaders| classify::is_chat(h, |id| shared.store.is_chat_id(login, id).unwrap_or(false));
            let verified = |addr: &str| {
                identity.is_some_and(|i| i.peer(login, addr).ok().flatten().is_some_and(|p| p.verified.is_some()))
            };
            if let Some(why) = why_rescue(&item.header, is_chat, verified) {
                chat.push((item.uid, why));
            }
        }
        if chat.is_empty() {
            return Ok(0);
        }
        if stable && !self.open(up, quoted, "SELECT").await? {
            return Ok(0);
        }
        let uids: Vec<u32> = chat.iter().map(|c| c.0).collect();
        let plan = MovePlan::new(up.profile().move_strategy, &uids, target, &[])?;
        // With a cluster the COPY of a provider without MOVE is fenced like INBOX's moves.
        let fence = match &shared.cluster {
            Some(cluster) => {
                let token = cluster.owned().borrow().get(login).copied();
                let token = token.ok_or(crate::context::ClusterError::Fenced)?;
                Some((login, super::account::Fence { cluster: cluster.as_ref(), token }))
            }
            None => None,
        };
        let (outcome, _) = run_plan(up, plan, fence).await?;
        if !outcome.pending.is_empty() {
            info!(
                count = outcome.pending.len(),
                junk = %self.name,
                "rescued chat messages were copied but wait in Junk, flagged \\Deleted: the user keeps \\Deleted \
                 messages there and the provider has no UIDPLUS"
            );
        }
        for (uid, why) in &chat {
            info!(uid, from = %self.name, to = %target, why = why.as_str(), "rescued a message from Junk");
        }
        crate::metrics::junk_rescued(chat.len());
        Ok(chat.len())
    }

    /// EXAMINEs or SELECTs Junk; `false` (said in the log) when the provider refuses.
    async fn open(&self, up: &mut Upstream, quoted: &str, how: &str) -> Result<bool, OwnWorkError> {
        let (_, status) = up.command(format!("{how} {quoted}\r\n").as_bytes()).await?;
        if !status.starts_with(b"OK") {
            warn!(junk = %self.name, "cannot open Junk ({how}): {}", String::from_utf8_lossy(&status).trim_end());
        }
        Ok(status.starts_with(b"OK"))
    }
}

/// Why a message in Junk is rescued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Chat mail (`coi::classify`).
    Chat,
    /// Its `From` is a verified contact of the account.
    VerifiedPeer,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Chat => "chat mail",
            Why::VerifiedPeer => "from a verified contact",
        }
    }
}

/// Whether the message with these header fields leaves Junk: chat mail (`is_chat`), or mail
/// whose `From` address `verified` says is a verified contact. `None`: it stays.
fn why_rescue(
    header: &[u8],
    is_chat: impl FnOnce(&ChatHeaders) -> bool,
    verified: impl FnOnce(&str) -> bool,
) -> Option<Why> {
    if is_chat(&ChatHeaders::parse(header)) {
        return Some(Why::Chat);
    }
    let from = crate::mail::fields(header)
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("from"))
        .and_then(|(_, value)| crate::mail::address(&value))?;
    verified(&from).then_some(Why::VerifiedPeer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &[u8] = b"Chat-Version: 1.0\r\nFrom: Spam <spam@example.net>\r\n\r\n";
    const PLAIN: &[u8] = b"Subject: hi\r\nFrom: \"Bob B.\" <Bob@Example.net>\r\n\r\n";

    fn classify(h: &ChatHeaders) -> bool {
        h.chat_version
    }

    #[test]
    fn chat_mail_and_mail_from_verified_contacts_leave_junk() {
        assert_eq!(why_rescue(CHAT, classify, |_| false), Some(Why::Chat));
        // The address as the store keys it is the peer store's to canonicalise: it gets the
        // address as written.
        let mut asked = String::new();
        assert_eq!(
            why_rescue(PLAIN, classify, |a| {
                asked = a.to_string();
                true
            }),
            Some(Why::VerifiedPeer)
        );
        assert!(asked.eq_ignore_ascii_case("bob@example.net"), "{asked}");
        assert_eq!(why_rescue(PLAIN, classify, |_| false), None, "a known but unverified sender stays");
        assert_eq!(why_rescue(b"Subject: no sender\r\n\r\n", classify, |_| true), None, "no From: stays");
        assert_eq!(why_rescue(b"From: not an address\r\n\r\n", classify, |_| true), None);
    }
}
