//! Delta Chat (`deltachat-rpc-server` from PyPI), a real chat-over-email client, through the
//! proxy: messages and a read receipt between two accounts, with the COI filter `none` and
//! `active`; in `active` chat messages land in `COI/Chats` while ordinary mail stays in INBOX;
//! Delta Chat taking the proxy's read receipt for a plain client as read (`MsgRead`); Delta Chat
//! turning on COMPRESS=DEFLATE with the proxy (and the proxy with a provider that offers it);
//! and chat mail the provider files in Junk reaching Delta Chat.

mod support;

use std::process::Command;

use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

fn round_trip(filter: &str) {
    round_trip_with(filter, Provider::start());
}

fn round_trip_with(filter: &str, provider: Provider) -> Proxy {
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
    // Delta Chat asks for COMPRESS whenever it is offered: every one of its sessions ran on it.
    let log = proxy.log();
    let compressed = log.matches("client compressed:").count();
    assert!(compressed > 0, "Delta Chat did not use COMPRESS:\n{log}");
    proxy
}

#[test]
fn delta_chat_compresses_both_ways_with_a_provider_that_offers_compress() {
    let provider = Provider::start_with(ProviderOptions { compress: true, ..Default::default() });
    let proxy = round_trip_with("none", provider);
    let log = proxy.log();
    let both = log.lines().filter(|l| l.contains("client compressed:") && l.contains("provider compressed:")).count();
    assert!(both > 0, "no session compressed on both sides:\n{log}");
}

#[test]
fn chat_mail_the_provider_files_in_junk_reaches_delta_chat() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        // Junk looked at every 2 s (60 s by default) while the worker idles in INBOX; without the
        // rescue (rescue_junk = false) Delta Chat does not get the message within 60 s.
        .extra("[coi]\njunk_poll_secs = 2\n[deltachat]\ncomment = \"coi-proxy test server\"\n")
        .start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_chat.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--junk")
        .args(["--proxy-imap", &proxy.imap_port.to_string()])
        .args(["--provider-imap", &provider.imap_port.to_string()])
        .args(["--provider-smtp", &provider.smtp_port.to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Delta Chat did not get the message from Junk ({}):\n{}\n{stdout}\nproxy log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    eprintln!("Delta Chat, junk: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["junk_left"], 0, "{report}");
    assert_eq!(report["server_comment"], "\"coi-proxy test server\"", "Delta Chat read the proxy's METADATA: {report}");
    // The worker logs the rescue once the MOVE is answered, which may be after Delta Chat
    // fetched the copy: waited for, then counted.
    let log = proxy.wait_for_log("rescued a message from Junk", std::time::Duration::from_secs(10));
    assert_eq!(log.matches("rescued a message from Junk").count(), 1, "{log}");
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
