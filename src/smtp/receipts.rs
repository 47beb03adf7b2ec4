//! The proxy's side of chat copies and receipts (issue 4 parts 5–7); the message formats are
//! in `coi::receipts`.
//!
//! - At enqueue, a chat message (Chat-Version) is marked for follow-up and asks for DSNs
//!   (`NOTIFY=SUCCESS,FAILURE`, `ENVID`, `RET=HDRS`; the relay passes them on only if the
//!   provider offers DSN). The follow-up keeps it in the queue after the provider's `250` until
//!   its copy is in `<root>/Chats` (COI enabled), so a restart neither loses nor repeats it.
//! - The account worker hands over reports arriving in INBOX; DSNs and MDNs about a sent chat
//!   message become `$Delivered` / `$Read` on the user's copy (in Chats, else Sent).
//! - After a plain client (not one of `[coi] chat_clients`) sets `\Seen` on an account with
//!   `read_receipts = true`, the proxy sends an MDN for each seen chat message that asks for
//!   one and lacks `$MDNSent`, then sets `$MDNSent`. Messages already read when read receipts
//!   started for the account, and those a chat client marked read (it sends its own), get
//!   `$MDNSent` and no MDN.
//!
//! Work that needs IMAP runs in one agent task with its own provider connections, so the
//! worker's INBOX selection is never disturbed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::Smtp;
use super::queue::now;
use super::session::Submission;
use crate::coi::classify::ChatHeaders;
use crate::coi::folders::Namespace;
use crate::coi::receipts::{self as formats, MDN_SENT, MdnParams, Outcome, Report};
use crate::imap::upstream::{AuthOutcome, Upstream};
use crate::imap::wire::command;
use crate::secret::Secret;
use crate::server::Shared;
use crate::store::{MailParams, QueuedMessage, Recipient, RecipientState, SentChat, Store, Tick};

/// Delays after which marks that found no copy yet are tried again (a client's own Sent copy
/// may come seconds after the message).
const MARK_RETRIES: [Duration; 3] = [Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(300)];
/// Longest wait of an account's first session for the read-receipt baseline.
const BASELINE_WAIT: Duration = Duration::from_secs(10);

/// Work for the agent, per account.
#[derive(Debug)]
enum Job {
    /// A client set `\Seen`; `send` is false for chat clients (they send their own receipts)
    /// and for the first look at an account (the baseline). `done` is dropped once the look is
    /// over.
    Seen { login: String, send: bool, done: Option<oneshot::Sender<()>> },
    /// A report about a sent message arrived.
    Report { login: String, report: Report },
    /// Put the keywords the records ask for on the user's copies (`retry`: index into
    /// [`MARK_RETRIES`] of the next retry).
    Mark { login: String, retry: usize },
}

impl Job {
    fn login(&self) -> &str {
        match self {
            Job::Seen { login, .. } | Job::Report { login, .. } | Job::Mark { login, .. } => login,
        }
    }
}

/// The agent's inbox; set once when the SMTP side starts (without it there is no queue to send
/// receipts through, and no sent chat messages to track).
static AGENT: OnceLock<mpsc::UnboundedSender<Job>> = OnceLock::new();

fn submit(job: Job) {
    if let Some(tx) = AGENT.get() {
        let _ = tx.send(job);
    }
}

/// Starts the agent (once per process).
pub fn start(ctx: Arc<Smtp>) {
    let (tx, rx) = mpsc::unbounded_channel();
    if AGENT.set(tx).is_ok() {
        tokio::spawn(run(ctx, rx));
    }
}

/// Whether `[[account]] read_receipts` is on for `login` (matched by login, then domain).
pub fn read_receipts_for(config: &crate::config::Config, login: &str) -> bool {
    let domain = login.rsplit_once('@').map(|(_, d)| d);
    let by_login = config.accounts.iter().find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login)));
    let by_domain = || {
        config.accounts.iter().find(|a| a.domain.as_deref().zip(domain).is_some_and(|(a, d)| a.eq_ignore_ascii_case(d)))
    };
    by_login.or_else(by_domain).is_some_and(|a| a.read_receipts)
}

