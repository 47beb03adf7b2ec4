//! The delivery-failure report the proxy puts into the sender's INBOX when the provider refuses
//! a queued message for good or the queue gives up on it. Shaped like an RFC 3464 DSN
//! (`multipart/report; report-type=delivery-status`) so that mail clients recognise it, with the
//! human explanation first and the original header section last.

use std::fmt::Write;

use crate::mail::rfc5322_date;
use crate::store::{QueuedMessage, RecipientState};

/// At most this much of the original header section is quoted.
const MAX_QUOTED_HEADER: usize = 64 * 1024;
/// What of a message a report needs to read: its quoted header and the blank line after it.
pub const MAX_READ: usize = MAX_QUOTED_HEADER + 4;

/// Builds the report for the failed recipients of queue entry `id`; `body` is the original
/// message, `now` the Unix time of the report.
pub fn failure_report(id: u64, msg: &QueuedMessage, body: &[u8], hostname: &str, now: i64) -> Vec<u8> {
    let header = header_section(body);
    let subject = header_value(header, "subject").unwrap_or_default();
    let to = if msg.from.is_empty() { msg.login.as_str() } else { msg.from.as_str() };
    let boundary = format!("coi-proxy-report-{id}-{now}");
    let failed: Vec<(&str, &str)> = msg
        .recipients
        .iter()
        .filter_map(|r| match &r.state {
            RecipientState::Failed { reply, .. } => Some((r.address.as_str(), reply.as_str())),
            _ => None,
        })
        .collect();

    let mut out = String::new();
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered mail: {}\r\n\
         Date: {}\r\n\
         Message-ID: <coi-proxy-report.{id}.{now}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-formatted delivery status report.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n",
        if subject.is_empty() { "(no subject)" } else { subject.as_str() },
        rfc5322_date(now),
    );
    let _ = write!(
        out,
        "Your message could not be delivered to {}:\r\n\r\n",
        if failed.len() == 1 { "this recipient" } else { "these recipients" }
    );
    for (address, reply) in &failed {
        let _ = write!(out, "  {address}\r\n      {}\r\n\r\n", explain(reply));
    }
    let delivered = msg.recipients.iter().filter(|r| matches!(r.state, RecipientState::Delivered { .. })).count();
    if delivered > 0 {
        let _ = write!(out, "It was delivered to the other {delivered} recipient(s).\r\n\r\n");
    }
    let _ = write!(
        out,
        "Subject of your message: {}\r\n\
         Accepted by coi-proxy: {}\r\n\
         \r\n\
         coi-proxy ({hostname}) accepted the message from your mail program and passed it on to\r\n\
         your provider, which gave the answer above. Nothing more will be tried for these\r\n\
         recipients; check the addresses and send the message again.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Coi-Proxy-Queue-Id: {id}\r\n\
         Arrival-Date: {}\r\n",
        if subject.is_empty() { "(no subject)" } else { subject.as_str() },
        rfc5322_date(msg.received_at),
        rfc5322_date(msg.received_at),
    );
    for r in &msg.recipients {
        let RecipientState::Failed { at, reply } = &r.state else { continue };
        let _ = write!(out, "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\n", r.address);
        match smtp_reply(reply) {
            Some(enhanced) => {
                let _ = write!(out, "Status: {enhanced}\r\nDiagnostic-Code: smtp; {}\r\n", one_line(reply));
            }
            // Not a provider reply: the queue gave up (RFC 3463 4.4.7, delivery time expired).
            None => out.push_str("Status: 4.4.7\r\n"),
        }
        let _ = write!(out, "Last-Attempt-Date: {}\r\n", rfc5322_date(*at));
    }
    let _ = write!(out, "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(header);
    if !header.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The human reading of a failure reason.
fn explain(reply: &str) -> String {
    if smtp_reply(reply).is_some() { format!("The provider refused it: {}", one_line(reply)) } else { one_line(reply) }
}

/// For an SMTP reply text (`550 5.1.1 ...`): its enhanced status code, else one derived from
/// the reply code. `None` for other texts.
fn smtp_reply(reply: &str) -> Option<String> {
    let mut words = reply.split_whitespace();
    let code = words.next().filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))?;
    let class = &code[..1];
    match words.next() {
        Some(w) if w.starts_with(class) && w.split('.').count() == 3 => Some(w.to_string()),
        _ => Some(format!("{class}.0.0")),
    }
}

fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The header section of a message (up to and including its blank line), bounded.
fn header_section(body: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(body, b"\r\n\r\n").map_or(body.len(), |i| i + 2);
    let header = &body[..end];
    if header.len() <= MAX_QUOTED_HEADER {
        return header;
    }
    let cut = memchr::memrchr(b'\n', &header[..MAX_QUOTED_HEADER]).map_or(0, |i| i + 1);
    &header[..cut]
}

/// The unfolded value of the first header field `name` (case-insensitive).
fn header_value(header: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let mut value: Option<String> = None;
    for line in text.split("\r\n") {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((field, rest)) = line.split_once(':')
                    && field.trim().eq_ignore_ascii_case(name)
                {
                    value = Some(rest.to_string());
                }
            }
        }
    }
    value.map(|v| one_line(v.trim()).chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MailParams, Recipient};

    #[test]
    fn report_names_the_failures_and_quotes_the_header() {
        let rcpt = |a: &str, state| Recipient { address: a.into(), notify: None, orcpt: None, state };
        let msg = QueuedMessage {
            login: "alice@example.org".into(),
            from: "alice@example.org".into(),
            params: MailParams::default(),
            recipients: vec![
                rcpt("bob@example.org", RecipientState::Delivered { at: 5, reply: "250 2.0.0 ok".into() }),
                rcpt(
                    "nobody@example.org",
                    RecipientState::Failed { at: 5, reply: "550 5.1.1 <nobody@example.org> User doesn't exist".into() },
                ),
                rcpt("late@example.org", RecipientState::Failed { at: 6, reply: "gave up after 3 attempts".into() }),
            ],
            size: 10,
            received_at: 0,
            next_attempt_at: 0,
            give_up_at: 0,
            attempts: Vec::new(),
            report_pending: true,
            chat_followup: false,
        };
        let body = b"Subject: Hello\r\n there\r\nFrom: alice@example.org\r\n\r\nsecret body\r\n";
        let report = String::from_utf8(failure_report(9, &msg, body, "proxy.test", 60)).unwrap();
        assert!(report.contains("Subject: Undelivered mail: Hello there\r\n"), "{report}");
        assert!(report.contains("report-type=delivery-status"));
        let text = report.find("Content-Type: text/plain").unwrap();
        let status = report.find("Content-Type: message/delivery-status").unwrap();
        assert!(text < status, "human text first");
        assert!(report.contains("  nobody@example.org\r\n      The provider refused it: 550 5.1.1"));
        assert!(report.contains("Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(report.contains("Final-Recipient: rfc822; late@example.org\r\nAction: failed\r\nStatus: 4.4.7\r\n"));
        assert!(!report.contains("Final-Recipient: rfc822; bob@"));
        assert!(report.contains("delivered to the other 1 recipient"));
        assert!(
            report.contains("text/rfc822-headers\r\n\r\nSubject: Hello\r\n there\r\nFrom: alice@example.org\r\n\r\n--")
        );
        assert!(!report.contains("secret body"), "only the header is quoted");
        assert!(!report.contains('\n') || !report.replace("\r\n", "").contains('\n'), "CRLF only");
    }
}
