//! Adds or updates one `[[account]]` in proxy.toml without disturbing anything else: comments,
//! order, other accounts and tables stay as they are (toml_edit keeps the document's layout).
//! The result is validated with the real parser before anyone writes it.

use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

/// The account `setup` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    pub login: String,
    pub imap: String,
    pub smtp: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// The new text and what changed, in words.
#[derive(Debug)]
pub struct Edited {
    pub text: String,
    pub changes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{path} is not valid TOML, so it is left alone: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}` is not a table as coi-proxy writes it ({expected}); edit it by hand")]
    Shape { path: PathBuf, key: &'static str, expected: &'static str },
    #[error("the edited configuration would be invalid, so nothing was written: {0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// `original` (the file's text, empty for a new file) with `entry` added, or the account of the
/// same login (case-insensitive) updated; SMTP listeners are added if there are none, since an
/// account with a submission server is only reachable for sending through them.
pub fn add_account(original: &str, path: &Path, entry: &AccountEntry) -> Result<Edited, EditError> {
    let mut doc: DocumentMut = original
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Syntax { path: path.into(), message: e.to_string() })?;
    let mut changes = Vec::new();
    let shape = |key, expected| EditError::Shape { path: path.into(), key, expected };

    if doc.get("account").is_none() {
        doc.insert("account", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let accounts = doc["account"].as_array_of_tables_mut().ok_or_else(|| shape("account", "[[account]]"))?;
    let existing = accounts
        .iter_mut()
        .find(|t| t.get("login").and_then(Item::as_str).is_some_and(|l| l.eq_ignore_ascii_case(&entry.login)));
    let describe = |e: &AccountEntry| {
        let mut s = format!("login = {:?}, imap = {:?}", e.login, e.imap);
        if let Some(smtp) = &e.smtp {
            s += &format!(", smtp = {smtp:?}");
        }
        s
    };
    match existing {
        Some(table) => {
            set_account(table, entry);
            changes.push(format!("updated the [[account]] with {}", describe(entry)));
        }
        None => {
            let mut table = Table::new();
            table.insert("login", value(entry.login.clone()));
            set_account(&mut table, entry);
            accounts.push(table);
            changes.push(format!("added an [[account]] with {}", describe(entry)));
        }
    }

    if entry.smtp.is_some() {
        let defaults = crate::config::Listen::default();
        if doc.get("listen").is_none() {
            // A [listen] table lists every listener: carry over the default IMAP ones.
            let mut listen = Table::new();
            for (key, addr) in [("imap", defaults.imap), ("imaps", defaults.imaps)] {
                if let Some(addr) = addr {
                    listen.insert(key, value(addr.to_string()));
                }
            }
            doc.insert("listen", Item::Table(listen));
        }
        let listen = doc["listen"].as_table_mut().ok_or_else(|| shape("listen", "[listen]"))?;
        if !listen.contains_key("smtp") && !listen.contains_key("smtps") {
            // Beside the IMAP listener's address, so a LAN setup stays one.
            let ip = ["imaps", "imap"]
                .iter()
                .find_map(|k| listen.get(k).and_then(Item::as_str)?.parse::<std::net::SocketAddr>().ok())
                .map_or_else(|| "127.0.0.1".to_string(), |a| a.ip().to_string());
            let ip = if ip.contains(':') { format!("[{ip}]") } else { ip };
            listen.insert("smtp", value(format!("{ip}:1587")));
            listen.insert("smtps", value(format!("{ip}:1465")));
            changes.push(format!(
                "added SMTP listeners to [listen]: smtp = \"{ip}:1587\" (STARTTLS), smtps = \"{ip}:1465\" (TLS)"
            ));
        }
    }

    let text = doc.to_string();
    crate::config::Config::parse(&text, path).map_err(|e| EditError::Invalid(e.to_string()))?;
    Ok(Edited { text, changes })
}

fn set_account(table: &mut Table, entry: &AccountEntry) {
    table.insert("imap", value(entry.imap.clone()));
    if let Some(smtp) = &entry.smtp {
        table.insert("smtp", value(smtp.clone()));
    }
    if let Some(ca) = &entry.ca_file {
        table.insert("ca_file", value(ca.display().to_string()));
    }
}

/// Replaces `path` with `text` in one step (a temporary file beside it, then a rename), keeping
/// the old file's permissions and owner; a new file is readable by its owner only.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), EditError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let err = |source| EditError::Write { path: path.into(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let old = std::fs::metadata(path).ok();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The name the Debian package's purge removes if a crash leaves it behind.
    let tmp = dir.join(format!(".{name}.setup-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Some(old) = &old {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
            // Best effort: only root may give a file away, and then the owner is kept.
            let _ = std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid()));
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(login: &str) -> AccountEntry {
        AccountEntry {
            login: login.into(),
            imap: "imaps://imap.example.org:993".into(),
            smtp: Some("smtps://smtp.example.org:465".into()),
            ca_file: None,
        }
    }

    const FILE: &str = "# top comment\nstate_dir = \"/var/lib/coi-proxy\"\n\n[listen]\nimap = \"127.0.0.1:1143\" # plain\n\n\
        # Bob's account, keep\n[[account]]\nlogin = \"bob@example.net\"\nimap = \"imaps://mail.example.net\"\n\
        password_command = \"pass bob\"\n";

    #[test]
    fn adds_an_account_keeping_comments_and_others() {
        let e = add_account(FILE, Path::new("p.toml"), &entry("alice@example.org")).unwrap();
        assert!(e.text.starts_with("# top comment\nstate_dir"), "{}", e.text);
        for kept in ["imap = \"127.0.0.1:1143\" # plain", "# Bob's account, keep", "password_command = \"pass bob\""] {
            assert!(e.text.contains(kept), "lost {kept:?}:\n{}", e.text);
        }
        assert!(e.text.contains("smtp = \"127.0.0.1:1587\"") && e.text.contains("smtps = \"127.0.0.1:1465\""));
        let c = crate::config::Config::parse(&e.text, Path::new("p.toml")).unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.provider_for("alice@example.org").unwrap().imap.host, "imap.example.org");
        assert_eq!(c.provider_for("bob@example.net").unwrap().imap.host, "mail.example.net");
        assert_eq!(e.changes.len(), 2, "{:?}", e.changes);
    }

    #[test]
    fn updates_the_same_login_and_leaves_listeners_alone() {
        let first = add_account(FILE, Path::new("p.toml"), &entry("alice@example.org")).unwrap().text;
        let mut other = entry("ALICE@example.org");
        other.imap = "imap+starttls://imap2.example.org".into();
        let e = add_account(&first, Path::new("p.toml"), &other).unwrap();
        let c = crate::config::Config::parse(&e.text, Path::new("p.toml")).unwrap();
        assert_eq!(c.accounts.len(), 2, "{}", e.text);
        assert_eq!(c.provider_for("alice@example.org").unwrap().imap.host, "imap2.example.org");
        assert_eq!(
            e.changes,
            vec![format!(
                "updated the [[account]] with login = \"ALICE@example.org\", imap = \"imap+starttls://imap2.example.org\", smtp = \"smtps://smtp.example.org:465\""
            )]
        );
    }

    #[test]
    fn a_new_file_keeps_the_default_imap_listeners() {
        let e = add_account("", Path::new("p.toml"), &entry("a@example.org")).unwrap();
        let c = crate::config::Config::parse(&e.text, Path::new("p.toml")).unwrap();
        assert_eq!(c.listen.imap.unwrap().port(), 1143);
        assert_eq!(c.listen.smtps.unwrap().port(), 1465);
        let lan = add_account("[listen]\nimaps = \"0.0.0.0:1993\"\n", Path::new("p.toml"), &entry("a@x.org")).unwrap();
        assert!(lan.text.contains("smtps = \"0.0.0.0:1465\""), "{}", lan.text);
    }

    #[test]
    fn broken_or_odd_files_are_left_alone() {
        let err = add_account("[listen\n", Path::new("p.toml"), &entry("a@b.org")).unwrap_err();
        assert!(matches!(err, EditError::Syntax { .. }), "{err}");
        let err = add_account("account = 1\n", Path::new("p.toml"), &entry("a@b.org")).unwrap_err();
        assert!(matches!(err, EditError::Shape { key: "account", .. }), "{err}");
        let err = add_account("[limits]\nmax_line = 1\n", Path::new("p.toml"), &entry("a@b.org")).unwrap_err();
        assert!(matches!(err, EditError::Invalid(_)), "{err}");
    }

    #[test]
    fn writes_atomically_keeping_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/proxy.toml");
        write_atomically(&path, "a = 1\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, "a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1, "no temporary file left");
    }
}
