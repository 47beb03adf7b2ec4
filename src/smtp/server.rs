//! The submission listeners: binds `[listen] smtp` (STARTTLS offered) and `smtps` (implicit
//! TLS), runs one task per connection that drives a [`Session`] with the socket, checks logins
//! at the provider and commits messages to the queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::queue::{self, Body, Queue, Wakeups};
use super::relay::SmtpClient;
use super::session::{AuthResult, Event, Policy, QueueRefusal, Session};
use super::{CapsCache, Smtp, Waits};
use crate::context::{Context, ReceiptJob};
use crate::imap::upstream::{AuthOutcome, Upstream};
use crate::limits::Refused;
use crate::limits::budget::Charge;
use crate::limits::logins::Gate;
use crate::net::Stream;
use crate::oauth::{self, OAuthError};
use crate::secret::Secret;
use crate::store::{SpoolFile, Store, StoreError};

/// RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for the next command.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Smtp,
    Smtps,
}

#[derive(Debug, Clone, Copy)]
struct Listener {
    kind: Kind,
    addr: SocketAddr,
    plaintext_auth: bool,
}

/// Why the SMTP side could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind { addr: SocketAddr, kind: &'static str, source: std::io::Error },
}

/// Binds the SMTP listeners of the config and starts the relay task (fed by `channels.0`, the
/// other end of `Context::queue`) and the receipts agent (fed by `channels.1`, the other end
/// of `Context::receipts`). Returns the accept loops (aborted at shutdown) and the relay's
/// reasons for waiting (for `queue list` on the control socket); sessions and the relay hold
/// `alive` until they end. Without SMTP, the channels are dropped: nothing is queued, and
/// receipts are not worked on.
pub async fn start(
    shared: Arc<Context>,
    channels: (Wakeups, mpsc::UnboundedReceiver<ReceiptJob>),
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    identity: Option<crate::openpgp::identity::Identity>,
    views: Option<Arc<crate::openpgp::cache::Views>>,
) -> Result<(Vec<JoinHandle<()>>, Option<Arc<Waits>>), StartError> {
    let (wakeups, receipt_jobs) = channels;
    let wanted: Vec<(SocketAddr, Kind)> =
        [(shared.config().listen.smtp, Kind::Smtp), (shared.config().listen.smtps, Kind::Smtps)]
            .into_iter()
            .filter_map(|(addr, kind)| addr.map(|a| (a, kind)))
            .collect();
    if wanted.is_empty() {
        return Ok((Vec::new(), None));
    }
    if !shared.config().has_smtp_provider() {
        warn!(
            "[listen] smtp/smtps are set but no submission server is configured ([upstream] smtp); not listening for SMTP"
        );
        return Ok((Vec::new(), None));
    }
    // What a crash left of messages being received is never queued.
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.clean_spool()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => info!(files = n, "removed the partial message data a crash left in the spool"),
        Ok(Err(e)) => warn!("cannot clean the spool: {e}"),
        Err(e) => warn!("cannot clean the spool: {e}"),
    }
    let queue = Queue::new(shared.clone());
    let waits = Arc::new(Waits::default());
    let ctx = Arc::new(Smtp {
        shared: shared.clone(),
        caps: CapsCache::default(),
        queue,
        waits: waits.clone(),
        identity,
        views,
    });
    let mut tasks = Vec::new();
    for (addr, kind) in wanted {
        let label = match kind {
            Kind::Smtp => "smtp",
            Kind::Smtps => "smtps",
        };
        let listener =
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, kind: label, source })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind { addr, kind: label, source })?;
        let info =
            Listener { kind, addr: local, plaintext_auth: shared.config().listen.plaintext_auth_allowed(&local) };
        let mode = match kind {
            Kind::Smtp if info.plaintext_auth => "plain or STARTTLS",
            Kind::Smtp => "STARTTLS required before AUTH",
            Kind::Smtps => "implicit TLS",
        };
        info!(listener = label, "listening on {local} ({label}, {mode})");
        tasks.push(tokio::spawn(accept_loop(listener, info, ctx.clone(), shutdown.clone(), alive.clone())));
    }
    // Learn the default provider's SIZE/SMTPUTF8/DSN before the first client asks.
    if let Some(provider) = default_provider(&shared) {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let shared = &ctx.shared;
            ctx.caps.get(&provider, &shared.upstream_tls, shared.config().limits.connect_timeout()).await;
        });
    }
    super::receipts::start(ctx.clone(), receipt_jobs);
    tokio::spawn(queue::run_relay(ctx, wakeups, shutdown, alive));
    Ok((tasks, Some(waits)))
}

