//! The decrypted views of an installation (issue 15): each UID's view is decided once (the
//! first time it is asked for) and never changes afterwards, so every FETCH answer about that
//! UID agrees forever, also across restarts. Views live in memory up to a byte budget (least
//! recently used go first) and on disk in the store, sealed with the installation's seal key
//! under a purpose naming the UID, so a blob moved to another UID or account does not open.
//!
//! The secret keys come through [`SecretKeys`], so that this module does not depend on where
//! the key storage keeps them. Rendering a view (decryption, parsing) and the store's commit
//! are blocking: async callers use [`Views::view_blocking`] through `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::decrypt::DecryptError;
use super::encrypt::EncryptError;
use super::key::AccountKey;
use super::peer::Peer;
use super::view::{self, View};
use crate::imap::wire::message::MessageView;
use crate::limits::budget::{Budget, Share};
use crate::seal::SealKey;
use crate::store::{Store, ViewId};

/// Default memory budget of all views together.
pub const DEFAULT_BUDGET: usize = 64 * 1024 * 1024;

/// The account's secret keys, as the key storage holds them (issue 14 connects this), and the
/// peers it knows (whether a conversation is encrypted, for the copies a client appends).
pub trait SecretKeys: Send + Sync {
    /// `login`'s secret keys, the current one first; empty when the account has none (its
    /// sessions then see mail as stored).
    fn secret_keys(&self, login: &str) -> Vec<Arc<AccountKey>>;

    /// What `login`'s gateway knows of `addr` (its key, whether verified). Blocking (a store
    /// read): call off the runtime. None by default: no conversation counts as encrypted.
    fn known_peer(&self, _login: &str, _addr: &str) -> Option<Peer> {
        None
    }

    /// The passwords of `login`'s SecureJoin invites and joins, which open the first two
    /// handshake steps (shown as notices, [`super::securejoin::notice`]). May block (a store
    /// read): called only while a view is decided.
    fn handshake_passwords(&self, _login: &str) -> Vec<String> {
        Vec::new()
    }
}

/// What a UID shows.
#[derive(Debug, Clone)]
pub enum Shown {
    /// Not encrypted: the provider's original.
    Original,
    /// The decrypted message, or the explanation of one that could not be decrypted.
    View { view: Arc<MessageView>, decrypted: bool },
}

const KIND_ORIGINAL: u8 = 0;
const KIND_DECRYPTED: u8 = 1;
const KIND_FAILED: u8 = 2;
/// A SecureJoin handshake mail, shown as a short notice.
const KIND_NOTICE: u8 = 3;

/// All accounts' views.
pub struct Views {
    store: Store,
    seal: Arc<SealKey>,
    keys: Arc<dyn SecretKeys>,
    memory: Mutex<Memory>,
    /// The daemon's memory budget: sessions charge the originals and views of one command to
    /// their account's share of it ([`Views::charge_to`]).
    budget: std::sync::OnceLock<Budget>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memory = self.memory.lock().expect("views");
        f.debug_struct("Views").field("entries", &memory.entries.len()).field("bytes", &memory.bytes).finish()
    }
}

#[derive(Default)]
struct Memory {
    budget: usize,
    bytes: usize,
    tick: u64,
    entries: HashMap<ViewId, (Shown, u64)>,
    by_use: BTreeMap<u64, ViewId>,
}

impl Memory {
    fn get(&mut self, id: &ViewId) -> Option<Shown> {
        self.tick += 1;
        let tick = self.tick;
        let (shown, used) = self.entries.get_mut(id)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, id.clone());
        Some(shown.clone())
    }

    fn put(&mut self, id: ViewId, shown: Shown) {
        if self.entries.contains_key(&id) {
            return;
        }
        self.tick += 1;
        self.bytes += size(&shown);
        self.by_use.insert(self.tick, id.clone());
        self.entries.insert(id, (shown, self.tick));
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some((shown, _)) = self.entries.remove(&oldest) {
                self.bytes -= size(&shown);
            }
        }
    }
}

