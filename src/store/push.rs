//! WebPush state: the VAPID key and each account's subscriptions.
//!
//! One VAPID key per installation, not per account: a push service sees the key of every
//! request anyway, so per-account keys would hide nothing from it, while one key is one secret
//! to guard and back up, and a client that subscribes for several accounts through the same
//! proxy can use one application server key. The private key never leaves this table except
//! to sign, and is never logged.
//!
//! Subscriptions are kept as the client's JSON (known keys only) with when they were made,
//! whether they are validated, and the validation token. Unvalidated ones count against the
//! limit only until they expire, and are dropped at the next change.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `"vapid"` → private key (32-octet P-256 scalar).
const PUSH_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("push_keys");
/// `account NUL id` → [`PushSubscription`] as JSON.
pub(super) const PUSH_SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("push_subscriptions");

/// A stored subscription.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscription {
    pub id: String,
    /// The subscription's JSON, known keys only.
    pub json: String,
    /// Unix seconds.
    pub created: u64,
    pub validated: bool,
    /// What the client must set `.../validate` to.
    pub token: String,
}

impl std::fmt::Debug for PushSubscription {
    /// Without the JSON (endpoint and keys) and the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSubscription").field("id", &self.id).field("validated", &self.validated).finish()
    }
}

impl PushSubscription {
    /// Still of use: validated, or within the validation window.
    pub fn alive(&self, now: u64, expiry: u64) -> bool {
        self.validated || now < self.created.saturating_add(expiry)
    }
}

/// Subscribing would pass the per-account limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManySubscriptions;

/// The result of setting `.../<id>/validate`.
#[derive(Debug, PartialEq, Eq)]
pub enum Validation {
    Validated,
    /// No such subscription, expired, or the wrong value: the client cannot tell these apart.
    Refused,
}

fn key(account: &str, id: &str) -> String {
    format!("{account}\0{id}")
}

fn decode(bytes: &[u8]) -> Result<PushSubscription, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("push subscription: {e}")))
}

fn encode(sub: &PushSubscription) -> Vec<u8> {
    serde_json::to_vec(sub).expect("plain struct")
}

impl Store {
    /// The installation's VAPID private key, made by `generate` the first time (on the writer
    /// thread; it may be called more than once, the key stored is the one returned).
    pub fn vapid_key(&self, mut generate: impl FnMut() -> Vec<u8> + Send + 'static) -> Pending<Vec<u8>> {
        match self.stored_vapid_key() {
            Ok(Some(key)) => return Pending::ready(Ok(key)),
            Ok(None) => {}
            Err(e) => return Pending::ready(Err(e)),
        }
        self.write(move |txn| {
            let mut table = txn.open_table(PUSH_KEYS)?;
            // Another task may have made it meanwhile.
            let existing = table.get("vapid")?.map(|v| v.value().to_vec());
            Ok(match existing {
                Some(k) => k,
                None => {
                    let k = generate();
                    table.insert("vapid", k.as_slice())?;
                    k
                }
            })
        })
    }

    /// Replaces the VAPID private key (a cluster's shared one, from etcd).
    pub fn set_vapid_key(&self, private: Vec<u8>) -> Pending<()> {
        self.write(move |txn| {
            txn.open_table(PUSH_KEYS)?.insert("vapid", private.as_slice())?;
            Ok(())
        })
    }

