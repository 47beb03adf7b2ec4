//! `coi-proxy check`: validates the configuration and runs what the daemon will run: what `run`
//! would refuse (listeners, `ca_file`s), every route, every provider (what the proxy will pass
//! on, strip and add), and each account's `password_command` with a login at its servers. The
//! report is fit to paste into a bug report: it never prints a password (the command's output
//! and error output are not shown) and reads the queue without changing it.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, Security, ServerUrl, SmtpProvider};
use crate::imap::upstream::{AuthOutcome, Upstream, UpstreamError};
use crate::imap::wire::capability;
use crate::net::{NetError, Phase, TlsProblem};
use crate::provider_profile::{IdleMode, MetadataHome};
use crate::smtp::relay::{RelayError, SmtpClient};
use crate::tls::UpstreamTls;

/// Runs the checks and returns the report and whether every provider was reachable.
pub async fn run(config: &Config, source: Option<&Path>) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let _ =
        writeln!(out, "coi-proxy {} on {} {}", env!("CARGO_PKG_VERSION"), std::env::consts::OS, std::env::consts::ARCH);
    match source {
        Some(path) => _ = writeln!(out, "config: {} (valid)", path.display()),
        None => _ = writeln!(out, "config: none found, using defaults"),
    }
    let has_state = state_dir(&mut out, &config.state_dir);
    listeners(&mut out, config);
    for refusal in crate::app::refusals(config) {
        ok = false;
        let _ = writeln!(out, "run would refuse: {refusal}");
    }
    if has_state {
        local_certificate(&mut out, &config.state_dir);
        let _ = writeln!(out, "queue: {}", crate::smtp::control::summary(config));
    } else {
        let _ = writeln!(out, "local certificate: no state here (made at the daemon's first start)");
        let _ = writeln!(out, "queue: no state here");
    }
    oauth2(&mut out, config).await;
    ok &= autocrypt(&mut out, config);
    ok &= cluster(&mut out, config).await;
    routes(&mut out, config);

    let providers = config.providers();
    if providers.is_empty() {
        let _ = writeln!(out, "provider: none configured (pass --upstream or set [upstream] imap)");
        return (out, false);
    }
    let tls = UpstreamTls::default();
    for provider in providers {
        let _ = writeln!(out, "\nprovider {} ({})", provider.imap, mode(provider.imap.security));
        let attempt = Upstream::connect(&provider, &tls, config.limits.connect_timeout(), config.limits.max_line);
        match with_tls_probe(&provider.imap, attempt).await {
            Ok(up) => {
                let tls_line =
                    if up.conn.stream.is_tls() { "TLS ok, certificate verified" } else { "no TLS (loopback)" };
                let _ = writeln!(out, "  reachable: yes; {tls_line}");
                let _ = writeln!(out, "  capabilities before login: {}", up.capabilities.join(" "));
                let stripped = capability::stripped(&up.capabilities);
                let stripped = if stripped.is_empty() { "nothing".into() } else { stripped.join(" ") };
                let _ = writeln!(out, "  coi-proxy strips: {stripped}");
                additions(&mut out, config, &up);
            }
            Err(e) => {
                ok = false;
                let error = e.as_ref().map(|e| (e.to_string(), imap_net(e)));
                unreachable(&mut out, &provider.imap, false, error);
            }
        }
    }
    for provider in smtp_providers(config) {
        let _ = writeln!(out, "\nsubmission {} ({})", provider.smtp, mode(provider.smtp.security));
        match with_tls_probe(&provider.smtp, SmtpClient::connect(&provider, &tls, config.limits.connect_timeout()))
            .await
        {
            Ok(client) => {
                let tls_line = if provider.smtp.security == Security::Plain {
                    "no TLS (loopback)"
                } else {
                    "TLS ok, certificate verified"
                };
                let caps = &client.caps;
                let size = caps.size.map_or("no SIZE".to_string(), |s| format!("SIZE {s}"));
                let _ = writeln!(out, "  reachable: yes; {tls_line}");
                let _ = writeln!(
                    out,
                    "  offers: {size}, PIPELINING {}, SMTPUTF8 {}, DSN {}",
                    yes_no(caps.pipelining),
                    yes_no(caps.smtputf8),
                    yes_no(caps.dsn)
                );
                client.quit().await;
            }
            Err(e) => {
                ok = false;
                let error = e.as_ref().map(|e| (e.to_string(), smtp_net(e)));
                unreachable(&mut out, &provider.smtp, true, error);
            }
        }
    }
    ok &= accounts(&mut out, config, &tls).await;
    (out, ok)
}

