//! The account's OpenPGP identity and peers' public keys.
//!
//! An account key has Delta Chat's shape (chatmail/core `pgp.rs` `create_keypair` and `key.rs`
//! `secret_key_to_public_key`): an Ed25519 signing and certifying primary key, one X25519
//! encryption subkey, user ID `<addr>`, preferred algorithms AES256/192/128, SHA256/384/512/224,
//! ZLIB/ZIP, AEAD AES256-OCB, and the SEIPDv2 feature. The public key we publish is re-certified
//! the way Delta Chat publishes its own (a user-ID certification and a direct-key signature with
//! the `relays@chatmail.at` notation), so Delta Chat treats it exactly like one of its own.
//!
//! Secret key material only leaves this module as a [`Secret`] (redacted `Debug`, wiped on
//! drop); [`AccountKey`]'s `Debug` shows the address and fingerprint only, and no error text
//! carries key bytes. Generation and import are synchronous CPU work: callers on the runtime use
//! `spawn_blocking`.
//!
//! RSA secret keys are refused at import: the `rsa` crate has an unfixed timing side channel in
//! decryption (RUSTSEC-2023-0071) and the gateway decrypts whatever arrives, which is the
//! oracle that attack needs. RSA *public* keys of peers are fine (no secret is involved).

use std::fmt;
use std::io::Cursor;

use pgp::composed::{
    ArmorOptions, Deserializable, EncryptionCaps, KeyType, MessageBuilder, SecretKeyParamsBuilder, SignedKeyDetails,
    SignedPublicKey, SignedPublicSubKey, SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::aead::AeadAlgorithm;
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::public_key::PublicKeyAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{
    Features, KeyFlags, Notation, PacketTrait, SignatureConfig, SignatureType, Subpacket, SubpacketData, UserId,
};
use pgp::ser::Serialize;
use pgp::types::{CompressionAlgorithm, KeyDetails, KeyVersion, PacketHeaderVersion, Password, Timestamp};
use rand_core_06::OsRng;
use smallvec::smallvec;

use super::fingerprint::Fingerprint;
use super::mime::canonical_addr;
use crate::secret::Secret;

/// Largest armored key we read (a Delta Chat secret key is under 1 KiB; a large RSA key with
/// many signatures a few tens of KiB).
pub const MAX_ARMORED_KEY: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a usable e-mail address for a key: {0:?}")]
    BadAddress(String),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("the input is {0} bytes, more than an OpenPGP key can reasonably be ({MAX_ARMORED_KEY})")]
    TooLarge(usize),
    #[error("no ASCII-armored OpenPGP key found (expected \"-----BEGIN PGP PRIVATE KEY BLOCK-----\")")]
    NotArmored,
    #[error("this is a public key; the gateway needs the secret key (export it with its secret part)")]
    PublicNotSecret,
    #[error("the OpenPGP key cannot be parsed: {0}")]
    Malformed(String),
    #[error("the key's self-signatures do not verify: {0}")]
    BadSelfSignature(String),
    #[error("the secret key is protected by a passphrase; give the passphrase or export it without one")]
    PassphraseRequired,
    #[error("wrong passphrase for the secret key")]
    WrongPassphrase,
    #[error(
        "RSA secret keys are not accepted (unfixed timing side channel in RSA decryption, RUSTSEC-2023-0071); use an Ed25519/X25519 key such as Delta Chat's"
    )]
    RsaSecretKey,
    #[error("the primary key cannot sign (algorithm {0})")]
    CannotSign(String),
    #[error("the key has no usable encryption subkey (valid, not expired, not revoked, flagged for encryption)")]
    NoEncryptionSubkey,
    #[error("the key is for {found:?}, not for {expected}")]
    AddressMismatch { expected: String, found: Vec<String> },
    #[error("the key failed its self-test (sign, encrypt, decrypt, verify): {0}")]
    SelfTest(String),
    #[error("serializing the key failed: {0}")]
    Serialize(String),
}

