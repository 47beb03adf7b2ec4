//! FETCH values computed from a message's bytes: what a server answers about a message it
//! serves itself (the decrypted view of issue 15) instead of relaying the provider's answer.
//! Every value is derived from the same bytes and the same part tree, so `BODY[]`, every
//! section, `RFC822.SIZE`, `BODYSTRUCTURE` and `ENVELOPE` agree with each other, as IMAP
//! clients' caches require. The MIME structure comes from mail-parser (a mature parser); the
//! IMAP syntax around it is ours. Pure functions over bytes, no I/O.

use std::ops::Range;

use base64::Engine;
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};

use super::fetch::{Item, Section, Spec};

/// Nesting deeper than this is served as an opaque part (a peer's message must not recurse us
/// to death).
const MAX_DEPTH: usize = 16;

/// One MIME entity, with byte ranges into the top-level message.
#[derive(Debug, Clone)]
struct Entity {
    header: Range<usize>,
    body: Range<usize>,
    mime: Mime,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Leaf,
    Multipart(Vec<Entity>),
    /// `message/rfc822`: the encapsulated message's root entity.
    Message(Box<Entity>),
}

/// The MIME header fields BODYSTRUCTURE reports.
#[derive(Debug, Clone, Default)]
struct Mime {
    ctype: String,
    subtype: String,
    params: Vec<(String, String)>,
    id: Option<String>,
    description: Option<String>,
    encoding: Option<String>,
    md5: Option<String>,
    disposition: Option<(String, Vec<(String, String)>)>,
    language: Vec<String>,
    location: Option<String>,
}

/// A message, parsed once, answering FETCH items.
#[derive(Debug, Clone)]
pub struct MessageView {
    raw: Vec<u8>,
    root: Entity,
}

