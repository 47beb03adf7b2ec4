//! The OpenPGP gateway: the proxy holds an OpenPGP identity for each plain mail client's account
//! and speaks Autocrypt and SecureJoin on its behalf, so Delta Chat users can reach it, and
//! shows it what arrives encrypted in clear (issues 14 and 15).
//!
//! This wing is sans-I/O: every function here takes bytes and keys and returns bytes, verdicts
//! and state changes; the worker, SMTP and sessions do the I/O. It imports only the floor.
//!
//! - [`key`], [`fingerprint`]: the account's key and peers' public keys
//! - [`seal`]: secret keys encrypted at rest
//! - [`autocrypt`], [`peer`], [`recommend`]: Autocrypt Level 1 headers, peer state, encryption
//!   recommendation
//! - [`encrypt`]: outgoing mail as PGP/MIME in Delta Chat's shape
//! - [`decrypt`]: incoming PGP/MIME, signer, gossip, protected headers
//! - [`view`]: the decrypted message a plain client sees
//! - [`securejoin`]: invite links and the handshake, both roles
//! - [`mime`]: byte-level header helpers

pub mod autocrypt;
pub mod decrypt;
pub mod encrypt;
pub mod fingerprint;
pub mod key;
pub mod mime;
pub mod peer;
pub mod recommend;
pub mod seal;
pub mod securejoin;
pub mod view;
