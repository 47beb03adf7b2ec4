//! Outgoing mail: a plain client's RFC 5322 message made into PGP/MIME (RFC 3156) in exactly the
//! shape Delta Chat 2.65 sends (chatmail/core `mimefactory.rs` `render_queued_mail`; compare
//! `tests/fixtures/deltachat/`), and the user's Autocrypt header on mail that stays clear.
//!
//! Outer (what the provider stores): `From: <addr>`, `Date`, `Message-ID`, `MIME-Version`,
//! `To: "hidden-recipients": ;`, `Subject: [...]`, `Content-Type: multipart/encrypted` (Delta
//! Chat 2.65 copies no `Chat-Version` outside). Inner: the client's own header
//! fields (real From with name, To, Cc, Subject, Date, In-Reply-To, References, …) plus
//! `HP-Outer:` records of every outer value (RFC 9788), the user's `Autocrypt` header,
//! `Autocrypt-Gossip` for each To/Cc recipient when there are two or more, and the root
//! Content-Type marked `protected-headers="v1"; hp="cipher"`. Signed; encrypted to every
//! recipient and to ourselves (Delta Chat does so "to not reveal multi-device"); SEIPDv2 only if
//! every key advertises it; anonymous recipient key IDs; ZLIB compression except for SecureJoin.
//!
//! One deliberate difference: the outer `Date` is the client's real Date, where Delta Chat puts
//! a random date up to six days back. The provider and every relay stamp the real time into
//! `Received` anyway, so the random date hides nothing from them, while any recipient whose
//! program reads only outer headers (and the user's own Sent copy at a provider's web mail)
//! would sort the message days off. Delta Chat reads the inner Date, so it sees no difference.
//!
//! `Bcc` never appears in either header section, and Bcc recipients are never gossiped (that
//! would reveal them to the others); they are only encrypted to.

use pgp::composed::{ArmorOptions, MessageBuilder, SubpacketConfig};
use pgp::crypto::aead::{AeadAlgorithm, ChunkSize};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{Subpacket, SubpacketData};
use pgp::types::{CompressionAlgorithm, KeyDetails, KeyVersion, Password, StringToKey, Timestamp};
use rand_core_06::{OsRng, RngCore};

use super::autocrypt::{AutocryptHeader, PreferEncrypt};
use super::key::{AccountKey, PublicKey, short};
use super::mime::{self, Field, canonical_addr, fold};

/// Largest message we encrypt (the SMTP side has its own, usually smaller, limit).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Delta Chat's symmetric algorithm for messages.
const SYMMETRIC: SymmetricKeyAlgorithm = SymmetricKeyAlgorithm::AES128;
/// Delta Chat's outer `To` of every encrypted message.
const HIDDEN_RECIPIENTS: &str = "\"hidden-recipients\": ;";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("the message is {0} bytes, more than the {MAX_MESSAGE} we encrypt")]
    TooLarge(usize),
    #[error("the message is already encrypted")]
    AlreadyEncrypted,
    #[error("the message has no From address")]
    NoFrom,
    #[error("the message is from {from}, but the key is {account}'s")]
    NotFromAccount { from: String, account: String },
    #[error("no recipient to encrypt to")]
    NoRecipients,
    #[error("OpenPGP encryption failed: {0}")]
    Pgp(String),
}

/// What an outgoing message is, for the gateway's handling of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// `multipart/encrypted`, or carries an OpenPGP message inline: passes untouched.
    AlreadyEncrypted,
    /// Carries its own Autocrypt header (a chat client or an OpenPGP-capable program with its
    /// own key): never gets a second one and is not encrypted by us.
    OwnAutocrypt,
    /// A plain message: gets our Autocrypt header, and is encrypted when the decision says so.
    Plain,
}

/// Classifies an outgoing message by its header section and body.
pub fn classify(message: &[u8]) -> Outgoing {
    let (header, body) = mime::split(message);
    let content_type = mime::first_value(header, "Content-Type").and_then(|v| mime::content_type(&v));
    if content_type.is_some_and(|ct| ct.mime == "multipart/encrypted")
        || memchr::memmem::find(body, b"-----BEGIN PGP MESSAGE-----").is_some()
    {
        return Outgoing::AlreadyEncrypted;
    }
    if mime::fields(header).iter().any(|f| f.is("Autocrypt")) {
        return Outgoing::OwnAutocrypt;
    }
    Outgoing::Plain
}

