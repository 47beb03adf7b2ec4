//! The account worker's side of pushing: for the new messages it has classified, fetch what
//! the payloads need (only when the account has subscriptions that want them), and once the
//! messages are where they stay (INBOX, or Chats in `active` mode), send the pushes in the
//! background, one task per subscription so that its pushes keep their order.
//!
//! With `[cluster]` each message's push is claimed first, in etcd, under the owner's fence
//! ([`Claims`]): only the first claim for (account, UIDVALIDITY, UID) pushes. The claim comes
//! before the send, so the choice is at-most-once: an owner that dies between its claim and the
//! send loses that push; none is ever sent twice (a new owner that looks at the same message
//! again finds it claimed).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::payload::{self, Parsed, Summary};
use super::subscription::{self, Subscription};
use super::{imap, now, send, vapid};
use crate::config::Config;
use crate::imap::wire::provider::{self, ProviderCommands, ProviderError};
use crate::store::{PushSubscription, Store};

/// Pushes in flight at once, over all accounts.
static IN_FLIGHT: Semaphore = Semaphore::const_new(64);
/// Messages that came while no worker ran (after a restart, or between a subscription's
/// validation and the worker's start) are pushed too, but at most this many UIDs back: a phone
/// need not buzz a hundred times after a week-long outage.
const CATCH_UP: u32 = 20;
/// Clock difference allowed between the provider (INTERNALDATE) and us.
const CLOCK_SLACK: i64 = 60;

/// The first INBOX UID to look at for pushes, given where the worker stopped last time (`None`:
/// it never ran) and UIDNEXT now. Older messages than a subscription are left out later, by
/// their INTERNALDATE ([`Pending::send`]).
pub fn first_to_push(stored_next: Option<u32>, uidnext: u32) -> u32 {
    stored_next.unwrap_or(1).max(uidnext.saturating_sub(CATCH_UP))
}

/// Whether a message that arrived at `arrived` is news to a subscription made at `created`.
fn news_to(arrived: Option<i64>, created: u64) -> bool {
    arrived.is_none_or(|a| a + CLOCK_SLACK >= created as i64)
}

/// The cluster's push claims for one account, under the owner's fencing token.
pub struct Claims {
    pub cluster: Arc<dyn crate::context::Cluster>,
    pub login: String,
    pub fence: i64,
}

impl Claims {
    /// Whether this instance may push about INBOX message (UIDVALIDITY, UID): it made the
    /// first claim. Unsure (etcd unreachable, another owner) counts as no.
    async fn claim(&self, message: (u32, u32)) -> bool {
        match self
            .cluster
            .claim_push(crate::context::PushChannel::WebPush, self.login.clone(), self.fence, message)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                debug!(uid = message.1, "pushed before (by this or another instance): not again");
                false
            }
            Err(e) => {
                warn!(uid = message.1, "no push for this message: cannot claim it: {e}");
                false
            }
        }
    }
}

/// New messages about to be pushed.
pub struct Pending {
    login: String,
    subscriptions: Vec<(PushSubscription, Subscription)>,
    messages: Vec<Message>,
}

struct Message {
    chat: bool,
    /// INTERNALDATE, seconds since the epoch.
    arrived: Option<i64>,
    parsed: Parsed,
    body: Option<String>,
    /// Where the message is now: folder, UIDVALIDITY, UID.
    folder: String,
    uidvalidity: u32,
    uid: u32,
    /// Where it was when it arrived (INBOX's UIDVALIDITY and UID): the push's identity.
    arrival: (u32, u32),
}

/// Fetches the header fields and body start of the `new` messages (UID, chat) in the selected
/// INBOX that some validated subscription of `login` wants. `None` when there is nothing to push.
pub async fn prepare(
    store: &Store,
    config: &Config,
    login: &str,
    provider: &mut impl ProviderCommands,
    inbox_uidvalidity: u32,
    new: &[(u32, bool)],
) -> Result<Option<Pending>, ProviderError> {
    if new.is_empty() {
        return Ok(None);
    }
    let subscriptions: Vec<(PushSubscription, Subscription)> =
        match store.push_subscriptions(login, now(), config.push.validation_expiry_secs) {
            Ok(subs) => subs
                .into_iter()
                .filter(|s| s.validated)
                .filter_map(|s| subscription::parse(s.json.as_bytes()).ok().map(|parsed| (s, parsed)))
                .collect(),
            Err(e) => {
                warn!("cannot read push subscriptions: {e}");
                return Ok(None);
            }
        };
    let wanted: Vec<&(u32, bool)> =
        new.iter().filter(|(_, chat)| subscriptions.iter().any(|(_, s)| s.msgtype.wants(*chat))).collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let uids: Vec<String> = wanted.iter().map(|(uid, _)| uid.to_string()).collect();
    let cmd = format!(
        "UID FETCH {} (UID INTERNALDATE BODY.PEEK[HEADER.FIELDS ({})] BODY.PEEK[TEXT]<0.{}>)\r\n",
        uids.join(","),
        payload::HEADER_FIELDS,
        payload::MAX_BODY + 1
    );
    let reply = provider.run(cmd.as_bytes(), provider::ALL).await?;
    debug!(uids = %uids.join(","), "fetched new messages to push about");
    let mut messages = Vec::new();
    for fetched in reply.untagged.iter().filter_map(|r| imap::parse_fetch(r)) {
        let Some(&&(uid, chat)) = wanted.iter().find(|(u, _)| *u == fetched.uid) else { continue };
        let mut parsed = payload::parse_header(&fetched.header);
        if parsed.mdn {
            debug!(uid, "a read receipt: no push");
            continue;
        }
        parsed.date = parsed.date.or(fetched.internal_date);
        let body = fetched.text.as_deref().and_then(payload::body_text);
        let (arrived, folder, uidvalidity) = (fetched.internal_date, "INBOX".into(), inbox_uidvalidity);
        messages.push(Message { chat, arrived, parsed, body, folder, uidvalidity, uid, arrival: (uidvalidity, uid) });
    }
    messages.sort_by_key(|m| m.uid);
    Ok((!messages.is_empty()).then(|| Pending { login: login.to_string(), subscriptions, messages }))
}

