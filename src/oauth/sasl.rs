//! The SASL mechanisms that carry a bearer token, sans-I/O: XOAUTH2 (what Google and Microsoft
//! document) and OAUTHBEARER (RFC 7628; Google and Dovecot). The IMAP and SMTP edges send these
//! bytes base64-encoded; a refusal comes as a challenge with a JSON error, which the client must
//! answer (empty for XOAUTH2, `0x01` for OAUTHBEARER) before the server says NO / 535.

use base64::Engine;
use serde::Deserialize;

use crate::secret::Secret;

/// A bearer-token mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    XOAuth2,
    OAuthBearer,
}

impl Mechanism {
    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The one to use among the mechanisms a server offers: XOAUTH2 where offered (both big
    /// providers document it; Microsoft documents nothing else), else OAUTHBEARER.
    pub fn choose<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Mechanism> {
        let offered: Vec<&str> = offered.into_iter().collect();
        let has = |m: Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
        [Mechanism::XOAuth2, Mechanism::OAuthBearer].into_iter().find(|&m| has(m))
    }

    /// The initial client response, before base64. OAUTHBEARER names the server (`host`,
    /// `port`) as RFC 7628 3.1 suggests.
    pub fn initial_response(self, login: &str, token: &Secret, host: &str, port: u16) -> Secret {
        let mut out = Vec::with_capacity(login.len() + token.len() + host.len() + 40);
        match self {
            Mechanism::XOAuth2 => {
                out.extend_from_slice(b"user=");
                out.extend_from_slice(login.as_bytes());
                out.extend_from_slice(b"\x01auth=Bearer ");
                out.extend_from_slice(token.expose());
                out.extend_from_slice(b"\x01\x01");
            }
            Mechanism::OAuthBearer => {
                // gs2 header: no channel binding, the login as authzid (`,` and `=` escaped).
                out.extend_from_slice(b"n,a=");
                out.extend_from_slice(login.replace('=', "=3D").replace(',', "=2C").as_bytes());
                out.extend_from_slice(b",\x01host=");
                out.extend_from_slice(host.as_bytes());
                out.extend_from_slice(format!("\x01port={port}\x01auth=Bearer ").as_bytes());
                out.extend_from_slice(token.expose());
                out.extend_from_slice(b"\x01\x01");
            }
        }
        Secret::new(out)
    }

    /// [`Mechanism::initial_response`] in base64, as it goes on the wire.
    pub fn initial_response_b64(self, login: &str, token: &Secret, host: &str, port: u16) -> Secret {
        let raw = self.initial_response(login, token, host, port);
        Secret::new(base64::engine::general_purpose::STANDARD.encode(raw.expose()).into_bytes())
    }

    /// The base64 line that answers a server's error challenge (RFC 7628 3.2.3: a lone `0x01`;
    /// XOAUTH2: an empty response).
    pub fn abort_response_b64(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "",
            Mechanism::OAuthBearer => "AQ==",
        }
    }
}

/// What a server's error challenge says (RFC 7628 3.2.2; XOAUTH2 sends the same shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Challenge {
    /// `invalid_token`, or an HTTP status such as `401` (XOAUTH2).
    #[serde(default, deserialize_with = "string_or_number")]
    pub status: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl Challenge {
    /// Reads a challenge: base64 of a JSON object. `None` when it is not one (a server's
    /// continuation with other text).
    pub fn parse(b64: &[u8]) -> Option<Challenge> {
        let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii()).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// For the log: `status 401` or `status invalid_token`, never more than a short word.
    pub fn describe(&self) -> String {
        let status: String =
            self.status.as_deref().unwrap_or("unknown").chars().filter(|c| c.is_ascii_graphic()).take(40).collect();
        format!("status {status}")
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(Option::<Value>::deserialize(d)?.map(|v| match v {
        Value::Text(t) => t,
        Value::Number(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_prefers_xoauth2() {
        assert_eq!(Mechanism::choose(["PLAIN", "xoauth2", "OAUTHBEARER"]), Some(Mechanism::XOAuth2));
        assert_eq!(Mechanism::choose(["PLAIN", "OAUTHBEARER"]), Some(Mechanism::OAuthBearer));
        assert_eq!(Mechanism::choose(["PLAIN", "LOGIN"]), None);
    }

    /// The formats of Google's XOAUTH2 page and RFC 7628 4.1 (with the login as authzid).
    #[test]
    fn initial_responses() {
        let token = Secret::new(b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg".to_vec());
        let x = Mechanism::XOAuth2.initial_response("someuser@example.com", &token, "imap.example.com", 993);
        assert_eq!(
            x.expose(),
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
        let b64 = Mechanism::XOAuth2.initial_response_b64("someuser@example.com", &token, "h", 1);
        assert_eq!(
            b64.expose(),
            b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        let token = Secret::new(b"vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==".to_vec());
        let o = Mechanism::OAuthBearer.initial_response("user@example.com", &token, "server.example.com", 143);
        assert_eq!(
            o.expose(),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let odd = Mechanism::OAuthBearer.initial_response("a=b,c@x", &token, "h", 1);
        assert!(odd.expose().starts_with(b"n,a=a=3Db=2Cc@x,"));
        assert_eq!(Mechanism::OAuthBearer.abort_response_b64(), "AQ==");
        assert_eq!(Mechanism::XOAuth2.abort_response_b64(), "");
    }

    /// What Dovecot (measured), Gmail and RFC 7628 send.
    #[test]
    fn challenges() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let c = Challenge::parse(b64(r#"{"status":"401","schemes":"bearer","scope":"mail"}"#).as_bytes()).unwrap();
        assert_eq!((c.status.as_deref(), c.scope.as_deref()), (Some("401"), Some("mail")));
        let c = Challenge::parse(b64(r#"{"status":"invalid_token"}"#).as_bytes()).unwrap();
        assert_eq!(c.describe(), "status invalid_token");
        let c = Challenge::parse(b64(r#"{"status":400,"schemes":"Bearer"}"#).as_bytes()).unwrap();
        assert_eq!(c.status.as_deref(), Some("400"));
        assert_eq!(Challenge::parse(b"not base64!"), None);
        assert_eq!(Challenge::parse(b64("go ahead").as_bytes()), None);
        assert_eq!(Challenge::parse(b"").map(|c| c.describe()), None);
        let evil = Challenge::parse(b64(r#"{"status":"a\r\nb c"}"#).as_bytes()).unwrap();
        assert_eq!(evil.describe(), "status abc");
    }
}
