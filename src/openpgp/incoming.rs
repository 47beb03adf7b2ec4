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
            Ok(JoinerEvent::Joined { inviter, group, .. }) => {
                identity.set_join(login, &id, None)?;
                info!(login, inviter = %inviter, group = ?group, "SecureJoin complete");
                return Ok(Handled { send: Vec::new(), verified: Some(inviter), handshake: true });
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
