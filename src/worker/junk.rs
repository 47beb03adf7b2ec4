//! Spam rescue: chat mail that the provider filed in its Junk folder is moved back where the
//! chat client looks (INBOX, or Chats in `active` mode). Delta Chat watches INBOX only, so a
//! chat message that Gmail or Outlook call spam is otherwise never seen.
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
        let rescued = self.rescue(shared, login, up, &quoted, target).await;
        // Back to INBOX, whatever happened in Junk.
        let watch = if up.profile().examine_uids_stable { "EXAMINE" } else { "SELECT" };
        open_inbox(up, watch).await?;
        self.next_uid = uidnext;
        rescued
    }

    async fn rescue(
        &mut self,
        shared: &Context,
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
            let headers = ChatHeaders::parse(&item.header);
            if classify::is_chat(&headers, |id| shared.store.is_chat_id(login, id).unwrap_or(false)) {
                chat.push(item.uid);
            }
        }
        if chat.is_empty() {
            return Ok(0);
        }
        if stable && !self.open(up, quoted, "SELECT").await? {
            return Ok(0);
        }
        let plan = MovePlan::new(up.profile().move_strategy, &chat, target, &[])?;
        let (outcome, _) = run_plan(up, plan).await?;
        if !outcome.pending.is_empty() {
            info!(
                count = outcome.pending.len(),
                junk = %self.name,
                "rescued chat messages were copied but wait in Junk, flagged \\Deleted: the user keeps \\Deleted \
                 messages there and the provider has no UIDPLUS"
            );
        }
        for uid in &chat {
            info!(uid, from = %self.name, to = %target, "rescued a chat message from Junk");
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
