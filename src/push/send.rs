//! Sending one push (RFC 8030): encrypt the payload (RFC 8291, `aes128gcm`), sign a VAPID JWT,
//! POST to the push service, and read its answer: `201` delivered, `404`/`410` the
//! subscription is gone, `429` come back after `Retry-After`, other failures retry with backoff.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::subscription::Subscription;
use super::vapid;

/// Longest wait a `Retry-After` may ask for before we give up on that push instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What a push service's answer means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// The subscription no longer exists (404, 410): delete it.
    Gone,
    /// Too many requests (429): try again after this long.
    RetryAfter(Option<Duration>),
    /// A failure that may pass (5xx, network).
    Retry,
    /// The request itself is wrong (400, 401, 403, 413, …): retrying cannot help.
    Failed,
}

/// Reads a push service's status code and `Retry-After` (seconds; an HTTP date is not worth
/// parsing here and falls back to our own backoff).
pub fn classify(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        404 | 410 => Verdict::Gone,
        429 => Verdict::RetryAfter(retry_after.and_then(|v| v.trim().parse().ok()).map(Duration::from_secs)),
        408 | 500..=599 => Verdict::Retry,
        _ => Verdict::Failed,
    }
}

/// How long to wait before attempt `attempt` (1-based count of failures so far).
pub fn backoff(verdict: Verdict, failures: u32) -> Option<Duration> {
    let exponential = FIRST_BACKOFF * 2u32.saturating_pow(failures.saturating_sub(1).min(10));
    match verdict {
        Verdict::Retry | Verdict::RetryAfter(None) => Some(exponential),
        Verdict::RetryAfter(Some(d)) if d <= MAX_RETRY_AFTER => Some(d),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot encrypt the push payload")]
    Encrypt,
    /// The endpoint is an address on a private network and `[push] private_endpoints` is off.
    #[error("{origin} is on a private network (allow it with [push] private_endpoints = true)")]
    PrivateNetwork { origin: String },
    /// The HTTP client could not be built (its TLS setup or reqwest's); kept and shared.
    #[error("cannot set up the HTTP client: {0}")]
    Client(Arc<dyn std::error::Error + Send + Sync>),
    /// The push service could not be reached; names its origin only (the endpoint path is the
    /// subscription's secret).
    #[error("{origin}: {detail}")]
    Network { origin: String, detail: String },
}

/// One push request, ready to go.
pub struct Push<'a> {
    pub subscription: &'a Subscription,
    pub payload: &'a [u8],
    pub key: &'a vapid::VapidKey,
    /// JWT `sub`.
    pub subject: &'a str,
    pub ttl: u64,
    /// The request that proves a subscription works (adds `WebPush-Validation`).
    pub validation: bool,
    pub timeout: Duration,
    /// `[push] private_endpoints`.
    pub private_endpoints: bool,
}

/// Whether an address is on the public internet: not loopback, private, link-local, shared
/// (CGNAT), benchmarking (198.18/15), documentation, reserved (240/4), unique-local,
/// multicast or unspecified; an IPv6 address that embeds an IPv4 one (IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4) is judged by the IPv4 address it reaches.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_unspecified()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && (c == 0 || c == 2))
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let octets = v6.octets();
            let embedded = |at: usize| {
                IpAddr::V4(std::net::Ipv4Addr::new(octets[at], octets[at + 1], octets[at + 2], octets[at + 3]))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
            if seg[..6].iter().all(|&s| s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                return is_public(embedded(12));
            }
            // NAT64: the well-known prefix and the local-use one.
            if (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) {
                return is_public(embedded(12));
            }
            // 6to4.
            if seg[0] == 0x2002 {
                return is_public(embedded(2));
            }
            !(v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
                || (seg[0] == 0x2001 && seg[1] == 0)
                || seg[..4] == [0x100, 0, 0, 0])
        }
    }
}

/// Whether a host name means this machine (`localhost`, `LOCALHOST.`, `x.localhost`: RFC 6761
/// lets resolvers answer these from loopback without asking DNS).
fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Resolves push service names to public addresses only (unless `[push] private_endpoints`).
struct EndpointResolver {
    private_endpoints: bool,
}

