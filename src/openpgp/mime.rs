//! The byte-level RFC 5322 operations the gateway needs: split a message into its header section
//! and body, list header fields exactly as written (so a field is copied or dropped, never
//! re-encoded), unfold values, normalize line ends, fold what we write. Typed values (addresses,
//! dates, content types) come from mail-parser, the crate's MIME parser.
//!
//! What the floor's `mail` module already has (splitting a message, dates, addresses, message
//! ids) is used from there; the rest is free of OpenPGP and can move down to `mail` unchanged
//! when another module needs it.

use mail_parser::{HeaderValue, MessageParser};

/// The header section (with its last line end) and the body: the floor's splitter.
pub use crate::mail::split_header as split;

/// One header field as written: its name and the whole field (name, colon, value, folded
/// continuation lines and the final line end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: String,
    pub raw: &'a [u8],
}

impl Field<'_> {
    /// Case-insensitive name comparison.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The unfolded, trimmed value (lossy UTF-8; raw 8-bit values are kept readable).
    pub fn value(&self) -> String {
        let colon = memchr::memchr(b':', self.raw).map_or(self.raw.len(), |i| i + 1);
        unfold(&self.raw[colon..])
    }

    /// The field with a guaranteed CRLF line end, for writing into another header section.
    pub fn crlf(&self) -> Vec<u8> {
        let mut out = normalize_crlf(self.raw);
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// The fields of a header section in order. A line that neither continues a field nor has a
/// colon becomes a field with an empty name, so nothing is lost and nothing matches it.
pub fn fields(header: &[u8]) -> Vec<Field<'_>> {
    fn push<'a>(out: &mut Vec<Field<'a>>, raw: &'a [u8]) {
        let name = match memchr::memchr(b':', raw) {
            Some(i) if !raw[..i].contains(&b'\n') && !raw.starts_with(b" ") && !raw.starts_with(b"\t") => {
                String::from_utf8_lossy(&raw[..i]).trim().to_string()
            }
            _ => String::new(),
        };
        out.push(Field { name, raw });
    }
    let mut out: Vec<Field<'_>> = Vec::new();
    let mut start: Option<usize> = None;
    let mut at = 0;
    while at < header.len() {
        let end = memchr::memchr(b'\n', &header[at..]).map_or(header.len(), |i| at + i + 1);
        let continuation = matches!(header[at], b' ' | b'\t');
        if !continuation {
            if let Some(s) = start {
                push(&mut out, &header[s..at]);
            }
            start = Some(at);
        } else if start.is_none() {
            start = Some(at);
        }
        at = end;
    }
    if let Some(s) = start {
        push(&mut out, &header[s..]);
    }
    out
}

/// The unfolded value of the first field called `name`.
pub fn first_value(header: &[u8], name: &str) -> Option<String> {
    fields(header).into_iter().find(|f| f.is(name)).map(|f| f.value())
}

/// Every value of the fields called `name`, in order.
pub fn all_values(header: &[u8], name: &str) -> Vec<String> {
    fields(header).into_iter().filter(|f| f.is(name)).map(|f| f.value()).collect()
}

/// Removes line breaks of a folded value (the whitespace after them stays, as RFC 5322 says).
pub fn unfold(value: &[u8]) -> String {
    let kept: Vec<u8> = value.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    String::from_utf8_lossy(&kept).trim().to_string()
}

/// Every line end as CRLF (bare LF and bare CR included), the form IMAP literals and SMTP need.
pub fn normalize_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Writes `Name: value` folded at spaces so lines stay within 78 characters where the value
/// allows it (a long unbroken word stays whole), ending in CRLF.
pub fn fold(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 16);
    out.push_str(name);
    out.push(':');
    let mut line_len = out.len();
    for (i, word) in value.split(' ').filter(|w| !w.is_empty()).enumerate() {
        if i > 0 && line_len + 1 + word.len() > 78 {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push_str("\r\n");
    out
}

/// A mailbox of an address header: display name (decoded) and address as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub addr: String,
}

/// The mailboxes of an address field value (groups flattened; an empty group gives none).
pub fn mailboxes(value: &str) -> Vec<Mailbox> {
    let block = format!("To: {value}\r\n\r\n");
    let Some(parsed) = MessageParser::new().parse_headers(block.as_bytes()) else {
        return Vec::new();
    };
    let Some(address) = parsed.to() else {
        return Vec::new();
    };
    address
        .iter()
        .filter_map(|a| {
            let addr = a.address()?.trim();
            addr.contains('@').then(|| Mailbox {
                name: a.name().map(str::to_string).filter(|n| !n.is_empty()),
                addr: addr.to_string(),
            })
        })
        .collect()
}

/// An unstructured header value: as is when it is printable ASCII, else one RFC 2047
/// B-encoded word per 45 bytes (so no encoded word exceeds 75 characters).
pub fn encode_text(text: &str) -> String {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) && !text.contains("=?") {
        return text.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?utf-8?B?{}?=", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, w)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A mailbox for an address field: `<addr>` without a name, `"Name" <addr>` for plain ASCII
/// names, an encoded word otherwise.
pub fn format_mailbox(name: &str, addr: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        return format!("<{addr}>");
    }
    if name.bytes().all(|b| (0x20..0x7f).contains(&b)) && !name.contains("=?") {
        return format!("\"{}\" <{addr}>", name.replace('\\', "\\\\").replace('"', "\\\""));
    }
    format!("{} <{addr}>", encode_text(name))
}

