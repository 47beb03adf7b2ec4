//! WebPush subscriptions as the client sends them (COI WebPush spec, "Subscribe"): the id and the
//! JSON checked, unknown keys dropped, and the push service's address and keys decoded.
//!
//! Pure functions only; where subscriptions live is `store::push`.

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

/// Longest subscription JSON accepted, bytes. The known keys need well under 2 KiB; the rest
/// is dropped, but a client must not make the proxy parse megabytes to find that out.
pub const MAX_JSON: usize = 8 * 1024;
/// Longest `resource.endpoint` (spec).
pub const MAX_ENDPOINT: usize = 512;
/// Longest `client` and `device` (spec).
pub const MAX_LABEL: usize = 128;

/// Which new messages a subscription wants pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Chat messages only (`$Chat`, or classified as chat).
    Chat,
    /// Everything but chat messages.
    Mail,
    All,
}

impl MsgType {
    /// The spec's `chat|mail|all` and Dovecot's `chat|email|any`.
    pub fn parse(value: &str) -> Option<MsgType> {
        match value {
            "chat" => Some(MsgType::Chat),
            "mail" | "email" => Some(MsgType::Mail),
            "all" | "any" => Some(MsgType::All),
            _ => None,
        }
    }

    pub fn wants(self, chat: bool) -> bool {
        match self {
            MsgType::Chat => chat,
            MsgType::Mail => !chat,
            MsgType::All => true,
        }
    }
}

/// A checked subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub msgtype: MsgType,
    pub endpoint: String,
    /// The user agent's P-256 public key, uncompressed SEC1 (65 octets).
    pub p256dh: Vec<u8>,
    /// The shared authentication secret (16 octets).
    pub auth: [u8; 16],
    /// The JSON to store and list: the known keys only, as the client gave them.
    pub json: String,
}

