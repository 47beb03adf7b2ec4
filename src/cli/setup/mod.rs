//! `coi-proxy setup ADDRESS`: finds the provider's IMAP and submission servers from an e-mail
//! address, tries the login, and adds the account to proxy.toml; then says what to enter in the
//! mail client. Where the servers come from, in this order (the first that answers wins):
//!
//! 1. the provider's autoconfig file (Thunderbird's format), over HTTPS;
//! 2. DNS SRV records (RFC 6186 `_imaps._tcp`/`_imap._tcp`, RFC 8314 `_submissions._tcp`, and
//!    `_submission._tcp`);
//! 3. the MX host's provider, from the built-in table (a custom domain at Google, Microsoft, …);
//! 4. the built-in table by the address's domain ([`known::TABLE`]).
//!
//! Every network step has its own timeout and says what failed. For tests (and odd networks) the
//! DNS server and the autoconfig base URL can be pointed elsewhere (`--dns`, `--autoconfig-url`).

pub mod autoconfig;
pub mod dns;
pub mod edit;
pub mod known;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, Provider, Security, ServerUrl, SmtpProvider};
use crate::secret::Secret;
use autoconfig::Server;
use known::{Known, Login};

/// `coi-proxy setup` on the command line.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Your e-mail address at the provider.
    pub address: String,
    /// Read the provider's password from the first line of standard input and try the login
    /// (IMAP and SMTP) before anything is written. Without it the login is not tried.
    #[arg(long)]
    pub password_stdin: bool,
    /// Print the configuration that would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The login, if the provider wants something other than what it publishes (usually the
    /// address).
    #[arg(long)]
    pub login: Option<String>,
    /// An extra trust anchor (PEM) for a provider with a private CA; written as the account's
    /// ca_file.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Seconds each network step (HTTP request, DNS question, connection, login) may take.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub timeout: u64,
    /// The DNS server to ask instead of those in /etc/resolv.conf, e.g. 127.0.0.1:5353 (tests
    /// point this at a local server).
    #[arg(long, env = "COI_PROXY_DNS", value_name = "ADDR:PORT")]
    pub dns: Option<SocketAddr>,
    /// A base URL that stands in for both https://autoconfig.DOMAIN and
    /// https://DOMAIN/.well-known/autoconfig (tests point this at a local server; http:// is
    /// accepted for loopback addresses only).
    #[arg(long, env = "COI_PROXY_AUTOCONFIG_URL", value_name = "URL")]
    pub autoconfig_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("`{0}` is not an e-mail address (expected name@domain)")]
    Address(String),
    #[error("--autoconfig-url {0}: {1}")]
    AutoconfigUrl(String, &'static str),
    #[error("cannot read the password from standard input: {0}")]
    Password(String),
    #[error("the password on standard input is empty")]
    EmptyPassword,
    #[error("found no IMAP server for {domain}:\n{tried}")]
    NotFound { domain: String, tried: String },
    #[error("{0}")]
    Login(String),
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error(transparent)]
    Settings(#[from] crate::cli::client_settings::SettingsError),
}

/// The servers found for an address, and where they came from.
#[derive(Debug, Clone)]
pub struct Found {
    /// Human words: "autoconfig at https://…", "DNS SRV records (not authenticated by DNSSEC)", …
    pub source: String,
    pub imap: Server,
    pub smtp: Option<Server>,
    pub known: Option<&'static Known>,
}

impl Found {
    /// Whether password logins cannot work here.
    pub fn needs_oauth(&self) -> bool {
        self.imap.needs_oauth() || self.known.is_some_and(|k| k.login == Login::OAuth2)
    }
}

