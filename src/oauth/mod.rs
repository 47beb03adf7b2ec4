//! Upstream OAuth2 (Gmail, Microsoft 365 / Outlook.com): the proxy signs in to the provider with
//! a bearer token while the mail client logs in to the proxy with a local password.
//!
//! - `authorize`: `coi-proxy oauth authorize <login> --password-stdin`, the device flow
//!   (`device`, RFC 8628) or the browser flow (`browser`, PKCE and a loopback redirect), then the
//!   grant stored through the running daemon (`control`) or directly.
//! - `grant`: at run time, the local password checked, the access token kept and refreshed (one
//!   refresh at a time per account, the rotated refresh token committed before use).
//! - `sasl`: XOAUTH2 and OAUTHBEARER, which the edges (`imap::upstream`, the SMTP relay) send.
//! - `token`, `endpoint`, `http`: the identity provider's answers (peer input, fuzzed) and the
//!   requests that get them.
//! - `password`: the Argon2id hash of the local password.
//!
//! Secrets are sealed in the store (`seal`); no token, password or client secret reaches a log or
//! an error text.

pub mod authorize;
mod browser;
pub mod control;
mod device;
pub mod endpoint;
mod grant;
pub mod http;
pub mod password;
pub mod sasl;
pub mod token;

pub use browser::{Redirect, parse_redirect};
pub use grant::{access_token, sign_in};

use crate::seal::SealError;
use crate::store::StoreError;

/// Why the proxy could not sign in to an account's provider with OAuth2.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{login} has no [account.oauth2] in the configuration")]
    NotConfigured { login: String },
    #[error("[account.oauth2] of {login}: {key}: {why}")]
    Config { login: String, key: &'static str, why: String },
    #[error("coi-proxy holds no OAuth2 authorization for {login} yet; run `coi-proxy oauth authorize {login}`")]
    NotAuthorized { login: String },
    /// The local password is not the one given to `oauth authorize`.
    #[error("wrong password")]
    WrongPassword,
    #[error(
        "the provider no longer accepts coi-proxy's authorization for {login} ({reason}); run `coi-proxy oauth authorize {login}`"
    )]
    Reauthorize { login: String, reason: String },
    #[error(
        "the provider gave no refresh token, so the authorization would end within the hour; ask for offline access (Microsoft: the offline_access scope; Google: the preset's access_type=offline and prompt=consent)"
    )]
    NoRefreshToken,
    #[error(transparent)]
    Endpoint(#[from] endpoint::EndpointError),
    #[error("{origin} cannot refresh the token now: {error}")]
    Provider { origin: String, error: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored OAuth2 data of {login} does not open ({source}); run `coi-proxy oauth authorize {login}`")]
    Seal { login: String, source: SealError },
    #[error("a background task of the OAuth2 sign-in failed")]
    Task,
    /// With `[cluster]`: the grant could not be written to etcd (so it is not kept at all).
    #[error("cluster: {0}")]
    Cluster(crate::context::ClusterError),
}

impl OAuthError {
    /// Whether the client's login is refused (IMAP `NO [AUTHENTICATIONFAILED]`, SMTP `535`):
    /// the password is wrong, or only `oauth authorize` can help. Otherwise the sign-in could not
    /// be done now (`[UNAVAILABLE]`, `454`) and may work later.
    pub fn refuses_login(&self) -> bool {
        matches!(
            self,
            OAuthError::WrongPassword
                | OAuthError::NotAuthorized { .. }
                | OAuthError::Reauthorize { .. }
                | OAuthError::Seal { .. }
        )
    }
}

/// Runs blocking work (the store, Argon2) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, OAuthError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| OAuthError::Task)
}
