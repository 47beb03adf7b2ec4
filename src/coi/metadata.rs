//! RFC 5464 METADATA: the commands as types, the COI configuration entries, validation, and the
//! response format (values as literals, as Dovecot writes them and COI clients expect).
//!
//! Pure functions only; where the entries live (provider or local store) is decided elsewhere.

use std::collections::BTreeMap;

use crate::imap::wire::command::{Arg, Command};

/// Where the COI server configuration lives (COI server spec, "Getting COI Namespace Configuration").
pub const COI_CONFIG: &str = "/private/vendor/vendor.dovecot/coi/config";
pub const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
pub const MAILBOX_ROOT: &str = "/private/vendor/vendor.dovecot/coi/config/mailbox-root";
pub const MESSAGE_FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
/// The subtree the proxy answers for itself, whatever the provider stores.
pub const COI_SUBTREE: &str = "/private/vendor/vendor.dovecot/coi";
/// The WebPush subtree, also answered by the proxy (see `push::entries`).
pub const WEBPUSH_SUBTREE: &str = crate::push::entries::SUBTREE;

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

/// The COI message filter mode (COI server spec, "Configure Message Filtering").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    None,
    Active,
    Seen,
}

impl Filter {
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Active => "active",
            Filter::Seen => "seen",
        }
    }

    pub fn parse(value: &[u8]) -> Option<Filter> {
        match value {
            b"none" => Some(Filter::None),
            b"active" => Some(Filter::Active),
            b"seen" => Some(Filter::Seen),
            _ => None,
        }
    }
}

/// An account's COI configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoiConfig {
    pub enabled: bool,
    pub filter: Filter,
}

impl CoiConfig {
    /// Reads the configuration from stored entry values (absent or unknown values mean the default).
    pub fn from_values(enabled: Option<&[u8]>, filter: Option<&[u8]>) -> CoiConfig {
        CoiConfig { enabled: enabled == Some(b"yes"), filter: filter.and_then(Filter::parse).unwrap_or_default() }
    }

    /// The filter that is in force: filtering only happens while COI is enabled.
    pub fn effective_filter(&self) -> Filter {
        if self.enabled { self.filter } else { Filter::None }
    }
}

/// Why a METADATA command was refused; `Display` is the response text after the tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("BAD {0}")]
    Syntax(&'static str),
    #[error("NO [CANNOT] unable to set read-only entry {MAILBOX_ROOT}")]
    ReadOnly,
    #[error("NO [CANNOT] invalid value for {ENABLED}: \"{0}\"")]
    InvalidEnabled(String),
    #[error("NO [CANNOT] invalid value for {MESSAGE_FILTER}: {0}")]
    InvalidFilter(String),
    #[error("NO [METADATA MAXSIZE {0}] Entry value too large")]
    TooLarge(u64),
    #[error("NO [METADATA TOOMANY] Too many entries")]
    TooMany,
    #[error("NO [CANNOT] COI entries exist on the server level only (mailbox \"\")")]
    NotServerLevel,
}

/// Parses the arguments of a GETMETADATA command.
pub fn parse_get(cmd: &Command) -> Result<GetMetadata, MetadataError> {
    let mut args = cmd.args.iter().peekable();
    let (mut depth, mut max_size) = (Depth::Zero, None);
    if let Some(Arg::List(options)) = args.peek() {
        let mut it = options.iter();
        while let Some(name) = it.next() {
            let value = it.next().and_then(atom_or_string).ok_or(MetadataError::Syntax("Option without a value"))?;
            match name.astring().map(|n| n.to_ascii_uppercase()).as_deref() {
                Some(b"DEPTH") => {
                    depth = match value.to_ascii_lowercase().as_slice() {
                        b"0" => Depth::Zero,
                        b"1" => Depth::One,
                        b"infinity" => Depth::Infinity,
                        _ => return Err(MetadataError::Syntax("DEPTH must be 0, 1 or infinity")),
                    }
                }
                Some(b"MAXSIZE") => {
                    let n = std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok());
                    max_size = Some(n.ok_or(MetadataError::Syntax("MAXSIZE must be a number"))?);
                }
                _ => return Err(MetadataError::Syntax("Unknown GETMETADATA option")),
            }
        }
        args.next();
    }
    let mailbox = args.next().and_then(Arg::astring).ok_or(MetadataError::Syntax("Missing mailbox"))?.to_vec();
    let entries = match args.next() {
        Some(Arg::List(list)) => list.iter().map(entry_name).collect::<Result<Vec<_>, _>>()?,
        Some(single) => vec![entry_name(single)?],
        None => return Err(MetadataError::Syntax("Missing entries")),
    };
    if entries.is_empty() || args.next().is_some() {
        return Err(MetadataError::Syntax("Invalid arguments"));
    }
    Ok(GetMetadata { mailbox, entries, depth, max_size })
}

