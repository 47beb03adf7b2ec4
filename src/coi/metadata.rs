//! The COI configuration as METADATA entries (COI server spec, "Getting COI Namespace
//! Configuration"): their names, the entries a GETMETADATA gets, and the validation of a
//! SETMETADATA that changes them. Pure functions; the METADATA syntax is `imap::wire::metadata`,
//! and where the entries live (provider or local store) is decided by the session.

use std::collections::BTreeMap;

use crate::account::{CoiConfig, Filter};
use crate::imap::wire::metadata::{self, Depth, Refusal, SetMetadata, Status};

/// Where the COI server configuration lives (COI server spec, "Getting COI Namespace Configuration").
pub const COI_CONFIG: &str = "/private/vendor/vendor.dovecot/coi/config";
pub const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
pub const MAILBOX_ROOT: &str = "/private/vendor/vendor.dovecot/coi/config/mailbox-root";
pub const MESSAGE_FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
/// The subtree the proxy answers for itself, whatever the provider stores.
pub const COI_SUBTREE: &str = "/private/vendor/vendor.dovecot/coi";

/// Why a SETMETADATA was refused (COI entries, or entries the proxy keeps for a provider
/// without METADATA); the session answers with the [`Refusal::status`] code and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("unable to set read-only entry {MAILBOX_ROOT}")]
    ReadOnly,
    #[error("invalid value for {ENABLED}: \"{0}\"")]
    InvalidEnabled(String),
    #[error("invalid value for {MESSAGE_FILTER}: {0}")]
    InvalidFilter(String),
    #[error("Entry value too large")]
    TooLarge(u64),
    #[error("Too many entries")]
    TooMany,
    #[error("COI entries exist on the server level only (mailbox \"\")")]
    NotServerLevel,
    /// A COI entry the spec does not define: it could not be read back, so it is not stored.
    #[error("no such COI entry: {0}")]
    Unknown(String),
}

impl Refusal for MetadataError {
    fn status(&self) -> Status {
        match self {
            MetadataError::TooLarge(max) => Status::MaxSize(*max),
            MetadataError::TooMany => Status::TooMany,
            _ => Status::Cannot,
        }
    }
}

/// Whether `entry` is in the COI subtree.
pub fn is_coi_entry(entry: &str) -> bool {
    metadata::in_subtree(entry, COI_SUBTREE)
}

/// Whether a request for `requested` at `depth` may reach into the COI subtree (`select`
/// applies the exact depth rules afterwards).
pub fn reaches_coi(requested: &str, depth: Depth) -> bool {
    metadata::reaches(requested, depth, COI_SUBTREE)
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
    for (entry, value) in set.entries_in(COI_SUBTREE).map_err(|_| MetadataError::NotServerLevel)? {
        match entry.as_str() {
            MAILBOX_ROOT => return Err(MetadataError::ReadOnly),
            // A real client (the OX COI Messenger) disables with "" rather than NIL.
            ENABLED => match value {
                Some(b"yes") => change.enabled = Some(true),
                None | Some(b"") => change.enabled = Some(false),
                Some(other) => return Err(MetadataError::InvalidEnabled(shown(other))),
            },
            MESSAGE_FILTER => match value {
                None | Some(b"") => change.filter = Some(Filter::None),
                Some(v) => {
                    change.filter = Some(Filter::parse(v).ok_or_else(|| MetadataError::InvalidFilter(shown(v)))?)
                }
            },
            // Deleting what does not exist is fine; anything else could not be read back.
            _ if value.is_none() => {}
            _ => return Err(MetadataError::Unknown(entry.clone())),
        }
    }
    Ok(change)
}

/// A refused value as the refusal quotes it: printable ASCII only (other bytes as `\xNN`, so a
/// CR LF in it cannot start a line of its own), at most 40 bytes of it.
fn shown(value: &[u8]) -> String {
    let mut out: String = value.iter().take(40).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if value.len() > 40 {
        out.push_str("...");
    }
    out
}

/// The COI configuration from the entries as stored (provider responses or the local store);
/// missing entries mean the defaults.
pub fn config_from(entries: &BTreeMap<String, Vec<u8>>) -> CoiConfig {
    CoiConfig::from_values(entries.get(ENABLED).map(Vec::as_slice), entries.get(MESSAGE_FILTER).map(Vec::as_slice))
}

