//! Sans-I/O IMAP framing: splits a byte stream (either direction) into lines and literals.
//!
//! This is the relay's hot path, so it never parses and never copies: it only finds line ends
//! and `{n}` / `{n+}` / `~{n}` literal announcements, and tells the caller how many buffered bytes
//! form the next fragment. Literal contents are handed through in whatever pieces have arrived,
//! so a 100 MB message never sits in memory whole, and literal bytes are never mistaken for
//! commands. A line longer than the limit is still framed (in pieces) so the stream stays in
//! step; the caller decides whether to relay or refuse it.

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    pub len: u64,
    /// `{n}`: the sender waits for a `+` continuation before sending the bytes.
    pub sync: bool,
    /// `~{n}` (RFC 3516 BINARY).
    pub binary: bool,
}

/// The next piece of the stream; `len` bytes at the front of the buffer belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole line, line end included. `first` is false for a line that continues a command
    /// or response after a literal. `literal` is what the line announces at its end.
    Line { len: usize, first: bool, literal: Option<Literal> },
    /// Literal bytes; `last` when this piece completes the literal.
    LiteralData { len: usize, last: bool },
    /// A piece of a line longer than the limit. `start` marks the piece holding the line's start,
    /// `end` the piece holding its line end (then `literal` is what it announces).
    Overlong { len: usize, start: bool, first: bool, end: bool, literal: Option<Literal> },
}

impl Fragment {
    /// How many bytes at the front of the buffer belong to the fragment (never 0).
    pub fn len(&self) -> usize {
        match *self {
            Fragment::Line { len, .. } | Fragment::LiteralData { len, .. } | Fragment::Overlong { len, .. } => len,
        }
    }

    /// Always false: a fragment holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first line of a new command or response.
    MessageStart,
    /// Expecting the line that continues a message after a literal.
    Continuation,
    Literal {
        remaining: u64,
    },
    /// Inside an over-long line; `first` as in [`Fragment::Line`].
    Overlong {
        first: bool,
    },
}

/// Bytes of an over-long line held back so its literal announcement is always seen whole.
const TAIL: usize = 32;

/// Splits one direction of an IMAP connection into [`Fragment`]s.
#[derive(Debug, Clone)]
pub struct Framer {
    state: State,
    /// Longest line reported as a [`Fragment::Line`]; bounds what a caller must buffer.
    max_line: usize,
    /// How far the current partial line has already been searched for a line end.
    scanned: usize,
    /// The fragment just returned announced a synchronizing literal, which may still be
    /// refused ([`Framer::refuse_literal`]).
    refusable: bool,
}

impl Framer {
    pub fn new(max_line: usize) -> Framer {
        Framer { state: State::MessageStart, max_line: max_line.max(TAIL * 2), scanned: 0, refusable: false }
    }

    /// True between messages (no command or response is half-way through).
    pub fn at_message_start(&self) -> bool {
        self.state == State::MessageStart
    }

    /// True while literal bytes are expected.
    pub fn in_literal(&self) -> bool {
        matches!(self.state, State::Literal { .. })
    }

    /// How many bytes of the literal in progress are still to come (`None` outside a literal).
    pub fn literal_left(&self) -> Option<u64> {
        match self.state {
            State::Literal { remaining } => Some(remaining),
            _ => None,
        }
    }

    /// Passes `n` bytes of the literal in progress without seeing them (the relay moved them
    /// from socket to socket in the kernel, `splice(2)`); at most [`Framer::literal_left`].
    /// Returns how many were passed (0 outside a literal).
    pub fn pass_literal(&mut self, n: u64) -> u64 {
        let State::Literal { remaining } = self.state else { return 0 };
        let n = n.min(remaining);
        self.refusable = false;
        self.state = if n == remaining { State::Continuation } else { State::Literal { remaining: remaining - n } };
        n
    }

    /// Drops the rest of the current message: the next line starts a new one. Used after the
    /// caller refused a message and discarded its literal by other means.
    pub fn reset(&mut self) {
        self.state = State::MessageStart;
        self.scanned = 0;
        self.refusable = false;
    }

