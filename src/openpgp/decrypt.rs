//! Incoming PGP/MIME (RFC 3156): find the encrypted payload, decrypt it with the account's key
//! (or, for SecureJoin's first steps, with a password), check the signature, and read what the
//! inner message says: the sender's Autocrypt key, gossip, protected headers (group, SecureJoin).
//!
//! Everything a peer controls is bounded (input size, decompressed size) and every failure is a
//! [`DecryptError`] saying why, so the decrypted view can explain it to the user. The signature
//! outcome is part of the result, never an error: an unsigned or badly signed message still
//! decrypts, and the caller decides what it may be used for (gossip only from a valid signature,
//! SecureJoin only from the expected signer).

use std::io::Read;

use mail_parser::{MessageParser, MimeHeaders};
use pgp::composed::{DecryptionOptions, Esk, Message, PlainSessionKey, TheRing, decrypt_session_key_with_password};
use pgp::packet::{Signature, SubpacketData};
use pgp::types::{KeyDetails, Password, StringToKey, VerifyingKey};

use super::autocrypt::{AutocryptHeader, gossip_headers, sender_header};
use super::fingerprint::Fingerprint;
use super::key::{AccountKey, PublicKey, short};
use super::mime::{self, Mailbox};

/// Largest message we decrypt (Delta Chat splits large attachments into post-messages; a
/// provider's own limit is usually lower).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest plaintext we produce, so a compression bomb cannot exhaust memory.
pub const MAX_PLAINTEXT: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("not an OpenPGP/MIME encrypted message")]
    NotEncrypted,
    #[error("the message is {0} bytes, more than the {MAX_MESSAGE} we decrypt")]
    TooLarge(usize),
    #[error("the decrypted content is larger than {MAX_PLAINTEXT} bytes")]
    PlaintextTooLarge,
    #[error("the encrypted part is not a readable OpenPGP message: {0}")]
    Malformed(String),
    #[error("the message is not encrypted to this account's key")]
    NotForThisKey,
    #[error(
        "the message is encrypted with a password (a SecureJoin step or a broadcast channel), not to this account's key"
    )]
    PasswordOnly,
    #[error("none of the known passwords opens this message")]
    NoPassword,
    #[error("the message is encrypted in a way we do not accept: {0}")]
    Unsupported(String),
    #[error("decryption failed, the message is damaged or was altered: {0}")]
    Corrupt(String),
    /// The OpenPGP library panicked on the message: a bug there, contained here so that a
    /// crafted message costs no session or worker (the unsupported AEAD mode it panicked on
    /// once is refused before it is reached; see `is_seipd_v2`).
    #[error("the OpenPGP library failed on this message")]
    LibraryFailed,
}

/// Looks up a public key by fingerprint (the peer table); used to check signatures of senders
/// whose message carries no Autocrypt header.
pub trait KeyLookup {
    fn key(&self, fingerprint: &Fingerprint) -> Option<PublicKey>;
}

/// No known keys.
pub struct NoKeys;

impl KeyLookup for NoKeys {
    fn key(&self, _: &Fingerprint) -> Option<PublicKey> {
        None
    }
}

impl<F: Fn(&Fingerprint) -> Option<PublicKey>> KeyLookup for F {
    fn key(&self, fingerprint: &Fingerprint) -> Option<PublicKey> {
        self(fingerprint)
    }
}

/// What the signature of a decrypted message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Not signed at all.
    Unsigned,
    /// Signed, and the signature verifies with the key of this (primary) fingerprint.
    Valid(Fingerprint),
    /// Signed by a key we have (by issuer), but the signature does not verify.
    Bad { issuer: Option<Fingerprint> },
    /// Signed by a key we do not have.
    UnknownSigner { issuer: Option<Fingerprint> },
}

/// How the message was encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// To public keys; `seipd_v2` tells the container version (RFC 9580 AEAD or the older MDC).
    PublicKey { seipd_v2: bool },
    /// With a password; the index of the password (of those given) that opened it.
    Password { index: usize },
}

/// A decrypted message. Its `Debug` leaves out the plaintext (private mail, not for logs).
#[derive(Clone)]
pub struct Decrypted {
    /// The outer (cleartext) header section as received.
    pub outer_header: Vec<u8>,
    /// The decrypted RFC 5322 message with CRLF line ends.
    pub inner: Vec<u8>,
    pub method: Method,
    pub signature: SignatureStatus,
    /// Intended Recipient Fingerprints of the signature (RFC 9580), empty when unsigned.
    pub intended_recipients: Vec<Fingerprint>,
    /// The sender: inner From, else outer From.
    pub from: Option<Mailbox>,
    /// The sender's valid Autocrypt header (inner headers win over outer, as in Delta Chat).
    pub autocrypt: Option<AutocryptHeader>,
    /// Usable gossip: only when the signature is valid.
    pub gossip: Vec<AutocryptHeader>,
    pub protected: ProtectedHeaders,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("inner_bytes", &self.inner.len())
            .field("method", &self.method)
            .field("signature", &self.signature)
            .field("from", &self.from.as_ref().map(|m| &m.addr))
            .field("gossip", &self.gossip.iter().map(|g| &g.addr).collect::<Vec<_>>())
            .field("secure_join", &self.protected.secure_join)
            .finish_non_exhaustive()
    }
}

