//! One new message of an account, as the account worker hands it over (client connected or
//! not): the SecureJoin machines get it first (our invites, then the handshakes we started),
//! then it is decrypted with the account key for its Autocrypt header, gossip and signer; a
//! clear message counts only with its outer Autocrypt header. Peers are stored through
//! [`Identity`]; what is to be sent comes back to the caller, which queues it.
//!
//! Blocking (decryption, store commits): the worker calls it with `spawn_blocking`.

use tracing::{debug, info, warn};

use super::decrypt::{DecryptError, decrypt};
use super::fingerprint::Fingerprint;
use super::identity::{Identity, IdentityError};
use super::key::PublicKey;
use super::mime;
use super::peer::{Verdict, observe, observe_clear, verify};
use super::securejoin::Rejected;
use super::securejoin::inviter::{Inviter, InviterEvent};
use super::securejoin::joiner::JoinerEvent;
use super::securejoin::message::Outgoing;

/// What handling one message did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Handshake messages to send for the account.
    pub send: Vec<Outgoing>,
    /// The peer verified by this message (a handshake completed on our side).
    pub verified: Option<String>,
    /// It was a SecureJoin message (hidden from plain clients).
    pub handshake: bool,
}

/// The display name our handshake mails carry (the address's local part).
pub fn display_name(login: &str) -> String {
    login.split('@').next().unwrap_or(login).to_string()
}

/// Whether the header section says the message is PGP/MIME encrypted.
pub fn is_encrypted(header: &[u8]) -> bool {
    mime::first_value(header, "Content-Type")
        .and_then(|v| mime::content_type(&v))
        .is_some_and(|ct| ct.mime == "multipart/encrypted")
}

/// Handles one message (`message` its full bytes, or only the header section for a clear
/// one); `received_at` for Autocrypt's effective date.
pub fn handle(identity: &Identity, login: &str, message: &[u8], received_at: i64) -> Result<Handled, IdentityError> {
    let known = |addr: &str| identity.peer(login, addr).ok().flatten();
    if !is_encrypted(message) {
        let header = crate::mail::split_header(message).0;
        if let Some(verdict) = observe_clear(header, received_at, &known) {
            identity.apply(login, &[verdict])?;
        }
        return Ok(Handled::default());
    }
    let key = identity.account_key_blocking(login)?;
    let name = display_name(login);
    let invites = identity.invites(login)?;
    if !invites.is_empty() {
        let inviter = Inviter { key: &key, name: &name, invites: &invites };
        match inviter.handle(message, received_at) {
            Ok(InviterEvent::SendPubkey { send }) => {
                info!(login, to = ?send.to, "SecureJoin: a joiner opened our invite; sending our key");
                return Ok(Handled { send: vec![send], verified: None, handshake: true });
            }
            Ok(InviterEvent::Confirmed { peer, key: peer_key, verified, send }) => {
                let mut out = Handled { send: vec![send], verified: None, handshake: true };
                info!(login, peer = %peer, verified, "SecureJoin: the joiner proved the invite's token; confirming");
                if verified {
                    mark_verified(identity, login, &peer, &peer_key, received_at)?;
                    out.verified = Some(peer);
                }
                return Ok(out);
            }
            Err(e) => not_for_us("inviter", &e),
        }
    }
    for (id, joining) in identity.joins(login)? {
        match joining.handle(&key, &name, message, received_at) {
            Ok(JoinerEvent::InviterVerified { state, inviter, inviter_key, send }) => {
                identity.set_join(login, &id, Some(&state))?;
                mark_verified(identity, login, &inviter, &inviter_key, received_at)?;
                info!(login, inviter = %inviter, "SecureJoin: the inviter's key matches the link; proving our token");
                return Ok(Handled { send: vec![send], verified: Some(inviter), handshake: true });
            }
            Ok(JoinerEvent::Joined { state, inviter, group }) => {
                // Kept (finished): its link's password still opens the handshake's mails for
                // the notice a plain client's session shows in their place.
                identity.set_join(login, &id, Some(&state))?;
                info!(login, inviter = %inviter, group = ?group, "SecureJoin complete");
                if group.is_none() {
                    return Ok(Handled { send: Vec::new(), verified: Some(inviter), handshake: true });
                }
                // A group's `vg-member-added` is also its first group message: learnt below.
                break;
            }
            Err(e) => not_for_us("joiner", &e),
        }
    }
    let lookup = |fp: &Fingerprint| -> Option<PublicKey> {
        identity.peers(login).ok()?.into_iter().find_map(|p| {
            [p.verified.as_ref().map(|v| v.key.clone()), p.public_key.clone(), p.gossip_key.clone()]
                .into_iter()
                .flatten()
                .find(|k| k.fingerprint() == fp)
        })
    };
    match decrypt(message, &key, &lookup) {
        Ok(decrypted) => {
            let handshake = super::securejoin::step::is_handshake(&decrypted);
            let verdicts = observe(&decrypted, received_at, &known);
            identity.apply(login, &verdicts)?;
            identity.learn_group(login, &decrypted, received_at)?;
            Ok(Handled { handshake, ..Handled::default() })
        }
        Err(DecryptError::PasswordOnly) => Ok(Handled { handshake: true, ..Handled::default() }),
        Err(e) => {
            debug!(login, "an encrypted message does not open: {e}");
            Ok(Handled::default())
        }
    }
}

