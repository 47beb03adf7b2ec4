//! Whether to encrypt an outgoing message: Autocrypt Level 1's recommendation per recipient and
//! per message, and the gateway's decision built on it.
//!
//! A plain mail program has no "encrypt" button to ask the user with, so the gateway decides:
//! encrypt when every recipient (To, Cc, Bcc: the SMTP envelope) has a usable key, as issue 14
//! asks and as Delta Chat does; otherwise send in clear with the user's Autocrypt header, except
//! that a verified contact never gets clear text silently: then the decision is to refuse, and
//! the SMTP side says why.

use super::autocrypt::PreferEncrypt;
use super::key::PublicKey;
use super::peer::Peer;

/// Level 1: an Autocrypt key older than this relative to `last_seen` only "discourages".
pub const STALE_AFTER_SECS: i64 = 35 * 24 * 3600;

/// Level 1 "Recommendations for single-recipient messages", ordered from no to yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recommendation {
    Disable,
    Discourage,
    Available,
    Encrypt,
}

/// The recommendation for one recipient. `reply_to_encrypted`: the message replies to an
/// encrypted one. A verified peer is always `Encrypt`.
pub fn for_recipient(peer: Option<&Peer>, own: PreferEncrypt, reply_to_encrypted: bool) -> Recommendation {
    let Some(peer) = peer else {
        return Recommendation::Disable;
    };
    if peer.is_verified() {
        return Recommendation::Encrypt;
    }
    if peer.public_key.is_none() && peer.gossip_key.is_none() {
        return Recommendation::Disable;
    }
    let preliminary = if peer.public_key.is_none() || peer.autocrypt_timestamp < peer.last_seen - STALE_AFTER_SECS {
        Recommendation::Discourage
    } else {
        Recommendation::Available
    };
    let mutual = own == PreferEncrypt::Mutual && peer.prefer_encrypt == PreferEncrypt::Mutual;
    if reply_to_encrypted || (preliminary == Recommendation::Available && mutual) {
        return Recommendation::Encrypt;
    }
    preliminary
}

/// Level 1 "Recommendations for messages to multiple addresses".
pub fn for_message(recipients: &[Recommendation]) -> Recommendation {
    use Recommendation::*;
    if recipients.is_empty() || recipients.contains(&Disable) {
        Disable
    } else if recipients.iter().all(|r| *r == Encrypt) {
        Encrypt
    } else if recipients.contains(&Discourage) {
        Discourage
    } else {
        Available
    }
}

/// What the gateway does with one outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Encrypt to these keys (one per recipient, in the order given) and to ourselves.
    Encrypt(Vec<(String, PublicKey)>),
    /// Send in clear (with the user's Autocrypt header).
    Clear { without_key: Vec<String> },
    /// Some recipients have no key while others are verified contacts: sending in clear would
    /// expose a verified conversation, encrypting is impossible.
    Refuse { without_key: Vec<String>, verified: Vec<String> },
}

/// The gateway's decision for a message to `recipients` (address and known peer state).
pub fn decide(recipients: &[(&str, Option<&Peer>)]) -> Decision {
    let mut keys = Vec::new();
    let mut without_key = Vec::new();
    let mut verified = Vec::new();
    for (addr, peer) in recipients {
        let addr = addr.to_lowercase();
        match peer.and_then(|p| p.encryption_key().map(|k| (p, k))) {
            Some((p, key)) => {
                if p.is_verified() {
                    verified.push(addr.clone());
                }
                keys.push((addr, key.clone()));
            }
            None => without_key.push(addr),
        }
    }
    if recipients.is_empty() {
        Decision::Clear { without_key }
    } else if without_key.is_empty() {
        Decision::Encrypt(keys)
    } else if !verified.is_empty() {
        Decision::Refuse { without_key, verified }
    } else {
        Decision::Clear { without_key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::peer::tests::keys;
    use crate::openpgp::peer::{Peer, verify};

    fn with_key(addr: &str, at: i64, last_seen: i64, prefer: PreferEncrypt) -> Peer {
        Peer {
            public_key: Some(keys()[0].public_key().clone()),
            autocrypt_timestamp: at,
            last_seen,
            prefer_encrypt: prefer,
            ..Peer::new(addr)
        }
    }

    #[test]
    fn level_1_single_recipient_table() {
        use PreferEncrypt::*;
        use Recommendation::*;
        assert_eq!(for_recipient(None, Mutual, true), Disable);
        assert_eq!(for_recipient(Some(&Peer::new("a@b.org")), Mutual, true), Disable);
        let fresh = with_key("a@b.org", 100, 100, NoPreference);
        assert_eq!(for_recipient(Some(&fresh), Mutual, false), Available);
        assert_eq!(for_recipient(Some(&fresh), Mutual, true), Encrypt);
        let mutual = with_key("a@b.org", 100, 100, Mutual);
        assert_eq!(for_recipient(Some(&mutual), Mutual, false), Encrypt);
        assert_eq!(for_recipient(Some(&mutual), NoPreference, false), Available);
        let stale = with_key("a@b.org", 100, 100 + STALE_AFTER_SECS + 1, Mutual);
        assert_eq!(for_recipient(Some(&stale), Mutual, false), Discourage);
        assert_eq!(for_recipient(Some(&stale), Mutual, true), Encrypt);
        let gossip_only = Peer { gossip_key: Some(keys()[0].public_key().clone()), ..Peer::new("a@b.org") };
        assert_eq!(for_recipient(Some(&gossip_only), Mutual, false), Discourage);
        let verified = verify(None, "a@b.org", keys()[0].public_key(), 1).peer().cloned().unwrap();
        assert_eq!(for_recipient(Some(&verified), NoPreference, false), Encrypt);
    }

    #[test]
    fn level_1_message_aggregate() {
        use Recommendation::*;
        assert_eq!(for_message(&[Encrypt, Encrypt]), Encrypt);
        assert_eq!(for_message(&[Encrypt, Available]), Available);
        assert_eq!(for_message(&[Encrypt, Discourage, Available]), Discourage);
        assert_eq!(for_message(&[Encrypt, Disable]), Disable);
        assert_eq!(for_message(&[]), Disable);
    }

    #[test]
    fn gateway_decision() {
        let bob = with_key("bob@example.org", 1, 1, PreferEncrypt::Mutual);
        let carol = verify(None, "carol@example.org", keys()[1].public_key(), 1).peer().cloned().unwrap();
        let Decision::Encrypt(keys_used) =
            decide(&[("Bob@example.org", Some(&bob)), ("carol@example.org", Some(&carol))])
        else {
            panic!()
        };
        assert_eq!(
            keys_used.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            ["bob@example.org", "carol@example.org"]
        );
        assert_eq!(keys_used[1].1.fingerprint(), keys()[1].fingerprint(), "the verified key is used");
        assert_eq!(
            decide(&[("bob@example.org", Some(&bob)), ("dave@example.org", None)]),
            Decision::Clear { without_key: vec!["dave@example.org".into()] }
        );
        assert_eq!(
            decide(&[("carol@example.org", Some(&carol)), ("dave@example.org", None)]),
            Decision::Refuse {
                without_key: vec!["dave@example.org".into()],
                verified: vec!["carol@example.org".into()]
            }
        );
        assert_eq!(decide(&[]), Decision::Clear { without_key: vec![] });
    }
}