impl Decrypted {
    /// The inner header section.
    pub fn inner_header(&self) -> &[u8] {
        mime::split(&self.inner).0
    }

    /// The first inner header value called `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        mime::first_value(self.inner_header(), name)
    }

    /// The fingerprint of a valid signature.
    pub fn signer(&self) -> Option<&Fingerprint> {
        match &self.signature {
            SignatureStatus::Valid(fp) => Some(fp),
            _ => None,
        }
    }
}

/// The headers Delta Chat only trusts inside the encryption, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedHeaders {
    pub subject: Option<String>,
    pub date: Option<i64>,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    /// The ids of References, without angle brackets.
    pub references: Vec<String>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub chat_version: Option<String>,
    pub chat_group_id: Option<String>,
    pub chat_group_name: Option<String>,
    pub chat_group_member_added: Option<String>,
    pub chat_group_member_removed: Option<String>,
    pub chat_group_past_members: Vec<Mailbox>,
    pub chat_disposition_notification_to: Option<String>,
    pub secure_join: Option<String>,
    pub secure_join_auth: Option<String>,
    pub secure_join_fingerprint: Option<String>,
    pub secure_join_invitenumber: Option<String>,
    pub secure_join_group: Option<String>,
    /// The root Content-Type is `multipart/report; report-type=disposition-notification`.
    pub is_read_receipt: bool,
}

impl ProtectedHeaders {
    pub fn from_header(header: &[u8]) -> ProtectedHeaders {
        let value = |name: &str| mime::first_value(header, name).filter(|v| !v.is_empty());
        let boxes = |name: &str| mime::all_values(header, name).iter().flat_map(|v| mime::mailboxes(v)).collect();
        let content_type = value("Content-Type").and_then(|v| mime::content_type(&v));
        ProtectedHeaders {
            subject: value("Subject").map(|s| decode_text(&s)),
            date: value("Date").and_then(|d| mime::parse_date(&d)),
            message_id: value("Message-ID"),
            in_reply_to: value("In-Reply-To"),
            references: value("References").map(|r| crate::mail::msg_ids(&r)).unwrap_or_default(),
            to: boxes("To"),
            cc: boxes("Cc"),
            chat_version: value("Chat-Version"),
            chat_group_id: value("Chat-Group-ID"),
            chat_group_name: value("Chat-Group-Name").map(|s| decode_text(&s)),
            chat_group_member_added: value("Chat-Group-Member-Added"),
            chat_group_member_removed: value("Chat-Group-Member-Removed"),
            chat_group_past_members: boxes("Chat-Group-Past-Members"),
            chat_disposition_notification_to: value("Chat-Disposition-Notification-To"),
            secure_join: value("Secure-Join"),
            secure_join_auth: value("Secure-Join-Auth"),
            secure_join_fingerprint: value("Secure-Join-Fingerprint"),
            secure_join_invitenumber: value("Secure-Join-Invitenumber"),
            secure_join_group: value("Secure-Join-Group"),
            is_read_receipt: content_type.is_some_and(|ct| {
                ct.mime == "multipart/report"
                    && ct.param("report-type").is_some_and(|t| t.eq_ignore_ascii_case("disposition-notification"))
            }),
        }
    }

    /// The To and Cc addresses, canonical.
    pub fn recipients(&self) -> Vec<String> {
        self.to.iter().chain(&self.cc).map(|m| mime::canonical_addr(&m.addr)).collect()
    }
}

/// RFC 2047 decoding of an unstructured value (through mail-parser).
fn decode_text(value: &str) -> String {
    let block = format!("Subject: {value}\r\n\r\n");
    MessageParser::new()
        .parse_headers(block.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| value.to_string())
}

/// The encrypted payload of a PGP/MIME message: the `application/octet-stream` part of a
/// `multipart/encrypted; protocol="application/pgp-encrypted"` root, also in the two mangled
/// forms Delta Chat accepts (Exchange/Proton's "mixed up" and a footer-appending gateway's).
pub fn encrypted_payload(message: &[u8]) -> Option<Vec<u8>> {
    let parsed = MessageParser::new().parse(message)?;
    let is = |id: u32, t: &str, s: &str| parsed.part(id).is_some_and(|p| p.is_content_type(t, s));
    let children = |id: u32| parsed.part(id).and_then(|p| p.sub_parts()).map(<[u32]>::to_vec).unwrap_or_default();
    let pgp_mime = |id: u32| -> Option<u32> {
        let parts = children(id);
        let protocol_ok = parsed
            .part(id)
            .and_then(|p| p.content_type())
            .and_then(|ct| ct.attribute("protocol"))
            .is_none_or(|p| p.eq_ignore_ascii_case("application/pgp-encrypted"));
        (is(id, "multipart", "encrypted")
            && protocol_ok
            && parts.len() == 2
            && is(parts[0], "application", "pgp-encrypted")
            && is(parts[1], "application", "octet-stream"))
        .then(|| parts[1])
    };
    let found = pgp_mime(0).or_else(|| {
        let parts = children(0);
        if !is(0, "multipart", "mixed") {
            return None;
        }
        match parts.as_slice() {
            [a, b, c]
                if is(*a, "text", "plain")
                    && is(*b, "application", "pgp-encrypted")
                    && is(*c, "application", "octet-stream") =>
            {
                Some(*c)
            }
            [a, b] if is(*a, "text", "plain") => pgp_mime(*b),
            _ => None,
        }
    })?;
    Some(parsed.part(found)?.contents().to_vec())
}

