//! `coi-proxy profile apple|thunderbird`: the files parse as what Apple's configuration profiles
//! and Thunderbird's autoconfig format require, and carry the proxy's settings and its CA.

use std::path::Path;
use std::process::{Command, Output};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn coi_proxy(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(dir.join("proxy.toml"))
        .args(args)
        .env("HOME", dir)
        .output()
        .unwrap()
}

fn config(dir: &Path, smtp: bool) {
    let mut text = format!(
        "state_dir = {:?}\n[listen]\nimap = \"127.0.0.1:1143\"\nimaps = \"127.0.0.1:1993\"\nsmtp = \"127.0.0.1:1587\"\n\
         smtps = \"127.0.0.1:1465\"\n[upstream]\nimap = \"imaps://imap.example.org\"\n",
        dir.join("state").display().to_string()
    );
    if smtp {
        text += "smtp = \"smtps://smtp.example.org\"\n";
    }
    std::fs::write(dir.join("proxy.toml"), text).unwrap();
}

fn dict<'a>(v: &'a plist::Value, what: &str) -> &'a plist::Dictionary {
    v.as_dictionary().unwrap_or_else(|| panic!("{what} is not a dictionary"))
}

fn string<'a>(d: &'a plist::Dictionary, key: &str) -> &'a str {
    d.get(key).and_then(plist::Value::as_string).unwrap_or_else(|| panic!("{key} missing or not a string"))
}

