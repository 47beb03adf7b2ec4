//! One account as the whole proxy sees it (the floor: no wing, no edge): its COI settings, what
//! its worker decided, the registry of accounts seen since start, and where its password comes
//! from for work done without a client (the account worker, relaying queued mail): the
//! account's `password_command`, else the last successful client login, held in memory only and
//! never written anywhere; for an account with `[account.oauth2]`, its OAuth2 grant (the oauth
//! wing keeps it; its access token is cached here, under the lock that lets one refresh run at a
//! time).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::secret::Secret;

/// The COI message filter mode (COI server spec, "Configure Message Filtering").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    None,
    Active,
    Seen,
}

impl Filter {
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Active => "active",
            Filter::Seen => "seen",
        }
    }

    pub fn parse(value: &[u8]) -> Option<Filter> {
        match value {
            b"none" => Some(Filter::None),
            b"active" => Some(Filter::Active),
            b"seen" => Some(Filter::Seen),
            _ => None,
        }
    }
}

/// An account's COI configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoiConfig {
    pub enabled: bool,
    pub filter: Filter,
}

impl CoiConfig {
    /// Reads the configuration from stored entry values (absent or unknown values mean the default).
    pub fn from_values(enabled: Option<&[u8]>, filter: Option<&[u8]>) -> CoiConfig {
        CoiConfig { enabled: enabled == Some(b"yes"), filter: filter.and_then(Filter::parse).unwrap_or_default() }
    }

    /// The filter that is in force: filtering only happens while COI is enabled.
    pub fn effective_filter(&self) -> Filter {
        if self.enabled { self.filter } else { Filter::None }
    }
}

/// What the account worker has decided so far, for the sessions that keep new messages from
/// their clients until it has (the quiet INBOX).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Ordinary messages left in INBOX (monotonic).
    pub kept: u64,
    /// Chat messages moved out of INBOX (monotonic).
    pub moved: u64,
    /// The worker watches INBOX and files chat messages; while it does not, nobody waits for it.
    pub watching: bool,
    /// When the worker's latest completed look at INBOX began: every message in INBOX then has
    /// been classified since, and moved if chat under `active`.
    pub looked: Option<Instant>,
    /// INBOX's UIDVALIDITY and the first UID not classified yet, as of `looked`.
    pub position: Option<(u32, u32)>,
}

/// One account (one login name), shared by its sessions and its worker.
pub struct Account {
    pub login: String,
    /// The COI configuration; sessions publish every change, the worker follows it.
    pub config: watch::Sender<CoiConfig>,
    /// Wakes the worker: a client changed flags (seen mode) or mail may have arrived.
    pub nudge: Notify,
    /// What the worker decided about new INBOX messages (for the quiet INBOX).
    pub verdicts: watch::Sender<Verdicts>,
    /// A chat client (`[coi] chat_clients`) logged in since start: its chat mail in Junk is
    /// rescued by the worker (`[coi] rescue_junk`).
    pub chat_client: AtomicBool,
    /// An OAuth2 account's access token while it is good; the lock is held through a refresh,
    /// so sessions, the worker and the queue never refresh the same grant twice at once.
    pub bearer: tokio::sync::Mutex<Option<Bearer>>,
}

/// An access token in memory and when it stops being good.
pub struct Bearer {
    pub token: Secret,
    /// Unix seconds.
    pub expires_at: i64,
    /// Its lifetime when issued, in seconds (how early to refresh it depends on it).
    pub lifetime: i64,
}

impl Account {
    /// Publishes a configuration read from or written to wherever it lives.
    pub fn set_config(&self, config: CoiConfig) {
        self.config.send_if_modified(|current| {
            let changed = *current != config;
            *current = config;
            changed
        });
    }

    pub fn current(&self) -> CoiConfig {
        *self.config.borrow()
    }
}

/// All accounts the proxy has seen since it started, by their key (`Config::account_key`: the
/// login exactly as the provider knows it; callers pass that, never a login as typed).
#[derive(Default)]
pub struct Accounts {
    accounts: Mutex<HashMap<String, Arc<Account>>>,
}

impl Accounts {
    pub fn account(&self, login: &str) -> Arc<Account> {
        let key = login.to_string();
        self.accounts
            .lock()
            .expect("accounts")
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Account {
                    login: key,
                    config: watch::channel(CoiConfig::default()).0,
                    nudge: Notify::new(),
                    verdicts: watch::channel(Verdicts::default()).0,
                    chat_client: AtomicBool::new(false),
                    bearer: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }
}

/// Passwords of accounts that logged in through the proxy since it started, by account key.
#[derive(Default)]
pub struct Credentials {
    remembered: Mutex<HashMap<String, Secret>>,
}

/// What the proxy signs in to an account's provider with, for work of its own.
#[derive(Debug)]
pub enum Credential {
    /// The account's password (`password_command`, or the last client login's).
    Password(Secret),
    /// `[account.oauth2]`: an access token from the account's stored grant (the oauth wing
    /// refreshes it); no password is needed.
    OAuth2,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no password known for {login}: configure password_command for it, or log in once through the proxy")]
    Unknown { login: String },
    #[error("password_command for {login} failed: {reason}")]
    Command { login: String, reason: String },
}

impl Credentials {
    /// Remembers the password of a login the provider just accepted.
    pub fn remember(&self, login: &str, password: &Secret) {
        self.remembered.lock().expect("credentials").insert(login.to_string(), password.clone());
    }

