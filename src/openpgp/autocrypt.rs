//! `Autocrypt` and `Autocrypt-Gossip` headers (Autocrypt Level 1, section "The Autocrypt
//! Header"), parsed strictly because they come from anyone: `addr` must be present (and, for the
//! sender's header, equal the From address), `prefer-encrypt` is `mutual` or means no preference,
//! `keydata` is the last attribute, an unknown attribute not starting with `_` invalidates the
//! header, and a header over 10 KiB is invalid. `_verified` is Delta Chat's extension on gossip
//! ("the sender verified this key").
//!
//! Choosing the sender's header follows Level 1: of the headers whose `addr` is the From address,
//! exactly one valid header is used; more than one valid header discards all of them.

use base64::Engine;

use super::key::{PublicKey, PublicKeyError};
use super::mime::{canonical_addr, fold};

/// Level 1: "MUST NOT ... larger than 10 KiB"; larger ones are treated as invalid.
pub const MAX_HEADER_LEN: usize = 10 * 1024;

/// Whether the key holder wants encryption by default (Level 1 `prefer-encrypt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum PreferEncrypt {
    Mutual,
    #[default]
    NoPreference,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutocryptError {
    #[error("the header is {0} bytes, more than the 10 KiB Autocrypt allows")]
    TooLong(usize),
    #[error("attribute {0:?} has no value")]
    NoValue(String),
    #[error("attribute {0:?} appears twice")]
    Duplicate(String),
    #[error("unknown critical attribute {0:?}")]
    UnknownCritical(String),
    #[error("no addr attribute")]
    MissingAddr,
    #[error("addr {0:?} is not an e-mail address")]
    BadAddr(String),
    #[error("no keydata attribute")]
    MissingKeydata,
    #[error("keydata is not the last attribute")]
    KeydataNotLast,
    #[error("keydata is not base64")]
    KeydataNotBase64,
    #[error("keydata is not a usable key: {0}")]
    Key(#[from] PublicKeyError),
    #[error("addr {addr:?} is not the From address {from:?}")]
    NotFrom { addr: String, from: String },
}

/// A parsed, valid Autocrypt or Autocrypt-Gossip header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutocryptHeader {
    /// Canonical (lower-case) address.
    pub addr: String,
    pub prefer_encrypt: PreferEncrypt,
    pub key: PublicKey,
    /// `_verified` is present (Delta Chat: the gossiping sender verified this key).
    pub verified: bool,
}

impl AutocryptHeader {
    /// Parses a header value (unfolded or not).
    pub fn parse(value: &str) -> Result<AutocryptHeader, AutocryptError> {
        if value.len() > MAX_HEADER_LEN {
            return Err(AutocryptError::TooLong(value.len()));
        }
        let attributes: Vec<&str> = value.split(';').map(str::trim).filter(|a| !a.is_empty()).collect();
        let mut addr = None;
        let mut prefer_encrypt = PreferEncrypt::NoPreference;
        let mut seen_prefer = false;
        let mut keydata = None;
        let mut verified = false;
        for (i, attribute) in attributes.iter().enumerate() {
            let Some((name, val)) = attribute.split_once('=') else {
                return Err(AutocryptError::NoValue(clip(attribute)));
            };
            let (name, val) = (name.trim(), val.trim());
            if keydata.is_some() {
                return Err(AutocryptError::KeydataNotLast);
            }
            match name {
                "addr" => {
                    if addr.replace(val).is_some() {
                        return Err(AutocryptError::Duplicate("addr".into()));
                    }
                }
                "prefer-encrypt" => {
                    if std::mem::replace(&mut seen_prefer, true) {
                        return Err(AutocryptError::Duplicate("prefer-encrypt".into()));
                    }
                    prefer_encrypt = if val == "mutual" { PreferEncrypt::Mutual } else { PreferEncrypt::NoPreference };
                }
                "keydata" => {
                    debug_assert!(i < attributes.len());
                    keydata = Some(val);
                }
                "_verified" => verified = true,
                _ if name.starts_with('_') => {}
                _ => return Err(AutocryptError::UnknownCritical(clip(name))),
            }
        }
        let addr = addr.ok_or(AutocryptError::MissingAddr)?;
        let canonical = canonical_addr(addr);
        if !canonical.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            || canonical.bytes().any(|b| b.is_ascii_whitespace() || b"<>,;\"".contains(&b))
        {
            return Err(AutocryptError::BadAddr(clip(addr)));
        }
        let keydata = keydata.ok_or(AutocryptError::MissingKeydata)?;
        let compact: String = keydata.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| AutocryptError::KeydataNotBase64)?;
        let key = PublicKey::from_bytes(&bytes)?;
        Ok(AutocryptHeader { addr: canonical, prefer_encrypt, key, verified })
    }

    /// The header value as we send it: `addr=…; [prefer-encrypt=mutual;] [_verified=1;]
    /// keydata=…`, the key data split into words as Delta Chat splits it (70 characters, then
    /// 78) so [`fold`] folds it into the same lines.
    pub fn value(&self) -> String {
        let mut out = format!("addr={};", self.addr);
        if self.prefer_encrypt == PreferEncrypt::Mutual {
            out.push_str(" prefer-encrypt=mutual;");
        }
        if self.verified {
            out.push_str(" _verified=1;");
        }
        out.push_str(" keydata=");
        let data = base64::engine::general_purpose::STANDARD.encode(self.key.to_bytes());
        let first = data.len().min(70);
        out.push_str(&data[..first]);
        for chunk in data.as_bytes()[first..].chunks(78) {
            out.push(' ');
            // Base64 output is ASCII.
            out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        }
        out
    }

    /// The whole folded header field, `name` being `Autocrypt` or `Autocrypt-Gossip`.
    pub fn field(&self, name: &str) -> String {
        fold(name, &self.value())
    }
}