/// Why a subscription was refused; `Display` is the text after `NO [CANNOT] `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("subscription id must be 10 to 36 characters of [0-9A-Za-z_-]")]
    Id,
    #[error("subscription is larger than {MAX_JSON} bytes")]
    TooLarge,
    #[error("subscription is not a JSON object: {0}")]
    NotJson(String),
    #[error("subscription needs {0}")]
    Missing(&'static str),
    #[error("{0} must be a string")]
    NotString(&'static str),
    #[error("{0} is longer than {1} bytes")]
    TooLong(&'static str, usize),
    #[error("msgtype must be chat, mail or all")]
    MsgType,
    #[error("resource.endpoint must be an https:// URL (http:// only to a loopback address)")]
    Endpoint,
    #[error("resource.keys.p256dh must be a base64url P-256 public key")]
    P256dh,
    #[error("resource.keys.auth must be 16 octets, base64url")]
    Auth,
}

/// Checks a subscription id (spec: 10–36 of `[0-9A-Za-z_-]`).
pub fn check_id(id: &str) -> Result<(), SubscriptionError> {
    let ok = (10..=36).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(SubscriptionError::Id) }
}

/// Parses and checks a subscription's JSON.
pub fn parse(raw: &[u8]) -> Result<Subscription, SubscriptionError> {
    if raw.len() > MAX_JSON {
        return Err(SubscriptionError::TooLarge);
    }
    let value: Value = serde_json::from_slice(raw).map_err(|e| SubscriptionError::NotJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(SubscriptionError::NotJson("not an object".into()));
    };
    let mut kept = Map::new();
    for key in ["client", "device"] {
        if let Some(v) = obj.get(key) {
            let s = v.as_str().ok_or(SubscriptionError::NotString(key))?;
            if s.len() > MAX_LABEL {
                return Err(SubscriptionError::TooLong(key, MAX_LABEL));
            }
            kept.insert(key.into(), v.clone());
        }
    }
    // Dovecot pushes to every subscription that does not say otherwise.
    let msgtype = match obj.get("msgtype") {
        Some(v) => {
            let s = v.as_str().ok_or(SubscriptionError::NotString("msgtype"))?;
            kept.insert("msgtype".into(), v.clone());
            MsgType::parse(s).ok_or(SubscriptionError::MsgType)?
        }
        None => MsgType::All,
    };
    let resource = obj.get("resource").ok_or(SubscriptionError::Missing("resource"))?;
    let string = |v: Option<&Value>, name: &'static str| -> Result<String, SubscriptionError> {
        v.ok_or(SubscriptionError::Missing(name))?
            .as_str()
            .map(str::to_string)
            .ok_or(SubscriptionError::NotString(name))
    };
    let endpoint = string(resource.get("endpoint"), "resource.endpoint")?;
    if endpoint.len() > MAX_ENDPOINT {
        return Err(SubscriptionError::TooLong("resource.endpoint", MAX_ENDPOINT));
    }
    check_endpoint(&endpoint)?;
    let keys = resource.get("keys").ok_or(SubscriptionError::Missing("resource.keys"))?;
    let p256dh_text = string(keys.get("p256dh"), "resource.keys.p256dh")?;
    let auth_text = string(keys.get("auth"), "resource.keys.auth")?;
    let p256dh = decode_b64url(&p256dh_text).ok_or(SubscriptionError::P256dh)?;
    web_push_native::p256::PublicKey::from_sec1_bytes(&p256dh).map_err(|_| SubscriptionError::P256dh)?;
    let auth: [u8; 16] = decode_b64url(&auth_text).and_then(|a| a.try_into().ok()).ok_or(SubscriptionError::Auth)?;
    let mut kept_keys = Map::new();
    kept_keys.insert("p256dh".into(), p256dh_text.into());
    kept_keys.insert("auth".into(), auth_text.into());
    let mut kept_resource = Map::new();
    kept_resource.insert("endpoint".into(), endpoint.clone().into());
    kept_resource.insert("keys".into(), kept_keys.into());
    kept.insert("resource".into(), kept_resource.into());
    Ok(Subscription { msgtype, endpoint, p256dh, auth, json: Value::Object(kept).to_string() })
}

/// The JSON a listing returns: the stored JSON plus `created` and `validated`.
pub fn listing(json: &str, created: &str, validated: bool) -> String {
    let mut value: Value = serde_json::from_str(json).unwrap_or_else(|_| Value::Object(Map::new()));
    if let Value::Object(obj) = &mut value {
        obj.insert("created".into(), created.into());
        obj.insert("validated".into(), validated.into());
    }
    value.to_string()
}

/// An endpoint must be https, or http to a loopback address (a local push service or a test):
/// push payloads are encrypted, but the VAPID token and the fact of a new message are not.
/// Where it may lead (public addresses only, unless `[push] private_endpoints`) is checked as
/// it is posted to (`send::post`).
pub fn check_endpoint(endpoint: &str) -> Result<reqwest::Url, SubscriptionError> {
    let url = reqwest::Url::parse(endpoint).map_err(|_| SubscriptionError::Endpoint)?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(SubscriptionError::Endpoint),
    };
    let credentials = !url.username().is_empty() || url.password().is_some();
    match url.scheme() {
        "https" if !credentials => Ok(url),
        "http" if loopback && !credentials => Ok(url),
        _ => Err(SubscriptionError::Endpoint),
    }
}

