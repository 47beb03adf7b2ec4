//! What every edge and wing is handed: the configuration in force, the store and the key that
//! seals its secrets, the accounts and their credentials, TLS towards providers and clients, the
//! session caps, the shutdown signal, and the channels to the long-running tasks (the worker
//! supervisor, the receipts agent, the queue's relay, the Delta Chat notifier). Built once by
//! `app`, which also starts the tasks that read the channels; nothing here starts anything, so a
//! wing that needs a worker asks for one and never spawns it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::account::{Accounts, Credentials};
use crate::config::Config;
use crate::limits::Sessions;
use crate::limits::budget::Budget;
use crate::limits::logins::Logins;
use crate::seal::SealCell;
use crate::secret::Secret;
use crate::store::{OAuthGrant, PushSubscription, Store};
use crate::tls::UpstreamTls;

/// The handles, shared by every session, worker and task (`Arc<Context>`).
pub struct Context {
    /// The configuration in force; `reload` swaps it (sessions keep the one they started with
    /// for the values they already read).
    config: RwLock<Arc<Config>>,
    pub upstream_tls: UpstreamTls,
    pub acceptor: TlsAcceptor,
    pub credentials: Credentials,
    pub store: Store,
    /// Seals the secrets the store keeps (OAuth2 tokens, local password hashes, OpenPGP secret
    /// keys, cached decrypted views): one key, shared with the OpenPGP gateway; made at its first
    /// use when nothing needed it at start.
    pub seal: Arc<SealCell>,
    /// Every account seen since start: COI settings, worker nudges, verdicts.
    pub accounts: Accounts,
    /// Open sessions (IMAP and SMTP) per client address, for `[limits] max_sessions*`.
    pub sessions: Sessions,
    /// The login gate: back-off per client address and per account, verified passwords.
    pub logins: Logins,
    /// The memory budget (`[limits] max_memory`, `max_memory_per_account`) that everything a
    /// peer makes the proxy hold whole draws from.
    pub memory: Budget,
    /// Turns true when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Asks the worker supervisor for an account's worker.
    pub workers: Workers,
    /// Hands work to the receipts agent (which runs with the SMTP side).
    pub receipts: Receipts,
    /// Wakes the queue's relay task for a message.
    pub queue: QueueWake,
    /// Tells the Delta Chat notifier about new mail for an account.
    pub notify: Notify,
    /// The cluster (`[cluster]`): set by `app` before the context is shared; `None` for one
    /// instance with local state.
    pub cluster: Option<Arc<dyn Cluster>>,
}

/// The other ends of the context's channels, for the tasks `app` starts.
pub struct Receivers {
    pub workers: mpsc::UnboundedReceiver<String>,
    pub receipts: mpsc::UnboundedReceiver<ReceiptJob>,
    pub queue: mpsc::UnboundedReceiver<(u64, String)>,
    pub notify: mpsc::UnboundedReceiver<String>,
}