/// The account's own key: secret key, the public key as published, address, fingerprint.
#[derive(Clone)]
pub struct AccountKey {
    addr: String,
    secret: SignedSecretKey,
    public: PublicKey,
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("addr", &self.addr)
            .field("fingerprint", &self.public.fingerprint())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl AccountKey {
    /// Generates a new Delta-Chat-shaped key for `addr`. CPU-bound (tens of milliseconds):
    /// call from `spawn_blocking` when on the runtime.
    pub fn generate(addr: &str) -> Result<AccountKey, KeyError> {
        let addr = checked_addr(addr)?;
        let subkey = SubkeyParamsBuilder::default()
            .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
            .can_encrypt(EncryptionCaps::All)
            .passphrase(None)
            .build()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .feature_seipd_v2(true)
            .primary_user_id(format!("<{addr}>"))
            .passphrase(None)
            .preferred_symmetric_algorithms(smallvec![
                SymmetricKeyAlgorithm::AES256,
                SymmetricKeyAlgorithm::AES192,
                SymmetricKeyAlgorithm::AES128,
            ])
            .preferred_hash_algorithms(smallvec![
                HashAlgorithm::Sha256,
                HashAlgorithm::Sha384,
                HashAlgorithm::Sha512,
                HashAlgorithm::Sha224,
            ])
            .preferred_compression_algorithms(smallvec![CompressionAlgorithm::ZLIB, CompressionAlgorithm::ZIP])
            .subkey(subkey)
            .build()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let secret = params.generate(OsRng).map_err(|e| KeyError::Generate(e.to_string()))?;
        secret.verify_bindings().map_err(|e| KeyError::Generate(e.to_string()))?;
        AccountKey::from_secret(secret, &addr)
    }

    /// Imports an ASCII-armored secret key (as Delta Chat's "export secret keys" or Thunderbird
    /// writes it) for `addr`, after checking that it can sign and encrypt, that one of its user
    /// IDs is `addr`, and that a sign-encrypt-decrypt-verify round trip works. A passphrase, if
    /// given, unlocks a protected key; the imported key is kept unprotected (it is sealed at rest
    /// by the store instead, see `crate::seal`).
    pub fn import_armored(armored: &[u8], addr: &str, passphrase: Option<&Secret>) -> Result<AccountKey, KeyError> {
        let addr = checked_addr(addr)?;
        if armored.len() > MAX_ARMORED_KEY {
            return Err(KeyError::TooLarge(armored.len()));
        }
        let text = String::from_utf8_lossy(armored);
        if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----")
            && !text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----")
        {
            return Err(KeyError::PublicNotSecret);
        }
        if !text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
            return Err(KeyError::NotArmored);
        }
        let (mut secret, _headers) =
            SignedSecretKey::from_armor_single(Cursor::new(armored)).map_err(|e| KeyError::Malformed(short(&e)))?;
        unlock(&mut secret, passphrase)?;
        validate_user_id(&secret, &addr)?;
        AccountKey::from_secret(secret, &addr)
    }

    /// Restores a key from the binary form [`AccountKey::secret_bytes`] wrote (after unsealing).
    pub fn from_secret_bytes(bytes: &[u8], addr: &str) -> Result<AccountKey, KeyError> {
        let addr = checked_addr(addr)?;
        let secret = SignedSecretKey::from_bytes(Cursor::new(bytes)).map_err(|e| KeyError::Malformed(short(&e)))?;
        AccountKey::from_secret(secret, &addr)
    }

    fn from_secret(secret: SignedSecretKey, addr: &str) -> Result<AccountKey, KeyError> {
        secret.verify_bindings().map_err(|e| KeyError::BadSelfSignature(short(&e)))?;
        if secret.primary_key.secret_params().is_encrypted()
            || secret.secret_subkeys.iter().any(|k| k.key.secret_params().is_encrypted())
        {
            return Err(KeyError::PassphraseRequired);
        }
        let algorithm = secret.primary_key.algorithm();
        if is_rsa(algorithm) || secret.secret_subkeys.iter().any(|k| is_rsa(k.key.algorithm())) {
            return Err(KeyError::RsaSecretKey);
        }
        if !algorithm.can_sign() {
            return Err(KeyError::CannotSign(format!("{algorithm:?}")));
        }
        let published = publish(&secret, addr)?;
        let public = PublicKey::new(published).map_err(|e| match e {
            PublicKeyError::NoEncryptionSubkey => KeyError::NoEncryptionSubkey,
            other => KeyError::BadSelfSignature(other.to_string()),
        })?;
        let key = AccountKey { addr: addr.to_string(), secret, public };
        key.self_test()?;
        Ok(key)
    }

