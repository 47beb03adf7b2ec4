//! One account's worker: the proxy's own connection for an account with COI enabled, push
//! subscriptions, or a `password_command`, doing what a COI server does at delivery time. It
//! waits in IDLE on INBOX (or polls a provider without IDLE), classifies each new message from
//! its header fields, sets `$Chat`, and moves chat messages to `<root>/Chats`: at once in
//! `active` mode, once they are `\Seen` in `seen` mode; it hands reports to the receipts wing
//! and new mail to the push wing, and tells the sessions' quiet INBOX when it has looked.
//!
//! It is started once and runs until the daemon shuts down. Each cycle begins by reading the
//! COI configuration again where the provider keeps it (METADATA), so a change made by another
//! device or proxy instance counts from the next message on; a cycle comes at the latest every
//! `[coi] config_check_secs`. With nothing to do (COI off, no subscription) it stays connected
//! to watch that configuration, or, where the proxy keeps it, waits unconnected for a change.
//! It reconnects with backoff when the provider drops.
//!
//! INBOX is watched EXAMINEd (read-only), not SELECTed: a SELECT takes the `\Recent` flags of
//! the new mail from the user's own clients. Only to change something (`$Chat`, a move) is INBOX
//! SELECTed, briefly, and EXAMINEd again right after. (Not on imap4d, whose UIDs change between
//! EXAMINE and SELECT: see `ProviderProfile::examine_uids_stable`.)
//!
//! How it moves, and whether it waits in IDLE or polls, the provider profile says
//! (`provider_profile`): MOVE; COPY + `\Deleted` + UID EXPUNGE (UIDPLUS); or, with neither
//! (imap4d), COPY + `\Deleted` + EXPUNGE with the user's own `\Deleted` messages set aside
//! (unflagged for that moment, flagged again after). Courier's and imap4d's IDLE do not push:
//! those are polled.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::account::{Account, CoiConfig, Filter};
use crate::coi::classify::{self, ChatHeaders, FIELDS};
use crate::coi::folders::Namespace;
use crate::context::{Context, PushChannel};
use crate::imap::upstream::{OwnWorkError, Upstream, UpstreamError};
use crate::imap::wire::response::{response_code_number, search_uids, uid_set};
use crate::openpgp::identity::Identity;
use crate::provider_profile::move_plan::{Command, MovePlan, Next, Reply};
use crate::provider_profile::{IdleMode, MetadataHome, ProviderProfile};

/// Longest IDLE before it is renewed (RFC 2177: at most 29 minutes).
/// Also a safety net: a provider may miss reporting mail that arrived just before IDLE began.
const IDLE_RENEW: Duration = Duration::from_secs(5 * 60);
/// IDLE after new mail, to catch what arrived while the worker was busy.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Messages classified per FETCH when catching up with a large INBOX.
const BATCH: u32 = 500;
/// Chat messages remembered as waiting for `\Seen` where the provider keeps no `$Chat`.
const MAX_WAITING: usize = 10_000;

/// A COPYUID response code: the target's UIDVALIDITY and (old, new) UID pairs.
type CopyUid = (u32, Vec<(u32, u32)>);

