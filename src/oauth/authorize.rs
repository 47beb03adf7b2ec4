//! `coi-proxy oauth authorize <login> --password-stdin`: runs the account's flow (device flow
//! where a device authorization endpoint is known, else the browser flow; `--browser` picks the
//! browser flow where both are), checks that a refresh token came, and stores the grant with
//! the local password's hash (through the running daemon, or directly).

use std::io::Write;
use std::path::Path;

use super::control::{self, ControlError};
use super::endpoint::EndpointError;
use super::{OAuthError, browser, device};
use crate::config::Config;
use crate::secret::Secret;

/// Why `oauth authorize` did not store a grant; the text is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error(
        "{login} has no [account.oauth2] in the configuration (add one to its [[account]]; see the README, OAuth2)"
    )]
    NotConfigured { login: String },
    #[error("[account.oauth2] of {login}: {key}: {why}")]
    Config { login: String, key: &'static str, why: String },
    #[error("--browser: the [account.oauth2] of {login} has no authorization_url")]
    NoBrowserFlow { login: String },
    #[error("no local password on stdin: give the password your mail client will log in to coi-proxy with")]
    EmptyPassword,
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("{origin} refused: {error}")]
    Refused { origin: String, error: String },
    #[error("the sign-in was declined ({reason}); nothing was stored")]
    Denied { reason: String },
    #[error("the code expired before the sign-in was done; run the command again")]
    Expired,
    #[error("no answer from the browser within {minutes} minutes; run the command again")]
    Timeout { minutes: u64 },
    #[error("cannot listen for the browser's redirect on {addr}: {source}")]
    Listener { addr: String, source: std::io::Error },
    #[error(transparent)]
    Grant(#[from] OAuthError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Runs the flow for `login` and stores the grant; progress (the URL and code to use) goes to
/// `out`, the returned text is the outcome.
pub async fn run<W: Write>(
    config: &Config,
    socket: &Path,
    login: &str,
    password: Secret,
    browser: bool,
    out: &mut W,
) -> Result<String, AuthorizeError> {
    let oauth2 = config.oauth2_for(login).ok_or_else(|| AuthorizeError::NotConfigured { login: login.into() })?;
    let endpoints =
        oauth2.endpoints().map_err(|(key, why)| AuthorizeError::Config { login: login.into(), key, why })?;
    if password.is_empty() {
        return Err(AuthorizeError::EmptyPassword);
    }
    let tokens = match (&endpoints.device_authorization_url, &endpoints.authorization_url) {
        (Some(device_url), _) if !browser => device::run(&endpoints, device_url, login, out).await?,
        (_, Some(authorization_url)) => browser::run(&endpoints, authorization_url, login, out).await?,
        (_, None) => return Err(AuthorizeError::NoBrowserFlow { login: login.into() }),
    };
    if tokens.refresh_token.is_none() {
        return Err(OAuthError::NoRefreshToken.into());
    }
    let stored = control::store_grant(config, socket, login, &endpoints, tokens, password).await?;
    Ok(format!(
        "{stored}coi-proxy now signs in to the provider for {login}; set up your mail client with the login {login} and the password you gave\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_is_refused_before_any_request() {
        let config = Config::parse(
            "[upstream]\nimap = \"imaps://x\"\n[[account]]\nlogin = \"a@x\"\n[account.oauth2]\nprovider = \"microsoft\"\nclient_id = \"c\"\n[[account]]\nlogin = \"b@x\"\n[account.oauth2]\ndevice_authorization_url = \"https://idp.example/d\"\ntoken_url = \"https://idp.example/t\"\nscope = \"mail\"\nclient_id = \"c\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let socket = Path::new("/nonexistent/control.sock");
        let pw = || Secret::new(b"pw".to_vec());
        let mut out = Vec::new();
        let err = run(&config, socket, "z@x", pw(), false, &mut out).await.unwrap_err();
        assert!(matches!(err, AuthorizeError::NotConfigured { .. }), "{err}");
        let err = run(&config, socket, "a@x", Secret::default(), false, &mut out).await.unwrap_err();
        assert!(matches!(err, AuthorizeError::EmptyPassword), "{err}");
        let err = run(&config, socket, "b@x", pw(), true, &mut out).await.unwrap_err();
        assert!(err.to_string().contains("--browser: the [account.oauth2] of b@x has no authorization_url"), "{err}");
        assert!(out.is_empty());
    }
}