impl MessageView {
    /// Parses `raw`. Never fails: what mail-parser cannot read is one opaque text part.
    pub fn new(raw: Vec<u8>) -> MessageView {
        let root = parse_message(&raw, 0..raw.len(), None, 0);
        MessageView { raw, root }
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// `RFC822.SIZE`.
    pub fn size(&self) -> usize {
        self.raw.len()
    }

    /// The bytes of a section (before any partial), `None` when the message has no such part.
    pub fn section(&self, section: &Section) -> Option<Vec<u8>> {
        let target = if section.path.is_empty() { &self.root } else { self.part(&section.path)? };
        let raw = &self.raw;
        let message = |t: &Entity| -> Option<Entity> {
            if section.path.is_empty() {
                return Some(t.clone());
            }
            match &t.kind {
                Kind::Message(inner) => Some((**inner).clone()),
                _ => None,
            }
        };
        Some(match &section.spec {
            Spec::Whole if section.path.is_empty() => raw.clone(),
            Spec::Whole => raw[target.body.clone()].to_vec(),
            Spec::Mime => {
                if section.path.is_empty() {
                    return None;
                }
                raw[target.header.clone()].to_vec()
            }
            Spec::Header => raw[message(target)?.header].to_vec(),
            Spec::Text => raw[message(target)?.body].to_vec(),
            Spec::HeaderFields { not, names } => header_fields(&raw[message(target)?.header], names, *not),
        })
    }

    /// The entity a non-empty part path names.
    fn part(&self, path: &[u32]) -> Option<&Entity> {
        let mut current = &self.root;
        let mut in_message = true;
        for &n in path {
            let n = usize::try_from(n).ok()?.checked_sub(1)?;
            let mut at_message_root = in_message;
            if !in_message && let Kind::Message(inner) = &current.kind {
                current = inner;
                at_message_root = true;
            }
            current = match &current.kind {
                Kind::Multipart(children) => children.get(n)?,
                // The single body of a message is its part 1.
                _ if n == 0 && at_message_root => current,
                _ => return None,
            };
            in_message = false;
        }
        Some(current)
    }

    /// `BODYSTRUCTURE` (`extended`) or `BODY`.
    pub fn body_structure(&self, extended: bool) -> String {
        structure(&self.raw, &self.root, extended)
    }

    /// `ENVELOPE`.
    pub fn envelope(&self) -> String {
        envelope(&self.raw[self.root.header.clone()])
    }

    /// The response bytes of one FETCH item (name and value), or `None` for an item this
    /// module does not answer (FLAGS, UID, INTERNALDATE, MODSEQ: the provider's).
    pub fn item(&self, item: &Item) -> Option<Vec<u8>> {
        let (name, value): (String, Vec<u8>) = match item {
            Item::Rfc822Size => return Some(format!("RFC822.SIZE {}", self.size()).into_bytes()),
            Item::Envelope => return Some(format!("ENVELOPE {}", self.envelope()).into_bytes()),
            Item::BodyStructure => {
                return Some(format!("BODYSTRUCTURE {}", self.body_structure(true)).into_bytes());
            }
            Item::Body => return Some(format!("BODY {}", self.body_structure(false)).into_bytes()),
            Item::Rfc822 => ("RFC822".into(), self.raw.clone()),
            Item::Rfc822Header => ("RFC822.HEADER".into(), self.section(&Section::header()).unwrap_or_default()),
            Item::Rfc822Text => ("RFC822.TEXT".into(), self.section(&Section::text()).unwrap_or_default()),
            Item::Section { section, partial, .. } => {
                let bytes = self.section(section).unwrap_or_default();
                let (name, bytes) = match partial {
                    Some((origin, count)) => {
                        let start = (*origin as usize).min(bytes.len());
                        let end = start.saturating_add(*count as usize).min(bytes.len());
                        (format!("BODY[{}]<{origin}>", section.name()), bytes[start..end].to_vec())
                    }
                    None => (format!("BODY[{}]", section.name()), bytes),
                };
                (name, bytes)
            }
            Item::Other(_) => return None,
        };
        let mut out = format!("{name} {{{}}}\r\n", value.len()).into_bytes();
        out.extend_from_slice(&value);
        Some(out)
    }
}

/// Parses the message in `raw[range]` into its entity tree (offsets into `raw`).
fn parse_message(raw: &[u8], range: Range<usize>, default: Option<Mime>, depth: usize) -> Entity {
    let bytes = &raw[range.clone()];
    let base = range.start;
    let parsed = (depth < MAX_DEPTH).then(|| MessageParser::new().parse(bytes)).flatten();
    let Some(message) = parsed else {
        let split = crate::mail::header_end(bytes).min(bytes.len());
        return Entity {
            header: base..base + split,
            body: base + split..range.end,
            mime: default.unwrap_or_else(Mime::text_plain),
            kind: Kind::Leaf,
        };
    };
    entity(raw, base, &message, 0, default, depth)
}

/// The entity of `message.parts[id]`.
fn entity(
    raw: &[u8],
    base: usize,
    message: &mail_parser::Message<'_>,
    id: usize,
    default: Option<Mime>,
    depth: usize,
) -> Entity {
    let part = &message.parts[id];
    let len = raw.len();
    let at = |offset: u32| (base + offset as usize).min(len);
    let (header_start, body_start, mut body_end) = (at(part.offset_header), at(part.offset_body), at(part.offset_end));
    let mut header_start = header_start;
    if id == 0 {
        // The root is the whole message: from its first byte (mail-parser may skip leading
        // garbage) to its end (it may stop at the last boundary).
        header_start = base;
        body_end = body_end.max(base + message.raw_message.len()).min(len);
    }
    let body_end = body_end.max(body_start);
    let mime = Mime::of(part, default);
    let kind = match &part.body {
        PartType::Multipart(children) if depth < MAX_DEPTH => {
            let child_default = (mime.subtype == "digest").then(Mime::message_rfc822);
            Kind::Multipart(
                children
                    .iter()
                    .map(|&c| entity(raw, base, message, c as usize, child_default.clone(), depth + 1))
                    .collect(),
            )
        }
        PartType::Message(_)
            if mime.is_message() && mime.encoding.as_deref().is_none_or(|e| !is_encoded(e)) && depth < MAX_DEPTH =>
        {
            Kind::Message(Box::new(parse_message(raw, body_start..body_end, None, depth + 1)))
        }
        _ => Kind::Leaf,
    };
    Entity { header: header_start..body_start, body: body_start..body_end, mime, kind }
}

fn is_encoded(encoding: &str) -> bool {
    encoding.eq_ignore_ascii_case("base64") || encoding.eq_ignore_ascii_case("quoted-printable")
}

impl Mime {
    fn text_plain() -> Mime {
        Mime {
            ctype: "text".into(),
            subtype: "plain".into(),
            params: vec![("charset".into(), "us-ascii".into())],
            ..Mime::default()
        }
    }

