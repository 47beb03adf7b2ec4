//! What a plain mail client sees in place of a SecureJoin handshake mail: a short readable
//! notice ("bob@example.org is now a verified contact") instead of the raw step, which is an
//! encrypted blob or a technical message the user has nothing to do with (the account worker
//! answers it). Chat clients' sessions never get here: they see mail as stored.
//!
//! The notice is a pure function of the stored bytes, the account key and the passwords of the
//! account's invites and joins, so the decrypted view can decide it once per UID and keep it
//! (IMAP: a UID's content never changes). Handshake mail is recognised as Delta Chat sends it:
//! the encrypted steps by their protected `Secure-Join` header (the first two v3 steps are
//! encrypted with a link's password, the others to the account key), and the legacy first
//! step `vc-request`/`vg-request`, which goes out unencrypted with `Secure-Join` in the clear.
//! A group's `vg-member-added` is also the group's "member added" message and stays ordinary
//! mail ([`super::step::is_handshake`]).
//!
//! What the notice claims is only what the message proves: "verified" needs our invite's
//! token (`vc-request-with-auth`) or the signature of the inviter whose link we joined
//! (`vc-contact-confirm`); an unencrypted message never claims more than "asked".

use super::invite::password;
use super::step::{Step, step};
use crate::openpgp::decrypt::{
    DecryptError, Decrypted, NoKeys, ProtectedHeaders, SignatureStatus, decrypt, decrypt_with_passwords,
    encrypted_payload,
};
use crate::openpgp::key::AccountKey;
use crate::openpgp::mime;

/// The field naming the step a notice stands for (`X-COI-SecureJoin: vc-pubkey`).
pub const FIELD: &str = "X-COI-SecureJoin";

/// The notice for `message` if it is a handshake mail, else `None` (ordinary mail, a group's
/// member-added message, or an encrypted message none of the keys and passwords opens: the
/// decrypted view explains that one as for any other mail).
pub fn notice(message: &[u8], key: &AccountKey, passwords: &[&str]) -> Option<Vec<u8>> {
    if encrypted_payload(message).is_none() {
        let header = mime::split(message).0;
        let protected = ProtectedHeaders::from_header(header);
        let step = step(&protected)?;
        return Some(render(header, &protected, &step, Proof::Clear));
    }
    let decrypted = match decrypt(message, key, &NoKeys) {
        Ok(d) => d,
        Err(DecryptError::PasswordOnly) => decrypt_with_passwords(message, passwords, &NoKeys).ok()?,
        Err(_) => return None,
    };
    let step = step(&decrypted.protected).filter(|s| *s != Step::MemberAdded)?;
    let proof = proof(&decrypted, &step, key, passwords);
    let inner = mime::split(&decrypted.inner).0;
    Some(render(inner, &decrypted.protected, &step, proof))
}

/// What the message shows about the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// Came unencrypted: proves nothing.
    Clear,
    /// Encrypted, and says nothing more than its step.
    Step,
    /// Completes the handshake: our token came back, or the inviter signed the confirmation.
    Verified,
    /// Claims to complete it but does not prove it.
    Unproven,
}

fn proof(d: &Decrypted, step: &Step, key: &AccountKey, passwords: &[&str]) -> Proof {
    match step {
        Step::RequestWithAuth { .. } => {
            let ours = d.protected.secure_join_auth.as_deref().map(|auth| password(key.fingerprint(), auth));
            match ours {
                Some(p) if passwords.contains(&p.as_str()) => Proof::Verified,
                _ => Proof::Unproven,
            }
        }
        // Signed by the inviter of a link we joined (its fingerprint is in the link's password):
        // anyone can sign a "confirmation" with a key of their own.
        Step::ContactConfirm => match &d.signature {
            SignatureStatus::Valid(fp) if passwords.iter().any(|p| p.starts_with(&password(fp, ""))) => Proof::Verified,
            _ => Proof::Unproven,
        },
        _ => Proof::Step,
    }
}

