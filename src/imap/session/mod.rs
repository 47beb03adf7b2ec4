//! One client connection, from greeting to logout.
//!
//! Before login the proxy speaks for itself: greeting, CAPABILITY, STARTTLS, NOOP, ID, LOGOUT,
//! and LOGIN / AUTHENTICATE, which pick the provider by login name and log in there with the
//! same credentials. After a successful login the session becomes a [`relay`].

mod lane;
mod own;
pub mod policy;
pub mod quiet;
mod relay;
mod splice;
mod wakes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use self::relay::{QuietInbox, RelayOptions};
use crate::account::{Account, Filter};
use crate::coi::{self, session::CoiSession};
use crate::context::Context;
use crate::imap::conn::{Conn, ReadError};
use crate::imap::upstream::{AuthOutcome, Upstream};
use crate::imap::wire::capability;
use crate::imap::wire::command::{self, Arg, Command, CommandName};
use crate::imap::wire::framing::Framer;
use crate::imap::wire::provider::Both;
use crate::limits::logins::Gate;
use crate::limits::{Refused, SessionPermit};
use crate::net::Stream;
use crate::openpgp::session::ViewSession;
use crate::provider_profile::{IdleMode, MetadataHome};
use crate::secret::Secret;

/// Largest command accepted before login. The largest is an RFC 2971 ID: 30 field/value pairs
/// of up to 30 and 1024 octets, about 32 KB as quoted strings and up to twice that with every
/// octet escaped; Dovecot accepts it (imaptest's `id` group sends 31,807 bytes), so the proxy
/// must too. LOGIN with two literals fits easily.
const PRE_LOGIN_LIMIT: usize = 64 * 1024;
/// Served by the proxy (`policy`), towards the client.
const COMPRESS_CAPABILITY: &str = "COMPRESS=DEFLATE";
/// Failed logins allowed on one connection before it is closed.
const MAX_AUTH_FAILURES: u32 = 3;
/// The answer to a login refused by the proxy itself: Dovecot's words for a wrong password,
/// so that a guesser cannot tell who refused.
const AUTHENTICATION_FAILED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed.\r\n";

/// How a listener's connections begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain, STARTTLS offered.
    Imap,
    /// TLS from the first byte.
    Imaps,
}

/// What a session needs to know about the listener it came from.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub plaintext_auth: bool,
    /// The decrypted views (issue 15), when the OpenPGP gateway holds keys.
    pub views: Option<Arc<crate::openpgp::cache::Views>>,
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// Serves one client connection until it ends.
pub async fn serve(
    shared: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: ListenerInfo,
    admitted: Result<SessionPermit, Refused>,
    shutdown: watch::Receiver<bool>,
) {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span =
        info_span!("session", id, client = %peer, login = tracing::field::Empty, provider = tracing::field::Empty);
    async move {
        debug!(listener = %listener.addr, "connected");
        let started = Instant::now();
        let _ = tcp.set_nodelay(true);
        let refused = admitted.as_ref().err().copied();
        let mut session =
            Session { shared, listener, peer, shutdown, client_id: None, account: None, auth_failures: 0, ids: 0 };
        let outcome = session.run(tcp, refused).await;
        drop(admitted);
        info!(outcome = %outcome, secs = started.elapsed().as_secs(), "session ended");
        crate::limits::memory::session_ended();
    }
    .instrument(span)
    .await
}

struct Session {
    shared: Arc<Context>,
    listener: ListenerInfo,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    /// The client's `ID` name, e.g. `Delta Chat`.
    client_id: Option<String>,
    /// The account, once logged in.
    account: Option<Arc<Account>>,
    auth_failures: u32,
    /// ID commands before login.
    ids: u32,
}

/// ID commands before login that are logged one by one.
const LOGGED_IDS: u32 = 3;

/// What the pre-login phase ended with.
enum PreLogin {
    LoggedIn(Box<(Conn, Upstream)>),
    Ended(String),
}

