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
    /// Where the proxy keeps its state (overrides state_dir; the default is the config's, or
    /// /var/lib/coi-proxy for /etc/coi-proxy/proxy.toml, else ~/.local/share/coi-proxy).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Accepted before the subcommand too (`coi-proxy --upstream URL run`); see `run --help`.
    #[arg(long, value_name = "URL", hide = true)]
    upstream: Option<String>,
    /// Accepted before the subcommand too; see `run --help`.
    #[arg(long, value_enum, hide = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the proxy until SIGTERM or Ctrl-C; SIGHUP reloads the configuration.
    Run {
        /// The provider's IMAP server, e.g. imaps://imap.example.org:993 (overrides [upstream] imap).
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
        /// Log lines as human-readable text (default) or as one JSON object per line (journald, Loki).
        #[arg(long, value_enum, env = "COI_PROXY_LOG_FORMAT")]
        log_format: Option<LogFormat>,
        /// Logs every IMAP line of every session, with passwords, AUTHENTICATE data and message
        /// bodies replaced by markers (for bug reports; verbose).
        #[arg(long)]
        trace_protocol: bool,
    },
    /// Validates the configuration and runs what the daemon will run: its listeners, every
    /// provider and route, each ca_file, and each account's password_command with a login.
    Check {
        /// The provider's IMAP server, e.g. imaps://imap.example.org:993 (overrides [upstream] imap).
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
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
    /// Many instances sharing accounts through etcd ([cluster] in the configuration).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Signs the proxy in to providers that want OAuth2 (Gmail, Microsoft 365; works while the
    /// daemon runs).
    Oauth {
        #[command(subcommand)]
        action: OauthAction,
    },
    /// The OpenPGP key coi-proxy holds for an account (works while the daemon runs).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Prints a SecureJoin invite link for an account (last line): a Delta Chat user who opens
    /// it becomes a verified contact; the daemon answers the handshake (works while it runs).
    Invite {
        /// The account (its login, an e-mail address).
        login: String,
        /// Also writes the link as a QR code to this PNG file (made 0600: it holds the link's
        /// tokens).
        #[arg(long, value_name = "FILE.png")]
        qr: Option<std::path::PathBuf>,
    },
    /// Joins a Delta Chat user's invite link (https://i.delta.chat/#...) for an account: the
    /// daemon completes the handshake as their answers arrive (works while it runs).
    Join {
        /// The account (its login, an e-mail address).
        login: String,
        /// The invite link, quoted for the shell.
        link: String,
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
enum ClusterAction {
    /// Shows the live instances and which accounts each owns (read from etcd).
    Status,
}

#[derive(Subcommand)]
enum OauthAction {
    /// Authorizes coi-proxy at the provider of LOGIN (an [[account]] with [account.oauth2]):
    /// prints the URL and code to use, stores the grant, and sets the local password your mail
    /// client will log in to coi-proxy with.
    Authorize {
        /// The account's login, as in its [[account]] entry.
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
    Man {
        /// The directory for the pages.
        dir: PathBuf,
    },
    /// The completion script for SHELL, to stdout.
    Completions {
        /// The shell the script is for.
        shell: coi_proxy::cli::generate::Shell,
    },
    /// Man pages into DIR/man and completions into DIR/completions (what the package installs).
    All {
        /// The directory to write `man/` and `completions/` into.
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Lists queued messages (recipients, state, why each waits, next try) and recent deliveries.
    List,
    /// Tries a message again now.
    Retry {
        /// The message, as `queue list` shows it (#3 or 3).
        #[arg(value_parser = queue_id)]
        id: u64,
    },
    /// Removes a message from the queue without sending it.
    Drop {
        /// The message, as `queue list` shows it (#3 or 3).
        #[arg(value_parser = queue_id)]
        id: u64,
    },
}

/// A queue id as `queue list` prints it (`#3`), or the bare number.
fn queue_id(text: &str) -> Result<u64, String> {
    coi_proxy::smtp::control::parse_id(text).ok_or_else(|| {
        format!("`{text}` is not a message of the queue; give the number `coi-proxy queue list` shows, e.g. #3")
    })
}

#[derive(Subcommand)]
enum KeyAction {
    /// Writes the account's key, ASCII-armored, to stdout (made now if it has none yet).
    Export {
        /// The account (its login, an e-mail address).
        login: String,
        /// The secret key instead of the public one (importable into Delta Chat or Thunderbird;
        /// keep it safe: it reads all the account's encrypted mail).
        #[arg(long)]
        secret: bool,
    },
    /// Makes an ASCII-armored secret key (Delta Chat's or Thunderbird's export) the account's
    /// key, so that one identity serves both.
    Import {
        /// The account (its login, an e-mail address).
        login: String,
        /// The file with the armored secret key.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertAction {
    /// Writes the PEM certificate (the local CA) that mail clients must trust. Reads the state
    /// directory only: it never creates a CA.
    Export {
        /// The file to write; without it, the PEM goes to stdout.
        path: Option<PathBuf>,
    },
    /// Adds the local CA to this user's trust stores where the command line can (system store as
    /// root, Thunderbird/Firefox/Chromium NSS databases, macOS login keychain) and says what is left.
    Install {
        /// Only show what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// Creates the local CA and server certificate in the state directory now, as the daemon
    /// does at its first start (for installers; an existing CA is kept).
    Create,
    /// Replaces the local CA with a new one (with name constraints). Clients that trust the
    /// current CA still connect for the overlap; within it, give every client the new CA
    /// (`cert export`/`cert install`). Reload the daemon afterwards to serve it.
    Rotate {
        /// Days during which clients that still trust only the current CA connect (0: none).
        #[arg(long, value_name = "DAYS", default_value_t = coi_proxy::tls::DEFAULT_OVERLAP_DAYS)]
        overlap_days: u32,
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
    let format = match command_log_format(&cli.command).or(cli.log_format) {
        Some(LogFormat::Json) => coi_proxy::logging::Format::Json,
        _ => coi_proxy::logging::Format::Human,
    };
    if let Command::Run { trace_protocol: true, .. } = cli.command {
        coi_proxy::logging::keep_protocol_trace();
    }
    coi_proxy::logging::init(config.log.filter.as_deref(), format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("coi-blocking")
        .on_thread_park(coi_proxy::metrics::runtime_thread_parked)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coi-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run { trace_protocol, .. } => {
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
                let (upstream, state_dir) = (upstream_override(&cli.command, &cli), cli.state_dir.clone());
                Box::new(move || apply_overrides(Config::load(&path)?, upstream.as_deref(), state_dir.as_deref()))
                    as coi_proxy::app::ConfigSource
            });
            match runtime.block_on(coi_proxy::app::run(config, reload)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: the log goes to stderr (the journal) as well.
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { offline, .. } => {
            let (report, ok) = match offline {
                true => coi_proxy::check::offline(&config, source.as_deref()),
                false => runtime.block_on(coi_proxy::check::run(&config, source.as_deref())),
            };
            print!("{report}");
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Cert { action } => print_or_fail(match action {
            CertAction::Export { path } => export_cert(&config, path),
            CertAction::Install { dry_run } => install_cert(&config, dry_run),
            CertAction::Create => create_cert(&config),
            CertAction::Rotate { overlap_days } => rotate_cert(&config, overlap_days),
        }),
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
        Command::Key { action } => {
            use coi_proxy::openpgp::commands::GatewayCommand as G;
            let cmd = match action {
                KeyAction::Export { login, secret } => G::KeyExport { login, secret },
                KeyAction::Import { login, file } => match std::fs::read(&file) {
                    Ok(armored) => G::KeyImport { login, armored },
                    Err(e) => {
                        eprintln!("coi-proxy: cannot read {}: {e}", file.display());
                        return ExitCode::FAILURE;
                    }
                },
            };
            print_or_fail(coi_proxy::smtp::control::cli_gateway(&config, &cmd))
        }
        Command::Invite { login, qr } => {
            let cmd = coi_proxy::openpgp::commands::GatewayCommand::Invite { login };
            let result = coi_proxy::smtp::control::cli_gateway(&config, &cmd).map_err(|e| e.to_string());
            // The link is the answer's last line; the QR code is written before it is printed.
            let result = result.and_then(|text| match &qr {
                Some(path) => {
                    let link = text.lines().last().unwrap_or_default();
                    coi_proxy::cli::qr::write(link, path).map_err(|e| e.to_string())?;
                    Ok(format!("QR code written to {}\n{text}", path.display()))
                }
                None => Ok(text),
            });
            print_or_fail(result)
        }
        Command::Join { login, link } => {
            let cmd = coi_proxy::openpgp::commands::GatewayCommand::Join { login, link };
            print_or_fail(coi_proxy::smtp::control::cli_gateway(&config, &cmd))
        }
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
        Command::Cluster { action: ClusterAction::Status } => {
            print_or_fail(runtime.block_on(coi_proxy::cluster::status::status(&config)))
        }
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

fn command_log_format(command: &Command) -> Option<LogFormat> {
    match command {
        Command::Run { log_format, .. } => *log_format,
        _ => None,
    }
}

/// `--upstream` after the subcommand (`run`, `check`), else before it.
fn upstream_override(command: &Command, cli: &Cli) -> Option<String> {
    let after = match command {
        Command::Run { upstream, .. } | Command::Check { upstream, .. } => upstream.clone(),
        _ => None,
    };
    after.or_else(|| cli.upstream.clone())
}

/// The local CA's file, for the commands that only read it: nothing is created, and a missing
/// CA is "no state here" with the directory looked in.
fn existing_ca(config: &Config) -> Result<PathBuf, String> {
    use coi_proxy::state;
    let dir = &config.state_dir;
    match state::existing(dir).map_err(|e| e.to_string())? {
        None => {
            return Err(state::no_state_here(dir, "does not exist")
                + "; the daemon makes it at its first start, `coi-proxy cert create` now");
        }
        Some(prepared @ state::Prepared::MadePrivate { .. }) => eprintln!("coi-proxy: {}: {prepared}", dir.display()),
        Some(_) => {}
    }
    let ca = coi_proxy::tls::LocalCertPaths::new(dir).ca;
    if !ca.exists() {
        return Err(state::no_state_here(dir, "has no local certificate authority (tls/ca.pem)")
            + "; the daemon makes it at its first start, `coi-proxy cert create` now");
    }
    Ok(ca)
}

fn export_cert(config: &Config, path: Option<PathBuf>) -> Result<String, String> {
    let ca = existing_ca(config)?;
    let pem = coi_proxy::tls::export_pem(&config.state_dir).map_err(|e| e.to_string())?;
    match path {
        None => Ok(pem),
        Some(path) => {
            std::fs::write(&path, pem).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {} (the local CA, {}); import it as a trusted certificate authority in your mail client or system",
                path.display(),
                ca.display()
            );
            Ok(String::new())
        }
    }
}

fn install_cert(config: &Config, dry_run: bool) -> Result<String, String> {
    let ca = existing_ca(config)?;
    match coi_proxy::trust::execute(&coi_proxy::trust::plan(&ca), dry_run) {
        (report, true) => Ok(report),
        (report, false) => {
            print!("{report}");
            Err("not every step succeeded (see above)".into())
        }
    }
}

/// `cert create`: the CA and leaf as the daemon's first start makes them.
fn create_cert(config: &Config) -> Result<String, String> {
    use coi_proxy::tls::{self, CertAction};
    coi_proxy::state::prepare(&config.state_dir).map_err(|e| e.to_string())?;
    let action = tls::ensure_local_cert(&config.state_dir, &tls::cert_names_for(config)).map_err(|e| e.to_string())?;
    let ca = tls::LocalCertPaths::new(&config.state_dir).ca;
    Ok(match action {
        CertAction::Created => {
            format!("created the local CA {}; `coi-proxy cert export` gives it to clients\n", ca.display())
        }
        CertAction::Reused => format!("the local CA {} exists already; kept\n", ca.display()),
        action => format!("the local CA {} exists already; its server certificate was {action}\n", ca.display()),
    })
}

/// `cert rotate`: a new CA, the old one kept trusted for the overlap (see `tls::local`).
fn rotate_cert(config: &Config, overlap_days: u32) -> Result<String, String> {
    use coi_proxy::tls;
    coi_proxy::state::prepare(&config.state_dir).map_err(|e| e.to_string())?;
    let rotated =
        tls::rotate_ca(&config.state_dir, &tls::cert_names_for(config), overlap_days).map_err(|e| e.to_string())?;
    let ca = tls::LocalCertPaths::new(&config.state_dir).ca;
    let mut out = format!("made a new local CA: {}\n", ca.display());
    match rotated.overlap_until {
        Some(until) => out.push_str(&format!(
            "clients that trust the previous CA keep connecting for {overlap_days} days, until {}; before then, give every \
             client the new CA (`coi-proxy cert export FILE`, or `coi-proxy cert install` on this machine)\n",
            until.date()
        )),
        None => out.push_str(
            "no overlap: every client must trust the new CA now (`coi-proxy cert export FILE`, `coi-proxy cert install`)\n",
        ),
    }
    out.push_str("reload the running daemon to serve it: systemctl reload coi-proxy (or kill -HUP its pid)\n");
    Ok(out)
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
    let upstream = upstream_override(&cli.command, cli);
    Ok((apply_overrides(config, upstream.as_deref(), cli.state_dir.as_deref())?, source))
}

/// `--upstream` and `--state-dir` over what the file says.
fn apply_overrides(
    mut config: Config,
    upstream: Option<&str>,
    state_dir: Option<&std::path::Path>,
) -> Result<Config, ConfigError> {
    if let Some(url) = upstream {
        config::ServerUrl::parse_imap(url)
            .map_err(|e| ConfigError::Flag { flag: "--upstream", message: e.to_string() })?;
        match &mut config.upstream {
            Some(up) => up.imap = url.to_string(),
            None => {
                config.upstream = Some(config::Upstream {
                    imap: url.to_string(),
                    smtp: None,
                    ca_file: None,
                    forward_client_address: None,
                })
            }
        }
    }
    if let Some(dir) = state_dir {
        config.state_dir = dir.to_path_buf();
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every subcommand says what it is in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !["help", "version"].contains(&id) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        walk(&cli, "coi-proxy", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// `--upstream` and `--log-format` belong to `run` (and `check`), not to `cert` or `queue`.
    #[test]
    fn options_are_listed_where_they_apply() {
        let mut cli = Cli::command();
        cli.build();
        let visible = |path: &[&str]| -> Vec<String> {
            let mut cmd = &cli;
            for name in path {
                cmd = cmd.find_subcommand(name).unwrap();
            }
            cmd.get_arguments().filter(|a| !a.is_hide_set()).filter_map(|a| a.get_long().map(str::to_string)).collect()
        };
        for path in [&["cert", "export"][..], &["queue", "list"], &["cert"], &["queue"]] {
            let args = visible(path);
            assert!(!args.contains(&"upstream".into()) && !args.contains(&"log-format".into()), "{path:?}: {args:?}");
            assert!(args.contains(&"state-dir".into()), "{path:?}: {args:?}");
        }
        assert!(visible(&["run"]).contains(&"upstream".into()) && visible(&["run"]).contains(&"log-format".into()));
        assert!(visible(&["check"]).contains(&"upstream".into()));
        // Both places still work.
        for args in
            [&["coi-proxy", "--upstream", "imaps://x", "run"][..], &["coi-proxy", "run", "--upstream", "imaps://x"]]
        {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(upstream_override(&cli.command, &cli).as_deref(), Some("imaps://x"));
        }
        assert_eq!(queue_id("#12"), Ok(12));
        assert_eq!(queue_id("12"), Ok(12));
        assert!(queue_id("x").unwrap_err().contains("coi-proxy queue list"));
    }
}
