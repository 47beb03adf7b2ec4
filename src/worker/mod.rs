//! The account workers (an edge): the proxy's own connection per account that needs one (COI
//! enabled, or a validated push subscription), doing at delivery time what a COI server does
//! (`account`). One supervisor owns every worker's life: sessions and wings ask for a worker
//! through [`Context::workers`]; the supervisor starts one when the account needs it and none
//! runs, starts it again if it stopped while still needed, and starts nothing once the daemon
//! shuts down.

mod account;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};
use tracing::{Instrument, info, info_span, warn};

use crate::account::Account;
use crate::context::Context;

/// Whether `account` needs its worker: COI enabled, or a validated push subscription.
fn wanted(ctx: &Context, account: &Account) -> bool {
    account.current().enabled || crate::push::wanted(&ctx.store, &account.login)
}

/// Runs until shutdown: reads the requests for workers (`Context::workers`), keeps exactly one
/// worker per account that needs one, and at shutdown waits for the workers to stop.
pub async fn supervise(ctx: Arc<Context>, mut requests: mpsc::UnboundedReceiver<String>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut workers =
        Workers { ctx: ctx.clone(), tasks: JoinSet::new(), by_task: HashMap::new(), running: HashSet::new() };
    for login in at_start(&ctx).await {
        workers.start_if_needed(&login);
    }
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|down| *down) => break,
            Some(login) = requests.recv() => workers.start_if_needed(&login),
            Some(ended) = workers.tasks.join_next_with_id(), if !workers.tasks.is_empty() => {
                let (id, stopped) = match &ended {
                    Ok((id, ())) => (*id, true),
                    Err(e) => {
                        warn!("an account worker failed: {e}; the account's next request starts another");
                        (e.id(), false)
                    }
                };
                if let Some(login) = workers.by_task.remove(&id) {
                    workers.running.remove(&login);
                    // COI may have been enabled (or a subscription validated) again while it
                    // stopped; a failed one waits for the next request, so it cannot spin.
                    if stopped && !*ctx.shutdown.borrow() {
                        workers.start_if_needed(&login);
                    }
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
    /// The accounts that have a worker.
    running: HashSet<String>,
}

impl Workers {
    fn start_if_needed(&mut self, login: &str) {
        let account = self.ctx.accounts.account(login);
        if self.running.contains(&account.login) || !wanted(&self.ctx, &account) {
            return;
        }
        crate::metrics::WORKER_STARTS.inc();
        let span = info_span!(parent: None, "worker", login = %account.login);
        let login = account.login.clone();
        let handle = self.tasks.spawn(account::run(self.ctx.clone(), account).instrument(span));
        self.by_task.insert(handle.id(), login.clone());
        self.running.insert(login);
    }
}

/// The accounts whose workers start with the daemon: those with a validated subscription whose
/// sign-in the configuration can supply (`password_command`, or an OAuth2 grant), so pushes go
/// on with no client connected after a restart. Other accounts get their worker at their next login.
async fn at_start(ctx: &Context) -> Vec<String> {
    let logins = match ctx.store.read(|s| s.push_accounts()).await {
        Ok(logins) => logins,
        Err(e) => {
            warn!("cannot read push subscriptions: {e}");
            return Vec::new();
        }
    };
    let config = ctx.config();
    let mut out = Vec::new();
    for login in logins {
        if !crate::account::works_without_client(&config, &login) {
            info!(%login, "push subscriptions wait for a login (no password_command for this account)");
            continue;
        }
        // The COI configuration as the local store has it; the worker reads the provider's.
        ctx.accounts.account(&login).set_config(crate::coi::stored_config(&ctx.store, &login));
        out.push(login);
    }
    out
}
