//! Chat over IMAP server emulation (a wing): the COI configuration as METADATA entries, the chat
//! folders, chat detection, and the interceptor that serves a client session's COI commands.
//! The account worker that filters incoming chat messages is an edge (`worker`) built on these.

pub mod classify;
pub mod folders;
pub mod metadata;
pub mod session;

use tracing::warn;

use crate::account::{Account, CoiConfig};
use crate::imap::wire::provider::{ProviderCommands, ProviderError};
use crate::store::Store;
use metadata::{ENABLED, MESSAGE_FILTER};

const CAPTURE_METADATA: &[&[u8]] = &[b"* METADATA "];

/// Reads an account's COI configuration (from the provider's METADATA when it has it, else the
/// local store) and publishes it to the account's sessions and worker.
pub async fn load_config(
    provider: &mut impl ProviderCommands,
    provider_metadata: bool,
    store: &Store,
    account: &Account,
) -> Result<CoiConfig, ProviderError> {
    let config = match provider_metadata {
        true => config_at_provider(provider).await?,
        false => stored_config(store, &account.login),
    };
    account.set_config(config);
    Ok(config)
}

/// The configuration as the provider's METADATA has it.
pub async fn config_at_provider(provider: &mut impl ProviderCommands) -> Result<CoiConfig, ProviderError> {
    let command = format!("GETMETADATA \"\" ({ENABLED} {MESSAGE_FILTER})\r\n");
    let reply = provider.run(command.as_bytes(), CAPTURE_METADATA).await?;
    Ok(metadata::config_from_responses(&reply.untagged))
}

/// The configuration as the local store has it (for a provider without METADATA); the
/// defaults if the store cannot be read. Reads the two entries only: the account's other
/// entries may be many and large (1000 × 64 KiB), and every login asks (issue 23: reading them
/// all made each login hold the account's whole METADATA for a moment).
pub fn stored_config(store: &Store, login: &str) -> CoiConfig {
    let read = |entry| store.metadata_value(login, b"", entry);
    match (read(ENABLED), read(MESSAGE_FILTER)) {
        (Ok(enabled), Ok(filter)) => CoiConfig::from_values(enabled.as_deref(), filter.as_deref()),
        (Err(e), _) | (_, Err(e)) => {
            warn!("cannot read METADATA from the store: {e}");
            CoiConfig::default()
        }
    }
}