    fn message_rfc822() -> Mime {
        Mime { ctype: "message".into(), subtype: "rfc822".into(), ..Mime::default() }
    }

    fn is_message(&self) -> bool {
        self.ctype.eq_ignore_ascii_case("message") && self.subtype.eq_ignore_ascii_case("rfc822")
    }

    fn is_text(&self) -> bool {
        self.ctype.eq_ignore_ascii_case("text")
    }

    fn of(part: &mail_parser::MessagePart<'_>, default: Option<Mime>) -> Mime {
        let params = |attrs: &Option<Vec<mail_parser::Attribute<'_>>>| -> Vec<(String, String)> {
            attrs.iter().flatten().map(|a| (a.name.to_string(), a.value.to_string())).collect()
        };
        let mut mime = match part.content_type() {
            Some(ct) => Mime {
                ctype: ct.c_type.to_string(),
                subtype: ct.c_subtype.as_deref().unwrap_or("").to_string(),
                params: params(&ct.attributes),
                ..Mime::default()
            },
            None => default.unwrap_or_else(Mime::text_plain),
        };
        if mime.subtype.is_empty() {
            mime = Mime::text_plain();
        }
        mime.id = part.content_id().map(|s| format!("<{s}>"));
        mime.description = part.content_description().map(str::to_string);
        mime.encoding = part.content_transfer_encoding().map(str::to_string);
        mime.md5 = part.headers.iter().find(|h| h.name.as_str().eq_ignore_ascii_case("Content-MD5")).and_then(|h| {
            match &h.value {
                HeaderValue::Text(t) => Some(t.to_string()),
                _ => None,
            }
        });
        mime.disposition = part.content_disposition().map(|d| (d.c_type.to_string(), params(&d.attributes)));
        mime.language = match part.content_language() {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(list) => list.iter().map(|t| t.to_string()).collect(),
            _ => Vec::new(),
        };
        mime.location = part.content_location().map(str::to_string);
        mime
    }
}

/// An IMAP string (quoted, or a literal for 8-bit or long text) or NIL.
fn string(value: Option<&str>) -> String {
    match value {
        None => "NIL".into(),
        Some(v) => quoted(v),
    }
}

fn quoted(value: &str) -> String {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let mut out = String::with_capacity(value.len() + 2);
        out.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    } else {
        format!("{{{}}}\r\n{value}", value.len())
    }
}

fn param_list(params: &[(String, String)]) -> String {
    if params.is_empty() {
        return "NIL".into();
    }
    let items: Vec<String> = params.iter().map(|(k, v)| format!("{} {}", quoted(k), quoted(v))).collect();
    format!("({})", items.join(" "))
}

fn extension(mime: &Mime) -> String {
    let disposition = match &mime.disposition {
        Some((kind, params)) => format!("({} {})", quoted(kind), param_list(params)),
        None => "NIL".into(),
    };
    let language = match mime.language.as_slice() {
        [] => "NIL".to_string(),
        [one] => quoted(one),
        many => format!("({})", many.iter().map(|l| quoted(l)).collect::<Vec<_>>().join(" ")),
    };
    format!("{disposition} {language} {}", string(mime.location.as_deref()))
}

fn structure(raw: &[u8], e: &Entity, extended: bool) -> String {
    let m = &e.mime;
    match &e.kind {
        Kind::Multipart(children) if !children.is_empty() => {
            let mut out = String::from("(");
            for child in children {
                out.push_str(&structure(raw, child, extended));
            }
            out.push(' ');
            out.push_str(&quoted(&m.subtype));
            if extended {
                out.push_str(&format!(" {} {}", param_list(&m.params), extension(m)));
            }
            out.push(')');
            out
        }
        kind => {
            let body = &raw[e.body.clone()];
            let mut out = format!(
                "({} {} {} {} {} {} {}",
                quoted(&m.ctype),
                quoted(&m.subtype),
                param_list(&m.params),
                string(m.id.as_deref()),
                string(m.description.as_deref()),
                quoted(m.encoding.as_deref().unwrap_or("7bit")),
                body.len()
            );
            let lines = || memchr::memchr_iter(b'\n', body).count();
            if let Kind::Message(inner) = kind {
                out.push_str(&format!(
                    " {} {} {}",
                    envelope(&raw[inner.header.clone()]),
                    structure(raw, inner, extended),
                    lines()
                ));
            } else if m.is_text() {
                out.push_str(&format!(" {}", lines()));
            }
            if extended {
                out.push_str(&format!(" {} {}", string(m.md5.as_deref()), extension(m)));
            }
            out.push(')');
            out
        }
    }
}

