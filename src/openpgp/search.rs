//! SEARCH over decrypted views (issue 15): a search program is split into the keys about a
//! message's content (BODY, TEXT, SUBJECT, FROM, TO, CC, BCC, HEADER, LARGER, SMALLER), which
//! are judged here on the clear text of an encrypted message's view, and every other key
//! (flags, dates, UIDs, keywords, sequence sets), which the provider judges (it knows them
//! right for encrypted messages too). The boolean structure (lists, OR, NOT) is kept, so any
//! combination works. Pure: the caller asks the provider for each provider key's UIDs.

use mail_parser::{HeaderValue, MessageParser};

use crate::imap::wire::command::{self, Arg};
use crate::imap::wire::message::MessageView;

/// A search program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    And(Vec<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    /// Judged by the provider: the key as it is sent (`SEEN`, `SINCE 1-Dec-2026`, `1:5`).
    Provider(String),
    Local(Local),
}

/// A content key, judged on the clear text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Body(String),
    Text(String),
    /// A header field (by name) containing a string.
    Header(String, String),
    Larger(usize),
    Smaller(usize),
}

/// Why a program is left to the provider whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("search program not handled by the view: {0}")]
pub struct Unsupported(pub &'static str);

/// Parses the arguments of SEARCH (after an optional `CHARSET x`, which only UTF-8 and
/// US-ASCII pass).
pub fn parse(args: &[Arg]) -> Result<Node, Unsupported> {
    let mut args = args;
    if let [Arg::Atom(c), charset, rest @ ..] = args
        && c.eq_ignore_ascii_case("CHARSET")
    {
        let charset = charset.astring().map(|c| String::from_utf8_lossy(c).to_ascii_uppercase()).unwrap_or_default();
        if charset != "UTF-8" && charset != "US-ASCII" {
            return Err(Unsupported("charset"));
        }
        args = rest;
    }
    if args.first().is_some_and(|a| matches!(a, Arg::Atom(r) if r.eq_ignore_ascii_case("RETURN"))) {
        return Err(Unsupported("ESEARCH RETURN options"));
    }
    let mut pos = 0;
    let mut keys = Vec::new();
    while pos < args.len() {
        keys.push(key(args, &mut pos)?);
    }
    if keys.is_empty() {
        return Err(Unsupported("empty program"));
    }
    Ok(Node::And(keys))
}

fn text(args: &[Arg], pos: &mut usize) -> Result<String, Unsupported> {
    let value = args.get(*pos).and_then(Arg::astring).ok_or(Unsupported("missing string"))?;
    *pos += 1;
    Ok(String::from_utf8_lossy(value).into_owned())
}

fn key(args: &[Arg], pos: &mut usize) -> Result<Node, Unsupported> {
    let arg = args.get(*pos).ok_or(Unsupported("missing key"))?;
    *pos += 1;
    let word = match arg {
        Arg::List(inner) => {
            let mut p = 0;
            let mut keys = Vec::new();
            while p < inner.len() {
                keys.push(key(inner, &mut p)?);
            }
            return Ok(Node::And(keys));
        }
        Arg::Atom(a) => a.to_ascii_uppercase(),
        _ => return Err(Unsupported("string where a key belongs")),
    };
    let provider = |text: String| Ok(Node::Provider(text));
    match word.as_str() {
        "ALL" | "ANSWERED" | "DELETED" | "DRAFT" | "FLAGGED" | "NEW" | "OLD" | "RECENT" | "SEEN" | "UNANSWERED"
        | "UNDELETED" | "UNDRAFT" | "UNFLAGGED" | "UNSEEN" => provider(word),
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" | "KEYWORD" | "UNKEYWORD" | "UID"
        | "OLDER" | "YOUNGER" => {
            let value = match args.get(*pos) {
                Some(Arg::Atom(a)) => a.clone(),
                Some(Arg::Str(s)) => String::from_utf8_lossy(&command::astring(s, false)).into_owned(),
                _ => return Err(Unsupported("missing argument")),
            };
            *pos += 1;
            provider(format!("{word} {value}"))
        }
        "NOT" => Ok(Node::Not(Box::new(key(args, pos)?))),
        "OR" => {
            let a = key(args, pos)?;
            let b = key(args, pos)?;
            Ok(Node::Or(Box::new(a), Box::new(b)))
        }
        "BODY" => Ok(Node::Local(Local::Body(text(args, pos)?))),
        "TEXT" => Ok(Node::Local(Local::Text(text(args, pos)?))),
        "SUBJECT" | "FROM" | "TO" | "CC" | "BCC" => Ok(Node::Local(Local::Header(word, text(args, pos)?))),
        "HEADER" => {
            let name = text(args, pos)?;
            Ok(Node::Local(Local::Header(name.to_ascii_uppercase(), text(args, pos)?)))
        }
        "LARGER" | "SMALLER" => {
            let n: usize = text(args, pos)?.parse().map_err(|_| Unsupported("size"))?;
            Ok(Node::Local(if word == "LARGER" { Local::Larger(n) } else { Local::Smaller(n) }))
        }
        w if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit() || b == b':' || b == b',' || b == b'*') => {
            provider(word)
        }
        _ => Err(Unsupported("unknown key")),
    }
}

