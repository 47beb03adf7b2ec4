//! The syntax of FETCH (RFC 3501 §6.4.5): the item list a client asks for, parsed so that the
//! proxy can answer the items about a message it serves itself ([`super::message`]) and leave
//! the rest (FLAGS, UID, INTERNALDATE, MODSEQ) to the provider.

/// A body section: a part path (`1.2`) and what of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub path: Vec<u32>,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Whole,
    Header,
    HeaderFields { not: bool, names: Vec<String> },
    Text,
    Mime,
}

impl Section {
    pub fn header() -> Section {
        Section { path: Vec::new(), spec: Spec::Header }
    }

    pub fn text() -> Section {
        Section { path: Vec::new(), spec: Spec::Text }
    }

    /// The section as a response names it (`1.HEADER.FIELDS (A B)`).
    pub fn name(&self) -> String {
        let mut out: Vec<String> = self.path.iter().map(u32::to_string).collect();
        match &self.spec {
            Spec::Whole => {}
            Spec::Header => out.push("HEADER".into()),
            Spec::Text => out.push("TEXT".into()),
            Spec::Mime => out.push("MIME".into()),
            Spec::HeaderFields { not, names } => {
                let names: Vec<String> = names.iter().map(|n| n.to_ascii_uppercase()).collect();
                out.push(format!("HEADER.FIELDS{} ({})", if *not { ".NOT" } else { "" }, names.join(" ")));
            }
        }
        out.join(".")
    }
}

/// One FETCH item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Envelope,
    BodyStructure,
    /// `BODY` without a section: the non-extensible structure.
    Body,
    Rfc822Size,
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    /// `BODY[...]` or `BODY.PEEK[...]`, with `<origin.count>`.
    Section {
        section: Section,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
    /// Anything the provider answers (FLAGS, UID, INTERNALDATE, MODSEQ, X-GM-*, …), upper-cased.
    Other(String),
}

impl Item {
    /// Whether fetching the item sets `\Seen` (RFC 3501: BODY[…] without PEEK, RFC822,
    /// RFC822.TEXT).
    pub fn sets_seen(&self) -> bool {
        matches!(self, Item::Rfc822 | Item::Rfc822Text | Item::Section { peek: false, .. })
    }