/// The sender's key of a message by Level 1's rule: of the `Autocrypt` header values, those that
/// are valid and whose `addr` is `from` count; exactly one counts, or none is used.
pub fn sender_header(values: &[String], from: &str) -> Option<AutocryptHeader> {
    let from = canonical_addr(from);
    let mut valid = values.iter().filter_map(|v| AutocryptHeader::parse(v).ok()).filter(|h| h.addr == from);
    let first = valid.next()?;
    if valid.next().is_some() {
        return None;
    }
    Some(first)
}

/// The usable `Autocrypt-Gossip` headers of a decrypted, correctly signed message: valid, for
/// an address among `recipients` (To/Cc), not for the sender. Only one header per address is
/// used (the last, as Delta Chat does).
pub fn gossip_headers(values: &[String], from: &str, recipients: &[String]) -> Vec<AutocryptHeader> {
    let from = canonical_addr(from);
    let recipients: Vec<String> = recipients.iter().map(|r| canonical_addr(r)).collect();
    let mut out: Vec<AutocryptHeader> = Vec::new();
    for header in values.iter().filter_map(|v| AutocryptHeader::parse(v).ok()) {
        if header.addr == from || !recipients.contains(&header.addr) {
            continue;
        }
        out.retain(|h| h.addr != header.addr);
        out.push(header);
    }
    out
}

