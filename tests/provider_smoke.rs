//! Proves the test harness itself: a real Dovecot provider starts, serves
//! IMAP, accepts mail over LMTP and submission, and is gone after drop.

mod support;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use support::imap_client::ImapClient;
use support::provider::{Provider, ProviderOptions};

/// Post-login CAPABILITY tokens of `user`.
fn capabilities(provider: &Provider, user: &str) -> Vec<String> {
    let mut imap = ImapClient::connect(provider.imap_port);
    imap.login(user, &provider.password);
    let lines = imap.expect_ok("c1 CAPABILITY");
    let caps = lines
        .iter()
        .find_map(|l| l.strip_prefix("* CAPABILITY "))
        .unwrap_or_else(|| imap.fail("no untagged CAPABILITY"));
    caps.split_whitespace().map(str::to_owned).collect()
}

/// Polls `user`'s INBOX until it holds `count` messages (up to 5 s).
fn wait_for_messages(provider: &Provider, user: &str, count: u32) {
    let mut imap = ImapClient::connect(provider.imap_port);
    imap.login(user, &provider.password);
    let want = format!("* STATUS INBOX (MESSAGES {count})");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = imap.expect_ok("s1 STATUS INBOX (MESSAGES)");
        if lines.iter().any(|l| l.starts_with(&want)) {
            return;
        }
        if Instant::now() > deadline {
            imap.fail(&format!("{user}'s INBOX never got {count} messages"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}").into_bytes()
}

#[test]
fn login_capability_and_logout() {
    let started = Instant::now();
    let provider = Provider::start();
    eprintln!("provider started in {:?}", started.elapsed());
    assert_eq!(provider.users, ["alice@example.org", "bob@example.org", "carol@example.org"]);
    assert!(provider.ca_cert.is_file());

    let mut imap = ImapClient::connect(provider.imap_port);
    assert!(imap.greeting.starts_with("* OK "), "greeting {:?}", imap.greeting);
    assert!(imap.greeting.ends_with("\r\n"));
    imap.login("alice@example.org", "secret");
    let lines = imap.expect_ok("a1 CAPABILITY");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].split_whitespace().any(|t| t == "IDLE"), "{lines:?}");

    let lines = imap.command("a2 LOGOUT");
    assert!(lines[0].starts_with("* BYE"), "{lines:?}");
    assert!(lines[1].starts_with("a2 OK"), "{lines:?}");
    imap.expect_eof();
}

#[test]
fn wrong_password_is_no() {
    let provider = Provider::start();
    let mut imap = ImapClient::connect(provider.imap_port);
    let lines = imap.command("a1 LOGIN alice@example.org wrong");
    assert!(lines.last().unwrap().starts_with("a1 NO"), "{lines:?}");
}

#[test]
fn no_idle_variant_lacks_idle() {
    let provider = Provider::start_with(ProviderOptions { no_idle: true, ..Default::default() });
    let caps = capabilities(&provider, "alice@example.org");
    assert!(!caps.iter().any(|c| c == "IDLE"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "MOVE"), "{caps:?}");
    let imap = ImapClient::connect(provider.imap_port);
    assert!(!imap.greeting.contains(" IDLE "), "{}", imap.greeting);
}

#[test]
fn options_are_applied() {
    let provider = Provider::start_with(ProviderOptions {
        metadata: true,
        remove_caps: vec!["MOVE".into(), "NOTIFY".into()],
        rawlog: true,
        users: Some(vec!["dave".into()]),
        password: Some("pw 1".into()),
        ..Default::default()
    });
    assert_eq!(provider.users, ["dave@example.org"]);
    let caps = capabilities(&provider, "dave@example.org");
    for (cap, present) in [("METADATA", true), ("MOVE", false), ("NOTIFY", false), ("IDLE", true)] {
        assert_eq!(caps.iter().any(|c| c == cap), present, "{cap}: {caps:?}");
    }
    let rawlog = provider.rawlog_dir.as_ref().expect("rawlog_dir");
    let logged = std::fs::read_dir(rawlog.join("dave@example.org")).unwrap().count();
    assert!(logged > 0, "no rawlog files in {}", rawlog.display());
}

