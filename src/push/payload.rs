//! The push payload for one new message (COI WebPush spec, "Push Notification Payload"), built
//! byte for byte as Dovecot's `webpush-message.c` does: keys in its order, string values cut at
//! 100 bytes of JSON text with a trailing `…`, `content` only if the whole stays within 3993
//! octets (push services need only take 4096 after encryption).
//!
//! Also what the payload is built from: the summary of a message's header, and whether it is a
//! read receipt (MDN), which must never cause a push.

use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders};

/// Largest plaintext: 4096 minus the aes128gcm overhead (86 octets of header, 17 of padding
/// delimiter and tag) with a 65-octet key id.
pub const MAX_PLAINTEXT: usize = 3993;
/// String values longer than this (as JSON text) are cut.
const MAX_VALUE: usize = 100;
/// Bodies longer than this are never sent (Dovecot's limit); fetch one byte more to tell.
pub const MAX_BODY: usize = 4096;

/// What a push says about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
    /// What the message's header says.
    pub header: Parsed,
    /// The raw body (still in its transfer encoding), when it is short UTF-8 text.
    pub body: Option<String>,
}

/// The payload JSON.
pub fn build(summary: &Summary) -> String {
    let (m, body) = (&summary.header, &summary.body);
    let mut out = String::from("{\"folder\":\"");
    escape(&mut out, &summary.folder);
    out.push_str(&format!("\",\"uidvalidity\":{},\"uid\":{}", summary.uidvalidity, summary.uid));
    if let Some(date) = m.date {
        out.push_str(&format!(",\"date\":\"{}\"", rfc3339(date)));
    }
    for (key, value) in
        [("from-email", &m.from_email), ("from-name", &m.from_name), ("subject", &m.subject), ("msg-id", &m.msg_id)]
    {
        if let Some(v) = value {
            push_limited(&mut out, key, v);
        }
    }
    if let Some(group) = &m.group_id {
        // Dropped, not cut: a partial group id would name another group.
        let mut escaped = String::new();
        escape(&mut escaped, group);
        if escaped.len() <= MAX_VALUE {
            out.push_str(&format!(",\"group-id\":\"{escaped}\""));
        }
    }
    let before_body = out.len();
    if let Some(body) = body {
        // Content-Type and -Transfer-Encoding go with the body or not at all.
        if let Some(ct) = m.content_type.as_deref().filter(|ct| !is_default_content_type(ct)) {
            out.push_str(",\"content-type\":\"");
            escape(&mut out, ct);
            out.push('"');
        }
        if let Some(cte) = m.content_encoding.as_deref().filter(|e| !is_default_encoding(e)) {
            out.push_str(",\"content-encoding\":\"");
            escape(&mut out, cte);
            out.push('"');
        }
        out.push_str(",\"content\":\"");
        escape(&mut out, body);
        out.push('"');
        if out.len() + 1 > MAX_PLAINTEXT {
            out.truncate(before_body);
        }
    }
    out.push('}');
    out
}

/// `,"key":"value"` with the value cut to [`MAX_VALUE`] bytes of JSON text, never inside a
/// UTF-8 sequence or an escape, and `…` added where cut.
fn push_limited(out: &mut String, key: &str, value: &str) {
    out.push_str(&format!(",\"{key}\":\""));
    let start = out.len();
    escape(out, value);
    if out.len() - start > MAX_VALUE {
        let mut cut = start + MAX_VALUE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        if let Some(partial) = partial_escape(&out[start..]) {
            out.truncate(start + partial);
        }
        out.push('…');
    }
    out.push('"');
}

/// Where an escape sequence that was cut off at the end of `escaped` starts.
fn partial_escape(escaped: &str) -> Option<usize> {
    let bytes = escaped.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let len = if bytes.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            if i + len > bytes.len() {
                return Some(i);
            }
            i += len;
        } else {
            i += 1;
        }
    }
    None
}