/// An IMAP session's part in read receipts: built at login, told of every `\Seen` change.
pub struct SeenHook {
    login: String,
    enabled: bool,
    /// The client's ID name, shared with the session: chat clients send ID after login too.
    client_name: Arc<Mutex<Option<String>>>,
    chat_clients: Vec<String>,
}

impl SeenHook {
    /// For the first session with read receipts on, this waits (at most [`BASELINE_WAIT`]) until
    /// what is read already has been marked to get no receipt; the session relays nothing
    /// before, so a message the user reads at once is not mistaken for one read before.
    pub async fn new(shared: &Shared, login: &str, client_name: Arc<Mutex<Option<String>>>) -> SeenHook {
        let config = shared.config();
        let enabled = read_receipts_for(&config, login);
        if enabled && matches!(shared.store.mdn_baseline(login), Ok(None)) {
            let (done, baseline) = oneshot::channel();
            submit(Job::Seen { login: login.to_string(), send: false, done: Some(done) });
            if tokio::time::timeout(BASELINE_WAIT, baseline).await.is_err() {
                warn!(login, "read receipts: the first look at the account takes long; going on without it");
            }
        }
        SeenHook { login: login.to_string(), enabled, client_name, chat_clients: config.coi.chat_clients.clone() }
    }

    pub fn seen(&self) {
        if self.enabled {
            // A chat client sends its own receipts: the proxy sends none for it (and marks none).
            let name = self.client_name.lock().expect("client name").clone();
            let chat_client = name.is_some_and(|n| self.chat_clients.iter().any(|c| c.eq_ignore_ascii_case(&n)));
            submit(Job::Seen { login: self.login.clone(), send: !chat_client, done: None });
        }
    }
}

/// Unique enough for ENVIDs and Message-IDs: time, process and a counter.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// At enqueue: marks a chat message for follow-up and asks for delivery reports, unless the
/// client asked for its own.
pub fn prepare(msg: &mut QueuedMessage, body: &[u8]) {
    let headers = ChatHeaders::parse(&body[..header_end(body)]);
    // Receipts are chat messages too (Chat-Version), but need neither copies nor receipts.
    if !headers.chat_version || headers.is_report {
        return;
    }
    msg.chat_followup = true;
    if msg.params.envid.is_some() || msg.recipients.iter().any(|r| r.notify.is_some()) {
        return;
    }
    msg.params.envid = Some(format!("coi.{}", unique()));
    msg.params.ret.get_or_insert_with(|| "HDRS".into());
    for r in &mut msg.recipients {
        r.notify = Some("SUCCESS,FAILURE".into());
    }
}

fn header_end(body: &[u8]) -> usize {
    memchr::memmem::find(body, b"\r\n\r\n").map_or(body.len(), |at| at + 2)
}

fn message_id(body: &[u8]) -> Option<String> {
    ChatHeaders::parse(&body[..header_end(body)]).message_id
}

/// Before relaying: records the chat messages about to go out, so that a DSN that comes back
/// faster than the copy is appended still finds its message.
pub async fn before_relay(store: &Store, msgs: &[(u64, QueuedMessage)]) {
    for (id, msg) in msgs.iter().filter(|(_, m)| m.chat_followup && m.pending().next().is_some()) {
        let id = *id;
        let Ok(Some(body)) = store.read(move |s| s.queue_body(id)).await else { continue };
        let Some(message_id) = message_id(&body) else { continue };
        let sent = SentChat {
            sent_at: msg.received_at,
            envid: msg.params.envid.clone(),
            recipients: msg
                .recipients
                .iter()
                .map(|r| Tick { address: r.address.clone(), ..Default::default() })
                .collect(),
            marked: Vec::new(),
        };
        if let Err(e) = store.sent_chat_insert(&msg.login, &message_id, &sent).await {
            warn!(id, "cannot record a sent chat message: {e}");
        }
    }
}