/// Decrypts a message encrypted to the account's key.
pub fn decrypt(message: &[u8], key: &AccountKey, lookup: &dyn KeyLookup) -> Result<Decrypted, DecryptError> {
    contained(|| decrypt_inner(message, key, lookup))
}

/// Runs a decryption so that a panic in the OpenPGP library on peer input becomes
/// [`DecryptError::LibraryFailed`] (the inputs are only read, so nothing is left half-changed).
fn contained(decrypt: impl FnOnce() -> Result<Decrypted, DecryptError>) -> Result<Decrypted, DecryptError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decrypt)).unwrap_or(Err(DecryptError::LibraryFailed))
}

fn decrypt_inner(message: &[u8], key: &AccountKey, lookup: &dyn KeyLookup) -> Result<Decrypted, DecryptError> {
    let payload = payload(message)?;
    let pgp = parse_pgp(&payload)?;
    let Message::Encrypted { esk, edata, .. } = &pgp else {
        return Err(DecryptError::NotEncrypted);
    };
    let seipd_v2 = is_seipd_v2(edata)?;
    if !esk.iter().any(|e| matches!(e, Esk::PublicKeyEncryptedSessionKey(_))) {
        return Err(DecryptError::PasswordOnly);
    }
    let ring = TheRing {
        secret_keys: vec![key.signed_secret()],
        decrypt_options: DecryptionOptions::new(),
        ..Default::default()
    };
    let (plain, _) = pgp.decrypt_the_ring(ring, true).map_err(map_decrypt_error)?;
    finish(message, plain, Method::PublicKey { seipd_v2 }, Some(key), lookup)
}

/// Decrypts a message encrypted with a password (SecureJoin v3 steps, Delta Chat's
/// `securejoin/<fingerprint>/<auth>`), trying each of `passwords`. Like Delta Chat, only a
/// message with exactly one password-encrypted session key and a salted S2K is tried, so a
/// message cannot make us run an expensive key derivation many times.
pub fn decrypt_with_passwords(
    message: &[u8],
    passwords: &[&str],
    lookup: &dyn KeyLookup,
) -> Result<Decrypted, DecryptError> {
    contained(|| decrypt_with_passwords_inner(message, passwords, lookup))
}

fn decrypt_with_passwords_inner(
    message: &[u8],
    passwords: &[&str],
    lookup: &dyn KeyLookup,
) -> Result<Decrypted, DecryptError> {
    let payload = payload(message)?;
    let pgp = parse_pgp(&payload)?;
    let Message::Encrypted { esk, edata, .. } = &pgp else {
        return Err(DecryptError::NotEncrypted);
    };
    is_seipd_v2(edata)?;
    let [Esk::SymKeyEncryptedSessionKey(skesk)] = esk.as_slice() else {
        return Err(DecryptError::Unsupported("a password message must have exactly one password session key".into()));
    };
    if !matches!(skesk.s2k(), Some(StringToKey::Salted { .. })) {
        return Err(DecryptError::Unsupported("password key derivation other than salted".into()));
    }
    let found: Option<(usize, PlainSessionKey)> = passwords
        .iter()
        .enumerate()
        .find_map(|(i, pw)| decrypt_session_key_with_password(skesk, &Password::from(*pw)).ok().map(|k| (i, k)));
    let Some((index, session_key)) = found else {
        return Err(DecryptError::NoPassword);
    };
    let ring = TheRing { session_keys: vec![session_key], ..Default::default() };
    let (plain, _) = pgp.decrypt_the_ring(ring, true).map_err(map_decrypt_error)?;
    finish(message, plain, Method::Password { index }, None, lookup)
}

fn payload(message: &[u8]) -> Result<Vec<u8>, DecryptError> {
    if message.len() > MAX_MESSAGE {
        return Err(DecryptError::TooLarge(message.len()));
    }
    encrypted_payload(message).ok_or(DecryptError::NotEncrypted)
}