/// Serves the account until the daemon shuts down.
pub(super) async fn run(shared: Arc<Context>, account: Arc<Account>, identity: Option<Identity>) {
    info!("account worker started");
    let mut backoff = Duration::from_secs(1);
    let mut config_rx = account.config.subscribe();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let result = tokio::select! {
            result = serve(&shared, &account, &mut config_rx, identity.as_ref()) => result,
            _ = shutdown.changed() => break,
        };
        unwatch(&account);
        match result {
            Ok(()) => {
                // Nothing to do, and nothing to watch at the provider: until that changes.
                backoff = Duration::from_secs(1);
                tokio::select! {
                    _ = config_rx.changed() => {}
                    _ = account.nudge.notified() => {}
                    _ = shutdown.changed() => break,
                }
            }
            Err(e) => {
                warn!("account worker: {e}; retrying in {} s", backoff.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = account.nudge.notified() => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    unwatch(&account);
    info!("account worker stopped");
}

/// Whether the account has work for its worker now: COI enabled, a validated subscription, a
/// Delta Chat device to notify, a chat client's mail to rescue from Junk, or an OpenPGP key.
fn has_work(shared: &Context, account: &Account, identity: Option<&Identity>) -> bool {
    let config = shared.config();
    account.current().enabled
        || crate::push::wanted(&shared.store, &account.login)
        || crate::deltachat::wanted(&shared.store, &config, &account.login)
        || (config.coi.rescue_junk && account.chat_client.load(std::sync::atomic::Ordering::Relaxed))
        || super::gateway::wanted(identity, &account.login)
}

/// Whether chat mail is rescued from Junk for the account: with COI, push or a chat client (not
/// for a worker that runs only to watch the configuration or for the OpenPGP gateway).
fn rescues(shared: &Context, account: &Account) -> bool {
    let config = shared.config();
    config.coi.rescue_junk
        && (account.current().enabled
            || crate::push::wanted(&shared.store, &account.login)
            || crate::deltachat::wanted(&shared.store, &config, &account.login)
            || account.chat_client.load(std::sync::atomic::Ordering::Relaxed))
}

/// Sessions stop waiting for this worker.
fn unwatch(account: &Account) {
    account.verdicts.send_if_modified(|v| std::mem::replace(&mut v.watching, false));
}

/// One connection's worth of work; `Ok` when there is nothing to do and nothing to watch.
async fn serve(
    shared: &Context,
    account: &Account,
    config_rx: &mut watch::Receiver<CoiConfig>,
    identity: Option<&Identity>,
) -> Result<(), OwnWorkError> {
    let login = account.login.as_str();
    let credential = shared.credentials.credential(&shared.config(), login).await?;
    // Every message in INBOX when the first look begins counts as looked at after it.
    let mut look_began = Instant::now();
    let mut up = Upstream::open(shared, login, &credential).await?;
    drop(credential);
    let profile = up.profile();
    // Cyrus advertises METADATA but refuses the COI entries: there they are in the store.
    let metadata = profile.metadata == MetadataHome::Provider;
    let mut next_poll = tokio::time::Instant::now();
    let check_every = Duration::from_secs(shared.config().coi.config_check_secs.max(1));
    let mut inbox: Option<Inbox> = None;
    // Found with INBOX, on the first cycle with work.
    let mut junk: Option<super::junk::Junk> = None;
    loop {
        config_rx.mark_unchanged();
        if metadata {
            account.set_config(crate::coi::config_at_provider(&mut up).await?);
        }
        let config = account.current();
        if !has_work(shared, account, identity) {
            unwatch(account);
            if !metadata {
                let _ = up.command(b"LOGOUT\r\n").await;
                return Ok(());
            }
            debug!("nothing to do; watching the COI configuration");
            tokio::select! {
                _ = tokio::time::sleep(check_every) => {}
                _ = account.nudge.notified() => {}
                _ = config_rx.changed() => {}
            }
            look_began = Instant::now();
            continue;
        }
        let inbox = match &mut inbox {
            Some(inbox) => inbox,
            None => {
                let opened = Inbox::open(shared, account, &mut up, profile.clone()).await?;
                info!(chats = %opened.chats, idle = ?profile.idle, moves = ?profile.move_strategy, "watching INBOX");
                junk = super::junk::Junk::find(shared, &mut up).await?;
                inbox.insert(opened)
            }
        };
        // A key made after the worker started (a first message sent, an invite) wakes the gateway.
        if inbox.gateway.is_none() {
            inbox.gateway = identity.filter(|_| super::gateway::wanted(identity, login));
        }
        let before = inbox.next_uid;
        let filter = config.effective_filter();
        // INBOX first: what the provider just announced is classified, and its push (Delta
        // Chat's notification above all) leaves, before Junk costs two round trips.
        inbox.process_new(&mut up, filter).await?;
        if let Some(junk) = junk.as_mut().filter(|_| rescues(shared, account)) {
            // Rescued chat mail goes where the chat client looks; in INBOX it is new mail below.
            let target = if config.effective_filter() == Filter::Active { inbox.chats.clone() } else { "INBOX".into() };
            junk.check(shared, identity, login, &mut up, &target).await?;
            // Mail delivered to INBOX while Junk was looked at may be in no view a FETCH reads
            // (its `* n EXISTS` went by with the STATUS, and IDLE does not report it again):
            // a NOOP brings the view up to date, and what it brought, or what was rescued to
            // INBOX, is classified now rather than after the next IDLE.
            up.command(b"NOOP\r\n").await?;
            inbox.process_new(&mut up, filter).await?;
        }
        if filter == Filter::Seen {
            inbox.move_seen(&mut up).await?;
        }
        inbox.expunge_pending(&mut up).await?;
        let position = (inbox.uidvalidity, inbox.next_uid);
        account.verdicts.send_modify(|v| {
            v.watching = true;
            v.looked = Some(look_began);
            v.position = Some(position);
        });
        // Mail that lands between a FETCH and the start of IDLE may go unreported by the
        // provider (its change notification starts with IDLE): after new mail, look again soon.
        let mut renew = if inbox.next_uid != before { IDLE_SETTLE } else { IDLE_RENEW };
        if metadata {
            renew = renew.min(check_every);
        }
        if junk.is_some() {
            renew = renew.min(Duration::from_secs(shared.config().coi.junk_poll_secs));
        }
        // Polls keep their beat: the interval runs from the last poll, not from the end of the
        // work it found, so mail is seen within one interval of its delivery.
        let poll = (profile.idle != IdleMode::Push).then(|| {
            let (interval, now) =
                (Duration::from_secs(shared.config().coi.poll_secs.max(1)), tokio::time::Instant::now());
            if now >= next_poll {
                next_poll = (next_poll + interval).max(now);
            }
            next_poll
        });
        // Where INBOX is watched SELECTed (imap4d), a poll SELECTs it again: imap4d's NOOP
        // rescans the Maildir only when the directory's mtime, in whole seconds, differs from
        // what its last scan saw, so mail that lands in the same second as the change before
        // that scan is never reported to the session; a SELECT always rescans.
        let poll_with: &[u8] = if profile.examine_uids_stable { b"NOOP\r\n" } else { b"SELECT INBOX\r\n" };
        look_began = wait_for_change(&mut up, account, config_rx, renew, poll.map(|at| (at, poll_with))).await?;
    }
}

/// The worker's view of INBOX.
struct Inbox<'a> {
    shared: &'a Context,
    account: &'a Account,
    login: &'a str,
    chats: String,
    uidvalidity: u32,
    /// The next UID not yet classified.
    next_uid: u32,
    /// UIDNEXT when INBOX was selected: below it, work goes in batches.
    uidnext: u32,
    /// The provider accepts `$Chat` (PERMANENTFLAGS has `\*`); known from the first SELECT (an
    /// EXAMINE shows no permanent flags).
    keywords: Option<bool>,
    profile: ProviderProfile,
    /// Copied to Chats and flagged `\Deleted` but not yet expunged, because the user had
    /// `\Deleted` messages of their own in INBOX and the provider would not unflag them for
    /// the moment of an EXPUNGE (no UIDPLUS: an EXPUNGE would take those too).
    pending: Vec<u32>,
    /// Chat messages still in INBOX and not `\Seen`, for a provider that keeps no `$Chat` (with
    /// one, `seen` mode searches for the keyword instead).
    waiting: BTreeSet<u32>,
    /// The first UID to push about (older messages were there before the worker).
    push_from: u32,
    /// The first UID to notify Delta Chat devices of: what came while the worker was down (a
    /// few at most), nothing from before it ever ran.
    notify_from: u32,
    /// The OpenPGP gateway, when the account has a key.
    gateway: Option<&'a Identity>,
    /// `[cluster]`: this instance's fencing token for the account, checked by every write
    /// that could double (progress, push claims, a COPY).
    fence: Option<Fence<'a>>,
}

/// The cluster and the token under which this instance owns the account.
#[derive(Clone, Copy)]
pub(super) struct Fence<'a> {
    pub(super) cluster: &'a dyn crate::context::Cluster,
    pub(super) token: i64,
}

impl<'a> Inbox<'a> {
    async fn open(
        shared: &'a Context,
        account: &'a Account,
        up: &mut Upstream,
        profile: ProviderProfile,
    ) -> Result<Inbox<'a>, OwnWorkError> {
        let chats = Namespace::discover(up).await?.chats(&shared.config().coi.mailbox_root);
        let watch = if profile.examine_uids_stable { "EXAMINE" } else { "SELECT" };
        let untagged = open_inbox(up, watch).await?;
        let code = |name: &str| untagged.iter().find_map(|r| response_code_number(r, name));
        let uidvalidity = code("UIDVALIDITY").unwrap_or(0);
        let uidnext = code("UIDNEXT").unwrap_or(1);
        let keywords = (watch == "SELECT").then(|| permanent_keywords(&untagged));
        let store = &shared.store;
        let login = account.login.as_str();
        // With a cluster the progress is the owner's, in etcd: a new owner resumes where the
        // last one stopped, and what came in meanwhile (still in INBOX) is looked at from there.
        let fence = match &shared.cluster {
            Some(cluster) => {
                let token = cluster.owned().borrow().get(login).copied();
                Some(Fence { cluster: cluster.as_ref(), token: token.ok_or(crate::context::ClusterError::Fenced)? })
            }
            None => None,
        };
        let position = match fence {
            Some(fence) => fence.cluster.progress(login.to_string()).await?,
            None => store.inbox_position(login).ok().flatten(),
        };
        let stored = match position {
            Some((v, next)) if v == uidvalidity => Some(next),
            _ => None,
        };
        // First start (or a new UIDVALIDITY): the whole INBOX, so that chat messages that
        // came before COI was switched on are filtered too.
        let next_uid = stored.unwrap_or(1);
        let push_from = crate::push::notify::first_to_push(stored, uidnext);
        let notify_from = if stored.is_some() { push_from } else { uidnext };
        let _ = store.set_inbox_position(login, uidvalidity, next_uid).await;
        if let Some(fence) = fence {
            fence.cluster.save_progress(login.to_string(), fence.token, (uidvalidity, next_uid)).await?;
            info!(uidvalidity, next_uid, fence = fence.token, "cluster: resuming the account's INBOX");
        }
        let waiting = BTreeSet::new();
        let pending = Vec::new();
        Ok(Inbox {
            shared,
            account,
            login,
            chats,
            uidvalidity,
            next_uid,
            uidnext,
            keywords,
            profile,
            pending,
            waiting,
            push_from,
            notify_from,
            gateway: None,
            fence,
        })
    }

    /// SELECTs INBOX to change it (learning whether it takes keywords); [`Inbox::read_only`]
    /// goes back to watching it EXAMINEd.
    async fn writable(&mut self, up: &mut Upstream) -> Result<(), OwnWorkError> {
        if self.profile.examine_uids_stable {
            let untagged = open_inbox(up, "SELECT").await?;
            self.keywords = Some(permanent_keywords(&untagged));
        }
        Ok(())
    }

    async fn read_only(&mut self, up: &mut Upstream) -> Result<(), OwnWorkError> {
        if self.profile.examine_uids_stable {
            open_inbox(up, "EXAMINE").await?;
        }
        Ok(())
    }

    fn fence_for_copy(&self) -> Option<(&'a str, Fence<'a>)> {
        self.fence.map(|f| (self.login, f))
    }

    /// Expunges what earlier moves left flagged, once the user has no `\Deleted` message of
    /// their own in INBOX (only without UIDPLUS).
    async fn expunge_pending(&mut self, up: &mut Upstream) -> Result<(), OwnWorkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let deleted = {
            let (untagged, _) = up.command(b"UID SEARCH DELETED\r\n").await?;
            untagged.iter().flat_map(|r| search_uids(r)).collect::<BTreeSet<u32>>()
        };
        // Still blocked: no need to SELECT just to learn it again.
        if deleted.iter().any(|u| !self.pending.contains(u)) {
            return Ok(());
        }
        self.writable(up).await?;
        let plan = MovePlan::retry(&self.pending, &self.chats)?;
        let (outcome, _) = run_plan(up, plan, self.fence_for_copy()).await?;
        self.pending = outcome.pending;
        self.read_only(up).await
    }

    /// Classifies messages from `next_uid` on, in batches, marks chats, and moves them as
    /// `filter` says.
    async fn process_new(&mut self, up: &mut Upstream, filter: Filter) -> Result<(), OwnWorkError> {
        while self.next_uid + BATCH < self.uidnext {
            let last = self.next_uid + BATCH - 1;
            self.process_range(up, filter, &format!("{}:{last}", self.next_uid)).await?;
            self.next_uid = self.next_uid.max(last + 1);
        }
        self.process_range(up, filter, &format!("{}:*", self.next_uid)).await
    }

    async fn process_range(&mut self, up: &mut Upstream, filter: Filter, range: &str) -> Result<(), OwnWorkError> {
        let cmd = format!("UID FETCH {range} (UID FLAGS BODY.PEEK[HEADER.FIELDS ({FIELDS})])\r\n");
        let (untagged, _) = up.command(cmd.as_bytes()).await?;
        let mut chat: Vec<(u32, bool)> = Vec::new();
        // (UID, chat) of the messages new enough to push about.
        let mut new: Vec<(u32, bool)> = Vec::new();
        let mut chat_ids = Vec::new();
        // The header fields of the messages new enough to notify Delta Chat devices of.
        let mut new_headers: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut highest = None;
        let mut classified = 0;
        // `n:*` returns the last message when n is past the end: that one was handled before.
        let fresh: Vec<Vec<u8>> =
            untagged.into_iter().filter(|r| FetchItem::parse(r).is_some_and(|i| i.uid >= self.next_uid)).collect();
        for resp in &fresh {
            let Some(item) = FetchItem::parse(resp) else { continue };
            highest = highest.max(Some(item.uid));
            classified += 1;
            let headers = ChatHeaders::parse(&item.header);
            crate::metrics::saw_message_header(&item.header);
            let store = &self.shared.store;
            let is_chat = classify::is_chat(&headers, |id| store.is_chat_id(self.login, id).unwrap_or(false));
            if is_chat {
                chat.push((item.uid, item.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen"))));
                chat_ids.extend(headers.message_id);
            }
            if item.uid >= self.push_from {
                new.push((item.uid, is_chat || item.flags.iter().any(|f| f.eq_ignore_ascii_case("$Chat"))));
            }
            if item.uid >= self.notify_from {
                new_headers.push((item.uid, item.header.clone()));
            }
        }
        // Delta Chat devices first: the notification leaves before the rest of the work.
        let config = self.shared.config();
        let news = new_headers.iter().map(|(uid, header)| (*uid, header.as_slice()));
        if let Some(uid) = crate::deltachat::news_for_devices(&config, self.login, news) {
            self.notify_devices(uid);
        }
        // The OpenPGP gateway, before anything moves: SecureJoin steps, Autocrypt, gossip.
        if let Some(identity) = self.gateway {
            let uids: Vec<u32> = new.iter().map(|n| n.0).collect();
            super::gateway::on_new(self.shared, identity, up, self.login, &uids).await?;
        }
        // Receipts: DSNs and MDNs about the user's sent chat messages, each handed over once.
        crate::receipts::on_new_messages(self.shared, up, self.login, &fresh).await?;
        let mut pending =
            crate::push::notify::prepare(&self.shared.store, &config, self.login, up, self.uidvalidity, &new).await?;
        let Some(highest) = highest else { return Ok(()) };
        let kept = (classified - chat.len()) as u64;
        if !chat.is_empty() {
            let all: Vec<u32> = chat.iter().map(|c| c.0).collect();
            debug!(uids = ?all, "chat messages");
            if let Err(e) = self.shared.store.remember_chat_ids(self.login, &chat_ids).await {
                warn!("cannot remember chat Message-IDs: {e}");
            }
            // A worker that runs for pushes only leaves the mailbox alone.
            let writes = self.account.current().enabled;
            if writes {
                self.writable(up).await?;
            }
            if writes && self.keywords == Some(true) {
                up.command(format!("UID STORE {} +FLAGS.SILENT ($Chat)\r\n", uid_set(&all)).as_bytes()).await?;
            }
            if self.keywords != Some(true) {
                self.waiting.extend(chat.iter().filter(|c| !c.1).map(|c| c.0));
                while self.waiting.len() > MAX_WAITING {
                    self.waiting.pop_first();
                }
            }
            let moved = match filter {
                _ if !writes => None,
                Filter::Active => self.move_to_chats(up, &all).await?,
                Filter::Seen => {
                    let seen: Vec<u32> = chat.iter().filter(|c| c.1).map(|c| c.0).collect();
                    if seen.is_empty() { None } else { self.move_to_chats(up, &seen).await? }
                }
                Filter::None => None,
            };
            if writes {
                self.read_only(up).await?;
            }
            if let (Some(pending), Some((uidvalidity, map))) = (&mut pending, moved) {
                pending.moved(&self.chats, uidvalidity, &map);
            }
        }
        if let Some(pending) = pending {
            let claims = self.fence.map(|f| crate::push::notify::Claims {
                cluster: self.shared.cluster.clone().expect("a fence comes from the cluster"),
                login: self.login.to_string(),
                fence: f.token,
            });
            pending.send(self.shared.store.clone(), config, claims);
        }
        let moved = if filter == Filter::Active { chat.len() as u64 } else { 0 };
        self.account.verdicts.send_modify(|v| {
            v.kept += kept;
            v.moved += moved;
        });
        self.next_uid = highest + 1;
        if let Err(e) = self.shared.store.set_inbox_position(self.login, self.uidvalidity, self.next_uid).await {
            warn!("cannot record the INBOX position: {e}");
        }
        if let Some(fence) = self.fence {
            let position = (self.uidvalidity, self.next_uid);
            fence.cluster.save_progress(self.login.to_string(), fence.token, position).await?;
        }
        Ok(())
    }

    /// Wakes the account's Delta Chat devices about INBOX message `uid`. In a cluster only once
    /// per message across instances: an owner that died after notifying but before saving its
    /// progress leaves the claim behind, and its successor, seeing the message again, stays quiet.
    fn notify_devices(&self, uid: u32) {
        let notify = self.shared.notify.clone();
        let login = self.login.to_string();
        let Some(fence) = &self.fence else {
            notify.new_mail(&login);
            return;
        };
        let cluster = self.shared.cluster.clone().expect("a fence comes from the cluster");
        let (token, message) = (fence.token, (self.uidvalidity, uid));
        tokio::spawn(async move {
            match cluster.claim_push(PushChannel::DeviceToken, login.clone(), token, message).await {
                Ok(true) => notify.new_mail(&login),
                Ok(false) => debug!(uid, "devices notified of this message before (by this or another instance)"),
                Err(e) => warn!(uid, "devices not notified of this message: cannot claim it: {e}"),
            }
        });
    }

    /// Seen mode: moves every chat message in INBOX that is `\Seen`, whenever it became so and
    /// whatever the filter was when it came (`$Chat` marks them all).
    async fn move_seen(&mut self, up: &mut Upstream) -> Result<(), OwnWorkError> {
        // Before the first SELECT of this connection it is not known whether the provider
        // keeps `$Chat`: the search costs little and finds nothing where it does not.
        if self.keywords != Some(false) {
            let (untagged, _) = up.command(b"UID SEARCH SEEN KEYWORD $Chat\r\n").await?;
            let seen: Vec<u32> = untagged.iter().flat_map(|r| search_uids(r)).collect();
            if !seen.is_empty() {
                self.writable(up).await?;
                self.move_to_chats(up, &seen).await?;
                self.read_only(up).await?;
            }
            if self.keywords == Some(true) {
                return Ok(());
            }
        }
        if self.waiting.is_empty() {
            return Ok(());
        }
        let uids: Vec<u32> = self.waiting.iter().copied().collect();
        let (untagged, _) = up.command(format!("UID FETCH {} (UID FLAGS)\r\n", uid_set(&uids)).as_bytes()).await?;
        let mut still_here = BTreeSet::new();
        let mut seen = Vec::new();
        for item in untagged.iter().filter_map(|r| FetchItem::parse(r)) {
            if item.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")) {
                seen.push(item.uid);
            } else {
                still_here.insert(item.uid);
            }
        }
        self.waiting = still_here;
        if !seen.is_empty() {
            self.writable(up).await?;
            self.move_to_chats(up, &seen).await?;
            self.read_only(up).await?;
        }
        Ok(())
    }

    /// Moves `uids` (INBOX SELECTed) the profile's way, flags kept. Where the messages went, if
    /// the provider said (COPYUID): UIDVALIDITY, (old, new) UIDs. Without UIDPLUS, what could
    /// not be expunged safely yet is kept in `pending` for a later cycle.
    async fn move_to_chats(&mut self, up: &mut Upstream, uids: &[u32]) -> Result<Option<CopyUid>, OwnWorkError> {
        let plan = MovePlan::new(self.profile.move_strategy, uids, &self.chats, &self.pending)?;
        let (outcome, copied) = run_plan(up, plan, self.fence_for_copy()).await?;
        self.pending = outcome.pending;
        if !self.pending.is_empty() {
            info!(
                count = self.pending.len(),
                "chat messages copied to Chats wait in INBOX, flagged \\Deleted: the user keeps \\Deleted messages \
                 there, the provider has no UIDPLUS and refused to unflag theirs for the moment of an EXPUNGE"
            );
        }
        info!(count = uids.len(), to = %self.chats, strategy = ?self.profile.move_strategy, "moved chat messages");
        crate::metrics::worker_moved(self.account.current().filter, uids.len());
        Ok(copied)
    }
}

