//! The durable queue's two ends: [`Queue::enqueue`] commits a submitted message (the `250` is
//! sent only after that), and [`run_relay`] hands queued mail to the provider.
//!
//! The relay task keeps the schedule (id → next attempt, login) in memory, loaded from the
//! store at start and fed by `enqueue`; the store stays the truth. Messages are sent per account,
//! one connection for all that are due, at most [`MAX_CONNECTIONS`] accounts at once. After each
//! message the outcome is committed before anything else happens, so a crash can duplicate at
//! most the message whose `250` had just arrived.
//!
//! Credentials: an account's `password_command`, else the password of its last login through
//! the proxy (IMAP or SMTP), held in memory only. After a restart, without a `password_command`,
//! an account's mail therefore waits until its user logs in again; the queue checks every few
//! seconds. An account with `[account.oauth2]` signs in with its grant and never waits for a
//! login.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::Smtp;
use super::relay::{Reply, SmtpClient, Transaction};
use super::report;
use super::session::{QueueRefusal, Submission};
use crate::account::{Credential, CredentialError};
use crate::context::Context;
use crate::imap::upstream::{OwnWorkError, Upstream};
use crate::oauth;
use crate::store::{QueueCap, QueuedMessage, RecipientState, SpoolFile, Store, StoreError};

/// Accounts relayed to at the same time.
pub const MAX_CONNECTIONS: usize = 4;
/// How often mail waiting for an account's password checks whether one is known now.
const CREDENTIAL_POLL: i64 = 3;
/// Longest sleep of the relay task when nothing is due (it also wakes on new mail).
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub use crate::clock::now;

/// A message's bytes on their way into the queue.
#[derive(Debug)]
pub enum Body {
    /// In memory (read receipts, and what the OpenPGP gateway made).
    Bytes(Vec<u8>),
    /// In a spool file, as the client sent it (SMTP DATA).
    Spooled(SpoolFile),
}

/// The submission side's handle on the queue.
pub struct Queue {
    /// The store, the relay's wake-ups, and `[queue]` read at each use so that a reload applies
    /// to the next message.
    shared: Arc<Context>,
}

/// What the relay task learns from `enqueue` (through `Context::queue`): a new id and its account.
pub type Wakeups = mpsc::UnboundedReceiver<(u64, String)>;

impl Queue {
    pub fn new(shared: Arc<Context>) -> Queue {
        Queue { shared }
    }

    /// Commits a client's message durably (redb commit = fsync) and wakes the relay; the id
    /// on success. The account's queue limits apply.
    pub async fn enqueue(&self, sub: Submission, body: Body) -> Result<u64, QueueRefusal> {
        self.insert(sub, body, Some(cap(&self.shared.config().queue))).await
    }

    /// As [`Queue::enqueue`] for a read receipt the proxy sends itself: outside the account's
    /// limits, since the user's read action cannot be repeated later.
    pub async fn enqueue_receipt(&self, sub: Submission, body: Body) -> Result<u64, QueueRefusal> {
        self.insert(sub, body, None).await
    }

    /// Whether `login` has room for one more message of about `size` bytes (0: unknown).
    pub async fn room(&self, login: String, size: u64) -> Result<(), QueueRefusal> {
        let cap = cap(&self.shared.config().queue);
        let usage = self.shared.store.read(move |s| s.queue_usage(&login)).await.map_err(|e| {
            error!("cannot read the queue: {e}");
            QueueRefusal::Unavailable("the queue is not readable".into())
        })?;
        usage.refusal(&cap, size).map_or(Ok(()), |why| Err(QueueRefusal::Full(why)))
    }

