//! VAPID (RFC 8292): the proxy's P-256 key pair, its public half as PEM for
//! `/private/vendor/vendor.dovecot/webpush/vapid`, and the signed JWT of each push request.

use std::time::Duration;

use web_push_native::jwt_simple::algorithms::{ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair};
use web_push_native::jwt_simple::claims::Claims;

/// JWT lifetime. RFC 8292 allows 24 hours; push services reject more (Apple: "more than one day
/// into the future"), so stay well inside in case the clocks differ.
pub const JWT_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    /// The stored key does not decode; the text never contains the key.
    #[error("the stored VAPID key is unusable")]
    BadKey,
    #[error("cannot sign the VAPID token: {0}")]
    Sign(String),
}

/// A new private key (the 32-octet scalar), for the store.
pub fn generate() -> Vec<u8> {
    ES256KeyPair::generate().to_bytes()
}

pub fn key_pair(private: &[u8]) -> Result<ES256KeyPair, VapidError> {
    // jwt-simple panics on a wrong length.
    if private.len() != 32 {
        return Err(VapidError::BadKey);
    }
    ES256KeyPair::from_bytes(private).map_err(|_| VapidError::BadKey)
}

/// The public key as `-----BEGIN PUBLIC KEY-----` PEM (what Dovecot serves and clients parse).
pub fn public_pem(key: &ES256KeyPair) -> Result<String, VapidError> {
    key.public_key().to_pem().map_err(|_| VapidError::BadKey)
}

/// The public key as the `k=` of the Authorization header: uncompressed point, base64url.
pub fn public_raw_b64(key: &ES256KeyPair) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key().public_key().to_bytes_uncompressed())
}

/// The JWT `aud`: the push service's origin (RFC 6454: scheme, host, and a port that is not the
/// scheme's default).
pub fn audience(endpoint: &reqwest::Url) -> String {
    endpoint.origin().ascii_serialization()
}

/// `vapid t=<JWT>, k=<public key>` for a request to `endpoint`.
pub fn authorization(key: &ES256KeyPair, endpoint: &reqwest::Url, subject: &str) -> Result<String, VapidError> {
    let claims = Claims::create(JWT_LIFETIME.into()).with_audience(audience(endpoint)).with_subject(subject);
    let token = key.sign(claims).map_err(|e| VapidError::Sign(e.to_string()))?;
    Ok(format!("vapid t={token}, k={}", public_raw_b64(key)))
}

/// The JWT `sub`: the configured contact, else the postmaster of the account's domain, which
/// RFC 5321 requires to exist (push services, Apple's in particular, refuse made-up contacts
/// such as `@localhost`).
pub fn subject(configured: Option<&str>, login: &str) -> String {
    if let Some(s) = configured {
        return s.to_string();
    }
    match login.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("mailto:postmaster@{domain}"),
        _ => "mailto:postmaster@localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use web_push_native::jwt_simple::algorithms::ES256PublicKey;
    use web_push_native::jwt_simple::claims::NoCustomClaims;
    use web_push_native::jwt_simple::common::VerificationOptions;

    #[test]
    fn audience_is_the_origin() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(audience(&url("https://push.example.com/send/x?y")), "https://push.example.com");
        assert_eq!(audience(&url("https://push.example.com:443/send/x")), "https://push.example.com");
        assert_eq!(audience(&url("https://push.example.com:8443/x")), "https://push.example.com:8443");
        assert_eq!(audience(&url("http://127.0.0.1:9000/x")), "http://127.0.0.1:9000");
    }

    #[test]
    fn key_round_trip_pem_and_a_verifiable_token() {
        let private = generate();
        assert_eq!(private.len(), 32);
        let key = key_pair(&private).unwrap();
        let pem = public_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
        let header =
            authorization(&key, &reqwest::Url::parse("https://p.example:8443/x").unwrap(), "mailto:a@b").unwrap();
        let (t, k) = header.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
        assert_eq!(k, public_raw_b64(&key));
        let public = ES256PublicKey::from_pem(&pem).unwrap();
        let opts = VerificationOptions {
            allowed_audiences: Some(["https://p.example:8443".to_string()].into()),
            ..Default::default()
        };
        let claims = public.verify_token::<NoCustomClaims>(t, Some(opts)).unwrap();
        assert_eq!(claims.subject.as_deref(), Some("mailto:a@b"));
        let lifetime = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
        assert!(lifetime <= 24 * 3600, "{lifetime}");
        assert!(key_pair(b"short").is_err());
    }

    #[test]
    fn subjects() {
        assert_eq!(subject(Some("https://ops.example"), "a@b.example"), "https://ops.example");
        assert_eq!(subject(None, "alice@example.org"), "mailto:postmaster@example.org");
        assert_eq!(subject(None, "alice"), "mailto:postmaster@localhost");
    }
}
