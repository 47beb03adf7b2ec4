//! The state directory: private whoever creates it, one for the unit, the shipped config and
//! every command, never created by a command that only reads it, and a local CA that is never
//! replaced behind the clients' backs (issue 24, findings 1 to 3).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::provider::Provider;
use support::proxy::{Proxy, signal};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the binary in `dir` with `HOME` there and no config lookup from the environment.
fn coi_proxy(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("COI_PROXY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run coi-proxy")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every directory under `dir` (itself included) is 0700 and every other entry 0600.
fn assert_private(dir: &Path) {
    let mut wrong = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode(&path) != want {
            wrong.push(format!("{} is {:o}, not {want:o}", path.display(), mode(&path)));
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(wrong.is_empty(), "state not private:\n{}", wrong.join("\n"));
}

/// `true` if this process can switch to the unprivileged user `nobody` (tests run as root).
fn can_be_nobody() -> bool {
    let ok = Command::new("runuser").args(["-u", "nobody", "--", "true"]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot run commands as `nobody` (not root, or no runuser); modes were checked only");
    }
    ok
}

/// Runs `args` as the user `nobody`; its output and whether it succeeded.
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("runuser").args(["-u", "nobody", "--"]).args(args).output().unwrap();
    (out.status.success(), text(&out))
}

/// A temporary directory that other users may enter (tempfile makes them 0700), so that only the
/// state directory's own modes keep them out.
fn open_parent() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    dir
}

#[test]
fn state_is_private_whoever_creates_it() {
    let parent = open_parent();
    // A directory made beforehand, as `mkdir` makes it.
    let pre = parent.path().join("pre");
    std::fs::create_dir(&pre).unwrap();
    chmod(&pre, 0o755);
    let provider = Provider::start();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{}", provider.imap_port))
        .upstream_smtp(format!("smtp://127.0.0.1:{}", free_port()))
        .state_dir(&pre)
        .start();
    let mut c = proxy.connect_smtp();
    c.login("alice@example.org", "secret");
    let body = b"Subject: private\r\n\r\nQueued-BODY-TEXT-4711\r\n";
    assert_eq!(c.send_message("alice@example.org", &["bob@example.org"], body).code, 250, "{}", c.transcript());
    proxy.wait_for_log("delivery deferred", Duration::from_secs(10));
    assert_private(&pre);
    if can_be_nobody() {
        // The queued body is a file in `queue/` (the store names it).
        let queued = pre.join("queue");
        assert!(std::fs::read_dir(&queued).unwrap().count() == 1, "the body is in queue/");
        for place in [pre.join("coi-proxy.redb"), queued] {
            let (ok, out) = as_nobody(&["grep", "-ra", "Queued-BODY-TEXT", place.to_str().unwrap()]);
            assert!(!ok && !out.contains("4711"), "another user reads the queued message:\n{out}");
        }
        for file in ["tls/ca-key.pem", "tls/key.pem", "coi-proxy.redb"] {
            let (ok, out) = as_nobody(&["cat", pre.join(file).to_str().unwrap()]);
            assert!(!ok, "another user reads {file}:\n{out}");
        }
    }
    proxy.stop();

    // An old release left the files readable: the next start makes them private again.
    chmod(&pre, 0o755);
    chmod(&pre.join("coi-proxy.redb"), 0o644);
    chmod(&pre.join("tls/ca.pem"), 0o644);
    proxy.restart();
    assert!(proxy.log().contains("made it private"), "{}", proxy.log());
    assert_private(&pre);
    proxy.stop();

    // `cert create` on a directory that does not exist yet, with a umask that would let others in.
    let fresh = parent.path().join("fresh");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; exec {} --state-dir {} cert create", env!("CARGO_BIN_EXE_coi-proxy"), fresh.display()))
        .env("HOME", parent.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(fresh.join("tls/ca.pem").exists());
    assert_private(&fresh);
}

#[test]
fn a_state_dir_shared_with_other_files_is_refused_not_changed() {
    let parent = open_parent();
    let shared = parent.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o755);
    std::fs::write(shared.join("notes.txt"), "someone else's").unwrap();
    let out = coi_proxy(
        &["--state-dir", shared.to_str().unwrap(), "--upstream", "imap://127.0.0.1:1", "cert", "create"],
        parent.path(),
    );
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("readable by other users") && msg.contains("notes.txt"), "{msg}");
    assert!(msg.contains("chmod 700"), "the fix is named:\n{msg}");
    assert_eq!(mode(&shared), 0o755, "a directory holding other files is left as it was");
    assert!(!shared.join("tls").exists(), "nothing was written:\n{msg}");
}

