//! Chat over IMAP server emulation: METADATA configuration, chat folders, chat detection, and
//! the account worker that filters incoming chat messages.

pub mod classify;
pub mod folders;
pub mod hub;
pub mod metadata;
pub mod receipts;
pub mod session;
pub mod worker;

use crate::imap::upstream::{Upstream, UpstreamError};
use crate::server::Shared;
use hub::Account;
use metadata::{CoiConfig, ENABLED, MESSAGE_FILTER};

/// Reads an account's COI configuration at login (from the provider's METADATA, else the local
/// store) and publishes it to the account's sessions and worker.
pub async fn load_config(
    shared: &Shared,
    account: &Account,
    upstream: &mut Upstream,
) -> Result<CoiConfig, UpstreamError> {
    let config = if upstream.has("METADATA") {
        let (untagged, _) =
            upstream.command(format!("GETMETADATA \"\" ({ENABLED} {MESSAGE_FILTER})\r\n").as_bytes()).await?;
        worker::config_from(&untagged)
    } else {
        let entries = shared.store.metadata_entries(&account.login, b"").unwrap_or_default();
        CoiConfig::from_values(entries.get(ENABLED).map(Vec::as_slice), entries.get(MESSAGE_FILTER).map(Vec::as_slice))
    };
    account.set_config(config);
    Ok(config)
}
