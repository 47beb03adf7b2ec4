//! The provider profile's decisions from recorded transcripts (tests/fixtures/providers): the
//! harness's Dovecot, Cyrus, Courier and imap4d as captured with
//! tests/support/provider/capture-transcript.py, and Gmail and Outlook.com from their public
//! documentation (each file's header says where from).

use std::path::Path;

use coi_proxy::provider_profile::namespace::separator_from_list;
use coi_proxy::provider_profile::{
    Facts, IdleMode, MetadataHome, MoveStrategy, Namespaces, PollReason, ProviderProfile, Server,
};

/// What a transcript shows: greeting, post-login capabilities, NAMESPACE, `LIST "" ""`.
struct Transcript {
    greeting: String,
    capabilities: Vec<String>,
    namespace: Option<Namespaces>,
    list_separator: Option<char>,
    special_use: Vec<(String, Vec<String>)>,
}

fn read(name: &str) -> Transcript {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers").join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut t = Transcript {
        greeting: String::new(),
        capabilities: Vec::new(),
        namespace: None,
        list_separator: None,
        special_use: Vec::new(),
    };
    let mut logged_in = false;
    let mut last_command = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(cmd) = line.strip_prefix("C: ") {
            last_command = cmd.split_once(' ').map_or("", |(_, c)| c).to_owned();
            logged_in |= last_command.starts_with("LOGIN");
            continue;
        }
        let s = line.strip_prefix("S: ").unwrap_or_else(|| panic!("{name}: not C:/S: {line:?}"));
        if t.greeting.is_empty() {
            t.greeting = s.to_owned();
            continue;
        }
        let caps = s.strip_prefix("* CAPABILITY ").or_else(|| s.split_once("[CAPABILITY ").map(|(_, c)| c));
        if let (true, Some(caps)) = (logged_in, caps) {
            let caps = caps.split(']').next().unwrap_or_default();
            t.capabilities = caps.split_whitespace().map(str::to_owned).collect();
        }
        if s.starts_with("* NAMESPACE") {
            t.namespace = Some(Namespaces::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}: {s}")));
        }
        if last_command == "LIST \"\" \"\"" && s.starts_with("* LIST") {
            t.list_separator = separator_from_list(s.as_bytes());
        }
        if let Some(rest) = s.strip_prefix("* LIST (") {
            let (attrs, mailbox) = rest.split_once(')').unwrap();
            let attrs = attrs.split_whitespace().map(str::to_owned).collect();
            t.special_use.push((mailbox.rsplit(" \"").next().unwrap_or_default().trim_matches('"').to_owned(), attrs));
        }
    }
    assert!(!t.capabilities.is_empty(), "{name}: no post-login CAPABILITY");
    t
}

fn profile(name: &str, host: &str) -> (ProviderProfile, Transcript) {
    let t = read(name);
    let facts = Facts {
        host,
        greeting: &t.greeting,
        capabilities: &t.capabilities,
        namespace: t.namespace.as_ref(),
        list_separator: t.list_separator,
        idle_pushes: None,
    };
    (ProviderProfile::decide(&facts), t)
}

#[test]
fn dovecot() {
    let (p, _) = profile("dovecot", "127.0.0.1");
    assert_eq!(p.server, Server::Dovecot);
    assert_eq!(p.folder("COI", "Chats"), "COI.Chats");
    assert_eq!(p.move_strategy, MoveStrategy::Move);
    assert_eq!(p.idle, IdleMode::Push);
    assert_eq!(p.metadata, MetadataHome::Proxy, "METADATA is off in Dovecot 2.3 by default");
    assert!(p.condstore && !p.labels && p.strip.is_empty());
    let (p, _) = profile("dovecot-no-idle", "127.0.0.1");
    assert_eq!(p.idle, IdleMode::Poll(PollReason::NoIdle));
}

