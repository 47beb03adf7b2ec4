//! METADATA entries the proxy keeps itself: all entries of an account whose provider lacks
//! METADATA. Keyed by account, mailbox and entry; the values are opaque bytes.
//!
//! Each value's size is kept beside it (`metadata_sizes`, since schema 2): counting an
//! account's entries and selecting what a GETMETADATA returns read the small sizes table, never
//! the values (up to 64 MiB per account), which are read one by one as a response is written.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `account NUL mailbox NUL entry` → value.
pub(super) const METADATA: TableDefinition<&str, &[u8]> = TableDefinition::new("metadata");
/// The same keys → the value's size in bytes.
pub(super) const METADATA_SIZES: TableDefinition<&str, u64> = TableDefinition::new("metadata_sizes");

/// Schema 1 → 2: the sizes table, from the values.
pub(super) fn migrate_sizes(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let values = txn.open_table(METADATA)?;
    let mut sizes = txn.open_table(METADATA_SIZES)?;
    for item in values.iter()? {
        let (key, value) = item?;
        sizes.insert(key.value(), value.value().len() as u64)?;
    }
    Ok(())
}

fn prefix(account: &str, mailbox: &[u8]) -> String {
    format!("{account}\0{}\0", String::from_utf8_lossy(mailbox))
}

/// A SETMETADATA that would pass a per-account limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyEntries;