/// Where each `[[account]]` and every other login go.
fn routes(out: &mut String, config: &Config) {
    let show = |imap: Option<String>, smtp: Option<String>| {
        let imap = imap.map_or("none".to_string(), |u| shown(&u, false));
        let smtp = smtp.map_or("none (no submission)".to_string(), |u| shown(&u, true));
        format!("imap {imap}, smtp {smtp}")
    };
    let upstream = config.upstream.as_ref();
    for account in &config.accounts {
        let who = match (&account.login, &account.domain) {
            (Some(login), _) => format!("login {login}"),
            (None, Some(domain)) => format!("domain {domain}"),
            (None, None) => continue,
        };
        let imap = account.imap.clone().or(upstream.map(|u| u.imap.clone()));
        let smtp = account.smtp.clone().or(upstream.and_then(|u| u.smtp.clone()));
        let _ = writeln!(out, "route {who}: {}", show(imap, smtp));
        if account.login.is_none() && account.password_command.is_some() {
            let _ = writeln!(
                out,
                "  note: password_command is used only in an [[account]] with `login`; here it is ignored"
            );
        }
    }
    match upstream {
        Some(u) => _ = writeln!(out, "route any other login: {}", show(Some(u.imap.clone()), u.smtp.clone())),
        None => _ = writeln!(out, "route any other login: none (no [upstream]: such logins are refused)"),
    }
}

/// A configured server URL as the report shows it: `host:port (mode)`.
fn shown(url: &str, smtp: bool) -> String {
    let parsed =
        if smtp { crate::config::ServerUrl::parse_smtp(url) } else { crate::config::ServerUrl::parse_imap(url) };
    parsed.map_or_else(|e| format!("invalid: {e}"), |u| format!("{u} ({})", mode(u.security)))
}

/// Each `[[account]]` with a `password_command`: runs it (its output is never shown) and logs
/// in at the account's IMAP and submission servers with it, as the worker and the queue will.
async fn accounts(out: &mut String, config: &Config, tls: &UpstreamTls) -> bool {
    let mut ok = true;
    let credentials = crate::account::Credentials::default();
    for account in &config.accounts {
        let (Some(login), Some(_)) = (&account.login, &account.password_command) else { continue };
        let password = match credentials.password(config, login).await {
            Ok(password) => {
                let _ = writeln!(out, "\naccount {login}: password_command ok (printed a password)");
                password
            }
            Err(e) => {
                ok = false;
                let reason = match e {
                    crate::account::CredentialError::Command { reason, .. } => reason,
                    e => e.to_string(),
                };
                let _ = writeln!(out, "\naccount {login}: password_command FAILED: {reason}");
                continue;
            }
        };
        let limits = &config.limits;
        if let Some(provider) = config.provider_for(login) {
            let server = provider.imap.to_string();
            let result = match Upstream::connect(&provider, tls, limits.connect_timeout(), limits.max_line).await {
                Ok(mut up) => {
                    match tokio::time::timeout(limits.connect_timeout(), up.authenticate(login, &password)).await {
                        Ok(Ok(AuthOutcome::Ok(_))) => Ok(()),
                        Ok(Ok(AuthOutcome::Rejected(status))) => {
                            Err(Login::Refused(String::from_utf8_lossy(&status).trim_end().to_string()))
                        }
                        Ok(Err(e)) => Err(Login::Failed(e.to_string())),
                        Err(_) => Err(Login::Failed("no answer to the login in time".into())),
                    }
                }
                Err(e) => Err(Login::Failed(e.to_string())),
            };
            ok &= login_line(out, &server, result);
        }
        if let Some(provider) = config.smtp_provider_for(login) {
            let server = format!("submission {}", provider.smtp);
            let result = match SmtpClient::connect(&provider, tls, limits.connect_timeout()).await {
                Ok(mut client) => {
                    let reply = client.authenticate(login, &password).await;
                    client.quit().await;
                    match reply {
                        Ok(reply) if reply.code == 235 => Ok(()),
                        Ok(reply) => Err(Login::Refused(reply.to_string())),
                        Err(e) => Err(Login::Failed(e.to_string())),
                    }
                }
                Err(e) => Err(Login::Failed(e.to_string())),
            };
            ok &= login_line(out, &server, result);
        }
        password.wipe();
    }
    ok
}