/// Runs `setup`; `config_path` is the file to extend (created if missing). Progress goes to
/// stderr; the result (the config for `--dry-run`, else the client settings) is returned.
pub async fn run(args: &SetupArgs, config_path: &Path) -> Result<String, SetupError> {
    let (_, domain) = split_address(&args.address)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let password = if args.password_stdin { Some(read_password(&args.address)?) } else { None };
    let found = discover(args, &domain, timeout).await?;
    let login = args.login.clone().or_else(|| found.imap.username.clone()).unwrap_or_else(|| args.address.clone());
    eprintln!("found via {}:", found.source);
    eprintln!("  IMAP {}", describe(&found.imap));
    match &found.smtp {
        Some(s) => eprintln!("  SMTP {}", describe(s)),
        None => eprintln!("  SMTP none found: mail is sent with the client's own SMTP settings"),
    }
    if let Some(k) = found.known.filter(|k| !k.note.is_empty()) {
        eprintln!("  note: {}", k.note);
    }
    if found.needs_oauth() {
        eprintln!(
            "  {} needs OAuth2 for IMAP and SMTP: after this, authorize coi-proxy with \
             `coi-proxy oauth authorize {login}`",
            found.known.map_or("this provider", |k| k.name)
        );
    }
    let entry = edit::AccountEntry {
        login: login.clone(),
        imap: url(&found.imap, "imap"),
        smtp: found.smtp.as_ref().map(|s| url(s, "smtp")),
        ca_file: args.ca_file.clone(),
    };
    match &password {
        Some(password) => try_login(&entry, password, timeout, found.needs_oauth()).await?,
        None => eprintln!("login not tried (pass --password-stdin to try it before the account is written)"),
    }

    let original = match std::fs::read_to_string(config_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(edit::EditError::Write { path: config_path.into(), source }.into()),
    };
    let edited = edit::add_account(&original, config_path, &entry)?;
    if args.dry_run {
        eprintln!("--dry-run: {} would change like this (not written):", config_path.display());
        for change in &edited.changes {
            eprintln!("  {change}");
        }
        return Ok(edited.text);
    }
    edit::write_atomically(config_path, &edited.text)?;
    let config = Config::parse(&edited.text, config_path).map_err(|e| edit::EditError::Invalid(e.to_string()))?;
    let settings = crate::cli::client_settings::ClientSettings::for_login(&config, &login, None)?;
    let mut out = format!("wrote {}:\n", config_path.display());
    for change in &edited.changes {
        out += &format!("  {change}\n");
    }
    out += &restart_hint(config_path);
    out += "\nEnter these in your mail client (or let `coi-proxy profile apple|thunderbird ";
    out += &format!("{login}` write them):\n{}", settings.describe());
    out += "and trust coi-proxy's certificate authority once: `coi-proxy cert install`, or import \
            the file `coi-proxy cert export` writes.\n";
    Ok(out)
}

fn restart_hint(config_path: &Path) -> String {
    if config_path == Path::new("/etc/coi-proxy/proxy.toml") {
        "then: sudo systemctl restart coi-proxy   (the service starts once a provider is configured)\n".into()
    } else {
        "then restart coi-proxy (new accounts apply to the next login after a reload, new listeners need a restart)\n"
            .into()
    }
}

fn split_address(address: &str) -> Result<(String, String), SetupError> {
    let bad = || SetupError::Address(address.chars().take(100).collect());
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    // An internationalised domain becomes its A-label form for DNS and URLs.
    let domain = match url::Host::parse(domain) {
        Ok(url::Host::Domain(d)) if autoconfig::valid_host(&d) && d.contains('.') => d.to_ascii_lowercase(),
        _ => return Err(bad()),
    };
    Ok((local.to_string(), domain))
}

/// The password at the provider, from stdin (asked for at a terminal, with echo off).
fn read_password(address: &str) -> Result<Secret, SetupError> {
    let prompt = format!("password for {address} at the provider");
    let password = crate::cli::password::read_stdin(&prompt).map_err(|e| SetupError::Password(e.to_string()))?;
    if password.is_empty() {
        return Err(SetupError::EmptyPassword);
    }
    Ok(password)
}

fn describe(s: &Server) -> String {
    let mode = match s.security {
        Security::Implicit => "TLS",
        Security::StartTls => "STARTTLS",
        Security::Plain => "no TLS (loopback)",
    };
    format!("{}:{} ({mode})", s.host, s.port)
}