/// After relaying: the copy in Chats for every chat message the provider accepted (for at
/// least one recipient). A message whose copy cannot be appended yet stays queued for it.
pub async fn follow_up(ctx: &Smtp, login: &str, password: &Secret, msgs: &mut [(u64, QueuedMessage)]) {
    let shared = &ctx.shared;
    let mut imap: Option<(Upstream, String)> = None;
    let mut copied = false;
    for (id, msg) in msgs.iter_mut().filter(|(_, m)| m.chat_followup && m.pending().next().is_none()) {
        let accepted = msg.recipients.iter().any(|r| matches!(r.state, RecipientState::Delivered { .. }));
        let enabled = shared.hub.account(login).current().enabled;
        if accepted && enabled {
            let result = async {
                let i = *id;
                let body =
                    shared.store.read(move |s| s.queue_body(i)).await.map_err(|e| e.to_string())?.unwrap_or_default();
                if imap.is_none() {
                    let mut up = connect(shared, login, password).await?;
                    let chats = chats_folder(shared, &mut up).await.map_err(|e| e.to_string())?;
                    imap = Some((up, chats));
                }
                let (up, chats) = imap.as_mut().expect("connected above");
                append_once(up, chats, &body).await
            }
            .await;
            if let Err(why) = result {
                imap = None;
                let t = now();
                msg.next_attempt_at = t + 60;
                warn!(id = *id, "cannot put the chat copy into Chats yet: {why}; retrying in 60 s");
                super::queue::save(&shared.store, *id, msg).await;
                continue;
            }
            info!(id = *id, "chat copy put into Chats");
            copied = true;
        }
        msg.chat_followup = false;
        super::queue::save(&shared.store, *id, msg).await;
    }
    if let Some((mut up, _)) = imap {
        let _ = up.command(b"LOGOUT\r\n").await;
    }
    if copied {
        submit(Job::Mark { login: login.to_string(), retry: 0 });
    }
}

/// APPENDs `body` (`\Seen`) to `mailbox` unless a message with its Message-ID is there already
/// (an earlier attempt got as far as the APPEND, then the proxy stopped).
async fn append_once(up: &mut Upstream, mailbox: &str, body: &[u8]) -> Result<(), String> {
    if let Some(id) = message_id(body) {
        let uids = search_message_id(up, mailbox, &id).await.map_err(|e| e.to_string())?;
        if !uids.is_empty() {
            return Ok(());
        }
    }
    match up.append(mailbox, "\\Seen", body).await.map_err(|e| e.to_string())? {
        Ok(()) => Ok(()),
        Err(status) => Err(format!("APPEND refused: {status}")),
    }
}

async fn connect(shared: &Shared, login: &str, password: &Secret) -> Result<Upstream, String> {
    let config = shared.config();
    let provider = config.provider_for(login).ok_or_else(|| format!("no IMAP provider configured for {login}"))?;
    let limits = &config.limits;
    let mut up = Upstream::connect(&provider, &shared.upstream_tls, limits.connect_timeout(), limits.max_line)
        .await
        .map_err(|e| e.to_string())?;
    match up.authenticate(login, password).await.map_err(|e| e.to_string())? {
        AuthOutcome::Ok(_) => Ok(up),
        AuthOutcome::Rejected(status) => {
            Err(format!("the IMAP login was refused: {}", String::from_utf8_lossy(&status).trim_end()))
        }
    }
}

type ImapResult<T> = Result<T, crate::imap::upstream::UpstreamError>;

/// `<root>/Chats` as the provider names it (NAMESPACE, else the separator from LIST).
async fn chats_folder(shared: &Shared, up: &mut Upstream) -> ImapResult<String> {
    Ok(Namespace::discover(up).await?.chats(&shared.config().coi.mailbox_root))
}

/// The Sent folder: the one with `\Sent` (RFC 6154), else one named `Sent`.
async fn sent_folder(up: &mut Upstream) -> ImapResult<Option<String>> {
    let (untagged, _) = up.command(b"LIST \"\" \"*\"\r\n").await?;
    let mut named = None;
    for resp in &untagged {
        let Ok(cmd) = command::parse(&[b"x ", resp.strip_prefix(b"* ").unwrap_or(resp)].concat()) else { continue };
        let (Some(command::Arg::List(attrs)), Some(name)) =
            (cmd.args.first(), cmd.args.get(2).and_then(|a| a.astring()))
        else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if attrs.iter().any(|a| a.astring().is_some_and(|a| a.eq_ignore_ascii_case(b"\\Sent"))) {
            return Ok(Some(name));
        }
        if name.eq_ignore_ascii_case("Sent") {
            named = Some(name);
        }
    }
    Ok(named)
}

