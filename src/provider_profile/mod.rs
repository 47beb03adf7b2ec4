//! What the proxy must do differently per provider, decided once per account from what the
//! provider shows after login: its CAPABILITY list, NAMESPACE, greeting and host name.
//!
//! "Any IMAP4rev1 provider" is the promise, and the servers differ in ways that break a naive
//! proxy (measured with the harness in tests/support, recorded in tests/fixtures/providers):
//! Courier keeps personal folders under `INBOX.`, imap4d has neither MOVE nor UIDPLUS, Courier's
//! and imap4d's IDLE do not push, Cyrus refuses unregistered METADATA entries, Gmail's folders
//! are labels. The decisions live here, pure and unit-tested; the worker and the sessions ask
//! the profile instead of testing capabilities themselves.

pub mod move_plan;
pub mod namespace;

pub use namespace::{NamespaceEntry, Namespaces};

/// Which server it is, where that matters (from the greeting, the host, a capability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Dovecot,
    Cyrus,
    Courier,
    /// GNU Mailutils imap4d.
    Imap4d,
    Gmail,
    /// Outlook.com / Microsoft 365 (Exchange Online).
    Outlook,
    Other,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Server::Dovecot => "Dovecot",
            Server::Cyrus => "Cyrus IMAP",
            Server::Courier => "Courier-IMAP",
            Server::Imap4d => "GNU Mailutils imap4d",
            Server::Gmail => "Gmail",
            Server::Outlook => "Outlook.com / Microsoft 365",
            Server::Other => "an IMAP4rev1 server coi-proxy has no profile for (standard behaviour assumed)",
        })
    }
}

/// What the profile is decided from. Capabilities are the post-login list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The provider's host name as configured (e.g. `imap.gmail.com`).
    pub host: &'a str,
    /// The greeting line, e.g. `* OK [CAPABILITY ...] Dovecot ready.`.
    pub greeting: &'a str,
    pub capabilities: &'a [String],
    /// The NAMESPACE response, where the provider has one.
    pub namespace: Option<&'a Namespaces>,
    /// The separator from `LIST "" ""`, the fallback where NAMESPACE gives none.
    pub list_separator: Option<char>,
    /// A measurement (deliver, wait in IDLE): `Some(true)` if the provider pushed the new mail
    /// within a second, `Some(false)` if it did not. Wins over the server's reputation.
    pub idle_pushes: Option<bool>,
}

/// How a message leaves INBOX for the Chats folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStrategy {
    /// `UID MOVE` (RFC 6851): atomic, nothing else is touched.
    Move,
    /// `UID COPY`, `UID STORE +FLAGS.SILENT (\Deleted)`, `UID EXPUNGE` of exactly those UIDs
    /// (UIDPLUS, RFC 4315): messages the user marked `\Deleted` stay.
    CopyUidExpunge,
    /// No UIDPLUS: a plain EXPUNGE would also remove what the user marked `\Deleted` and kept.
    /// So the user's `\Deleted` messages are set aside for the EXPUNGE (flag off, EXPUNGE, flag
    /// on again); where the provider refuses that, the copied originals stay, flagged, until
    /// the user's are gone (see [`move_plan`]).
    CopySafeExpunge,
}

/// Whether the provider's IDLE can be waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleMode {
    /// IDLE pushes new mail as it comes.
    Push,
    /// Poll every `[coi] poll_secs`, for the worker and for clients in IDLE.
    Poll(PollReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollReason {
    /// IDLE is not advertised.
    NoIdle,
    /// Advertised, but it does not push: Courier without FAM reports new mail only at its
    /// `IMAP_IDLE_TIMEOUT` (60 s as Debian ships it); imap4d reports nothing until DONE.
    IdleDoesNotPush,
}

/// Where the COI METADATA entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataHome {
    /// On the provider (RFC 5464), where every device and proxy instance sees them.
    Provider,
    /// In the proxy's store: the provider has no METADATA, or refuses the COI entries (Cyrus
    /// answers `NO Permission denied` to `/private/vendor/...` entries it has no
    /// `annotation_definitions` for).
    Proxy,
}

/// Published per-account limits the proxy must stay under (None: none known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Simultaneous IMAP connections per account.
    pub imap_connections: Option<u32>,
    /// Messages per minute through the provider's submission server.
    pub messages_per_minute: Option<u32>,
    /// Recipients per day through the submission server.
    pub recipients_per_day: Option<u32>,
    /// Recipients of one message.
    pub recipients_per_message: Option<u32>,
}

