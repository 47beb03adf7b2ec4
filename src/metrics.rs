//! The counters behind `/metrics` (served by `app`'s HTTP listener), and their Prometheus text.
//!
//! The counters are global atomics so that the code paths that count need one line and no
//! handle; they are read only when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::account::Filter;

/// A monotonically increasing count.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
pub struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client listeners, as labelled in `/metrics`.
pub const LISTENERS: [&str; 4] = ["imap", "imaps", "smtp", "smtps"];

/// Why a connection to a provider's IMAP server failed, as labelled in `/metrics` (the
/// connection code names its causes with these words).
pub const CAUSES: [&str; 11] = [
    "dns",
    "refused",
    "timeout",
    "network",
    "tls",
    "greeting",
    "starttls",
    "closed",
    "protocol",
    "login_disabled",
    "oauth",
];

pub static SESSIONS_OPEN: [Gauge; 4] = [const { Gauge::new() }; 4];
pub static SESSIONS_TOTAL: [Counter; 4] = [const { Counter::new() }; 4];
/// Connections closed before their session for a missing or bad PROXY header, by listener.
static PROXY_HEADERS_REFUSED: [Counter; 4] = [const { Counter::new() }; 4];
/// Tagged client commands passed on to the provider (the proxy's own answers not included).
pub static COMMANDS_RELAYED: Counter = Counter::new();
pub static BYTES_FROM_CLIENT: Counter = Counter::new();
pub static BYTES_FROM_PROVIDER: Counter = Counter::new();
/// Provider bytes (literal bodies) moved to clients in the kernel, counted as they go.
pub static SPLICED_BYTES: Counter = Counter::new();
/// Sessions handed to a relay lane (`imap::session::lane`), counted as they go.
pub static LANE_ENTRIES: Counter = Counter::new();
static PROVIDER_CONNECT_FAILURES: [Counter; CAUSES.len()] = [const { Counter::new() }; CAUSES.len()];
/// The same for providers' submission (SMTP) servers.
static SUBMISSION_CONNECT_FAILURES: [Counter; CAUSES.len()] = [const { Counter::new() }; CAUSES.len()];
/// What became of each recipient at a relay attempt, by [`RELAY_OUTCOMES`].
static RELAY_OUTCOMES_TOTAL: [Counter; 3] = [const { Counter::new() }; 3];
/// A relayed recipient's outcome, as labelled in `/metrics`: the provider took it, refused it
/// for good, or it waits for another attempt.
pub const RELAY_OUTCOMES: [&str; 3] = ["delivered", "refused", "deferred"];
/// Chat messages the account worker moved to Chats, by message filter (`active`, `seen`).
static WORKER_MOVES: [Counter; 2] = [const { Counter::new() }; 2];
/// Account workers started (by the supervisor, one per account that needs one).
pub static WORKER_STARTS: Counter = Counter::new();
static PUSHES_SENT: Counter = Counter::new();
static PUSHES_FAILED: Counter = Counter::new();
static DC_NOTIFIED: [Counter; 2] = [const { Counter::new() }; 2];
static JUNK_RESCUED: Counter = Counter::new();
/// Read receipts (RFC 8098) and delivery reports (RFC 3464) among the messages the worker classified.
static MDNS_SEEN: Counter = Counter::new();
static DSNS_SEEN: Counter = Counter::new();

/// Counts a session on `listener` as open until the returned guard is dropped.
pub fn session_opened(listener: &str) -> SessionGuard {
    let i = LISTENERS.iter().position(|l| *l == listener).unwrap_or(0);
    SESSIONS_TOTAL[i].inc();
    SESSIONS_OPEN[i].inc();
    SessionGuard(i)
}

/// Counts a connection on `listener` closed for its PROXY header (`[listen] proxy_protocol`).
pub fn proxy_header_refused(listener: &str) {
    let i = LISTENERS.iter().position(|l| *l == listener).unwrap_or(0);
    PROXY_HEADERS_REFUSED[i].inc();
}

