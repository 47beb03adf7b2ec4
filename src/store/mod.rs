//! The local store: one redb file under `state_dir`, the only place the proxy keeps state on
//! disk. Each concern has its tables and typed accessors in a submodule (`queue`, `coi`, …);
//! nothing outside `store` opens the file.
//!
//! Writes go through one writer thread (`writer`): every write accessor returns a
//! [`Pending`], which async code awaits and which resolves once the write is durable (fsync),
//! what lets the SMTP side answer `250` only after a message is safe. Concurrent writes share
//! one commit, so one fsync. Sync code off the runtime (the command line, tests) blocks on it
//! with [`Pending::wait`].
//!
//! Reads are redb MVCC read transactions, which never wait for the writer. Point lookups and
//! small per-account reads (an INBOX position, a Message-ID, an account's METADATA entries or
//! push subscriptions) are called directly, also on the runtime: they read a few pages that are
//! normally cached. Reads that grow with the queue or with the number of accounts (the queue's
//! list, usage and bodies, all sent chat messages) are run off the runtime with
//! [`Store::read`].
//!
//! The file carries a schema version so that an upgrade never silently misreads old data and a
//! downgrade refuses to start.
//!
//! A full disk fails the commit at hand (nothing is acknowledged) and, as for any I/O error,
//! leaves redb refusing every later transaction until the file is opened again; the store does
//! that by itself at the next transaction, so the daemon recovers once there is room again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    TransactionError, WriteTransaction,
};
use tracing::warn;

mod deliveries;
pub use deliveries::{DELIVERIES_KEPT_SECS, Delivery};
mod keys;
mod queue;
mod spool;
pub use queue::{Attempt, MailParams, QueueCap, QueueUsage, QueuedBody, QueuedMessage, Recipient, RecipientState};
pub use spool::SpoolFile;

mod coi;
mod receipts;
pub use receipts::{SentChat, Tick};
mod metadata;
pub use metadata::TooManyEntries;
mod openpgp;
pub use openpgp::{MAX_GROUPS, MAX_PEERS, TooManyPeers};

mod deltachat;
pub use deltachat::RetryEntry;

mod push;
pub use push::{PushSubscription, TooManySubscriptions, Validation};

mod oauth;
pub use oauth::OAuthGrant;
mod views;
pub use views::ViewId;

mod writer;
pub use writer::Pending;
use writer::{Txn, Writer};

/// Bumped whenever a table's meaning or encoding changes; `open` migrates older files.
///
/// - 1: the first release with a store.
/// - 2: `metadata_sizes` beside `metadata` (filled from it when a schema 1 file is opened).
/// - 3: account keys exactly as `Config::account_key` gives them, no longer lower-cased
///   (`keys`: a schema 2 file's names are recorded for the first login to claim them); bodies of
///   spooled messages as files named in `queue_body_file`.
/// - 4: the OpenPGP tables and the OAuth2 grants keyed by the account key too (`keys`: a schema
///   3 file's names are recorded for the first login to claim them).
pub const SCHEMA_VERSION: u32 = 4;

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// redb's lock on the file: one process at a time.
    #[error(
        "another coi-proxy uses this state directory ({}): its store {} is locked. Stop that one first, or give this \
         one a state directory of its own (state_dir or --state-dir)",
        path.parent().unwrap_or(path).display(), path.display()
    )]
    InUse { path: PathBuf },
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
    /// The commit this write shared with others failed (the reason, as the writer saw it);
    /// nothing of the write is stored.
    #[error("store: the commit failed: {0}")]
    CommitFailed(String),
    /// The writer thread is gone (the store is being closed); nothing was stored.
    #[error("store: the writer has stopped")]
    WriterGone,
    /// A message file (spool or queue) could not be read or written.
    #[error("store: {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    /// A read run off the runtime did not finish (its task panicked or was cancelled).
    #[error("store: a read did not finish: {0}")]
    ReadFailed(String),
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
    /// An error on the message file `path`: a full disk stays [`StoreError::DiskFull`] (SMTP
    /// says `452` then).
    pub fn from_io(path: &Path, e: std::io::Error) -> StoreError {
        if is_disk_full(&e) { StoreError::DiskFull } else { StoreError::File { path: path.to_path_buf(), source: e } }
    }

    fn from_redb(e: redb::Error) -> StoreError {
        match e {
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull,
            e => StoreError::Db(e),
        }
    }

    /// Refusals that a write returns before it has written anything, so that the transaction
    /// it shares with other writes can go on without rolling back.
    fn wrote_nothing(&self) -> bool {
        matches!(self, StoreError::QueueFull(_))
    }

    /// The error for each write of a group whose commit failed with `self` (redb errors are
    /// not `Clone`); a full disk stays [`StoreError::DiskFull`], so that SMTP can say `452`.
    fn for_group(&self) -> StoreError {
        match self {
            StoreError::DiskFull => StoreError::DiskFull,
            StoreError::WriterGone => StoreError::WriterGone,
            e => StoreError::CommitFailed(e.to_string()),
        }
    }
}

