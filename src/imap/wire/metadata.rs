//! RFC 5464 METADATA as the proxy reads and writes it: GETMETADATA / SETMETADATA as types,
//! entry names checked, the depth rules, and the response format (values as literals, as
//! Dovecot writes them and COI clients expect). Shared by the COI and WebPush wings, with the
//! contract by which a wing answers a subtree of entries itself ([`EntryOwner`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;

use super::command::{self, Arg, Command};

/// How deep below a requested entry to return entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Zero,
    One,
    Infinity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetMetadata {
    pub mailbox: Vec<u8>,
    pub entries: Vec<String>,
    pub depth: Depth,
    pub max_size: Option<u64>,
}

/// Entries with their values; `None` is NIL (absent, or to be deleted).
pub type Entries = Vec<(String, Option<Vec<u8>>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMetadata {
    pub mailbox: Vec<u8>,
    /// `None` deletes the entry.
    pub entries: Entries,
}

/// A GETMETADATA or SETMETADATA whose arguments break RFC 5464's grammar; the text says how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub &'static str);

/// An entry of a subtree that exists on the server level only, set on a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the entries of {0} exist on the server level only (mailbox \"\")")]
pub struct NotServerLevel(pub &'static str);

/// An entry and its value (`None`: NIL) as a SETMETADATA gives them.
pub type EntryRef<'a> = (&'a String, Option<&'a [u8]>);

impl SetMetadata {
    /// The entries in `subtree` (the entry itself or below it), with their values; entries of
    /// such a subtree exist on the server level only.
    pub fn entries_in(&self, subtree: &'static str) -> Result<Vec<EntryRef<'_>>, NotServerLevel> {
        let mine: Vec<_> =
            self.entries.iter().filter(|(e, _)| in_subtree(e, subtree)).map(|(e, v)| (e, v.as_deref())).collect();
        if !mine.is_empty() && !self.mailbox.is_empty() {
            return Err(NotServerLevel(subtree));
        }
        Ok(mine)
    }
}

/// Whether `entry` is `subtree` or lies below it.
pub fn in_subtree(entry: &str, subtree: &str) -> bool {
    entry.strip_prefix(subtree).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// How a refused METADATA command is answered (the codes of RFC 5464 and RFC 5530); the
/// session writes the response, with the error's text after the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `BAD`: the command is malformed.
    Bad,
    /// `NO [CANNOT]`: the request can never succeed as made.
    Cannot,
    /// `NO [UNAVAILABLE]`: it may succeed later.
    Unavailable,
    /// `NO [METADATA MAXSIZE n]`: a value is over the limit.
    MaxSize(u64),
    /// `NO [METADATA TOOMANY]`: the account has too many entries.
    TooMany,
}

/// An error a METADATA command can end with, and how the session answers it.
pub trait Refusal: std::error::Error {
    fn status(&self) -> Status;
}

impl Refusal for SyntaxError {
    fn status(&self) -> Status {
        Status::Bad
    }
}

/// A subtree of entries a wing answers itself and the provider never sees (WebPush's VAPID key
/// and subscriptions). The session plugs one into the COI interceptor, which hands it what a
/// command asks of the subtree.
pub trait EntryOwner: Send {
    type Error: Refusal + Send;

    /// The subtree, e.g. `/private/vendor/vendor.dovecot/webpush`.
    fn subtree(&self) -> &'static str;

    /// The entries a GETMETADATA may return (made on first use, so a store write may come first).
    fn available(&self) -> impl Future<Output = BTreeMap<String, Vec<u8>>> + Send;

    /// Checks the entries of `set` in the subtree (on the server level), then carries them out
    /// in order; stops at the first refusal.
    fn set(&mut self, set: &SetMetadata) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Parses the arguments of a GETMETADATA command.
pub fn parse_get(cmd: &Command) -> Result<GetMetadata, SyntaxError> {
    let mut args = cmd.args.iter().peekable();
    let (mut depth, mut max_size) = (Depth::Zero, None);
    if let Some(Arg::List(options)) = args.peek() {
        let mut it = options.iter();
        while let Some(name) = it.next() {
            let value = it.next().and_then(atom_or_string).ok_or(SyntaxError("Option without a value"))?;
            match name.astring().map(|n| n.to_ascii_uppercase()).as_deref() {
                Some(b"DEPTH") => {
                    depth = match value.to_ascii_lowercase().as_slice() {
                        b"0" => Depth::Zero,
                        b"1" => Depth::One,
                        b"infinity" => Depth::Infinity,
                        _ => return Err(SyntaxError("DEPTH must be 0, 1 or infinity")),
                    }
                }
                Some(b"MAXSIZE") => {
                    let n = std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok());
                    max_size = Some(n.ok_or(SyntaxError("MAXSIZE must be a number"))?);
                }
                _ => return Err(SyntaxError("Unknown GETMETADATA option")),
            }
        }
        args.next();
    }
    let mailbox = args.next().and_then(Arg::astring).ok_or(SyntaxError("Missing mailbox"))?.to_vec();
    let entries = match args.next() {
        Some(Arg::List(list)) => list.iter().map(entry_name).collect::<Result<Vec<_>, _>>()?,
        Some(single) => vec![entry_name(single)?],
        None => return Err(SyntaxError("Missing entries")),
    };
    if entries.is_empty() || args.next().is_some() {
        return Err(SyntaxError("Invalid arguments"));
    }
    Ok(GetMetadata { mailbox, entries, depth, max_size })
}

/// Parses the arguments of a SETMETADATA command.
pub fn parse_set(cmd: &Command) -> Result<SetMetadata, SyntaxError> {
    let [mailbox, Arg::List(pairs)] = cmd.args.as_slice() else {
        return Err(SyntaxError("Invalid arguments"));
    };
    let mailbox = mailbox.astring().ok_or(SyntaxError("Missing mailbox"))?.to_vec();
    if pairs.is_empty() || pairs.len() % 2 != 0 {
        return Err(SyntaxError("Entries and values must come in pairs"));
    }
    let entries = pairs
        .chunks(2)
        .map(|pair| {
            let value = match &pair[1] {
                Arg::Nil => None,
                other => Some(atom_or_string(other).ok_or(SyntaxError("Invalid value"))?),
            };
            Ok((entry_name(&pair[0])?, value))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SetMetadata { mailbox: mailbox.to_vec(), entries })
}

fn atom_or_string(arg: &Arg) -> Option<Vec<u8>> {
    arg.astring().map(<[u8]>::to_vec)
}

/// An entry name, checked per RFC 5464 section 3.2: `/private` or `/shared`, no empty
/// components, no wildcards.
fn entry_name(arg: &Arg) -> Result<String, SyntaxError> {
    let name = arg.astring().ok_or(SyntaxError("Invalid entry name"))?;
    let name = std::str::from_utf8(name).map_err(|_| SyntaxError("Invalid entry name"))?;
    let lower = name.to_ascii_lowercase();
    let scoped =
        lower == "/private" || lower == "/shared" || lower.starts_with("/private/") || lower.starts_with("/shared/");
    let clean = !name.ends_with('/')
        && !name.contains("//")
        && !name.contains(['*', '%'])
        && name.bytes().all(|b| b > 0x19 && b < 0x7f);
    if !scoped || !clean {
        return Err(SyntaxError("Invalid entry name"));
    }
    Ok(lower)
}

/// Whether a request for `requested` at `depth` covers `entry`.
pub fn covers(requested: &str, depth: Depth, entry: &str) -> bool {
    if entry == requested {
        return true;
    }
    let Some(rest) = entry.strip_prefix(requested).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    match depth {
        Depth::Zero => false,
        Depth::One => !rest.contains('/'),
        Depth::Infinity => true,
    }
}

/// Whether a request for `requested` at `depth` may reach into `subtree`.
pub fn reaches(requested: &str, depth: Depth, subtree: &str) -> bool {
    requested == subtree
        || requested.starts_with(&format!("{subtree}/"))
        || (depth != Depth::Zero && subtree.starts_with(&format!("{requested}/")))
}

/// Selects, from `available` entries, what a GETMETADATA returns: every requested entry that
/// exists (or NIL for a missing one asked for at depth 0), the covered descendants, and entries
/// over MAXSIZE left out. Returns the entries and the LONGENTRIES value, if any. Linear in the
/// entries asked for and found (a client may ask for tens of thousands).
pub fn select(req: &GetMetadata, available: &BTreeMap<String, Vec<u8>>) -> (Entries, Option<u64>) {
    select_by(req, available, |v| v.len() as u64)
}

/// [`select`] over entries whose values are anything with a size (e.g. only the sizes, when
/// the values are read later, as the response is written out).
pub fn select_by<V: Clone>(
    req: &GetMetadata,
    available: &BTreeMap<String, V>,
    size: impl Fn(&V) -> u64,
) -> (Vec<(String, Option<V>)>, Option<u64>) {
    let mut out: Vec<(String, Option<V>)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut longest: Option<u64> = None;
    let mut push = |entry: &str, value: Option<&V>, out: &mut Vec<(String, Option<V>)>| {
        if seen.contains(entry) {
            return;
        }
        seen.insert(entry.to_string());
        if let (Some(max), Some(v)) = (req.max_size, value)
            && size(v) > max
        {
            longest = Some(longest.map_or(size(v), |l| l.max(size(v))));
            return;
        }
        out.push((entry.to_string(), value.cloned()));
    };
    for requested in &req.entries {
        match available.get(requested) {
            Some(v) => push(requested, Some(v), &mut out),
            None if req.depth == Depth::Zero => push(requested, None, &mut out),
            None => {}
        }
        if req.depth != Depth::Zero {
            let below = format!("{requested}/");
            for (entry, value) in available.range(below.clone()..) {
                if !entry.starts_with(&below) {
                    break;
                }
                if covers(requested, req.depth, entry) {
                    push(entry, Some(value), &mut out);
                }
            }
        }
    }
    (out, longest)
}

/// Where each entry of a response goes, in the order a provider answers: by the first requested
/// entry that covers it, then by name. Looks up the entry and its ancestors (those a depth
/// reaches) in a map of the requested entries, so that sorting many entries stays fast.
pub struct RequestOrder<'a> {
    first: HashMap<&'a str, usize>,
    depth: Depth,
}

impl<'a> RequestOrder<'a> {
    pub fn new(req: &'a GetMetadata) -> RequestOrder<'a> {
        let mut first = HashMap::with_capacity(req.entries.len());
        for (i, e) in req.entries.iter().enumerate() {
            first.entry(e.as_str()).or_insert(i);
        }
        RequestOrder { first, depth: req.depth }
    }

    /// The index of the first requested entry that covers `entry` (`usize::MAX`: none).
    pub fn position(&self, entry: &str) -> usize {
        let mut best = self.first.get(entry).copied().unwrap_or(usize::MAX);
        if self.depth == Depth::Zero {
            return best;
        }
        let mut ancestor = entry;
        let mut levels = 0;
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            levels += 1;
            if parent.is_empty() || (self.depth == Depth::One && levels > 1) {
                break;
            }
            if let Some(&i) = self.first.get(parent) {
                best = best.min(i);
            }
            ancestor = parent;
        }
        best
    }
}

/// `* METADATA <mailbox> (<entry> <value> ...)` with every value as a literal.
pub fn format_response(mailbox: &[u8], entries: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut out = b"* METADATA ".to_vec();
    out.extend(format_mailbox(mailbox));
    out.push(b' ');
    out.extend(format_entries(entries));
    out.extend_from_slice(b"\r\n");
    out
}

/// `(<entry> <value> ...)`, values as literals or NIL: the list of a METADATA response, and of a
/// SETMETADATA the proxy sends.
pub fn format_entries(entries: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut out = b"(".to_vec();
    for (i, (entry, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(entry.as_bytes());
        match value {
            Some(v) => {
                out.extend_from_slice(format!(" {{{}}}\r\n", v.len()).as_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(b" NIL"),
        }
    }
    out.push(b')');
    out
}

/// A mailbox name as an atom where it can be (`INBOX`), else quoted (`""`), else a literal.
pub fn format_mailbox(mailbox: &[u8]) -> Vec<u8> {
    if !mailbox.is_empty() && mailbox.iter().all(|&b| command::is_atom_char(b)) {
        mailbox.to_vec()
    } else {
        command::astring(mailbox, false)
    }
}

/// Parses `* METADATA <mailbox> (<entry> <value> ...)` responses (from a provider).
pub fn parse_response(resp: &[u8]) -> Option<(Vec<u8>, Entries)> {
    // The response grammar is the command grammar's: reuse the command parser on it.
    let body = resp.strip_prefix(b"* ")?;
    let cmd = command::parse(&[b"x ", body].concat()).ok()?;
    if cmd.name != "METADATA" {
        return None;
    }
    let [mailbox, Arg::List(items)] = cmd.args.as_slice() else { return None };
    let entries = items
        .chunks(2)
        .filter_map(|pair| match pair {
            [e, Arg::Nil] => Some((String::from_utf8_lossy(e.astring()?).to_ascii_lowercase(), None)),
            [e, v] => Some((String::from_utf8_lossy(e.astring()?).to_ascii_lowercase(), Some(v.astring()?.to_vec()))),
            _ => None,
        })
        .collect();
    Some((mailbox.astring()?.to_vec(), entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::wire::command::parse;

    fn get(line: &str) -> Result<GetMetadata, SyntaxError> {
        parse_get(&parse(line.as_bytes()).unwrap())
    }
    fn set(line: &[u8]) -> Result<SetMetadata, SyntaxError> {
        parse_set(&parse(line).unwrap())
    }

    #[test]
    fn options_entries_and_errors() {
        let req = get("a GETMETADATA (MAXSIZE 1024 DEPTH infinity) INBOX /private/comment\r\n").unwrap();
        assert_eq!((req.max_size, req.depth, req.mailbox.as_slice()), (Some(1024), Depth::Infinity, &b"INBOX"[..]));
        assert_eq!(req.entries, vec!["/private/comment"]);
        for bad in [
            "a GETMETADATA \"\"\r\n",
            "a GETMETADATA (DEPTH 2) \"\" /private\r\n",
            "a GETMETADATA \"\" /other/x\r\n",
            "a GETMETADATA \"\" /private/x/\r\n",
            "a GETMETADATA \"\" /private//x\r\n",
            "a GETMETADATA \"\" (/private/*)\r\n",
            "a GETMETADATA (FOO 1) \"\" /private\r\n",
        ] {
            assert!(matches!(get(bad), Err(SyntaxError(_))), "{bad}");
        }
        assert!(set(b"a SETMETADATA \"\" (/private/x)\r\n").is_err());
        assert!(set(b"a SETMETADATA \"\" /private/x v\r\n").is_err());
        assert!(parse_set(&parse(b"a SETMETADATA \"\" ()\r\n").unwrap()).is_err());
    }

    #[test]
    fn selection_depth_nil_and_maxsize() {
        let mut avail = BTreeMap::new();
        avail.insert("/private/a".to_string(), b"1".to_vec());
        avail.insert("/private/a/b".to_string(), b"22".to_vec());
        avail.insert("/private/a/b/c".to_string(), b"333".to_vec());
        avail.insert("/private/ab".to_string(), b"x".to_vec());
        let req = |entries: &[&str], depth, max_size| GetMetadata {
            mailbox: vec![],
            entries: entries.iter().map(|e| e.to_string()).collect(),
            depth,
            max_size,
        };
        let names =
            |r: &GetMetadata| select(r, &avail).0.into_iter().map(|(e, v)| (e, v.is_some())).collect::<Vec<_>>();
        assert_eq!(
            names(&req(&["/private/a", "/private/zz"], Depth::Zero, None)),
            vec![("/private/a".into(), true), ("/private/zz".into(), false)]
        );
        assert_eq!(names(&req(&["/private/a"], Depth::One, None)).len(), 2);
        assert_eq!(names(&req(&["/private/a"], Depth::Infinity, None)).len(), 3);
        assert_eq!(
            names(&req(&["/private"], Depth::One, None)),
            vec![("/private/a".into(), true), ("/private/ab".into(), true)]
        );
        let (entries, long) = select(&req(&["/private/a"], Depth::Infinity, Some(2)), &avail);
        assert_eq!(entries.len(), 2);
        assert_eq!(long, Some(3));
    }

    #[test]
    fn request_order_matches_covers() {
        let req = |entries: &[&str], depth| GetMetadata {
            mailbox: vec![],
            entries: entries.iter().map(|e| e.to_string()).collect(),
            depth,
            max_size: None,
        };
        let names = ["/private/a", "/private/a/b", "/private/a/b/c", "/private/ab", "/shared/x", "/private"];
        for depth in [Depth::Zero, Depth::One, Depth::Infinity] {
            let r = req(&["/shared", "/private/a/b", "/private", "/private/a"], depth);
            let order = RequestOrder::new(&r);
            for name in names {
                let slow = r.entries.iter().position(|q| covers(q, depth, name)).unwrap_or(usize::MAX);
                assert_eq!(order.position(name), slow, "{name} at {depth:?}");
            }
        }
    }

    #[test]
    fn forty_thousand_names_are_parsed_and_selected_fast() {
        let mut cmd = b"big GETMETADATA \"\" (".to_vec();
        for i in 0..40_000 {
            let name = format!("/private/e{i:05}");
            cmd.extend_from_slice(format!("{{{}+}}\r\n{name} ", name.len()).as_bytes());
        }
        cmd.pop();
        cmd.extend_from_slice(b")\r\n");
        let started = std::time::Instant::now();
        let req = parse_get(&parse(&cmd).unwrap()).unwrap();
        let mut available = BTreeMap::new();
        available.insert("/private/e00007".to_string(), b"x".to_vec());
        let (found, _) = select(&req, &available);
        let order = RequestOrder::new(&req);
        let mut found = found;
        found.sort_by_cached_key(|(e, _)| (order.position(e), e.clone()));
        let response = format_response(&req.mailbox, &found);
        let took = started.elapsed();
        assert_eq!(found.len(), 40_000);
        assert!(response.ends_with(b"/private/e39999 NIL)\r\n"));
        // Unoptimised test builds are slow; quadratic work took minutes here.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn provider_responses_parse() {
        let (mb, entries) =
            parse_response(b"* METADATA \"\" (/private/comment {2}\r\nhi /shared/comment NIL)\r\n").unwrap();
        assert!(mb.is_empty());
        assert_eq!(entries, vec![("/private/comment".into(), Some(b"hi".to_vec())), ("/shared/comment".into(), None)]);
        assert!(parse_response(b"* 3 EXISTS\r\n").is_none());
    }

    #[test]
    fn subtrees() {
        assert!(in_subtree("/private/a", "/private/a") && in_subtree("/private/a/b", "/private/a"));
        assert!(!in_subtree("/private/ab", "/private/a"));
        let req = set(b"a SETMETADATA INBOX (/private/a/x 1 /private/b 2)\r\n").unwrap();
        assert_eq!(req.entries_in("/private/a"), Err(NotServerLevel("/private/a")));
        assert_eq!(req.entries_in("/private/c"), Ok(vec![]));
        let req = set(b"a SETMETADATA \"\" (/private/a/x 1 /private/b NIL)\r\n").unwrap();
        assert_eq!(req.entries_in("/private/b"), Ok(vec![(&"/private/b".to_string(), None)]));
    }
}
