//! Recent deliveries: what became of each recipient of queued mail (the provider took it, or
//! refused it for good), kept for [`DELIVERIES_KEPT_SECS`] after the fact, so that
//! `coi-proxy queue list` can still answer "did my mail to X go out?" once the message has left
//! the queue.
//!
//! `queue_delivered` is keyed by a sequence number (`queue_meta` `next_delivery`), so rows are
//! in the order they happened and the oldest are pruned from the front. The rows are written by
//! [`Store::queue_save`] in the transaction that records the outcome, so a delivery is listed
//! exactly when the queue says it happened. A store of an older version simply has no such
//! table yet: nothing is listed until the first delivery (no schema change: older versions
//! ignore the table).

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::queue::{QueuedMessage, RecipientState, missing};
use super::writer::Txn;
use super::{Store, StoreError};

const DELIVERIES: TableDefinition<u64, &str> = TableDefinition::new("queue_delivered");
const META: TableDefinition<&str, u64> = TableDefinition::new("queue_meta");

/// How long a delivery stays listed: a week.
pub const DELIVERIES_KEPT_SECS: i64 = 7 * 24 * 60 * 60;
/// Rows pruned per write at most, so that one save never does much work.
const PRUNE_PER_WRITE: usize = 64;

/// One recipient's outcome. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The queue id the message had (`#3` in `queue list`).
    pub id: u64,
    pub login: String,
    pub recipient: String,
    pub at: i64,
    /// `true`: the provider took it; `false`: it was refused for good (or given up).
    pub delivered: bool,
    /// The provider's answer (`250 2.0.0 Ok: queued as …`) or why it was given up.
    pub reply: String,
}

/// Records the recipients whose state went from pending to delivered or failed between `old`
/// and `new` (the same message before and after an attempt), and prunes rows older than the
/// retention, oldest first.
pub(super) fn record(txn: &Txn<'_>, id: u64, old: &QueuedMessage, new: &QueuedMessage) -> Result<(), StoreError> {
    let settled: Vec<Delivery> = new
        .recipients
        .iter()
        .filter(|r| old.recipients.iter().any(|o| o.address == r.address && o.state == RecipientState::Pending))
        .filter_map(|r| {
            match &r.state {
                RecipientState::Delivered { at, reply } => Some((true, *at, reply)),
                RecipientState::Failed { at, reply } => Some((false, *at, reply)),
                RecipientState::Pending => None,
            }
            .map(|(delivered, at, reply)| Delivery {
                id,
                login: new.login.clone(),
                recipient: r.address.clone(),
                at,
                delivered,
                reply: reply.clone(),
            })
        })
        .collect();
    if settled.is_empty() {
        return Ok(());
    }
    let mut meta = txn.open_table(META)?;
    let mut next = meta.get("next_delivery")?.map(|v| v.value()).unwrap_or(1);
    let mut table = txn.open_table(DELIVERIES)?;
    for delivery in &settled {
        let json = serde_json::to_string(delivery).expect("a delivery serializes");
        table.insert(next, json.as_str())?;
        next += 1;
    }
    meta.insert("next_delivery", next)?;
    let cutoff = crate::clock::now() - DELIVERIES_KEPT_SECS;
    let mut old_keys = Vec::new();
    for entry in table.iter()?.take(PRUNE_PER_WRITE) {
        let (key, json) = entry?;
        match serde_json::from_str::<Delivery>(json.value()) {
            Ok(d) if d.at >= cutoff => break,
            _ => old_keys.push(key.value()),
        }
    }
    for key in old_keys {
        table.remove(key)?;
    }
    Ok(())
}

impl Store {
    /// The deliveries of the last [`DELIVERIES_KEPT_SECS`], oldest first. Grows with the
    /// traffic: call it off the runtime ([`Store::read`]).
    pub fn deliveries(&self) -> Result<Vec<Delivery>, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(DELIVERIES) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let cutoff = crate::clock::now() - DELIVERIES_KEPT_SECS;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, json) = entry?;
            let d: Delivery = serde_json::from_str(json.value())
                .map_err(|e| StoreError::Corrupt(format!("delivery {}: {e}", key.value())))?;
            if d.at >= cutoff {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MailParams, Recipient};

    fn message(now: i64) -> QueuedMessage {
        QueuedMessage {
            login: "alice@example.org".into(),
            from: "alice@example.org".into(),
            params: MailParams::default(),
            recipients: ["bob@example.org", "carol@example.org"]
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    notify: None,
                    orcpt: None,
                    state: RecipientState::Pending,
                })
                .collect(),
            size: 1,
            received_at: now,
            next_attempt_at: now,
            give_up_at: now + 1000,
            attempts: Vec::new(),
            report_pending: false,
            chat_followup: false,
        }
    }

    #[test]
    fn settled_recipients_are_kept_after_the_message_left_and_pruned_after_a_week() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.deliveries().unwrap().is_empty(), "none in a fresh store");
        let now = crate::clock::now();
        let mut m = message(now);
        let id = store.queue_insert(&m, b"x".to_vec(), None).wait().unwrap();
        m.recipients[0].state = RecipientState::Delivered { at: now, reply: "250 2.0.0 ok".into() };
        store.queue_save(id, &m).wait().unwrap();
        // Saving again records nothing new.
        store.queue_save(id, &m).wait().unwrap();
        m.recipients[1].state = RecipientState::Failed { at: now, reply: "550 5.1.1 no such user".into() };
        m.report_pending = false;
        store.queue_save(id, &m).wait().unwrap();
        assert!(store.queue_get(id).unwrap().is_none(), "the message left the queue");
        let listed = store.deliveries().unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!((listed[0].recipient.as_str(), listed[0].delivered), ("bob@example.org", true));
        assert_eq!(
            (listed[1].id, listed[1].delivered, listed[1].reply.as_str()),
            (id, false, "550 5.1.1 no such user")
        );

        // A delivery older than the retention is not listed (and pruned from the front by later
        // writes).
        let mut old = message(now);
        let old_id = store.queue_insert(&old, b"x".to_vec(), None).wait().unwrap();
        old.recipients[0].state =
            RecipientState::Delivered { at: now - DELIVERIES_KEPT_SECS - 10, reply: "250".into() };
        store.queue_save(old_id, &old).wait().unwrap();
        assert_eq!(store.deliveries().unwrap().len(), 2);
    }
}
