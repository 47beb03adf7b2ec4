//! `proxy.toml`: the configuration model, its defaults and its validation.
//!
//! Every table is `deny_unknown_fields`, so a typo is an error that names the file, line and key
//! instead of a silently ignored setting.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod oauth2;
pub use oauth2::{Endpoints as OAuth2Endpoints, OAuth2};

/// The whole configuration, as read from `proxy.toml` (or built from defaults and flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Store file, local certificate and key live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The key that seals secrets at rest (`seal`); default `<state_dir>/seal.key`. Kept
    /// elsewhere (a systemd credential, a tmpfs), a stolen state directory reveals no secret.
    pub seal_key_file: Option<PathBuf>,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub upstream: Option<Upstream>,
    #[serde(default)]
    pub coi: Coi,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub push: Push,
    #[serde(default)]
    pub deltachat: DeltaChat,
    #[serde(default)]
    pub autocrypt: Autocrypt,
    #[serde(default, rename = "account")]
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub log: Log,
    /// Many instances sharing state through etcd (issue 21); `None`: one instance, local state.
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: this instance's place among others that share accounts through etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The etcd members' client URLs (`http://host:2379`, or `https://` with `ca_file`); the
    /// client uses whichever answers.
    pub etcd: Vec<String>,
    /// For `https://` members: the CA (PEM) that signed etcd's server certificates.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for an etcd that asks for one
    /// (`--client-cert-auth`); both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// This instance's name, unique among the instances.
    pub node: String,
    /// The lease's time to live: how long a dead instance's accounts wait for another owner.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_lease_secs() -> u64 {
    10
}

impl Cluster {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.etcd.is_empty() {
            return Err((
                "cluster.etcd".into(),
                "name at least one etcd member, e.g. [\"http://127.0.0.1:2379\"]".into(),
            ));
        }
        let tls = self.etcd[0].starts_with("https://");
        for url in &self.etcd {
            let rest = url.strip_prefix(if tls { "https://" } else { "http://" }).ok_or_else(|| {
                (
                    "cluster.etcd".to_string(),
                    format!(
                        "`{url}`: give http://host:port, or https://host:port with ca_file (every member the same \
                         way)"
                    ),
                )
            })?;
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(("cluster.etcd".into(), format!("`{url}`: give http://host:port or https://host:port")));
            }
        }
        match (tls, &self.ca_file) {
            (true, None) => {
                return Err((
                    "cluster.ca_file".into(),
                    "https:// members need the CA that signed etcd's certificates (ca_file = \"/etc/coi-proxy/etcd-ca.pem\")"
                        .into(),
                ));
            }
            (false, Some(_)) => {
                return Err(("cluster.ca_file".into(), "is for https:// members; these are http://".into()));
            }
            _ => {}
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err(("cluster.key_file".into(), "cert_file needs its key_file".into())),
            (None, Some(_)) => return Err(("cluster.cert_file".into(), "key_file needs its cert_file".into())),
            (Some(_), Some(_)) if !tls => {
                return Err(("cluster.cert_file".into(), "a client certificate is for https:// members".into()));
            }
            _ => {}
        }
        let node_ok = !self.node.is_empty()
            && self.node.len() <= 64
            && self.node.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !node_ok {
            return Err((
                "cluster.node".into(),
                "a name of 1 to 64 letters, digits, '-', '_' or '.', unique among the instances".into(),
            ));
        }
        if !(2..=3600).contains(&self.lease_secs) {
            return Err(("cluster.lease_secs".into(), "must be between 2 and 3600 (etcd's minimum is about 2)".into()));
        }
        Ok(())
    }
}

/// Listening addresses; a missing key disables that listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Plain IMAP with STARTTLS offered.
    pub imap: Option<SocketAddr>,
    /// Implicit-TLS IMAP.
    pub imaps: Option<SocketAddr>,
    /// Submission with STARTTLS offered (served by a later version).
    pub smtp: Option<SocketAddr>,
    /// Implicit-TLS submission (served by a later version).
    pub smtps: Option<SocketAddr>,
    /// Whether LOGIN/AUTHENTICATE are allowed before TLS on the plain listener. Unset means:
    /// allowed on loopback addresses only, where nobody can listen in.
    pub plaintext_auth: Option<bool>,
    /// HTTP `/healthz` and `/metrics` (Prometheus); loopback only, as it has no authentication.
    pub metrics: Option<SocketAddr>,
    /// Every client listener (imap, imaps, smtp, smtps) wants a PROXY v1/v2 header first
    /// (HAProxy's `send-proxy-v2`) and takes the client's address from it; a connection without
    /// a valid one is closed. Read per connection: a reload applies it to the next ones.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            imap: Some(SocketAddr::from(([127, 0, 0, 1], 1143))),
            imaps: Some(SocketAddr::from(([127, 0, 0, 1], 1993))),
            smtp: None,
            smtps: None,
            plaintext_auth: None,
            metrics: None,
            proxy_protocol: false,
        }
    }
}

impl Listen {
    /// Whether plaintext authentication is allowed on a plain listener bound to `addr`.
    pub fn plaintext_auth_allowed(&self, addr: &SocketAddr) -> bool {
        self.plaintext_auth.unwrap_or_else(|| addr.ip().is_loopback())
    }
}

/// A provider's servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub imap: String,
    pub smtp: Option<String>,
    /// An extra trust anchor (PEM) for a provider with a private CA or a self-signed certificate.
    pub ca_file: Option<PathBuf>,
    /// Tell the provider each client's address before its login (IMAP `ID` with
    /// `x-originating-ip`, submission `XCLIENT ADDR`), so that the provider's own penalty for
    /// failed logins hits the guesser's address, not the proxy's. A provider takes it only
    /// from addresses it trusts (Dovecot: `login_trusted_networks` with the proxy's address);
    /// others ignore it. Unset: on.
    pub forward_client_address: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coi {
    #[serde(default = "default_mailbox_root")]
    pub mailbox_root: String,
    /// Clients (by their IMAP `ID` name) that watch INBOX only and so are shown `<root>/Chats`
    /// in its place while the message filter is `active`.
    #[serde(default = "default_chat_clients")]
    pub chat_clients: Vec<String>,
    /// How often a provider without IDLE is polled, in seconds: by the account worker, and for
    /// clients in IDLE (which the proxy then serves itself).
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// The longest the account worker goes without reading the COI configuration again from
    /// the provider's METADATA (where another device or proxy instance may change it), seconds.
    #[serde(default = "default_config_check_secs")]
    pub config_check_secs: u64,
    /// METADATA entries per account kept by the proxy (for providers without METADATA).
    #[serde(default = "default_max_metadata_entries")]
    pub max_metadata_entries: usize,
    /// Largest METADATA value kept by the proxy, bytes.
    #[serde(default = "default_max_metadata_size")]
    pub max_metadata_size: u64,
    /// Move chat mail the provider filed as spam (its `\Junk` folder) to INBOX (Chats in
    /// `active` mode); the account worker looks at Junk each time it wakes.
    #[serde(default = "default_true")]
    pub rescue_junk: bool,
    /// The Junk folder's name, for a provider that does not mark it `\Junk` (SPECIAL-USE).
    pub junk_folder: Option<String>,
    /// How often the worker looks at Junk at the latest (it looks each time it wakes), seconds.
    #[serde(default = "default_junk_poll_secs")]
    pub junk_poll_secs: u64,
}

