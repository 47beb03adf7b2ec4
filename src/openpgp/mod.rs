//! The OpenPGP gateway: the proxy holds an OpenPGP identity for each plain mail client's account
//! and speaks Autocrypt and SecureJoin on its behalf, so Delta Chat users can reach it, and
//! shows it in clear what arrives encrypted (issues 14 and 15).
//!
//! This wing is sans-I/O: every function here takes bytes, keys and state and returns bytes,
//! verdicts and state changes; the worker, SMTP and sessions do the I/O and the storing. It
//! imports only the floor. CPU-heavy calls (key generation, encryption, decryption, rendering a
//! view) are synchronous: callers on the runtime use `spawn_blocking`.
//!
//! - [`key`], [`fingerprint`]: the account's key (generate, import, export) and peers' keys
//! - [`commands`]: `coi-proxy key export|import`, `invite`, `join`, for the control socket
//!   and the command line
//! - [`incoming`]: one new message for the account worker: SecureJoin steps, then Autocrypt
//!   and gossip into the peer table
//! - [`identity`]: the one place that keeps the wing's state in the store (sealed account
//!   keys made on first use, peers, invites, handshakes); the rest of the wing is sans-I/O
//! - [`autocrypt`], [`peer`], [`recommend`]: Autocrypt Level 1 headers, peer state and its
//!   updates, the encryption recommendation
//! - [`encrypt`]: outgoing mail as PGP/MIME in Delta Chat's shape
//! - [`decrypt`]: incoming PGP/MIME: signer, gossip, protected headers
//! - [`view`]: the decrypted message a plain client sees; [`cache`]: each UID's view decided
//!   once, kept sealed; [`own_copy`]: a plain client's Sent and Drafts copies of encrypted
//!   conversations, stored encrypted to the account
//! - [`securejoin`]: invite links and both roles of the handshake
//! - [`mime`]: byte-level header helpers (until the floor has a `mail` module)
//!
//! Entry points for the integration:
//! - account set-up: [`key::AccountKey::generate`] or [`key::AccountKey::import_armored`];
//!   store [`crate::seal::SealKey::seal`] (the floor's sealing, shared with OAuth2) of
//!   [`key::AccountKey::secret_bytes`] under [`crate::seal::secret_key_purpose`]; restore
//!   with [`key::AccountKey::from_secret_bytes`];
//!   `key export` uses `public_armored` / `secret_armored`.
//! - SMTP, per message from a plain client: [`encrypt::prepare`] (as is, clear with Autocrypt,
//!   encrypted, or refused with the reason).
//! - worker, per new message: encrypted ones through [`decrypt::decrypt`] (or the
//!   handshake machines first, see below), then [`peer::observe`]; clear ones through
//!   [`peer::observe_clear`]. Store each verdict's [`peer::Verdict::peer`]; log
//!   [`peer::Verdict::KeyChanged`] and [`peer::Verdict::VerifiedKeyKept`].
//! - SecureJoin: `coi-proxy invite` makes an [`securejoin::invite::Invite::new_contact`] and
//!   stores [`securejoin::inviter::Issued`]; the worker feeds new mail to
//!   [`securejoin::inviter::Inviter::handle`] and to each stored
//!   [`securejoin::joiner::Joining::handle`]; `coi-proxy join` calls
//!   [`securejoin::joiner::start`]. Every event carries the message to send and the peer to
//!   mark with [`peer::verify`].
//! - sessions of plain clients: [`cache::Views`] decides each UID once: a SecureJoin handshake
//!   mail (encrypted, or the legacy unencrypted first step) becomes a short notice
//!   ([`securejoin::notice`]), an encrypted message its [`view::render`].

pub mod autocrypt;
pub mod cache;
pub mod commands;
pub mod decrypt;
pub mod encrypt;
pub mod fingerprint;
pub mod group;
pub mod identity;
pub mod incoming;
pub mod key;
pub mod mime;
pub mod own_copy;
pub mod peer;
pub mod recommend;
pub mod search;
pub mod securejoin;
pub mod session;
pub mod view;
