//! OpenPGP fingerprints as Delta Chat writes them (upper-case hex, no spaces): the identity of a
//! key in invite links, `Secure-Join-Fingerprint` headers, the peer table and log lines. A type
//! of its own so a fingerprint is never confused with an address or a token.

use std::fmt;
use std::str::FromStr;

/// A v4 (20 bytes) or v6 (32 bytes) key fingerprint.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("a fingerprint is 40 or 64 hex digits, this has {0}")]
    Length(usize),
    #[error("a fingerprint holds only hex digits (and spaces)")]
    NotHex,
}

impl Fingerprint {
    /// From the raw bytes; only the two lengths OpenPGP defines are accepted.
    pub fn from_bytes(bytes: &[u8]) -> Result<Fingerprint, FingerprintError> {
        match bytes.len() {
            20 | 32 => Ok(Fingerprint(bytes.to_vec())),
            n => Err(FingerprintError::Length(n * 2)),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Upper-case hex without separators, the form Delta Chat puts in links and headers.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            s.push_str(&format!("{b:02X}"));
        }
        s
    }

    /// Parses a fingerprint strictly: hex digits only (either case), no separators. Invite links
    /// and headers are parsed with this.
    pub fn parse_strict(text: &str) -> Result<Fingerprint, FingerprintError> {
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FingerprintError::NotHex);
        }
        if text.len() != 40 && text.len() != 64 {
            return Err(FingerprintError::Length(text.len()));
        }
        let bytes: Result<Vec<u8>, _> =
            (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16)).collect();
        bytes.map(Fingerprint).map_err(|_| FingerprintError::NotHex)
    }
}

impl From<&pgp::types::Fingerprint> for Fingerprint {
    fn from(fp: &pgp::types::Fingerprint) -> Fingerprint {
        Fingerprint(fp.as_bytes().to_vec())
    }
}

/// Lenient parsing for what people type: spaces (as in the "human readable" form) are dropped.
impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<Fingerprint, FingerprintError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        Fingerprint::parse_strict(&compact)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_case() {
        let fp: Fingerprint = "1234 5678 9abc DEF0 1234 5678 9ABC DEF0 1234 5678".parse().unwrap();
        assert_eq!(fp.hex(), "123456789ABCDEF0123456789ABCDEF012345678");
        assert_eq!(Fingerprint::parse_strict(&fp.hex().to_lowercase()).unwrap(), fp);
        assert_eq!(fp.as_bytes().len(), 20);
    }

    #[test]
    fn strict_parsing_rejects_what_a_link_must_not_hold() {
        assert_eq!(Fingerprint::parse_strict("12 34"), Err(FingerprintError::NotHex));
        assert_eq!(Fingerprint::parse_strict("1234"), Err(FingerprintError::Length(4)));
        assert_eq!(Fingerprint::parse_strict(&"G".repeat(40)), Err(FingerprintError::NotHex));
        assert_eq!(Fingerprint::parse_strict("é1234567890123456789012345678901234567"), Err(FingerprintError::NotHex));
        assert!(Fingerprint::parse_strict(&"a".repeat(64)).is_ok());
        assert_eq!(Fingerprint::from_bytes(&[0; 7]), Err(FingerprintError::Length(14)));
    }
}
