//! The daemon: prepares state and TLS, binds the listeners, accepts connections, and shuts down
//! gracefully on SIGTERM/SIGINT (stop accepting, `* BYE` to every client, close providers).

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::accounts::Credentials;
use crate::coi::hub::Hub;
use crate::config::Config;
use crate::imap::session::{self, ListenerInfo, ListenerKind};
use crate::store::Store;
use crate::tls::{self, CertAction, LocalCert, UpstreamTls};

/// What every session shares.
pub struct Shared {
    /// The configuration in force; `reload` swaps it (sessions keep the one they started with
    /// for the values they already read).
    config: RwLock<Arc<Config>>,
    pub upstream_tls: UpstreamTls,
    pub acceptor: TlsAcceptor,
    pub credentials: Credentials,
    pub store: Store,
    /// Per-account COI state and workers.
    pub hub: Hub,
    /// Open IMAP sessions per client address, for `[limits] max_sessions*`.
    pub sessions: crate::limits::Sessions,
    /// Recent failed logins per client address, for the delay before answering one.
    pub auth_failures: crate::limits::AuthFailures,
    /// Turns true when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// Puts a new configuration in force for everything that reads it from now on.
    pub fn set_config(&self, config: Config) {
        *self.config.write().expect("config lock") = Arc::new(config);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no provider configured: pass --upstream imaps://imap.example.org:993, or set [upstream] imap in proxy.toml"
    )]
    NoProvider,
    #[error("no listener configured: set [listen] imap and/or imaps in proxy.toml")]
    NoListener,
    #[error("cannot create the state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind { addr: SocketAddr, kind: &'static str, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How long sessions get to say BYE after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Re-reads the configuration for a SIGHUP reload (`main.rs`: the same file again, with the
/// same command-line overrides).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// How often the running daemon checks whether the local certificate is due for renewal.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration from `reload`
/// (without one, SIGHUP only says that a restart is needed).
pub async fn run(config: Config, reload: Option<ConfigSource>) -> Result<(), RunError> {
    check_runnable(&config)?;
    prepare_state_dir(&config)?;
    match tls::ensure_local_cert(&config.state_dir, &tls::cert_names_for(&config))? {
        CertAction::Created => info!(
            path = %tls::LocalCertPaths::new(&config.state_dir).ca.display(),
            "created a local certificate authority and certificate; `coi-proxy cert export` gives the PEM for clients to trust"
        ),
        CertAction::Renewed(why) => info!("renewed the local certificate: {why}"),
        CertAction::Reused => {}
    }
    let (server_tls, local_cert) = tls::local_server_config(&config.state_dir)?;
    let store = Store::open_async(&config.state_dir).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        config: RwLock::new(Arc::new(config)),
        upstream_tls: UpstreamTls::default(),
        acceptor: TlsAcceptor::from(server_tls),
        credentials: Credentials::default(),
        store,
        hub: Hub::default(),
        sessions: Default::default(),
        auth_failures: Default::default(),
        shutdown: shutdown_rx.clone(),
    });
    // Every session holds a sender; when all are gone, every session has ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut listeners =
        Listeners { shared: shared.clone(), alive: alive_tx, imap: Vec::new(), smtp: Vec::new(), metrics: None };
    for (kind, addr) in imap_addrs(&shared.config()) {
        let bound = bind_imap(kind, addr).await?;
        listeners.serve_imap(kind, addr, bound);
    }
    if let Some(addr) = shared.config().listen.metrics {
        let bound = bind_metrics(addr).await?;
        listeners.serve_metrics(addr, bound);
    }
    // SMTP submission listeners and the queue's relay task.
    listeners.smtp = crate::smtp::server::start(shared.clone(), shutdown_rx.clone(), listeners.alive.clone()).await?;
    crate::push::start_workers(&shared).await;
    tokio::spawn(renew_cert_daily(shared.clone(), local_cert.clone()));
    info!(version = env!("CARGO_PKG_VERSION"), "coi-proxy ready");
    crate::sd_notify::ready("serving");

    wait_for_signal(&mut listeners, reload.as_ref(), &local_cert).await?;
    info!("shutting down: no new connections, saying BYE to every client");
    crate::sd_notify::stopping();
    let _ = shutdown_tx.send(true);
    listeners.stop();
    match tokio::time::timeout(SHUTDOWN_GRACE, alive_rx.recv()).await {
        Ok(_) => info!("all sessions closed"),
        Err(_) => warn!("sessions still open after {} s; closing them", SHUTDOWN_GRACE.as_secs()),
    }
    Ok(())
}