fn quoted(mailbox: &str) -> String {
    String::from_utf8_lossy(&command::astring(mailbox.as_bytes(), false)).into_owned()
}

/// Selects `mailbox`; `false` if it does not exist.
async fn select(up: &mut Upstream, mailbox: &str) -> ImapResult<bool> {
    let (_, status) = up.command(format!("SELECT {}\r\n", quoted(mailbox)).as_bytes()).await?;
    Ok(status.starts_with(b"OK"))
}

async fn search_message_id(up: &mut Upstream, mailbox: &str, id: &str) -> ImapResult<Vec<u32>> {
    if !select(up, mailbox).await? {
        return Ok(Vec::new());
    }
    let id = id.replace(['"', '\\', '\r', '\n'], "");
    let (untagged, _) = up.command(format!("UID SEARCH HEADER Message-ID \"<{id}>\"\r\n").as_bytes()).await?;
    Ok(untagged.iter().flat_map(|r| search_uids(r)).collect())
}

fn search_uids(resp: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(resp);
    let Some(rest) = text.strip_prefix("* SEARCH") else { return Vec::new() };
    rest.split_whitespace().filter_map(|n| n.parse().ok()).collect()
}

/// Called by the account worker with its `UID FETCH … BODY.PEEK[HEADER.FIELDS (…)]` responses
/// for new INBOX messages (INBOX selected): reads the reports among them and hands what they
/// say to the agent.
pub async fn on_new_messages(up: &mut Upstream, login: &str, fetched: &[Vec<u8>]) -> ImapResult<()> {
    if AGENT.get().is_none() {
        return Ok(());
    }
    let reports: Vec<u32> = fetched
        .iter()
        .filter_map(|r| Some((fetch_uid(r)?, ChatHeaders::parse(literal(r).unwrap_or_default()))))
        .filter(|(_, h)| h.is_report)
        .map(|(uid, _)| uid)
        .collect();
    if reports.is_empty() {
        return Ok(());
    }
    let set = reports.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let (untagged, _) = up.command(format!("UID FETCH {set} (UID BODY.PEEK[]<0.262144>)\r\n").as_bytes()).await?;
    for resp in &untagged {
        if let Some(report) = literal(resp).and_then(formats::parse_report) {
            debug!(?report, "report received");
            submit(Job::Report { login: login.to_string(), report });
        }
    }
    Ok(())
}

/// The UID in a FETCH response.
fn fetch_uid(resp: &[u8]) -> Option<u32> {
    let head = &resp[..memchr::memmem::find(resp, b"}\r\n").unwrap_or(resp.len())];
    let text = String::from_utf8_lossy(head).to_ascii_uppercase();
    let at = text.find("UID ")? + 4;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The first literal in a response.
fn literal(resp: &[u8]) -> Option<&[u8]> {
    let end = memchr::memmem::find(resp, b"}\r\n")?;
    let open = resp[..end].iter().rposition(|&b| b == b'{')?;
    let len: usize = std::str::from_utf8(&resp[open + 1..end]).ok()?.trim_end_matches('+').parse().ok()?;
    resp.get(end + 3..end + 3 + len)
}

async fn run(ctx: Arc<Smtp>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut shutdown = ctx.shared.shutdown.clone();
    loop {
        let first = tokio::select! {
            job = rx.recv() => match job { Some(job) => job, None => return },
            _ = shutdown.changed() => return,
        };
        // Everything waiting, per account; repeated `\Seen` news is one look.
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        let mut by_login: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            by_login.entry(job.login().to_ascii_lowercase()).or_default().push(job);
        }
        for (login, jobs) in by_login {
            if let Err(why) = work(&ctx, &login, jobs).await {
                warn!(login, "receipts: {why}");
            }
        }
    }
}