fn size(shown: &Shown) -> usize {
    match shown {
        Shown::Original => 64,
        // The bytes, and about as much again for the parsed tree.
        Shown::View { view, .. } => 64 + view.size() * 2,
    }
}

impl Views {
    pub fn new(store: Store, seal: Arc<SealKey>, keys: Arc<dyn SecretKeys>, budget: usize) -> Views {
        Views {
            store,
            seal,
            keys,
            memory: Mutex::new(Memory { budget, ..Memory::default() }),
            budget: std::sync::OnceLock::new(),
        }
    }

    /// Charges what sessions hold of originals and views for one command to `budget` (set once,
    /// when the daemon's context exists).
    pub fn charge_to(&self, budget: Budget) {
        let _ = self.budget.set(budget);
    }

    /// `login`'s share of the memory budget, once there is one.
    pub fn share(&self, login: &str) -> Option<Share> {
        self.budget.get().map(|b| b.account(login))
    }

    /// Whether `login` has keys, i.e. whether its plain sessions get views at all.
    pub fn enabled(&self, login: &str) -> bool {
        !self.keys.secret_keys(login).is_empty()
    }

    /// Bytes and entries held in memory now.
    pub fn memory(&self) -> (usize, usize) {
        let memory = self.memory.lock().expect("views");
        (memory.bytes, memory.entries.len())
    }

    /// The view of `id` if it was decided already (memory, then disk). Blocking (a store read
    /// and an open): call off the runtime.
    pub fn known(&self, id: &ViewId) -> Option<Shown> {
        if let Some(shown) = self.memory.lock().expect("views").get(id) {
            return Some(shown);
        }
        let sealed = match self.store.view(id) {
            Ok(sealed) => sealed?,
            Err(e) => {
                warn!("cannot read a kept view: {e}");
                return None;
            }
        };
        let shown = match self.seal.open(&purpose(id), &sealed) {
            Ok(plain) => match plain.expose().split_first() {
                Some((&KIND_ORIGINAL, _)) => Shown::Original,
                Some((&kind, bytes)) if kind == KIND_DECRYPTED || kind == KIND_FAILED || kind == KIND_NOTICE => {
                    Shown::View { view: Arc::new(MessageView::new(bytes.to_vec())), decrypted: kind == KIND_DECRYPTED }
                }
                _ => {
                    warn!(uid = id.uid, "a kept view has an unknown form; deciding it again");
                    return None;
                }
            },
            Err(e) => {
                warn!(uid = id.uid, "a kept view does not open ({e}); deciding it again");
                return None;
            }
        };
        self.memory.lock().expect("views").put(id.clone(), shown.clone());
        Some(shown)
    }

    /// The view of `id`, deciding it from the provider's `original` bytes if it was not decided
    /// yet, and keeping the decision. Blocking (decryption, store commit): call off the runtime.
    pub fn view_blocking(&self, id: &ViewId, original: &[u8]) -> Shown {
        if let Some(shown) = self.known(id) {
            return shown;
        }
        let keys = self.keys.secret_keys(&id.account);
        let (kind, bytes) = self.decide(id, original, &keys);
        self.keep(id, kind, bytes)
    }

    /// Decides `id` as `clear`, the decrypted message (a copy the client appended, whose
    /// clear text the proxy had before encrypting it), unless it was decided already.
    /// Blocking: call off the runtime.
    pub fn seed_blocking(&self, id: &ViewId, clear: Vec<u8>) -> Shown {
        match self.known(id) {
            Some(shown) => shown,
            None => self.keep(id, KIND_DECRYPTED, clear),
        }
    }

    /// Decides `id` as its original (a message too large to read for a view), unless it was
    /// decided already. Blocking: call off the runtime.
    pub fn original_blocking(&self, id: &ViewId) -> Shown {
        match self.known(id) {
            Some(shown) => shown,
            None => self.keep(id, KIND_ORIGINAL, Vec::new()),
        }
    }

