//! Upstream OAuth2 against real parts: Dovecot with an `oauth2` passdb that asks a local identity
//! provider (tests/support/idp.rs) about every bearer token, the real `coi-proxy` daemon, and
//! `coi-proxy oauth authorize` run as the user would. The mail client logs in to the proxy with
//! a local password; the proxy signs in with XOAUTH2 or OAUTHBEARER.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use support::idp::{Idp, IdpOptions};
use support::provider::{Provider, ProviderOptions};
use support::proxy::Proxy;
use support::smtp_client::wait_for_inbox;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
/// The password alice's mail client logs in to the proxy with (Dovecot's is "secret").
const LOCAL: &str = "local-pw-Geheim-42";

struct Setup {
    idp: Idp,
    provider: Provider,
    proxy: Proxy,
}

/// An identity provider, Dovecot asking it, and a proxy with alice as an OAuth2 account.
fn setup(opts: IdpOptions, mechanisms: Option<&str>, extra: &str, log: &str) -> Setup {
    let idp = Idp::start_with(opts);
    let provider = Provider::start_with(ProviderOptions {
        oauth2_introspection_url: Some(idp.introspection_url()),
        oauth2_mechanisms: mechanisms.map(str::to_string),
        ..ProviderOptions::default()
    });
    let proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .extra(&format!("{extra}\n[[account]]\nlogin = \"{ALICE}\"\n{}", idp.account_config()))
        .log(log)
        .start();
    Setup { idp, provider, proxy }
}

fn coi_proxy(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coi-proxy"));
    cmd.arg("--config").arg(config).args(args).env("RUST_LOG", "debug");
    cmd
}

/// What a finished `coi-proxy oauth authorize` printed.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Starts `coi-proxy oauth authorize <login> --password-stdin [extra]` with `password` on stdin.
fn start_authorize(
    config: &Path,
    login: &str,
    password: &str,
    extra: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut args = vec!["oauth", "authorize", login, "--password-stdin"];
    args.extend_from_slice(extra);
    let mut child = coi_proxy(config, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coi-proxy oauth authorize");
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Reads stdout until a line containing `marker`; returns everything read so far.
fn read_until(stdout: &mut BufReader<std::process::ChildStdout>, marker: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("coi-proxy oauth authorize ended before printing {marker:?}:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(marker) {
            return seen;
        }
    }
}

fn finish(mut child: Child, mut stdout: BufReader<std::process::ChildStdout>, seen: String) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "coi-proxy oauth authorize did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Outcome { success: status.success(), stdout: seen + &rest, stderr }
}