impl Default for Coi {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_junk_poll_secs() -> u64 {
    60
}
impl Coi {
    /// Whether a session whose client named itself `id_name` (IMAP `ID`) is a chat client: it
    /// is listed in `chat_clients` (Delta Chat by default). A chat client sees mail exactly as
    /// stored and sends its own receipts; every other session is a plain mail client, for which
    /// the proxy acts (read receipts, the OpenPGP gateway, hiding SecureJoin mail).
    pub fn is_chat_client(&self, id_name: Option<&str>) -> bool {
        id_name.is_some_and(|n| self.chat_clients.iter().any(|c| c.eq_ignore_ascii_case(n.trim())))
    }
}

fn default_chat_clients() -> Vec<String> {
    vec!["Delta Chat".into()]
}
fn default_poll_secs() -> u64 {
    10
}
fn default_config_check_secs() -> u64 {
    30
}
fn default_max_metadata_entries() -> usize {
    1000
}
fn default_max_metadata_size() -> u64 {
    64 * 1024
}

/// Bounds on everything a peer controls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest command line a client may send (bytes, literals excluded).
    #[serde(default = "default_max_line")]
    pub max_line: usize,
    /// Largest literal (e.g. an APPENDed message) a client may send after login.
    #[serde(default = "default_max_literal")]
    pub max_literal: u64,
    /// Seconds a client may take to log in.
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// Seconds an SMTP client may take to send one message's data (DATA to the final dot);
    /// then `421` and the partial message is dropped (a trickling client must not hold a
    /// session, and what it sent, for ever).
    #[serde(default = "default_data_timeout")]
    pub data_timeout_secs: u64,
    /// Seconds of client silence after which an authenticated session is logged out
    /// (RFC 3501 5.4: at least 30 minutes).
    #[serde(default = "default_autologout")]
    pub autologout_secs: u64,
    /// Seconds allowed for connecting to a provider (TCP, TLS and greeting).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds the provider may stay silent while it owes a client an answer (IDLE excepted);
    /// then the client gets `* BYE [UNAVAILABLE] ... timed out` instead of waiting forever.
    #[serde(default = "default_provider_timeout")]
    pub provider_timeout_secs: u64,
    /// IMAP sessions open at once; one more gets `* BYE [UNAVAILABLE] Too many connections`.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// IMAP sessions open at once from one client address (an IPv6 /64 counts as one).
    #[serde(default = "default_max_sessions_per_ip")]
    pub max_sessions_per_ip: usize,
    /// Wait before answering a failed login, doubled per recent failure from the same address
    /// (at most 30 s). Unset: 2000 on listeners bound to a non-loopback address, none on
    /// loopback ones; set: this on every listener (0 turns it off).
    pub auth_failure_delay_ms: Option<u64>,
    /// Bytes the proxy may hold in total for what peers make it read whole (commands collected
    /// for a wing, responses read for its own commands, messages in the OpenPGP gateway);
    /// beyond it such a request gets `NO [LIMIT]` / `452` (`limits::budget`).
    #[serde(default = "default_max_memory")]
    pub max_memory: usize,
    /// The share of `max_memory` one account may hold at once.
    #[serde(default = "default_max_memory_per_account")]
    pub max_memory_per_account: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: default_max_line(),
            max_literal: default_max_literal(),
            login_timeout_secs: default_login_timeout(),
            data_timeout_secs: default_data_timeout(),
            autologout_secs: default_autologout(),
            connect_timeout_secs: default_connect_timeout(),
            provider_timeout_secs: default_provider_timeout(),
            max_sessions: default_max_sessions(),
            max_sessions_per_ip: default_max_sessions_per_ip(),
            auth_failure_delay_ms: None,
            max_memory: default_max_memory(),
            max_memory_per_account: default_max_memory_per_account(),
        }
    }
}

impl Limits {
    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout_secs)
    }
    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.data_timeout_secs)
    }
    pub fn autologout(&self) -> Duration {
        Duration::from_secs(self.autologout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn provider_timeout(&self) -> Duration {
        Duration::from_secs(self.provider_timeout_secs)
    }
    /// The base delay after a failed login on a listener bound to `listener`.
    pub fn auth_failure_delay(&self, listener: &SocketAddr) -> Duration {
        let default = if listener.ip().is_loopback() { 0 } else { DEFAULT_AUTH_FAILURE_DELAY_MS };
        Duration::from_millis(self.auth_failure_delay_ms.unwrap_or(default))
    }
}

/// The outgoing mail queue (SMTP submission).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Delay before the first retry after a temporary failure; doubled per attempt.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: u64,
    /// Longest delay between two attempts.
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// How long a message may stay undelivered before it is given up and a failure report goes
    /// to the sender's INBOX (default 5 days, as most MTAs).
    #[serde(default = "default_give_up")]
    pub give_up_after_secs: u64,
    /// Messages one account may have waiting for the provider; one more is refused with
    /// `452 4.3.1` (the client keeps it and retries), so an unreachable provider or a runaway
    /// client cannot fill the disk for everyone.
    #[serde(default = "default_queue_messages")]
    pub max_messages_per_account: u64,
    /// Bytes of message data one account may have waiting; beyond it, `452 4.3.1` as well.
    #[serde(default = "default_queue_bytes")]
    pub max_bytes_per_account: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            retry_initial_secs: default_retry_initial(),
            retry_max_secs: default_retry_max(),
            give_up_after_secs: default_give_up(),
            max_messages_per_account: default_queue_messages(),
            max_bytes_per_account: default_queue_bytes(),
        }
    }
}

fn default_retry_initial() -> u64 {
    60
}
fn default_retry_max() -> u64 {
    60 * 60
}
fn default_give_up() -> u64 {
    5 * 24 * 60 * 60
}
fn default_queue_messages() -> u64 {
    1000
}
fn default_queue_bytes() -> u64 {
    512 * 1024 * 1024
}