    /// `to` (a copy of `from`'s message: COPY, MOVE) shows what `from` shows, if `from` was
    /// decided and `to` was not; otherwise `to` is decided when first asked for, as any UID.
    /// Blocking: call off the runtime.
    pub fn copy_blocking(&self, from: &ViewId, to: &ViewId) {
        let Some(shown) = self.known(from) else { return };
        if self.known(to).is_some() {
            return;
        }
        let (kind, bytes) = match shown {
            Shown::Original => (KIND_ORIGINAL, Vec::new()),
            Shown::View { view, decrypted } => {
                (if decrypted { KIND_DECRYPTED } else { KIND_FAILED }, view.raw().to_vec())
            }
        };
        self.keep(to, kind, bytes);
    }

    /// The copy of `message` a plain client of `login` appends, to store instead
    /// ([`super::own_copy`]): `None` to store it as it is (also when the account has no key).
    /// Blocking (store reads, encryption): call off the runtime.
    pub fn own_copy_blocking(&self, login: &str, message: &[u8]) -> Result<Option<Vec<u8>>, EncryptError> {
        let Some(key) = self.keys.secret_keys(login).into_iter().next() else { return Ok(None) };
        let known = |addr: &str| self.keys.known_peer(login, addr);
        super::own_copy::own_copy(message, &key, &known, crate::clock::now())
    }

    /// What `id` shows, from its `original`: a notice for a SecureJoin handshake mail, else the
    /// decrypted message, an explanation, or the original.
    fn decide(&self, id: &ViewId, original: &[u8], keys: &[Arc<AccountKey>]) -> (u8, Vec<u8>) {
        match notice(original, keys, || self.keys.handshake_passwords(&id.account)) {
            Some(bytes) => (KIND_NOTICE, bytes),
            None => decide(original, keys),
        }
    }

    /// Keeps the decision for `id` (sealed, on disk, then in memory); the one kept first if
    /// another was (another session, at the same moment).
    fn keep(&self, id: &ViewId, kind: u8, bytes: Vec<u8>) -> Shown {
        self.keep_all(vec![(id.clone(), kind, bytes)]).pop().expect("one")
    }

    /// The views of many UIDs at once (one FETCH): each decided from its original unless it was
    /// decided already; the new decisions are written together, so they share the store's
    /// commits instead of waiting for one each. Blocking: call off the runtime.
    pub fn views_blocking(&self, messages: Vec<(ViewId, Option<Vec<u8>>)>) -> Vec<Shown> {
        let mut shown: Vec<Option<Shown>> = Vec::with_capacity(messages.len());
        let mut new = Vec::new();
        for (i, (id, original)) in messages.into_iter().enumerate() {
            match (self.known(&id), original) {
                (Some(known), _) => shown.push(Some(known)),
                (None, Some(original)) => {
                    let (kind, bytes) = self.decide(&id, &original, &self.keys.secret_keys(&id.account));
                    shown.push(None);
                    new.push((i, (id, kind, bytes)));
                }
                // Gone meanwhile (expunged): the provider's answer, whatever it is.
                (None, None) => shown.push(Some(Shown::Original)),
            }
        }
        let (at, decided): (Vec<usize>, Vec<_>) = new.into_iter().unzip();
        for (i, decision) in at.into_iter().zip(self.keep_all(decided)) {
            shown[i] = Some(decision);
        }
        shown.into_iter().map(|s| s.unwrap_or(Shown::Original)).collect()
    }

