//! `coi-proxy profile apple|thunderbird <login>`: files that set up a mail client in one step.
//!
//! Apple: a configuration profile (`.mobileconfig`, a property list) with an IMAP account, its
//! SMTP server and the local CA as a trusted root, the way Proton Mail Bridge sets up Apple
//! Mail; opening it on macOS or iOS installs all three. It holds no password: Mail asks for it.
//! Thunderbird: an autoconfig file (`config-v1.1.xml`, Thunderbird's own format), for a
//! Thunderbird pointed at a local file or for serving on a home server.

use plist::{Dictionary, Value};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::client_settings::{ClientSecurity, ClientSettings, Endpoint, SettingsError};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the local CA: {0}")]
    LocalCa(String),
    #[error("the local CA certificate is not valid PEM: {0}")]
    Certificate(String),
    #[error("cannot write the profile: {0}")]
    Plist(String),
}

/// `coi-proxy profile …` on the command line.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// An Apple configuration profile (.mobileconfig) for Mail on macOS and iOS: the IMAP and SMTP
    /// account and the local CA certificate; open the file to install it.
    Apple(ProfileArgs),
    /// An autoconfig file (config-v1.1.xml) in Thunderbird's format.
    Thunderbird(ProfileArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The login, as the provider knows it (usually the e-mail address).
    pub login: String,
    /// The e-mail address, if the login is not one.
    #[arg(long)]
    pub address: Option<String>,
    /// The name clients connect to (default: localhost for a loopback listener, this machine's
    /// name for 0.0.0.0); the local certificate must cover it (`coi-proxy check` lists the names).
    #[arg(long)]
    pub host: Option<String>,
}

/// Builds the requested profile under `config`, with the local CA of its state directory.
pub fn run(config: &crate::config::Config, command: &ProfileCommand) -> Result<Vec<u8>, ProfileError> {
    let (ProfileCommand::Apple(args) | ProfileCommand::Thunderbird(args)) = command;
    let settings = ClientSettings::for_login(config, &args.login, args.host.as_deref())?;
    let address = args.address.as_deref().unwrap_or(&args.login);
    match command {
        ProfileCommand::Apple(_) => {
            // The settings' own errors first: they say what to configure.
            settings.require_smtp()?;
            apple(&settings, address, &local_ca(config)?)
        }
        ProfileCommand::Thunderbird(_) => thunderbird(&settings, address).map(String::into_bytes),
    }
}

/// The local CA as PEM. Only read, as by `cert export`: a CA made here in a state directory the
/// daemon does not use would be one the clients trust in vain.
fn local_ca(config: &crate::config::Config) -> Result<String, ProfileError> {
    let state = &config.state_dir;
    let ca = || -> Result<String, String> {
        let exists = crate::state::existing(state).map_err(|e| e.to_string())?.is_some();
        if !exists || !crate::tls::LocalCertPaths::new(state).ca.exists() {
            let what = if exists { "has no local certificate authority (tls/ca.pem)" } else { "does not exist" };
            return Err(crate::state::no_state_here(state, what)
                + "; the daemon makes it at its first start, `coi-proxy cert create` now");
        }
        crate::tls::export_pem(state).map_err(|e| e.to_string())
    };
    ca().map_err(ProfileError::LocalCa)
}