/// The COI WebPush extension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Subscriptions per account; one more is refused with `NO` (Dovecot's default).
    #[serde(default = "default_subscription_limit")]
    pub subscription_limit: usize,
    /// Seconds a client has to confirm a subscription before it is dropped (the spec's 5 min).
    #[serde(default = "default_validation_expiry")]
    pub validation_expiry_secs: u64,
    /// The VAPID JWT `sub`: a `mailto:` or `https:` contact for the push services. Unset means
    /// `mailto:postmaster@<the account's domain>`.
    pub vapid_subject: Option<String>,
    /// How long a push service keeps a push for a device that is offline, seconds (the `TTL`
    /// header): a day, so that a phone that comes back is still woken.
    #[serde(default = "default_push_ttl")]
    pub ttl_secs: u64,
    /// Attempts per push when the push service fails or asks to wait (429).
    #[serde(default = "default_push_attempts")]
    pub max_attempts: u32,
    /// Seconds allowed for one request to a push service.
    #[serde(default = "default_push_timeout")]
    pub timeout_secs: u64,
    /// Allow push endpoints on private networks (a self-hosted push server on the LAN). Off,
    /// a logged-in user cannot make the proxy send requests into the network it runs in.
    #[serde(default)]
    pub private_endpoints: bool,
}

impl Default for Push {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl Push {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

fn default_subscription_limit() -> usize {
    10
}
fn default_validation_expiry() -> u64 {
    5 * 60
}
fn default_push_ttl() -> u64 {
    24 * 60 * 60
}
fn default_push_attempts() -> u32 {
    4
}
fn default_push_timeout() -> u64 {
    10
}

/// What Delta Chat reads from a chatmail relay, served on any provider: push notifications
/// through Delta Chat's notification service and the server's METADATA entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaChat {
    /// Where a new message's device tokens are POSTed; `""` turns Delta Chat push off. The
    /// default is Delta Chat's public service (README: what it sees).
    #[serde(default = "default_notifier_url")]
    pub notifier_url: String,
    /// `/shared/vendor/deltachat/maxsmtprecipients`: how many recipients Delta Chat puts on one
    /// message (it splits larger groups). 50 is Delta Chat's own default for providers it does
    /// not know, safe for ordinary providers (chatmail relays say 1000).
    #[serde(default = "default_max_smtp_recipients")]
    pub max_smtp_recipients: u32,
    /// `/shared/comment`: a note about this server that Delta Chat shows in its account info.
    pub comment: Option<String>,
    /// `/shared/admin`: how to reach the admin (a `mailto:` URI), shown likewise.
    pub admin: Option<String>,
}

impl Default for DeltaChat {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// The OpenPGP gateway (issue 14): an OpenPGP key per account, Autocrypt and SecureJoin on the
/// plain mail client's behalf, so that Delta Chat users can write to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autocrypt {
    /// On by default: reaching Delta Chat users is what COI promises, and for everyone else it
    /// adds one `Autocrypt` header to outgoing mail; mail is encrypted only to correspondents
    /// who announced a key. Off: no keys are made, mail passes as the client sends it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    // The secret keys are sealed with the top-level `seal_key_file`, as every secret in the
    // store: one key, so OAuth2 grants, OpenPGP keys and cached views cannot drift apart.
}

impl Default for Autocrypt {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl DeltaChat {
    /// Whether push is on (a notifier is set).
    pub fn push(&self) -> bool {
        !self.notifier_url.is_empty()
    }
}

fn default_notifier_url() -> String {
    "https://notifications.delta.chat/notify".into()
}
fn default_max_smtp_recipients() -> u32 {
    50
}

fn default_true() -> bool {
    true
}

/// A per-login or per-domain provider override.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub login: Option<String>,
    pub domain: Option<String>,
    pub imap: Option<String>,
    pub smtp: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Lets the account worker log in with no client connected (used by later versions).
    pub password_command: Option<String>,
    /// Send read receipts for chat messages that plain mail clients mark read (see README,
    /// Receipts).
    #[serde(default)]
    pub read_receipts: bool,
    /// Sign in to the provider with OAuth2; the client logs in to the proxy with a local
    /// password (`coi-proxy oauth authorize`).
    pub oauth2: Option<OAuth2>,
    /// More addresses the account may send as (aliases), besides its login: SMTP `MAIL FROM`
    /// and the `From:` field must be one of them.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Let the account send with any `MAIL FROM` and `From:` (a list server, a shared
    /// mailbox); the provider's own rules still apply.
    #[serde(default)]
    pub allow_any_sender: bool,
    /// Whether the provider tells logins apart by case (`Bob@x` and `bob@x` two users). The
    /// proxy keeps each account's state under its login: exactly as typed when this is true,
    /// lower-cased when false. Unset: true, so that two users never share state; set false
    /// for a provider that ignores case (most do) when users type their login differently.
    pub login_case_sensitive: Option<bool>,
    /// As `[upstream] forward_client_address`, for this account's provider.
    pub forward_client_address: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A `RUST_LOG`-style filter, e.g. `info` or `coi_proxy=debug`.
    pub filter: Option<String>,
}

fn default_state_dir() -> PathBuf {
    default_state_dir_for_user()
}
fn default_mailbox_root() -> String {
    "COI".into()
}
fn default_max_line() -> usize {
    64 * 1024
}
fn default_max_literal() -> u64 {
    64 * 1024 * 1024
}
fn default_login_timeout() -> u64 {
    60
}
fn default_data_timeout() -> u64 {
    10 * 60
}
fn default_autologout() -> u64 {
    30 * 60
}
fn default_connect_timeout() -> u64 {
    15
}
fn default_max_memory() -> usize {
    1024 * 1024 * 1024
}
fn default_max_memory_per_account() -> usize {
    256 * 1024 * 1024
}
fn default_max_sessions() -> usize {
    2000
}
fn default_max_sessions_per_ip() -> usize {
    // A mail client opens a few connections per account; this leaves room for many accounts.
    100
}
const DEFAULT_AUTH_FAILURE_DELAY_MS: u64 = 2000;
/// `[[account]] login_case_sensitive` when unset: two logins that differ in case are two
/// accounts unless the config says the provider ignores case.
const DEFAULT_LOGIN_CASE_SENSITIVE: bool = true;
fn default_provider_timeout() -> u64 {
    // Long searches and copies on a large mailbox; Dovecot sends progress lines meanwhile.
    5 * 60
}

/// Where the system-wide configuration lives (`/etc/coi-proxy/proxy.toml`): the systemd unit's
/// and the Debian package's.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/coi-proxy";
/// The state directory of the system service (the unit's `StateDirectory=coi-proxy`), and the
/// default `state_dir` of a configuration read from [`SYSTEM_CONFIG_DIR`], so that every command
/// run with the system's config (`sudo coi-proxy cert export`, `queue list`, `check`) uses the
/// service's state without a `--state-dir`.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/coi-proxy";

/// Whether `path` is the system-wide configuration (a file in [`SYSTEM_CONFIG_DIR`]).
pub fn is_system_config(path: &Path) -> bool {
    std::path::absolute(path).is_ok_and(|p| p.parent() == Some(Path::new(SYSTEM_CONFIG_DIR)))
}

/// `$XDG_DATA_HOME/coi-proxy`, else `~/.local/share/coi-proxy`; `/var/lib/coi-proxy` for a
/// user without a home.
pub fn default_state_dir_for_user() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("coi-proxy");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/coi-proxy");
    }
    PathBuf::from("/var/lib/coi-proxy")
}

