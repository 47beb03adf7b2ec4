//! Connecting and logging in to a provider: TCP, TLS (implicit or STARTTLS), greeting,
//! capabilities, authentication; shared by the sessions, the worker, the SMTP side and `check`.
//! Every failure becomes an [`UpstreamError`] whose text is fit to show the user in
//! `NO [UNAVAILABLE] <reason>`: it names the server and the cause, never a secret. The proxy's
//! own connections for an account ([`Upstream::open`]) carry the wings' commands
//! ([`ProviderCommands`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;

use crate::account::{Credential, CredentialError};
use crate::config::{Provider, Security, ServerUrl};
use crate::context::Context;
use crate::deflate::Counters;
use crate::imap::conn::{Conn, ReadError};
use crate::imap::wire::capability;
use crate::imap::wire::command;
use crate::imap::wire::provider::{ProviderCommands, ProviderError, Reply};
use crate::net::{NetError, Phase, Stream, TlsProblem, tcp_connect, tls_handshake};
use crate::oauth::sasl::{Challenge, Mechanism};
use crate::oauth::{self, OAuthError};
use crate::provider_profile::{Facts, ProviderProfile};
use crate::secret::Secret;
use crate::store::StoreError;
use crate::tls::UpstreamTls;

/// Largest response the proxy reads whole from a provider while logging in.
const MAX_RESPONSE: usize = 256 * 1024;

/// Why a connection to a provider's IMAP server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{server} sent no usable greeting: {detail}")]
    Greeting { server: String, detail: String },
    #[error("{server} refused STARTTLS: {detail}")]
    StartTls { server: String, detail: String },
    #[error("{server} sent a malformed response")]
    Protocol { server: String },
    #[error("{server} does not allow login over this connection (LOGINDISABLED)")]
    LoginDisabled { server: String },
    #[error("{server} offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER for an OAuth2 sign-in")]
    NoBearerAuth { server: String },
    /// The OAuth2 sign-in could not be done now (the identity provider, the store).
    #[error(transparent)]
    OAuth(#[from] OAuthError),
}

impl UpstreamError {
    /// The cause, as `/metrics` labels it (one of `metrics::CAUSES`).
    pub fn cause(&self) -> &'static str {
        match self {
            UpstreamError::Net(e) => e.cause(),
            UpstreamError::Greeting { .. } => "greeting",
            UpstreamError::StartTls { .. } => "starttls",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::LoginDisabled { .. } => "login_disabled",
            UpstreamError::NoBearerAuth { .. } => "login_disabled",
            UpstreamError::OAuth(_) => "oauth",
        }
    }

    /// The provider closed the connection.
    pub fn closed(server: &ServerUrl) -> UpstreamError {
        NetError::Closed { server: server.to_string() }.into()
    }
}

