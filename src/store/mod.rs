//! The local store: one redb file under `state_dir`, the only place the proxy keeps state on
//! disk. Each concern has its tables and typed accessors in a submodule (`queue`, `coi`, …);
//! nothing outside `store` opens the file.
//!
//! redb commits are durable (fsync) when `commit` returns, which is what lets the SMTP side
//! answer `250` only after a message is safe. The file carries a schema version so that an
//! upgrade never silently misreads old data and a downgrade refuses to start.
//!
//! All calls block: async code calls them through `tokio::task::spawn_blocking`.
//!
//! A full disk fails the commit at hand (nothing is acknowledged) and, as for any I/O error,
//! leaves redb refusing every later transaction until the file is opened again; the store does
//! that by itself at the next transaction, so the daemon recovers once there is room again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    TransactionError, WriteTransaction,
};
use tracing::warn;

mod queue;
pub use queue::{Attempt, MailParams, QueueCap, QueueUsage, QueuedMessage, Recipient, RecipientState};

mod coi;
mod receipts;
pub use receipts::{SentChat, Tick};
mod metadata;
pub use metadata::TooManyEntries;

mod push;
pub use push::{PushSubscription, TooManySubscriptions, Validation};

mod oauth;
pub use oauth::OAuthGrant;

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
    /// No room left on the disk under `state_dir` (or the user's quota is used up).
    #[error("store: the disk is full")]
    DiskFull,
    /// The account's share of the queue is used up (`[queue]` limits); nothing was stored.
    #[error("the queue is full for this account: {0}")]
    QueueFull(String),
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from_redb(e.into())
            }
        }
    )*};
}

impl StoreError {
    fn from_redb(e: redb::Error) -> StoreError {
        match e {
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull,
            e => StoreError::Db(e),
        }
    }
}

/// ENOSPC or EDQUOT.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}
db_error_from!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// `None` after an I/O error until the file is opened again.
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: PathBuf,
}

fn open_file(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| match e {
        DatabaseError::Storage(StorageError::Io(io)) if is_disk_full(&io) => StoreError::DiskFull,
        e => StoreError::Open { path: path.to_path_buf(), reason: e.to_string() },
    })
}

impl Store {
    /// Opens (or creates) `state_dir/coi-proxy.redb` and checks its schema version.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("coi-proxy.redb");
        let db = open_file(&path)?;
        let store = Store { db: Arc::new(RwLock::new(Some(Arc::new(db)))), path };
        store.check_schema()?;
        Ok(store)
    }

    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.begin(Database::begin_write)
    }

    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.begin(|db| db.begin_read())
    }

    /// Starts a transaction, opening the file again first if an earlier I/O error left redb
    /// refusing them (`PreviousIo`).
    fn begin<T>(&self, start: impl Fn(&Database) -> Result<T, TransactionError>) -> Result<T, StoreError> {
        let db = self.database()?;
        match start(&db) {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                warn!(path = %self.path.display(), "the store had an I/O error (a full disk?); opening it again");
                {
                    let mut slot = self.db.write().expect("store handle");
                    if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, &db)) {
                        *slot = None;
                    }
                }
                // The old handle must be gone before the file can be locked again.
                drop(db);
                Ok(start(&*self.database()?)?)
            }
            result => Ok(result?),
        }
    }

    fn database(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().expect("store handle").as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().expect("store handle");
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_file(&self.path)?);
        *slot = Some(db.clone());
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
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
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Test and migration aid: records another schema version.
    pub fn set_schema_version(&self, version: u32) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
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