/// Where `run` and `check` look for a config file when none is given.
pub fn default_config_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("proxy.toml")];
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        paths.push(PathBuf::from(dir).join("coi-proxy/proxy.toml"));
    } else if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        paths.push(PathBuf::from(home).join(".config/coi-proxy/proxy.toml"));
    }
    paths.push(PathBuf::from("/etc/coi-proxy/proxy.toml"));
    paths
}

/// `https://…`, or `http://` to a loopback address (a notifier on this machine): device tokens
/// never cross a network in the clear.
fn check_notifier_url(text: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(text).map_err(|_| "not a URL (https://host/path, or \"\" to turn push off)")?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err("the URL has no host"),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("http:// only to this machine (127.0.0.1, ::1, localhost); use https://"),
        _ => Err("must be an https:// URL"),
    }
}

/// A configuration problem, worded for the person who edits the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Syntax { path: PathBuf, line: usize, column: usize, key: String, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    /// A command-line option's value.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

impl Config {
    /// A configuration with every default and no provider (one may come from `--upstream`).
    pub fn defaults() -> Config {
        toml::from_str("").expect("the empty config is valid")
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names the source in errors, and a file in
    /// [`SYSTEM_CONFIG_DIR`] without `state_dir` gets [`SYSTEM_STATE_DIR`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
        if is_system_config(path) && toml::from_str::<toml::Table>(text).is_ok_and(|t| !t.contains_key("state_dir")) {
            config.state_dir = PathBuf::from(SYSTEM_STATE_DIR);
        }
        config.validate().map_err(|(key, message)| ConfigError::Invalid { path: path.to_owned(), key, message })?;
        Ok(config)
    }

