//! The daemon: prepares state and TLS, binds the listeners, accepts connections, and shuts down
//! gracefully on SIGTERM/SIGINT (stop accepting, `* BYE` to every client, close providers).

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::accounts::Credentials;
use crate::coi::hub::Hub;
use crate::config::Config;
use crate::imap::session::{self, ListenerInfo, ListenerKind};
use crate::store::Store;
use crate::tls::{self, CertAction, UpstreamTls};

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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), RunError> {
    if config.upstream.is_none() && config.accounts.iter().all(|a| a.imap.is_none()) {
        return Err(RunError::NoProvider);
    }
    let listeners: Vec<(SocketAddr, ListenerKind)> =
        [(config.listen.imap, ListenerKind::Imap), (config.listen.imaps, ListenerKind::Imaps)]
            .into_iter()
            .filter_map(|(addr, kind)| addr.map(|a| (a, kind)))
            .collect();
    if listeners.is_empty() {
        return Err(RunError::NoListener);
    }
    prepare_state_dir(&config)?;
    // The certificate covers the SMTP listeners too (same certificate for both protocols).
    let smtp_ips = [config.listen.smtp, config.listen.smtps].into_iter().flatten().map(|a| a.ip());
    let names = tls::cert_names(&listeners.iter().map(|(a, _)| a.ip()).chain(smtp_ips).collect::<Vec<_>>());
    match tls::ensure_local_cert(&config.state_dir, &names)? {
        CertAction::Created => info!(
            path = %tls::LocalCertPaths::new(&config.state_dir).ca.display(),
            "created a local certificate authority and certificate; `coi-proxy cert export` gives the PEM for clients to trust"
        ),
        CertAction::Renewed(why) => info!("renewed the local certificate: {why}"),
        CertAction::Reused => {}
    }
    let acceptor = TlsAcceptor::from(tls::server_config(&config.state_dir)?);
    let store = Store::open(&config.state_dir)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        config: RwLock::new(Arc::new(config)),
        upstream_tls: UpstreamTls::default(),
        acceptor,
        credentials: Credentials::default(),
        store,
        hub: Hub::default(),
        shutdown: shutdown_rx.clone(),
    });
    // Every session holds a sender; when all are gone, every session has ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut accept_tasks = Vec::new();
    for (addr, kind) in listeners {
        let label = match kind {
            ListenerKind::Imap => "imap",
            ListenerKind::Imaps => "imaps",
        };
        let listener = TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, kind: label, source })?;
        let local = listener.local_addr().map_err(|source| RunError::Bind { addr, kind: label, source })?;
        let info =
            ListenerInfo { kind, addr: local, plaintext_auth: shared.config().listen.plaintext_auth_allowed(&local) };
        let mode = match kind {
            ListenerKind::Imap if info.plaintext_auth => "plain or STARTTLS",
            ListenerKind::Imap => "STARTTLS required before login",
            ListenerKind::Imaps => "implicit TLS",
        };
        info!(listener = label, "listening on {local} ({label}, {mode})");
        accept_tasks.push(tokio::spawn(accept_loop(
            listener,
            info,
            shared.clone(),
            shutdown_rx.clone(),
            alive_tx.clone(),
        )));
    }
    // SMTP submission listeners and the queue's relay task.
    accept_tasks.extend(crate::smtp::server::start(shared.clone(), shutdown_rx.clone(), alive_tx.clone()).await?);
    drop(alive_tx);
    info!(version = env!("CARGO_PKG_VERSION"), "coi-proxy ready");
    crate::sd_notify::ready("serving");

    wait_for_signal().await?;
    info!("shutting down: no new connections, saying BYE to every client");
    crate::sd_notify::stopping();
    let _ = shutdown_tx.send(true);
    for task in accept_tasks {
        task.abort();
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, alive_rx.recv()).await {
        Ok(_) => info!("all sessions closed"),
        Err(_) => warn!("sessions still open after {} s; closing them", SHUTDOWN_GRACE.as_secs()),
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    info: ListenerInfo,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let (shared, info, shutdown, alive) = (shared.clone(), info.clone(), shutdown.clone(), alive.clone());
                tokio::spawn(async move {
                    session::serve(shared, tcp, peer, info, shutdown).await;
                    drop(alive);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                error!(listener = %info.addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_for_signal() -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => warn!("SIGHUP: this version cannot reload its configuration; restart coi-proxy to apply changes"),
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