async fn work(ctx: &Arc<Smtp>, login: &str, jobs: Vec<Job>) -> Result<(), String> {
    let shared = &ctx.shared;
    let store = &shared.store;
    let (mut look, mut send, mut mark_retry) = (false, false, None::<usize>);
    // Sessions waiting for this look; dropped (so told) when this function returns.
    let mut _waiting = Vec::new();
    for job in jobs {
        match job {
            Job::Seen { send: s, done, .. } => {
                look = true;
                send |= s;
                _waiting.extend(done);
            }
            Job::Report { report, .. } => {
                if record(store, login, &report).await {
                    mark_retry = Some(0);
                }
            }
            Job::Mark { retry, .. } => mark_retry = Some(mark_retry.map_or(retry, |r| r.min(retry))),
        }
    }
    let l = login.to_string();
    let marks_due =
        mark_retry.is_some() && store.read(move |s| s.sent_chats_to_mark(&l)).await.is_ok_and(|m| !m.is_empty());
    if !look && !marks_due {
        return Ok(());
    }
    let password = shared.credentials.password(&shared.config(), login).await.map_err(|e| e.to_string())?;
    let mut up = connect(shared, login, &password).await?;
    drop(password);
    let chats = chats_folder(shared, &mut up).await.map_err(|e| e.to_string())?;
    if look {
        read_receipts(ctx, login, &mut up, &chats, send).await.map_err(|e| e.to_string())?;
    }
    if marks_due {
        let left = mark(store, login, &mut up, &chats).await.map_err(|e| e.to_string())?;
        let retry = mark_retry.unwrap_or(0);
        if left && let Some(delay) = MARK_RETRIES.get(retry) {
            let (login, delay) = (login.to_string(), *delay);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                submit(Job::Mark { login, retry: retry + 1 });
            });
        }
    }
    let _ = up.command(b"LOGOUT\r\n").await;
    Ok(())
}

/// Applies a report to the record of the sent message it is about; whether it was one of ours.
async fn record(store: &Store, login: &str, report: &Report) -> bool {
    let t = now();
    let result = match report {
        Report::Delivery { envid, message_id, recipients } => {
            let recipients = recipients.clone();
            store
                .sent_chat_update(login, message_id.as_deref(), envid.as_deref(), move |sent| {
                    for (address, outcome) in &recipients {
                        let Some(tick) = sent.recipients.iter_mut().find(|t| t.address.eq_ignore_ascii_case(address))
                        else {
                            continue;
                        };
                        match outcome {
                            Outcome::Delivered => tick.delivered = tick.delivered.or(Some(t)),
                            Outcome::Failed => tick.failed = tick.failed.or(Some(t)),
                        }
                    }
                })
                .await
        }
        Report::Read { original_message_id } => {
            store
                .sent_chat_update(login, Some(original_message_id), None, move |sent| {
                    // The MDN's sender is not checked against the recipients: a group's members are
                    // not all known, and one reader is what the tick says.
                    if sent.recipients.is_empty() {
                        sent.recipients.push(Tick::default());
                    }
                    if let Some(tick) = sent.recipients.iter_mut().find(|t| t.read.is_none()) {
                        tick.read = Some(t);
                    }
                })
                .await
        }
    };
    match result {
        Ok(found) => found.is_some(),
        Err(e) => {
            warn!("cannot record a receipt: {e}");
            false
        }
    }
}

/// Puts the wanted keywords on the user's copies; whether some copy was not found.
async fn mark(store: &Store, login: &str, up: &mut Upstream, chats: &str) -> ImapResult<bool> {
    let sent_box = sent_folder(up).await?;
    let mut left = false;
    let l = login.to_string();
    for (id, sent) in store.read(move |s| s.sent_chats_to_mark(&l)).await.unwrap_or_default() {
        let wanted: Vec<&str> =
            sent.wanted_keywords().into_iter().filter(|k| !sent.marked.iter().any(|m| m == k)).collect();
        let mut found = false;
        for mailbox in std::iter::once(chats).chain(sent_box.as_deref()) {
            let uids = search_message_id(up, mailbox, &id).await?;
            if uids.is_empty() {
                continue;
            }
            let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let (_, status) =
                up.command(format!("UID STORE {set} +FLAGS.SILENT ({})\r\n", wanted.join(" ")).as_bytes()).await?;
            if status.starts_with(b"OK") {
                found = true;
                info!(mailbox, keywords = %wanted.join(" "), "marked a sent chat message");
            }
        }
        if found {
            let marked: Vec<String> = wanted.iter().map(|k| k.to_string()).collect();
            let _ =
                store.sent_chat_update(login, Some(&id), None, move |sent| sent.marked.extend(marked.clone())).await;
        } else {
            left = true;
        }
    }
    Ok(left)
}