    /// Checks what serde cannot: URLs, account selectors. Returns the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(up) = &self.upstream {
            ServerUrl::parse_imap(&up.imap).map_err(|e| ("upstream.imap".to_string(), e.to_string()))?;
            if let Some(smtp) = &up.smtp {
                ServerUrl::parse_smtp(smtp).map_err(|e| ("upstream.smtp".to_string(), e.to_string()))?;
            }
        }
        for (i, account) in self.accounts.iter().enumerate() {
            let key = |k: &str| format!("account[{i}].{k}");
            match (&account.login, &account.domain) {
                (None, None) => {
                    return Err((key("login"), "an [[account]] needs `login` or `domain`".into()));
                }
                (Some(_), Some(_)) => {
                    return Err((key("domain"), "give either `login` or `domain`, not both".into()));
                }
                _ => {}
            }
            if let Some(imap) = &account.imap {
                ServerUrl::parse_imap(imap).map_err(|e| (key("imap"), e.to_string()))?;
            }
            if let Some(smtp) = &account.smtp {
                ServerUrl::parse_smtp(smtp).map_err(|e| (key("smtp"), e.to_string()))?;
            }
            if account.imap.is_none() && self.upstream.is_none() {
                return Err((key("imap"), "no `imap` here and no [upstream] to fall back on".into()));
            }
            if let Some(oauth2) = &account.oauth2 {
                oauth2.endpoints().map_err(|(k, why)| (key(&format!("oauth2.{k}")), why))?;
                if account.password_command.is_some() {
                    return Err((
                        key("password_command"),
                        "an account with [account.oauth2] signs in with its OAuth2 grant; remove password_command"
                            .into(),
                    ));
                }
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if self.listen.metrics.is_some_and(|a| !a.ip().is_loopback()) {
            return Err((
                "listen.metrics".into(),
                "must be a loopback address: it has no authentication (scrape it via SSH or a proxy)".into(),
            ));
        }
        if self.limits.provider_timeout_secs == 0 {
            return Err(("limits.provider_timeout_secs".into(), "must be at least 1".into()));
        }
        if self.limits.max_sessions == 0 || self.limits.max_sessions_per_ip == 0 {
            return Err((
                "limits.max_sessions".into(),
                "max_sessions and max_sessions_per_ip must be at least 1".into(),
            ));
        }
        if self.limits.max_memory_per_account < 16 << 20 || self.limits.max_memory < self.limits.max_memory_per_account
        {
            return Err((
                "limits.max_memory_per_account".into(),
                "must be at least 16 MiB (16777216) and at most limits.max_memory".into(),
            ));
        }
        if self.limits.max_line < 1024 {
            return Err(("limits.max_line".into(), "must be at least 1024".into()));
        }
        if self.queue.retry_initial_secs == 0 || self.queue.retry_max_secs < self.queue.retry_initial_secs {
            return Err((
                "queue.retry_initial_secs".into(),
                "must be at least 1 and at most queue.retry_max_secs".into(),
            ));
        }
        if self.queue.max_messages_per_account == 0 || self.queue.max_bytes_per_account == 0 {
            return Err((
                "queue.max_messages_per_account".into(),
                "max_messages_per_account and max_bytes_per_account must be at least 1".into(),
            ));
        }
        if let Some(filter) = &self.log.filter
            && let Err(e) = tracing_subscriber::EnvFilter::try_new(filter)
        {
            return Err((
                "log.filter".into(),
                format!("`{filter}` is not a log filter ({e}); e.g. \"info\" or \"coi_proxy=debug,info\""),
            ));
        }
        if let Some(sub) = &self.push.vapid_subject
            && !(sub.starts_with("mailto:") || sub.starts_with("https:"))
        {
            return Err(("push.vapid_subject".into(), "must be a mailto: or https: URI".into()));
        }
        if self.push.max_attempts == 0 || self.push.timeout_secs == 0 {
            return Err((
                "push.max_attempts".into(),
                "push.max_attempts and push.timeout_secs must be at least 1".into(),
            ));
        }
        if self.deltachat.push() {
            check_notifier_url(&self.deltachat.notifier_url)
                .map_err(|e| ("deltachat.notifier_url".to_string(), e.to_string()))?;
        }
        if self.coi.junk_poll_secs == 0 {
            return Err(("coi.junk_poll_secs".into(), "must be at least 1".into()));
        }
        if self.deltachat.max_smtp_recipients == 0 {
            return Err(("deltachat.max_smtp_recipients".into(), "must be at least 1".into()));
        }
        if self.limits.autologout_secs < 30 * 60 {
            return Err(("limits.autologout_secs".into(), "RFC 3501 requires at least 1800 seconds".into()));
        }
        Ok(())
    }

    /// The `[[account]]` that applies to a login: the one whose `login` matches, else the one
    /// whose `domain` matches.
    pub fn account_for(&self, login: &str) -> Option<&Account> {
        let domain = login.rsplit_once('@').map(|(_, d)| d);
        self.accounts.iter().find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login))).or_else(|| {
            self.accounts
                .iter()
                .find(|a| a.domain.as_deref().zip(domain).is_some_and(|(a, d)| a.eq_ignore_ascii_case(d)))
        })
    }

    /// The account `login` is, as the proxy keys its state (COI settings, METADATA it keeps,
    /// push subscriptions, queued mail, remembered password) and logs in for the account's own
    /// work: the login exactly as given where the provider tells case apart
    /// (`login_case_sensitive`, the default), else lower-cased.
    pub fn account_key(&self, login: &str) -> String {
        let case_sensitive =
            self.account_for(login).and_then(|a| a.login_case_sensitive).unwrap_or(DEFAULT_LOGIN_CASE_SENSITIVE);
        if case_sensitive { login.to_string() } else { login.to_ascii_lowercase() }
    }

    /// Whether the provider of `login` is told the client's address before a login.
    pub fn forward_client_address(&self, login: &str) -> bool {
        self.account_for(login)
            .and_then(|a| a.forward_client_address)
            .or(self.upstream.as_ref().and_then(|u| u.forward_client_address))
            .unwrap_or(true)
    }

    /// The IMAP provider for a login: an `[[account]]` whose `login` matches, then one whose
    /// `domain` matches, then `[upstream]`.
    pub fn provider_for(&self, login: &str) -> Option<Provider> {
        let domain = login.rsplit_once('@').map(|(_, d)| d);
        let by_login = self.accounts.iter().find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login)));
        let by_domain = || {
            self.accounts
                .iter()
                .find(|a| a.domain.as_deref().zip(domain).is_some_and(|(a, d)| a.eq_ignore_ascii_case(d)))
        };
        let upstream = self.upstream.as_ref();
        match by_login.or_else(by_domain) {
            Some(account) => {
                let imap = account.imap.as_deref().or(upstream.map(|u| u.imap.as_str()))?;
                Some(Provider {
                    imap: ServerUrl::parse_imap(imap).ok()?,
                    ca_file: account.ca_file.clone().or(upstream.and_then(|u| u.ca_file.clone())),
                })
            }
            None => {
                let u = upstream?;
                Some(Provider { imap: ServerUrl::parse_imap(&u.imap).ok()?, ca_file: u.ca_file.clone() })
            }
        }
    }

    /// Every distinct IMAP provider named in the config (for `check`).
    pub fn providers(&self) -> Vec<Provider> {
        let mut out: Vec<Provider> = Vec::new();
        let upstream = self.upstream.iter().map(|u| (u.imap.as_str(), u.ca_file.clone()));
        let accounts = self.accounts.iter().filter_map(|a| {
            let ca = a.ca_file.clone().or(self.upstream.as_ref().and_then(|u| u.ca_file.clone()));
            a.imap.as_deref().map(|i| (i, ca))
        });
        for (url, ca_file) in upstream.chain(accounts) {
            if let Ok(imap) = ServerUrl::parse_imap(url) {
                let p = Provider { imap, ca_file };
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }
}

impl Config {
    /// Where the key that seals secrets at rest is kept.
    pub fn seal_key_path(&self) -> PathBuf {
        self.seal_key_file.clone().unwrap_or_else(|| self.state_dir.join("seal.key"))
    }

    /// The `[account.oauth2]` that applies to `login`: its `[[account]]` by login, else by domain.
    pub fn oauth2_for(&self, login: &str) -> Option<&OAuth2> {
        let domain = login.rsplit_once('@').map(|(_, d)| d);
        let by_login = self.accounts.iter().find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login)));
        let account = by_login.or_else(|| {
            self.accounts
                .iter()
                .find(|a| a.domain.as_deref().zip(domain).is_some_and(|(a, d)| a.eq_ignore_ascii_case(d)))
        })?;
        account.oauth2.as_ref()
    }

    /// The logins named in an `[[account]]` with `[account.oauth2]` (for `check`).
    pub fn oauth2_logins(&self) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|a| a.oauth2.is_some())
            .filter_map(|a| a.login.as_deref().map(str::to_ascii_lowercase))
            .collect()
    }

    /// The submission server for a login, routed like [`Config::provider_for`]: an `[[account]]`
    /// matched by `login`, then by `domain`, each falling back to `[upstream] smtp`.
    pub fn smtp_provider_for(&self, login: &str) -> Option<SmtpProvider> {
        let domain = login.rsplit_once('@').map(|(_, d)| d);
        let account =
            self.accounts.iter().find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login))).or_else(
                || {
                    self.accounts
                        .iter()
                        .find(|a| a.domain.as_deref().zip(domain).is_some_and(|(a, d)| a.eq_ignore_ascii_case(d)))
                },
            );
        let upstream = self.upstream.as_ref();
        let url = account.and_then(|a| a.smtp.as_deref()).or(upstream.and_then(|u| u.smtp.as_deref()))?;
        let ca_file = account.and_then(|a| a.ca_file.clone()).or(upstream.and_then(|u| u.ca_file.clone()));
        Some(SmtpProvider { smtp: ServerUrl::parse_smtp(url).ok()?, ca_file })
    }

    /// Whether any login has a submission server (else the SMTP listeners are not started).
    pub fn has_smtp_provider(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.smtp.is_some()) || self.accounts.iter().any(|a| a.smtp.is_some())
    }
}

/// Where one login's submitted mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpProvider {
    pub smtp: ServerUrl,
    pub ca_file: Option<PathBuf>,
}