/// The device flow, with the test as the user who signs in.
fn authorize(config: &Path, idp: &Idp, login: &str, password: &str) -> Outcome {
    let (child, mut stdout) = start_authorize(config, login, password, &[]);
    let seen = read_until(&mut stdout, "enter the code");
    let code = seen.split("enter the code ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    idp.approve(&code, login);
    let outcome = finish(child, stdout, seen);
    assert!(outcome.success, "authorize failed:\n{}\n{}", outcome.stdout, outcome.stderr);
    outcome
}

/// A login through the proxy; the tagged status line.
fn imap_login(proxy: &Proxy, user: &str, password: &str) -> String {
    let mut c = proxy.connect();
    let status = c.command(&format!("a LOGIN \"{user}\" \"{password}\"")).pop().unwrap();
    if status.starts_with("a OK") {
        c.expect_ok("b SELECT INBOX");
        c.command("z LOGOUT");
    }
    status
}

/// Alice logs in through the proxy with her local password.
#[track_caller]
fn logs_in(s: &Setup) {
    let status = imap_login(&s.proxy, ALICE, LOCAL);
    assert!(
        status.starts_with("a OK"),
        "{status}\nproxy log:\n{}\ndovecot log:\n{}",
        s.proxy.log(),
        dovecot_log(&s.provider)
    );
}

fn smtp_auth(proxy: &Proxy, user: &str, password: &str) -> support::smtp_client::Reply {
    let mut c = proxy.connect_smtp();
    c.ehlo();
    c.auth_plain(user, password)
}

fn dovecot_log(provider: &Provider) -> String {
    std::fs::read_to_string(&provider.log).unwrap_or_default()
}

fn logins_by(provider: &Provider, method: &str) -> usize {
    dovecot_log(provider).lines().filter(|l| l.contains(&format!("user=<{ALICE}>, method={method}"))).count()
}

fn status(config: &Path) -> String {
    let out = coi_proxy(config, &["oauth", "status"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn authorize_while_the_daemon_runs_then_log_in_with_the_local_password() {
    let s = setup(IdpOptions::default(), None, "", "debug");
    let config = &s.proxy.config_path;
    assert!(status(config).contains(&format!("{ALICE}: not authorized yet; run `coi-proxy oauth authorize {ALICE}")));
    let before = imap_login(&s.proxy, ALICE, LOCAL);
    assert!(
        before.starts_with("a NO [AUTHENTICATIONFAILED]")
            && before.contains(&format!("run `coi-proxy oauth authorize {ALICE}`")),
        "{before}"
    );

    let outcome = authorize(config, &s.idp, ALICE, LOCAL);
    assert!(
        outcome.stdout.contains(&format!("open {} and enter the code TEST", s.idp.url("/device"))),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains(&format!("stored the authorization for {ALICE} in the running coi-proxy")),
        "{}",
        outcome.stdout
    );
    assert!(s.proxy.log().contains("control: stored a new OAuth2 authorization"));

    let ok = imap_login(&s.proxy, ALICE, LOCAL);
    assert!(ok.starts_with("a OK"), "{ok}");
    assert_eq!(logins_by(&s.provider, "XOAUTH2"), 1, "{}", dovecot_log(&s.provider));
    assert!(status(config).contains(&format!("{ALICE}: authorized")), "{}", status(config));

    // A wrong local password is refused by the proxy: nothing reaches the identity provider or
    // Dovecot's passdb.
    let (introspections, token_requests) = (s.idp.introspections(), s.idp.token_requests());
    let wrong = imap_login(&s.proxy, ALICE, "not-the-local-password");
    assert!(wrong.starts_with("a NO [AUTHENTICATIONFAILED] Authentication failed."), "{wrong}");
    let dovecot_password = imap_login(&s.proxy, ALICE, "secret");
    assert!(dovecot_password.starts_with("a NO [AUTHENTICATIONFAILED]"), "{dovecot_password}");
    assert_eq!(smtp_auth(&s.proxy, ALICE, "not-the-local-password").code, 535);
    assert_eq!((s.idp.introspections(), s.idp.token_requests()), (introspections, token_requests));
    assert_eq!(logins_by(&s.provider, "XOAUTH2"), 1);
    assert!(!dovecot_log(&s.provider).contains("not-the-local-password"));

    // Accounts without [account.oauth2] log in with their own password as before.
    assert!(imap_login(&s.proxy, BOB, "secret").starts_with("a OK"));
}

#[test]
fn the_token_is_refreshed_after_expiry_and_the_rotated_one_survives_a_restart() {
    let mut s = setup(IdpOptions { access_lifetime: 4, ..IdpOptions::default() }, None, "", "debug");
    authorize(&s.proxy.config_path, &s.idp, ALICE, LOCAL);
    logs_in(&s);
    // (On a slow machine this first login may already have refreshed the 4 s token.)
    let refreshes = s.idp.refreshes();

    // Four clients at once after the expiry: one refresh for all (a second one would present the
    // refresh token the first had rotated away, and the provider would revoke the grant).
    std::thread::sleep(Duration::from_millis(4500));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| logs_in(&s));
        }
    });
    assert_eq!(s.idp.refreshes(), refreshes + 1);
    // Rotated: the refresh token the grant started with is revoked, one is live.
    assert_eq!(s.idp.live_refresh_tokens(), 1);
    assert!(s.proxy.log().contains("refreshed the OAuth2 access token"));

    // After a restart only the rotated refresh token works: the proxy must have kept it.
    s.proxy.restart();
    std::thread::sleep(Duration::from_millis(4500));
    logs_in(&s);
    assert_eq!(s.idp.refreshes(), refreshes + 2);

    // A token the provider no longer takes although it has not expired: one refresh, then in.
    s.idp.expire_access_tokens(ALICE);
    let introspections = s.idp.introspections();
    logs_in(&s);
    assert_eq!(s.idp.refreshes(), refreshes + 3);
    assert_eq!(s.idp.introspections(), introspections + 2, "the turned-down token, then the fresh one");
    assert_eq!(logins_by(&s.provider, "XOAUTH2"), 7, "{}", dovecot_log(&s.provider));
}

