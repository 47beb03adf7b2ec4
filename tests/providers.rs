//! Issue 16: the proxy over every kind of IMAP4rev1 provider the harness has (Dovecot, Dovecot
//! without IDLE, Cyrus, Courier, GNU imap4d). Each check runs once per provider, so the table of
//! what works is the test list; what does not work yet is `#[ignore = "issue 16: ..."]` with the
//! reason, and is un-ignored when the fix lands.
//!
//! The bar is the "Done when": COI can be enabled, chat mail is moved within 1 s of the
//! provider announcing it (within the poll interval where it announces nothing), no message the
//! user marked `\Deleted` is ever expunged by the proxy, and an IDLE client is woken.

mod support;

use std::time::{Duration, Instant};

use support::imap_client::ImapClient;
use support::other_provider::{AnyProvider, Kind, start_all};
use support::proxy::Proxy;

const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";
const FILTER: &str = "/private/vendor/vendor.dovecot/coi/config/message-filter";
/// `[coi] poll_secs` of every proxy here: short, so tests over non-pushing providers stay quick.
const POLL_SECS: u64 = 2;

/// The Chats folder as the provider names it: under its personal namespace, with its separator.
fn chats(kind: Kind) -> &'static str {
    match kind {
        Kind::Dovecot | Kind::DovecotNoIdle => "COI.Chats",
        Kind::Cyrus | Kind::CyrusNoMetadata | Kind::Imap4d => "COI/Chats",
        Kind::Courier => "INBOX.COI.Chats",
    }
}

/// Whether the provider announces new mail during IDLE as it arrives (measured: Dovecot at once,
/// Cyrus ~0.5 s after LMTP; Courier only after 60 s, imap4d never before DONE; Dovecot without
/// IDLE does not offer it).
fn pushes(kind: Kind) -> bool {
    matches!(kind, Kind::Dovecot | Kind::Cyrus | Kind::CyrusNoMetadata)
}

/// How long the proxy may take: 1 s from the provider's announcement (seen by a direct client in
/// IDLE, see [`Announcement`]) where it pushes, else one poll interval plus 1 s from delivery.
fn allowed(kind: Kind) -> Duration {
    if pushes(kind) { Duration::from_secs(1) } else { Duration::from_secs(POLL_SECS + 1) }
}

/// When the provider tells an IDLE client about new mail: a direct connection of its own,
/// in IDLE on INBOX (EXAMINEd, so no `\Recent` is taken from anyone).
struct Announcement(std::sync::mpsc::Receiver<Instant>);

impl Announcement {
    /// Starts watching; returns once the watcher is in IDLE. Only for pushing providers.
    fn watch(p: &AnyProvider) -> Announcement {
        let mut c = direct(p, "alice@example.org");
        c.expect_ok("w EXAMINE INBOX");
        c.send_raw(b"i IDLE\r\n");
        let cont = c.read_line();
        assert!(cont.starts_with("+ "), "{}: {cont}", p.name());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The first news counts: EXISTS, or (where the proxy was quicker than this
            // connection's turn, as on Cyrus) the FLAGS or EXPUNGE that followed it.
            if c.line_within(Duration::from_secs(30)).is_some() {
                let _ = tx.send(Instant::now());
            }
        });
        Announcement(rx)
    }

    fn at(&self) -> Instant {
        self.0
            .recv_timeout(Duration::from_secs(10))
            .expect("the provider announced the new mail to a direct IDLE client")
    }
}

/// The instant the proxy's reaction is measured from: the announcement where the provider
/// pushes, else the delivery.
fn reference(announcement: Option<Announcement>, delivered: Instant) -> Instant {
    announcement.map_or(delivered, |a| a.at())
}

fn proxy_for(p: &AnyProvider) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", p.imap_port()))
        .extra(&format!("[coi]\npoll_secs = {POLL_SECS}"))
        .start()
}

fn login(proxy: &Proxy, user: &str) -> ImapClient {
    let mut c = proxy.connect();
    c.login(user, "secret");
    c
}

fn direct(p: &AnyProvider, user: &str) -> ImapClient {
    let mut c = ImapClient::connect(p.imap_port());
    c.login(user, p.password());
    c
}

