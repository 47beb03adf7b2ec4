//! The identity provider's answers, sans-I/O: token responses (RFC 6749 5.1/5.2), device
//! authorizations (RFC 8628 3.2) and the errors of both, as Microsoft and Google send them.
//! These are peer input: every field is optional until checked, numbers may come as strings
//! (older Microsoft endpoints), unknown fields are ignored, and nothing here panics. Tokens go
//! straight into [`Secret`]s; an error's text is cut short and stripped to printable ASCII
//! before it can reach a log or a client.

use serde::Deserialize;

use crate::secret::Secret;

/// Tokens from a token endpoint.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    /// Absent when the provider keeps the old one (Google) or grants none (no offline access).
    pub refresh_token: Option<Secret>,
    /// Seconds; providers that leave it out mean an hour (RFC 6749 leaves it open; Microsoft
    /// and Google send it).
    pub expires_in: u64,
}

/// Lifetime assumed when a token response names none.
pub const DEFAULT_EXPIRES_IN: u64 = 3600;

/// An error response (RFC 6749 5.2): the code, and the provider's words, made safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub error: String,
    pub description: Option<String>,
}

impl ErrorResponse {
    /// An error response from its parts as received, made safe to show; `None` without a code.
    pub fn new(error: &str, description: Option<&str>) -> Option<ErrorResponse> {
        let error = safe(error);
        if error.is_empty() {
            return None;
        }
        let description = description.map(safe).filter(|d| !d.is_empty());
        Some(ErrorResponse { error, description })
    }

    /// Whether the grant is dead (revoked, expired, the client no longer allowed): only a new
    /// authorization helps. Anything else (`temporarily_unavailable`, a 5xx without a body) may
    /// pass.
    pub fn is_permanent(&self) -> bool {
        matches!(self.error.as_str(), "invalid_grant" | "invalid_client" | "unauthorized_client" | "invalid_scope")
    }

    /// `invalid_grant: AADSTS70000: The provided grant has expired`, at most one line.
    pub fn describe(&self) -> String {
        match &self.description {
            Some(d) => format!("{}: {d}", self.error),
            None => self.error.clone(),
        }
    }
}

/// What a token endpoint said.
#[derive(Debug)]
pub enum TokenReply {
    Tokens(TokenSet),
    Error(ErrorResponse),
}

/// A device authorization (RFC 8628 3.2).
#[derive(Debug)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    /// Google calls it `verification_url`.
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    /// Seconds between polls (default 5).
    pub interval: u64,
}

/// An answer that is neither what was asked for nor an error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an answer that is not OAuth2 JSON (HTTP {status}{detail})")]
pub struct Malformed {
    pub status: u16,
    pub detail: String,
}

/// The longest provider text kept (Microsoft appends trace and correlation ids).
const MAX_TEXT: usize = 200;

#[derive(Deserialize)]
struct Raw {
    access_token: Option<String>,
    refresh_token: Option<String>,
    #[serde(default, deserialize_with = "number")]
    expires_in: Option<u64>,
    token_type: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    device_code: Option<String>,
    user_code: Option<String>,
    verification_uri: Option<String>,
    verification_url: Option<String>,
    verification_uri_complete: Option<String>,
    #[serde(default, deserialize_with = "number")]
    interval: Option<u64>,
}

/// A non-negative number, or a string of digits; anything else counts as absent.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

fn parse_raw(status: u16, body: &[u8]) -> Result<Raw, Malformed> {
    serde_json::from_slice::<Raw>(body)
        .map_err(|_| Malformed { status, detail: if body.is_empty() { ", empty body".into() } else { String::new() } })
}

fn error_of(raw: &mut Raw) -> Option<ErrorResponse> {
    ErrorResponse::new(raw.error.as_deref()?, raw.error_description.as_deref())
}

/// Printable ASCII only, one line, at most [`MAX_TEXT`] characters; Microsoft's descriptions
/// are cut before their `Trace ID` / `Correlation ID` / `Timestamp` lines.
fn safe(text: &str) -> String {
    let first = text.split(['\r', '\n']).next().unwrap_or("");
    let mut out: String = first.chars().map(|c| if c.is_ascii_graphic() { c } else { ' ' }).collect();
    out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > MAX_TEXT {
        out.truncate(MAX_TEXT);
        out.push('…');
    }
    out
}

