//! Thunderbird's autoconfig format (`clientConfig` version 1.1), as providers publish it at
//! `https://autoconfig.<domain>/mail/config-v1.1.xml` and
//! `https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml`. The file is peer input: parsed
//! with a node limit and no DTD (so no entity expansion), every field checked before use
//! (fuzzed: fuzz/fuzz_targets/setup.rs).

use crate::config::Security;

/// Largest autoconfig file accepted (real ones are a few KiB).
pub const MAX_BYTES: usize = 64 * 1024;

/// One server a provider lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// The login with Thunderbird's placeholders filled in; `None` if the file gives none.
    pub username: Option<String>,
    /// The `authentication` values as given (`password-cleartext`, `OAuth2`, …).
    pub auth: Vec<String>,
}

impl Server {
    /// Whether a password login is among the listed methods (no list: assumed).
    pub fn takes_password(&self) -> bool {
        self.auth.is_empty()
            || self.auth.iter().any(|a| {
                matches!(
                    a.to_ascii_lowercase().as_str(),
                    "password-cleartext" | "plain" | "secure" | "password-encrypted"
                )
            })
    }

    pub fn needs_oauth(&self) -> bool {
        !self.takes_password() && self.auth.iter().any(|a| a.eq_ignore_ascii_case("OAuth2"))
    }
}

/// The IMAP and submission servers of a file, in the provider's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Servers {
    pub imap: Vec<Server>,
    pub smtp: Vec<Server>,
    pub display_name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AutoconfigError {
    #[error("not XML: {0}")]
    Xml(String),
    #[error("not an autoconfig file (the root element is <{0}>, not <clientConfig>)")]
    NotClientConfig(String),
    #[error("the file lists no usable IMAP server{0}")]
    NoImap(String),
    #[error("the file is larger than {MAX_BYTES} bytes")]
    TooLarge,
}

