//! Internet message helpers shared by the wings and the SMTP side (the floor): RFC 5322 dates,
//! header fields (unfolded), message ids and addresses, the keywords COI puts on messages, and
//! unique ids for the messages the proxy writes itself. Pure functions over bytes and text.

use std::sync::atomic::{AtomicU64, Ordering};

/// Keyword on a received message once its read receipt went out (COI, RFC 3503).
pub const MDN_SENT: &str = "$MDNSent";
/// Keyword on the user's sent copy once the provider's MTA reported it delivered.
pub const DELIVERED: &str = "$Delivered";
/// Keyword on the user's sent copy once a recipient's client reported it displayed.
pub const READ: &str = "$Read";

/// `Sun, 22 Nov 2026 05:47:52 +0000`
pub fn rfc5322_date(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        &t.weekday().to_string()[..3],
        t.day(),
        &t.month().to_string()[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The header fields that tell chat messages and reports from other mail (`coi::classify`
/// decides with them; receipts read the report and Message-ID parts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChatHeaders {
    pub chat_version: bool,
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub is_report: bool,
    /// Delta Chat's header-protected encrypted shape: `multipart/encrypted` with the obscured
    /// Subject `[...]` and the recipients hidden as `To: "hidden-recipients": ;`.
    pub protected_chat_shape: bool,
}

impl ChatHeaders {
    /// Parses a header block (folded lines allowed, any case of field names).
    pub fn parse(raw: &[u8]) -> ChatHeaders {
        let mut h = ChatHeaders::default();
        let (mut encrypted, mut obscured_subject, mut hidden_recipients) = (false, false, false);
        for (name, value) in fields(raw) {
            match name.to_ascii_lowercase().as_str() {
                "chat-version" => h.chat_version = true,
                "message-id" => h.message_id = msg_ids(&value).into_iter().next(),
                "in-reply-to" => h.in_reply_to = msg_ids(&value),
                "references" => h.references = msg_ids(&value),
                "content-type" => {
                    let value = value.trim_start().to_ascii_lowercase();
                    h.is_report = value.starts_with("multipart/report");
                    encrypted = value.starts_with("multipart/encrypted");
                }
                "subject" => obscured_subject = value.trim() == "[...]",
                "to" => hidden_recipients = value.trim_start().starts_with("\"hidden-recipients\":"),
                _ => {}
            }
        }
        h.protected_chat_shape = encrypted && obscured_subject && hidden_recipients;
        h
    }
}

/// Unfolded `(name, value)` pairs of a header block.
pub fn fields(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

/// The ids in a msg-id list (`<a@b> <c@d>`), without angle brackets; a bare id is accepted, a
/// broken one (`a@b>`, `<a@b`) is none: an id kept from it would never match the `<id>` a reply
/// writes.
pub fn msg_ids(value: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else { break };
        let id = rest[start + 1..start + len].trim();
        if !id.is_empty() {
            ids.push(id.to_string());
        }
        rest = &rest[start + len + 1..];
    }
    if ids.is_empty() && !value.trim().is_empty() && !value.contains([' ', '<', '>']) {
        ids.push(value.trim().to_string());
    }
    ids
}

/// The address in `Name <a@b>` or `a@b`, lower case.
pub fn address(value: &str) -> Option<String> {
    let inner = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value,
    };
    let addr = inner.trim().to_ascii_lowercase();
    addr.contains('@').then_some(addr)
}

/// The header section and the body of a message (CRLF or bare LF line ends). A message that
/// starts with an empty line has no header section.
pub fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    if let Some(body) = message.strip_prefix(b"\r\n").or_else(|| message.strip_prefix(b"\n")) {
        return (&[], body);
    }
    if let Some(at) = message.windows(4).position(|w| w == b"\r\n\r\n") {
        return (&message[..at + 2], &message[at + 4..]);
    }
    match message.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&message[..at + 1], &message[at + 2..]),
        None => (message, &[]),
    }
}

/// Where the body starts: just after the CRLF that ends the header's last line (the whole
/// message when it has no blank line).
pub fn header_end(message: &[u8]) -> usize {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |at| at + 2)
}

/// Unique enough for ENVIDs and Message-IDs: time, process and a counter.
pub fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_326_472), "Sun, 22 Nov 2026 05:47:52 +0000");
    }

    #[test]
    fn ids_addresses_and_fields() {
        assert_eq!(msg_ids("<a@b> <c@d>"), vec!["a@b", "c@d"]);
        assert_eq!(msg_ids("bare@id"), vec!["bare@id"]);
        // A half-bracketed id (the decrypted_view fuzz target's crash) is no id.
        assert!(msg_ids("3e91d1ee@localhost>").is_empty());
        assert!(msg_ids("<3e91d1ee@localhost").is_empty());
        assert_eq!(address("Bob <Bob@Example.org>").as_deref(), Some("bob@example.org"));
        assert_eq!(address("no address"), None);
        assert_eq!(
            fields(b"Subject: a\r\n b\r\nTo: x\r\n"),
            vec![("Subject".into(), "a b".into()), ("To".into(), "x".into())]
        );
        assert_eq!(header_end(b"A: b\r\n\r\nbody"), 6);
        assert_eq!(split_header(b"A: b\n\nbody"), (&b"A: b\n"[..], &b"body"[..]));
        assert_ne!(unique(), unique());
    }
}
