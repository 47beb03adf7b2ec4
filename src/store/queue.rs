//! The outgoing mail queue: what a client submitted (envelope and raw message) and how its
//! delivery to the provider is going.
//!
//! Two tables keyed by the queue id, so that listing and scheduling never read message bodies:
//! `queue_envelope` holds a JSON [`QueuedMessage`] (small, rewritten after every attempt) and
//! `queue_body` the message bytes exactly as received (written once). `queue_meta` holds the next
//! id, so ids are never reused, even after the newest message was delivered and removed.
//!
//! Every method is one redb transaction (a write shares its commit with other writes, see
//! `writer`): a message and its envelope are committed together, and [`Store::queue_save`]
//! records an outcome and removes a finished message atomically.

use std::sync::{Arc, Mutex};

use redb::{ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use super::spool::{self, SpoolFile};

/// A queued message's body, ready to be read.
pub enum QueuedBody {
    /// Kept in the store file (earlier releases; messages the proxy made itself).
    Bytes(Vec<u8>),
    /// Its file in `state_dir/queue`, open, and its length.
    File { file: std::fs::File, len: u64, path: std::path::PathBuf },
}
use super::{Pending, Store, StoreError};

const ENVELOPES: TableDefinition<u64, &str> = TableDefinition::new("queue_envelope");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_body");
const META: TableDefinition<&str, u64> = TableDefinition::new("queue_meta");
/// Bodies kept as files in `state_dir/queue` (schema 3; see `spool`): id → file name.
const BODY_FILES: TableDefinition<u64, &str> = TableDefinition::new("queue_body_file");

/// Attempt records kept per message; the oldest beyond this are dropped (the first one stays).
const MAX_ATTEMPTS_KEPT: usize = 30;

/// A queued message: its envelope and the state of its delivery. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// The account that submitted it; its credentials are used to relay it.
    pub login: String,
    /// The reverse path (`MAIL FROM`), possibly empty.
    pub from: String,
    pub params: MailParams,
    pub recipients: Vec<Recipient>,
    /// Bytes of the message as received (after un-dot-stuffing).
    pub size: u64,
    pub received_at: i64,
    pub next_attempt_at: i64,
    /// After this, pending recipients are given up and reported as failed.
    pub give_up_at: i64,
    pub attempts: Vec<Attempt>,
    /// Set once some recipient failed for good: a failure report must reach the sender's INBOX
    /// before the message may leave the queue.
    pub report_pending: bool,
    /// A chat message whose follow-up (its copy in Chats, see `smtp::receipts`) is still to
    /// be done once the provider has it; keeps it in the queue until then.
    #[serde(default)]
    pub chat_followup: bool,
}

/// `MAIL FROM` parameters to pass on to the provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MailParams {
    /// `BODY=8BITMIME`
    pub eight_bit: bool,
    /// `SMTPUTF8`
    pub smtputf8: bool,
    /// DSN `RET=FULL|HDRS`
    pub ret: Option<String>,
    /// DSN `ENVID=`, xtext-decoded.
    pub envid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// DSN `NOTIFY=` value as received, e.g. `SUCCESS,FAILURE`.
    pub notify: Option<String>,
    /// DSN `ORCPT=rfc822;` address, xtext-decoded.
    pub orcpt: Option<String>,
    pub state: RecipientState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecipientState {
    Pending,
    /// The provider accepted the message for this recipient (its reply).
    Delivered {
        at: i64,
        reply: String,
    },
    /// Refused for good, or given up (the reason, usually the provider's reply).
    Failed {
        at: i64,
        reply: String,
    },
}

/// One delivery attempt: when, and what came of it, in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: i64,
    pub result: String,
}

impl QueuedMessage {
    /// Nothing left to do: every recipient is settled and no report is owed.
    pub fn is_done(&self) -> bool {
        !self.report_pending
            && !self.chat_followup
            && self.recipients.iter().all(|r| r.state != RecipientState::Pending)
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(|r| r.state == RecipientState::Pending)
    }

    /// Appends an attempt record, keeping the first and the most recent ones.
    pub fn record_attempt(&mut self, at: i64, result: impl Into<String>) {
        if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
            self.attempts.remove(1);
        }
        self.attempts.push(Attempt { at, result: result.into() });
    }
}

/// Whether a read transaction may treat a missing table as empty.
pub(super) fn missing(e: &TableError) -> bool {
    matches!(e, TableError::TableDoesNotExist(_))
}

fn encode(msg: &QueuedMessage) -> String {
    serde_json::to_string(msg).expect("queue records always serialize")
}

fn decode(id: u64, json: &str) -> Result<QueuedMessage, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("queue entry {id}: {e}")))
}

