//! The decrypted view (issue 15): what a plain mail program sees in place of an encrypted
//! message. A deterministic function of the encrypted message's bytes and the account key (and
//! the keys a caller passes for signature checks), so a cache can store it once per UID and every
//! FETCH answer agrees with it forever.
//!
//! A decrypted message becomes: a marker field `X-COI-Decrypted` (signature outcome), the outer
//! trace fields (`Received`, `Return-Path`, `Delivered-To`, `DKIM-Signature`,
//! `Authentication-Results`, `ARC-*`: the provider's real ones), the inner header fields without
//! the `HP-Outer:` records (so inner values win: real Subject, To, Date), `MIME-Version` if the
//! inner part has none, and the inner body; CRLF line ends throughout. Inner fields that only the
//! provider or we may write (trace fields, our marker) are dropped: a sender could otherwise
//! forge a passed DKIM check or a valid signature for the reader.
//!
//! A message that cannot be decrypted becomes a readable `multipart/mixed` (as Proton Bridge
//! does): a text part saying why, and the original attached as `message/rfc822`. Never garbage,
//! never a silent drop.

use sha2::{Digest, Sha256};

use super::decrypt::{DecryptError, Decrypted, KeyLookup, NoKeys, SignatureStatus, decrypt, encrypted_payload};
use super::key::AccountKey;
use super::mime::{self, Field};

/// The marker field of every substituted message.
pub const MARKER: &str = "X-COI-Decrypted";

/// The result of rendering one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Not PGP/MIME: serve the original.
    NotEncrypted,
    /// Decrypted; `bytes` is the message to serve.
    Decrypted { bytes: Vec<u8>, signature: SignatureStatus },
    /// Encrypted but not decryptable; `bytes` explains why and carries the original.
    Failed { bytes: Vec<u8>, error: DecryptError },
}

impl View {
    /// The bytes to serve instead of the original, if any.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            View::NotEncrypted => None,
            View::Decrypted { bytes, .. } | View::Failed { bytes, .. } => Some(bytes),
        }
    }
}

/// Renders the view of `message` for the account with `key`, checking signatures only against
/// keys inside the message (and our own), so the result depends on the two inputs alone.
pub fn render(message: &[u8], key: &AccountKey) -> View {
    render_with(message, key, &NoKeys)
}

/// As [`render`], with more keys for the signature check (the peer table).
pub fn render_with(message: &[u8], key: &AccountKey, lookup: &dyn KeyLookup) -> View {
    if encrypted_payload(message).is_none() {
        return View::NotEncrypted;
    }
    match decrypt(message, key, lookup) {
        Ok(d) => View::Decrypted { bytes: compose(message, &d), signature: d.signature },
        Err(error) => View::Failed { bytes: explain(message, &error), error },
    }
}

/// The view of a decrypted message: marker, outer trace fields, inner fields without HP-Outer
/// (and without forged trace or marker fields), the inner body; CRLF.
pub fn compose(message: &[u8], d: &Decrypted) -> Vec<u8> {
    let (inner_header, body) = mime::split(&d.inner);
    let mut out = marker(&signature_text(&d.signature));
    let outer = mime::split(message).0;
    for field in mime::fields(outer).iter().filter(|f| is_trace(f)) {
        out.extend_from_slice(&field.crlf());
    }
    let inner_fields = mime::fields(inner_header);
    for field in
        inner_fields.iter().filter(|f| !f.is("HP-Outer") && !is_trace(f) && !f.is(MARKER) && !f.name.is_empty())
    {
        out.extend_from_slice(&field.crlf());
    }
    if !inner_fields.iter().any(|f| f.is("MIME-Version")) {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    mime::normalize_crlf(&out)
}

fn marker(value: &str) -> Vec<u8> {
    mime::fold(MARKER, value).into_bytes()
}

fn signature_text(status: &SignatureStatus) -> String {
    let issuer =
        |i: &Option<super::fingerprint::Fingerprint>| i.as_ref().map(|f| format!("; issuer={f}")).unwrap_or_default();
    match status {
        SignatureStatus::Valid(fp) => format!("signature=valid; signer={fp}"),
        SignatureStatus::Unsigned => "signature=none".to_string(),
        SignatureStatus::Bad { issuer: i } => format!("signature=bad{}", issuer(i)),
        SignatureStatus::UnknownSigner { issuer: i } => format!("signature=unknown-key{}", issuer(i)),
    }
}

/// Fields only the provider writes, taken from outside and never from inside.
fn is_trace(field: &Field<'_>) -> bool {
    ["Received", "Return-Path", "Delivered-To", "DKIM-Signature", "Authentication-Results"].iter().any(|n| field.is(n))
        || field.name.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("ARC-"))
}

