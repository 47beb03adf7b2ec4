//! Account keys: every per-account table is keyed by the account's key (`Config::account_key`,
//! the login exactly as the provider knows it), alone or followed by `\0` and more. Before
//! schema 3 the store lower-cased every key, so that `Bob@x` and `bob@x`, two users on a
//! case-sensitive provider, shared one state.
//!
//! Migrating a schema 2 file cannot tell whose a lower-cased key was: it records the account
//! names found (table `legacy_accounts`) and changes no key, so that every login typed in lower
//! case (nearly all) finds its state unchanged. The first login after the upgrade whose
//! lower-cased form is such a name claims it ([`Store::claim_legacy_state`]): a login typed
//! with capitals gets the state moved to its exact key; from then on the two are apart.

use std::collections::BTreeSet;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use tracing::{info, warn};

use super::{Store, StoreError};

/// Account names written by a schema 2 (or older) store, not claimed by a login yet.
const LEGACY: TableDefinition<&str, u8> = TableDefinition::new("legacy_accounts");

/// Calls `$do!(table)` for every table keyed by an account (the OpenPGP tables keep their own
/// lower-cased keys: a key pair is per mail address; the decrypted views are a cache).
macro_rules! account_tables {
    ($do:ident) => {
        $do!(super::coi::CHAT_IDS);
        $do!(super::coi::CHAT_ID_ORDER);
        $do!(super::coi::INBOX_POSITION);
        $do!(super::deltachat::DC_TOKENS);
        $do!(super::metadata::METADATA);
        $do!(super::metadata::METADATA_SIZES);
        $do!(super::push::PUSH_SUBSCRIPTIONS);
        $do!(super::receipts::SENT);
        $do!(super::receipts::MDN_DONE);
        $do!(super::receipts::MDN_BASELINE);
    };
}

/// The account a key belongs to: all of it, or what comes before the first `\0`.
fn account_of(key: &str) -> &str {
    key.split('\0').next().unwrap_or(key)
}

fn names_in<V: redb::Value + 'static>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, V>,
    out: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let table = txn.open_table(table)?;
    for entry in table.iter()? {
        out.insert(account_of(entry?.0.value()).to_string());
    }
    Ok(())
}

/// Moves every key of account `from` in `table` to account `to`; the count moved.
fn rename_in<V: redb::Value + 'static>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, V>,
    from: &str,
    to: &str,
) -> Result<usize, StoreError> {
    let mut table = txn.open_table(table)?;
    let (start, end) = (format!("{from}\0"), format!("{from}\u{1}"));
    let mut moved: Vec<(String, String, Vec<u8>)> = Vec::new();
    if let Some(value) = table.get(from)? {
        moved.push((from.to_string(), to.to_string(), V::as_bytes(&value.value()).as_ref().to_vec()));
    }
    for entry in table.range(start.as_str()..end.as_str())? {
        let (key, value) = entry?;
        let key = key.value();
        let new = format!("{to}{}", &key[from.len()..]);
        moved.push((key.to_string(), new, V::as_bytes(&value.value()).as_ref().to_vec()));
    }
    for (old, new, bytes) in &moved {
        table.remove(old.as_str())?;
        table.insert(new.as_str(), V::from_bytes(bytes))?;
    }
    Ok(moved.len())
}

/// Schema 2 → 3: records the account names of the lower-cased keys (see the module doc).
pub(super) fn migrate_to_exact_keys(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut names = BTreeSet::new();
    macro_rules! collect {
        ($table:expr) => {
            names_in(txn, $table, &mut names)?
        };
    }
    account_tables!(collect);
    let mut legacy = txn.open_table(LEGACY)?;
    for name in names.iter().filter(|n| !n.is_empty()) {
        legacy.insert(name.as_str(), 1)?;
    }
    Ok(())
}

impl Store {
    /// After a login of account `key` (as `Config::account_key` gives it): if a schema 2 store
    /// left state under its lower-cased form that no login has claimed, it is this account's
    /// now, moved to `key` if that differs. A read and nothing more when there is none; errors
    /// are logged (the login goes on, with the state it finds).
    pub async fn claim_legacy_state(&self, key: &str) {
        let lower = key.to_ascii_lowercase();
        match self.legacy_unclaimed(&lower) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => return warn!("cannot read the store's legacy account names: {e}"),
        }
        let (from, to) = (lower, key.to_string());
        let claimed = self
            .write(move |txn| {
                if txn.open_table(LEGACY)?.remove(from.as_str())?.is_none() {
                    return Ok(0);
                }
                let mut moved = 0;
                if from != to {
                    macro_rules! rename {
                        ($table:expr) => {
                            moved += rename_in(txn, $table, &from, &to)?
                        };
                    }
                    account_tables!(rename);
                }
                Ok(moved)
            })
            .await;
        match claimed {
            Ok(0) => {}
            Ok(moved) => {
                info!(login = %crate::logging::peer_text(key), moved, "state kept by an earlier release under the lower-cased login is this login's now")
            }
            Err(e) => warn!("cannot claim the state an earlier release kept for this login: {e}"),
        }
    }

    fn legacy_unclaimed(&self, lower: &str) -> Result<bool, StoreError> {
        let txn = self.begin_read()?;
        match txn.open_table(LEGACY) {
            Ok(table) => Ok(table.get(lower)?.is_some()),
            Err(e) if super::queue::missing(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
