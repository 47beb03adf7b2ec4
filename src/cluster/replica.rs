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
use crate::context::{ClusterError, Context, OpenPgpEntry};
use crate::store::{OAuthGrant, PushSubscription};

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
    let mut identity: BTreeSet<Vec<u8>> = BTreeSet::new();
    for kv in kvs {
        match keys::parse_account_key(kv.key()) {
            AccountKey::Metadata { login, mailbox, entry } => {
                metadata.insert((login, mailbox, entry));
            }
            AccountKey::Push { login, id } => {
                push.insert((login, id));
            }
            AccountKey::DeviceToken { .. } | AccountKey::OAuth { .. } | AccountKey::OpenPgp { .. } => {
                identity.insert(kv.key().to_vec());
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
    offer_local(ctx, etcd, &identity).await?;
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
        AccountKey::DeviceToken { login } => apply_token(ctx, etcd, &login, key, value).await,
        AccountKey::OAuth { login } => {
            let Some(sealed) = value else { return Ok(None) };
            let json = etcd.open(keys::SEAL_OAUTH, sealed)?;
            let grant: OAuthGrant = serde_json::from_slice(json.expose())
                .map_err(|e| ClusterError::Seal(format!("an OAuth2 grant in etcd: {e}")))?;
            if store.oauth_grant(&login).map_err(store_error)? == Some(grant.clone()) {
                return Ok(None);
            }
            store.oauth_grant_save(&login, &grant).await.map_err(store_error)?;
            // A session's cached access token of the old grant is dropped.
            *ctx.accounts.account(&login).bearer.lock().await = None;
            debug!(%login, "cluster: an OAuth2 grant changed on another instance");
            Ok(Some(login))
        }
        AccountKey::OpenPgp { login, entry } => {
            let value = value.map(|v| etcd.open(keys::SEAL_OPENPGP, v)).transpose()?;
            apply_openpgp(ctx, etcd, &login, entry, value.as_ref().map(|v| v.expose())).await?;
            Ok(None)
        }
        AccountKey::Other => Ok(None),
    }
}

/// What this instance's store holds and etcd lacks (kept before `[cluster]` was set, or by
/// `oauth authorize` with no daemon running): OAuth2 grants, OpenPGP keys and device tokens
/// go to etcd, each only if absent there (another instance's, written meanwhile, wins).
async fn offer_local(ctx: &Context, etcd: &Etcd, in_etcd: &BTreeSet<Vec<u8>>) -> Result<(), ClusterError> {
    let store = &ctx.store;
    let now = crate::clock::now_unsigned();
    let max_age = crate::deltachat::TOKEN_MAX_AGE;
    let (grants, keyed, token_accounts) = store
        .read(move |s| Ok((s.oauth_grants()?, s.accounts_with_keys()?, s.dc_token_accounts(now, max_age)?)))
        .await
        .map_err(store_error)?;
    let mut offers = Vec::new();
    for (login, grant) in grants {
        let key = keys::oauth(&login);
        if !in_etcd.contains(key.as_bytes()) {
            let json = crate::secret::Secret::new(serde_json::to_vec(&grant).expect("plain struct"));
            offers.push((key, etcd.seal.seal(keys::SEAL_OAUTH, json.expose())));
        }
    }
    for login in token_accounts {
        for token in store.dc_tokens(&login, now, max_age).map_err(store_error)? {
            let key = keys::device_token(&login, token.expose());
            let Some(at) = store.dc_token_set_at(&login, &token).map_err(store_error)? else { continue };
            if !in_etcd.contains(key.as_bytes()) {
                offers.push((key, etcd.seal.seal(keys::SEAL_DC_TOKEN, super::encode_token(at, &token).expose())));
            }
        }
    }
    let offered = offers.len();
    for (key, sealed) in offers {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, sealed, None)]);
        etcd.client.clone().txn(txn).await.map_err(etcd_error)?;
    }
    for login in keyed {
        if in_etcd.contains(keys::openpgp(&login, &OpenPgpEntry::Key).as_bytes()) {
            continue;
        }
        let Some(ours) = store.account_key(&login).map_err(store_error)? else { continue };
        let in_force = crate::context::Cluster::first_account_key(etcd, login.clone(), ours.clone()).await?;
        if in_force != ours {
            apply_openpgp(ctx, etcd, &login, OpenPgpEntry::Key, Some(&in_force)).await?;
        }
    }
    if offered > 0 {
        info!(offered, "cluster: grants and device tokens kept only here are in etcd now");
    }
    Ok(())
}