/// Parses the arguments of a SETMETADATA command.
pub fn parse_set(cmd: &Command) -> Result<SetMetadata, MetadataError> {
    let [mailbox, Arg::List(pairs)] = cmd.args.as_slice() else {
        return Err(MetadataError::Syntax("Invalid arguments"));
    };
    let mailbox = mailbox.astring().ok_or(MetadataError::Syntax("Missing mailbox"))?.to_vec();
    if pairs.is_empty() || pairs.len() % 2 != 0 {
        return Err(MetadataError::Syntax("Entries and values must come in pairs"));
    }
    let entries = pairs
        .chunks(2)
        .map(|pair| {
            let value = match &pair[1] {
                Arg::Nil => None,
                other => Some(atom_or_string(other).ok_or(MetadataError::Syntax("Invalid value"))?),
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
fn entry_name(arg: &Arg) -> Result<String, MetadataError> {
    let name = arg.astring().ok_or(MetadataError::Syntax("Invalid entry name"))?;
    let name = std::str::from_utf8(name).map_err(|_| MetadataError::Syntax("Invalid entry name"))?;
    let lower = name.to_ascii_lowercase();
    let scoped =
        lower == "/private" || lower == "/shared" || lower.starts_with("/private/") || lower.starts_with("/shared/");
    let clean = !name.ends_with('/')
        && !name.contains("//")
        && !name.contains(['*', '%'])
        && name.bytes().all(|b| b > 0x19 && b < 0x7f);
    if !scoped || !clean {
        return Err(MetadataError::Syntax("Invalid entry name"));
    }
    Ok(lower)
}

/// Whether `entry` belongs to a subtree the proxy answers for (COI, WebPush).
pub fn is_coi_entry(entry: &str) -> bool {
    [COI_SUBTREE, WEBPUSH_SUBTREE].iter().any(|t| entry == *t || entry.starts_with(&format!("{t}/")))
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

/// Whether a request for `requested` at `depth` may reach into a subtree the proxy answers
/// for (`select` applies the exact depth rules afterwards).
pub fn reaches_coi(requested: &str, depth: Depth) -> bool {
    reaches(requested, depth, COI_SUBTREE) || reaches(requested, depth, WEBPUSH_SUBTREE)
}

/// Whether a request for `requested` at `depth` may reach into `subtree`.
pub fn reaches(requested: &str, depth: Depth, subtree: &str) -> bool {
    requested == subtree
        || requested.starts_with(&format!("{subtree}/"))
        || (depth != Depth::Zero && subtree.starts_with(&format!("{requested}/")))
}

/// The COI entries with their values, for answering GETMETADATA.
pub fn coi_entries(config: &CoiConfig, mailbox_root: &str) -> BTreeMap<String, Vec<u8>> {
    let mut entries = BTreeMap::new();
    if config.enabled {
        entries.insert(ENABLED.to_string(), b"yes".to_vec());
    }
    entries.insert(MAILBOX_ROOT.to_string(), mailbox_root.as_bytes().to_vec());
    entries.insert(MESSAGE_FILTER.to_string(), config.filter.as_str().as_bytes().to_vec());
    entries
}

/// What a SETMETADATA of COI entries changes, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoiChange {
    pub enabled: Option<bool>,
    pub filter: Option<Filter>,
}

/// Validates the COI entries of a SETMETADATA (on mailbox `""`). Other entries are not looked at.
pub fn coi_change(set: &SetMetadata) -> Result<CoiChange, MetadataError> {
    let mut change = CoiChange::default();
    for (entry, value) in &set.entries {
        if !is_coi_entry(entry) {
            continue;
        }
        if !set.mailbox.is_empty() {
            return Err(MetadataError::NotServerLevel);
        }
        match entry.as_str() {
            MAILBOX_ROOT => return Err(MetadataError::ReadOnly),
            // A real client (the OX COI Messenger) disables with "" rather than NIL.
            ENABLED => match value.as_deref() {
                Some(b"yes") => change.enabled = Some(true),
                None | Some(b"") => change.enabled = Some(false),
                Some(other) => return Err(MetadataError::InvalidEnabled(String::from_utf8_lossy(other).into_owned())),
            },
            MESSAGE_FILTER => match value.as_deref() {
                None | Some(b"") => change.filter = Some(Filter::None),
                Some(v) => {
                    change.filter = Some(
                        Filter::parse(v)
                            .ok_or_else(|| MetadataError::InvalidFilter(String::from_utf8_lossy(v).into_owned()))?,
                    )
                }
            },
            _ => {}
        }
    }
    Ok(change)
}

/// Selects, from `available` entries, what a GETMETADATA returns: every requested entry that
/// exists (or NIL for a missing one asked for at depth 0), the covered descendants, and entries
/// over MAXSIZE left out. Returns the entries and the LONGENTRIES value, if any.
pub fn select(req: &GetMetadata, available: &BTreeMap<String, Vec<u8>>) -> (Entries, Option<u64>) {
    let mut out: Entries = Vec::new();
    let mut longest: Option<u64> = None;
    let mut push = |entry: &str, value: Option<&Vec<u8>>, out: &mut Entries| {
        if out.iter().any(|(e, _)| e == entry) {
            return;
        }
        if let (Some(max), Some(v)) = (req.max_size, value)
            && v.len() as u64 > max
        {
            longest = Some(longest.map_or(v.len() as u64, |l| l.max(v.len() as u64)));
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
            for (entry, value) in available.range(format!("{requested}/")..) {
                if !entry.starts_with(&format!("{requested}/")) {
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
    if !mailbox.is_empty() && mailbox.iter().all(|&b| crate::imap::wire::command::is_atom_char(b)) {
        mailbox.to_vec()
    } else {
        crate::imap::wire::command::astring(mailbox, false)
    }
}

/// Parses `* METADATA <mailbox> (<entry> <value> ...)` responses (from a provider).
pub fn parse_response(resp: &[u8]) -> Option<(Vec<u8>, Entries)> {
    // The response grammar is the command grammar's: reuse the command parser on it.
    let body = resp.strip_prefix(b"* ")?;
    let cmd = crate::imap::wire::command::parse(&[b"x ", body].concat()).ok()?;
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

    fn get(line: &str) -> Result<GetMetadata, MetadataError> {
        parse_get(&parse(line.as_bytes()).unwrap())
    }
    fn set(line: &[u8]) -> Result<SetMetadata, MetadataError> {
        parse_set(&parse(line).unwrap())
    }

    #[test]
    fn spec_example_getmetadata_depth_1() {
        let req = get("a5 GETMETADATA (DEPTH 1) \"\" (/private/vendor/vendor.dovecot/coi/config)\r\n").unwrap();
        assert_eq!(req.depth, Depth::One);
        let config = CoiConfig { enabled: true, filter: Filter::Active };
        let (entries, long) = select(&req, &coi_entries(&config, "COI"));
        assert_eq!(long, None);
        assert_eq!(
            format_response(&req.mailbox, &entries),
            b"* METADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled {3}\r\n\
yes /private/vendor/vendor.dovecot/coi/config/mailbox-root {3}\r\n\
COI /private/vendor/vendor.dovecot/coi/config/message-filter {6}\r\n\
active)\r\n"
                .to_vec()
        );
    }

    #[test]
    fn spec_example_setmetadata_values() {
        let ok = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled yes)\r\n").unwrap();
        assert_eq!(coi_change(&ok).unwrap().enabled, Some(true));
        let nil = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled NIL)\r\n").unwrap();
        assert_eq!(coi_change(&nil).unwrap().enabled, Some(false));
        let empty = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled \"\")\r\n").unwrap();
        assert_eq!(coi_change(&empty).unwrap().enabled, Some(false));
        let bad = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled true)\r\n").unwrap();
        assert_eq!(
            coi_change(&bad).unwrap_err().to_string(),
            "NO [CANNOT] invalid value for /private/vendor/vendor.dovecot/coi/config/enabled: \"true\""
        );
        let bad =
            set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/message-filter inactive)\r\n").unwrap();
        assert_eq!(
            coi_change(&bad).unwrap_err().to_string(),
            "NO [CANNOT] invalid value for /private/vendor/vendor.dovecot/coi/config/message-filter: inactive"
        );
        let seen =
            set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/message-filter {4}\r\nseen)\r\n")
                .unwrap();
        assert_eq!(coi_change(&seen).unwrap().filter, Some(Filter::Seen));
        let root = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/mailbox-root X)\r\n").unwrap();
        assert!(coi_change(&root).unwrap_err().to_string().starts_with("NO [CANNOT]"));
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
            assert!(matches!(get(bad), Err(MetadataError::Syntax(_))), "{bad}");
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
    fn provider_responses_parse() {
        let (mb, entries) =
            parse_response(b"* METADATA \"\" (/private/comment {2}\r\nhi /shared/comment NIL)\r\n").unwrap();
        assert!(mb.is_empty());
        assert_eq!(entries, vec![("/private/comment".into(), Some(b"hi".to_vec())), ("/shared/comment".into(), None)]);
        assert!(parse_response(b"* 3 EXISTS\r\n").is_none());
    }

    #[test]
    fn coi_reach() {
        assert!(reaches_coi("/private/vendor/vendor.dovecot/coi/config", Depth::Zero));
        assert!(reaches_coi("/private", Depth::Infinity));
        assert!(reaches_coi("/private/vendor", Depth::One));
        assert!(!reaches_coi("/private/comment", Depth::Infinity));
        assert!(!reaches_coi("/shared", Depth::Infinity));
        assert!(!reaches_coi("/private", Depth::Zero));
        assert!(reaches_coi("/private/vendor/vendor.dovecot/webpush/subscriptions", Depth::One));
        assert!(reaches("/private/vendor/vendor.dovecot", Depth::One, WEBPUSH_SUBTREE));
        assert!(!reaches("/private/vendor/vendor.dovecot/webpush", Depth::Infinity, COI_SUBTREE));
        assert!(is_coi_entry("/private/vendor/vendor.dovecot/webpush/vapid"));
        assert!(!is_coi_entry("/private/vendor/vendor.dovecot/webpushx"));
    }
}
