//! VAPID (RFC 8292): the proxy's P-256 key pair, its public half as PEM for
//! `/private/vendor/vendor.dovecot/webpush/vapid`, and the signed JWT of each push request.
//!
//! The JWT is built here (a fixed ES256 header, three claims, an ECDSA P-256/SHA-256 signature
//! from `p256`) rather than with a JWT library: the one web-push-native offers pulls in an RSA
//! implementation with an unfixed timing advisory (RUSTSEC-2023-0071) that VAPID never needs.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};

/// JWT lifetime. RFC 8292 allows 24 hours; push services reject more (Apple: "more than one day
/// into the future"), so stay well inside in case the clocks differ.
pub const JWT_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    /// The stored key does not decode; the text never contains the key.
    #[error("the stored VAPID key is unusable")]
    BadKey,
}

/// The installation's VAPID key pair. `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct VapidKey(SigningKey);

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VapidKey(..)")
    }
}

/// A new private key (the 32-octet scalar), for the store.
pub fn generate() -> Vec<u8> {
    loop {
        let mut scalar = [0u8; 32];
        getrandom::getrandom(&mut scalar).expect("the operating system's random source");
        // Zero or ≥ the group order: valid keys are all but 2^-128 of the draws.
        if SigningKey::from_slice(&scalar).is_ok() {
            return scalar.to_vec();
        }
    }
}

pub fn key_pair(private: &[u8]) -> Result<VapidKey, VapidError> {
    if private.len() != 32 {
        return Err(VapidError::BadKey);
    }
    SigningKey::from_slice(private).map(VapidKey).map_err(|_| VapidError::BadKey)
}

/// The public key as `-----BEGIN PUBLIC KEY-----` PEM (what Dovecot serves and clients parse).
pub fn public_pem(key: &VapidKey) -> Result<String, VapidError> {
    key.0.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|_| VapidError::BadKey)
}

/// The public key as the `k=` of the Authorization header: uncompressed point, base64url.
pub fn public_raw_b64(key: &VapidKey) -> String {
    URL_SAFE_NO_PAD.encode(key.0.verifying_key().to_encoded_point(false).as_bytes())
}

/// The JWT `aud`: the push service's origin (RFC 6454: scheme, host, and a port that is not the
/// scheme's default).
pub fn audience(endpoint: &reqwest::Url) -> String {
    endpoint.origin().ascii_serialization()
}

/// `vapid t=<JWT>, k=<public key>` for a request to `endpoint`.
pub fn authorization(key: &VapidKey, endpoint: &reqwest::Url, subject: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "aud": audience(endpoint),
        "exp": now + JWT_LIFETIME.as_secs(),
        "iat": now,
        "sub": subject,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // RFC 7518 3.4: the signature is R || S, 32 octets each.
    let signature: Signature = key.0.sign(input.as_bytes());
    format!("vapid t={input}.{}, k={}", URL_SAFE_NO_PAD.encode(signature.to_bytes()), public_raw_b64(key))
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
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;

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
        assert_eq!(key_pair(&private).unwrap().0, key.0, "the stored scalar gives the same key");
        let pem = public_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let header = authorization(&key, &reqwest::Url::parse("https://p.example:8443/x").unwrap(), "mailto:a@b");
        let (t, k) = header.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
        assert_eq!(k, public_raw_b64(&key));
        assert_eq!(URL_SAFE_NO_PAD.decode(k).unwrap().len(), 65, "uncompressed point");

        // Verified from the PEM alone, as a push service does with `k=`.
        let public = VerifyingKey::from_public_key_pem(&pem).unwrap();
        let (input, signature) = t.rsplit_once('.').unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        public.verify(input.as_bytes(), &signature).expect("signature");
        let mut tampered = input.to_string();
        tampered.push('x');
        assert!(public.verify(tampered.as_bytes(), &signature).is_err());
        let (h, c) = input.split_once('.').unwrap();
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"typ": "JWT", "alg": "ES256"}));
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://p.example:8443");
        assert_eq!(claims["sub"], "mailto:a@b");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime > 0 && lifetime <= 24 * 3600, "{lifetime}");
        assert!(key_pair(b"short").is_err());
        assert!(key_pair(&[0u8; 32]).is_err(), "zero is no key");
        assert!(key_pair(&[0xffu8; 32]).is_err(), "beyond the group order");
        assert_eq!(format!("{key:?}"), "VapidKey(..)");
    }

    #[test]
    fn subjects() {
        assert_eq!(subject(Some("https://ops.example"), "a@b.example"), "https://ops.example");
        assert_eq!(subject(None, "alice@example.org"), "mailto:postmaster@example.org");
        assert_eq!(subject(None, "alice"), "mailto:postmaster@localhost");
    }
}
