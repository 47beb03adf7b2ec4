//! Operations: the shipped service files, systemd readiness, reload, certificate renewal,
//! metrics and the protocol trace.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `systemd-analyze`, or `None` with a note on stderr (the test then checks nothing).
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (apt-get install systemd); the unit files were not checked"
        );
    }
    found.then_some("systemd-analyze")
}

/// A copy of a unit file in `dir` whose `ExecStart` names the freshly built binary (verify
/// insists that the executable exists).
fn unit_copy(dir: &Path, unit: &str, binary_in_unit: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo(unit)).unwrap();
    assert!(text.contains(binary_in_unit), "{unit} no longer starts {binary_in_unit}");
    let path = dir.join("coi-proxy.service");
    std::fs::write(&path, text.replace(binary_in_unit, env!("CARGO_BIN_EXE_coi-proxy"))).unwrap();
    path
}

fn analyze(args: &[&str], unit: &Path, runtime_dir: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The number after "Overall exposure level for …:".
fn exposure(report: &str) -> f64 {
    let line = report.lines().find(|l| l.contains("Overall exposure level")).expect("exposure line");
    line.rsplit(": ").next().unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn system_unit_verifies_clean_and_is_hardened() {
    let Some(_) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), "systemd/coi-proxy.service", "/usr/local/bin/coi-proxy");
    let (ok, out) = analyze(&["verify"], &unit, dir.path());
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify:\n{out}");
    let (_, out) = analyze(&["security", "--offline=true"], &unit, dir.path());
    let level = exposure(&out);
    eprintln!("system unit exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes", "StateDirectory=coi-proxy"] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
}

#[test]
fn user_unit_verifies_clean() {
    let Some(_) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), "systemd/user/coi-proxy.service", "%h/.cargo/bin/coi-proxy");
    let (ok, out) = analyze(&["--user", "verify"], &unit, dir.path());
    assert!(ok && out.trim().is_empty(), "systemd-analyze --user verify:\n{out}");
}

#[test]
fn launchd_plist_is_a_valid_property_list() {
    let plist = repo("launchd/org.coi-proxy.plist");
    let check = "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); \
                 assert p['Label']=='org.coi-proxy'; assert p['ProgramArguments'][-1]=='run'; print('ok')";
    match Command::new("python3").arg("-c").arg(check).arg(&plist).output() {
        Ok(out) => {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr))
        }
        Err(_) => eprintln!("SKIPPED: python3 is not installed; the plist was not parsed"),
    }
}

/// Collects the datagrams the daemon sends to `$NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        NotifySocket { socket, _dir: dir, path }
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
fn tells_systemd_when_ready_reloading_and_stopping() {
    let provider_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let notify = NotifySocket::new();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{provider_port}"))
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .start();
    assert!(notify.next().starts_with("READY=1\n"));
    support::proxy::signal(proxy.pid(), 1);
    assert!(notify.next().starts_with("RELOADING=1\n"));
    assert!(notify.next().starts_with("READY=1\n"));
    proxy.stop();
    assert!(notify.next().starts_with("STOPPING=1\n"));
}