/// Runs a move plan to its end: each command, its reply read back into the plan. The COPYUID
/// of the MOVE or COPY, where the provider gave one.
/// With a cluster (`fence`), the account's ownership is checked right before a COPY: a COPY
/// by a stale owner would double the message (a MOVE of a message already moved does nothing).
pub(super) async fn run_plan(
    up: &mut Upstream,
    mut plan: MovePlan,
    fence: Option<(&str, Fence<'_>)>,
) -> Result<(crate::provider_profile::move_plan::Outcome, Option<CopyUid>), OwnWorkError> {
    let mut next = plan.start();
    let mut copied = None;
    loop {
        let command = match next {
            Next::Send(command) => command,
            Next::Done(outcome) => return Ok((outcome, copied)),
            Next::Failed(e) => return Err(e.into()),
        };
        if let (Command::UidCopy { .. }, Some((login, fence))) = (&command, fence)
            && !fence.cluster.still_owner(login.to_string(), fence.token).await?
        {
            return Err(crate::context::ClusterError::Fenced.into());
        }
        let (untagged, status) = up.command(command.to_line().as_bytes()).await?;
        let reply = if !status.starts_with(b"OK") {
            Reply::Refused(String::from_utf8_lossy(&status).trim_end().into())
        } else if command == Command::SearchDeleted {
            Reply::Searched(untagged.iter().flat_map(|r| search_uids(r)).collect())
        } else {
            if matches!(command, Command::UidMove { .. } | Command::UidCopy { .. }) {
                let all: Vec<&[u8]> = untagged.iter().map(Vec::as_slice).chain([status.as_slice()]).collect();
                copied = crate::push::imap::copyuid(&all);
            }
            Reply::Ok
        };
        next = plan.on_reply(reply);
    }
}

/// Whether a SELECT's PERMANENTFLAGS take new keywords (`\*`).
fn permanent_keywords(untagged: &[Vec<u8>]) -> bool {
    untagged.iter().any(|r| {
        let t = String::from_utf8_lossy(r);
        t.contains("[PERMANENTFLAGS") && t.contains("\\*")
    })
}

/// SELECTs or EXAMINEs INBOX; its untagged responses.
pub(super) async fn open_inbox(up: &mut Upstream, how: &'static str) -> Result<Vec<Vec<u8>>, OwnWorkError> {
    let (untagged, status) = up.command(format!("{how} INBOX\r\n").as_bytes()).await?;
    if !status.starts_with(b"OK") {
        let command = if how == "SELECT" { "SELECT INBOX" } else { "EXAMINE INBOX" };
        return Err(OwnWorkError::Refused { command, status: String::from_utf8_lossy(&status).trim_end().into() });
    }
    Ok(untagged)
}

/// Waits in IDLE (or, where the provider's IDLE is missing or does not push, until the `poll`
/// instant, then sends the poll's command) until INBOX changes, a session nudges, the COI
/// configuration changes, or it is time to renew the IDLE. Returns when the next look at INBOX began: just
/// before the NOOP that brings the worker's view of INBOX up to date, so that every message
/// the provider had then is seen.
async fn wait_for_change(
    up: &mut Upstream,
    account: &Account,
    config_rx: &mut watch::Receiver<CoiConfig>,
    renew: Duration,
    poll: Option<(tokio::time::Instant, &[u8])>,
) -> Result<Instant, OwnWorkError> {
    if let Some((at, command)) = poll {
        tokio::select! {
            _ = tokio::time::sleep_until(at.min(tokio::time::Instant::now() + renew)) => {}
            _ = account.nudge.notified() => {}
            _ = config_rx.changed() => {}
        }
        let began = Instant::now();
        up.command(command).await?;
        return Ok(began);
    }
    let tag = up.tag();
    up.conn.write(format!("{tag} IDLE\r\n").as_bytes()).await.map_err(|e| network(up, e))?;
    // News that comes before the continuation counts too (the provider syncs as IDLE starts).
    let mut changed = false;
    // New mail announced (`* n EXISTS`): the session's view holds it already.
    let mut announced = false;
    loop {
        let resp = up.read_response().await?;
        if resp.starts_with(b"+") {
            break;
        }
        if resp.starts_with(format!("{tag} ").as_bytes()) {
            return Err(OwnWorkError::Refused {
                command: "IDLE",
                status: String::from_utf8_lossy(&resp).trim_end().into(),
            });
        }
        changed |= is_mailbox_change(&resp);
        announced |= is_new_mail(&resp);
    }
    let deadline = tokio::time::Instant::now() + renew;
    while !changed {
        while let Some(resp) = up.conn.try_message() {
            changed |= is_mailbox_change(&resp);
            announced |= is_new_mail(&resp);
        }
        if changed {
            break;
        }
        tokio::select! {
            read = up.conn.fill() => match read {
                Ok(0) => return Err(UpstreamError::closed(&up.server).into()),
                Ok(_) => {}
                Err(e) => return Err(network(up, e)),
            },
            _ = account.nudge.notified() => break,
            _ = config_rx.changed() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    up.conn.write(b"DONE\r\n").await.map_err(|e| network(up, e))?;
    let began = Instant::now();
    up.read_tagged(&tag).await?;
    // An IDLE that ended without news does not bring the mailbox up to date (Dovecot syncs a
    // session's view at the end of a command, and a FETCH sees only what the view has): a NOOP
    // does. After an EXISTS the view has the new mail already, and a NOOP's round trip would
    // only delay its classification and push.
    if !announced {
        up.command(b"NOOP\r\n").await?;
    }
    Ok(began)
}

/// `* n EXISTS`: new mail in the session's view.
fn is_new_mail(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&resp[..resp.len().min(32)]).to_ascii_uppercase();
    let mut words = text.split_whitespace();
    words.next() == Some("*")
        && words.next().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        && words.next() == Some("EXISTS")
}

fn network(up: &Upstream, e: std::io::Error) -> OwnWorkError {
    up.io_error(e).into()
}

/// `* n EXISTS`, `* n EXPUNGE`, `* n FETCH (…)` (flags changed by another client).
fn is_mailbox_change(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_ascii_uppercase();
    let mut words = text.split_whitespace();
    words.next() == Some("*")
        && words.next().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        && matches!(words.next(), Some("EXISTS" | "EXPUNGE" | "FETCH" | "RECENT"))
}

/// The parts of a `* n FETCH (UID … FLAGS (…) BODY[…] {n}…)` response the worker asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FetchItem {
    pub(super) uid: u32,
    pub(super) flags: Vec<String>,
    pub(super) header: Vec<u8>,
}

impl FetchItem {
    pub(super) fn parse(resp: &[u8]) -> Option<FetchItem> {
        let upper_head = String::from_utf8_lossy(&resp[..resp.len().min(32)]).to_ascii_uppercase();
        if !upper_head.starts_with("* ") || !upper_head.contains(" FETCH (") {
            return None;
        }
        // Everything before the first literal is attribute text; the literal is the header.
        let literal_at = resp.windows(3).position(|w| w == b"}\r\n");
        let attrs = String::from_utf8_lossy(&resp[..literal_at.unwrap_or(resp.len())]).into_owned();
        let upper = attrs.to_ascii_uppercase();
        let uid_at = upper.find("UID ")? + 4;
        let uid = attrs[uid_at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
        let flags = upper
            .find("FLAGS (")
            .and_then(|at| {
                let rest = &attrs[at + 7..];
                rest.find(')').map(|end| rest[..end].split_whitespace().map(str::to_string).collect())
            })
            .unwrap_or_default();
        let header = match literal_at {
            Some(end) => {
                let open = resp[..end].iter().rposition(|&b| b == b'{')?;
                let len: usize = std::str::from_utf8(&resp[open + 1..end]).ok()?.trim_end_matches('+').parse().ok()?;
                let start = end + 3;
                resp.get(start..start + len)?.to_vec()
            }
            None => Vec::new(),
        };
        Some(FetchItem { uid, flags, header })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_responses() {
        let resp = b"* 3 FETCH (UID 17 FLAGS (\\Seen $Chat) BODY[HEADER.FIELDS (CHAT-VERSION MESSAGE-ID)] {38}\r\nChat-Version: 1.0\r\nMessage-ID: <a@b>\r\n\r\n)\r\n";
        let item = FetchItem::parse(resp).unwrap();
        assert_eq!(item.uid, 17);
        assert_eq!(item.flags, vec!["\\Seen", "$Chat"]);
        assert!(ChatHeaders::parse(&item.header).chat_version);
        let item = FetchItem::parse(b"* 1 FETCH (FLAGS () UID 4)\r\n").unwrap();
        assert_eq!((item.uid, item.flags.len(), item.header.len()), (4, 0, 0));
        assert!(FetchItem::parse(b"* 1 EXISTS\r\n").is_none());
    }

    #[test]
    fn helpers() {
        assert!(is_mailbox_change(b"* 4 EXISTS\r\n"));
        assert!(is_mailbox_change(b"* 2 FETCH (FLAGS (\\Seen))\r\n"));
        assert!(!is_mailbox_change(b"* OK Still here\r\n"));
        // Only an EXISTS spares the NOOP after IDLE: flags and expunges bring no new mail.
        assert!(is_new_mail(b"* 4 EXISTS\r\n") && is_new_mail(b"* 12 exists\r\n"));
        assert!(!is_new_mail(b"* 2 FETCH (FLAGS (\\Seen))\r\n") && !is_new_mail(b"* 3 EXPUNGE\r\n"));
        assert!(!is_new_mail(b"* OK [ALERT] 4 EXISTS\r\n") && !is_new_mail(b"a1 OK EXISTS\r\n"));
    }
}