/// Why a login of `check` did not succeed: the server's verdict, or no verdict at all.
enum Login {
    Refused(String),
    Failed(String),
}

/// One "login at …" line; whether it was accepted.
fn login_line(out: &mut String, server: &str, result: Result<(), Login>) -> bool {
    let _ = match &result {
        Ok(()) => writeln!(out, "  login at {server}: accepted"),
        Err(Login::Refused(why)) => writeln!(out, "  login at {server}: REFUSED: {why}"),
        Err(Login::Failed(why)) => writeln!(out, "  login at {server}: not tried: {why}"),
    };
    result.is_ok()
}

fn listeners(out: &mut String, config: &Config) {
    let l = &config.listen;
    let submission = config.has_smtp_provider();
    for (name, addr, what) in [
        ("imap", l.imap, "plain, STARTTLS offered"),
        ("imaps", l.imaps, "implicit TLS"),
        ("smtp", l.smtp.filter(|_| submission), "submission, STARTTLS offered"),
        ("smtps", l.smtps.filter(|_| submission), "submission, implicit TLS"),
        ("metrics", l.metrics, "HTTP /metrics and /healthz"),
    ] {
        match addr {
            Some(a) if name == "imap" || name == "smtp" => {
                let login =
                    if l.plaintext_auth_allowed(&a) { "login before STARTTLS allowed" } else { "STARTTLS required" };
                _ = writeln!(out, "listen {name}: {a} ({what}; {login})");
            }
            Some(a) => _ = writeln!(out, "listen {name}: {a} ({what})"),
            None if (name == "smtp" || name == "smtps")
                && !submission
                && [l.smtp, l.smtps].iter().any(Option::is_some) =>
            {
                _ = writeln!(out, "listen {name}: off (no submission server: set [upstream] smtp)")
            }
            None => _ = writeln!(out, "listen {name}: off"),
        }
    }
}

/// The state directory and whether anything is stored there (nothing is created); whether it
/// exists.
fn state_dir(out: &mut String, dir: &Path) -> bool {
    let exists = dir.exists();
    let _ = match crate::state::existing(dir) {
        Ok(None) => {
            writeln!(out, "state_dir: {} ({})", dir.display(), crate::state::no_state_here(dir, "does not exist"))
        }
        Ok(Some(crate::state::Prepared::MadePrivate { was })) => {
            writeln!(out, "state_dir: {} (was readable by other users, mode {was:o}; made it private)", dir.display())
        }
        Ok(Some(_)) => writeln!(out, "state_dir: {} (private)", dir.display()),
        Err(e) => writeln!(out, "state_dir: {} (NOT USABLE: {e})", dir.display()),
    };
    exists
}

