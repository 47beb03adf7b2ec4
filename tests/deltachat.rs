//! Delta Chat (`deltachat-rpc-server` from PyPI), a real chat-over-email client, through the
//! proxy: messages and a read receipt between two accounts, with the COI filter `none` and
//! `active`; in `active` chat messages land in `COI/Chats` while ordinary mail stays in INBOX;
//! and Delta Chat taking the proxy's read receipt for a plain client as read (`MsgRead`).

mod support;

use std::process::Command;

use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

fn round_trip(filter: &str) {
    let provider = Provider::start();
    let proxy = Proxy::for_port(provider.imap_port);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_chat.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--proxy-imap", &proxy.imap_port.to_string()])
        .args(["--provider-imap", &provider.imap_port.to_string()])
        .args(["--provider-smtp", &provider.smtp_port.to_string()])
        .args(["--filter", filter])
        .output()
        .expect("python3 runs (tests/setup-debian.sh installs the Delta Chat packages)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Delta Chat round trip failed ({}):\n{stderr}\n{stdout}\nproxy log:\n{}",
        out.status,
        proxy.log()
    );
    eprintln!("Delta Chat, filter {filter}: {stdout}");
}

#[test]
fn delta_chat_round_trip_filter_none() {
    round_trip("none");
}

#[test]
fn delta_chat_round_trip_filter_active() {
    round_trip("active");
}

/// Runs the receive-only scenario: does bob (IMAP on `bob_imap`) get alice's message?
fn receives(provider: &Provider, bob_imap: u16, wait_secs: u32) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_chat.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--receive-only")
        .args(["--bob-imap", &bob_imap.to_string()])
        .args(["--provider-imap", &provider.imap_port.to_string()])
        .args(["--provider-smtp", &provider.smtp_port.to_string()])
        .args(["--wait", &wait_secs.to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    (stdout.contains("\"received\": true"), stdout)
}

#[test]
fn delta_chat_receives_from_a_provider_without_idle_only_through_the_proxy() {
    let provider = Provider::start_with(ProviderOptions { no_idle: true, ..Default::default() });
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .extra("[coi]\npoll_secs = 2")
        .start();
    let (through_proxy, report) = receives(&provider, proxy.imap_port, 15);
    eprintln!("through the proxy: {report}");
    assert!(through_proxy, "Delta Chat through the proxy must receive: {report}");
    let (direct, report) = receives(&provider, provider.imap_port, 15);
    eprintln!("directly: {report}");
    assert!(
        !direct,
        "directly, Delta Chat was expected to receive nothing (it sends no IMAP command without IDLE): {report}"
    );
}

#[test]
fn delta_chat_takes_the_proxys_read_receipt_for_a_plain_client_as_read() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .extra("[[account]]\nlogin = \"bob@example.org\"\nread_receipts = true\n")
        .start();
    // bob's first login through the proxy is in the script; he marks the message read at once,
    // which must not count as read before receipts started.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_chat.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--read-receipt")
        .args(["--proxy-imap", &proxy.imap_port.to_string()])
        .args(["--provider-imap", &provider.imap_port.to_string()])
        .args(["--provider-smtp", &provider.smtp_port.to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Delta Chat did not take the receipt as read ({}):\n{}\n{stdout}\nproxy log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    eprintln!("Delta Chat read receipt: {stdout}");
    assert!(stdout.contains("$MDNSent"), "the original is marked: {stdout}");
    // Exactly one receipt reached alice (Delta Chat leaves it in her INBOX, marked seen).
    let alice = support::smtp_client::inbox(provider.imap_port, "alice@example.org", "secret");
    let receipts = alice.iter().filter(|m| m.windows(27).any(|w| w == b"Subject: Chat: Read receipt")).count();
    assert_eq!(receipts, 1, "{}", proxy.log());
    assert_eq!(proxy.log().matches("read receipt queued").count(), 1);
}