/// How much one account may have waiting in the queue (`[queue]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCap {
    pub messages: u64,
    pub bytes: u64,
}

/// What an account has in the queue now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueUsage {
    pub messages: u64,
    pub bytes: u64,
}

impl QueueUsage {
    /// Why one more message of `size` bytes would go beyond `cap`, in words for the client.
    pub fn refusal(&self, cap: &QueueCap, size: u64) -> Option<String> {
        if self.messages >= cap.messages {
            Some(format!(
                "{} messages of this account are waiting for the provider (the limit is {})",
                self.messages, cap.messages
            ))
        } else if self.bytes.saturating_add(size) > cap.bytes {
            Some(format!(
                "{} bytes of this account's mail are waiting for the provider (the limit is {})",
                self.bytes, cap.bytes
            ))
        } else {
            None
        }
    }
}

/// The two fields usage needs; the rest of an envelope is skipped unread.
#[derive(Deserialize)]
struct Owner<'a> {
    #[serde(borrow)]
    login: std::borrow::Cow<'a, str>,
    size: u64,
}

fn usage_in(table: &impl ReadableTable<u64, &'static str>, login: &str) -> Result<QueueUsage, StoreError> {
    let mut usage = QueueUsage::default();
    for entry in table.iter()? {
        let (id, json) = entry?;
        let owner: Owner = serde_json::from_str(json.value())
            .map_err(|e| StoreError::Corrupt(format!("queue entry {}: {e}", id.value())))?;
        if owner.login == login {
            usage.messages += 1;
            usage.bytes = usage.bytes.saturating_add(owner.size);
        }
    }
    Ok(usage)
}

impl Store {
    /// Commits a new message and its envelope durably; its queue id once the commit is on disk.
    /// With a `cap`, the account's usage is checked in the same transaction, so concurrent
    /// submissions cannot slip past it together: beyond it, [`StoreError::QueueFull`] and nothing
    /// is stored.
    pub fn queue_insert(&self, msg: &QueuedMessage, body: Vec<u8>, cap: Option<QueueCap>) -> Pending<u64> {
        let size = body.len() as u64;
        self.insert_envelope(msg, size, cap, move |txn, id| {
            txn.open_table(BODIES)?.insert(id, body.as_slice())?;
            Ok(())
        })
    }

    /// As [`Store::queue_insert`] for a body written to a spool file (`msg.size` bytes): the
    /// file is synced and moved to the queue directory first, then named in the commit. On any
    /// failure the file is removed and nothing is queued.
    pub async fn queue_insert_spooled(
        &self,
        msg: &QueuedMessage,
        mut file: SpoolFile,
        cap: Option<QueueCap>,
    ) -> Result<u64, StoreError> {
        let dir = self.queue_dir();
        let file = tokio::task::spawn_blocking(move || {
            let synced = std::fs::File::open(file.path()).and_then(|f| f.sync_all());
            synced.map_err(|e| StoreError::from_io(file.path(), e))?;
            spool::private_dir(&dir)?;
            file.move_to(&dir).map_err(|e| StoreError::from_io(&dir, e))?;
            spool::sync_dir(&dir)?;
            Ok::<_, StoreError>(file)
        })
        .await
        .map_err(|e| StoreError::ReadFailed(e.to_string()))??;
        let name = file.name();
        let id = self
            .insert_envelope(msg, msg.size, cap, move |txn, id| {
                txn.open_table(BODY_FILES)?.insert(id, name.as_str())?;
                Ok(())
            })
            .await?;
        file.keep();
        Ok(id)
    }

    fn insert_envelope(
        &self,
        msg: &QueuedMessage,
        size: u64,
        cap: Option<QueueCap>,
        mut body: impl FnMut(&super::writer::Txn<'_>, u64) -> Result<(), StoreError> + Send + 'static,
    ) -> Pending<u64> {
        let (json, login) = (encode(msg), msg.login.clone());
        self.write(move |txn| {
            let mut envelopes = txn.open_table(ENVELOPES)?;
            // Refused before anything is written (see `StoreError::wrote_nothing`).
            if let Some(cap) = &cap
                && let Some(why) = usage_in(&envelopes, &login)?.refusal(cap, size)
            {
                return Err(StoreError::QueueFull(why));
            }
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_id", id + 1)?;
            envelopes.insert(id, json.as_str())?;
            drop((envelopes, meta));
            body(txn, id)?;
            Ok(id)
        })
    }

    /// The names of the queue's body files (to tell leftovers from bodies).
    pub(super) fn queue_body_files(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(BODY_FILES) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(Default::default()),
            Err(e) => return Err(e.into()),
        };
        let mut names = std::collections::HashSet::new();
        for entry in table.iter()? {
            names.insert(entry?.1.value().to_string());
        }
        Ok(names)
    }

