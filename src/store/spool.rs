//! Message bodies as files: SMTP DATA goes to a spool file as it arrives (`state_dir/spool`), so
//! that a client sending a large or never-ending message costs disk, not memory. A finished
//! message's file is synced and moved to `state_dir/queue`, and its name is committed with the
//! envelope (`Store::queue_insert_spooled`): the `250` follows that commit, so a crash after it
//! keeps the message.
//!
//! A spool file of a message that was not finished (refused, timed out, the client gone) is
//! removed when its [`SpoolFile`] is dropped. What a crash leaves, spool files and queue files
//! no envelope names, is removed by [`Store::clean_spool`] before SMTP is served: never queued.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, StoreError};

/// A message's body on disk, removed when dropped unless [`SpoolFile::keep`] was called.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    keep: bool,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's name (no directory), as the store records it.
    pub(super) fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Moves the file to `dir` (same file system), keeping the guard on the new path.
    pub(super) fn move_to(&mut self, dir: &Path) -> std::io::Result<()> {
        let to = dir.join(self.name());
        std::fs::rename(&self.path, &to)?;
        self.path = to;
        Ok(())
    }

    /// The file stays: the store names it now.
    pub(super) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let path = std::mem::take(&mut self.path);
        // Off the runtime where there is one: an unlink can wait on the disk.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || remove(&path))),
            Err(_) => remove(&path),
        }
    }
}

/// Removes `path`; a file already gone is fine.
pub(super) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "cannot remove a message file: {e}");
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::from_io(path, e)
}

/// Syncs a directory, so that a file created or moved in it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

pub(super) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(dir, e)),
    }
}

/// A name no other spool file of this state directory has.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{nanos:x}.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Store {
    fn state_dir(&self) -> &Path {
        self.path().parent().unwrap_or(Path::new("."))
    }

    /// Where message data waits while a client sends it.
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir().join("spool")
    }

    /// Where the bodies of queued messages are (those not kept in the store file itself).
    pub(super) fn queue_dir(&self) -> PathBuf {
        self.state_dir().join("queue")
    }

    /// A new, empty spool file (0600) and the guard that removes it unless it is queued.
    /// Blocking: call it off the runtime.
    pub fn spool_create(&self) -> Result<(SpoolFile, std::fs::File), StoreError> {
        let dir = self.spool_dir();
        private_dir(&dir)?;
        let path = dir.join(unique_name());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        Ok((SpoolFile { path, keep: false }, file))
    }

    /// Removes what a crash left: every spool file (a message whose `250` was never sent) and
    /// every queue file no queued message names. Blocking; run it before SMTP is served. The
    /// count of files removed.
    pub fn clean_spool(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        let spool = self.spool_dir();
        if let Ok(entries) = std::fs::read_dir(&spool) {
            for entry in entries.flatten() {
                remove(&entry.path());
                removed += 1;
            }
        }
        let named = self.queue_body_files()?;
        if let Ok(entries) = std::fs::read_dir(self.queue_dir()) {
            for entry in entries.flatten() {
                if !named.contains(&entry.file_name().to_string_lossy().into_owned()) {
                    remove(&entry.path());
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_spool_file_is_removed_and_a_kept_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (spool, _) = store.spool_create().unwrap();
        let path = spool.path().to_path_buf();
        assert!(path.exists() && path.starts_with(store.spool_dir()));
        drop(spool);
        assert!(!path.exists());
        let (spool, _) = store.spool_create().unwrap();
        let path = spool.path().to_path_buf();
        spool.keep();
        assert!(path.exists());
        assert_eq!(store.clean_spool().unwrap(), 1, "a spool file left by a crash is removed");
        assert!(!path.exists());
    }
}
