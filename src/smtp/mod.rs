//! SMTP submission (an edge): clients hand mail to the proxy (`server`, `session`), the proxy
//! commits it to a durable queue and answers `250`, and a relay task (`queue`) hands it to the
//! provider's submission server (`relay`) with retries. Refusals and give-ups become a
//! delivery-failure report in the sender's INBOX (`report`). The receipts agent (`receipts`)
//! runs here because it sends through the queue. The IMAP side is reached only through
//! `imap::upstream` (the proxy's own provider connections) and the context's channels.

pub mod control;
mod gateway;
pub mod queue;
pub mod receipts;
pub mod relay;
pub mod report;
pub mod server;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::SmtpProvider;
use crate::context::Context;
use crate::tls::UpstreamTls;
use relay::{ProviderCaps, SmtpClient};
use session::Policy;

/// What the SMTP sessions and the relay task share.
pub struct Smtp {
    pub shared: Arc<Context>,
    pub caps: CapsCache,
    pub queue: queue::Queue,
    /// Why each account's queued mail waits right now, as the relay task knows it (for
    /// `queue list`).
    pub waits: Arc<Waits>,
    /// The OpenPGP gateway's keys and peers; `None` when `[autocrypt] enabled = false`.
    pub identity: Option<crate::openpgp::identity::Identity>,
    /// The decrypted views plain sessions see, when keys are held: read receipts asked for
    /// inside the encryption are read there.
    pub views: Option<Arc<crate::openpgp::cache::Views>>,
}

/// Why an account's queued mail is not being sent, by login: what the relay task knows and
/// the store does not (no password yet, a failing `password_command`, a send in progress).
#[derive(Default)]
pub struct Waits(Mutex<HashMap<String, String>>);

impl Waits {
    pub fn set(&self, login: &str, why: String) {
        self.0.lock().expect("waits").insert(login.to_ascii_lowercase(), why);
    }

    pub fn clear(&self, login: &str) {
        self.0.lock().expect("waits").remove(&login.to_ascii_lowercase());
    }

    /// A copy, for a listing made off the runtime.
    pub fn snapshot(&self) -> HashMap<String, String> {
        self.0.lock().expect("waits").clone()
    }
}

/// The machine's name, for greetings and reports (`localhost` if unknown).
pub fn hostname() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}

/// `SIZE` when the provider's limit is unknown (it could not be asked yet) or unlimited.
pub const DEFAULT_MAX_SIZE: u64 = 50 * 1024 * 1024;
/// The largest `SIZE` the proxy offers whatever the provider allows: a message is held in
/// memory while it is received.
pub const HARD_MAX_SIZE: u64 = 100 * 1024 * 1024;
/// How long a failed capability probe is remembered before the next client triggers another.
const PROBE_RETRY: Duration = Duration::from_secs(60);

/// What each provider's submission server offers, learnt from its EHLO whenever the proxy
/// connects (login checks, relaying, or a probe). The SMTP listeners advertise SIZE, SMTPUTF8
/// and DSN from it.
#[derive(Default)]
pub struct CapsCache {
    known: Mutex<HashMap<String, ProviderCaps>>,
    failed: Mutex<HashMap<String, Instant>>,
    probing: tokio::sync::Mutex<()>,
}

fn key(provider: &SmtpProvider) -> String {
    format!("{:?} {}", provider.smtp.security, provider.smtp)
}

impl CapsCache {
    pub fn record(&self, provider: &SmtpProvider, caps: &ProviderCaps) {
        self.known.lock().expect("caps").insert(key(provider), caps.clone());
    }

    /// Cached capabilities, without asking the provider.
    pub fn known(&self, provider: &SmtpProvider) -> Option<ProviderCaps> {
        self.known.lock().expect("caps").get(&key(provider)).cloned()
    }

    /// Cached capabilities, else asks the provider (one probe at a time; a failure is
    /// remembered for a minute so that clients are not held up by an unreachable provider).
    pub async fn get(&self, provider: &SmtpProvider, tls: &UpstreamTls, timeout: Duration) -> Option<ProviderCaps> {
        if let Some(caps) = self.known(provider) {
            return Some(caps);
        }
        let _guard = self.probing.lock().await;
        if let Some(caps) = self.known(provider) {
            return Some(caps);
        }
        if self.failed.lock().expect("caps").get(&key(provider)).is_some_and(|t| t.elapsed() < PROBE_RETRY) {
            return None;
        }
        match SmtpClient::connect(provider, tls, timeout).await {
            Ok(client) => {
                let caps = client.caps.clone();
                self.record(provider, &caps);
                client.quit().await;
                Some(caps)
            }
            Err(e) => {
                tracing::warn!("cannot ask the submission server {} what it supports: {e}", provider.smtp);
                self.failed.lock().expect("caps").insert(key(provider), Instant::now());
                None
            }
        }
    }
}

impl Policy {
    /// What to offer clients of a provider with these capabilities (`None`: unknown). SIZE is
    /// also kept within `queue_bytes` (`[queue] max_bytes_per_account`): a message that could
    /// never fit the account's queue is refused for good (`552`), not deferred forever (`452`).
    pub fn for_provider(caps: Option<&ProviderCaps>, queue_bytes: u64) -> Policy {
        let max_size = match caps.and_then(|c| c.size) {
            Some(n) if n > 0 => n.min(HARD_MAX_SIZE),
            Some(_) => HARD_MAX_SIZE,
            None => DEFAULT_MAX_SIZE,
        }
        .min(queue_bytes);
        Policy { max_size, smtputf8: caps.is_some_and(|c| c.smtputf8 && c.eight_bit), dsn: caps.is_some_and(|c| c.dsn) }
    }
}