    /// Signs and encrypts a few bytes to ourselves and reads them back: proves that the secret
    /// parts belong to the public parts and that both operations work.
    fn self_test(&self) -> Result<(), KeyError> {
        let fail = |e: &dyn fmt::Display| KeyError::SelfTest(e.to_string());
        let mut rng = OsRng;
        let subkey = self.public.encryption_subkey().ok_or(KeyError::NoEncryptionSubkey)?;
        let mut builder = MessageBuilder::from_bytes("", &b"coi-proxy key self-test"[..])
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES128);
        builder.encrypt_to_key(&mut rng, subkey).map_err(|e| fail(&e))?;
        builder.sign(&*self.secret, Password::empty(), HashAlgorithm::Sha256);
        let bytes = builder.to_vec(rng).map_err(|e| fail(&e))?;
        let message = pgp::composed::Message::from_bytes(&bytes[..]).map_err(|e| fail(&e))?;
        let mut plain = message.decrypt(&Password::empty(), &self.secret).map_err(|e| fail(&e))?;
        let data = plain.as_data_vec().map_err(|e| fail(&e))?;
        if data != b"coi-proxy key self-test" {
            return Err(KeyError::SelfTest("decrypted text differs".into()));
        }
        plain.verify(&self.public.key.primary_key).map_err(|e| fail(&e))?;
        Ok(())
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        self.public.fingerprint()
    }

    /// The public key as published (Autocrypt `keydata`, vCards, exports).
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// rPGP's secret key, for the encrypt and decrypt modules of this wing only.
    pub(crate) fn signed_secret(&self) -> &SignedSecretKey {
        &self.secret
    }

    /// The armored public key (`coi-proxy key export`).
    pub fn public_armored(&self) -> Result<String, KeyError> {
        self.public.armored()
    }

    /// The armored secret key (`coi-proxy key export --secret`), importable into Delta Chat
    /// ("import secret keys") and Thunderbird. The public parts are the published ones, so the
    /// importing program publishes the same certificate.
    pub fn secret_armored(&self) -> Result<Secret, KeyError> {
        let mut exported = self.secret.clone();
        exported.details = self.public.key.details.clone();
        let text = exported.to_armored_bytes(ArmorOptions::default()).map_err(|e| KeyError::Serialize(short(&e)))?;
        Ok(Secret::new(text))
    }

    /// The binary secret key, to be sealed for the store (`crate::seal`).
    pub fn secret_bytes(&self) -> Result<Secret, KeyError> {
        self.secret.to_bytes().map(Secret::new).map_err(|e| KeyError::Serialize(short(&e)))
    }
}

/// A certificate (transferable public key) of a peer or of the account, checked when made:
/// self-signatures verify and there is an encryption subkey we can use.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Shared: peer keys are cloned into verdicts, events and messages.
    key: std::sync::Arc<SignedPublicKey>,
    fingerprint: Fingerprint,
    encryption_subkey: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("the key data is {0} bytes, more than we accept ({MAX_ARMORED_KEY})")]
    TooLarge(usize),
    #[error("not an OpenPGP public key: {0}")]
    Malformed(String),
    #[error("the key's self-signatures do not verify: {0}")]
    BadSelfSignature(String),
    #[error("the key has no usable encryption subkey")]
    NoEncryptionSubkey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint)
    }
}

impl PublicKey {
    pub fn new(key: SignedPublicKey) -> Result<PublicKey, PublicKeyError> {
        key.verify_bindings().map_err(|e| PublicKeyError::BadSelfSignature(short(&e)))?;
        let now = Timestamp::now();
        let encryption_subkey = key
            .public_subkeys
            .iter()
            .position(|s| usable_for_encryption(s, now))
            .ok_or(PublicKeyError::NoEncryptionSubkey)?;
        let fingerprint = Fingerprint::from(&key.fingerprint());
        Ok(PublicKey { key: std::sync::Arc::new(key), fingerprint, encryption_subkey })
    }

    /// Parses the binary transferable public key (Autocrypt `keydata` after base64).
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, PublicKeyError> {
        if bytes.len() > MAX_ARMORED_KEY {
            return Err(PublicKeyError::TooLarge(bytes.len()));
        }
        let key = SignedPublicKey::from_bytes(Cursor::new(bytes)).map_err(|e| PublicKeyError::Malformed(short(&e)))?;
        PublicKey::new(key)
    }