/// The canonical form Autocrypt compares addresses in: trimmed and lower-cased.
pub fn canonical_addr(addr: &str) -> String {
    addr.trim().to_lowercase()
}

/// Seconds since the epoch of an RFC 5322 date, if it parses and is plausible.
pub fn parse_date(value: &str) -> Option<i64> {
    let block = format!("Date: {value}\r\n\r\n");
    let parsed = MessageParser::new().parse_headers(block.as_bytes())?;
    let date = parsed.date()?;
    date.is_valid().then(|| date.to_timestamp())
}

/// An RFC 5322 date in UTC: the floor's.
pub use crate::mail::rfc5322_date as format_date;

/// A content type: lower-cased `type/subtype` and its parameters (names lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    pub mime: String,
    pub params: Vec<(String, String)>,
}

impl ContentType {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Parses a Content-Type value; a missing subtype gives `type/` so it never matches by accident.
pub fn content_type(value: &str) -> Option<ContentType> {
    let block = format!("Content-Type: {value}\r\n\r\n");
    let parsed = MessageParser::new().parse_headers(block.as_bytes())?;
    let header = parsed.root_part().headers.iter().find(|h| h.name().eq_ignore_ascii_case("content-type"))?;
    let HeaderValue::ContentType(ct) = header.value() else {
        return None;
    };
    let mime = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase();
    let params =
        ct.attributes().unwrap_or(&[]).iter().map(|a| (a.name.to_ascii_lowercase(), a.value.to_string())).collect();
    Some(ContentType { mime, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_finds_the_empty_line_with_either_line_end() {
        assert_eq!(split(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"), (&b"A: 1\r\nB: 2\r\n"[..], &b"body\r\n"[..]));
        assert_eq!(split(b"A: 1\n\nbody"), (&b"A: 1\n"[..], &b"body"[..]));
        assert_eq!(split(b"A: 1\r\n"), (&b"A: 1\r\n"[..], &b""[..]));
        assert_eq!(split(b"\r\nbody"), (&b""[..], &b"body"[..]), "no header at all");
    }

    #[test]
    fn fields_keep_folding_and_junk() {
        let h = b"Subject: a\r\n b\r\nX-Y:z\r\njunk line\r\nTo: c\r\n";
        let f = fields(h);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].name, "Subject");
        assert_eq!(f[0].raw, b"Subject: a\r\n b\r\n");
        assert_eq!(f[0].value(), "a b");
        assert_eq!(f[1].value(), "z");
        assert_eq!(f[2].name, "");
        assert!(f[3].is("to"));
        assert_eq!(f.iter().map(|f| f.raw.len()).sum::<usize>(), h.len());
        // A leading continuation line is kept as a field of its own.
        let g = fields(b" stray\r\nA: 1\r\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "");
    }

    #[test]
    fn mailboxes_and_encoded_words_round_trip() {
        for name in ["", "Bob", "Bob \"the\" Builder", "Jürgen Groß", &"ü".repeat(40)] {
            let written = format_mailbox(name, "bob@example.org");
            let back = mailboxes(&written);
            assert_eq!(back.len(), 1, "{written}");
            assert_eq!(back[0].addr, "bob@example.org");
            assert_eq!(back[0].name.as_deref().unwrap_or(""), name, "{written}");
            assert!(written.split(' ').all(|w| w.len() <= 75), "{written}");
        }
        assert_eq!(encode_text("Message from Bob"), "Message from Bob");
        let subject = format!("Subject: {}\r\n\r\n", encode_text("Nachricht von Jürgen"));
        assert_eq!(
            MessageParser::new().parse_headers(subject.as_bytes()).unwrap().subject(),
            Some("Nachricht von Jürgen")
        );
    }

    #[test]
    fn crlf_normalization() {
        assert_eq!(normalize_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(normalize_crlf(b"\r\r\n\n"), b"\r\n\r\n\r\n");
    }

    #[test]
    fn folding_keeps_lines_short_and_unfolds_back() {
        let value = format!("addr=a@b.org; keydata={}", ["x".repeat(60), "y".repeat(70)].join(" "));
        let folded = fold("Autocrypt", &value);
        assert!(folded.lines().all(|l| l.len() <= 78), "{folded}");
        let f = fields(folded.as_bytes());
        assert_eq!(f[0].value(), value);
    }

    #[test]
    fn addresses_dates_and_content_types() {
        let m = mailboxes("\"Bob B.\" <Bob@Example.org>, carol@example.org, \"hidden-recipients\": ;");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name.as_deref(), Some("Bob B."));
        assert_eq!(m[0].addr, "Bob@Example.org");
        assert_eq!(canonical_addr(&m[0].addr), "bob@example.org");
        assert!(mailboxes("\"hidden-recipients\": ;").is_empty());
        assert_eq!(parse_date("Sun, 22 Nov 2026 05:47:52 +0000"), Some(1_795_326_472));
        assert_eq!(parse_date("not a date"), None);
        assert_eq!(parse_date(&format_date(1_795_326_472)), Some(1_795_326_472));
        let ct =
            content_type("multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=\"b1\"").unwrap();
        assert_eq!(ct.mime, "multipart/encrypted");
        assert_eq!(ct.param("Protocol"), Some("application/pgp-encrypted"));
        assert_eq!(ct.param("boundary"), Some("b1"));
    }
}
