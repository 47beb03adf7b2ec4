//! The device flow (RFC 8628), Microsoft's natural fit for a headless proxy: ask for a code,
//! tell the user where to enter it, poll the token endpoint at the interval the provider names
//! (5 s more after each `slow_down`) until the user has signed in, declined, or the code expired.

use std::io::Write;
use std::time::{Duration, Instant};

use super::authorize::AuthorizeError;
use super::endpoint;
use super::http;
use super::token::{TokenReply, TokenSet};
use crate::config::OAuth2Endpoints;

/// RFC 8628 3.4.
const DEVICE_GRANT: &[u8] = b"urn:ietf:params:oauth:grant-type:device_code";

/// What one poll of the token endpoint means for the flow.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Not yet; poll again after the interval (grown by this many seconds).
    Wait {
        slower_by: u64,
    },
    Declined,
    Expired,
    /// Any other error: give up with it.
    Failed,
}

/// The meaning of a token endpoint error while polling (RFC 8628 3.5, and Microsoft's
/// `authorization_declined` / `code_expired`).
pub fn poll_error(error: &str) -> Poll {
    match error {
        "authorization_pending" => Poll::Wait { slower_by: 0 },
        "slow_down" => Poll::Wait { slower_by: 5 },
        "access_denied" | "authorization_declined" => Poll::Declined,
        "expired_token" | "code_expired" => Poll::Expired,
        _ => Poll::Failed,
    }
}

/// Runs the device flow for `login` against the device authorization endpoint `url`.
pub async fn run<W: Write>(
    endpoints: &OAuth2Endpoints,
    url: &str,
    login: &str,
    out: &mut W,
) -> Result<TokenSet, AuthorizeError> {
    let refused = |origin: &str, e: super::token::ErrorResponse| AuthorizeError::Refused {
        origin: origin.to_string(),
        error: e.describe(),
    };
    let device = endpoint::device_authorization(endpoints, url).await?.map_err(|e| refused(&http::origin(url), e))?;
    let _ = writeln!(
        out,
        "To authorize coi-proxy for {login}, open {} and enter the code {}",
        device.verification_uri, device.user_code
    );
    if let Some(complete) = &device.verification_uri_complete {
        let _ = writeln!(out, "(or open {complete})");
    }
    let _ =
        writeln!(out, "Waiting for the sign-in (the code is good for {} minutes) …", device.expires_in.div_ceil(60));
    let _ = out.flush();
    let deadline = Instant::now() + Duration::from_secs(device.expires_in);
    let mut interval = device.interval;
    let token_origin = http::origin(&endpoints.token_url);
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if Instant::now() >= deadline {
            return Err(AuthorizeError::Expired);
        }
        let grant: [(&str, &[u8]); 2] = [("grant_type", DEVICE_GRANT), ("device_code", device.device_code.expose())];
        match endpoint::token_request(endpoints, &grant).await? {
            TokenReply::Tokens(tokens) => return Ok(tokens),
            TokenReply::Error(e) => match poll_error(&e.error) {
                Poll::Wait { slower_by } => interval += slower_by,
                Poll::Declined => return Err(AuthorizeError::Denied { reason: e.describe() }),
                Poll::Expired => return Err(AuthorizeError::Expired),
                Poll::Failed => return Err(refused(&token_origin, e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_errors() {
        assert_eq!(poll_error("authorization_pending"), Poll::Wait { slower_by: 0 });
        assert_eq!(poll_error("slow_down"), Poll::Wait { slower_by: 5 });
        assert_eq!(poll_error("authorization_declined"), Poll::Declined);
        assert_eq!(poll_error("access_denied"), Poll::Declined);
        assert_eq!(poll_error("expired_token"), Poll::Expired);
        assert_eq!(poll_error("invalid_client"), Poll::Failed);
    }
}