/// Keeps a session counted as open; see [`session_opened`].
pub struct SessionGuard(usize);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        SESSIONS_OPEN[self.0].dec();
    }
}

/// Adds one ended session's traffic (the relay reports it when a session ends).
pub fn traffic(from_client: u64, from_provider: u64) {
    BYTES_FROM_CLIENT.add(from_client);
    BYTES_FROM_PROVIDER.add(from_provider);
}

/// Counts a failed connection to a provider by its cause (one of [`CAUSES`]).
pub fn provider_connect_failed(cause: &str) {
    if let Some(i) = CAUSES.iter().position(|c| *c == cause) {
        PROVIDER_CONNECT_FAILURES[i].inc();
    }
}

/// Counts a failed connection to a provider's submission server by its cause (one of [`CAUSES`]).
pub fn submission_connect_failed(cause: &str) {
    if let Some(i) = CAUSES.iter().position(|c| *c == cause) {
        SUBMISSION_CONNECT_FAILURES[i].inc();
    }
}

/// Counts `n` recipients of a relay attempt with `outcome` (one of [`RELAY_OUTCOMES`]).
pub fn relayed(outcome: &str, n: u64) {
    if let Some(i) = RELAY_OUTCOMES.iter().position(|o| *o == outcome) {
        RELAY_OUTCOMES_TOTAL[i].add(n);
    }
}

/// Counts a push at its final verdict: delivered, or failed (refused, gone, attempts used up).
pub fn push_done(delivered: bool) {
    match delivered {
        true => PUSHES_SENT.inc(),
        false => PUSHES_FAILED.inc(),
    }
}

/// Counts a POST to the Delta Chat notifier: answered 200, or not (retried, or the token gone).
pub fn deltachat_notified(delivered: bool) {
    DC_NOTIFIED[usize::from(!delivered)].inc();
}

/// Counts chat messages the account worker moved out of the provider's Junk folder.
pub fn junk_rescued(count: usize) {
    JUNK_RESCUED.add(count as u64);
}

/// Counts chat messages moved by the account worker under `filter`.
pub fn worker_moved(filter: Filter, count: usize) {
    match filter {
        Filter::Active => WORKER_MOVES[0].add(count as u64),
        Filter::Seen => WORKER_MOVES[1].add(count as u64),
        Filter::None => {}
    }
}

