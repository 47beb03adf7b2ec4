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
//!
//! Schema 4 did the same for the OpenPGP identity and the OAuth2 grants, which schema 3 still
//! kept lower-cased (table `legacy_identity_accounts`, the same claim). Until claimed, a login
//! with capitals reads such a grant (`oauth_grant`); the OpenPGP wing claims before it reads.
//! A claim never overwrites what the exact key already holds (newer state wins).

use std::collections::BTreeSet;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use tracing::{info, warn};

use super::{Store, StoreError};

/// Account names written by a schema 2 (or older) store, not claimed by a login yet.
const LEGACY: TableDefinition<&str, u8> = TableDefinition::new("legacy_accounts");
/// Account names of the OpenPGP and OAuth2 tables written by a schema 3 (or older) store.
const LEGACY_IDENTITY: TableDefinition<&str, u8> = TableDefinition::new("legacy_identity_accounts");

/// Calls `$do!(table)` for every table keyed by an account since schema 3 (the decrypted views
/// are a cache; the identity tables are [`identity_tables`]).
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

/// Calls `$do!(table)` for every table keyed by an account since schema 4.
macro_rules! identity_tables {
    ($do:ident) => {
        $do!(super::openpgp::ACCOUNT_KEYS);
        $do!(super::openpgp::PEERS);
        $do!(super::openpgp::INVITES);
        $do!(super::openpgp::JOINS);
        $do!(super::openpgp::GROUPS);
        $do!(super::oauth::OAUTH_GRANTS);
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

/// Moves every key of account `from` in `table` to account `to`; the count moved. With
/// `overwrite` false a key `to` already holds keeps its value (the old one is dropped).
fn rename_in<V: redb::Value + 'static>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, V>,
    from: &str,
    to: &str,
    overwrite: bool,
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
        if overwrite || table.get(new.as_str())?.is_none() {
            table.insert(new.as_str(), V::from_bytes(bytes))?;
        }
    }
    Ok(moved.len())
}

/// Schema 3 → 4: records the account names of the identity tables' lower-cased keys.
pub(super) fn migrate_identity_to_exact_keys(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut names = BTreeSet::new();
    macro_rules! collect {
        ($table:expr) => {
            names_in(txn, $table, &mut names)?
        };
    }
    identity_tables!(collect);
    record(txn, LEGACY_IDENTITY, &names)
}

/// Records `names` as unclaimed in `legacy`.
fn record(
    txn: &WriteTransaction,
    legacy: TableDefinition<&str, u8>,
    names: &BTreeSet<String>,
) -> Result<(), StoreError> {
    let mut legacy = txn.open_table(legacy)?;
    for name in names.iter().filter(|n| !n.is_empty()) {
        legacy.insert(name.as_str(), 1)?;
    }
    Ok(())
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
    record(txn, LEGACY, &names)
}

impl Store {
    /// After a login of account `key` (as `Config::account_key` gives it): if a schema 2 store
    /// left state under its lower-cased form that no login has claimed, it is this account's
    /// now, moved to `key` if that differs. A read and nothing more when there is none; errors
    /// are logged (the login goes on, with the state it finds).
    pub async fn claim_legacy_state(&self, key: &str) {
        if let Some(claim) = self.claim(key) {
            log_claim(key, claim.await);
        }
    }

    /// [`Store::claim_legacy_state`] for blocking callers (the OpenPGP wing).
    pub fn claim_legacy_state_blocking(&self, key: &str) {
        if let Some(claim) = self.claim(key) {
            log_claim(key, claim.wait());
        }
    }

    /// The claim's write, if there is anything to claim.
    fn claim(&self, key: &str) -> Option<super::Pending<usize>> {
        let lower = key.to_ascii_lowercase();
        let (main, identity) = match (self.legacy_unclaimed(&lower), self.legacy_identity_unclaimed(&lower)) {
            (Ok(main), Ok(identity)) => (main, identity),
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot read the store's legacy account names: {e}");
                return None;
            }
        };
        if !main && !identity {
            return None;
        }
        let (from, to) = (lower, key.to_string());
        Some(self.write(move |txn| {
            let mut moved = 0;
            macro_rules! rename {
                ($table:expr) => {
                    moved += rename_in(txn, $table, &from, &to, true)?
                };
            }
            macro_rules! rename_identity {
                ($table:expr) => {
                    moved += rename_in(txn, $table, &from, &to, false)?
                };
            }
            if txn.open_table(LEGACY)?.remove(from.as_str())?.is_some() && from != to {
                account_tables!(rename);
            }
            if txn.open_table(LEGACY_IDENTITY)?.remove(from.as_str())?.is_some() && from != to {
                identity_tables!(rename_identity);
            }
            Ok(moved)
        }))
    }

    /// Whether an earlier release left identity state (OpenPGP, OAuth2) under `lower` that no
    /// login has claimed.
    pub(super) fn legacy_identity_unclaimed(&self, lower: &str) -> Result<bool, StoreError> {
        let txn = self.begin_read()?;
        match txn.open_table(LEGACY_IDENTITY) {
            Ok(table) => Ok(table.get(lower)?.is_some()),
            Err(e) if super::queue::missing(&e) => Ok(false),
            Err(e) => Err(e.into()),
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

fn log_claim(key: &str, claimed: Result<usize, StoreError>) {
    match claimed {
        Ok(0) => {}
        Ok(moved) => {
            info!(login = %crate::logging::peer_text(key), moved, "state kept by an earlier release under the lower-cased login is this login's now")
        }
        Err(e) => warn!("cannot claim the state an earlier release kept for this login: {e}"),
    }
}
