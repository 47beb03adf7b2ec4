//! The state directory (`state_dir`): private keys and queued mail live there, so it is 0700 and
//! every file in it 0600 whoever makes them (the daemon, `cert create`/`rotate`, a command that
//! opens the store). Commands that only read state never create it ([`existing`]), and say
//! "no state here" with the directory they looked in, so a command pointed at the wrong
//! directory is noticed instead of answering "empty" or making a second CA.
//!
//! A directory that others can read is made private when it holds nothing but coi-proxy's own
//! files (made by `mkdir` beforehand, or by an older release); one that holds other files too is
//! refused, not changed: its mode may matter to whatever else lives there (a home directory, or
//! `/tmp`), and coi-proxy should have a directory of its own.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What coi-proxy itself keeps in the state directory; anything else makes a shared directory
/// "not ours" (see the module doc).
const OWN_ENTRIES: &[&str] = &["tls", "coi-proxy.redb", "control.sock", "seal.key", "spool", "queue"];

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot read the state directory {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the state directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "the state directory {} is readable by other users (mode {mode:o}) and holds files that are not coi-proxy's ({}); \
         coi-proxy keeps private keys and queued mail there, so it does not use it as it is. Give it a directory of its \
         own (state_dir or --state-dir), or make this one private: chmod 700 {}",
        path.display(), others.join(", "), path.display()
    )]
    Shared { path: PathBuf, mode: u32, others: Vec<String> },
    #[error(
        "cannot make {} private (mode {mode:o}, owned by uid {owner}): {source}; run coi-proxy as the directory's owner, or: chmod 700 {}",
        path.display(), path.display()
    )]
    Chmod { path: PathBuf, mode: u32, owner: u32, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// What [`prepare`] or [`existing`] did to the directory, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// It was private already.
    Private,
    /// It did not exist; it was created 0700.
    Created,
    /// Others could read it or files in it; it was made private. The old mode of the directory.
    MadePrivate { was: u32 },
}

impl std::fmt::Display for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepared::Private => f.write_str("private"),
            Prepared::Created => f.write_str("created (mode 700)"),
            Prepared::MadePrivate { was } => {
                write!(f, "was readable by other users (mode {was:o}); made it private (700, files 600)")
            }
        }
    }
}

/// For commands that write state (`run`, `cert create`, `cert rotate`): creates `dir` (0700,
/// with any missing parents) or makes an existing one private.
pub fn prepare(dir: &Path) -> Result<Prepared, StateError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Create { path: dir.to_owned(), source })?;
            // DirBuilder's mode is filtered by the umask; 0700 is what is wanted whatever it is.
            chmod(dir, 0o700)?;
            Ok(Prepared::Created)
        }
        Err(source) => Err(StateError::Read { path: dir.to_owned(), source }),
        Ok(_) => make_private(dir),
    }
}

/// For commands that only read state (`cert export`, `cert install`, `queue`, `check`): `None`
/// if `dir` does not exist (nothing is created), else makes it private like [`prepare`].
pub fn existing(dir: &Path) -> Result<Option<Prepared>, StateError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read { path: dir.to_owned(), source }),
        Ok(_) => make_private(dir).map(Some),
    }
}

/// The words for "nothing is stored in `dir`", the same in every command, with the other usual
/// state directory if that one has state (the system service's, or this user's).
pub fn no_state_here(dir: &Path, what: &str) -> String {
    let mut text = format!(
        "no state here: {} {what}; no coi-proxy has run with this state directory (is it the one the daemon uses? \
         see state_dir in its proxy.toml, or pass --state-dir)",
        dir.display()
    );
    let candidates = [PathBuf::from(crate::config::SYSTEM_STATE_DIR), crate::config::default_state_dir_for_user()];
    if let Some(other) = candidates
        .iter()
        .find(|c| c.as_path() != dir && (c.join("tls/ca.pem").exists() || c.join("coi-proxy.redb").exists()))
    {
        text.push_str(&format!(". There is state in {0}: --state-dir {0}", other.display()));
    }
    text
}

