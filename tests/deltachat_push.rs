//! Delta Chat push on an ordinary provider (a real Dovecot), against a notification service on
//! loopback started here: the capabilities and METADATA answers Delta Chat reads (with Python's
//! imaplib, sending Delta Chat's own commands), two devices registered, a delivery with no client
//! connected notifying both, the user's own mail notifying none, a 410 removing a token, a 500
//! retried 8 s later and a restart in between losing neither tokens nor the retry; tokens never
//! in the log, not even in the protocol trace.

mod support;

#[path = "support/notifier.rs"]
mod notifier;

use std::process::Command;
use std::time::{Duration, Instant};

use notifier::Notifier;
use serde_json::Value;
use support::imap_client::ImapClient;
use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

const ALICE: &str = "alice@example.org";
const PHONE: &str = "openpgp:wcDMA1Jx0zPqd2tbAQv+phone+one/aGVsbG8gd29ybGQ=";
const TABLET: &str = "openpgp:wcDMA1Jx0zPqd2tbAQv+tablet+two/c2Vjb25kIGRldmljZQ==";

/// Runs `dc_push.py` and returns its JSON report.
fn dc_push(args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_push.py");
    let out = Command::new("python3").arg(script).args(args).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dc_push.py {args:?} failed:\n{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn register(proxy: &Proxy, tokens: &[&str]) {
    let port = proxy.imap_port.to_string();
    let mut args = vec!["register", &port, ALICE];
    args.extend_from_slice(tokens);
    let report = dc_push(&args);
    for r in report["registered"].as_array().unwrap() {
        assert_eq!(r["status"], "OK", "{report}");
    }
}

fn proxy_for(provider: &Provider, notifier: &Notifier, extra: &str) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .arg("--trace-protocol")
        .extra(&format!("[deltachat]\nnotifier_url = \"{}\"\n{extra}", notifier.url()))
        .start()
}

fn mail(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMessage-ID: <{}@example.org>\r\nChat-Version: 1.0\r\n\r\nhi\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

fn wait_for_worker(proxy: &Proxy, from: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !proxy.log()[from..].contains("watching INBOX") {
        assert!(Instant::now() < deadline, "no account worker:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_token_in(log: &str) {
    for token in [PHONE, TABLET] {
        assert!(!log.contains(token), "a device token reached the log");
        // Not even a recognisable piece of it.
        assert!(!log.contains(&token[20..40]), "a piece of a device token reached the log");
    }
}

#[test]
fn capabilities_and_the_metadata_delta_chat_reads_are_the_proxys_whatever_the_provider_has() {
    // A provider with METADATA of its own: the answers are still the proxy's.
    let provider = Provider::start_with(ProviderOptions { metadata: true, ..Default::default() });
    let notifier = Notifier::start();
    let proxy = proxy_for(
        &provider,
        &notifier,
        "max_smtp_recipients = 77\ncomment = \"Delta Chat through coi-proxy\"\nadmin = \"mailto:admin@example.org\"\n",
    );
    let report = dc_push(&["caps", &proxy.imap_port.to_string(), ALICE]);
    eprintln!("{report}");
    let caps: Vec<&str> = report["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for cap in ["XDELTAPUSH", "METADATA", "COMPRESS=DEFLATE", "IDLE"] {
        assert!(caps.contains(&cap), "{cap} missing from {caps:?}");
    }
    assert!(!caps.iter().any(|c| c.eq_ignore_ascii_case("XCHATMAIL")), "never XCHATMAIL: {caps:?}");
    let entries = &report["getmetadata"]["entries"];
    assert_eq!(report["getmetadata"]["status"], "OK");
    assert_eq!(entries["/shared/vendor/deltachat/maxsmtprecipients"], "77");
    assert_eq!(entries["/shared/comment"], "Delta Chat through coi-proxy");
    assert_eq!(entries["/shared/admin"], "mailto:admin@example.org");
    for nil in ["irohrelay", "turn", "appversions"] {
        let entry = format!("/shared/vendor/deltachat/{nil}");
        assert!(entries.get(&entry).is_some_and(Value::is_null), "{entry} must be NIL: {entries}");
    }
    assert_eq!(report["devicetoken"]["entries"]["/private/devicetoken"], Value::Null, "write-only");
    assert_eq!(report["set_vendor"]["status"], "NO", "the server's entries are the configuration's");

    // Push off: no XDELTAPUSH (and no token is kept), the recipient limit is still answered.
    let off = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .extra("[deltachat]\nnotifier_url = \"\"\n")
        .start();
    let report = dc_push(&["caps", &off.imap_port.to_string(), ALICE]);
    let caps = report["capabilities"].to_string();
    assert!(!caps.contains("XDELTAPUSH") && caps.contains("METADATA"), "{caps}");
    assert_eq!(report["getmetadata"]["entries"]["/shared/vendor/deltachat/maxsmtprecipients"], "50", "the default");
    register(&off, &[PHONE]);
    assert!(!off.log().contains("Delta Chat device registered"), "{}", off.log());
}

#[test]
fn devices_are_notified_of_new_mail_with_no_client_connected_but_not_of_own_mail() {
    let provider = Provider::start_with(ProviderOptions { metadata: true, ..Default::default() });
    let notifier = Notifier::start();
    let proxy = proxy_for(&provider, &notifier, "");
    let from = proxy.log().len();
    register(&proxy, &[PHONE, TABLET]);
    // Kept by the proxy, never sent to the provider (which has METADATA and would take it).
    let mut direct = ImapClient::connect(provider.imap_port);
    direct.login(ALICE, "secret");
    let answer = direct.command("g1 GETMETADATA \"INBOX\" (/private/devicetoken)").join("");
    assert!(answer.contains("/private/devicetoken NIL") && !answer.contains("openpgp"), "{answer}");
    wait_for_worker(&proxy, from);
    assert_eq!(proxy.log().matches("Delta Chat device registered for push").count(), 2);

    // No client connected: a message from bob wakes both devices, each token POSTed verbatim.
    let delivered = Instant::now();
    provider.deliver("bob@example.org", ALICE, &mail("bob@example.org", "first"));
    let posts = notifier.wait(2, Duration::from_secs(10));
    let mut tokens: Vec<&str> = posts.iter().map(|p| p.token.as_str()).collect();
    tokens.sort();
    assert_eq!(tokens, [PHONE, TABLET]);
    assert!(posts.iter().all(|p| p.path == "/notify"));
    // The raw token is the whole body, as Delta Chat's notifier expects (no JSON, no form).
    for p in &posts {
        assert_eq!(p.headers.get("content-length"), Some(&p.token.len().to_string()), "{p:?}");
        assert!(!p.headers.contains_key("content-type"), "{p:?}");
    }
    eprintln!("delivery -> notifier: {:?}", posts[1].at.duration_since(delivered));

    // Her own mail (her other device's copy) wakes nobody.
    provider.deliver(ALICE, ALICE, &mail(ALICE, "own copy"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(notifier.posts().len(), 2, "own mail must not notify: {:?}", notifier.posts());

    // The notifier says the phone's token is dead (410): it is removed; the tablet goes on.
    notifier.set_status(PHONE, 410);
    provider.deliver("bob@example.org", ALICE, &mail("bob@example.org", "second"));
    notifier.wait(4, Duration::from_secs(10));
    proxy.wait_for_log("no longer valid (410)", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    provider.deliver("bob@example.org", ALICE, &mail("bob@example.org", "third"));
    notifier.wait(5, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(notifier.posts_of(PHONE).len(), 2, "the dead token is not used again");
    assert_eq!(notifier.posts_of(TABLET).len(), 3);
    assert_no_token_in(&proxy.log());
}

#[test]
fn a_failed_notification_is_retried_after_8_s_and_a_restart_keeps_tokens_and_the_retry() {
    let provider = Provider::start();
    let notifier = Notifier::start();
    let mut proxy = proxy_for(
        &provider,
        &notifier,
        &format!("[[account]]\nlogin = \"{ALICE}\"\npassword_command = \"printf secret\"\n"),
    );
    let from = proxy.log().len();
    register(&proxy, &[PHONE]);
    wait_for_worker(&proxy, from);
    notifier.set_status(PHONE, 500);
    provider.deliver("bob@example.org", ALICE, &mail("bob@example.org", "during an outage"));
    let first = notifier.wait(1, Duration::from_secs(10))[0].at;
    proxy.wait_for_log("Delta Chat notification failed; will retry", Duration::from_secs(5));
    // The retry is on disk once the store has committed it; then the proxy goes down.
    std::thread::sleep(Duration::from_millis(500));
    let before = proxy.log().len();
    proxy.restart();
    assert!(proxy.log()[before..].contains("Delta Chat notifications waiting for a retry"), "{}", proxy.log());
    notifier.set_status(PHONE, 200);
    let retry = notifier.wait(2, Duration::from_secs(20))[1].at;
    let after = retry.duration_since(first);
    eprintln!("retry after {after:?} (across a restart)");
    assert!(after >= Duration::from_secs(7) && after <= Duration::from_secs(12), "8 s after the failure: {after:?}");
    // The token survived too: the worker starts by itself (password_command) and new mail
    // notifies the phone with no client ever connecting again.
    wait_for_worker(&proxy, before);
    provider.deliver("bob@example.org", ALICE, &mail("bob@example.org", "after the restart"));
    notifier.wait(3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(notifier.posts().len(), 3, "delivered: no more retries");
    assert_no_token_in(&proxy.log());
}