/// Looks at the header of a message the worker classified and counts MDNs and DSNs.
pub fn saw_message_header(header: &[u8]) {
    match report_type(header) {
        Some(Report::Mdn) => MDNS_SEEN.inc(),
        Some(Report::Dsn) => DSNS_SEEN.inc(),
        None => {}
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Report {
    Mdn,
    Dsn,
}

/// `multipart/report` with `report-type=disposition-notification` or `delivery-status`.
fn report_type(header: &[u8]) -> Option<Report> {
    let text = String::from_utf8_lossy(header).to_ascii_lowercase();
    // Unfold, then find the Content-Type field.
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ").replace("\n ", " ").replace("\n\t", " ");
    let value = unfolded.lines().find_map(|l| l.strip_prefix("content-type:"))?;
    if !value.trim_start().starts_with("multipart/report") {
        return None;
    }
    let compact: String = value.chars().filter(|c| !c.is_whitespace() && *c != '"').collect();
    if compact.contains("report-type=disposition-notification") {
        Some(Report::Mdn)
    } else if compact.contains("report-type=delivery-status") {
        Some(Report::Dsn)
    } else {
        None
    }
}

/// The Prometheus text exposition of every counter, with the queue's depth (-1: unknown) and
/// the age of its oldest message as read from the store by the caller.
pub fn render(queue_depth: i64, oldest_age: i64) -> String {
    let (depth, oldest) = (queue_depth, oldest_age);
    let mut out = Exposition::default();
    out.family("coi_proxy_sessions_open", "gauge", "Client sessions open now, by listener.");
    for (i, l) in LISTENERS.iter().enumerate() {
        out.sample("coi_proxy_sessions_open", &[("listener", l)], SESSIONS_OPEN[i].get());
    }
    out.family("coi_proxy_sessions_total", "counter", "Client sessions accepted, by listener.");
    for (i, l) in LISTENERS.iter().enumerate() {
        out.sample("coi_proxy_sessions_total", &[("listener", l)], SESSIONS_TOTAL[i].get());
    }
    out.family(
        "coi_proxy_proxy_headers_refused_total",
        "counter",
        "Connections closed with no greeting for a missing or invalid PROXY header ([listen] proxy_protocol), by listener.",
    );
    for (i, l) in LISTENERS.iter().enumerate() {
        out.sample("coi_proxy_proxy_headers_refused_total", &[("listener", l)], PROXY_HEADERS_REFUSED[i].get());
    }
    out.single(
        "coi_proxy_commands_relayed_total",
        "counter",
        "Client commands relayed to providers.",
        &COMMANDS_RELAYED,
    );
    out.family("coi_proxy_bytes_total", "counter", "IMAP bytes relayed after login, counted when a session ends.");
    out.sample("coi_proxy_bytes_total", &[("direction", "from_client")], BYTES_FROM_CLIENT.get());
    out.sample("coi_proxy_bytes_total", &[("direction", "from_provider")], BYTES_FROM_PROVIDER.get());
    out.single(
        "coi_proxy_spliced_bytes_total",
        "counter",
        "Literal bytes moved from providers to clients inside the kernel (splice(2), plain TCP both sides), as they go.",
        &SPLICED_BYTES,
    );
    out.single(
        "coi_proxy_lane_entries_total",
        "counter",
        "Times a session in its plain state was handed to a relay lane (relayed from epoll directly).",
        &LANE_ENTRIES,
    );
    out.family(
        "coi_proxy_provider_connect_failures_total",
        "counter",
        "Failed connections to providers' IMAP and submission (SMTP) servers, by protocol and cause.",
    );
    for (protocol, counters) in [("imap", &PROVIDER_CONNECT_FAILURES), ("smtp", &SUBMISSION_CONNECT_FAILURES)] {
        for (i, cause) in CAUSES.iter().enumerate() {
            let value = counters[i].get();
            out.sample("coi_proxy_provider_connect_failures_total", &[("protocol", protocol), ("cause", cause)], value);
        }
    }
    out.family(
        "coi_proxy_relay_recipients_total",
        "counter",
        "Recipients of queued mail at relay attempts, by outcome (delivered, refused for good, deferred).",
    );
    for (i, outcome) in RELAY_OUTCOMES.iter().enumerate() {
        out.sample("coi_proxy_relay_recipients_total", &[("outcome", outcome)], RELAY_OUTCOMES_TOTAL[i].get());
    }
    out.family("coi_proxy_worker_moves_total", "counter", "Chat messages moved to Chats, by message filter.");
    out.sample("coi_proxy_worker_moves_total", &[("mode", "active")], WORKER_MOVES[0].get());
    out.sample("coi_proxy_worker_moves_total", &[("mode", "seen")], WORKER_MOVES[1].get());
    out.single("coi_proxy_worker_starts_total", "counter", "Account workers started.", &WORKER_STARTS);
    out.family("coi_proxy_pushes_total", "counter", "WebPush notifications, by outcome.");
    out.sample("coi_proxy_pushes_total", &[("result", "sent")], PUSHES_SENT.get());
    out.sample("coi_proxy_pushes_total", &[("result", "failed")], PUSHES_FAILED.get());
    out.family("coi_proxy_deltachat_notifications_total", "counter", "POSTs to the Delta Chat notifier, by outcome.");
    out.sample("coi_proxy_deltachat_notifications_total", &[("result", "sent")], DC_NOTIFIED[0].get());
    out.sample("coi_proxy_deltachat_notifications_total", &[("result", "failed")], DC_NOTIFIED[1].get());
    out.single("coi_proxy_junk_rescued_total", "counter", "Chat messages moved out of Junk.", &JUNK_RESCUED);
    out.family("coi_proxy_queue_depth", "gauge", "Messages in the outgoing SMTP queue (-1: store unreadable).");
    out.sample("coi_proxy_queue_depth", &[], depth);
    out.family("coi_proxy_queue_oldest_age_seconds", "gauge", "Age of the oldest queued message.");
    out.sample("coi_proxy_queue_oldest_age_seconds", &[], oldest);
    out.family("coi_proxy_reports_seen_total", "counter", "Read receipts (mdn) and delivery reports (dsn) classified.");
    out.sample("coi_proxy_reports_seen_total", &[("kind", "mdn")], MDNS_SEEN.get());
    out.sample("coi_proxy_reports_seen_total", &[("kind", "dsn")], DSNS_SEEN.get());
    out.family(
        "coi_proxy_runtime_busy_seconds_total",
        "counter",
        "Time the async runtime's threads spent running tasks (not parked), summed over them: what no single command may take much of.",
    );
    out.sample("coi_proxy_runtime_busy_seconds_total", &[], format!("{:.6}", runtime_busy().as_secs_f64()));
    out.family("coi_proxy_info", "gauge", "The running version.");
    out.sample("coi_proxy_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    out.0
}

/// Names the calling thread `coi-runtime` the first time it parks. Only the runtime's worker
/// threads park (tokio calls this from `on_thread_park`); the blocking pool's threads keep
/// `coi-blocking`. So `top -H`, and the tests that measure how much CPU time a command takes
/// on the runtime threads (`/proc/PID/task/*/schedstat`), can tell the two apart.
pub fn runtime_thread_parked() {
    thread_local! {
        static NAMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !NAMED.with(|named| named.replace(true)) {
        set_thread_name(c"coi-runtime");
    }
}

#[cfg(target_os = "linux")]
fn set_thread_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME copies at most 16 bytes of a NUL-terminated string into the calling
    // thread's own name; nothing else is touched.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_thread_name(_: &std::ffi::CStr) {}

/// Busy time of the runtime's worker threads so far, summed (zero off a runtime, or where tokio
/// does not count it).
fn runtime_busy() -> std::time::Duration {
    #[cfg(target_has_atomic = "64")]
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let metrics = handle.metrics();
        return (0..metrics.num_workers()).map(|w| metrics.worker_total_busy_duration(w)).sum();
    }
    std::time::Duration::ZERO
}

/// Prometheus text format 0.0.4.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        match labels.is_empty() {
            true => _ = writeln!(self.0, "{name} {value}"),
            false => _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(",")),
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, counter: &Counter) {
        self.family(name, kind, help);
        self.sample(name, &[], counter.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_recognised() {
        let mdn = b"Subject: Read\r\nContent-Type: multipart/report;\r\n\treport-type=\"disposition-notification\";\r\n boundary=x\r\n\r\n";
        assert_eq!(report_type(mdn), Some(Report::Mdn));
        let dsn = b"Content-Type: multipart/report; report-type=delivery-status; boundary=y\r\n\r\n";
        assert_eq!(report_type(dsn), Some(Report::Dsn));
        assert_eq!(report_type(b"Content-Type: text/plain\r\n\r\n"), None);
        assert_eq!(report_type(b"Subject: report-type=delivery-status\r\n\r\n"), None);
    }

    #[test]
    fn exposition_format() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "Things.");
        out.sample("x_total", &[("a", "b"), ("c", "d")], 3);
        out.sample("y", &[], -1);
        assert_eq!(out.0, "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\",c=\"d\"} 3\ny -1\n");
    }

    #[test]
    fn sessions_are_counted_open_until_dropped() {
        let before = (SESSIONS_OPEN[3].get(), SESSIONS_TOTAL[3].get());
        let guard = session_opened("smtps");
        assert_eq!((SESSIONS_OPEN[3].get(), SESSIONS_TOTAL[3].get()), (before.0 + 1, before.1 + 1));
        drop(guard);
        assert_eq!(SESSIONS_OPEN[3].get(), before.0);
    }
}
