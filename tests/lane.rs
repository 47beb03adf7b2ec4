//! Relay lanes (issue 19): a plain-TCP session in its plain state is relayed from an epoll
//! thread rather than its task. Against a real Dovecot, a session that goes in and out of its
//! lane — plain commands, commands the COI interceptor takes, a capability list the proxy
//! rewrites, a FETCH with literals, IDLE, a command the provider refuses, pipelined bursts —
//! gets the same answers as with lanes turned off (`COI_PROXY_LANES=0`), and
//! `coi_proxy_lane_entries_total` shows which way each went.

mod support;

use std::time::Duration;

use support::imap_client::ImapClient;
use support::provider::Provider;
use support::proxy::Proxy;

const ENABLED: &str = "/private/vendor/vendor.dovecot/coi/config/enabled";

fn proxy(provider: &Provider, lanes: bool) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .listen("metrics = \"127.0.0.1:0\"")
        .env("COI_PROXY_LANES", if lanes { "1" } else { "0" })
        .start()
}

/// Times sessions went to a lane, as the proxy's metrics say.
fn lane_entries(proxy: &Proxy) -> u64 {
    proxy.metric("coi_proxy_lane_entries_total") as u64
}

/// Runs `command`, noting what came back in `seen`; tagged lines are cut after their status
/// word (Dovecot puts timings in their text).
fn run(c: &mut ImapClient, seen: &mut Vec<String>, command: &str) {
    for line in c.command(command) {
        let cut = if line.starts_with("* ") || line.starts_with("+ ") {
            line
        } else {
            line.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" ")
        };
        seen.push(cut);
    }
}

/// What a session sees for a script of commands that takes it into its lane and out again.
/// `user` logs in with the three messages of [`seed`] in INBOX; lines that differ from user to
/// user (UIDVALIDITY) are left out.
fn script(port: u16, user: &str) -> Vec<String> {
    let mut c = ImapClient::connect(port);
    c.set_timeout(Duration::from_secs(30));
    c.login(user, "secret");
    let mut seen = Vec::new();
    run(&mut c, &mut seen, "s1 SELECT INBOX");
    for i in 0..50 {
        run(&mut c, &mut seen, &format!("n{i} NOOP"));
    }
    // Rewritten by the proxy (its own capabilities added), in the lane as well.
    run(&mut c, &mut seen, "c1 CAPABILITY");
    // Taken by the COI interceptor: the lane hands the session back for it.
    run(&mut c, &mut seen, &format!("m1 SETMETADATA \"\" ({ENABLED} yes)"));
    run(&mut c, &mut seen, &format!("m2 GETMETADATA \"\" {ENABLED}"));
    run(&mut c, &mut seen, "n50 NOOP");
    run(&mut c, &mut seen, "f1 FETCH 1:* (FLAGS BODY.PEEK[])");
    run(&mut c, &mut seen, "u1 UID STORE 1 +FLAGS (\\Flagged)");
    run(&mut c, &mut seen, "f2 FETCH 1 (FLAGS)");
    // Refused by the provider: relayed as it is.
    run(&mut c, &mut seen, "b1 FROBNICATE");
    // A pipelined burst, framed in one read.
    let burst: String = (0..20).map(|i| format!("p{i} NOOP\r\n")).collect();
    c.send_raw(burst.as_bytes());
    for i in 0..20 {
        let line = c.read_line();
        assert!(line.starts_with(&format!("p{i} OK")), "{line}");
        seen.push(format!("p{i} OK"));
    }
    c.send_raw(b"i1 IDLE\r\n");
    let go = c.read_line();
    assert!(go.starts_with("+ "), "{go}");
    seen.push("+".into());
    c.send_raw(b"DONE\r\n");
    let done = c.read_line();
    assert!(done.starts_with("i1 OK"), "{done}");
    seen.push("i1 OK".into());
    run(&mut c, &mut seen, "o1 LOGOUT");
    seen.retain(|l| !l.contains("UIDVALIDITY"));
    seen
}

/// Three small messages in `user`'s INBOX, appended directly.
fn seed(provider: &Provider, user: &str) {
    let mut direct = ImapClient::connect(provider.imap_port);
    direct.login(user, "secret");
    for i in 0..3 {
        let msg = format!("From: a@example.org\r\nSubject: lane {i}\r\n\r\nbody {i}\r\n");
        direct.send_raw(format!("a{i} APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes());
        assert!(direct.read_line().starts_with(&format!("a{i} OK")));
    }
}

#[test]
fn a_session_in_and_out_of_its_lane_sees_what_it_sees_without_lanes() {
    let provider = Provider::start();
    // Each run has a user of its own, in the same state: the first SELECT sees the messages as
    // recent, the STORE changes them.
    seed(&provider, "bob@example.org");
    seed(&provider, "alice@example.org");

    let off = proxy(&provider, false);
    let without = script(off.imap_port, "bob@example.org");
    assert_eq!(lane_entries(&off), 0, "lanes turned off");

    let on = proxy(&provider, true);
    let before = lane_entries(&on);
    let with = script(on.imap_port, "alice@example.org");
    let entries = lane_entries(&on) - before;
    assert_eq!(with, without, "the same answers with lanes as without");
    assert!(with.iter().any(|l| l.starts_with("* CAPABILITY") && l.contains("COI")), "{with:?}");
    assert!(with.iter().any(|l| l.contains("\"lane 2\"") || l.contains("lane 2")), "the FETCH came: {with:?}");
    // In after the SELECT, back for the SETMETADATA and GETMETADATA, in again after each.
    assert!(entries >= 3, "the session went to its lane {entries} times");
}

#[test]
fn a_client_that_closes_in_its_lane_ends_its_session_at_once() {
    let provider = Provider::start();
    let proxy = proxy(&provider, true);
    let before = lane_entries(&proxy);
    let mut c = ImapClient::connect(proxy.imap_port);
    c.login("alice@example.org", "secret");
    c.expect_ok("n1 NOOP");
    c.expect_ok("n2 NOOP");
    assert!(lane_entries(&proxy) > before, "the session went to a lane");
    drop(c);
    proxy.wait_for_log("the client closed the connection", Duration::from_secs(5));
    // The provider's end of it is closed too: Dovecot logs the logout.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&provider.log).unwrap_or_default();
        if log.lines().any(|l| l.contains("alice@example.org") && l.contains("Disconnected")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "provider connection not closed:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