    /// [`Views::keep`] for many: every write submitted first, then each awaited.
    fn keep_all(&self, decided: Vec<(ViewId, u8, Vec<u8>)>) -> Vec<Shown> {
        let pending: Vec<_> = decided
            .iter()
            .map(|(id, kind, bytes)| {
                let mut plain = Vec::with_capacity(bytes.len() + 1);
                plain.push(*kind);
                plain.extend_from_slice(bytes);
                self.store.keep_view(id, self.seal.seal(&purpose(id), &plain))
            })
            .collect();
        decided
            .into_iter()
            .zip(pending)
            .map(|((id, kind, bytes), pending)| {
                match pending.wait() {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Some(first) = self.known(&id) {
                            return first;
                        }
                    }
                    // Served anyway; decided again (identically, the render is deterministic) later.
                    Err(e) => warn!(uid = id.uid, "cannot keep a view: {e}"),
                }
                let shown = match kind {
                    KIND_ORIGINAL => Shown::Original,
                    _ => Shown::View { view: Arc::new(MessageView::new(bytes)), decrypted: kind == KIND_DECRYPTED },
                };
                self.memory.lock().expect("views").put(id, shown.clone());
                shown
            })
            .collect()
    }

    /// Forgets what is kept for other incarnations of a mailbox (UIDVALIDITY changed).
    pub async fn mailbox_seen(&self, account: &str, mailbox: &str, uidvalidity: u32) {
        if let Err(e) = self.store.forget_stale_views(account, mailbox, uidvalidity).await {
            warn!("cannot forget stale views: {e}");
        }
    }
}

/// The notice in place of a SecureJoin handshake mail, if `original` is one with any of the
/// keys (the passwords are read only for encrypted mail).
fn notice(original: &[u8], keys: &[Arc<AccountKey>], passwords: impl FnOnce() -> Vec<String>) -> Option<Vec<u8>> {
    let passwords = if super::decrypt::encrypted_payload(original).is_some() { passwords() } else { Vec::new() };
    let passwords: Vec<&str> = passwords.iter().map(String::as_str).collect();
    keys.iter().find_map(|k| super::securejoin::notice::notice(original, k, &passwords))
}

/// Renders with each key in turn: the first that decrypts wins; a message for none of them
/// is explained with the first key's reason.
fn decide(original: &[u8], keys: &[Arc<AccountKey>]) -> (u8, Vec<u8>) {
    let mut failed = None;
    for key in keys {
        match view::render(original, key) {
            View::NotEncrypted => return (KIND_ORIGINAL, Vec::new()),
            View::Decrypted { bytes, .. } => return (KIND_DECRYPTED, bytes),
            View::Failed { bytes, error } => {
                if failed.is_none() || error != DecryptError::NotForThisKey {
                    failed.get_or_insert((error, bytes));
                }
            }
        }
    }
    match failed {
        Some((_, bytes)) => (KIND_FAILED, bytes),
        None => (KIND_ORIGINAL, Vec::new()),
    }
}

