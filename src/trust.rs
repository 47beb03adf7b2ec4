//! `coi-proxy cert install`: adds the local CA to the trust stores that can be changed from the
//! command line, and says exactly what it did and what is left to the user.
//!
//! Linux as root: the system store (`/usr/local/share/ca-certificates` + `update-ca-certificates`,
//! or `/etc/pki/ca-trust/source/anchors` + `update-ca-trust`). Linux as a user: the NSS databases
//! that Thunderbird, Firefox and Chromium read (`certutil`, from libnss3-tools), as no system
//! store is writable. macOS: the login keychain (`security add-trusted-cert`). Windows clients
//! get the `certutil` command to run there.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Name under which the CA is installed (NSS nickname, file name in system stores).
const NICKNAME: &str = "coi-proxy local CA";

/// One thing to do: a command to run, described for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub command: Vec<String>,
}

/// What `install` plans for this machine: steps to run and advice for what it cannot do.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub advice: Vec<String>,
}

/// Plans the installation of `ca` (a PEM file) for the current user on this machine.
pub fn plan(ca: &Path) -> Plan {
    let mut plan = Plan::default();
    let ca_str = ca.display().to_string();
    if cfg!(target_os = "macos") {
        let keychain = home().join("Library/Keychains/login.keychain-db");
        plan.steps.push(Step {
            what: format!("trust the CA in your login keychain ({})", keychain.display()),
            command: vec![
                "security".into(),
                "add-trusted-cert".into(),
                "-r".into(),
                "trustRoot".into(),
                "-k".into(),
                keychain.display().to_string(),
                ca_str.clone(),
            ],
        });
    } else if is_root() {
        if Path::new("/usr/local/share/ca-certificates").is_dir() || found("update-ca-certificates") {
            let target = "/usr/local/share/ca-certificates/coi-proxy.crt";
            plan.steps.push(Step {
                what: format!("copy the CA to {target}"),
                command: vec!["install".into(), "-m".into(), "644".into(), ca_str.clone(), target.into()],
            });
            plan.steps.push(Step {
                what: "rebuild the system trust store".into(),
                command: vec!["update-ca-certificates".into()],
            });
        } else if Path::new("/etc/pki/ca-trust/source/anchors").is_dir() {
            let target = "/etc/pki/ca-trust/source/anchors/coi-proxy.pem";
            plan.steps.push(Step {
                what: format!("copy the CA to {target}"),
                command: vec!["install".into(), "-m".into(), "644".into(), ca_str.clone(), target.into()],
            });
            plan.steps
                .push(Step { what: "rebuild the system trust store".into(), command: vec!["update-ca-trust".into()] });
        } else {
            plan.advice.push("no known system trust store here; import the CA in each mail client".into());
        }
        plan.advice.push(
            "Thunderbird keeps its own trust store: Settings → Privacy & Security → Certificates → Manage \
             Certificates → Authorities → Import (or run `coi-proxy cert install` as that user)"
                .into(),
        );
    } else {
        let dbs = nss_databases(&home());
        match (found("certutil"), dbs.is_empty()) {
            (true, false) => {
                for db in dbs {
                    plan.steps.push(Step {
                        what: format!("trust the CA in the NSS database {}", db.display()),
                        command: vec![
                            "certutil".into(),
                            "-d".into(),
                            format!("sql:{}", db.display()),
                            "-A".into(),
                            "-t".into(),
                            "C,,".into(),
                            "-n".into(),
                            NICKNAME.into(),
                            "-i".into(),
                            ca_str.clone(),
                        ],
                    });
                }
            }
            (false, false) => plan.advice.push(format!(
                "found NSS databases (Thunderbird/Firefox/Chromium) at {}, but not `certutil`: install it \
                 (Debian/Ubuntu: sudo apt install libnss3-tools) and run this again",
                dbs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            )),
            (_, true) => plan.advice.push(
                "no Thunderbird, Firefox or Chromium certificate database found for this user; start the client \
                 once, then run this again, or import the CA in the client"
                    .into(),
            ),
        }
        plan.advice.push(format!(
            "for programs that use the system store (mutt, Evolution, curl), as root: \
             sudo install -m 644 {ca_str} /usr/local/share/ca-certificates/coi-proxy.crt && sudo update-ca-certificates"
        ));
    }
    plan.advice.push(format!(
        "on a Windows PC that connects to this proxy, copy {ca_str} there as coi-proxy-ca.pem and run: certutil -user -addstore Root coi-proxy-ca.pem"
    ));
    plan
}