impl reqwest::dns::Resolve for EndpointResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let private_endpoints = self.private_endpoints;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = if !private_endpoints && is_localhost(&host) {
                Vec::new()
            } else {
                tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .filter(|a| private_endpoints || is_public(a.ip()))
                    .collect()
            };
            if addrs.is_empty() {
                return Err(format!(
                    "{host} has no public address (a push server on a private network needs [push] private_endpoints = true)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client for every push: no redirects (a redirect could lead a loopback-only `http://`
/// request elsewhere), no proxy from the environment, platform trust for https. Built once per
/// `private_endpoints` setting and shared, with its connection pool, by every push.
fn client(private_endpoints: bool) -> Result<&'static reqwest::Client, SendError> {
    type SetupError = Arc<dyn std::error::Error + Send + Sync>;
    type Built = Result<reqwest::Client, SetupError>;
    static CLIENTS: [OnceLock<Built>; 2] = [OnceLock::new(), OnceLock::new()];
    CLIENTS[usize::from(private_endpoints)]
        .get_or_init(|| {
            let tls = crate::tls::https_client_config().map_err(|e| Arc::new(e) as SetupError)?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(EndpointResolver { private_endpoints }))
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| Arc::new(e) as SetupError)
        })
        .as_ref()
        .map_err(|e| SendError::Client(e.clone()))
}

/// Without `[push] private_endpoints`, an endpoint must be `https://` and not name this
/// machine or a non-public address (names are checked again when they are resolved).
fn check_address(url: &reqwest::Url, private_endpoints: bool) -> Result<(), SendError> {
    if private_endpoints {
        return Ok(());
    }
    let local = match url.host() {
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => is_localhost(name),
        None => true,
    };
    if url.scheme() != "https" || local {
        return Err(SendError::PrivateNetwork { origin: vapid::audience(url) });
    }
    Ok(())
}

/// What a push service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After`, as sent.
    pub retry_after: Option<String>,
}

/// Sends once; the service's status and `Retry-After`.
pub async fn post(push: &Push<'_>) -> Result<Answer, SendError> {
    let sub = push.subscription;
    let url = super::subscription::check_endpoint(&sub.endpoint)
        .map_err(|_| SendError::Network { origin: "(invalid endpoint)".into(), detail: "refused".into() })?;
    let origin = vapid::audience(&url);
    check_address(&url, push.private_endpoints)?;
    let ua_public = web_push_native::p256::PublicKey::from_sec1_bytes(&sub.p256dh).map_err(|_| SendError::Encrypt)?;
    let auth = web_push_native::Auth::clone_from_slice(&sub.auth);
    let body = web_push_native::encrypt(push.payload.to_vec(), &ua_public, &auth).map_err(|_| SendError::Encrypt)?;
    let authorization = vapid::authorization(push.key, &url, push.subject);
    let mut request = client(push.private_endpoints)?
        .post(url)
        .timeout(push.timeout)
        .header("TTL", push.ttl.to_string())
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .header("Authorization", authorization)
        .body(body);
    if push.validation {
        request = request.header("WebPush-Validation", "");
    }
    let response =
        request.send().await.map_err(|e| SendError::Network { origin: origin.clone(), detail: root_cause(&e) })?;
    let status = response.status().as_u16();
    let retry_after = response.headers().get("Retry-After").and_then(|v| v.to_str().ok()).map(str::to_string);
    debug!(%origin, status, "push sent");
    Ok(Answer { status, retry_after })
}