/// Waits until `count` lines of the log contain `needle`.
fn wait_for_count(proxy: &Proxy, needle: &str, count: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = proxy.log();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "log never showed {needle:?} {count} times:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn sighup_reloads_providers_and_listeners_and_refuses_a_broken_config() {
    let old = Provider::start();
    let new = Provider::start_with(ProviderOptions { password: Some("new-secret".into()), ..Default::default() });
    let account =
        |port: u16| format!("[[account]]\nlogin = \"alice@example.org\"\nimap = \"imap://127.0.0.1:{port}\"\n");
    let notify = NotifySocket::new();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", old.imap_port))
        .extra(&account(old.imap_port))
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .start();
    assert!(notify.next().starts_with("READY=1\n"));
    let mut before = proxy.connect();
    before.login("alice@example.org", "secret");
    before.expect_ok("b1 SELECT INBOX");

    // alice moves to the new provider; bob stays on [upstream].
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(&proxy.config_path, config.replace(&account(old.imap_port), &account(new.imap_port))).unwrap();
    support::proxy::signal(proxy.pid(), 1);
    assert!(notify.next().starts_with("RELOADING=1\n"));
    assert!(notify.next().starts_with("READY=1\n"));
    let log = wait_for_count(&proxy, "configuration reloaded", 1);
    assert!(log.contains("providers changed"), "{log}");
    let mut c = proxy.connect();
    assert!(c.command("a LOGIN alice@example.org secret").last().unwrap().starts_with("a NO"));
    // A refused login puts the account under a 1 s back-off (src/limits/logins.rs).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.login("alice@example.org", "new-secret");
    proxy.connect().login("bob@example.org", "secret");
    // The session from before the reload is still on the old provider, on the same listener.
    before.expect_ok("b2 NOOP");

    // A broken file is refused; the daemon goes on with the configuration in force.
    std::fs::write(&proxy.config_path, "[listen\nimap = ").unwrap();
    support::proxy::signal(proxy.pid(), 1);
    let log = wait_for_count(&proxy, "configuration reload refused", 1);
    assert!(log.contains("the previous configuration stays in force"), "{log}");
    proxy.connect().login("alice@example.org", "new-secret");
    before.expect_ok("b3 NOOP");

    // A listener whose address changed is restarted; the other one keeps its port.
    let port = free_port();
    let moved = config
        .replace(&account(old.imap_port), &account(new.imap_port))
        .replace("imap = \"127.0.0.1:0\"", &format!("imap = \"127.0.0.1:{port}\""));
    std::fs::write(&proxy.config_path, moved).unwrap();
    support::proxy::signal(proxy.pid(), 1);
    let log = wait_for_count(&proxy, "configuration reloaded", 2);
    assert!(log.contains(&format!("imap listener on 127.0.0.1:{port} started")), "{log}");
    support::imap_client::ImapClient::connect(port).login("alice@example.org", "new-secret");
    proxy.connect_tls().login("bob@example.org", "secret");
    // The old plain listener is closed, but its session goes on.
    assert!(std::net::TcpStream::connect(("127.0.0.1", proxy.imap_port)).is_err());
    before.expect_ok("b4 NOOP");
}

#[test]
fn a_certificate_near_expiry_is_replaced_at_start() {
    let mut proxy = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", free_port())).start();
    let state = proxy.state_dir.path().join("state");
    let cert = state.join("tls/cert.pem");
    let (first_cert, first_ca) = (std::fs::read(&cert).unwrap(), std::fs::read(proxy.ca_path()).unwrap());
    proxy.stop();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    coi_proxy::tls::set_recorded_expiry(&state, soon).unwrap();
    proxy.restart();
    let log = proxy.wait_for_log("renewed the local certificate", Duration::from_secs(5));
    assert!(log.contains(&format!("it expires on {}, within 30 days", soon.date())), "{log}");
    assert_ne!(std::fs::read(&cert).unwrap(), first_cert, "a new leaf");
    assert_eq!(std::fs::read(proxy.ca_path()).unwrap(), first_ca, "under the CA the clients trust");
    // Clients that trust the CA accept the renewed certificate.
    let mut c = proxy.connect_tls();
    c.expect_ok("t1 CAPABILITY");
}