impl Session {
    /// Serves the connection; a `refused` one only gets a BYE saying why.
    async fn run(&mut self, mut tcp: TcpStream, refused: Option<Refused>) -> String {
        let limits = self.shared.config().limits.clone();
        let stream = match self.listener.kind {
            ListenerKind::Imaps => {
                if let Some(outcome) = self.plain_client_on_tls_port(&mut tcp).await {
                    return outcome;
                }
                // Boxed, like the phases below, so the session task stays small while it waits.
                match tokio::time::timeout(limits.login_timeout(), Box::pin(self.shared.acceptor.accept(tcp))).await {
                    Ok(Ok(tls)) => Stream::ServerTls(Box::new(tls)),
                    Ok(Err(e)) => return format!("TLS handshake failed: {e}"),
                    Err(_) => return "TLS handshake timed out (the client sent its hello, then stopped)".into(),
                }
            }
            ListenerKind::Imap => Stream::Plain(tcp),
        };
        let mut conn = Conn::new(stream, limits.max_line);
        if let Some(refused) = refused {
            let _ = say(&mut conn, format!("* BYE [UNAVAILABLE] {refused}\r\n").as_bytes()).await;
            let _ = conn.stream.shutdown().await;
            return format!("refused: {refused}");
        }
        let pre = tokio::time::timeout(limits.login_timeout(), Box::pin(self.pre_login(&mut conn))).await;
        if self.ids > LOGGED_IDS {
            info!(repeated = self.ids - LOGGED_IDS, "client repeated ID before login (not logged one by one)");
        }
        let (conn, upstream) = match pre {
            Ok(PreLogin::LoggedIn(pair)) => *pair,
            Ok(PreLogin::Ended(why)) => return why,
            Err(_) => {
                let _ = say(&mut conn, b"* BYE Login timed out\r\n").await;
                return "login timed out".into();
            }
        };
        let account = self.account.clone().expect("logged in");
        let profile = upstream.profile();
        // Where the COI entries live: Cyrus advertises METADATA but refuses the COI entries
        // (`NO Permission denied`), so there they are the proxy's, as where METADATA is missing.
        let provider_metadata = profile.metadata == MetadataHome::Provider;
        // The client's ID name: sent before login, or after it (Delta Chat), then seen by the
        // COI interceptor; the read-receipt hook reads it when flags change.
        let client_name = Arc::new(Mutex::new(self.client_id.clone()));
        let seen_changed: Arc<dyn Fn() + Send + Sync> = {
            let account = account.clone();
            // Read receipts for plain clients (src/receipts/).
            let receipts = crate::receipts::SeenHook::new(&self.shared, &account.login, client_name.clone()).await;
            Arc::new(move || {
                account.nudge.notify_one();
                receipts.seen();
            })
        };
        let opts = RelayOptions {
            max_literal: limits.max_literal,
            autologout: limits.autologout(),
            provider_timeout: limits.provider_timeout(),
            extra_capabilities: self.extra_capabilities(upstream.has("METADATA"), upstream.has("IDLE"), &account.login),
            seen_changed: Some(seen_changed.clone()),
            quiet: Some(QuietInbox {
                active: {
                    let account = account.clone();
                    Arc::new(move || account.current().effective_filter() == Filter::Active)
                },
                verdicts: account.verdicts.subscribe(),
                wake: {
                    let account = account.clone();
                    Arc::new(move || account.nudge.notify_one())
                },
            }),
            // Where IDLE is missing or does not push (Courier reports new mail only after 60 s,
            // imap4d not before DONE), the proxy serves IDLE by polling.
            emulate_idle: (profile.idle != IdleMode::Push)
                .then(|| Duration::from_secs(self.shared.config().coi.poll_secs.max(1))),
            // and where NOOP misses mail that came in the second of the last look (imap4d),
            // the polls also count with STATUS
            rescan: !profile.noop_sees_new_mail,
            compress: true,
            memory: Some(self.shared.memory.account(&account.login)),
        };
        let webpush = crate::push::entries::Entries::new(self.shared.clone(), account.clone());
        let views = self.views_for(&account.login).map(|views| {
            let config = self.shared.clone();
            let name = client_name.clone();
            let plain = Arc::new(move || {
                let name = name.lock().expect("client name");
                !config.config().coi.is_chat_client(name.as_deref())
            });
            // The view's own `\Seen` (a non-PEEK FETCH of encrypted mail) tells the same hook.
            ViewSession::new(views, &account.login, plain).with_seen_hook(seen_changed.clone())
        });
        let deltachat = crate::deltachat::entries::Entries::new(self.shared.clone(), account.clone());
        let coi = CoiSession::new(self.shared.clone(), account, provider_metadata, client_name, webpush, deltachat);
        let provider_wire = upstream.compressed.clone();
        // Only the connection goes on: the provider's capabilities (~2 KB) are not kept for the
        // session's life.
        let upstream = {
            let up = upstream;
            up.conn
        };
        let (end, traffic) = match views {
            Some(view) => {
                let mut both = Both(coi, view);
                Box::pin(relay::run(conn, upstream, opts, &mut both, self.shutdown.clone())).await
            }
            None => {
                let mut coi = coi;
                Box::pin(relay::run(conn, upstream, opts, &mut coi, self.shutdown.clone())).await
            }
        };
        crate::metrics::traffic(traffic.from_client, traffic.from_provider);
        let mut line =
            format!("{end}; {} bytes from client, {} bytes from provider", traffic.from_client, traffic.from_provider);
        if let Some(wire) = &traffic.client_wire {
            let (wire_in, plain_in, wire_out, plain_out) = wire.get();
            line.push_str(&format!(
                "; client compressed: {wire_in} bytes in for {plain_in}, {wire_out} bytes out for {plain_out}"
            ));
        }
        if let Some(wire) = &provider_wire {
            let (wire_in, plain_in, wire_out, plain_out) = wire.get();
            line.push_str(&format!(
                "; provider compressed: {wire_in} bytes in for {plain_in}, {wire_out} bytes out for {plain_out}"
            ));
        }
        line
    }

