//! The wing's state in the store, for the edges that do the I/O (worker, SMTP, the control
//! socket): each account's key (made on first use, sealed at rest with [`SealKey`]), its
//! Autocrypt peers, the invites it issued and the handshakes it started. One place encodes
//! them, so the daemon and the command line read the same bytes.
//!
//! Everything here may block (key generation, unsealing, store commits): async callers use
//! [`Identity::account_key`] (which runs on tokio's blocking threads) or `spawn_blocking`.
//!
//! Accounts are keyed like the rest of the store: by the account key (`Config::account_key`,
//! the login as the provider knows it), so two logins a case-sensitive provider tells apart
//! never share a key. With `[cluster]` ([`Identity::share_through`]) every write goes to etcd
//! first (each instance's store follows by watch), and an account's first key is made once for
//! the whole cluster: the instance that loses the create-if-absent race adopts the winner's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::runtime::Handle;

use tracing::{info, warn};

use super::cache::SecretKeys;
use super::decrypt::Decrypted;
use super::fingerprint::Fingerprint;
use super::group::Group;
use super::key::{AccountKey, KeyError};
use super::peer::{Peer, Verdict};
use super::securejoin::inviter::Issued;
use super::securejoin::joiner::Joining;
use crate::config::Config;
use crate::context::{BoxFuture, Cluster, ClusterError, OpenPgpEntry, SharedChange};
use crate::seal::{SealError, SealKey, secret_key_purpose};
use crate::secret::Secret;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("Autocrypt is off ([autocrypt] enabled = false): no OpenPGP keys are kept")]
    Disabled,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the OpenPGP key of {login}: {source}")]
    Key { login: String, source: KeyError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the OpenPGP key of {0} is stored but does not open with this seal key (was the seal key file replaced?)")]
    Unseal(String),
    #[error("stored OpenPGP state of {login} is unreadable: {reason}")]
    Corrupt { login: String, reason: String },
    #[error("too many Autocrypt peers for {0}; new ones are not kept")]
    TooManyPeers(String),
    #[error("a key task did not finish: {0}")]
    Task(String),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Handle to every account's OpenPGP state; cheap to clone.
#[derive(Clone)]
pub struct Identity {
    store: Store,
    seal: Arc<SealKey>,
    /// Keys unsealed so far, by account key (unsealing and parsing cost ~1 ms each).
    keys: Arc<Mutex<HashMap<String, Arc<AccountKey>>>>,
    /// With `[cluster]`: etcd, and the runtime its calls run on (blocked on from the blocking
    /// threads this handle's callers are on).
    cluster: Arc<OnceLock<(Arc<dyn Cluster>, Handle)>>,
    /// Accounts whose state an earlier release kept lower-cased has been claimed (or looked for).
    claimed: Arc<Mutex<HashSet<String>>>,
}

impl Identity {
    /// Loads (or creates, 0600) the seal key file of `config` (`seal_key_file`, the one key
    /// every secret in the store is sealed with). Blocking file I/O.
    pub fn open(config: &Config, store: Store) -> Result<Identity, IdentityError> {
        if !config.autocrypt.enabled {
            return Err(IdentityError::Disabled);
        }
        let seal = SealKey::load_or_create(&config.seal_key_path())?;
        Ok(Identity::with_seal(store, seal))
    }

    /// With the seal key already loaded (the daemon's, shared with OAuth2 and the views).
    pub fn with_seal(store: Store, seal: impl Into<Arc<SealKey>>) -> Identity {
        Identity { store, seal: seal.into(), keys: Arc::default(), cluster: Arc::default(), claimed: Arc::default() }
    }

    /// From now on, state is written to etcd first and keys are made once cluster-wide.
    pub fn share_through(&self, cluster: Arc<dyn Cluster>, runtime: Handle) {
        let _ = self.cluster.set((cluster, runtime));
    }

    /// Before the account's state is first read here: state an earlier release kept under the
    /// lower-cased login, if no login has claimed it, is this account's (`store::keys`).
    /// Blocking (a read; a commit when there is something to claim).
    fn claim(&self, login: &str) {
        if self.claimed.lock().expect("claimed").insert(login.to_string()) {
            self.store.claim_legacy_state_blocking(login);
        }
    }

    /// Runs a cluster call to its end (`None` without `[cluster]`). Blocking: never call on
    /// the runtime.
    fn in_cluster<T>(
        &self,
        call: impl for<'a> FnOnce(&'a dyn Cluster) -> BoxFuture<'a, Result<T, ClusterError>>,
    ) -> Option<Result<T, ClusterError>> {
        let (cluster, runtime) = self.cluster.get()?;
        Some(runtime.block_on(call(cluster.as_ref())))
    }

    /// Hands a change of the account's state to etcd (no-op without `[cluster]`).
    fn publish(&self, login: &str, entry: OpenPgpEntry, value: Option<Vec<u8>>) -> Result<(), IdentityError> {
        let change = SharedChange::OpenPgp { login: login.to_string(), entry, value };
        self.in_cluster(|c| c.publish(change)).transpose()?;
        Ok(())
    }

    /// Takes the account's key from the store again (another instance replaced it). Blocking.
    pub fn reload(&self, login: &str) {
        self.keys.lock().expect("key cache").remove(login);
        if let Err(e) = self.account_key_blocking(login) {
            warn!(login = %crate::logging::peer_text(login), "the account's new OpenPGP key stays closed: {e}");
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The seal key, shared with what else this wing seals (the decrypted views' cache).
    pub fn seal(&self) -> Arc<SealKey> {
        self.seal.clone()
    }

    /// Unseals every stored account key into memory, so [`SecretKeys`] answers at once from
    /// the first session on. Blocking; a key that does not open is said and skipped.
    pub fn preload(&self) -> Result<usize, IdentityError> {
        let logins = self.store.accounts_with_keys()?;
        let mut loaded = 0;
        for login in logins {
            // As stored, claiming nothing: a lower-cased name an earlier release left is for
            // the first login that proves itself to claim (`store::keys`).
            match self.load_key(&login, false) {
                Ok(_) => loaded += 1,
                Err(e) => warn!(%login, "the account's OpenPGP key stays closed: {e}"),
            }
        }
        Ok(loaded)
    }

    /// The account's key, made now if it has none. Blocking (generation, commit): call off the
    /// runtime, or use [`Identity::account_key`].
    pub fn account_key_blocking(&self, login: &str) -> Result<Arc<AccountKey>, IdentityError> {
        self.load_key(login, true)
    }

    /// The account's key from the cache, the store, etcd or made now; `claim`: first taking
    /// what an earlier release kept under the lower-cased login.
    fn load_key(&self, login: &str, claim: bool) -> Result<Arc<AccountKey>, IdentityError> {
        let name = login.to_string();
        if let Some(key) = self.keys.lock().expect("key cache").get(&name) {
            return Ok(key.clone());
        }
        if claim {
            self.claim(&name);
        }
        let key = match self.store.account_key(&name)? {
            Some(sealed) => self.unseal(&name, &sealed)?,
            None => match self.in_cluster(|c| c.shared_account_key(name.clone())).transpose()?.flatten() {
                // Made on another instance; the watch has not brought it here yet.
                Some(theirs) => {
                    let key = self.unseal(&name, &theirs)?;
                    self.store.put_account_key(&name, theirs, true).wait()?;
                    key
                }
                None => self.generate(&name)?,
            },
        };
        let key = Arc::new(key);
        self.keys.lock().expect("key cache").insert(name, key.clone());
        Ok(key)
    }

    /// The account's first key: made here, kept unless another first use (on this instance,
    /// or with `[cluster]` on any) stored one first, which is then the account's.
    fn generate(&self, name: &str) -> Result<AccountKey, IdentityError> {
        let started = std::time::Instant::now();
        // The key's user ID is the mail address; its case does not matter to mail.
        let key = AccountKey::generate(&name.to_ascii_lowercase())
            .map_err(|source| IdentityError::Key { login: name.into(), source })?;
        let sealed = self.seal_key(name, &key)?;
        let (in_force, replace) = match self.in_cluster(|c| c.first_account_key(name.to_string(), sealed.clone())) {
            Some(winner) => (winner?, true),
            None => (sealed.clone(), false),
        };
        let kept = self.store.put_account_key(name, in_force, replace).wait()?;
        if kept != sealed {
            // Another first use stored its key first: that one is the account's.
            return self.unseal(name, &kept);
        }
        info!(
            login = %crate::logging::peer_text(name),
            fingerprint = %key.fingerprint().hex(),
            ms = started.elapsed().as_millis() as u64,
            "made the account's OpenPGP key"
        );
        Ok(key)
    }

    /// [`Identity::account_key_blocking`] for async code: a cached key at once, else on tokio's
    /// blocking threads.
    pub async fn account_key(&self, login: &str) -> Result<Arc<AccountKey>, IdentityError> {
        if let Some(key) = self.keys.lock().expect("key cache").get(login) {
            return Ok(key.clone());
        }
        let (me, login) = (self.clone(), login.to_string());
        tokio::task::spawn_blocking(move || me.account_key_blocking(&login))
            .await
            .unwrap_or_else(|e| Err(IdentityError::Task(e.to_string())))
    }

    /// Replaces the account's key with an imported one (`key import`). Blocking.
    pub fn import(
        &self,
        login: &str,
        armored: &[u8],
        passphrase: Option<&Secret>,
    ) -> Result<Fingerprint, IdentityError> {
        let name = login.to_string();
        let key = AccountKey::import_armored(armored, &name.to_ascii_lowercase(), passphrase)
            .map_err(|source| IdentityError::Key { login: name.clone(), source })?;
        let sealed = self.seal_key(&name, &key)?;
        self.publish(&name, OpenPgpEntry::Key, Some(sealed.clone()))?;
        self.store.put_account_key(&name, sealed, true).wait()?;
        let fingerprint = key.fingerprint().clone();
        self.keys.lock().expect("key cache").insert(name.clone(), Arc::new(key));
        info!(login = %name, fingerprint = %fingerprint.hex(), "imported the account's OpenPGP key");
        Ok(fingerprint)
    }

    fn seal_key(&self, login: &str, key: &AccountKey) -> Result<Vec<u8>, IdentityError> {
        let bytes = key.secret_bytes().map_err(|source| IdentityError::Key { login: login.into(), source })?;
        Ok(self.seal.seal(&secret_key_purpose(login), bytes.expose()))
    }

    fn unseal(&self, login: &str, sealed: &[u8]) -> Result<AccountKey, IdentityError> {
        let bytes = self.seal.open(&secret_key_purpose(login), sealed).map_err(|e| match e {
            SealError::Open => IdentityError::Unseal(login.into()),
            e => IdentityError::Seal(e),
        })?;
        AccountKey::from_secret_bytes(bytes.expose(), login)
            .map_err(|source| IdentityError::Key { login: login.into(), source })
    }

    /// One peer's state (`addr` as the wing canonicalizes it). An unreadable record is logged
    /// and treated as unknown, so one bad record never stops the account's mail.
    pub fn peer(&self, login: &str, addr: &str) -> Result<Option<Peer>, IdentityError> {
        self.claim(login);
        let addr = super::mime::canonical_addr(addr);
        Ok(self.store.peer(login, &addr)?.and_then(|bytes| match serde_json::from_slice(&bytes) {
            Ok(peer) => Some(peer),
            Err(e) => {
                warn!(login, peer = %addr, "unreadable Autocrypt peer record, ignored: {e}");
                None
            }
        }))
    }

    pub fn peers(&self, login: &str) -> Result<Vec<Peer>, IdentityError> {
        self.claim(login);
        let mut out = Vec::new();
        for (addr, bytes) in self.store.peers(login)? {
            match serde_json::from_slice(&bytes) {
                Ok(peer) => out.push(peer),
                Err(e) => warn!(login, peer = %addr, "unreadable Autocrypt peer record, ignored: {e}"),
            }
        }
        Ok(out)
    }

    /// Stores what the verdicts changed and logs key changes. Blocking (commit).
    pub fn apply(&self, login: &str, verdicts: &[(String, Verdict)]) -> Result<(), IdentityError> {
        self.claim(login);
        let mut changed = Vec::new();
        for (addr, verdict) in verdicts {
            match verdict {
                Verdict::KeyChanged { old, new, .. } => {
                    info!(login, peer = %addr, old = %old.hex(), new = %new.hex(), "Autocrypt key of a peer changed")
                }
                Verdict::VerifiedKeyKept { verified, offered, .. } => warn!(
                    login,
                    peer = %addr,
                    verified = %verified.hex(),
                    offered = %offered.fingerprint().hex(),
                    "a verified contact offered another key; the verified key is kept"
                ),
                _ => {}
            }
            if let Some(peer) = verdict.peer() {
                let bytes = serde_json::to_vec(peer)
                    .map_err(|e| IdentityError::Corrupt { login: login.into(), reason: e.to_string() })?;
                changed.push((peer.addr.clone(), bytes));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        for (addr, bytes) in &changed {
            self.publish(login, OpenPgpEntry::Peer(addr.clone()), Some(bytes.clone()))?;
        }
        self.store.put_peers(login, changed).wait()?.map_err(|_| IdentityError::TooManyPeers(login.into()))
    }

    /// The invites the account honours.
    pub fn invites(&self, login: &str) -> Result<Vec<Issued>, IdentityError> {
        self.claim(login);
        self.store.invites(login)?.into_iter().map(|(_, bytes)| decode(login, &bytes)).collect()
    }

    pub fn add_invite(&self, login: &str, issued: &Issued) -> Result<(), IdentityError> {
        self.claim(login);
        let bytes = serde_json::to_vec(issued)
            .map_err(|e| IdentityError::Corrupt { login: login.into(), reason: e.to_string() })?;
        self.publish(login, OpenPgpEntry::Invite(issued.invitenumber.clone()), Some(bytes.clone()))?;
        Ok(self.store.put_invite(login, &issued.invitenumber, bytes).wait()?)
    }

    /// The Delta Chat groups the account is in.
    pub fn groups(&self, login: &str) -> Result<Vec<Group>, IdentityError> {
        self.claim(login);
        self.store.groups(login)?.into_iter().map(|(_, bytes)| decode(login, &bytes)).collect()
    }

    /// Learns from a decrypted message of a group (nothing for other mail); a group past the
    /// store's bound is not kept.
    pub fn learn_group(&self, login: &str, decrypted: &Decrypted, received_at: i64) -> Result<(), IdentityError> {
        self.claim(login);
        let Some(id) = decrypted.protected.chat_group_id.as_deref() else { return Ok(()) };
        let old: Option<Group> = self.store.group(login, id)?.map(|b| decode(login, &b)).transpose()?;
        let Some(group) = super::group::learn(decrypted, login, old.as_ref(), received_at) else { return Ok(()) };
        tracing::debug!(
            login,
            group = %group.id,
            members = group.members.len(),
            message_id = ?decrypted.protected.message_id,
            "a Delta Chat group message"
        );
        if old.as_ref() == Some(&group) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&group)
            .map_err(|e| IdentityError::Corrupt { login: login.into(), reason: e.to_string() })?;
        self.publish(login, OpenPgpEntry::Group(group.id.clone()), Some(bytes.clone()))?;
        if !self.store.put_group(login, &group.id, bytes).wait()? {
            warn!(login, "too many Delta Chat groups; a new one is not kept");
        }
        Ok(())
    }

    /// The handshakes in progress, by id.
    pub fn joins(&self, login: &str) -> Result<Vec<(String, Joining)>, IdentityError> {
        self.claim(login);
        self.store.joins(login)?.into_iter().map(|(id, bytes)| Ok((id, decode(login, &bytes)?))).collect()
    }

    /// Stores (`Some`) or ends (`None`) a handshake.
    pub fn set_join(&self, login: &str, id: &str, state: Option<&Joining>) -> Result<(), IdentityError> {
        self.claim(login);
        let bytes = state
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| IdentityError::Corrupt { login: login.into(), reason: e.to_string() })?;
        self.publish(login, OpenPgpEntry::Join(id.to_string()), bytes.clone())?;
        Ok(self.store.put_join(login, id, bytes).wait()?)
    }
}

fn decode<T: serde::de::DeserializeOwned>(login: &str, bytes: &[u8]) -> Result<T, IdentityError> {
    serde_json::from_slice(bytes).map_err(|e| IdentityError::Corrupt { login: login.into(), reason: e.to_string() })
}

/// The decrypted views read the keys this handle has unsealed (all stored ones after
/// [`Identity::preload`], and each new one as it is made): never a blocking call.
impl SecretKeys for Identity {
    fn secret_keys(&self, login: &str) -> Vec<Arc<AccountKey>> {
        let keys = self.keys.lock().expect("key cache");
        keys.get(login).cloned().into_iter().collect()
    }

    fn known_peer(&self, login: &str, addr: &str) -> Option<Peer> {
        self.peer(login, addr).ok().flatten()
    }

    /// Our invites' passwords (with the account's fingerprint) and those of the links we
    /// joined, finished ones included: a handshake mail read late still shows its notice.
    fn handshake_passwords(&self, login: &str) -> Vec<String> {
        let mut out = Vec::new();
        let keys = self.secret_keys(login);
        match self.invites(login) {
            Ok(invites) => out.extend(
                invites
                    .iter()
                    .flat_map(|i| keys.iter().map(|k| super::securejoin::invite::password(k.fingerprint(), &i.auth))),
            ),
            Err(e) => tracing::warn!(login, "cannot read the account's invites: {e}"),
        }
        match self.joins(login) {
            Ok(joins) => out.extend(joins.iter().filter_map(|(_, j)| j.invite().ok()).map(|i| i.password())),
            Err(e) => tracing::warn!(login, "cannot read the account's joins: {e}"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::peer::{Verdict, verify};
    use crate::openpgp::securejoin::invite::Invite;

    fn identity(dir: &std::path::Path) -> Identity {
        let mut config: Config = toml::from_str("").unwrap();
        config.state_dir = dir.to_path_buf();
        Identity::open(&config, Store::open(dir).unwrap()).unwrap()
    }

    #[test]
    fn a_key_is_made_once_sealed_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let key = id.account_key_blocking("alice@example.org").unwrap();
        assert_eq!(id.account_key_blocking("alice@example.org").unwrap().fingerprint(), key.fingerprint());
        // Another account on a case-sensitive provider: its own key (the caller gives the
        // account key, `Config::account_key`, which folds case where the provider does).
        let other = id.account_key_blocking("Alice@Example.org").unwrap();
        assert_ne!(other.fingerprint(), key.fingerprint());
        let sealed = id.store().account_key("alice@example.org").unwrap().unwrap();
        let secret = key.secret_bytes().unwrap();
        assert!(
            !sealed.windows(32).any(|w| secret.expose().windows(32).any(|s| s == w)),
            "the store holds no part of the secret key in clear"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("seal.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(id);
        let again = identity(dir.path());
        assert_eq!(again.account_key_blocking("alice@example.org").unwrap().fingerprint(), key.fingerprint());
    }

    #[test]
    fn another_seal_key_does_not_open_a_stored_key_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        id.account_key_blocking("alice@example.org").unwrap();
        let other = Identity::with_seal(id.store().clone(), SealKey::generate());
        let err = other.account_key_blocking("alice@example.org").unwrap_err();
        assert!(matches!(err, IdentityError::Unseal(_)), "{err}");
    }

    #[test]
    fn keys_are_sealed_under_the_one_seal_key_file() {
        // `seal_key_file` (shared with the OAuth2 grants and the views), not a key of the wing's own.
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut config: Config = toml::from_str("").unwrap();
        config.state_dir = dir.path().to_path_buf();
        config.seal_key_file = Some(elsewhere.path().join("seal.key"));
        let id = Identity::open(&config, Store::open(dir.path()).unwrap()).unwrap();
        let key = id.account_key_blocking("alice@example.org").unwrap();
        assert!(!dir.path().join("seal.key").exists(), "no second seal key in the state directory");
        let seal = SealKey::load(&config.seal_key_path()).unwrap();
        let sealed = id.store().account_key("alice@example.org").unwrap().unwrap();
        let opened = seal.open(&secret_key_purpose("alice@example.org"), &sealed).unwrap();
        assert_eq!(opened.expose(), key.secret_bytes().unwrap().expose());
    }

    #[test]
    fn disabled_autocrypt_keeps_no_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut config: Config = toml::from_str("[autocrypt]\nenabled = false\n").unwrap();
        config.state_dir = dir.path().to_path_buf();
        let err = Identity::open(&config, Store::open(dir.path()).unwrap()).err().unwrap();
        assert!(matches!(err, IdentityError::Disabled));
        assert!(!dir.path().join("seal.key").exists());
    }

    #[test]
    fn import_replaces_the_key_and_export_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let made = id.account_key_blocking("alice@example.org").unwrap();
        let other = AccountKey::generate("alice@example.org").unwrap();
        let armored = other.secret_armored().unwrap();
        let fingerprint = id.import("alice@example.org", armored.expose(), None).unwrap();
        assert_eq!(&fingerprint, other.fingerprint());
        assert_ne!(&fingerprint, made.fingerprint());
        let reopened = Identity::with_seal(id.store().clone(), SealKey::load(&dir.path().join("seal.key")).unwrap());
        assert_eq!(reopened.account_key_blocking("alice@example.org").unwrap().fingerprint(), other.fingerprint());
        let err = id.import("alice@example.org", b"not a key", None).unwrap_err();
        assert!(matches!(err, IdentityError::Key { .. }), "{err}");
        assert_eq!(id.account_key_blocking("alice@example.org").unwrap().fingerprint(), other.fingerprint(), "kept");
    }

    #[test]
    fn peers_invites_and_joins_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let bob = AccountKey::generate("bob@example.net").unwrap();
        let verdict = verify(None, "Bob@example.net", bob.public_key(), 1_700_000_000);
        assert!(matches!(verdict, Verdict::Verified(_)));
        id.apply("alice@example.org", &[("bob@example.net".into(), verdict)]).unwrap();
        let alice = id.account_key_blocking("alice@example.org").unwrap();
        let invite = Invite::new_contact(alice.fingerprint().clone(), "alice@example.org", "Alice");
        id.add_invite("alice@example.org", &Issued::from_invite(&invite, 5)).unwrap();
        let bob_invite = Invite::new_contact(bob.fingerprint().clone(), "bob@example.net", "Bob");
        let (joining, _send) = crate::openpgp::securejoin::joiner::start(&alice, &bob_invite, 7).unwrap();
        id.set_join("alice@example.org", "j1", Some(&joining)).unwrap();
        let store = id.store().clone();
        drop(id);
        let id = Identity::with_seal(store, SealKey::load(&dir.path().join("seal.key")).unwrap());
        let peer = id.peer("alice@example.org", "BOB@example.net").unwrap().expect("stored");
        assert!(peer.is_verified());
        assert_eq!(peer.verified_fingerprint(), Some(bob.fingerprint()));
        assert_eq!(id.peers("alice@example.org").unwrap().len(), 1);
        assert_eq!(id.invites("alice@example.org").unwrap(), [Issued::from_invite(&invite, 5)]);
        assert_eq!(id.joins("alice@example.org").unwrap(), [("j1".to_string(), joining)]);
        id.set_join("alice@example.org", "j1", None).unwrap();
        assert!(id.joins("alice@example.org").unwrap().is_empty());
    }
}