/// Makes an existing state directory private (see the module doc for when it refuses).
fn make_private(dir: &Path) -> Result<Prepared, StateError> {
    // Follows a symlinked state dir (`/var/lib/coi-proxy` under DynamicUser is one).
    let meta = std::fs::metadata(dir).map_err(|source| StateError::Read { path: dir.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(StateError::NotADirectory { path: dir.to_owned() });
    }
    let was = meta.permissions().mode() & 0o7777;
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| StateError::Read { path: dir.to_owned(), source })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if was & 0o077 != 0 {
        let mut others: Vec<String> = entries.iter().filter(|name| !is_own(name)).cloned().collect();
        if !others.is_empty() {
            others.sort();
            others.truncate(5);
            return Err(StateError::Shared { path: dir.to_owned(), mode: was, others });
        }
    }
    let mut changed = was & 0o077 != 0;
    if changed {
        chmod_owned(dir, &meta, 0o700)?;
    }
    for name in entries.iter().filter(|name| is_own(name)) {
        changed |= tighten(&dir.join(name))?;
    }
    Ok(if changed { Prepared::MadePrivate { was } } else { Prepared::Private })
}

fn is_own(name: &str) -> bool {
    OWN_ENTRIES.contains(&name) || name.ends_with(".tmp")
}

/// Takes group and other permissions off `path` (and, for a directory, everything in it):
/// directories 0700, files 0600. Whether anything changed.
fn tighten(path: &Path) -> Result<bool, StateError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(false) };
    if meta.file_type().is_symlink() {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() { 0o700 } else { 0o600 };
    let mut changed = false;
    if mode & 0o077 != 0 {
        chmod_owned(path, &meta, want)?;
        changed = true;
    }
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            changed |= tighten(&entry.path())?;
        }
    }
    Ok(changed)
}

fn chmod_owned(path: &Path, meta: &std::fs::Metadata, mode: u32) -> Result<(), StateError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| StateError::Chmod {
        path: path.to_owned(),
        mode: meta.permissions().mode() & 0o7777,
        owner: meta.uid(),
        source,
    })
}

fn chmod(path: &Path, mode: u32) -> Result<(), StateError> {
    let meta = std::fs::metadata(path).map_err(|source| StateError::Read { path: path.to_owned(), source })?;
    chmod_owned(path, &meta, mode)
}

/// Creates a directory inside the state directory (e.g. `tls`), 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Create { path: dir.to_owned(), source })
}

/// Makes sure a file exists with mode 0600 before a library opens it by name (the store); an
/// existing file keeps its contents and loses any group or other permission.
pub fn private_file(path: &Path) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.to_owned(), source };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => tighten(path).map(|_| ()),
        Err(e) => Err(err(e)),
    }
}

/// Writes `bytes` to `path` (mode 0600), replacing the file atomically: a crash leaves the old
/// file or the new one, never half of one.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let err = |source| StateError::Write { path: path.to_owned(), source };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_and_tightens_only_its_own() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/b");
        assert_eq!(existing(&dir).unwrap(), None);
        assert!(!dir.exists(), "reading creates nothing");
        assert_eq!(prepare(&dir).unwrap(), Prepared::Created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(prepare(&dir).unwrap(), Prepared::Private);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/ca.pem"), b"x").unwrap();
        std::fs::set_permissions(dir.join("tls/ca.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(existing(&dir).unwrap(), Some(Prepared::MadePrivate { was: 0o755 }));
        assert_eq!((mode(&dir), mode(&dir.join("tls")), mode(&dir.join("tls/ca.pem"))), (0o700, 0o700, 0o600));

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("notes"), b"y").unwrap();
        let err = prepare(&dir).unwrap_err().to_string();
        assert!(err.contains("readable by other users (mode 755)") && err.contains("notes"), "{err}");
        assert_eq!(mode(&dir), 0o755, "a shared directory is not changed");
    }

    #[test]
    fn files_are_made_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&file, b"kept").unwrap();
        private_file(&file).unwrap();
        assert_eq!((mode(&file), std::fs::read(&file).unwrap()), (0o600, b"kept".to_vec()));
        write_private_atomic(&dir.path().join("g"), b"new").unwrap();
        assert_eq!(mode(&dir.path().join("g")), 0o600);
    }
}