    /// Whether `buf` is exactly one whole first line of a message, announcing no literal: what
    /// [`Framer::next`] would frame as `Line { len: buf.len(), first: true, literal: None }`
    /// (a relay lane sends such input before it is framed: `policy/express.rs`).
    pub fn whole_line(&self, buf: &[u8]) -> bool {
        let Some((&b'\n', line)) = buf.split_last() else { return false };
        self.at_message_start()
            && buf.len() <= self.max_line
            && find_newline(line).is_none()
            && literal_at_end(buf).is_none()
    }

    /// The next fragment at the front of `buf`, or `None` when more bytes are needed. The caller
    /// must remove the fragment's `len` bytes from the front of its buffer before calling again.
    pub fn next(&mut self, buf: &[u8]) -> Option<Fragment> {
        let fragment = self.frame(buf);
        self.refusable = match fragment {
            Some(Fragment::Line { literal, .. } | Fragment::Overlong { end: true, literal, .. }) => {
                literal.is_some_and(|l| l.sync)
            }
            Some(_) => false,
            None => self.refusable,
        };
        fragment
    }

    /// Refuses the synchronizing literal that the fragment just returned announced: the peer
    /// was not sent `+`, so it sends neither the literal nor the rest of its message (RFC 3501
    /// 7.5), and the next line starts a new message. Returns false, changing nothing, when
    /// that fragment announced no synchronizing literal: a non-synchronizing literal comes
    /// regardless, so it must be framed (and dropped) like any other.
    pub fn refuse_literal(&mut self) -> bool {
        if !self.refusable {
            return false;
        }
        self.refusable = false;
        self.state = State::MessageStart;
        self.scanned = 0;
        true
    }

    fn frame(&mut self, buf: &[u8]) -> Option<Fragment> {
        match self.state {
            State::Literal { remaining } => {
                if buf.is_empty() {
                    return None;
                }
                let len = (buf.len() as u64).min(remaining);
                let remaining = remaining - len;
                let last = remaining == 0;
                self.state = if last { State::Continuation } else { State::Literal { remaining } };
                Some(Fragment::LiteralData { len: len as usize, last })
            }
            State::MessageStart | State::Continuation => {
                let first = self.state == State::MessageStart;
                let limit = buf.len().min(self.max_line);
                match find_newline(&buf[self.scanned.min(limit)..limit]) {
                    Some(i) => {
                        let len = self.scanned.min(limit) + i + 1;
                        self.scanned = 0;
                        let literal = literal_at_end(&buf[..len]);
                        self.after_line(literal);
                        Some(Fragment::Line { len, first, literal })
                    }
                    None if buf.len() >= self.max_line => {
                        // Too long to buffer: hand it out in pieces, keeping a tail back.
                        self.scanned = 0;
                        self.state = State::Overlong { first };
                        Some(Fragment::Overlong {
                            len: buf.len() - TAIL,
                            start: true,
                            first,
                            end: false,
                            literal: None,
                        })
                    }
                    None => {
                        self.scanned = limit;
                        None
                    }
                }
            }
            State::Overlong { first } => match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    let literal = literal_at_end(&buf[..=i]);
                    self.after_line(literal);
                    Some(Fragment::Overlong { len: i + 1, start: false, first, end: true, literal })
                }
                None if buf.len() > TAIL => {
                    Some(Fragment::Overlong { len: buf.len() - TAIL, start: false, first, end: false, literal: None })
                }
                None => None,
            },
        }
    }

    fn after_line(&mut self, literal: Option<Literal>) {
        self.state = match literal {
            Some(Literal { len: 0, .. }) => State::Continuation,
            Some(Literal { len, .. }) => State::Literal { remaining: len },
            None => State::MessageStart,
        };
    }
}

/// The first LF in `bytes`. Most commands are short, where a plain scan costs less than the
/// vector search's set-up (which wins from a few dozen bytes on: status responses).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    if bytes.len() <= 16 {
        return bytes.iter().position(|&b| b == b'\n');
    }
    memchr::memchr(b'\n', bytes)
}