#[test]
fn a_revoked_grant_tells_the_client_to_authorize_again() {
    let s = setup(IdpOptions::default(), None, "", "debug");
    let config = &s.proxy.config_path;
    authorize(config, &s.idp, ALICE, LOCAL);
    logs_in(&s);

    s.idp.revoke(ALICE);
    let refused = imap_login(&s.proxy, ALICE, LOCAL);
    assert!(
        refused.starts_with("a NO [AUTHENTICATIONFAILED] the provider no longer accepts coi-proxy's authorization"),
        "{refused}"
    );
    assert!(
        refused.contains("invalid_grant") && refused.contains(&format!("run `coi-proxy oauth authorize {ALICE}`")),
        "{refused}"
    );
    assert_eq!(s.idp.refreshes(), 0, "a revoked refresh token is not counted as a refresh");
    let smtp = smtp_auth(&s.proxy, ALICE, LOCAL);
    assert_eq!(smtp.code, 535, "{smtp:?}");
    assert!(smtp.text().contains(&format!("run `coi-proxy oauth authorize {ALICE}`")), "{smtp:?}");
    let check = coi_proxy(config, &["check"]).output().unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains(&format!("oauth2 {ALICE}: REFUSED by the provider")) && check.contains("invalid_grant"),
        "{check}"
    );

    // Authorizing again puts it right, without a restart.
    authorize(config, &s.idp, ALICE, LOCAL);
    logs_in(&s);
    assert!(status(config).contains(&format!("{ALICE}: authorized")));
}

#[test]
fn smtp_through_the_proxy_signs_in_with_xoauth2() {
    let s = setup(IdpOptions::default(), None, "", "debug");
    authorize(&s.proxy.config_path, &s.idp, ALICE, LOCAL);
    let mut c = s.proxy.connect_smtp();
    c.login(ALICE, LOCAL);
    let reply =
        c.send_message(ALICE, &[BOB], b"From: alice@example.org\r\nSubject: sent with XOAUTH2\r\n\r\nhello\r\n");
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_for_inbox(s.provider.imap_port, BOB, "secret", Duration::from_secs(20), |msgs| {
        msgs.iter().any(|m| String::from_utf8_lossy(m).contains("Subject: sent with XOAUTH2"))
    });
    let log = dovecot_log(&s.provider);
    // The AUTH check and the relay: both at Dovecot's submission service.
    let submission = log
        .lines()
        .filter(|l| l.contains("submission-login") && l.contains(&format!("user=<{ALICE}>, method=XOAUTH2")))
        .count();
    assert!(submission >= 2, "{log}");
}

#[test]
fn oauthbearer_where_the_provider_offers_only_that() {
    let s = setup(IdpOptions::default(), Some("oauthbearer"), "", "debug");
    authorize(&s.proxy.config_path, &s.idp, ALICE, LOCAL);
    logs_in(&s);
    let mut c = s.proxy.connect_smtp();
    c.login(ALICE, LOCAL);
    let reply = c.send_message(ALICE, &[BOB], b"Subject: sent with OAUTHBEARER\r\n\r\nhello\r\n");
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_for_inbox(s.provider.imap_port, BOB, "secret", Duration::from_secs(20), |msgs| {
        msgs.iter().any(|m| String::from_utf8_lossy(m).contains("Subject: sent with OAUTHBEARER"))
    });
    assert!(logins_by(&s.provider, "OAUTHBEARER") >= 3, "{}", dovecot_log(&s.provider));
    assert_eq!(logins_by(&s.provider, "XOAUTH2"), 0);

    // A refused token gets the OAUTHBEARER error exchange, then one refresh.
    s.idp.expire_access_tokens(ALICE);
    logs_in(&s);
    assert_eq!(s.idp.refreshes(), 1);
}

