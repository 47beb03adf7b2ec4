//! `coi-proxy setup`: from an address and a password to a working account, against a real
//! Dovecot, a real DNS server (dnsmasq) and a local autoconfig web server; and every way it can
//! fail, each with a clear message and the config file untouched.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::net_services::{Dns, Web};
use support::provider::Provider;

const EXISTING: &str = "# my proxy\n[listen]\nimap = \"127.0.0.1:1143\"   # keep me\nimaps = \"127.0.0.1:1993\"\n\n\
    # Bob is elsewhere\n[[account]]\nlogin = \"bob@example.net\"\nimap = \"imaps://mail.example.net\"\n";

/// Runs `coi-proxy --config <config> setup <args>` with `stdin`.
fn setup(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(config)
        .arg("setup")
        .args(args)
        .env("HOME", config.parent().unwrap())
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("COI_PROXY_DNS")
        .env_remove("COI_PROXY_AUTOCONFIG_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn autoconfig(imap: (&str, u16, &str), smtp: (&str, u16, &str)) -> String {
    let server = |tag: &str, kind: &str, (host, port, socket): (&str, u16, &str)| {
        format!(
            "<{tag} type=\"{kind}\"><hostname>{host}</hostname><port>{port}</port><socketType>{socket}</socketType>\
             <username>%EMAILADDRESS%</username><authentication>password-cleartext</authentication></{tag}>"
        )
    };
    format!(
        "<?xml version=\"1.0\"?>\n<clientConfig version=\"1.1\"><emailProvider id=\"example.org\">\
         <domain>example.org</domain><displayName>Example</displayName>{}{}</emailProvider></clientConfig>\n",
        server("incomingServer", "imap", imap),
        server("outgoingServer", "smtp", smtp)
    )
}

/// `coi-proxy check`'s section on `provider`, which must say it is reachable.
fn check(config: &Path, provider: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .env("HOME", config.parent().unwrap())
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    let report = text(&out);
    let section = report.split("\n\n").find(|s| s.starts_with(provider)).unwrap_or_else(|| panic!("{report}"));
    assert!(section.contains("reachable: yes"), "{report}");
    section.to_string()
}

#[test]
fn autoconfig_then_login_then_the_account_is_added_beside_the_others() {
    let p = Provider::start();
    let web = Web::start();
    // Only the .well-known location: the first URL's 404 is passed over.
    web.put(
        "/.well-known/autoconfig/mail/config-v1.1.xml",
        &autoconfig(("localhost", p.imap_port, "STARTTLS"), ("localhost", p.smtps_port, "SSL")),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, EXISTING).unwrap();
    let ca = p.ca_cert.to_str().unwrap();
    let out = setup(
        &config,
        &["alice@example.org", "--password-stdin", "--autoconfig-url", &web.url(), "--ca-file", ca, "--timeout", "5"],
        "secret\n",
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("/mail/config-v1.1.xml: HTTP status 404"), "{said}");
    assert!(said.contains("found via autoconfig at http://127.0.0.1"), "{said}");
    assert!(said.contains(&format!("IMAP login at localhost:{} as alice@example.org: OK", p.imap_port)), "{said}");
    assert!(said.contains("SMTP login at") && said.contains("OK"), "{said}");
    assert!(!said.contains("secret"), "the password must never be shown:\n{said}");
    // The client settings at the end.
    assert!(said.contains("server localhost  port 1993  security SSL/TLS"), "{said}");
    assert!(said.contains("server localhost  port 1465  security SSL/TLS"), "{said}");

    let written = std::fs::read_to_string(&config).unwrap();
    for kept in
        ["# my proxy", "imap = \"127.0.0.1:1143\"   # keep me", "# Bob is elsewhere", "login = \"bob@example.net\""]
    {
        assert!(written.contains(kept), "lost {kept:?}:\n{written}");
    }
    assert!(written.contains(&format!("imap = \"imap+starttls://localhost:{}\"", p.imap_port)), "{written}");
    assert!(written.contains(&format!("smtp = \"smtps://localhost:{}\"", p.smtps_port)), "{written}");
    assert!(written.contains(&format!("ca_file = \"{ca}\"")), "{written}");
    check(&config, &format!("provider localhost:{} (STARTTLS)", p.imap_port));
    check(&config, &format!("submission localhost:{} (implicit TLS)", p.smtps_port));

    // Again: the same account is updated, not duplicated.
    let again = setup(&config, &["alice@example.org", "--autoconfig-url", &web.url(), "--ca-file", ca], "");
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("login not tried"), "{}", text(&again));
    let twice = std::fs::read_to_string(&config).unwrap();
    assert_eq!(twice.matches("login = \"alice@example.org\"").count(), 1, "{twice}");
}

