//! Log output: human-readable lines on stderr (journald adds its own timestamps), filtered by
//! `RUST_LOG`, else the config's `[log] filter`, else `info`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Later calls are ignored (tests may call it repeatedly).
pub fn init(config_filter: Option<&str>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .or_else(|| config_filter.map(str::to_string))
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("coi-proxy: ignoring invalid log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