#[test]
fn reading_commands_never_create_state_and_say_where_they_looked() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("nowhere");
    let state = missing.to_str().unwrap();
    for args in [
        &["--state-dir", state, "cert", "export"][..],
        &["--state-dir", state, "cert", "export", "ca.pem"],
        &["--state-dir", state, "cert", "install", "--dry-run"],
        &["--state-dir", state, "queue", "list"],
    ] {
        let out = coi_proxy(args, home.path());
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {msg}");
        assert!(msg.contains(state) && msg.contains("no state here"), "{args:?} must say where it looked:\n{msg}");
        assert!(!msg.contains("empty"), "{args:?}: {msg}");
        assert!(!missing.exists(), "{args:?} created {state}");
    }
    let out = coi_proxy(&["--state-dir", state, "check"], home.path());
    let report = text(&out);
    assert!(report.contains(&format!("state_dir: {state} (no state here")), "{report}");
    assert!(report.contains("local certificate: no state here") && report.contains("queue: no state here"), "{report}");
    assert!(!missing.exists(), "check created {state}");

    // The default directory, without --state-dir or a config file.
    let default = home.path().join(".local/share/coi-proxy");
    let out = coi_proxy(&["cert", "export"], home.path());
    assert!(text(&out).contains(default.to_str().unwrap()), "{}", text(&out));
    assert!(!default.exists(), "cert export created the default state dir");

    // A directory that exists but holds no store: not "empty" either.
    std::fs::create_dir(&missing).unwrap();
    let out = coi_proxy(&["--state-dir", state, "queue", "list"], home.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no state here") && text(&out).contains("coi-proxy.redb"), "{}", text(&out));
}