/// The browser flow (PKCE, loopback redirect) with no daemon running: the command line stores
/// the grant itself; a Google-like provider (client secret, refresh tokens that do not rotate).
#[test]
fn the_browser_flow_without_a_daemon() {
    let opts =
        IdpOptions { rotate: false, client_secret: Some("desktop-client-secret".into()), ..IdpOptions::default() };
    let mut s = setup(opts, None, "", "debug");
    s.proxy.stop();
    let (child, mut stdout) = start_authorize(&s.proxy.config_path, ALICE, LOCAL, &["--browser"]);
    let seen = read_until(&mut stdout, "/authorize?");
    let url = seen.lines().find(|l| l.contains("/authorize?")).unwrap().trim().to_string();
    assert!(url.contains("code_challenge_method=S256") && url.contains("login_hint=alice%40example.org"), "{url}");
    assert!(!url.contains("desktop-client-secret"));
    // The browser: the provider redirects it to the loopback listener.
    let redirect = http_get(&url);
    let location = redirect.lines().find_map(|l| l.strip_prefix("Location: ")).expect("a redirect").to_string();
    assert!(location.starts_with("http://localhost:"), "{location}");
    let page = http_get(&location.replacen("localhost", "127.0.0.1", 1));
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("coi-proxy is authorized"), "{page}");
    let outcome = finish(child, stdout, seen);
    assert!(outcome.success, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(outcome.stdout.contains("no coi-proxy daemon was running"), "{}", outcome.stdout);

    s.proxy.restart();
    logs_in(&s);
    s.idp.expire_access_tokens(ALICE);
    logs_in(&s);
    assert_eq!((s.idp.refreshes(), s.idp.live_refresh_tokens()), (1, 1));
}