/// The Apple configuration profile for `settings`, trusting `ca_pem` (the local CA).
pub fn apple(settings: &ClientSettings, address: &str, ca_pem: &str) -> Result<Vec<u8>, ProfileError> {
    let smtp = settings.require_smtp()?;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| ProfileError::Certificate(e.to_string()))?;
    let id = format!("org.coi-proxy.{}", reverse_dns_safe(&settings.login));
    let imap = &settings.imap[0];
    let smtp = &smtp[0];

    let mut mail = payload("com.apple.mail.managed", &format!("{id}.mail"), &format!("Mail via coi-proxy ({address})"));
    let mut put = |k: &str, v: Value| {
        mail.insert(k.to_string(), v);
    };
    put("EmailAccountType", "EmailTypeIMAP".into());
    put("EmailAccountDescription", format!("{address} (coi-proxy)").into());
    put("EmailAddress", address.into());
    put("IncomingMailServerAuthentication", "EmailAuthPassword".into());
    put("IncomingMailServerHostName", imap.host.clone().into());
    put("IncomingMailServerPortNumber", Value::Integer(u64::from(imap.port).into()));
    put("IncomingMailServerUseSSL", uses_ssl(imap).into());
    put("IncomingMailServerUsername", settings.login.clone().into());
    put("OutgoingMailServerAuthentication", "EmailAuthPassword".into());
    put("OutgoingMailServerHostName", smtp.host.clone().into());
    put("OutgoingMailServerPortNumber", Value::Integer(u64::from(smtp.port).into()));
    put("OutgoingMailServerUseSSL", uses_ssl(smtp).into());
    put("OutgoingMailServerUsername", settings.login.clone().into());
    put("OutgoingPasswordSameAsIncomingPassword", true.into());

    let mut root = payload("com.apple.security.root", &format!("{id}.ca"), "coi-proxy local certificate authority");
    root.insert("PayloadCertificateFileName".into(), "coi-proxy-ca.cer".into());
    root.insert("PayloadContent".into(), Value::Data(ca.as_ref().to_vec()));

    let mut profile = payload("Configuration", &id, &format!("coi-proxy: {address}"));
    profile.insert(
        "PayloadDescription".into(),
        format!(
            "Sets up {address} in Mail through coi-proxy on {} and trusts coi-proxy's local certificate \
             authority for it. Mail asks for the provider's password.",
            imap.host
        )
        .into(),
    );
    profile.insert("PayloadOrganization".into(), "coi-proxy".into());
    profile.insert("PayloadRemovalDisallowed".into(), false.into());
    profile.insert("PayloadContent".into(), Value::Array(vec![Value::Dictionary(root), Value::Dictionary(mail)]));

    let mut out = Vec::new();
    Value::Dictionary(profile).to_writer_xml(&mut out).map_err(|e| ProfileError::Plist(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// The fields every payload carries; a fresh UUID each time, the identifier stable so that
/// installing a newer profile replaces the old one.
fn payload(kind: &str, identifier: &str, name: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), kind.into());
    d.insert("PayloadIdentifier".into(), identifier.into());
    d.insert("PayloadUUID".into(), uuid_v4().into());
    d.insert("PayloadVersion".into(), Value::Integer(1.into()));
    d.insert("PayloadDisplayName".into(), name.into());
    d
}

fn uses_ssl(e: &Endpoint) -> bool {
    e.security == ClientSecurity::Tls
}

/// `alice@example.org` as an identifier component: letters, digits, `-` and `.` only.
fn reverse_dns_safe(login: &str) -> String {
    login.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the operating system's random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Thunderbird's autoconfig XML (clientConfig 1.1) for `settings`.
pub fn thunderbird(settings: &ClientSettings, address: &str) -> Result<String, ProfileError> {
    let smtp = settings.require_smtp()?;
    let domain = address.rsplit_once('@').map_or(address, |(_, d)| d);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n");
    x += &format!("  <emailProvider id=\"{}\">\n", esc(domain));
    x += &format!("    <domain>{}</domain>\n", esc(domain));
    x += &format!("    <displayName>{} via coi-proxy</displayName>\n", esc(address));
    x += "    <displayShortName>coi-proxy</displayShortName>\n";
    let server = |tag: &str, kind: &str, e: &Endpoint| {
        let socket = match e.security {
            ClientSecurity::Tls => "SSL",
            ClientSecurity::StartTls => "STARTTLS",
        };
        format!(
            "    <{tag} type=\"{kind}\">\n      <hostname>{}</hostname>\n      <port>{}</port>\n      \
             <socketType>{socket}</socketType>\n      <username>{}</username>\n      \
             <authentication>password-cleartext</authentication>\n    </{tag}>\n",
            esc(&e.host),
            e.port,
            esc(&settings.login)
        )
    };
    for e in &settings.imap {
        x += &server("incomingServer", "imap", e);
    }
    for e in smtp {
        x += &server("outgoingServer", "smtp", e);
    }
    x += "  </emailProvider>\n</clientConfig>\n";
    Ok(x)
}

/// XML text and attribute escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (uuid_v4(), uuid_v4());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "A" | "B"), "{a}");
    }

    #[test]
    fn escaping_and_identifiers() {
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(reverse_dns_safe("a.b+c@ex.org"), "a.b-c-ex.org");
    }
}
