//! What we know about a correspondent's key (Autocrypt Level 1, "Peer State") and how each
//! incoming message changes it. The update is a pure function from the old state and the facts
//! of one message to a [`Verdict`] that says what happened, so the caller can store the new
//! state, log the change, and notice a conflict.
//!
//! One rule goes beyond Level 1: a key verified by SecureJoin (or introduced by a verified
//! contact's `_verified` gossip) is never replaced silently. A different key for a verified
//! peer leaves the stored state on the verified key and comes back as
//! [`Verdict::VerifiedKeyKept`] with the offered key, for the caller to report.

use super::autocrypt::{AutocryptHeader, PreferEncrypt, sender_header};
use super::decrypt::{Decrypted, SignatureStatus};
use super::fingerprint::Fingerprint;
use super::key::PublicKey;
use super::mime::{self, canonical_addr};

/// The state of one peer, keyed by its canonical address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub addr: String,
    /// Effective date of the newest message seen from the peer.
    pub last_seen: i64,
    /// Effective date of the newest message with a valid Autocrypt header.
    pub autocrypt_timestamp: i64,
    pub public_key: Option<PublicKey>,
    pub prefer_encrypt: PreferEncrypt,
    pub gossip_timestamp: i64,
    pub gossip_key: Option<PublicKey>,
    pub verified: Option<Verification>,
}

/// A verified key and how it came to be verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub key: PublicKey,
    pub at: i64,
    pub via: VerifiedVia,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VerifiedVia {
    /// We completed a SecureJoin handshake with the peer.
    SecureJoin,
    /// A peer we verified gossiped this key with `_verified=1`.
    Introduced { by: String },
}

impl Peer {
    pub fn new(addr: &str) -> Peer {
        Peer {
            addr: canonical_addr(addr),
            last_seen: 0,
            autocrypt_timestamp: 0,
            public_key: None,
            prefer_encrypt: PreferEncrypt::NoPreference,
            gossip_timestamp: 0,
            gossip_key: None,
            verified: None,
        }
    }

    /// The key to encrypt to: the verified key, else the Autocrypt key, else the gossip key.
    pub fn encryption_key(&self) -> Option<&PublicKey> {
        self.verified.as_ref().map(|v| &v.key).or(self.public_key.as_ref()).or(self.gossip_key.as_ref())
    }

    pub fn verified_fingerprint(&self) -> Option<&Fingerprint> {
        self.verified.as_ref().map(|v| v.key.fingerprint())
    }

    pub fn is_verified(&self) -> bool {
        self.verified.is_some()
    }
}

/// Level 1 "effective date": the Date header, unless missing or in the future (then the time
/// the message was received). For Delta Chat mail pass the inner (protected) Date: the outer one
/// is randomized up to six days back.
pub fn effective_date(date: Option<i64>, received_at: i64) -> i64 {
    match date {
        Some(d) if d <= received_at => d,
        _ => received_at,
    }
}

/// The facts of one incoming message about its sender.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The single From address (messages with several From addresses are not passed here).
    pub from: &'a str,
    pub effective_date: i64,
    /// The sender's valid Autocrypt header, chosen by [`super::autocrypt::sender_header`].
    pub header: Option<&'a AutocryptHeader>,
    /// Level 1 skips `multipart/report` messages (bounces, receipts).
    pub is_report: bool,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The message does not count (a report); nothing to store.
    NotApplicable,
    /// Older than what we know; nothing to store.
    Stale,
    /// No usable header: only `last_seen` moved.
    Seen(Peer),
    /// The first key for this address.
    New(Peer),
    /// The same key again; timestamps and preference refreshed.
    Refreshed(Peer),
    /// A different key replaced an unverified one.
    KeyChanged { peer: Peer, old: Fingerprint, new: Fingerprint },
    /// The key was marked verified.
    Verified(Peer),
    /// A verified peer offered another key: the verified key stays; `peer` holds the other
    /// updates (`last_seen`), `offered` is for the caller to report.
    VerifiedKeyKept { peer: Peer, verified: Fingerprint, offered: PublicKey },
}