    /// Forgets a password the provider no longer accepts.
    pub fn forget(&self, login: &str) {
        self.remembered.lock().expect("credentials").remove(login);
    }

    /// What the proxy's own work signs in to `login`'s provider with: the OAuth2 grant where
    /// `[account.oauth2]` applies, else [`Credentials::password`].
    pub async fn credential(&self, config: &Config, login: &str) -> Result<Credential, CredentialError> {
        if config.oauth2_for(login).is_some() {
            return Ok(Credential::OAuth2);
        }
        self.password(config, login).await.map(Credential::Password)
    }

    /// The password for `login`: its `password_command` if configured, else a remembered one.
    pub async fn password(&self, config: &Config, login: &str) -> Result<Secret, CredentialError> {
        if let Some(command) = password_command(config, login) {
            return run_password_command(login, command).await;
        }
        self.remembered
            .lock()
            .expect("credentials")
            .get(login)
            .cloned()
            .ok_or_else(|| CredentialError::Unknown { login: login.to_string() })
    }
}

/// The `password_command` configured for `login` (an `[[account]]` with that login), if any:
/// with one, the account's work goes on with no client connected.
pub fn password_command<'a>(config: &'a Config, login: &str) -> Option<&'a str> {
    config
        .accounts
        .iter()
        .find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login)))
        .and_then(|a| a.password_command.as_deref())
}

/// Whether the proxy can sign in to `login`'s provider with no client connected: a
/// `password_command`, or an OAuth2 grant.
pub fn works_without_client(config: &Config, login: &str) -> bool {
    password_command(config, login).is_some() || config.oauth2_for(login).is_some()
}

/// Runs `command` with `sh -c`; the first line of its output is the password. Its stderr is not
/// passed on (it could echo the secret), only the exit status.
async fn run_password_command(login: &str, command: &str) -> Result<Secret, CredentialError> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| CredentialError::Command { login: login.into(), reason: e.to_string() })?;
    if !output.status.success() {
        return Err(CredentialError::Command { login: login.into(), reason: format!("exited with {}", output.status) });
    }
    let stdout = Secret::new(output.stdout);
    let line = stdout.expose().split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(CredentialError::Command { login: login.into(), reason: "printed no password".into() });
    }
    Ok(Secret::new(line.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::parse(toml, std::path::Path::new("t.toml")).unwrap()
    }

    #[tokio::test]
    async fn command_then_memory() {
        let c = config(
            "[upstream]\nimap = \"imap://127.0.0.1:1\"\n[[account]]\nlogin = \"a@x\"\npassword_command = \"printf 's3cret\\\\nignored'\"\n",
        );
        let creds = Credentials::default();
        assert_eq!(creds.password(&c, "A@x").await.unwrap().expose(), b"s3cret");
        let err = creds.password(&c, "b@x").await.unwrap_err().to_string();
        assert!(err.contains("no password known for b@x"), "{err}");
        creds.remember("b@x", &Secret::new(b"pw".to_vec()));
        assert_eq!(creds.password(&c, "b@x").await.unwrap().expose(), b"pw");
        assert!(creds.password(&c, "B@x").await.is_err(), "keys are exact: another account's password");
        creds.forget("b@x");
        assert!(creds.password(&c, "b@x").await.is_err());
    }

    #[tokio::test]
    async fn oauth2_accounts_need_no_password() {
        let c = config(
            "[upstream]\nimap = \"imap://127.0.0.1:1\"\n[[account]]\nlogin = \"a@x\"\n[account.oauth2]\nprovider = \"google\"\nclient_id = \"c\"\n",
        );
        let creds = Credentials::default();
        assert!(matches!(creds.credential(&c, "A@x").await.unwrap(), Credential::OAuth2));
        assert!(creds.credential(&c, "b@x").await.is_err());
        creds.remember("b@x", &Secret::new(b"pw".to_vec()));
        assert!(matches!(creds.credential(&c, "b@x").await.unwrap(), Credential::Password(p) if p.expose() == b"pw"));
        assert!(works_without_client(&c, "a@x") && !works_without_client(&c, "b@x"));
    }

    #[tokio::test]
    async fn failing_command_reports_status_not_output() {
        let c = config(
            "[upstream]\nimap = \"imap://127.0.0.1:1\"\n[[account]]\nlogin = \"a@x\"\npassword_command = \"echo leaked >&2; exit 3\"\n",
        );
        let err = Credentials::default().password(&c, "a@x").await.unwrap_err().to_string();
        assert!(err.contains("exited with") && !err.contains("leaked"), "{err}");
    }
}
