//! The notifier task: for each account with new mail, POSTs each of its device tokens, verbatim
//! as the raw body, to `[deltachat] notifier_url` (Delta Chat's notification service, which
//! decrypts the token and wakes the phone through Apple's or Google's push service); carries
//! out the retries `schedule` asks for, keeping the waiting ones in the store so that a restart
//! loses none. Started by `app`; one for the whole daemon.
//!
//! The service sees a token (encrypted by Delta Chat for it alone), the proxy's address and the
//! time; nothing about the message or the account. Tokens are never logged.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::schedule::{Effect, Outcome, Schedule};
use crate::clock::now_unsigned;
use crate::context::{Context, SharedChange};
use crate::secret::Secret;

/// Longest a POST may take (as chatmail's relay allows).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs until shutdown: news of new mail from `news` (account logins), retries when due.
pub async fn run(ctx: Arc<Context>, mut news: mpsc::UnboundedReceiver<String>) {
    let mut schedule = Schedule::default();
    match ctx.store.read(|s| s.dc_retries()).await {
        Ok(waiting) if !waiting.is_empty() => {
            info!(count = waiting.len(), "Delta Chat notifications waiting for a retry");
            schedule.restore(waiting);
        }
        Ok(_) => {}
        Err(e) => warn!("cannot read the Delta Chat notifications waiting for a retry: {e}"),
    }
    let mut posts: JoinSet<(Secret, Outcome)> = JoinSet::new();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let now = now_unsigned();
        for effect in schedule.due(now) {
            apply(&ctx, effect, &mut posts);
        }
        let wait = schedule.next_due().map_or(Duration::from_secs(3600), |due| Duration::from_secs(due - now.min(due)));
        tokio::select! {
            _ = shutdown.wait_for(|down| *down) => break,
            Some(login) = news.recv() => {
                let tokens = super::tokens(&ctx.store, &login);
                debug!(devices = tokens.len(), "new mail to notify Delta Chat devices of");
                for token in tokens {
                    for effect in schedule.new_mail(&token, now_unsigned()) {
                        apply(&ctx, effect, &mut posts);
                    }
                }
            }
            Some(done) = posts.join_next(), if !posts.is_empty() => {
                let Ok((token, outcome)) = done else { continue };
                for effect in schedule.answered(&token, outcome, now_unsigned()) {
                    apply(&ctx, effect, &mut posts);
                }
            }
            () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
        }
    }
}

/// Carries out what the schedule asks for. Store writes are sent in order and awaited off the
/// loop, so a commit never holds up a POST.
fn apply(ctx: &Arc<Context>, effect: Effect, posts: &mut JoinSet<(Secret, Outcome)>) {
    let store = &ctx.store;
    match effect {
        Effect::Send(token) => {
            let url = ctx.config().deltachat.notifier_url.clone();
            posts.spawn(async move {
                let outcome = post(&url, &token).await;
                (token, outcome)
            });
        }
        Effect::Persist(entry) => {
            info!(
                attempts = entry.attempts,
                retry_in_s = entry.due.saturating_sub(now_unsigned()),
                "Delta Chat notification failed; will retry"
            );
            let write = store.dc_retry_put(&entry);
            tokio::spawn(async move {
                if let Err(e) = write.await {
                    warn!("cannot keep a Delta Chat notification for its retry: {e}");
                }
            });
        }
        Effect::Forget(token) => {
            let write = store.dc_retry_remove(&token);
            tokio::spawn(async move {
                if let Err(e) = write.await {
                    warn!("cannot forget a Delta Chat notification's retry: {e}");
                }
            });
        }
        Effect::DeleteToken(token) => {
            info!("the notifier says a Delta Chat device token is no longer valid (410); removing it");
            let write = store.dc_token_remove(&token);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match write.await {
                    Ok(accounts) => {
                        // With `[cluster]`, gone on every instance.
                        for login in accounts {
                            let change = SharedChange::DeviceToken { login, token: token.clone(), set_at: None };
                            if let Err(e) = ctx.publish(change).await {
                                warn!("cannot remove a Delta Chat device token from the cluster: {e}");
                            }
                        }
                    }
                    Err(e) => warn!("cannot remove a Delta Chat device token: {e}"),
                }
            });
        }
        Effect::GaveUp { attempts } => {
            warn!(attempts, "gave up on a Delta Chat notification (5 hours after its first attempt)");
        }
    }
}

/// One POST of `token` to `url`; what the notifier answered.
async fn post(url: &str, token: &Secret) -> Outcome {
    if url.is_empty() {
        debug!("Delta Chat push was turned off; notification dropped");
        return Outcome::Delivered;
    }
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot notify Delta Chat devices: {e}");
            return Outcome::Failed;
        }
    };
    let started = std::time::Instant::now();
    match client.post(url).timeout(TIMEOUT).body(token.expose().to_vec()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let outcome = Outcome::of_status(status);
            crate::metrics::deltachat_notified(outcome == Outcome::Delivered);
            if outcome == Outcome::Failed {
                warn!(status, "Delta Chat notifier refused a notification");
            } else {
                debug!(status, ms = started.elapsed().as_millis() as u64, "Delta Chat device notified");
            }
            outcome
        }
        Err(e) => {
            crate::metrics::deltachat_notified(false);
            warn!("cannot reach the Delta Chat notifier: {}", root_cause(&e));
            Outcome::Failed
        }
    }
}

/// Why no HTTP client could be built (the platform's trust store, or reqwest's setup).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot set up HTTPS to the notifier: {0}")]
pub struct ClientError(Arc<dyn std::error::Error + Send + Sync>);

/// One HTTP client for every notification (its connection pool keeps the connection to the
/// notifier open): platform trust, no redirects, no proxy from the environment.
fn client() -> Result<&'static reqwest::Client, ClientError> {
    static CLIENT: OnceLock<Result<reqwest::Client, ClientError>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let tls = crate::tls::UpstreamTls::default().config(None).map_err(|e| ClientError(Arc::new(e)))?;
            let mut tls = (*tls).clone();
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| ClientError(Arc::new(e)))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The innermost error text (reqwest's own says only "error sending request"); never the body.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