impl Context {
    pub fn new(
        config: Config,
        acceptor: TlsAcceptor,
        store: Store,
        seal: impl Into<SealCell>,
        shutdown: watch::Receiver<bool>,
    ) -> (Context, Receivers) {
        let (workers, workers_rx) = mpsc::unbounded_channel();
        let (receipts, receipts_rx) = mpsc::unbounded_channel();
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let (notify, notify_rx) = mpsc::unbounded_channel();
        let memory = Budget::new(config.limits.max_memory, config.limits.max_memory_per_account);
        let context = Context {
            config: RwLock::new(Arc::new(config)),
            upstream_tls: UpstreamTls::default(),
            acceptor,
            credentials: Credentials::default(),
            store,
            seal: Arc::new(seal.into()),
            accounts: Accounts::default(),
            sessions: Sessions::default(),
            logins: Logins::default(),
            memory,
            shutdown,
            workers: Workers(workers),
            receipts: Receipts(receipts),
            queue: QueueWake(queue),
            notify: Notify(notify),
            cluster: None,
        };
        let receivers = Receivers { workers: workers_rx, receipts: receipts_rx, queue: queue_rx, notify: notify_rx };
        (context, receivers)
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// Puts a new configuration in force for everything that reads it from now on.
    pub fn set_config(&self, config: Config) {
        self.memory.set_limits(config.limits.max_memory, config.limits.max_memory_per_account);
        *self.config.write().expect("config lock") = Arc::new(config);
    }

    /// Hands a change of shared state to the cluster (etcd) before it counts; a no-op for one
    /// instance.
    pub async fn publish(&self, change: SharedChange) -> Result<(), ClusterError> {
        match &self.cluster {
            Some(cluster) => cluster.publish(change).await,
            None => Ok(()),
        }
    }
}

/// A boxed future, for the object-safe [`Cluster`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The accounts this instance owns, each with its fencing token (the owner key's
/// create_revision: a later owner always has a larger one).
pub type Owned = Arc<BTreeMap<String, i64>>;

/// The cluster as the worker and the wings see it (implemented by the `cluster` edge over
/// etcd): who owns which account, the owner's fenced writes, and the shared state's writes.
pub trait Cluster: Send + Sync {
    /// The accounts owned now; changes when one is taken or lost (the lease gone).
    fn owned(&self) -> watch::Receiver<Owned>;
    /// Asks to own `login`, an account that needs a worker (taken when the load allows).
    fn want(&self, login: &str);
    /// Where the account's worker stopped last: INBOX's UIDVALIDITY and next UID to classify.
    fn progress(&self, login: String) -> BoxFuture<'_, Result<Option<(u32, u32)>, ClusterError>>;
    /// Records the worker's progress, only while `fence` is still the owner's token.
    fn save_progress(&self, login: String, fence: i64, position: (u32, u32))
    -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Claims the one push of `channel` about INBOX message (UIDVALIDITY, UID): `true` for the
    /// first claim while `fence` owns the account, `false` when it was claimed before.
    fn claim_push(
        &self,
        channel: PushChannel,
        login: String,
        fence: i64,
        message: (u32, u32),
    ) -> BoxFuture<'_, Result<bool, ClusterError>>;
    /// Whether `fence` still owns the account (checked right before a COPY that could double).
    fn still_owner(&self, login: String, fence: i64) -> BoxFuture<'_, Result<bool, ClusterError>>;
    /// Writes a change of shared state to etcd (sealed where secret); every instance's store
    /// follows by watch.
    fn publish(&self, change: SharedChange) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// The account's OpenPGP key (sealed, as the store keeps it) that etcd holds, if any.
    fn shared_account_key(&self, login: String) -> BoxFuture<'_, Result<Option<Vec<u8>>, ClusterError>>;
    /// Offers `sealed` as the account's first OpenPGP key (create-if-absent): the key in force
    /// for the whole cluster, ours or the one another instance made first.
    fn first_account_key(&self, login: String, sealed: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, ClusterError>>;
}

/// Shared state that changes on one instance and must count on all.
#[derive(Clone)]
pub enum SharedChange {
    /// A METADATA entry the proxy keeps (a provider without METADATA): set or removed.
    Metadata { login: String, mailbox: Vec<u8>, entry: String, value: Option<Vec<u8>> },
    /// A WebPush subscription: stored (new or validated) or removed.
    Push { login: String, id: String, subscription: Option<PushSubscription> },
    /// A Delta Chat device token: set (at `set_at`, Unix seconds) or gone (`None`: the notifier
    /// said so).
    DeviceToken { login: String, token: Secret, set_at: Option<u64> },
    /// An account's OAuth2 grant as `oauth authorize` or a refresh left it.
    OAuthGrant { login: String, grant: OAuthGrant },
    /// An account's OpenPGP state, as the store keeps it: set or removed.
    OpenPgp { login: String, entry: OpenPgpEntry, value: Option<Vec<u8>> },
}

impl std::fmt::Debug for SharedChange {
    /// What changed for whom, never a value (tokens, keys, handshake secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, login) = match self {
            SharedChange::Metadata { login, .. } => ("Metadata", login),
            SharedChange::Push { login, .. } => ("Push", login),
            SharedChange::DeviceToken { login, .. } => ("DeviceToken", login),
            SharedChange::OAuthGrant { login, .. } => ("OAuthGrant", login),
            SharedChange::OpenPgp { login, .. } => ("OpenPgp", login),
        };
        f.debug_struct(kind).field("login", login).finish_non_exhaustive()
    }
}

