//! Which SecureJoin step a decrypted message is (Delta Chat `get_secure_join_step`), and the
//! predicate sessions use to hide handshake mail from plain clients.

use crate::openpgp::decrypt::{DecryptError, Decrypted, NoKeys, ProtectedHeaders, decrypt, decrypt_with_passwords};
use crate::openpgp::key::AccountKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Legacy `vc-request`/`vg-request` (has `Secure-Join-Invitenumber`).
    Request,
    /// Legacy `vc-auth-required`/`vg-auth-required`.
    AuthRequired,
    /// v3 step 1.
    RequestPubkey,
    /// v3 step 2.
    Pubkey,
    /// `vc-request-with-auth` (`group` false) or `vg-request-with-auth`.
    RequestWithAuth {
        group: bool,
    },
    ContactConfirm,
    /// A group's member-added message sent as the last step: a real group message too.
    MemberAdded,
    /// `vg-member-added-received`, `vc-contact-confirm-received`.
    Deprecated,
    Unknown(String),
}

/// The step of a message by its protected headers, `None` for ordinary mail.
pub fn step(protected: &ProtectedHeaders) -> Option<Step> {
    if protected.secure_join_invitenumber.is_some() {
        return Some(Step::Request);
    }
    let value = protected.secure_join.as_deref()?;
    Some(match value {
        "vc-request-pubkey" => Step::RequestPubkey,
        "vc-pubkey" => Step::Pubkey,
        "vc-request" | "vg-request" => Step::Request,
        "vc-auth-required" | "vg-auth-required" => Step::AuthRequired,
        "vc-request-with-auth" => Step::RequestWithAuth { group: false },
        "vg-request-with-auth" => Step::RequestWithAuth { group: true },
        "vc-contact-confirm" => Step::ContactConfirm,
        "vg-member-added" => Step::MemberAdded,
        "vg-member-added-received" | "vc-contact-confirm-received" => Step::Deprecated,
        other => Step::Unknown(other.chars().take(60).collect()),
    })
}

/// Whether a plain client should not see this message: every handshake step except
/// `vg-member-added`, which is also the group's "X added Y" message.
pub fn is_handshake(decrypted: &Decrypted) -> bool {
    step(&decrypted.protected).is_some_and(|s| s != Step::MemberAdded)
}

/// The step of a raw message as it sits at the provider, for a session deciding what a plain
/// client sees: decrypted with the account key, else (the first two v3 steps) with the
/// passwords of our open invites and joins. `None` for mail that is no handshake or that we
/// cannot read at all.
pub fn raw_step(message: &[u8], key: &AccountKey, passwords: &[&str]) -> Option<Step> {
    let decrypted = match decrypt(message, key, &NoKeys) {
        Ok(d) => d,
        Err(DecryptError::PasswordOnly) => decrypt_with_passwords(message, passwords, &NoKeys).ok()?,
        Err(_) => return None,
    };
    step(&decrypted.protected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, fixture, invite_password};
    use crate::openpgp::decrypt::{NoKeys, decrypt, decrypt_with_passwords};

    #[test]
    fn captured_steps_are_recognized_and_ordinary_mail_is_not() {
        let (alice, bob) = (account("alice"), account("bob"));
        let pw = invite_password();
        let s1 = decrypt_with_passwords(&fixture("securejoin-1-vc-request-pubkey.eml"), &[&pw], &NoKeys).unwrap();
        let s2 = decrypt_with_passwords(&fixture("securejoin-2-vc-pubkey.eml"), &[&pw], &NoKeys).unwrap();
        let s3 = decrypt(&fixture("securejoin-3-vc-request-with-auth.eml"), &alice, &NoKeys).unwrap();
        let s4 = decrypt(&fixture("securejoin-4-vc-contact-confirm.eml"), &bob, &NoKeys).unwrap();
        assert_eq!(step(&s1.protected), Some(Step::RequestPubkey));
        assert_eq!(step(&s2.protected), Some(Step::Pubkey));
        assert_eq!(step(&s3.protected), Some(Step::RequestWithAuth { group: false }));
        assert_eq!(step(&s4.protected), Some(Step::ContactConfirm));
        assert!([&s1, &s2, &s3, &s4].iter().all(|d| is_handshake(d)));
        for (name, key) in
            [("one-to-one.eml", &bob), ("group.eml", &bob), ("read-receipt.eml", &alice), ("reply.eml", &alice)]
        {
            assert!(!is_handshake(&decrypt(&fixture(name), key, &NoKeys).unwrap()), "{name}");
        }
        assert_eq!(raw_step(&fixture("securejoin-1-vc-request-pubkey.eml"), &alice, &[&pw]), Some(Step::RequestPubkey));
        assert_eq!(raw_step(&fixture("securejoin-1-vc-request-pubkey.eml"), &alice, &[]), None);
        assert_eq!(raw_step(&fixture("securejoin-4-vc-contact-confirm.eml"), &bob, &[]), Some(Step::ContactConfirm));
        assert_eq!(raw_step(&fixture("one-to-one.eml"), &bob, &[&pw]), None);
        assert_eq!(raw_step(b"From: a@b.org\r\n\r\nhi", &bob, &[]), None);
        let mut p = ProtectedHeaders { secure_join: Some("vg-member-added".into()), ..Default::default() };
        assert_eq!(step(&p), Some(Step::MemberAdded));
        p.secure_join = Some("vc-something-new".into());
        assert_eq!(step(&p), Some(Step::Unknown("vc-something-new".into())));
        p.secure_join_invitenumber = Some("x".into());
        assert_eq!(step(&p), Some(Step::Request));
    }
}