/// The local certificate: where the CA is, when the leaf expires, which names it covers.
fn local_certificate(out: &mut String, state_dir: &Path) {
    let _ = match crate::tls::describe(state_dir) {
        Some(text) => writeln!(out, "local certificate: {text}"),
        None => writeln!(
            out,
            "local certificate: {}",
            crate::state::no_state_here(state_dir, "has no local certificate authority (tls/ca.pem)")
        ),
    };
}

/// The OAuth2 accounts' state (authorized, refreshed, refused), from the daemon or the store.
async fn oauth2(out: &mut String, config: &Config) {
    if config.accounts.iter().all(|a| a.oauth2.is_none()) {
        return;
    }
    let socket = crate::smtp::control::socket_path(&config.state_dir);
    match crate::oauth::control::status(config, &socket).await {
        Ok(text) => {
            for line in text.lines() {
                let _ = writeln!(out, "oauth2 {line}");
            }
        }
        Err(e) => _ = writeln!(out, "oauth2: unknown ({e})"),
    }
}

/// What the proxy adds on top of the provider after login, and what its provider profile
/// (decided from the greeting, the host and the capabilities before login) changes.
fn additions(out: &mut String, config: &Config, up: &Upstream) {
    let (metadata, idle) = (up.has("METADATA"), up.has("IDLE"));
    let profile = up.profile();
    let _ = writeln!(out, "  recognised as: {}", profile.server);
    let added = crate::coi::session::capabilities(metadata, idle, &[crate::push::CAPABILITY]);
    let _ = writeln!(out, "  coi-proxy adds: {}", added.join(" "));
    let _ = writeln!(out, "    COI: served by coi-proxy (mailbox root {:?})", config.coi.mailbox_root);
    // Where the proxy goes beyond the spec, deliberately (README: "Where coi-proxy goes beyond
    // the COI spec").
    let clients = config.coi.chat_clients.join(", ");
    let _ = writeln!(
        out,
        "    COI beyond the spec (deliberate): mail already in INBOX is filtered when COI is switched on; \
         replies to chat messages and Delta Chat's encrypted mail count as chat; chat clients \
         ([coi] chat_clients: {clients}) see {}/Chats when they select INBOX under active",
        config.coi.mailbox_root
    );
    let every = config.coi.config_check_secs;
    let _ = writeln!(
        out,
        "    COI settings changed elsewhere (where the provider keeps them in METADATA): followed within {every} s ([coi] config_check_secs)"
    );
    let _ = match (metadata, profile.metadata) {
        (true, MetadataHome::Provider) => {
            writeln!(out, "    METADATA: passed to the provider (COI settings stored there)")
        }
        (true, MetadataHome::Proxy) => writeln!(
            out,
            "    METADATA: the provider refuses the COI entries; COI settings kept in coi-proxy's store, per account"
        ),
        (false, _) => writeln!(out, "    METADATA: emulated (kept in coi-proxy's store, per account)"),
    };
    let _ = match (idle, profile.idle) {
        (true, IdleMode::Push) => writeln!(out, "    IDLE: native (relayed to the provider)"),
        (true, IdleMode::Poll(_)) => writeln!(
            out,
            "    IDLE: the provider's does not report new mail as it comes; served by coi-proxy polling every {} s ([coi] poll_secs)",
            config.coi.poll_secs
        ),
        (false, _) => writeln!(out, "    IDLE: polled by coi-proxy every {} s ([coi] poll_secs)", config.coi.poll_secs),
    };
    let _ = match added.iter().find(|c| c.starts_with("WEBPUSH")) {
        Some(cap) => writeln!(out, "    {cap}: served by coi-proxy"),
        None => writeln!(out, "    WEBPUSH: not offered by this version"),
    };
}

