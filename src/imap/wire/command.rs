//! Parsing of the few client commands the proxy answers or inspects itself.
//!
//! Everything else is relayed untouched and never parsed beyond its tag and name
//! ([`head`]). Parsing works on a whole assembled command (lines with their literal bytes inline),
//! so the grammar is RFC 3501's: atoms, quoted strings, literals, NIL and parenthesised lists.

/// One argument of a parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Atom(String),
    /// A quoted string or a literal, unescaped.
    Str(Vec<u8>),
    Nil,
    List(Vec<Arg>),
}

impl Arg {
    /// The bytes of an astring (atom, quoted string or literal).
    pub fn astring(&self) -> Option<&[u8]> {
        match self {
            Arg::Atom(a) => Some(a.as_bytes()),
            Arg::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A parsed command: tag, upper-cased name (`UID FETCH` keeps both words) and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub name: String,
    /// The name as the proxy knows it (for `UID FETCH`: `Fetch`, with `uid` set).
    pub kind: CommandName,
    pub uid: bool,
    pub args: Vec<Arg>,
}

/// Declares [`CommandName`] from one list of variants and their command words: the enum,
/// [`CommandName::ALL`] and the word lookup of [`CommandName::parse`] cannot drift apart.
macro_rules! command_names {
    ($($name:ident = $word:literal,)*) => {
        /// The commands the proxy treats in any way of its own, told apart once from the line
        /// head so that no caller matches names as strings. Everything else is
        /// [`CommandName::Other`] and is relayed untouched.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CommandName {
            $($name,)*
            Other,
        }

        impl CommandName {
            /// Every name, for tables indexed by it.
            pub const ALL: &[CommandName] = &[$(CommandName::$name,)* CommandName::Other];

            /// The name for a command word, in any case. Allocation-free: it runs on every
            /// relayed command line.
            pub fn parse(word: &[u8]) -> CommandName {
                let mut upper = [0u8; 16];
                let Some(upper) = upper.get_mut(..word.len()) else { return CommandName::Other };
                upper.copy_from_slice(word);
                upper.make_ascii_uppercase();
                match &*upper {
                    $($word => CommandName::$name,)*
                    _ => CommandName::Other,
                }
            }
        }
    };
}

command_names! {
    Capability = b"CAPABILITY",
    Noop = b"NOOP",
    Logout = b"LOGOUT",
    Starttls = b"STARTTLS",
    Authenticate = b"AUTHENTICATE",
    Login = b"LOGIN",
    Id = b"ID",
    Enable = b"ENABLE",
    Select = b"SELECT",
    Examine = b"EXAMINE",
    Create = b"CREATE",
    Delete = b"DELETE",
    Rename = b"RENAME",
    Subscribe = b"SUBSCRIBE",
    Unsubscribe = b"UNSUBSCRIBE",
    List = b"LIST",
    Lsub = b"LSUB",
    Namespace = b"NAMESPACE",
    Status = b"STATUS",
    Append = b"APPEND",
    Idle = b"IDLE",
    Check = b"CHECK",
    Close = b"CLOSE",
    Expunge = b"EXPUNGE",
    Search = b"SEARCH",
    Fetch = b"FETCH",
    Store = b"STORE",
    Copy = b"COPY",
    Move = b"MOVE",
    Compress = b"COMPRESS",
    GetMetadata = b"GETMETADATA",
    SetMetadata = b"SETMETADATA",
}

impl CommandName {
    /// Commands that are valid only once logged in (RFC 3501 6.3 and 6.4, and the extensions
    /// the proxy knows): before login they get "Log in first" rather than "Unknown command".
    pub fn authenticated_only(self) -> bool {
        use CommandName::*;
        matches!(
            self,
            Enable
                | Select
                | Examine
                | List
                | Lsub
                | Status
                | Append
                | Create
                | Delete
                | Rename
                | Subscribe
                | Unsubscribe
                | Namespace
                | GetMetadata
                | SetMetadata
                | Idle
                | Fetch
                | Store
                | Search
                | Copy
                | Move
                | Expunge
                | Close
                | Check
        )
    }
}

/// The head of a command line: its tag and what command it is. `UID FETCH` is `Fetch` with
/// `uid` set; a bare `UID` is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub tag: &'a [u8],
    pub name: CommandName,
    pub uid: bool,
}