/// What `run` (and a reload) needs from a configuration before it can serve anything.
fn check_runnable(config: &Config) -> Result<(), RunError> {
    if config.upstream.is_none() && config.accounts.iter().all(|a| a.imap.is_none()) {
        return Err(RunError::NoProvider);
    }
    if imap_addrs(config).is_empty() {
        return Err(RunError::NoListener);
    }
    Ok(())
}

fn imap_addrs(config: &Config) -> Vec<(ListenerKind, SocketAddr)> {
    [(ListenerKind::Imap, config.listen.imap), (ListenerKind::Imaps, config.listen.imaps)]
        .into_iter()
        .filter_map(|(kind, addr)| addr.map(|a| (kind, a)))
        .collect()
}

fn label(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Imap => "imap",
        ListenerKind::Imaps => "imaps",
    }
}

async fn bind_imap(kind: ListenerKind, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, kind: label(kind), source })
}

async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, kind: "metrics", source })
}

/// The running accept loops. A reload stops and starts the ones whose address changed; the
/// sessions they accepted are tasks of their own and go on.
struct Listeners {
    shared: Arc<Shared>,
    /// Handed to every session; dropped at shutdown so that the last session's end is seen.
    alive: mpsc::Sender<()>,
    /// IMAP listeners by kind, with the address they were configured with.
    imap: Vec<(ListenerKind, SocketAddr, JoinHandle<()>)>,
    smtp: Vec<JoinHandle<()>>,
    /// The HTTP `/metrics` listener, with its configured address.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Listeners {
    fn serve_imap(&mut self, kind: ListenerKind, configured: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().unwrap_or(configured);
        let mode = match kind {
            ListenerKind::Imap if self.shared.config().listen.plaintext_auth_allowed(&local) => "plain or STARTTLS",
            ListenerKind::Imap => "STARTTLS required before login",
            ListenerKind::Imaps => "implicit TLS",
        };
        let name = label(kind);
        info!(listener = name, "listening on {local} ({name}, {mode})");
        let task = tokio::spawn(accept_loop(listener, kind, self.shared.clone(), self.alive.clone()));
        self.imap.push((kind, configured, task));
    }

    fn serve_metrics(&mut self, configured: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().unwrap_or(configured);
        info!(listener = "metrics", "listening on {local} (metrics, http://{local}/metrics and /healthz)");
        let task = tokio::spawn(crate::metrics::serve(listener, self.shared.clone()));
        self.metrics = Some((configured, task));
    }