/// Parses `xml` for `address` (which fills `%EMAILADDRESS%`, `%EMAILLOCALPART%`, `%EMAILDOMAIN%`).
/// Unusable entries (POP3, unknown socket types, plaintext to a remote host, bad host names or
/// ports) are skipped and listed in the error if nothing usable is left.
pub fn parse(xml: &str, address: &str) -> Result<Servers, AutoconfigError> {
    if xml.len() > MAX_BYTES {
        return Err(AutoconfigError::TooLarge);
    }
    let options = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: 10_000, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(xml, options).map_err(|e| AutoconfigError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "clientConfig" {
        return Err(AutoconfigError::NotClientConfig(truncate(root.tag_name().name())));
    }
    let mut out = Servers::default();
    let mut skipped = Vec::new();
    for provider in root.children().filter(|n| n.has_tag_name("emailProvider")) {
        if out.display_name.is_none() {
            out.display_name = child_text(provider, "displayName").map(|s| truncate(&s));
        }
        for node in provider.children().filter(|n| n.is_element()) {
            let list = match (node.tag_name().name(), node.attribute("type")) {
                ("incomingServer", Some("imap")) => &mut out.imap,
                ("outgoingServer", Some("smtp")) => &mut out.smtp,
                _ => continue,
            };
            match server(node, address) {
                Ok(s) => list.push(s),
                Err(why) => skipped.push(why),
            }
        }
    }
    if out.imap.is_empty() {
        let why = if skipped.is_empty() { String::new() } else { format!(" (skipped: {})", skipped.join("; ")) };
        return Err(AutoconfigError::NoImap(why));
    }
    Ok(out)
}

fn server(node: roxmltree::Node, address: &str) -> Result<Server, String> {
    let host = child_text(node, "hostname").ok_or("a server without hostname")?;
    let host = fill(&host, address);
    if !valid_host(&host) {
        return Err(format!("host name {:?}", truncate(&host)));
    }
    let port = child_text(node, "port").and_then(|p| p.parse::<u16>().ok()).filter(|&p| p != 0);
    let port = port.ok_or_else(|| format!("{host}: no valid port"))?;
    let security = match child_text(node, "socketType").as_deref() {
        Some("SSL") => Security::Implicit,
        Some("STARTTLS") => Security::StartTls,
        Some("plain") => Security::Plain,
        other => return Err(format!("{host}:{port}: socketType {:?}", other.map(truncate))),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if security == Security::Plain && !loopback {
        return Err(format!("{host}:{port}: no TLS"));
    }
    let username = child_text(node, "username").map(|u| fill(&u, address)).filter(|u| !u.is_empty() && u.len() <= 320);
    let auth = node
        .children()
        .filter(|n| n.has_tag_name("authentication"))
        .filter_map(|n| n.text())
        .map(|t| truncate(t.trim()))
        .collect();
    Ok(Server { host: host.to_ascii_lowercase(), port, security, username, auth })
}

fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    node.children().find(|n| n.has_tag_name(name)).and_then(|n| n.text()).map(|t| t.trim().to_string())
}

fn fill(template: &str, address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    template.replace("%EMAILADDRESS%", address).replace("%EMAILLOCALPART%", local).replace("%EMAILDOMAIN%", domain)
}

/// A DNS name or an IP address, nothing a URL or a config file could trip over.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Peer text in messages: at most 80 characters.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"<?xml version="1.0"?>
<clientConfig version="1.1">
  <emailProvider id="example.org">
    <domain>example.org</domain>
    <displayName>Example Mail</displayName>
    <incomingServer type="pop3"><hostname>pop.example.org</hostname><port>995</port><socketType>SSL</socketType></incomingServer>
    <incomingServer type="imap">
      <hostname>imap.example.org</hostname><port>993</port><socketType>SSL</socketType>
      <username>%EMAILLOCALPART%</username><authentication>password-cleartext</authentication>
    </incomingServer>
    <incomingServer type="imap">
      <hostname>imap.example.org</hostname><port>143</port><socketType>plain</socketType>
    </incomingServer>
    <outgoingServer type="smtp">
      <hostname>smtp.%EMAILDOMAIN%</hostname><port>587</port><socketType>STARTTLS</socketType>
      <username>%EMAILADDRESS%</username><authentication>OAuth2</authentication>
    </outgoingServer>
  </emailProvider>
</clientConfig>"#;

    #[test]
    fn reads_imap_and_smtp_with_placeholders() {
        let s = parse(FILE, "alice@example.org").unwrap();
        assert_eq!(s.display_name.as_deref(), Some("Example Mail"));
        assert_eq!(s.imap.len(), 1, "POP3 and remote plaintext are skipped: {:?}", s.imap);
        let imap = &s.imap[0];
        assert_eq!((imap.host.as_str(), imap.port, imap.security), ("imap.example.org", 993, Security::Implicit));
        assert_eq!(imap.username.as_deref(), Some("alice"));
        assert!(imap.takes_password() && !imap.needs_oauth());
        let smtp = &s.smtp[0];
        assert_eq!((smtp.host.as_str(), smtp.security), ("smtp.example.org", Security::StartTls));
        assert_eq!(smtp.username.as_deref(), Some("alice@example.org"));
        assert!(smtp.needs_oauth());
    }

    #[test]
    fn bad_files_say_why() {
        assert!(matches!(parse("<html><body>404</body></html>", "a@b"), Err(AutoconfigError::NotClientConfig(_))));
        assert!(matches!(parse("not xml", "a@b"), Err(AutoconfigError::Xml(_))));
        let dtd = "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><clientConfig/>";
        assert!(matches!(parse(dtd, "a@b"), Err(AutoconfigError::Xml(_))), "no DTDs, so no entity bombs");
        let hostile = r#"<clientConfig><emailProvider><incomingServer type="imap">
            <hostname>evil.example/x?</hostname><port>993</port><socketType>SSL</socketType>
            </incomingServer></emailProvider></clientConfig>"#;
        let err = parse(hostile, "a@b").unwrap_err().to_string();
        assert!(err.contains("no usable IMAP server") && err.contains("host name"), "{err}");
        let big = format!("<clientConfig>{}</clientConfig>", " ".repeat(MAX_BYTES));
        assert_eq!(parse(&big, "a@b"), Err(AutoconfigError::TooLarge));
    }
}