fn quoted(mailbox: &str) -> String {
    format!("\"{mailbox}\"")
}

fn count(c: &mut ImapClient, mailbox: &str) -> usize {
    let status = c.expect_ok(&format!("s STATUS {} (MESSAGES)", quoted(mailbox)));
    let line = status.iter().find(|l| l.starts_with("* STATUS")).unwrap_or_else(|| c.fail("no STATUS response"));
    let n = line.split("MESSAGES ").nth(1).unwrap_or_else(|| c.fail("no MESSAGES in STATUS"));
    n.trim_end_matches(|ch: char| !ch.is_ascii_digit()).parse().unwrap_or_else(|_| c.fail("bad MESSAGES count"))
}

/// STATUS of a mailbox that may not exist yet counts as 0.
fn count_or_zero(c: &mut ImapClient, mailbox: &str) -> usize {
    let status = c.command(&format!("s STATUS {} (MESSAGES)", quoted(mailbox)));
    if !status.last().is_some_and(|l| l.starts_with("s OK")) {
        return 0;
    }
    count(c, mailbox)
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn chat_message(id: &str) -> Vec<u8> {
    format!(
        "From: bob@example.org\r\nTo: alice@example.org\r\nChat-Version: 1.0\r\nMessage-ID: <{id}>\r\n\
Subject: chat {id}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
    )
    .into_bytes()
}

fn mail_message(id: &str) -> Vec<u8> {
    format!(
        "From: bob@example.org\r\nTo: alice@example.org\r\nMessage-ID: <{id}>\r\nSubject: mail {id}\r\n\
Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
    )
    .into_bytes()
}

/// Enables COI with the `active` filter through the proxy; panics with the transcript (and the
/// proxy's log) unless the provider let the proxy create what it needs.
fn enable(proxy: &Proxy, c: &mut ImapClient) {
    let r = c.command(&format!("e SETMETADATA \"\" ({ENABLED} yes {FILTER} active)"));
    if !r.last().is_some_and(|l| l.starts_with("e OK")) {
        panic!("enabling COI failed: {r:?}\nproxy log:\n{}", proxy.log());
    }
}

fn coi_can_be_enabled(kind: Kind) {
    let p = AnyProvider::start(kind);
    let proxy = proxy_for(&p);
    let mut c = login(&proxy, "alice@example.org");
    enable(&proxy, &mut c);
    let r = c.expect_ok(&format!("g GETMETADATA \"\" {ENABLED}"));
    assert!(r[0].contains("yes"), "{r:?}");
    // The folders exist on the provider, under its personal namespace.
    let mut d = direct(&p, "alice@example.org");
    let list = d.expect_ok("l LIST \"\" \"*\"").join("");
    assert!(list.contains(chats(kind)), "{}: no {} in {list}", p.name(), chats(kind));
}

fn chat_mail_is_moved(kind: Kind) {
    let p = AnyProvider::start(kind);
    let proxy = proxy_for(&p);
    let mut c = login(&proxy, "alice@example.org");
    enable(&proxy, &mut c);
    drop(c);
    // The worker is watching before the mail comes (it starts when COI is enabled).
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    let mut d = direct(&p, "alice@example.org");
    let announcement = pushes(kind).then(|| Announcement::watch(&p));
    let delivered = Instant::now();
    p.deliver("bob@example.org", "alice@example.org", &chat_message("m1@example.org"));
    let limit = allowed(kind) + Duration::from_secs(5);
    // The proxy's own word that the move is done is the instant measured: watching through the
    // provider would add the watcher's delay (Courier's STATUS sometimes answers a second late,
    // waiting on a lock the worker's session held).
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        proxy.wait_for_log("moved chat messages", limit);
    }));
    if r.is_err() {
        panic!("{}: chat mail never moved to {}\nproxy log:\n{}", p.name(), chats(kind), proxy.log());
    }
    let moved = Instant::now();
    // Moved, not copied: in Chats and gone from INBOX.
    wait_until("the chat message in Chats and gone from INBOX", Duration::from_secs(5), || {
        count_or_zero(&mut d, chats(kind)) == 1 && count(&mut d, "INBOX") == 0
    });
    let from = reference(announcement, delivered);
    let took = moved.saturating_duration_since(from);
    eprintln!(
        "{}: in {} {took:?} after the {} ({:?} after delivery)",
        p.name(),
        chats(kind),
        if pushes(kind) { "announcement" } else { "delivery" },
        moved - delivered
    );
    assert_eq!(count(&mut d, "INBOX"), 0, "{}: moved, not copied", p.name());
    assert!(took < allowed(kind), "{}: moved after {took:?}, allowed {:?}\n{}", p.name(), allowed(kind), proxy.log());
}