    async fn insert(&self, sub: Submission, body: Body, cap: Option<QueueCap>) -> Result<u64, QueueRefusal> {
        let at = now();
        let size = match &body {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::Spooled(_) => sub.size,
        };
        let mut msg = QueuedMessage {
            login: sub.login,
            from: sub.from,
            params: sub.params,
            recipients: sub.recipients,
            size,
            received_at: at,
            next_attempt_at: at,
            give_up_at: at.saturating_add(self.shared.config().queue.give_up_after_secs as i64),
            attempts: Vec::new(),
            report_pending: false,
            chat_followup: false,
        };
        crate::receipts::prepare(
            &mut msg,
            match &body {
                Body::Bytes(bytes) => bytes,
                Body::Spooled(_) => &sub.header,
            },
        );
        let login = msg.login.clone();
        let rcpts = msg.recipients.len();
        let stored = match body {
            Body::Bytes(bytes) => self.shared.store.queue_insert(&msg, bytes, cap).await,
            Body::Spooled(file) => self.shared.store.queue_insert_spooled(&msg, file, cap).await,
        };
        let id = stored.map_err(|e| match e {
            StoreError::QueueFull(why) => {
                warn!(size, "message refused: {why}");
                QueueRefusal::Full(why)
            }
            StoreError::DiskFull => {
                error!(size, "cannot queue a message: the disk under state_dir is full");
                QueueRefusal::NoSpace
            }
            e => {
                error!("cannot queue a message: {e}");
                QueueRefusal::Unavailable("the queue is not writable".into())
            }
        })?;
        info!(id, rcpts, size, "message queued");
        self.shared.queue.wake(id, login);
        Ok(id)
    }
}

/// An account's limits in the queue, from `[queue]`.
fn cap(settings: &crate::config::Queue) -> QueueCap {
    QueueCap { messages: settings.max_messages_per_account, bytes: settings.max_bytes_per_account }
}

/// Delay before the next attempt after `attempts` attempts: doubling from the initial delay.
fn backoff(settings: &crate::config::Queue, attempts: usize) -> i64 {
    let doublings = attempts.saturating_sub(1).min(30) as u32;
    let delay = settings.retry_initial_secs.saturating_mul(1u64 << doublings).min(settings.retry_max_secs);
    delay as i64
}

/// A finished batch: its account and each message's next due time (`None`: gone).
type BatchResult = (String, Vec<(u64, Option<i64>)>);

struct Due {
    at: i64,
    login: String,
}