/// A device token set (or gone) on another instance; the account, when the store changed.
async fn apply_token(
    ctx: &Context,
    etcd: &Etcd,
    login: &str,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<String>, ClusterError> {
    let store = &ctx.store;
    let Some(sealed) = value else {
        // Named by its hash: the account's token that has it is gone.
        let now = crate::clock::now_unsigned();
        let tokens = store.dc_tokens(login, now, crate::deltachat::TOKEN_MAX_AGE).map_err(store_error)?;
        let Some(token) = tokens.into_iter().find(|t| keys::device_token(login, t.expose()).as_bytes() == key) else {
            return Ok(None);
        };
        store.dc_token_remove(&token).await.map_err(store_error)?;
        return Ok(None);
    };
    let plain = etcd.open(keys::SEAL_DC_TOKEN, sealed)?;
    let (set_at, token) = super::decode_token(plain.expose())
        .ok_or_else(|| ClusterError::Seal("a device token in etcd: too short".into()))?;
    if store.dc_token_set_at(login, &token).map_err(store_error)? == Some(set_at) {
        return Ok(None);
    }
    let (limit, max_age) = (crate::deltachat::TOKENS_PER_ACCOUNT, crate::deltachat::TOKEN_MAX_AGE);
    store.dc_token_set(login, &token, set_at, limit, max_age).await.map_err(store_error)?;
    debug!(%login, "cluster: a Delta Chat device was registered on another instance");
    Ok(Some(login.to_string()))
}

/// An OpenPGP record written on another instance, into the store; a changed account key is
/// handed to the instance's key cache.
async fn apply_openpgp(
    ctx: &Context,
    etcd: &Etcd,
    login: &str,
    entry: OpenPgpEntry,
    value: Option<&[u8]>,
) -> Result<(), ClusterError> {
    let store = &ctx.store;
    let (login, owned) = (login.to_string(), value.map(<[u8]>::to_vec));
    match (entry, owned) {
        (OpenPgpEntry::Key, Some(v)) => {
            if store.account_key(&login).map_err(store_error)?.as_deref() == Some(v.as_slice()) {
                return Ok(());
            }
            store.put_account_key(&login, v, true).await.map_err(store_error)?;
            info!(login = %crate::logging::peer_text(&login), "cluster: the account's OpenPGP key is the cluster's");
            if let Some(changed) = etcd.key_changed.get() {
                changed(login);
            }
        }
        (OpenPgpEntry::Peer(addr), Some(v)) => {
            if store.peer(&login, &addr).map_err(store_error)?.as_deref() != Some(v.as_slice())
                && store.put_peers(&login, vec![(addr, v)]).await.map_err(store_error)?.is_err()
            {
                warn!("cluster: too many Autocrypt peers for an account; a shared one is not kept");
            }
        }
        (OpenPgpEntry::Invite(id), Some(v)) => store.put_invite(&login, &id, v).await.map_err(store_error)?,
        (OpenPgpEntry::Join(id), v) => store.put_join(&login, &id, v).await.map_err(store_error)?,
        (OpenPgpEntry::Group(id), Some(v)) => {
            if store.group(&login, &id).map_err(store_error)?.as_deref() != Some(v.as_slice()) {
                store.put_group(&login, &id, v).await.map_err(store_error)?;
            }
        }
        // Keys, peers, invites and groups are never removed through etcd.
        (_, None) => {}
    }
    Ok(())
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
