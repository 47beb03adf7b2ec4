//! The user's sent chat messages: at enqueue a chat message (Chat-Version) is marked for a copy
//! in `<root>/Chats` and asks for delivery reports (`NOTIFY=SUCCESS,FAILURE`, `ENVID`,
//! `RET=HDRS`; the relay passes them on only if the provider offers DSN); before relaying it
//! is recorded, so that a report that comes back faster than the copy still finds it. The
//! reports that arrive in INBOX (DSNs from the provider's MTA, MDNs from the other side's
//! client) become ticks in the record, and the ticks become `$Delivered` / `$Read` on the
//! user's copy (in Chats, else Sent).

use tracing::{debug, info, warn};

use super::formats::{self, Outcome, Report};
use super::mailbox;
use crate::clock::now;
use crate::context::{Context, ReceiptJob};
use crate::imap::wire::provider::{ProviderCommands, ProviderError};
use crate::imap::wire::response::{fetch_uid, first_literal, uid_set};
use crate::mail::{ChatHeaders, header_end, rfc5322_date, unique};
use crate::store::{QueuedMessage, SentChat, Store, Tick};

const CAPTURE_FETCH: &[&[u8]] = &[b"* "];

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

/// The Message-ID of a whole message.
pub fn message_id(body: &[u8]) -> Option<String> {
    ChatHeaders::parse(&body[..header_end(body)]).message_id
}

/// What of a queued message is read for its Message-ID: the header section, which submission
/// bounds to 1 MiB, and its blank line; never the whole message.
const HEAD: usize = 1024 * 1024 + 4;

/// Before relaying: records the chat messages about to go out, so that a DSN that comes back
/// faster than the copy is appended still finds its message.
pub async fn before_relay(store: &Store, msgs: &[(u64, QueuedMessage)]) {
    for (id, msg) in msgs.iter().filter(|(_, m)| m.chat_followup && m.pending().next().is_some()) {
        let id = *id;
        let Ok(Some(body)) = store.read(move |s| s.queue_body_head(id, HEAD)).await else { continue };
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
            reports: Vec::new(),
        };
        if let Err(e) = store.sent_chat_insert(&msg.login, &message_id, &sent).await {
            warn!(id, "cannot record a sent chat message: {e}");
        }
    }
}

/// Called by the account worker with its `UID FETCH … BODY.PEEK[HEADER.FIELDS (…)]` responses
/// for new INBOX messages (INBOX selected), each message once: reads the reports among them,
/// records what they say about the user's sent chat messages (each report once, by its
/// Message-ID, however often it comes), and asks the receipts agent to mark the copies.
pub async fn on_new_messages(
    ctx: &Context,
    provider: &mut impl ProviderCommands,
    login: &str,
    fetched: &[Vec<u8>],
) -> Result<(), ProviderError> {
    if !ctx.receipts.running() {
        return Ok(());
    }
    let reports: Vec<u32> = fetched
        .iter()
        .filter_map(|r| Some((fetch_uid(r)?, ChatHeaders::parse(first_literal(r).unwrap_or_default()))))
        .filter(|(_, h)| h.is_report)
        .map(|(uid, _)| uid)
        .collect();
    if reports.is_empty() {
        return Ok(());
    }
    let command = format!("UID FETCH {} (UID BODY.PEEK[]<0.262144>)\r\n", uid_set(&reports));
    let reply = provider.run(command.as_bytes(), CAPTURE_FETCH).await?;
    let mut ours = false;
    for resp in &reply.untagged {
        let Some(message) = first_literal(resp) else { continue };
        if let Some(report) = formats::parse_report(message) {
            debug!(?report, "report received");
            let id = formats::report_id(message).unwrap_or_else(|| report.fallback_id());
            ours |= record(&ctx.store, login, &id, &report).await == Recorded::New;
        }
    }
    if ours {
        ctx.receipts.submit(ReceiptJob::Mark { login: login.to_string(), retry: 0 });
    }
    Ok(())
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now.
    New,
    /// Recorded before (the same report again).
    Already,
    /// Not about a message the user sent through the proxy, or from someone it did not go to.
    Ignored,
}