/// Every distinct submission server of the configuration.
fn smtp_providers(config: &Config) -> Vec<SmtpProvider> {
    let mut urls: Vec<(String, Option<std::path::PathBuf>)> = Vec::new();
    if let Some(up) = &config.upstream
        && let Some(smtp) = &up.smtp
    {
        urls.push((smtp.clone(), up.ca_file.clone()));
    }
    for a in &config.accounts {
        if let Some(smtp) = &a.smtp {
            let ca = a.ca_file.clone().or_else(|| config.upstream.as_ref().and_then(|u| u.ca_file.clone()));
            urls.push((smtp.clone(), ca));
        }
    }
    let mut out: Vec<SmtpProvider> = Vec::new();
    for (url, ca_file) in urls {
        if let Ok(smtp) = crate::config::ServerUrl::parse_smtp(&url) {
            let provider = SmtpProvider { smtp, ca_file };
            if !out.contains(&provider) {
                out.push(provider);
            }
        }
    }
    out
}

fn mode(security: Security) -> &'static str {
    match security {
        Security::Implicit => "implicit TLS",
        Security::StartTls => "STARTTLS",
        Security::Plain => "plain (loopback)",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn imap_net(e: &UpstreamError) -> Option<&NetError> {
    match e {
        UpstreamError::Net(net) => Some(net),
        _ => None,
    }
}

fn smtp_net(e: &RelayError) -> Option<&NetError> {
    match e {
        RelayError::Net(net) => Some(net),
        _ => None,
    }
}

/// Runs `attempt` (connecting to `url`); for a plain or STARTTLS URL that has not answered after
/// a second, also tries whether the port answers a TLS handshake, which explains the silence at
/// once (`Err(None)`) instead of after the whole connect timeout.
async fn with_tls_probe<T, E>(url: &ServerUrl, attempt: impl Future<Output = Result<T, E>>) -> Result<T, Option<E>> {
    if url.security == Security::Implicit {
        return attempt.await.map_err(Some);
    }
    let probe = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match crate::net::speaks_tls(url, Duration::from_secs(3)).await {
            true => (),
            false => std::future::pending().await,
        }
    };
    tokio::select! {
        result = attempt => result.map_err(Some),
        () = probe => Err(None),
    }
}

/// The report lines for a server that could not be used: what happened and what to change.
/// `net` is the network error under the failure, if there is one; `None` for `error` means the
/// TLS probe found the port speaking TLS from the first byte.
fn unreachable(out: &mut String, url: &ServerUrl, smtp: bool, error: Option<(String, Option<&NetError>)>) {
    let (tls, starttls, tls_port, starttls_port) =
        if smtp { ("smtps", "smtp+starttls", 465, 587) } else { ("imaps", "imap+starttls", 993, 143) };
    let Some((error, net)) = error else {
        let _ =
            writeln!(out, "  reachable: NO: connected, but {url} sent no greeting: it answers a TLS handshake instead");
        let _ = writeln!(
            out,
            "  hint: this port speaks TLS from the first byte, not {}: use {tls}://{url} (or the STARTTLS port, usually {starttls_port})",
            if url.security == Security::StartTls { "STARTTLS" } else { "plain text" }
        );
        return;
    };
    let _ = writeln!(out, "  reachable: NO: {error}");
    let hint = match net {
        Some(NetError::Refused { .. }) => format!(
            "nothing listens there; check the host and port ({tls_port} for {tls}://, {starttls_port} for {starttls}://)"
        ),
        Some(NetError::Dns { .. }) => {
            "the host name does not resolve; check its spelling and this machine's DNS".into()
        }
        Some(NetError::Tls { problem, .. }) => match problem {
            TlsProblem::NotTls => format!(
                "this port speaks plain text first: use {starttls}://{url} (or the implicit-TLS port, usually {tls_port})"
            ),
            TlsProblem::Untrusted => {
                "the provider's certificate is not trusted here; for a private CA or a self-signed \
                 certificate, set ca_file to its PEM file"
                    .into()
            }
            TlsProblem::WrongHost => "the certificate names another host: configure the host name it was issued \
                 for (the provider's documentation says which)"
                .into(),
            TlsProblem::Expired => "the provider's certificate has expired; only the provider can fix that".into(),
            TlsProblem::Closed => format!(
                "the server closed the connection in the TLS handshake; if this port expects STARTTLS, use {starttls}://{url}"
            ),
            TlsProblem::Setup => "the local TLS setup failed; check ca_file".into(),
            TlsProblem::Other => "run with RUST_LOG=debug for details".into(),
        },
        Some(NetError::Timeout { phase: Phase::Greeting, .. }) => {
            format!("connected, but no greeting came; if this port speaks TLS from the first byte, use {tls}://{url}")
        }
        Some(NetError::Timeout { phase: Phase::Connecting, .. }) => {
            "no answer to the connection: a firewall, or a wrong host or port".into()
        }
        Some(NetError::Timeout { phase, .. }) => format!("the server stopped answering ({phase} it)"),
        _ => "run with RUST_LOG=debug for details".into(),
    };
    let _ = writeln!(out, "  hint: {hint}");
}

