//! What `coi-proxy setup` reads from the network: DNS answers (SRV and MX, with name
//! compression) and autoconfig XML. The first byte picks the parser; neither may panic, and what
//! they return must be safe to write into proxy.toml (the config parser accepts it).
#![no_main]

use coi_proxy::cli::setup::{autoconfig, dns, edit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 | 1 => {
            let qtype = if which % 3 == 0 { dns::TYPE_SRV } else { dns::TYPE_MX };
            let id = rest.first().map_or(0, |&b| u16::from(b) << 8 | u16::from(rest.get(1).copied().unwrap_or(0)));
            if let Ok(dns::Answer::Records(records)) = dns::parse_response(id, qtype, rest) {
                for r in records {
                    let name = match r {
                        dns::Record::Srv(s) => s.target,
                        dns::Record::Mx(m) => m.exchange,
                    };
                    assert!(name.len() <= 256, "{name}");
                }
            }
        }
        _ => {
            let Ok(xml) = std::str::from_utf8(rest) else { return };
            if let Ok(servers) = autoconfig::parse(xml, "alice@example.org") {
                assert!(!servers.imap.is_empty());
                let s = &servers.imap[0];
                let scheme = match s.security {
                    coi_proxy::config::Security::Implicit => "imaps",
                    coi_proxy::config::Security::StartTls => "imap+starttls",
                    coi_proxy::config::Security::Plain => "imap",
                };
                let host = if s.host.contains(':') { format!("[{}]", s.host) } else { s.host.clone() };
                let entry = edit::AccountEntry {
                    login: s.username.clone().unwrap_or_else(|| "alice@example.org".into()),
                    imap: format!("{scheme}://{host}:{}", s.port),
                    smtp: None,
                    ca_file: None,
                };
                // Whatever a provider publishes ends up as a valid config, or as a clear error.
                if let Err(e) = edit::add_account("", std::path::Path::new("fuzz.toml"), &entry) {
                    assert!(matches!(e, edit::EditError::Invalid(_)), "{e}");
                }
            }
        }
    }
});
