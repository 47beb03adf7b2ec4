//! The four handshake messages in the shape Delta Chat 2.65 sends them (compare
//! `tests/fixtures/deltachat/securejoin-*.eml`): the first two password-encrypted with
//! `Subject: Secure-Join` and hidden recipients, the last two encrypted to the peer's key as
//! chat messages (`Chat-Version: 1.0`, body `Secure-Join: <step>`), gossiping the peer's own key
//! back. None is compressed (no compression side channel on the tokens).

use rand_core_06::{OsRng, RngCore};

use crate::openpgp::autocrypt::PreferEncrypt;
use crate::openpgp::encrypt::{EncryptError, Options, Target, seal};
use crate::openpgp::fingerprint::Fingerprint;
use crate::openpgp::key::{AccountKey, PublicKey};
use crate::openpgp::mime::{self, encode_text, format_mailbox};

use super::invite::{Invite, Target as InviteTarget};

/// A message to send: envelope and the full RFC 5322 bytes (CRLF).
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub from: String,
    pub to: Vec<String>,
    pub message: Vec<u8>,
    /// The `Secure-Join` step, for logs.
    pub step: &'static str,
    pub message_id: String,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("step", &self.step)
            .field("message_id", &self.message_id)
            .field("bytes", &self.message.len())
            .finish()
    }
}