fn reason_code(error: &DecryptError) -> &'static str {
    match error {
        DecryptError::NotEncrypted => "not-encrypted",
        DecryptError::TooLarge(_) | DecryptError::PlaintextTooLarge => "too-large",
        DecryptError::Malformed(_) => "malformed",
        DecryptError::NotForThisKey => "not-for-this-key",
        DecryptError::PasswordOnly | DecryptError::NoPassword => "password-encrypted",
        DecryptError::Unsupported(_) => "unsupported",
        DecryptError::Corrupt(_) => "corrupt",
        DecryptError::LibraryFailed => "library-failed",
    }
}

fn advice(error: &DecryptError) -> &'static str {
    match error {
        DecryptError::NotForThisKey => {
            "It was encrypted to a key this account does not have: the sender may have an old key of\r\n\
             yours, or the message was meant for another address. Ask the sender to write again."
        }
        DecryptError::PasswordOnly | DecryptError::NoPassword => {
            "It is encrypted with a password, as Delta Chat does for the first steps of a verified\r\n\
             contact setup and for broadcast channels; there is nothing for you to read in it."
        }
        DecryptError::Corrupt(_) | DecryptError::Malformed(_) => {
            "It was damaged or altered on the way. Ask the sender to send it again."
        }
        _ => "Ask the sender to send it again, or open it with a program that holds the key.",
    }
}

