//! `coi-proxy check`: validates the configuration, connects to every provider and reports what
//! the proxy will pass on, strip and add, in a form a user can paste into a bug report.

use std::fmt::Write;
use std::path::Path;

use crate::config::{Config, Security};
use crate::imap::capability;
use crate::imap::upstream::Upstream;
use crate::tls::UpstreamTls;

/// Runs the checks and returns the report and whether every provider was reachable.
pub async fn run(config: &Config, source: Option<&Path>) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let _ = writeln!(out, "coi-proxy {}", env!("CARGO_PKG_VERSION"));
    match source {
        Some(path) => _ = writeln!(out, "config: {} (valid)", path.display()),
        None => _ = writeln!(out, "config: none found, using defaults"),
    }
    let _ = writeln!(out, "state_dir: {}", config.state_dir.display());
    for (name, addr) in [("imap", config.listen.imap), ("imaps", config.listen.imaps)] {
        match addr {
            Some(a) => _ = writeln!(out, "listen {name}: {a}"),
            None => _ = writeln!(out, "listen {name}: off"),
        }
    }
    let providers = config.providers();
    if providers.is_empty() {
        let _ = writeln!(out, "provider: none configured (pass --upstream or set [upstream] imap)");
        return (out, false);
    }
    let tls = UpstreamTls::default();
    for provider in providers {
        let mode = match provider.imap.security {
            Security::Implicit => "implicit TLS",
            Security::StartTls => "STARTTLS",
            Security::Plain => "plain (loopback)",
        };
        let _ = writeln!(out, "\nprovider {} ({mode})", provider.imap);
        match Upstream::connect(&provider, &tls, config.limits.connect_timeout(), config.limits.max_line).await {
            Ok(up) => {
                let tls_line =
                    if up.conn.stream.is_tls() { "TLS ok, certificate verified" } else { "no TLS (loopback)" };
                let _ = writeln!(out, "  reachable: yes; {tls_line}");
                let _ = writeln!(out, "  capabilities before login: {}", up.capabilities.join(" "));
                let stripped = capability::stripped(&up.capabilities);
                let _ = writeln!(
                    out,
                    "  coi-proxy strips: {}",
                    if stripped.is_empty() { "nothing".into() } else { stripped.join(" ") }
                );
                let _ = writeln!(out, "  coi-proxy adds: nothing yet");
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  reachable: NO: {e}");
            }
        }
    }
    (out, ok)
}
