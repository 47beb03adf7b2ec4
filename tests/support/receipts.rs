//! Helpers of the receipts tests (a real Postfix in front of Dovecot): a proxy that also
//! submits, chat messages asking for read receipts, the receipts that came, `queue list`.

use super::provider::Provider;
use super::proxy::Proxy;

/// A proxy in front of the provider's IMAP and SMTP.
pub fn proxy_with_smtp(provider: &Provider, extra: &str) -> Proxy {
    Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .extra(extra)
        .start()
}

pub fn has(message: &[u8], needle: &str) -> bool {
    message.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A chat message from alice to `to` asking for a read receipt the way Delta Chat does.
pub fn chat_from_alice(id: &str, to: &str) -> Vec<u8> {
    format!(
        "From: alice@example.org\r\nTo: {to}\r\nChat-Version: 1.0\r\nMessage-ID: <{id}>\r\n\
         Chat-Disposition-Notification-To: alice@example.org\r\nSubject: Message from alice\r\n\r\nhello {id}\r\n"
    )
    .into_bytes()
}

/// How many of `messages` are read receipts about `id`.
pub fn mdns_about(messages: &[Vec<u8>], id: &str) -> usize {
    let needle = format!("Original-Message-ID: <{id}>");
    messages.iter().filter(|m| has(m, &needle)).count()
}

/// `coi-proxy queue list` with the test proxy's config.
pub fn queue_list(proxy: &Proxy) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(&proxy.config_path)
        .args(["queue", "list"])
        .output()
        .expect("run coi-proxy queue list");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
