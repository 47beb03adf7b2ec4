//! The config parser: any text gives a config or an error naming file, line and key.
#![no_main]

use coi_proxy::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Config::parse(text, std::path::Path::new("fuzz.toml")) {
            Ok(config) => {
                let _ = config.provider_for("alice@example.org");
                let _ = config.providers();
            }
            Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
        }
    }
});