/// Adds the user's `Autocrypt` header to a clear message, at the end of its header section, if
/// it is [`Outgoing::Plain`] and from the key's address; otherwise the message is returned
/// unchanged. Line ends become CRLF.
pub fn add_autocrypt(message: &[u8], key: &AccountKey, prefer: PreferEncrypt) -> Vec<u8> {
    let (header, body) = mime::split(message);
    let from_account = mime::first_value(header, "From")
        .and_then(|v| mime::mailboxes(&v).into_iter().next())
        .is_some_and(|m| canonical_addr(&m.addr) == key.addr());
    if classify(message) != Outgoing::Plain || !from_account {
        return mime::normalize_crlf(message);
    }
    let autocrypt = own_header(key, prefer).field("Autocrypt");
    let mut out = mime::normalize_crlf(header);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(autocrypt.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&mime::normalize_crlf(body));
    out
}

/// What the gateway sends for one outgoing message ([`prepare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Already encrypted, or carrying its own Autocrypt header: send the message as it is.
    AsIs,
    /// In clear with the user's Autocrypt header, because these recipients have no key.
    Clear { message: Vec<u8>, without_key: Vec<String> },
    /// Encrypted and signed to every recipient.
    Encrypted { message: Vec<u8> },
    /// Not to be sent: some recipients have no key and others are verified contacts, who must
    /// never get clear text silently. The SMTP side answers with an error naming them.
    Refused { without_key: Vec<String>, verified: Vec<String> },
}

/// The SMTP entry point: decides and builds what goes out for a message from the account to
/// `envelope` (every RCPT TO, so Bcc recipients count), knowing peers through `known`.
pub fn prepare(
    message: &[u8],
    key: &AccountKey,
    envelope: &[String],
    known: &dyn Fn(&str) -> Option<super::peer::Peer>,
    prefer: PreferEncrypt,
    now: i64,
) -> Result<Prepared, EncryptError> {
    use super::recommend::{Decision, decide};
    if classify(message) != Outgoing::Plain {
        return Ok(Prepared::AsIs);
    }
    let peers: Vec<(String, Option<super::peer::Peer>)> = envelope
        .iter()
        .map(|a| canonical_addr(a))
        .filter(|a| a != key.addr())
        .map(|a| {
            let p = known(&a);
            (a, p)
        })
        .collect();
    let view: Vec<(&str, Option<&super::peer::Peer>)> = peers.iter().map(|(a, p)| (a.as_str(), p.as_ref())).collect();
    match decide(&view) {
        Decision::Encrypt(keys) => {
            Ok(Prepared::Encrypted { message: encrypt(message, key, &keys, &Options::mail(prefer, now))? })
        }
        Decision::Clear { .. } if peers.is_empty() => {
            // Only to ourselves: encrypt to our own key.
            let message = seal(message, key, Target::Keys(&[]), &Options::mail(prefer, now))?;
            Ok(Prepared::Encrypted { message })
        }
        Decision::Clear { without_key } => {
            Ok(Prepared::Clear { message: add_autocrypt(message, key, prefer), without_key })
        }
        Decision::Refuse { without_key, verified } => Ok(Prepared::Refused { without_key, verified }),
    }
}

fn own_header(key: &AccountKey, prefer: PreferEncrypt) -> AutocryptHeader {
    AutocryptHeader {
        addr: key.addr().to_string(),
        prefer_encrypt: prefer,
        key: key.public_key().clone(),
        verified: false,
    }
}

/// How the inner message is encrypted.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// To these recipients' keys (and always to the account's own key).
    Keys(&'a [(String, PublicKey)]),
    /// With a password (SecureJoin v3 steps: `securejoin/<inviter fingerprint>/<auth>`).
    Password(&'a str),
}

/// Options of one encryption; [`Options::mail`] gives the ones for ordinary mail.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The account's Autocrypt preference, written into its Autocrypt header.
    pub prefer: PreferEncrypt,
    /// Attach the account's Autocrypt header inside.
    pub attach_key: bool,
    /// Sign with the account's key.
    pub sign: bool,
    /// ZLIB-compress before encryption (Delta Chat does, except for SecureJoin messages so no
    /// compression side channel leaks the tokens).
    pub compress: bool,
    /// Gossip every To/Cc recipient's key when there are at least this many recipients other
    /// than the sender (Delta Chat: 2; SecureJoin messages: 1).
    pub gossip_from: usize,
    /// Keep the client's `Bcc` inside: only for a copy encrypted to the account alone (its own
    /// Sent or Drafts copy), where the field reveals nothing to anyone but its writer.
    pub keep_bcc: bool,
    /// Current time (seconds), for a missing Date and the signature time.
    pub now: i64,
}