/// The config URL of a server (`imaps://host:port`, …).
fn url(s: &Server, proto: &str) -> String {
    let scheme = match s.security {
        Security::Implicit => format!("{proto}s"),
        Security::StartTls => format!("{proto}+starttls"),
        Security::Plain => proto.to_string(),
    };
    let host = if s.host.contains(':') { format!("[{}]", s.host) } else { s.host.clone() };
    format!("{scheme}://{host}:{}", s.port)
}

/// The four sources in order; each failure is noted for the final error.
pub async fn discover(args: &SetupArgs, domain: &str, timeout: Duration) -> Result<Found, SetupError> {
    let mut tried = String::new();
    let mut note = |line: String| {
        eprintln!("  {line}");
        tried += &format!("  {line}\n");
    };
    eprintln!("looking up the servers for {domain}:");

    let bases = match &args.autoconfig_url {
        Some(base) => {
            let base = base.trim_end_matches('/').to_string();
            check_override_url(&base)?;
            vec![format!("{base}/mail/config-v1.1.xml"), format!("{base}/.well-known/autoconfig/mail/config-v1.1.xml")]
        }
        None => vec![
            format!("https://autoconfig.{domain}/mail/config-v1.1.xml"),
            format!("https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml"),
        ],
    };
    for base in bases {
        let url = format!("{base}?emailaddress={}", query_escape(&args.address));
        match fetch_autoconfig(&url, timeout).await {
            Ok(xml) => match autoconfig::parse(&xml, &args.address) {
                Ok(servers) => {
                    let imap = servers.imap[0].clone();
                    let smtp = servers.smtp.first().cloned();
                    let known = known::by_server(&imap.host).or_else(|| known::by_domain(domain));
                    return Ok(Found { source: format!("autoconfig at {base}"), imap, smtp, known });
                }
                Err(e) => note(format!("autoconfig {base}: {e}")),
            },
            Err(e) => note(format!("autoconfig {base}: {e}")),
        }
    }

    let resolver = match args.dns {
        Some(server) => dns::Resolver { servers: vec![server], timeout },
        None => dns::Resolver::system(timeout),
    };
    let imap = srv_first(
        &resolver,
        [(format!("_imaps._tcp.{domain}"), Security::Implicit), (format!("_imap._tcp.{domain}"), Security::StartTls)],
        &mut note,
    )
    .await;
    if let Some(imap) = imap {
        let smtp = srv_first(
            &resolver,
            [
                (format!("_submissions._tcp.{domain}"), Security::Implicit),
                (format!("_submission._tcp.{domain}"), Security::StartTls),
            ],
            &mut note,
        )
        .await;
        let known = known::by_server(&imap.host).or_else(|| known::by_domain(domain));
        let source = "DNS SRV records (not authenticated by DNSSEC: check the host names)".to_string();
        return Ok(Found { source, imap, smtp, known });
    }

    match resolver.mx(domain).await {
        Ok(mx) => match mx.iter().find_map(|m| known::by_mx(&m.exchange).map(|k| (m, k))) {
            Some((m, k)) => {
                return Ok(from_table(k, format!("the MX host {} (built-in table: {})", m.exchange, k.name)));
            }
            None if mx.is_empty() => note(format!("DNS MX {domain}: none")),
            None => note(format!(
                "DNS MX {domain}: {} (not a provider in the built-in table)",
                mx.iter().map(|m| m.exchange.as_str()).collect::<Vec<_>>().join(", ")
            )),
        },
        Err(e) => note(format!("DNS MX {domain}: {e}")),
    }

    if let Some(k) = known::by_domain(domain) {
        return Ok(from_table(k, format!("the built-in table ({})", k.name)));
    }
    note(format!("built-in table: {domain} is not one of its providers"));
    Err(SetupError::NotFound { domain: domain.to_string(), tried })
}

/// The first of `names` (the TLS service first) with a usable SRV record; the others are asked
/// only if it has none.
async fn srv_first(
    resolver: &dns::Resolver,
    names: [(String, Security); 2],
    note: &mut impl FnMut(String),
) -> Option<Server> {
    for (name, security) in names {
        match first_usable(resolver.srv(&name).await) {
            Ok(Some(s)) => {
                return Some(Server { host: s.target, port: s.port, security, username: None, auth: Vec::new() });
            }
            Ok(None) => note(format!("DNS SRV {name}: none")),
            Err(e) => note(format!("DNS SRV {name}: {e}")),
        }
    }
    None
}

