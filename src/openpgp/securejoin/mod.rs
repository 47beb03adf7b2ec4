//! SecureJoin (setup-contact and joining a group) on the plain user's behalf, as Delta Chat 2.65
//! speaks it (chatmail/core `securejoin.rs`, `securejoin/bob.rs`, `mimefactory.rs`), version 3:
//!
//! 1. joiner → inviter `vc-request-pubkey`, encrypted with the password
//!    `securejoin/<inviter fingerprint>/<auth>` from the link, unsigned, no key attached;
//! 2. inviter → joiner `vc-pubkey`, same password, signed, the inviter's Autocrypt key inside;
//! 3. joiner → inviter `vc-request-with-auth` (`vg-…` for a group), encrypted to the inviter's
//!    key, signed, with `Secure-Join-Auth`, `Secure-Join-Fingerprint` and the inviter's key
//!    gossiped back (proof the joiner sees the right key); the joiner now trusts the inviter;
//! 4. inviter → joiner `vc-contact-confirm` (or the group's `vg-member-added`); both are
//!    verified.
//!
//! [`inviter::Inviter`] and [`joiner::Joining`] are sans-I/O state machines: they take a
//! received message's bytes and return the message to send (full RFC 5322 bytes and envelope)
//! and the state change (a verified peer). [`step::is_handshake`] tells sessions which messages
//! to hide from plain clients.

pub mod invite;
pub mod inviter;
pub mod joiner;
pub mod message;
pub mod notice;
pub mod step;

use super::decrypt::DecryptError;
use super::encrypt::EncryptError;

/// Why a received message does not advance a handshake. The message is not ours to act on;
/// the caller logs the reason and treats the mail as a (hidden) handshake message or ordinary
/// mail as [`step::is_handshake`] says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("not a SecureJoin message")]
    NotHandshake,
    #[error("not decryptable for this handshake: {0}")]
    Decrypt(#[from] DecryptError),
    #[error("SecureJoin step {0:?} is not expected here")]
    UnexpectedStep(String),
    #[error("the auth token does not match an invite of ours")]
    UnknownAuth,
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the message is not signed by the expected key {expected}")]
    WrongSigner { expected: String },
    #[error("Secure-Join-Fingerprint is not the signer's key")]
    FingerprintMismatch,
    #[error("the message does not gossip our own key back (it may be forwarded)")]
    NoSelfGossip,
    #[error("the message carries no usable key of its sender")]
    NoSenderKey,
    #[error("the group invite is for another group")]
    OtherGroup,
    #[error("building the answer failed: {0}")]
    Build(#[from] EncryptError),
}