/// The provider whose capabilities are advertised before a client has logged in.
fn default_provider(shared: &Context) -> Option<crate::config::SmtpProvider> {
    let config = shared.config();
    let up = config.upstream.as_ref()?;
    let url = crate::config::ServerUrl::parse_smtp(up.smtp.as_deref()?).ok()?;
    Some(crate::config::SmtpProvider { smtp: url, ca_file: up.ca_file.clone() })
}

async fn accept_loop(
    listener: TcpListener,
    info: Listener,
    ctx: Arc<Smtp>,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        match listener.accept().await {
            Ok((mut tcp, socket_peer)) => {
                // Read per connection, so that a reload that changes it applies to the next one.
                let proxy_protocol = ctx.shared.config().listen.proxy_protocol;
                // Admitted here, in the order of arrival, unless the address is in a header yet
                // to be read.
                let admitted = (!proxy_protocol).then(|| admit(&ctx.shared, socket_peer));
                let (ctx, shutdown, alive) = (ctx.clone(), shutdown.clone(), alive.clone());
                tokio::spawn(async move {
                    let listener = if info.kind == Kind::Smtp { "smtp" } else { "smtps" };
                    let client = crate::net::proxied::client_address(&mut tcp, socket_peer, proxy_protocol, listener);
                    if let Some(peer) = client.await {
                        let admitted = admitted.unwrap_or_else(|| admit(&ctx.shared, peer));
                        let _open = crate::metrics::session_opened(listener);
                        let refused = admitted.as_ref().err().copied();
                        serve(ctx, tcp, peer, info, refused, shutdown).await;
                        drop(admitted);
                    }
                    drop(alive);
                });
            }
            Err(e) => {
                error!(listener = %info.addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A place for a session from `peer` (the client's address, from the PROXY header if any): one
/// budget with the IMAP sessions, as the limits are per daemon and per address.
fn admit(shared: &Context, peer: SocketAddr) -> Result<crate::limits::SessionPermit, Refused> {
    let limits = &shared.config().limits;
    shared.sessions.admit(peer.ip(), limits.max_sessions, limits.max_sessions_per_ip)
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

async fn serve(
    ctx: Arc<Smtp>,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    refused: Option<Refused>,
    shutdown: watch::Receiver<bool>,
) {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("smtp", id, client = %peer, login = tracing::field::Empty);
    async move {
        debug!(listener = %listener.addr, "connected");
        let started = Instant::now();
        let _ = tcp.set_nodelay(true);
        let outcome = run(&ctx, tcp, peer, listener, refused, shutdown).await;
        info!(outcome = %outcome, secs = started.elapsed().as_secs(), "smtp session ended");
        crate::limits::memory::session_ended();
    }
    .instrument(span)
    .await
}

async fn run(
    ctx: &Smtp,
    mut tcp: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    refused: Option<Refused>,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    let started = Instant::now();
    let shared = &ctx.shared;
    let mut stream = match listener.kind {
        Kind::Smtps => {
            if let Some(outcome) = plain_client_on_tls_port(shared, &mut tcp, &listener).await {
                return outcome;
            }
            match tokio::time::timeout(shared.config().limits.login_timeout(), shared.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Stream::ServerTls(Box::new(tls)),
                Ok(Err(e)) => return format!("TLS handshake failed: {e}"),
                Err(_) => return "TLS handshake timed out (the client sent its hello, then stopped)".into(),
            }
        }
        Kind::Smtp => Stream::Plain(tcp),
    };
    if let Some(why) = refused {
        // After the TLS handshake on smtps, so that the client can read why.
        let _ = stream.write_all(format!("421 4.7.0 {why}; try again later\r\n").as_bytes()).await;
        let _ = stream.shutdown().await;
        return format!("refused: {why}");
    }
    let caps = match default_provider(shared) {
        Some(p) => ctx.caps.get(&p, &shared.upstream_tls, shared.config().limits.connect_timeout()).await,
        None => None,
    };
    let queue_bytes = size_cap(ctx);
    let mut session = Session::new(
        &super::hostname(),
        stream.is_tls(),
        listener.plaintext_auth,
        Policy::for_provider(caps.as_ref(), queue_bytes),
    );
    let mut buf = vec![0u8; READ_CHUNK];
    let mut queued = 0u32;
    let mut first_read = !stream.is_tls();
    let limits = shared.config().limits.clone();
    let login_deadline = started + limits.login_timeout();
    let mut data_since: Option<Instant> = None;
    // The message being received: its data goes to this file as it comes (never kept in memory).
    let mut spool: Option<(SpoolFile, tokio::fs::File)> = None;
    // The header section the session holds of a message, charged to the account's share of the
    // memory budget (set at login).
    let mut header_charge: Option<Charge> = None;
    loop {
        let event = session.next_event();
        let spooled = spool_data(&shared.store, &mut session, &mut spool).await;
        let enqueue = matches!(event, Event::Enqueue(_));
        if let Err(why) = &spooled
            && !enqueue
        {
            warn!("cannot keep the message data: {why}");
            session.spool_failed(why.clone());
        }
        if let Some(charge) = header_charge.as_mut() {
            let held = session.header_held();
            if held == 0 {
                charge.release();
            } else if let Err(e) = charge.cover(held, 64 * 1024) {
                warn!(held, "no room in the memory budget for the message header: {e}");
                session.spool_failed(QueueRefusal::Memory(e));
                charge.release();
            }
        }
        if !enqueue && !session.data_kept() {
            // Refused, finished or never started: the partial file goes.
            spool = None;
        }
        match event {
            Event::NeedInput => {
                if let Err(e) = flush(&mut stream, &mut session).await {
                    return format!("client connection failed: {e}");
                }
                // Before login, the login timeout counts from the connection (as on the IMAP
                // side, whatever the client sends); within DATA, the data timeout from DATA.
                let now = Instant::now();
                data_since = if session.in_data() { data_since.or(Some(now)) } else { None };
                let (wait, expired) = if !session.logged_in() {
                    (login_deadline.saturating_duration_since(now), "421 4.7.0 Login timed out; closing the connection")
                } else if let Some(since) = data_since {
                    let left = (since + limits.data_timeout()).saturating_duration_since(now);
                    (left, "421 4.4.2 Message data timed out; closing the connection (not queued)")
                } else {
                    (IDLE_TIMEOUT, "421 4.4.2 Timeout; closing the connection")
                };
                let read = tokio::select! {
                    read = tokio::time::timeout(wait.min(IDLE_TIMEOUT), stream.read(&mut buf)) => read,
                    _ = shutdown.wait_for(|down| *down) => {
                        session.close_with("421 4.3.2 coi-proxy is shutting down; try again later");
                        continue;
                    }
                };
                match read {
                    Ok(Ok(0)) => {
                        return if session.in_data() {
                            "client vanished in the middle of a message (not queued)".into()
                        } else {
                            format!("client closed the connection; {queued} message(s) queued")
                        };
                    }
                    Ok(Ok(n)) if std::mem::take(&mut first_read) && crate::net::is_tls_hello(&buf[..n]) => {
                        // The client is set to SSL/TLS for this STARTTLS port; it has read our
                        // plain greeting as a broken TLS record and shows a TLS error.
                        warn!(
                            "client started TLS on the plain SMTP port {}; set the client to STARTTLS here, or to SSL/TLS on the smtps port",
                            listener.addr
                        );
                        return "TLS spoken on the plain port".into();
                    }
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                    Ok(Err(e)) => return format!("client connection failed: {e}"),
                    Err(_) if wait <= IDLE_TIMEOUT => session.close_with(expired),
                    Err(_) => session.close_with("421 4.4.2 Timeout; closing the connection"),
                }
            }
            Event::Authenticate { login, password } => {
                let key = shared.config().account_key(&login);
                let base = shared.config().limits.auth_failure_delay(&listener.addr);
                let gate = shared.logins.check(peer.ip(), &key, password.expose(), Instant::now());
                let result = if gate == Gate::Ask {
                    check_login(ctx, &login, &password, peer).await
                } else {
                    let delay = shared.logins.refusal_delay(peer.ip(), base);
                    info!(why = ?gate, delay_ms = delay.as_millis() as u64, "login refused by the proxy (back-off after failed logins)");
                    tokio::time::sleep(delay).await;
                    AuthResult::Refused
                };
                match &result {
                    AuthResult::Ok(_) => {
                        header_charge = Some(shared.memory.account(&key).empty());
                        shared.logins.succeeded(&key, password.expose(), Instant::now());
                        shared.credentials.remember(&key, &password);
                        shared.store.claim_legacy_state(&key).await;
                        tracing::Span::current().record("login", login.as_str());
                        info!("logged in");
                    }
                    AuthResult::Refused if gate != Gate::Ask => {}
                    AuthResult::Refused => {
                        let delay = shared.logins.failed(peer.ip(), &key, password.expose(), base, Instant::now());
                        info!(login = %crate::logging::peer_text(&login), delay_ms = delay.as_millis() as u64, "login rejected by the provider");
                        // Slows down password guessing, as on the IMAP side.
                        tokio::time::sleep(delay).await;
                    }
                    AuthResult::Unavailable(why) => info!(login, "login not checked: {why}"),
                    AuthResult::Reauthorize(why) => info!(login, "login refused: {why}"),
                }
                password.wipe();
                let ok = matches!(result, AuthResult::Ok(_));
                session.auth_result(result);
                if ok {
                    // Queued mail is the account's: its key, as the provider knows the login.
                    session.set_login(key);
                    session.set_senders(senders(&shared.config(), &login));
                }
            }
            Event::CheckRoom { login, size } => session.room(ctx.queue.room(login, size).await),
            Event::Enqueue(mut submission) => {
                let body = match spooled {
                    Ok(()) => finish_spool(spool.take()).await,
                    Err(why) => Err(why),
                };
                let result = match body {
                    Ok(mut body) => match super::gateway::outgoing(ctx, &mut submission, &mut body).await {
                        Ok(()) => ctx.queue.enqueue(submission, body).await,
                        Err(refusal) => Err(refusal),
                    },
                    Err(why) => Err(why),
                };
                queued += u32::from(result.is_ok());
                session.queued(result);
            }
            Event::StartTls => {
                if let Err(e) = flush(&mut stream, &mut session).await {
                    return format!("client connection failed: {e}");
                }
                if session.has_buffered_input() {
                    // Pipelined after STARTTLS in plaintext: possibly injected (RFC 3207 6).
                    return "client sent data after STARTTLS before the TLS handshake".into();
                }
                let tcp = stream.take_plain().expect("STARTTLS only on a plain connection");
                match tokio::time::timeout(shared.config().limits.login_timeout(), shared.acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => stream = Stream::ServerTls(Box::new(tls)),
                    Ok(Err(e)) => return format!("STARTTLS handshake failed: {e}"),
                    Err(_) => return "STARTTLS handshake timed out".into(),
                }
                session.tls_started();
            }
            Event::Close => {
                let _ = flush(&mut stream, &mut session).await;
                let _ = stream.shutdown().await;
                return format!("closed; {queued} message(s) queued");
            }
        }
    }
}

/// Writes the message data the session handed out to the spool file (made at the first
/// bytes). Why the data cannot be kept, for the client, on failure.
async fn spool_data(
    store: &Store,
    session: &mut Session,
    spool: &mut Option<(SpoolFile, tokio::fs::File)>,
) -> Result<(), QueueRefusal> {
    let data = session.take_data();
    if data.is_empty() {
        return Ok(());
    }
    if spool.is_none() {
        let store = store.clone();
        let made = tokio::task::spawn_blocking(move || store.spool_create()).await;
        let (guard, file) = match made {
            Ok(made) => made.map_err(spool_refusal)?,
            Err(e) => return Err(QueueRefusal::Unavailable(format!("the spool task failed: {e}"))),
        };
        *spool = Some((guard, tokio::fs::File::from_std(file)));
    }
    let (guard, file) = spool.as_mut().expect("made above");
    file.write_all(&data).await.map_err(|e| spool_refusal(StoreError::from_io(guard.path(), e)))
}

/// The finished message's body: its spool file once all of it is written (an empty message has
/// none).
async fn finish_spool(spool: Option<(SpoolFile, tokio::fs::File)>) -> Result<Body, QueueRefusal> {
    let Some((guard, mut file)) = spool else { return Ok(Body::Bytes(Vec::new())) };
    file.flush().await.map_err(|e| spool_refusal(StoreError::from_io(guard.path(), e)))?;
    drop(file);
    Ok(Body::Spooled(guard))
}

fn spool_refusal(e: StoreError) -> QueueRefusal {
    match e {
        StoreError::DiskFull => QueueRefusal::NoSpace,
        e => {
            error!("cannot write message data to the spool: {e}");
            QueueRefusal::Unavailable("the message cannot be written to disk".into())
        }
    }
}

/// On the implicit-TLS port, a client that speaks plain text or waits for a greeting is set to
/// STARTTLS (or no security): it gets a plain `554` that says so at once, instead of a TLS
/// handshake that never starts. `None` when the client did start TLS.
async fn plain_client_on_tls_port(shared: &Context, tcp: &mut TcpStream, listener: &Listener) -> Option<String> {
    use crate::net::FirstBytes;
    let what = match crate::net::first_bytes(tcp, crate::net::TLS_HELLO_WAIT).await {
        FirstBytes::TlsHello => return None,
        FirstBytes::Closed => return Some("client left before the TLS handshake".into()),
        FirstBytes::Text => "spoke plain text".to_string(),
        FirstBytes::Silent => {
            format!(
                "sent no TLS hello within {} s (it waits for a plain greeting)",
                crate::net::TLS_HELLO_WAIT.as_secs()
            )
        }
    };
    let starttls = match shared.config().listen.smtp.filter(|a| a.port() != 0) {
        Some(addr) => format!(", or to STARTTLS on port {}", addr.port()),
        None => String::new(),
    };
    warn!("client {what} on the implicit-TLS SMTP port {}; set the client to SSL/TLS here{starttls}", listener.addr);
    let reply = format!(
        "554 5.7.0 This port expects TLS from the first byte: set your mail client to SSL/TLS for it{starttls}\r\n"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(reply.as_bytes())).await;
    let _ = tcp.shutdown().await;
    Some(format!("plain text on the implicit-TLS port (the client {what})"))
}

async fn flush(stream: &mut Stream, session: &mut Session) -> std::io::Result<()> {
    if !session.has_output() {
        return Ok(());
    }
    let out = session.take_output();
    match tokio::time::timeout(IDLE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read")),
    }
}

/// An OAuth2 account's login: the local password decides (it never reaches the provider); then
/// the submission server is asked whether the grant still works (XOAUTH2 / OAUTHBEARER, one
/// refresh if it turns the token down), so a revoked grant is told at once. If the server cannot
/// be reached, the login stands and mail is queued.
async fn check_oauth2_login(ctx: &Smtp, login: &str, password: &Secret) -> AuthResult {
    let shared = &ctx.shared;
    let refusal = |e: OAuthError| match e {
        OAuthError::WrongPassword => AuthResult::Refused,
        e if e.refuses_login() => AuthResult::Reauthorize(e.to_string()),
        e => AuthResult::Unavailable(e.to_string()),
    };
    let token = match oauth::sign_in(shared, login, password).await {
        Ok(token) => token,
        Err(e) => return refusal(e),
    };
    let queue_bytes = size_cap(ctx);
    let Some(provider) = shared.config().smtp_provider_for(login) else {
        return AuthResult::Unavailable("no submission server is configured for this account".into());
    };
    let mut client =
        match SmtpClient::connect(&provider, &shared.upstream_tls, shared.config().limits.connect_timeout()).await {
            Ok(client) => client,
            Err(e) => {
                warn!("submission server unreachable ({e}); the local password is right, so mail is queued");
                return AuthResult::Ok(
                    ctx.caps.known(&provider).as_ref().map(|c| Policy::for_provider(Some(c), queue_bytes)),
                );
            }
        };
    ctx.caps.record(&provider, &client.caps);
    let policy = Policy::for_provider(Some(&client.caps), queue_bytes);
    let reply = client.authenticate_oauth2(shared, login, token).await;
    client.quit().await;
    match reply {
        Ok(Ok(r)) if r.code == 235 => AuthResult::Ok(Some(policy)),
        Ok(Ok(r)) if r.is_transient() => AuthResult::Unavailable(format!("the provider said: {r}")),
        Ok(Ok(r)) => AuthResult::Reauthorize(format!(
            "the provider refused coi-proxy's OAuth2 sign-in ({r}); if this persists, run `coi-proxy oauth authorize {login}`"
        )),
        Ok(Err(e)) => refusal(e),
        Err(e) => AuthResult::Unavailable(e.to_string()),
    }
}

/// Checks a login at the account's submission server. If that server cannot be reached, the
/// account's IMAP server decides instead, so mail can still be queued while submission is down.
/// The addresses `login` may send as: itself and its `[[account]] addresses`, or any with
/// `allow_any_sender`.
fn senders(config: &crate::config::Config, login: &str) -> Option<Vec<String>> {
    let account = config.account_for(login);
    if account.is_some_and(|a| a.allow_any_sender) {
        return None;
    }
    let mut list = vec![login.to_string()];
    list.extend(account.map(|a| a.addresses.clone()).unwrap_or_default());
    Some(list)
}

async fn check_login(ctx: &Smtp, login: &str, password: &Secret, peer: SocketAddr) -> AuthResult {
    let shared = &ctx.shared;
    if shared.config().oauth2_for(login).is_some() {
        return check_oauth2_login(ctx, login, password).await;
    }
    let timeout = shared.config().limits.connect_timeout();
    let queue_bytes = size_cap(ctx);
    let Some(provider) = shared.config().smtp_provider_for(login) else {
        return AuthResult::Unavailable("no submission server is configured for this account".into());
    };
    let forward = shared.config().forward_client_address(login);
    let smtp_error = match SmtpClient::connect(&provider, &shared.upstream_tls, timeout).await {
        Ok(mut client) => {
            ctx.caps.record(&provider, &client.caps);
            let policy = Policy::for_provider(Some(&client.caps), queue_bytes);
            let reply = match forward {
                true => client.forward_client_address(peer.ip()).await,
                false => Ok(()),
            };
            let reply = match reply {
                Ok(()) => client.authenticate(login, password).await,
                Err(e) => Err(e),
            };
            client.quit().await;
            match reply {
                Ok(r) if r.code == 235 => return AuthResult::Ok(Some(policy)),
                Ok(r) if r.is_transient() => return AuthResult::Unavailable(format!("the provider said: {r}")),
                Ok(_) => return AuthResult::Refused,
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e.to_string(),
    };
    warn!("submission server unreachable ({smtp_error}); checking the login at the IMAP server instead");
    let Some(imap) = shared.config().provider_for(login) else {
        return AuthResult::Unavailable(smtp_error);
    };
    let mut up = match Upstream::connect(&imap, &shared.upstream_tls, timeout, shared.config().limits.max_line).await {
        Ok(up) => up,
        Err(e) => return AuthResult::Unavailable(format!("{smtp_error}; {e}")),
    };
    if forward && let Err(e) = up.identify_client(peer).await {
        return AuthResult::Unavailable(format!("{smtp_error}; {e}"));
    }
    match up.authenticate(login, password).await {
        Ok(AuthOutcome::Ok(_)) => {
            AuthResult::Ok(ctx.caps.known(&provider).as_ref().map(|c| Policy::for_provider(Some(c), queue_bytes)))
        }
        Ok(AuthOutcome::Rejected(_)) => AuthResult::Refused,
        Err(e) => AuthResult::Unavailable(format!("{smtp_error}; {e}")),
    }
}

/// The largest message to offer (`SIZE`) beside the provider's: one that fits the account's
/// queue and whose work in memory (the chat copy APPENDed whole; with the OpenPGP gateway on,
/// its encryption) fits the account's share of the memory budget. A larger one could never be
/// sent, so it is refused for good with `552`.
fn size_cap(ctx: &Smtp) -> u64 {
    let config = ctx.shared.config();
    let memory = config.limits.max_memory_per_account as u64;
    let memory = match ctx.identity {
        Some(_) => memory / super::gateway::MEMORY_FACTOR,
        None => memory,
    };
    config.queue.max_bytes_per_account.min(memory)
}
