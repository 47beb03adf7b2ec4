//! Read receipts on behalf of plain mail clients: after a client that is not one of
//! `[coi] chat_clients` sets `\Seen` on an account with `read_receipts = true`, the proxy sends
//! an MDN for each seen chat message that asks for one and lacks `$MDNSent`, then sets
//! `$MDNSent`. Messages already read when read receipts started for the account (the
//! baseline), and those a chat client marked read (it sends its own), get `$MDNSent` and no MDN.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::formats::{self, MdnParams};
use super::mailbox::select_uidvalidity;
use crate::clock::now;
use crate::config::Config;
use crate::context::{Context, ReceiptJob};
use crate::imap::wire::provider::{ProviderCommands, ProviderError};
use crate::imap::wire::response::{fetch_uid, first_literal, search_uids, uid_set};
use crate::mail::{MDN_SENT, unique};
use crate::store::Store;

/// Longest wait of an account's first session for the read-receipt baseline.
const BASELINE_WAIT: Duration = Duration::from_secs(10);
const CAPTURE_SEARCH: &[&[u8]] = &[b"* SEARCH"];
const CAPTURE_FETCH: &[&[u8]] = &[b"* "];

/// Whether `[[account]] read_receipts` is on for `login` (matched by login, then domain).
pub fn read_receipts_for(config: &Config, login: &str) -> bool {
    let domain = login.rsplit_once('@').map(|(_, d)| d);
    let by_login = config.accounts.iter().find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login)));
    let by_domain = || {
        config.accounts.iter().find(|a| a.domain.as_deref().zip(domain).is_some_and(|(a, d)| a.eq_ignore_ascii_case(d)))
    };
    by_login.or_else(by_domain).is_some_and(|a| a.read_receipts)
}

/// An IMAP session's part in read receipts: built at login, told of every `\Seen` change.
pub struct SeenHook {
    ctx: Arc<Context>,
    login: String,
    enabled: bool,
    /// The client's ID name, shared with the session: chat clients send ID after login too.
    client_name: Arc<Mutex<Option<String>>>,
    /// `[coi]` as the session started: which clients are chat clients.
    coi: crate::config::Coi,
}

impl SeenHook {
    /// For the first session with read receipts on, this waits (at most [`BASELINE_WAIT`]) until
    /// what is read already has been marked to get no receipt; the session relays nothing
    /// before, so a message the user reads at once is not mistaken for one read before.
    pub async fn new(ctx: &Arc<Context>, login: &str, client_name: Arc<Mutex<Option<String>>>) -> SeenHook {
        let config = ctx.config();
        let enabled = read_receipts_for(&config, login);
        if enabled && matches!(ctx.store.mdn_baseline(login), Ok(None)) {
            let (done, baseline) = oneshot::channel();
            ctx.receipts.submit(ReceiptJob::Seen { login: login.to_string(), send: false, done: Some(done) });
            if tokio::time::timeout(BASELINE_WAIT, baseline).await.is_err() {
                warn!(login, "read receipts: the first look at the account takes long; going on without it");
            }
        }
        let coi = config.coi.clone();
        SeenHook { ctx: ctx.clone(), login: login.to_string(), enabled, client_name, coi }
    }

    pub fn seen(&self) {
        if self.enabled {
            // A chat client sends its own receipts: the proxy sends none for it (and marks none).
            let name = self.client_name.lock().expect("client name").clone();
            let chat_client = self.coi.is_chat_client(name.as_deref());
            self.ctx.receipts.submit(ReceiptJob::Seen { login: self.login.clone(), send: !chat_client, done: None });
        }
    }
}

/// A read receipt to send: from the user's address to the one the message asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mdn {
    pub login: String,
    pub from: String,
    pub to: String,
    pub body: Vec<u8>,
}

/// Where read receipts go (the SMTP queue, outside the account's limits: the user's read
/// action cannot be repeated later).
pub trait Outbox: Sync {
    type Error: std::fmt::Display;

