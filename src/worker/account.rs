//! One account's worker: the proxy's own connection to an account with COI enabled (or push
//! subscriptions), doing what a COI server does at delivery time. It waits in IDLE on INBOX (or
//! polls a provider without IDLE), classifies each new message from its header fields, sets
//! `$Chat`, and moves chat messages to `<root>/Chats`: at once in `active` mode, once they are
//! `\Seen` in `seen` mode; it hands reports to the receipts wing and new mail to the push wing.
//! It reconnects with backoff when the provider drops, and returns when it is no longer needed
//! or the daemon shuts down (the supervisor decides what happens next).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::wanted;
use crate::account::{Account, CoiConfig, Filter};
use crate::coi::classify::{self, ChatHeaders, FIELDS};
use crate::coi::folders::Namespace;
use crate::context::Context;
use crate::imap::upstream::{OwnWorkError, Upstream, UpstreamError};
use crate::imap::wire::command;
use crate::imap::wire::response::{response_code_number, search_uids, uid_set};

/// Longest IDLE before it is renewed (RFC 2177: at most 29 minutes).
/// Also a safety net: a provider may miss reporting mail that arrived just before IDLE began.
const IDLE_RENEW: Duration = Duration::from_secs(5 * 60);
/// IDLE after new mail, to catch what arrived while the worker was busy.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Messages classified per FETCH when catching up with a large INBOX.
const BATCH: u32 = 500;

/// A COPYUID response code: the target's UIDVALIDITY and (old, new) UID pairs.
type CopyUid = (u32, Vec<(u32, u32)>);