/// Reads a token endpoint's answer. An `error` field wins whatever the HTTP status (Google
/// answers `428` while a device authorization is pending, Microsoft `400`).
pub fn parse_token_reply(status: u16, body: &[u8]) -> Result<TokenReply, Malformed> {
    let mut raw = parse_raw(status, body)?;
    if let Some(e) = error_of(&mut raw) {
        return Ok(TokenReply::Error(e));
    }
    let access_token = raw.access_token.take().filter(|t| !t.is_empty() && (200..300).contains(&status));
    let Some(access_token) = access_token else {
        return Err(Malformed { status, detail: ", no access_token and no error".into() });
    };
    if let Some(kind) = &raw.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(Malformed { status, detail: format!(", token_type {} instead of Bearer", safe(kind)) });
    }
    if !is_token_text(&access_token) {
        return Err(Malformed { status, detail: ", an access_token with characters SASL cannot carry".into() });
    }
    let refresh_token = raw.refresh_token.take().filter(|t| !t.is_empty());
    Ok(TokenReply::Tokens(TokenSet {
        access_token: Secret::new(access_token.into_bytes()),
        refresh_token: refresh_token.map(|t| Secret::new(t.into_bytes())),
        expires_in: raw.expires_in.unwrap_or(DEFAULT_EXPIRES_IN),
    }))
}