impl Pending {
    /// Records that messages were moved to `folder` (from a COPYUID code).
    pub fn moved(&mut self, folder: &str, uidvalidity: u32, map: &[(u32, u32)]) {
        for m in &mut self.messages {
            if let Some(&(_, to)) = map.iter().find(|(from, _)| *from == m.uid) {
                m.folder = folder.to_string();
                m.uidvalidity = uidvalidity;
                m.uid = to;
            }
        }
    }

    /// Sends the pushes in the background; with `claims`, only those of the messages this
    /// instance claims first.
    pub fn send(self, store: Store, config: Arc<Config>, claims: Option<Claims>) {
        match claims {
            None => self.send_now(store, config, None),
            Some(claims) => {
                tokio::spawn(async move {
                    let mut pending = self;
                    let mut kept = Vec::new();
                    for m in std::mem::take(&mut pending.messages) {
                        if claims.claim(m.arrival).await {
                            kept.push(m);
                        }
                    }
                    pending.messages = kept;
                    pending.send_now(store, config, Some(claims.cluster));
                });
            }
        }
    }

    /// `cluster`: where a subscription the push service says is gone is removed too.
    fn send_now(self, store: Store, config: Arc<Config>, cluster: Option<Arc<dyn crate::context::Cluster>>) {
        let Pending { login, subscriptions, messages } = self;
        let messages = Arc::new(messages);
        for (stored, sub) in subscriptions {
            let payloads: Vec<(u32, String)> = messages
                .iter()
                .filter(|m| sub.msgtype.wants(m.chat) && news_to(m.arrived, stored.created))
                .map(|m| (m.uid, payload::build(&summary(m))))
                .collect();
            if payloads.is_empty() {
                continue;
            }
            let (store, config, login, cluster) = (store.clone(), config.clone(), login.clone(), cluster.clone());
            tokio::spawn(async move {
                let Ok(_permit) = IN_FLIGHT.acquire().await else { return };
                let key = match super::vapid_key(&store).await {
                    Ok(k) => k,
                    Err(e) => return warn!("cannot push: {e}"),
                };
                let subject = vapid::subject(config.push.vapid_subject.as_deref(), &login);
                for (uid, payload) in payloads {
                    let push = send::Push {
                        subscription: &sub,
                        payload: payload.as_bytes(),
                        key: &key,
                        subject: &subject,
                        ttl: config.push.ttl_secs,
                        validation: false,
                        timeout: config.push.timeout(),
                        private_endpoints: config.push.private_endpoints,
                    };
                    match send::deliver(&push, config.push.max_attempts, &stored.id).await {
                        send::Verdict::Delivered => debug!(subscription = %stored.id, uid, "pushed"),
                        send::Verdict::Gone => {
                            info!(subscription = %stored.id, "the push service says the subscription is gone; removing it");
                            if let Some(cluster) = &cluster {
                                let change = crate::context::SharedChange::Push {
                                    login: login.clone(),
                                    id: stored.id.clone(),
                                    subscription: None,
                                };
                                if let Err(e) = cluster.publish(change).await {
                                    warn!("cannot remove a push subscription from the cluster: {e}");
                                }
                            }
                            if let Err(e) = store.push_unsubscribe(&login, &stored.id).await {
                                warn!("cannot remove a push subscription: {e}");
                            }
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    }
}

fn summary(m: &Message) -> Summary {
    Summary {
        folder: m.folder.clone(),
        uidvalidity: m.uidvalidity,
        uid: m.uid,
        header: m.parsed.clone(),
        body: m.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_as_new() {
        assert_eq!(first_to_push(None, 50), 30, "first start: the last few, filtered by date");
        assert_eq!(first_to_push(None, 5), 1);
        assert_eq!(first_to_push(Some(45), 50), 45, "missed while down");
        assert_eq!(first_to_push(Some(3), 500), 480, "bounded");
        assert_eq!(first_to_push(Some(3), 10), 3);
        assert!(news_to(Some(1000), 1000) && news_to(Some(950), 1000) && news_to(None, 1000));
        assert!(!news_to(Some(900), 1000), "older than the subscription");
    }
}