#[test]
fn apple_profile_has_the_account_and_the_local_ca() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), true);
    // The profile carries the daemon's CA; it makes none of its own.
    let out = coi_proxy(dir.path(), &["profile", "apple", "alice@example.org"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no state here"));
    assert!(!dir.path().join("state").exists());
    assert!(coi_proxy(dir.path(), &["cert", "create"]).status.success());
    let out = coi_proxy(dir.path(), &["profile", "apple", "alice@example.org"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let profile = plist::Value::from_reader_xml(&out.stdout[..]).expect("a property list");
    let top = dict(&profile, "the profile");
    // What every configuration profile needs (Apple's Configuration Profile Reference).
    assert_eq!(string(top, "PayloadType"), "Configuration");
    assert_eq!(top.get("PayloadVersion").and_then(plist::Value::as_signed_integer), Some(1));
    for key in ["PayloadIdentifier", "PayloadUUID", "PayloadDisplayName"] {
        assert!(!string(top, key).is_empty(), "{key}");
    }
    let payloads = top.get("PayloadContent").and_then(plist::Value::as_array).expect("PayloadContent");
    let by_type = |t: &str| {
        payloads
            .iter()
            .map(|p| dict(p, "a payload"))
            .find(|d| string(d, "PayloadType") == t)
            .unwrap_or_else(|| panic!("no {t}"))
    };
    let mut uuids: Vec<&str> = payloads.iter().map(|p| string(dict(p, "payload"), "PayloadUUID")).collect();
    uuids.push(string(top, "PayloadUUID"));
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 3, "every payload has its own UUID");

    let mail = by_type("com.apple.mail.managed");
    assert_eq!(string(mail, "EmailAccountType"), "EmailTypeIMAP");
    assert_eq!(string(mail, "EmailAddress"), "alice@example.org");
    assert_eq!(string(mail, "IncomingMailServerHostName"), "localhost");
    assert_eq!(mail.get("IncomingMailServerPortNumber").and_then(plist::Value::as_unsigned_integer), Some(1993));
    assert_eq!(mail.get("IncomingMailServerUseSSL").and_then(plist::Value::as_boolean), Some(true));
    assert_eq!(string(mail, "IncomingMailServerUsername"), "alice@example.org");
    assert_eq!(string(mail, "IncomingMailServerAuthentication"), "EmailAuthPassword");
    assert_eq!(string(mail, "OutgoingMailServerHostName"), "localhost");
    assert_eq!(mail.get("OutgoingMailServerPortNumber").and_then(plist::Value::as_unsigned_integer), Some(1465));
    assert_eq!(mail.get("OutgoingMailServerUseSSL").and_then(plist::Value::as_boolean), Some(true));
    assert!(!mail.contains_key("IncomingPassword"), "no password in the file");

    let root = by_type("com.apple.security.root");
    let der = root.get("PayloadContent").and_then(plist::Value::as_data).expect("certificate data");
    let pem = std::fs::read(dir.path().join("state/tls/ca.pem")).expect("the CA was created");
    let ca = CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(der, ca.as_ref(), "the profile carries the proxy's CA, DER-encoded");

    // The CA is the daemon's: a second profile carries the same one.
    let again = coi_proxy(dir.path(), &["profile", "apple", "alice@example.org"]);
    let again = plist::Value::from_reader_xml(&again.stdout[..]).unwrap();
    let payloads2 = dict(&again, "p").get("PayloadContent").and_then(plist::Value::as_array).unwrap();
    assert!(payloads2.iter().any(|p| dict(p, "p").get("PayloadContent").and_then(plist::Value::as_data) == Some(der)));
}

#[test]
fn thunderbird_autoconfig_has_what_thunderbird_requires() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), true);
    let out = coi_proxy(dir.path(), &["profile", "thunderbird", "alice@example.org", "--host", "box.lan"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let xml = String::from_utf8(out.stdout).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
    let root = doc.root_element();
    // Thunderbird's readFromXML: <clientConfig> with an <emailProvider id>, at least one
    // incoming and one outgoing server, each with hostname, port, socketType, username and a
    // known authentication method.
    assert_eq!(root.tag_name().name(), "clientConfig");
    assert_eq!(root.attribute("version"), Some("1.1"));
    let provider = root.children().find(|n| n.has_tag_name("emailProvider")).expect("emailProvider");
    assert_eq!(provider.attribute("id"), Some("example.org"));
    fn text<'a>(n: roxmltree::Node<'a, 'a>, tag: &str) -> &'a str {
        n.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text()).unwrap_or_else(|| panic!("<{tag}> missing"))
    }
    assert_eq!(text(provider, "domain"), "example.org");
    assert!(!text(provider, "displayName").is_empty());
    let servers = |tag: &str| provider.children().filter(|n| n.has_tag_name(tag)).collect::<Vec<_>>();
    let (incoming, outgoing) = (servers("incomingServer"), servers("outgoingServer"));
    assert_eq!(incoming.len(), 2, "SSL/TLS first, then STARTTLS");
    assert_eq!(outgoing.len(), 2);
    for (server, kind) in incoming.iter().map(|s| (s, "imap")).chain(outgoing.iter().map(|s| (s, "smtp"))) {
        assert_eq!(server.attribute("type"), Some(kind));
        assert_eq!(text(*server, "hostname"), "box.lan");
        let port: u16 = text(*server, "port").parse().expect("a port number");
        assert!(port > 0);
        assert!(["SSL", "STARTTLS", "plain"].contains(&text(*server, "socketType")));
        assert_eq!(text(*server, "username"), "alice@example.org");
        assert_eq!(text(*server, "authentication"), "password-cleartext");
    }
    assert_eq!((text(incoming[0], "port"), text(incoming[0], "socketType")), ("1993", "SSL"));
    assert_eq!((text(incoming[1], "port"), text(incoming[1], "socketType")), ("1143", "STARTTLS"));
    assert_eq!((text(outgoing[0], "port"), text(outgoing[0], "socketType")), ("1465", "SSL"));
    assert_eq!((text(outgoing[1], "port"), text(outgoing[1], "socketType")), ("1587", "STARTTLS"));

    // And setup's own autoconfig reader takes it, so one coi-proxy can hand it to another.
    let parsed = coi_proxy::cli::setup::autoconfig::parse(&xml, "alice@example.org").unwrap();
    assert_eq!((parsed.imap[0].host.as_str(), parsed.imap[0].port), ("box.lan", 1993));
}

#[test]
fn no_outgoing_server_and_unknown_logins_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), false);
    for kind in ["apple", "thunderbird"] {
        let out = coi_proxy(dir.path(), &["profile", kind, "alice@example.org"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot be sent through coi-proxy") && err.contains("coi-proxy setup alice@example.org"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    std::fs::write(dir.path().join("proxy.toml"), "[[account]]\nlogin = \"a@x.org\"\nimap = \"imaps://i.x.org\"\n")
        .unwrap();
    let out = coi_proxy(dir.path(), &["profile", "apple", "b@x.org"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no provider is configured for b@x.org"));
}