/// The notice: the handshake mail's From, To, Date and Message-ID (`header` is the inner header
/// section of an encrypted one: real values), our subject and text; CRLF.
fn render(header: &[u8], protected: &ProtectedHeaders, step: &Step, proof: Proof) -> Vec<u8> {
    let from = mime::first_value(header, "From").unwrap_or_default();
    let who = mime::mailboxes(&from).into_iter().next().map(|m| mime::canonical_addr(&m.addr));
    let who = who.filter(|w| !w.is_empty()).unwrap_or_else(|| "someone".to_string());
    let (subject, text) = words(&who, step, proof);
    let name = match step {
        Step::Unknown(name) => name.as_str(),
        _ => protected.secure_join.as_deref().unwrap_or("vc-request"),
    };
    let mut out = String::new();
    out.push_str(&mime::fold(crate::openpgp::view::MARKER, "SecureJoin notice (the handshake mail is hidden)"));
    out.push_str(&mime::fold(FIELD, &name.chars().filter(|c| c.is_ascii_graphic()).take(60).collect::<String>()));
    for field in mime::fields(header) {
        if ["From", "To", "Date", "Message-ID"].iter().any(|n| field.is(n)) {
            out.push_str(&String::from_utf8_lossy(&field.crlf()));
        }
    }
    out.push_str(&mime::fold("Subject", &mime::encode_text(&subject)));
    out.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    out.push_str(if text.is_ascii() && who.is_ascii() {
        "Content-Transfer-Encoding: 7bit\r\n"
    } else {
        "Content-Transfer-Encoding: 8bit\r\n"
    });
    out.push_str("\r\n");
    out.push_str(&text);
    out.push_str("\r\n");
    mime::normalize_crlf(out.as_bytes())
}