/// Relays queued mail until shutdown. `alive` is held so that shutdown waits for the attempts
/// in flight (an interrupted attempt is retried after the restart).
pub async fn run_relay(
    ctx: Arc<Smtp>,
    mut wakeups: Wakeups,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut schedule: BTreeMap<u64, Due> = BTreeMap::new();
    match ctx.shared.store.read(|s| s.queue_list()).await {
        Ok(list) => {
            if !list.is_empty() {
                info!(messages = list.len(), "resuming the queue");
            }
            for (id, msg) in list {
                schedule.insert(id, Due { at: msg.next_attempt_at, login: msg.login });
            }
        }
        Err(e) => error!("cannot read the queue: {e}; queued mail waits for a restart"),
    }
    let mut busy: HashSet<String> = HashSet::new();
    let mut waiting: HashSet<String> = HashSet::new();
    let mut jobs: JoinSet<BatchResult> = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let t = now();
        let mut due: HashMap<String, Vec<u64>> = HashMap::new();
        for (id, d) in schedule.iter().filter(|(_, d)| d.at <= t && !busy.contains(&d.login)) {
            due.entry(d.login.clone()).or_default().push(*id);
        }
        for (login, ids) in due {
            if busy.len() >= MAX_CONNECTIONS {
                break;
            }
            match ctx.shared.credentials.credential(&ctx.shared.config(), &login).await {
                Ok(credential) => {
                    if waiting.remove(&login) {
                        info!(login, "password known now; relaying the waiting mail");
                    }
                    ctx.waits.set(&login, "being sent now".into());
                    busy.insert(login.clone());
                    jobs.spawn(deliver_batch(ctx.clone(), login, credential, ids));
                }
                Err(e) => {
                    ctx.waits.set(&login, match &e {
                        CredentialError::Unknown { .. } => format!(
                            "no password known for {login} until it logs in through the proxy (IMAP or SMTP), or set password_command"
                        ),
                        e => e.to_string(),
                    });
                    if waiting.insert(login.clone()) {
                        match e {
                            CredentialError::Unknown { .. } => info!(
                                login,
                                messages = ids.len(),
                                "queued mail waits: no password known for this account until it logs in through the proxy (or set password_command)"
                            ),
                            e => warn!(login, "queued mail waits: {e}"),
                        }
                    }
                    for id in ids {
                        if let Some(d) = schedule.get_mut(&id) {
                            d.at = t + CREDENTIAL_POLL;
                        }
                    }
                }
            }
        }
        let next = schedule.values().filter(|d| !busy.contains(&d.login)).map(|d| d.at).min();
        let sleep = match next {
            Some(at) => Duration::from_secs(at.saturating_sub(now()).clamp(0, MAX_SLEEP.as_secs() as i64) as u64),
            None => MAX_SLEEP,
        };
        tokio::select! {
            Some((id, login)) = wakeups.recv() => {
                schedule.insert(id, Due { at: now(), login });
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => match done {
                Ok((login, results)) => {
                    busy.remove(&login);
                    ctx.waits.clear(&login);
                    for (id, next) in results {
                        match next {
                            Some(at) => if let Some(d) = schedule.get_mut(&id) { d.at = at },
                            None => { schedule.remove(&id); }
                        }
                    }
                }
                Err(e) => {
                    // A panicked job: its account is retried later (`busy` cannot be cleared
                    // without its name, so restart the bookkeeping for all).
                    error!("relay job failed: {e}");
                    busy.clear();
                }
            },
            _ = tokio::time::sleep(sleep), if next.is_some() || jobs.is_empty() => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let attempts in flight finish (bounded by the daemon's shutdown grace period).
    while jobs.join_next().await.is_some() {}
    drop(alive);
}

/// One account's due messages: relay what is pending, give up what is too old, deliver the
/// failure reports owed. Returns each id's next due time (`None`: gone from the queue).
async fn deliver_batch(ctx: Arc<Smtp>, login: String, credential: Credential, ids: Vec<u64>) -> BatchResult {
    let store = &ctx.shared.store;
    let t = now();
    let mut results = Vec::new();
    let mut msgs: Vec<(u64, QueuedMessage)> = Vec::new();
    for id in ids {
        match store.queue_get(id) {
            Ok(Some(msg)) => msgs.push((id, msg)),
            Ok(None) => results.push((id, None)),
            Err(e) => {
                error!(id, "cannot read a queued message: {e}");
                results.push((id, Some(t + 60)));
            }
        }
    }

    for (id, msg) in msgs.iter_mut() {
        if t >= msg.give_up_at && msg.pending().next().is_some() {
            let last = msg.attempts.last().map_or("no attempt was possible".to_string(), |a| a.result.clone());
            let why = format!(
                "gave up after {} attempts in {} hours; last result: {last}",
                msg.attempts.len(),
                (t - msg.received_at) / 3600
            );
            warn!(id = *id, "{why}");
            for r in msg.recipients.iter_mut().filter(|r| r.state == RecipientState::Pending) {
                r.state = RecipientState::Failed { at: t, reply: why.clone() };
            }
            msg.report_pending = true;
            msg.record_attempt(t, why);
            save(store, *id, msg).await;
        }
    }

    if msgs.iter().any(|(_, m)| m.pending().next().is_some()) {
        crate::receipts::before_relay(store, &msgs).await;
        relay(&ctx, &login, &credential, &mut msgs).await;
    }
    if msgs.iter().any(|(_, m)| m.chat_followup) {
        super::receipts::follow_up(&ctx, &login, &credential, &mut msgs).await;
    }
    if msgs.iter().any(|(_, m)| m.report_pending) {
        send_reports(&ctx, &login, &credential, &mut msgs).await;
    }
    for (id, msg) in msgs {
        results.push((id, (!msg.is_done()).then_some(msg.next_attempt_at)));
    }
    // Done sending; the relay task clears it too when it takes the results.
    ctx.waits.clear(&login);
    (login, results)
}

/// Saves a message's state (removing it when done); errors are logged, the attempt stays
/// valid in memory and is retried from the stored state after a restart.
pub(super) async fn save(store: &Store, id: u64, msg: &QueuedMessage) {
    if let Err(e) = store.queue_save(id, msg).await {
        error!(id, "cannot record a delivery attempt: {e}");
    }
}

/// Records a temporary failure of the whole message and schedules the next attempt.
async fn defer(ctx: &Smtp, id: u64, msg: &mut QueuedMessage, why: &str) {
    let t = now();
    msg.record_attempt(t, format!("deferred: {why}"));
    msg.next_attempt_at = t + backoff(&ctx.shared.config().queue, msg.attempts.len());
    info!(id, retry_in_secs = msg.next_attempt_at - t, "delivery deferred: {why}");
    crate::metrics::relayed("deferred", msg.pending().count() as u64);
    save(&ctx.shared.store, id, msg).await;
}

async fn relay(ctx: &Smtp, login: &str, credential: &Credential, msgs: &mut [(u64, QueuedMessage)]) {
    let shared = &ctx.shared;
    let pending = |m: &QueuedMessage| m.pending().next().is_some();
    let Some(provider) = shared.config().smtp_provider_for(login) else {
        let why = format!("no submission server is configured for {login} ([upstream] smtp or [[account]] smtp)");
        for (id, msg) in msgs.iter_mut().filter(|(_, m)| pending(m)) {
            defer(ctx, *id, msg, &why).await;
        }
        return;
    };
    let mut client =
        match SmtpClient::connect(&provider, &shared.upstream_tls, shared.config().limits.connect_timeout()).await {
            Ok(client) => client,
            Err(e) => {
                for (id, msg) in msgs.iter_mut().filter(|(_, m)| pending(m)) {
                    defer(ctx, *id, msg, &e.to_string()).await;
                }
                return;
            }
        };
    ctx.caps.record(&provider, &client.caps);
    let auth = match credential {
        Credential::Password(password) => client.authenticate(login, password).await.map(Ok),
        Credential::OAuth2 => match oauth::access_token(shared, login, None).await {
            Ok(token) => client.authenticate_oauth2(shared, login, token).await,
            Err(e) => Ok(Err(e)),
        },
    };
    let auth = match auth {
        Ok(Ok(reply)) if reply.is_positive() => None,
        Ok(Ok(reply)) => {
            if !reply.is_transient() && matches!(credential, Credential::Password(_)) {
                // The remembered password is stale: wait for the next login.
                shared.credentials.forget(login);
            }
            Some(format!("{} refused the login: {reply}", client.server))
        }
        // The grant is gone (the reason says to run `oauth authorize`) or the identity provider
        // is unreachable: the mail waits.
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = auth {
        for (id, msg) in msgs.iter_mut().filter(|(_, m)| pending(m)) {
            defer(ctx, *id, msg, &why).await;
        }
        client.quit().await;
        return;
    }
    let mut broken: Option<String> = None;
    for (id, msg) in msgs.iter_mut().filter(|(_, m)| pending(m)) {
        if let Some(why) = &broken {
            defer(ctx, *id, msg, why).await;
            continue;
        }
        let i = *id;
        let body = match shared.store.read(move |s| s.queue_body_open(i)).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                error!(id = *id, "a queued message has no body in the store");
                let reply = Reply { code: 554, text: "5.3.0 the message was lost from the proxy's store".into() };
                settle(ctx, *id, msg, None, Some(&reply)).await;
                continue;
            }
            Err(e) => {
                defer(ctx, *id, msg, &format!("cannot read the message: {e}")).await;
                continue;
            }
        };
        if msg.params.smtputf8 && !client.caps.smtputf8 {
            let reply = Reply { code: 553, text: "5.6.7 the provider does not support SMTPUTF8 any more".into() };
            settle(ctx, *id, msg, None, Some(&reply)).await;
            continue;
        }
        match client.send(msg, body).await {
            Ok(tx) => settle(ctx, *id, msg, Some(&tx), None).await,
            Err(e) => {
                let why = e.to_string();
                defer(ctx, *id, msg, &why).await;
                broken = Some(why);
            }
        }
    }
    if broken.is_none() {
        client.quit().await;
    }
}

/// Applies the provider's replies to each pending recipient (`all` overrides for every one) and
/// commits the result at once.
async fn settle(ctx: &Smtp, id: u64, msg: &mut QueuedMessage, tx: Option<&Transaction>, all: Option<&Reply>) {
    let t = now();
    let (mut delivered, mut failed, mut deferred) = (0, 0, Vec::new());
    for r in msg.recipients.iter_mut().filter(|r| r.state == RecipientState::Pending) {
        let reply = all.or_else(|| tx.and_then(|tx| tx.outcome(&r.address)));
        match reply {
            Some(reply) if reply.is_positive() => {
                r.state = RecipientState::Delivered { at: t, reply: reply.to_string() };
                delivered += 1;
            }
            Some(reply) if !reply.is_transient() => {
                r.state = RecipientState::Failed { at: t, reply: reply.to_string() };
                failed += 1;
            }
            Some(reply) => deferred.push(reply.to_string()),
            None => deferred.push("no reply".into()),
        }
    }
    if failed > 0 {
        msg.report_pending = true;
    }
    crate::metrics::relayed("delivered", delivered);
    crate::metrics::relayed("refused", failed);
    crate::metrics::relayed("deferred", deferred.len() as u64);
    let mut summary = format!("delivered to {delivered}");
    if failed > 0 {
        summary.push_str(&format!(", refused for {failed}"));
    }
    if !deferred.is_empty() {
        summary.push_str(&format!(", deferred for {}: {}", deferred.len(), deferred[0]));
    }
    msg.record_attempt(t, summary.clone());
    if !deferred.is_empty() {
        msg.next_attempt_at = t + backoff(&ctx.shared.config().queue, msg.attempts.len());
    }
    info!(id, "relayed: {summary}");
    save(&ctx.shared.store, id, msg).await;
}

/// Puts a failure report into the sender's INBOX for every message that owes one.
async fn send_reports(ctx: &Smtp, login: &str, credential: &Credential, msgs: &mut [(u64, QueuedMessage)]) {
    let shared = &ctx.shared;
    let mut upstream: Option<Upstream> = None;
    for (id, msg) in msgs.iter_mut().filter(|(_, m)| m.report_pending) {
        let result: Result<(), OwnWorkError> = async {
            if upstream.is_none() {
                upstream = Some(Upstream::open(shared, login, credential).await?);
            }
            let i = *id;
            // Only the header is quoted: read no more of the message than it can take.
            let body = shared.store.read(move |s| s.queue_body_head(i, report::MAX_READ)).await?.unwrap_or_default();
            let report = report::failure_report(*id, msg, &body, &super::hostname(), now());
            let up = upstream.as_mut().expect("connected above");
            match up.append("INBOX", "", &report).await {
                Ok(reply) if reply.ok() => Ok(()),
                Ok(reply) => Err(OwnWorkError::Refused { command: "APPEND", status: reply.status_text() }),
                Err(e) => {
                    upstream = None;
                    Err(e.into())
                }
            }
        }
        .await;
        match result {
            Ok(()) => {
                info!(id = *id, "failure report put into the sender's INBOX");
                msg.report_pending = false;
                save(&shared.store, *id, msg).await;
            }
            Err(why) => {
                let t = now();
                msg.next_attempt_at = t + backoff(&shared.config().queue, msg.attempts.len().max(1));
                warn!(id = *id, "cannot deliver the failure report yet: {why}");
                save(&shared.store, *id, msg).await;
            }
        }
    }
    debug!(login, "reports done");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let s = crate::config::Queue {
            retry_initial_secs: 60,
            retry_max_secs: 3600,
            give_up_after_secs: 1,
            ..Default::default()
        };
        let delays: Vec<i64> = (1..=8).map(|n| backoff(&s, n)).collect();
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(&s, 1000), 3600);
    }
}