    /// Forgets `id`'s body in this transaction; the name of its file, to remove once committed.
    fn remove_body(txn: &redb::WriteTransaction, id: u64) -> Result<Option<String>, StoreError> {
        txn.open_table(BODIES)?.remove(id)?;
        Ok(txn.open_table(BODY_FILES)?.remove(id)?.map(|name| name.value().to_string()))
    }

    /// A write that removes body files once it is committed: the slot the write fills with the
    /// name, and what removes the file after the commit.
    fn file_removal(&self) -> (Arc<Mutex<Option<String>>>, impl FnOnce(&bool) + Send + 'static) {
        let slot: Arc<Mutex<Option<String>>> = Arc::default();
        let (taken, dir) = (slot.clone(), self.queue_dir());
        (slot, move |_: &bool| {
            if let Some(name) = taken.lock().expect("body file slot").take() {
                spool::remove(&dir.join(name));
            }
        })
    }

    /// What `login` has in the queue now.
    pub fn queue_usage(&self, login: &str) -> Result<QueueUsage, StoreError> {
        let txn = self.begin_read()?;
        match txn.open_table(ENVELOPES) {
            Ok(table) => usage_in(&table, login),
            Err(e) if missing(&e) => Ok(QueueUsage::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every queued message, oldest first.
    pub fn queue_list(&self) -> Result<Vec<(u64, QueuedMessage)>, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(ENVELOPES) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, json) = entry?;
            out.push((id.value(), decode(id.value(), json.value())?));
        }
        Ok(out)
    }

    pub fn queue_get(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(ENVELOPES) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        table.get(id)?.map(|json| decode(id, json.value())).transpose()
    }

    /// The message bytes as received (from the store file, or from the body's file).
    pub fn queue_body(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.queue_body_open(id)? {
            None => Ok(None),
            Some(QueuedBody::Bytes(bytes)) => Ok(Some(bytes)),
            Some(QueuedBody::File { file, len, path }) => {
                use std::io::Read;
                let mut body = Vec::with_capacity(len as usize);
                (&file).read_to_end(&mut body).map_err(|source| StoreError::File { path, source })?;
                Ok(Some(body))
            }
        }
    }

    /// At most the first `max` bytes of the message (its header, for a report or a
    /// Message-ID), without reading the rest.
    pub fn queue_body_head(&self, id: u64, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.queue_body_open(id)? {
            None => Ok(None),
            Some(QueuedBody::Bytes(mut bytes)) => {
                bytes.truncate(max);
                Ok(Some(bytes))
            }
            Some(QueuedBody::File { file, path, .. }) => {
                use std::io::Read;
                let mut head = Vec::new();
                file.take(max as u64).read_to_end(&mut head).map_err(|source| StoreError::File { path, source })?;
                Ok(Some(head))
            }
        }
    }