impl Options {
    pub fn mail(prefer: PreferEncrypt, now: i64) -> Options {
        Options { prefer, attach_key: true, sign: true, compress: true, gossip_from: 2, keep_bcc: false, now }
    }
}

/// Encrypts and signs a plain client's message to `recipients` (from
/// [`super::recommend::Decision::Encrypt`]), in Delta Chat's shape.
pub fn encrypt(
    message: &[u8],
    key: &AccountKey,
    recipients: &[(String, PublicKey)],
    options: &Options,
) -> Result<Vec<u8>, EncryptError> {
    if recipients.is_empty() {
        return Err(EncryptError::NoRecipients);
    }
    if classify(message) == Outgoing::AlreadyEncrypted {
        return Err(EncryptError::AlreadyEncrypted);
    }
    seal(message, key, Target::Keys(recipients), options)
}

/// The general form behind [`encrypt`], also used for SecureJoin messages: protected headers,
/// encryption to `target`, PGP/MIME.
pub fn seal(message: &[u8], key: &AccountKey, target: Target<'_>, options: &Options) -> Result<Vec<u8>, EncryptError> {
    if message.len() > MAX_MESSAGE {
        return Err(EncryptError::TooLarge(message.len()));
    }
    let message = mime::normalize_crlf(message);
    let (header, body) = mime::split(&message);
    let fields = mime::fields(header);
    let from = fields
        .iter()
        .find(|f| f.is("From"))
        .and_then(|f| mime::mailboxes(&f.value()).into_iter().next())
        .ok_or(EncryptError::NoFrom)?;
    let from_addr = canonical_addr(&from.addr);
    if from_addr != key.addr() {
        return Err(EncryptError::NotFromAccount { from: from_addr, account: key.addr().to_string() });
    }
    let value_of = |name: &str| fields.iter().find(|f| f.is(name)).map(Field::value);
    let date = value_of("Date").unwrap_or_else(|| mime::format_date(options.now));
    let message_id = value_of("Message-ID").unwrap_or_else(|| new_message_id(&from_addr));
    let gossip = gossip_keys(&fields, &from_addr, target, options.gossip_from);

    let mut outer = String::new();
    let mut inner = String::new();
    let add = |s: &mut String, name: &str, value: &str| s.push_str(&fold(name, value));
    let from_field = fields.iter().find(|f| f.is("From")).map(|f| lossy(&f.crlf())).unwrap_or_default();
    inner.push_str(&from_field);
    add(&mut outer, "From", &format!("<{from_addr}>"));
    add(&mut inner, "HP-Outer", &format!("From: <{from_addr}>"));
    add(&mut outer, "Date", &date);
    add(&mut inner, "HP-Outer", &format!("Date: {date}"));
    add(&mut inner, "Message-ID", &message_id);
    add(&mut outer, "Message-ID", &message_id);
    add(&mut inner, "HP-Outer", &format!("Message-ID: {message_id}"));
    outer.push_str("MIME-Version: 1.0\r\n");
    if options.attach_key {
        inner.push_str(&own_header(key, options.prefer).field("Autocrypt"));
    }
    // Outer copies, in the order of the client's fields, each recorded inside as HP-Outer.
    for field in &fields {
        let outer_value = if field.is("To") {
            HIDDEN_RECIPIENTS.to_string()
        } else if field.is("Subject") {
            "[...]".to_string()
        } else {
            continue;
        };
        add(&mut outer, &field.name, &outer_value);
        add(&mut inner, "HP-Outer", &format!("{}: {outer_value}", field.name));
    }
    let content_type = value_of("Content-Type").unwrap_or_else(|| "text/plain; charset=\"us-ascii\"".into());
    add(&mut inner, "Content-Type", &format!("{content_type}; protected-headers=\"v1\"; hp=\"cipher\""));
    let dropped =
        ["From", "Message-ID", "MIME-Version", "Content-Type", "Bcc", "Autocrypt", "Content-Transfer-Encoding"];
    let own_only = options.keep_bcc && matches!(target, Target::Keys([]));
    let kept = |f: &Field<'_>| !dropped.iter().any(|d| f.is(d)) || (own_only && f.is("Bcc"));
    for field in fields.iter().filter(|f| !f.name.is_empty() && kept(f)) {
        inner.push_str(&lossy(&field.crlf()));
    }
    for header in &gossip {
        inner.push_str(&header.field("Autocrypt-Gossip"));
    }
    if let Some(cte) = fields.iter().find(|f| f.is("Content-Transfer-Encoding")) {
        inner.push_str(&lossy(&cte.crlf()));
    }
    let mut inner = inner.into_bytes();
    inner.extend_from_slice(b"\r\n");
    inner.extend_from_slice(body);

    let armored = pgp_encrypt(inner, key, target, options)?;
    let boundary = boundary();
    add(
        &mut outer,
        "Content-Type",
        &format!("multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"{boundary}\""),
    );
    let mut out = outer.into_bytes();
    out.extend_from_slice(
        format!(
            "\r\n\r\n--{boundary}\r\nContent-Type: application/pgp-encrypted; charset=\"utf-8\"\r\n\
             Content-Transfer-Encoding: 7bit\r\n\r\nVersion: 1\r\n\r\n--{boundary}\r\n\
             Content-Type: application/octet-stream; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&mime::normalize_crlf(armored.trim_end().as_bytes()));
    out.extend_from_slice(format!("\r\n\r\n--{boundary}--\r\n").as_bytes());
    Ok(out)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Autocrypt-Gossip headers: for every To/Cc recipient we encrypt to (never Bcc, never the
/// sender), when there are at least `from` of them.
fn gossip_keys(fields: &[Field<'_>], sender: &str, target: Target<'_>, from: usize) -> Vec<AutocryptHeader> {
    let Target::Keys(keys) = target else {
        return Vec::new();
    };
    let visible: Vec<String> = fields
        .iter()
        .filter(|f| f.is("To") || f.is("Cc"))
        .flat_map(|f| mime::mailboxes(&f.value()))
        .map(|m| canonical_addr(&m.addr))
        .filter(|a| a != sender)
        .collect();
    let mut out: Vec<AutocryptHeader> = Vec::new();
    for addr in &visible {
        if out.iter().any(|h| &h.addr == addr) {
            continue;
        }
        if let Some((_, key)) = keys.iter().find(|(a, _)| &canonical_addr(a) == addr) {
            out.push(AutocryptHeader {
                addr: addr.clone(),
                prefer_encrypt: PreferEncrypt::NoPreference,
                key: key.clone(),
                verified: false,
            });
        }
    }
    if out.len() < from.max(1) { Vec::new() } else { out }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A boundary in mail-builder's shape (three 64-bit hex numbers), as Delta Chat's.
fn boundary() -> String {
    format!("{}_{}_{}", random_hex(8), random_hex(8), random_hex(8))
}

/// A Message-ID for a message that has none: random, under the sender's domain.
pub fn new_message_id(from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    format!("<{}@{domain}>", random_hex(16))
}

/// Signs (Delta Chat's subpackets: creation time, an intended recipient fingerprint per key,
/// issuer fingerprint; issuer key ID unhashed), optionally compresses, and encrypts.
fn pgp_encrypt(
    inner: Vec<u8>,
    key: &AccountKey,
    target: Target<'_>,
    options: &Options,
) -> Result<String, EncryptError> {
    let fail = |e: pgp::errors::Error| EncryptError::Pgp(short(&e));
    let secret = key.signed_secret();
    let mut rng = OsRng;
    let builder = MessageBuilder::from_bytes("", inner);
    let hash = HashAlgorithm::Sha256;
    match target {
        Target::Password(password) => {
            let mut salt = [0u8; 8];
            rng.fill_bytes(&mut salt);
            let s2k = StringToKey::Salted { hash_alg: HashAlgorithm::default(), salt };
            let mut builder = builder.seipd_v2(&mut rng, SYMMETRIC, AeadAlgorithm::Ocb, ChunkSize::C8KiB);
            builder.encrypt_with_password(rng, s2k, &Password::from(password)).map_err(fail)?;
            if options.sign {
                builder.sign(&**secret, Password::empty(), hash);
            }
            if options.compress {
                builder.compression(CompressionAlgorithm::ZLIB);
            }
            builder.to_armored_string(rng, ArmorOptions::default()).map_err(fail)
        }
        Target::Keys(recipients) => {
            let mut keys: Vec<&PublicKey> = vec![key.public_key()];
            keys.extend(recipients.iter().map(|(_, k)| k).filter(|k| k.fingerprint() != key.fingerprint()));
            let subpackets = || -> Result<SubpacketConfig, pgp::errors::Error> {
                let mut hashed = vec![Subpacket::critical(SubpacketData::SignatureCreationTime(
                    Timestamp::from_secs(u32::try_from(options.now).unwrap_or(0)),
                ))?];
                for k in &keys {
                    let data = SubpacketData::IntendedRecipientFingerprint(k.signed().fingerprint());
                    hashed.push(if secret.version() < KeyVersion::V6 {
                        Subpacket::regular(data)?
                    } else {
                        Subpacket::critical(data)?
                    });
                }
                hashed.push(Subpacket::regular(SubpacketData::IssuerFingerprint(secret.fingerprint()))?);
                let mut unhashed = vec![];
                if secret.version() <= KeyVersion::V4 {
                    unhashed.push(Subpacket::regular(SubpacketData::IssuerKeyId(secret.legacy_key_id()))?);
                }
                Ok(SubpacketConfig::UserDefined { hashed, unhashed })
            };
            macro_rules! finish {
                ($builder:expr) => {{
                    let mut builder = $builder;
                    for k in &keys {
                        let subkey = k
                            .encryption_subkey()
                            .ok_or_else(|| EncryptError::Pgp("a key without encryption subkey".into()))?;
                        builder.encrypt_to_key_anonymous(&mut rng, subkey).map_err(fail)?;
                    }
                    if options.sign {
                        builder.sign_with_subpackets(&**secret, Password::empty(), hash, subpackets().map_err(fail)?);
                    }
                    if options.compress {
                        builder.compression(CompressionAlgorithm::ZLIB);
                    }
                    builder.to_armored_string(&mut rng, ArmorOptions::default()).map_err(fail)
                }};
            }
            if keys.iter().all(|k| k.supports_seipd_v2()) {
                finish!(builder.seipd_v2(&mut rng, SYMMETRIC, AeadAlgorithm::Ocb, ChunkSize::C8KiB))
            } else {
                finish!(builder.seipd_v1(&mut rng, SYMMETRIC))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, fixture};
    use crate::openpgp::decrypt::{Method, NoKeys, SignatureStatus, decrypt, decrypt_with_passwords};

    const NOW: i64 = 1_796_499_351;

    fn client_message() -> Vec<u8> {
        b"From: Alice Example <alice@example.org>\r\n\
To: Bob <bob@example.org>\r\n\
Cc: carol@example.org\r\n\
Bcc: dave@example.org\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
Date: Sat, 5 Dec 2026 19:35:50 +0000\r\n\
Message-ID: <m1@example.org>\r\n\
In-Reply-To: <m0@example.org>\r\n\
References: <m0@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
X-Mailer: Outlook\r\n\
\r\n\
Hallo Bob, hallo Carol.\r\n"
            .to_vec()
    }

    /// A Delta Chat account's key (alice, bob, carol) or, for dave, a generated one.
    fn key_of(name: &str) -> AccountKey {
        static DAVE: std::sync::OnceLock<AccountKey> = std::sync::OnceLock::new();
        if name == "dave" {
            DAVE.get_or_init(|| AccountKey::generate("dave@example.org").unwrap()).clone()
        } else {
            account(name)
        }
    }

    fn recipients(names: &[&str]) -> Vec<(String, PublicKey)> {
        names.iter().map(|n| (format!("{n}@example.org"), key_of(n).public_key().clone())).collect()
    }

    fn names(header: &[u8]) -> Vec<String> {
        mime::fields(header).into_iter().map(|f| f.name).collect()
    }

    #[test]
    fn delta_chat_shape_outside_and_inside() {
        let alice = account("alice");
        let out = encrypt(
            &client_message(),
            &alice,
            &recipients(&["bob", "carol", "dave"]),
            &Options::mail(PreferEncrypt::Mutual, NOW),
        )
        .unwrap();
        let (outer, _) = mime::split(&out);
        assert_eq!(names(outer), ["From", "Date", "Message-ID", "MIME-Version", "To", "Subject", "Content-Type"]);
        // The same outer fields, in the same order, as Delta Chat's own message (after the
        // provider's trace fields).
        let dc = fixture("one-to-one.eml");
        let dc_names: Vec<String> = names(mime::split(&dc).0)
            .into_iter()
            .filter(|n| !["Return-Path", "Delivered-To", "Received"].contains(&n.as_str()))
            .collect();
        assert_eq!(names(outer), dc_names);
        let value = |n: &str| mime::first_value(outer, n).unwrap();
        assert_eq!(value("From"), "<alice@example.org>");
        assert_eq!(value("Date"), "Sat, 5 Dec 2026 19:35:50 +0000");
        assert_eq!(value("To"), "\"hidden-recipients\": ;");
        assert_eq!(value("Subject"), "[...]");
        assert_eq!(value("Message-ID"), "<m1@example.org>");
        assert!(!String::from_utf8_lossy(&out).contains("dave@"), "Bcc appears nowhere in clear");
        assert!(encrypted_payload_is_armored(&out));

        for reader in ["bob", "carol", "dave"] {
            let d = decrypt(&out, &key_of(reader), &NoKeys).unwrap();
            assert_eq!(d.signature, SignatureStatus::Valid(alice.fingerprint().clone()), "{reader}");
            assert_eq!(d.method, Method::PublicKey { seipd_v2: true });
            assert_eq!(d.protected.subject.as_deref(), Some("Grüße"));
            assert_eq!(d.protected.in_reply_to.as_deref(), Some("<m0@example.org>"));
            assert_eq!(d.protected.recipients(), ["bob@example.org", "carol@example.org"]);
            assert_eq!(d.from.as_ref().unwrap().name.as_deref(), Some("Alice Example"));
            assert_eq!(d.autocrypt.as_ref().unwrap().key.fingerprint(), alice.fingerprint());
            let gossiped: Vec<&str> = d.gossip.iter().map(|g| g.addr.as_str()).collect();
            assert_eq!(gossiped, ["bob@example.org", "carol@example.org"], "To/Cc gossiped, Bcc not");
            for k in [alice.fingerprint(), key_of(reader).fingerprint()] {
                assert!(d.intended_recipients.contains(k));
            }
            let inner = d.inner_header();
            let hp: Vec<String> = mime::all_values(inner, "HP-Outer");
            assert_eq!(
                hp,
                [
                    "From: <alice@example.org>",
                    "Date: Sat, 5 Dec 2026 19:35:50 +0000",
                    "Message-ID: <m1@example.org>",
                    "To: \"hidden-recipients\": ;",
                    "Subject: [...]"
                ]
            );
            assert_eq!(
                mime::first_value(inner, "Content-Type").unwrap(),
                "text/plain; charset=utf-8; protected-headers=\"v1\"; hp=\"cipher\""
            );
            assert!(mime::first_value(inner, "Bcc").is_none() && mime::first_value(inner, "MIME-Version").is_none());
            assert_eq!(mime::first_value(inner, "X-Mailer").as_deref(), Some("Outlook"));
            assert!(mime::split(&d.inner).1 == b"Hallo Bob, hallo Carol.\r\n");
        }
        // Delta Chat's inner order: From, HP-Outer ×3 with Message-ID between, Autocrypt,
        // HP-Outer for To and Subject, Content-Type, then the message's own fields.
        let d = decrypt(&out, &account("bob"), &NoKeys).unwrap();
        let inner_names = names(d.inner_header());
        assert_eq!(
            &inner_names[..9],
            [
                "From",
                "HP-Outer",
                "HP-Outer",
                "Message-ID",
                "HP-Outer",
                "Autocrypt",
                "HP-Outer",
                "HP-Outer",
                "Content-Type"
            ]
        );
        assert_eq!(inner_names.last().map(String::as_str), Some("Content-Transfer-Encoding"));
        assert!(carol_cannot_read_without_key(&out));
    }

    fn encrypted_payload_is_armored(out: &[u8]) -> bool {
        crate::openpgp::decrypt::encrypted_payload(out).is_some_and(|p| p.starts_with(b"-----BEGIN PGP MESSAGE-----"))
    }

    fn carol_cannot_read_without_key(out: &[u8]) -> bool {
        let stranger = AccountKey::generate("carol@example.org").unwrap();
        decrypt(out, &stranger, &NoKeys).is_err()
    }

    #[test]
    fn one_recipient_gets_no_gossip_and_self_is_never_gossiped() {
        let alice = account("alice");
        let msg = b"From: alice@example.org\r\nTo: bob@example.org, alice@example.org\r\nSubject: hi\r\n\r\nhi\r\n";
        let out =
            encrypt(msg, &alice, &recipients(&["bob", "alice"]), &Options::mail(PreferEncrypt::Mutual, NOW)).unwrap();
        let d = decrypt(&out, &account("bob"), &NoKeys).unwrap();
        assert!(d.gossip.is_empty());
        assert!(mime::first_value(d.inner_header(), "Autocrypt-Gossip").is_none());
        // No Date in the client's message: now.
        assert_eq!(mime::first_value(mime::split(&out).0, "Date").unwrap(), mime::format_date(NOW));
        // No Content-Type: plain text, marked.
        assert!(
            mime::first_value(d.inner_header(), "Content-Type")
                .unwrap()
                .starts_with("text/plain; charset=\"us-ascii\"; protected-headers")
        );
        // A new Message-ID under the sender's domain.
        assert!(mime::first_value(mime::split(&out).0, "Message-ID").unwrap().ends_with("@example.org>"));
    }

    #[test]
    fn seipd_v1_when_a_key_lacks_the_feature() {
        use pgp::composed::{EncryptionCaps, KeyType, SecretKeyParamsBuilder, SubkeyParamsBuilder};
        use pgp::crypto::ecc_curve::ECCCurve;
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("<old@example.org>".into())
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
                    .can_encrypt(EncryptionCaps::All)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let old = PublicKey::new(params.generate(OsRng).unwrap().to_public_key()).unwrap();
        assert!(!old.supports_seipd_v2());
        let alice = account("alice");
        let msg = b"From: alice@example.org\r\nTo: bob@example.org, old@example.org\r\nSubject: hi\r\n\r\nhi\r\n";
        let mut to = recipients(&["bob"]);
        to.push(("old@example.org".into(), old));
        let out = encrypt(msg, &alice, &to, &Options::mail(PreferEncrypt::Mutual, NOW)).unwrap();
        assert_eq!(decrypt(&out, &account("bob"), &NoKeys).unwrap().method, Method::PublicKey { seipd_v2: false });
    }

    #[test]
    fn password_target_for_securejoin() {
        let alice = account("alice");
        let msg = b"From: <alice@example.org>\r\nTo: \"hidden-recipients\":;\r\nSubject: Secure-Join\r\nSecure-Join: vc-pubkey\r\n\r\nSecure-Join";
        let options = Options { compress: false, gossip_from: 1, ..Options::mail(PreferEncrypt::Mutual, NOW) };
        let out = seal(msg, &alice, Target::Password("securejoin/FPR/auth"), &options).unwrap();
        assert_eq!(
            decrypt(&out, &account("bob"), &NoKeys).unwrap_err(),
            crate::openpgp::decrypt::DecryptError::PasswordOnly
        );
        let d = decrypt_with_passwords(&out, &["securejoin/FPR/auth"], &NoKeys).unwrap();
        assert_eq!(d.signature, SignatureStatus::Valid(alice.fingerprint().clone()));
        assert_eq!(d.protected.secure_join.as_deref(), Some("vc-pubkey"));
        let unsigned = Options { sign: false, attach_key: false, ..options };
        let out = seal(msg, &alice, Target::Password("pw"), &unsigned).unwrap();
        let d = decrypt_with_passwords(&out, &["pw"], &NoKeys).unwrap();
        assert_eq!(d.signature, SignatureStatus::Unsigned);
        assert!(d.autocrypt.is_none());
    }

    #[test]
    fn classification_and_the_autocrypt_header_on_clear_mail() {
        assert_eq!(classify(&fixture("one-to-one.eml")), Outgoing::AlreadyEncrypted);
        let inline =
            b"From: a@example.org\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nxx\r\n-----END PGP MESSAGE-----\r\n";
        assert_eq!(classify(inline), Outgoing::AlreadyEncrypted);
        let plain = b"From: alice@example.org\nTo: bob@example.org\nSubject: hi\n\nhello\n";
        assert_eq!(classify(plain), Outgoing::Plain);
        let alice = account("alice");
        let with = add_autocrypt(plain, &alice, PreferEncrypt::Mutual);
        assert_eq!(classify(&with), Outgoing::OwnAutocrypt);
        let (h, b) = mime::split(&with);
        let value = mime::first_value(h, "Autocrypt").unwrap();
        let header = AutocryptHeader::parse(&value).unwrap();
        assert_eq!((header.addr.as_str(), header.prefer_encrypt), ("alice@example.org", PreferEncrypt::Mutual));
        assert_eq!(b, b"hello\r\n");
        // Never a second header; never on encrypted mail or mail from another address.
        assert_eq!(add_autocrypt(&with, &alice, PreferEncrypt::Mutual), with);
        let enc = fixture("one-to-one.eml");
        assert_eq!(add_autocrypt(&enc, &alice, PreferEncrypt::Mutual), mime::normalize_crlf(&enc));
        let other = b"From: mallory@example.org\r\n\r\nx\r\n";
        assert_eq!(add_autocrypt(other, &alice, PreferEncrypt::Mutual), other.to_vec());
        assert!(
            encrypt(&with, &alice, &recipients(&["bob"]), &Options::mail(PreferEncrypt::Mutual, NOW)).is_ok(),
            "our own header on the message is replaced by the inner one, not duplicated"
        );
    }

    #[test]
    fn the_smtp_entry_point_decides() {
        use crate::openpgp::peer::{Peer, verify};
        let alice = account("alice");
        let bob_peer = Peer { public_key: Some(account("bob").public_key().clone()), ..Peer::new("bob@example.org") };
        let carol_verified =
            verify(None, "carol@example.org", account("carol").public_key(), 1).peer().cloned().unwrap();
        let known = move |a: &str| match a {
            "bob@example.org" => Some(bob_peer.clone()),
            "carol@example.org" => Some(carol_verified.clone()),
            _ => None,
        };
        let msg = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: s\r\n\r\nbody\r\n";
        let env = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = |e: &[&str]| prepare(msg, &alice, &env(e), &known, PreferEncrypt::Mutual, NOW).unwrap();
        let Prepared::Encrypted { message } = p(&["bob@example.org", "Carol@example.org"]) else { panic!() };
        assert!(decrypt(&message, &account("carol"), &NoKeys).is_ok(), "Bcc'd carol can read it");
        let Prepared::Clear { message, without_key } = p(&["bob@example.org", "dave@example.org"]) else { panic!() };
        assert_eq!(without_key, ["dave@example.org"]);
        assert_eq!(classify(&message), Outgoing::OwnAutocrypt);
        assert_eq!(
            p(&["carol@example.org", "dave@example.org"]),
            Prepared::Refused {
                without_key: vec!["dave@example.org".into()],
                verified: vec!["carol@example.org".into()]
            }
        );
        let Prepared::Encrypted { message } = p(&["alice@example.org"]) else { panic!() };
        assert!(decrypt(&message, &alice, &NoKeys).is_ok(), "a message to oneself is encrypted to oneself");
        assert_eq!(
            prepare(&fixture("one-to-one.eml"), &alice, &env(&["bob@example.org"]), &known, PreferEncrypt::Mutual, NOW)
                .unwrap(),
            Prepared::AsIs
        );
    }

    #[test]
    fn errors() {
        let alice = account("alice");
        let opts = Options::mail(PreferEncrypt::Mutual, NOW);
        let to = recipients(&["bob"]);
        assert_eq!(
            encrypt(&fixture("one-to-one.eml"), &alice, &to, &opts).unwrap_err(),
            EncryptError::AlreadyEncrypted
        );
        assert_eq!(encrypt(b"Subject: x\r\n\r\nx", &alice, &to, &opts).unwrap_err(), EncryptError::NoFrom);
        assert_eq!(
            encrypt(b"From: bob@example.org\r\n\r\nx", &alice, &to, &opts).unwrap_err(),
            EncryptError::NotFromAccount { from: "bob@example.org".into(), account: "alice@example.org".into() }
        );
        assert_eq!(
            encrypt(b"From: alice@example.org\r\n\r\nx", &alice, &[], &opts).unwrap_err(),
            EncryptError::NoRecipients
        );
    }
}
