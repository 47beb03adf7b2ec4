//! Spam rescue: chat mail that the provider filed in its Junk folder is moved back where the
//! chat client looks (INBOX, or Chats in `active` mode). Delta Chat watches INBOX only, so a
//! chat message that Gmail or Outlook call spam is otherwise never seen.
//!
//! The worker keeps INBOX selected and in IDLE; Junk is looked at with one `STATUS (UIDNEXT
//! UIDVALIDITY)` each time the worker wakes, and at least every `[coi] junk_poll_secs` (the
//! IDLE is renewed that often): one small exchange per minute per account by default, and a
//! rescue at most that long after the provider filed the message (at once when other mail
//! wakes the worker). Only when UIDNEXT moved is Junk selected, its new messages' header fields
//! fetched and classified (`coi::classify`, as for INBOX), the chat ones moved, and INBOX
//! selected again. (NOTIFY, RFC 5465, could report Junk during IDLE, but few providers offer
//! it; STATUS works everywhere.)

use tracing::{debug, info, warn};

use super::account::{FetchItem, move_uids};
use crate::coi::classify::{self, ChatHeaders, FIELDS};
use crate::context::Context;
use crate::imap::upstream::{OwnWorkError, Upstream};
use crate::imap::wire::command;

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
                untagged.iter().find_map(|line| junk_in_list(line))
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

    /// Looks at Junk and moves its new chat messages to `target`; INBOX is selected again after.
    /// How many were rescued.
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
            untagged.iter().find_map(|r| status_item(r, "UIDNEXT")),
            untagged.iter().find_map(|r| status_item(r, "UIDVALIDITY")),
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
        let (_, status) = up.command(b"SELECT INBOX\r\n").await?;
        if !status.starts_with(b"OK") {
            return Err(OwnWorkError::Refused {
                command: "SELECT INBOX",
                status: String::from_utf8_lossy(&status).trim_end().into(),
            });
        }
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
        let (_, status) = up.command(format!("SELECT {quoted}\r\n").as_bytes()).await?;
        if !status.starts_with(b"OK") {
            warn!(junk = %self.name, "cannot select Junk: {}", String::from_utf8_lossy(&status).trim_end());
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
        if move_uids(up, &chat, target).await?.is_none() {
            return Ok(0);
        }
        for uid in &chat {
            info!(uid, from = %self.name, to = %target, "rescued a chat message from Junk");
        }
        crate::metrics::junk_rescued(chat.len());
        Ok(chat.len())
    }
}

/// The mailbox of a `* LIST (… \Junk …) "." "Name"` response.
fn junk_in_list(line: &[u8]) -> Option<String> {
    let body = line.strip_prefix(b"* ")?;
    let parsed = command::parse(&[b"x ", body].concat()).ok()?;
    if !parsed.name.eq_ignore_ascii_case("LIST") {
        return None;
    }
    let command::Arg::List(attributes) = parsed.args.first()? else { return None };
    let junk = attributes.iter().any(|a| a.astring().is_some_and(|a| a.eq_ignore_ascii_case(b"\\Junk")));
    if !junk {
        return None;
    }
    parsed.args.get(2)?.astring().map(|n| String::from_utf8_lossy(n).into_owned())
}

/// A number from a `* STATUS name (UIDNEXT n …)` response.
fn status_item(resp: &[u8], item: &str) -> Option<u32> {
    let text = String::from_utf8_lossy(resp);
    if !text.get(..9).is_some_and(|h| h.eq_ignore_ascii_case("* STATUS ")) {
        return None;
    }
    let items = &text[text.rfind('(')? + 1..];
    let mut words = items.split(|c: char| c.is_whitespace() || c == ')');
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case(item) {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_junk_in_a_list_and_numbers_in_a_status() {
        assert_eq!(junk_in_list(b"* LIST (\\HasNoChildren \\Junk) \".\" Junk\r\n").as_deref(), Some("Junk"));
        assert_eq!(junk_in_list(b"* LIST (\\Junk) \"/\" \"[Gmail]/Spam\"\r\n").as_deref(), Some("[Gmail]/Spam"));
        assert_eq!(junk_in_list(b"* LIST (\\HasNoChildren \\Trash) \".\" Trash\r\n"), None);
        assert_eq!(junk_in_list(b"* LSUB (\\Junk) \".\" Junk\r\n"), None);
        assert_eq!(junk_in_list(b"garbage"), None);
        let status = b"* STATUS Junk (UIDNEXT 17 UIDVALIDITY 1700000000)\r\n";
        assert_eq!(status_item(status, "UIDNEXT"), Some(17));
        assert_eq!(status_item(status, "uidvalidity"), Some(1_700_000_000));
        assert_eq!(status_item(b"* STATUS \"a (b\" (MESSAGES 2)\r\n", "MESSAGES"), Some(2));
        assert_eq!(status_item(b"* 3 EXISTS\r\n", "UIDNEXT"), None);
        assert_eq!(status_item(b"* STATUS Junk (UIDNEXT x)\r\n", "UIDNEXT"), None);
    }
}