/// Runs the plan's steps; returns the report, and whether every step succeeded.
pub fn execute(plan: &Plan, dry_run: bool) -> (String, bool) {
    let mut report = String::new();
    let mut ok = true;
    for step in &plan.steps {
        let shown = step.command.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
        if dry_run {
            report.push_str(&format!("would {}: {shown}\n", step.what));
            continue;
        }
        match Command::new(&step.command[0]).args(&step.command[1..]).output() {
            Ok(out) if out.status.success() => report.push_str(&format!("done: {} ({shown})\n", step.what)),
            Ok(out) => {
                ok = false;
                let err = String::from_utf8_lossy(&out.stderr);
                report.push_str(&format!("FAILED to {} ({shown}): {}\n", step.what, err.trim()));
            }
            Err(e) => {
                ok = false;
                report.push_str(&format!("FAILED to {} ({shown}): {e}\n", step.what));
            }
        }
    }
    if plan.steps.is_empty() {
        report.push_str("nothing could be installed from here; see below\n");
    }
    for advice in &plan.advice {
        report.push_str(&format!("you: {advice}\n"));
    }
    (report, ok)
}

/// NSS databases of this user: `~/.pki/nssdb` (Chromium, and the shared one) and every
/// Thunderbird and Firefox profile that has one.
fn nss_databases(home: &Path) -> Vec<PathBuf> {
    let mut dbs = Vec::new();
    if home.join(".pki/nssdb/cert9.db").exists() {
        dbs.push(home.join(".pki/nssdb"));
    }
    for parent in [".thunderbird", ".mozilla/firefox", "snap/thunderbird/common/.thunderbird"] {
        let Ok(entries) = std::fs::read_dir(home.join(parent)) else { continue };
        let mut profiles: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.join("cert9.db").exists()).collect();
        profiles.sort();
        dbs.extend(profiles);
    }
    dbs
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether `program` is on `PATH`.
fn found(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn quote(arg: &str) -> String {
    if arg.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=,+".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_thunderbird_and_firefox_profiles() {
        let home = tempfile::tempdir().unwrap();
        for profile in [".thunderbird/abc.default", ".mozilla/firefox/xyz.default-release", ".thunderbird/no-db"] {
            std::fs::create_dir_all(home.path().join(profile)).unwrap();
        }
        std::fs::write(home.path().join(".thunderbird/abc.default/cert9.db"), b"").unwrap();
        std::fs::write(home.path().join(".mozilla/firefox/xyz.default-release/cert9.db"), b"").unwrap();
        let dbs = nss_databases(home.path());
        assert_eq!(dbs.len(), 2, "{dbs:?}");
        assert!(dbs[0].ends_with(".thunderbird/abc.default"));
    }

    #[test]
    fn dry_run_shows_commands_and_advice() {
        let plan = Plan {
            steps: vec![Step { what: "do it".into(), command: vec!["echo".into(), "a b".into()] }],
            advice: vec!["also this".into()],
        };
        let (report, ok) = execute(&plan, true);
        assert!(ok);
        assert_eq!(report, "would do it: echo 'a b'\nyou: also this\n");
        let (report, ok) = execute(&plan, false);
        assert!(ok && report.starts_with("done: do it (echo 'a b')"), "{report}");
    }
}
