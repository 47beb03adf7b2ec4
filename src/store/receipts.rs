//! Receipt state: the chat messages the user sent through the proxy with what their recipients'
//! servers and clients reported (for the `$Delivered`/`$Read` ticks and `coi-proxy queue list`),
//! and the read receipts the proxy sent itself (so that it never sends one twice).

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::read_table;
use super::{Pending, Store, StoreError};

/// `account NUL message-id` → JSON [`SentChat`].
pub(super) const SENT: TableDefinition<&str, &str> = TableDefinition::new("receipts_sent");
/// `account NUL message-id` of received messages → Unix time the proxy's MDN went out (0: the
/// message was already read when read receipts started, or a chat client answered it).
pub(super) const MDN_DONE: TableDefinition<&str, i64> = TableDefinition::new("receipts_mdn_done");
/// `account` → Unix time read receipts started for it (messages read before get none).
pub(super) const MDN_BASELINE: TableDefinition<&str, i64> = TableDefinition::new("receipts_mdn_baseline");

/// Sent chat messages kept per account; the oldest go first.
pub const MAX_SENT: usize = 2_000;

/// A chat message the user sent through the proxy. Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SentChat {
    pub sent_at: i64,
    /// The DSN envelope id the proxy asked for (if the provider offered DSN).
    pub envid: Option<String>,
    pub recipients: Vec<Tick>,
    /// Keywords already set on the user's copy (`$Delivered`, `$Read`).
    pub marked: Vec<String>,
    /// The reports recorded for it (their Message-IDs), so that none counts twice; the oldest
    /// go beyond [`MAX_REPORTS`]. Absent in records of earlier versions.
    #[serde(default)]
    pub reports: Vec<String>,
}

/// Reports remembered per sent message.
pub const MAX_REPORTS: usize = 100;

impl SentChat {
    /// Remembers that the report `id` was recorded; `false` if it was already.
    pub fn note_report(&mut self, id: &str) -> bool {
        if self.reports.iter().any(|r| r == id) {
            return false;
        }
        self.reports.push(id.to_string());
        if self.reports.len() > MAX_REPORTS {
            self.reports.remove(0);
        }
        true
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub address: String,
    pub delivered: Option<i64>,
    pub failed: Option<i64>,
    pub read: Option<i64>,
}

impl SentChat {
    /// The keywords the user's copy should carry: `$Delivered` once any recipient's delivery
    /// was reported, `$Read` once any read it (one tick per message, as messengers show).
    pub fn wanted_keywords(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        if self.recipients.iter().any(|t| t.delivered.is_some() || t.read.is_some()) {
            k.push(crate::mail::DELIVERED);
        }
        if self.recipients.iter().any(|t| t.read.is_some()) {
            k.push(crate::mail::READ);
        }
        k
    }
}

fn key(account: &str, id: &str) -> String {
    format!("{account}\0{id}")
}

fn decode(json: &str) -> Result<SentChat, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("receipt record: {e}")))
}

impl Store {
    /// Records a sent chat message unless it is known already, dropping the account's oldest
    /// beyond [`MAX_SENT`].
    pub fn sent_chat_insert(&self, account: &str, message_id: &str, sent: &SentChat) -> Pending<()> {
        let k = key(account, message_id);
        let (start, end) = (key(account, ""), format!("{account}\u{1}"));
        let json = serde_json::to_string(sent).expect("receipt records serialize");
        self.write(move |txn| {
            let mut table = txn.open_table(SENT)?;
            if table.get(k.as_str())?.is_none() {
                table.insert(k.as_str(), json.as_str())?;
            }
            let mut all: Vec<(i64, String)> = Vec::new();
            for item in table.range(start.as_str()..end.as_str())? {
                let (k, v) = item?;
                all.push((decode(v.value()).map_or(0, |s| s.sent_at), k.value().to_string()));
            }
            if all.len() > MAX_SENT {
                all.sort();
                for (_, k) in &all[..all.len() - MAX_SENT] {
                    table.remove(k.as_str())?;
                }
            }
            Ok(())
        })
    }