/// The literal announced at the end of `line` (which includes its line end), if any.
pub fn literal_at_end(line: &[u8]) -> Option<Literal> {
    // Slice patterns: byte compares (`strip_suffix` compares slices).
    let ([inner @ .., b'}', b'\r', b'\n'] | [inner @ .., b'}', b'\n']) = line else { return None };
    let open = memchr::memrchr(b'{', inner)?;
    let (digits, sync) = match inner[open + 1..].strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (&inner[open + 1..], true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let binary = open > 0 && inner[open - 1] == b'~';
    Some(Literal { len, sync, binary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_bytes_passed_unseen_keep_the_stream_in_step() {
        let mut f = Framer::new(1024);
        let head = b"* 1 FETCH (BODY[] {10}\r\n";
        assert!(matches!(f.next(head), Some(Fragment::Line { literal: Some(Literal { len: 10, .. }), .. })));
        assert_eq!(f.literal_left(), Some(10));
        assert_eq!(f.pass_literal(4), 4);
        assert_eq!(f.literal_left(), Some(6));
        assert_eq!(f.next(b"56"), Some(Fragment::LiteralData { len: 2, last: false }));
        assert_eq!(f.pass_literal(100), 4, "never beyond the literal");
        assert_eq!(f.literal_left(), None);
        assert_eq!(f.next(b")\r\n"), Some(Fragment::Line { len: 3, first: false, literal: None }));
        assert!(f.at_message_start());
        assert_eq!(f.pass_literal(5), 0, "outside a literal nothing passes");
    }

    /// Frames `input` fed in pieces of `step` bytes; returns each fragment with its bytes.
    fn frame(input: &[u8], step: usize, max_line: usize) -> Vec<(Fragment, Vec<u8>)> {
        let mut framer = Framer::new(max_line);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            while let Some(f) = framer.next(&buf) {
                let len = match f {
                    Fragment::Line { len, .. } | Fragment::LiteralData { len, .. } | Fragment::Overlong { len, .. } => {
                        len
                    }
                };
                out.push((f, buf.drain(..len).collect()));
            }
        }
        assert!(buf.is_empty() || !framer.at_message_start() || out.is_empty() || buf.iter().all(|&b| b != b'\n'));
        out
    }

    /// Merges consecutive literal pieces so results compare across feed sizes.
    fn normalised(frags: Vec<(Fragment, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for (f, bytes) in frags {
            let kind = match f {
                Fragment::Line { first, literal, .. } => format!("line first={first} lit={literal:?}"),
                Fragment::LiteralData { .. } => "literal".into(),
                Fragment::Overlong { first, .. } => format!("overlong first={first}"),
            };
            match out.last_mut() {
                Some((k, b)) if *k == kind && (kind == "literal" || kind.starts_with("overlong")) => b.extend(bytes),
                _ => out.push((kind, bytes)),
            }
        }
        out
    }

    #[test]
    fn lines_and_literals_any_split() {
        let input: &[u8] = b"a1 LOGIN {5}\r\nalice {6+}\r\nsecret\r\na2 APPEND INBOX ~{3}\r\n\x00\r\n\r\na3 NOOP\r\n";
        let whole = normalised(frame(input, input.len(), 1024));
        for step in 1..input.len() {
            assert_eq!(normalised(frame(input, step, 1024)), whole, "step {step}");
        }
        let kinds: Vec<_> = whole.iter().map(|(k, b)| (k.as_str(), String::from_utf8_lossy(b).into_owned())).collect();
        assert_eq!(kinds[0].1, "a1 LOGIN {5}\r\n");
        assert!(kinds[0].0.contains("len: 5, sync: true"));
        assert_eq!(kinds[1], ("literal", "alice".into()));
        assert!(kinds[2].0.starts_with("line first=false") && kinds[2].0.contains("sync: false"));
        assert_eq!(kinds[3], ("literal", "secret".into()));
        assert_eq!(kinds[4].1, "\r\n");
        assert!(kinds[5].0.contains("binary: true"));
        assert_eq!(kinds[6].1, "\x00\r\n");
        assert_eq!(kinds[8], ("line first=true lit=None", "a3 NOOP\r\n".into()));
    }

    #[test]
    fn zero_length_literal_continues_the_message() {
        let out = normalised(frame(b"a APPEND x {0}\r\n\r\nb NOOP\r\n", 1, 1024));
        assert_eq!(out.len(), 3);
        assert!(out[1].0.starts_with("line first=false"));
        assert!(out[2].0.starts_with("line first=true"));
    }

    #[test]
    fn literal_bytes_are_never_lines() {
        let input = b"* 1 FETCH (BODY[] {13}\r\na2 LOGOUT\r\nxx)\r\n";
        let out = normalised(frame(input, 3, 1024));
        assert_eq!(out[1], ("literal".into(), b"a2 LOGOUT\r\nxx".to_vec()));
        assert_eq!(out[2].1, b")\r\n");
    }

    #[test]
    fn overlong_line_is_framed_in_pieces_and_keeps_its_literal() {
        let mut input = b"a1 SEARCH ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 500));
        input.extend(b" {3}\r\nabc\r\na2 NOOP\r\n");
        for step in [1, 7, 64, 1000] {
            let frags = frame(&input, step, 100);
            let overlong: Vec<u8> = frags
                .iter()
                .filter(|(f, _)| matches!(f, Fragment::Overlong { .. }))
                .flat_map(|(_, b)| b.clone())
                .collect();
            assert_eq!(overlong.len(), 10 + 500 + 6, "step {step}");
            assert!(frags.iter().any(|(f, _)| matches!(f, Fragment::Overlong { start: true, .. })));
            let end = frags.iter().find(|(f, _)| matches!(f, Fragment::Overlong { end: true, .. })).unwrap();
            assert!(matches!(end.0, Fragment::Overlong { literal: Some(Literal { len: 3, .. }), .. }), "step {step}");
            assert_eq!(frags.last().unwrap().1, b"a2 NOOP\r\n");
        }
    }

    #[test]
    fn announcement_parsing() {
        assert_eq!(literal_at_end(b"x {12}\r\n"), Some(Literal { len: 12, sync: true, binary: false }));
        assert_eq!(literal_at_end(b"x {12+}\n"), Some(Literal { len: 12, sync: false, binary: false }));
        assert!(literal_at_end(b"x ~{1}\r\n").unwrap().binary);
        for not in [
            &b"x {}\r\n"[..],
            b"x {1a}\r\n",
            b"x {12}",
            b"x 12}\r\n",
            b"x {99999999999999999999}\r\n",
            b"x \"{5}\"\r\n",
        ] {
            assert_eq!(literal_at_end(not), None, "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn a_refused_literal_starts_a_new_message() {
        let mut f = Framer::new(1024);
        assert!(matches!(f.next(b"a APPEND x {99}\r\n"), Some(Fragment::Line { literal: Some(_), .. })));
        assert!(f.refuse_literal());
        assert!(f.at_message_start());
        assert!(!f.refuse_literal(), "only once");
        assert!(matches!(f.next(b"b NOOP\r\n"), Some(Fragment::Line { first: true, literal: None, .. })));
        // A zero-length synchronizing literal waits for "+" too.
        assert!(matches!(f.next(b"c APPEND x {0}\r\n"), Some(Fragment::Line { .. })));
        assert!(f.refuse_literal());
        assert!(matches!(f.next(b"d NOOP\r\n"), Some(Fragment::Line { first: true, .. })));
    }

    #[test]
    fn only_a_just_announced_synchronizing_literal_can_be_refused() {
        let mut f = Framer::new(1024);
        assert!(matches!(f.next(b"a APPEND x {3+}\r\n"), Some(Fragment::Line { .. })));
        assert!(!f.refuse_literal(), "a non-synchronizing literal comes anyway");
        assert!(f.in_literal());
        let mut f = Framer::new(1024);
        f.next(b"a APPEND x {3}\r\n");
        assert!(f.next(b"ab").is_some());
        assert!(!f.refuse_literal(), "its bytes are arriving: too late");
        assert!(f.next(b"c").is_some());
        assert!(!f.refuse_literal());
        let mut f = Framer::new(1024);
        f.next(b"a NOOP\r\n");
        assert!(!f.refuse_literal());
        // Waiting for more bytes keeps the announcement refusable.
        let mut f = Framer::new(1024);
        f.next(b"a APPEND x {3}\r\n");
        assert!(f.next(b"").is_none());
        assert!(f.refuse_literal());
    }
}