fn user_deleted_mail_is_never_expunged(kind: Kind) {
    let p = AnyProvider::start(kind);
    let proxy = proxy_for(&p);
    let mut setup = login(&proxy, "alice@example.org");
    enable(&proxy, &mut setup);
    drop(setup);
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    p.deliver("bob@example.org", "alice@example.org", &mail_message("keep@example.org"));
    // The user marks it \Deleted (through the proxy) and does not expunge: their choice to make.
    let mut c = login(&proxy, "alice@example.org");
    c.expect_ok("s SELECT INBOX");
    c.expect_ok("st STORE 1 +FLAGS (\\Deleted)");
    let mut d = direct(&p, "alice@example.org");
    p.deliver("bob@example.org", "alice@example.org", &chat_message("move@example.org"));
    let limit = allowed(kind) + Duration::from_secs(5);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the chat message in Chats", limit, || count_or_zero(&mut d, chats(kind)) == 1)
    }));
    if r.is_err() {
        panic!("{}: chat mail never reached {}\nproxy log:\n{}", p.name(), chats(kind), proxy.log());
    }
    // Give a late EXPUNGE a moment to show.
    std::thread::sleep(Duration::from_millis(500));
    d.expect_ok("x EXAMINE INBOX");
    let f = d.expect_ok("f FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").join("");
    assert!(f.contains("keep@example.org"), "{}: the user's \\Deleted message was expunged: {f}", p.name());
    // imap4d keeps flags in the session that set them (not shared, not even after CHECK): a
    // direct connection never sees the user's \Deleted there; the user's own session does.
    if kind != Kind::Imap4d {
        assert!(f.contains("\\Deleted"), "{}: its \\Deleted flag is kept: {f}", p.name());
    }
    // Clients of the proxy do not see the moved chat message in INBOX any more, and the user's
    // session still has its \Deleted message, flag and all.
    c.expect_ok("n NOOP");
    let f = c.expect_ok("f FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").join("");
    assert!(!f.contains("move@example.org"), "{}: {f}", p.name());
    assert!(f.contains("keep@example.org") && f.contains("\\Deleted"), "{}: {f}", p.name());
}

fn idle_client_is_woken(kind: Kind) {
    let p = AnyProvider::start(kind);
    let proxy = proxy_for(&p);
    // imap4d never tells a session that SELECTed a pristine INBOX (a Maildir that never held a
    // message) about new mail, not even directly; a used one, even emptied again, it does.
    // (The general rule behind it: imap4d's NOOP rescans only when the Maildir's mtime changed
    // in whole seconds since the session's last scan; the proxy's IDLE counts with STATUS and
    // selects again where NOOP missed mail, see src/imap/session/policy/rescan.rs.)
    let second = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut first_in = 0;
    let before = if kind == Kind::Imap4d {
        // The case NOOP misses, as often as it can be had: the wake-up's delivery in the same
        // second as this one (it starts just after a whole second).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())));
        first_in = second();
        p.deliver("bob@example.org", "alice@example.org", &mail_message("first@example.org"));
        // and a read-write session that has ended: only then is the Maildir set up for good
        // (under load a SELECT right after the delivery still found it pristine)
        let mut d = direct(&p, "alice@example.org");
        d.expect_ok("s SELECT INBOX");
        d.expect_ok("c CLOSE");
        d.expect_ok("l LOGOUT");
        1
    } else {
        0
    };
    let mut c = login(&proxy, "alice@example.org");
    c.expect_ok("s SELECT INBOX");
    c.send_raw(b"i IDLE\r\n");
    let cont = c.read_line();
    assert!(cont.starts_with("+ "), "{}: IDLE refused: {cont}", p.name());
    let announcement = pushes(kind).then(|| Announcement::watch(&p));
    let delivered = Instant::now();
    let delivered_in = second();
    p.deliver("bob@example.org", "alice@example.org", &mail_message("wake@example.org"));
    let mut woken = None;
    while let Some(line) = c.line_within(allowed(kind) + Duration::from_secs(5)) {
        if line == format!("* {} EXISTS\r\n", before + 1) {
            woken = Some(Instant::now());
            break;
        }
    }
    let woken = woken.unwrap_or_else(|| c.fail(&format!("{}: the IDLE client was never woken", p.name())));
    let took = woken.saturating_duration_since(reference(announcement, delivered));
    eprintln!(
        "{}: IDLE client woken {took:?} after the provider's news ({:?} after delivery){}",
        p.name(),
        woken - delivered,
        if kind == Kind::Imap4d {
            let missed = proxy.log().contains("NOOP missed new mail");
            format!(
                "; the two deliveries {} whole seconds apart, the provider's NOOP missed it: {missed}",
                delivered_in - first_in
            )
        } else {
            String::new()
        }
    );
    assert!(took < allowed(kind), "{}: woken after {took:?}, allowed {:?}", p.name(), allowed(kind));
    c.send_raw(b"DONE\r\n");
    loop {
        let line = c.read_line();
        if line.starts_with("i ") {
            assert!(line.starts_with("i OK"), "{}: {line}", p.name());
            break;
        }
    }
}

