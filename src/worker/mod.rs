//! The account workers (an edge): the proxy's own connection per account that needs one (COI
//! enabled, a validated push subscription, or a `password_command` to work with no client),
//! doing at delivery time what a COI server does (`account`). One supervisor owns every worker's
//! life: sessions and wings ask for a worker through [`Context::workers`]; the supervisor
//! starts one when the account needs it and none runs, and a worker once started runs until
//! the daemon shuts down (with COI switched off it only watches the configuration), so an
//! account never has two and none is started and stopped in a row. At start-up every account
//! with a `password_command` gets its worker, client connected or not.
//!
//! With `[cluster]` an account's worker runs only on the instance that owns the account
//! (`Context::cluster`): the supervisor asks to own each account that needs a worker, starts the
//! worker once the account is owned, and stops it at once when the ownership is lost.

mod account;
mod gateway;
mod junk;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, Id, JoinSet};
use tracing::{Instrument, info, info_span, warn};

use crate::account::Account;
use crate::context::{Context, Owned};
use crate::openpgp::identity::Identity;

/// Whether `account` needs a worker: COI enabled, a validated push subscription, a Delta Chat
/// device to notify, a chat client's mail to rescue from Junk, a `password_command` (its worker
/// watches the COI configuration with no client connected), or an OpenPGP key (the gateway
/// answers SecureJoin and learns keys with no client connected).
fn wanted(ctx: &Context, account: &Account, identity: Option<&Identity>) -> bool {
    let config = ctx.config();
    account.current().enabled
        || crate::push::wanted(&ctx.store, &account.login)
        || crate::deltachat::wanted(&ctx.store, &config, &account.login)
        || (config.coi.rescue_junk && account.chat_client.load(std::sync::atomic::Ordering::Relaxed))
        || crate::account::password_command(&config, &account.login).is_some()
        || gateway::wanted(identity, &account.login)
}

/// Runs until shutdown: reads the requests for workers (`Context::workers`), keeps exactly one
/// worker per account that needs one, and at shutdown waits for the workers to stop.
/// `identity`: the OpenPGP gateway's state (`None` with `[autocrypt] enabled = false`).
pub async fn supervise(ctx: Arc<Context>, mut requests: mpsc::UnboundedReceiver<String>, identity: Option<Identity>) {
    let mut shutdown = ctx.shutdown.clone();
    // Without a cluster this instance owns every account, and that never changes.
    let mut owned: Option<watch::Receiver<Owned>> = ctx.cluster.as_ref().map(|c| c.owned());
    let mut workers = Workers {
        ctx: ctx.clone(),
        tasks: JoinSet::new(),
        by_task: HashMap::new(),
        running: HashMap::new(),
        identity: identity.clone(),
        owned: owned.as_ref().map(|o| o.borrow().clone()),
    };
    for login in at_start(&ctx).await {
        workers.start_if_needed(&login);
    }
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|down| *down) => break,
            Some(login) = requests.recv() => workers.start_if_needed(&login),
            Ok(()) = async { owned.as_mut().expect("guarded").changed().await }, if owned.is_some() => {
                let now = owned.as_mut().expect("guarded").borrow_and_update().clone();
                workers.ownership(now);
            }
            Some(ended) = workers.tasks.join_next_with_id(), if !workers.tasks.is_empty() => {
                let id = match &ended {
                    Ok((id, ())) => *id,
                    // Stopped: the account went to another instance.
                    Err(e) if e.is_cancelled() => e.id(),
                    Err(e) => {
                        warn!("an account worker failed: {e}; the account's next request starts another");
                        e.id()
                    }
                };
                if let Some(login) = workers.by_task.remove(&id)
                    && workers.running.get(&login).is_some_and(|(task, _)| *task == id)
                {
                    workers.running.remove(&login);
                }
            }
        }
    }
    // The workers watch the same signal; nothing is started from here on.
    while workers.tasks.join_next().await.is_some() {}
}

/// The running workers.
struct Workers {
    ctx: Arc<Context>,
    tasks: JoinSet<()>,
    /// Each task's account.
    by_task: HashMap<Id, String>,
    /// The accounts that have a worker, with its task.
    running: HashMap<String, (Id, AbortHandle)>,
    identity: Option<Identity>,
    /// With a cluster: the accounts this instance owns now.
    owned: Option<Owned>,
}

