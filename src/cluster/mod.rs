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
use crate::context::{BoxFuture, Cluster, ClusterError, Context, OpenPgpEntry, Owned, PushChannel, SharedChange};
use crate::seal::SealKey;
use crate::secret::Secret;

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
    /// Told the login whose OpenPGP key another instance replaced (`import`): the OpenPGP
    /// wing's cache of unsealed keys takes the new one.
    key_changed: std::sync::OnceLock<Box<dyn Fn(String) + Send + Sync>>,
}

/// What `app` starts once the context is built: the lease and ownership loop, and the store's
/// replication from etcd.
pub struct Tasks {
    etcd: Arc<Etcd>,
    wants: mpsc::UnboundedReceiver<String>,
}

/// Connects to etcd (lazily: an unreachable etcd is retried by the tasks, never fatal).
pub async fn connect(config: &config::Cluster, seal: Arc<SealKey>) -> Result<(Arc<Etcd>, Tasks), ClusterError> {
    let client = client(config).await?;
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
        key_changed: std::sync::OnceLock::new(),
    });
    Ok((etcd.clone(), Tasks { etcd, wants }))
}

/// An etcd client for the configured members, each request bounded; over TLS (with the
/// configured CA and client certificate) for `https://` members.
pub(crate) async fn client(config: &config::Cluster) -> Result<Client, ClusterError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
    if let Some(ca) = &config.ca_file {
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(pem(ca).await?));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            tls = tls.identity(etcd_client::Identity::from_pem(pem(cert).await?, pem(key).await?));
        }
        options = options.with_tls(tls);
    }
    Client::connect(&config.etcd, Some(options)).await.map_err(etcd_error)
}

/// A PEM file of `[cluster]` (its path in the error, never its content: one is a secret key).
async fn pem(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    tokio::fs::read(path).await.map_err(|e| ClusterError::File { path: path.to_path_buf(), reason: e.to_string() })
}

/// `coi-proxy check`: etcd answers and grants a lease (revoked at once).
pub async fn probe(config: &config::Cluster) -> Result<(), ClusterError> {
    let attempt = async {
        let mut client = client(config).await?;
        let lease = client.lease_grant(config.lease_secs as i64, None).await.map_err(etcd_error)?.id();
        client.lease_revoke(lease).await.map_err(etcd_error)?;
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT * 3, attempt)
        .await
        .unwrap_or_else(|_| Err(ClusterError::Etcd(format!("no answer within {} s", 3 * REQUEST_TIMEOUT.as_secs()))))
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
        let _ = self.wants.send(login.to_string());
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
        channel: PushChannel,
        login: String,
        fence: i64,
        (uidvalidity, uid): (u32, u32),
    ) -> BoxFuture<'_, Result<bool, ClusterError>> {
        Box::pin(async move {
            let lease = self.claims_lease().await?;
            let key = keys::pushed(channel, &login, uidvalidity, uid);
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
                SharedChange::DeviceToken { login, token, set_at } => {
                    let sealed =
                        set_at.map(|at| self.seal.seal(keys::SEAL_DC_TOKEN, encode_token(at, &token).expose()));
                    (keys::device_token(&login, token.expose()), sealed)
                }
                SharedChange::OAuthGrant { login, grant } => {
                    let json = Secret::new(serde_json::to_vec(&grant).expect("plain struct"));
                    (keys::oauth(&login), Some(self.seal.seal(keys::SEAL_OAUTH, json.expose())))
                }
                SharedChange::OpenPgp { login, entry, value } => {
                    let sealed = value.map(|v| self.seal.seal(keys::SEAL_OPENPGP, &v));
                    (keys::openpgp(&login, &entry), sealed)
                }
            };
            match value {
                Some(v) => client.put(key, v, None).await.map(drop),
                None => client.delete(key, None).await.map(drop),
            }
            .map_err(etcd_error)
        })
    }

    fn shared_account_key(&self, login: String) -> BoxFuture<'_, Result<Option<Vec<u8>>, ClusterError>> {
        Box::pin(async move {
            let key = keys::openpgp(&login, &OpenPgpEntry::Key);
            let reply = self.client.clone().get(key, None).await.map_err(etcd_error)?;
            reply
                .kvs()
                .first()
                .map(|kv| self.open(keys::SEAL_OPENPGP, kv.value()).map(|v| v.expose().to_vec()))
                .transpose()
        })
    }

    fn first_account_key(&self, login: String, sealed: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, ClusterError>> {
        Box::pin(async move {
            let key = keys::openpgp(&login, &OpenPgpEntry::Key);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), self.seal.seal(keys::SEAL_OPENPGP, &sealed), None)])
                .or_else([TxnOp::get(key, None)]);
            let reply = self.client.clone().txn(txn).await.map_err(etcd_error)?;
            if reply.succeeded() {
                return Ok(sealed);
            }
            let theirs = reply.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            });
            let theirs = theirs.ok_or_else(|| ClusterError::Etcd("the OpenPGP key vanished from etcd".into()))?;
            Ok(self.open(keys::SEAL_OPENPGP, &theirs)?.expose().to_vec())
        })
    }
}

impl Etcd {
    /// Calls `changed` with each login whose OpenPGP key is replaced through etcd.
    pub fn on_key_change(&self, changed: impl Fn(String) + Send + Sync + 'static) {
        let _ = self.key_changed.set(Box::new(changed));
    }

    /// Opens a value this cluster sealed for `purpose`.
    fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Secret, ClusterError> {
        self.seal.open(purpose, sealed).map_err(|e| ClusterError::Seal(e.to_string()))
    }
}

/// A device token as sealed into etcd: when it was set (u64 LE), then the token.
fn encode_token(set_at: u64, token: &Secret) -> Secret {
    let mut plain = set_at.to_le_bytes().to_vec();
    plain.extend_from_slice(token.expose());
    Secret::new(plain)
}

/// [`encode_token`] read back.
fn decode_token(plain: &[u8]) -> Option<(u64, Secret)> {
    let (at, token) = plain.split_at_checked(8)?;
    Some((u64::from_le_bytes(at.try_into().ok()?), Secret::new(token.to_vec())))
}