/// imap4d's NOOP misses another session's EXPUNGE as it misses new mail (the Maildir
/// directory's mtime does not move; measured directly): the IDLE the proxy serves tells it, by
/// the number the client knows, within a poll interval, and the client's view stays right.
#[test]
fn idle_client_hears_another_sessions_expunge_imap4d() {
    let p = AnyProvider::start(Kind::Imap4d);
    let proxy = proxy_for(&p);
    for id in ["one", "two", "three"] {
        p.deliver("bob@example.org", "alice@example.org", &mail_message(&format!("{id}@example.org")));
    }
    let mut c = login(&proxy, "alice@example.org");
    let r = c.expect_ok("s SELECT INBOX");
    assert!(r.contains(&"* 3 EXISTS\r\n".to_owned()), "{r:?}");
    c.send_raw(b"i IDLE\r\n");
    assert!(c.read_line().starts_with("+ "));
    let mut d = direct(&p, "alice@example.org");
    d.expect_ok("s SELECT INBOX");
    d.expect_ok("st STORE 2 +FLAGS (\\Deleted)");
    d.expect_ok("x EXPUNGE");
    let expunged = Instant::now();
    let mut told = None;
    while let Some(line) = c.line_within(allowed(Kind::Imap4d) + Duration::from_secs(5)) {
        assert!(!line.contains("EXISTS"), "nothing came: {line}");
        if line == "* 2 EXPUNGE\r\n" {
            told = Some(expunged.elapsed());
            break;
        }
    }
    let told = told.unwrap_or_else(|| c.fail("the IDLE client never heard of the expunge"));
    eprintln!("imap4d: another session's EXPUNGE told to the IDLE client {told:?} after it");
    assert!(told < allowed(Kind::Imap4d), "told after {told:?}");
    c.send_raw(b"DONE\r\n");
    assert!(c.read_line().starts_with("i OK"));
    let f = c.expect_ok("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").join("");
    assert!(f.contains("one@example.org") && f.contains("three@example.org") && !f.contains("two@"), "{f}");
    assert!(f.contains("* 2 FETCH") && !f.contains("* 3 FETCH"), "{f}");
}

fn capabilities_are_clean(kind: Kind) {
    let p = AnyProvider::start(kind);
    let proxy = proxy_for(&p);
    let mut c = proxy.connect();
    let ok = c.login("alice@example.org", "secret");
    let caps = c.expect_ok("c CAPABILITY");
    for list in [ok.last().map(String::as_str).unwrap_or(""), caps[0].as_str()] {
        // Cyrus says LOGINDISABLED after login, imap4d STARTTLS and AUTH=: none of it is true
        // of the client's connection to the proxy.
        for token in list.split_whitespace() {
            assert!(
                !["LOGINDISABLED", "STARTTLS"].contains(&token) && !token.starts_with("AUTH="),
                "{}: {token} passed on: {list}",
                p.name()
            );
        }
        assert!(list.contains(" COI") && list.contains(" METADATA") && list.contains(" IDLE"), "{}: {list}", p.name());
    }
}