/// `ExecStart`'s `--config` and (if any) `--state-dir` of the system unit.
fn unit_paths() -> (PathBuf, Option<PathBuf>, String) {
    let unit = std::fs::read_to_string(repo("systemd/coi-proxy.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    let after = |flag: &str| words.iter().position(|w| *w == flag).map(|i| PathBuf::from(words[i + 1]));
    let state_directory = unit.lines().find_map(|l| l.strip_prefix("StateDirectory=")).expect("StateDirectory");
    (after("--config").expect("--config"), after("--state-dir"), format!("/var/lib/{state_directory}"))
}

#[test]
fn the_unit_the_shipped_config_and_every_command_agree_on_the_state_dir() {
    let (config_path, unit_state_dir, state_directory) = unit_paths();
    assert_eq!(config_path, Path::new("/etc/coi-proxy/proxy.toml"));
    // Every command reads the installed proxy.toml; the state dir it names (or defaults to for a
    // system-wide config) is the unit's.
    let shipped = std::fs::read_to_string(repo("proxy.toml")).unwrap();
    let config = coi_proxy::config::Config::parse(&shipped, &config_path).unwrap();
    assert_eq!(config.state_dir, Path::new(&state_directory), "the installed proxy.toml's state_dir");
    assert!(
        unit_state_dir.is_none() || unit_state_dir.as_deref() == Some(config.state_dir.as_path()),
        "the unit passes --state-dir {unit_state_dir:?}; commands without it would use {}",
        config.state_dir.display()
    );
    // The same file copied for one user keeps the user's own state.
    let home = tempfile::tempdir().unwrap();
    let user_config = home.path().join(".config/coi-proxy/proxy.toml");
    std::fs::create_dir_all(user_config.parent().unwrap()).unwrap();
    std::fs::write(&user_config, &shipped).unwrap();
    let out = coi_proxy(&["--config", user_config.to_str().unwrap(), "check"], home.path());
    let default = home.path().join(".local/share/coi-proxy");
    assert!(text(&out).contains(&format!("state_dir: {}", default.display())), "{}", text(&out));
}

/// Starts the daemon on `config` expecting it to refuse: its exit code and output (killed and
/// `None` if it is still running after 20 s).
fn run_expecting_refusal(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coi-proxy"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (out.status.code(), text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (None, text(&out))
}

#[test]
fn a_missing_ca_key_refuses_start_up_and_keeps_the_ca() {
    let mut proxy = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", free_port())).start();
    proxy.stop();
    let tls = proxy.state.join("tls");
    let ca = std::fs::read(tls.join("ca.pem")).unwrap();
    std::fs::remove_file(tls.join("ca-key.pem")).unwrap();
    let (code, out) = run_expecting_refusal(&proxy.config_path);
    assert_eq!(code, Some(1), "the daemon must refuse to start:\n{out}");
    assert!(out.contains("ca-key.pem") && out.contains("coi-proxy cert rotate"), "the fix is named:\n{out}");
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca, "the CA clients trust is kept");
    assert!(!tls.join("ca-key.pem").exists(), "no new key was made");
}

/// A TLS handshake with the imaps listener, trusting `ca` alone; the greeting is read.
fn handshake_with(port: u16, ca: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut tls, &mut buf).map_err(|e| e.to_string())?;
    match buf[..n].starts_with(b"* OK") {
        true => Ok(()),
        false => Err(format!("unexpected greeting {:?}", String::from_utf8_lossy(&buf[..n]))),
    }
}

#[test]
fn cert_rotate_keeps_clients_of_the_old_ca_working_for_the_overlap() {
    let proxy = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", free_port())).start();
    let dir = tempfile::tempdir().unwrap();
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(proxy.ca_path(), &old_ca).unwrap();
    let config = proxy.config_path.to_str().unwrap();
    let out = coi_proxy(&["--config", config, "cert", "rotate"], dir.path());
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    assert!(msg.contains("days") && msg.contains("cert export"), "says how clients move:\n{msg}");
    let new_ca = dir.path().join("new-ca.pem");
    let exported = coi_proxy(&["--config", config, "cert", "export", new_ca.to_str().unwrap()], dir.path());
    assert!(exported.status.success(), "{}", text(&exported));
    assert_ne!(std::fs::read(&new_ca).unwrap(), std::fs::read(&old_ca).unwrap(), "export gives the new CA");

    // A reload serves the new certificate; clients of either CA accept it.
    signal(proxy.pid(), 1);
    proxy.wait_for_log("configuration reloaded", Duration::from_secs(10));
    for ca in [&old_ca, &new_ca] {
        handshake_with(proxy.imaps_port, ca)
            .unwrap_or_else(|e| panic!("a client trusting {} fails: {e}", ca.display()));
    }
}

#[test]
fn a_ca_made_by_the_previous_release_keeps_working_unchanged() {
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    std::fs::create_dir_all(state.join("tls")).unwrap();
    for file in ["ca.pem", "ca-key.pem", "cert.pem", "key.pem", "cert.meta"] {
        std::fs::copy(repo("tests/fixtures/state-release1/tls").join(file), state.join("tls").join(file)).unwrap();
    }
    let ca = std::fs::read(state.join("tls/ca.pem")).unwrap();
    let proxy = Proxy::builder().upstream(format!("imap://127.0.0.1:{}", free_port())).state_dir(&state).start();
    assert_eq!(std::fs::read(state.join("tls/ca.pem")).unwrap(), ca, "the CA is kept byte for byte");
    let mut c = proxy.connect_tls();
    c.expect_ok("t1 CAPABILITY");
}