fn clip(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::key::AccountKey;
    use std::sync::OnceLock;

    fn key() -> &'static AccountKey {
        static KEY: OnceLock<AccountKey> = OnceLock::new();
        KEY.get_or_init(|| AccountKey::generate("alice@example.org").unwrap())
    }

    fn keydata() -> String {
        base64::engine::general_purpose::STANDARD.encode(key().public_key().to_bytes())
    }

    #[test]
    fn parses_the_level_1_forms() {
        let h =
            AutocryptHeader::parse(&format!("addr=Alice@Example.org; prefer-encrypt=mutual; keydata={}", keydata()))
                .unwrap();
        assert_eq!(h.addr, "alice@example.org");
        assert_eq!(h.prefer_encrypt, PreferEncrypt::Mutual);
        assert_eq!(h.key.fingerprint(), key().fingerprint());
        assert!(!h.verified);
        // Other prefer-encrypt values mean no preference; `_` attributes are ignored; keydata may
        // be folded with whitespace anywhere.
        let folded: String =
            keydata().as_bytes().chunks(30).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\r\n ");
        let h = AutocryptHeader::parse(&format!(
            "addr=alice@example.org; prefer-encrypt=reset; _x=1; _verified=1; keydata={folded}"
        ))
        .unwrap();
        assert_eq!(h.prefer_encrypt, PreferEncrypt::NoPreference);
        assert!(h.verified);
    }

    #[test]
    fn invalid_headers_are_named() {
        let k = keydata();
        let err = |v: String| AutocryptHeader::parse(&v).unwrap_err();
        assert_eq!(err(format!("keydata={k}")), AutocryptError::MissingAddr);
        assert_eq!(err("addr=a@b.org".into()), AutocryptError::MissingKeydata);
        assert_eq!(err(format!("addr=a@b.org; other=1; keydata={k}")), AutocryptError::UnknownCritical("other".into()));
        assert_eq!(err(format!("addr=a@b.org; keydata={k}; _late=1")), AutocryptError::KeydataNotLast);
        assert_eq!(err(format!("addr=a@b.org; addr=c@d.org; keydata={k}")), AutocryptError::Duplicate("addr".into()));
        assert_eq!(err(format!("addr=nobody; keydata={k}")), AutocryptError::BadAddr("nobody".into()));
        assert_eq!(err(format!("addr=a@b.org; flag; keydata={k}")), AutocryptError::NoValue("flag".into()));
        assert_eq!(err("addr=a@b.org; keydata=!!!".into()), AutocryptError::KeydataNotBase64);
        assert!(matches!(err("addr=a@b.org; keydata=AAAA".into()), AutocryptError::Key(_)));
        let long = format!("addr=a@b.org; _pad={}; keydata={k}", "x".repeat(MAX_HEADER_LEN));
        assert!(matches!(err(long), AutocryptError::TooLong(_)));
    }

    #[test]
    fn formatting_round_trips_and_folds() {
        let h = AutocryptHeader {
            addr: "alice@example.org".into(),
            prefer_encrypt: PreferEncrypt::Mutual,
            key: key().public_key().clone(),
            verified: false,
        };
        let field = h.field("Autocrypt");
        assert!(field.starts_with("Autocrypt: addr=alice@example.org; prefer-encrypt=mutual;\r\n keydata="));
        assert!(field.lines().all(|l| l.len() <= 79), "{field}");
        let value = crate::openpgp::mime::first_value(field.as_bytes(), "Autocrypt").unwrap();
        assert_eq!(AutocryptHeader::parse(&value).unwrap(), h);
        let gossip = AutocryptHeader { prefer_encrypt: PreferEncrypt::NoPreference, verified: true, ..h.clone() };
        assert!(gossip.value().starts_with("addr=alice@example.org; _verified=1; keydata="));
        assert_eq!(AutocryptHeader::parse(&gossip.value()).unwrap(), gossip);
    }

    #[test]
    fn formats_byte_for_byte_like_delta_chat() {
        use crate::openpgp::decrypt::tests::{account, fixture};
        use crate::openpgp::decrypt::{NoKeys, decrypt};
        use crate::openpgp::mime;
        let d = decrypt(&fixture("group.eml"), &account("bob"), &NoKeys).unwrap();
        let header = mime::split(&d.inner).0;
        let raw = |name: &str| -> Vec<String> {
            mime::fields(header).iter().filter(|f| f.is(name)).map(|f| String::from_utf8(f.crlf()).unwrap()).collect()
        };
        assert_eq!(vec![d.autocrypt.as_ref().unwrap().field("Autocrypt")], raw("Autocrypt"));
        let gossip: Vec<String> = d.gossip.iter().map(|g| g.field("Autocrypt-Gossip")).collect();
        assert_eq!(gossip, raw("Autocrypt-Gossip"));
    }

    #[test]
    fn one_valid_sender_header_or_none() {
        let good = format!("addr=alice@example.org; keydata={}", keydata());
        let other = format!("addr=mallory@example.org; keydata={}", keydata());
        let broken = "addr=alice@example.org; keydata=AAAA".to_string();
        assert!(sender_header(std::slice::from_ref(&good), "Alice@example.org").is_some());
        assert!(sender_header(&[good.clone(), other.clone(), broken.clone()], "alice@example.org").is_some());
        assert!(sender_header(&[other], "alice@example.org").is_none(), "addr must be From");
        assert!(sender_header(&[good.clone(), good], "alice@example.org").is_none(), "two valid discard all");
        assert!(sender_header(&[broken], "alice@example.org").is_none());
        assert!(sender_header(&[], "alice@example.org").is_none());
    }

    #[test]
    fn gossip_only_for_recipients_and_never_for_the_sender() {
        let for_addr = |a: &str| format!("addr={a}; keydata={}", keydata());
        let values = vec![
            for_addr("bob@example.org"),
            for_addr("alice@example.org"),
            for_addr("eve@example.org"),
            for_addr("Carol@example.org"),
        ];
        let got = gossip_headers(
            &values,
            "alice@example.org",
            &["bob@example.org".into(), "carol@example.org".into(), "alice@example.org".into()],
        );
        let addrs: Vec<&str> = got.iter().map(|h| h.addr.as_str()).collect();
        assert_eq!(addrs, ["bob@example.org", "carol@example.org"]);
    }
}
