//! The requests the proxy makes to an identity provider: a token (by refresh token,
//! authorization code or device code) and a device authorization. The client authenticates in
//! the form body (`client_secret` only when the registration has one).

use super::http::{self, HttpError};
use super::token::{self, DeviceAuthorization, ErrorResponse, Malformed, TokenReply};
use crate::config::OAuth2Endpoints;
use crate::secret::Secret;

/// Why an endpoint gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{origin} sent {source}")]
    Malformed { origin: String, source: Malformed },
}

/// POSTs a token request with `grant` and the client's credentials.
pub async fn token_request(endpoints: &OAuth2Endpoints, grant: &[(&str, &[u8])]) -> Result<TokenReply, EndpointError> {
    let mut form: Vec<(&str, &[u8])> = grant.to_vec();
    form.push(("client_id", endpoints.client_id.as_bytes()));
    if let Some(secret) = &endpoints.client_secret {
        form.push(("client_secret", secret.as_bytes()));
    }
    let answer = http::post_form(&endpoints.token_url, &form).await?;
    token::parse_token_reply(answer.status, answer.body.expose())
        .map_err(|source| EndpointError::Malformed { origin: http::origin(&endpoints.token_url), source })
}

/// Trades a refresh token for fresh tokens (RFC 6749 6). The scope is sent again: Microsoft
/// wants it, Google accepts it.
pub async fn refresh(endpoints: &OAuth2Endpoints, refresh_token: &Secret) -> Result<TokenReply, EndpointError> {
    let grant: [(&str, &[u8]); 3] = [
        ("grant_type", b"refresh_token"),
        ("refresh_token", refresh_token.expose()),
        ("scope", endpoints.scope.as_bytes()),
    ];
    token_request(endpoints, &grant).await
}

/// Starts a device authorization (RFC 8628 3.1).
pub async fn device_authorization(
    endpoints: &OAuth2Endpoints,
    url: &str,
) -> Result<Result<DeviceAuthorization, ErrorResponse>, EndpointError> {
    let mut form: Vec<(&str, &[u8])> = vec![("client_id", endpoints.client_id.as_bytes())];
    if let Some(secret) = &endpoints.client_secret {
        form.push(("client_secret", secret.as_bytes()));
    }
    form.push(("scope", endpoints.scope.as_bytes()));
    let answer = http::post_form(url, &form).await?;
    token::parse_device_authorization(answer.status, answer.body.expose())
        .map_err(|source| EndpointError::Malformed { origin: http::origin(url), source })
}
