//! The Debian package's inputs: the generated man pages and completions are current, the
//! packaged config parses and names no provider (so the service waits for one), and the unit
//! drop-in turns the shipped unit into the package's. The package itself is built, linted,
//! installed and purged by tests/package.sh (from .ci/run: it needs root and a release build).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["man", "completions"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            out.push(Path::new(sub).join(entry.unwrap().file_name()));
        }
    }
    out.sort();
    out
}

#[test]
fn generated_man_pages_and_completions_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coi-proxy")).args(["generate", "all"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = files(dir.path());
    assert!(
        fresh.contains(&PathBuf::from("man/coi-proxy.1")) && fresh.contains(&PathBuf::from("man/coi-proxy-setup.1"))
    );
    if std::env::var_os("COI_PROXY_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(repo("packaging/man"));
        let _ = std::fs::remove_dir_all(repo("packaging/completions"));
        let out =
            Command::new(env!("CARGO_BIN_EXE_coi-proxy")).args(["generate", "all"]).arg(repo("packaging")).output();
        assert!(out.unwrap().status.success());
    }
    let how = "the CLI changed: run `cargo run -- generate all packaging` (or COI_PROXY_BLESS=1 cargo test --test packaging) and commit packaging/";
    assert_eq!(files(&repo("packaging")), fresh, "{how}");
    for file in fresh {
        let want = std::fs::read(dir.path().join(&file)).unwrap();
        let have = std::fs::read(repo("packaging").join(&file)).unwrap();
        assert!(want == have, "packaging/{} is out of date; {how}", file.display());
    }
}

#[test]
fn the_man_pages_render_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("SKIPPED: man is not installed; the man page was not rendered");
        return;
    }
    for page in std::fs::read_dir(repo("packaging/man")).unwrap() {
        let page = page.unwrap().path();
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(&page)
            .env("MANROFFSEQ", "")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        // Line-filling notes are layout, not errors; lintian ignores them too.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("cannot adjust line") && !l.contains("can't break line") && !l.trim().is_empty())
            .collect();
        assert!(out.status.success() && warnings.is_empty(), "man --warnings {}:\n{stderr}", page.display());
    }
}

#[test]
fn the_packaged_config_waits_for_a_provider_and_shares_the_state_dir() {
    let path = repo("packaging/debian/proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = coi_proxy::config::Config::parse(&text, &path).unwrap();
    assert_eq!(config.state_dir, Path::new("/var/lib/coi-proxy"), "every subcommand uses the service's state");
    assert!(config.providers().is_empty(), "the service must not start before the admin names a provider");
    let (report, ok) = coi_proxy::check::offline(&config, Some(&path));
    assert!(!ok && report.contains("coi-proxy setup"), "{report}");
    // Once setup (or the admin) adds an account, it is valid and check --offline passes.
    let entry = coi_proxy::cli::setup::edit::AccountEntry {
        login: "alice@example.org".into(),
        imap: "imaps://imap.example.org:993".into(),
        smtp: Some("smtps://smtp.example.org:465".into()),
        ca_file: None,
    };
    let edited = coi_proxy::cli::setup::edit::add_account(&text, &path, &entry).unwrap();
    let config = coi_proxy::config::Config::parse(&edited.text, &path).unwrap();
    assert!(coi_proxy::check::offline(&config, Some(&path)).1);
    assert_eq!(edited.changes.len(), 1, "the packaged config already has SMTP listeners: {:?}", edited.changes);
}

#[test]
fn the_debian_changelog_names_this_version() {
    let text = std::fs::read_to_string(repo("packaging/debian/changelog")).unwrap();
    let first = text.lines().next().unwrap();
    let want = format!("coi-proxy ({}-1) unstable; urgency=medium", env!("CARGO_PKG_VERSION"));
    assert_eq!(first, want, "a new version needs a packaging/debian/changelog entry (dch -v VERSION-1)");
    let trailer = text.lines().find(|l| l.starts_with(" -- ")).expect("a maintainer line");
    assert!(trailer.contains("> ") && trailer.ends_with("+0000"), "{trailer}");
}

#[test]
fn the_drop_in_makes_the_package_unit_and_it_verifies() {
    let drop_in = std::fs::read_to_string(repo("packaging/debian/coi-proxy.service.conf")).unwrap();
    for line in [
        "DynamicUser=no",
        "User=coi-proxy",
        "ExecStart=",
        "ExecStart=/usr/bin/coi-proxy --config /etc/coi-proxy/proxy.toml --state-dir /var/lib/coi-proxy run",
        "ExecCondition=/usr/bin/coi-proxy --config /etc/coi-proxy/proxy.toml check --offline",
    ] {
        assert!(drop_in.lines().any(|l| l == line), "{line} missing from the drop-in");
    }
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(manifest.contains("\"usr/lib/systemd/system/coi-proxy.service.d/debian.conf\""));
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed; the unit with its drop-in was not verified");
        return;
    }
    // The unit and its drop-in as installed, with the binary under test standing in for /usr/bin.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_coi-proxy");
    let unit = std::fs::read_to_string(repo("systemd/coi-proxy.service")).unwrap();
    std::fs::write(dir.path().join("coi-proxy.service"), unit.replace("/usr/local/bin/coi-proxy", bin)).unwrap();
    std::fs::create_dir(dir.path().join("coi-proxy.service.d")).unwrap();
    std::fs::write(dir.path().join("coi-proxy.service.d/debian.conf"), drop_in.replace("/usr/bin/coi-proxy", bin))
        .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("coi-proxy.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .env("SYSTEMD_COLORS", "0")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // And verify did read the drop-in: a stray key in it is reported.
    std::fs::write(dir.path().join("coi-proxy.service.d/debian.conf"), format!("{drop_in}Bogus=1\n")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("coi-proxy.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("debian.conf") && said.contains("Bogus"), "the drop-in was not read:\n{said}");
}
