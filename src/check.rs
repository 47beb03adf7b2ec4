//! `coi-proxy check`: validates the configuration, connects to every provider and reports what
//! the proxy will pass on, strip and add, in a form a user can paste into a bug report. It
//! never prints a password (it logs in nowhere) and reads the queue without changing it.

use std::fmt::Write;
use std::path::Path;

use crate::config::{Config, Security, SmtpProvider};
use crate::imap::upstream::Upstream;
use crate::imap::wire::capability;
use crate::smtp::relay::SmtpClient;
use crate::tls::{LocalCertPaths, UpstreamTls};

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
    let _ = writeln!(out, "state_dir: {}", config.state_dir.display());
    listeners(&mut out, config);
    local_certificate(&mut out, &config.state_dir);
    let _ = writeln!(out, "queue: {}", queue(config));
    oauth2(&mut out, config).await;

    let providers = config.providers();
    if providers.is_empty() {
        let _ = writeln!(out, "provider: none configured (pass --upstream or set [upstream] imap)");
        return (out, false);
    }
    let tls = UpstreamTls::default();
    for provider in providers {
        let _ = writeln!(out, "\nprovider {} ({})", provider.imap, mode(provider.imap.security));
        match Upstream::connect(&provider, &tls, config.limits.connect_timeout(), config.limits.max_line).await {
            Ok(up) => {
                let tls_line =
                    if up.conn.stream.is_tls() { "TLS ok, certificate verified" } else { "no TLS (loopback)" };
                let _ = writeln!(out, "  reachable: yes; {tls_line}");
                let _ = writeln!(out, "  capabilities before login: {}", up.capabilities.join(" "));
                let stripped = capability::stripped(&up.capabilities);
                let stripped = if stripped.is_empty() { "nothing".into() } else { stripped.join(" ") };
                let _ = writeln!(out, "  coi-proxy strips: {stripped}");
                additions(&mut out, config, up.has("METADATA"), up.has("IDLE"));
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  reachable: NO: {e}");
                let _ = writeln!(out, "  {}", hint(&e.to_string()));
            }
        }
    }
    for provider in smtp_providers(config) {
        let _ = writeln!(out, "\nsubmission {} ({})", provider.smtp, mode(provider.smtp.security));
        match SmtpClient::connect(&provider, &tls, config.limits.connect_timeout()).await {
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
                let _ = writeln!(out, "  reachable: NO: {e}");
                let _ = writeln!(out, "  {}", hint(&e.to_string()));
            }
        }
    }
    (out, ok)
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

/// The local certificate: where the CA is, when the leaf expires, which names it covers.
fn local_certificate(out: &mut String, state_dir: &Path) {
    let paths = LocalCertPaths::new(state_dir);
    if !paths.ca.exists() {
        let _ = writeln!(out, "local certificate: not created yet (made at the first `coi-proxy run`)");
        return;
    }
    let meta = std::fs::read_to_string(&paths.meta).unwrap_or_default();
    let field = |k: &str| meta.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let expires = field("not_after")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or("unknown".to_string(), |t| t.date().to_string());
    let names = field("names").unwrap_or("unknown");
    let _ = writeln!(
        out,
        "local certificate: CA {} (trust this in clients); server certificate expires {expires} (renewed 30 days before), covers {names}",
        paths.ca.display()
    );
}

/// The queue's size: from the running daemon if there is one, else from the store.
fn queue(config: &Config) -> String {
    use crate::smtp::control::{self, Command};
    match control::cli(config, Command::List) {
        Ok(text) if text.starts_with("The queue is empty") => "empty".into(),
        Ok(text) => text.lines().next().unwrap_or("").trim_end_matches(':').to_string(),
        Err(e) => format!("unknown ({e})"),
    }
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

/// What the proxy adds on top of the provider after login.
fn additions(out: &mut String, config: &Config, metadata: bool, idle: bool) {
    let added = crate::coi::session::capabilities(metadata, idle, &[crate::push::CAPABILITY]);
    let _ = writeln!(out, "  coi-proxy adds: {}", added.join(" "));
    let _ = writeln!(out, "    COI: served by coi-proxy (mailbox root {:?})", config.coi.mailbox_root);
    let _ = match metadata {
        true => writeln!(out, "    METADATA: passed to the provider (COI settings stored there)"),
        false => writeln!(out, "    METADATA: emulated (kept in coi-proxy's store, per account)"),
    };
    let _ = match idle {
        true => writeln!(out, "    IDLE: native (relayed to the provider)"),
        false => writeln!(out, "    IDLE: polled by coi-proxy every {} s ([coi] poll_secs)", config.coi.poll_secs),
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

/// What to try next for a provider that cannot be reached.
fn hint(error: &str) -> &'static str {
    if error.contains("refused") {
        "hint: nothing listens there; check the host and port (993 for imaps://, 143 for imap+starttls://, 465 for smtps://, 587 for smtp+starttls://)"
    } else if error.contains("resolve") {
        "hint: the host name does not resolve; check its spelling and this machine's DNS"
    } else if error.contains("TLS") || error.contains("certificate") {
        "hint: TLS failed; a wrong scheme (imaps:// against a STARTTLS port or the reverse) or a private CA (set ca_file) are the usual causes"
    } else if error.contains("timed out") {
        "hint: no answer in time; a firewall, or TLS spoken to a plain port (try the other scheme)"
    } else {
        "hint: run with RUST_LOG=debug for details"
    }
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
    (out, !providers.is_empty())
}