fn parse_pgp(payload: &[u8]) -> Result<Message<'_>, DecryptError> {
    let text = payload.trim_ascii_start();
    let parsed = if text.starts_with(b"-----BEGIN PGP MESSAGE-----") {
        Message::from_armor(text).map(|(m, _)| m)
    } else {
        Message::from_bytes(payload)
    };
    parsed.map_err(|e| DecryptError::Malformed(short(&e)))
}

/// Whether the data is SEIPD v2 (AEAD), refusing before any decryption an AEAD mode other than
/// the three RFC 9580 defines: rPGP 0.21 derives such a packet's nonce by subtracting 8 from the
/// mode's nonce size, which is 0 for an unknown mode, and panics (found by fuzzing; anyone who
/// has the account's public key can send such a packet).
fn is_seipd_v2(edata: &pgp::composed::Edata<'_>) -> Result<bool, DecryptError> {
    use pgp::crypto::aead::AeadAlgorithm;
    use pgp::packet::{ProtectedDataConfig, SymEncryptedProtectedDataConfig};
    let pgp::composed::Edata::SymEncryptedProtectedData { reader } = edata else { return Ok(false) };
    match reader.config() {
        ProtectedDataConfig::Seipd(SymEncryptedProtectedDataConfig::V2 { aead, .. }) => match aead {
            AeadAlgorithm::Eax | AeadAlgorithm::Ocb | AeadAlgorithm::Gcm => Ok(true),
            other => Err(DecryptError::Unsupported(format!("AEAD mode {}", u8::from(*other)))),
        },
        _ => Ok(false),
    }
}

fn map_decrypt_error(e: pgp::errors::Error) -> DecryptError {
    match e {
        pgp::errors::Error::MissingKey => DecryptError::NotForThisKey,
        pgp::errors::Error::Unsupported { .. } => DecryptError::Unsupported(short(&e)),
        other => DecryptError::Corrupt(short(&other)),
    }
}

/// Reads the plaintext (bounded), checks the signature, parses the inner message.
fn finish(
    outer: &[u8],
    plain: Message<'_>,
    method: Method,
    own: Option<&AccountKey>,
    lookup: &dyn KeyLookup,
) -> Result<Decrypted, DecryptError> {
    let mut plain = plain.decompress().map_err(|e| DecryptError::Corrupt(short(&e)))?;
    let mut data = Vec::new();
    (&mut plain).take(MAX_PLAINTEXT as u64 + 1).read_to_end(&mut data).map_err(|e| DecryptError::Corrupt(short(&e)))?;
    if data.len() > MAX_PLAINTEXT {
        return Err(DecryptError::PlaintextTooLarge);
    }
    let inner = mime::normalize_crlf(&data);
    let outer_header = mime::split(outer).0;
    let (_, autocrypt) = sender(outer_header, &inner);
    let (signature, intended_recipients) = match &plain {
        Message::Signed { reader, .. } => {
            let sig = reader.signature(0).cloned();
            let status = verify(&plain, sig.as_ref(), own, autocrypt.as_ref(), lookup);
            (status, sig.as_ref().map(intended).unwrap_or_default())
        }
        _ => (SignatureStatus::Unsigned, Vec::new()),
    };
    Ok(inspect(outer, inner, method, signature, intended_recipients))
}

/// The sender (inner From, else outer) and its valid Autocrypt header (inner headers win).
fn sender(outer_header: &[u8], inner: &[u8]) -> (Option<Mailbox>, Option<AutocryptHeader>) {
    let inner_header = mime::split(inner).0;
    let from = mime::first_value(inner_header, "From")
        .or_else(|| mime::first_value(outer_header, "From"))
        .and_then(|v| mime::mailboxes(&v).into_iter().next());
    let autocrypt = from.as_ref().and_then(|f| {
        let inner_values = mime::all_values(inner_header, "Autocrypt");
        let values = if inner_values.is_empty() { mime::all_values(outer_header, "Autocrypt") } else { inner_values };
        sender_header(&values, &f.addr)
    });
    (from, autocrypt)
}

/// Reads a decrypted message (`inner`, CRLF) whose signature was checked: sender, Autocrypt key,
/// protected headers, and the gossip a valid signature allows. Everything after the cryptography;
/// public so the MIME handling can be fuzzed without it.
pub fn inspect(
    outer: &[u8],
    inner: Vec<u8>,
    method: Method,
    signature: SignatureStatus,
    intended_recipients: Vec<Fingerprint>,
) -> Decrypted {
    let inner = mime::normalize_crlf(&inner);
    let outer_header = mime::split(outer).0.to_vec();
    let (from, autocrypt) = sender(&outer_header, &inner);
    let inner_header = mime::split(&inner).0;
    let protected = ProtectedHeaders::from_header(inner_header);
    let gossip = match (&signature, &from) {
        (SignatureStatus::Valid(_), Some(from)) => {
            gossip_headers(&mime::all_values(inner_header, "Autocrypt-Gossip"), &from.addr, &protected.recipients())
        }
        _ => Vec::new(),
    };
    Decrypted { outer_header, inner, method, signature, intended_recipients, from, autocrypt, gossip, protected }
}