/// ENOSPC or EDQUOT.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}
db_error_from!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A handle to the store; cheap to clone. The file is closed when the last handle is dropped
/// (after the writes sent so far are done).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first: dropped (the writer thread stopped) before the file handle goes.
    writer: Writer,
    file: Arc<File>,
}

/// The redb file, opened again after an I/O error; shared by readers and the writer thread.
struct File {
    /// `None` after an I/O error until the file is opened again.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// Times the file was opened again after an I/O error.
    reopened: AtomicU64,
}

/// Memory redb may use to cache the file's pages (its default is 1 GiB): part of the daemon's
/// memory bound (SECURITY.md). Reads beyond it come from the OS page cache.
const CACHE_SIZE: usize = 8 * 1024 * 1024;

/// `definition`'s table in a read transaction, `None` when it was never created (nothing
/// written to it yet, or a state directory from before it existed): readers take that as empty.
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    definition: TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(definition) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_file(path: &Path) -> Result<Database, StoreError> {
    redb::Builder::new().set_cache_size(CACHE_SIZE).create(path).map_err(|e| match e {
        DatabaseError::Storage(StorageError::Io(io)) if is_disk_full(&io) => StoreError::DiskFull,
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_path_buf() },
        e => StoreError::Open { path: path.to_path_buf(), reason: e.to_string() },
    })
}

impl File {
    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.begin(Database::begin_write)
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
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
                self.reopened.fetch_add(1, Ordering::Relaxed);
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

    /// Records this version's schema in a new file; refuses a file of a newer version.
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
                // A new file: nothing to migrate.
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                // An older schema: migrated in this same transaction, so all or nothing.
                Some(v) => {
                    if v < 2 {
                        metadata::migrate_sizes(&txn)?;
                    }
                    if v < 3 {
                        keys::migrate_to_exact_keys(&txn)?;
                    }
                    if v < 4 {
                        keys::migrate_identity_to_exact_keys(&txn)?;
                    }
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) `state_dir/coi-proxy.redb`, checks its schema version and starts the
    /// writer thread. Blocks (it may commit): call it before the runtime serves anything, or
    /// off it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("coi-proxy.redb");
        // Queued mail is in it: 0600 whoever creates it (redb would leave it to the umask).
        crate::state::private_file(&path)
            .map_err(|e| StoreError::Open { path: path.clone(), reason: e.to_string() })?;
        let db = open_file(&path)?;
        let file = Arc::new(File { db: RwLock::new(Some(Arc::new(db))), path, reopened: AtomicU64::new(0) });
        file.check_schema()?;
        let writer = Writer::start(file.clone())?;
        Ok(Store { inner: Arc::new(Inner { writer, file }) })
    }

    /// [`Store::open`] on tokio's blocking threads, for async code.
    pub async fn open_async(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .unwrap_or_else(|e| Err(StoreError::Open { path: state_dir.join("coi-proxy.redb"), reason: e.to_string() }))
    }

    /// Sends a write to the writer thread: `work` runs in a transaction shared with the other
    /// writes waiting, perhaps more than once (see `writer`), and the `Pending` resolves once
    /// its commit is durable.
    fn write<T, F>(&self, work: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.submit(work)
    }

    /// As [`Store::write`]; `after` runs (on the writer thread) once the write is durable.
    fn write_then<T, F>(&self, work: F, after: impl FnOnce(&T) + Send + 'static) -> Pending<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.submit_then(work, Some(Box::new(after)))
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.inner.file.begin_read()
    }

    /// Runs a read that may be large or slow (see the module doc) on tokio's blocking threads.
    pub async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .unwrap_or_else(|e| Err(StoreError::ReadFailed(e.to_string())))
    }

    pub fn path(&self) -> &Path {
        &self.inner.file.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Test and migration aid: records another schema version.
    pub fn set_schema_version(&self, version: u32) -> Pending<()> {
        self.write(move |txn| {
            txn.open_table(META)?.insert("schema_version", version)?;
            Ok(())
        })
    }

    /// Durable commits so far (one fsync each) and the writes they held, since the store was
    /// opened: how well group commit shares the disk.
    pub fn commit_counts(&self) -> (u64, u64) {
        let stats = &self.inner.writer.stats;
        (stats.commits.load(Ordering::Relaxed), stats.committed_jobs.load(Ordering::Relaxed))
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
        store.set_schema_version(SCHEMA_VERSION + 1).wait().unwrap();
        drop(store);
        let err = Store::open(dir.path()).err().expect("newer schema must be refused").to_string();
        assert!(err.contains("newer coi-proxy"), "{err}");
    }

    #[test]
    fn the_file_is_private_and_a_second_opener_is_told_who_holds_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mode = std::fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = Store::open(dir.path()).err().expect("the file is locked").to_string();
        assert!(err.starts_with("another coi-proxy uses this state directory"), "{err}");
        assert!(!err.contains("Database already open"), "{err}");
    }
}