fn from_table(k: &'static Known, source: String) -> Found {
    let server = |(host, port, security): (&str, u16, Security)| Server {
        host: host.into(),
        port,
        security,
        username: None,
        auth: if k.login == Login::OAuth2 { vec!["OAuth2".into()] } else { Vec::new() },
    };
    Found { source, imap: server(k.imap), smtp: Some(server(k.smtp)), known: Some(k) }
}

/// The best SRV record that offers the service (target `.` says it is not offered).
fn first_usable(records: Result<Vec<dns::Srv>, dns::DnsError>) -> Result<Option<dns::Srv>, dns::DnsError> {
    Ok(records?.into_iter().find(|s| !s.target.is_empty() && s.port != 0 && autoconfig::valid_host(&s.target)))
}

fn check_override_url(base: &str) -> Result<(), SetupError> {
    let parsed = url::Url::parse(base).map_err(|_| SetupError::AutoconfigUrl(base.into(), "not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(SetupError::AutoconfigUrl(base.into(), "http:// only to a loopback address; use https://")),
        _ => Err(SetupError::AutoconfigUrl(base.into(), "must be https:// (or http:// to loopback)")),
    }
}

fn query_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("cannot connect ({0})")]
    Connect(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("larger than {} bytes", autoconfig::MAX_BYTES)]
    TooLarge,
    #[error("{0}")]
    Other(String),
}

/// GETs an autoconfig file: HTTPS (platform trust), at most 3 redirects and never to plain
/// HTTP off loopback, at most [`autoconfig::MAX_BYTES`].
async fn fetch_autoconfig(url: &str, timeout: Duration) -> Result<String, FetchError> {
    let secs = timeout.as_secs();
    let tls = crate::tls::https_client_config().map_err(|e| FetchError::Other(e.to_string()))?;
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let secure = attempt.url().scheme() == "https"
            || attempt.url().host_str().is_some_and(|h| h == "127.0.0.1" || h == "[::1]" || h == "localhost");
        if attempt.previous().len() >= 3 || !secure { attempt.stop() } else { attempt.follow() }
    });
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(policy)
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("coi-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Other(e.to_string()))?;
    let request = async {
        let mut response = client.get(url).send().await.map_err(|e| http_error(e, secs))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| http_error(e, secs))? {
            if body.len() + chunk.len() > autoconfig::MAX_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| FetchError::Other("not UTF-8 text".into()))
    };
    tokio::time::timeout(timeout, request).await.map_err(|_| FetchError::Timeout(secs))?
}

fn http_error(e: reqwest::Error, secs: u64) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout(secs);
    }
    // The innermost cause says it best ("dns error: failed to lookup address", "connection refused").
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() { FetchError::Connect(cause.to_string()) } else { FetchError::Other(cause.to_string()) }
}

