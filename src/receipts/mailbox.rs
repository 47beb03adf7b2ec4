//! The mailboxes receipts work in, found on the provider: the Sent folder, a message by its
//! Message-ID (`<root>/Chats` is named by the COI wing and handed in). Through [`ProviderCommands`], so that any provider connection
//! (the receipts agent's, the queue's) can carry them.

use crate::imap::wire::command;
use crate::imap::wire::provider::{ProviderCommands, ProviderError};
use crate::imap::wire::response::{response_code_number, search_uids};

const CAPTURE_SEARCH: &[&[u8]] = &[b"* SEARCH"];

/// Lists every mailbox, for [`sent_in`].
pub const LIST_ALL: &[u8] = b"LIST \"\" \"*\"\r\n";
pub const CAPTURE_LIST: &[&[u8]] = &[b"* LIST "];

/// The Sent folder among the `* LIST` responses: the one with `\Sent` (RFC 6154), else one
/// named `Sent`.
pub fn sent_in(list: &[Vec<u8>]) -> Option<String> {
    let mut named = None;
    for resp in list {
        let Ok(cmd) = command::parse(&[b"x ", resp.strip_prefix(b"* ").unwrap_or(resp)].concat()) else { continue };
        let (Some(command::Arg::List(attrs)), Some(name)) =
            (cmd.args.first(), cmd.args.get(2).and_then(|a| a.astring()))
        else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if attrs.iter().any(|a| a.astring().is_some_and(|a| a.eq_ignore_ascii_case(b"\\Sent"))) {
            return Some(name);
        }
        if name.eq_ignore_ascii_case("Sent") {
            named = Some(name);
        }
    }
    named
}

fn quoted(mailbox: &str) -> String {
    String::from_utf8_lossy(&command::astring(mailbox.as_bytes(), false)).into_owned()
}

/// Selects `mailbox`; `false` if it does not exist.
pub async fn select(provider: &mut impl ProviderCommands, mailbox: &str) -> Result<bool, ProviderError> {
    let reply = provider.run(format!("SELECT {}\r\n", quoted(mailbox)).as_bytes(), &[]).await?;
    Ok(reply.ok())
}

/// SELECTs `mailbox`: whether it could be, and its UIDVALIDITY if the provider said it.
pub async fn select_uidvalidity(
    provider: &mut impl ProviderCommands,
    mailbox: &str,
) -> Result<(bool, Option<u32>), ProviderError> {
    let reply = provider.run(format!("SELECT {}\r\n", quoted(mailbox)).as_bytes(), &[b"* OK [UIDVALIDITY "]).await?;
    let uidvalidity = reply.untagged.iter().find_map(|r| response_code_number(r, "UIDVALIDITY"));
    Ok((reply.ok(), uidvalidity))
}

/// The UIDs of the messages in `mailbox` with Message-ID `<id>` (none if it does not exist).
pub async fn search_message_id(
    provider: &mut impl ProviderCommands,
    mailbox: &str,
    id: &str,
) -> Result<Vec<u32>, ProviderError> {
    if !select(provider, mailbox).await? {
        return Ok(Vec::new());
    }
    let id = id.replace(['"', '\\', '\r', '\n'], "");
    let command = format!("UID SEARCH HEADER Message-ID \"<{id}>\"\r\n");
    let reply = provider.run(command.as_bytes(), CAPTURE_SEARCH).await?;
    Ok(reply.untagged.iter().flat_map(|r| search_uids(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sent_folder() {
        let list = |lines: &[&str]| lines.iter().map(|l| l.as_bytes().to_vec()).collect::<Vec<_>>();
        let special = list(&["* LIST () \".\" Sent\r\n", "* LIST (\\Sent) \".\" \"Gesendet\"\r\n"]);
        assert_eq!(sent_in(&special).as_deref(), Some("Gesendet"));
        assert_eq!(sent_in(&list(&["* LIST () \"/\" sent\r\n"])).as_deref(), Some("sent"));
        assert_eq!(sent_in(&list(&["* LIST () \"/\" INBOX\r\n"])), None);
    }
}
