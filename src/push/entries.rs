//! The WebPush METADATA entries, answered by the proxy itself and never passed to the provider:
//! - `/private/vendor/vendor.dovecot/webpush/vapid`: the VAPID public key, PEM, read-only;
//! - `.../webpush/subscriptions/<id>`: a subscription's JSON (NIL unsubscribes);
//! - `.../webpush/subscriptions/<id>/validate`: set to the value of the validation push.
//!
//! Entry names reach us lower-cased (RFC 5464: they are case-insensitive), so subscription ids
//! are too.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::subscription::{self, Subscription, SubscriptionError};
use super::{KeyError, now, send, vapid};
use crate::account::Account;
use crate::context::Context;
use crate::imap::wire::metadata::{EntryOwner, Refusal, SetMetadata, Status, in_subtree};
use crate::store::{PushSubscription, TooManySubscriptions, Validation};

pub const SUBTREE: &str = "/private/vendor/vendor.dovecot/webpush";
pub const VAPID: &str = "/private/vendor/vendor.dovecot/webpush/vapid";
pub const SUBSCRIPTIONS: &str = "/private/vendor/vendor.dovecot/webpush/subscriptions";

/// Whether `entry` is in the WebPush subtree.
pub fn is_entry(entry: &str) -> bool {
    in_subtree(entry, SUBTREE)
}

/// The WebPush entries of one session's account, plugged into the COI interceptor.
pub struct Entries {
    ctx: Arc<Context>,
    account: Arc<Account>,
}

impl Entries {
    pub fn new(ctx: Arc<Context>, account: Arc<Account>) -> Entries {
        Entries { ctx, account }
    }
}

impl EntryOwner for Entries {
    type Error = EntryError;

    fn subtree(&self) -> &'static str {
        SUBTREE
    }

    async fn available(&self) -> BTreeMap<String, Vec<u8>> {
        available(&self.ctx, &self.account.login).await
    }

    async fn set(&mut self, set: &SetMetadata) -> Result<(), EntryError> {
        let changes = changes(set)?;
        apply(&self.ctx, &self.account, changes).await
    }
}

/// A SETMETADATA of a WebPush entry, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Subscribe { id: String, subscription: Subscription },
    Unsubscribe { id: String },
    Validate { id: String, value: Vec<u8> },
}