/// Serves the account until it no longer needs a worker or the daemon shuts down.
pub(super) async fn run(shared: Arc<Context>, account: Arc<Account>) {
    info!("account worker started");
    let mut backoff = Duration::from_secs(1);
    let mut config_rx = account.config.subscribe();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let result = tokio::select! {
            result = serve(&shared, &account, &mut config_rx) => result,
            _ = shutdown.changed() => break,
        };
        match result {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                if !wanted(&shared, &account) {
                    break;
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
    info!("account worker stopped");
}

/// One connection's worth of work; `Ok` when the worker is no longer wanted.
async fn serve(
    shared: &Context,
    account: &Account,
    config_rx: &mut watch::Receiver<CoiConfig>,
) -> Result<(), OwnWorkError> {
    let login = account.login.as_str();
    let credential = shared.credentials.credential(&shared.config(), login).await?;
    let mut up = Upstream::open(shared, login, &credential).await?;
    drop(credential);
    if up.has("METADATA") {
        account.set_config(crate::coi::config_at_provider(&mut up).await?);
    }
    if !wanted(shared, account) {
        return Ok(());
    }
    let mut inbox = Inbox::open(shared, account, &mut up).await?;
    info!(chats = %inbox.chats, "watching INBOX");
    loop {
        config_rx.mark_unchanged();
        let config = account.current();
        if !wanted(shared, account) {
            return Ok(());
        }
        let before = inbox.next_uid;
        inbox.process_new(&mut up, config.effective_filter()).await?;
        // Mail that lands between a FETCH and the start of IDLE may go unreported by the
        // provider (its change notification starts with IDLE): after new mail, look again soon.
        let renew = if inbox.next_uid != before { IDLE_SETTLE } else { IDLE_RENEW };
        if config.filter == Filter::Seen {
            inbox.move_seen(&mut up).await?;
        }
        wait_for_change(&mut up, account, config_rx, shared.config().coi.poll_secs, renew).await?;
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
    /// The provider accepts `$Chat` (PERMANENTFLAGS has `\*`).
    keywords: bool,
    /// Chat messages still in INBOX, waiting for `\Seen` (seen mode).
    waiting: BTreeSet<u32>,
    /// The first UID to push about (older messages were there before the worker).
    push_from: u32,
}

impl<'a> Inbox<'a> {
    async fn open(shared: &'a Context, account: &'a Account, up: &mut Upstream) -> Result<Inbox<'a>, OwnWorkError> {
        let chats = Namespace::discover(up).await?.chats(&shared.config().coi.mailbox_root);
        let (untagged, status) = up.command(b"SELECT INBOX\r\n").await?;
        if !status.starts_with(b"OK") {
            return Err(OwnWorkError::Refused {
                command: "SELECT INBOX",
                status: String::from_utf8_lossy(&status).trim_end().into(),
            });
        }
        let code = |name: &str| untagged.iter().find_map(|r| response_code_number(r, name));
        let uidvalidity = code("UIDVALIDITY").unwrap_or(0);
        let uidnext = code("UIDNEXT").unwrap_or(1);
        let keywords = untagged.iter().any(|r| {
            let t = String::from_utf8_lossy(r);
            t.contains("[PERMANENTFLAGS") && t.contains("\\*")
        });
        let store = &shared.store;
        let login = account.login.as_str();
        let stored = match store.inbox_position(login) {
            Ok(Some((v, next))) if v == uidvalidity => Some(next),
            _ => None,
        };
        // First start (or a new UIDVALIDITY): the whole INBOX, so that chat messages that
        // came before COI was switched on are filtered too.
        let next_uid = stored.unwrap_or(1);
        let push_from = crate::push::notify::first_to_push(stored, uidnext);
        let _ = store.set_inbox_position(login, uidvalidity, next_uid).await;
        let waiting = BTreeSet::new();
        let mut inbox =
            Inbox { shared, account, login, chats, uidvalidity, next_uid, uidnext, keywords, waiting, push_from };
        if keywords {
            let (untagged, _) = up.command(b"UID SEARCH UNSEEN KEYWORD $Chat\r\n").await?;
            inbox.waiting.extend(untagged.iter().flat_map(|r| search_uids(r)));
        }
        Ok(inbox)
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
        let mut highest = None;
        let mut classified = 0;
        for resp in &untagged {
            let Some(item) = FetchItem::parse(resp) else { continue };
            if item.uid < self.next_uid {
                continue; // `n:*` returns the last message when n is past the end
            }
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
        }
        // Receipts: DSNs and MDNs about the user's sent chat messages.
        crate::receipts::on_new_messages(self.shared, up, self.login, &untagged).await?;
        let config = self.shared.config();
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
            if self.keywords && self.account.current().enabled {
                up.command(format!("UID STORE {} +FLAGS.SILENT ($Chat)\r\n", uid_set(&all)).as_bytes()).await?;
            }
            let moved = match filter {
                Filter::Active => self.move_to_chats(up, &all).await?,
                Filter::Seen => {
                    let seen: Vec<u32> = chat.iter().filter(|c| c.1).map(|c| c.0).collect();
                    self.waiting.extend(chat.iter().filter(|c| !c.1).map(|c| c.0));
                    if seen.is_empty() { None } else { self.move_to_chats(up, &seen).await? }
                }
                Filter::None => None,
            };
            if let (Some(pending), Some((uidvalidity, map))) = (&mut pending, moved) {
                pending.moved(&self.chats, uidvalidity, &map);
            }
        }
        if let Some(pending) = pending {
            pending.send(self.shared.store.clone(), config);
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
        Ok(())
    }

    /// Seen mode: moves the waiting chat messages that have become `\Seen`.
    async fn move_seen(&mut self, up: &mut Upstream) -> Result<(), OwnWorkError> {
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
            self.move_to_chats(up, &seen).await?;
        }
        Ok(())
    }

    /// UID MOVE where offered, else COPY + `\Deleted` + UID EXPUNGE (UIDPLUS), flags kept.
    /// Where the messages went, if the provider said (COPYUID): UIDVALIDITY, (old, new) UIDs.
    async fn move_to_chats(&mut self, up: &mut Upstream, uids: &[u32]) -> Result<Option<CopyUid>, OwnWorkError> {
        let set = uid_set(uids);
        let target = String::from_utf8_lossy(&command::astring(self.chats.as_bytes(), false)).into_owned();
        let refused = |command, status: Vec<u8>| OwnWorkError::Refused {
            command,
            status: String::from_utf8_lossy(&status).trim_end().into(),
        };
        let copyuid = |untagged: &[Vec<u8>], status: &[u8]| {
            let all: Vec<&[u8]> = untagged.iter().map(Vec::as_slice).chain([status]).collect();
            crate::push::imap::copyuid(&all)
        };
        let moved = if up.has("MOVE") {
            let (untagged, status) = into_chats(up, &format!("UID MOVE {set} {target}\r\n"), &target).await?;
            if !status.starts_with(b"OK") {
                return Err(refused("UID MOVE", status));
            }
            copyuid(&untagged, &status)
        } else if up.has("UIDPLUS") {
            let (untagged, status) = into_chats(up, &format!("UID COPY {set} {target}\r\n"), &target).await?;
            if !status.starts_with(b"OK") {
                return Err(refused("UID COPY", status));
            }
            up.command(format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)\r\n").as_bytes()).await?;
            let moved = copyuid(&untagged, &status);
            up.command(format!("UID EXPUNGE {set}\r\n").as_bytes()).await?;
            moved
        } else {
            warn!("the provider offers neither MOVE nor UIDPLUS; chat messages stay in INBOX");
            return Ok(None);
        };
        info!(count = uids.len(), to = %self.chats, "moved chat messages");
        crate::metrics::worker_moved(self.account.current().filter, uids.len());
        Ok(moved)
    }
}

/// Runs a MOVE or COPY into Chats; where Chats is missing (`[TRYCREATE]`), creates and
/// subscribes it first. Chats is made on first use, as on a COI server, and never recreated
/// behind a client that just deleted it to switch COI off.
async fn into_chats(up: &mut Upstream, command: &str, target: &str) -> Result<(Vec<Vec<u8>>, Vec<u8>), OwnWorkError> {
    let (untagged, status) = up.command(command.as_bytes()).await?;
    if !status.windows(11).any(|w| w.eq_ignore_ascii_case(b"[TRYCREATE]")) {
        return Ok((untagged, status));
    }
    up.command(format!("CREATE {target}\r\n").as_bytes()).await?;
    up.command(format!("SUBSCRIBE {target}\r\n").as_bytes()).await?;
    Ok(up.command(command.as_bytes()).await?)
}

/// Waits in IDLE (or polls) until INBOX changes, a session nudges, the COI configuration
/// changes, or it is time to renew the IDLE.
async fn wait_for_change(
    up: &mut Upstream,
    account: &Account,
    config_rx: &mut watch::Receiver<CoiConfig>,
    poll_secs: u64,
    renew: Duration,
) -> Result<(), OwnWorkError> {
    if !up.has("IDLE") {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(poll_secs.max(1))) => {}
            _ = account.nudge.notified() => {}
            _ = config_rx.changed() => {}
        }
        up.command(b"NOOP\r\n").await?;
        return Ok(());
    }
    let tag = up.tag();
    up.conn.write(format!("{tag} IDLE\r\n").as_bytes()).await.map_err(|e| network(up, e))?;
    // News that comes before the continuation counts too (the provider syncs as IDLE starts).
    let mut changed = false;
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
    }
    let deadline = tokio::time::Instant::now() + renew;
    while !changed {
        while let Some(resp) = up.conn.try_message() {
            changed |= is_mailbox_change(&resp);
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
    up.read_tagged(&tag).await?;
    Ok(())
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
struct FetchItem {
    uid: u32,
    flags: Vec<String>,
    header: Vec<u8>,
}

impl FetchItem {
    fn parse(resp: &[u8]) -> Option<FetchItem> {
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
    }
}