/// Logs in at the provider's IMAP and SMTP servers with `password`; nothing is written if either
/// refuses. The password never appears in a message.
async fn try_login(
    entry: &edit::AccountEntry,
    password: &Secret,
    timeout: Duration,
    needs_oauth: bool,
) -> Result<(), SetupError> {
    let oauth_hint = if needs_oauth {
        format!(" (this provider needs OAuth2: `coi-proxy oauth authorize {}`)", entry.login)
    } else {
        " (a wrong password, or the provider wants an app password)".to_string()
    };
    let tls = crate::tls::UpstreamTls::default();
    let imap = ServerUrl::parse_imap(&entry.imap).map_err(|e| SetupError::Login(e.to_string()))?;
    let provider = Provider { imap, ca_file: entry.ca_file.clone() };
    let mut up = crate::imap::upstream::Upstream::connect(&provider, &tls, timeout, 64 * 1024)
        .await
        .map_err(|e| SetupError::Login(format!("IMAP {}: {e}", provider.imap)))?;
    let outcome = tokio::time::timeout(timeout, up.authenticate(&entry.login, password))
        .await
        .map_err(|_| {
            SetupError::Login(format!("IMAP {}: no answer to the login within {} s", provider.imap, timeout.as_secs()))
        })?
        .map_err(|e| SetupError::Login(format!("IMAP {}: {e}", provider.imap)))?;
    match outcome {
        crate::imap::upstream::AuthOutcome::Ok(_) => {
            eprintln!("IMAP login at {} as {}: OK", provider.imap, entry.login)
        }
        crate::imap::upstream::AuthOutcome::Rejected(line) => {
            let said = String::from_utf8_lossy(&line[..line.len().min(200)]).trim_end().to_string();
            return Err(SetupError::Login(format!(
                "IMAP {} refused the login as {}: {said}{oauth_hint}; nothing was written",
                provider.imap, entry.login
            )));
        }
    }
    let Some(smtp) = &entry.smtp else { return Ok(()) };
    let smtp = ServerUrl::parse_smtp(smtp).map_err(|e| SetupError::Login(e.to_string()))?;
    let provider = SmtpProvider { smtp, ca_file: entry.ca_file.clone() };
    let mut client = crate::smtp::relay::SmtpClient::connect(&provider, &tls, timeout)
        .await
        .map_err(|e| SetupError::Login(format!("SMTP {}: {e}", provider.smtp)))?;
    let reply = tokio::time::timeout(timeout, client.authenticate(&entry.login, password))
        .await
        .map_err(|_| {
            SetupError::Login(format!("SMTP {}: no answer to the login within {} s", provider.smtp, timeout.as_secs()))
        })?
        .map_err(|e| SetupError::Login(format!("SMTP {}: {e}", provider.smtp)))?;
    client.quit().await;
    if reply.code != 235 {
        return Err(SetupError::Login(format!(
            "SMTP {} refused the login as {}: {} {}{oauth_hint}; nothing was written",
            provider.smtp,
            entry.login,
            reply.code,
            reply.text.chars().take(200).collect::<String>()
        )));
    }
    eprintln!("SMTP login at {} as {}: OK", provider.smtp, entry.login);
    Ok(())
}

/// The file `setup` extends: `--config`, else the first default path that exists, else a new
/// file: /etc/coi-proxy/proxy.toml for root, ~/.config/coi-proxy/proxy.toml for others.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let paths = crate::config::default_config_paths();
    if let Some(existing) = paths.iter().find(|p| p.is_file()) {
        return existing.clone();
    }
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    match root {
        true => PathBuf::from("/etc/coi-proxy/proxy.toml"),
        false => paths.get(1).cloned().unwrap_or_else(|| PathBuf::from("proxy.toml")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(split_address("a.b@Example.ORG").unwrap(), ("a.b".into(), "example.org".into()));
        assert_eq!(split_address("x@bücher.de").unwrap().1, "xn--bcher-kva.de");
        for bad in ["nobody", "@example.org", "a@", "a@localhost", "a b@example.org", "a@exa mple.org", "a@[::1]"] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_and_overrides() {
        let s =
            Server { host: "imap.x.org".into(), port: 143, security: Security::StartTls, username: None, auth: vec![] };
        assert_eq!(url(&s, "imap"), "imap+starttls://imap.x.org:143");
        assert!(check_override_url("http://127.0.0.1:8080").is_ok());
        assert!(check_override_url("https://autoconfig.example.org").is_ok());
        assert!(check_override_url("http://example.org").is_err());
        assert!(check_override_url("ftp://127.0.0.1").is_err());
        assert_eq!(query_escape("a+b@x.org"), "a%2Bb%40x.org");
    }

    #[test]
    fn the_table_fills_in_oauth_providers() {
        let f = from_table(known::by_domain("outlook.com").unwrap(), "t".into());
        assert!(f.needs_oauth());
        assert_eq!(url(&f.imap, "imap"), "imaps://outlook.office365.com:993");
        let f = from_table(known::by_domain("posteo.de").unwrap(), "t".into());
        assert!(!f.needs_oauth());
    }
}
