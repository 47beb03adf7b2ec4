//! The inviter's side (the plain user issued a link; a Delta Chat user opened it): answer
//! `vc-request-pubkey` with `vc-pubkey`, check `vc-request-with-auth`, mark the joiner verified
//! and send `vc-contact-confirm`. Delta Chat `handle_securejoin_handshake`, Alice's branches.
//!
//! State is the list of invites we issued and still honour ([`Issued`], stored by the caller);
//! an invite stays usable after the handshake (Delta Chat's do too, a link may be shared with
//! several people), and the caller drops it when the user withdraws it.

use crate::openpgp::decrypt::{DecryptError, Decrypted, NoKeys, SignatureStatus, decrypt, decrypt_with_passwords};
use crate::openpgp::fingerprint::Fingerprint;
use crate::openpgp::key::{AccountKey, PublicKey};
use crate::openpgp::mime::canonical_addr;

use super::Rejected;
use super::invite::{Invite, password};
use super::message::{Outgoing, contact_confirm, gossips, pubkey};
use super::step::{Step, step};

/// Delta Chat verifies a joiner only when the auth token is younger than this (an older link
/// may have been published); the handshake still completes.
pub const VERIFICATION_TIMEOUT_SECS: i64 = 7 * 24 * 3600;

/// An invite we issued.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issued {
    pub invitenumber: String,
    pub auth: String,
    pub created_at: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("created_at", &self.created_at).finish_non_exhaustive()
    }
}

impl Issued {
    pub fn from_invite(invite: &Invite, created_at: i64) -> Issued {
        Issued { invitenumber: invite.invitenumber.clone(), auth: invite.auth.clone(), created_at }
    }
}

/// The inviting account.
pub struct Inviter<'a> {
    pub key: &'a AccountKey,
    /// The user's display name for the messages we send.
    pub name: &'a str,
    pub invites: &'a [Issued],
}

/// What a handled message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviterEvent {
    /// Step 2: send our key to the joiner.
    SendPubkey { send: Outgoing },
    /// Step 4: the joiner proved the token with this key; `verified` unless the invite was
    /// older than [`VERIFICATION_TIMEOUT_SECS`]. Send the confirmation.
    Confirmed { peer: String, key: PublicKey, verified: bool, send: Outgoing },
}

