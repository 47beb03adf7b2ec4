//! The COI WebPush extension (RFC 8030 / 8291 / 8292), served on any provider: the `WEBPUSH`
//! capability, the VAPID key and subscriptions as METADATA entries, validation, and a push for
//! every new message the account worker sees.
//!
//! - `subscription`, `payload`, `vapid`, `imap`: pure functions (checking, building, parsing);
//! - `entries`: the METADATA side, called by the COI session;
//! - `notify`: the account worker's side; `send`: HTTP to the push services.
//!
//! Subscriptions and the VAPID key live in the local store (`store::push`).

pub mod entries;
pub mod imap;
pub mod notify;
pub mod payload;
pub mod send;
pub mod subscription;
pub mod vapid;

use std::sync::Arc;

use base64::Engine;
use tracing::{info, warn};

use crate::server::Shared;
use crate::store::Store;

/// The capability added after login.
pub const CAPABILITY: &str = "WEBPUSH";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Vapid(#[from] vapid::VapidError),
}

/// The installation's VAPID key pair, made on first use.
pub async fn vapid_key(store: &Store) -> Result<vapid::VapidKey, KeyError> {
    Ok(vapid::key_pair(&store.vapid_key(vapid::generate).await?)?)
}

/// Whether `login` has a validated subscription (and so needs its account worker).
pub fn wanted(store: &Store, login: &str) -> bool {
    store.push_validated(login).unwrap_or(false)
}

/// Starts the account worker of every account with a validated subscription whose password the
/// configuration can supply (`password_command`), so pushes go on with no client connected
/// after a restart. Other accounts get their worker at their next login.
pub async fn start_workers(shared: &Arc<Shared>) {
    let accounts = match shared.store.read(|s| s.push_accounts()).await {
        Ok(a) => a,
        Err(e) => return warn!("cannot read push subscriptions: {e}"),
    };
    let config = shared.config();
    for login in accounts {
        let has_command = config.accounts.iter().any(|a| {
            a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(&login)) && a.password_command.is_some()
        });
        if !has_command {
            info!(%login, "push subscriptions wait for a login (no password_command for this account)");
            continue;
        }
        let account = shared.hub.account(&login);
        // The COI configuration as the local store has it; the worker reads the provider's.
        if let Ok(entries) = shared.store.metadata_entries(&login, b"") {
            use crate::coi::metadata::{CoiConfig, ENABLED, MESSAGE_FILTER};
            account.set_config(CoiConfig::from_values(
                entries.get(ENABLED).map(Vec::as_slice),
                entries.get(MESSAGE_FILTER).map(Vec::as_slice),
            ));
        }
        crate::coi::worker::ensure_running(shared, &account);
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 32 random bytes, base64url: the value of a validation push (as Dovecot's).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
