//! The joiner's side (the plain user opened a Delta Chat user's link): send
//! `vc-request-pubkey`, check `vc-pubkey` against the link's fingerprint (the inviter is now
//! verified) and answer `vc-request-with-auth`, finish on `vc-contact-confirm` (or, for a group,
//! on the `vg-member-added` that adds us). Delta Chat `securejoin/bob.rs`.

use crate::openpgp::decrypt::{DecryptError, Decrypted, NoKeys, SignatureStatus, decrypt, decrypt_with_passwords};
use crate::openpgp::key::{AccountKey, PublicKey};

use super::Rejected;
use super::invite::{Invite, InviteError, Target};
use super::message::{Outgoing, gossips, request_pubkey, request_with_auth};
use super::step::{Step, step};

/// A handshake in progress, stored by the caller between messages.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Joining {
    /// The invite link (it holds the tokens; store it sealed or in the private store).
    pub link: String,
    pub stage: Stage,
    pub started_at: i64,
}

impl std::fmt::Debug for Joining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The link holds the handshake's tokens: not in logs.
        f.debug_struct("Joining")
            .field("stage", &self.stage)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stage {
    /// Step 1 sent, waiting for `vc-pubkey`.
    RequestSent,
    /// Step 3 sent with the inviter's (now verified) key, waiting for the confirmation.
    AuthSent { inviter_key: PublicKey },
    /// Done.
    Joined,
}

/// What a handled message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinerEvent {
    /// `vc-pubkey` checked: `inviter_key` is the link's key, verify the inviter and send.
    InviterVerified { state: Joining, inviter: String, inviter_key: PublicKey, send: Outgoing },
    /// The inviter confirmed (contact) or added us (group): the handshake is complete.
    Joined { state: Joining, inviter: String, group: Option<String> },
}

/// Starts joining: the state to store and the first message to send.
pub fn start(key: &AccountKey, invite: &Invite, now: i64) -> Result<(Joining, Outgoing), Rejected> {
    let send = request_pubkey(key, invite, now)?;
    Ok((Joining { link: invite.to_link(), stage: Stage::RequestSent, started_at: now }, send))
}

impl Joining {
    pub fn invite(&self) -> Result<Invite, InviteError> {
        Invite::parse(&self.link)
    }

    /// Handles one received message.
    pub fn handle(&self, key: &AccountKey, name: &str, message: &[u8], now: i64) -> Result<JoinerEvent, Rejected> {
        let invite = self.invite().map_err(|_| Rejected::NotHandshake)?;
        match &self.stage {
            Stage::RequestSent => self.pubkey(key, name, &invite, message, now),
            Stage::AuthSent { .. } => self.confirm(key, &invite, message),
            Stage::Joined => Err(Rejected::UnexpectedStep("after the handshake".into())),
        }
    }

    fn pubkey(
        &self,
        key: &AccountKey,
        name: &str,
        invite: &Invite,
        message: &[u8],
        now: i64,
    ) -> Result<JoinerEvent, Rejected> {
        let d = decrypt_with_passwords(message, &[&invite.password()], &NoKeys).map_err(|e| match e {
            DecryptError::NoPassword | DecryptError::Unsupported(_) | DecryptError::NotEncrypted => {
                Rejected::NotHandshake
            }
            other => Rejected::Decrypt(other),
        })?;
        match step(&d.protected) {
            Some(Step::Pubkey) => {}
            Some(other) => return Err(Rejected::UnexpectedStep(format!("{other:?}"))),
            None => return Err(Rejected::NotHandshake),
        }
        if d.signature != SignatureStatus::Valid(invite.fingerprint.clone()) {
            return Err(Rejected::WrongSigner { expected: invite.fingerprint.hex() });
        }
        let inviter_key = d.autocrypt.as_ref().map(|h| h.key.clone()).ok_or(Rejected::NoSenderKey)?;
        let send = request_with_auth(key, name, invite, &inviter_key, now)?;
        let state = Joining { stage: Stage::AuthSent { inviter_key: inviter_key.clone() }, ..self.clone() };
        Ok(JoinerEvent::InviterVerified { state, inviter: invite.addr().to_string(), inviter_key, send })
    }

    fn confirm(&self, key: &AccountKey, invite: &Invite, message: &[u8]) -> Result<JoinerEvent, Rejected> {
        let Stage::AuthSent { inviter_key } = &self.stage else {
            return Err(Rejected::NotHandshake);
        };
        let lookup = |fp: &crate::openpgp::fingerprint::Fingerprint| {
            (fp == inviter_key.fingerprint()).then(|| inviter_key.clone())
        };
        let d = decrypt(message, key, &lookup)?;
        let group = match (&invite.target, step(&d.protected)) {
            (Target::Contact, Some(Step::ContactConfirm)) => None,
            (Target::Group { id, .. }, Some(Step::MemberAdded)) => {
                if d.protected.chat_group_id.as_deref() != Some(id.as_str()) {
                    return Err(Rejected::OtherGroup);
                }
                if !d.protected.chat_group_member_added.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(key.addr())) {
                    return Err(Rejected::UnexpectedStep("member added is someone else".into()));
                }
                Some(id.clone())
            }
            (_, Some(other)) => return Err(Rejected::UnexpectedStep(format!("{other:?}"))),
            (_, None) => return Err(Rejected::NotHandshake),
        };
        check_signed_by(&d, invite)?;
        if !gossips(&d, key.fingerprint()) {
            return Err(Rejected::NoSelfGossip);
        }
        let state = Joining { stage: Stage::Joined, ..self.clone() };
        Ok(JoinerEvent::Joined { state, inviter: invite.addr().to_string(), group })
    }
}

