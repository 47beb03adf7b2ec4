//! The provider's `* NAMESPACE` response (RFC 2342), read without the command parser so the
//! profile can stay on the floor: where a provider keeps personal folders (Courier: `INBOX.`,
//! Dovecot and Cyrus: ``) decides where the COI folders may be created.
//!
//! RFC 2342 puts no space between the descriptors of one class (`(("#shared." ".")("shared." "."))`,
//! as Courier sends it); a reader that wants one loses the whole response and with it the prefix.

/// One namespace descriptor: `("INBOX." ".")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceEntry {
    pub prefix: String,
    /// `None` for `NIL` (a flat namespace).
    pub separator: Option<char>,
}

/// The three classes of a NAMESPACE response, each possibly empty (`NIL`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub personal: Vec<NamespaceEntry>,
    pub other_users: Vec<NamespaceEntry>,
    pub shared: Vec<NamespaceEntry>,
}

/// Why a line is not a NAMESPACE response we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("not a NAMESPACE response")]
    NotNamespace,
    #[error("NAMESPACE response malformed at byte {0}")]
    Malformed(usize),
}

impl Namespaces {
    /// Parses `* NAMESPACE <personal> <other> <shared>` (CRLF optional). Extension data after a
    /// descriptor's separator (RFC 2342 `Namespace_Response_Extension`) is skipped.
    pub fn parse(line: &[u8]) -> Result<Namespaces, NamespaceError> {
        let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(line);
        let rest = line.strip_prefix(b"* ").ok_or(NamespaceError::NotNamespace)?;
        let name_end = rest.iter().position(|&b| b == b' ').ok_or(NamespaceError::NotNamespace)?;
        if !rest[..name_end].eq_ignore_ascii_case(b"NAMESPACE") {
            return Err(NamespaceError::NotNamespace);
        }
        let mut p = Parser { input: line, pos: 2 + name_end + 1 };
        let personal = p.class()?;
        p.space()?;
        let other_users = p.class()?;
        p.space()?;
        let shared = p.class()?;
        // Anything after the third class is an extension we do not know; tolerate it.
        Ok(Namespaces { personal, other_users, shared })
    }

    /// The first personal namespace, the one new folders go into.
    pub fn personal(&self) -> Option<&NamespaceEntry> {
        self.personal.first()
    }
}

