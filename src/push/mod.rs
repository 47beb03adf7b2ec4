//! The COI WebPush extension (RFC 8030 / 8291 / 8292), served on any provider: the `WEBPUSH`
//! capability, the VAPID key and subscriptions as METADATA entries, validation, and a push for
//! every new message the account worker sees.
//!
//! - `subscription`, `payload`, `vapid`, `imap`: pure functions (checking, building, parsing);
//! - `entries`: the METADATA side, plugged into the COI interceptor by the session;
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

use base64::Engine;

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

/// Seconds since the epoch, as the subscription table keeps them.
fn now() -> u64 {
    crate::clock::now_unsigned()
}

/// 32 random bytes, base64url: the value of a validation push (as Dovecot's).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