/// Which of an account's OpenPGP records (`store::openpgp`) a shared change is about; the
/// string is the record's id there (a peer's canonical address, an invitenumber, a handshake
/// id, a group id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenPgpEntry {
    /// The account's secret key (sealed).
    Key,
    Peer(String),
    Invite(String),
    Join(String),
    Group(String),
}

/// What went wrong with the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer or refused (its words; etcd's errors carry no secret).
    #[error("etcd is unreachable or refused: {0}")]
    Etcd(String),
    /// This instance no longer owns the account: another took it over.
    #[error("this instance no longer owns the account (another instance took it over)")]
    Fenced,
    /// A shared secret from etcd that the seal key cannot open: instances with different seal keys.
    #[error("a shared secret in etcd cannot be opened: every instance needs the same seal key ({0})")]
    Seal(String),
    /// A `[cluster]` certificate or key file that cannot be read.
    #[error("cannot read {}: {reason}", path.display())]
    File { path: std::path::PathBuf, reason: String },
}

/// The way to an account's worker: the supervisor (`worker::supervise`) owns every worker's
/// life and starts one for an account that needs it and has none.
pub struct Workers(mpsc::UnboundedSender<String>);

impl Workers {
    /// Asks for `login`'s worker (at login, when COI is enabled, when a push subscription is
    /// validated); a no-op when one runs or the account needs none.
    pub fn want(&self, login: &str) {
        let _ = self.0.send(login.to_string());
    }
}

/// Work for the receipts agent (`smtp::receipts`).
#[derive(Debug)]
pub enum ReceiptJob {
    /// A client set `\Seen`; `send` is false for chat clients (they send their own receipts)
    /// and for the first look at an account (the baseline). `done` is dropped once the look is
    /// over.
    Seen { login: String, send: bool, done: Option<oneshot::Sender<()>> },
    /// Put the keywords the records ask for on the user's copies (`retry`: how many retries
    /// came before).
    Mark { login: String, retry: usize },
}

impl ReceiptJob {
    pub fn login(&self) -> &str {
        match self {
            ReceiptJob::Seen { login, .. } | ReceiptJob::Mark { login, .. } => login,
        }
    }
}

/// The receipts agent's inbox. Without an SMTP side there is no agent (no queue to send
/// receipts through, no sent chat messages to track): jobs are then dropped.
pub struct Receipts(mpsc::UnboundedSender<ReceiptJob>);

impl Receipts {
    pub fn submit(&self, job: ReceiptJob) {
        let _ = self.0.send(job);
    }

    /// Whether an agent reads the jobs.
    pub fn running(&self) -> bool {
        !self.0.is_closed()
    }
}

/// Makes the queue's relay task look at a message now (a new message, `coi-proxy queue retry`).
pub struct QueueWake(mpsc::UnboundedSender<(u64, String)>);

impl QueueWake {
    pub fn wake(&self, id: u64, login: String) {
        let _ = self.0.send((id, login));
    }
}

/// Which push a cluster claim is for: each message is pushed at most once per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushChannel {
    /// RFC 8030 WebPush to the account's subscriptions (COI).
    WebPush,
    /// Delta Chat's device tokens, through the notifier.
    DeviceToken,
}

/// The Delta Chat notifier's inbox (`deltachat::notifier`): accounts with new mail for their
/// devices. Without a notifier task (push off) the news is dropped.
#[derive(Clone)]
pub struct Notify(mpsc::UnboundedSender<String>);

impl Notify {
    pub fn new_mail(&self, login: &str) {
        let _ = self.0.send(login.to_string());
    }
}
