//! The command line: help, version, config errors, `check`, `cert create`, `cert export`.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::provider::Provider;

fn coi_proxy(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("COI_PROXY_CONFIG")
        .output()
        .expect("run coi-proxy")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let help = coi_proxy(&["--help"], dir.path());
    assert!(help.status.success());
    let help = text(&help);
    for word in ["run", "check", "cert", "Examples:", "--upstream imaps://"] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
    let version = text(&coi_proxy(&["--version"], dir.path()));
    assert_eq!(version.trim(), format!("coi-proxy {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_config_error_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.toml"), "[listen]\nimap = \"127.0.0.1:1143\"\nimapp = \"x\"\n").unwrap();
    // Found through the default lookup (./proxy.toml).
    let out = coi_proxy(&["run"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(msg.contains("proxy.toml:3:1: listen.imapp: unknown field `imapp`"), "{msg}");
    let out = coi_proxy(&["--config", "missing.toml", "check"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot read missing.toml"), "{}", text(&out));
}

#[test]
fn run_without_a_provider_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = coi_proxy(&["run"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("pass --upstream imaps://"), "{}", text(&out));
    let out = coi_proxy(&["--upstream", "imap://mail.example.org", "run"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("loopback"), "{}", text(&out));
    // Said once, naming the option, not the option and a key.
    assert!(text(&out).starts_with("coi-proxy: --upstream: `imap://"), "{}", text(&out));
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));
}

#[test]
fn check_reports_reachable_and_unreachable_providers() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[[account]]\ndomain = \"down.example\"\nimap = \"imap://127.0.0.1:{closed}\"\n",
        provider.imap_port
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let out = coi_proxy(&["check"], dir.path());
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("config: proxy.toml (valid)"), "{report}");
    assert!(
        report.contains(&format!("provider 127.0.0.1:{} (plain (loopback))\n  reachable: yes", provider.imap_port)),
        "{report}"
    );
    assert!(report.contains("capabilities before login: IMAP4rev1"), "{report}");
    assert!(report.contains(&format!("reachable: NO: connection refused by 127.0.0.1:{closed}")), "{report}");
    assert!(report.contains("hint: nothing listens there"), "{report}");
    for line in [
        "listen imap: 127.0.0.1:1143 (plain, STARTTLS offered; login before STARTTLS allowed)",
        "listen imaps: 127.0.0.1:1993 (implicit TLS)",
        "listen metrics: off",
        "local certificate: no state here",
        "queue: no state here",
        "coi-proxy adds: COI",
        "    COI: served by coi-proxy",
        "    COI beyond the spec (deliberate): mail already in INBOX is filtered",
        "([coi] chat_clients: Delta Chat) see COI/Chats when they select INBOX under active",
        "    METADATA: ",
        "    IDLE: native (relayed to the provider)",
        "    WEBPUSH",
    ] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }

    // With a submission server, and everything reachable.
    std::fs::write(
        dir.path().join("proxy.toml"),
        format!(
            "[upstream]\nimap = \"imap://127.0.0.1:{}\"\nsmtp = \"smtp://127.0.0.1:{}\"\n",
            provider.imap_port, provider.smtp_port
        ),
    )
    .unwrap();
    let out = coi_proxy(&["check"], dir.path());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("submission 127.0.0.1:{} (plain (loopback))\n  reachable: yes", provider.smtp_port)),
        "{report}"
    );
    assert!(report.contains("  offers: SIZE"), "{report}");
    assert!(!report.contains("secret"), "{report}");
}

#[test]
fn cert_export_writes_the_ca_the_daemon_uses() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = coi_proxy(&["--state-dir", state.to_str().unwrap(), "cert", "create"], dir.path());
    assert!(out.status.success() && text(&out).contains("created the local CA"), "{}", text(&out));
    let out = coi_proxy(&["--state-dir", state.to_str().unwrap(), "cert", "export", "ca.pem"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let exported = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert!(exported.starts_with("-----BEGIN CERTIFICATE-----"), "{exported}");
    assert_eq!(exported, std::fs::read_to_string(state.join("tls/ca.pem")).unwrap());
    // To stdout, and stable across calls.
    let out = coi_proxy(&["--state-dir", state.to_str().unwrap(), "cert", "export"], dir.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout), exported);
}

