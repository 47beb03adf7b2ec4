//! Many instances behind HAProxy sharing accounts through etcd (`[cluster]`, issue 21; an
//! edge). Each instance holds one lease, kept alive, and announces itself on it
//! (`owner::run`); it owns an account by creating the account's owner key on that lease in a
//! create-if-absent transaction, whose create_revision is the fencing token of every write the
//! owner's worker makes for the account (its progress, its push claims). When an instance dies,
//! its lease ends, its keys go, and the others take the accounts over (they watch the owner
//! keys). Shared state (COI settings and the METADATA the proxy keeps, WebPush subscriptions,
//! the VAPID key) is written to etcd first, secrets sealed with the instance's seal key (the
//! same key file on every instance), and each instance's store follows by watch
//! (`replica`). The worker and the wings reach all this only through [`context::Cluster`].
//! `status` is `coi-proxy cluster status`. Keys: `keys`.

mod keys;
mod owner;
mod replica;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::config;
use crate::context::{BoxFuture, Cluster, ClusterError, Context, Owned, SharedChange};
use crate::seal::SealKey;

/// Each etcd request's bound: a cut-off etcd must not hold a session's SETMETADATA for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a push's claim outlives its instance: longer than any failover.
const CLAIM_TTL_SECS: i64 = 24 * 3600;

/// The cluster over etcd, as the context hands it to the worker and the wings.
pub struct Etcd {
    client: Client,
    node: String,
    lease_secs: u64,
    seal: Arc<SealKey>,
    owned: watch::Sender<Owned>,
    wants: mpsc::UnboundedSender<String>,
    /// The lease the push claims are put on (a day long, not kept alive) and when it was made.
    claims: Mutex<Option<(i64, Instant)>>,
}

/// What `app` starts once the context is built: the lease and ownership loop, and the store's
/// replication from etcd.
pub struct Tasks {
    etcd: Arc<Etcd>,
    wants: mpsc::UnboundedReceiver<String>,
}

/// Connects to etcd (lazily: an unreachable etcd is retried by the tasks, never fatal).
pub async fn connect(config: &config::Cluster, seal: Arc<SealKey>) -> Result<(Arc<Etcd>, Tasks), ClusterError> {
    let client = client(&config.etcd).await?;
    let (owned, _) = watch::channel(Owned::default());
    let (wants_tx, wants) = mpsc::unbounded_channel();
    let etcd = Arc::new(Etcd {
        client,
        node: config.node.clone(),
        lease_secs: config.lease_secs,
        seal,
        owned,
        wants: wants_tx,
        claims: Mutex::new(None),
    });
    Ok((etcd.clone(), Tasks { etcd, wants }))
}

/// An etcd client for `endpoints`, each request bounded.
pub(crate) async fn client(endpoints: &[String]) -> Result<Client, ClusterError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
    Client::connect(endpoints, Some(options)).await.map_err(etcd_error)
}

impl Tasks {
    /// Starts the tasks; the receiver resolves once the store holds etcd's shared state (the
    /// first sync), so that the listeners open on the cluster's settings; the handle ends after
    /// the shutdown once the lease is revoked.
    pub fn start(self, ctx: Arc<Context>) -> (oneshot::Receiver<()>, tokio::task::JoinHandle<()>) {
        let (synced_tx, synced) = oneshot::channel();
        tokio::spawn(replica::run(ctx.clone(), self.etcd.clone(), synced_tx));
        (synced, tokio::spawn(owner::run(ctx, self.etcd, self.wants)))
    }
}

fn etcd_error(e: etcd_client::Error) -> ClusterError {
    ClusterError::Etcd(e.to_string())
}

impl Etcd {
    /// The lease push claims go on: renewed after half its life, so a claim lives at least half a day.
    async fn claims_lease(&self) -> Result<i64, ClusterError> {
        let mut slot = self.claims.lock().await;
        if let Some((id, made)) = *slot
            && made.elapsed() < Duration::from_secs(CLAIM_TTL_SECS as u64 / 2)
        {
            return Ok(id);
        }
        let id = self.client.clone().lease_grant(CLAIM_TTL_SECS, None).await.map_err(etcd_error)?.id();
        *slot = Some((id, Instant::now()));
        Ok(id)
    }

    /// A transaction that runs `ops` only while `fence` is the account's owner token; `Ok(false)`
    /// when `extra` compares failed but the fence held.
    async fn fenced(
        &self,
        login: &str,
        fence: i64,
        extra: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, ClusterError> {
        let owner = keys::owner(login);
        let mut compares = vec![Compare::create_revision(owner.clone(), CompareOp::Equal, fence)];
        compares.extend(extra);
        let txn = Txn::new().when(compares).and_then(ops).or_else(vec![TxnOp::get(owner, None)]);
        let reply = self.client.clone().txn(txn).await.map_err(etcd_error)?;
        if reply.succeeded() {
            return Ok(true);
        }
        let current = reply.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.create_revision()).unwrap_or(0)),
            _ => None,
        });
        match current {
            Some(rev) if rev == fence => Ok(false),
            _ => Err(ClusterError::Fenced),
        }
    }
}

impl Cluster for Etcd {
    fn owned(&self) -> watch::Receiver<Owned> {
        self.owned.subscribe()
    }

    fn want(&self, login: &str) {
        let _ = self.wants.send(login.to_ascii_lowercase());
    }

    fn progress(&self, login: String) -> BoxFuture<'_, Result<Option<(u32, u32)>, ClusterError>> {
        Box::pin(async move {
            let reply = self.client.clone().get(keys::progress(&login), None).await.map_err(etcd_error)?;
            Ok(reply.kvs().first().and_then(|kv| keys::decode_progress(kv.value())))
        })
    }

    fn save_progress(
        &self,
        login: String,
        fence: i64,
        position: (u32, u32),
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let put = TxnOp::put(keys::progress(&login), keys::encode_progress(position), None);
            match self.fenced(&login, fence, Vec::new(), vec![put]).await? {
                true => Ok(()),
                false => Err(ClusterError::Fenced),
            }
        })
    }

    fn claim_push(
        &self,
        login: String,
        fence: i64,
        (uidvalidity, uid): (u32, u32),
    ) -> BoxFuture<'_, Result<bool, ClusterError>> {
        Box::pin(async move {
            let lease = self.claims_lease().await?;
            let key = keys::pushed(&login, uidvalidity, uid);
            let absent = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
            let put = TxnOp::put(key, self.node.clone(), Some(PutOptions::new().with_lease(lease)));
            self.fenced(&login, fence, vec![absent], vec![put]).await
        })
    }

    fn still_owner(&self, login: String, fence: i64) -> BoxFuture<'_, Result<bool, ClusterError>> {
        Box::pin(async move {
            let reply = self.client.clone().get(keys::owner(&login), None).await.map_err(etcd_error)?;
            Ok(reply.kvs().first().is_some_and(|kv| kv.create_revision() == fence))
        })
    }

    fn publish(&self, change: SharedChange) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let (key, value) = match change {
                SharedChange::Metadata { login, mailbox, entry, value } => {
                    (keys::metadata(&login, &mailbox, &entry), value)
                }
                SharedChange::Push { login, id, subscription } => {
                    let sealed = subscription.map(|s| {
                        let json = serde_json::to_vec(&s).expect("plain struct");
                        self.seal.seal(keys::SEAL_PUSH, &json)
                    });
                    (keys::push(&login, &id), sealed)
                }
            };
            match value {
                Some(v) => client.put(key, v, None).await.map(drop),
                None => client.delete(key, None).await.map(drop),
            }
            .map_err(etcd_error)
        })
    }
}