fn check_signed_by(d: &Decrypted, invite: &Invite) -> Result<(), Rejected> {
    if d.signature == SignatureStatus::Valid(invite.fingerprint.clone()) {
        Ok(())
    } else {
        Err(Rejected::WrongSigner { expected: invite.fingerprint.hex() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, fixture};
    use crate::openpgp::securejoin::inviter::{Inviter, InviterEvent, Issued};

    fn alice_invite() -> Invite {
        Invite::parse(String::from_utf8(fixture("invite-alice.txt")).unwrap().trim()).unwrap()
    }

    #[test]
    fn joins_with_delta_chats_captured_answers() {
        let bob = account("bob");
        let invite = alice_invite();
        let (state, first) = start(&bob, &invite, 1).unwrap();
        assert_eq!(first.step, "vc-request-pubkey");
        let JoinerEvent::InviterVerified { state, inviter, inviter_key, send } =
            state.handle(&bob, "Bob", &fixture("securejoin-2-vc-pubkey.eml"), 2).unwrap()
        else {
            panic!()
        };
        assert_eq!(inviter, "alice@example.org");
        assert_eq!(inviter_key.fingerprint(), &invite.fingerprint);
        assert_eq!(send.step, "vc-request-with-auth");
        let JoinerEvent::Joined { state, group, .. } =
            state.handle(&bob, "Bob", &fixture("securejoin-4-vc-contact-confirm.eml"), 3).unwrap()
        else {
            panic!()
        };
        assert_eq!((state.stage, group), (Stage::Joined, None));
    }

    #[test]
    fn our_inviter_and_our_joiner_complete_a_handshake() {
        let alice = AccountKey::generate("alice@example.net").unwrap();
        let bob = AccountKey::generate("bob@example.net").unwrap();
        let invite = Invite::new_contact(alice.fingerprint().clone(), alice.addr(), "Alice");
        let issued = [Issued::from_invite(&invite, 0)];
        let inviter = Inviter { key: &alice, name: "Alice", invites: &issued };
        let joined = Invite::parse(&inviter.link(&issued[0])).unwrap();
        let (state, step1) = start(&bob, &joined, 1).unwrap();
        let InviterEvent::SendPubkey { send: step2 } = inviter.handle(&step1.message, 2).unwrap() else { panic!() };
        let JoinerEvent::InviterVerified { state, send: step3, .. } =
            state.handle(&bob, "Bob", &step2.message, 3).unwrap()
        else {
            panic!()
        };
        let InviterEvent::Confirmed { peer, key, verified: true, send: step4 } =
            inviter.handle(&step3.message, 4).unwrap()
        else {
            panic!()
        };
        assert_eq!((peer.as_str(), key.fingerprint()), ("bob@example.net", bob.fingerprint()));
        assert!(matches!(state.handle(&bob, "Bob", &step4.message, 5), Ok(JoinerEvent::Joined { .. })));
        // State survives storage; its Debug keeps the tokens out.
        let stored: Joining = serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(stored, state);
        assert!(!format!("{state:?}").contains(&joined.auth));
    }

    #[test]
    fn rejections() {
        let bob = account("bob");
        let invite = alice_invite();
        let (state, _) = start(&bob, &invite, 1).unwrap();
        // Not the answer we wait for.
        assert_eq!(state.handle(&bob, "Bob", &fixture("one-to-one.eml"), 2), Err(Rejected::NotHandshake));
        // A vc-pubkey signed by another key than the link's.
        let mallory = AccountKey::generate("alice@example.org").unwrap();
        let forged = super::super::message::pubkey(&mallory, "bob@example.org", &invite.auth, 2).unwrap();
        // Mallory cannot even encrypt with the right password: it is derived from alice's fingerprint.
        assert_eq!(state.handle(&bob, "Bob", &forged.message, 2), Err(Rejected::NotHandshake));
        // Signed by mallory but with the right password (mallory saw the link): wrong signer.
        let text = format!(
            "From: <alice@example.org>\r\nTo: \"hidden-recipients\":;\r\nSubject: Secure-Join\r\nSecure-Join: vc-pubkey\r\n\
             Secure-Join-Auth: {}\r\n\r\nSecure-Join",
            invite.auth
        );
        let options = crate::openpgp::encrypt::Options {
            compress: false,
            ..crate::openpgp::encrypt::Options::mail(crate::openpgp::autocrypt::PreferEncrypt::Mutual, 1)
        };
        let sealed = crate::openpgp::encrypt::seal(
            text.as_bytes(),
            &mallory,
            crate::openpgp::encrypt::Target::Password(&invite.password()),
            &options,
        )
        .unwrap();
        assert_eq!(
            state.handle(&bob, "Bob", &sealed, 2),
            Err(Rejected::WrongSigner { expected: invite.fingerprint.hex() })
        );
        // After vc-pubkey, a contact-confirm from someone else does not finish.
        let JoinerEvent::InviterVerified { state, .. } =
            state.handle(&bob, "Bob", &fixture("securejoin-2-vc-pubkey.eml"), 2).unwrap()
        else {
            panic!()
        };
        let other =
            super::super::message::contact_confirm(&mallory, "Alice", "bob@example.org", "Bob", bob.public_key(), 3)
                .unwrap();
        assert_eq!(
            state.handle(&bob, "Bob", &other.message, 3),
            Err(Rejected::WrongSigner { expected: invite.fingerprint.hex() })
        );
    }
}