    /// Parses an armored public key block.
    pub fn from_armored(text: &[u8]) -> Result<PublicKey, PublicKeyError> {
        if text.len() > MAX_ARMORED_KEY {
            return Err(PublicKeyError::TooLarge(text.len()));
        }
        let (key, _) =
            SignedPublicKey::from_armor_single(Cursor::new(text)).map_err(|e| PublicKeyError::Malformed(short(&e)))?;
        PublicKey::new(key)
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    pub fn signed(&self) -> &SignedPublicKey {
        &self.key
    }

    /// The subkey messages are encrypted to.
    pub fn encryption_subkey(&self) -> Option<&SignedPublicSubKey> {
        self.key.public_subkeys.get(self.encryption_subkey)
    }

    /// The binary form (Autocrypt `keydata` before base64).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a parsed or built key into memory cannot fail.
        self.key.to_bytes().unwrap_or_default()
    }

    pub fn armored(&self) -> Result<String, KeyError> {
        self.key.to_armored_string(ArmorOptions::default()).map_err(|e| KeyError::Serialize(short(&e)))
    }

    /// Whether the key advertises SEIPDv2 (RFC 9580 AEAD encryption) in any self-signature;
    /// Delta Chat sends SEIPDv2 only when every recipient key does (`pubkey_supports_seipdv2`).
    pub fn supports_seipd_v2(&self) -> bool {
        let details = &self.key.details;
        details
            .direct_signatures
            .iter()
            .chain(details.users.iter().flat_map(|u| u.signatures.iter()))
            .any(|s| s.features().is_some_and(|f| f.seipd_v2()))
    }