/// Looks at the seen chat messages that ask for a receipt and lack `$MDNSent`, in INBOX and
/// Chats; sends one MDN each if `send` (and read receipts have a baseline), then sets
/// `$MDNSent`.
async fn read_receipts(ctx: &Arc<Smtp>, login: &str, up: &mut Upstream, chats: &str, send: bool) -> ImapResult<()> {
    let store = &ctx.shared.store;
    let baseline = store.mdn_baseline(login).ok().flatten();
    let send = send && baseline.is_some();
    let own = vec![login.to_ascii_lowercase()];
    for mailbox in ["INBOX", chats] {
        if !select(up, mailbox).await? {
            continue;
        }
        let (untagged, _) = up
            .command(b"UID SEARCH SEEN UNKEYWORD $MDNSent OR HEADER Disposition-Notification-To \"\" HEADER Chat-Disposition-Notification-To \"\"\r\n")
            .await?;
        let uids: Vec<u32> = untagged.iter().flat_map(|r| search_uids(r)).collect();
        if uids.is_empty() {
            continue;
        }
        let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let fetch = format!("UID FETCH {set} (UID BODY.PEEK[HEADER.FIELDS ({})])\r\n", formats::MDN_FIELDS);
        let (untagged, _) = up.command(fetch.as_bytes()).await?;
        let mut handled = Vec::new();
        for resp in &untagged {
            let (Some(uid), Some(header)) = (fetch_uid(resp), literal(resp)) else { continue };
            let Some(request) = formats::mdn_request(header, &own) else { continue };
            handled.push(uid);
            let at = if send { now() } else { 0 };
            let claimed = store.mdn_claim(login, &request.original_message_id, at).await;
            if !send || !matches!(claimed, Ok(true)) {
                continue;
            }
            let mdn =
                formats::build_mdn(&MdnParams { from: &own[0], request: &request, date: now(), unique: &unique() });
            let submission = Submission {
                login: login.to_string(),
                from: own[0].clone(),
                params: MailParams::default(),
                recipients: vec![Recipient {
                    address: request.to.clone(),
                    notify: None,
                    orcpt: None,
                    state: RecipientState::Pending,
                }],
                body: mdn,
            };
            match ctx.queue.enqueue_receipt(submission).await {
                Ok(id) => info!(id, mailbox, uid, "read receipt queued"),
                Err(e) => warn!(mailbox, uid, "cannot queue a read receipt: {e}"),
            }
        }
        if !handled.is_empty() {
            let set = handled.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            up.command(format!("UID STORE {set} +FLAGS.SILENT ({MDN_SENT})\r\n").as_bytes()).await?;
        }
    }
    if baseline.is_none() {
        match store.set_mdn_baseline(login, now()).await {
            Err(e) => warn!("cannot record the read receipt baseline: {e}"),
            Ok(()) => info!("read receipts start now; messages read before get none"),
        }
    }
    Ok(())
}