    /// Queues `mdn`; its queue id.
    fn send(&self, mdn: Mdn) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// The clear header of an encrypted message as the account's plain sessions are shown it (the
/// decrypted view, issue 15), by where the message is: Delta Chat asks for its receipt inside
/// the encryption. Only messages whose view was decided are known (a plain client has had
/// the message in its list or read it before it is seen).
pub trait ClearHeaders: Send + Sync {
    /// The header section of `uid`'s clear text, if it is an encrypted message decrypted for
    /// plain sessions. Blocking (a store read): called off the runtime.
    fn clear_header(&self, login: &str, mailbox: &str, uidvalidity: u32, uid: u32) -> Option<Vec<u8>>;
}

/// The clear headers of the seen encrypted messages in the selected `mailbox` that lack
/// `$MDNSent` and are not among `asked` (whose outer header asks already).
async fn clear_headers(
    provider: &mut impl ProviderCommands,
    clear: &Arc<dyn ClearHeaders>,
    login: &str,
    mailbox: &str,
    uidvalidity: u32,
    asked: &[u32],
) -> Result<Vec<(u32, Vec<u8>)>, ProviderError> {
    let reply = provider
        .run(b"UID SEARCH SEEN UNKEYWORD $MDNSent HEADER Content-Type \"multipart/encrypted\"\r\n", CAPTURE_SEARCH)
        .await?;
    let encrypted: Vec<u32> =
        reply.untagged.iter().flat_map(|r| search_uids(r)).filter(|uid| !asked.contains(uid)).collect();
    if encrypted.is_empty() {
        return Ok(Vec::new());
    }
    let (clear, login, mailbox) = (clear.clone(), login.to_string(), mailbox.to_string());
    let found = tokio::task::spawn_blocking(move || {
        encrypted
            .into_iter()
            .filter_map(|uid| Some((uid, clear.clear_header(&login, &mailbox, uidvalidity, uid)?)))
            .collect::<Vec<_>>()
    })
    .await;
    Ok(found.unwrap_or_else(|e| {
        warn!("read receipts: reading clear headers failed: {e}");
        Vec::new()
    }))
}

/// Looks at the seen chat messages that ask for a receipt and lack `$MDNSent`, in INBOX and
/// Chats; sends one MDN each if `send` (and read receipts have a baseline), then sets
/// `$MDNSent`.
pub async fn read_receipts(
    store: &Store,
    outbox: &impl Outbox,
    login: &str,
    provider: &mut impl ProviderCommands,
    chats: &str,
    send: bool,
    clear: Option<Arc<dyn ClearHeaders>>,
) -> Result<(), ProviderError> {
    let baseline = store.mdn_baseline(login).ok().flatten();
    let send = send && baseline.is_some();
    let own = vec![login.to_ascii_lowercase()];
    for mailbox in ["INBOX", chats] {
        let (selected, uidvalidity) = select_uidvalidity(provider, mailbox).await?;
        if !selected {
            continue;
        }
        let reply = provider
            .run(b"UID SEARCH SEEN UNKEYWORD $MDNSent OR HEADER Disposition-Notification-To \"\" HEADER Chat-Disposition-Notification-To \"\"\r\n", CAPTURE_SEARCH)
            .await?;
        let uids: Vec<u32> = reply.untagged.iter().flat_map(|r| search_uids(r)).collect();
        // (uid, header) of each seen message that may ask for a receipt.
        let mut headers: Vec<(u32, Vec<u8>)> = Vec::new();
        if !uids.is_empty() {
            let fetch =
                format!("UID FETCH {} (UID BODY.PEEK[HEADER.FIELDS ({})])\r\n", uid_set(&uids), formats::MDN_FIELDS);
            let reply = provider.run(fetch.as_bytes(), CAPTURE_FETCH).await?;
            headers.extend(reply.untagged.iter().filter_map(|r| Some((fetch_uid(r)?, first_literal(r)?.to_vec()))));
        }
        if let (Some(clear), Some(uidvalidity)) = (&clear, uidvalidity) {
            headers.extend(clear_headers(provider, clear, login, mailbox, uidvalidity, &uids).await?);
        }
        let mut handled = Vec::new();
        for (uid, header) in &headers {
            let uid = *uid;
            let Some(request) = formats::mdn_request(header, &own) else { continue };
            handled.push(uid);
            let at = if send { now() } else { 0 };
            let claimed = store.mdn_claim(login, &request.original_message_id, at).await;
            if !send || !matches!(claimed, Ok(true)) {
                continue;
            }
            let body =
                formats::build_mdn(&MdnParams { from: &own[0], request: &request, date: now(), unique: &unique() });
            let mdn = Mdn { login: login.to_string(), from: own[0].clone(), to: request.to.clone(), body };
            match outbox.send(mdn).await {
                Ok(id) => info!(id, mailbox, uid, "read receipt queued"),
                Err(e) => warn!(mailbox, uid, "cannot queue a read receipt: {e}"),
            }
        }
        if !handled.is_empty() {
            let command = format!("UID STORE {} +FLAGS.SILENT ({MDN_SENT})\r\n", uid_set(&handled));
            provider.run(command.as_bytes(), &[]).await?;
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