    /// Whether the item is about the message's content (answered from the view).
    pub fn is_content(&self) -> bool {
        !matches!(self, Item::Other(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FETCH item list: {0}")]
pub struct FetchSyntax(pub &'static str);

/// Parses a FETCH item list: a single item or a macro (`ALL`, `FAST`, `FULL`), or a
/// parenthesised list; what follows the list (`(CHANGEDSINCE n)`) is not part of it.
pub fn parse_items(text: &[u8]) -> Result<Vec<Item>, FetchSyntax> {
    let mut p = Parser { text, pos: 0 };
    p.skip_spaces();
    let items = if p.peek() == Some(b'(') {
        p.pos += 1;
        let mut items = Vec::new();
        loop {
            p.skip_spaces();
            match p.peek() {
                Some(b')') => break,
                None => return Err(FetchSyntax("unclosed item list")),
                _ => items.push(p.item()?),
            }
        }
        items
    } else {
        let word = p.word();
        match word.to_ascii_uppercase().as_str() {
            "ALL" => {
                vec![Item::Other("FLAGS".into()), Item::Other("INTERNALDATE".into()), Item::Rfc822Size, Item::Envelope]
            }
            "FAST" => vec![Item::Other("FLAGS".into()), Item::Other("INTERNALDATE".into()), Item::Rfc822Size],
            "FULL" => vec![
                Item::Other("FLAGS".into()),
                Item::Other("INTERNALDATE".into()),
                Item::Rfc822Size,
                Item::Envelope,
                Item::Body,
            ],
            _ => {
                p.pos = 0;
                p.skip_spaces();
                vec![p.item()?]
            }
        }
    };
    if items.is_empty() {
        return Err(FetchSyntax("empty item list"));
    }
    Ok(items)
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// An atom up to a space, bracket, angle or parenthesis.
    fn word(&mut self) -> String {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'[' | b']' | b'(' | b')' | b'<' | b'\r' | b'\n') {
                break;
            }
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.text[start..self.pos]).into_owned()
    }

    fn item(&mut self) -> Result<Item, FetchSyntax> {
        let word = self.word().to_ascii_uppercase();
        if word.is_empty() {
            return Err(FetchSyntax("expected a FETCH item"));
        }
        let item = match word.as_str() {
            "BODY" | "BODY.PEEK" if self.peek() == Some(b'[') => {
                self.pos += 1;
                let section = self.section()?;
                let partial = self.partial()?;
                Item::Section { section, partial, peek: word == "BODY.PEEK" }
            }
            "BODY" => Item::Body,
            "BODYSTRUCTURE" => Item::BodyStructure,
            "ENVELOPE" => Item::Envelope,
            "RFC822.SIZE" => Item::Rfc822Size,
            "RFC822" => Item::Rfc822,
            "RFC822.HEADER" => Item::Rfc822Header,
            "RFC822.TEXT" => Item::Rfc822Text,
            "BODY.PEEK" => return Err(FetchSyntax("BODY.PEEK needs a section")),
            _ if self.peek() == Some(b'[') => {
                // BINARY[…] and other sectioned items this proxy does not serve from a view.
                return Err(FetchSyntax("unsupported sectioned item"));
            }
            _ => Item::Other(word),
        };
        Ok(item)
    }

    /// After `[`: part path and spec up to `]`.
    fn section(&mut self) -> Result<Section, FetchSyntax> {
        let mut path = Vec::new();
        loop {
            let start = self.pos;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.pos == start {
                break;
            }
            let n: u32 = std::str::from_utf8(&self.text[start..self.pos])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&n| n > 0)
                .ok_or(FetchSyntax("invalid part number"))?;
            path.push(n);
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let word = self.word().to_ascii_uppercase();
        let spec = match word.as_str() {
            "" => Spec::Whole,
            "HEADER" => Spec::Header,
            "TEXT" => Spec::Text,
            "MIME" if !path.is_empty() => Spec::Mime,
            "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
                self.skip_spaces();
                if self.peek() != Some(b'(') {
                    return Err(FetchSyntax("HEADER.FIELDS needs a list of names"));
                }
                self.pos += 1;
                let mut names = Vec::new();
                loop {
                    self.skip_spaces();
                    match self.peek() {
                        Some(b')') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'"') => names.push(self.quoted()?),
                        None => return Err(FetchSyntax("unclosed header name list")),
                        _ => {
                            let name = self.word();
                            if name.is_empty() {
                                return Err(FetchSyntax("invalid header name"));
                            }
                            names.push(name);
                        }
                    }
                }
                if names.is_empty() {
                    return Err(FetchSyntax("empty header name list"));
                }
                Spec::HeaderFields { not: word.ends_with(".NOT"), names }
            }
            _ => return Err(FetchSyntax("unknown section")),
        };
        if self.peek() != Some(b']') {
            return Err(FetchSyntax("expected ]"));
        }
        self.pos += 1;
        Ok(Section { path, spec })
    }

    fn quoted(&mut self) -> Result<String, FetchSyntax> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(FetchSyntax("unclosed quoted string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    out.extend(self.peek());
                    self.pos += 1;
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// `<origin.count>` after a section, if present.
    fn partial(&mut self) -> Result<Option<(u32, u32)>, FetchSyntax> {
        if self.peek() != Some(b'<') {
            return Ok(None);
        }
        let end = self.text[self.pos..].iter().position(|&b| b == b'>').ok_or(FetchSyntax("unclosed partial"))?;
        let inner =
            std::str::from_utf8(&self.text[self.pos + 1..self.pos + end]).map_err(|_| FetchSyntax("partial"))?;
        self.pos += end + 1;
        let (origin, count) = inner.split_once('.').ok_or(FetchSyntax("partial needs origin.count"))?;
        let origin = origin.parse().map_err(|_| FetchSyntax("invalid partial origin"))?;
        let count: u32 = count.parse().map_err(|_| FetchSyntax("invalid partial count"))?;
        if count == 0 {
            return Err(FetchSyntax("partial count must be positive"));
        }
        Ok(Some((origin, count)))
    }
}

/// A FETCH response's items: name (upper-cased, `BODY[]<0>` as written) and the value as it is
/// on the wire.
pub type Items = Vec<(String, Vec<u8>)>;

/// A provider's `* n FETCH (...)` response (literals inline): the message number and its items.
pub fn parse_response(resp: &[u8]) -> Option<(u32, Items)> {
    let rest = resp.strip_prefix(b"* ")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let number: u32 = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let rest = &rest[sp + 1..];
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case(b"FETCH (") {
        return None;
    }
    let body = &rest[7..];
    let mut pos = 0;
    let mut items = Vec::new();
    loop {
        while body.get(pos) == Some(&b' ') {
            pos += 1;
        }
        if *body.get(pos)? == b')' {
            return Some((number, items));
        }
        let start = pos;
        let mut depth = 0;
        while let Some(&b) = body.get(pos) {
            match b {
                b'[' => depth += 1,
                b']' => depth -= 1,
                b' ' if depth == 0 => break,
                _ => {}
            }
            pos += 1;
        }
        let name = String::from_utf8_lossy(&body[start..pos]).to_ascii_uppercase();
        pos += 1;
        let value_start = pos;
        pos = skip_value(body, pos)?;
        items.push((name, body[value_start..pos].to_vec()));
    }
}

/// The end of the IMAP value starting at `pos`: atom, number, NIL, quoted string, literal or
/// parenthesised list.
fn skip_value(bytes: &[u8], mut pos: usize) -> Option<usize> {
    match *bytes.get(pos)? {
        b'"' => {
            pos += 1;
            loop {
                match *bytes.get(pos)? {
                    b'\\' => pos += 2,
                    b'"' => return Some(pos + 1),
                    _ => pos += 1,
                }
            }
        }
        b'{' => {
            let close = pos + bytes[pos..].iter().position(|&b| b == b'}')?;
            let len: usize = std::str::from_utf8(&bytes[pos + 1..close]).ok()?.trim_end_matches('+').parse().ok()?;
            let data = close + 3;
            (data + len <= bytes.len()).then_some(data + len)
        }
        b'(' => {
            pos += 1;
            loop {
                while bytes.get(pos) == Some(&b' ') {
                    pos += 1;
                }
                if *bytes.get(pos)? == b')' {
                    return Some(pos + 1);
                }
                pos = skip_value(bytes, pos)?;
            }
        }
        _ => {
            let start = pos;
            while let Some(&b) = bytes.get(pos) {
                if b == b' ' || b == b')' || b == b'\r' || b == b'\n' {
                    break;
                }
                if b == b'[' {
                    // An atom with a section, e.g. inside a list: up to its `]`.
                    pos += bytes[pos..].iter().position(|&c| c == b']')?;
                }
                pos += 1;
            }
            (pos > start).then_some(pos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_lists() {
        let items = parse_items(b"(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.100> BODYSTRUCTURE)")
            .unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0], Item::Other("UID".into()));
        let Item::Section { section, partial, peek } = &items[3] else { panic!() };
        assert_eq!((section.name(), *partial, *peek), ("HEADER.FIELDS (FROM TO)".to_string(), Some((0, 100)), true));
        assert!(!items[3].sets_seen());
        let items = parse_items(b"body[1.2.MIME]").unwrap();
        let Item::Section { section, .. } = &items[0] else { panic!() };
        assert_eq!(section.name(), "1.2.MIME");
        assert!(items[0].sets_seen());
        assert_eq!(parse_items(b"FULL").unwrap().len(), 5);
        assert_eq!(parse_items(b"(FLAGS) (CHANGEDSINCE 4)").unwrap(), vec![Item::Other("FLAGS".into())]);
    }

    #[test]
    fn provider_responses() {
        let resp = b"* 12 FETCH (UID 40 FLAGS (\\Seen $Chat) INTERNALDATE \"05-Dec-2026 19:35:50 +0000\" BODY[]<0> {5}\r\nhe)lo MODSEQ (7))\r\n";
        let (n, items) = parse_response(resp).unwrap();
        assert_eq!(n, 12);
        let names: Vec<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["UID", "FLAGS", "INTERNALDATE", "BODY[]<0>", "MODSEQ"]);
        assert_eq!(items[1].1, b"(\\Seen $Chat)");
        assert_eq!(items[3].1, b"{5}\r\nhe)lo");
        for bad in [
            &b"* 1 FETCH (UID"[..],
            b"* x FETCH ()",
            b"* 1 FETCH (BODY[] {9}\r\nab)",
            b"* 1 EXISTS",
            b"* 1 FETCH (A (B",
        ] {
            assert!(parse_response(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bad_item_lists_are_errors() {
        for bad in [
            &b"(BODY[1"[..],
            b"()",
            b"(BODY[MIME])",
            b"(BODY[0])",
            b"BODY[]<1.0>",
            b"BODY[HEADER.FIELDS ()]",
            b"BINARY[1]",
            b"(FLAGS",
            b"BODY.PEEK",
        ] {
            assert!(parse_items(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