impl Node {
    /// The provider keys, each once, in order.
    pub fn provider_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut Vec<String>) {
        match self {
            Node::And(keys) => keys.iter().for_each(|k| k.collect(out)),
            Node::Or(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Node::Not(a) => a.collect(out),
            Node::Provider(k) if !out.contains(k) => out.push(k.clone()),
            _ => {}
        }
    }

    /// Whether the message `uid` with `view` matches; `provider` says whether a provider key
    /// matches it.
    pub fn matches(&self, view: &Clear, provider: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Node::And(keys) => keys.iter().all(|k| k.matches(view, provider)),
            Node::Or(a, b) => a.matches(view, provider) || b.matches(view, provider),
            Node::Not(a) => !a.matches(view, provider),
            Node::Provider(k) => provider(k),
            Node::Local(local) => view.matches(local),
        }
    }
}

/// A view's text as the content keys see it: decoded, lower-cased.
pub struct Clear {
    size: usize,
    headers: Vec<(String, String)>,
    header_text: String,
    body: String,
}

impl Clear {
    pub fn new(view: &MessageView) -> Clear {
        let raw = view.raw();
        let (header, _) = crate::mail::split_header(raw);
        let mut headers: Vec<(String, String)> =
            crate::mail::fields(header).into_iter().map(|(n, v)| (n.to_ascii_uppercase(), v.to_lowercase())).collect();
        let mut body = String::new();
        if let Some(message) = MessageParser::new().parse(raw) {
            // Decoded forms too (encoded words, display names), beside the raw values.
            for h in message.parts.first().map(|p| p.headers.as_slice()).unwrap_or_default() {
                let decoded = match &h.value {
                    HeaderValue::Text(t) => t.to_string(),
                    HeaderValue::TextList(l) => l.join(" "),
                    HeaderValue::Address(a) => a
                        .iter()
                        .map(|a| format!("{} {}", a.name.as_deref().unwrap_or(""), a.address.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => continue,
                };
                headers.push((h.name.as_str().to_ascii_uppercase(), decoded.to_lowercase()));
            }
            for part in &message.parts {
                if let Some(text) = part.text_contents() {
                    body.push_str(&text.to_lowercase());
                    body.push('\n');
                }
            }
        }
        let header_text = headers.iter().map(|(n, v)| format!("{n}: {v}\n")).collect::<String>().to_lowercase();
        Clear { size: raw.len(), headers, header_text, body }
    }

    fn matches(&self, key: &Local) -> bool {
        match key {
            Local::Body(s) => self.body.contains(&s.to_lowercase()),
            Local::Text(s) => {
                let s = s.to_lowercase();
                self.body.contains(&s) || self.header_text.contains(&s)
            }
            Local::Header(name, s) => {
                let s = s.to_lowercase();
                self.headers.iter().any(|(n, v)| n == name && v.contains(&s))
            }
            Local::Larger(n) => self.size > *n,
            Local::Smaller(n) => self.size < *n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(text: &str) -> Result<Node, Unsupported> {
        let cmd = command::parse(format!("t SEARCH {text}\r\n").as_bytes()).unwrap();
        parse(&cmd.args)
    }

    #[test]
    fn programs_split_into_local_and_provider_keys() {
        let node = program("OR BODY secret SUBJECT \"Fr\u{fc}h\" NOT SEEN (UID 1:5 LARGER 10)")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node.provider_keys(), ["SEEN", "UID 1:5"]);
        assert_eq!(program("CHARSET UTF-8 TEXT x").unwrap().provider_keys(), Vec::<String>::new());
        assert!(program("CHARSET ISO-8859-1 TEXT x").is_err());
        assert!(program("RETURN (MIN) ALL").is_err());
        assert!(program("X-GM-RAW x").is_err());
        assert!(program("HEADER Subject").is_err());
    }

    #[test]
    fn clear_text_matches() {
        let view = MessageView::new(
            b"From: Alice <alice@example.org>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nX-Tag: blue\r\n\r\nThe Secret plan\r\n"
                .to_vec(),
        );
        let clear = Clear::new(&view);
        let seen = |k: &str| k == "SEEN";
        let unseen = |_: &str| false;
        let m = |p: &str, f: &dyn Fn(&str) -> bool| program(p).unwrap().matches(&clear, f);
        assert!(m("BODY secret", &unseen));
        assert!(m("SUBJECT \"grüße\"", &unseen) && m("SUBJECT =?utf-8?q?Gr", &unseen));
        assert!(m("FROM alice", &unseen) && m("FROM \"Alice\"", &unseen) && !m("TO alice", &unseen));
        assert!(
            m("HEADER X-Tag blu", &unseen) && m("HEADER x-tag \"\"", &unseen) && !m("HEADER X-Other \"\"", &unseen)
        );
        assert!(m("TEXT plan SEEN", &seen) && !m("TEXT plan SEEN", &unseen));
        assert!(m("OR SEEN BODY plan", &unseen) && !m("NOT BODY plan", &unseen));
        assert!(m("LARGER 10 SMALLER 1000", &unseen) && !m("LARGER 1000", &unseen));
        assert!(!m("BODY nothing", &seen));
    }
}