/// A GET with a raw HTTP/1.1 request; the whole answer.
fn http_get(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    let mut tcp = TcpStream::connect((parsed.host_str().unwrap(), parsed.port().unwrap())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let target = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    write!(tcp, "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", parsed.host_str().unwrap()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_declined_sign_in_stores_nothing() {
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[upstream]\nimap = \"imap://127.0.0.1:1\"\n[[account]]\nlogin = \"{ALICE}\"\n{}",
            dir.path().join("state").display().to_string(),
            idp.account_config()
        ),
    )
    .unwrap();
    let (child, mut stdout) = start_authorize(&config, ALICE, LOCAL, &[]);
    let seen = read_until(&mut stdout, "enter the code");
    let code = seen.split("enter the code ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    idp.decline(&code);
    let outcome = finish(child, stdout, seen);
    let polls = idp.token_requests();
    assert!(!outcome.success);
    assert!(
        outcome.stderr.contains(
            "the sign-in was declined (authorization_declined: AADSTS70000: The user declined.); nothing was stored"
        ),
        "{}",
        outcome.stderr
    );
    assert!(status(&config).contains("not authorized yet"));

    // Without --password-stdin, or with an empty password, nothing is asked of the provider.
    let out = coi_proxy(&config, &["oauth", "authorize", ALICE]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
    let (child, stdout) = start_authorize(&config, ALICE, "", &[]);
    let outcome = finish(child, stdout, String::new());
    assert!(!outcome.success && outcome.stderr.contains("no local password on stdin"), "{}", outcome.stderr);
    let (child, stdout) = start_authorize(&config, "bob@example.org", LOCAL, &[]);
    let outcome = finish(child, stdout, String::new());
    assert!(outcome.stderr.contains("bob@example.org has no [account.oauth2]"), "{}", outcome.stderr);
    assert_eq!(idp.token_requests(), polls, "nothing asked of the provider");
}

/// Mail queued while the provider's submission server is away goes out after a restart, with no
/// client connected and the access token expired meanwhile: the relay refreshes on its own.
#[test]
fn the_queue_refreshes_with_no_client_connected() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let idp = Idp::start_with(IdpOptions { access_lifetime: 4, ..IdpOptions::default() });
    let provider = Provider::start_with(ProviderOptions {
        oauth2_introspection_url: Some(idp.introspection_url()),
        ..ProviderOptions::default()
    });
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{dead}"))
        .extra(&format!(
            "[queue]\nretry_initial_secs = 1\nretry_max_secs = 2\n[[account]]\nlogin = \"{ALICE}\"\n{}",
            idp.account_config()
        ))
        .start();
    authorize(&proxy.config_path, &idp, ALICE, LOCAL);
    let mut c = proxy.connect_smtp();
    // The submission server is unreachable: the local password decides, the mail is queued.
    c.login(ALICE, LOCAL);
    assert_eq!(c.send_message(ALICE, &[BOB], b"Subject: queued for later\r\n\r\nx\r\n").code, 250);
    drop(c);
    proxy.stop();
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(&proxy.config_path, config.replace(&format!(":{dead}\""), &format!(":{}\"", provider.smtp_port)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    let refreshes = idp.refreshes();
    proxy.restart();
    wait_for_inbox(provider.imap_port, BOB, "secret", Duration::from_secs(30), |msgs| {
        msgs.iter().any(|m| String::from_utf8_lossy(m).contains("Subject: queued for later"))
    });
    assert!(idp.refreshes() > refreshes, "the relay refreshed the expired token");
}

/// Every token, code and password of a whole run (authorize, logins, SMTP, a refresh with
/// rotation, a revocation), with the proxy logging at `trace`: none in the log, the command
/// line's output or any file of the state directory, in clear or in base64.
#[test]
fn no_secret_in_logs_or_the_state_directory() {
    let s = setup(IdpOptions { access_lifetime: 4, ..IdpOptions::default() }, None, "", "trace");
    let outcome = authorize(&s.proxy.config_path, &s.idp, ALICE, LOCAL);
    logs_in(&s);
    assert_eq!(imap_login(&s.proxy, ALICE, "wrong-Passw0rd-x").split(' ').nth(1), Some("NO"));
    let mut c = s.proxy.connect_smtp();
    c.login(ALICE, LOCAL);
    assert_eq!(c.send_message(ALICE, &[BOB], b"Subject: s\r\n\r\nx\r\n").code, 250);
    drop(c);
    std::thread::sleep(Duration::from_millis(4500));
    logs_in(&s);
    assert!(s.idp.refreshes() >= 1);
    s.idp.revoke(ALICE);
    assert!(imap_login(&s.proxy, ALICE, LOCAL).contains("oauth authorize"));
    wait_for_inbox(s.provider.imap_port, BOB, "secret", Duration::from_secs(20), |m| !m.is_empty());

    let mut secrets: Vec<String> = s.idp.issued();
    assert!(secrets.len() >= 5, "the device code, two access and two refresh tokens: {}", secrets.len());
    secrets.push(LOCAL.to_string());
    secrets.push("wrong-Passw0rd-x".to_string());
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("the proxy's log".into(), s.proxy.log().into_bytes()),
        ("oauth authorize's output".into(), format!("{}{}", outcome.stdout, outcome.stderr).into_bytes()),
    ];
    let mut grant_file_seen = false;
    for file in files_under(s.proxy.state_dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        grant_file_seen |= contains(&bytes, b"oauth_grants") && contains(&bytes, b"token_url");
        places.push((file.display().to_string(), bytes));
    }
    assert!(grant_file_seen, "the store with the grant is among the files looked at");
    for (place, bytes) in &places {
        for secret in &secrets {
            for form in forms(secret) {
                assert!(!contains(bytes, form.as_bytes()), "a secret ({}…) in {place}", &secret[..6.min(secret.len())]);
            }
        }
    }
    let key = s.proxy.state_dir.path().join("state/seal.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
}

/// A secret as it could appear: itself (a stretch of its middle, for long ones, so that a part
/// of it counts too), and a stretch of its base64 at each of the three alignments it can have
/// inside a longer base64 text (a SASL response).
fn forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let mut out = vec![if bytes.len() >= 48 { secret[16..48].to_string() } else { secret.to_string() }];
    for shift in 0..3 {
        if bytes.len() >= shift + 33 {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes[shift..shift + 33]);
            out.push(b64[..40].to_string());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// An upgrade: a state directory of the release before OAuth2 (its schema-1 store with every
/// table filled, `tests/fixtures/store-schema1.redb`, and its CA, `state-release1/tls`; no
/// `seal.key`). `oauth status` only reads it; `oauth authorize` adds the seal key (0600) and the
/// grant; the daemon starts on it, alice signs in by her local password, the old queue's mail for
/// her is worked on over XOAUTH2; what the old store held is still there.
#[test]
fn a_state_dir_of_the_previous_release_takes_an_oauth2_account() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let idp = Idp::start();
    let provider = Provider::start_with(ProviderOptions {
        oauth2_introspection_url: Some(idp.introspection_url()),
        ..ProviderOptions::default()
    });
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    let config = parent.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[upstream]\nimap = \"imap://127.0.0.1:{}\"\n[[account]]\nlogin = \"{ALICE}\"\n{}",
            state.display().to_string(),
            provider.imap_port,
            idp.account_config()
        ),
    )
    .unwrap();

    // No state directory yet: status says where it looked and creates nothing.
    let out = coi_proxy(&config, &["oauth", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("no state here"), "{text}");
    assert!(text.contains(&format!("{ALICE}: not authorized yet")), "{text}");
    assert!(!state.exists(), "oauth status created the state directory");

    // The previous release's state, as it left it.
    std::fs::create_dir_all(state.join("tls")).unwrap();
    for file in ["ca.pem", "ca-key.pem", "cert.pem", "key.pem", "cert.meta"] {
        std::fs::copy(repo.join("tests/fixtures/state-release1/tls").join(file), state.join("tls").join(file)).unwrap();
    }
    std::fs::copy(repo.join("tests/fixtures/store-schema1.redb"), state.join("coi-proxy.redb")).unwrap();
    let ca = std::fs::read(state.join("tls/ca.pem")).unwrap();
    let out = coi_proxy(&config, &["oauth", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("{ALICE}: not authorized yet")), "{text}");
    assert!(!state.join("seal.key").exists(), "a reading command made the seal key");

    authorize(&config, &idp, ALICE, LOCAL);
    assert_eq!((mode(&state), mode(&state.join("seal.key"))), (0o700, 0o600));

    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", provider.smtp_port))
        .state_dir(&state)
        .extra(&format!("[[account]]\nlogin = \"{ALICE}\"\n{}", idp.account_config()))
        .start();
    let status = imap_login(&proxy, ALICE, LOCAL);
    assert!(status.starts_with("a OK"), "{status}\n{}", proxy.log());
    // The old release's queued chat message from alice to bob (Message-ID m1@example.org).
    // The old release's queued chat message from alice (m1@example.org) is past its give-up
    // time: its failure report goes into alice's INBOX over the proxy's own XOAUTH2 sign-in.
    let reported = std::panic::catch_unwind(|| {
        wait_for_inbox(provider.imap_port, ALICE, "secret", Duration::from_secs(30), |msgs| {
            msgs.iter().any(|m| String::from_utf8_lossy(m).contains("m1@example.org"))
        })
    });
    assert!(reported.is_ok(), "no failure report for the old queue's message:\n{}", proxy.log());
    proxy.stop();
    assert_eq!(std::fs::read(state.join("tls/ca.pem")).unwrap(), ca, "the CA is kept byte for byte");

    let store = coi_proxy::store::Store::open(&state).unwrap();
    assert_eq!(store.schema_version().unwrap(), coi_proxy::store::SCHEMA_VERSION);
    assert!(store.is_chat_id("alice@example.org", "m1@example.org").unwrap());
    assert_eq!(store.inbox_position("dave@example.net").unwrap(), None);
    assert_eq!(store.mdn_baseline("alice@example.org").unwrap(), Some(1_699_999_999));
    assert!(store.oauth_grant(ALICE).unwrap().is_some(), "the grant is stored next to the old state");
    let dave = store.queue_list().unwrap();
    assert!(dave.iter().any(|(id, m)| *id == 2 && m.login == "dave@example.net"), "{dave:?}");
}
