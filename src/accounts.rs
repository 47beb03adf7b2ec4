//! Account credentials for work done without a client: the account worker, and relaying queued
//! mail. A password comes from the account's `password_command`, else from the last successful
//! client login, held in memory only and never written anywhere.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::Config;
use crate::secret::Secret;

/// Passwords of accounts that logged in through the proxy since it started.
#[derive(Default)]
pub struct Credentials {
    remembered: Mutex<HashMap<String, Secret>>,
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
        self.remembered.lock().expect("credentials").insert(login.to_ascii_lowercase(), password.clone());
    }

    /// Forgets a password the provider no longer accepts.
    pub fn forget(&self, login: &str) {
        self.remembered.lock().expect("credentials").remove(&login.to_ascii_lowercase());
    }

    /// The password for `login`: its `password_command` if configured, else a remembered one.
    pub async fn password(&self, config: &Config, login: &str) -> Result<Secret, CredentialError> {
        let command = config
            .accounts
            .iter()
            .find(|a| a.login.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(login)))
            .and_then(|a| a.password_command.clone());
        if let Some(command) = command {
            return run_password_command(login, &command).await;
        }
        self.remembered
            .lock()
            .expect("credentials")
            .get(&login.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| CredentialError::Unknown { login: login.to_string() })
    }
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
        creds.remember("B@x", &Secret::new(b"pw".to_vec()));
        assert_eq!(creds.password(&c, "b@x").await.unwrap().expose(), b"pw");
        creds.forget("b@x");
        assert!(creds.password(&c, "b@x").await.is_err());
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
