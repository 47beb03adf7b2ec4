//! Secrets encrypted at rest: OpenPGP secret keys, OAuth2 tokens, the hashes of local passwords.
//!
//! Design: one random 256-bit key-encryption key (KEK) per installation, in its own file
//! (`seal.key`, mode 0600, by default in the state directory; `seal_key_file` in proxy.toml puts
//! it elsewhere), seals every secret the store keeps with AES-256-GCM; the store only ever holds
//! sealed blobs. The associated data names what a blob is and whose (`openpgp-secret-key` +
//! login, `oauth2-tokens` + login), so a blob copied to another account or another table does
//! not open.
//!
//! Why a key file and not something derived from the user's password: the account worker must
//! decrypt incoming mail, answer SecureJoin and refresh OAuth2 tokens with no client connected
//! and after a restart, and a password is neither always available (OAuth, `password_command`
//! absent) nor stable (it changes; the keys must survive that). A hardware or OS keystore is not
//! available on the servers this runs on; the KEK path can point to one that is mounted as a
//! file (systemd credentials, a tmpfs filled at boot, a TPM-unsealed file).
//!
//! What a stolen state directory reveals: with the KEK file in it, everything (the secret keys,
//! hence all mail encrypted to them; the OAuth2 refresh tokens, hence the mailboxes until the
//! user revokes the grant). Without it (KEK kept elsewhere, or only the store file or a backup
//! of it taken): the sealed blobs are useless; readable are the public parts: account logins,
//! peers' addresses, public keys and fingerprints, Autocrypt timestamps and verification marks
//! (who corresponds with whom and since when), when each OAuth2 grant was made and refreshed.
//! Sealed values can also leave the machine (cluster state in etcd) without exposing secrets.
//!
//! In the floor, not in a wing, so that every wing (openpgp, oauth) seals alike under one key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand_core_06::{OsRng, RngCore};

use crate::secret::Secret;

/// First line of a KEK file, so a wrong file is recognized as such.
const FILE_HEADER: &str = "coi-proxy seal key v1";
/// Version byte of a sealed blob.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Domain separation of everything this module seals.
const AAD_PREFIX: &[u8] = b"coi-proxy/seal/v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the seal key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot create the seal key file {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("the seal key file {path} is readable or writable by others (mode {mode:o}); it must be 0600")]
    Permissions { path: String, mode: u32 },
    #[error("{path} is not a coi-proxy seal key file (expected a first line {FILE_HEADER:?} and 32 bytes of base64)")]
    NotAKeyFile { path: String },
    #[error("sealed data of {0} bytes is too short to be a sealed value")]
    Truncated(usize),
    #[error("sealed data has format {0}, this version reads format 1")]
    UnknownFormat(u8),
    #[error("sealed data does not open: wrong seal key, altered data, or data sealed for another purpose")]
    Open,
}

/// The key-encryption key. `Debug` is redacted through [`Secret`].
#[derive(Debug)]
pub struct SealKey(Secret);

impl SealKey {
    /// A fresh random key (tests; [`SealKey::load_or_create`] for the daemon).
    pub fn generate() -> SealKey {
        let mut bytes = vec![0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        SealKey(Secret::new(bytes))
    }

    /// Reads the KEK file, or creates it (0600, exclusively, synced) when it does not exist.
    /// Refuses a file others can read. Blocking file I/O: call off the runtime.
    pub fn load_or_create(path: &Path) -> Result<SealKey, SealError> {
        let shown = path.display().to_string();
        match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut file) => {
                let key = SealKey::generate();
                let text =
                    format!("{FILE_HEADER}\n{}\n", base64::engine::general_purpose::STANDARD.encode(key.0.expose()));
                let text = Secret::new(text.into_bytes());
                file.write_all(text.expose())
                    .and_then(|()| file.sync_all())
                    .map_err(|source| SealError::Create { path: shown.clone(), source })?;
                if let Some(dir) = path.parent() {
                    // Make the new directory entry durable too; a failure here is not fatal.
                    let _ = fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => SealKey::load(path),
            Err(source) => Err(SealError::Create { path: shown, source }),
        }
    }

    /// Reads an existing KEK file.
    pub fn load(path: &Path) -> Result<SealKey, SealError> {
        let shown = path.display().to_string();
        let meta = fs::metadata(path).map_err(|source| SealError::Read { path: shown.clone(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::Permissions { path: shown, mode });
        }
        let text = Secret::new(fs::read(path).map_err(|source| SealError::Read { path: shown.clone(), source })?);
        let not_key = || SealError::NotAKeyFile { path: shown.clone() };
        let text = std::str::from_utf8(text.expose()).map_err(|_| not_key())?;
        let mut lines = text.lines();
        if lines.next() != Some(FILE_HEADER) {
            return Err(not_key());
        }
        let bytes = lines
            .next()
            .and_then(|l| base64::engine::general_purpose::STANDARD.decode(l.trim()).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(not_key)?;
        Ok(SealKey(Secret::new(bytes)))
    }

    fn cipher(&self) -> Aes256Gcm {
        // The key is always 32 bytes (checked at load, made so at generation).
        Aes256Gcm::new_from_slice(self.0.expose()).expect("a seal key is 32 bytes")
    }

    /// Encrypts `plaintext` for `purpose` (what it is and whose, e.g.
    /// `openpgp-secret-key:alice@example.org`): format byte, random nonce, ciphertext and tag.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = aad(purpose);
        // AES-GCM encryption into memory cannot fail for inputs under 64 GiB.
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .expect("AES-GCM encryption of an in-memory value");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens what [`SealKey::seal`] sealed for the same `purpose`.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Secret, SealError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated(sealed.len()));
        }
        if sealed[0] != FORMAT_V1 {
            return Err(SealError::UnknownFormat(sealed[0]));
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let aad = aad(purpose);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map(Secret::new)
            .map_err(|_| SealError::Open)
    }
}

fn aad(purpose: &str) -> Vec<u8> {
    [AAD_PREFIX, purpose.as_bytes()].concat()
}

/// The purpose string of an account's OpenPGP secret key.
pub fn secret_key_purpose(login: &str) -> String {
    format!("openpgp-secret-key:{}", login.to_lowercase())
}

/// The daemon's seal key: read at start when its file exists (a bad file stops the start) or
/// something needs it at once (the OpenPGP gateway, OAuth2 accounts), else made at its first
/// use (an OAuth2 account added by a reload), so a daemon with nothing to seal leaves no key
/// file behind.
pub struct SealCell {
    path: PathBuf,
    key: Mutex<Option<Arc<SealKey>>>,
}

impl SealCell {
    /// The key at `path`, not read yet.
    pub fn at(path: PathBuf) -> SealCell {
        SealCell { path, key: Mutex::new(None) }
    }

