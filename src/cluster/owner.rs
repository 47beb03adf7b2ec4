//! The instance's lease and the accounts it owns. One lease at a time, kept alive every third of
//! its TTL; the instance stops owning at once when etcd says the lease is gone (a keep-alive
//! answer with TTL <= 0) or when nothing was acknowledged for a whole TTL on its own clock (etcd
//! unreachable: by then the others may have taken over). Then it starts over with a new lease.
//! Ownership: the account's owner key, created on the lease only if absent; the instance takes
//! unowned accounts up to its share (about ceil(accounts / live members)) at once and any that
//! nobody else took within a lease's time; over its share while another member has room (one
//! joined), it hands the excess over. It watches the owner keys to take over at once when an
//! owner's lease ends. A clean shutdown revokes the lease: the others take over at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Etcd, keys};
use crate::context::{ClusterError, Context, Owned};

/// Runs until shutdown.
pub(super) async fn run(ctx: Arc<Context>, etcd: Arc<Etcd>, mut wants: mpsc::UnboundedReceiver<String>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut candidates = BTreeSet::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        // It watches the shutdown itself, to revoke the lease.
        let result = hold_lease(&etcd, &mut wants, &mut candidates, &mut shutdown).await;
        set_owned(&etcd, BTreeMap::new());
        if *shutdown.borrow() {
            return;
        }
        match result {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                warn!("cluster: {e}; this instance owns no account until it has a lease again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|down| *down) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn set_owned(etcd: &Etcd, owned: BTreeMap<String, i64>) {
    etcd.owned.send_if_modified(|current| {
        if **current == owned {
            return false;
        }
        let (before, after): (BTreeSet<&String>, BTreeSet<&String>) =
            (current.keys().collect(), owned.keys().collect());
        for gained in after.difference(&before) {
            info!(login = %gained, "cluster: this instance owns the account now");
        }
        for lost in before.difference(&after) {
            info!(login = %lost, "cluster: this instance no longer owns the account");
        }
        *current = Owned::new(owned.clone());
        true
    });
}

/// One lease's life: `Ok` when it ended in a way to start over at once (lost), `Err` when etcd
/// could not be reached.
async fn hold_lease(
    etcd: &Etcd,
    wants: &mut mpsc::UnboundedReceiver<String>,
    candidates: &mut BTreeSet<String>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let mut client = etcd.client.clone();
    let ttl = etcd.lease_secs as i64;
    let granted = client.lease_grant(ttl, None).await.map_err(super::etcd_error)?;
    let (lease, ttl) = (granted.id(), Duration::from_secs(granted.ttl().max(1) as u64));
    let mut last_ack = Instant::now();
    client
        .put(keys::member(&etcd.node), etcd.node.clone(), Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(super::etcd_error)?;
    info!(node = %etcd.node, lease = format!("{lease:x}"), ttl_secs = ttl.as_secs(), "cluster: joined");
    let mut keep: Option<(LeaseKeeper, LeaseKeepAliveStream)> = bounded(client.lease_keep_alive(lease)).await;
    let mut owners: Option<WatchStream> = None;
    let (mut waited, mut released) = (BTreeMap::new(), BTreeSet::new());
    let mut tick = tokio::time::interval(ttl / 3);
    let mut look = true;
    let ended = loop {
        if look {
            look = false;
            if owners.is_none() {
                let options = WatchOptions::new().with_prefix();
                owners = bounded(client.watch(keys::OWNERS, Some(options))).await;
            }
            if let Err(e) = reconcile(etcd, &mut client, lease, candidates, &mut waited, &mut released).await {
                warn!("cluster: cannot look at the owners: {e}");
            }
        }
        tokio::select! {
            () = async { drop(shutdown.wait_for(|down| *down).await) } => {
                // Instant hand-over: the owner keys go with the lease.
                set_owned(etcd, BTreeMap::new());
                match client.lease_revoke(lease).await {
                    Ok(_) => info!("cluster: lease revoked; the other instances take the accounts over"),
                    Err(e) => warn!("cluster: cannot revoke the lease ({e}); the accounts move when it expires"),
                }
                break Ok(());
            }
            _ = tick.tick() => {
                if last_ack.elapsed() >= ttl {
                    warn!("cluster: no keep-alive acknowledged for the lease's TTL; owning nothing until etcd answers");
                    break Err(ClusterError::Etcd("the lease's keep-alive went unanswered".into()));
                }
                // Each call bounded: a stream to an etcd that stopped answering may block a send.
                let sent = match keep.as_mut() {
                    Some((keeper, _)) => bounded(keeper.keep_alive()).await.is_some(),
                    None => false,
                };
                if !sent {
                    keep = bounded(client.lease_keep_alive(lease)).await;
                    if let Some((keeper, _)) = keep.as_mut() {
                        bounded(keeper.keep_alive()).await;
                    }
                }
                look = true;
            }
            ack = async { keep.as_mut().expect("guarded").1.message().await }, if keep.is_some() => match ack {
                Ok(Some(reply)) if reply.ttl() <= 0 => {
                    warn!("cluster: etcd says the lease is gone");
                    break Ok(());
                }
                Ok(Some(_)) => last_ack = Instant::now(),
                Ok(None) | Err(_) => keep = None,
            },
            event = async { owners.as_mut().expect("guarded").message().await }, if owners.is_some() => match event {
                Ok(Some(reply)) => {
                    if reply.canceled() {
                        owners = None;
                    }
                    // A deleted owner key: its account is free (an owner's lease ended, or ours).
                    look |= reply.events().iter().any(|e| e.event_type() == EventType::Delete);
                }
                Ok(None) | Err(_) => owners = None,
            },
            Some(login) = wants.recv() => {
                look |= candidates.insert(login);
            }
        }
    };
    set_owned(etcd, BTreeMap::new());
    ended
}

/// An etcd call's result within the request timeout; `None` on an error or no answer.
async fn bounded<T>(call: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Option<T> {
    tokio::time::timeout(super::REQUEST_TIMEOUT, call).await.ok()?.ok()
}

/// Reads who owns what, keeps the accounts still on our lease, and takes free ones.
async fn reconcile(
    etcd: &Etcd,
    client: &mut Client,
    lease: i64,
    candidates: &BTreeSet<String>,
    waited: &mut BTreeMap<String, Instant>,
    released: &mut BTreeSet<String>,
) -> Result<(), ClusterError> {
    let owners = client.get(keys::OWNERS, Some(GetOptions::new().with_prefix())).await.map_err(super::etcd_error)?;
    let members = client
        .get(keys::MEMBERS, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .map_err(super::etcd_error)?
        .count();
    let mut taken = BTreeSet::new();
    let mut mine = BTreeMap::new();
    for kv in owners.kvs() {
        let Some(login) = keys::owner_login(kv.key()) else { continue };
        if kv.lease() == lease {
            mine.insert(login.clone(), kv.create_revision());
        }
        taken.insert(login);
    }
    let share = keys::share(candidates.len(), members as usize);
    for login in candidates.iter().filter(|l| !taken.contains(*l)) {
        // Under our share: at once. Over it: if nobody else took it within a lease's time.
        let since = *waited.entry(login.clone()).or_insert_with(Instant::now);
        if mine.len() >= share && since.elapsed() < Duration::from_secs(etcd.lease_secs) {
            continue;
        }
        let key = keys::owner(login);
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            etcd.node.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let reply = client.txn(txn).await.map_err(super::etcd_error)?;
        if reply.succeeded()
            && let Some(revision) = reply.header().map(|h| h.revision())
        {
            mine.insert(login.clone(), revision);
        }
    }
    waited.retain(|l, _| !taken.contains(l) && !mine.contains_key(l));
    // More than our share while others have room (an instance joined): hand the excess over.
    // The others see the deletes and take them; the fence keeps the two workers apart.
    let excess = mine.len().saturating_sub(share);
    if members > 1 && excess > 0 {
        // Each account at most once per lease: one that no other instance wants comes back to
        // us (a lease's time later) and stays.
        let give: Vec<String> = mine.keys().rev().filter(|l| !released.contains(*l)).take(excess).cloned().collect();
        for login in give {
            let key = keys::owner(&login);
            let txn = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key, None)]);
            client.txn(txn).await.map_err(super::etcd_error)?;
            info!(%login, "cluster: handing the account over to spread the load");
            mine.remove(&login);
            released.insert(login.clone());
            waited.insert(login, Instant::now());
        }
    }
    set_owned(etcd, mine);
    Ok(())
}