/// JSON string escaping as Dovecot's `json_append_escaped`.
fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// `text/plain` with at most a UTF-8 compatible charset: what a client assumes anyway.
fn is_default_content_type(value: &str) -> bool {
    let mut parts = value.split(';');
    if !parts.next().unwrap_or_default().trim().eq_ignore_ascii_case("text/plain") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"').to_ascii_lowercase();
            matches!(v.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii")
        }
        _ => param.trim().is_empty(),
    })
}

fn is_default_encoding(value: &str) -> bool {
    value.eq_ignore_ascii_case("7bit") || value.eq_ignore_ascii_case("8bit")
}

/// `2019-08-17T11:48:13+00:00` (UTC, as Dovecot writes it).
pub fn rfc3339(unix: i64) -> String {
    let d = mail_parser::DateTime::from_timestamp(unix);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00", d.year, d.month, d.day, d.hour, d.minute, d.second)
}

/// The parts of a message's header a push needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub date: Option<i64>,
    pub from_email: Option<String>,
    pub from_name: Option<String>,
    pub subject: Option<String>,
    pub msg_id: Option<String>,
    pub group_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// A read receipt: never pushed.
    pub mdn: bool,
}

/// Header fields the summary is made from ([`parse_header`] looks at these only).
pub const HEADER_FIELDS: &str =
    "FROM SUBJECT DATE MESSAGE-ID CONTENT-TYPE CONTENT-TRANSFER-ENCODING CHAT-GROUP-ID CHAT-VERSION AUTO-SUBMITTED";

/// Reads a message's header. Encoded words (RFC 2047) are decoded.
///
/// Read receipts are recognised from the header alone:
/// - `Content-Type: multipart/report; report-type=disposition-notification` (RFC 8098): any
///   client's unencrypted MDN, Delta Chat's included;
/// - `Chat-Version` with `Auto-Submitted: auto-replied`: Delta Chat copies both to the outer,
///   unencrypted header of its encrypted messages, and sends `auto-replied` only for MDNs (and
///   for the automatic steps of its SecureJoin handshake, which want no push either).
///
/// Not recognisable: an encrypted MDN from a client that sets no `Auto-Submitted` (the report
/// type is inside the encryption), and Delta Chat's other hidden messages (webxdc status
/// updates, multi-device sync), which look like any encrypted chat message from outside.
pub fn parse_header(header: &[u8]) -> Parsed {
    let Some(msg) = MessageParser::new().parse_headers(header) else { return Parsed::default() };
    let raw = |name: &str| msg.header_raw(name).map(unfold).filter(|v| !v.is_empty());
    let content_type = raw("Content-Type");
    let report = msg.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct.attribute("report-type").is_some_and(|r| r.eq_ignore_ascii_case("disposition-notification"))
    });
    let auto_replied = raw("Auto-Submitted")
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("auto-replied"));
    let from = msg.from().and_then(|a| a.first());
    let msg_id = raw("Message-ID");
    let group_id = raw("Chat-Group-ID").or_else(|| msg_id.as_deref().and_then(coi_group_id));
    let date = match msg.header(HeaderName::Date) {
        Some(HeaderValue::DateTime(d)) if d.is_valid() => Some(d.to_timestamp()),
        _ => None,
    };
    Parsed {
        date,
        from_email: from.and_then(|a| a.address()).map(str::to_string),
        from_name: from.and_then(|a| a.name()).map(str::to_string),
        subject: msg.subject().map(str::to_string),
        msg_id,
        group_id,
        content_type,
        content_encoding: raw("Content-Transfer-Encoding"),
        mdn: report || (auto_replied && raw("Chat-Version").is_some()),
    }
}

/// The group of a COI group message, from its Message-ID `<chat$group.<id>.<unique>@host>`.
fn coi_group_id(msg_id: &str) -> Option<String> {
    let rest = msg_id.trim_start_matches('<').strip_prefix("chat$group.")?;
    let (id, _) = rest.split_once('.')?;
    (!id.is_empty()).then(|| id.to_string())
}