impl<'a> Head<'a> {
    /// Reads the head of a command line without allocating; `None` for a line without a valid
    /// tag and name (a `DONE`, a continuation, garbage).
    pub fn parse(line: &'a [u8]) -> Option<Head<'a>> {
        let (tag, word) = head(line)?;
        if !word.eq_ignore_ascii_case(b"UID") {
            return Some(Head { tag, name: CommandName::parse(word), uid: false });
        }
        let rest = &trim_line_end(line)[tag.len() + 1 + word.len()..];
        match rest.strip_prefix(b" ") {
            Some(rest) => {
                let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                Some(Head { tag, name: CommandName::parse(&rest[..end]), uid: true })
            }
            None => Some(Head { tag, name: CommandName::Other, uid: false }),
        }
    }

    /// Whether this is the plain (not `UID`) command `name`.
    pub fn is(&self, name: CommandName) -> bool {
        !self.uid && self.name == name
    }
}

/// Why a command could not be parsed; the text goes into a `BAD` response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Missing or invalid tag")]
    Tag,
    #[error("Missing command name")]
    Name,
    #[error("Syntax error in arguments: {0}")]
    Syntax(&'static str),
}

/// The tag and command word at the start of a command line, found without allocating.
/// `UID` commands give `UID` as the word; [`Head::parse`] looks one word further.
pub fn head(line: &[u8]) -> Option<(&[u8], &[u8])> {
    // One pass over a few bytes (it runs on every relayed command): the tag's characters up to
    // its space, then the word's up to the next space or the line's end.
    let line = trim_line_end(line);
    let sp = line.iter().position(|&b| !TAG_CHAR[b as usize])?;
    if sp == 0 || line[sp] != b' ' {
        return None;
    }
    let rest = &line[sp + 1..];
    let end = rest.iter().position(|&b| !ATOM_CHAR[b as usize]).unwrap_or(rest.len());
    if end == 0 || rest.get(end).is_some_and(|&b| b != b' ') {
        return None;
    }
    Some((&line[..sp], &rest[..end]))
}

/// [`is_atom_char`] as a table, for the hot path of [`head`].
static ATOM_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_atom_char(b as u8);
        b += 1;
    }
    table
};

/// The characters of a tag: ASTRING-CHAR except `+`.
static TAG_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_astring_char(b as u8) && b as u8 != b'+';
        b += 1;
    }
    table
};