impl Verdict {
    /// The state to store, if anything changed.
    pub fn peer(&self) -> Option<&Peer> {
        match self {
            Verdict::NotApplicable | Verdict::Stale => None,
            Verdict::Seen(p) | Verdict::New(p) | Verdict::Refreshed(p) | Verdict::Verified(p) => Some(p),
            Verdict::KeyChanged { peer, .. } | Verdict::VerifiedKeyKept { peer, .. } => Some(peer),
        }
    }
}

/// Level 1 "Updating Autocrypt Peer State" for the sender of one message.
pub fn update(old: Option<&Peer>, message: &Incoming<'_>) -> Verdict {
    if message.is_report {
        return Verdict::NotApplicable;
    }
    let mut peer = old.cloned().unwrap_or_else(|| Peer::new(message.from));
    if old.is_some() && message.effective_date < peer.autocrypt_timestamp {
        return Verdict::Stale;
    }
    peer.last_seen = peer.last_seen.max(message.effective_date);
    let Some(header) = message.header else {
        return Verdict::Seen(peer);
    };
    let offered = header.key.fingerprint();
    if let Some(verified) = peer.verified_fingerprint().cloned()
        && &verified != offered
    {
        return Verdict::VerifiedKeyKept { peer, verified, offered: header.key.clone() };
    }
    let old_fp = peer.public_key.as_ref().map(|k| k.fingerprint().clone());
    peer.autocrypt_timestamp = message.effective_date;
    peer.public_key = Some(header.key.clone());
    peer.prefer_encrypt = header.prefer_encrypt;
    match old_fp {
        None => Verdict::New(peer),
        Some(old) if &old == offered => Verdict::Refreshed(peer),
        Some(old) => Verdict::KeyChanged { peer, new: offered.clone(), old },
    }
}

/// Level 1 gossip update for one `Autocrypt-Gossip` header of an encrypted and validly signed
/// message (only [`super::decrypt::Decrypted::gossip`] holds such headers). `sender_verified`
/// says whether we verified the gossiping sender: only then does `_verified=1` verify the key.
pub fn update_from_gossip(
    old: Option<&Peer>,
    gossip: &AutocryptHeader,
    effective_date: i64,
    sender: &str,
    sender_verified: bool,
) -> Verdict {
    let mut peer = old.cloned().unwrap_or_else(|| Peer::new(&gossip.addr));
    let offered = gossip.key.fingerprint();
    if let Some(verified) = peer.verified_fingerprint().cloned()
        && &verified != offered
    {
        return Verdict::VerifiedKeyKept { peer, verified, offered: gossip.key.clone() };
    }
    let introduce = gossip.verified && sender_verified && peer.verified.is_none();
    if introduce {
        peer.verified = Some(Verification {
            key: gossip.key.clone(),
            at: effective_date,
            via: VerifiedVia::Introduced { by: canonical_addr(sender) },
        });
    }
    if old.is_some() && effective_date <= peer.gossip_timestamp {
        return if introduce { Verdict::Verified(peer) } else { Verdict::Stale };
    }
    let old_fp = peer.gossip_key.as_ref().map(|k| k.fingerprint().clone());
    peer.gossip_timestamp = effective_date;
    peer.gossip_key = Some(gossip.key.clone());
    if introduce {
        return Verdict::Verified(peer);
    }
    match old_fp {
        None => Verdict::New(peer),
        Some(old) if &old == offered => Verdict::Refreshed(peer),
        Some(old) => Verdict::KeyChanged { peer, new: offered.clone(), old },
    }
}