/// A raw header value with folding undone and the ends trimmed.
fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(|l| l.trim_start_matches([' ', '\t']))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// A body fit for `content`: short enough and UTF-8 text without NUL.
pub fn body_text(body: &[u8]) -> Option<String> {
    if body.len() > MAX_BODY || body.contains(&0) {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT10: &str = "1234567890";
    const PREFIX: &str = r#"{"folder":"INBOX","uidvalidity":1,"uid":2,"#;

    fn t(n: usize) -> String {
        TEXT10.repeat(n / 10)
    }

    fn common() -> Summary {
        Summary { folder: "INBOX".into(), uidvalidity: 1, uid: 2, ..Default::default() }
    }

    fn subject(s: &str) -> String {
        build(&Summary { header: Parsed { subject: Some(s.into()), ..Default::default() }, ..common() })
    }

    /// The cases of Dovecot's `test-webpush-message.c`, with its expected strings.
    #[test]
    fn all_fields_with_escaping() {
        let m = Summary {
            folder: "box\"name".into(),
            uidvalidity: 1234567890,
            uid: 1122334455,
            body: Some("body\"text".into()),
            header: Parsed {
                date: Some(1566042493),
                from_email: Some("test \"local@example.com".into()),
                from_name: Some("test user\"name".into()),
                subject: Some("some \"subject\"".into()),
                msg_id: Some("<\"msgid\"@example.com>".into()),
                group_id: Some("group\"id".into()),
                content_type: Some("text/html; charset=\"iso-8859-1\"".into()),
                content_encoding: Some("broken\"value".into()),
                ..Default::default()
            },
        };
        assert_eq!(
            build(&m),
            r#"{"folder":"box\"name","uidvalidity":1234567890,"uid":1122334455,"date":"2019-08-17T11:48:13+00:00","from-email":"test \"local@example.com","from-name":"test user\"name","subject":"some \"subject\"","msg-id":"<\"msgid\"@example.com>","group-id":"group\"id","content-type":"text/html; charset=\"iso-8859-1\"","content-encoding":"broken\"value","content":"body\"text"}"#
        );
    }

    #[test]
    fn utf8_from_and_subject() {
        let m = Summary {
            header: Parsed {
                from_email: Some("päivi@example.com".into()),
                from_name: Some("Päivi Smith".into()),
                ..Default::default()
            },
            ..common()
        };
        assert_eq!(build(&m), format!(r#"{PREFIX}"from-email":"päivi@example.com","from-name":"Päivi Smith"}}"#));
        assert_eq!(subject("Päivi Smith"), format!(r#"{PREFIX}"subject":"Päivi Smith"}}"#));
    }

    #[test]
    fn utf8_subject_cut_on_a_character_boundary() {
        let base = t(50) + &t(40);
        for (tail, expected) in [
            ("123456 Päivi", "123456 Pä…"),
            ("1234567 Päivi", "1234567 P…"),
            ("12345678 Päivi", "12345678 P…"),
            ("123456789 Päivi", "123456789 …"),
        ] {
            assert_eq!(
                subject(&format!("{base}{tail}")),
                format!(r#"{PREFIX}"subject":"{base}{expected}"}}"#),
                "{tail}"
            );
        }
    }

    #[test]
    fn escapes_are_never_cut() {
        let base = t(90);
        assert_eq!(subject(&format!("{base}1234567 \"")), format!(r#"{PREFIX}"subject":"{base}1234567 \""}}"#));
        assert_eq!(subject(&format!("{base}12345678 \"")), format!(r#"{PREFIX}"subject":"{base}12345678 …"}}"#));
        let quotes = "\"".repeat(50);
        assert_eq!(subject(&format!("{quotes}x")), format!(r#"{PREFIX}"subject":"{}…"}}"#, "\\\"".repeat(50)));
        // A cut `\u00XX` goes whole, too.
        let ctl = format!("{}\u{1}", t(90) + "123456");
        assert_eq!(subject(&ctl), format!(r#"{PREFIX}"subject":"{}123456…"}}"#, t(90)));
    }

    #[test]
    fn large_from_subject_msgid() {
        let m = Summary {
            header: Parsed {
                from_email: Some(format!("{}@1234567.example.com", t(80))),
                from_name: Some(t(100)),
                ..Default::default()
            },
            ..common()
        };
        assert_eq!(
            build(&m),
            format!(r#"{PREFIX}"from-email":"{}@1234567.example.com","from-name":"{}"}}"#, t(80), t(100))
        );
        let m = Summary {
            header: Parsed {
                from_email: Some(format!("{}@12345678.example.com", t(80))),
                from_name: Some(t(100) + "x"),
                ..Default::default()
            },
            ..common()
        };
        assert_eq!(
            build(&m),
            format!(r#"{PREFIX}"from-email":"{}@12345678.example.co…","from-name":"{}…"}}"#, t(80), t(100))
        );
        assert_eq!(subject(&t(100)), format!(r#"{PREFIX}"subject":"{}"}}"#, t(100)));
        assert_eq!(subject(&(t(100) + "x")), format!(r#"{PREFIX}"subject":"{}…"}}"#, t(100)));
        let m = Summary { header: Parsed { msg_id: Some(t(100) + "x"), ..Default::default() }, ..common() };
        assert_eq!(build(&m), format!(r#"{PREFIX}"msg-id":"{}…"}}"#, t(100)));
    }

    #[test]
    fn large_group_is_dropped() {
        let m = Summary { header: Parsed { group_id: Some(t(100)), ..Default::default() }, ..common() };
        assert_eq!(build(&m), format!(r#"{PREFIX}"group-id":"{}"}}"#, t(100)));
        let m = Summary {
            body: Some("x".into()),
            header: Parsed { group_id: Some(t(100) + "1"), ..Default::default() },
            ..common()
        };
        assert_eq!(build(&m), format!(r#"{PREFIX}"content":"x"}}"#));
    }

    #[test]
    fn body_only_when_the_whole_fits() {
        let body = t(3000) + &t(500) + &t(400) + &t(20) + "12";
        let m = Summary {
            body: Some(body.clone()),
            header: Parsed { subject: Some("foo".into()), ..Default::default() },
            ..common()
        };
        let out = build(&m);
        assert_eq!(out, format!(r#"{PREFIX}"subject":"foo","content":"{body}"}}"#));
        assert_eq!(out.len(), MAX_PLAINTEXT);
        let m = Summary {
            body: Some(body + "3"),
            header: Parsed { subject: Some("foo".into()), ..Default::default() },
            ..common()
        };
        assert_eq!(build(&m), format!(r#"{PREFIX}"subject":"foo"}}"#));
        // Long Content-Type and -Encoding are not cut, but count towards the limit.
        let body = t(500) + &t(300) + &t(50) + &t(30) + "1234";
        let m = Summary {
            body: Some(body.clone()),
            header: Parsed {
                subject: Some("x".into()),
                content_type: Some(t(2000)),
                content_encoding: Some(t(1000)),
                ..Default::default()
            },
            ..common()
        };
        assert_eq!(
            build(&m),
            format!(
                r#"{PREFIX}"subject":"x","content-type":"{}","content-encoding":"{}","content":"{body}"}}"#,
                t(2000),
                t(1000)
            )
        );
        let m = Summary { body: Some(body + "5"), ..m };
        assert_eq!(build(&m), format!(r#"{PREFIX}"subject":"x"}}"#));
    }

    #[test]
    fn default_content_type_and_encoding_are_left_out() {
        let with = |ct: Option<&str>, cte: Option<&str>| {
            build(&Summary {
                body: Some("y".into()),
                header: Parsed {
                    subject: Some("x".into()),
                    content_type: ct.map(str::to_string),
                    content_encoding: cte.map(str::to_string),
                    ..Default::default()
                },
                ..common()
            })
        };
        let plain = format!(r#"{PREFIX}"subject":"x","content":"y"}}"#);
        for ct in [
            "teXt/Plain",
            "teXt/Plain; Charset=Utf-8",
            "TEXT/PLAIN; Charset=Utf8",
            "text/plain; Charset=ascii",
            "teXt/Plain; Charset=us-ascii",
            "text/plain; charset=\"utf-8\"",
        ] {
            assert_eq!(with(Some(ct), None), plain, "{ct}");
        }
        for ct in [
            "text/plain; charset=ascii-foo",
            "text/plain; charset=us-ascii; format=flowed",
            "text/plain; format=flowed; charset=us-ascii",
        ] {
            assert_eq!(
                with(Some(ct), None),
                format!(r#"{PREFIX}"subject":"x","content-type":"{ct}","content":"y"}}"#),
                "{ct}"
            );
        }
        assert_eq!(with(None, Some("7bit")), plain);
        assert_eq!(with(None, Some("8bit")), plain);
        assert_eq!(
            with(None, Some("quoted-printable")),
            format!(r#"{PREFIX}"subject":"x","content-encoding":"quoted-printable","content":"y"}}"#)
        );
    }

    #[test]
    fn headers_are_read_and_decoded() {
        let header = b"From: =?utf-8?q?P=C3=A4ivi_Smith?= <paivi@example.com>\r\nSubject: =?utf-8?b?SGVsbMO2?=\r\n\
Date: Sat, 17 Aug 2019 13:48:13 +0200\r\nMessage-ID: <chat$group.G1d.abc@example.com>\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\n";
        let p = parse_header(header);
        assert_eq!(p.from_email.as_deref(), Some("paivi@example.com"));
        assert_eq!(p.from_name.as_deref(), Some("Päivi Smith"));
        assert_eq!(p.subject.as_deref(), Some("Hellö"));
        assert_eq!(p.date.map(rfc3339).as_deref(), Some("2019-08-17T11:48:13+00:00"));
        assert_eq!(p.msg_id.as_deref(), Some("<chat$group.G1d.abc@example.com>"));
        assert_eq!(p.group_id.as_deref(), Some("G1d"));
        assert_eq!(p.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert!(!p.mdn);
        let dc = parse_header(b"From: a@b\r\nChat-Version: 1.0\r\nChat-Group-ID: abcdefghijk\r\n\r\n");
        assert_eq!(dc.group_id.as_deref(), Some("abcdefghijk"));
    }

    #[test]
    fn read_receipts() {
        let mdn = b"From: a@b\r\nContent-Type: multipart/report; report-type=\"disposition-notification\";\r\n boundary=\"x\"\r\n\r\n";
        assert!(parse_header(mdn).mdn);
        let dc = b"From: a@b\r\nChat-Version: 1.0\r\nAuto-Submitted: auto-replied\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"y\"\r\n\r\n";
        assert!(parse_header(dc).mdn);
        let vacation = b"From: a@b\r\nAuto-Submitted: auto-replied\r\nSubject: Away\r\n\r\n";
        assert!(!parse_header(vacation).mdn, "a vacation reply is mail");
        let dsn =
            b"From: MAILER-DAEMON@b\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=z\r\n\r\n";
        assert!(!parse_header(dsn).mdn);
    }

    #[test]
    fn bodies() {
        assert_eq!(body_text(b"hello").as_deref(), Some("hello"));
        assert_eq!(body_text(b"a\0b"), None);
        assert_eq!(body_text(b"\xff"), None);
        assert_eq!(body_text(&vec![b'a'; MAX_BODY + 1]), None);
    }
}