    /// Changes the record of a sent chat message found by Message-ID or else by envelope id,
    /// in one transaction; its Message-ID and new state, `None` if it is not one of ours.
    /// `change` may be called more than once (see `writer`); only the last call counts.
    pub fn sent_chat_update(
        &self,
        account: &str,
        message_id: Option<&str>,
        envid: Option<&str>,
        mut change: impl FnMut(&mut SentChat) + Send + 'static,
    ) -> Pending<Option<(String, SentChat)>> {
        let (account, message_id, envid) =
            (account.to_string(), message_id.map(str::to_string), envid.map(str::to_string));
        self.write(move |txn| {
            let mut table = txn.open_table(SENT)?;
            let mut found = None;
            if let Some(id) = &message_id
                && let Some(v) = table.get(key(&account, id).as_str())?
            {
                found = Some((id.to_string(), decode(v.value())?));
            }
            if found.is_none()
                && let Some(envid) = &envid
            {
                let (start, end) = (key(&account, ""), format!("{account}\u{1}"));
                for item in table.range(start.as_str()..end.as_str())? {
                    let (k, v) = item?;
                    let sent = decode(v.value())?;
                    if sent.envid.as_deref() == Some(envid.as_str()) {
                        found = Some((k.value()[start.len()..].to_string(), sent));
                        break;
                    }
                }
            }
            if let Some((id, sent)) = &mut found {
                change(sent);
                let json = serde_json::to_string(&*sent).expect("receipt records serialize");
                table.insert(key(&account, id).as_str(), json.as_str())?;
            }
            Ok(found)
        })
    }

    /// Sent chat messages of `account` whose copy still lacks a keyword it should have.
    pub fn sent_chats_to_mark(&self, account: &str) -> Result<Vec<(String, SentChat)>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, SENT)? else { return Ok(Vec::new()) };
        let (start, end) = (key(account, ""), format!("{account}\u{1}"));
        let mut out = Vec::new();
        for item in table.range(start.as_str()..end.as_str())? {
            let (k, v) = item?;
            let sent = decode(v.value())?;
            if sent.wanted_keywords().iter().any(|k| !sent.marked.iter().any(|m| m == k)) {
                out.push((k.value()[start.len()..].to_string(), sent));
            }
        }
        Ok(out)
    }

    /// All sent chat messages: (account, Message-ID, record).
    pub fn sent_chats(&self) -> Result<Vec<(String, String, SentChat)>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, SENT)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (account, id) = k.value().split_once('\0').unwrap_or(("", k.value()));
            out.push((account.to_string(), id.to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// Claims the read receipt for a received message: `true` exactly once per message.
    pub fn mdn_claim(&self, account: &str, message_id: &str, at: i64) -> Pending<bool> {
        let k = key(account, message_id);
        self.write(move |txn| {
            let mut table = txn.open_table(MDN_DONE)?;
            let fresh = table.get(k.as_str())?.is_none();
            if fresh {
                table.insert(k.as_str(), at)?;
            }
            Ok(fresh)
        })
    }

    /// When read receipts started for `account`, if they have.
    pub fn mdn_baseline(&self, account: &str) -> Result<Option<i64>, StoreError> {
        let txn = self.begin_read()?;
        let Some(table) = read_table(&txn, MDN_BASELINE)? else { return Ok(None) };
        Ok(table.get(account)?.map(|v| v.value()))
    }

    pub fn set_mdn_baseline(&self, account: &str, at: i64) -> Pending<()> {
        let account = account.to_string();
        self.write(move |txn| {
            txn.open_table(MDN_BASELINE)?.insert(account.as_str(), at)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_chats_and_mdn_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tick = |a: &str| Tick { address: a.into(), ..Default::default() };
        let sent =
            SentChat { sent_at: 1, envid: Some("coi.1".into()), recipients: vec![tick("bob@x")], ..Default::default() };
        store.sent_chat_insert("alice@x", "m1@x", &sent).wait().unwrap();
        assert!(store.sent_chats_to_mark("alice@x").unwrap().is_empty());
        let by_envid = store
            .sent_chat_update("alice@x", Some("unknown@x"), Some("coi.1"), |s| s.recipients[0].delivered = Some(5))
            .wait();
        assert_eq!(by_envid.unwrap().unwrap().0, "m1@x");
        assert_eq!(store.sent_chat_update("alice@x", None, Some("coi.2"), |_| {}).wait().unwrap(), None);
        let todo = store.sent_chats_to_mark("alice@x").unwrap();
        assert_eq!(todo[0].1.wanted_keywords(), vec!["$Delivered"]);
        store.sent_chat_update("alice@x", Some("m1@x"), None, |s| s.marked.push("$Delivered".into())).wait().unwrap();
        assert!(store.sent_chats_to_mark("alice@x").unwrap().is_empty());
        assert_eq!(store.sent_chats().unwrap()[0].0, "alice@x");

        assert!(store.mdn_claim("alice@x", "o@y", 3).wait().unwrap());
        assert!(!store.mdn_claim("alice@x", "o@y", 4).wait().unwrap(), "never twice");
        assert!(store.mdn_claim("ALICE@x", "o@y", 4).wait().unwrap(), "keys are exact: another account");
        assert_eq!(store.mdn_baseline("alice@x").unwrap(), None);
        store.set_mdn_baseline("alice@x", 9).wait().unwrap();
        assert_eq!(store.mdn_baseline("alice@x").unwrap(), Some(9));
    }
}