#[test]
fn cyrus() {
    let (p, t) = profile("cyrus", "127.0.0.1");
    assert_eq!(p.server, Server::Cyrus);
    assert_eq!(p.folder("COI", "Chats"), "COI/Chats");
    assert_eq!(p.move_strategy, MoveStrategy::Move);
    assert_eq!(p.idle, IdleMode::Push);
    // it has METADATA, but refuses the COI entries (NO Permission denied)
    assert!(t.capabilities.iter().any(|c| c == "METADATA"));
    assert_eq!(p.metadata, MetadataHome::Proxy);
    assert!(p.strips("MAILBOX-REFERRALS"));
    // LOGINDISABLED after login is stripped for every provider (imap::wire::capability)
    assert!(t.capabilities.iter().any(|c| c == "LOGINDISABLED"));
    // Debian's configuration: personal folders under INBOX.
    let (p, _) = profile("cyrus-debian", "127.0.0.1");
    assert_eq!(p.folder("COI", "Chats"), "INBOX.COI.Chats");
}

#[test]
fn courier() {
    let (p, _) = profile("courier", "127.0.0.1");
    assert_eq!(p.server, Server::Courier);
    assert_eq!((p.prefix.as_str(), p.separator), ("INBOX.", '.'));
    assert_eq!(p.root("COI"), "INBOX.COI");
    assert_eq!(p.folder("COI", "Chats"), "INBOX.COI.Chats");
    assert_eq!(p.move_strategy, MoveStrategy::CopyUidExpunge);
    assert_eq!(p.idle, IdleMode::Poll(PollReason::IdleDoesNotPush), "new mail only after 60 s");
    assert_eq!(p.metadata, MetadataHome::Proxy);
    assert!(!p.condstore);
}

#[test]
fn imap4d() {
    let (p, _) = profile("imap4d", "127.0.0.1");
    assert_eq!(p.server, Server::Imap4d);
    // INBOX's LIST line says NIL: the separator comes from NAMESPACE
    assert_eq!(p.folder("COI", "Chats"), "COI/Chats");
    assert_eq!(p.move_strategy, MoveStrategy::CopySafeExpunge, "neither MOVE nor UIDPLUS");
    assert_eq!(p.idle, IdleMode::Poll(PollReason::IdleDoesNotPush), "pushes nothing until DONE");
    assert_eq!(p.metadata, MetadataHome::Proxy);
}

#[test]
fn gmail_from_its_documentation() {
    let (p, t) = profile("gmail", "imap.gmail.com");
    assert_eq!(p.server, Server::Gmail);
    assert!(p.labels);
    assert_eq!(p.folder("COI", "Chats"), "COI/Chats");
    assert_eq!(p.idle, IdleMode::Push);
    assert_eq!(p.limits.imap_connections, Some(15));
    // [Gmail]/All Mail and Important show every message once more: never count or expunge there
    let label_views: Vec<&str> = t
        .special_use
        .iter()
        .filter(|(_, attrs)| p.is_label_view(&attrs.iter().map(String::as_str).collect::<Vec<_>>()))
        .map(|(m, _)| m.as_str())
        .collect();
    assert_eq!(label_views, ["[Gmail]/All Mail", "[Gmail]/Important"]);
    // The documented capability list has neither MOVE nor UIDPLUS: the safe strategy, under
    // which a \Deleted + EXPUNGE in INBOX only takes the INBOX label off.
    assert_eq!(p.move_strategy, MoveStrategy::CopySafeExpunge);
    // Recognised by the capability alone, whatever the host (e.g. a local tunnel).
    let facts = Facts { host: "127.0.0.1", capabilities: &t.capabilities, ..Facts::default() };
    assert_eq!(ProviderProfile::decide(&facts).server, Server::Gmail);
}

#[test]
fn outlook_from_its_documentation() {
    let (p, _) = profile("outlook", "outlook.office365.com");
    assert_eq!(p.server, Server::Outlook);
    assert_eq!(p.metadata, MetadataHome::Proxy, "no METADATA");
    assert!(!p.condstore, "no CONDSTORE");
    assert_eq!(p.move_strategy, MoveStrategy::Move);
    assert_eq!(p.idle, IdleMode::Push);
    assert_eq!(p.limits.imap_connections, Some(16));
    assert_eq!(p.limits.messages_per_minute, Some(30));
    assert_eq!(p.limits.recipients_per_day, Some(10_000));
    assert_eq!(p.limits.recipients_per_message, Some(500));
    // by the greeting alone too
    let (p, _) = profile("outlook", "mail.example.com");
    assert_eq!(p.server, Server::Outlook);
}
