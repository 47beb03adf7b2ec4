//! Delta Chat push state: each account's device tokens (one per device, with when it was last
//! set) and the notifications waiting for a retry, which must survive a restart.
//!
//! Tokens are secrets (whoever has one can wake the phone): they are keys here, and they leave
//! this module only as [`Secret`]s, whose `Debug` prints nothing. Every value starts with a
//! format version byte, so a later release can change the encoding and still read these.

use redb::{ReadableTable, TableDefinition};

use super::read_table;
use super::{Pending, Store, StoreError};
use crate::secret::Secret;

/// `account NUL token` → version 1: last set, Unix seconds (u64 LE).
pub(super) const DC_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("deltachat_tokens");
/// `token` → version 1: [`RetryEntry`] without the token, as JSON.
const DC_RETRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deltachat_retries");

/// The format of the values written by this version.
const VERSION: u8 = 1;

/// A notification that failed and waits for its next attempt.
#[derive(Clone, PartialEq, Eq)]
pub struct RetryEntry {
    pub token: Secret,
    /// When the first attempt was made (Unix seconds); the schedule ends 5 h after it.
    pub first: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix seconds).
    pub due: u64,
}

impl std::fmt::Debug for RetryEntry {
    /// Without the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryEntry").field("first", &self.first).field("attempts", &self.attempts).finish()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RetryRecord {
    first: u64,
    attempts: u32,
    due: u64,
}

fn token_key(account: &str, token: &str) -> String {
    format!("{account}\0{token}")
}

/// The value after the version byte; a value of a later format is an error (never misread).
fn versioned<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], StoreError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        Some((v, _)) => Err(StoreError::Corrupt(format!("{what}: format {v} is newer than this coi-proxy knows"))),
        None => Err(StoreError::Corrupt(format!("{what}: empty value"))),
    }
}

fn decode_set(bytes: &[u8]) -> Result<u64, StoreError> {
    let rest = versioned(bytes, "device token")?;
    Ok(u64::from_le_bytes(rest.try_into().map_err(|_| StoreError::Corrupt("device token: bad value".into()))?))
}

fn encode_set(at: u64) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(&at.to_le_bytes());
    v
}

/// Whether a token set at `set` is still current at `now`: at most `max_age` seconds old and not
/// from the future (a clock that jumped back counts as new, as chatmail's relay does).
fn current(set: u64, now: u64, max_age: u64) -> bool {
    set <= now.saturating_add(max_age) && now <= set.saturating_add(max_age)
}

impl Store {
    /// Adds `token` for `account`, or renews its time; drops the account's tokens older than
    /// `max_age`, and the least recently set ones beyond `limit`.
    pub fn dc_token_set(&self, account: &str, token: &Secret, now: u64, limit: usize, max_age: u64) -> Pending<()> {
        let Ok(token) = std::str::from_utf8(token.expose()) else {
            return Pending::ready(Err(StoreError::Corrupt("device token: not UTF-8".into())));
        };
        let (prefix, key) = (token_key(account, ""), Secret::new(token_key(account, token).into_bytes()));
        self.write(move |txn| {
            let key = std::str::from_utf8(key.expose()).expect("made from a str");
            let mut table = txn.open_table(DC_TOKENS)?;
            table.insert(key, encode_set(now).as_slice())?;
            let mut kept: Vec<(u64, String)> = Vec::new();
            let mut dropped = Vec::new();
            for item in table.range(prefix.as_str()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                let set = decode_set(v.value())?;
                if current(set, now, max_age) {
                    kept.push((set, k.value().to_string()));
                } else {
                    dropped.push(k.value().to_string());
                }
            }
            kept.sort();
            let over = kept.len().saturating_sub(limit);
            dropped.extend(kept.into_iter().take(over).map(|(_, k)| k));
            for k in dropped {
                table.remove(k.as_str())?;
            }
            Ok(())
        })
    }