/// Parses a whole command message (ending in CRLF or LF).
pub fn parse(msg: &[u8]) -> Result<Command, ParseError> {
    let mut p = Parser { buf: trim_line_end(msg), pos: 0 };
    let tag = p.take_while(|b| is_astring_char(b) && b != b'+');
    if tag.is_empty() || !p.eat(b' ') {
        return Err(ParseError::Tag);
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    let mut name = p.take_while(is_atom_char).to_ascii_uppercase();
    if name.is_empty() {
        return Err(ParseError::Name);
    }
    let (mut kind, mut uid) = (CommandName::parse(&name), false);
    if name == b"UID" && p.eat(b' ') {
        let sub = p.take_while(is_atom_char).to_ascii_uppercase();
        (kind, uid) = (CommandName::parse(&sub), true);
        name.push(b' ');
        name.extend(sub);
    }
    let name = String::from_utf8_lossy(&name).into_owned();
    let mut args = Vec::new();
    while p.eat(b' ') {
        args.push(p.arg(0)?);
    }
    if p.pos != p.buf.len() {
        return Err(ParseError::Syntax("unexpected character"));
    }
    Ok(Command { tag, name, kind, uid, args })
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    // Slice patterns: two byte compares (`strip_suffix` compares slices).
    match line {
        [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n' | b'\r'] => rest,
        _ => line,
    }
}

/// ATOM-CHAR of RFC 3501: any CHAR except atom-specials.
pub const fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// ASTRING-CHAR: ATOM-CHAR or `]`.
const fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

/// Deepest list nesting accepted, so a peer cannot make the parser recurse without bound.
const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    fn arg(&mut self, depth: usize) -> Result<Arg, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted().map(Arg::Str),
            Some(b'{') | Some(b'~') => self.literal().map(Arg::Str),
            Some(b'(') => {
                if depth >= MAX_DEPTH {
                    return Err(ParseError::Syntax("lists nested too deeply"));
                }
                self.pos += 1;
                let mut items = Vec::new();
                if !self.eat(b')') {
                    loop {
                        items.push(self.arg(depth + 1)?);
                        if self.eat(b')') {
                            break;
                        }
                        if !self.eat(b' ') {
                            return Err(ParseError::Syntax("expected space or ')' in list"));
                        }
                    }
                }
                Ok(Arg::List(items))
            }
            Some(_) => {
                // Atoms here also cover flags (`\Seen`), sequence sets (`1:*`) and sections.
                let atom = self.take_while(|b| is_astring_char(b) || matches!(b, b'\\' | b'*' | b'%' | b'[' | b']'));
                if atom.is_empty() {
                    return Err(ParseError::Syntax("unexpected character"));
                }
                if atom.eq_ignore_ascii_case(b"NIL") {
                    return Ok(Arg::Nil);
                }
                Ok(Arg::Atom(String::from_utf8_lossy(atom).into_owned()))
            }
            None => Err(ParseError::Syntax("missing argument")),
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, ParseError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => out.push(c),
                        _ => return Err(ParseError::Syntax("bad escape in quoted string")),
                    }
                    self.pos += 1;
                }
                Some(b'\r' | b'\n' | 0) | None => return Err(ParseError::Syntax("unterminated quoted string")),
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Result<Vec<u8>, ParseError> {
        self.eat(b'~');
        if !self.eat(b'{') {
            return Err(ParseError::Syntax("expected literal"));
        }
        let digits = self.take_while(|b| b.is_ascii_digit());
        self.eat(b'+');
        if digits.is_empty() || digits.len() > 10 || !self.eat(b'}') {
            return Err(ParseError::Syntax("bad literal length"));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(ParseError::Syntax("bad literal length"))?;
        self.eat(b'\r');
        if !self.eat(b'\n') {
            return Err(ParseError::Syntax("literal announcement must end the line"));
        }
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ParseError::Syntax("literal is cut short"))?;
        let bytes = self.buf[self.pos..end].to_vec();
        self.pos = end;
        Ok(bytes)
    }
}

/// Encodes `value` as an IMAP string: quoted when it can be, else a literal (`{n+}` when the
/// receiver offers LITERAL+, else `{n}`, for which the caller must wait for `+`).
pub fn astring(value: &[u8], literal_plus: bool) -> Vec<u8> {
    let quotable = value.len() < 1024 && value.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80);
    if quotable {
        let mut out = Vec::with_capacity(value.len() + 2);
        out.push(b'"');
        for &b in value {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
        out
    } else {
        let mut out = format!("{{{}{}}}\r\n", value.len(), if literal_plus { "+" } else { "" }).into_bytes();
        out.extend_from_slice(value);
        out
    }
}