/// Applies the report `id` to the record of the sent message it is about, once: a read to the
/// recipient it comes from, a delivery to the recipients it names.
pub async fn record(store: &Store, login: &str, id: &str, report: &Report) -> Recorded {
    let t = now();
    // Set by the last run of the change (see `Store::sent_chat_update`).
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(Recorded::Ignored));
    let seen = outcome.clone();
    let report_id = id.to_string();
    let result = match report {
        Report::Delivery { envid, message_id, recipients } => {
            let recipients = recipients.clone();
            store
                .sent_chat_update(login, message_id.as_deref(), envid.as_deref(), move |sent| {
                    if !sent.note_report(&report_id) {
                        *seen.lock().expect("outcome") = Recorded::Already;
                        return;
                    }
                    *seen.lock().expect("outcome") = Recorded::New;
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
        Report::Read { original_message_id, reader } => {
            let reader = reader.clone();
            store
                .sent_chat_update(login, Some(original_message_id), None, move |sent| {
                    // The reader's tick: the first address the report names that the message
                    // went to (a group message went to each member).
                    let Some(i) = reader
                        .iter()
                        .find_map(|r| sent.recipients.iter().position(|t| t.address.eq_ignore_ascii_case(r)))
                    else {
                        *seen.lock().expect("outcome") = Recorded::Ignored;
                        return;
                    };
                    if !sent.note_report(&report_id) {
                        *seen.lock().expect("outcome") = Recorded::Already;
                        return;
                    }
                    *seen.lock().expect("outcome") = Recorded::New;
                    let tick = &mut sent.recipients[i];
                    tick.read = tick.read.or(Some(t));
                })
                .await
        }
    };
    let outcome = match result {
        Ok(Some(_)) => *outcome.lock().expect("outcome"),
        Ok(None) => {
            debug!(report = id, "report about no message sent through the proxy");
            return Recorded::Ignored;
        }
        Err(e) => {
            warn!("cannot record a receipt: {e}");
            return Recorded::Ignored;
        }
    };
    match (outcome, report) {
        (Recorded::New, _) => info!(report = id, "report recorded"),
        (Recorded::Already, _) => debug!(report = id, "report already recorded; not counted again"),
        (Recorded::Ignored, Report::Read { reader, .. }) => {
            debug!(report = id, ?reader, "read receipt from someone who was not a recipient; ignored")
        }
        (Recorded::Ignored, _) => {}
    }
    outcome
}

/// Whether some sent chat message of `login` waits for keywords on its copy.
pub async fn marks_due(store: &Store, login: &str) -> bool {
    let l = login.to_string();
    store.read(move |s| s.sent_chats_to_mark(&l)).await.is_ok_and(|m| !m.is_empty())
}

/// Puts the wanted keywords on the user's copies; whether some copy was not found.
pub async fn mark(
    store: &Store,
    login: &str,
    provider: &mut impl ProviderCommands,
    chats: &str,
) -> Result<bool, ProviderError> {
    let list = provider.run(mailbox::LIST_ALL, mailbox::CAPTURE_LIST).await?;
    let sent_box = mailbox::sent_in(&list.untagged);
    let mut left = false;
    let l = login.to_string();
    for (id, sent) in store.read(move |s| s.sent_chats_to_mark(&l)).await.unwrap_or_default() {
        let wanted: Vec<&str> =
            sent.wanted_keywords().into_iter().filter(|k| !sent.marked.iter().any(|m| m == k)).collect();
        let mut found = false;
        for mailbox in std::iter::once(chats).chain(sent_box.as_deref()) {
            let uids = mailbox::search_message_id(provider, mailbox, &id).await?;
            if uids.is_empty() {
                continue;
            }
            let command = format!("UID STORE {} +FLAGS.SILENT ({})\r\n", uid_set(&uids), wanted.join(" "));
            if provider.run(command.as_bytes(), &[]).await?.ok() {
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

/// The sent chat messages and their receipts, for `coi-proxy queue list`.
pub fn describe(store: &Store) -> String {
    let Ok(mut sent) = store.sent_chats() else { return String::new() };
    if sent.is_empty() {
        return String::new();
    }
    sent.sort_by_key(|(_, _, s)| std::cmp::Reverse(s.sent_at));
    let mut out = format!("\nSent chat messages ({}), newest first:\n", sent.len());
    for (login, id, s) in sent.iter().take(50) {
        out.push_str(&format!("\n<{id}>  account {login}, sent {}\n", rfc5322_date(s.sent_at)));
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
    use crate::store::{MailParams, Recipient, RecipientState};

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

    #[tokio::test]
    async fn records_from_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tick = |a: &str| Tick { address: a.into(), ..Default::default() };
        let sent = SentChat {
            sent_at: 1,
            envid: Some("coi.1".into()),
            recipients: vec![tick("carol@x"), tick("bob@x")],
            ..Default::default()
        };
        store.sent_chat_insert("alice@x", "m@x", &sent).await.unwrap();
        let dsn = Report::Delivery {
            envid: Some("coi.1".into()),
            message_id: None,
            recipients: vec![("bob@x".into(), Outcome::Delivered), ("carol@x".into(), Outcome::Delivered)],
        };
        assert_eq!(record(&store, "alice@x", "dsn1@x", &dsn).await, Recorded::New);
        assert_eq!(record(&store, "alice@x", "dsn1@x", &dsn).await, Recorded::Already);
        let read = |id: &str, reader: &[&str]| Report::Read {
            original_message_id: id.into(),
            reader: reader.iter().map(|r| r.to_string()).collect(),
        };
        assert_eq!(record(&store, "alice@x", "r0@x", &read("other@x", &["bob@x"])).await, Recorded::Ignored);
        assert_eq!(
            record(&store, "alice@x", "r1@x", &read("m@x", &["dave@x"])).await,
            Recorded::Ignored,
            "not a recipient"
        );
        assert_eq!(record(&store, "alice@x", "r2@x", &read("m@x", &["BOB@x", "carol@x"])).await, Recorded::New);
        assert_eq!(record(&store, "alice@x", "r2@x", &read("m@x", &["bob@x"])).await, Recorded::Already);
        let (_, _, s) = &store.sent_chats().unwrap()[0];
        assert_eq!(s.wanted_keywords(), vec!["$Delivered", "$Read"]);
        let text = describe(&store);
        assert!(text.contains("<m@x>  account alice@x") && text.contains("to bob@x: read"), "{text}");
        assert!(text.contains("to carol@x: delivered"), "the Final-Recipient read it, not the next: {text}");
    }
}
