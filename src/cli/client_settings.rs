//! What a mail client must be told to reach coi-proxy for one login: server name, ports and TLS
//! modes, derived from the listeners in the configuration. Shared by `setup` (the closing
//! summary) and `profile` (Apple and Thunderbird files), so both always say the same.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::Config;

/// How a client secures one connection to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSecurity {
    /// TLS from the first byte ("SSL/TLS" in most clients).
    Tls,
    /// Plain connect, then STARTTLS.
    StartTls,
}

impl ClientSecurity {
    /// The word most clients use for it.
    pub fn label(self) -> &'static str {
        match self {
            ClientSecurity::Tls => "SSL/TLS",
            ClientSecurity::StartTls => "STARTTLS",
        }
    }
}

/// One server as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: ClientSecurity,
}

/// The incoming and outgoing server for one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub login: String,
    /// Preferred first (implicit TLS), then the STARTTLS alternative if both listen.
    pub imap: Vec<Endpoint>,
    pub smtp: Vec<Endpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("no IMAP listener is configured ([listen] imap or imaps)")]
    NoImapListener,
    #[error("no provider is configured for {login}: run `coi-proxy setup {login}` or add an [[account]] or [upstream]")]
    NoProvider { login: String },
    #[error(
        "mail from {login} cannot be sent through coi-proxy: no submission server ([upstream] smtp or the account's smtp) \
         or no SMTP listener ([listen] smtp or smtps); `coi-proxy setup {login}` sets both"
    )]
    NoSmtp { login: String },
}

impl ClientSettings {
    /// The settings for `login` under `config`; `host` overrides the server name clients use
    /// (it must be one the local certificate covers, see `coi-proxy check`).
    pub fn for_login(config: &Config, login: &str, host: Option<&str>) -> Result<ClientSettings, SettingsError> {
        if config.provider_for(login).is_none() {
            return Err(SettingsError::NoProvider { login: login.to_string() });
        }
        let l = &config.listen;
        let endpoints = |tls: Option<SocketAddr>, starttls: Option<SocketAddr>| {
            let tls = tls.map(|a| (a, ClientSecurity::Tls));
            let starttls = starttls.map(|a| (a, ClientSecurity::StartTls));
            tls.into_iter()
                .chain(starttls)
                .map(|(addr, security)| Endpoint {
                    host: host.map_or_else(|| client_host(config, &addr), str::to_string),
                    port: addr.port(),
                    security,
                })
                .collect::<Vec<_>>()
        };
        let imap = endpoints(l.imaps, l.imap);
        if imap.is_empty() {
            return Err(SettingsError::NoImapListener);
        }
        let smtp = if config.smtp_provider_for(login).is_some() { endpoints(l.smtps, l.smtp) } else { Vec::new() };
        Ok(ClientSettings { login: login.to_string(), imap, smtp })
    }

    /// `smtp`, or the error that says how to get one (profiles need an outgoing server).
    pub fn require_smtp(&self) -> Result<&[Endpoint], SettingsError> {
        if self.smtp.is_empty() {
            return Err(SettingsError::NoSmtp { login: self.login.clone() });
        }
        Ok(&self.smtp)
    }

    /// A short table for a person to copy into a mail client's manual setup.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, what: &str, e: &Endpoint| {
            let _ = writeln!(out, "  {what:<9} server {}  port {}  security {}", e.host, e.port, e.security.label());
        };
        for (i, e) in self.imap.iter().enumerate() {
            line(&mut out, if i == 0 { "incoming" } else { "  or" }, e);
        }
        if self.smtp.is_empty() {
            let _ = writeln!(out, "  outgoing  not through coi-proxy (no submission server or SMTP listener)");
        }
        for (i, e) in self.smtp.iter().enumerate() {
            line(&mut out, if i == 0 { "outgoing" } else { "  or" }, e);
        }
        let _ = writeln!(out, "  user name {} (incoming and outgoing)", self.login);
        let _ = writeln!(out, "  password  the provider's password, authentication \"normal password\"");
        out
    }
}

/// The name a client should connect to for a listener: `localhost` for loopback (clients such as
/// mbsync do not match IP addresses in certificates), this machine's name for a wildcard
/// address, else the address itself; all covered by the local certificate.
fn client_host(config: &Config, addr: &SocketAddr) -> String {
    let ip = addr.ip();
    if ip.is_loopback() {
        return "localhost".into();
    }
    if ip.is_unspecified() {
        let names = crate::tls::cert_names_for(config);
        if let Some(name) = names.iter().find(|n| n.parse::<std::net::IpAddr>().is_err() && *n != "localhost") {
            return name.clone();
        }
        return "localhost".into();
    }
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("proxy.toml")).unwrap()
    }

    #[test]
    fn tls_first_then_starttls_and_smtp_only_with_a_submission_server() {
        let c = config(
            "[listen]\nimap = \"127.0.0.1:1143\"\nimaps = \"127.0.0.1:1993\"\nsmtps = \"127.0.0.1:1465\"\n\
             [upstream]\nimap = \"imaps://imap.example.org\"\n",
        );
        let s = ClientSettings::for_login(&c, "a@example.org", None).unwrap();
        assert_eq!(s.imap[0], Endpoint { host: "localhost".into(), port: 1993, security: ClientSecurity::Tls });
        assert_eq!(s.imap[1].security, ClientSecurity::StartTls);
        assert!(s.smtp.is_empty(), "no [upstream] smtp: SMTP is not served");
        assert!(s.require_smtp().unwrap_err().to_string().contains("coi-proxy setup a@example.org"));
        let c = config(
            "[listen]\nimaps = \"0.0.0.0:1993\"\nsmtp = \"192.0.2.7:1587\"\n\
             [[account]]\nlogin = \"a@example.org\"\nimap = \"imaps://i.example\"\nsmtp = \"smtps://s.example\"\n",
        );
        let s = ClientSettings::for_login(&c, "a@example.org", Some("box.lan")).unwrap();
        assert_eq!(s.imap, vec![Endpoint { host: "box.lan".into(), port: 1993, security: ClientSecurity::Tls }]);
        assert_eq!(s.smtp[0].security, ClientSecurity::StartTls);
        let s = ClientSettings::for_login(&c, "a@example.org", None).unwrap();
        assert_eq!(s.smtp[0].host, "192.0.2.7");
        assert!(s.describe().contains("user name a@example.org"));
    }

    #[test]
    fn unknown_login_and_missing_listener_are_errors() {
        let c = config("[[account]]\nlogin = \"a@example.org\"\nimap = \"imaps://i.example\"\n");
        let err = ClientSettings::for_login(&c, "b@example.org", None).unwrap_err();
        assert!(matches!(err, SettingsError::NoProvider { .. }), "{err}");
        let c = config("[listen]\nsmtp = \"127.0.0.1:1587\"\n[upstream]\nimap = \"imaps://i.example\"\n");
        let err = ClientSettings::for_login(&c, "b@example.org", None).unwrap_err();
        assert!(matches!(err, SettingsError::NoImapListener), "{err}");
    }
}