#[test]
fn cert_install_dry_run_says_what_it_would_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".thunderbird/p.default")).unwrap();
    std::fs::write(dir.path().join(".thunderbird/p.default/cert9.db"), b"").unwrap();
    let state = dir.path().join("state");
    let out = coi_proxy(&["--state-dir", state.to_str().unwrap(), "cert", "create"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let out = coi_proxy(&["--state-dir", state.to_str().unwrap(), "cert", "install", "--dry-run"], dir.path());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let ca = state.join("tls/ca.pem");
    // What applies depends on the machine (root or not, certutil or not); each names the CA file
    // and Windows gets its command.
    assert!(report.contains(ca.to_str().unwrap()), "{report}");
    assert!(report.contains("certutil -user -addstore Root"), "{report}");
    if cfg!(target_os = "linux") && !report.contains("would copy the CA to") {
        assert!(report.contains(".thunderbird/p.default"), "the user's Thunderbird profile is found:\n{report}");
    }
}

/// `check` with `config` as ./proxy.toml: exit code and report.
fn check_with(dir: &Path, config: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    let out = coi_proxy(&["check"], dir);
    (out.status.code(), text(&out))
}

#[test]
fn check_refuses_what_run_and_reload_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start();
    let upstream = format!("[upstream]\nimap = \"imap://127.0.0.1:{}\"\n", provider.imap_port);

    // Only a metrics listener: `run` refuses to start without an IMAP listener.
    let (code, report) = check_with(dir.path(), &format!("{upstream}[listen]\nmetrics = \"127.0.0.1:9143\"\n"));
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("run would refuse") && report.contains("no listener configured"), "{report}");

    // An invalid log filter is a configuration error, as it is for run and a reload.
    let (code, report) = check_with(dir.path(), &format!("{upstream}[log]\nfilter = \"coi_proxy=[\"\n"));
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("log.filter") && report.contains("not a log filter"), "{report}");

    // A ca_file that is missing or holds no certificate, although this provider is plain.
    for (content, expected) in [(None, "cannot read"), (Some("garbage\n"), "no PEM certificate")] {
        let ca = dir.path().join("provider-ca.pem");
        let _ = std::fs::remove_file(&ca);
        if let Some(content) = content {
            std::fs::write(&ca, content).unwrap();
        }
        let config = format!("{upstream}ca_file = {:?}\n", ca.display().to_string());
        let (code, report) = check_with(dir.path(), &config);
        assert_eq!(code, Some(1), "{report}");
        assert!(report.contains("ca_file") && report.contains(expected), "{expected}: {report}");
    }
}

#[test]
fn check_runs_each_password_command_and_logs_in_without_showing_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start();
    let account =
        |login: &str, command: &str| format!("[[account]]\nlogin = \"{login}\"\npassword_command = {command:?}\n");
    let config = format!(
        "[upstream]\nimap = \"imap://127.0.0.1:{}\"\nsmtp = \"smtp://127.0.0.1:{}\"\n{}{}{}\
         [[account]]\ndomain = \"example.net\"\nimap = \"imap://127.0.0.1:{}\"\n",
        provider.imap_port,
        provider.smtp_port,
        account("alice@example.org", "echo secret"),
        account("bob@example.org", "echo Wr0ng-Pw-77"),
        account("carol@example.org", "echo Leaked-On-Stderr >&2; exit 3"),
        provider.imap_port,
    );
    let (code, report) = check_with(dir.path(), &config);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("account alice@example.org: password_command ok"), "{report}");
    assert!(report.contains(&format!("login at 127.0.0.1:{}: accepted", provider.imap_port)), "{report}");
    assert!(report.contains(&format!("login at submission 127.0.0.1:{}: accepted", provider.smtp_port)), "{report}");
    assert!(report.contains("account bob@example.org: password_command ok") && report.contains("REFUSED"), "{report}");
    assert!(report.contains("account carol@example.org: password_command FAILED: exited with"), "{report}");
    assert!(!report.contains("Wr0ng") && !report.contains("Leaked"), "{report}");
    // Each route: which servers a login or domain goes to.
    assert!(report.contains(&format!("route domain example.net: imap 127.0.0.1:{}", provider.imap_port)), "{report}");
    assert!(report.contains("route any other login: imap"), "{report}");
}

/// `check` against one IMAP or submission URL (with an optional ca_file): its report and how
/// long it took.
fn check_url(dir: &Path, provider: &Provider, imap: &str, smtp: Option<&str>, ca: bool) -> (String, Duration) {
    let mut config = format!("[upstream]\nimap = {imap:?}\n");
    if let Some(smtp) = smtp {
        config.push_str(&format!("smtp = {smtp:?}\n"));
    }
    if ca {
        config.push_str(&format!("ca_file = {:?}\n", provider.ca_cert.display().to_string()));
    }
    let started = Instant::now();
    let (_, report) = check_with(dir, &config);
    (report, started.elapsed())
}