/// Subject and text of a notice.
fn words(who: &str, step: &Step, proof: Proof) -> (String, String) {
    const NOTHING_TO_DO: &str = "coi-proxy answers these messages for you; there is nothing to do.";
    let (subject, detail) = match (step, proof) {
        (_, Proof::Clear) if matches!(step, Step::Request | Step::AuthRequired) => (
            format!("{who} wants to become a verified contact"),
            format!("{who} opened an invite link of yours (SecureJoin). {NOTHING_TO_DO}"),
        ),
        (_, Proof::Clear) => (
            format!("Unencrypted SecureJoin message from {who}"),
            format!("{who} sent a SecureJoin message without encryption; it proves nothing and was ignored."),
        ),
        (Step::Request | Step::RequestPubkey, _) => (
            format!("{who} wants to become a verified contact"),
            format!("{who} opened an invite link of yours (SecureJoin). {NOTHING_TO_DO}"),
        ),
        (Step::Pubkey | Step::AuthRequired, _) => (
            format!("{who} answered your join request"),
            format!("{who} sent their key for the invite link you joined (SecureJoin). {NOTHING_TO_DO}"),
        ),
        (Step::RequestWithAuth { .. } | Step::ContactConfirm, Proof::Verified) => (
            format!("{who} is now a verified contact"),
            format!(
                "The SecureJoin handshake with {who} is complete: mail between you is encrypted to the key both \
                 sides checked, and a changed key will not be taken silently."
            ),
        ),
        (Step::RequestWithAuth { .. } | Step::ContactConfirm, _) => (
            format!("SecureJoin message from {who} ignored"),
            format!("{who} sent a SecureJoin step that does not match an invite of yours; it was ignored."),
        ),
        _ => (
            format!("SecureJoin message from {who}"),
            format!("A step of Delta Chat's verified-contact setup (SecureJoin) with {who}. {NOTHING_TO_DO}"),
        ),
    };
    (subject, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, fixture, invite_password};

    /// The notice as text; its header section must hold every field written (one blank line,
    /// at its end) and name the step.
    fn text(bytes: &[u8]) -> String {
        let (header, body) = mime::split(bytes);
        let names: Vec<String> = mime::fields(header).iter().map(|f| f.name.clone()).collect();
        for name in ["X-COI-Decrypted", FIELD, "From", "Subject", "MIME-Version", "Content-Type"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(!body.is_empty() && !body.windows(4).any(|w| w == b"\r\n\r\n"), "one paragraph");
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn captured_handshake_steps_become_notices_and_ordinary_mail_does_not() {
        let (alice, bob) = (account("alice"), account("bob"));
        let pw = invite_password();
        // Alice invited, Bob (Delta Chat) joined: Alice's side sees steps 1 and 3.
        let one = notice(&fixture("securejoin-1-vc-request-pubkey.eml"), &alice, &[&pw]).unwrap();
        let one = text(&one);
        assert!(one.contains("X-COI-SecureJoin: vc-request-pubkey\r\n"), "{one}");
        assert!(one.contains("wants to become a verified contact"), "{one}");
        assert!(!one.contains("BEGIN PGP"), "{one}");
        let three = text(&notice(&fixture("securejoin-3-vc-request-with-auth.eml"), &alice, &[&pw]).unwrap());
        assert!(three.contains("bob@example.org is now a verified contact"), "{three}");
        // The same step without our invite's token proves nothing.
        let three = text(&notice(&fixture("securejoin-3-vc-request-with-auth.eml"), &alice, &[]).unwrap());
        assert!(three.contains("ignored") && !three.contains("now a verified"), "{three}");
        // Bob's side: steps 2 and 4.
        let two = text(&notice(&fixture("securejoin-2-vc-pubkey.eml"), &bob, &[&pw]).unwrap());
        assert!(two.contains("answered your join request"), "{two}");
        let four = text(&notice(&fixture("securejoin-4-vc-contact-confirm.eml"), &bob, &[&pw]).unwrap());
        assert!(four.contains("alice@example.org is now a verified contact"), "{four}");
        // Signed, but not by the inviter of a link we joined: not taken for a confirmation.
        let four = text(&notice(&fixture("securejoin-4-vc-contact-confirm.eml"), &bob, &[]).unwrap());
        assert!(four.contains("ignored") && !four.contains("now a verified"), "{four}");
        // Deterministic (the view keeps it once, but a re-render must agree).
        assert_eq!(notice(&fixture("securejoin-2-vc-pubkey.eml"), &bob, &[&pw]).unwrap(), two.as_bytes());
        // Without the password the first steps do not open: no notice (the view explains them).
        assert_eq!(notice(&fixture("securejoin-1-vc-request-pubkey.eml"), &alice, &[]), None);
        for (name, key) in
            [("one-to-one.eml", &bob), ("group.eml", &bob), ("read-receipt.eml", &alice), ("reply.eml", &alice)]
        {
            assert_eq!(notice(&fixture(name), key, &[&pw]), None, "{name}");
        }
        assert_eq!(notice(b"From: a@b.org\r\nSubject: hi\r\n\r\nhello\r\n", &bob, &[]), None);
    }

    #[test]
    fn an_unencrypted_request_becomes_a_notice_that_claims_nothing_more() {
        let alice = account("alice");
        let request = b"From: <bob@example.org>\r\nTo: <alice@example.org>\r\nDate: Sat, 5 Dec 2026 10:00:00 +0000\r\n\
            Message-ID: <r1@example.org>\r\nSubject: Message from bob@example.org\r\nChat-Version: 1.0\r\n\
            Secure-Join: vc-request\r\nSecure-Join-Invitenumber: 3nKlqsVn0fYnFHdKmYtxt0W7\r\n\r\nSecure-Join: vc-request\r\n";
        let shown = text(&notice(request, &alice, &[]).unwrap());
        assert!(shown.starts_with("X-COI-Decrypted: "), "{shown}");
        assert!(shown.contains("Message-ID: <r1@example.org>\r\n"), "{shown}");
        assert!(shown.contains("Date: Sat, 5 Dec 2026 10:00:00 +0000\r\n"), "{shown}");
        assert!(shown.contains("Subject: bob@example.org wants to become a verified contact\r\n"), "{shown}");
        assert!(!shown.contains("3nKlqsVn0fYnFHdKmYtxt0W7"), "no token in the notice: {shown}");
        // A forged clear "confirmation" is not taken for one.
        let forged = b"From: <mallory@example.org>\r\nSecure-Join: vc-contact-confirm\r\n\r\nx\r\n";
        let shown = text(&notice(forged, &alice, &[]).unwrap());
        assert!(shown.contains("Unencrypted SecureJoin message from mallory@example.org"), "{shown}");
        assert!(!shown.contains("verified contact\r\n"), "{shown}");
    }
}
