//! The command line: help, version, config errors, `check`, `cert create`, `cert export`.

mod support;

use std::path::Path;
use std::process::{Command, Output};

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