impl Inviter<'_> {
    /// The link of an invite of ours.
    pub fn link(&self, issued: &Issued) -> String {
        Invite {
            fingerprint: self.key.fingerprint().clone(),
            addrs: vec![self.key.addr().to_string()],
            name: self.name.to_string(),
            invitenumber: issued.invitenumber.clone(),
            auth: issued.auth.clone(),
            target: super::invite::Target::Contact,
        }
        .to_link()
    }

    /// Handles one received message.
    pub fn handle(&self, message: &[u8], now: i64) -> Result<InviterEvent, Rejected> {
        match decrypt(message, self.key, &NoKeys) {
            Ok(d) => self.with_auth(&d, now),
            Err(DecryptError::PasswordOnly) => self.request_pubkey(message, now),
            Err(e) => Err(Rejected::Decrypt(e)),
        }
    }

    fn request_pubkey(&self, message: &[u8], now: i64) -> Result<InviterEvent, Rejected> {
        let passwords: Vec<String> = self.invites.iter().map(|i| password(self.key.fingerprint(), &i.auth)).collect();
        let refs: Vec<&str> = passwords.iter().map(String::as_str).collect();
        let d = decrypt_with_passwords(message, &refs, &NoKeys).map_err(|e| match e {
            DecryptError::NoPassword => Rejected::UnknownAuth,
            other => Rejected::Decrypt(other),
        })?;
        let index = match d.method {
            crate::openpgp::decrypt::Method::Password { index } => index,
            crate::openpgp::decrypt::Method::PublicKey { .. } => return Err(Rejected::NotHandshake),
        };
        match step(&d.protected) {
            Some(Step::RequestPubkey) => {}
            Some(other) => return Err(Rejected::UnexpectedStep(format!("{other:?}"))),
            None => return Err(Rejected::NotHandshake),
        }
        let auth = d.protected.secure_join_auth.as_deref().ok_or(Rejected::MissingHeader("Secure-Join-Auth"))?;
        if auth != self.invites[index].auth {
            return Err(Rejected::UnknownAuth);
        }
        let joiner = d.from.as_ref().map(|f| canonical_addr(&f.addr)).ok_or(Rejected::MissingHeader("From"))?;
        Ok(InviterEvent::SendPubkey { send: pubkey(self.key, &joiner, auth, now)? })
    }

    fn with_auth(&self, d: &Decrypted, now: i64) -> Result<InviterEvent, Rejected> {
        match step(&d.protected) {
            Some(Step::RequestWithAuth { group: false }) => {}
            Some(other) => return Err(Rejected::UnexpectedStep(format!("{other:?}"))),
            None => return Err(Rejected::NotHandshake),
        }
        let claimed =
            d.protected.secure_join_fingerprint.as_deref().ok_or(Rejected::MissingHeader("Secure-Join-Fingerprint"))?;
        let claimed: Fingerprint = claimed.parse().map_err(|_| Rejected::FingerprintMismatch)?;
        match &d.signature {
            SignatureStatus::Valid(signer) if signer == &claimed => {}
            SignatureStatus::Valid(_) => return Err(Rejected::FingerprintMismatch),
            _ => return Err(Rejected::WrongSigner { expected: claimed.hex() }),
        }
        if !gossips(d, self.key.fingerprint()) {
            return Err(Rejected::NoSelfGossip);
        }
        let auth = d.protected.secure_join_auth.as_deref().ok_or(Rejected::MissingHeader("Secure-Join-Auth"))?;
        let issued = self.invites.iter().find(|i| i.auth == auth).ok_or(Rejected::UnknownAuth)?;
        let from = d.from.as_ref().ok_or(Rejected::MissingHeader("From"))?;
        let key = d
            .autocrypt
            .as_ref()
            .map(|h| h.key.clone())
            .filter(|k| k.fingerprint() == &claimed)
            .ok_or(Rejected::NoSenderKey)?;
        let peer = canonical_addr(&from.addr);
        let send = contact_confirm(self.key, self.name, &peer, from.name.as_deref().unwrap_or(""), &key, now)?;
        let verified = now < issued.created_at + VERIFICATION_TIMEOUT_SECS;
        Ok(InviterEvent::Confirmed { peer, key, verified, send })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, exported_fingerprint, fixture};

    /// Alice's invite as Delta Chat issued it, with the captured tokens.
    fn captured() -> (Invite, Issued) {
        let invite = Invite::parse(String::from_utf8(fixture("invite-alice.txt")).unwrap().trim()).unwrap();
        let issued = Issued::from_invite(&invite, 1_796_499_300);
        (invite, issued)
    }

    #[test]
    fn answers_delta_chats_request_and_confirms_its_auth() {
        let alice = account("alice");
        let (invite, issued) = captured();
        let inviter = Inviter { key: &alice, name: "Alice", invites: std::slice::from_ref(&issued) };
        assert_eq!(inviter.link(&issued), invite.to_link());
        let now = 1_796_499_349;

        let InviterEvent::SendPubkey { send } =
            inviter.handle(&fixture("securejoin-1-vc-request-pubkey.eml"), now).unwrap()
        else {
            panic!()
        };
        assert_eq!((send.step, send.to.as_slice()), ("vc-pubkey", ["bob@example.org".to_string()].as_slice()));

        let InviterEvent::Confirmed { peer, key, verified, send } =
            inviter.handle(&fixture("securejoin-3-vc-request-with-auth.eml"), now).unwrap()
        else {
            panic!()
        };
        assert_eq!(peer, "bob@example.org");
        assert_eq!(key.fingerprint(), &exported_fingerprint("bob"));
        assert!(verified);
        assert_eq!(send.step, "vc-contact-confirm");
        let confirm = decrypt(&send.message, &account("bob"), &NoKeys).unwrap();
        assert!(gossips(&confirm, &exported_fingerprint("bob")));

        // An old invite still completes but does not verify.
        let late = inviter
            .handle(&fixture("securejoin-3-vc-request-with-auth.eml"), issued.created_at + VERIFICATION_TIMEOUT_SECS);
        assert!(matches!(late, Ok(InviterEvent::Confirmed { verified: false, .. })));
    }

    #[test]
    fn rejections() {
        let alice = account("alice");
        let (invite, issued) = captured();
        let other = Issued { auth: "AAAAAAAAAAAAAAAAAAAAAAAA".into(), ..issued.clone() };
        let inviter = Inviter { key: &alice, name: "Alice", invites: std::slice::from_ref(&other) };
        assert_eq!(inviter.handle(&fixture("securejoin-1-vc-request-pubkey.eml"), 1), Err(Rejected::UnknownAuth));
        assert_eq!(inviter.handle(&fixture("securejoin-3-vc-request-with-auth.eml"), 1), Err(Rejected::UnknownAuth));
        let inviter = Inviter { key: &alice, name: "Alice", invites: std::slice::from_ref(&issued) };
        assert_eq!(inviter.handle(&fixture("reply.eml"), 1), Err(Rejected::NotHandshake));
        assert!(matches!(
            inviter.handle(b"From: a@b.org\r\n\r\nhi", 1),
            Err(Rejected::Decrypt(DecryptError::NotEncrypted))
        ));
        // A step the inviter does not take: vc-pubkey is for the joiner.
        let pubkey_msg = fixture("securejoin-2-vc-pubkey.eml");
        assert!(matches!(inviter.handle(&pubkey_msg, 1), Err(Rejected::UnexpectedStep(_))));

        // Hand-made vc-request-with-auth messages, each wrong in one way.
        let bob = account("bob");
        let mallory = AccountKey::generate("bob@example.org").unwrap();
        let craft = |signer: &AccountKey, claimed: &Fingerprint, sign: bool, gossip: bool| {
            let text = format!(
                "From: \"Bob\" <bob@example.org>\r\nTo: <alice@example.org>\r\nSubject: Message from Bob\r\n\
                 Chat-Version: 1.0\r\nSecure-Join: vc-request-with-auth\r\nSecure-Join-Auth: {}\r\n\
                 Secure-Join-Fingerprint: {}\r\n\r\nSecure-Join: vc-request-with-auth",
                invite.auth,
                claimed.hex()
            );
            let options = crate::openpgp::encrypt::Options {
                sign,
                compress: false,
                gossip_from: if gossip { 1 } else { usize::MAX },
                ..crate::openpgp::encrypt::Options::mail(crate::openpgp::autocrypt::PreferEncrypt::Mutual, 1)
            };
            let to = [("alice@example.org".to_string(), alice.public_key().clone())];
            crate::openpgp::encrypt::seal(text.as_bytes(), signer, crate::openpgp::encrypt::Target::Keys(&to), &options)
                .unwrap()
        };
        assert!(matches!(
            inviter.handle(&craft(&bob, bob.fingerprint(), true, true), 1),
            Ok(InviterEvent::Confirmed { .. })
        ));
        assert_eq!(
            inviter.handle(&craft(&mallory, bob.fingerprint(), true, true), 1),
            Err(Rejected::FingerprintMismatch)
        );
        assert_eq!(
            inviter.handle(&craft(&bob, bob.fingerprint(), false, true), 1),
            Err(Rejected::WrongSigner { expected: bob.fingerprint().hex() })
        );
        assert_eq!(inviter.handle(&craft(&bob, bob.fingerprint(), true, false), 1), Err(Rejected::NoSelfGossip));
    }
}