    /// What the proxy adds to the provider's capabilities after login: what COI, WebPush and
    /// Delta Chat need (`XDELTAPUSH` while push is on, `METADATA`), and COMPRESS=DEFLATE, which
    /// the proxy serves itself whatever the provider offers.
    /// The views for `login`'s plain sessions, when it has keys.
    fn views_for(&self, login: &str) -> Option<Arc<crate::openpgp::cache::Views>> {
        self.listener.views.clone().filter(|v| v.enabled(login))
    }

    /// What the proxy adds to (and, with views, takes from) the provider's capabilities.
    fn extra_capabilities(&self, provider_metadata: bool, idle: bool, login: &str) -> Vec<&'static str> {
        let mut wings = vec![crate::push::CAPABILITY];
        wings.extend(crate::deltachat::capability(&self.shared.config()));
        wings.push(COMPRESS_CAPABILITY);
        let mut extra = coi::session::capabilities(provider_metadata, idle, &wings);
        if self.views_for(login).is_some() {
            extra.extend_from_slice(crate::openpgp::session::DROPPED_CAPABILITIES);
        }
        extra
    }

    /// On the implicit-TLS port, a client that speaks plain text or waits for a greeting is set
    /// to STARTTLS (or no security): it gets a plain `* BYE` that says so at once, instead of a
    /// TLS handshake that never starts. `None` when the client did start TLS.
    async fn plain_client_on_tls_port(&self, tcp: &mut TcpStream) -> Option<String> {
        use crate::net::FirstBytes;
        let what = match crate::net::first_bytes(tcp, crate::net::TLS_HELLO_WAIT).await {
            FirstBytes::TlsHello => return None,
            FirstBytes::Closed => return Some("client left before the TLS handshake".into()),
            FirstBytes::Text => "spoke plain text".to_string(),
            FirstBytes::Silent => format!(
                "sent no TLS hello within {} s (it waits for a plain greeting)",
                crate::net::TLS_HELLO_WAIT.as_secs()
            ),
        };
        let starttls = match self.shared.config().listen.imap.filter(|a| a.port() != 0) {
            Some(addr) => format!(", or to STARTTLS on port {}", addr.port()),
            None => String::new(),
        };
        warn!(
            "client {what} on the implicit-TLS IMAP port {}; set the client to SSL/TLS here{starttls}",
            self.listener.addr
        );
        let bye = format!(
            "* BYE This port expects TLS from the first byte: set your mail client to SSL/TLS for it{starttls}\r\n"
        );
        crate::imap::wire::trace::server_message(bye.as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(bye.as_bytes())).await;
        let _ = tcp.shutdown().await;
        Some(format!("plain text on the implicit-TLS port (the client {what})"))
    }

    fn tls_active(conn: &Conn) -> bool {
        conn.stream.is_tls()
    }

    fn greeting(&self, conn: &Conn) -> Vec<u8> {
        let caps = capability::pre_login(Self::tls_active(conn), self.listener.plaintext_auth);
        format!("* OK [CAPABILITY {caps}] coi-proxy ready.\r\n").into_bytes()
    }

    async fn pre_login(&mut self, conn: &mut Conn) -> PreLogin {
        let greeting = self.greeting(conn);
        if say(conn, &greeting).await.is_err() {
            return PreLogin::Ended("client left before the greeting".into());
        }
        if self.listener.kind == ListenerKind::Imap {
            let first = tokio::select! {
                read = conn.fill() => read,
                _ = self.shutdown.changed() => {
                    let _ = say(conn, b"* BYE coi-proxy is shutting down\r\n").await;
                    return PreLogin::Ended("shutdown".into());
                }
            };
            match first {
                Ok(0) | Err(_) => return PreLogin::Ended("client left without a command".into()),
                Ok(_) if crate::net::is_tls_hello(&conn.buf) => {
                    // A TLS ClientHello: the client is set to SSL/TLS on the STARTTLS port.
                    warn!(
                        "client started TLS on the plain IMAP port {}; set the client to STARTTLS here, or to SSL/TLS on the imaps port",
                        self.listener.addr
                    );
                    return PreLogin::Ended("TLS spoken on the plain port".into());
                }
                Ok(_) => {}
            }
        }
        loop {
            if *self.shutdown.borrow() {
                let _ = say(conn, b"* BYE coi-proxy is shutting down\r\n").await;
                return PreLogin::Ended("shutdown".into());
            }
            let read = tokio::select! {
                read = conn.read_message(PRE_LOGIN_LIMIT, Some(b"+ Ready for literal data\r\n")) => read,
                _ = self.shutdown.changed() => continue,
            };
            let msg = match read {
                Ok(msg) => msg,
                Err(ReadError::TooLong { tag, .. }) => {
                    let tag = if tag.is_empty() { "*".to_string() } else { String::from_utf8_lossy(&tag).into_owned() };
                    if say(conn, format!("{tag} BAD Command too long\r\n").as_bytes()).await.is_err() {
                        return PreLogin::Ended("client left".into());
                    }
                    continue;
                }
                Err(ReadError::Eof) => return PreLogin::Ended("client closed the connection before login".into()),
                Err(e) => return PreLogin::Ended(format!("client connection failed before login: {e}")),
            };
            // The raw command may hold a password: wiped when dropped.
            let msg = Secret::new(msg);
            crate::imap::wire::trace::client_message(msg.expose());
            let cmd = match command::parse(msg.expose()) {
                Ok(cmd) => cmd,
                Err(e) => {
                    let tag = command::head(msg.expose()).map(|(t, _)| String::from_utf8_lossy(t).into_owned());
                    let reply = format!("{} BAD {e}\r\n", tag.as_deref().unwrap_or("*"));
                    if say(conn, reply.as_bytes()).await.is_err() {
                        return PreLogin::Ended("client left".into());
                    }
                    continue;
                }
            };
            debug!(command = %cmd.name, "pre-login command");
            match self.handle(conn, cmd).await {
                Ok(None) => {}
                Ok(Some(done)) => return done,
                Err(e) => return PreLogin::Ended(format!("client connection failed before login: {e}")),
            }
        }
    }

    /// Handles one pre-login command; `Some` ends the pre-login phase.
    async fn handle(&mut self, conn: &mut Conn, cmd: Command) -> std::io::Result<Option<PreLogin>> {
        let tag = cmd.tag.as_str();
        let kind = if cmd.uid { CommandName::Other } else { cmd.kind };
        match kind {
            CommandName::Capability => {
                let caps = capability::pre_login(Self::tls_active(conn), self.listener.plaintext_auth);
                say(conn, format!("* CAPABILITY {caps}\r\n{tag} OK Capability completed.\r\n").as_bytes()).await?;
            }
            CommandName::Noop => say(conn, format!("{tag} OK NOOP completed.\r\n").as_bytes()).await?,
            CommandName::Id => {
                self.client_id = command::client_name(&cmd.args);
                // A client may repeat ID as often as it likes before login: a few are logged,
                // the rest counted (said once, when the pre-login phase ends).
                self.ids += 1;
                if let Some(name) = &self.client_id
                    && self.ids <= LOGGED_IDS
                {
                    info!(client_name = %crate::logging::peer_text(name), "client identified itself");
                }
                let version = env!("CARGO_PKG_VERSION");
                say(
                    conn,
                    format!("* ID (\"name\" \"coi-proxy\" \"version\" \"{version}\")\r\n{tag} OK ID completed.\r\n")
                        .as_bytes(),
                )
                .await?;
            }
            CommandName::Logout => {
                say(conn, format!("* BYE Logging out\r\n{tag} OK Logout completed.\r\n").as_bytes()).await?;
                return Ok(Some(PreLogin::Ended("logged out before login".into())));
            }
            CommandName::Starttls => return self.starttls(conn, tag).await,
            CommandName::Login => {
                let (Some(user), Some(pass), 2) =
                    (cmd.args.first().and_then(Arg::astring), cmd.args.get(1).and_then(Arg::astring), cmd.args.len())
                else {
                    say(conn, format!("{tag} BAD LOGIN expects a user name and a password\r\n").as_bytes()).await?;
                    return Ok(None);
                };
                let user = String::from_utf8_lossy(user).into_owned();
                let pass = Secret::new(pass.to_vec());
                drop(cmd.args);
                return self.login(conn, &cmd.tag, user, pass).await;
            }
            CommandName::Authenticate => return self.authenticate(conn, cmd).await,
            _ => {
                let reply = if cmd.uid || cmd.kind.authenticated_only() {
                    format!("{tag} BAD Log in first: {} is valid only after LOGIN\r\n", cmd.name)
                } else {
                    format!("{tag} BAD Unknown command\r\n")
                };
                say(conn, reply.as_bytes()).await?;
            }
        }
        Ok(None)
    }

    async fn starttls(&mut self, conn: &mut Conn, tag: &str) -> std::io::Result<Option<PreLogin>> {
        if Self::tls_active(conn) {
            say(conn, format!("{tag} BAD TLS is already active\r\n").as_bytes()).await?;
            return Ok(None);
        }
        say(conn, format!("{tag} OK Begin TLS negotiation now.\r\n").as_bytes()).await?;
        if !conn.buf.is_empty() {
            // Anything pipelined after STARTTLS arrived in plaintext and could be an injection.
            return Ok(Some(PreLogin::Ended("client sent data after STARTTLS before the TLS handshake".into())));
        }
        let tcp = conn.stream.take_plain().expect("plain before STARTTLS");
        match self.shared.acceptor.accept(tcp).await {
            Ok(tls) => {
                conn.stream = Stream::ServerTls(Box::new(tls));
                conn.framer.reset();
                debug!("STARTTLS done");
                Ok(None)
            }
            Err(e) => Ok(Some(PreLogin::Ended(format!("STARTTLS handshake failed: {e}")))),
        }
    }

    async fn authenticate(&mut self, conn: &mut Conn, cmd: Command) -> std::io::Result<Option<PreLogin>> {
        let tag = cmd.tag.clone();
        let mechanism = cmd.args.first().and_then(Arg::astring).map(|m| m.to_ascii_uppercase());
        let initial = cmd.args.get(1).and_then(Arg::astring).map(|ir| Secret::new(ir.to_vec()));
        let credentials = match mechanism.as_deref() {
            Some(b"PLAIN") => {
                let Some(payload) = self.sasl_step(conn, &tag, initial, "").await? else { return Ok(None) };
                match parse_plain(payload.expose()) {
                    Some(creds) => creds,
                    None => {
                        say(conn, format!("{tag} BAD Malformed AUTHENTICATE PLAIN data\r\n").as_bytes()).await?;
                        return Ok(None);
                    }
                }
            }
            Some(b"LOGIN") => {
                // "Username:" and "Password:", base64, as every client of this mechanism expects.
                let Some(user) = self.sasl_step(conn, &tag, initial, "VXNlcm5hbWU6").await? else { return Ok(None) };
                let Some(pass) = self.sasl_step(conn, &tag, None, "UGFzc3dvcmQ6").await? else { return Ok(None) };
                (String::from_utf8_lossy(user.expose()).into_owned(), pass)
            }
            _ => {
                say(
                    conn,
                    format!("{tag} NO [CANNOT] Unsupported authentication mechanism; use PLAIN or LOGIN\r\n")
                        .as_bytes(),
                )
                .await?;
                return Ok(None);
            }
        };
        let (user, pass) = credentials;
        self.login(conn, &tag, user, pass).await
    }

    /// One SASL exchange: the initial response if the client sent one, else a `+` challenge and
    /// the client's base64 line. `None` means the exchange was answered already (error or abort).
    async fn sasl_step(
        &mut self,
        conn: &mut Conn,
        tag: &str,
        initial: Option<Secret>,
        challenge: &str,
    ) -> std::io::Result<Option<Secret>> {
        let encoded = match initial {
            Some(ir) => ir,
            None => {
                say(conn, format!("+ {challenge}\r\n").as_bytes()).await?;
                crate::imap::wire::trace::client_sasl();
                match conn.read_message(PRE_LOGIN_LIMIT, None).await {
                    Ok(line) => Secret::new(line),
                    Err(ReadError::TooLong { .. }) => {
                        say(conn, format!("{tag} BAD Authentication data too long\r\n").as_bytes()).await?;
                        return Ok(None);
                    }
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        };
        let trimmed = encoded.expose().trim_ascii_end();
        if trimmed == b"*" {
            say(conn, format!("{tag} BAD Authentication aborted\r\n").as_bytes()).await?;
            return Ok(None);
        }
        if trimmed == b"=" {
            return Ok(Some(Secret::default()));
        }
        match base64::engine::general_purpose::STANDARD.decode(trimmed) {
            Ok(decoded) => Ok(Some(Secret::new(decoded))),
            Err(_) => {
                say(conn, format!("{tag} BAD Invalid base64 in authentication data\r\n").as_bytes()).await?;
                Ok(None)
            }
        }
    }

    /// Logs in at the provider chosen by `user`, answering the client with the provider's verdict.
    async fn login(
        &mut self,
        conn: &mut Conn,
        tag: &str,
        user: String,
        pass: Secret,
    ) -> std::io::Result<Option<PreLogin>> {
        if !Self::tls_active(conn) && !self.listener.plaintext_auth {
            let no = format!(
                "{tag} NO [PRIVACYREQUIRED] Plaintext login is disabled on this port; use STARTTLS first, or the implicit-TLS port\r\n"
            );
            say(conn, no.as_bytes()).await?;
            return Ok(None);
        }
        let span = tracing::Span::current();
        span.record("login", crate::logging::peer_text(&user).as_str());
        let Some(provider) = self.shared.config().provider_for(&user) else {
            warn!("no provider configured for this login");
            say(conn, format!("{tag} NO [UNAVAILABLE] No provider is configured for this login\r\n").as_bytes())
                .await?;
            return Ok(None);
        };
        span.record("provider", provider.imap.to_string().as_str());
        let config = self.shared.config();
        let key = config.account_key(&user);
        let base = config.limits.auth_failure_delay(&self.listener.addr);
        let gate = self.shared.logins.check(self.peer.ip(), &key, pass.expose(), Instant::now());
        if gate != Gate::Ask {
            // Never asked: the provider would count it against the proxy's address.
            let delay = self.shared.logins.refusal_delay(self.peer.ip(), base);
            info!(why = ?gate, delay_ms = delay.as_millis() as u64, "login refused by the proxy (back-off after failed logins)");
            return self.refuse_login(conn, tag, delay, AUTHENTICATION_FAILED.as_bytes()).await;
        }
        let limits = &config.limits;
        let mut upstream =
            match Upstream::connect(&provider, &self.shared.upstream_tls, limits.connect_timeout(), limits.max_line)
                .await
            {
                Ok(up) => up,
                Err(e) => {
                    warn!(cause = %e, "provider unavailable");
                    crate::metrics::provider_connect_failed(e.cause());
                    say(conn, format!("{tag} NO [UNAVAILABLE] {e}\r\n").as_bytes()).await?;
                    return Ok(None);
                }
            };
        let forward = config.forward_client_address(&user);
        let peer = self.peer;
        let login = async {
            if forward {
                upstream.identify_client(peer).await?;
            }
            upstream.log_in(&self.shared, &user, &pass).await
        };
        let outcome = match tokio::time::timeout(limits.connect_timeout(), login).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                warn!(cause = %e, "provider failed during login");
                say(conn, format!("{tag} NO [UNAVAILABLE] {e}\r\n").as_bytes()).await?;
                return Ok(None);
            }
            Err(_) => {
                warn!("provider did not answer the login in time");
                say(
                    conn,
                    format!("{tag} NO [UNAVAILABLE] timed out waiting for {} to log in\r\n", upstream.server)
                        .as_bytes(),
                )
                .await?;
                return Ok(None);
            }
        };
        match outcome {
            AuthOutcome::Ok(status) => {
                if let Err(e) = upstream.compress().await {
                    warn!(cause = %e, "provider failed while turning on compression");
                    say(conn, format!("{tag} NO [UNAVAILABLE] {e}\r\n").as_bytes()).await?;
                    return Ok(None);
                }
                self.shared.logins.succeeded(&key, pass.expose(), Instant::now());
                self.shared.credentials.remember(&key, &pass);
                self.shared.store.claim_legacy_state(&key).await;
                let provider_metadata = upstream.profile().metadata == MetadataHome::Provider;
                // The account's state is keyed by the login as the provider knows it.
                let account = self.shared.accounts.account(&key);
                if let Err(e) = coi::load_config(&mut upstream, provider_metadata, &self.shared.store, &account).await {
                    warn!("cannot read the COI configuration: {e}");
                }
                self.shared.workers.want(&account.login);
                self.account = Some(account);
                let extra = self.extra_capabilities(upstream.has("METADATA"), upstream.has("IDLE"), &user);
                let caps = capability::post_login(&upstream.capabilities, &extra).join(" ");
                let text = status_text(&status);
                say(conn, format!("{tag} OK [CAPABILITY {caps}] {text}\r\n").as_bytes()).await?;
                info!("logged in");
                if !upstream.conn.buf.is_empty() {
                    debug!(bytes = upstream.conn.buf.len(), "provider sent more after login; relaying it");
                }
                Ok(Some(PreLogin::LoggedIn(Box::new((
                    // The placeholder lives as long as the session: no buffer.
                    std::mem::replace(
                        conn,
                        Conn { stream: Stream::Upgrading, buf: BytesMut::new(), framer: Framer::new(0) },
                    ),
                    upstream,
                )))))
            }
            AuthOutcome::Rejected(status) => {
                let delay = self.shared.logins.failed(self.peer.ip(), &key, pass.expose(), base, Instant::now());
                info!(
                    failures = self.auth_failures + 1,
                    delay_ms = delay.as_millis() as u64,
                    "login rejected by the provider"
                );
                self.refuse_login(conn, tag, delay, &status).await
            }
        }
    }

    /// Answers a failed login after `delay` (slowing down password guessing) with `status`
    /// (after the tag); the connection ends after [`MAX_AUTH_FAILURES`].
    async fn refuse_login(
        &mut self,
        conn: &mut Conn,
        tag: &str,
        delay: Duration,
        status: &[u8],
    ) -> std::io::Result<Option<PreLogin>> {
        self.auth_failures += 1;
        tokio::time::sleep(delay).await;
        say(conn, &[tag.as_bytes(), b" ", status].concat()).await?;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            say(conn, b"* BYE Too many failed logins\r\n").await?;
            return Ok(Some(PreLogin::Ended("too many failed logins".into())));
        }
        Ok(None)
    }
}