/// The readable substitute of an undecryptable message: outer header fields (trace and
/// addressing), a text part with the reason, the original attached.
pub fn explain(message: &[u8], error: &DecryptError) -> Vec<u8> {
    let original = mime::normalize_crlf(message);
    let digest = Sha256::digest(&original);
    let boundary: String =
        format!("coi-view-{}", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
    let mut out = marker(&format!("failed; reason={}", reason_code(error)));
    let outer = mime::split(&original).0;
    // HP-Outer belongs inside an encrypted part; one in the outer header (a sender's) is not
    // copied out (found by the `decrypted_view` fuzz target).
    let skip = ["Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Content-Disposition", MARKER, "HP-Outer"];
    let mut subject_written = false;
    for field in mime::fields(outer).iter().filter(|f| !f.name.is_empty() && !skip.iter().any(|s| f.is(s))) {
        if field.is("Subject") {
            let value = field.value();
            if value.is_empty() || value == "[...]" {
                out.extend_from_slice(b"Subject: Encrypted message that could not be decrypted\r\n");
            } else {
                out.extend_from_slice(&field.crlf());
            }
            subject_written = true;
        } else {
            out.extend_from_slice(&field.crlf());
        }
    }
    if !subject_written {
        out.extend_from_slice(b"Subject: Encrypted message that could not be decrypted\r\n");
    }
    let text = format!(
        "This message is encrypted, and coi-proxy could not decrypt it for you.\r\n\r\n\
         Reason: {error}.\r\n\r\n{}\r\n\r\n\
         The original message is attached as encrypted-message.eml.\r\n",
        advice(error)
    );
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             {text}\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\
             Content-Disposition: attachment; filename=\"encrypted-message.eml\"\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&original);
    // The line end before a boundary belongs to the boundary (RFC 2046), so the attached
    // message keeps its own last line end.
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The view of an encrypted message larger than the proxy decrypts for mail programs
/// (`[autocrypt] max_message_size`), from its outer `header` (the provider's) and `size`: a
/// short text saying so, under the outer header's fields. The original is not attached (it
/// would have to be read whole, which is what the bound prevents); it stays at the provider
/// unchanged, where a chat client or an OpenPGP program reads it.
pub fn too_large(header: &[u8], size: u64, max: usize) -> Vec<u8> {
    let header = mime::normalize_crlf(header);
    let mut out = marker("failed; reason=too-large");
    let skip = ["Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Content-Disposition", MARKER, "HP-Outer"];
    let mut subject_written = false;
    for field in
        mime::fields(mime::split(&header).0).iter().filter(|f| !f.name.is_empty() && !skip.iter().any(|s| f.is(s)))
    {
        if field.is("Subject") && matches!(field.value().as_str(), "" | "[...]") {
            continue;
        }
        subject_written |= field.is("Subject");
        out.extend_from_slice(&field.crlf());
    }
    if !subject_written {
        out.extend_from_slice(b"Subject: Encrypted message too large to show\r\n");
    }
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             This message is encrypted, and at {size} bytes it is larger than the {max} bytes\r\n\
             coi-proxy decrypts for mail programs ([autocrypt] max_message_size).\r\n\r\n\
             It is kept unchanged at your provider: Delta Chat or another OpenPGP program with\r\n\
             this account's key reads it (coi-proxy key export --secret), or your administrator\r\n\
             can raise the limit for messages that arrive from now on.\r\n"
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::decrypt::tests::{account, exported_fingerprint, fixture};
    use mail_parser::{MessageParser, MimeHeaders};

    fn header_names(bytes: &[u8]) -> Vec<String> {
        mime::fields(mime::split(bytes).0).into_iter().map(|f| f.name).collect()
    }

    #[test]
    fn a_message_over_the_bound_is_explained() {
        let header = b"Received: from x\r\nFrom: <alice@example.org>\r\nSubject: [...]\r\nDate: Sat, 5 Dec 2026 19:35:50 +0000\r\n\
                       Content-Type: multipart/encrypted; boundary=b\r\n\r\n";
        let view = too_large(header, 70_000_000, 64 << 20);
        let parsed = MessageParser::new().parse(&view).unwrap();
        assert_eq!(parsed.subject(), Some("Encrypted message too large to show"));
        assert_eq!(parsed.from().unwrap().first().unwrap().address(), Some("alice@example.org"));
        assert!(parsed.body_text(0).unwrap().contains("at 70000000 bytes it is larger than the 67108864 bytes"));
        assert_eq!(mime::first_value(mime::split(&view).0, MARKER).as_deref(), Some("failed; reason=too-large"));
        assert_eq!(header_names(&view)[..2], [MARKER, "Received"]);
        let named = too_large(b"Subject: Holiday photos\r\n\r\n", 1, 0);
        assert_eq!(MessageParser::new().parse(&named).unwrap().subject(), Some("Holiday photos"));
    }

    #[test]
    fn delta_chat_message_as_a_plain_client_sees_it() {
        let raw = fixture("one-to-one.eml");
        let view = render(&raw, &account("bob"));
        let View::Decrypted { bytes, signature } = &view else { panic!("{view:?}") };
        assert_eq!(signature, &SignatureStatus::Valid(exported_fingerprint("alice")));
        let names = header_names(bytes);
        assert_eq!(&names[..4], [MARKER, "Return-Path", "Delivered-To", "Received"]);
        assert!(!names.iter().any(|n| n == "HP-Outer"));
        assert_eq!(names.iter().filter(|n| n.as_str() == "Received").count(), 2);
        let header = mime::split(bytes).0;
        assert_eq!(
            mime::first_value(header, MARKER).unwrap(),
            format!("signature=valid; signer={}", exported_fingerprint("alice"))
        );
        // Inner values win.
        let parsed = MessageParser::new().parse(bytes).unwrap();
        assert_eq!(parsed.subject(), Some("Message from Alice"));
        assert_eq!(parsed.from().unwrap().first().unwrap().name(), Some("Alice"));
        assert_eq!(parsed.to().unwrap().first().unwrap().address(), Some("bob@example.org"));
        assert_eq!(parsed.date().unwrap().to_rfc822(), "Sat, 5 Dec 2026 19:35:50 +0000");
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "Hello Bob, this is Alice.");
        assert_eq!(mime::first_value(header, "MIME-Version").as_deref(), Some("1.0"));
        // CRLF only, and deterministic.
        assert!(
            !bytes.windows(2).enumerate().any(|(i, w)| w[1] == b'\n' && w[0] != b'\r' || (i == 0 && w[0] == b'\n'))
        );
        assert_eq!(render(&raw, &account("bob")), view);
    }

    #[test]
    fn group_message_and_read_receipt_views() {
        let View::Decrypted { bytes, .. } = render(&fixture("group.eml"), &account("bob")) else { panic!() };
        let parsed = MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(parsed.subject(), Some("Team"));
        assert_eq!(parsed.to().unwrap().iter().count(), 2);
        let View::Decrypted { bytes, .. } = render(&fixture("read-receipt.eml"), &account("alice")) else { panic!() };
        let parsed = MessageParser::new().parse(&bytes).unwrap();
        assert!(parsed.content_type().unwrap().c_subtype.as_deref() == Some("report"));
        assert_eq!(parsed.parts.len(), 3, "multipart/report with its two parts");
    }

    #[test]
    fn an_outer_hp_outer_field_is_not_copied_into_the_explanation() {
        let odd = b"From: <a@example.org>\r\nHP-Outer: From: <b@example.org>\r\nSubject: x\r\n\r\nbody\r\n";
        let out = explain(odd, &DecryptError::NotForThisKey);
        let header = mime::split(&out).0;
        assert!(!mime::fields(header).iter().any(|f| f.is("HP-Outer")));
        assert!(mime::fields(header).iter().any(|f| f.is("From")));
    }

    #[test]
    fn undecryptable_message_becomes_a_readable_explanation() {
        let raw = fixture("one-to-one.eml");
        let view = render(&raw, &account("carol"));
        let View::Failed { bytes, error } = &view else { panic!("{view:?}") };
        assert_eq!(error, &DecryptError::NotForThisKey);
        assert_eq!(render(&raw, &account("carol")), view, "deterministic");
        let header = mime::split(bytes).0;
        assert_eq!(mime::first_value(header, MARKER).unwrap(), "failed; reason=not-for-this-key");
        let parsed = MessageParser::new().parse(bytes).unwrap();
        assert_eq!(parsed.subject(), Some("Encrypted message that could not be decrypted"));
        assert!(parsed.body_text(0).unwrap().contains("not encrypted to this account's key"));
        let attached = parsed.attachment(0).unwrap();
        assert_eq!(attached.attachment_name(), Some("encrypted-message.eml"));
        let nested = attached.message().unwrap();
        assert!(nested.raw_message() == mime::normalize_crlf(&raw).as_slice(), "the original, byte for byte");
        // The SecureJoin step encrypted with a password says so.
        let View::Failed { error, .. } = render(&fixture("securejoin-1-vc-request-pubkey.eml"), &account("alice"))
        else {
            panic!()
        };
        assert_eq!(error, DecryptError::PasswordOnly);
    }

    #[test]
    fn clear_mail_is_not_substituted() {
        assert_eq!(render(b"From: a@b.org\r\nSubject: hi\r\n\r\nhello\r\n", &account("bob")), View::NotEncrypted);
        assert_eq!(View::NotEncrypted.bytes(), None);
    }

    #[test]
    fn forged_inner_trace_fields_and_markers_are_dropped() {
        use crate::openpgp::autocrypt::PreferEncrypt;
        use crate::openpgp::encrypt::{Options, encrypt};
        let alice = account("alice");
        let msg = format!(
            "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hi\r\n{MARKER}: signature=valid; signer=0000\r\n\
             Authentication-Results: mx.example.org; dkim=pass\r\nReceived: from forged\r\nARC-Seal: i=1; forged\r\n\r\nhello\r\n"
        );
        let to = vec![("bob@example.org".to_string(), account("bob").public_key().clone())];
        let enc = encrypt(msg.as_bytes(), &alice, &to, &Options::mail(PreferEncrypt::Mutual, 0)).unwrap();
        let View::Decrypted { bytes, .. } = render(&enc, &account("bob")) else { panic!() };
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("forged") && !text.contains("dkim=pass") && !text.contains("signer=0000"), "{text}");
        assert_eq!(text.matches(MARKER).count(), 1);
    }
}