/// One HTTP GET to the metrics listener: status line and body.
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one sample line (`name{labels}`) in a Prometheus exposition.
fn sample(metrics: &str, series: &str) -> f64 {
    let line = metrics.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
    line.unwrap_or_else(|| panic!("{series} missing:\n{metrics}")).rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn healthz_and_metrics_follow_a_session() {
    let provider = Provider::start();
    let closed = free_port();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .listen("metrics = \"127.0.0.1:0\"")
        .extra(&format!("[[account]]\ndomain = \"down.example\"\nimap = \"imap://127.0.0.1:{closed}\"\n"))
        .start();
    assert_ne!(proxy.metrics_port, 0);
    assert_eq!(http_get(proxy.metrics_port, "/healthz"), ("HTTP/1.1 200 OK".into(), "ok\n".into()));
    assert!(http_get(proxy.metrics_port, "/nothing").0.contains("404"));

    let (status, before) = http_get(proxy.metrics_port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(before.contains("# TYPE coi_proxy_sessions_total counter"), "{before}");
    assert_eq!(sample(&before, "coi_proxy_queue_depth"), 0.0);

    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.expect_ok("m1 SELECT INBOX");
    c.expect_ok("m2 NOOP");
    let (_, during) = http_get(proxy.metrics_port, "/metrics");
    assert_eq!(sample(&during, "coi_proxy_sessions_open{listener=\"imap\"}"), 1.0, "{during}");
    assert!(sample(&during, "coi_proxy_commands_relayed_total") >= 2.0, "{during}");
    // A login whose provider is down.
    let no = proxy.connect().command("x LOGIN carol@down.example secret");
    assert!(no.last().unwrap().starts_with("x NO [UNAVAILABLE]"), "{no:?}");
    c.expect_ok("m3 LOGOUT");
    drop(c);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, after) = http_get(proxy.metrics_port, "/metrics");
        if sample(&after, "coi_proxy_sessions_open{listener=\"imap\"}") == 0.0 || std::time::Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(sample(&after, "coi_proxy_sessions_open{listener=\"imap\"}"), 0.0, "{after}");
    assert_eq!(sample(&after, "coi_proxy_sessions_total{listener=\"imap\"}"), 2.0, "{after}");
    assert_eq!(
        sample(&after, "coi_proxy_provider_connect_failures_total{protocol=\"imap\",cause=\"refused\"}"),
        1.0,
        "{after}"
    );
    assert!(sample(&after, "coi_proxy_bytes_total{direction=\"from_client\"}") > 0.0, "{after}");
    assert!(sample(&after, "coi_proxy_bytes_total{direction=\"from_provider\"}") > 0.0, "{after}");
}

#[test]
fn protocol_trace_hides_passwords_sasl_payloads_and_bodies() {
    use base64::Engine;
    let password = "Tr4ce-pw-9z";
    let body = "The quick brown body text 4711";
    let provider = Provider::start_with(ProviderOptions { password: Some(password.into()), ..Default::default() });
    let message = format!("From: bob@example.org\r\nTo: alice@example.org\r\nSubject: traced\r\n\r\n{body}\r\n");
    provider.deliver("bob@example.org", "alice@example.org", message.as_bytes());
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .arg("--trace-protocol")
        .log("info")
        .start();
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.org\0{password}"));

    let mut c = proxy.connect();
    c.login("alice@example.org", password);
    c.expect_ok("t1 SELECT INBOX");
    let fetched = c.expect_ok("t2 FETCH 1 (BODY[])");
    assert!(fetched.concat().contains(body), "{fetched:?}");
    c.expect_ok(&format!("t3 SEARCH SUBJECT \"{}\"", "y".repeat(400)));
    let mut c = proxy.connect();
    assert!(c.command(&format!("a AUTHENTICATE PLAIN {plain}")).last().unwrap().starts_with("a OK"));
    let mut c = proxy.connect();
    c.send_raw(b"b AUTHENTICATE PLAIN\r\n");
    assert!(c.read_line().starts_with('+'));
    c.send_raw(format!("{plain}\r\n").as_bytes());
    assert!(c.read_line().starts_with("b OK"));

    let log = proxy.log();
    for expected in [
        "C: L1 LOGIN [redacted]",
        "C: a AUTHENTICATE PLAIN [redacted]",
        "C: b AUTHENTICATE PLAIN",
        "C: [redacted] (AUTHENTICATE data)",
        "C: t2 FETCH 1 (BODY[])",
        "[literal data omitted]",
        "more characters]",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from the trace:\n{log}");
    }
    assert!(log.lines().any(|l| l.contains("S: * 1 FETCH (") && l.contains("BODY[] {")), "{log}");
    for secret in [password, plain.as_str(), body] {
        assert!(!log.contains(secret), "{secret:?} found in the trace:\n{log}");
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_session_fields() {
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .arg("--log-format")
        .arg("json")
        .log("info")
        .start();
    proxy.connect().login("alice@example.org", "secret");
    let log = proxy.wait_for_log("logged in", Duration::from_secs(5));
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string()), "{log}");
    let login = lines.iter().find(|l| l["message"] == "logged in").unwrap();
    assert_eq!(login["level"], "INFO");
    assert_eq!(login["spans"][0]["name"], "session");
    assert_eq!(login["spans"][0]["login"], "alice@example.org");
    assert!(login["spans"][0]["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{login}");
}

/// Every key the configuration accepts, per table, read from the parser itself: an unknown
/// key's error lists the expected ones (every table is `deny_unknown_fields`).
/// The configuration's tables ("" is the top level; `account` is `[[account]]`).
const CONFIG_TABLES: &[&str] = &[
    "",
    "listen",
    "upstream",
    "coi",
    "limits",
    "queue",
    "push",
    "deltachat",
    "autocrypt",
    "log",
    "cluster",
    "account",
];

fn config_keys() -> Vec<(String, Vec<String>)> {
    let tables = CONFIG_TABLES.iter().map(|t| if *t == "account" { "[account]" } else { t });
    let mut out = Vec::new();
    for table in tables.chain(["account.oauth2"]) {
        let text = match table {
            "" => "no_such_key = 1\n".to_string(),
            "[account]" => "[[account]]\nno_such_key = 1\n".to_string(),
            "account.oauth2" => "[[account]]\nlogin = \"a@b\"\n[account.oauth2]\nno_such_key = 1\n".to_string(),
            t => format!("[{t}]\nno_such_key = 1\n"),
        };
        let err = coi_proxy::config::Config::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        // serde: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
        let expected = err.split("expected ").nth(1).unwrap_or_else(|| panic!("{table}: {err}"));
        let expected = expected.trim_start_matches("one of ").replace(" or ", ", ");
        let keys = expected.split(", ").map(|k| k.trim_matches(|c: char| c == '`' || c.is_whitespace()).to_string());
        out.push((table.trim_matches(|c| c == '[' || c == ']').to_string(), keys.collect()));
    }
    out
}

#[test]
fn every_config_key_is_documented_in_readme_and_proxy_toml() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let reference = readme.split("## Configuration reference").nth(1).expect("README has a Configuration reference");
    let example = std::fs::read_to_string(repo("proxy.toml")).unwrap();
    let mut missing = Vec::new();
    for (table, keys) in config_keys() {
        for key in keys {
            if (table.is_empty() && CONFIG_TABLES.contains(&key.as_str())) || (table == "account" && key == "oauth2") {
                continue; // a table, not a key
            }
            let name = if table.is_empty() { key.clone() } else { format!("{table}.{key}") };
            // `key` in a list, or `[table] key` at the start of a row.
            if !reference.contains(&format!("`{key}`")) && !reference.contains(&format!("] {key}`")) {
                missing.push(format!("README: {name}"));
            }
            let in_example = example.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            });
            if !in_example {
                missing.push(format!("proxy.toml: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "configuration keys not documented:\n{}", missing.join("\n"));
}

/// Crates with a published advisory that has no fixed version stay out of the build (SECURITY.md,
/// "Dependencies"): a stand-in for `cargo deny`'s ban list, which needs no network. `rsa` is
/// allowed only as rPGP's dependency (for peers' public RSA keys; the gateway refuses RSA secret
/// keys, tested in `openpgp::key`), and nothing else may bring it in.
#[test]
fn crates_with_unfixed_advisories_stay_out_of_the_lock_file() {
    let lock = std::fs::read_to_string(repo("Cargo.lock")).unwrap();
    let banned: [(&str, &str, &[&str]); 1] =
        [("rsa", "RUSTSEC-2023-0071, Marvin timing attack, no fixed version", &["pgp"])];
    for (name, why, allowed_dependents) in banned {
        let dependents: Vec<&str> = lock
            .split("\n[[package]]\n")
            .filter(|p| {
                p.lines().skip_while(|l| !l.starts_with("dependencies = [")).any(|l| {
                    let l = l.trim().trim_end_matches(',').trim_matches('"');
                    l == name || l.starts_with(&format!("{name} "))
                })
            })
            .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("name = \"")).map(|n| n.trim_end_matches('"')))
            .collect();
        if lock.contains(&format!("\nname = \"{name}\"\n")) {
            assert!(!dependents.is_empty(), "{name} is in Cargo.lock but no dependent was found: the check is broken");
        }
        let unexpected: Vec<&&str> = dependents.iter().filter(|d| !allowed_dependents.contains(d)).collect();
        assert!(unexpected.is_empty(), "{name} is pulled in by {unexpected:?} ({why})");
    }
}

#[test]
fn a_reload_names_what_needs_a_restart_and_applies_the_log_filter() {
    let provider = Provider::start();
    let closed = free_port();
    // RUST_LOG unset (empty), so that [log] filter decides.
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{closed}"))
        .extra("[log]\nfilter = \"info\"\n")
        .log("")
        .start();
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();

    // The log filter applies at once: a debug line of the next session appears.
    std::fs::write(&proxy.config_path, config.replace("filter = \"info\"", "filter = \"debug\"")).unwrap();
    support::proxy::signal(proxy.pid(), 1);
    let log = wait_for_count(&proxy, "configuration reloaded", 1);
    assert!(log.contains("log filter now debug"), "{log}");
    drop(proxy.connect());
    proxy.wait_for_log(" connected", Duration::from_secs(5));

    // The SMTP listener and state_dir need a restart: the reload says so and which.
    let port = free_port();
    let changed = config
        .replace("smtp = \"127.0.0.1:0\"", &format!("smtp = \"127.0.0.1:{port}\""))
        .replace("/state\"", "/other-state\"");
    std::fs::write(&proxy.config_path, changed).unwrap();
    support::proxy::signal(proxy.pid(), 1);
    let log = wait_for_count(&proxy, "configuration reloaded", 2);
    let line = log.lines().filter(|l| l.contains("configuration reloaded")).nth(1).unwrap();
    assert!(line.contains("needs a restart"), "{line}");
    assert!(line.contains(&format!("smtp listener 127.0.0.1:{port}")) && line.contains("state_dir"), "{line}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "not applied, as said");

    // An invalid log filter is refused, not replaced by a default.
    std::fs::write(&proxy.config_path, config.replace("filter = \"info\"", "filter = \"coi_proxy=[\"")).unwrap();
    support::proxy::signal(proxy.pid(), 1);
    let log = wait_for_count(&proxy, "configuration reload refused", 1);
    assert!(log.contains("log.filter"), "{log}");
}

#[test]
fn metrics_count_submission_failures_and_relay_outcomes() {
    let provider = Provider::start();
    let closed = free_port();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{closed}"))
        .listen("metrics = \"127.0.0.1:0\"")
        .start();
    let mut c = proxy.connect_smtp();
    c.login("alice@example.org", "secret");
    let reply =
        c.send_message("alice@example.org", &["bob@example.org", "carol@example.org"], b"Subject: x\r\n\r\nx\r\n");
    assert_eq!(reply.code, 250, "{}", c.transcript());
    proxy.wait_for_log("delivery deferred", Duration::from_secs(10));
    let (_, metrics) = http_get(proxy.metrics_port, "/metrics");
    // The AUTH check and the relay attempt each found the submission server down.
    let refused = sample(&metrics, "coi_proxy_provider_connect_failures_total{protocol=\"smtp\",cause=\"refused\"}");
    assert!(refused >= 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "coi_proxy_relay_recipients_total{outcome=\"deferred\"}"), 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "coi_proxy_relay_recipients_total{outcome=\"delivered\"}"), 0.0, "{metrics}");
}

#[test]
fn log_lines_carry_words_not_rust_debug_forms() {
    let provider = Provider::start();
    let closed = free_port();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{closed}"))
        .extra(&format!("[[account]]\ndomain = \"down.example\"\nimap = \"imap://127.0.0.1:{closed}\"\n"))
        .log("info")
        .start();
    // A session that ends normally, an SMTP login nobody can check, a reload that renews.
    let mut c = proxy.connect();
    c.login("alice@example.org", "secret");
    c.expect_ok("l1 LOGOUT");
    drop(c);
    let mut smtp = proxy.connect_smtp();
    smtp.ehlo();
    assert_eq!(smtp.auth_plain("carol@down.example", "secret").code / 100, 4, "{}", smtp.transcript());
    coi_proxy::tls::set_recorded_expiry(&proxy.state, time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .unwrap();
    support::proxy::signal(proxy.pid(), 1);
    wait_for_count(&proxy, "configuration reloaded", 1);
    let log = wait_for_count(&proxy, "session ended", 1);
    assert!(log.contains("local certificate renewed (it expires on"), "{log}");
    for debug_form in ["ClientClosed", "ProviderClosed", "Unavailable(\"", "Renewed(\"", "Some(\"", "Err("] {
        assert!(!log.contains(debug_form), "{debug_form:?} in the log:\n{log}");
    }
    // Every session's outcome is words (`outcome=the client closed …`), not an enum's name.
    for line in log.lines().filter(|l| l.contains("outcome=")) {
        let outcome = line.split("outcome=").nth(1).unwrap();
        assert!(!outcome.starts_with(|c: char| c.is_ascii_uppercase()), "{line}");
    }
}

#[test]
fn a_second_daemon_on_the_same_state_dir_names_the_first() {
    let first = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", free_port())).start();
    let config = first.state_dir.path().join("second.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[upstream]\nimap = \"imap://127.0.0.1:1\"\n[listen]\nimap = \"127.0.0.1:0\"\n",
            first.state.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coi-proxy")).arg("--config").arg(&config).arg("run").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("another coi-proxy uses this state directory"), "{text}");
    assert!(!text.contains("Database already open"), "{text}");
    assert_eq!(text.matches("another coi-proxy").count(), 1, "said once:\n{text}");
}

#[test]
fn protocol_trace_shows_both_directions_before_login_never_sasl_data_and_survives_rust_log_warn() {
    use base64::Engine;
    let provider = Provider::start();
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .arg("--trace-protocol")
        // Warnings only, but for the start-up lines the harness waits for.
        .log("warn,coi_proxy::app=info")
        .start();
    let token = base64::engine::general_purpose::STANDARD
        .encode("user=alice@example.org\x01auth=Bearer ya29.Secret-Token-42\x01\x01");
    let mut c = proxy.connect();
    c.expect_ok("c1 CAPABILITY");
    // XOAUTH2 data sent without waiting for `+`: the mechanism is refused, and the token that
    // follows is not a command.
    c.send_raw(format!("x AUTHENTICATE XOAUTH2\r\n{token}\r\n").as_bytes());
    assert!(c.read_line().starts_with("x NO"));
    let bad = c.read_line();
    assert!(bad.contains("BAD"), "{bad}");
    c.send_raw(b"p AUTHENTICATE PLAIN\r\n");
    assert!(c.read_line().starts_with('+'));
    c.send_raw(b"*\r\n");
    assert!(c.read_line().starts_with("p BAD"));
    c.login("alice@example.org", "secret");

    let log = proxy.wait_for_log("S: L1 OK", Duration::from_secs(5));
    for expected in [
        "S: * OK [CAPABILITY",
        "C: c1 CAPABILITY",
        "S: * CAPABILITY",
        "S: c1 OK",
        "C: x AUTHENTICATE XOAUTH2",
        "S: x NO",
        "S: +",
        "C: L1 LOGIN [redacted]",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from the trace:\n{log}");
    }
    for secret in [token.as_str(), "ya29", "Secret-Token"] {
        assert!(!log.contains(secret), "{secret:?} found in the trace:\n{log}");
    }
}
