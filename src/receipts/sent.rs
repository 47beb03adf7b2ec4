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

/// Called by the account worker with its `UID FETCH … BODY.PEEK[HEADER.FIELDS (…)]` responses
/// for new INBOX messages (INBOX selected): reads the reports among them, records what they say
/// about the user's sent chat messages, and asks the receipts agent to mark the copies.
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
        if let Some(report) = first_literal(resp).and_then(formats::parse_report) {
            debug!(?report, "report received");
            ours |= record(&ctx.store, login, &report).await;
        }
    }
    if ours {
        ctx.receipts.submit(ReceiptJob::Mark { login: login.to_string(), retry: 0 });
    }
    Ok(())
}

/// Applies a report to the record of the sent message it is about; whether it was one of ours.
pub async fn record(store: &Store, login: &str, report: &Report) -> bool {
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