/// The `name` field of an ID parameter list.
pub fn client_name(args: &[Arg]) -> Option<String> {
    let Some(Arg::List(items)) = args.first() else { return None };
    items.chunks(2).find_map(|kv| match kv {
        [Arg::Str(k), Arg::Str(v)] if k.eq_ignore_ascii_case(b"name") => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_forms() {
        let c = parse(b"a1 login alice \"se\\\"cret\"\r\n").unwrap();
        assert_eq!((c.tag.as_str(), c.name.as_str()), ("a1", "LOGIN"));
        assert_eq!(c.args, vec![Arg::Atom("alice".into()), Arg::Str(b"se\"cret".to_vec())]);
        let c = parse(b"a2 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n").unwrap();
        assert_eq!(c.args[0].astring().unwrap(), b"alice");
        assert_eq!(c.args[1].astring().unwrap(), b"secret");
    }

    #[test]
    fn lists_nil_and_uid() {
        let c = parse(b"x ID (\"name\" \"Delta Chat\" \"version\" NIL)\r\n").unwrap();
        assert_eq!(
            c.args,
            vec![Arg::List(vec![
                Arg::Str(b"name".to_vec()),
                Arg::Str(b"Delta Chat".to_vec()),
                Arg::Str(b"version".to_vec()),
                Arg::Nil,
            ])]
        );
        let c = parse(b"x uid store 1:* +FLAGS (\\Seen)\r\n").unwrap();
        assert_eq!(c.name, "UID STORE");
        assert_eq!(c.args[2], Arg::List(vec![Arg::Atom("\\Seen".into())]));
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"\r\n"), Err(ParseError::Tag));
        assert_eq!(parse(b"a+b NOOP\r\n"), Err(ParseError::Tag));
        assert_eq!(parse(b"abc\r\n"), Err(ParseError::Tag));
        assert_eq!(parse(b"abc \r\n"), Err(ParseError::Name));
        assert!(parse(b"a LOGIN \"open\r\n").is_err());
        assert!(parse(b"a LOGIN {10}\r\nabc\r\n").is_err());
        assert!(parse(b"a ID ((((((((((((((((((((x))))))))))))))))))))\r\n").is_err());
        assert!(parse(b"a LOGIN \x01\r\n").is_err());
    }

    #[test]
    fn heads() {
        assert_eq!(head(b"a1 NOOP\r\n"), Some((&b"a1"[..], &b"NOOP"[..])));
        assert_eq!(head(b"a1 SELECT INBOX\r\n"), Some((&b"a1"[..], &b"SELECT"[..])));
        assert_eq!(head(b"DONE\r\n"), None);
        assert_eq!(head(b"\x16\x03\x01"), None);
    }

    #[test]
    fn command_names() {
        let h = Head::parse(b"7 uid Move 1 x\r\n").unwrap();
        assert_eq!((h.tag, h.name, h.uid), (&b"7"[..], CommandName::Move, true));
        assert!(!h.is(CommandName::Move));
        let h = Head::parse(b"a idle\r\n").unwrap();
        assert!(h.is(CommandName::Idle));
        assert_eq!(Head::parse(b"a UID\r\n").unwrap().name, CommandName::Other);
        assert_eq!(Head::parse(b"a GetMetadata \"\" /x\r\n").unwrap().name, CommandName::GetMetadata);
        assert_eq!(CommandName::parse(b"XSOMETHINGVERYLONGINDEED"), CommandName::Other);
        assert_eq!(CommandName::parse(b""), CommandName::Other);
        assert_eq!(Head::parse(b"DONE\r\n"), None);
        let c = parse(b"x UID STORE 1 +FLAGS (\\Seen)\r\n").unwrap();
        assert_eq!((c.kind, c.uid), (CommandName::Store, true));
        assert!(CommandName::Fetch.authenticated_only() && !CommandName::Compress.authenticated_only());
    }

    #[test]
    fn every_name_is_found_by_its_word_alone() {
        for &name in CommandName::ALL.iter().filter(|&&n| n != CommandName::Other) {
            // Each variant is named as its word (GetMetadata: GETMETADATA).
            let word = format!("{name:?}").to_ascii_uppercase();
            assert_eq!(CommandName::parse(word.as_bytes()), name);
            assert_eq!(CommandName::parse(word.to_ascii_lowercase().as_bytes()), name);
            for other in [format!("{word}X"), format!("\0{word}"), word[1..].to_string()] {
                assert_eq!(CommandName::parse(other.as_bytes()), CommandName::Other, "{other:?}");
            }
        }
    }

    #[test]
    fn astring_encoding() {
        assert_eq!(astring(b"a\"b", false), b"\"a\\\"b\"");
        assert_eq!(astring("pässword".as_bytes(), true), b"{9+}\r\np\xc3\xa4ssword");
        assert_eq!(astring(b"x\r\ny", false), b"{4}\r\nx\r\ny");
    }
}
