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
use super::{now, send, vapid};
use crate::coi::hub::Account;
use crate::coi::metadata::SetMetadata;
use crate::server::Shared;
use crate::store::{PushSubscription, TooManySubscriptions, Validation};

pub const SUBTREE: &str = "/private/vendor/vendor.dovecot/webpush";
pub const VAPID: &str = "/private/vendor/vendor.dovecot/webpush/vapid";
pub const SUBSCRIPTIONS: &str = "/private/vendor/vendor.dovecot/webpush/subscriptions";

/// Whether `entry` is in the WebPush subtree.
pub fn is_entry(entry: &str) -> bool {
    entry == SUBTREE || entry.starts_with(&format!("{SUBTREE}/"))
}

/// A SETMETADATA of a WebPush entry, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Subscribe { id: String, subscription: Subscription },
    Unsubscribe { id: String },
    Validate { id: String, value: Vec<u8> },
}

/// Why a WebPush SETMETADATA was refused; `Display` is the response text after the tag.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("NO [CANNOT] unable to set read-only entry {VAPID}")]
    ReadOnly,
    #[error("NO [CANNOT] WebPush entries exist on the server level only (mailbox \"\")")]
    NotServerLevel,
    #[error("NO [CANNOT] no such WebPush entry: {0}")]
    Unknown(String),
    #[error("NO [CANNOT] invalid subscription: {0}")]
    Subscription(#[from] SubscriptionError),
    #[error("NO [CANNOT] Too many subscriptions, delete old ones first")]
    TooMany,
    #[error("NO [CANNOT] invalid validation")]
    Validation,
    #[error("NO [UNAVAILABLE] the push service did not take the validation push: {0}")]
    ValidationPush(String),
    #[error("NO [UNAVAILABLE] the proxy cannot store the subscription now (its store is full or unwritable)")]
    Store,
}

/// The WebPush changes of a SETMETADATA; other entries are not looked at.
pub fn changes(set: &SetMetadata) -> Result<Vec<Change>, EntryError> {
    let mut out = Vec::new();
    for (entry, value) in &set.entries {
        if !is_entry(entry) {
            continue;
        }
        if !set.mailbox.is_empty() {
            return Err(EntryError::NotServerLevel);
        }
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
        let value = value.as_deref().filter(|v| !v.is_empty());
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
pub async fn available(shared: &Shared, login: &str) -> BTreeMap<String, Vec<u8>> {
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
pub async fn apply(shared: &Arc<Shared>, account: &Arc<Account>, changes: Vec<Change>) -> Result<(), EntryError> {
    let login = account.login.as_str();
    let config = shared.config();
    let expiry = config.push.validation_expiry_secs;
    for change in changes {
        match change {
            Change::Subscribe { id, subscription } => {
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
                if let Err(reason) = validation_push(shared, login, &subscription, &token).await {
                    let _ = shared.store.push_unsubscribe(login, &id).await;
                    return Err(EntryError::ValidationPush(reason));
                }
                info!(subscription = %id, "push subscription added; validation push sent");
            }
            Change::Validate { id, value } => match shared.store.push_validate(login, &id, &value, now(), expiry).await
            {
                Ok(Validation::Validated) => {
                    info!(subscription = %id, "push subscription validated");
                    crate::coi::worker::ensure_running(shared, account);
                }
                Ok(Validation::Refused) => return Err(EntryError::Validation),
                Err(e) => {
                    warn!("cannot validate a push subscription: {e}");
                    return Err(EntryError::Store);
                }
            },
            Change::Unsubscribe { id } => {
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

/// `{"validation":"<token>"}` with `WebPush-Validation`, at once and once: the client waits
/// for the answer, and learns from a refusal that its endpoint does not work.
async fn validation_push(shared: &Shared, login: &str, sub: &Subscription, token: &str) -> Result<(), String> {
    let config = shared.config();
    let key = super::vapid_key(&shared.store).await.map_err(|e| e.to_string())?;
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
    match send::post(&push).await {
        Ok((status, _)) if send::classify(status, None) == send::Verdict::Delivered => Ok(()),
        Ok((status, _)) => Err(format!("it answered {status}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::metadata::parse_set;
    use crate::imap::wire::command::parse;
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
        assert_eq!(set(&format!("a SETMETADATA \"\" ({VAPID} x)\r\n")), Err(EntryError::ReadOnly));
        assert_eq!(
            set(&format!("a SETMETADATA INBOX ({SUBSCRIPTIONS}/abcdefghij12 NIL)\r\n")),
            Err(EntryError::NotServerLevel)
        );
        assert_eq!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/short NIL)\r\n")),
            Err(SubscriptionError::Id.into())
        );
        assert_eq!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/abcdefghij12/validate NIL)\r\n")),
            Err(EntryError::Validation)
        );
        assert!(matches!(set(&format!("a SETMETADATA \"\" ({SUBTREE}/other x)\r\n")), Err(EntryError::Unknown(_))));
        assert!(matches!(
            set(&format!("a SETMETADATA \"\" ({SUBSCRIPTIONS}/abcdefghij12 \"{{}}\")\r\n")),
            Err(EntryError::Subscription(SubscriptionError::Missing("resource")))
        ));
        assert!(set("a SETMETADATA \"\" (/private/comment x)\r\n").unwrap().is_empty());
        assert_eq!(EntryError::Validation.to_string(), "NO [CANNOT] invalid validation");
    }
}