/// Where one login's IMAP traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub imap: ServerUrl,
    pub ca_file: Option<PathBuf>,
}

/// How to secure a connection to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (imaps://, smtps://).
    Implicit,
    /// Plain, then STARTTLS before anything else.
    StartTls,
    /// No TLS at all; only allowed to loopback addresses.
    Plain,
}

/// A parsed `imaps://host:port`-style provider address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub security: Security,
    pub host: String,
    pub port: u16,
}

/// Why a server URL in the configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{url}` is not a URL; use one of {known}")]
    NotUrl { url: String, known: String },
    /// `imaps://user:password@host`: the part before `@` is never repeated (it may be a password).
    #[error(
        "`{scheme}://…@{rest}` has a user name or password in it; leave them out: coi-proxy logs in with what the mail client sends (what was there is not shown)"
    )]
    Credentials { scheme: String, rest: String },
    #[error("unknown scheme `{scheme}://`; use one of {known}")]
    Scheme { scheme: String, known: String },
    #[error("unclosed `[` in IPv6 address")]
    UnclosedBracket,
    #[error("`{url}` needs a host name and nothing else (e.g. {scheme}://mail.example.org)")]
    Host { url: String, scheme: &'static str },
    #[error("`{0}` is not a port number")]
    Port(String),
    #[error(
        "`{url}` would send passwords unencrypted over the network; plain connections are allowed to loopback addresses only (use {tls}:// or {starttls}://)"
    )]
    Plain { url: String, tls: &'static str, starttls: &'static str },
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{host}:{}", self.port)
    }
}

impl ServerUrl {
    pub fn parse_imap(url: &str) -> Result<ServerUrl, UrlError> {
        ServerUrl::parse(
            url,
            &[
                ("imaps", Security::Implicit, 993),
                ("imap+starttls", Security::StartTls, 143),
                ("imap", Security::Plain, 143),
            ],
        )
    }

    pub fn parse_smtp(url: &str) -> Result<ServerUrl, UrlError> {
        ServerUrl::parse(
            url,
            &[
                ("smtps", Security::Implicit, 465),
                ("smtp+starttls", Security::StartTls, 587),
                ("smtp", Security::Plain, 587),
            ],
        )
    }

    fn parse(url: &str, schemes: &[(&'static str, Security, u16)]) -> Result<ServerUrl, UrlError> {
        let known = || schemes.iter().map(|s| format!("{}://", s.0)).collect::<Vec<_>>().join(", ");
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| UrlError::NotUrl { url: redacted(url), known: known() })?;
        let authority = rest.split('/').next().unwrap_or(rest);
        if let Some((_, host)) = authority.rsplit_once('@') {
            return Err(UrlError::Credentials { scheme: scheme.to_string(), rest: host.to_string() });
        }
        let &(_, security, default_port) = schemes
            .iter()
            .find(|s| s.0.eq_ignore_ascii_case(scheme))
            .ok_or_else(|| UrlError::Scheme { scheme: scheme.to_string(), known: known() })?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::UnclosedBracket)?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(UrlError::Host { url: url.to_string(), scheme: schemes[0].0 });
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| UrlError::Port(p.to_string()))?,
            None => default_port,
        };
        let parsed = ServerUrl { security, host: host.to_string(), port };
        if security == Security::Plain && !parsed.is_loopback() {
            return Err(UrlError::Plain { url: url.to_string(), tls: schemes[0].0, starttls: schemes[1].0 });
        }
        Ok(parsed)
    }

    /// Whether the host is this machine.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost") || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// `url` fit for an error text: whatever precedes an `@` (a user name and password) replaced.
fn redacted(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => url.to_string(),
    }
}