fn intended(sig: &Signature) -> Vec<Fingerprint> {
    let Some(config) = sig.config() else {
        return Vec::new();
    };
    config
        .hashed_subpackets
        .iter()
        .filter_map(|s| match &s.data {
            SubpacketData::IntendedRecipientFingerprint(fp) => Some(Fingerprint::from(fp)),
            _ => None,
        })
        .collect()
}

/// Checks the signature against the keys we may know for it: our own (mail from ourselves), the
/// sender's Autocrypt key, and the peer table by issuer fingerprint.
fn verify(
    plain: &Message<'_>,
    sig: Option<&Signature>,
    own: Option<&AccountKey>,
    autocrypt: Option<&AutocryptHeader>,
    lookup: &dyn KeyLookup,
) -> SignatureStatus {
    let Some(sig) = sig else {
        return SignatureStatus::Unsigned;
    };
    let issuer_fps: Vec<Fingerprint> = sig.issuer_fingerprint().into_iter().map(Fingerprint::from).collect();
    let issuer_ids: Vec<pgp::types::KeyId> = sig.issuer_key_id().into_iter().copied().collect();
    let issuer = issuer_fps.first().cloned();

    let mut candidates: Vec<PublicKey> = Vec::new();
    if let Some(own) = own {
        candidates.push(own.public_key().clone());
    }
    if let Some(h) = autocrypt {
        candidates.push(h.key.clone());
    }
    for fp in &issuer_fps {
        if let Some(k) = lookup.key(fp) {
            candidates.push(k);
        }
    }
    let mut matched_issuer = false;
    for candidate in &candidates {
        let key = candidate.signed();
        let mut signers: Vec<&dyn VerifyingKey> = vec![&key.primary_key];
        signers.extend(
            key.public_subkeys.iter().filter(|s| s.key.algorithm().can_sign()).map(|s| &s.key as &dyn VerifyingKey),
        );
        for signer in signers {
            let is_issuer = issuer_fps.iter().any(|fp| fp.as_bytes() == signer.fingerprint().as_bytes())
                || issuer_ids.contains(&signer.legacy_key_id());
            if plain.verify(signer).is_ok() {
                return SignatureStatus::Valid(candidate.fingerprint().clone());
            }
            matched_issuer |= is_issuer;
        }
    }
    if matched_issuer { SignatureStatus::Bad { issuer } } else { SignatureStatus::UnknownSigner { issuer } }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use pgp::composed::{MessageBuilder, RawSessionKey};
    use pgp::crypto::sym::SymmetricKeyAlgorithm;
    use pgp::packet::{PacketTrait, PublicKeyEncryptedSessionKey, SymEncryptedProtectedData};
    use rand_core_06::OsRng;

    pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deltachat/");

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}{name}")).unwrap()
    }

    /// A Delta Chat account's exported secret key, imported as ours.
    pub(crate) fn account(name: &str) -> AccountKey {
        AccountKey::import_armored(&fixture(&format!("{name}-secret.asc")), &format!("{name}@example.org"), None)
            .unwrap()
    }

    /// The fingerprint Delta Chat's exported public key has.
    pub(crate) fn exported_fingerprint(name: &str) -> Fingerprint {
        PublicKey::from_armored(&fixture(&format!("{name}-public.asc"))).unwrap().fingerprint().clone()
    }

    /// `securejoin/<inviter fingerprint>/<auth>` from the captured invite link.
    pub(crate) fn invite_password() -> String {
        let link = String::from_utf8(fixture("invite-alice.txt")).unwrap();
        let fpr = &link[link.find('#').unwrap() + 1..link.find('&').unwrap()];
        let auth = link.split('&').find_map(|p| p.strip_prefix("s=")).unwrap();
        format!("securejoin/{fpr}/{auth}")
    }

    #[test]
    fn delta_chat_one_to_one_decrypts_and_verifies() {
        let bob = account("bob");
        let d = decrypt(&fixture("one-to-one.eml"), &bob, &NoKeys).unwrap();
        let alice = exported_fingerprint("alice");
        assert_eq!(d.signature, SignatureStatus::Valid(alice.clone()));
        assert_eq!(d.method, Method::PublicKey { seipd_v2: true });
        assert_eq!(d.from.as_ref().unwrap().addr, "alice@example.org");
        assert_eq!(d.from.as_ref().unwrap().name.as_deref(), Some("Alice"));
        assert_eq!(d.autocrypt.as_ref().unwrap().key.fingerprint(), &alice);
        assert!(d.intended_recipients.contains(bob.fingerprint()) && d.intended_recipients.contains(&alice));
        assert_eq!(d.protected.subject.as_deref(), Some("Message from Alice"));
        assert_eq!(d.protected.to.iter().map(|m| m.addr.as_str()).collect::<Vec<_>>(), ["bob@example.org"]);
        assert_eq!(d.protected.chat_version.as_deref(), Some("1.0"));
        assert!(d.gossip.is_empty(), "a 1:1 message gossips nothing");
        assert!(mime::split(&d.inner).1.starts_with(b"Hello Bob, this is Alice."));
        assert_eq!(d.header("HP-Outer").as_deref(), Some("From: <alice@example.org>"));
        assert!(!format!("{d:?}").contains("Hello Bob"), "no plaintext in Debug");
    }

    #[test]
    fn delta_chat_group_message_carries_group_and_gossip() {
        let bob = account("bob");
        let d = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        assert_eq!(d.protected.chat_group_id.as_deref(), Some("dFXyuQ_eDDe3dsumrIOm9BSG"));
        assert_eq!(d.protected.chat_group_name.as_deref(), Some("Team"));
        assert_eq!(d.protected.recipients(), ["bob@example.org", "carol@example.org"]);
        let gossip: Vec<(&str, &Fingerprint)> =
            d.gossip.iter().map(|h| (h.addr.as_str(), h.key.fingerprint())).collect();
        assert_eq!(
            gossip,
            [("bob@example.org", &exported_fingerprint("bob")), ("carol@example.org", &exported_fingerprint("carol"))]
        );
        // The group invite link names the same group.
        let link = String::from_utf8(fixture("invite-group.txt")).unwrap();
        assert!(link.contains("&x=dFXyuQ_eDDe3dsumrIOm9BSG&"));
    }

    #[test]
    fn delta_chat_read_receipt_and_reply() {
        let alice = account("alice");
        let receipt = decrypt(&fixture("read-receipt.eml"), &alice, &NoKeys).unwrap();
        assert!(receipt.protected.is_read_receipt);
        assert_eq!(receipt.signature, SignatureStatus::Valid(exported_fingerprint("bob")));
        let reply = decrypt(&fixture("reply.eml"), &alice, &NoKeys).unwrap();
        assert_eq!(reply.protected.in_reply_to.as_deref(), Some("<3e91d1ee-f057-41fd-94bf-bebcccb17ddd@localhost>"));
        assert_eq!(reply.protected.references.len(), 2);
        assert!(!reply.protected.is_read_receipt);
    }

    #[test]
    fn delta_chat_securejoin_steps() {
        let (alice, bob) = (account("alice"), account("bob"));
        let password = invite_password();
        // Step 1: password only, unsigned, carries the auth token.
        let raw = fixture("securejoin-1-vc-request-pubkey.eml");
        assert_eq!(decrypt(&raw, &alice, &NoKeys).unwrap_err(), DecryptError::PasswordOnly);
        assert_eq!(decrypt_with_passwords(&raw, &["securejoin/x/y"], &NoKeys).unwrap_err(), DecryptError::NoPassword);
        let step1 = decrypt_with_passwords(&raw, &["wrong", &password], &NoKeys).unwrap();
        assert_eq!(step1.method, Method::Password { index: 1 });
        assert_eq!(step1.signature, SignatureStatus::Unsigned);
        assert_eq!(step1.protected.secure_join.as_deref(), Some("vc-request-pubkey"));
        assert_eq!(Some(step1.protected.secure_join_auth.unwrap()), password.rsplit('/').next().map(str::to_string));
        assert_eq!(step1.from.unwrap().addr, "bob@example.org");
        assert!(step1.autocrypt.is_none());
        // Step 2: password, signed by alice, with her Autocrypt key.
        let step2 = decrypt_with_passwords(&fixture("securejoin-2-vc-pubkey.eml"), &[&password], &NoKeys).unwrap();
        assert_eq!(step2.protected.secure_join.as_deref(), Some("vc-pubkey"));
        assert_eq!(step2.signature, SignatureStatus::Valid(exported_fingerprint("alice")));
        assert_eq!(step2.autocrypt.unwrap().key.fingerprint(), &exported_fingerprint("alice"));
        // Steps 3 and 4: public key encryption, each gossiping the receiver's own key.
        let step3 = decrypt(&fixture("securejoin-3-vc-request-with-auth.eml"), &alice, &NoKeys).unwrap();
        assert_eq!(step3.protected.secure_join.as_deref(), Some("vc-request-with-auth"));
        assert_eq!(step3.protected.secure_join_fingerprint, Some(exported_fingerprint("bob").hex()));
        assert_eq!(step3.gossip[0].key.fingerprint(), alice.fingerprint());
        let step4 = decrypt(&fixture("securejoin-4-vc-contact-confirm.eml"), &bob, &NoKeys).unwrap();
        assert_eq!(step4.protected.secure_join.as_deref(), Some("vc-contact-confirm"));
        assert_eq!(step4.gossip[0].key.fingerprint(), bob.fingerprint());
    }

    #[test]
    fn failures_are_told_apart() {
        let carol = account("carol");
        assert_eq!(decrypt(&fixture("one-to-one.eml"), &carol, &NoKeys).unwrap_err(), DecryptError::NotForThisKey);
        let plain = b"From: a@b.org\r\nSubject: hi\r\n\r\nhello\r\n";
        assert_eq!(decrypt(plain, &carol, &NoKeys).unwrap_err(), DecryptError::NotEncrypted);
        // A flipped character inside the armored ciphertext.
        let raw = fixture("one-to-one.eml");
        let text = String::from_utf8(raw).unwrap();
        let at = text.find("-----BEGIN PGP MESSAGE-----").unwrap() + 200;
        let mut bytes = text.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let err = decrypt(&bytes, &account("bob"), &NoKeys).unwrap_err();
        assert!(
            matches!(err, DecryptError::Corrupt(_) | DecryptError::Malformed(_) | DecryptError::NotForThisKey),
            "{err}"
        );
        // A payload that is not OpenPGP at all.
        let junk = b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nnonsense\r\n-----END PGP MESSAGE-----\r\n--b--\r\n";
        assert!(matches!(decrypt(junk, &carol, &NoKeys).unwrap_err(), DecryptError::Malformed(_)));
    }

    /// Encrypts `packets` (already serialized OpenPGP packets) to `to` and wraps them as PGP/MIME.
    pub(crate) fn pgp_mime_of_packets(packets: &[u8], to: &PublicKey) -> Vec<u8> {
        let alg = SymmetricKeyAlgorithm::AES128;
        let session_key: RawSessionKey = alg.new_session_key(OsRng);
        let pkesk = PublicKeyEncryptedSessionKey::from_session_key_v3(
            OsRng,
            &session_key,
            alg,
            to.encryption_subkey().unwrap(),
        )
        .unwrap();
        let seipd = SymEncryptedProtectedData::encrypt_seipdv1(OsRng, alg, session_key.as_ref(), packets).unwrap();
        let mut binary = Vec::new();
        pkesk.to_writer_with_header(&mut binary).unwrap();
        seipd.to_writer_with_header(&mut binary).unwrap();
        pgp_mime_of_binary(&binary)
    }

    /// Wraps binary OpenPGP packets as a PGP/MIME message from alice.
    fn pgp_mime_of_binary(binary: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(binary);
        format!(
            "From: <alice@example.org>\r\nSubject: [...]\r\nMIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn signature_outcomes() {
        let (alice, bob) = (account("alice"), account("bob"));
        let inner = format!(
            "From: <alice@example.org>\r\nTo: <bob@example.org>\r\nSubject: s\r\n{}\r\nHello there\r\n",
            "" // no Autocrypt header: the signer is found through the lookup only
        );
        let signed = MessageBuilder::from_bytes("", inner.clone().into_bytes());
        let mut signed = signed;
        signed.sign(&**alice.signed_secret(), Password::empty(), pgp::crypto::hash::HashAlgorithm::Sha256);
        let packets = signed.to_vec(OsRng).unwrap();
        let message = pgp_mime_of_packets(&packets, bob.public_key());

        let alice_public = alice.public_key().clone();
        let lookup = move |fp: &Fingerprint| (fp == alice_public.fingerprint()).then(|| alice_public.clone());
        let d = decrypt(&message, &bob, &lookup).unwrap();
        assert_eq!(d.signature, SignatureStatus::Valid(alice.fingerprint().clone()));
        assert_eq!(d.method, Method::PublicKey { seipd_v2: false });
        let unknown = decrypt(&message, &bob, &NoKeys).unwrap();
        assert_eq!(unknown.signature, SignatureStatus::UnknownSigner { issuer: Some(alice.fingerprint().clone()) });
        assert!(unknown.signer().is_none());

        // The signed text altered before encryption: the signature no longer verifies.
        let at = packets.windows(5).position(|w| w == b"Hello").unwrap();
        let mut tampered = packets.clone();
        tampered[at] = b'J';
        let bad = decrypt(&pgp_mime_of_packets(&tampered, bob.public_key()), &bob, &lookup).unwrap();
        assert_eq!(bad.signature, SignatureStatus::Bad { issuer: Some(alice.fingerprint().clone()) });
        assert!(mime::split(&bad.inner).1.starts_with(b"Jello"));

        // Unsigned.
        let literal = MessageBuilder::from_bytes("", inner.into_bytes()).to_vec(OsRng).unwrap();
        let unsigned = decrypt(&pgp_mime_of_packets(&literal, bob.public_key()), &bob, &lookup).unwrap();
        assert_eq!(unsigned.signature, SignatureStatus::Unsigned);
    }

    /// A SEIPD v2 packet naming an AEAD mode RFC 9580 does not define is refused before rPGP
    /// sets it up (rPGP 0.21 panics on such a mode); the three defined modes still decrypt.
    #[test]
    fn seipd_v2_with_an_unknown_aead_mode_is_refused_not_a_panic() {
        use pgp::crypto::aead::{AeadAlgorithm, ChunkSize};
        let bob = account("bob");
        let inner = b"From: <alice@example.org>\r\nTo: <bob@example.org>\r\nSubject: s\r\n\r\nHi\r\n".to_vec();
        let literal = MessageBuilder::from_bytes("", inner).to_vec(OsRng).unwrap();
        let alg = SymmetricKeyAlgorithm::AES128;
        let session_key: RawSessionKey = alg.new_session_key(OsRng);
        let subkey = bob.public_key().encryption_subkey().unwrap();
        let pkesk = PublicKeyEncryptedSessionKey::from_session_key_v6(OsRng, &session_key, subkey).unwrap();
        let message_with = |aead: AeadAlgorithm, patch: Option<u8>| {
            let seipd = SymEncryptedProtectedData::encrypt_seipdv2(
                OsRng,
                alg,
                aead,
                ChunkSize::default(),
                session_key.as_ref(),
                &literal,
            )
            .unwrap();
            let mut packet = Vec::new();
            seipd.to_writer_with_header(&mut packet).unwrap();
            // New-format header (tag 18), then the body: version 2, cipher, AEAD mode, chunk size, salt.
            assert_eq!(packet[0], 0xC0 | 18);
            let body = match packet[1] {
                0..192 => 2,
                192..224 => 3,
                _ => 6,
            };
            assert_eq!(packet[body], 2, "SEIPD v2");
            if let Some(mode) = patch {
                packet[body + 2] = mode;
            }
            let mut binary = Vec::new();
            pkesk.to_writer_with_header(&mut binary).unwrap();
            binary.extend_from_slice(&packet);
            pgp_mime_of_binary(&binary)
        };
        for aead in [AeadAlgorithm::Eax, AeadAlgorithm::Ocb, AeadAlgorithm::Gcm] {
            let d = decrypt(&message_with(aead, None), &bob, &NoKeys).unwrap();
            assert_eq!(d.method, Method::PublicKey { seipd_v2: true });
            assert!(mime::split(&d.inner).1.starts_with(b"Hi"));
        }
        for mode in [0u8, 4, 99, 100, 110, 255] {
            let err = decrypt(&message_with(AeadAlgorithm::Ocb, Some(mode)), &bob, &NoKeys).unwrap_err();
            assert_eq!(err, DecryptError::Unsupported(format!("AEAD mode {mode}")), "mode {mode}");
            let err =
                decrypt_with_passwords(&message_with(AeadAlgorithm::Ocb, Some(mode)), &["pw"], &NoKeys).unwrap_err();
            assert_eq!(err, DecryptError::Unsupported(format!("AEAD mode {mode}")), "mode {mode}");
        }
    }

    #[test]
    fn a_panic_while_decrypting_is_an_error() {
        assert_eq!(
            contained(|| panic!("as rPGP did on an unknown AEAD mode")).unwrap_err(),
            DecryptError::LibraryFailed
        );
        let d = contained(|| decrypt_inner(&fixture("one-to-one.eml"), &account("bob"), &NoKeys)).unwrap();
        assert_eq!(d.method, Method::PublicKey { seipd_v2: true });
    }

    #[test]
    fn gossip_is_ignored_without_a_valid_signature() {
        let (alice, bob) = (account("alice"), account("bob"));
        let d = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        let (header, body) = mime::split(&d.inner);
        // Same inner message, re-encrypted unsigned: the gossip must not count.
        let mut inner = header.to_vec();
        inner.extend_from_slice(b"\r\n");
        inner.extend_from_slice(body);
        let literal = MessageBuilder::from_bytes("", inner).to_vec(OsRng).unwrap();
        let unsigned = decrypt(&pgp_mime_of_packets(&literal, bob.public_key()), &bob, &NoKeys).unwrap();
        assert_eq!(unsigned.signature, SignatureStatus::Unsigned);
        assert!(unsigned.gossip.is_empty());
        assert!(unsigned.autocrypt.is_some(), "the sender's own header is still read");
        let _ = alice;
    }

    #[test]
    fn mangled_pgp_mime_forms_are_found() {
        let raw = fixture("one-to-one.eml");
        let payload = encrypted_payload(&raw).unwrap();
        assert!(payload.starts_with(b"-----BEGIN PGP MESSAGE-----"));
        let armored = String::from_utf8(payload).unwrap();
        let mixed_up = format!(
            "From: a@b.org\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nEmpty Message\r\n--m\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--m\r\nContent-Type: application/octet-stream\r\n\r\n{armored}\r\n--m--\r\n"
        );
        assert!(decrypt(mixed_up.as_bytes(), &account("bob"), &NoKeys).is_ok());
        let footer = format!(
            "From: a@b.org\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nfooter\r\n--m\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=e\r\n\r\n--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--e\r\nContent-Type: application/octet-stream\r\n\r\n{armored}\r\n--e--\r\n--m--\r\n"
        );
        assert!(decrypt(footer.as_bytes(), &account("bob"), &NoKeys).is_ok());
        let wrong_protocol =
            String::from_utf8(raw).unwrap().replace("application/pgp-encrypted\";", "application/x-other\";");
        assert!(encrypted_payload(wrong_protocol.as_bytes()).is_none());
    }
}