/// The sent chat messages and their receipts, for `coi-proxy queue list`.
pub fn describe(store: &Store) -> String {
    let Ok(mut sent) = store.sent_chats() else { return String::new() };
    if sent.is_empty() {
        return String::new();
    }
    sent.sort_by_key(|(_, _, s)| std::cmp::Reverse(s.sent_at));
    let mut out = format!("\nSent chat messages ({}), newest first:\n", sent.len());
    for (login, id, s) in sent.iter().take(50) {
        out.push_str(&format!("\n<{id}>  account {login}, sent {}\n", super::report::rfc5322_date(s.sent_at)));
        for t in &s.recipients {
            let state = if t.read.is_some() {
                "read"
            } else if t.delivered.is_some() {
                "delivered"
            } else if t.failed.is_some() {
                "failed"
            } else if s.envid.is_some() {
                "sent, no report yet"
            } else {
                "sent"
            };
            let who = if t.address.is_empty() { "someone" } else { t.address.as_str() };
            out.push_str(&format!("    to {who}: {state}\n"));
        }
        if !s.marked.is_empty() {
            out.push_str(&format!("    copy marked {}\n", s.marked.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(body_recipients: &[&str]) -> QueuedMessage {
        QueuedMessage {
            login: "alice@example.org".into(),
            from: "alice@example.org".into(),
            params: MailParams::default(),
            recipients: body_recipients
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    notify: None,
                    orcpt: None,
                    state: RecipientState::Pending,
                })
                .collect(),
            size: 0,
            received_at: 0,
            next_attempt_at: 0,
            give_up_at: 0,
            attempts: Vec::new(),
            report_pending: false,
            chat_followup: false,
        }
    }

    #[test]
    fn chat_messages_ask_for_delivery_reports() {
        let mut msg = queued(&["bob@example.org"]);
        prepare(&mut msg, b"Chat-Version: 1.0\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n");
        assert!(msg.chat_followup);
        assert!(msg.params.envid.as_deref().is_some_and(|e| e.starts_with("coi.")));
        assert_eq!(msg.params.ret.as_deref(), Some("HDRS"));
        assert_eq!(msg.recipients[0].notify.as_deref(), Some("SUCCESS,FAILURE"));

        let mut plain = queued(&["bob@example.org"]);
        prepare(&mut plain, b"Subject: hi\r\n\r\nChat-Version: 1.0\r\n");
        assert_eq!(plain, queued(&["bob@example.org"]), "plain mail is left alone");

        let mut own = queued(&["bob@example.org"]);
        own.recipients[0].notify = Some("NEVER".into());
        prepare(&mut own, b"Chat-Version: 1.0\r\n\r\n");
        assert!(own.chat_followup && own.params.envid.is_none(), "the client's own DSN request stands");

        let mut mdn = queued(&["bob@example.org"]);
        prepare(
            &mut mdn,
            b"Chat-Version: 1.0\r\nContent-Type: multipart/report; report-type=disposition-notification\r\n\r\n",
        );
        assert!(!mdn.chat_followup, "receipts get no copy");
    }

    #[test]
    fn fetch_responses() {
        let resp = b"* 2 FETCH (UID 9 BODY[]<0> {5}\r\nhello)\r\n";
        assert_eq!((fetch_uid(resp), literal(resp)), (Some(9), Some(&b"hello"[..])));
        assert_eq!(fetch_uid(b"* 2 FETCH (FLAGS () UID 12)\r\n"), Some(12));
        assert_eq!(search_uids(b"* SEARCH 4 7\r\n"), vec![4, 7]);
    }

    #[tokio::test]
    async fn records_from_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tick = |a: &str| Tick { address: a.into(), ..Default::default() };
        let sent =
            SentChat { sent_at: 1, envid: Some("coi.1".into()), recipients: vec![tick("bob@x")], marked: vec![] };
        store.sent_chat_insert("alice@x", "m@x", &sent).await.unwrap();
        let dsn = Report::Delivery {
            envid: Some("coi.1".into()),
            message_id: None,
            recipients: vec![("bob@x".into(), Outcome::Delivered)],
        };
        assert!(record(&store, "alice@x", &dsn).await);
        assert!(!record(&store, "alice@x", &Report::Read { original_message_id: "other@x".into() }).await);
        assert!(record(&store, "alice@x", &Report::Read { original_message_id: "m@x".into() }).await);
        let (_, _, s) = &store.sent_chats().unwrap()[0];
        assert_eq!(s.wanted_keywords(), vec!["$Delivered", "$Read"]);
        let text = describe(&store);
        assert!(text.contains("<m@x>  account alice@x") && text.contains("to bob@x: read"), "{text}");
    }
}
