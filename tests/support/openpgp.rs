//! Helpers of the OpenPGP gateway tests: the Delta Chat driver script (tests/deltachat/
//! dc_openpgp.py) and its JSON report, the `coi-proxy` command line against a test proxy, and
//! a stopped proxy's stored peers.

use std::process::{Command, Output};

use super::provider::Provider;
use super::proxy::Proxy;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deltachat/dc_openpgp.py");

/// The Delta Chat script in `mode` for `user`, against `provider`.
pub fn dc_script(provider: &Provider, mode: &str, user: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(SCRIPT)
        .arg(mode)
        .args(["--provider-imap", &provider.imap_port.to_string()])
        .args(["--provider-smtp", &provider.smtp_port.to_string()])
        .args(["--lmtp", &provider.lmtp_port.to_string()])
        .args(["--user", user]);
    c
}

/// The script's JSON report (the last line of stdout that is an object).
pub fn dc_report(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("{}");
    serde_json::from_str(line).unwrap()
}

/// `coi-proxy --config <the proxy's> ARGS`.
pub fn cli(proxy: &Proxy, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coi-proxy")).arg("--config").arg(&proxy.config_path).args(args).output().unwrap()
}

/// A command's stdout; it must have succeeded.
pub fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stored peer `addr` of `login`, read from a stopped proxy's state directory.
pub fn stored_peer(proxy: &Proxy, login: &str, addr: &str) -> Option<coi_proxy::openpgp::peer::Peer> {
    use coi_proxy::openpgp::identity::Identity;
    use coi_proxy::seal::SealKey;
    let store = coi_proxy::store::Store::open(&proxy.state).unwrap();
    let seal = SealKey::load(&proxy.state.join("seal.key")).unwrap();
    Identity::with_seal(store, seal).peer(login, addr).unwrap()
}