#[test]
fn a_refused_login_writes_nothing_and_hides_the_password() {
    let p = Provider::start();
    let web = Web::start();
    web.put(
        "/mail/config-v1.1.xml",
        &autoconfig(("127.0.0.1", p.imap_port, "plain"), ("127.0.0.1", p.smtp_port, "plain")),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, EXISTING).unwrap();
    let out =
        setup(&config, &["alice@example.org", "--password-stdin", "--autoconfig-url", &web.url()], "wrong-pw-42\n");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("refused the login as alice@example.org") && said.contains("nothing was written"), "{said}");
    assert!(!said.contains("wrong-pw-42"), "{said}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), EXISTING);
    let empty = setup(&config, &["alice@example.org", "--password-stdin", "--autoconfig-url", &web.url()], "\n");
    assert!(text(&empty).contains("the password on standard input is empty"), "{}", text(&empty));
}

#[test]
fn srv_records_when_there_is_no_autoconfig() {
    let p = Provider::start();
    let web = Web::start(); // serves nothing: 404 for both autoconfig URLs
    let records = [
        format!("--srv-host=_imaps._tcp.example.org,localhost,{},0,1", p.imaps_port),
        format!("--srv-host=_submissions._tcp.example.org,localhost,{},0,1", p.smtps_port),
    ];
    let Some(dns) = Dns::start(&["example.org"], &records) else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("new/proxy.toml");
    let dns_addr = dns.addr.to_string();
    let args = [
        "alice@example.org",
        "--password-stdin",
        "--autoconfig-url",
        &web.url(),
        "--dns",
        &dns_addr,
        "--ca-file",
        p.ca_cert.to_str().unwrap(),
    ];
    let out = setup(&config, &args, "secret\n");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("found via DNS SRV records (not authenticated by DNSSEC"), "{said}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains(&format!("imap = \"imaps://localhost:{}\"", p.imaps_port)), "{written}");
    assert!(written.contains(&format!("smtp = \"smtps://localhost:{}\"", p.smtps_port)), "{written}");
    // A new file keeps the default IMAP listeners and gains the SMTP ones.
    assert!(written.contains("imaps = \"127.0.0.1:1993\"") && written.contains("smtps = \"127.0.0.1:1465\""));
    check(&config, &format!("provider localhost:{} (implicit TLS)", p.imaps_port));
}

#[test]
fn mx_host_and_table_name_the_provider_and_oauth() {
    let web = Web::start();
    let records = ["--mx-host=example.net,example-net.mail.protection.outlook.com,10".to_string()];
    let Some(dns) = Dns::start(&["example.net", "posteo.de"], &records) else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, EXISTING).unwrap();
    let dns_addr = dns.addr.to_string();
    let out =
        setup(&config, &["carol@example.net", "--dry-run", "--autoconfig-url", &web.url(), "--dns", &dns_addr], "");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("found via the MX host example-net.mail.protection.outlook.com (built-in table: Microsoft"),
        "{said}"
    );
    assert!(said.contains("needs OAuth2") && said.contains("coi-proxy oauth authorize carol@example.net"), "{said}");
    // --dry-run: the whole new config on stdout, nothing written.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("# my proxy") && printed.contains("imap = \"imaps://outlook.office365.com:993\""));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), EXISTING);

    let out = setup(&config, &["dave@posteo.de", "--dry-run", "--autoconfig-url", &web.url(), "--dns", &dns_addr], "");
    let said = text(&out);
    assert!(
        said.contains("DNS MX posteo.de: none") && said.contains("found via the built-in table (Posteo)"),
        "{said}"
    );
}

#[test]
fn nothing_found_and_timeouts_say_what_was_tried() {
    let web = Web::start();
    let Some(dns) = Dns::start(&["example.com"], &[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let dns_addr = dns.addr.to_string();
    let out = setup(&config, &["eve@example.com", "--autoconfig-url", &web.url(), "--dns", &dns_addr], "");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("found no IMAP server for example.com"), "{said}");
    for step in
        ["HTTP status 404", "DNS SRV _imaps._tcp.example.com: none", "DNS MX example.com: none", "built-in table"]
    {
        assert!(said.contains(step), "{step} missing:\n{said}");
    }
    assert!(!config.exists());

    // A web server and a DNS server that never answer: each step gives up after --timeout.
    let silent_web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (web_url, dns_addr) =
        (format!("http://{}", silent_web.local_addr().unwrap()), silent_dns.local_addr().unwrap().to_string());
    let start = Instant::now();
    let out =
        setup(&config, &["eve@example.com", "--autoconfig-url", &web_url, "--dns", &dns_addr, "--timeout", "1"], "");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("no answer within 1 s"), "{said}");
    assert!(said.contains("no DNS server answered within 1 s"), "{said}");
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());

    let bad = setup(&config, &["not-an-address"], "");
    assert!(text(&bad).contains("is not an e-mail address"), "{}", text(&bad));
    let bad = setup(&config, &["a@example.com", "--autoconfig-url", "http://example.com"], "");
    assert!(text(&bad).contains("http:// only to a loopback address"), "{}", text(&bad));
}