/// The hint line under `what` (e.g. `provider 127.0.0.1:993`) in a check report.
fn hint_for(report: &str, what: &str) -> String {
    let block = report.split("\n\n").find(|b| b.starts_with(what)).unwrap_or_else(|| panic!("{what}: {report}"));
    block.lines().find(|l| l.trim_start().starts_with("hint:")).unwrap_or("").to_string()
}

#[test]
fn check_diagnoses_every_wrong_tls_mode_quickly_and_points_at_the_right_fix() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start();
    let (imap, imaps, smtp, smtps) = (provider.imap_port, provider.imaps_port, provider.smtp_port, provider.smtps_port);

    // STARTTLS configured, the port speaks TLS from the first byte: said at once, not after 15 s.
    let (report, took) = check_url(
        dir.path(),
        &provider,
        &format!("imap+starttls://127.0.0.1:{imaps}"),
        Some(&format!("smtp+starttls://127.0.0.1:{smtps}")),
        true,
    );
    assert!(took < Duration::from_secs(8), "took {took:?}:\n{report}");
    for what in [format!("provider 127.0.0.1:{imaps}"), format!("submission 127.0.0.1:{smtps}")] {
        let hint = hint_for(&report, &what);
        assert!(hint.contains("speaks TLS from the first byte") && hint.contains("s://"), "{what}: {hint}\n{report}");
    }
    assert!(hint_for(&report, &format!("provider 127.0.0.1:{imaps}")).contains("imaps://"), "{report}");
    assert!(hint_for(&report, &format!("submission 127.0.0.1:{smtps}")).contains("smtps://"), "{report}");
    assert!(!report.contains("timed out connecting"), "{report}");

    // Implicit TLS configured, the port speaks plain text first.
    let (report, _) = check_url(
        dir.path(),
        &provider,
        &format!("imaps://127.0.0.1:{imap}"),
        Some(&format!("smtps://127.0.0.1:{smtp}")),
        true,
    );
    let hint = hint_for(&report, &format!("provider 127.0.0.1:{imap}"));
    assert!(hint.contains("imap+starttls://"), "{hint}\n{report}");
    let hint = hint_for(&report, &format!("submission 127.0.0.1:{smtp}"));
    assert!(hint.contains("smtp+starttls://"), "{hint}\n{report}");

    // An untrusted certificate and a certificate for another host: no scheme hint.
    let (report, _) = check_url(dir.path(), &provider, &format!("imaps://127.0.0.1:{imaps}"), None, false);
    let hint = hint_for(&report, &format!("provider 127.0.0.1:{imaps}"));
    assert!(hint.contains("ca_file") && !hint.contains("scheme") && !hint.contains("://"), "{hint}\n{report}");
    // The provider's certificate covers localhost and 127.0.0.1; reached as 127.0.0.2 it names
    // another host.
    let other_name = forward("127.0.0.2", imaps);
    let (report, _) = check_url(dir.path(), &provider, &format!("imaps://127.0.0.2:{other_name}"), None, true);
    let hint = hint_for(&report, &format!("provider 127.0.0.2:{other_name}"));
    assert!(hint.contains("host name") && !hint.contains("://"), "{hint}\n{report}");
}

#[test]
fn a_password_in_an_upstream_url_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let out = coi_proxy(&["--upstream", "imaps://alice:Pw-Secret-9@imap.example.org", "run"], dir.path());
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(!msg.contains("Pw-Secret-9") && !msg.contains("alice:"), "{msg}");
    assert!(msg.contains("user name or password") && msg.starts_with("coi-proxy: --upstream: "), "{msg}");
    std::fs::write(dir.path().join("proxy.toml"), "[upstream]\nimap = \"imaps://bob:Pw-Secret-9@imap.example.org\"\n")
        .unwrap();
    let out = coi_proxy(&["check"], dir.path());
    assert!(!text(&out).contains("Pw-Secret-9") && text(&out).contains("upstream.imap"), "{}", text(&out));
}

/// A TCP forwarder from a port on `ip` to 127.0.0.1:`target`, for reaching a server by another
/// address; lives as long as the test process.
fn forward(ip: &str, target: u16) -> u16 {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
            for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

/// check says how soon the account worker follows a COI setting changed by another device or
/// proxy instance.
#[test]
fn check_tells_how_soon_coi_settings_changed_elsewhere_count() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let config =
        format!("[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[coi]\nconfig_check_secs = 7\n", provider.imap_port);
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let report = text(&coi_proxy(&["check"], dir.path()));
    assert!(report.contains("in METADATA): followed within 7 s ([coi] config_check_secs)\n"), "{report}");
}
