//! Delta Chat (`deltachat-rpc-server` from PyPI), a real chat-over-email client, through the
//! proxy: messages and a read receipt between two accounts, with the COI filter `none` and
//! `active`; in `active` chat messages land in `COI/Chats` while ordinary mail stays in INBOX.

mod support;

use std::process::Command;

use support::provider::Provider;
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