/// The decisions for one provider account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderProfile {
    pub server: Server,
    /// Personal namespace prefix new folders go under (`INBOX.` on Courier).
    pub prefix: String,
    pub separator: char,
    pub move_strategy: MoveStrategy,
    pub idle: IdleMode,
    pub metadata: MetadataHome,
    /// CONDSTORE (RFC 7162): flag changes can be asked for by MODSEQ; else they are compared.
    pub condstore: bool,
    /// Gmail labels (X-GM-EXT-1): a message in several folders is one message; `\All` and
    /// `\Important` hold it once more.
    pub labels: bool,
    pub limits: Limits,
    /// Whether UIDs seen in a read-only (EXAMINE) session stay valid once the mailbox is
    /// SELECTed. Not on imap4d: its Maildir gives new messages provisional UIDs in a read-only
    /// session and renumbers them at the next read-write SELECT (measured: UID 2 under EXAMINE
    /// became UID 3 under SELECT, and `UID COPY 2` was then BAD). There the worker watches
    /// INBOX SELECTed, at the cost of the `\Recent` flags.
    pub examine_uids_stable: bool,
    /// Whether NOOP reports every message delivered since the session last looked. Not on
    /// imap4d: it rescans a Maildir for a session only when the directory's mtime changed, in
    /// whole seconds, since that session's last scan, so a message delivered in the same
    /// second is not reported (measured: 3 deliveries in 10 directly). There the IDLE the
    /// proxy serves also counts with STATUS and selects the mailbox again when it must
    /// (`imap::session::policy::rescan`).
    pub noop_sees_new_mail: bool,
    /// Post-login capabilities the proxy must not pass on, beyond those it never passes
    /// (STARTTLS, LOGINDISABLED, AUTH=, COMPRESS=: see imap::wire::capability).
    pub strip: Vec<&'static str>,
}

impl ProviderProfile {
    pub fn decide(facts: &Facts) -> ProviderProfile {
        let has = |cap: &str| facts.capabilities.iter().any(|c| c.eq_ignore_ascii_case(cap));
        let server = identify(facts);
        let personal = facts.namespace.and_then(Namespaces::personal);
        let prefix = personal.map(|p| p.prefix.clone()).unwrap_or_default();
        // imap4d shows INBOX with a NIL separator while other folders use "/": take the
        // namespace's, then `LIST "" ""`'s, and only then assume "/".
        let separator = personal.and_then(|p| p.separator).or(facts.list_separator).unwrap_or('/');
        let move_strategy = if has("MOVE") {
            MoveStrategy::Move
        } else if has("UIDPLUS") {
            MoveStrategy::CopyUidExpunge
        } else {
            MoveStrategy::CopySafeExpunge
        };
        let idle = if !has("IDLE") {
            IdleMode::Poll(PollReason::NoIdle)
        } else {
            let pushes = facts.idle_pushes.unwrap_or(!matches!(server, Server::Courier | Server::Imap4d));
            if pushes { IdleMode::Push } else { IdleMode::Poll(PollReason::IdleDoesNotPush) }
        };
        let metadata =
            if has("METADATA") && server != Server::Cyrus { MetadataHome::Provider } else { MetadataHome::Proxy };
        let mut strip = Vec::new();
        if has("MAILBOX-REFERRALS") {
            // a referral would send the client to the provider itself, around the proxy
            strip.push("MAILBOX-REFERRALS");
        }
        ProviderProfile {
            server,
            prefix,
            separator,
            move_strategy,
            idle,
            metadata,
            condstore: has("CONDSTORE"),
            labels: has("X-GM-EXT-1") || server == Server::Gmail,
            limits: limits(server),
            examine_uids_stable: server != Server::Imap4d,
            noop_sees_new_mail: server != Server::Imap4d,
            strip,
        }
    }

    /// The COI root on the provider: `COI`, or `INBOX.COI` under Courier's namespace. Clients
    /// see the same name (the proxy does not rename folders): the `mailbox-root` METADATA
    /// value says it, as the COI spec has it.
    pub fn root(&self, configured_root: &str) -> String {
        if self.prefix.is_empty() || configured_root.starts_with(&self.prefix) {
            configured_root.to_owned()
        } else {
            format!("{}{configured_root}", self.prefix)
        }
    }

    /// A folder below the root, e.g. `folder("COI", "Chats")` = `INBOX.COI.Chats` on Courier.
    pub fn folder(&self, configured_root: &str, leaf: &str) -> String {
        format!("{}{}{leaf}", self.root(configured_root), self.separator)
    }

    /// Whether a post-login capability is to be removed from what clients see.
    pub fn strips(&self, capability: &str) -> bool {
        self.strip.iter().any(|s| s.eq_ignore_ascii_case(capability))
    }

    /// Whether a folder with these special-use attributes only shows messages that live
    /// elsewhere too (Gmail's `\All` and `\Important`): never count, push or expunge there.
    pub fn is_label_view(&self, special_use: &[&str]) -> bool {
        self.labels
            && special_use.iter().any(|a| a.eq_ignore_ascii_case("\\All") || a.eq_ignore_ascii_case("\\Important"))
    }
}