/// Why work the proxy does on its own provider connection for an account (the account worker,
/// failure reports, chat copies, receipts) stopped; it is logged and tried again later.
#[derive(Debug, thiserror::Error)]
pub enum OwnWorkError {
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("no IMAP provider is configured for {0}")]
    NoProvider(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the provider refused the login: {0}")]
    LoginRefused(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("the provider refused {command}: {status}")]
    Refused { command: &'static str, status: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("moving chat messages: {0}")]
    Move(#[from] crate::provider_profile::move_plan::MoveError),
    /// `[cluster]`: etcd unreachable, or the account went to another instance.
    #[error(transparent)]
    Cluster(#[from] crate::context::ClusterError),
}

impl From<UpstreamError> for ProviderError {
    fn from(e: UpstreamError) -> ProviderError {
        ProviderError::Connection(Box::new(e))
    }
}

/// A connection to a provider, greeted and possibly logged in.
pub struct Upstream {
    pub conn: Conn,
    pub capabilities: Vec<String>,
    pub server: ServerUrl,
    /// Bytes on the wire once COMPRESS=DEFLATE is on ([`Upstream::compress`]).
    pub compressed: Option<Arc<Counters>>,
    /// The greeting line: part of what the provider profile is decided from.
    pub greeting: String,
    next_tag: u64,
}

/// How a login attempt at the provider ended.
pub enum AuthOutcome {
    /// The provider's tagged `OK` line, tag removed (`OK [CAPABILITY ...] Logged in\r\n`).
    Ok(Vec<u8>),
    /// The provider's tagged `NO`/`BAD` line, tag removed.
    Rejected(Vec<u8>),
}

/// The tag space of the proxy's own commands; clients never see these tags.
pub const OWN_TAG_PREFIX: &str = "coip";

static SESSION_TAGS: AtomicU64 = AtomicU64::new(1);

impl Upstream {
    /// Connects to `provider` and reads its greeting, all within `timeout`.
    pub async fn connect(
        provider: &Provider,
        tls: &UpstreamTls,
        timeout: Duration,
        max_line: usize,
    ) -> Result<Upstream, UpstreamError> {
        let name = provider.imap.to_string();
        // The step reached when the time is up, so that the error says which one took too long.
        let mut phase = Phase::Connecting;
        match tokio::time::timeout(timeout, Self::connect_inner(provider, tls, max_line, &mut phase)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout { phase, server: name }.into()),
        }
    }

    async fn connect_inner(
        provider: &Provider,
        tls: &UpstreamTls,
        max_line: usize,
        phase: &mut Phase,
    ) -> Result<Upstream, UpstreamError> {
        let server = provider.imap.clone();
        let name = server.to_string();
        let tcp = tcp_connect(&server).await?;
        let _ = tcp.set_nodelay(true);
        let tls_config = || {
            tls.config(provider.ca_file.as_deref()).map_err(|e| {
                UpstreamError::from(NetError::Tls {
                    server: name.clone(),
                    detail: e.to_string(),
                    problem: TlsProblem::Setup,
                })
            })
        };
        let stream = match server.security {
            Security::Implicit => {
                *phase = Phase::TlsHandshake;
                tls_handshake(tcp, &server, tls_config()?).await?
            }
            _ => Stream::Plain(tcp),
        };
        *phase = Phase::Greeting;
        let mut up = Upstream {
            conn: Conn::new(stream, max_line),
            capabilities: Vec::new(),
            server: server.clone(),
            compressed: None,
            greeting: String::new(),
            next_tag: SESSION_TAGS.fetch_add(1, Ordering::Relaxed) * 1000,
        };
        let greeting = up.read_response().await.map_err(|e| match e {
            UpstreamError::Net(NetError::Closed { .. }) => {
                UpstreamError::Greeting { server: name.clone(), detail: "closed before greeting".into() }
            }
            e => e,
        })?;
        if !greeting.starts_with(b"* OK") && !greeting.starts_with(b"* PREAUTH") {
            let detail = String::from_utf8_lossy(&greeting[..greeting.len().min(200)]).trim_end().to_string();
            return Err(UpstreamError::Greeting { server: name, detail });
        }
        up.greeting = String::from_utf8_lossy(&greeting[..greeting.len().min(300)]).trim_end().to_owned();
        up.capabilities =
            capability::find_in_response(&greeting).map(|r| capability::parse_list(&greeting[r])).unwrap_or_default();
        if server.security == Security::StartTls {
            *phase = Phase::StartTls;
            let tag = up.tag();
            up.send(format!("{tag} STARTTLS\r\n").as_bytes()).await?;
            let status = up.read_tagged(&tag).await?;
            if !status.starts_with(b"OK") {
                let detail = String::from_utf8_lossy(&status).trim_end().to_string();
                return Err(UpstreamError::StartTls { server: name, detail });
            }
            if !up.conn.buf.is_empty() {
                // Bytes after the OK were sent in plaintext and could be injected.
                return Err(UpstreamError::StartTls {
                    server: name,
                    detail: "data after the STARTTLS response".into(),
                });
            }
            let tcp = up.conn.stream.take_plain().expect("plain before STARTTLS");
            up.conn.stream = tls_handshake(tcp, &server, tls_config()?).await?;
            up.capabilities.clear();
        }
        if up.capabilities.is_empty() {
            *phase = Phase::Capabilities;
            up.refresh_capabilities().await?;
        }
        Ok(up)
    }

    /// Connects to `login`'s provider and signs in with `credential`: the proxy's own connection
    /// for work on the account.
    pub async fn open(ctx: &Context, login: &str, credential: &Credential) -> Result<Upstream, OwnWorkError> {
        let config = ctx.config();
        let provider = config.provider_for(login).ok_or_else(|| OwnWorkError::NoProvider(login.to_string()))?;
        let limits = &config.limits;
        let mut up = Upstream::connect(&provider, &ctx.upstream_tls, limits.connect_timeout(), limits.max_line).await?;
        let outcome = match credential {
            Credential::Password(password) => up.authenticate(login, password).await?,
            Credential::OAuth2 => up.sign_in_oauth2(ctx, login, None).await?,
        };
        match outcome {
            AuthOutcome::Ok(_) => {
                up.compress().await?;
                Ok(up)
            }
            AuthOutcome::Rejected(status) => {
                Err(OwnWorkError::LoginRefused(String::from_utf8_lossy(&status).trim_end().to_string()))
            }
        }
    }

    /// What the proxy must do differently on this provider, from its host, greeting and
    /// current capabilities (call after login: the post-login list counts).
    pub fn profile(&self) -> ProviderProfile {
        ProviderProfile::decide(&Facts {
            host: &self.server.host,
            greeting: &self.greeting,
            capabilities: &self.capabilities,
            ..Facts::default()
        })
    }

    /// A fresh tag in the proxy's own tag space.
    pub fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("{OWN_TAG_PREFIX}{}", self.next_tag)
    }

    pub fn has(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// Logs a client in with what it gave: with OAuth2 where `[account.oauth2]` applies (the
    /// local password is checked by the proxy and never sent on), else with the same
    /// credentials.
    pub async fn log_in(
        &mut self,
        ctx: &Context,
        login: &str,
        password: &Secret,
    ) -> Result<AuthOutcome, UpstreamError> {
        if ctx.config().oauth2_for(login).is_some() {
            return self.sign_in_oauth2(ctx, login, Some(password)).await;
        }
        self.authenticate(login, password).await
    }

    /// Signs in with an access token of `login`'s grant (for a client, after checking its
    /// local `password`). A token the provider turns down is refreshed once and tried again; a
    /// refusal the client must act on (wrong password, no or a revoked grant) comes back as a
    /// `NO [AUTHENTICATIONFAILED]` status that says what to do.
    async fn sign_in_oauth2(
        &mut self,
        ctx: &Context,
        login: &str,
        password: Option<&Secret>,
    ) -> Result<AuthOutcome, UpstreamError> {
        let token = match password {
            Some(password) => oauth::sign_in(ctx, login, password).await,
            None => oauth::access_token(ctx, login, None).await,
        };
        let token = match token {
            Ok(token) => token,
            Err(e) => return oauth_refusal(e),
        };
        match self.authenticate_bearer(login, &token).await? {
            AuthOutcome::Ok(status) => Ok(AuthOutcome::Ok(status)),
            AuthOutcome::Rejected(_) => {
                tracing::info!(login, "the provider turned the access token down; refreshing it once");
                match oauth::access_token(ctx, login, Some(&token)).await {
                    Ok(fresh) => self.authenticate_bearer(login, &fresh).await,
                    Err(e) => oauth_refusal(e),
                }
            }
        }
    }

    /// AUTHENTICATE with a bearer token: XOAUTH2 or OAUTHBEARER, whichever the provider offers,
    /// as an initial response where SASL-IR allows. A refusal's challenge is answered as the
    /// mechanism wants before the provider's `NO`.
    pub async fn authenticate_bearer(&mut self, login: &str, token: &Secret) -> Result<AuthOutcome, UpstreamError> {
        let offered = self
            .capabilities
            .iter()
            .filter_map(|c| c.get(..5).filter(|p| p.eq_ignore_ascii_case("AUTH=")).map(|_| &c[5..]));
        let mechanism = Mechanism::choose(offered)
            .ok_or_else(|| UpstreamError::NoBearerAuth { server: self.server.to_string() })?;
        let response = mechanism.initial_response_b64(login, token, &self.server.host, self.server.port);
        let tag = self.tag();
        let mut line = format!("{tag} AUTHENTICATE {}", mechanism.name()).into_bytes();
        let mut pending = Some(response);
        if self.has("SASL-IR") {
            line.push(b' ');
            line.extend_from_slice(pending.take().expect("not sent yet").expose());
        }
        line.extend_from_slice(b"\r\n");
        let line = Secret::new(line);
        self.send(line.expose()).await?;
        let prefix = format!("{tag} ");
        loop {
            let reply = self.read_response().await?;
            if let Some(status) = reply.strip_prefix(prefix.as_bytes()) {
                return self.logged_in(status.to_vec()).await;
            }
            if let Some(challenge) = reply.strip_prefix(b"+") {
                let answer = match pending.take() {
                    Some(response) => Secret::new([response.expose(), b"\r\n"].concat()),
                    None => {
                        // The refusal's challenge (a JSON error); answering it ends the exchange.
                        let why = Challenge::parse(challenge).map_or_else(|| "no details".into(), |c| c.describe());
                        tracing::debug!(mechanism = mechanism.name(), "the provider refused the token ({why})");
                        Secret::new(format!("{}\r\n", mechanism.abort_response_b64()).into_bytes())
                    }
                };
                self.send(answer.expose()).await?;
            } else if reply.starts_with(b"* BYE") {
                return Err(UpstreamError::closed(&self.server));
            }
        }
    }

    /// Tells the provider, before the login, which address the client connects from (RFC 2971
    /// `ID` with Dovecot's `x-originating-ip`): a provider that trusts the proxy then counts a
    /// failed login against the client's address, not the proxy's. Nothing is sent to a
    /// provider without `ID`; its answer does not matter (others ignore the fields).
    pub async fn identify_client(&mut self, client: std::net::SocketAddr) -> Result<(), UpstreamError> {
        if !self.has("ID") {
            return Ok(());
        }
        let tag = self.tag();
        let cmd = format!(
            "{tag} ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\")\r\n",
            client.ip().to_canonical(),
            client.port()
        );
        self.send(cmd.as_bytes()).await?;
        self.read_tagged(&tag).await?;
        Ok(())
    }

    /// Logs in with AUTHENTICATE PLAIN where offered (one base64 line; no quoting pitfalls),
    /// else LOGIN.
    pub async fn authenticate(&mut self, login: &str, password: &Secret) -> Result<AuthOutcome, UpstreamError> {
        let tag = self.tag();
        if self.has("AUTH=PLAIN") {
            let mut plain = Vec::with_capacity(login.len() * 2 + password.len() + 2);
            plain.extend_from_slice(login.as_bytes());
            plain.push(0);
            plain.extend_from_slice(login.as_bytes());
            plain.push(0);
            plain.extend_from_slice(password.expose());
            let b64 = Secret::new(base64::engine::general_purpose::STANDARD.encode(&plain).into_bytes());
            Secret::new(plain).wipe();
            if self.has("SASL-IR") {
                let mut cmd = format!("{tag} AUTHENTICATE PLAIN ").into_bytes();
                cmd.extend_from_slice(b64.expose());
                cmd.extend_from_slice(b"\r\n");
                self.send(&cmd).await?;
                Secret::new(cmd).wipe();
            } else {
                self.send(format!("{tag} AUTHENTICATE PLAIN\r\n").as_bytes()).await?;
                let reply = self.read_response().await?;
                if reply.starts_with(b"+") {
                    let mut line = b64.expose().to_vec();
                    line.extend_from_slice(b"\r\n");
                    self.send(&line).await?;
                    Secret::new(line).wipe();
                } else if let Some(rest) = reply.strip_prefix(format!("{tag} ").as_bytes()) {
                    return Ok(AuthOutcome::Rejected(rest.to_vec()));
                }
            }
        } else if self.has("LOGINDISABLED") {
            return Err(UpstreamError::LoginDisabled { server: self.server.to_string() });
        } else {
            let literal_plus = self.has("LITERAL+");
            let mut cmd = format!("{tag} LOGIN ").into_bytes();
            cmd.extend(command::astring(login.as_bytes(), literal_plus));
            cmd.push(b' ');
            cmd.extend(command::astring(password.expose(), literal_plus));
            cmd.extend_from_slice(b"\r\n");
            let cmd = Secret::new(cmd);
            if let Some(refusal) = self.send_waiting_for_continuations(cmd.expose()).await? {
                return match refusal.strip_prefix(format!("{tag} ").as_bytes()) {
                    Some(status) => Ok(AuthOutcome::Rejected(status.to_vec())),
                    None => Err(UpstreamError::Protocol { server: self.server.to_string() }),
                };
            }
        }
        let status = self.read_tagged(&tag).await?;
        self.logged_in(status).await
    }

    /// The outcome of a login from the provider's tagged status; after `OK`, its capabilities.
    async fn logged_in(&mut self, status: Vec<u8>) -> Result<AuthOutcome, UpstreamError> {
        if status.starts_with(b"OK") {
            match capability::find_in_response(&[b"* ", &status[..]].concat()) {
                Some(range) => self.capabilities = capability::parse_list(&[b"* ", &status[..]].concat()[range]),
                None => self.refresh_capabilities().await?,
            }
            Ok(AuthOutcome::Ok(status))
        } else {
            Ok(AuthOutcome::Rejected(status))
        }
    }

    /// Turns on COMPRESS=DEFLATE (RFC 4978) where the provider offers it, after login: less on
    /// the wire for every command after it. A refusal leaves the connection as it was.
    pub async fn compress(&mut self) -> Result<(), UpstreamError> {
        if !self.has("COMPRESS=DEFLATE") || self.compressed.is_some() {
            return Ok(());
        }
        let tag = self.tag();
        self.send(format!("{tag} COMPRESS DEFLATE\r\n").as_bytes()).await?;
        let status = self.read_tagged(&tag).await?;
        if !status.starts_with(b"OK") {
            tracing::debug!(status = %String::from_utf8_lossy(&status).trim_end(), "provider refused COMPRESS");
            return Ok(());
        }
        let stream = std::mem::replace(&mut self.conn.stream, Stream::Upgrading);
        let already_read = self.conn.buf.split();
        let (stream, counters) = stream.compress(&already_read);
        self.conn.stream = stream;
        self.compressed = Some(counters);
        tracing::debug!("provider connection compressed (COMPRESS DEFLATE)");
        Ok(())
    }

    /// Asks for the capabilities (when the greeting or the login did not say them).
    async fn refresh_capabilities(&mut self) -> Result<(), UpstreamError> {
        let tag = self.tag();
        self.send(format!("{tag} CAPABILITY\r\n").as_bytes()).await?;
        let mut caps = Vec::new();
        loop {
            let resp = self.read_response().await?;
            if let Some(range) = capability::find_in_response(&resp) {
                caps = capability::parse_list(&resp[range]);
            }
            if resp.starts_with(format!("{tag} ").as_bytes()) {
                self.capabilities = caps;
                return Ok(());
            }
        }
    }

    /// Sends a command, pausing after each synchronizing literal announcement for the server's
    /// `+`, as RFC 3501 requires. Returns the server's response when it refused to go on.
    async fn send_waiting_for_continuations(&mut self, cmd: &[u8]) -> Result<Option<Vec<u8>>, UpstreamError> {
        let mut rest = cmd;
        loop {
            let Some(pos) = rest.windows(3).position(|w| w == b"}\r\n") else {
                return self.send(rest).await.map(|()| None);
            };
            let (part, after) = rest.split_at(pos + 3);
            self.send(part).await?;
            rest = after;
            if !part[..part.len() - 2].ends_with(b"+}") {
                let reply = self.read_response().await?;
                if !reply.starts_with(b"+") {
                    return Ok(Some(reply));
                }
            }
        }
    }

    /// Appends `message` to `mailbox` with `flags` (e.g. `\Seen`, or empty): the proxy's own
    /// messages to the user, such as delivery-failure reports. The reply says whether the
    /// provider took it (a refusal is `NO ...`).
    pub async fn append(&mut self, mailbox: &str, flags: &str, message: &[u8]) -> Result<Reply, UpstreamError> {
        let tag = self.tag();
        let literal_plus = self.has("LITERAL+");
        let mut cmd = format!("{tag} APPEND ").into_bytes();
        cmd.extend(command::astring(mailbox.as_bytes(), literal_plus));
        let plus = if literal_plus { "+" } else { "" };
        cmd.extend_from_slice(format!(" ({flags}) {{{}{plus}}}\r\n", message.len()).as_bytes());
        self.send(&cmd).await?;
        if !literal_plus {
            loop {
                let reply = self.read_response().await?;
                if reply.starts_with(b"+") {
                    break;
                }
                if let Some(status) = reply.strip_prefix(format!("{tag} ").as_bytes()) {
                    return Ok(Reply { untagged: Vec::new(), status: status.to_vec() });
                }
            }
        }
        self.send(message).await?;
        self.send(b"\r\n").await?;
        let status = self.read_tagged(&tag).await?;
        Ok(Reply { untagged: Vec::new(), status })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.conn.write(bytes).await.map_err(|e| self.io_error(e))
    }

    /// Runs one command (everything after the tag, CRLF included, no synchronizing literals)
    /// and returns its untagged responses and the tagged status without the tag.
    pub async fn command(&mut self, command: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<u8>), UpstreamError> {
        let tag = self.tag();
        self.send(&[tag.as_bytes(), b" ", command].concat()).await?;
        let prefix = format!("{tag} ");
        let mut untagged = Vec::new();
        loop {
            let resp = self.read_response().await?;
            if let Some(status) = resp.strip_prefix(prefix.as_bytes()) {
                return Ok((untagged, status.to_vec()));
            }
            untagged.push(resp);
        }
    }

    /// Reads responses until the tagged one for `tag`; returns it without the tag.
    pub async fn read_tagged(&mut self, tag: &str) -> Result<Vec<u8>, UpstreamError> {
        let prefix = format!("{tag} ");
        loop {
            let resp = self.read_response().await?;
            if let Some(rest) = resp.strip_prefix(prefix.as_bytes()) {
                return Ok(rest.to_vec());
            }
            if resp.starts_with(b"* BYE") {
                return Err(UpstreamError::closed(&self.server));
            }
        }
    }

    pub async fn read_response(&mut self) -> Result<Vec<u8>, UpstreamError> {
        match self.conn.read_message(MAX_RESPONSE, None).await {
            Ok(msg) => Ok(msg),
            Err(ReadError::Eof | ReadError::Truncated) => Err(UpstreamError::closed(&self.server)),
            Err(ReadError::TooLong { .. }) => Err(UpstreamError::Protocol { server: self.server.to_string() }),
            Err(ReadError::Io(e)) => Err(self.io_error(e)),
        }
    }

    /// A failure of the network under this connection.
    pub fn io_error(&self, e: std::io::Error) -> UpstreamError {
        NetError::Network { server: self.server.to_string(), detail: e.to_string() }.into()
    }
}

/// The worker's and the receipts agent's connections carry the wings' commands directly.
impl ProviderCommands for Upstream {
    async fn run(&mut self, command: &[u8], capture: &'static [&'static [u8]]) -> Result<Reply, ProviderError> {
        let tag = self.tag();
        let prefix = format!("{tag} ");
        let full = [tag.as_bytes(), b" ", command].concat();
        let mut untagged = Vec::new();
        let captured = |resp: &[u8]| crate::imap::wire::provider::captures(capture, resp);
        // Sent up to `sent`; literal announcements are looked for from `search` on (never in a
        // literal's data). At each synchronizing one, the provider's `+` is awaited.
        let (mut sent, mut search) = (0, 0);
        while let Some(at) = full[search..].windows(3).position(|w| w == b"}\r\n") {
            let close = search + at;
            let end = close + 3;
            let literal = full[..close].iter().rposition(|&b| b == b'{').and_then(|open| {
                let inner = std::str::from_utf8(&full[open + 1..close]).ok()?;
                let (digits, plus) = inner.strip_suffix('+').map_or((inner, false), |d| (d, true));
                Some((digits.parse::<usize>().ok()?, plus))
            });
            let Some((len, plus)) = literal else {
                search = end;
                continue;
            };
            if !plus {
                self.send(&full[sent..end]).await?;
                sent = end;
                loop {
                    let resp = self.read_response().await?;
                    if resp.starts_with(b"+") {
                        break;
                    }
                    if let Some(status) = resp.strip_prefix(prefix.as_bytes()) {
                        return Ok(Reply { untagged, status: status.to_vec() });
                    }
                    if captured(&resp) {
                        untagged.push(resp);
                    }
                }
            }
            search = (end + len).min(full.len());
        }
        self.send(&full[sent..]).await?;
        loop {
            let resp = self.read_response().await?;
            if let Some(status) = resp.strip_prefix(prefix.as_bytes()) {
                return Ok(Reply { untagged, status: status.to_vec() });
            }
            if captured(&resp) {
                untagged.push(resp);
            }
        }
    }
}

/// An OAuth2 sign-in that did not get as far as the provider: a refusal the client must act on
/// becomes its `NO [AUTHENTICATIONFAILED]` status (saying what to do; a wrong password is not
/// told apart from a wrong login), anything else a failure to log in now.
fn oauth_refusal(e: OAuthError) -> Result<AuthOutcome, UpstreamError> {
    if !e.refuses_login() {
        return Err(e.into());
    }
    tracing::info!("OAuth2 sign-in refused: {e}");
    let text = match e {
        OAuthError::WrongPassword => "Authentication failed.".to_string(),
        e => e.to_string().chars().map(|c| if c.is_ascii_graphic() { c } else { ' ' }).collect(),
    };
    Ok(AuthOutcome::Rejected(format!("NO [AUTHENTICATIONFAILED] {text}\r\n").into_bytes()))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A bearer token without SASL-IR: the response after the `+`; a refusal's challenge is
    /// answered as the mechanism wants (OAUTHBEARER: `AQ==`), then the provider's `NO` is the
    /// outcome.
    #[tokio::test]
    async fn bearer_tokens_without_sasl_ir_and_a_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let provider = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tcp = BufReader::new(tcp);
            tcp.write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=OAUTHBEARER] ready\r\n").await.unwrap();
            let mut line = String::new();
            tcp.read_line(&mut line).await.unwrap();
            let tag = line.split(' ').next().unwrap().to_string();
            assert_eq!(line, format!("{tag} AUTHENTICATE OAUTHBEARER\r\n"));
            tcp.write_all(b"+ \r\n").await.unwrap();
            line.clear();
            tcp.read_line(&mut line).await.unwrap();
            let raw = base64::engine::general_purpose::STANDARD.decode(line.trim_end()).unwrap();
            assert_eq!(
                raw,
                b"n,a=a@x,\x01host=127.0.0.1\x01port="
                    .iter()
                    .chain(port.to_string().as_bytes())
                    .chain(b"\x01auth=Bearer tok\x01\x01")
                    .copied()
                    .collect::<Vec<u8>>()
            );
            tcp.write_all(b"+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n").await.unwrap();
            line.clear();
            tcp.read_line(&mut line).await.unwrap();
            assert_eq!(line, "AQ==\r\n");
            tcp.write_all(format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n").as_bytes())
                .await
                .unwrap();
        });
        let imap = ServerUrl::parse_imap(&format!("imap://127.0.0.1:{port}")).unwrap();
        let provider_config = Provider { imap, ca_file: None };
        let mut up = Upstream::connect(&provider_config, &UpstreamTls::default(), Duration::from_secs(5), 64 * 1024)
            .await
            .unwrap();
        let outcome = up.authenticate_bearer("a@x", &Secret::new(b"tok".to_vec())).await.unwrap();
        assert!(matches!(outcome, AuthOutcome::Rejected(s) if s.starts_with(b"NO [AUTHENTICATIONFAILED]")));
        provider.await.unwrap();
        up.capabilities.retain(|c| !c.starts_with("AUTH=OAUTH"));
        let err = up.authenticate_bearer("a@x", &Secret::default()).await.err().expect("no bearer mechanism");
        assert!(err.to_string().contains("offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER"), "{err}");
    }

    /// A wing's command with a synchronizing literal on the proxy's own connection: the literal
    /// waits for the provider's `+`, and only the responses asked for are captured.
    #[tokio::test]
    async fn own_commands_wait_for_continuations_and_capture_by_prefix() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let provider = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tcp = BufReader::new(tcp);
            tcp.write_all(b"* OK [CAPABILITY IMAP4rev1 METADATA] ready\r\n").await.unwrap();
            let mut line = String::new();
            tcp.read_line(&mut line).await.unwrap();
            assert!(line.ends_with(" SETMETADATA \"\" (/private/x {3}\r\n"), "{line:?}");
            let tag = line.split(' ').next().unwrap().to_string();
            // Nothing of the literal may come before the continuation.
            let early = tokio::time::timeout(Duration::from_millis(200), tcp.read_u8()).await;
            assert!(early.is_err(), "literal sent before the continuation: {early:?}");
            tcp.write_all(b"* 4 EXISTS\r\n+ go ahead\r\n").await.unwrap();
            let mut rest = String::new();
            tcp.read_line(&mut rest).await.unwrap();
            assert_eq!(rest, "abc)\r\n");
            let answer = format!("* METADATA \"\" (/private/x \"abc\")\r\n* 5 EXISTS\r\n{tag} OK done\r\n");
            tcp.write_all(answer.as_bytes()).await.unwrap();
        });
        let imap = ServerUrl::parse_imap(&format!("imap://127.0.0.1:{port}")).unwrap();
        let provider_config = Provider { imap, ca_file: None };
        let mut up = Upstream::connect(&provider_config, &UpstreamTls::default(), Duration::from_secs(5), 64 * 1024)
            .await
            .unwrap();
        let reply = up.run(b"SETMETADATA \"\" (/private/x {3}\r\nabc)\r\n", &[b"* metadata "]).await.unwrap();
        assert_eq!(reply.untagged, vec![b"* METADATA \"\" (/private/x \"abc\")\r\n".to_vec()]);
        assert!(reply.ok(), "{}", reply.status_text());
        provider.await.unwrap();
    }
}