    /// Every account's subscriptions, as stored (a cluster's first sync compares them with etcd).
    pub fn push_all(&self) -> Result<Vec<(String, PushSubscription)>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, PUSH_SUBSCRIPTIONS)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (key, value) = item?;
            let account = key.value().split('\0').next().unwrap_or_default().to_string();
            out.push((account, decode(value.value())?));
        }
        Ok(out)
    }

    /// Stores `sub` as given, replacing one with its id (a cluster's replicated copy: the
    /// instance that took it checked the limits).
    pub fn push_put(&self, account: &str, sub: &PushSubscription) -> Pending<()> {
        let (k, json) = (key(account, &sub.id), encode(sub));
        self.write(move |txn| {
            txn.open_table(PUSH_SUBSCRIPTIONS)?.insert(k.as_str(), json.as_slice())?;
            Ok(())
        })
    }

    /// One subscription, as stored (whatever its state).
    pub fn push_subscription(&self, account: &str, id: &str) -> Result<Option<PushSubscription>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, PUSH_SUBSCRIPTIONS)? else { return Ok(None) };
        table.get(key(account, id).as_str())?.map(|v| decode(v.value())).transpose()
    }

    fn stored_vapid_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        match txn.open_table(PUSH_KEYS) {
            Ok(table) => Ok(table.get("vapid")?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds or replaces a subscription; refused when the account would then have more than
    /// `limit` live ones. Expired unvalidated ones of the account are dropped on the way.
    pub fn push_subscribe(
        &self,
        account: &str,
        sub: &PushSubscription,
        limit: usize,
        now: u64,
        expiry: u64,
    ) -> Pending<Result<(), TooManySubscriptions>> {
        let (account, id, json) = (account.to_string(), sub.id.clone(), encode(sub));
        self.write(move |txn| {
            let too_many = {
                let mut table = txn.open_table(PUSH_SUBSCRIPTIONS)?;
                let others = purge_and_list(&mut table, &account, now, expiry)?;
                let live = others.iter().filter(|s| s.id != id).count();
                if live >= limit {
                    true
                } else {
                    table.insert(key(&account, &id).as_str(), json.as_slice())?;
                    false
                }
            };
            if too_many {
                txn.discard();
                return Ok(Err(TooManySubscriptions));
            }
            Ok(Ok(()))
        })
    }

    /// Marks a subscription validated if `token` is its token and it has not expired.
    pub fn push_validate(&self, account: &str, id: &str, token: &[u8], now: u64, expiry: u64) -> Pending<Validation> {
        let (k, token) = (key(account, id), token.to_vec());
        self.write(move |txn| {
            let mut table = txn.open_table(PUSH_SUBSCRIPTIONS)?;
            let found = table.get(k.as_str())?.map(|v| decode(v.value())).transpose()?;
            Ok(match found {
                Some(mut sub) if sub.alive(now, expiry) && constant_time_eq(sub.token.as_bytes(), &token) => {
                    sub.validated = true;
                    table.insert(k.as_str(), encode(&sub).as_slice())?;
                    Validation::Validated
                }
                _ => Validation::Refused,
            })
        })
    }

    /// Removes a subscription; whether it existed.
    pub fn push_unsubscribe(&self, account: &str, id: &str) -> Pending<bool> {
        let k = key(account, id);
        self.write(move |txn| Ok(txn.open_table(PUSH_SUBSCRIPTIONS)?.remove(k.as_str())?.is_some()))
    }

    /// The account's live subscriptions, by id.
    pub fn push_subscriptions(
        &self,
        account: &str,
        now: u64,
        expiry: u64,
    ) -> Result<Vec<PushSubscription>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, PUSH_SUBSCRIPTIONS)? else { return Ok(Vec::new()) };
        let prefix = key(account, "");
        let mut out = Vec::new();
        for item in table.range(prefix.as_str()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            let sub = decode(v.value())?;
            if sub.alive(now, expiry) {
                out.push(sub);
            }
        }
        Ok(out)
    }

    /// Whether `account` has a validated subscription (a read of its own entries only).
    pub fn push_validated(&self, account: &str) -> Result<bool, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, PUSH_SUBSCRIPTIONS)? else { return Ok(false) };
        let prefix = key(account, "");
        for item in table.range(prefix.as_str()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            if decode(v.value())?.validated {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Accounts with at least one validated subscription.
    pub fn push_accounts(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, PUSH_SUBSCRIPTIONS)? else { return Ok(Vec::new()) };
        let mut out: Vec<String> = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let account = k.value().split('\0').next().unwrap_or_default().to_string();
            if out.last() != Some(&account) && decode(v.value())?.validated {
                out.push(account);
            }
        }
        Ok(out)
    }
}