fn identify(facts: &Facts) -> Server {
    let host = facts.host.trim_end_matches('.').to_ascii_lowercase();
    let host_is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    let greeting = facts.greeting;
    if facts.capabilities.iter().any(|c| c.eq_ignore_ascii_case("X-GM-EXT-1"))
        || host_is("gmail.com")
        || host_is("googlemail.com")
        || greeting.contains("Gimap ready")
    {
        Server::Gmail
    } else if host_is("outlook.com")
        || host_is("office365.com")
        || host_is("hotmail.com")
        || greeting.contains("Microsoft Exchange")
    {
        Server::Outlook
    } else if greeting.contains("Dovecot") {
        Server::Dovecot
    } else if greeting.contains("Cyrus IMAP") {
        Server::Cyrus
    } else if greeting.contains("Courier-IMAP") {
        Server::Courier
    } else if greeting.trim_end() == "* OK IMAP4rev1" {
        // imap4d's default greeting, nothing else on the line (it can be configured away;
        // then the IDLE measurement of `check` is what finds it out)
        Server::Imap4d
    } else {
        Server::Other
    }
}

/// Published limits: Gmail allows 15 simultaneous IMAP connections per account; Exchange
/// Online / Outlook.com 16 per mailbox (Exchange's `MaxConnectionsPerUser` default), 30
/// messages per minute and 10,000 recipients per day through SMTP submission, 500 recipients
/// per message.
fn limits(server: Server) -> Limits {
    match server {
        Server::Gmail => Limits { imap_connections: Some(15), ..Limits::default() },
        Server::Outlook => Limits {
            imap_connections: Some(16),
            messages_per_minute: Some(30),
            recipients_per_day: Some(10_000),
            recipients_per_message: Some(500),
        },
        _ => Limits::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &str) -> Vec<String> {
        list.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn strategies_follow_the_capabilities() {
        let decide = |list: &str| {
            let caps = caps(list);
            ProviderProfile::decide(&Facts { capabilities: &caps, ..Facts::default() })
        };
        assert_eq!(decide("IMAP4rev1 MOVE UIDPLUS IDLE").move_strategy, MoveStrategy::Move);
        assert_eq!(decide("IMAP4rev1 UIDPLUS IDLE").move_strategy, MoveStrategy::CopyUidExpunge);
        assert_eq!(decide("IMAP4rev1 IDLE").move_strategy, MoveStrategy::CopySafeExpunge);
        assert_eq!(decide("IMAP4rev1 idle").idle, IdleMode::Push);
        assert_eq!(decide("IMAP4rev1").idle, IdleMode::Poll(PollReason::NoIdle));
        assert_eq!(decide("IMAP4rev1 METADATA").metadata, MetadataHome::Provider);
        assert_eq!(decide("IMAP4rev1").metadata, MetadataHome::Proxy);
        let p = decide("IMAP4rev1");
        assert_eq!((p.prefix.as_str(), p.separator, p.server), ("", '/', Server::Other));
    }

    #[test]
    fn a_measurement_wins_over_reputation() {
        let caps = caps("IMAP4rev1 IDLE");
        let facts = Facts { greeting: "* OK Courier-IMAP ready.", capabilities: &caps, ..Facts::default() };
        assert_eq!(ProviderProfile::decide(&facts).idle, IdleMode::Poll(PollReason::IdleDoesNotPush));
        let measured = Facts { idle_pushes: Some(true), ..facts };
        assert_eq!(ProviderProfile::decide(&measured).idle, IdleMode::Push);
        let dovecot = Facts { greeting: "* OK Dovecot ready.", idle_pushes: Some(false), ..facts };
        assert_eq!(ProviderProfile::decide(&dovecot).idle, IdleMode::Poll(PollReason::IdleDoesNotPush));
    }

    #[test]
    fn folders_under_the_personal_namespace() {
        let p =
            ProviderProfile { prefix: "INBOX.".into(), separator: '.', ..ProviderProfile::decide(&Facts::default()) };
        assert_eq!(p.root("COI"), "INBOX.COI");
        assert_eq!(p.folder("COI", "Chats"), "INBOX.COI.Chats");
        // a root configured with the prefix already is not prefixed twice
        assert_eq!(p.folder("INBOX.COI", "Contacts"), "INBOX.COI.Contacts");
    }

    #[test]
    fn hosts() {
        let decide = |host: &str| ProviderProfile::decide(&Facts { host, ..Facts::default() }).server;
        assert_eq!(decide("imap.gmail.com"), Server::Gmail);
        assert_eq!(decide("imap.googlemail.com."), Server::Gmail);
        assert_eq!(decide("outlook.office365.com"), Server::Outlook);
        assert_eq!(decide("imap-mail.outlook.com"), Server::Outlook);
        assert_eq!(decide("notgmail.com"), Server::Other);
        let imap4d = ProviderProfile::decide(&Facts { greeting: "* OK IMAP4rev1\r\n", ..Facts::default() });
        assert_eq!(imap4d.server, Server::Imap4d);
        assert!(!imap4d.examine_uids_stable);
        assert!(!imap4d.noop_sees_new_mail);
        let dovecot = ProviderProfile::decide(&Facts { greeting: "* OK Dovecot ready.", ..Facts::default() });
        assert!(dovecot.examine_uids_stable);
        assert!(dovecot.noop_sees_new_mail);
        assert_eq!(decide("gmail.com.example.org"), Server::Other);
    }
}