/// Why a WebPush SETMETADATA was refused; the session answers with the [`Refusal::status`]
/// code and this text.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("unable to set read-only entry {VAPID}")]
    ReadOnly,
    #[error("WebPush entries exist on the server level only (mailbox \"\")")]
    NotServerLevel,
    #[error("no such WebPush entry: {0}")]
    Unknown(String),
    #[error("invalid subscription: {0}")]
    Subscription(#[from] SubscriptionError),
    #[error("Too many subscriptions, delete old ones first")]
    TooMany,
    #[error("invalid validation")]
    Validation,
    /// One text whatever went wrong (the details are logged): a refusal that told a closed
    /// port from an open one, or a private address from a public one, made the proxy a port
    /// scanner.
    #[error("the push endpoint did not take the validation push")]
    ValidationPush(#[from] ValidationPushError),
    #[error("too many push subscriptions in a short time; try again later")]
    TooFast,
    #[error("the proxy cannot store the subscription now (its store is full or unwritable)")]
    Store,
}

impl Refusal for EntryError {
    fn status(&self) -> Status {
        match self {
            EntryError::ValidationPush(_) | EntryError::Store | EntryError::TooFast => Status::Unavailable,
            _ => Status::Cannot,
        }
    }
}

/// Why a validation push did not get through.
#[derive(Debug, thiserror::Error)]
pub enum ValidationPushError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Send(#[from] send::SendError),
    #[error("it answered {0}")]
    Refused(u16),
}

/// The WebPush changes of a SETMETADATA; other entries are not looked at.
pub fn changes(set: &SetMetadata) -> Result<Vec<Change>, EntryError> {
    let mut out = Vec::new();
    for (entry, value) in set.entries_in(SUBTREE).map_err(|_| EntryError::NotServerLevel)? {
        if entry == VAPID {
            return Err(EntryError::ReadOnly);
        }
        let Some(rest) = entry.strip_prefix(&format!("{SUBSCRIPTIONS}/")) else {
            return Err(EntryError::Unknown(entry.clone()));
        };
        let (id, validate) = match rest.strip_suffix("/validate") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        subscription::check_id(id)?;
        let id = id.to_string();
        // "" deletes like NIL, as COI clients use it for the COI entries.
        let value = value.filter(|v| !v.is_empty());
        out.push(match (validate, value) {
            (true, Some(v)) => Change::Validate { id, value: v.to_vec() },
            (true, None) => return Err(EntryError::Validation),
            (false, Some(v)) => Change::Subscribe { id, subscription: subscription::parse(v)? },
            (false, None) => Change::Unsubscribe { id },
        });
    }
    Ok(out)
}

/// The entries a GETMETADATA may return: the VAPID key (made on first use) and the live
/// subscriptions, each with `created` and `validated`.
pub async fn available(shared: &Context, login: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    match super::vapid_key(&shared.store).await.and_then(|k| Ok(vapid::public_pem(&k)?)) {
        Ok(pem) => {
            out.insert(VAPID.to_string(), pem.into_bytes());
        }
        Err(e) => warn!("no VAPID key: {e}"),
    }
    let expiry = shared.config().push.validation_expiry_secs;
    match shared.store.push_subscriptions(login, now(), expiry) {
        Ok(subs) => {
            for s in subs {
                let listed = subscription::listing(&s.json, &super::payload::rfc3339(s.created as i64), s.validated);
                out.insert(format!("{SUBSCRIPTIONS}/{}", s.id), listed.into_bytes());
            }
        }
        Err(e) => warn!("cannot read push subscriptions: {e}"),
    }
    out
}

/// Carries out checked changes, in order; stops at the first refusal.
pub async fn apply(shared: &Context, account: &Account, changes: Vec<Change>) -> Result<(), EntryError> {
    let login = account.login.as_str();
    let config = shared.config();
    let expiry = config.push.validation_expiry_secs;
    for change in changes {
        match change {
            Change::Subscribe { id, subscription } => {
                if !validation_allowed(login, std::time::Instant::now()) {
                    warn!(subscription = %id, "push subscription refused: too many validation pushes for this account");
                    return Err(EntryError::TooFast);
                }
                let token = super::random_token();
                let stored = PushSubscription {
                    id: id.clone(),
                    json: subscription.json.clone(),
                    created: now(),
                    validated: false,
                    token: token.clone(),
                };
                match shared.store.push_subscribe(login, &stored, config.push.subscription_limit, now(), expiry).await {
                    Ok(Ok(())) => {}
                    Ok(Err(TooManySubscriptions)) => return Err(EntryError::TooMany),
                    Err(e) => {
                        warn!("cannot store a push subscription: {e}");
                        return Err(EntryError::Store);
                    }
                }
                if let Err(e) = share(shared, login, &id, Some(stored)).await {
                    warn!(subscription = %id, "cannot share a push subscription with the cluster: {e}");
                    let _ = shared.store.push_unsubscribe(login, &id).await;
                    return Err(EntryError::Store);
                }
                if let Err(reason) = validation_push(shared, login, &subscription, &token).await {
                    warn!(subscription = %id, "push endpoint refused: {reason}");
                    let _ = shared.store.push_unsubscribe(login, &id).await;
                    return Err(reason.into());
                }
                info!(subscription = %id, "push subscription added; validation push sent");
            }
            Change::Validate { id, value } => match shared.store.push_validate(login, &id, &value, now(), expiry).await
            {
                Ok(Validation::Validated) => {
                    let validated = shared.store.push_subscription(login, &id).ok().flatten();
                    if let Err(e) = share(shared, login, &id, validated).await {
                        warn!(subscription = %id, "cannot share a validated push subscription with the cluster: {e}");
                        return Err(EntryError::Store);
                    }
                    info!(subscription = %id, "push subscription validated");
                    shared.workers.want(login);
                }
                Ok(Validation::Refused) => return Err(EntryError::Validation),
                Err(e) => {
                    warn!("cannot validate a push subscription: {e}");
                    return Err(EntryError::Store);
                }
            },
            Change::Unsubscribe { id } => {
                if let Err(e) = share(shared, login, &id, None).await {
                    warn!(subscription = %id, "cannot remove a push subscription from the cluster: {e}");
                    return Err(EntryError::Store);
                }
                match shared.store.push_unsubscribe(login, &id).await {
                    Ok(true) => info!(subscription = %id, "push subscription removed"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!("cannot remove a push subscription: {e}");
                        return Err(EntryError::Store);
                    }
                }
                // The worker may have nothing left to do.
                account.nudge.notify_one();
            }
        }
    }
    Ok(())
}

/// With `[cluster]`, hands a subscription's new state to etcd (sealed there), whose watch
/// brings it to every instance; a no-op for one instance.
async fn share(
    shared: &Context,
    login: &str,
    id: &str,
    subscription: Option<PushSubscription>,
) -> Result<(), crate::context::ClusterError> {
    let change = crate::context::SharedChange::Push { login: login.to_string(), id: id.to_string(), subscription };
    shared.publish(change).await
}

/// Validation pushes an account may send in a burst, and how often it gets one more: each
/// subscription costs an outbound POST, and subscribe/unsubscribe churn must not make the
/// proxy a request cannon.
const VALIDATION_BURST: f64 = 10.0;
const VALIDATION_EVERY: std::time::Duration = std::time::Duration::from_secs(6);
/// Accounts whose validation budget is tracked at most (the least recently used go first).
const MAX_BUDGETS: usize = 10_000;

/// Whether `login` may send one more validation push now (and takes it from its budget).
fn validation_allowed(login: &str, now: std::time::Instant) -> bool {
    static BUDGETS: std::sync::Mutex<BTreeMap<String, (f64, std::time::Instant)>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut budgets = BUDGETS.lock().unwrap_or_else(|e| e.into_inner());
    if budgets.len() >= MAX_BUDGETS && !budgets.contains_key(login) {
        let oldest = budgets.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            budgets.remove(&oldest);
        }
    }
    let (tokens, at) = budgets.entry(login.to_string()).or_insert((VALIDATION_BURST, now));
    let refill = now.duration_since(*at).as_secs_f64() / VALIDATION_EVERY.as_secs_f64();
    *tokens = (*tokens + refill).min(VALIDATION_BURST);
    *at = now;
    if *tokens < 1.0 {
        return false;
    }
    *tokens -= 1.0;
    true
}