/// `coi-proxy check --offline`: the configuration part of the report, contacting nothing and
/// opening no store, so it is safe before the daemon starts (the packaged unit's
/// `ExecCondition`). Fails when no provider is configured, as the daemon would.
pub fn offline(config: &Config, source: Option<&Path>) -> (String, bool) {
    let mut out = String::new();
    match source {
        Some(path) => _ = writeln!(out, "config: {} (valid)", path.display()),
        None => _ = writeln!(out, "config: none found, using defaults"),
    }
    let _ = writeln!(out, "state_dir: {}", config.state_dir.display());
    listeners(&mut out, config);
    let autocrypt_ok = autocrypt(&mut out, config);
    let providers = config.providers();
    for provider in &providers {
        let _ =
            writeln!(out, "provider {} ({}): not contacted (--offline)", provider.imap, mode(provider.imap.security));
    }
    for provider in smtp_providers(config) {
        let _ =
            writeln!(out, "submission {} ({}): not contacted (--offline)", provider.smtp, mode(provider.smtp.security));
    }
    if providers.is_empty() {
        let _ = writeln!(
            out,
            "provider: none configured (run `coi-proxy setup ADDRESS`, pass --upstream or set [upstream] imap)"
        );
    }
    (out, !providers.is_empty() && autocrypt_ok)
}

/// `[cluster]`: etcd answers and grants a lease, or why not (nothing without `[cluster]`).
async fn cluster(out: &mut String, config: &Config) -> bool {
    let Some(cluster) = &config.cluster else { return true };
    let scheme = if cluster.ca_file.is_some() { "TLS" } else { "plain HTTP/2" };
    match crate::cluster::probe(cluster).await {
        Ok(()) => {
            let _ = writeln!(out, "cluster: etcd reachable ({scheme}), lease grant works; node {}", cluster.node);
            true
        }
        Err(e) => {
            let _ = writeln!(out, "cluster: etcd FAILED at {}: {e}", cluster.etcd.join(", "));
            false
        }
    }
}

/// `[autocrypt]`: on or off, and whether the seal key file is fit (the daemon refuses a
/// readable one). Reads only the file's metadata, never the key.
fn autocrypt(out: &mut String, config: &Config) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if !config.autocrypt.enabled {
        let _ = writeln!(out, "autocrypt: off ([autocrypt] enabled = false): no OpenPGP keys, mail passes as sent");
        return true;
    }
    let path = config.seal_key_path();
    let (state, ok) = match std::fs::metadata(&path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => (
            format!(
                "readable by others (mode {:o}); the daemon refuses it: chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
            false,
        ),
        Ok(_) => ("present, mode 600".to_string(), true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ("made at the first use of a key".to_string(), true),
        Err(e) => (format!("unreadable: {e}"), false),
    };
    let _ = writeln!(
        out,
        "autocrypt: on (an OpenPGP key per account, Autocrypt and SecureJoin for plain clients); seal key {}: {state}",
        path.display()
    );
    ok
}
