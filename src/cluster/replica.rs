//! The store as a replica of the shared state in etcd. A first sync reads everything under
//! `/coi-proxy/acct/` and makes the store hold exactly that (entries etcd lacks are removed),
//! then a watch from the read's revision + 1 applies each change as it comes: nothing is missed
//! in between. A watch that ends (etcd compacted past it, or unreachable) is followed by another
//! full sync. The VAPID key: etcd's if there is one, else ours, offered by create-if-absent.
//! Every applied change refreshes the account's COI settings and asks for its worker, so a
//! setting made through one instance is in force on all.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::keys::{self, AccountKey};
use super::{Etcd, etcd_error};
use crate::context::{ClusterError, Context};
use crate::store::PushSubscription;

/// Runs until shutdown; `synced` is told after the first full sync.
pub(super) async fn run(ctx: Arc<Context>, etcd: Arc<Etcd>, synced: oneshot::Sender<()>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut synced = Some(synced);
    loop {
        let result = tokio::select! {
            r = follow(&ctx, &etcd, &mut synced) => r,
            _ = shutdown.wait_for(|down| *down) => return,
        };
        if let Err(e) = result {
            warn!("cluster: shared state: {e}; reading it again shortly (the store serves what it has)");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
    }
}

/// One full sync and the watch after it, until the watch ends.
async fn follow(ctx: &Context, etcd: &Etcd, synced: &mut Option<oneshot::Sender<()>>) -> Result<(), ClusterError> {
    let mut client = etcd.client.clone();
    sync_vapid(ctx, etcd).await?;
    let all = client.get(keys::ACCOUNTS, Some(GetOptions::new().with_prefix())).await.map_err(etcd_error)?;
    let revision = all.header().map(|h| h.revision()).unwrap_or(0);
    full_sync(ctx, etcd, all.kvs()).await?;
    if let Some(tx) = synced.take() {
        let _ = tx.send(());
    }
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut watch = client.watch(keys::ACCOUNTS, Some(options)).await.map_err(etcd_error)?;
    loop {
        let Some(reply) = watch.message().await.map_err(etcd_error)? else {
            return Err(ClusterError::Etcd("the watch ended".into()));
        };
        if reply.canceled() {
            let why = match reply.compact_revision() {
                0 => reply.cancel_reason().to_string(),
                r => format!("etcd compacted its history past the watch (revision {r})"),
            };
            return Err(ClusterError::Etcd(why));
        }
        for event in reply.events() {
            let Some(kv) = event.kv() else { continue };
            let value = (event.event_type() == EventType::Put).then(|| kv.value());
            if let Some(login) = apply(ctx, etcd, kv.key(), value).await? {
                refresh(ctx, &login);
            }
        }
    }
}

/// Makes the store's shared tables hold exactly `kvs`.
async fn full_sync(ctx: &Context, etcd: &Etcd, kvs: &[KeyValue]) -> Result<(), ClusterError> {
    let store = &ctx.store;
    let mut logins = BTreeSet::new();
    let (mut metadata, mut push) = (BTreeSet::new(), BTreeSet::new());
    for kv in kvs {
        match keys::parse_account_key(kv.key()) {
            AccountKey::Metadata { login, mailbox, entry } => {
                metadata.insert((login, mailbox, entry));
            }
            AccountKey::Push { login, id } => {
                push.insert((login, id));
            }
            AccountKey::Other => continue,
        }
        if let Some(login) = apply(ctx, etcd, kv.key(), Some(kv.value())).await? {
            logins.insert(login);
        }
    }
    let local = store.read(|s| Ok((s.metadata_keys()?, s.push_all()?))).await.map_err(store_error)?;
    for (login, mailbox, entry) in local.0 {
        if !metadata.contains(&(login.clone(), mailbox.clone(), entry.clone())) {
            let change = [(entry, None)];
            store.metadata_apply(&login, &mailbox, &change, usize::MAX).await.map_err(store_error)?.ok();
            logins.insert(login);
        }
    }
    for (login, sub) in local.1 {
        if !push.contains(&(login.clone(), sub.id.clone())) {
            store.push_unsubscribe(&login, &sub.id).await.map_err(store_error)?;
            logins.insert(login);
        }
    }
    info!(accounts = logins.len(), "cluster: shared state read from etcd");
    for login in logins {
        refresh(ctx, &login);
    }
    Ok(())
}

fn store_error(e: crate::store::StoreError) -> ClusterError {
    ClusterError::Etcd(format!("cannot write the replica into the store: {e}"))
}

/// Applies one key's value (`None`: deleted) to the store; the account it concerns.
async fn apply(ctx: &Context, etcd: &Etcd, key: &[u8], value: Option<&[u8]>) -> Result<Option<String>, ClusterError> {
    let store = &ctx.store;
    match keys::parse_account_key(key) {
        AccountKey::Metadata { login, mailbox, entry } => {
            if store.metadata_value(&login, &mailbox, &entry).map_err(store_error)?.as_deref() == value {
                return Ok(None);
            }
            let change = [(entry, value.map(<[u8]>::to_vec))];
            store.metadata_apply(&login, &mailbox, &change, usize::MAX).await.map_err(store_error)?.ok();
            debug!(%login, "cluster: METADATA changed on another instance");
            Ok(Some(login))
        }
        AccountKey::Push { login, id } => {
            let sub = match value {
                Some(sealed) => Some(open_subscription(etcd, sealed)?),
                None => None,
            };
            if store.push_subscription(&login, &id).map_err(store_error)? == sub {
                return Ok(None);
            }
            match sub {
                Some(sub) => store.push_put(&login, &sub).await.map_err(store_error)?,
                None => drop(store.push_unsubscribe(&login, &id).await.map_err(store_error)?),
            }
            debug!(%login, "cluster: a push subscription changed on another instance");
            Ok(Some(login))
        }
        AccountKey::Other => Ok(None),
    }
}

fn open_subscription(etcd: &Etcd, sealed: &[u8]) -> Result<PushSubscription, ClusterError> {
    let json = etcd.seal.open(keys::SEAL_PUSH, sealed).map_err(|e| ClusterError::Seal(e.to_string()))?;
    serde_json::from_slice(json.expose()).map_err(|e| ClusterError::Seal(format!("a push subscription in etcd: {e}")))
}

/// The account's sessions and worker see the replicated settings; its worker is asked for.
fn refresh(ctx: &Context, login: &str) {
    let account = ctx.accounts.account(login);
    account.set_config(crate::coi::stored_config(&ctx.store, login));
    account.nudge.notify_one();
    ctx.workers.want(login);
}

/// One VAPID key for every instance: etcd's, or ours offered to etcd if it has none.
async fn sync_vapid(ctx: &Context, etcd: &Etcd) -> Result<(), ClusterError> {
    let mut client = etcd.client.clone();
    let open = |sealed: &[u8]| {
        etcd.seal
            .open(keys::SEAL_VAPID, sealed)
            .map(|k| k.expose().to_vec())
            .map_err(|e| ClusterError::Seal(e.to_string()))
    };
    let shared = match client.get(keys::VAPID, None).await.map_err(etcd_error)?.kvs().first() {
        Some(kv) => open(kv.value())?,
        None => {
            let ours = ctx.store.vapid_key(crate::push::vapid::generate).await.map_err(store_error)?;
            let sealed = etcd.seal.seal(keys::SEAL_VAPID, &ours);
            let txn = Txn::new()
                .when([Compare::create_revision(keys::VAPID, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(keys::VAPID, sealed, None)])
                .or_else([TxnOp::get(keys::VAPID, None)]);
            let reply = client.txn(txn).await.map_err(etcd_error)?;
            if reply.succeeded() {
                info!("cluster: this instance's VAPID key is the cluster's now");
                return Ok(());
            }
            let theirs = reply.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            });
            open(&theirs.ok_or_else(|| ClusterError::Etcd("the VAPID key vanished from etcd".into()))?)?
        }
    };
    let ours = ctx.store.vapid_key(crate::push::vapid::generate).await.map_err(store_error)?;
    if ours != shared {
        ctx.store.set_vapid_key(shared).await.map_err(store_error)?;
        info!("cluster: the VAPID key is the cluster's");
    }
    Ok(())
}
