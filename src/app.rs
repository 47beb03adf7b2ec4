//! The daemon, and the one place that starts things: prepares state and TLS, builds the
//! [`Context`], starts the worker supervisor, binds the listeners (IMAP, SMTP with its queue
//! and receipts agent, metrics), reloads on SIGHUP, and shuts down gracefully on SIGTERM/SIGINT
//! (stop accepting, `* BYE` to every client, close providers; no worker restarts).

mod control;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::context::Context;
use crate::imap::session::{self, ListenerInfo, ListenerKind};
use crate::store::Store;
use crate::tls::{self, CertAction, LocalCert};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no provider configured: pass --upstream imaps://imap.example.org:993, or set [upstream] imap in proxy.toml"
    )]
    NoProvider,
    #[error("no listener configured: set [listen] imap and/or imaps in proxy.toml")]
    NoListener,
    #[error("{key} = {}: {problem}; fix the file or the key in proxy.toml", path.display())]
    CaFile { key: String, path: std::path::PathBuf, problem: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::context::ClusterError),
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind { addr: SocketAddr, kind: &'static str, source: std::io::Error },
    #[error(transparent)]
    Smtp(#[from] crate::smtp::server::StartError),
    #[error("[autocrypt]: {0}")]
    Autocrypt(#[from] crate::openpgp::identity::IdentityError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("a start-up task failed: {0}")]
    Task(&'static str),
}

/// What a reload changed, for the log: what it put in force, and what it could not (a restart
/// is needed), so that the log never claims more than happened.
#[derive(Debug, Default)]
struct Changes {
    applied: Vec<String>,
    needs_restart: Vec<String>,
}

/// Why a reload was refused (the previous configuration stays in force).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the certificate task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How long the start waits for the first read of a cluster's shared state.
const CLUSTER_SYNC_WAIT: Duration = Duration::from_secs(5);

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
    run_with(config, reload, None).await
}

/// As [`run`], with the decrypted views' keys given (tests) instead of the OpenPGP gateway's
/// own; plain clients' sessions see encrypted mail decrypted either way.
pub async fn run_with(
    config: Config,
    reload: Option<ConfigSource>,
    keys: Option<Arc<dyn crate::openpgp::cache::SecretKeys>>,
) -> Result<(), RunError> {
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
    // One seal key for every secret in the store: OAuth2 grants, OpenPGP keys, cached views.
    // Read at start where it exists or is needed now (a bad file stops the start), else made
    // at its first use: a daemon with nothing to seal leaves no key file.
    let seal_path = config.seal_key_path();
    let needed = config.autocrypt.enabled
        || keys.is_some()
        || config.accounts.iter().any(|a| a.oauth2.is_some())
        || config.cluster.is_some();
    let seal = match needed || seal_path.exists() {
        true => {
            let path = seal_path.clone();
            let key = tokio::task::spawn_blocking(move || crate::seal::SealKey::load_or_create(&path))
                .await
                .map_err(|_| RunError::Task("reading the seal key"))??;
            crate::seal::SealCell::loaded(seal_path, Arc::new(key))
        }
        false => crate::seal::SealCell::at(seal_path),
    };
    let identity = match seal.if_loaded() {
        Some(key) => open_identity(&config, &store, &key).await?,
        None => None,
    };
    // Plain clients' sessions see encrypted mail decrypted with the keys the gateway holds
    // (or, in tests, the keys given), the views sealed under the same seal key.
    let keys = keys
        .or_else(|| identity.clone().map(|identity| Arc::new(identity) as Arc<dyn crate::openpgp::cache::SecretKeys>));
    let views = keys.zip(seal.if_loaded()).map(|(keys, seal)| {
        Arc::new(crate::openpgp::cache::Views::new(store.clone(), seal, keys, crate::openpgp::cache::DEFAULT_BUDGET))
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // `[cluster]`: etcd holds the shared state and says which accounts this instance works on.
    let cluster = match (&config.cluster, seal.if_loaded()) {
        (Some(cluster), Some(key)) => Some(crate::cluster::connect(cluster, key).await?),
        _ => None,
    };
    let (mut context, receivers) =
        Context::new(config, TlsAcceptor::from(server_tls), store, seal, shutdown_rx.clone());
    if let Some(views) = &views {
        views.charge_to(context.memory.clone());
    }
    context.cluster = cluster.as_ref().map(|(etcd, _)| etcd.clone() as Arc<dyn crate::context::Cluster>);
    if let (Some((etcd, _)), Some(identity)) = (&cluster, &identity) {
        // Keys and the gateway's state are made once cluster-wide and written to etcd first; a
        // key replaced on another instance reaches this one's cache of unsealed keys.
        identity.share_through(etcd.clone(), tokio::runtime::Handle::current());
        let identity = identity.clone();
        etcd.on_key_change(move |login| {
            let identity = identity.clone();
            tokio::task::spawn_blocking(move || identity.reload(&login));
        });
    }
    let ctx = Arc::new(context);
    let mut cluster_task = None;
    if let Some((_, tasks)) = cluster {
        // The listeners open on the cluster's shared settings, unless etcd is unreachable: then
        // on the store's copy, and the replica catches up when etcd answers.
        let (synced, task) = tasks.start(ctx.clone());
        cluster_task = Some(task);
        if tokio::time::timeout(CLUSTER_SYNC_WAIT, synced).await.is_err() {
            warn!("cluster: etcd has not answered yet; serving the local copy of the shared state meanwhile");
        }
    }
    // The worker supervisor first: logins ask it for workers as soon as the listeners accept.
    let supervisor = tokio::spawn(crate::worker::supervise(ctx.clone(), receivers.workers, identity.clone()));
    // Delta Chat push: the notifier and its retries (kept across restarts).
    tokio::spawn(crate::deltachat::notifier::run(ctx.clone(), receivers.notify));
    // Every session holds a sender; when all are gone, every session has ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let control_socket = control::bind(&ctx);
    let mut listeners =
        Listeners { ctx: ctx.clone(), alive: alive_tx, imap: Vec::new(), smtp: Vec::new(), metrics: None, views };
    for (kind, addr) in imap_addrs(&ctx.config()) {
        let bound = bind_imap(kind, addr).await?;
        listeners.serve_imap(kind, addr, bound);
    }
    if let Some(addr) = ctx.config().listen.metrics {
        let bound = bind_metrics(addr).await?;
        listeners.serve_metrics(addr, bound);
    }
    // SMTP submission listeners, the queue's relay task and the receipts agent.
    let smtp_channels = (receivers.queue, receivers.receipts);
    let (smtp, relay_waits) = crate::smtp::server::start(
        ctx.clone(),
        smtp_channels,
        shutdown_rx.clone(),
        listeners.alive.clone(),
        identity.clone(),
        listeners.views.clone(),
    )
    .await?;
    listeners.smtp = smtp;
    if let Some(socket) = control_socket {
        tokio::spawn(control::serve(socket, ctx.clone(), relay_waits, identity, shutdown_rx.clone()));
    }
    tokio::spawn(renew_cert_daily(ctx.clone(), local_cert.clone()));
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
    // The supervisor has stopped its workers by now (it watches the same signal).
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, supervisor).await;
    // The lease revoked: the other instances take this one's accounts over at once.
    if let Some(task) = cluster_task {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
    }
    Ok(())
}

/// The OpenPGP gateway's state, its keys sealed under the daemon's one seal key (`run_with`
/// has read it; a seal key file that others can read, or that is not one, stopped the start
/// there); `None` when `[autocrypt] enabled = false`. Unseals the stored keys off the runtime.
async fn open_identity(
    config: &Config,
    store: &Store,
    seal: &Arc<crate::seal::SealKey>,
) -> Result<Option<crate::openpgp::identity::Identity>, RunError> {
    use crate::openpgp::identity::{Identity, IdentityError};
    if !config.autocrypt.enabled {
        info!("Autocrypt is off ([autocrypt] enabled = false): mail passes as clients send it");
        return Ok(None);
    }
    let (store, seal) = (store.clone(), seal.clone());
    let identity = tokio::task::spawn_blocking(move || {
        let identity = Identity::with_seal(store, seal);
        identity.preload()?;
        Ok(identity)
    })
    .await
    .unwrap_or_else(|e| Err(IdentityError::Task(e.to_string())))?;
    Ok(Some(identity))
}

/// What `run` (and a reload) needs from a configuration before it can serve anything.
fn check_runnable(config: &Config) -> Result<(), RunError> {
    refusals(config).into_iter().next().map_or(Ok(()), Err)
}

/// Every reason `run` (and a reload) would refuse `config`; `check` lists them all.
pub fn refusals(config: &Config) -> Vec<RunError> {
    let mut out = Vec::new();
    if config.upstream.is_none() && config.accounts.iter().all(|a| a.imap.is_none()) {
        out.push(RunError::NoProvider);
    }
    if imap_addrs(config).is_empty() {
        out.push(RunError::NoListener);
    }
    for (key, path) in ca_files(config) {
        if let Err(problem) = tls::check_ca_file(&path) {
            out.push(RunError::CaFile { key, path, problem });
        }
    }
    out
}

/// Every `ca_file` of the configuration, with its key.
fn ca_files(config: &Config) -> Vec<(String, std::path::PathBuf)> {
    let upstream =
        config.upstream.iter().filter_map(|u| u.ca_file.clone()).map(|p| ("upstream.ca_file".to_string(), p));
    let accounts = config
        .accounts
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.ca_file.clone().map(|p| (format!("account[{i}].ca_file"), p)));
    let cluster = config.cluster.iter().filter_map(|c| c.ca_file.clone()).map(|p| ("cluster.ca_file".to_string(), p));
    upstream.chain(accounts).chain(cluster).collect()
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
    ctx: Arc<Context>,
    /// Handed to every session; dropped at shutdown so that the last session's end is seen.
    alive: mpsc::Sender<()>,
    /// IMAP listeners by kind, with the address they were configured with.
    imap: Vec<(ListenerKind, SocketAddr, JoinHandle<()>)>,
    smtp: Vec<JoinHandle<()>>,
    /// The HTTP `/metrics` listener, with its configured address.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    /// The decrypted views, when keys are held.
    views: Option<Arc<crate::openpgp::cache::Views>>,
}

impl Listeners {
    fn serve_imap(&mut self, kind: ListenerKind, configured: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().unwrap_or(configured);
        let mode = match kind {
            ListenerKind::Imap if self.ctx.config().listen.plaintext_auth_allowed(&local) => "plain or STARTTLS",
            ListenerKind::Imap => "STARTTLS required before login",
            ListenerKind::Imaps => "implicit TLS",
        };
        let name = label(kind);
        info!(listener = name, "listening on {local} ({name}, {mode})");
        let task = tokio::spawn(accept_loop(listener, kind, self.ctx.clone(), self.alive.clone(), self.views.clone()));
        self.imap.push((kind, configured, task));
    }

    fn serve_metrics(&mut self, configured: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().unwrap_or(configured);
        info!(listener = "metrics", "listening on {local} (metrics, http://{local}/metrics and /healthz)");
        let task = tokio::spawn(http::serve(listener, self.ctx.clone()));
        self.metrics = Some((configured, task));
    }

    /// Takes `new` into force: rebinds changed listeners first (so that a port in use refuses
    /// the reload instead of leaving a listener down), then swaps the configuration.
    async fn reload(&mut self, mut new: Config, local_cert: &LocalCert) -> Result<Changes, ReloadError> {
        check_runnable(&new)?;
        let old = self.ctx.config();
        let mut changes = Changes::default();
        if new.state_dir != old.state_dir {
            changes.needs_restart.push(format!(
                "state_dir {} (still using {})",
                new.state_dir.display(),
                old.state_dir.display()
            ));
            new.state_dir = old.state_dir.clone();
        }
        let wanted = imap_addrs(&new);
        let running: Vec<(ListenerKind, SocketAddr)> = self.imap.iter().map(|(k, a, _)| (*k, *a)).collect();
        let mut bound = Vec::new();
        for &(kind, addr) in wanted.iter().filter(|w| !running.contains(w)) {
            // Moving to a port the old listener holds fails here; the old one is still serving.
            bound.push((kind, addr, bind_imap(kind, addr).await?));
        }
        let metrics_moved = new.listen.metrics != self.metrics.as_ref().map(|(a, _)| *a);
        let metrics = match new.listen.metrics {
            Some(addr) if metrics_moved => Some((addr, bind_metrics(addr).await?)),
            _ => None,
        };
        // The SMTP side (listeners, relay, control socket) is started once, at start.
        for (name, was, wanted) in
            [("smtp", old.listen.smtp, new.listen.smtp), ("smtps", old.listen.smtps, new.listen.smtps)]
        {
            if was != wanted {
                let wanted = wanted.map_or("off".to_string(), |a| a.to_string());
                changes.needs_restart.push(format!("{name} listener {wanted}"));
            }
        }
        new.listen.smtp = old.listen.smtp;
        new.listen.smtps = old.listen.smtps;
        if !old.has_smtp_provider()
            && new.has_smtp_provider()
            && [old.listen.smtp, old.listen.smtps].iter().any(Option::is_some)
        {
            changes.needs_restart.push("SMTP submission (a submission server is configured now)".into());
        }
        let state_dir = new.state_dir.clone();
        let names = tls::cert_names_for(&new);
        let action = tokio::task::spawn_blocking(move || tls::ensure_local_cert(&state_dir, &names)).await??;
        // Read again whatever happened: `coi-proxy cert rotate` writes the files for a reload.
        if local_cert.reload(&new.state_dir)? || action != CertAction::Reused {
            changes.applied.push(format!(
                "local certificate {}",
                if action == CertAction::Reused { "reloaded".to_string() } else { action.to_string() }
            ));
        }
        // Nothing can fail from here on.
        self.imap.retain(|(kind, addr, task)| {
            let keep = wanted.contains(&(*kind, *addr));
            if !keep {
                task.abort();
                changes.applied.push(format!("{} listener on {addr} stopped", label(*kind)));
            }
            keep
        });
        if metrics_moved && let Some((addr, task)) = self.metrics.take() {
            task.abort();
            changes.applied.push(format!("metrics listener on {addr} stopped"));
        }
        if old.listen.proxy_protocol != new.listen.proxy_protocol {
            let now = if new.listen.proxy_protocol { "on" } else { "off" };
            changes.applied.push(format!("proxy_protocol {now} (for connections accepted from now on)"));
        }
        if old.providers() != new.providers() {
            changes.applied.push("providers changed (next logins use them)".into());
        }
        self.ctx.upstream_tls.clear();
        if old.log.filter != new.log.filter {
            match crate::logging::reload_filter(new.log.filter.as_deref()) {
                crate::logging::FilterReload::Applied(filter) => {
                    changes.applied.push(format!("log filter now {filter}"))
                }
                crate::logging::FilterReload::EnvWins(env) => {
                    changes.needs_restart.push(format!("[log] filter (RUST_LOG={env} is set and wins over it)"))
                }
            }
        }
        self.ctx.set_config(new);
        for (kind, addr, listener) in bound {
            changes.applied.push(format!("{} listener on {addr} started", label(kind)));
            self.serve_imap(kind, addr, listener);
        }
        if let Some((addr, listener)) = metrics {
            changes.applied.push(format!("metrics listener on {addr} started"));
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

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    ctx: Arc<Context>,
    alive: mpsc::Sender<()>,
    views: Option<Arc<crate::openpgp::cache::Views>>,
) {
    let Ok(addr) = listener.local_addr() else { return };
    loop {
        match listener.accept().await {
            Ok((mut tcp, socket_peer)) => {
                // Read per connection, so that a reload that changes them applies to the next one.
                let plaintext_auth = ctx.config().listen.plaintext_auth_allowed(&addr);
                let proxy_protocol = ctx.config().listen.proxy_protocol;
                let info = ListenerInfo { kind, addr, plaintext_auth, views: views.clone() };
                // Admitted here, in the order of arrival, unless the address is in a header yet
                // to be read.
                let admitted = (!proxy_protocol).then(|| admit(&ctx, socket_peer));
                let (ctx, alive) = (ctx.clone(), alive.clone());
                let shutdown = ctx.shutdown.clone();
                tokio::spawn(async move {
                    let listener = label(kind);
                    let client = crate::net::proxied::client_address(&mut tcp, socket_peer, proxy_protocol, listener);
                    if let Some(peer) = client.await {
                        let admitted = admitted.unwrap_or_else(|| admit(&ctx, peer));
                        let _open = crate::metrics::session_opened(listener);
                        session::serve(ctx, tcp, peer, info, admitted, shutdown).await;
                    }
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

/// A place for a session from `peer` (the client's address, from the PROXY header if any).
fn admit(ctx: &Context, peer: SocketAddr) -> Result<crate::limits::SessionPermit, crate::limits::Refused> {
    let limits = &ctx.config().limits;
    ctx.sessions.admit(peer.ip(), limits.max_sessions, limits.max_sessions_per_ip)
}

/// Checks the local certificate once a day and renews it 30 days before it expires, so a
/// daemon that runs for a year never serves an expired certificate.
async fn renew_cert_daily(ctx: Arc<Context>, local_cert: Arc<LocalCert>) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CERT_CHECK_EVERY) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let config = ctx.config();
        let (dir, names) = (config.state_dir.clone(), tls::cert_names_for(&config));
        match tokio::task::spawn_blocking(move || tls::ensure_local_cert(&dir, &names)).await {
            Ok(Ok(CertAction::Reused)) => debug!("local certificate checked; not due for renewal"),
            Ok(Ok(action)) => {
                let why = match action {
                    CertAction::Renewed(why) => why,
                    _ => "its files were missing".into(),
                };
                match local_cert.reload(&config.state_dir) {
                    Ok(_) => info!("renewed the local certificate: {why}"),
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
                    Err(e) => Err(e.into()),
                };
                match result {
                    Ok(Changes { applied, needs_restart }) if needs_restart.is_empty() => match applied.is_empty() {
                        true => info!("configuration reloaded (no change that needs applying)"),
                        false => info!("configuration reloaded: {}", applied.join("; ")),
                    },
                    Ok(Changes { applied, needs_restart }) => warn!(
                        "configuration reloaded in part; applied: {}; needs a restart: {}",
                        if applied.is_empty() { "nothing else".to_string() } else { applied.join("; ") },
                        needs_restart.join("; ")
                    ),
                    Err(e) => error!("configuration reload refused, the previous configuration stays in force: {e}"),
                }
                crate::sd_notify::ready("serving");
            }
        }
    }
}

/// Creates `state_dir` (0700: it holds private keys and queued mail) or makes it private.
fn prepare_state_dir(config: &Config) -> Result<(), RunError> {
    let dir = &config.state_dir;
    match crate::state::prepare(dir)? {
        crate::state::Prepared::Private => {}
        prepared @ crate::state::Prepared::Created => info!(state_dir = %dir.display(), "state directory {prepared}"),
        prepared => warn!(state_dir = %dir.display(), "state directory {}: {prepared}", dir.display()),
    }
    Ok(())
}