/// The provider profile, decided from what the live server says, matches the server: the COI
/// folder where the server accepts it, the move strategy its capabilities allow, and the IDLE
/// mode its measured behaviour calls for (deliver during IDLE, wait 1.5 s for the EXISTS).
fn profile_matches_the_server(kind: Kind) {
    use coi_proxy::provider_profile::namespace::separator_from_list;
    use coi_proxy::provider_profile::{Facts, IdleMode, MoveStrategy, Namespaces, ProviderProfile};
    let p = AnyProvider::start(kind);
    let mut c = ImapClient::connect(p.imap_port());
    let greeting = c.greeting.clone();
    c.login("alice@example.org", p.password());
    let caps = c.expect_ok("c CAPABILITY");
    let caps: Vec<String> = caps[0].trim_end().split(' ').skip(2).map(str::to_owned).collect();
    let ns = c.expect_ok("n NAMESPACE");
    let ns = Namespaces::parse(ns[0].as_bytes()).unwrap_or_else(|e| panic!("{}: {e}: {ns:?}", p.name()));
    let list = c.expect_ok("l LIST \"\" \"\"");
    let list_separator = separator_from_list(list[0].as_bytes());
    // Measured: does IDLE push a delivery within 1.5 s?
    let idle_pushes = caps.iter().any(|c| c == "IDLE").then(|| {
        c.expect_ok("e EXAMINE INBOX");
        c.send_raw(b"i IDLE\r\n");
        assert!(c.read_line().starts_with("+ "), "{}", p.name());
        p.deliver("bob@example.org", "alice@example.org", &mail_message("probe@example.org"));
        let pushed = std::iter::from_fn(|| c.line_within(Duration::from_millis(1500))).any(|l| l.contains(" EXISTS"));
        c.send_raw(b"DONE\r\n");
        pushed
    });
    let facts = Facts {
        host: "127.0.0.1",
        greeting: &greeting,
        capabilities: &caps,
        namespace: Some(&ns),
        list_separator,
        idle_pushes: None,
    };
    let profile = ProviderProfile::decide(&facts);
    let measured = ProviderProfile::decide(&Facts { idle_pushes, ..facts });
    assert_eq!(profile.idle, measured.idle, "{}: the server's reputation and its measured IDLE differ", p.name());
    let (moves, idle) = match kind {
        Kind::Dovecot => (MoveStrategy::Move, true),
        Kind::DovecotNoIdle => (MoveStrategy::Move, false),
        Kind::Cyrus | Kind::CyrusNoMetadata => (MoveStrategy::Move, true),
        Kind::Courier => (MoveStrategy::CopyUidExpunge, false),
        Kind::Imap4d => (MoveStrategy::CopySafeExpunge, false),
    };
    assert_eq!(profile.move_strategy, moves, "{}", p.name());
    assert_eq!(profile.idle == IdleMode::Push, idle, "{}: {:?}", p.name(), profile.idle);
    assert_eq!(profile.folder("COI", "Chats"), chats(kind), "{}", p.name());
    // and the server takes that name
    let r = c.command(&format!("k CREATE {}", quoted(chats(kind))));
    assert!(r.last().is_some_and(|l| l.starts_with("k OK")), "{}: {r:?}", p.name());
}