/// `{"validation":"<token>"}` with `WebPush-Validation`, at once and once: the client waits
/// for the answer, and learns from a refusal that its endpoint does not work.
async fn validation_push(
    shared: &Context,
    login: &str,
    sub: &Subscription,
    token: &str,
) -> Result<(), ValidationPushError> {
    let config = shared.config();
    let key = super::vapid_key(&shared.store).await?;
    let subject = vapid::subject(config.push.vapid_subject.as_deref(), login);
    let payload = format!("{{\"validation\":\"{token}\"}}");
    let push = send::Push {
        subscription: sub,
        payload: payload.as_bytes(),
        key: &key,
        subject: &subject,
        ttl: config.push.validation_expiry_secs,
        validation: true,
        timeout: config.push.timeout(),
        private_endpoints: config.push.private_endpoints,
    };
    let answer = send::post(&push).await?;
    match send::classify(answer.status, None) {
        send::Verdict::Delivered => Ok(()),
        _ => Err(ValidationPushError::Refused(answer.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::wire::command::parse;
    use crate::imap::wire::metadata::parse_set;
    use subscription::tests::{AUTH, P256DH};

    fn set(line: &str) -> Result<Vec<Change>, EntryError> {
        changes(&parse_set(&parse(line.as_bytes()).unwrap()).unwrap())
    }

    #[test]
    fn setmetadata_changes() {
        let json = format!(
            r#"{{"msgtype":"all","resource":{{"endpoint":"https://p.example/x","keys":{{"p256dh":"{P256DH}","auth":"{AUTH}"}}}}}}"#
        );
        let cmd = format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/AbCdEfGhIj12 {{{}}}\r\n{json})\r\n", json.len());
        let got = set(&cmd).unwrap();
        assert!(matches!(&got[..], [Change::Subscribe { id, .. }] if id == "abcdefghij12"), "{got:?}");
        assert_eq!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/abcdefghij12 NIL /private/comment x)\r\n")).unwrap(),
            vec![Change::Unsubscribe { id: "abcdefghij12".into() }]
        );
        assert_eq!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/abcdefghij12/validate \"v\")\r\n")).unwrap(),
            vec![Change::Validate { id: "abcdefghij12".into(), value: b"v".to_vec() }]
        );
        assert!(matches!(set(&format!("a SETMETADATA \"\" ({VAPID} x)\r\n")), Err(EntryError::ReadOnly)));
        assert!(matches!(
            set(&format!("a SETMETADATA INBOX ({SUBSCRIPTIONS}/abcdefghij12 NIL)\r\n")),
            Err(EntryError::NotServerLevel)
        ));
        assert!(matches!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/short NIL)\r\n")),
            Err(EntryError::Subscription(SubscriptionError::Id))
        ));
        assert!(matches!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/abcdefghij12/validate NIL)\r\n")),
            Err(EntryError::Validation)
        ));
        assert!(matches!(set(&format!("a SETMETADATA \"\" ({SUBTREE}/other x)\r\n")), Err(EntryError::Unknown(_))));
        assert!(matches!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/abcdefghij12 \"{{}}\")\r\n")),
            Err(EntryError::Subscription(SubscriptionError::Missing("resource")))
        ));
        assert!(set("a SETMETADATA \"\" (/private/comment x)\r\n").unwrap().is_empty());
        assert_eq!(EntryError::Validation.to_string(), "invalid validation");
        assert_eq!(
            EntryError::from(ValidationPushError::Refused(404)).to_string(),
            EntryError::from(ValidationPushError::Refused(500)).to_string(),
            "one text, whatever the endpoint did"
        );
    }

    #[test]
    fn validation_pushes_are_rate_limited_per_account() {
        let start = std::time::Instant::now();
        let sent = (0..60).filter(|_| validation_allowed("churn@test", start)).count();
        assert_eq!(sent, VALIDATION_BURST as usize);
        assert!(validation_allowed("other@test", start), "another account has its own budget");
        assert!(validation_allowed("churn@test", start + VALIDATION_EVERY), "one more after a while");
        assert_eq!(EntryError::Validation.status(), Status::Cannot);
        assert_eq!(EntryError::Store.status(), Status::Unavailable);
    }
}