/// Drops the account's expired subscriptions and returns the rest.
fn purge_and_list(
    table: &mut redb::Table<&str, &[u8]>,
    account: &str,
    now: u64,
    expiry: u64,
) -> Result<Vec<PushSubscription>, StoreError> {
    let prefix = key(account, "");
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for item in table.range(prefix.as_str()..)? {
        let (k, v) = item?;
        if !k.value().starts_with(prefix.as_str()) {
            break;
        }
        let sub = decode(v.value())?;
        if sub.alive(now, expiry) { live.push(sub) } else { expired.push(k.value().to_string()) }
    }
    for k in expired {
        table.remove(k.as_str())?;
    }
    Ok(live)
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, created: u64) -> PushSubscription {
        PushSubscription { id: id.into(), json: "{}".into(), created, validated: false, token: format!("tok-{id}") }
    }

    #[test]
    fn vapid_key_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.vapid_key(|| vec![1; 32]).wait().unwrap();
        let second = store.vapid_key(|| panic!("must not generate again")).wait().unwrap();
        assert_eq!(first, second);
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().vapid_key(|| vec![2; 32]).wait().unwrap(), first);
    }

    #[test]
    fn subscribe_limit_validate_expire_unsubscribe() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (limit, expiry) = (2, 300);
        store.push_subscribe("alice@x", &sub("aaaaaaaaaa", 1000), limit, 1000, expiry).wait().unwrap().unwrap();
        store.push_subscribe("Alice@x", &sub("dddddddddd", 1000), limit, 1000, expiry).wait().unwrap().unwrap();
        store.push_subscribe("alice@x", &sub("bbbbbbbbbb", 1000), limit, 1000, expiry).wait().unwrap().unwrap();
        store.push_subscribe("bob@x", &sub("aaaaaaaaaa", 1000), limit, 1000, expiry).wait().unwrap().unwrap();
        assert_eq!(
            store.push_subscribe("alice@x", &sub("cccccccccc", 1000), limit, 1000, expiry).wait().unwrap(),
            Err(TooManySubscriptions)
        );
        // Replacing one is not an addition.
        store.push_subscribe("alice@x", &sub("bbbbbbbbbb", 1001), limit, 1001, expiry).wait().unwrap().unwrap();
        assert_eq!(
            store.push_validate("alice@x", "aaaaaaaaaa", b"wrong", 1010, expiry).wait().unwrap(),
            Validation::Refused
        );
        assert_eq!(
            store.push_validate("alice@x", "zzzzzzzzzz", b"tok-zzzzzzzzzz", 1010, expiry).wait().unwrap(),
            Validation::Refused
        );
        assert_eq!(
            store.push_validate("alice@x", "aaaaaaaaaa", b"tok-aaaaaaaaaa", 1010, expiry).wait().unwrap(),
            Validation::Validated
        );
        assert_eq!(store.push_accounts().unwrap(), vec!["alice@x".to_string()]);
        // b expires unvalidated; a stays; then a new one fits.
        assert_eq!(
            store.push_validate("alice@x", "bbbbbbbbbb", b"tok-bbbbbbbbbb", 1301, expiry).wait().unwrap(),
            Validation::Refused
        );
        let live: Vec<String> =
            store.push_subscriptions("alice@x", 1301, expiry).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(live, vec!["aaaaaaaaaa"]);
        store.push_subscribe("alice@x", &sub("cccccccccc", 1302), limit, 1302, expiry).wait().unwrap().unwrap();
        assert!(store.push_unsubscribe("alice@x", "aaaaaaaaaa").wait().unwrap());
        assert!(!store.push_unsubscribe("alice@x", "aaaaaaaaaa").wait().unwrap());
        assert!(store.push_accounts().unwrap().is_empty());
        assert_eq!(store.push_subscriptions("bob@x", 1302, expiry).unwrap().len(), 0, "bob's expired");
        assert!(!format!("{:?}", sub("x", 1)).contains("tok"), "Debug hides the token");
    }
}