/// A bearer token goes between `auth=Bearer ` and `\x01` in SASL: printable ASCII, no space.
fn is_token_text(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads a device authorization endpoint's answer: the authorization, or the error response.
pub fn parse_device_authorization(
    status: u16,
    body: &[u8],
) -> Result<Result<DeviceAuthorization, ErrorResponse>, Malformed> {
    let mut raw = parse_raw(status, body)?;
    if let Some(e) = error_of(&mut raw) {
        return Ok(Err(e));
    }
    let missing = |what: &str| Malformed { status, detail: format!(", no {what}") };
    let device_code = raw.device_code.take().filter(|c| !c.is_empty()).ok_or_else(|| missing("device_code"))?;
    let user_code =
        raw.user_code.take().map(|c| safe(&c)).filter(|c| !c.is_empty()).ok_or_else(|| missing("user_code"))?;
    let verification_uri = raw
        .verification_uri
        .take()
        .or(raw.verification_url.take())
        .map(|u| safe(&u))
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .ok_or_else(|| missing("verification_uri"))?;
    let verification_uri_complete = raw
        .verification_uri_complete
        .take()
        .map(|u| safe(&u))
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    Ok(Ok(DeviceAuthorization {
        device_code: Secret::new(device_code.into_bytes()),
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in: raw.expires_in.unwrap_or(900).clamp(1, 3600),
        interval: raw.interval.unwrap_or(5).clamp(1, 60),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(status: u16, body: &str) -> TokenSet {
        match parse_token_reply(status, body.as_bytes()).unwrap() {
            TokenReply::Tokens(t) => t,
            TokenReply::Error(e) => panic!("error {e:?}"),
        }
    }

    fn error(status: u16, body: &str) -> ErrorResponse {
        match parse_token_reply(status, body.as_bytes()).unwrap() {
            TokenReply::Error(e) => e,
            TokenReply::Tokens(_) => panic!("tokens"),
        }
    }

    /// Microsoft's token response (v2.0 endpoint), abridged.
    #[test]
    fn microsoft_tokens() {
        let t = tokens(
            200,
            r#"{"token_type":"Bearer","scope":"https://outlook.office.com/IMAP.AccessAsUser.All","expires_in":4220,"ext_expires_in":4220,"access_token":"EwBwA8l6BAAU","refresh_token":"M.C540_BAY.0.U.-Cg","id_token":"x"}"#,
        );
        assert_eq!(t.access_token.expose(), b"EwBwA8l6BAAU");
        assert_eq!(t.refresh_token.unwrap().expose(), b"M.C540_BAY.0.U.-Cg");
        assert_eq!(t.expires_in, 4220);
    }

    /// Google's refresh answer: no refresh token (it does not rotate), expires_in as a number.
    #[test]
    fn google_refresh_and_quirks() {
        let t = tokens(
            200,
            r#"{"access_token":"ya29.a0A","expires_in":3599,"scope":"https://mail.google.com/","token_type":"Bearer"}"#,
        );
        assert!(t.refresh_token.is_none());
        assert_eq!(t.expires_in, 3599);
        assert_eq!(tokens(200, r#"{"access_token":"a","expires_in":"3600"}"#).expires_in, 3600);
        assert_eq!(tokens(200, r#"{"access_token":"a"}"#).expires_in, DEFAULT_EXPIRES_IN);
        assert_eq!(tokens(200, r#"{"access_token":"a","expires_in":-5}"#).expires_in, DEFAULT_EXPIRES_IN);
        assert!(tokens(200, r#"{"access_token":"a","refresh_token":""}"#).refresh_token.is_none());
    }

    #[test]
    fn errors_as_the_providers_send_them() {
        let ms = error(
            400,
            "{\"error\":\"invalid_grant\",\"error_description\":\"AADSTS70000: The provided value for 'refresh_token' is not valid.\\r\\nTrace ID: 0c6b\\r\\nCorrelation ID: 5f1e\\r\\nTimestamp: 2026-01-01 00:00:00Z\",\"error_codes\":[70000],\"timestamp\":\"2026-01-01 00:00:00Z\"}",
        );
        assert!(ms.is_permanent());
        assert_eq!(ms.describe(), "invalid_grant: AADSTS70000: The provided value for 'refresh_token' is not valid.");
        let google =
            error(400, r#"{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}"#);
        assert!(google.is_permanent());
        let pending = error(428, r#"{"error":"authorization_pending","error_description":"Precondition Required"}"#);
        assert!(!pending.is_permanent());
        assert!(!error(503, r#"{"error":"temporarily_unavailable"}"#).is_permanent());
        let long = error(400, &format!(r#"{{"error":"invalid_grant","error_description":"{}"}}"#, "x".repeat(5000)));
        assert!(long.describe().len() < 250);
    }

    #[test]
    fn what_is_not_a_token_response() {
        for (status, body) in [
            (200, ""),
            (200, "<html>login</html>"),
            (200, "{}"),
            (200, r#"{"access_token":""}"#),
            (500, r#"{"access_token":"a"}"#),
            (200, r#"{"access_token":"a","token_type":"mac"}"#),
            (200, r#"{"access_token":"a b"}"#),
            (200, r#"{"access_token":"a\u0001b"}"#),
            (200, r#"{"error":""}"#),
            (200, "[1,2]"),
            (502, ""),
        ] {
            assert!(parse_token_reply(status, body.as_bytes()).is_err(), "{status} {body}");
        }
        let err = parse_token_reply(502, b"").unwrap_err().to_string();
        assert_eq!(err, "an answer that is not OAuth2 JSON (HTTP 502, empty body)");
    }

    #[test]
    fn device_authorizations() {
        let ms = parse_device_authorization(
            200,
            br#"{"user_code":"DYSXK8L8C","device_code":"DAQABAAEAAAD","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code DYSXK8L8C to authenticate."}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (ms.user_code.as_str(), ms.verification_uri.as_str()),
            ("DYSXK8L8C", "https://microsoft.com/devicelogin")
        );
        assert_eq!((ms.expires_in, ms.interval), (900, 5));
        assert_eq!(ms.device_code.expose(), b"DAQABAAEAAAD");
        let google = parse_device_authorization(
            200,
            br#"{"device_code":"4/4-GMMhmHCXhWEzkobqIHGG_EnNYYsAkukHspeYUk9E8","user_code":"GQVQ-JKEC","verification_url":"https://www.google.com/device","expires_in":1800,"interval":5}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(google.verification_uri, "https://www.google.com/device");
        let refused = parse_device_authorization(
            400,
            br#"{"error":"invalid_scope","error_description":"Invalid device flow scope: https://mail.google.com/"}"#,
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(refused.error, "invalid_scope");
        assert!(
            parse_device_authorization(
                200,
                br#"{"device_code":"d","user_code":"u","verification_uri":"javascript:x"}"#
            )
            .is_err()
        );
        assert!(parse_device_authorization(200, br#"{"user_code":"u","verification_uri":"https://x"}"#).is_err());
        let odd = parse_device_authorization(200, br#"{"device_code":"d","user_code":"u\r\nX","verification_uri":"https://x","interval":0,"expires_in":999999}"#)
            .unwrap()
            .unwrap();
        assert_eq!((odd.user_code.as_str(), odd.interval, odd.expires_in), ("u", 1, 3600));
    }
}