    /// Takes `new` into force: rebinds changed listeners first (so that a port in use refuses
    /// the reload instead of leaving a listener down), then swaps the configuration.
    async fn reload(&mut self, mut new: Config, local_cert: &LocalCert) -> Result<Vec<String>, String> {
        check_runnable(&new).map_err(|e| e.to_string())?;
        let old = self.shared.config();
        let mut changes = Vec::new();
        if new.state_dir != old.state_dir {
            warn!("state_dir changes take effect at the next start; keeping {}", old.state_dir.display());
            new.state_dir = old.state_dir.clone();
        }
        let wanted = imap_addrs(&new);
        let running: Vec<(ListenerKind, SocketAddr)> = self.imap.iter().map(|(k, a, _)| (*k, *a)).collect();
        let mut bound = Vec::new();
        for &(kind, addr) in wanted.iter().filter(|w| !running.contains(w)) {
            // Moving to a port the old listener holds fails here; the old one is still serving.
            bound.push((kind, addr, bind_imap(kind, addr).await.map_err(|e| e.to_string())?));
        }
        let metrics_moved = new.listen.metrics != self.metrics.as_ref().map(|(a, _)| *a);
        let metrics = match new.listen.metrics {
            Some(addr) if metrics_moved => Some((addr, bind_metrics(addr).await.map_err(|e| e.to_string())?)),
            _ => None,
        };
        if [old.listen.smtp, old.listen.smtps] != [new.listen.smtp, new.listen.smtps] {
            warn!("[listen] smtp/smtps changes take effect at the next start");
            new.listen.smtp = old.listen.smtp;
            new.listen.smtps = old.listen.smtps;
        }
        let state_dir = new.state_dir.clone();
        let names = tls::cert_names_for(&new);
        match tokio::task::spawn_blocking(move || tls::ensure_local_cert(&state_dir, &names)).await {
            Ok(Ok(CertAction::Reused)) => {}
            Ok(Ok(action)) => {
                local_cert.reload(&new.state_dir).map_err(|e| e.to_string())?;
                changes.push(format!("local certificate: {action:?}"));
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(e.to_string()),
        }
        // Nothing can fail from here on.
        self.imap.retain(|(kind, addr, task)| {
            let keep = wanted.contains(&(*kind, *addr));
            if !keep {
                task.abort();
                changes.push(format!("{} listener on {addr} stopped", label(*kind)));
            }
            keep
        });
        if metrics_moved && let Some((addr, task)) = self.metrics.take() {
            task.abort();
            changes.push(format!("metrics listener on {addr} stopped"));
        }
        if old.providers() != new.providers() {
            changes.push("providers changed (next logins use them)".into());
        }
        self.shared.upstream_tls.clear();
        crate::logging::reload_filter(new.log.filter.as_deref());
        self.shared.set_config(new);
        for (kind, addr, listener) in bound {
            changes.push(format!("{} listener on {addr} started", label(kind)));
            self.serve_imap(kind, addr, listener);
        }
        if let Some((addr, listener)) = metrics {
            changes.push(format!("metrics listener on {addr} started"));
            self.serve_metrics(addr, listener);
        }
        Ok(changes)
    }

    fn stop(self) {
        for (_, _, task) in &self.imap {
            task.abort();
        }
        for task in self.smtp.iter().chain(self.metrics.as_ref().map(|(_, t)| t)) {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, kind: ListenerKind, shared: Arc<Shared>, alive: mpsc::Sender<()>) {
    let Ok(addr) = listener.local_addr() else { return };
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // Read per connection, so that a reload that changes it applies to the next one.
                let plaintext_auth = shared.config().listen.plaintext_auth_allowed(&addr);
                let info = ListenerInfo { kind, addr, plaintext_auth };
                let limits = &shared.config().limits;
                let admitted = shared.sessions.admit(peer.ip(), limits.max_sessions, limits.max_sessions_per_ip);
                let (shared, alive) = (shared.clone(), alive.clone());
                let shutdown = shared.shutdown.clone();
                tokio::spawn(async move {
                    let _open = crate::metrics::session_opened(label(kind));
                    session::serve(shared, tcp, peer, info, admitted, shutdown).await;
                    drop(alive);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                error!(listener = %addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks the local certificate once a day and renews it 30 days before it expires, so a
/// daemon that runs for a year never serves an expired certificate.
async fn renew_cert_daily(shared: Arc<Shared>, local_cert: Arc<LocalCert>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CERT_CHECK_EVERY) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let config = shared.config();
        let (dir, names) = (config.state_dir.clone(), tls::cert_names_for(&config));
        match tokio::task::spawn_blocking(move || tls::ensure_local_cert(&dir, &names)).await {
            Ok(Ok(CertAction::Reused)) => debug!("local certificate checked; not due for renewal"),
            Ok(Ok(action)) => {
                let why = match action {
                    CertAction::Renewed(why) => why,
                    _ => "its files were missing".into(),
                };
                match local_cert.reload(&config.state_dir) {
                    Ok(()) => info!("renewed the local certificate: {why}"),
                    Err(e) => error!("renewed the local certificate ({why}) but cannot load it: {e}"),
                }
            }
            Ok(Err(e)) => error!("cannot renew the local certificate: {e}"),
            Err(e) => error!("certificate renewal task failed: {e}"),
        }
    }
}

/// Waits for SIGTERM or SIGINT; on SIGHUP reloads the configuration.
async fn wait_for_signal(
    listeners: &mut Listeners,
    reload: Option<&ConfigSource>,
    local_cert: &LocalCert,
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let Some(source) = reload else {
                    warn!("SIGHUP: no configuration file to re-read; restart coi-proxy to apply changes");
                    continue;
                };
                crate::sd_notify::reloading();
                let result = match source() {
                    Ok(new) => listeners.reload(new, local_cert).await,
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(changes) if changes.is_empty() => info!("configuration reloaded"),
                    Ok(changes) => info!("configuration reloaded: {}", changes.join("; ")),
                    Err(e) => error!("configuration reload refused, the previous configuration stays in force: {e}"),
                }
                crate::sd_notify::ready("serving");
            }
        }
    }
}

/// Creates `state_dir` (mode 0700: it holds private keys) if it does not exist.
fn prepare_state_dir(config: &Config) -> Result<(), RunError> {
    let dir = &config.state_dir;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| RunError::StateDir { path: dir.display().to_string(), source })?;
    }
    Ok(())
}
