//! Receipts as messages, without I/O: the read receipt (MDN, RFC 8098) the proxy sends for a
//! plain mail client in the exact shape of coi-spec §3.3, deciding whether a message asks for
//! one, and recognising the reports that come back for messages the user sent: delivery status
//! notifications (RFC 3464, from the provider's MTA) and MDNs (from the other side's client).
//! The rules that use them are in `sent` and `read`.

use crate::mail::{address, fields, msg_ids, rfc5322_date, split_header};

/// Header fields fetched to decide on a read receipt.
pub const MDN_FIELDS: &str = "FROM RETURN-PATH MESSAGE-ID CHAT-VERSION DISPOSITION-NOTIFICATION-TO CHAT-DISPOSITION-NOTIFICATION-TO AUTO-SUBMITTED CONTENT-TYPE";

/// A received message that asks for a read receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnRequest {
    /// Where the receipt goes.
    pub to: String,
    pub original_message_id: String,
}

/// Whether the message with this header block gets a read receipt from the proxy: a chat
/// message (Chat-Version) that asks for one, not from the user (`own` addresses, lower case),
/// not sent automatically, and not itself a report; and, where the message has a Return-Path,
/// only to that address (RFC 8098 §2.1: a receipt to another address needs the user's consent,
/// which an automatic receipt does not have).
pub fn mdn_request(header: &[u8], own: &[String]) -> Option<MdnRequest> {
    let mut chat = false;
    let (mut from, mut to, mut id) = (None, None, None);
    let mut return_path: Option<Option<String>> = None;
    for (name, value) in fields(header) {
        match name.to_ascii_lowercase().as_str() {
            "chat-version" => chat = true,
            "from" => from = address(&value),
            "return-path" => return_path = Some(address(&value)),
            "message-id" => id = msg_ids(&value).into_iter().next(),
            // Delta Chat's own header wins: plain mail clients react oddly to the standard one.
            "chat-disposition-notification-to" => to = address(&value).or(to),
            "disposition-notification-to" if to.is_none() => to = address(&value),
            "auto-submitted" if !value.trim().eq_ignore_ascii_case("no") => return None,
            "content-type" if value.trim_start().to_ascii_lowercase().starts_with("multipart/report") => return None,
            _ => {}
        }
    }
    let (from, to) = (from?, to?);
    if !chat || own.contains(&from) || own.contains(&to) {
        return None;
    }
    if return_path.is_some_and(|path| path.as_deref() != Some(to.as_str())) {
        return None;
    }
    Some(MdnRequest { to, original_message_id: id? })
}

/// What the proxy needs to write an MDN.
pub struct MdnParams<'a> {
    /// The user's address (From, Final-Recipient).
    pub from: &'a str,
    pub request: &'a MdnRequest,
    /// Unix seconds.
    pub date: i64,
    /// Unique within the user's domain, for the Message-ID.
    pub unique: &'a str,
}

/// The read receipt, CRLF line ends, 7bit throughout; no copy of the original (coi-spec §3.3).
pub fn build_mdn(p: &MdnParams) -> Vec<u8> {
    let domain = p.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let boundary = format!("mdn-{}", p.unique);
    let original = &p.request.original_message_id;
    let lines = [
        format!("From: <{}>", p.from),
        format!("To: <{}>", p.request.to),
        "Subject: Chat: Read receipt".to_string(),
        format!("Date: {}", rfc5322_date(p.date)),
        format!("Message-ID: <mdn.{}@{domain}>", p.unique),
        format!("In-Reply-To: <{original}>"),
        format!("References: <{original}>"),
        "Chat-Version: 1.0".to_string(),
        "Auto-Submitted: auto-replied".to_string(),
        "MIME-Version: 1.0".to_string(),
        format!("Content-Type: multipart/report; report-type=disposition-notification;\r\n\tboundary=\"{boundary}\""),
        String::new(),
        format!("--{boundary}"),
        "Content-Type: text/plain; charset=utf-8".to_string(),
        "Content-Transfer-Encoding: 7bit".to_string(),
        String::new(),
        "This is a receipt notification: the message was displayed.".to_string(),
        String::new(),
        format!("--{boundary}"),
        "Content-Type: message/disposition-notification".to_string(),
        "Content-Disposition: notification".to_string(),
        "Content-Transfer-Encoding: 7bit".to_string(),
        String::new(),
        format!("Reporting-UA: coi-proxy; coi-proxy {}", env!("CARGO_PKG_VERSION")),
        format!("Original-Recipient: rfc822;{}", p.from),
        format!("Final-Recipient: rfc822;{}", p.from),
        format!("Original-Message-ID: <{original}>"),
        "Disposition: manual-action/MDN-sent-automatically; displayed".to_string(),
        String::new(),
        format!("--{boundary}--"),
        String::new(),
    ];
    lines.join("\r\n").into_bytes()
}