/// Base64url as browsers give it (no padding), also accepting padding.
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).or_else(|_| URL_SAFE.decode(text)).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid key pair's public half and an auth secret, base64url.
    pub(crate) const P256DH: &str =
        "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";
    pub(crate) const AUTH: &str = "_ordMnz7uTCmrpBTeUV4Bw";

    fn json(endpoint: &str, extra: &str) -> String {
        format!(
            r#"{{"client":"OX COI","device":"phone","msgtype":"chat",{extra}"resource":{{"endpoint":"{endpoint}","keys":{{"p256dh":"{P256DH}","auth":"{AUTH}"}}}}}}"#
        )
    }

    #[test]
    fn ids() {
        assert!(check_id("abcdefghij").is_ok());
        assert!(check_id(&format!("A1_-{}", "b".repeat(32))).is_ok(), "36 characters");
        assert!(check_id(&format!("A1_-{}", "b".repeat(33))).is_err(), "37 characters");
        assert!(check_id("short").is_err());
        assert!(check_id("abc/defghij").is_err());
        assert!(check_id("abc.defghij").is_err());
    }

    #[test]
    fn a_good_subscription_keeps_only_known_keys() {
        let sub = parse(json("https://push.example.com:443/push/send/x", r#""extra":{"a":1},"#).as_bytes()).unwrap();
        assert_eq!(sub.msgtype, MsgType::Chat);
        assert_eq!(sub.p256dh.len(), 65);
        assert_eq!(sub.auth.len(), 16);
        assert!(!sub.json.contains("extra"), "{}", sub.json);
        let back: Value = serde_json::from_str(&sub.json).unwrap();
        assert_eq!(back["resource"]["keys"]["auth"], AUTH);
        assert_eq!(back["device"], "phone");
        let listed: Value = serde_json::from_str(&listing(&sub.json, "2026-01-02T03:04:05Z", false)).unwrap();
        assert_eq!(
            (listed["created"].as_str(), listed["validated"].as_bool()),
            (Some("2026-01-02T03:04:05Z"), Some(false))
        );
    }

    #[test]
    fn msgtypes_in_both_spellings() {
        for (v, t) in [
            ("chat", MsgType::Chat),
            ("mail", MsgType::Mail),
            ("email", MsgType::Mail),
            ("all", MsgType::All),
            ("any", MsgType::All),
        ] {
            let j = json("https://p.example", "").replace(r#""msgtype":"chat""#, &format!(r#""msgtype":"{v}""#));
            assert_eq!(parse(j.as_bytes()).unwrap().msgtype, t);
        }
        let j = json("https://p.example", "").replace(r#""msgtype":"chat""#, r#""msgtype":"Chat""#);
        assert_eq!(parse(j.as_bytes()), Err(SubscriptionError::MsgType));
        assert!(MsgType::Chat.wants(true) && !MsgType::Chat.wants(false));
        assert!(MsgType::Mail.wants(false) && !MsgType::Mail.wants(true));
    }

    #[test]
    fn refusals() {
        let long = "x".repeat(129);
        let j = json("https://p.example", "").replace("OX COI", &long);
        assert_eq!(parse(j.as_bytes()), Err(SubscriptionError::TooLong("client", 128)));
        let endpoint = format!("https://p.example/{}", "x".repeat(500));
        assert!(matches!(parse(json(&endpoint, "").as_bytes()), Err(SubscriptionError::TooLong(..))));
        for bad in ["http://push.example.com/x", "ftp://127.0.0.1/x", "https://user:pw@p.example/x", "not a url"] {
            assert_eq!(parse(json(bad, "").as_bytes()), Err(SubscriptionError::Endpoint), "{bad}");
        }
        for ok in ["http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost/x"] {
            assert!(parse(json(ok, "").as_bytes()).is_ok(), "{ok}");
        }
        let j = json("https://p.example", "").replace(AUTH, "AAAA");
        assert_eq!(parse(j.as_bytes()), Err(SubscriptionError::Auth));
        let j = json("https://p.example", "").replace(P256DH, "BAAA");
        assert_eq!(parse(j.as_bytes()), Err(SubscriptionError::P256dh));
        assert!(matches!(parse(b"[1]"), Err(SubscriptionError::NotJson(_))));
        assert!(matches!(parse(b"{\"client\":\"x\"}"), Err(SubscriptionError::Missing("resource"))));
        assert_eq!(parse(&vec![b' '; MAX_JSON + 1]), Err(SubscriptionError::TooLarge));
    }
}