/// Marks `key` as the verified key of `addr` (SecureJoin completed). A peer verified with
/// another key stays as it is ([`Verdict::VerifiedKeyKept`]).
pub fn verify(old: Option<&Peer>, addr: &str, key: &PublicKey, at: i64) -> Verdict {
    let mut peer = old.cloned().unwrap_or_else(|| Peer::new(addr));
    if let Some(verified) = peer.verified_fingerprint().cloned()
        && &verified != key.fingerprint()
    {
        return Verdict::VerifiedKeyKept { peer, verified, offered: key.clone() };
    }
    if peer.verified.is_none() {
        peer.verified = Some(Verification { key: key.clone(), at, via: VerifiedVia::SecureJoin });
    }
    if peer.public_key.is_none() {
        peer.public_key = Some(key.clone());
        peer.autocrypt_timestamp = peer.autocrypt_timestamp.max(at);
    }
    Verdict::Verified(peer)
}

/// Applies everything one decrypted message says about keys: the sender's Autocrypt header
/// (effective date from the protected Date) and, when the signature is valid, each gossip
/// header (`_verified` counts only when we verified the sender and the message is signed with
/// that verified key). `known` gives the stored state of an address. Returns the address and
/// verdict of every peer concerned, sender first; store [`Verdict::peer`] of each.
pub fn observe(
    decrypted: &Decrypted,
    received_at: i64,
    known: &dyn Fn(&str) -> Option<Peer>,
) -> Vec<(String, Verdict)> {
    let Some(from) = decrypted.from.as_ref().map(|f| canonical_addr(&f.addr)) else {
        return Vec::new();
    };
    let date = effective_date(decrypted.protected.date, received_at);
    let sender = known(&from);
    let incoming = Incoming {
        from: &from,
        effective_date: date,
        header: decrypted.autocrypt.as_ref(),
        is_report: decrypted.protected.is_read_receipt,
    };
    let verdict = update(sender.as_ref(), &incoming);
    let sender_verified = match (&decrypted.signature, sender.as_ref().and_then(Peer::verified_fingerprint)) {
        (SignatureStatus::Valid(signer), Some(verified)) => signer == verified,
        _ => false,
    };
    let mut out = vec![(from.clone(), verdict)];
    for gossip in &decrypted.gossip {
        let old = known(&gossip.addr);
        out.push((gossip.addr.clone(), update_from_gossip(old.as_ref(), gossip, date, &from, sender_verified)));
    }
    out
}