/// The `ENVELOPE` of a message header block.
fn envelope(header: &[u8]) -> String {
    let fields = crate::mail::fields(header);
    let first = |name: &str| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let parsed = MessageParser::new().parse_headers(header);
    let addresses = |name: &str| -> Option<String> {
        let message = parsed.as_ref()?;
        let header = message.parts.first()?.headers.iter().find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
        match &header.value {
            HeaderValue::Address(address) => address_list(address),
            _ => None,
        }
    };
    let list = |v: Option<String>| v.unwrap_or_else(|| "NIL".into());
    let from = addresses("From");
    let sender = addresses("Sender").or_else(|| from.clone());
    let reply_to = addresses("Reply-To").or_else(|| from.clone());
    format!(
        "({} {} {} {} {} {} {} {} {} {})",
        string(first("Date")),
        string(first("Subject")),
        list(from),
        list(sender),
        list(reply_to),
        list(addresses("To")),
        list(addresses("Cc")),
        list(addresses("Bcc")),
        string(first("In-Reply-To")),
        string(first("Message-ID")),
    )
}

fn address_list(address: &Address<'_>) -> Option<String> {
    let one = |addr: &mail_parser::Addr<'_>| -> String {
        let (mailbox, host) = match addr.address.as_deref() {
            Some(a) => match a.rsplit_once('@') {
                Some((m, h)) => (Some(m.to_string()), Some(h.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        format!(
            "({} NIL {} {})",
            string(addr.name.as_deref().map(encode_word).as_deref()),
            string(mailbox.as_deref()),
            string(host.as_deref())
        )
    };
    let mut out = String::new();
    match address {
        Address::List(list) => list.iter().for_each(|a| out.push_str(&one(a))),
        Address::Group(groups) => {
            for group in groups {
                match &group.name {
                    Some(name) => {
                        out.push_str(&format!("(NIL NIL {} NIL)", quoted(&encode_word(name))));
                        group.addresses.iter().for_each(|a| out.push_str(&one(a)));
                        out.push_str("(NIL NIL NIL NIL)");
                    }
                    None => group.addresses.iter().for_each(|a| out.push_str(&one(a))),
                }
            }
        }
    }
    (!out.is_empty()).then(|| format!("({out})"))
}

/// A display name as IMAP can carry it: ASCII as is, else one RFC 2047 encoded word.
fn encode_word(name: &str) -> String {
    if name.is_ascii() {
        name.to_string()
    } else {
        format!("=?utf-8?b?{}?=", base64::engine::general_purpose::STANDARD.encode(name))
    }
}

/// The fields of a header block named (or, with `not`, not named) in `names`, as they are,
/// followed by the empty line.
fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name.trim_ascii());
            keep = names.iter().any(|n| n.eq_ignore_ascii_case(&name)) != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::wire::fetch::parse_items;

    const SIMPLE: &[u8] =
        b"From: Alice <alice@example.org>\r\nTo: bob@example.org, \"Carol C\" <carol@example.org>\r\n\
Subject: Hello\r\nDate: Sat, 5 Dec 2026 19:35:50 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nline one\r\nline two\r\n";

    const MULTI: &[u8] = b"From: alice@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
hello\r\n--b1\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"m.eml\"\r\n\r\n\
From: x@example.org\r\nSubject: inner\r\n\r\ninner body\r\n\r\n--b1--\r\nepilogue\r\n";

    fn one(view: &MessageView, item: &str) -> String {
        let items = parse_items(item.as_bytes()).unwrap();
        String::from_utf8_lossy(&view.item(&items[0]).unwrap()).into_owned()
    }

    #[test]
    fn simple_message_items_agree() {
        let v = MessageView::new(SIMPLE.to_vec());
        assert_eq!(one(&v, "RFC822.SIZE"), format!("RFC822.SIZE {}", SIMPLE.len()));
        assert_eq!(
            one(&v, "BODY.PEEK[]"),
            format!("BODY[] {{{}}}\r\n{}", SIMPLE.len(), String::from_utf8_lossy(SIMPLE))
        );
        assert_eq!(one(&v, "BODY[TEXT]"), "BODY[TEXT] {20}\r\nline one\r\nline two\r\n");
        assert_eq!(one(&v, "BODY[1]"), "BODY[1] {20}\r\nline one\r\nline two\r\n");
        assert_eq!(one(&v, "BODY[2]"), "BODY[2] {0}\r\n");
        assert_eq!(one(&v, "BODY.PEEK[TEXT]<5.100>"), "BODY[TEXT]<5> {15}\r\none\r\nline two\r\n");
        assert_eq!(
            one(&v, "BODY[HEADER.FIELDS (subject FROM)]"),
            "BODY[HEADER.FIELDS (SUBJECT FROM)] {51}\r\nFrom: Alice <alice@example.org>\r\nSubject: Hello\r\n\r\n"
        );
        let not = one(&v, "BODY[HEADER.FIELDS.NOT (Subject From Date Message-ID)]");
        assert!(not.ends_with("To: bob@example.org, \"Carol C\" <carol@example.org>\r\n\r\n"), "{not}");
        assert_eq!(
            one(&v, "BODYSTRUCTURE"),
            "BODYSTRUCTURE (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 20 2 NIL NIL NIL NIL)"
        );
        assert_eq!(one(&v, "BODY"), "BODY (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 20 2)");
        assert_eq!(
            one(&v, "ENVELOPE"),
            "ENVELOPE (\"Sat, 5 Dec 2026 19:35:50 +0000\" \"Hello\" ((\"Alice\" NIL \"alice\" \"example.org\")) \
((\"Alice\" NIL \"alice\" \"example.org\")) ((\"Alice\" NIL \"alice\" \"example.org\")) \
((NIL NIL \"bob\" \"example.org\")(\"Carol C\" NIL \"carol\" \"example.org\")) NIL NIL NIL \"<m1@example.org>\")"
        );
        let header = one(&v, "RFC822.HEADER");
        assert!(header.ends_with("<m1@example.org>\r\n\r\n"));
    }

    #[test]
    fn multipart_with_an_attached_message() {
        let v = MessageView::new(MULTI.to_vec());
        assert_eq!(one(&v, "BODY[1]"), "BODY[1] {5}\r\nhello");
        assert_eq!(one(&v, "BODY[1.MIME]"), "BODY[1.MIME] {43}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
        let inner = "From: x@example.org\r\nSubject: inner\r\n\r\ninner body\r\n";
        assert_eq!(one(&v, "BODY[2]"), format!("BODY[2] {{{}}}\r\n{inner}", inner.len()));
        assert_eq!(one(&v, "BODY[2.HEADER]"), "BODY[2.HEADER] {39}\r\nFrom: x@example.org\r\nSubject: inner\r\n\r\n");
        assert_eq!(one(&v, "BODY[2.TEXT]"), "BODY[2.TEXT] {12}\r\ninner body\r\n");
        assert_eq!(one(&v, "BODY[2.1]"), "BODY[2.1] {12}\r\ninner body\r\n");
        assert_eq!(one(&v, "BODY[3]"), "BODY[3] {0}\r\n");
        let bs = one(&v, "BODYSTRUCTURE");
        assert!(bs.starts_with("BODYSTRUCTURE ((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 5 0 NIL NIL NIL NIL)(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 51 (NIL \"inner\" ((NIL NIL \"x\" \"example.org\"))"), "{bs}");
        assert!(bs.ends_with(" \"mixed\" (\"boundary\" \"b1\") NIL NIL NIL)"), "{bs}");
        assert!(bs.contains("(\"attachment\" (\"filename\" \"m.eml\"))"), "{bs}");
        assert_eq!(v.size(), MULTI.len());
    }

    #[test]
    fn odd_input_never_panics() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"no header at all",
            b"\r\n\r\nx",
            b" leading: space\r\n\r\nx",
            b"Subject: x\n\nbare line ends\n",
            b"Content-Type: multipart/mixed\r\n\r\n--x\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n--x--\r\n",
            b"\xff\xfe:\r\n\r\n",
        ] {
            let v = MessageView::new(raw.to_vec());
            let whole = [v.section(&Section::header()).unwrap(), v.section(&Section::text()).unwrap()].concat();
            assert_eq!(whole, raw, "header and text make the whole");
            for item in ["BODYSTRUCTURE", "ENVELOPE", "BODY[1.2.3.MIME]", "BODY[HEADER]", "BODY[1.TEXT]", "RFC822.SIZE"]
            {
                let _ = one(&v, item);
            }
        }
    }
}