/// `coi-proxy check` says what the proxy makes of the provider: which server it is, and whether
/// its IDLE is polled. (check does not log in: METADATA and post-login capabilities it cannot
/// see, so its METADATA line is a guess from the capabilities before login.)
fn check_tells_the_profile(kind: Kind) {
    let p = AnyProvider::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!("imap://127.0.0.1:{}", p.imap_port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .args(["check", "--upstream", &upstream])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("COI_PROXY_CONFIG")
        .output()
        .expect("run coi-proxy check");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let not_pushing = "    IDLE: the provider's does not report new mail as it comes; served by coi-proxy polling";
    let lines: &[&str] = match kind {
        Kind::Dovecot => &["  recognised as: Dovecot\n", "    IDLE: native"],
        Kind::Cyrus => &["  recognised as: Cyrus IMAP\n"],
        Kind::Courier => &["  recognised as: Courier-IMAP\n", not_pushing],
        Kind::Imap4d => &["  recognised as: GNU Mailutils imap4d\n", not_pushing],
        Kind::DovecotNoIdle | Kind::CyrusNoMetadata => unreachable!("not checked"),
    };
    for line in lines {
        assert!(report.contains(line), "{}: {line:?} missing:\n{report}", p.name());
    }
}

/// One test per provider and check, so each can be ignored with its own reason.
macro_rules! over {
    ($check:ident: $($name:ident = $kind:expr $(, ignore = $why:literal)?;)*) => {
        $(
            #[test]
            $(#[ignore = $why])?
            fn $name() {
                $check($kind)
            }
        )*
    };
}

over! { profile_matches_the_server:
    profile_dovecot = Kind::Dovecot;
    profile_dovecot_no_idle = Kind::DovecotNoIdle;
    profile_cyrus = Kind::Cyrus;
    profile_courier = Kind::Courier;
    profile_imap4d = Kind::Imap4d;
}

over! { check_tells_the_profile:
    check_dovecot = Kind::Dovecot;
    check_cyrus = Kind::Cyrus;
    check_courier = Kind::Courier;
    check_imap4d = Kind::Imap4d;
}

over! { capabilities_are_clean:
    caps_dovecot = Kind::Dovecot;
    caps_dovecot_no_idle = Kind::DovecotNoIdle;
    caps_cyrus = Kind::Cyrus;
    caps_courier = Kind::Courier;
    caps_imap4d = Kind::Imap4d;
}

over! { coi_can_be_enabled:
    enable_dovecot = Kind::Dovecot;
    enable_dovecot_no_idle = Kind::DovecotNoIdle;
    enable_cyrus = Kind::Cyrus;
    enable_cyrus_no_metadata = Kind::CyrusNoMetadata;
    enable_courier = Kind::Courier;
    enable_imap4d = Kind::Imap4d;
}

over! { chat_mail_is_moved:
    move_dovecot = Kind::Dovecot;
    move_dovecot_no_idle = Kind::DovecotNoIdle;
    move_cyrus = Kind::Cyrus;
    move_cyrus_no_metadata = Kind::CyrusNoMetadata;
    move_courier = Kind::Courier;
    move_imap4d = Kind::Imap4d;
}

over! { user_deleted_mail_is_never_expunged:
    keep_deleted_dovecot = Kind::Dovecot;
    keep_deleted_dovecot_no_idle = Kind::DovecotNoIdle;
    keep_deleted_cyrus = Kind::Cyrus;
    keep_deleted_cyrus_no_metadata = Kind::CyrusNoMetadata;
    keep_deleted_courier = Kind::Courier;
    keep_deleted_imap4d = Kind::Imap4d;
}

over! { idle_client_is_woken:
    idle_dovecot = Kind::Dovecot;
    idle_dovecot_no_idle = Kind::DovecotNoIdle;
    idle_cyrus = Kind::Cyrus;
    idle_cyrus_no_metadata = Kind::CyrusNoMetadata;
    idle_courier = Kind::Courier;
    idle_imap4d = Kind::Imap4d;
}

/// The harness itself: Cyrus, Courier and imap4d start side by side (in parallel), take LOGIN
/// as alice, deliver to bob by their own route, and leave nothing behind.
#[test]
fn harness_starts_cyrus_courier_and_imap4d() {
    let started = Instant::now();
    let providers = start_all(&[Kind::Cyrus, Kind::Courier, Kind::Imap4d]);
    eprintln!("three providers started in {:?}", started.elapsed());
    let mut dirs = Vec::new();
    for p in &providers {
        let mut c = direct(p, "alice@example.org");
        let caps = c.expect_ok("c CAPABILITY").join("");
        assert!(caps.contains("IMAP4rev1"), "{}: {caps}", p.name());
        p.deliver("carol@example.org", "bob@example.org", &mail_message(&format!("{}@example.org", p.name())));
        let mut b = direct(p, "bob@example.org");
        wait_until("the delivery in bob's INBOX", Duration::from_secs(5), || count(&mut b, "INBOX") == 1);
        b.expect_ok("x EXAMINE INBOX");
        let f = b.expect_ok("f FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").join("");
        assert!(f.contains(&format!("{}@example.org", p.name())), "{}: {f}", p.name());
        // A wrong password is refused (Cyrus and Courier take 3 and 5 s to say so: not here).
        dirs.push(p.state_dir().to_owned());
    }
    drop(providers);
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The account worker watches INBOX EXAMINEd: new mail it has classified keeps its `\Recent`
/// flag for the user's own clients (a worker that SELECTed INBOX would take it).
#[test]
fn the_worker_leaves_recent_to_the_users_clients() {
    let p = AnyProvider::start(Kind::Dovecot);
    let proxy = proxy_for(&p);
    let mut c = login(&proxy, "alice@example.org");
    enable(&proxy, &mut c);
    drop(c);
    proxy.wait_for_log("watching INBOX", Duration::from_secs(10));
    p.deliver("bob@example.org", "alice@example.org", &mail_message("recent@example.org"));
    // Dovecot tells the worker within ~0.5 s; it fetches the header and keeps the message.
    std::thread::sleep(Duration::from_millis(1500));
    let mut d = direct(&p, "alice@example.org");
    let r = d.expect_ok("s SELECT INBOX");
    assert!(r.contains(&"* 1 EXISTS\r\n".to_owned()), "{r:?}");
    assert!(r.contains(&"* 1 RECENT\r\n".to_owned()), "the worker took \\Recent: {r:?}\n{}", proxy.log());
}

/// RFC 2971 allows 30 field/value pairs of up to 30 and 1024 octets: about 32 KB on one line
/// (imaptest's `id` group sends 31,807 bytes before login). Dovecot accepts it; so must the proxy,
/// and the connection goes on either way.
#[test]
fn an_rfc2971_sized_id_is_accepted_before_login() {
    let p = AnyProvider::start(Kind::Dovecot);
    let proxy = proxy_for(&p);
    let pairs: Vec<String> = (0..30).map(|i| format!("\"{:0>30}\" \"{}\"", i, "v".repeat(1024))).collect();
    let line = format!("i ID ({})", pairs.join(" "));
    assert!(line.len() > 31_000, "{}", line.len());
    let mut direct = ImapClient::connect(p.imap_port());
    let r = direct.command(&line);
    assert!(r.last().is_some_and(|l| l.starts_with("i OK")), "the provider itself accepts it: {r:?}");
    let mut c = proxy.connect();
    let r = c.command(&line);
    assert!(r.last().is_some_and(|l| l.starts_with("i OK")), "{r:?}");
    // Beyond the proxy's pre-login limit (64 KiB): BAD, and the connection goes on.
    let huge = format!("j ID (\"x\" \"{}\")", "v".repeat(70_000));
    let r = c.command(&huge);
    assert!(r.last().is_some_and(|l| l.starts_with("j BAD")), "{r:?}");
    c.login("alice@example.org", "secret");
    c.expect_ok("n NOOP");
}

/// `* n RECENT` is part of every SELECT/EXAMINE answer, also when the count is the one the client
/// heard at its last SELECT of that mailbox (imaptest's `select` group: EXAMINE, CLOSE, SELECT).
#[test]
fn recent_is_passed_on_when_a_mailbox_is_selected_again() {
    let p = AnyProvider::start(Kind::Dovecot);
    let proxy = proxy_for(&p);
    let mut c = login(&proxy, "alice@example.org");
    c.expect_ok("c CREATE box");
    for i in 0..2 {
        let msg = mail_message(&format!("r{i}@example.org"));
        c.send_raw(format!("a{i} APPEND box {{{}+}}\r\n", msg.len()).as_bytes());
        c.send_raw(&msg);
        c.send_raw(b"\r\n");
        let ok = c.read_line();
        assert!(ok.starts_with(&format!("a{i} OK")), "{ok}");
    }
    let r = c.expect_ok("e EXAMINE box");
    assert!(r.contains(&"* 2 RECENT\r\n".to_owned()), "{r:?}");
    c.expect_ok("x CLOSE");
    let r = c.expect_ok("s SELECT box");
    assert!(r.contains(&"* 2 RECENT\r\n".to_owned()), "the provider sends it, the client must get it: {r:?}");
}
