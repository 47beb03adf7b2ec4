//! The `coi-proxy` command line; all work is done by the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coi_proxy::config::{self, Config, ConfigError};

#[derive(Parser)]
#[command(
    name = "coi-proxy",
    version,
    about = "Makes any IMAP mail provider look like a Chat over IMAP (COI) server",
    after_help = "Examples:\n  \
        coi-proxy run --upstream imaps://imap.example.org:993   # no config file needed\n  \
        coi-proxy run --config /etc/coi-proxy/proxy.toml\n  \
        coi-proxy setup alice@example.org --password-stdin      # find the provider, add the account\n  \
        coi-proxy check                                         # test the config and the provider\n  \
        coi-proxy cert export ~/coi-proxy-ca.pem                # the certificate your mail client must trust\n\n\
        Without --config, proxy.toml is looked for in ., $XDG_CONFIG_HOME/coi-proxy and /etc/coi-proxy."
)]
struct Cli {
    /// The configuration file (default: the first of ./proxy.toml, $XDG_CONFIG_HOME/coi-proxy/proxy.toml, /etc/coi-proxy/proxy.toml).
    #[arg(long, short, global = true, env = "COI_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// The provider's IMAP server, e.g. imaps://imap.example.org:993 (overrides [upstream] imap).
    #[arg(long, global = true, value_name = "URL")]
    upstream: Option<String>,
    /// Where the proxy keeps its state (overrides state_dir).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log lines as human-readable text or as one JSON object per line (journald, Loki).
    #[arg(long, global = true, value_enum, default_value = "human", env = "COI_PROXY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the proxy until SIGTERM or Ctrl-C; SIGHUP reloads the configuration.
    Run {
        /// Logs every IMAP line of every session, with passwords, AUTHENTICATE data and message
        /// bodies replaced by markers (for bug reports; verbose).
        #[arg(long)]
        trace_protocol: bool,
    },
    /// Validates the configuration and connects to every provider.
    Check {
        /// Only validate the configuration: contact no provider (exit status 1 if none is configured).
        #[arg(long)]
        offline: bool,
    },
    /// Manages the local TLS certificate that mail clients connect to.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Shows and steers the outgoing mail queue (works while the daemon runs).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Signs the proxy in to providers that want OAuth2 (Gmail, Microsoft 365; works while the
    /// daemon runs).
    Oauth {
        #[command(subcommand)]
        action: OauthAction,
    },
    /// Finds the provider's servers from an e-mail address, tries the login and adds the account
    /// to the configuration; then prints what to enter in the mail client.
    Setup(coi_proxy::cli::setup::SetupArgs),
    /// Writes a file that sets up a mail client in one step (to stdout).
    Profile {
        #[command(subcommand)]
        kind: coi_proxy::cli::profile::ProfileCommand,
    },
    /// Writes the man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand)]
enum OauthAction {
    /// Authorizes coi-proxy at the provider of LOGIN (an [[account]] with [account.oauth2]):
    /// prints the URL and code to use, stores the grant, and sets the local password your mail
    /// client will log in to coi-proxy with.
    Authorize {
        login: String,
        /// Read the local password from the first line of stdin (required).
        #[arg(long)]
        password_stdin: bool,
        /// Use the browser flow (PKCE, loopback redirect) where the device flow is the default.
        #[arg(long)]
        browser: bool,
    },
    /// Shows each OAuth2 account's state: authorized, refreshed, or refused by the provider.
    Status,
}

#[derive(Subcommand)]
enum Generate {
    /// coi-proxy.1 and one page per subcommand, into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL, to stdout.
    Completions { shell: coi_proxy::cli::generate::Shell },
    /// Man pages into DIR/man and completions into DIR/completions (what the package installs).
    All { dir: PathBuf },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Lists queued messages: recipients, state, attempts, next try.
    List,
    /// Tries a message again now.
    Retry { id: u64 },
    /// Removes a message from the queue without sending it.
    Drop { id: u64 },
}

#[derive(Subcommand)]
enum CertAction {
    /// Writes the PEM certificate (the local CA) that mail clients must trust; to stdout without PATH.
    Export { path: Option<PathBuf> },
    /// Adds the local CA to this user's trust stores where the command line can (system store as
    /// root, Thunderbird/Firefox/Chromium NSS databases, macOS login keychain) and says what is left.
    Install {
        /// Only show what would be done.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Generate { what } => return generate(what),
        // Before the config is read: setup may create the file, or name what is wrong in it.
        Command::Setup(args) => return setup(args, cli.config.as_deref()),
        _ => {}
    }
    let (config, source) = match load_config(&cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("coi-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let format = match cli.log_format {
        LogFormat::Human => coi_proxy::logging::Format::Human,
        LogFormat::Json => coi_proxy::logging::Format::Json,
    };
    coi_proxy::logging::init(config.log.filter.as_deref(), format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coi-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run { trace_protocol } => {
            if trace_protocol {
                coi_proxy::imap::wire::trace::enable();
                tracing::info!(
                    "protocol trace on: every IMAP line is logged; passwords, AUTHENTICATE data and message bodies are replaced by markers"
                );
            }
            if let Some(path) = &source {
                tracing::info!(config = %path.display(), "configuration loaded");
            }
            // SIGHUP re-reads the file the daemon started with, with the same overrides.
            let reload = source.clone().map(|path| {
                let (upstream, state_dir) = (cli.upstream.clone(), cli.state_dir.clone());
                Box::new(move || apply_overrides(Config::load(&path)?, upstream.as_deref(), state_dir.as_deref()))
                    as coi_proxy::app::ConfigSource
            });
            match runtime.block_on(coi_proxy::app::run(config, reload)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("coi-proxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { offline } => {
            let (report, ok) = match offline {
                true => coi_proxy::check::offline(&config, source.as_deref()),
                false => runtime.block_on(coi_proxy::check::run(&config, source.as_deref())),
            };
            print!("{report}");
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Cert { action: CertAction::Export { path } } => export_cert(&config, path),
        Command::Cert { action: CertAction::Install { dry_run } } => install_cert(&config, dry_run),
        Command::Profile { kind } => match coi_proxy::cli::profile::run(&config, &kind) {
            Ok(bytes) => {
                use std::io::Write;
                match std::io::stdout().write_all(&bytes) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("coi-proxy: cannot write the profile: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("coi-proxy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Generate { .. } | Command::Setup(_) => unreachable!("handled before the config is read"),
        Command::Queue { action } => {
            use coi_proxy::smtp::control::{self, Command as Q};
            let cmd = match action {
                QueueAction::List => Q::List,
                QueueAction::Retry { id } => Q::Retry(id),
                QueueAction::Drop { id } => Q::Drop(id),
            };
            print_or_fail(control::cli(&config, cmd))
        }
        Command::Oauth { action } => runtime.block_on(oauth(&config, action)),
    }
}

fn setup(args: &coi_proxy::cli::setup::SetupArgs, config: Option<&std::path::Path>) -> ExitCode {
    let path = coi_proxy::cli::setup::config_path(config);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(coi_proxy::cli::setup::run(args, &path)).map_err(|e| e.to_string()));
    print_or_fail(result)
}

/// A command's text on stdout, or its error on stderr and a failing exit status.
fn print_or_fail<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coi-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(what: &Generate) -> ExitCode {
    use clap::CommandFactory;
    use coi_proxy::cli::generate;
    let result = match what {
        Generate::Man { dir } => generate::man_pages(Cli::command(), dir),
        Generate::All { dir } => generate::all(Cli::command(), dir),
        Generate::Completions { shell } => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&generate::completions(Cli::command(), *shell));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coi-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn oauth(config: &Config, action: OauthAction) -> ExitCode {
    let socket = coi_proxy::smtp::control::socket_path(&config.state_dir);
    let result = match action {
        OauthAction::Authorize { login, password_stdin, browser } => {
            if !password_stdin {
                eprintln!(
                    "coi-proxy: give the local password your mail client will use on stdin, with --password-stdin \
                     (at a terminal it is asked for, without echo)"
                );
                return ExitCode::from(2);
            }
            let prompt = format!("the local password {login}'s mail client will log in to coi-proxy with");
            let password = match coi_proxy::cli::password::read_stdin(&prompt) {
                Ok(password) => password,
                Err(e) => {
                    eprintln!("coi-proxy: cannot read the password from stdin: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut out = std::io::stdout();
            coi_proxy::oauth::authorize::run(config, &socket, &login, password, browser, &mut out)
                .await
                .map_err(|e| e.to_string())
        }
        OauthAction::Status => coi_proxy::oauth::control::status(config, &socket).await.map_err(|e| e.to_string()),
    };
    print_or_fail(result)
}

fn export_cert(config: &Config, path: Option<PathBuf>) -> ExitCode {
    let result = ensure_cert(config).and_then(|()| Ok(coi_proxy::tls::export_pem(&config.state_dir)?));
    let pem = match result {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("coi-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match path {
        None => print!("{pem}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, pem) {
                eprintln!("coi-proxy: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "wrote {}; import it as a trusted certificate authority in your mail client or system",
                path.display()
            );
        }
    }
    ExitCode::SUCCESS
}

/// Why the local certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
enum CertError {
    #[error("cannot create {}: {source}", path.display())]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] coi_proxy::tls::TlsError),
}

/// Creates the local CA and certificate if they do not exist yet (as `run` would).
fn ensure_cert(config: &Config) -> Result<(), CertError> {
    let names = coi_proxy::tls::cert_names_for(config);
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| CertError::StateDir { path: config.state_dir.clone(), source })?;
    coi_proxy::tls::ensure_local_cert(&config.state_dir, &names)?;
    Ok(())
}

fn install_cert(config: &Config, dry_run: bool) -> ExitCode {
    if let Err(e) = ensure_cert(config) {
        eprintln!("coi-proxy: {e}");
        return ExitCode::FAILURE;
    }
    let ca = coi_proxy::tls::LocalCertPaths::new(&config.state_dir).ca;
    let (report, ok) = coi_proxy::trust::execute(&coi_proxy::trust::plan(&ca), dry_run);
    print!("{report}");
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The config from `--config`, else the first default path that exists, else defaults; then the
/// command-line overrides.
fn load_config(cli: &Cli) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let source = match &cli.config {
        Some(path) => Some(path.clone()),
        None => config::default_config_paths().into_iter().find(|p| p.is_file()),
    };
    let config = match &source {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    Ok((apply_overrides(config, cli.upstream.as_deref(), cli.state_dir.as_deref())?, source))
}

/// `--upstream` and `--state-dir` over what the file says.
fn apply_overrides(
    mut config: Config,
    upstream: Option<&str>,
    state_dir: Option<&std::path::Path>,
) -> Result<Config, ConfigError> {
    if let Some(url) = upstream {
        config::ServerUrl::parse_imap(url).map_err(|e| ConfigError::Invalid {
            path: "--upstream".into(),
            key: "upstream".into(),
            message: e.to_string(),
        })?;
        match &mut config.upstream {
            Some(up) => up.imap = url.to_string(),
            None => config.upstream = Some(config::Upstream { imap: url.to_string(), smtp: None, ca_file: None }),
        }
    }
    if let Some(dir) = state_dir {
        config.state_dir = dir.to_path_buf();
    }
    Ok(config)
}
