//! The decrypted view's MIME path: any inner message a sender encrypts (read by
//! `decrypt::inspect`, composed by `view::compose`) and any outer message (the whole `render`,
//! including the explanation of an undecryptable one, and `too_large` for one over the
//! bound). The view is CRLF-only, has exactly one
//! marker field and no HP-Outer field, and the same input gives the same bytes. Any message
//! may also be a SecureJoin handshake mail (`securejoin::notice`): its notice obeys the same. A
//! signed inner message of a group teaches the group (`group::learn`), and a reply addressed to
//! it keeps a sound header section.
#![no_main]

use std::sync::OnceLock;

use coi_proxy::openpgp::decrypt::{DecryptError, Method, SignatureStatus, inspect};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::securejoin::notice;
use coi_proxy::openpgp::{group, mime, view};
use libfuzzer_sys::fuzz_target;

const BOB: &[u8] = include_bytes!("../../tests/fixtures/deltachat/bob-secret.asc");
const OUTER: &[u8] = include_bytes!("../../tests/fixtures/deltachat/one-to-one.eml");

fn bob() -> &'static AccountKey {
    static KEY: OnceLock<AccountKey> = OnceLock::new();
    KEY.get_or_init(|| AccountKey::import_armored(BOB, "bob@example.org", None).unwrap())
}

fn check(view: &[u8]) {
    assert!(!view.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') && !view.starts_with(b"\n"));
    assert!(!view.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
    let fields = mime::fields(mime::split(view).0);
    assert_eq!(fields.iter().filter(|f| f.is(view::MARKER)).count(), 1);
    assert!(!fields.iter().any(|f| f.is("HP-Outer")));
    let _ = mail_parser::MessageParser::new().parse(view);
}

/// A group learnt from any signed inner message, and a reply addressed to it: the group's
/// values never break the reply's header section.
fn group_reply(decrypted: &coi_proxy::openpgp::decrypt::Decrypted) {
    let Some(g) = group::learn(decrypted, "bob@example.org", None, 0) else { return };
    let mid = g.message_ids.first().cloned().unwrap_or_else(|| "none@x".into());
    let reply = format!("From: <bob@example.org>\r\nTo: <x@example.org>\r\nIn-Reply-To: <{mid}>\r\n\r\nhi\r\n");
    if !g.message_ids.is_empty() {
        assert!(group::of_reply(reply.as_bytes(), std::slice::from_ref(&g)).is_some());
    }
    let (out, add) = group::address(reply.as_bytes(), &g, "bob@example.org", &[]);
    assert!(add.iter().all(|a| g.members.contains(a)));
    let (header, body) = mime::split(&out);
    assert_eq!(body, b"hi\r\n");
    let fields = mime::fields(header);
    assert_eq!(fields.iter().filter(|f| f.is("Chat-Group-ID")).count(), 1);
    assert!(fields.iter().all(|f| !f.name.is_empty() && !f.is("Bcc")), "{fields:?}");
}

fuzz_target!(|data: &[u8]| {
    let signature = SignatureStatus::Valid(bob().fingerprint().clone());
    let decrypted = inspect(OUTER, data.to_vec(), Method::PublicKey { seipd_v2: true }, signature, vec![]);
    group_reply(&decrypted);
    let composed = view::compose(OUTER, &decrypted);
    check(&composed);
    assert_eq!(view::compose(OUTER, &decrypted), composed);
    let explained = view::explain(data, &DecryptError::NotForThisKey);
    check(&explained);
    // Any provider header of a message over `[autocrypt] max_message_size`.
    check(&view::too_large(data, data.len() as u64, 1000));
    let rendered = view::render(data, bob());
    if let Some(bytes) = rendered.bytes() {
        check(bytes);
    }
    assert_eq!(view::render(data, bob()), rendered);
    if let Some(notice) = notice::notice(data, bob(), &["securejoin/x/y"]) {
        check(&notice);
        assert_eq!(mime::fields(mime::split(&notice).0).iter().filter(|f| f.is(notice::FIELD)).count(), 1);
    }
});