/// What a recipient's report says about one sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A DSN (RFC 3464): per recipient, delivered (or relayed on) or failed.
    Delivery { envid: Option<String>, message_id: Option<String>, recipients: Vec<(String, Outcome)> },
    /// An MDN saying the message was displayed, by `reader` (its `Final-Recipient`, else its
    /// `From`, lower case), as far as the report says.
    Read { original_message_id: String, reader: Vec<String> },
}

impl Report {
    /// What identifies the report when it carries no Message-ID: what it says.
    pub fn fallback_id(&self) -> String {
        match self {
            Report::Delivery { envid, message_id, recipients } => {
                let rcpts: Vec<String> = recipients.iter().map(|(a, o)| format!("{a}={o:?}")).collect();
                format!(
                    "dsn:{}:{}:{}",
                    envid.as_deref().unwrap_or(""),
                    message_id.as_deref().unwrap_or(""),
                    rcpts.join(",")
                )
            }
            Report::Read { original_message_id, reader } => format!("mdn:{original_message_id}:{}", reader.join(",")),
        }
    }
}

/// The Message-ID of a report (its own, not the one it is about).
pub fn report_id(message: &[u8]) -> Option<String> {
    let (header, _) = split_header(message);
    field(header, "message-id").and_then(|v| msg_ids(&v).into_iter().next())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
}

/// Recognises a DSN or a "displayed" MDN in a whole message (top-level `multipart/report`).
/// Delays (`Action: delayed`) and other dispositions (`deleted`, …) are no news for the ticks.
pub fn parse_report(message: &[u8]) -> Option<Report> {
    let (header, body) = split_header(message);
    let content_type = field(header, "content-type")?;
    let lower = content_type.to_ascii_lowercase();
    if !lower.trim_start().starts_with("multipart/report") {
        return None;
    }
    let boundary = parameter(&content_type, "boundary")?;
    let parts = split_parts(body, &boundary);
    let part_type =
        |h: &[u8]| field(h, "content-type").map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match parameter(&content_type, "report-type")?.to_ascii_lowercase().as_str() {
        "delivery-status" => {
            let mut report = Report::Delivery { envid: None, message_id: None, recipients: Vec::new() };
            let Report::Delivery { envid, message_id, recipients } = &mut report else { unreachable!() };
            for (h, b) in &parts {
                match part_type(h).as_deref() {
                    Some("message/delivery-status" | "message/global-delivery-status") => {
                        for block in blocks(b) {
                            let get = |name: &str| block.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
                            if let Some((_, v)) = get("original-envelope-id") {
                                *envid = Some(v.trim().to_string());
                            }
                            let Some((_, rcpt)) = get("final-recipient").or(get("original-recipient")) else {
                                continue;
                            };
                            let rcpt =
                                rcpt.split_once(';').map_or(rcpt.as_str(), |(_, a)| a).trim().to_ascii_lowercase();
                            let outcome = match get("action").map(|(_, a)| a.trim().to_ascii_lowercase()).as_deref() {
                                Some("delivered" | "relayed" | "expanded") => Outcome::Delivered,
                                Some("failed") => Outcome::Failed,
                                _ => continue,
                            };
                            recipients.push((rcpt, outcome));
                        }
                    }
                    Some("text/rfc822-headers" | "message/rfc822" | "message/global-headers") => {
                        *message_id = field(b, "message-id").and_then(|v| msg_ids(&v).into_iter().next());
                    }
                    _ => {}
                }
            }
            Some(report)
        }
        "disposition-notification" => parts.iter().find_map(|(h, b)| {
            if part_type(h).as_deref() != Some("message/disposition-notification") {
                return None;
            }
            let block = blocks(b).into_iter().flatten().collect::<Vec<_>>();
            let get = |name: &str| block.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            let disposition = get("disposition")?.to_ascii_lowercase();
            let kind = disposition.split(';').nth(1)?.trim().to_string();
            if !kind.starts_with("displayed") {
                return None;
            }
            let original_message_id = msg_ids(&get("original-message-id")?).into_iter().next()?;
            // Who read it: the MDN's Final-Recipient (`rfc822;bob@example.org`), then its From.
            let final_recipient =
                get("final-recipient").and_then(|v| address(v.split_once(';').map_or(v.as_str(), |(_, a)| a)));
            let from = field(header, "from").and_then(|v| address(&v));
            let reader = final_recipient.into_iter().chain(from).collect();
            Some(Report::Read { original_message_id, reader })
        }),
        _ => None,
    }
}