/// The sender's update for a message that was not encrypted: its header section (Autocrypt
/// header outside; no gossip counts).
pub fn observe_clear(
    header: &[u8],
    received_at: i64,
    known: &dyn Fn(&str) -> Option<Peer>,
) -> Option<(String, Verdict)> {
    let from = mime::first_value(header, "From").map(|v| mime::mailboxes(&v))?;
    let [from] = from.as_slice() else {
        // Level 1: messages with several From addresses do not count.
        return None;
    };
    let from = canonical_addr(&from.addr);
    let header_value = sender_header(&mime::all_values(header, "Autocrypt"), &from);
    let date = effective_date(mime::first_value(header, "Date").and_then(|d| mime::parse_date(&d)), received_at);
    let is_report = mime::first_value(header, "Content-Type")
        .and_then(|v| mime::content_type(&v))
        .is_some_and(|ct| ct.mime == "multipart/report");
    let incoming = Incoming { from: &from, effective_date: date, header: header_value.as_ref(), is_report };
    let verdict = update(known(&from).as_ref(), &incoming);
    Some((from, verdict))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::openpgp::key::AccountKey;
    use std::sync::OnceLock;

    /// Two generated keys for the tests (generation is the slow part).
    pub(crate) fn keys() -> &'static [AccountKey; 2] {
        static KEYS: OnceLock<[AccountKey; 2]> = OnceLock::new();
        KEYS.get_or_init(|| {
            [AccountKey::generate("bob@example.org").unwrap(), AccountKey::generate("bob@example.org").unwrap()]
        })
    }

    fn header(i: usize, prefer: PreferEncrypt) -> AutocryptHeader {
        AutocryptHeader {
            addr: "bob@example.org".into(),
            prefer_encrypt: prefer,
            key: keys()[i].public_key().clone(),
            verified: false,
        }
    }

    fn seen<'a>(date: i64, header: Option<&'a AutocryptHeader>) -> Incoming<'a> {
        Incoming { from: "Bob@Example.org", effective_date: date, header, is_report: false }
    }

    #[test]
    fn effective_date_rule() {
        assert_eq!(effective_date(Some(100), 200), 100);
        assert_eq!(effective_date(Some(300), 200), 200, "future dates count as received");
        assert_eq!(effective_date(None, 200), 200);
    }

    #[test]
    fn level_1_update_sequence() {
        let h0 = header(0, PreferEncrypt::Mutual);
        let Verdict::New(p) = update(None, &seen(100, Some(&h0))) else { panic!() };
        assert_eq!((p.addr.as_str(), p.last_seen, p.autocrypt_timestamp), ("bob@example.org", 100, 100));
        assert_eq!(p.prefer_encrypt, PreferEncrypt::Mutual);
        // Without a header only last_seen moves.
        let Verdict::Seen(p) = update(Some(&p), &seen(150, None)) else { panic!() };
        assert_eq!((p.last_seen, p.autocrypt_timestamp), (150, 100));
        assert!(p.public_key.is_some());
        // An older message than the last Autocrypt update changes nothing.
        assert_eq!(update(Some(&p), &seen(50, Some(&h0))), Verdict::Stale);
        // Same key again: refreshed; a preference change is taken.
        let h0n = header(0, PreferEncrypt::NoPreference);
        let Verdict::Refreshed(p) = update(Some(&p), &seen(200, Some(&h0n))) else { panic!() };
        assert_eq!((p.autocrypt_timestamp, p.prefer_encrypt), (200, PreferEncrypt::NoPreference));
        // Another key replaces an unverified one, and says so.
        let h1 = header(1, PreferEncrypt::Mutual);
        let Verdict::KeyChanged { peer, old, new } = update(Some(&p), &seen(300, Some(&h1))) else { panic!() };
        assert_eq!((&old, &new), (keys()[0].fingerprint(), keys()[1].fingerprint()));
        assert_eq!(peer.public_key.as_ref().unwrap().fingerprint(), keys()[1].fingerprint());
        // Reports do not count.
        let report = Incoming { is_report: true, ..seen(400, Some(&h0)) };
        assert_eq!(update(Some(&peer), &report), Verdict::NotApplicable);
    }

    #[test]
    fn a_verified_key_is_never_replaced_silently() {
        let h0 = header(0, PreferEncrypt::Mutual);
        let p = update(None, &seen(100, Some(&h0))).peer().cloned().unwrap();
        let Verdict::Verified(p) = verify(Some(&p), "bob@example.org", keys()[0].public_key(), 110) else { panic!() };
        assert_eq!(p.verified.as_ref().unwrap().via, VerifiedVia::SecureJoin);
        let h1 = header(1, PreferEncrypt::Mutual);
        let Verdict::VerifiedKeyKept { peer, verified, offered } = update(Some(&p), &seen(200, Some(&h1))) else {
            panic!()
        };
        assert_eq!(&verified, keys()[0].fingerprint());
        assert_eq!(offered.fingerprint(), keys()[1].fingerprint());
        assert_eq!(peer.public_key.as_ref().unwrap().fingerprint(), keys()[0].fingerprint());
        assert_eq!(peer.encryption_key().unwrap().fingerprint(), keys()[0].fingerprint());
        assert_eq!(peer.last_seen, 200);
        // Gossip and a second verification cannot replace it either.
        assert!(matches!(
            update_from_gossip(Some(&p), &h1, 300, "carol@example.org", true),
            Verdict::VerifiedKeyKept { .. }
        ));
        assert!(matches!(
            verify(Some(&p), "bob@example.org", keys()[1].public_key(), 300),
            Verdict::VerifiedKeyKept { .. }
        ));
        // The same key again is fine.
        assert!(matches!(update(Some(&p), &seen(300, Some(&h0))), Verdict::Refreshed(_)));
    }

    #[test]
    fn gossip_updates_the_gossip_key_and_verified_introduction() {
        let g0 = header(0, PreferEncrypt::NoPreference);
        let Verdict::New(p) = update_from_gossip(None, &g0, 100, "alice@example.org", false) else { panic!() };
        assert!(p.public_key.is_none());
        assert_eq!(p.gossip_key.as_ref().unwrap().fingerprint(), keys()[0].fingerprint());
        assert_eq!(p.encryption_key().unwrap().fingerprint(), keys()[0].fingerprint());
        assert_eq!(update_from_gossip(Some(&p), &g0, 100, "alice@example.org", false), Verdict::Stale);
        // `_verified=1` from a sender we did not verify does not verify.
        let g0v = AutocryptHeader { verified: true, ..g0.clone() };
        let v = update_from_gossip(Some(&p), &g0v, 200, "alice@example.org", false);
        assert!(matches!(&v, Verdict::Refreshed(p) if p.verified.is_none()));
        // From a verified sender it does.
        let Verdict::Verified(p) = update_from_gossip(Some(&p), &g0v, 300, "Alice@example.org", true) else { panic!() };
        assert_eq!(p.verified.unwrap().via, VerifiedVia::Introduced { by: "alice@example.org".into() });
    }

    #[test]
    fn observing_captured_delta_chat_mail() {
        use crate::openpgp::decrypt::tests::{account, exported_fingerprint, fixture};
        use crate::openpgp::decrypt::{NoKeys, decrypt};
        let bob = account("bob");
        let group = decrypt(&fixture("group.eml"), &bob, &NoKeys).unwrap();
        let none = |_: &str| None;
        let seen = observe(&group, 1_796_600_000, &none);
        let summary: Vec<(&str, bool)> = seen.iter().map(|(a, v)| (a.as_str(), matches!(v, Verdict::New(_)))).collect();
        assert_eq!(summary, [("alice@example.org", true), ("bob@example.org", true), ("carol@example.org", true)]);
        let alice = seen[0].1.peer().unwrap();
        assert_eq!(alice.public_key.as_ref().unwrap().fingerprint(), &exported_fingerprint("alice"));
        assert_eq!(
            alice.autocrypt_timestamp,
            group.protected.date.unwrap(),
            "the protected Date, not the random outer one"
        );
        let carol = seen[2].1.peer().unwrap();
        assert!(carol.public_key.is_none() && carol.gossip_key.is_some());
        // The read receipt does not count (Level 1 skips multipart/report).
        let receipt = decrypt(&fixture("read-receipt.eml"), &account("alice"), &NoKeys).unwrap();
        assert_eq!(observe(&receipt, 1_796_600_000, &none)[0].1, Verdict::NotApplicable);
        // Clear mail: the outer header.
        let h = format!(
            "From: Dave <dave@example.org>\r\nDate: Sat, 5 Dec 2026 19:35:50 +0000\r\n{}",
            crate::openpgp::autocrypt::AutocryptHeader {
                addr: "dave@example.org".into(),
                prefer_encrypt: PreferEncrypt::Mutual,
                key: keys()[0].public_key().clone(),
                verified: false
            }
            .field("Autocrypt")
        );
        let (addr, verdict) = observe_clear(h.as_bytes(), 1_796_600_000, &none).unwrap();
        assert_eq!(addr, "dave@example.org");
        assert!(matches!(verdict, Verdict::New(p) if p.prefer_encrypt == PreferEncrypt::Mutual));
        assert!(observe_clear(b"From: a@b.org, c@d.org\r\n", 1, &none).is_none());
    }

    #[test]
    fn peer_state_survives_serialization() {
        let h0 = header(0, PreferEncrypt::Mutual);
        let p = update(None, &seen(100, Some(&h0))).peer().cloned().unwrap();
        let Verdict::Verified(p) = verify(Some(&p), "bob@example.org", keys()[0].public_key(), 110) else { panic!() };
        let json = serde_json::to_vec(&p).unwrap();
        let back: Peer = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, p);
    }
}
