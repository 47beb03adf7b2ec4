//! Operations: the shipped service files, systemd readiness, reload, certificate renewal,
//! metrics and the protocol trace.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
fn tells_systemd_when_ready_and_stopping() {
    let provider_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let notify = NotifySocket::new();
    let mut proxy = Proxy::builder()
        .upstream(format!("imap://127.0.0.1:{provider_port}"))
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .start();
    assert!(notify.next().starts_with("READY=1\n"));
    proxy.stop();
    assert!(notify.next().starts_with("STOPPING=1\n"));
}