    /// The e-mail addresses in the key's user IDs, lower-cased.
    pub fn addresses(&self) -> Vec<String> {
        self.key.details.users.iter().filter_map(|u| user_id_addr(u.id.id())).collect()
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

fn checked_addr(addr: &str) -> Result<String, KeyError> {
    let canonical = canonical_addr(addr);
    let ok = canonical.len() <= 254
        && canonical.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !canonical.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"<>,;\"".contains(&b));
    if ok { Ok(canonical) } else { Err(KeyError::BadAddress(addr.chars().take(100).collect())) }
}

fn is_rsa(algorithm: PublicKeyAlgorithm) -> bool {
    matches!(algorithm, PublicKeyAlgorithm::RSA | PublicKeyAlgorithm::RSAEncrypt | PublicKeyAlgorithm::RSASign)
}

/// An rPGP error as one short line. rPGP's messages name packets and algorithms, never key
/// material; the length cap keeps a pathological message out of logs. Formatting stops at the
/// first line end or 200 characters: rPGP's errors end in a captured backtrace (when
/// `RUST_BACKTRACE` is set), and formatting that would symbolize it, which costs tens of
/// milliseconds and hundreds of megabytes of debug information per malformed key.
pub(crate) fn short(e: &dyn fmt::Display) -> String {
    /// Collects up to a limit and then fails the write, which ends the formatting.
    struct Line(String);
    impl fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if c == '\n' || self.0.chars().count() >= 200 {
                    return Err(fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut line = Line(String::new());
    let _ = fmt::write(&mut line, format_args!("{e}"));
    line.0
}

fn unlock(secret: &mut SignedSecretKey, passphrase: Option<&Secret>) -> Result<(), KeyError> {
    let locked = secret.primary_key.secret_params().is_encrypted()
        || secret.secret_subkeys.iter().any(|k| k.key.secret_params().is_encrypted());
    if !locked {
        return Ok(());
    }
    let Some(passphrase) = passphrase else {
        return Err(KeyError::PassphraseRequired);
    };
    let password = Password::from(passphrase.expose());
    secret.primary_key.remove_password(&password).map_err(|_| KeyError::WrongPassphrase)?;
    for sub in &mut secret.secret_subkeys {
        sub.key.remove_password(&password).map_err(|_| KeyError::WrongPassphrase)?;
    }
    Ok(())
}

/// The address of a user ID (`Name <addr>` or a bare address), lower-cased.
fn user_id_addr(id: &[u8]) -> Option<String> {
    crate::mail::address(&String::from_utf8_lossy(id))
}

fn validate_user_id(secret: &SignedSecretKey, addr: &str) -> Result<(), KeyError> {
    let found: Vec<String> = secret.details.users.iter().filter_map(|u| user_id_addr(u.id.id())).collect();
    if found.iter().any(|a| a == addr) {
        return Ok(());
    }
    let found = if found.is_empty() {
        secret.details.users.iter().map(|u| String::from_utf8_lossy(u.id.id()).chars().take(100).collect()).collect()
    } else {
        found
    };
    Err(KeyError::AddressMismatch { expected: addr.to_string(), found })
}

/// Whether a subkey may be encrypted to: an encryption algorithm, a binding signature whose key
/// flags (when present) allow encryption, not revoked, not expired.
fn usable_for_encryption(sub: &SignedPublicSubKey, now: Timestamp) -> bool {
    if !sub.key.algorithm().can_encrypt() {
        return false;
    }
    if sub.signatures.iter().any(|s| s.typ() == Some(SignatureType::SubkeyRevocation)) {
        return false;
    }
    let Some(binding) = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .max_by_key(|s| s.created().map(|t| t.as_secs()))
    else {
        return false;
    };
    let flags = binding.key_flags();
    let flagged = flags.encrypt_comms() || flags.encrypt_storage();
    let any_flag = flagged || flags.sign() || flags.certify() || flags.authentication();
    if any_flag && !flagged {
        return false;
    }
    if let Some(validity) = binding.key_expiration_time() {
        let expires = u64::from(sub.key.created_at().as_secs()) + u64::from(validity.as_secs());
        if validity.as_secs() > 0 && expires <= u64::from(now.as_secs()) {
            return false;
        }
    }
    true
}

/// Re-certifies the key as Delta Chat publishes its own: one user ID `<addr>` with a positive
/// certification and a direct-key signature carrying the relay list notation, both with the
/// same subpackets; time-stamped with the key's creation time so the published key is the same
/// bytes every time (Ed25519 signatures are deterministic).
fn publish(secret: &SignedSecretKey, addr: &str) -> Result<SignedPublicKey, KeyError> {
    let fail = |e: pgp::errors::Error| KeyError::Serialize(short(&e));
    if secret.version() != KeyVersion::V4 {
        // v6 keys carry no user ID in Delta Chat's scheme; publish them as they are.
        return Ok(secret.to_public_key());
    }
    let created = secret.primary_key.created_at();
    let subpackets = || -> Result<Vec<Subpacket>, pgp::errors::Error> {
        let mut flags = KeyFlags::default();
        flags.set_certify(true);
        flags.set_sign(true);
        let mut features = Features::default();
        features.set_seipd_v1(true);
        features.set_seipd_v2(true);
        Ok(vec![
            Subpacket::regular(SubpacketData::SignatureCreationTime(created))?,
            Subpacket::regular(SubpacketData::IssuerFingerprint(secret.fingerprint()))?,
            Subpacket::regular(SubpacketData::KeyFlags(flags))?,
            Subpacket::regular(SubpacketData::Features(features))?,
            Subpacket::regular(SubpacketData::PreferredSymmetricAlgorithms(smallvec![
                SymmetricKeyAlgorithm::AES256,
                SymmetricKeyAlgorithm::AES192,
                SymmetricKeyAlgorithm::AES128,
            ]))?,
            Subpacket::regular(SubpacketData::PreferredHashAlgorithms(smallvec![
                HashAlgorithm::Sha256,
                HashAlgorithm::Sha384,
                HashAlgorithm::Sha512,
                HashAlgorithm::Sha224,
            ]))?,
            Subpacket::regular(SubpacketData::PreferredCompressionAlgorithms(smallvec![
                CompressionAlgorithm::ZLIB,
                CompressionAlgorithm::ZIP,
            ]))?,
            Subpacket::regular(SubpacketData::PreferredAeadAlgorithms(smallvec![(
                SymmetricKeyAlgorithm::AES256,
                AeadAlgorithm::Ocb
            )]))?,
            Subpacket::regular(SubpacketData::IsPrimary(true))?,
        ])
    };
    let user_id = UserId::from_str(PacketHeaderVersion::New, format!("<{addr}>")).map_err(fail)?;
    let mut config =
        SignatureConfig::from_key(OsRng, &secret.primary_key, SignatureType::CertPositive).map_err(fail)?;
    config.hashed_subpackets = subpackets().map_err(fail)?;
    config.unhashed_subpackets =
        vec![Subpacket::regular(SubpacketData::IssuerKeyId(secret.legacy_key_id())).map_err(fail)?];
    let certification = config
        .sign_certification(
            &secret.primary_key,
            &secret.primary_key.public_key(),
            &Password::empty(),
            user_id.tag(),
            &user_id,
        )
        .map_err(fail)?;
    let mut config = SignatureConfig::from_key(OsRng, &secret.primary_key, SignatureType::Key).map_err(fail)?;
    config.hashed_subpackets = subpackets().map_err(fail)?;
    config.hashed_subpackets.push(
        Subpacket::regular(SubpacketData::Notation(Notation {
            readable: true,
            name: "relays@chatmail.at".into(),
            value: addr.to_string().into(),
        }))
        .map_err(fail)?,
    );
    let direct =
        config.sign_key(&secret.primary_key, &Password::empty(), secret.primary_key.public_key()).map_err(fail)?;
    let mut republished = secret.clone();
    republished.details = SignedKeyDetails {
        revocation_signatures: vec![],
        direct_signatures: vec![direct],
        users: vec![user_id.into_signed(certification)],
        user_attributes: vec![],
    };
    Ok(republished.to_public_key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// One generated key shared by the tests of this module (generation is the slow part).
    pub(crate) fn alice() -> &'static AccountKey {
        static KEY: OnceLock<AccountKey> = OnceLock::new();
        KEY.get_or_init(|| AccountKey::generate("Alice@Example.org").unwrap())
    }

    #[test]
    fn generated_key_has_delta_chats_shape() {
        let key = alice();
        assert_eq!(key.addr(), "alice@example.org");
        let public = key.public_key().signed();
        assert_eq!(public.primary_key.algorithm(), PublicKeyAlgorithm::EdDSALegacy);
        assert_eq!(public.public_subkeys.len(), 1);
        assert_eq!(public.public_subkeys[0].key.algorithm(), PublicKeyAlgorithm::ECDH);
        assert_eq!(public.details.users.len(), 1);
        assert_eq!(public.details.users[0].id.id(), b"<alice@example.org>");
        assert!(key.public_key().supports_seipd_v2());
        let sig = &public.details.users[0].signatures[0];
        assert_eq!(
            sig.preferred_symmetric_algs(),
            &[SymmetricKeyAlgorithm::AES256, SymmetricKeyAlgorithm::AES192, SymmetricKeyAlgorithm::AES128]
        );
        assert_eq!(
            sig.preferred_hash_algs(),
            &[HashAlgorithm::Sha256, HashAlgorithm::Sha384, HashAlgorithm::Sha512, HashAlgorithm::Sha224]
        );
        assert_eq!(sig.preferred_compression_algs(), &[CompressionAlgorithm::ZLIB, CompressionAlgorithm::ZIP]);
        let notes = public.details.direct_signatures[0].notations();
        assert_eq!(notes.len(), 1);
        assert_eq!(&notes[0].name[..], b"relays@chatmail.at");
        assert_eq!(&notes[0].value[..], b"alice@example.org");
        assert_eq!(key.public_key().addresses(), vec!["alice@example.org".to_string()]);
        // Five or more packets, binary form parses back to the same certificate.
        let again = PublicKey::from_bytes(&key.public_key().to_bytes()).unwrap();
        assert_eq!(&again, key.public_key());
    }

    #[test]
    fn publishing_is_stable() {
        let key = alice();
        let a = publish(key.signed_secret(), "alice@example.org").unwrap();
        let b = publish(key.signed_secret(), "alice@example.org").unwrap();
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
    }

    #[test]
    fn debug_never_shows_secret_material() {
        let key = alice();
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            format!(
                "AccountKey {{ addr: \"alice@example.org\", fingerprint: Fingerprint({}), secret: \"<redacted>\" }}",
                key.fingerprint().hex()
            )
        );
        let secret = key.secret_bytes().unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn armored_export_imports_back_and_binary_restores() {
        let key = alice();
        let armored = key.secret_armored().unwrap();
        assert!(armored.expose().starts_with(b"-----BEGIN PGP PRIVATE KEY BLOCK-----"));
        let back = AccountKey::import_armored(armored.expose(), "alice@example.org", None).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(back.public_key().to_bytes(), key.public_key().to_bytes());
        let restored =
            AccountKey::from_secret_bytes(key.secret_bytes().unwrap().expose(), "alice@example.org").unwrap();
        assert_eq!(restored.fingerprint(), key.fingerprint());
        let public = key.public_armored().unwrap();
        assert_eq!(PublicKey::from_armored(public.as_bytes()).unwrap().fingerprint(), key.fingerprint());
    }

    #[test]
    fn import_rejects_with_precise_errors() {
        let key = alice();
        let armored = key.secret_armored().unwrap();
        let err = |bytes: &[u8], addr: &str| AccountKey::import_armored(bytes, addr, None).unwrap_err();
        assert!(matches!(err(b"hello", "alice@example.org"), KeyError::NotArmored));
        assert!(matches!(
            err(key.public_armored().unwrap().as_bytes(), "alice@example.org"),
            KeyError::PublicNotSecret
        ));
        assert!(matches!(err(armored.expose(), "bob@example.org"), KeyError::AddressMismatch { .. }));
        assert!(matches!(err(armored.expose(), "not an address"), KeyError::BadAddress(_)));
        assert!(matches!(err(&vec![b'a'; MAX_ARMORED_KEY + 1], "alice@example.org"), KeyError::TooLarge(_)));
        let garbage = b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nAAAA\n-----END PGP PRIVATE KEY BLOCK-----\n";
        assert!(matches!(err(garbage, "alice@example.org"), KeyError::Malformed(_)));
        // A flipped byte inside the armored body: parse error or a failing self-signature, never Ok.
        let text = String::from_utf8(armored.expose().to_vec()).unwrap();
        let body_start = text.find("\n\n").unwrap() + 2;
        let mut bytes = text.into_bytes();
        let i = body_start + 200;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let e = err(&bytes, "alice@example.org");
        assert!(!format!("{e}").is_empty());
        // The error texts never carry the key's bytes.
        for e in [e, err(armored.expose(), "bob@example.org")] {
            let text = e.to_string();
            assert!(!text.contains("BEGIN PGP") && text.len() < 400, "{text}");
        }
    }

    #[test]
    fn passphrase_protected_keys_need_the_passphrase() {
        let key = alice();
        let mut locked = key.signed_secret().clone();
        let pw = Password::from("correct horse");
        locked.primary_key.set_password(OsRng, &pw).unwrap();
        for sub in &mut locked.secret_subkeys {
            sub.key.set_password(OsRng, &pw).unwrap();
        }
        let armored = locked.to_armored_bytes(ArmorOptions::default()).unwrap();
        let import = |pw: Option<&str>| {
            let pw = pw.map(|p| Secret::new(p.as_bytes().to_vec()));
            AccountKey::import_armored(&armored, "alice@example.org", pw.as_ref())
        };
        assert!(matches!(import(None), Err(KeyError::PassphraseRequired)));
        assert!(matches!(import(Some("wrong")), Err(KeyError::WrongPassphrase)));
        assert_eq!(import(Some("correct horse")).unwrap().fingerprint(), key.fingerprint());
    }

    fn other_program(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/openpgp/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn imports_a_gnupg_key_and_refuses_rsa_and_keys_that_cannot_encrypt() {
        let key = AccountKey::import_armored(&other_program("gnupg-secret.asc"), "GnuPG@example.org", None).unwrap();
        assert_eq!(key.addr(), "gnupg@example.org");
        assert_eq!(key.public_key().addresses(), ["gnupg@example.org"], "published with Delta Chat's user ID");
        assert!(matches!(
            AccountKey::import_armored(&other_program("rsa-secret.asc"), "rsa@example.org", None),
            Err(KeyError::RsaSecretKey)
        ));
        // A signing key without an encryption subkey.
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("<solo@example.org>".into())
            .build()
            .unwrap();
        let solo = params.generate(OsRng).unwrap().to_armored_bytes(ArmorOptions::default()).unwrap();
        assert!(matches!(
            AccountKey::import_armored(&solo, "solo@example.org", None),
            Err(KeyError::NoEncryptionSubkey)
        ));
    }

    #[test]
    fn error_texts_stop_before_a_backtrace() {
        struct WithTail;
        impl fmt::Display for WithTail {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bad packet")?;
                f.write_str("\nstack backtrace:\n")?;
                panic!("formatting went past the first line");
            }
        }
        assert_eq!(short(&WithTail), "bad packet");
        assert_eq!(short(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn user_id_addresses() {
        assert_eq!(user_id_addr(b"<a@b.org>").as_deref(), Some("a@b.org"));
        assert_eq!(user_id_addr(b"Alice Example <Alice@B.org>").as_deref(), Some("alice@b.org"));
        assert_eq!(user_id_addr(b"a@b.org").as_deref(), Some("a@b.org"));
        assert_eq!(user_id_addr(b"Alice"), None);
        assert!(checked_addr("a b@c").is_err());
        assert!(checked_addr("@c").is_err());
        assert!(checked_addr("a@").is_err());
    }
}