    /// The key already read (from `path`).
    pub fn loaded(path: PathBuf, key: Arc<SealKey>) -> SealCell {
        SealCell { path, key: Mutex::new(Some(key)) }
    }

    /// The key if it has been read, without any file I/O.
    pub fn if_loaded(&self) -> Option<Arc<SealKey>> {
        self.key.lock().expect("seal lock").clone()
    }

    /// The key, read or made (0600) on first use; one caller at a time touches the file, so
    /// two first uses never race on its creation. Blocking file I/O: call off the runtime.
    pub fn get(&self) -> Result<Arc<SealKey>, SealError> {
        let mut slot = self.key.lock().expect("seal lock");
        if let Some(key) = slot.as_ref() {
            return Ok(key.clone());
        }
        let key = Arc::new(SealKey::load_or_create(&self.path)?);
        *slot = Some(key.clone());
        Ok(key)
    }
}

impl From<SealKey> for SealCell {
    fn from(key: SealKey) -> SealCell {
        SealCell::loaded(PathBuf::new(), Arc::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_cell_makes_its_file_only_at_first_use_and_keeps_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let cell = SealCell::at(path.clone());
        assert!(cell.if_loaded().is_none() && !path.exists(), "nothing read or made before a use");
        let sealed = cell.get().unwrap().seal("p", b"secret");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(cell.if_loaded().unwrap().open("p", &sealed).unwrap().expose(), b"secret");
        let reread = SealCell::at(path.clone());
        assert_eq!(
            reread.get().unwrap().open("p", &sealed).unwrap().expose(),
            b"secret",
            "the same file, the same key"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SealCell::at(path).get(), Err(SealError::Permissions { .. })));
    }

    #[test]
    fn seal_and_open() {
        let key = SealKey::generate();
        let purpose = secret_key_purpose("Alice@Example.org");
        assert_eq!(purpose, "openpgp-secret-key:alice@example.org");
        let sealed = key.seal(&purpose, b"the secret key bytes");
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 20 + TAG_LEN);
        assert_eq!(key.open(&purpose, &sealed).unwrap().expose(), b"the secret key bytes");
        // Random nonces: sealing twice gives different blobs.
        assert_ne!(key.seal(&purpose, b"x"), key.seal(&purpose, b"x"));
    }

    #[test]
    fn wrong_key_purpose_or_bytes_do_not_open() {
        let key = SealKey::generate();
        let sealed = key.seal("openpgp-secret-key:alice@example.org", b"secret");
        assert!(matches!(
            SealKey::generate().open("openpgp-secret-key:alice@example.org", &sealed),
            Err(SealError::Open)
        ));
        assert!(matches!(key.open("openpgp-secret-key:bob@example.org", &sealed), Err(SealError::Open)));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            let err = key.open("openpgp-secret-key:alice@example.org", &bad).unwrap_err();
            assert!(matches!(err, SealError::Open | SealError::UnknownFormat(_)), "{err}");
        }
        assert!(matches!(key.open("p", &sealed[..20]), Err(SealError::Truncated(20))));
        assert!(matches!(key.open("p", &[]), Err(SealError::Truncated(0))));
    }

    #[test]
    fn key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let first = SealKey::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = first.seal("p", b"kept across restarts");
        let second = SealKey::load_or_create(&path).unwrap();
        assert_eq!(second.open("p", &sealed).unwrap().expose(), b"kept across restarts");
        assert_eq!(format!("{second:?}"), "SealKey(Secret(<redacted>))");
    }

    #[test]
    fn key_file_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        SealKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SealKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, SealError::Permissions { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("0600"));

        let other = dir.path().join("other");
        fs::write(&other, "hello\n").unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(SealKey::load(&other), Err(SealError::NotAKeyFile { .. })));
        fs::write(&other, format!("{FILE_HEADER}\nAAAA\n")).unwrap();
        assert!(matches!(SealKey::load(&other), Err(SealError::NotAKeyFile { .. })));

        let missing_dir = dir.path().join("no/such/dir/seal.key");
        assert!(matches!(SealKey::load_or_create(&missing_dir), Err(SealError::Create { .. })));
        assert!(matches!(SealKey::load(&dir.path().join("absent")), Err(SealError::Read { .. })));
    }
}