/// A Message-ID like Delta Chat's (`<uuid@localhost>`: no domain leaks through forwarders).
pub fn message_id() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("<{}-{}-{}-{}-{}@localhost>", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn options(now: i64, attach_and_sign: bool) -> Options {
    Options {
        prefer: PreferEncrypt::Mutual,
        attach_key: attach_and_sign,
        sign: attach_and_sign,
        compress: false,
        gossip_from: 1,
        keep_bcc: false,
        now,
    }
}

/// Steps 1 and 2: `Subject: Secure-Join`, hidden recipients, the auth token, password-encrypted.
fn password_step(
    key: &AccountKey,
    step: &'static str,
    auth: &str,
    password: &str,
    to: &str,
    now: i64,
) -> Result<Outgoing, EncryptError> {
    let id = message_id();
    let text = format!(
        "From: <{from}>\r\nMessage-ID: {id}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\
         To: \"hidden-recipients\":;\r\nDate: {date}\r\nSubject: Secure-Join\r\nSecure-Join: {step}\r\n\
         Secure-Join-Auth: {auth}\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSecure-Join",
        from = key.addr(),
        date = mime::format_date(now),
    );
    // Step 1 is unsigned and carries no key (the joiner proves nothing yet); step 2 is signed
    // and carries the inviter's key.
    let signed = step == "vc-pubkey";
    let message = seal(text.as_bytes(), key, Target::Password(password), &options(now, signed))?;
    Ok(Outgoing { from: key.addr().to_string(), to: vec![to.to_string()], message, step, message_id: id })
}

/// Step 1 (joiner): `vc-request-pubkey` to the inviter.
pub fn request_pubkey(key: &AccountKey, invite: &Invite, now: i64) -> Result<Outgoing, EncryptError> {
    let mut out = password_step(key, "vc-request-pubkey", &invite.auth, &invite.password(), invite.addr(), now)?;
    out.to = invite.addrs.clone();
    Ok(out)
}

/// Step 2 (inviter): `vc-pubkey` to the joiner, with the same password.
pub fn pubkey(key: &AccountKey, joiner: &str, auth: &str, now: i64) -> Result<Outgoing, EncryptError> {
    let password = super::invite::password(key.fingerprint(), auth);
    password_step(key, "vc-pubkey", auth, &password, joiner, now)
}

/// Steps 3 and 4: a chat message to the peer's key.
#[allow(clippy::too_many_arguments)]
fn key_step(
    key: &AccountKey,
    name: &str,
    step: &'static str,
    peer_addr: &str,
    peer_name: &str,
    peer_key: &PublicKey,
    extra: &[(&str, String)],
    now: i64,
) -> Result<Outgoing, EncryptError> {
    let id = message_id();
    let shown = if name.trim().is_empty() { key.addr() } else { name };
    let mut text = format!(
        "From: {from}\r\nMessage-ID: {id}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nDate: {date}\r\n\
         To: {to}\r\nSubject: {subject}\r\nChat-Version: 1.0\r\nSecure-Join: {step}\r\n",
        from = format_mailbox(name, key.addr()),
        date = mime::format_date(now),
        to = format_mailbox(peer_name, peer_addr),
        subject = encode_text(&format!("Message from {shown}")),
    );
    for (field, value) in extra {
        text.push_str(&format!("{field}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Transfer-Encoding: 7bit\r\n\r\nSecure-Join: {step}"));
    let recipients = [(peer_addr.to_string(), peer_key.clone())];
    let message = seal(text.as_bytes(), key, Target::Keys(&recipients), &options(now, true))?;
    Ok(Outgoing { from: key.addr().to_string(), to: vec![peer_addr.to_string()], message, step, message_id: id })
}

/// Step 3 (joiner): `vc-request-with-auth` (`vg-…` for a group) to the inviter's key.
pub fn request_with_auth(
    key: &AccountKey,
    name: &str,
    invite: &Invite,
    inviter_key: &PublicKey,
    now: i64,
) -> Result<Outgoing, EncryptError> {
    let mut extra =
        vec![("Secure-Join-Auth", invite.auth.clone()), ("Secure-Join-Fingerprint", key.fingerprint().hex())];
    let step = match &invite.target {
        InviteTarget::Contact => "vc-request-with-auth",
        InviteTarget::Group { id, .. } => {
            // Deprecated, but older Delta Chat inviters need it.
            extra.push(("Secure-Join-Group", id.clone()));
            "vg-request-with-auth"
        }
    };
    let mut out = key_step(key, name, step, invite.addr(), &invite.name, inviter_key, &extra, now)?;
    out.to = invite.addrs.clone();
    Ok(out)
}

/// Step 4 (inviter): `vc-contact-confirm` to the joiner's key.
pub fn contact_confirm(
    key: &AccountKey,
    name: &str,
    joiner: &str,
    joiner_name: &str,
    joiner_key: &PublicKey,
    now: i64,
) -> Result<Outgoing, EncryptError> {
    key_step(key, name, "vc-contact-confirm", joiner, joiner_name, joiner_key, &[], now)
}

/// Whether a decrypted message gossips this fingerprint back to us (Delta Chat's guard against
/// a forwarded handshake message).
pub fn gossips(decrypted: &crate::openpgp::decrypt::Decrypted, fingerprint: &Fingerprint) -> bool {
    decrypted.gossip.iter().any(|g| g.key.fingerprint() == fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, fixture};
    use crate::openpgp::decrypt::{NoKeys, decrypt, decrypt_with_passwords};

    fn names(bytes: &[u8]) -> Vec<String> {
        mime::fields(mime::split(bytes).0).into_iter().map(|f| f.name).collect()
    }

    fn without_trace(names: Vec<String>) -> Vec<String> {
        names.into_iter().filter(|n| !["Return-Path", "Delivered-To", "Received"].contains(&n.as_str())).collect()
    }

    #[test]
    fn password_steps_have_delta_chats_shape() {
        let (alice, bob) = (account("alice"), account("bob"));
        let invite = Invite::parse(String::from_utf8(fixture("invite-alice.txt")).unwrap().trim()).unwrap();
        let ours = request_pubkey(&bob, &invite, 1_796_499_348).unwrap();
        assert_eq!(ours.to, ["alice@example.org"]);
        let theirs = fixture("securejoin-1-vc-request-pubkey.eml");
        assert_eq!(names(&ours.message), without_trace(names(&theirs)));
        let pw = invite.password();
        let (a, b) = (
            decrypt_with_passwords(&ours.message, &[&pw], &NoKeys).unwrap(),
            decrypt_with_passwords(&theirs, &[&pw], &NoKeys).unwrap(),
        );
        assert_eq!(names(&a.inner), names(&b.inner));
        assert_eq!(mime::split(&a.inner).1, mime::split(&b.inner).1);
        assert_eq!(a.protected.secure_join_auth, b.protected.secure_join_auth);
        assert_eq!(a.signature, b.signature);

        let ours = pubkey(&alice, "bob@example.org", &invite.auth, 1_796_499_348).unwrap();
        let theirs = fixture("securejoin-2-vc-pubkey.eml");
        let (a, b) = (
            decrypt_with_passwords(&ours.message, &[&pw], &NoKeys).unwrap(),
            decrypt_with_passwords(&theirs, &[&pw], &NoKeys).unwrap(),
        );
        assert_eq!(names(&a.inner), names(&b.inner));
        assert_eq!(a.signature, b.signature, "both signed by alice's key");
        assert_eq!(a.autocrypt.unwrap().key.fingerprint(), alice.fingerprint());
    }

    #[test]
    fn key_steps_have_delta_chats_headers() {
        let (alice, bob) = (account("alice"), account("bob"));
        let invite = Invite::parse(String::from_utf8(fixture("invite-alice.txt")).unwrap().trim()).unwrap();
        let ours = request_with_auth(&bob, "Bob", &invite, alice.public_key(), 1).unwrap();
        let a = decrypt(&ours.message, &alice, &NoKeys).unwrap();
        let b = decrypt(&fixture("securejoin-3-vc-request-with-auth.eml"), &alice, &NoKeys).unwrap();
        for d in [&a, &b] {
            assert_eq!(d.protected.secure_join.as_deref(), Some("vc-request-with-auth"));
            assert_eq!(d.protected.secure_join_fingerprint.as_deref(), Some(bob.fingerprint().hex().as_str()));
            assert_eq!(d.protected.chat_version.as_deref(), Some("1.0"));
            assert_eq!(d.protected.subject.as_deref(), Some("Message from Bob"));
            assert!(gossips(d, alice.fingerprint()));
            assert_eq!(mime::split(&d.inner).1, b"Secure-Join: vc-request-with-auth");
        }
        assert_eq!(a.protected.secure_join_auth, b.protected.secure_join_auth);
        assert_eq!(names(&ours.message), without_trace(names(&fixture("securejoin-3-vc-request-with-auth.eml"))));

        let ours = contact_confirm(&alice, "Alice", "bob@example.org", "Bob", bob.public_key(), 1).unwrap();
        let a = decrypt(&ours.message, &bob, &NoKeys).unwrap();
        let b = decrypt(&fixture("securejoin-4-vc-contact-confirm.eml"), &bob, &NoKeys).unwrap();
        for d in [&a, &b] {
            assert_eq!(d.protected.secure_join.as_deref(), Some("vc-contact-confirm"));
            assert!(gossips(d, bob.fingerprint()));
            assert_eq!(d.protected.to[0].name.as_deref(), Some("Bob"));
        }
        assert!(message_id().ends_with("@localhost>"));
    }
}