fn purpose(id: &ViewId) -> String {
    format!("decrypted-view:{}\0{}\0{}\0{}", id.account, id.mailbox, id.uidvalidity, id.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::autocrypt::PreferEncrypt;
    use crate::openpgp::encrypt::{Options, encrypt};

    pub struct Keys(pub Vec<Arc<AccountKey>>);

    impl SecretKeys for Keys {
        fn secret_keys(&self, _: &str) -> Vec<Arc<AccountKey>> {
            self.0.clone()
        }
    }

    fn encrypted(from: &AccountKey, to: &AccountKey, text: &str) -> Vec<u8> {
        let msg = format!("From: {}\r\nTo: {}\r\nSubject: secret\r\n\r\n{text}\r\n", from.addr(), to.addr());
        let to = vec![(to.addr().to_string(), to.public_key().clone())];
        encrypt(msg.as_bytes(), from, &to, &Options::mail(PreferEncrypt::Mutual, 0)).unwrap()
    }

    #[test]
    fn decided_once_kept_sealed_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let seal = Arc::new(SealKey::generate());
        let alice = AccountKey::generate("alice@example.org").unwrap();
        let bob = Arc::new(AccountKey::generate("bob@example.org").unwrap());
        let raw = encrypted(&alice, &bob, "the clear text");
        let id = ViewId::new("bob@example.org", "INBOX", 1, 5);
        let first = {
            let store = Store::open(dir.path()).unwrap();
            let views = Views::new(store, seal.clone(), Arc::new(Keys(vec![bob.clone()])), DEFAULT_BUDGET);
            assert!(views.known(&id).is_none());
            let Shown::View { view, decrypted: true } = views.view_blocking(&id, &raw) else { panic!() };
            assert!(String::from_utf8_lossy(view.raw()).contains("the clear text"));
            // Decided: other bytes for the same UID do not change it.
            let Shown::View { view: again, .. } = views.view_blocking(&id, b"Subject: x\r\n\r\ny\r\n") else {
                panic!()
            };
            assert_eq!(again.raw(), view.raw());
            view.raw().to_vec()
        };
        // On disk it is sealed: the clear text is nowhere in the file.
        let file = std::fs::read(Store::open(dir.path()).unwrap().path()).unwrap();
        assert!(!file.windows(14).any(|w| w == b"the clear text"));
        // After a restart, even without the key any more, the view stands.
        let store = Store::open(dir.path()).unwrap();
        let views = Views::new(store, seal, Arc::new(Keys(vec![])), DEFAULT_BUDGET);
        let Some(Shown::View { view, decrypted: true }) = views.known(&id) else { panic!() };
        assert_eq!(view.raw(), first.as_slice());
        // A wrong seal key (or a blob moved elsewhere) does not open: decided again.
        let store = views.store.clone();
        let other = Views::new(store, Arc::new(SealKey::generate()), Arc::new(Keys(vec![])), DEFAULT_BUDGET);
        assert!(other.known(&id).is_none());
    }

    #[test]
    fn clear_and_undecryptable_messages_and_several_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = AccountKey::generate("alice@example.org").unwrap();
        let old = Arc::new(AccountKey::generate("bob@example.org").unwrap());
        let new = Arc::new(AccountKey::generate("bob@example.org").unwrap());
        let carol = AccountKey::generate("carol@example.org").unwrap();
        let views =
            Views::new(store, Arc::new(SealKey::generate()), Arc::new(Keys(vec![new, old.clone()])), DEFAULT_BUDGET);
        let clear = ViewId::new("bob@example.org", "INBOX", 1, 1);
        assert!(matches!(views.view_blocking(&clear, b"Subject: hi\r\n\r\nhello\r\n"), Shown::Original));
        assert!(matches!(views.known(&clear), Some(Shown::Original)));
        let to_old = ViewId::new("bob@example.org", "INBOX", 1, 2);
        let shown = views.view_blocking(&to_old, &encrypted(&alice, &old, "for the old key"));
        assert!(matches!(shown, Shown::View { decrypted: true, .. }), "the older key decrypts");
        let to_carol = ViewId::new("bob@example.org", "INBOX", 1, 3);
        let Shown::View { view, decrypted: false } = views.view_blocking(&to_carol, &encrypted(&alice, &carol, "x"))
        else {
            panic!()
        };
        assert!(String::from_utf8_lossy(view.raw()).contains("could not decrypt"));
    }

    #[test]
    fn memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bob = Arc::new(AccountKey::generate("bob@example.org").unwrap());
        let alice = AccountKey::generate("alice@example.org").unwrap();
        let views = Views::new(store, Arc::new(SealKey::generate()), Arc::new(Keys(vec![bob.clone()])), 20_000);
        let text = "x".repeat(3000);
        for uid in 1..=10 {
            views.view_blocking(&ViewId::new("bob@example.org", "INBOX", 1, uid), &encrypted(&alice, &bob, &text));
            assert!(views.memory().0 <= 20_000);
        }
        let (bytes, entries) = views.memory();
        assert!(entries < 10 && entries > 0, "{entries} entries, {bytes} bytes");
        // Evicted ones come back from disk, the same.
        assert!(matches!(
            views.known(&ViewId::new("bob@example.org", "INBOX", 1, 1)),
            Some(Shown::View { decrypted: true, .. })
        ));
    }
}
