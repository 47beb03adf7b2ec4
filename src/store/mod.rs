//! The local store: one redb file under `state_dir`, the only place the proxy keeps state on
//! disk. Each concern has its tables and typed accessors in a submodule (`queue`, `coi`, …);
//! nothing outside `store` opens the file.
//!
//! redb commits are durable (fsync) when `commit` returns, which is what lets the SMTP side
//! answer `250` only after a message is safe. The file carries a schema version so that an
//! upgrade never silently misreads old data and a downgrade refuses to start.
//!
//! All calls block: async code calls them through `tokio::task::spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

mod queue;
pub use queue::{Attempt, MailParams, QueueCap, QueueUsage, QueuedMessage, Recipient, RecipientState};

mod coi;
mod receipts;
pub use receipts::{SentChat, Tick};
mod metadata;
pub use metadata::TooManyEntries;

mod push;
pub use push::{PushSubscription, TooManySubscriptions, Validation};

/// Bumped whenever a table's meaning or encoding changes; `open` migrates older files.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the store {path} was written by a newer coi-proxy (schema {found}, this version knows {known}); refusing to misread it"
    )]
    TooNew { path: PathBuf, found: u32, known: u32 },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store: {0}")]
    Corrupt(String),
    /// The account's share of the queue is used up (`[queue]` limits); nothing was stored.
    #[error("the queue is full for this account: {0}")]
    QueueFull(String),
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_error_from!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `state_dir/coi-proxy.redb` and checks its schema version.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("coi-proxy.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Open { path: path.clone(), reason: e.to_string() })?;
        let store = Store { db: Arc::new(db), path };
        store.check_schema()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::TooNew { path: self.path.clone(), found: v, known: SCHEMA_VERSION });
                }
                Some(v) if v == SCHEMA_VERSION => {}
                // New file, or an older schema: nothing to migrate yet.
                _ => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Test and migration aid: records another schema version.
    pub fn set_schema_version(&self, version: u32) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("schema_version", version)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_recorded_and_a_newer_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store.set_schema_version(SCHEMA_VERSION + 1).unwrap();
        drop(store);
        let err = Store::open(dir.path()).err().expect("newer schema must be refused").to_string();
        assert!(err.contains("newer coi-proxy"), "{err}");
    }
}