impl Workers {
    /// Starts the account's worker if it needs one and has none; a running one is woken to
    /// look at what changed (COI switched on, a subscription validated).
    fn start_if_needed(&mut self, login: &str) {
        let account = self.ctx.accounts.account(login);
        if self.running.contains_key(&account.login) {
            account.nudge.notify_one();
            return;
        }
        if !wanted(&self.ctx, &account, self.identity.as_ref()) {
            return;
        }
        if let (Some(owned), Some(cluster)) = (&self.owned, &self.ctx.cluster) {
            // Started when the account is ours (`ownership`).
            cluster.want(&account.login);
            if !owned.contains_key(&account.login) {
                return;
            }
        }
        crate::metrics::WORKER_STARTS.inc();
        let span = info_span!(parent: None, "worker", login = %account.login);
        let login = account.login.clone();
        let handle = self.tasks.spawn(account::run(self.ctx.clone(), account, self.identity.clone()).instrument(span));
        self.by_task.insert(handle.id(), login.clone());
        self.running.insert(login, (handle.id(), handle));
    }

    /// The cluster's ownership changed: workers of accounts lost stop at once (the new owner's
    /// fence would refuse their writes anyway), accounts gained get theirs.
    fn ownership(&mut self, owned: Owned) {
        let lost: Vec<String> = self.running.keys().filter(|l| !owned.contains_key(*l)).cloned().collect();
        for login in lost {
            if let Some((_, task)) = self.running.remove(&login) {
                info!(%login, "stopping the account's worker: another instance owns the account now");
                task.abort();
                let account = self.ctx.accounts.account(&login);
                account.verdicts.send_if_modified(|v| std::mem::replace(&mut v.watching, false));
            }
        }
        self.owned = Some(owned.clone());
        for login in owned.keys() {
            self.start_if_needed(login);
        }
    }
}

/// The accounts whose workers start with the daemon: every `[[account]]` with a
/// `password_command`, so that filtering (COI on in the local store or the provider's
/// METADATA, which the worker reads) and pushes go on with no client connected after a
/// restart; and those with a validated push subscription whose sign-in the configuration can
/// supply (`password_command`, or an OAuth2 grant). Other accounts get their worker at their
/// next login.
async fn at_start(ctx: &Context) -> Vec<String> {
    let config = ctx.config();
    let mut out: Vec<String> = config
        .accounts
        .iter()
        .filter(|a| a.password_command.is_some())
        .filter_map(|a| a.login.as_ref().map(|l| l.to_ascii_lowercase()))
        .collect();
    match ctx.store.read(|s| s.push_accounts()).await {
        Ok(logins) => {
            for login in logins {
                if out.iter().any(|l| l.eq_ignore_ascii_case(&login)) {
                    continue;
                }
                match crate::account::works_without_client(&config, &login) {
                    true => out.push(login),
                    false => {
                        info!(%login, "push subscriptions wait for a login (no password_command for this account)")
                    }
                }
            }
        }
        Err(e) => warn!("cannot read push subscriptions: {e}"),
    }
    // Likewise Delta Chat devices to notify.
    let now = crate::clock::now_unsigned();
    match ctx.store.read(move |s| s.dc_token_accounts(now, crate::deltachat::TOKEN_MAX_AGE)).await {
        Ok(logins) => {
            for login in logins {
                if !out.iter().any(|l| l.eq_ignore_ascii_case(&login)) {
                    info!(%login, "Delta Chat push waits for a login (no password_command for this account)");
                }
            }
        }
        Err(e) => warn!("cannot read Delta Chat device tokens: {e}"),
    }
    // COI switched on in the proxy's store (a provider without METADATA) for an account whose
    // password the proxy cannot get by itself: said, so an operator knows why nothing moves.
    match ctx.store.read(|s| s.metadata_accounts_with(b"", crate::coi::metadata::ENABLED)).await {
        Ok(logins) => {
            for login in logins {
                let waits = !out.iter().any(|l| l.eq_ignore_ascii_case(&login));
                if waits && crate::coi::stored_config(&ctx.store, &login).enabled {
                    info!(%login, "COI filtering waits for a login (no password_command for this account)");
                }
            }
        }
        Err(e) => warn!("cannot read the COI settings: {e}"),
    }
    out.sort();
    out.dedup();
    for login in &out {
        // The COI configuration as the local store has it; the worker reads the provider's.
        ctx.accounts.account(login).set_config(crate::coi::stored_config(&ctx.store, login));
    }
    out
}