    /// The message as received, to read as it is sent: the bytes (kept in the store file by
    /// earlier releases) or its file, opened (it stays readable if the message is dropped
    /// meanwhile).
    pub fn queue_body_open(&self, id: u64) -> Result<Option<QueuedBody>, StoreError> {
        let txn = self.begin_read()?;
        match txn.open_table(BODIES) {
            Ok(table) => {
                if let Some(body) = table.get(id)? {
                    return Ok(Some(QueuedBody::Bytes(body.value().to_vec())));
                }
            }
            Err(e) if missing(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let name = match txn.open_table(BODY_FILES) {
            Ok(table) => table.get(id)?.map(|n| n.value().to_string()),
            Err(e) if missing(&e) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(name) = name else { return Ok(None) };
        let path = self.queue_dir().join(name);
        let opened = std::fs::File::open(&path).and_then(|file| Ok((file.metadata()?.len(), file)));
        match opened {
            Ok((len, file)) => Ok(Some(QueuedBody::File { file, len, path })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::File { path, source }),
        }
    }

    /// Stores a message's new state, or removes it when [`QueuedMessage::is_done`], in one
    /// durable transaction, with the recipients it settled since the last save (see
    /// `deliveries`). `false` if the id is no longer queued (e.g. dropped by hand).
    pub fn queue_save(&self, id: u64, msg: &QueuedMessage) -> Pending<bool> {
        let (json, done, new) = (encode(msg), msg.is_done(), msg.clone());
        let (doomed, after) = self.file_removal();
        self.write_then(
            move |txn| {
                let mut envelopes = txn.open_table(ENVELOPES)?;
                let old = envelopes.get(id)?.map(|json| decode(id, json.value())).transpose()?;
                let existed = old.is_some();
                if let Some(old) = &old {
                    super::deliveries::record(txn, id, old, &new)?;
                }
                if existed {
                    if done {
                        envelopes.remove(id)?;
                        *doomed.lock().expect("body file slot") = Store::remove_body(txn, id)?;
                    } else {
                        envelopes.insert(id, json.as_str())?;
                    }
                }
                Ok(existed)
            },
            after,
        )
    }

    /// Removes a message whatever its state; `false` if there was none with this id.
    pub fn queue_remove(&self, id: u64) -> Pending<bool> {
        let (doomed, after) = self.file_removal();
        self.write_then(
            move |txn| {
                let existed = txn.open_table(ENVELOPES)?.remove(id)?.is_some();
                *doomed.lock().expect("body file slot") = Store::remove_body(txn, id)?;
                Ok(existed)
            },
            after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(rcpts: &[&str]) -> QueuedMessage {
        QueuedMessage {
            login: "alice@example.org".into(),
            from: "alice@example.org".into(),
            params: MailParams { eight_bit: true, ..Default::default() },
            recipients: rcpts
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    notify: None,
                    orcpt: None,
                    state: RecipientState::Pending,
                })
                .collect(),
            size: 5,
            received_at: 1,
            next_attempt_at: 1,
            give_up_at: 100,
            attempts: Vec::new(),
            report_pending: false,
            chat_followup: false,
        }
    }

    #[test]
    fn insert_list_save_remove_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.queue_list().unwrap().is_empty(), "a fresh store has no queue tables yet");
        let mut m = message(&["bob@example.org", "carol@example.org"]);
        let id = store.queue_insert(&m, b"hello".to_vec(), None).wait().unwrap();
        assert_eq!(store.queue_body(id).unwrap().unwrap(), b"hello");
        assert_eq!(store.queue_list().unwrap(), vec![(id, m.clone())]);

        m.recipients[0].state = RecipientState::Delivered { at: 2, reply: "250 ok".into() };
        m.record_attempt(2, "1 delivered, 1 deferred");
        assert!(store.queue_save(id, &m).wait().unwrap());
        assert_eq!(store.queue_get(id).unwrap().unwrap(), m);

        m.recipients[1].state = RecipientState::Failed { at: 3, reply: "550 no".into() };
        m.report_pending = true;
        store.queue_save(id, &m).wait().unwrap();
        assert!(store.queue_get(id).unwrap().is_some(), "kept until the report is delivered");
        m.report_pending = false;
        store.queue_save(id, &m).wait().unwrap();
        assert!(store.queue_get(id).unwrap().is_none() && store.queue_body(id).unwrap().is_none());
        assert!(!store.queue_save(id, &m).wait().unwrap(), "a removed message stays removed");

        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let id2 = store.queue_insert(&message(&["bob@example.org"]), b"x".to_vec(), None).wait().unwrap();
        assert!(id2 > id);
        assert!(store.queue_remove(id2).wait().unwrap());
        assert!(!store.queue_remove(id2).wait().unwrap());
    }

    #[test]
    fn the_cap_counts_one_account_and_refuses_without_storing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cap = QueueCap { messages: 2, bytes: 12 };
        let alice = message(&["bob@example.org"]);
        let mut carol = message(&["bob@example.org"]);
        carol.login = "carol@example.org".into();
        assert_eq!(store.queue_usage("alice@example.org").unwrap(), QueueUsage::default());
        let first = store.queue_insert(&alice, b"hello".to_vec(), Some(cap)).wait().unwrap();
        store.queue_insert(&carol, b"other account".to_vec(), None).wait().unwrap();
        let err = store.queue_insert(&alice, b"too big!".to_vec(), Some(cap)).wait().unwrap_err().to_string();
        assert!(err.contains("5 bytes") && err.contains("limit is 12"), "{err}");
        store.queue_insert(&alice, b"small".to_vec(), Some(cap)).wait().unwrap();
        let err = store.queue_insert(&alice, b"x".to_vec(), Some(cap)).wait().unwrap_err();
        assert!(matches!(err, StoreError::QueueFull(ref why) if why.contains("2 messages")), "{err}");
        assert_eq!(store.queue_usage("alice@example.org").unwrap(), QueueUsage { messages: 2, bytes: 10 });
        assert_eq!(store.queue_list().unwrap().len(), 3, "refused messages are not stored");
        store.queue_remove(first).wait().unwrap();
        store.queue_insert(&alice, b"x".to_vec(), Some(cap)).wait().expect("room again once one left");
    }

    #[test]
    fn attempt_history_is_bounded() {
        let mut m = message(&["bob@example.org"]);
        for i in 0..100 {
            m.record_attempt(i, format!("try {i}"));
        }
        assert_eq!(m.attempts.len(), MAX_ATTEMPTS_KEPT);
        assert_eq!(m.attempts[0].result, "try 0");
        assert_eq!(m.attempts.last().unwrap().result, "try 99");
    }
}
