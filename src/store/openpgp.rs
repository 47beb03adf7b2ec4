//! What the OpenPGP gateway keeps per account: the account's secret key (a sealed blob: the
//! store never sees it in clear), the Autocrypt peer table, the invites we issued, the
//! SecureJoin handshakes we started and the Delta Chat groups the account is in. The values are
//! opaque bytes; the wing encodes them.
//!
//! The tables came after schema 1 and are made on first use: an older store simply has none,
//! which reads as "no key yet, no peers" (tests/store_upgrade.rs).

use redb::{ReadableTable, TableDefinition};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `login` → sealed secret key.
pub(super) const ACCOUNT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("openpgp_account_keys");
/// `login NUL canonical address` → peer state.
pub(super) const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("openpgp_peers");
/// `login NUL invitenumber` → an invite we issued.
pub(super) const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("openpgp_invites");
/// `login NUL id` → a handshake we started as joiner.
pub(super) const JOINS: TableDefinition<&str, &[u8]> = TableDefinition::new("openpgp_joins");

/// `login NUL group id` → a Delta Chat group the account is in.
pub(super) const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("openpgp_groups");

/// Groups kept per account; a new one past it is not kept (its replies go out as ordinary mail).
pub const MAX_GROUPS: usize = 1_000;

/// Peers kept per account; a write past it is refused (a flood of senders cannot fill the disk).
pub const MAX_PEERS: usize = 50_000;

/// The account key as given (`Config::account_key`); before schema 4 it was lower-cased
/// (`keys` claims such state for the account).
fn login_key(login: &str) -> String {
    login.to_string()
}

fn entry_key(login: &str, id: &str) -> String {
    format!("{}\0{id}", login_key(login))
}

/// Every `(id, value)` of `login` in a per-account table.
fn entries(
    store: &Store,
    table: TableDefinition<&str, &[u8]>,
    login: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = store.begin_read()?;
    let Some(table) = read_table(&txn, table)? else { return Ok(Vec::new()) };
    let prefix = format!("{}\0", login_key(login));
    let end = format!("{}\u{1}", login_key(login));
    let mut out = Vec::new();
    for item in table.range(prefix.as_str()..end.as_str())? {
        let (key, value) = item?;
        out.push((key.value()[prefix.len()..].to_string(), value.value().to_vec()));
    }
    Ok(out)
}