fn syntax_error(text: &str, path: &Path, err: &toml::de::Error) -> ConfigError {
    let (line, column) = match err.span() {
        Some(span) => line_column(text, span.start),
        None => (0, 0),
    };
    let message = err.message().trim().to_string();
    let key = key_at(text, err.span().map(|s| s.start).unwrap_or(0));
    ConfigError::Syntax { path: path.to_owned(), line, column, key, message }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key of the line an error points at (`listen.imap`), as a prefix for the message.
fn key_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    let mut pos = 0;
    for raw in text.split_inclusive('\n') {
        let line = raw.trim();
        if line.starts_with('[') {
            table = line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if let Some((k, _)) = line.split_once('=')
            && !line.starts_with('#')
        {
            key = k.trim().to_string();
        }
        pos += raw.len();
        if pos > offset {
            break;
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (_, true) if table.is_empty() => String::new(),
        (_, true) => format!("[{table}]: "),
        (true, false) => format!("{key}: "),
        (false, false) => format!("{table}.{key}: "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("proxy.toml"))
    }

    #[test]
    fn cluster_section() {
        let c =
            parse("[cluster]\netcd = [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379/\"]\nnode = \"a\"\n").unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(
            (cluster.etcd.len(), cluster.node.as_str(), cluster.lease_secs),
            (2, "a", 10),
            "lease_secs 10 by default"
        );
        for (text, key) in [
            ("etcd = []\nnode = \"a\"", "cluster.etcd"),
            ("etcd = [\"ftp://e:2379\"]\nnode = \"a\"", "cluster.etcd"),
            ("etcd = [\"https://e:2379\", \"http://f:2379\"]\nnode = \"a\"\nca_file = \"/c\"", "cluster.etcd"),
            ("etcd = [\"https://e:2379\"]\nnode = \"a\"", "cluster.ca_file"),
            ("etcd = [\"http://e:2379\"]\nnode = \"a\"\nca_file = \"/c\"", "cluster.ca_file"),
            ("etcd = [\"https://e:2379\"]\nnode = \"a\"\nca_file = \"/c\"\ncert_file = \"/x\"", "cluster.key_file"),
            ("etcd = [\"https://e:2379\"]\nnode = \"a\"\nca_file = \"/c\"\nkey_file = \"/x\"", "cluster.cert_file"),
            ("etcd = [\"http://\"]\nnode = \"a\"", "cluster.etcd"),
            ("etcd = [\"http://e:2379\"]\nnode = \"a/b\"", "cluster.node"),
            ("etcd = [\"http://e:2379\"]\nnode = \"\"", "cluster.node"),
            ("etcd = [\"http://e:2379\"]\nnode = \"a\"\nlease_secs = 1", "cluster.lease_secs"),
        ] {
            let err = parse(&format!("[cluster]\n{text}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(parse("[cluster]\netcd = [\"http://e:2379\"]\n").is_err(), "node is required");
        let tls = "[cluster]\netcd = [\"https://e:2379\"]\nnode = \"a\"\nca_file = \"/c.pem\"\ncert_file = \"/a.pem\"\nkey_file = \"/a.key\"\n";
        let cluster = parse(tls).unwrap().cluster.unwrap();
        assert_eq!(cluster.ca_file.as_deref(), Some(Path::new("/c.pem")));
        assert!(
            parse("[cluster]\netcd = [\"http://e:2379\"]\nnode = \"a\"\nleases = 3\n").is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn empty_config_has_loopback_listeners() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.imap.unwrap().to_string(), "127.0.0.1:1143");
        assert_eq!(c.listen.imaps.unwrap().to_string(), "127.0.0.1:1993");
        assert!(c.upstream.is_none());
        assert_eq!(c.coi.mailbox_root, "COI");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[listen]\nimap = \"127.0.0.1:1143\"\nimapp = \"x\"\n").unwrap_err().to_string();
        assert!(err.starts_with("proxy.toml:3:1: listen.imapp: unknown field `imapp`"), "{err}");
    }

    #[test]
    fn bad_type_names_key() {
        let err = parse("[limits]\nmax_line = \"big\"\n").unwrap_err().to_string();
        assert!(err.starts_with("proxy.toml:2:"), "{err}");
        assert!(err.contains("limits.max_line"), "{err}");
    }

    #[test]
    fn the_memory_budget_is_checked() {
        let c = parse("").unwrap();
        assert_eq!((c.limits.max_memory, c.limits.max_memory_per_account), (1 << 30, 256 << 20));
        let c = parse("[limits]\nmax_memory = 100000000\nmax_memory_per_account = 20000000\n").unwrap();
        assert_eq!((c.limits.max_memory, c.limits.max_memory_per_account), (100_000_000, 20_000_000));
        for bad in ["max_memory_per_account = 1000000", "max_memory = 20000000\nmax_memory_per_account = 30000000"] {
            let err = parse(&format!("[limits]\n{bad}\n")).unwrap_err().to_string();
            assert!(err.contains("limits.max_memory_per_account") && err.contains("at least 16 MiB"), "{err}");
        }
    }

    #[test]
    fn plain_upstream_only_to_loopback() {
        assert!(ServerUrl::parse_imap("imap://127.0.0.1:143").is_ok());
        assert!(ServerUrl::parse_imap("imap://localhost").is_ok());
        assert!(ServerUrl::parse_imap("imap://[::1]:10143").is_ok());
        let err = ServerUrl::parse_imap("imap://mail.example.org").unwrap_err().to_string();
        assert!(err.contains("loopback") && err.contains("(use imaps:// or imap+starttls://)"), "{err}");
        let err = parse("[upstream]\nimap = \"imap://mail.example.org\"\n").unwrap_err().to_string();
        assert!(err.contains("upstream.imap"), "{err}");
    }

    #[test]
    fn credentials_in_a_url_are_refused_and_not_repeated() {
        for url in
            ["imaps://alice:Pw-9@imap.example.org", "imaps://alice:Pw-9@imap.example.org:993/x", "alice:Pw-9@host"]
        {
            let err = ServerUrl::parse_imap(url).unwrap_err().to_string();
            assert!(!err.contains("Pw-9") && !err.contains("alice"), "{url}: {err}");
        }
        let err = ServerUrl::parse_imap("imaps://alice:Pw-9@imap.example.org").unwrap_err().to_string();
        assert!(err.contains("user name or password") && err.contains("imap.example.org"), "{err}");
    }

    #[test]
    fn urls_parse_with_default_ports() {
        let u = ServerUrl::parse_imap("imaps://imap.example.org").unwrap();
        assert_eq!((u.security, u.host.as_str(), u.port), (Security::Implicit, "imap.example.org", 993));
        let u = ServerUrl::parse_imap("imap+starttls://imap.example.org:10143/").unwrap();
        assert_eq!((u.security, u.port), (Security::StartTls, 10143));
        assert!(ServerUrl::parse_imap("pop3://x").unwrap_err().to_string().contains("unknown scheme"));
        assert!(ServerUrl::parse_imap("imaps://x:99999").is_err());
        assert!(ServerUrl::parse_smtp("smtps://smtp.example.org").unwrap().port == 465);
    }

    #[test]
    fn routing_login_then_domain_then_upstream() {
        let c = parse(
            r#"
            [upstream]
            imap = "imaps://default.example:993"
            [[account]]
            domain = "example.net"
            imap = "imaps://net.example:993"
            [[account]]
            login = "Alice@example.net"
            imap = "imaps://alice.example:993"
            "#,
        )
        .unwrap();
        assert_eq!(c.provider_for("alice@EXAMPLE.net").unwrap().imap.host, "alice.example");
        assert_eq!(c.provider_for("bob@example.net").unwrap().imap.host, "net.example");
        assert_eq!(c.provider_for("carol@example.org").unwrap().imap.host, "default.example");
        assert_eq!(c.providers().len(), 3);
    }

    #[test]
    fn account_needs_a_selector_and_a_provider() {
        let err = parse("[[account]]\nimap = \"imaps://x\"\n").unwrap_err().to_string();
        assert!(err.contains("account[0].login"), "{err}");
        let err = parse("[[account]]\nlogin = \"a@b\"\n").unwrap_err().to_string();
        assert!(err.contains("no [upstream]"), "{err}");
    }

    #[test]
    fn smtp_routing_and_queue_defaults() {
        let c = parse(
            r#"
            [upstream]
            imap = "imaps://default.example"
            smtp = "smtps://default.example"
            [[account]]
            domain = "example.net"
            imap = "imaps://net.example"
            [[account]]
            login = "alice@example.net"
            smtp = "smtp+starttls://alice.example"
            "#,
        )
        .unwrap();
        let alice = c.smtp_provider_for("Alice@example.net").unwrap().smtp;
        assert_eq!((alice.host.as_str(), alice.port, alice.security), ("alice.example", 587, Security::StartTls));
        assert_eq!(c.smtp_provider_for("bob@example.net").unwrap().smtp.host, "default.example");
        assert_eq!(c.smtp_provider_for("carol@example.org").unwrap().smtp.port, 465);
        assert!(c.has_smtp_provider());
        assert_eq!(c.queue.give_up_after_secs, 5 * 24 * 3600);
        let none = parse("[upstream]\nimap = \"imaps://x\"\n").unwrap();
        assert!(none.smtp_provider_for("a@x").is_none() && !none.has_smtp_provider());
        let err = parse("[queue]\nretry_initial_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("queue.retry_initial_secs"), "{err}");
        let err = parse("[queue]\nretry = 1\n").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn metrics_only_on_loopback() {
        assert!(parse("[listen]\nmetrics = \"127.0.0.1:9143\"\n").unwrap().listen.metrics.is_some());
        let err = parse("[listen]\nmetrics = \"0.0.0.0:9143\"\n").unwrap_err().to_string();
        assert!(err.contains("listen.metrics: must be a loopback address"), "{err}");
    }

    #[test]
    fn oauth2_accounts() {
        let c = parse(
            r#"
            [upstream]
            imap = "imaps://default.example"
            [[account]]
            login = "alice@outlook.example"
            [account.oauth2]
            provider = "microsoft"
            client_id = "00000000-0000-0000-0000-000000000000"
            [[account]]
            domain = "gmail.example"
            [account.oauth2]
            provider = "google"
            client_id = "x.apps.googleusercontent.com"
            client_secret = "not-so-secret"
            "#,
        )
        .unwrap();
        assert_eq!(c.oauth2_for("Alice@outlook.example").unwrap().provider.as_deref(), Some("microsoft"));
        assert_eq!(c.oauth2_for("bob@gmail.example").unwrap().provider.as_deref(), Some("google"));
        assert!(c.oauth2_for("carol@example.org").is_none());
        assert_eq!(c.oauth2_logins(), vec!["alice@outlook.example".to_string()]);
        assert_eq!(c.seal_key_path(), c.state_dir.join("seal.key"));
        let err = parse("[upstream]\nimap = \"imaps://x\"\n[[account]]\nlogin = \"a@b\"\n[account.oauth2]\nprovider = \"aol\"\nclient_id = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("account[0].oauth2.provider: unknown provider `aol`"), "{err}");
        let err = parse("[upstream]\nimap = \"imaps://x\"\n[[account]]\nlogin = \"a@b\"\npassword_command = \"x\"\n[account.oauth2]\nprovider = \"google\"\nclient_id = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("account[0].password_command"), "{err}");
        let err = parse("[upstream]\nimap = \"imaps://x\"\n[[account]]\nlogin = \"a@b\"\n[account.oauth2]\nprovider = \"google\"\nclient_id = \"c\"\nscopes = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `scopes`"), "{err}");
    }

    #[test]
    fn plaintext_auth_default_follows_address() {
        let l = Listen::default();
        assert!(l.plaintext_auth_allowed(&"127.0.0.1:1143".parse().unwrap()));
        assert!(!l.plaintext_auth_allowed(&"0.0.0.0:1143".parse().unwrap()));
        assert!(!l.plaintext_auth_allowed(&"192.0.2.1:1143".parse().unwrap()));
    }

    #[test]
    fn proxy_protocol_is_off_unless_set_and_wants_a_bool() {
        assert!(!Config::parse("", Path::new("proxy.toml")).unwrap().listen.proxy_protocol);
        let on = Config::parse("[listen]\nimap = \"127.0.0.1:1143\"\nproxy_protocol = true\n", Path::new("proxy.toml"));
        assert!(on.unwrap().listen.proxy_protocol);
        let err = Config::parse("[listen]\nproxy_protocol = \"yes\"\n", Path::new("proxy.toml")).unwrap_err();
        assert!(err.to_string().contains("proxy_protocol"), "{err}");
    }

    #[test]
    fn deltachat_defaults_and_notifier_urls() {
        let c = Config::defaults();
        assert_eq!(c.deltachat.notifier_url, "https://notifications.delta.chat/notify");
        assert_eq!(c.deltachat.max_smtp_recipients, 50);
        assert!(c.deltachat.push() && c.coi.rescue_junk && c.coi.junk_folder.is_none());
        assert!(!parse("[deltachat]\nnotifier_url = \"\"\n").unwrap().deltachat.push(), "\"\" turns push off");
        assert!(parse("[deltachat]\nnotifier_url = \"http://127.0.0.1:8080/notify\"\n").is_ok());
        assert!(parse("[deltachat]\nnotifier_url = \"http://[::1]/n\"\n").is_ok());
        for bad in ["http://notify.example.org/n", "ftp://x/y", "notifications.delta.chat"] {
            let err = parse(&format!("[deltachat]\nnotifier_url = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(err.contains("deltachat.notifier_url"), "{bad}: {err}");
        }
        let err = parse("[deltachat]\nmax_smtp_recipients = 0\n").unwrap_err().to_string();
        assert!(err.contains("deltachat.max_smtp_recipients"), "{err}");
        let c = parse("[deltachat]\ncomment = \"hi\"\nadmin = \"mailto:a@b\"\n[coi]\nrescue_junk = false\njunk_folder = \"Spam\"\n").unwrap();
        assert_eq!((c.deltachat.comment.as_deref(), c.deltachat.admin.as_deref()), (Some("hi"), Some("mailto:a@b")));
        assert!(!c.coi.rescue_junk);
        assert_eq!(c.coi.junk_folder.as_deref(), Some("Spam"));
    }
}

#[cfg(test)]
mod chat_client_tests {
    use super::*;

    #[test]
    fn chat_clients_are_named_by_id_and_the_list_is_configurable() {
        let coi = Coi::default();
        assert!(coi.is_chat_client(Some("Delta Chat")) && coi.is_chat_client(Some("delta chat")));
        assert!(!coi.is_chat_client(Some("Thunderbird")) && !coi.is_chat_client(None));
        let coi: Coi = toml::from_str("chat_clients = [\"Delta Chat\", \"ArcaneChat\"]").unwrap();
        assert!(coi.is_chat_client(Some("ArcaneChat")));
        let autocrypt = Config::parse("", Path::new("proxy.toml")).unwrap().autocrypt;
        assert!(Config::parse("", Path::new("proxy.toml")).unwrap().cluster.is_none(), "no [cluster]: one instance");
        assert!(autocrypt.enabled, "on by default");
        let off = Config::parse("[autocrypt]\nenabled = false\n", Path::new("proxy.toml")).unwrap();
        assert!(!off.autocrypt.enabled);
        // One seal key for every secret: the OpenPGP keys use the top-level `seal_key_file`.
        let one = Config::parse("seal_key_file = \"/k\"\n", Path::new("proxy.toml")).unwrap();
        assert_eq!(one.seal_key_path(), Path::new("/k"));
        let err = Config::parse("[autocrypt]\nseal_key = \"/k\"\n", Path::new("proxy.toml")).unwrap_err();
        assert!(err.to_string().contains("seal_key"), "{err}");
        assert!(Config::parse("[autocrypt]\nenable = true\n", Path::new("proxy.toml")).is_err(), "typos are errors");
    }
}