/// The unfolded value of the first field `name` in a header block.
fn field(header: &[u8], name: &str) -> Option<String> {
    fields(header).into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// A Content-Type parameter, unquoted.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The body parts of a multipart body: (header, body) each.
fn split_parts<'a>(body: &'a [u8], boundary: &str) -> Vec<(&'a [u8], &'a [u8])> {
    let text = body;
    let delimiter = format!("--{boundary}");
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&text[at..], delimiter.as_bytes()) {
        let start = at + pos;
        if start == 0 || text[start - 1] == b'\n' {
            starts.push(start);
        }
        at = start + delimiter.len();
    }
    starts
        .windows(2)
        .filter_map(|w| {
            let part = &text[w[0] + delimiter.len()..w[1]];
            if part.starts_with(b"--") {
                return None;
            }
            let part = part.strip_prefix(b"\r\n").or_else(|| part.strip_prefix(b"\n")).unwrap_or(part);
            Some(split_header(part))
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The field blocks of a `message/delivery-status` body (separated by blank lines).
fn blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n").map(|b| fields(b.as_bytes())).filter(|b| !b.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<String> {
        vec!["bob@example.org".to_string()]
    }

    #[test]
    fn who_gets_a_read_receipt() {
        let dc = b"From: Alice <alice@example.org>\r\nChat-Version: 1.0\r\nMessage-ID: <Mr.a@example.org>\r\n\
                   Chat-Disposition-Notification-To: alice@example.org\r\n\r\n";
        assert_eq!(
            mdn_request(dc, &own()),
            Some(MdnRequest { to: "alice@example.org".into(), original_message_id: "Mr.a@example.org".into() })
        );
        let coi = b"From: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <chat$1@x>\r\n\
                    Disposition-Notification-To: <Alice@Example.org>\r\n\r\n";
        assert_eq!(mdn_request(coi, &own()).unwrap().to, "alice@example.org");
        let plain =
            b"From: alice@example.org\r\nMessage-ID: <p@x>\r\nDisposition-Notification-To: alice@example.org\r\n";
        assert_eq!(mdn_request(plain, &own()), None, "plain mail: the user's client decides");
        let mine = b"From: bob@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <m@x>\r\nChat-Disposition-Notification-To: bob@example.org\r\n";
        assert_eq!(mdn_request(mine, &own()), None, "never for the user's own messages");
        let auto = b"From: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <m@x>\r\nAuto-Submitted: auto-replied\r\nChat-Disposition-Notification-To: alice@example.org\r\n";
        assert_eq!(mdn_request(auto, &own()), None);
        let same = b"Return-Path: <Alice@example.org>\r\nFrom: alice@example.org\r\nChat-Version: 1.0\r\n\
                     Message-ID: <m@x>\r\nChat-Disposition-Notification-To: alice@example.org\r\n";
        assert!(mdn_request(same, &own()).is_some(), "to the envelope sender: sent");
        let elsewhere = b"Return-Path: <alice@example.org>\r\nFrom: alice@example.org\r\nChat-Version: 1.0\r\n\
                          Message-ID: <m@x>\r\nChat-Disposition-Notification-To: victim@example.net\r\n";
        assert_eq!(mdn_request(elsewhere, &own()), None, "RFC 8098 2.1: not automatically to another address");
        let bounce = b"Return-Path: <>\r\nFrom: alice@example.org\r\nChat-Version: 1.0\r\n\
                       Message-ID: <m@x>\r\nChat-Disposition-Notification-To: alice@example.org\r\n";
        assert_eq!(mdn_request(bounce, &own()), None);
        let no_request = b"From: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <m@x>\r\n";
        assert_eq!(mdn_request(no_request, &own()), None);
    }

    #[test]
    fn mdn_shape() {
        let request = MdnRequest { to: "alice@example.org".into(), original_message_id: "Mr.a@example.org".into() };
        let mdn = build_mdn(&MdnParams { from: "bob@example.org", request: &request, date: 0, unique: "u1" });
        let text = String::from_utf8(mdn.clone()).unwrap();
        assert!(!text.replace("\r\n", "").contains('\n'), "CRLF only");
        assert!(text.is_ascii());
        for needle in [
            "Subject: Chat: Read receipt\r\n",
            "Chat-Version: 1.0\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "Message-ID: <mdn.u1@example.org>\r\n",
            "Content-Type: multipart/report; report-type=disposition-notification;",
            "Content-Type: message/disposition-notification\r\nContent-Disposition: notification\r\nContent-Transfer-Encoding: 7bit\r\n",
            "Original-Message-ID: <Mr.a@example.org>\r\n",
            "Final-Recipient: rfc822;bob@example.org\r\n",
            "Disposition: manual-action/MDN-sent-automatically; displayed\r\n",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        assert!(!text.contains("message/rfc822"), "no copy of the original");
        assert_eq!(text.matches("\r\n--mdn-u1\r\n").count(), 2, "two parts");
        assert!(text.ends_with("\r\n--mdn-u1--\r\n"));
        assert_eq!(
            parse_report(&mdn),
            Some(Report::Read {
                original_message_id: "Mr.a@example.org".into(),
                reader: vec!["bob@example.org".into(), "bob@example.org".into()]
            })
        );
        assert_eq!(report_id(&mdn).as_deref(), Some("mdn.u1@example.org"));
        // Our own receipts are not receipts we would answer.
        assert_eq!(mdn_request(&mdn, &own()), None);
    }

    /// A success DSN as Postfix writes it (RET=HDRS), shortened.
    const POSTFIX_DSN: &str = "Return-Path: <>\r\nFrom: Mail Delivery System <MAILER-DAEMON@example.org>\r\n\
Subject: Successful Mail Delivery Report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"ABC.1/mail.example.org\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--ABC.1/mail.example.org\r\n\
Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nYour message was successfully delivered.\r\n\r\n\
--ABC.1/mail.example.org\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mail.example.org\r\nX-Postfix-Queue-ID: ABC\r\nOriginal-Envelope-Id: coi.42\r\n\r\n\
Final-Recipient: rfc822; bob@example.org\r\nOriginal-Recipient: rfc822;bob@example.org\r\nAction: relayed\r\nStatus: 2.0.0\r\n\r\n\
Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--ABC.1/mail.example.org\r\nContent-Description: Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n\
From: alice@example.org\r\nMessage-ID: <Mr.x@example.org>\r\n\r\n--ABC.1/mail.example.org--\r\n";

    #[test]
    fn delivery_status_notifications() {
        assert_eq!(
            parse_report(POSTFIX_DSN.as_bytes()),
            Some(Report::Delivery {
                envid: Some("coi.42".into()),
                message_id: Some("Mr.x@example.org".into()),
                recipients: vec![
                    ("bob@example.org".into(), Outcome::Delivered),
                    ("nobody@example.org".into(), Outcome::Failed)
                ],
            })
        );
        assert_eq!(parse_report(b"Content-Type: text/plain\r\n\r\nhello\r\n"), None);
        let delayed =
            POSTFIX_DSN.replace("Action: relayed", "Action: delayed").replace("Action: failed", "Action: delayed");
        let Some(Report::Delivery { recipients, .. }) = parse_report(delayed.as_bytes()) else { panic!() };
        assert!(recipients.is_empty());
    }

    #[test]
    fn only_displayed_mdns_count() {
        let request = MdnRequest { to: "alice@example.org".into(), original_message_id: "o@x".into() };
        let mdn = build_mdn(&MdnParams { from: "bob@example.org", request: &request, date: 0, unique: "u" });
        let deleted = String::from_utf8(mdn).unwrap().replace("; displayed", "; deleted");
        assert_eq!(parse_report(deleted.as_bytes()), None);
        assert_eq!(address("\"A, B\" <A@X.org>").as_deref(), Some("a@x.org"));
        assert_eq!(address("nobody"), None);
    }
}