fn mark_verified(identity: &Identity, login: &str, addr: &str, key: &PublicKey, at: i64) -> Result<(), IdentityError> {
    let old = identity.peer(login, addr)?;
    let verdict = verify(old.as_ref(), addr, key, at);
    if let Verdict::VerifiedKeyKept { .. } = verdict {
        warn!(login, peer = %addr, "SecureJoin offered another key for a verified contact; the verified key is kept");
    }
    identity.apply(login, &[(mime::canonical_addr(addr), verdict)])
}

fn not_for_us(role: &str, e: &Rejected) {
    match e {
        Rejected::NotHandshake | Rejected::UnknownAuth | Rejected::UnexpectedStep(_) => {}
        Rejected::Decrypt(DecryptError::PasswordOnly | DecryptError::NoPassword) => {}
        other => info!("SecureJoin ({role}): a handshake message was refused: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::autocrypt::{AutocryptHeader, PreferEncrypt};
    use crate::openpgp::encrypt::{Options, encrypt};
    use crate::openpgp::key::AccountKey;
    use crate::seal::SealKey;
    use crate::store::Store;

    const ALICE: &str = "alice@example.org";
    const BOB: &str = "bob@example.net";

    fn letter(now: i64) -> Vec<u8> {
        format!(
            "From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: hi\r\nDate: {}\r\nMessage-ID: <b@example.net>\r\n\r\nhello\r\n",
            crate::mail::rfc5322_date(now)
        )
        .into_bytes()
    }

    #[test]
    fn encrypted_mail_teaches_the_senders_key_and_a_tampered_one_teaches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::with_seal(Store::open(dir.path()).unwrap(), SealKey::generate());
        let alice = identity.account_key_blocking(ALICE).unwrap();
        let bob = AccountKey::generate(BOB).unwrap();
        let now = crate::clock::now();
        let to_alice = [(ALICE.to_string(), alice.public_key().clone())];
        let sealed = encrypt(&letter(now), &bob, &to_alice, &Options::mail(PreferEncrypt::Mutual, now)).unwrap();

        // One byte changed inside the armored OpenPGP message: nothing is learnt.
        let mut tampered = sealed.clone();
        let begin = b"-----BEGIN PGP MESSAGE-----";
        let at = tampered.windows(begin.len()).position(|w| w == begin).unwrap();
        let at = at + tampered[at..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 200;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        assert_eq!(handle(&identity, ALICE, &tampered, now).unwrap(), Handled::default());
        assert_eq!(identity.peer(ALICE, BOB).unwrap(), None);

        assert_eq!(handle(&identity, ALICE, &sealed, now).unwrap(), Handled::default());
        let peer = identity.peer(ALICE, BOB).unwrap().expect("Bob's key learnt");
        assert_eq!(peer.public_key.as_ref().map(|k| k.fingerprint()), Some(bob.fingerprint()));
    }

    #[test]
    fn a_verified_contacts_new_key_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::with_seal(Store::open(dir.path()).unwrap(), SealKey::generate());
        let (bob, other) = (AccountKey::generate(BOB).unwrap(), AccountKey::generate(BOB).unwrap());
        let now = crate::clock::now();
        mark_verified(&identity, ALICE, BOB, bob.public_key(), now - 10).unwrap();
        let header = AutocryptHeader {
            addr: BOB.into(),
            prefer_encrypt: PreferEncrypt::Mutual,
            key: other.public_key().clone(),
            verified: false,
        };
        let mut clear = mime::fold("Autocrypt", &header.value()).into_bytes();
        clear.extend_from_slice(b"\r\n");
        clear.extend_from_slice(&letter(now));
        handle(&identity, ALICE, &clear, now).unwrap();
        let peer = identity.peer(ALICE, BOB).unwrap().unwrap();
        assert_eq!(peer.verified_fingerprint(), Some(bob.fingerprint()), "still the verified key");
        assert_eq!(peer.encryption_key().map(|k| k.fingerprint()), Some(bob.fingerprint()), "and encrypted to it");
        // A SecureJoin with the other key does not replace it either.
        mark_verified(&identity, ALICE, BOB, other.public_key(), now).unwrap();
        assert_eq!(identity.peer(ALICE, BOB).unwrap().unwrap().verified_fingerprint(), Some(bob.fingerprint()));
    }
}
