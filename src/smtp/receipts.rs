//! The receipts agent: the work of the receipts wing that needs provider connections of its own
//! (so that the worker's INBOX selection is never disturbed) and the queue. It reads the jobs
//! that sessions and workers hand over through `Context::receipts` (a `\Seen` change, copies to
//! mark), one account at a time, and after the relay it puts the chat copies into Chats.
//! The rules themselves are the wing's (`crate::receipts`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Smtp;
use super::queue::Body;
use super::queue::{Queue, now};
use super::session::{QueueRefusal, Submission};
use crate::account::Credential;
use crate::coi::folders::Namespace;
use crate::context::ReceiptJob;
use crate::imap::upstream::{OwnWorkError, Upstream};
use crate::receipts::{self, Mdn, Outbox, mailbox, sent};
use crate::store::{MailParams, QueuedMessage, Recipient, RecipientState};

/// Delays after which marks that found no copy yet are tried again (a client's own Sent copy
/// may come seconds after the message).
const MARK_RETRIES: [Duration; 3] = [Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(300)];

/// Starts the agent on `jobs`, the other end of `Context::receipts`.
pub fn start(ctx: Arc<Smtp>, jobs: mpsc::UnboundedReceiver<ReceiptJob>) {
    tokio::spawn(run(ctx, jobs));
}

/// Read receipts go into the queue outside the account's limits.
impl Outbox for Queue {
    type Error = QueueRefusal;

    async fn send(&self, mdn: Mdn) -> Result<u64, QueueRefusal> {
        let recipient = Recipient { address: mdn.to, notify: None, orcpt: None, state: RecipientState::Pending };
        let submission = Submission {
            login: mdn.login,
            from: mdn.from,
            params: MailParams::default(),
            recipients: vec![recipient],
            header: Vec::new(),
            size: mdn.body.len() as u64,
        };
        self.enqueue_receipt(submission, Body::Bytes(mdn.body)).await
    }
}

/// How long a chat copy may wait for room in the memory budget before it is tried again later.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// After relaying: the copy in Chats for every chat message the provider accepted (for at
/// least one recipient). A message whose copy cannot be appended yet stays queued for it.
pub async fn follow_up(ctx: &Smtp, login: &str, credential: &Credential, msgs: &mut [(u64, QueuedMessage)]) {
    let shared = &ctx.shared;
    let mut imap: Option<(Upstream, String)> = None;
    let mut copied = false;
    for (id, msg) in msgs.iter_mut().filter(|(_, m)| m.chat_followup && m.pending().next().is_none()) {
        let accepted = msg.recipients.iter().any(|r| matches!(r.state, RecipientState::Delivered { .. }));
        let enabled = shared.accounts.account(login).current().enabled;
        if accepted && enabled {
            // The copy is APPENDed whole: charged to the account's share of the memory budget.
            let memory = shared.memory.account(login).charge_within(msg.size as usize, MEMORY_WAIT).await;
            if let Err(e) = memory {
                msg.next_attempt_at = now() + 60;
                warn!(id = *id, "cannot put the chat copy into Chats yet: {e}; retrying in 60 s");
                super::queue::save(&shared.store, *id, msg).await;
                continue;
            }
            let result: Result<(), OwnWorkError> = async {
                let i = *id;
                let body = shared.store.read(move |s| s.queue_body(i)).await?.unwrap_or_default();
                if imap.is_none() {
                    let mut up = Upstream::open(shared, login, credential).await?;
                    let chats = Namespace::discover(&mut up).await?.chats(&shared.config().coi.mailbox_root);
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
        shared.receipts.submit(ReceiptJob::Mark { login: login.to_string(), retry: 0 });
    }
}

/// APPENDs `body` (`\Seen`) to `mailbox` unless a message with its Message-ID is there already
/// (an earlier attempt got as far as the APPEND, then the proxy stopped).
async fn append_once(up: &mut Upstream, mailbox: &str, body: &[u8]) -> Result<(), OwnWorkError> {
    if let Some(id) = sent::message_id(body)
        && !mailbox::search_message_id(up, mailbox, &id).await?.is_empty()
    {
        return Ok(());
    }
    let reply = up.append(mailbox, "\\Seen", body).await?;
    if !reply.ok() {
        return Err(OwnWorkError::Refused { command: "APPEND", status: reply.status_text() });
    }
    Ok(())
}

async fn run(ctx: Arc<Smtp>, mut rx: mpsc::UnboundedReceiver<ReceiptJob>) {
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
        let mut by_login: BTreeMap<String, Vec<ReceiptJob>> = BTreeMap::new();
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

async fn work(ctx: &Arc<Smtp>, login: &str, jobs: Vec<ReceiptJob>) -> Result<(), OwnWorkError> {
    let shared = &ctx.shared;
    let store = &shared.store;
    let (mut look, mut send, mut mark_retry) = (false, false, None::<usize>);
    // Sessions waiting for this look; dropped (so told) when this function returns.
    let mut _waiting = Vec::new();
    for job in jobs {
        match job {
            ReceiptJob::Seen { send: s, done, .. } => {
                look = true;
                send |= s;
                _waiting.extend(done);
            }
            ReceiptJob::Mark { retry, .. } => mark_retry = Some(mark_retry.map_or(retry, |r| r.min(retry))),
        }
    }
    let marks_due = mark_retry.is_some() && sent::marks_due(store, login).await;
    if !look && !marks_due {
        return Ok(());
    }
    let credential = shared.credentials.credential(&shared.config(), login).await?;
    let mut up = Upstream::open(shared, login, &credential).await?;
    drop(credential);
    let chats = Namespace::discover(&mut up).await?.chats(&shared.config().coi.mailbox_root);
    if look {
        let clear = ctx.views.clone().map(|views| Arc::new(ViewHeaders(views)) as Arc<dyn receipts::ClearHeaders>);
        receipts::read_receipts(store, &ctx.queue, login, &mut up, &chats, send, clear).await?;
    }
    if marks_due {
        let left = sent::mark(store, login, &mut up, &chats).await?;
        let retry = mark_retry.unwrap_or(0);
        if left && let Some(delay) = MARK_RETRIES.get(retry) {
            let (ctx, login, delay) = (ctx.clone(), login.to_string(), *delay);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                ctx.shared.receipts.submit(ReceiptJob::Mark { login, retry: retry + 1 });
            });
        }
    }
    let _ = up.command(b"LOGOUT\r\n").await;
    Ok(())
}

/// Read receipts see the clear header of encrypted mail as plain sessions were shown it.
struct ViewHeaders(Arc<crate::openpgp::cache::Views>);

impl receipts::ClearHeaders for ViewHeaders {
    fn clear_header(&self, login: &str, mailbox: &str, uidvalidity: u32, uid: u32) -> Option<Vec<u8>> {
        use crate::openpgp::cache::Shown;
        let id = crate::store::ViewId::new(login, mailbox, uidvalidity, uid);
        match self.0.known(&id)? {
            Shown::View { view, decrypted: true } => view.section(&crate::imap::wire::fetch::Section::header()),
            _ => None,
        }
    }
}