/// The COI configuration from provider `* METADATA` responses.
pub fn config_from_responses(responses: &[Vec<u8>]) -> CoiConfig {
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for resp in responses {
        if let Some((_, entries)) = metadata::parse_response(resp) {
            values.extend(entries.into_iter().filter_map(|(e, v)| Some((e, v?))));
        }
    }
    config_from(&values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::wire::command::parse;
    use crate::imap::wire::metadata::{GetMetadata, format_response, parse_get, parse_set, select};

    fn get(line: &str) -> GetMetadata {
        parse_get(&parse(line.as_bytes()).unwrap()).unwrap()
    }
    fn set(line: &[u8]) -> SetMetadata {
        parse_set(&parse(line).unwrap()).unwrap()
    }

    #[test]
    fn config_from_entries_and_responses() {
        let resp = b"* METADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled {3}\r\nyes /private/vendor/vendor.dovecot/coi/config/message-filter NIL)\r\n".to_vec();
        assert_eq!(config_from_responses(&[resp]), CoiConfig { enabled: true, filter: Filter::None });
        let mut stored = BTreeMap::new();
        stored.insert(MESSAGE_FILTER.to_string(), b"seen".to_vec());
        assert_eq!(config_from(&stored), CoiConfig { enabled: false, filter: Filter::Seen });
    }

    #[test]
    fn spec_example_getmetadata_depth_1() {
        let req = get("a5 GETMETADATA (DEPTH 1) \"\" (/private/vendor/vendor.dovecot/coi/config)\r\n");
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
        let ok = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled yes)\r\n");
        assert_eq!(coi_change(&ok).unwrap().enabled, Some(true));
        let nil = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled NIL)\r\n");
        assert_eq!(coi_change(&nil).unwrap().enabled, Some(false));
        let empty = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled \"\")\r\n");
        assert_eq!(coi_change(&empty).unwrap().enabled, Some(false));
        let bad = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled true)\r\n");
        assert_eq!(
            coi_change(&bad).unwrap_err().to_string(),
            "invalid value for /private/vendor/vendor.dovecot/coi/config/enabled: \"true\""
        );
        let bad = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/message-filter inactive)\r\n");
        assert_eq!(
            coi_change(&bad).unwrap_err().to_string(),
            "invalid value for /private/vendor/vendor.dovecot/coi/config/message-filter: inactive"
        );
        let seen =
            set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/message-filter {4}\r\nseen)\r\n");
        assert_eq!(coi_change(&seen).unwrap().filter, Some(Filter::Seen));
        let crlf =
            set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/enabled {8+}\r\nx\r\n* BYE)\r\n");
        assert_eq!(
            coi_change(&crlf).unwrap_err().to_string(),
            "invalid value for /private/vendor/vendor.dovecot/coi/config/enabled: \"x\\r\\n* BYE\""
        );
        let root = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/mailbox-root X)\r\n");
        assert_eq!(coi_change(&root), Err(MetadataError::ReadOnly));
        assert_eq!(MetadataError::ReadOnly.status(), Status::Cannot);
        assert_eq!(MetadataError::TooLarge(5).status(), Status::MaxSize(5));
        let on_inbox = set(b"a SETMETADATA INBOX (/private/vendor/vendor.dovecot/coi/config/enabled yes)\r\n");
        assert_eq!(coi_change(&on_inbox), Err(MetadataError::NotServerLevel));
        let unknown = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/config/foo bar)\r\n");
        assert_eq!(
            coi_change(&unknown).unwrap_err().to_string(),
            "no such COI entry: /private/vendor/vendor.dovecot/coi/config/foo"
        );
        let delete = set(b"a SETMETADATA \"\" (/private/vendor/vendor.dovecot/coi/foo NIL)\r\n");
        assert_eq!(coi_change(&delete), Ok(CoiChange::default()));
    }

    #[test]
    fn coi_reach() {
        assert!(reaches_coi("/private/vendor/vendor.dovecot/coi/config", Depth::Zero));
        assert!(reaches_coi("/private", Depth::Infinity));
        assert!(reaches_coi("/private/vendor", Depth::One));
        assert!(!reaches_coi("/private/comment", Depth::Infinity));
        assert!(!reaches_coi("/shared", Depth::Infinity));
        assert!(!reaches_coi("/private", Depth::Zero));
        assert!(!reaches_coi("/private/vendor/vendor.dovecot/webpush", Depth::Infinity));
        assert!(is_coi_entry("/private/vendor/vendor.dovecot/coi/config/enabled"));
        assert!(!is_coi_entry("/private/vendor/vendor.dovecot/coix"));
    }
}
