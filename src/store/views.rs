//! The decrypted views of encrypted messages (issue 15), sealed: each UID's view is decided
//! once and kept, so that it never changes, also across restarts. The store holds opaque
//! sealed blobs only (the openpgp wing seals and opens them); it knows the key layout and
//! how to forget a mailbox, not what a view is.

use redb::{ReadableTable, TableDefinition};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `account NUL mailbox NUL uidvalidity (10 digits) NUL uid (10 digits)` → sealed view.
const VIEWS: TableDefinition<&str, &[u8]> = TableDefinition::new("views");

/// Where a view belongs: one UID of one mailbox incarnation of one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewId {
    pub account: String,
    pub mailbox: String,
    pub uidvalidity: u32,
    pub uid: u32,
}

impl ViewId {
    pub fn new(account: &str, mailbox: &str, uidvalidity: u32, uid: u32) -> ViewId {
        ViewId { account: account.to_string(), mailbox: mailbox.to_string(), uidvalidity, uid }
    }

    fn key(&self) -> String {
        format!("{}\0{}\0{:010}\0{:010}", self.account, self.mailbox, self.uidvalidity, self.uid)
    }
}

impl Store {
    /// Keeps a sealed view; an existing one is never replaced (the first decision stands).
    /// Whether this one was kept (`false`: another was there first).
    pub fn keep_view(&self, id: &ViewId, sealed: Vec<u8>) -> Pending<bool> {
        let key = id.key();
        self.write(move |txn| {
            let mut table = txn.open_table(VIEWS)?;
            if table.get(key.as_str())?.is_some() {
                return Ok(false);
            }
            table.insert(key.as_str(), sealed.as_slice())?;
            Ok(true)
        })
    }

    /// The sealed view of `id`, if one was kept.
    pub fn view(&self, id: &ViewId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, VIEWS)? else { return Ok(None) };
        Ok(table.get(id.key().as_str())?.map(|v| v.value().to_vec()))
    }

    /// Forgets the views of an account's mailbox incarnations other than `uidvalidity` (a
    /// changed UIDVALIDITY means the old UIDs name nothing any more).
    pub fn forget_stale_views(&self, account: &str, mailbox: &str, uidvalidity: u32) -> Pending<()> {
        let prefix = format!("{account}\0{mailbox}\0");
        let keep = format!("{prefix}{uidvalidity:010}\0");
        self.write(move |txn| {
            let mut table = txn.open_table(VIEWS)?;
            let end = format!("{}\u{1}", &prefix[..prefix.len() - 1]);
            let stale: Vec<String> = table
                .range(prefix.as_str()..end.as_str())?
                .map(|item| item.map(|(k, _)| k.value().to_string()))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|k| !k.starts_with(&keep))
                .collect();
            for key in stale {
                table.remove(key.as_str())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_view_stands_and_stale_incarnations_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = ViewId::new("Bob@Example.org", "INBOX", 7, 3);
        assert_eq!(store.view(&id).unwrap(), None);
        assert!(store.keep_view(&id, b"first".to_vec()).wait().unwrap());
        assert!(!store.keep_view(&id, b"second".to_vec()).wait().unwrap());
        assert_eq!(store.view(&id).unwrap().as_deref(), Some(&b"first"[..]));
        let old = ViewId::new("bob@example.org", "INBOX", 6, 3);
        let other = ViewId::new("bob@example.org", "INBOX.x", 6, 3);
        store.keep_view(&old, b"old".to_vec()).wait().unwrap();
        store.keep_view(&other, b"other".to_vec()).wait().unwrap();
        store.forget_stale_views("bob@example.org", "INBOX", 7).wait().unwrap();
        assert_eq!(store.view(&old).unwrap(), None);
        assert!(store.view(&id).unwrap().is_some());
        assert!(store.view(&other).unwrap().is_some(), "another mailbox is untouched");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.view(&id).unwrap().as_deref(), Some(&b"first"[..]), "kept across a restart");
    }
}
