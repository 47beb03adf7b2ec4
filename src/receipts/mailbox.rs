//! The mailboxes receipts work in, found on the provider: the Sent folder, a message by its
//! Message-ID (`<root>/Chats` is named by the COI wing and handed in). Through [`ProviderCommands`], so that any provider connection
//! (the receipts agent's, the queue's) can carry them.

use crate::imap::wire::command;
use crate::imap::wire::provider::{ProviderCommands, ProviderError};
use crate::imap::wire::response::search_uids;

const CAPTURE_LIST: &[&[u8]] = &[b"* LIST "];
const CAPTURE_SEARCH: &[&[u8]] = &[b"* SEARCH"];

/// The Sent folder: the one with `\Sent` (RFC 6154), else one named `Sent`.
pub async fn sent_folder(provider: &mut impl ProviderCommands) -> Result<Option<String>, ProviderError> {
    let reply = provider.run(b"LIST \"\" \"*\"\r\n", CAPTURE_LIST).await?;
    let mut named = None;
    for resp in &reply.untagged {
        let Ok(cmd) = command::parse(&[b"x ", resp.strip_prefix(b"* ").unwrap_or(resp)].concat()) else { continue };
        let (Some(command::Arg::List(attrs)), Some(name)) =
            (cmd.args.first(), cmd.args.get(2).and_then(|a| a.astring()))
        else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if attrs.iter().any(|a| a.astring().is_some_and(|a| a.eq_ignore_ascii_case(b"\\Sent"))) {
            return Ok(Some(name));
        }
        if name.eq_ignore_ascii_case("Sent") {
            named = Some(name);
        }
    }
    Ok(named)
}

fn quoted(mailbox: &str) -> String {
    String::from_utf8_lossy(&command::astring(mailbox.as_bytes(), false)).into_owned()
}

/// Selects `mailbox`; `false` if it does not exist.
pub async fn select(provider: &mut impl ProviderCommands, mailbox: &str) -> Result<bool, ProviderError> {
    let reply = provider.run(format!("SELECT {}\r\n", quoted(mailbox)).as_bytes(), &[]).await?;
    Ok(reply.ok())
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
