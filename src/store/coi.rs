//! What the account worker remembers: the Message-IDs it classified as chat (so replies from
//! plain mail clients stay in the chat), bounded per account, and how far it has processed
//! each account's INBOX.

use redb::{ReadableTable, TableDefinition};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `account NUL message-id` → sequence number.
pub(super) const CHAT_IDS: TableDefinition<&str, u64> = TableDefinition::new("chat_ids");
/// `account NUL sequence (20 digits)` → message-id: the order, for dropping the oldest.
pub(super) const CHAT_ID_ORDER: TableDefinition<&str, &str> = TableDefinition::new("chat_id_order");
/// `account` → (UIDVALIDITY, next UID to look at) of INBOX.
pub(super) const INBOX_POSITION: TableDefinition<&str, (u32, u32)> = TableDefinition::new("inbox_position");

/// Chat Message-IDs kept per account.
pub const MAX_CHAT_IDS: usize = 10_000;

fn account_key(account: &str) -> String {
    account.to_string()
}

impl Store {
    /// Remembers chat Message-IDs, dropping the oldest beyond [`MAX_CHAT_IDS`].
    pub fn remember_chat_ids(&self, account: &str, ids: &[String]) -> Pending<()> {
        if ids.is_empty() {
            return Pending::ready(Ok(()));
        }
        let (account, ids) = (account_key(account), ids.to_vec());
        self.write(move |txn| {
            let mut by_id = txn.open_table(CHAT_IDS)?;
            let mut order = txn.open_table(CHAT_ID_ORDER)?;
            let prefix = format!("{account}\0");
            let mut next = match order.range(prefix.as_str()..format!("{account}\u{1}").as_str())?.next_back() {
                Some(item) => item?.0.value()[prefix.len()..].parse::<u64>().unwrap_or(0) + 1,
                None => 0,
            };
            for id in &ids {
                let key = format!("{prefix}{id}");
                if by_id.get(key.as_str())?.is_some() {
                    continue;
                }
                by_id.insert(key.as_str(), next)?;
                order.insert(format!("{prefix}{next:020}").as_str(), id.as_str())?;
                next += 1;
            }
            let end = format!("{account}\u{1}");
            let count = order.range(prefix.as_str()..end.as_str())?.count();
            if count > MAX_CHAT_IDS {
                let oldest: Vec<(String, String)> = order
                    .range(prefix.as_str()..end.as_str())?
                    .take(count - MAX_CHAT_IDS)
                    .map(|item| item.map(|(k, v)| (k.value().to_string(), v.value().to_string())))
                    .collect::<Result<_, _>>()?;
                for (key, id) in oldest {
                    order.remove(key.as_str())?;
                    by_id.remove(format!("{prefix}{id}").as_str())?;
                }
            }
            Ok(())
        })
    }

    pub fn is_chat_id(&self, account: &str, id: &str) -> Result<bool, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, CHAT_IDS)? else { return Ok(false) };
        Ok(table.get(format!("{}\0{id}", account_key(account)).as_str())?.is_some())
    }

    /// Where the worker stopped in INBOX: (UIDVALIDITY, next UID).
    pub fn inbox_position(&self, account: &str) -> Result<Option<(u32, u32)>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, INBOX_POSITION)? else { return Ok(None) };
        Ok(table.get(account_key(account).as_str())?.map(|v| v.value()))
    }

    pub fn set_inbox_position(&self, account: &str, uidvalidity: u32, next_uid: u32) -> Pending<()> {
        let account = account_key(account);
        self.write(move |txn| {
            txn.open_table(INBOX_POSITION)?.insert(account.as_str(), (uidvalidity, next_uid))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_are_bounded_per_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.remember_chat_ids("b@x", &["other".into()]).wait().unwrap();
        let ids: Vec<String> = (0..MAX_CHAT_IDS + 5).map(|i| format!("id{i}@x")).collect();
        for chunk in ids.chunks(1000) {
            store.remember_chat_ids("a@x", chunk).wait().unwrap();
        }
        assert!(!store.is_chat_id("a@x", "id0@x").unwrap(), "oldest dropped");
        assert!(!store.is_chat_id("a@x", "id4@x").unwrap());
        assert!(store.is_chat_id("a@x", "id5@x").unwrap());
        assert!(store.is_chat_id("a@x", &format!("id{}@x", MAX_CHAT_IDS + 4)).unwrap());
        assert!(store.is_chat_id("b@x", "other").unwrap(), "other accounts untouched");
        assert_eq!(store.inbox_position("a@x").unwrap(), None);
        store.set_inbox_position("a@x", 7, 42).wait().unwrap();
        assert_eq!(store.inbox_position("a@x").unwrap(), Some((7, 42)));
        assert_eq!(store.inbox_position("A@x").unwrap(), None, "keys are exact");
    }
}