fn entry(store: &Store, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = store.begin_read()?;
    let Some(table) = read_table(&txn, table)? else { return Ok(None) };
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

/// A peer write that would pass [`MAX_PEERS`] for the account; nothing was written.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyPeers;

impl Store {
    /// The account's sealed secret key, if it has one.
    pub fn account_key(&self, login: &str) -> Result<Option<Vec<u8>>, StoreError> {
        entry(self, ACCOUNT_KEYS, &login_key(login))
    }

    /// Whether the account has a key: its own, or one an earlier release kept under the
    /// lower-cased login that no login has claimed yet (the OpenPGP wing claims it at its
    /// first use of the account).
    pub fn has_account_key(&self, login: &str) -> Result<bool, StoreError> {
        if self.account_key(login)?.is_some() {
            return Ok(true);
        }
        let lower = login.to_ascii_lowercase();
        Ok(lower != login && self.legacy_identity_unclaimed(&lower)? && self.account_key(&lower)?.is_some())
    }

    /// Stores the account's sealed secret key and returns the one in force: with `replace`
    /// false an existing key is kept (two first uses at once end with one key), with `replace`
    /// true (`key import`) the new one wins.
    pub fn put_account_key(&self, login: &str, sealed: Vec<u8>, replace: bool) -> Pending<Vec<u8>> {
        let login = login_key(login);
        self.write(move |txn| {
            let mut table = txn.open_table(ACCOUNT_KEYS)?;
            if !replace && let Some(existing) = table.get(login.as_str())? {
                return Ok(existing.value().to_vec());
            }
            table.insert(login.as_str(), sealed.as_slice())?;
            Ok(sealed.clone())
        })
    }

    /// The logins that have a key, for `check`.
    pub fn accounts_with_keys(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, ACCOUNT_KEYS)? else { return Ok(Vec::new()) };
        table.iter()?.map(|item| Ok(item?.0.value().to_string())).collect()
    }

    /// One peer's stored state (`addr` canonical, as the wing keys it).
    pub fn peer(&self, login: &str, addr: &str) -> Result<Option<Vec<u8>>, StoreError> {
        entry(self, PEERS, &entry_key(login, addr))
    }

    /// Every peer of the account, by address.
    pub fn peers(&self, login: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        entries(self, PEERS, login)
    }

    /// Stores peer states in one transaction; refused whole when new peers would pass
    /// [`MAX_PEERS`] (updates of known peers always pass).
    pub fn put_peers(&self, login: &str, peers: Vec<(String, Vec<u8>)>) -> Pending<Result<(), TooManyPeers>> {
        let login = login_key(login);
        self.write(move |txn| {
            let mut table = txn.open_table(PEERS)?;
            let (prefix, end) = (format!("{login}\0"), format!("{login}\u{1}"));
            let mut new = 0;
            for (addr, _) in &peers {
                if table.get(format!("{prefix}{addr}").as_str())?.is_none() {
                    new += 1;
                }
            }
            if new > 0 && table.range(prefix.as_str()..end.as_str())?.count() + new > MAX_PEERS {
                return Ok(Err(TooManyPeers));
            }
            for (addr, value) in &peers {
                table.insert(format!("{prefix}{addr}").as_str(), value.as_slice())?;
            }
            Ok(Ok(()))
        })
    }

    /// The invites the account issued and still honours, by invitenumber.
    pub fn invites(&self, login: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        entries(self, INVITES, login)
    }

    pub fn put_invite(&self, login: &str, id: &str, value: Vec<u8>) -> Pending<()> {
        let key = entry_key(login, id);
        self.write(move |txn| {
            txn.open_table(INVITES)?.insert(key.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// The account's groups, by id.
    pub fn groups(&self, login: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        entries(self, GROUPS, login)
    }

    /// One group of the account.
    pub fn group(&self, login: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        entry(self, GROUPS, &entry_key(login, id))
    }

    /// Stores a group; a new one past [`MAX_GROUPS`] for the account is not kept (`false`).
    pub fn put_group(&self, login: &str, id: &str, value: Vec<u8>) -> Pending<bool> {
        let login = login_key(login);
        let key = entry_key(&login, id);
        self.write(move |txn| {
            let mut table = txn.open_table(GROUPS)?;
            if table.get(key.as_str())?.is_none() {
                let (prefix, end) = (format!("{login}\0"), format!("{login}\u{1}"));
                if table.range(prefix.as_str()..end.as_str())?.count() >= MAX_GROUPS {
                    return Ok(false);
                }
            }
            table.insert(key.as_str(), value.as_slice())?;
            Ok(true)
        })
    }

    /// The handshakes the account started as joiner, by id.
    pub fn joins(&self, login: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        entries(self, JOINS, login)
    }

    /// Stores (`Some`) or ends (`None`) a handshake.
    pub fn put_join(&self, login: &str, id: &str, value: Option<Vec<u8>>) -> Pending<()> {
        let key = entry_key(login, id);
        self.write(move |txn| {
            let mut table = txn.open_table(JOINS)?;
            match &value {
                Some(v) => table.insert(key.as_str(), v.as_slice())?,
                None => table.remove(key.as_str())?,
            };
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_per_account_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.groups("a@x").unwrap().is_empty() && store.group("a@x", "g").unwrap().is_none());
        assert!(store.put_group("a@x", "g", b"one".to_vec()).wait().unwrap());
        assert!(store.put_group("A@x", "g", b"other".to_vec()).wait().unwrap());
        assert!(store.put_group("a@x", "g", b"two".to_vec()).wait().unwrap());
        assert_eq!(store.groups("a@x").unwrap(), [("g".to_string(), b"two".to_vec())]);
        assert!(store.groups("b@x").unwrap().is_empty());
        for i in 1..MAX_GROUPS {
            assert!(store.put_group("a@x", &format!("g{i}"), b"x".to_vec()).wait().unwrap());
        }
        assert!(!store.put_group("a@x", "one-too-many", b"x".to_vec()).wait().unwrap());
        assert!(store.put_group("a@x", "g", b"three".to_vec()).wait().unwrap(), "known ones still update");
        assert_eq!(store.group("a@x", "g").unwrap().as_deref(), Some(&b"three"[..]));
    }

    #[test]
    fn keys_peers_invites_and_joins_per_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.account_key("a@x").unwrap(), None);
        assert!(store.peers("a@x").unwrap().is_empty() && store.joins("a@x").unwrap().is_empty());
        assert_eq!(store.put_account_key("a@x", b"first".to_vec(), false).wait().unwrap(), b"first");
        assert_eq!(store.put_account_key("A@x", b"other".to_vec(), false).wait().unwrap(), b"other", "exact keys");
        assert_eq!(store.put_account_key("a@x", b"second".to_vec(), false).wait().unwrap(), b"first", "kept");
        assert_eq!(store.put_account_key("a@x", b"third".to_vec(), true).wait().unwrap(), b"third", "replaced");
        assert_eq!(store.account_key("a@x").unwrap().as_deref(), Some(&b"third"[..]));
        assert_eq!(store.account_key("A@x").unwrap().as_deref(), Some(&b"other"[..]));
        assert_eq!(store.accounts_with_keys().unwrap(), ["A@x", "a@x"]);

        let peers = vec![("p@y".to_string(), b"1".to_vec()), ("q@y".to_string(), b"2".to_vec())];
        store.put_peers("a@x", peers.clone()).wait().unwrap().unwrap();
        store.put_peers("b@x", vec![("p@y".into(), b"other".to_vec())]).wait().unwrap().unwrap();
        assert_eq!(store.peers("a@x").unwrap(), peers);
        assert_eq!(store.peer("a@x", "q@y").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(store.peer("b@x", "p@y").unwrap().as_deref(), Some(&b"other"[..]));
        assert_eq!(store.peer("a@x", "r@y").unwrap(), None);

        store.put_invite("a@x", "inv1", b"i".to_vec()).wait().unwrap();
        assert_eq!(store.invites("a@x").unwrap(), [("inv1".to_string(), b"i".to_vec())]);
        assert!(store.invites("b@x").unwrap().is_empty());
        store.put_join("a@x", "j1", Some(b"j".to_vec())).wait().unwrap();
        assert_eq!(store.joins("a@x").unwrap(), [("j1".to_string(), b"j".to_vec())]);
        store.put_join("a@x", "j1", None).wait().unwrap();
        assert!(store.joins("a@x").unwrap().is_empty());
    }

    #[test]
    fn the_peer_table_is_bounded_but_known_peers_still_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let many: Vec<(String, Vec<u8>)> = (0..MAX_PEERS).map(|i| (format!("p{i}@y"), vec![1])).collect();
        store.put_peers("a@x", many).wait().unwrap().unwrap();
        let more = vec![("p0@y".to_string(), vec![2]), ("new@y".to_string(), vec![2])];
        assert_eq!(store.put_peers("a@x", more).wait().unwrap(), Err(TooManyPeers));
        assert_eq!(store.peer("a@x", "p0@y").unwrap(), Some(vec![1]), "refused whole");
        store.put_peers("a@x", vec![("p0@y".to_string(), vec![3])]).wait().unwrap().unwrap();
        assert_eq!(store.peer("a@x", "p0@y").unwrap(), Some(vec![3]));
        assert_eq!(store.put_peers("b@x", vec![("new@y".into(), vec![1])]).wait().unwrap(), Ok(()), "per account");
    }
}