#[test]
fn deliver_shows_up_in_inbox_byte_exact() {
    let provider = Provider::start();
    // the leading dots test the dot-stuffing; the FETCH below the literal reader
    let body = ".leading dot\r\n..two dots\r\n.\r\nlast line\r\n";
    provider.deliver(
        "someone@example.net",
        "alice@example.org",
        &message("someone@example.net", "alice@example.org", "hello", body),
    );

    let mut imap = ImapClient::connect(provider.imap_port);
    imap.login("alice@example.org", "secret");
    let lines = imap.expect_ok("a1 SELECT INBOX");
    assert!(lines.iter().any(|l| l == "* 1 EXISTS\r\n"), "{lines:?}");

    imap.send_raw(b"a2 FETCH 1 (BODY.PEEK[TEXT])\r\n");
    let fetch = imap.read_response_bytes();
    let expected = format!("* 1 FETCH (BODY[TEXT] {{{}}}\r\n{body})\r\n", body.len());
    assert_eq!(String::from_utf8_lossy(&fetch), expected);
    assert!(imap.read_line().starts_with("a2 OK"));
}

#[test]
#[should_panic(expected = "expected 250")]
fn deliver_to_unknown_user_panics() {
    let provider = Provider::start();
    provider.deliver("a@example.net", "nobody@example.org", b"Subject: x\r\n\r\nx\r\n");
}

#[test]
fn submit_reaches_recipient() {
    let provider = Provider::start();
    provider.submit(
        "alice@example.org",
        "alice@example.org",
        &["bob@example.org"],
        &message("alice@example.org", "bob@example.org", "hi bob", "hi\r\n"),
    );
    wait_for_messages(&provider, "bob@example.org", 1);
}

#[test]
fn parallel_providers_have_distinct_ports_and_dirs() {
    let handles: Vec<_> = (0..3).map(|_| thread::spawn(Provider::start)).collect();
    let providers: Vec<Provider> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports = Vec::new();
    for p in &providers {
        ports.extend([p.imap_port, p.imaps_port, p.smtp_port, p.smtps_port, p.lmtp_port]);
        // each one really serves its own ports
        capabilities(p, "carol@example.org");
    }
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "{ports:?}");
    assert_ne!(providers[0].state_dir, providers[1].state_dir);
}

#[test]
fn everything_is_gone_after_drop() {
    let mut provider = Provider::start();
    let state_dir = provider.state_dir.clone();
    let port = provider.imap_port;
    let pid = provider.env["PROVIDER_PID"].clone();
    assert!(state_dir.is_dir());
    assert!(state_dir.to_str().unwrap().len() <= 70);

    let started = Instant::now();
    provider.stop();
    eprintln!("provider stopped in {:?}", started.elapsed());
    provider.stop(); // idempotent
    assert!(!state_dir.exists(), "{} still there", state_dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!running(&pid), "dovecot master {pid} still running");
    drop(provider);
}

/// Alive and not a zombie (in a container pid 1 may never reap it).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[test]
fn imap_client_limit_lets_one_process_serve_several_sessions() {
    let imap_processes = |provider: &Provider| {
        let master = &provider.env["PROVIDER_PID"];
        let dir = std::fs::read_dir("/proc").unwrap();
        dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // comm in parentheses, then state and ppid
                let Some((head, rest)) = stat.rsplit_once(") ") else { return false };
                head.ends_with("(imap") && rest.split_whitespace().nth(1) == Some(master.as_str())
            })
            .count()
    };
    for (limit, want) in [(None, 3), (Some(4), 1)] {
        let provider = Provider::start_with(ProviderOptions { imap_client_limit: limit, ..Default::default() });
        let sessions: Vec<ImapClient> = provider
            .users
            .iter()
            .map(|user| {
                let mut imap = ImapClient::connect(provider.imap_port);
                imap.login(user, &provider.password);
                imap.expect_ok("s1 SELECT INBOX");
                imap
            })
            .collect();
        assert_eq!(sessions.len(), 3);
        assert_eq!(imap_processes(&provider), want, "imap processes for 3 sessions with client limit {limit:?}");
    }
}