impl Store {
    /// All entries of `mailbox` (`""` for server entries) of `account`.
    pub fn metadata_entries(&self, account: &str, mailbox: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, METADATA)? else { return Ok(BTreeMap::new()) };
        let prefix = prefix(account, mailbox);
        let mut out = BTreeMap::new();
        for item in table.range(prefix.as_str()..)? {
            let (key, value) = item?;
            let Some(entry) = key.value().strip_prefix(prefix.as_str()) else { break };
            out.insert(entry.to_string(), value.value().to_vec());
        }
        Ok(out)
    }

    /// The names of the entries of `mailbox` (`""` for server entries) of `account`, with the
    /// size of each value: what a GETMETADATA selects from, without reading the values.
    pub fn metadata_sizes(&self, account: &str, mailbox: &[u8]) -> Result<BTreeMap<String, u64>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, METADATA_SIZES)? else { return Ok(BTreeMap::new()) };
        let prefix = prefix(account, mailbox);
        let mut out = BTreeMap::new();
        for item in table.range(prefix.as_str()..)? {
            let (key, value) = item?;
            let Some(entry) = key.value().strip_prefix(prefix.as_str()) else { break };
            out.insert(entry.to_string(), value.value());
        }
        Ok(out)
    }

    /// The accounts that hold `entry` on `mailbox` (`""` for server entries), in key order.
    pub fn metadata_accounts_with(&self, mailbox: &[u8], entry: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, METADATA)? else { return Ok(Vec::new()) };
        let suffix = format!("\0{}\0{entry}", String::from_utf8_lossy(mailbox));
        let mut out = Vec::new();
        for item in table.iter()? {
            let (key, _) = item?;
            if let Some(account) = key.value().strip_suffix(suffix.as_str()) {
                out.push(account.to_string());
            }
        }
        Ok(out)
    }

    /// Every entry the store keeps, as (account, mailbox, entry): what a cluster's first sync
    /// compares with etcd.
    pub fn metadata_keys(&self) -> Result<Vec<(String, Vec<u8>, String)>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, METADATA_SIZES)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (key, _) = item?;
            let mut parts = key.value().splitn(3, '\0');
            if let (Some(account), Some(mailbox), Some(entry)) = (parts.next(), parts.next(), parts.next()) {
                out.push((account.to_string(), mailbox.as_bytes().to_vec(), entry.to_string()));
            }
        }
        Ok(out)
    }

    /// One entry's value, as a GETMETADATA response writes it out.
    pub fn metadata_value(&self, account: &str, mailbox: &[u8], entry: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, METADATA)? else { return Ok(None) };
        let key = format!("{}{entry}", prefix(account, mailbox));
        Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
    }

    /// Sets (`Some`) or deletes (`None`) entries in one transaction; refused whole when the
    /// account would then hold more than `max_entries` entries.
    pub fn metadata_apply(
        &self,
        account: &str,
        mailbox: &[u8],
        changes: &[(String, Option<Vec<u8>>)],
        max_entries: usize,
    ) -> Pending<Result<(), TooManyEntries>> {
        let (key_prefix, account_prefix) = (prefix(account, mailbox), format!("{account}\0"));
        let changes = changes.to_vec();
        self.write(move |txn| {
            let too_many = {
                let mut table = txn.open_table(METADATA)?;
                let mut sizes = txn.open_table(METADATA_SIZES)?;
                for (entry, value) in &changes {
                    let key = format!("{key_prefix}{entry}");
                    match value {
                        Some(v) => {
                            table.insert(key.as_str(), v.as_slice())?;
                            sizes.insert(key.as_str(), v.len() as u64)?;
                        }
                        None => {
                            table.remove(key.as_str())?;
                            sizes.remove(key.as_str())?;
                        }
                    };
                }
                let mut count = 0;
                for item in sizes.range(account_prefix.as_str()..)? {
                    if !item?.0.value().starts_with(account_prefix.as_str()) {
                        break;
                    }
                    count += 1;
                }
                count > max_entries
            };
            if too_many {
                txn.discard();
                return Ok(Err(TooManyEntries));
            }
            Ok(Ok(()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_per_account_and_mailbox_with_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let set = |e: &str, v: Option<&str>| (e.to_string(), v.map(|v| v.as_bytes().to_vec()));
        store
            .metadata_apply("alice@x", b"", &[set("/private/a", Some("1")), set("/private/b", Some("2"))], 10)
            .wait()
            .unwrap()
            .unwrap();
        store.metadata_apply("alice@x", b"INBOX", &[set("/private/a", Some("3"))], 10).wait().unwrap().unwrap();
        store.metadata_apply("bob@x", b"", &[set("/private/a", Some("4"))], 10).wait().unwrap().unwrap();
        store.metadata_apply("Alice@x", b"", &[set("/private/z", Some("5"))], 10).wait().unwrap().unwrap();
        assert_eq!(store.metadata_entries("Alice@x", b"").unwrap().len(), 1, "keys are exact");
        let server = store.metadata_entries("alice@x", b"").unwrap();
        assert_eq!(server.len(), 2);
        assert_eq!(server["/private/b"], b"2");
        let sizes = store.metadata_sizes("alice@x", b"").unwrap();
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [("/private/a".to_string(), 1), ("/private/b".to_string(), 1)]
        );
        assert_eq!(store.metadata_value("alice@x", b"", "/private/b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(store.metadata_value("alice@x", b"INBOX", "/private/b").unwrap(), None);
        assert_eq!(store.metadata_entries("alice@x", b"INBOX").unwrap()["/private/a"], b"3");
        store.metadata_apply("alice@x", b"", &[set("/private/a", None)], 10).wait().unwrap().unwrap();
        assert_eq!(store.metadata_entries("alice@x", b"").unwrap().len(), 1);
        // alice has 2 entries; 2 more would make 4 > 3: refused, nothing written.
        let result = store
            .metadata_apply("alice@x", b"", &[set("/private/c", Some("x")), set("/private/d", Some("y"))], 3)
            .wait()
            .unwrap();
        assert_eq!(result, Err(TooManyEntries));
        assert_eq!(store.metadata_entries("alice@x", b"").unwrap().len(), 1);
        assert_eq!(store.metadata_accounts_with(b"", "/private/b").unwrap(), ["alice@x"]);
        assert!(store.metadata_accounts_with(b"INBOX", "/private/b").unwrap().is_empty());
        store.metadata_apply("bob@x", b"", &[set("/private/b", Some("5"))], 10).wait().unwrap().unwrap();
        assert_eq!(store.metadata_accounts_with(b"", "/private/b").unwrap(), ["alice@x", "bob@x"]);
    }
}