/// Writes the proxy's own words to the client before login, traced (`--trace-protocol`) like
/// the client's, so that the trace shows both directions.
async fn say(conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    crate::imap::wire::trace::server_message(bytes);
    conn.write(bytes).await
}

/// The human text of a tagged `OK` status (after any response code), without the line end.
fn status_text(status: &[u8]) -> String {
    let s = String::from_utf8_lossy(status);
    let s = s.trim_end();
    let s = s.strip_prefix("OK").unwrap_or(s).trim_start();
    let s = if s.starts_with('[') { s.split_once(']').map_or("", |(_, t)| t.trim_start()) } else { s };
    if s.is_empty() { "Logged in".into() } else { s.to_string() }
}

/// `authzid NUL authcid NUL password`; a different authzid (acting as another user) is refused.
fn parse_plain(payload: &[u8]) -> Option<(String, Secret)> {
    let mut parts = payload.splitn(3, |&b| b == 0);
    let authz = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if user.is_empty() || (!authz.is_empty() && authz != user) {
        return None;
    }
    Some((String::from_utf8(user.to_vec()).ok()?, Secret::new(pass.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_f: F) -> usize
    where
        F: FnOnce(
            Arc<Context>,
            TcpStream,
            SocketAddr,
            ListenerInfo,
            Result<SessionPermit, Refused>,
            watch::Receiver<bool>,
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connection is one spawned task of this size, idle or not: the pre-login phase and
    /// the relay live in boxes of their own, so an idle session does not carry both side by side.
    #[test]
    fn the_session_task_is_small() {
        let size = future_size(serve);
        eprintln!("session task: {size} bytes");
        assert!(size <= 2048, "the session task is {size} bytes");
        fn relay_size<'a, F, Fut>(_f: F) -> usize
        where
            F: FnOnce(
                Conn,
                Conn,
                RelayOptions,
                &'a mut CoiSession<crate::push::entries::Entries>,
                watch::Receiver<bool>,
            ) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let relay = relay_size(relay::run::<CoiSession<crate::push::entries::Entries>>);
        eprintln!("relay: {relay} bytes");
        assert!(relay <= 4096, "the relay's state is {relay} bytes");
    }

    #[test]
    fn plain_payloads() {
        let (u, p) = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!((u.as_str(), p.expose()), ("alice", &b"secret"[..]));
        assert!(parse_plain(b"alice\0alice\0secret").is_some());
        assert!(parse_plain(b"bob\0alice\0secret").is_none());
        assert!(parse_plain(b"\0alice").is_none());
        assert!(parse_plain(b"\0\0secret").is_none());
    }

    #[test]
    fn status_texts() {
        assert_eq!(status_text(b"OK [CAPABILITY IMAP4rev1] Logged in\r\n"), "Logged in");
        assert_eq!(status_text(b"OK Welcome\r\n"), "Welcome");
        assert_eq!(status_text(b"OK\r\n"), "Logged in");
    }

    #[test]
    fn id_names() {
        let cmd = command::parse(b"a ID (\"name\" \"Delta Chat\" \"version\" \"2.0\")\r\n").unwrap();
        assert_eq!(command::client_name(&cmd.args).as_deref(), Some("Delta Chat"));
        let cmd = command::parse(b"a ID NIL\r\n").unwrap();
        assert_eq!(command::client_name(&cmd.args), None);
    }
}