/// Sends with retries; the final verdict (`Retry` when the attempts ran out).
pub async fn deliver(push: &Push<'_>, max_attempts: u32, id: &str) -> Verdict {
    let origin = super::subscription::check_endpoint(&push.subscription.endpoint)
        .map(|u| vapid::audience(&u))
        .unwrap_or_default();
    let mut failures = 0;
    loop {
        let verdict = match post(push).await {
            Ok(Answer { status, retry_after }) => {
                let verdict = classify(status, retry_after.as_deref());
                if !matches!(verdict, Verdict::Delivered | Verdict::Gone) {
                    warn!(subscription = id, %origin, status, "push service refused the push");
                }
                verdict
            }
            Err(e) => {
                warn!(subscription = id, "push failed: {e}");
                if matches!(e, SendError::Network { .. }) { Verdict::Retry } else { Verdict::Failed }
            }
        };
        failures += 1;
        let wait = match backoff(verdict, failures) {
            Some(wait) if failures < max_attempts => wait,
            _ => {
                if !matches!(verdict, Verdict::Delivered | Verdict::Gone) {
                    info!(subscription = id, %origin, attempts = failures, "giving up on a push");
                }
                crate::metrics::push_done(verdict == Verdict::Delivered);
                return verdict;
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The innermost error text (reqwest's own says only "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(classify(201, None), Verdict::Delivered);
        assert_eq!(classify(404, None), Verdict::Gone);
        assert_eq!(classify(410, None), Verdict::Gone);
        assert_eq!(classify(429, Some("7")), Verdict::RetryAfter(Some(Duration::from_secs(7))));
        assert_eq!(classify(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")), Verdict::RetryAfter(None));
        assert_eq!(classify(503, None), Verdict::Retry);
        assert_eq!(classify(413, None), Verdict::Failed);
        assert_eq!(classify(403, None), Verdict::Failed);
    }

    #[test]
    fn waits() {
        let s = Duration::from_secs;
        assert_eq!(backoff(Verdict::Retry, 1), Some(s(1)));
        assert_eq!(backoff(Verdict::Retry, 3), Some(s(4)));
        assert_eq!(backoff(Verdict::RetryAfter(Some(s(30))), 1), Some(s(30)));
        assert_eq!(backoff(Verdict::RetryAfter(Some(s(3600))), 1), None, "too long: give up");
        assert_eq!(backoff(Verdict::RetryAfter(None), 2), Some(s(2)));
        assert_eq!(backoff(Verdict::Failed, 1), None);
        assert_eq!(backoff(Verdict::Gone, 1), None);
        assert_eq!(backoff(Verdict::Delivered, 1), None);
    }

    #[test]
    fn public_addresses() {
        for ip in
            ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "100.128.0.1", "64:ff9b::808:808", "198.20.0.1"]
        {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn private_endpoint_addresses_are_refused_unless_allowed() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let refused = check_address(&url("https://169.254.169.254/latest"), false).unwrap_err().to_string();
        assert_eq!(
            refused,
            "https://169.254.169.254 is on a private network (allow it with [push] private_endpoints = true)"
        );
        assert!(check_address(&url("https://[fd00::1]:8443/p"), false).is_err());
        assert!(check_address(&url("https://10.0.0.5/p"), true).is_ok(), "allowed by the config");
        assert!(check_address(&url("https://8.8.8.8/p"), false).is_ok());
        assert!(check_address(&url("https://push.example.org/p"), false).is_ok(), "names: checked when resolved");
        for local in ["http://127.0.0.1:8080/p", "https://localhost/p", "https://LOCALHOST./p", "https://127.1/p"] {
            assert!(check_address(&url(local), false).is_err(), "{local}");
            assert!(check_address(&url(local), true).is_ok(), "{local}: allowed by the config");
        }
        assert!(check_address(&url("http://push.example.org/p"), false).is_err(), "https only");
    }

    #[tokio::test]
    async fn names_resolve_to_public_addresses_only() {
        use reqwest::dns::Resolve;
        let resolve =
            |name: &str, private_endpoints: bool| EndpointResolver { private_endpoints }.resolve(name.parse().unwrap());
        assert!(resolve("localhost", false).await.is_err());
        assert!(resolve("LocalHost.", false).await.is_err());
        assert!(resolve("localhost", true).await.is_ok());
        // A name that resolves to a private address (an address as name stands in for DNS).
        let err = resolve("10.0.0.7", false).await.err().unwrap().to_string();
        assert!(err.contains("has no public address"), "{err}");
        assert!(resolve("10.0.0.7", true).await.is_ok());
        assert!(resolve("127.0.0.1", false).await.is_err());
    }
}