/// The separator from `* LIST (\Noselect) "/" ""` (the fallback where NAMESPACE is missing or
/// says NIL). `None` for a NIL separator or a line that is not a LIST response.
pub fn separator_from_list(line: &[u8]) -> Option<char> {
    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(line);
    let rest = line.strip_prefix(b"* ")?;
    let name_end = rest.iter().position(|&b| b == b' ')?;
    if !rest[..name_end].eq_ignore_ascii_case(b"LIST") {
        return None;
    }
    let mut p = Parser { input: line, pos: 2 + name_end + 1 };
    p.skip_list().ok()?;
    p.space().ok()?;
    match p.nstring().ok()? {
        Some(s) => s.chars().next(),
        None => None,
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self) -> NamespaceError {
        NamespaceError::Malformed(self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), NamespaceError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn space(&mut self) -> Result<(), NamespaceError> {
        self.expect(b' ')
    }

    /// `NIL` or `"(" 1*descriptor ")"`; descriptors may or may not be separated by spaces.
    fn class(&mut self) -> Result<Vec<NamespaceEntry>, NamespaceError> {
        if self.nil() {
            return Ok(Vec::new());
        }
        self.expect(b'(')?;
        let mut entries = Vec::new();
        loop {
            match self.peek() {
                Some(b'(') => entries.push(self.descriptor()?),
                Some(b' ') => self.pos += 1,
                Some(b')') if !entries.is_empty() => {
                    self.pos += 1;
                    return Ok(entries);
                }
                _ => return Err(self.err()),
            }
        }
    }

    /// `"(" prefix SP separator *(SP extension) ")"`.
    fn descriptor(&mut self) -> Result<NamespaceEntry, NamespaceError> {
        self.expect(b'(')?;
        let prefix = self.nstring()?.ok_or_else(|| self.err())?;
        self.space()?;
        let separator = self.nstring()?.and_then(|s| s.chars().next());
        // Extensions: ` "X-PARAM" ("a" "b")`, skipped whole.
        while self.peek() == Some(b' ') {
            self.pos += 1;
            match self.peek() {
                Some(b'(') => self.skip_list()?,
                _ => {
                    self.nstring()?;
                }
            }
        }
        self.expect(b')')?;
        Ok(NamespaceEntry { prefix, separator })
    }

    fn nil(&mut self) -> bool {
        let rest = &self.input[self.pos.min(self.input.len())..];
        if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"NIL") {
            self.pos += 3;
            true
        } else {
            false
        }
    }

    /// A quoted string, a literal `{n}\r\n...`, or `NIL` (None). Bytes that are not UTF-8 are
    /// replaced: a prefix is used as a mailbox name, which IMAP4rev1 keeps 7-bit anyway.
    fn nstring(&mut self) -> Result<Option<String>, NamespaceError> {
        if self.nil() {
            return Ok(None);
        }
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        Some(b'"') => {
                            self.pos += 1;
                            return Ok(Some(String::from_utf8_lossy(&out).into_owned()));
                        }
                        Some(b'\\') => {
                            self.pos += 1;
                            let c = self.peek().ok_or_else(|| self.err())?;
                            out.push(c);
                            self.pos += 1;
                        }
                        Some(b'\r' | b'\n') | None => return Err(self.err()),
                        Some(c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(b'{') => {
                let close = self.input[self.pos..].iter().position(|&b| b == b'}').ok_or_else(|| self.err())?;
                let digits = &self.input[self.pos + 1..self.pos + close];
                let digits = digits.strip_suffix(b"+").unwrap_or(digits);
                if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(self.err());
                }
                let n: usize = std::str::from_utf8(digits).map_err(|_| self.err())?.parse().map_err(|_| self.err())?;
                self.pos += close + 1;
                if self.input.get(self.pos..self.pos + 2) != Some(b"\r\n") {
                    return Err(self.err());
                }
                self.pos += 2;
                let bytes = self.input.get(self.pos..self.pos + n).ok_or_else(|| self.err())?;
                self.pos += n;
                Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
            }
            _ => Err(self.err()),
        }
    }

    /// Skips a parenthesised list of atoms, strings and lists (bounded by the input).
    fn skip_list(&mut self) -> Result<(), NamespaceError> {
        self.expect(b'(')?;
        let mut depth = 1usize;
        while depth > 0 {
            match self.peek() {
                None => return Err(self.err()),
                Some(b'(') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(b')') => {
                    depth -= 1;
                    self.pos += 1;
                }
                Some(b'"' | b'{') => {
                    self.nstring()?;
                }
                Some(_) => self.pos += 1,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, sep: Option<char>) -> NamespaceEntry {
        NamespaceEntry { prefix: prefix.into(), separator: sep }
    }

    #[test]
    fn the_harness_servers() {
        let ns = Namespaces::parse(b"* NAMESPACE ((\"\" \".\")) NIL NIL\r\n").unwrap();
        assert_eq!(ns.personal, [entry("", Some('.'))]);
        let ns =
            Namespaces::parse(b"* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")(\"shared.\" \".\"))\r\n")
                .unwrap();
        assert_eq!(ns.personal(), Some(&entry("INBOX.", Some('.'))));
        assert_eq!(ns.shared, [entry("#shared.", Some('.')), entry("shared.", Some('.'))]);
        let ns = Namespaces::parse(
            b"* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\")) ((\"Shared Folders/\" \"/\"))\r\n",
        )
        .unwrap();
        assert_eq!(ns.other_users, [entry("Other Users/", Some('/'))]);
    }

    #[test]
    fn nil_separator_extensions_literals_and_case() {
        let ns = Namespaces::parse(b"* namespace ((\"\" NIL)) nil NIL").unwrap();
        assert_eq!(ns.personal, [entry("", None)]);
        let ns =
            Namespaces::parse(b"* NAMESPACE ((\"\" \"/\" \"X-PARAM\" (\"FLAG1\" \"FLAG2\"))) NIL NIL\r\n").unwrap();
        assert_eq!(ns.personal, [entry("", Some('/'))]);
        let ns = Namespaces::parse(b"* NAMESPACE (({6}\r\nINBOX. \".\")) NIL NIL\r\n").unwrap();
        assert_eq!(ns.personal, [entry("INBOX.", Some('.'))]);
        let ns = Namespaces::parse(b"* NAMESPACE ((\"a\\\"b\" \"\\\\\")) NIL NIL").unwrap();
        assert_eq!(ns.personal, [entry("a\"b", Some('\\'))]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"* NAMESPACE",
            b"* NAMESPACE (",
            b"* NAMESPACE ()",
            b"* NAMESPACE ((\"x\")) NIL NIL",
            b"* NAMESPACE ((\"x \".\")) NIL NIL",
            b"* NAMESPACE (({99}\r\nab \".\")) NIL NIL",
            b"* NAMESPACE (({9999999999}\r\n",
            b"* NAMESPACE ((\"\" \"/\")) NIL",
            b"* LIST () \"/\" \"\"",
            b"a1 OK NAMESPACE",
        ] {
            assert!(Namespaces::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Namespaces::parse(b"* OK hi"), Err(NamespaceError::NotNamespace));
    }

    #[test]
    fn separators_from_list() {
        assert_eq!(separator_from_list(b"* LIST (\\Noselect) \"/\" \"\"\r\n"), Some('/'));
        assert_eq!(separator_from_list(b"* LIST (\\Noselect) \".\" \"\"\r\n"), Some('.'));
        assert_eq!(separator_from_list(b"* LIST (\\NoInferiors) NIL INBOX\r\n"), None);
        assert_eq!(separator_from_list(b"* LSUB () \"/\" x"), None);
        assert_eq!(separator_from_list(b"* LIST (\\Noselect"), None);
    }
}