    /// The account's current device tokens.
    pub fn dc_tokens(&self, account: &str, now: u64, max_age: u64) -> Result<Vec<Secret>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, DC_TOKENS)? else { return Ok(Vec::new()) };
        let prefix = token_key(account, "");
        let mut out = Vec::new();
        for item in table.range(prefix.as_str()..)? {
            let (k, v) = item?;
            let Some(token) = k.value().strip_prefix(prefix.as_str()) else { break };
            if current(decode_set(v.value())?, now, max_age) {
                out.push(Secret::new(token.as_bytes().to_vec()));
            }
        }
        Ok(out)
    }

    /// When the account's `token` was last set, if it has it.
    pub fn dc_token_set_at(&self, account: &str, token: &Secret) -> Result<Option<u64>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, DC_TOKENS)? else { return Ok(None) };
        let Ok(token) = std::str::from_utf8(token.expose()) else { return Ok(None) };
        let key = Secret::new(token_key(account, token).into_bytes());
        let key = std::str::from_utf8(key.expose()).expect("made from a str");
        table.get(key)?.map(|v| decode_set(v.value())).transpose()
    }

    /// Removes `token` from every account that has it (the notifier said it is gone, 410);
    /// the accounts it was removed from.
    pub fn dc_token_remove(&self, token: &Secret) -> Pending<Vec<String>> {
        let token = token.clone();
        self.write(move |txn| {
            let mut table = txn.open_table(DC_TOKENS)?;
            let mut gone = Vec::new();
            for item in table.iter()? {
                let (k, _) = item?;
                if k.value().split_once('\0').is_some_and(|(_, t)| t.as_bytes() == token.expose()) {
                    gone.push(k.value().to_string());
                }
            }
            let mut accounts = Vec::new();
            for k in &gone {
                table.remove(k.as_str())?;
                accounts.push(k.split('\0').next().unwrap_or_default().to_string());
            }
            Ok(accounts)
        })
    }

    /// The accounts that have a current device token (their workers start with the daemon).
    pub fn dc_token_accounts(&self, now: u64, max_age: u64) -> Result<Vec<String>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, DC_TOKENS)? else { return Ok(Vec::new()) };
        let mut out: Vec<String> = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let account = k.value().split('\0').next().unwrap_or_default();
            if out.last().map(String::as_str) != Some(account) && current(decode_set(v.value())?, now, max_age) {
                out.push(account.to_string());
            }
        }
        Ok(out)
    }

    /// Records (or replaces) a notification waiting for a retry.
    pub fn dc_retry_put(&self, entry: &RetryEntry) -> Pending<()> {
        let Ok(token) = String::from_utf8(entry.token.expose().to_vec()) else {
            return Pending::ready(Err(StoreError::Corrupt("device token: not UTF-8".into())));
        };
        let token = Secret::new(token.into_bytes());
        let record = RetryRecord { first: entry.first, attempts: entry.attempts, due: entry.due };
        let mut value = vec![VERSION];
        value.extend(serde_json::to_vec(&record).expect("plain struct"));
        self.write(move |txn| {
            let key = std::str::from_utf8(token.expose()).expect("checked");
            txn.open_table(DC_RETRIES)?.insert(key, value.as_slice())?;
            Ok(())
        })
    }

    /// Forgets a notification's retry (delivered, gone, or given up).
    pub fn dc_retry_remove(&self, token: &Secret) -> Pending<()> {
        let token = token.clone();
        self.write(move |txn| {
            let key = String::from_utf8_lossy(token.expose()).into_owned();
            txn.open_table(DC_RETRIES)?.remove(key.as_str())?;
            Ok(())
        })
    }

    /// Every notification waiting for a retry (read at start).
    pub fn dc_retries(&self) -> Result<Vec<RetryEntry>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, DC_RETRIES)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let record: RetryRecord = serde_json::from_slice(versioned(v.value(), "retry")?)
                .map_err(|e| StoreError::Corrupt(format!("retry: {e}")))?;
            out.push(RetryEntry {
                token: Secret::new(k.value().as_bytes().to_vec()),
                first: record.first,
                attempts: record.attempts,
                due: record.due,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;
    const AGE: u64 = 90 * DAY;

    fn t(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }
    fn names(v: Vec<Secret>) -> Vec<String> {
        v.into_iter().map(|s| String::from_utf8(s.expose().to_vec()).unwrap()).collect()
    }

    #[test]
    fn tokens_per_account_expire_after_90_days_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = 1_000 * DAY;
        store.dc_token_set("alice@x", &t("openpgp:one"), now, 3, AGE).wait().unwrap();
        store.dc_token_set("Alice@x", &t("openpgp:three"), now, 3, AGE).wait().unwrap();
        store.dc_token_set("alice@x", &t("openpgp:two"), now + 1, 3, AGE).wait().unwrap();
        store.dc_token_set("bob@x", &t("openpgp:one"), now, 3, AGE).wait().unwrap();
        assert_eq!(names(store.dc_tokens("alice@x", now + 2, AGE).unwrap()), ["openpgp:one", "openpgp:two"]);
        assert_eq!(store.dc_token_accounts(now, AGE).unwrap(), ["Alice@x", "alice@x", "bob@x"]);
        assert_eq!(names(store.dc_tokens("Alice@x", now + 2, AGE).unwrap()), ["openpgp:three"], "keys are exact");
        assert_eq!(store.dc_token_remove(&t("openpgp:three")).wait().unwrap(), ["Alice@x"]);
        assert_eq!(store.dc_token_set_at("alice@x", &t("openpgp:two")).unwrap(), Some(now + 1));
        assert_eq!(store.dc_token_set_at("Alice@x", &t("openpgp:two")).unwrap(), None);
        // Set again: renewed. The other one expires 90 days after it was set.
        store.dc_token_set("alice@x", &t("openpgp:two"), now + 80 * DAY, 3, AGE).wait().unwrap();
        assert_eq!(names(store.dc_tokens("alice@x", now + 91 * DAY, AGE).unwrap()), ["openpgp:two"]);
        // Over the limit: the least recently set go.
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            store.dc_token_set("carol@x", &t(name), now + i as u64, 2, AGE).wait().unwrap();
        }
        assert_eq!(names(store.dc_tokens("carol@x", now + 5, AGE).unwrap()), ["b", "c"]);
        // 410: gone from every account.
        assert_eq!(store.dc_token_remove(&t("openpgp:one")).wait().unwrap(), ["alice@x", "bob@x"]);
        assert!(store.dc_tokens("bob@x", now, AGE).unwrap().is_empty());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(names(store.dc_tokens("alice@x", now + 81 * DAY, AGE).unwrap()), ["openpgp:two"], "kept");
    }

    #[test]
    fn retries_survive_a_restart_and_hide_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entry = RetryEntry { token: t("openpgp:secret"), first: 100, attempts: 2, due: 172 };
        store.dc_retry_put(&entry).wait().unwrap();
        store.dc_retry_put(&RetryEntry { token: t("other"), first: 1, attempts: 1, due: 9 }).wait().unwrap();
        store.dc_retry_remove(&t("other")).wait().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.dc_retries().unwrap(), vec![entry.clone()]);
        assert!(!format!("{entry:?}").contains("secret"));
    }

    #[test]
    fn a_newer_format_is_refused_not_misread() {
        assert!(decode_set(&encode_set(5)).is_ok_and(|v| v == 5));
        let err = decode_set(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
        assert!(decode_set(&[]).is_err() && decode_set(&[1, 2]).is_err());
    }
}
