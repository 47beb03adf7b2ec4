//! A plain client's own copies of what it writes (issue 15): the Sent copy it APPENDs after
//! sending through the proxy, and the drafts it saves while writing. When the gateway encrypts
//! a message to these recipients (or refuses to send it in clear because a verified contact is
//! among them, [`super::recommend::decide`]), the copy is stored on the provider encrypted to
//! the account's own key only, so the clear text of an encrypted conversation never reaches
//! the provider; the decrypted view shows it to plain sessions. Everything else (mail from
//! another address, a message already encrypted or with its own Autocrypt header, mail to
//! recipients without keys, a draft with no recipient yet) is stored as the client sent it.
//!
//! The recipients are the header's `To`, `Cc` and `Bcc` (the copy has no envelope); `Bcc` is
//! kept inside the copy (it is encrypted to the account alone), so the view shows it. Sans-I/O
//! and CPU-bound (encryption): callers on the runtime use `spawn_blocking`.

use super::autocrypt::PreferEncrypt;
use super::encrypt::{EncryptError, Options, Outgoing, Target, classify, seal};
use super::key::AccountKey;
use super::mime::{self, canonical_addr};
use super::peer::Peer;
use super::recommend::{Decision, decide};

/// The copy to store for `message`, which a plain client of `key`'s account appends: `Some`
/// (PGP/MIME, encrypted to `key` only) when its conversation is encrypted, `None` to store it
/// as it is.
pub fn own_copy(
    message: &[u8],
    key: &AccountKey,
    known: &dyn Fn(&str) -> Option<Peer>,
    now: i64,
) -> Result<Option<Vec<u8>>, EncryptError> {
    if classify(message) != Outgoing::Plain {
        return Ok(None);
    }
    let fields = mime::fields(mime::split(message).0);
    let from = fields
        .iter()
        .find(|f| f.is("From"))
        .and_then(|f| mime::mailboxes(&f.value()).into_iter().next())
        .map(|m| canonical_addr(&m.addr));
    if from.as_deref() != Some(key.addr()) {
        return Ok(None);
    }
    let mut recipients: Vec<String> = fields
        .iter()
        .filter(|f| f.is("To") || f.is("Cc") || f.is("Bcc"))
        .flat_map(|f| mime::mailboxes(&f.value()))
        .map(|m| canonical_addr(&m.addr))
        .filter(|a| !a.is_empty() && a != key.addr())
        .collect();
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() {
        return Ok(None);
    }
    let peers: Vec<(String, Option<Peer>)> = recipients
        .into_iter()
        .map(|a| {
            let peer = known(&a);
            (a, peer)
        })
        .collect();
    let view: Vec<(&str, Option<&Peer>)> = peers.iter().map(|(a, p)| (a.as_str(), p.as_ref())).collect();
    match decide(&view) {
        Decision::Encrypt(_) | Decision::Refuse { .. } => {
            // Encrypted to the account alone: its Bcc stays, so a view decided from this copy
            // (no APPENDUID seed: a provider without UIDPLUS, a copy found by another device)
            // shows what the client wrote.
            let options = Options { keep_bcc: true, ..Options::mail(PreferEncrypt::Mutual, now) };
            seal(message, key, Target::Keys(&[]), &options).map(Some)
        }
        Decision::Clear { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::{NoKeys, decrypt};
    use crate::openpgp::peer::verify;

    fn draft(from: &str, to: &str) -> Vec<u8> {
        format!(
            "From: Bob <{from}>\r\nTo: {to}\r\nSubject: our secret plan\r\nDate: Sat, 5 Dec 2026 19:35:50 +0000\r\n\
             Message-ID: <copy@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe clear text\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn encrypted_conversations_are_kept_encrypted_to_self() {
        let bob = AccountKey::generate("bob@example.org").unwrap();
        let alice = AccountKey::generate("alice@example.org").unwrap();
        let alice_peer = verify(None, "alice@example.org", alice.public_key(), 0).peer().cloned().unwrap();
        let known = |addr: &str| (addr == "alice@example.org").then(|| alice_peer.clone());
        let copy = own_copy(&draft("bob@example.org", "Alice <Alice@example.org>"), &bob, &known, 0).unwrap().unwrap();
        let text = String::from_utf8_lossy(&copy);
        assert!(
            text.contains("multipart/encrypted") && !text.contains("the clear text") && !text.contains("secret plan")
        );
        let clear = decrypt(&copy, &bob, &NoKeys).unwrap();
        assert!(String::from_utf8_lossy(&clear.inner).contains("the clear text"));
        assert!(decrypt(&copy, &alice, &NoKeys).is_err(), "encrypted to the account only");
        // A verified contact with someone who has no key: never sent in clear, so kept encrypted.
        let mixed = draft("bob@example.org", "alice@example.org, dave@example.org");
        assert!(own_copy(&mixed, &bob, &known, 0).unwrap().is_some());
    }

    /// A copy stored without an APPENDUID seed is shown from its decryption: its Bcc is there.
    #[test]
    fn the_copy_keeps_bcc_for_its_view_and_mail_to_others_does_not() {
        let bob = AccountKey::generate("bob@example.org").unwrap();
        let alice = AccountKey::generate("alice@example.org").unwrap();
        let alice_peer = verify(None, "alice@example.org", alice.public_key(), 0).peer().cloned().unwrap();
        let known = |addr: &str| (addr == "alice@example.org").then(|| alice_peer.clone());
        let sent = String::from_utf8(draft("bob@example.org", "alice@example.org"))
            .unwrap()
            .replace("Subject:", "Bcc: Alice Two <alice@example.org>\r\nSubject:");
        let copy = own_copy(sent.as_bytes(), &bob, &known, 0).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&copy).contains("Bcc"), "not outside");
        let crate::openpgp::view::View::Decrypted { bytes, .. } = crate::openpgp::view::render(&copy, &bob) else {
            panic!("the account reads its copy")
        };
        let header = mime::split(&bytes).0;
        assert_eq!(mime::first_value(header, "Bcc").as_deref(), Some("Alice Two <alice@example.org>"));
        // Mail encrypted to others never carries it, even asked to.
        let to = [("alice@example.org".to_string(), alice.public_key().clone())];
        let options = Options { keep_bcc: true, ..Options::mail(PreferEncrypt::Mutual, 0) };
        let out = seal(sent.as_bytes(), &bob, Target::Keys(&to), &options).unwrap();
        let inner = decrypt(&out, &alice, &NoKeys).unwrap().inner;
        assert!(mime::first_value(mime::split(&inner).0, "Bcc").is_none());
    }

    #[test]
    fn everything_else_is_stored_as_sent() {
        let bob = AccountKey::generate("bob@example.org").unwrap();
        let none = |_: &str| None;
        assert_eq!(own_copy(&draft("bob@example.org", "dave@example.org"), &bob, &none, 0), Ok(None), "no key");
        assert_eq!(own_copy(&draft("bob@example.org", ""), &bob, &none, 0), Ok(None), "no recipient yet");
        assert_eq!(own_copy(&draft("bob@example.org", "bob@example.org"), &bob, &none, 0), Ok(None), "only to self");
        let everyone = |a: &str| Some(Peer::new(a));
        assert_eq!(own_copy(&draft("eve@example.org", "x@example.org"), &bob, &everyone, 0), Ok(None), "not ours");
        assert_eq!(own_copy(b"garbage without a header", &bob, &everyone, 0), Ok(None));
    }
}
