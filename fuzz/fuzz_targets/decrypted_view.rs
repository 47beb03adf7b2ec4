//! The decrypted view's MIME path: any inner message a sender encrypts (read by
//! `decrypt::inspect`, composed by `view::compose`) and any outer message (the whole `render`,
//! including the explanation of an undecryptable one). The view is CRLF-only, has exactly one
//! marker field and no HP-Outer field, and the same input gives the same bytes. Any message
//! may also be a SecureJoin handshake mail (`securejoin::notice`): its notice obeys the same.
#![no_main]

use std::sync::OnceLock;

use coi_proxy::openpgp::decrypt::{DecryptError, Method, SignatureStatus, inspect};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::securejoin::notice;
use coi_proxy::openpgp::{mime, view};
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

fuzz_target!(|data: &[u8]| {
    let signature = SignatureStatus::Valid(bob().fingerprint().clone());
    let decrypted = inspect(OUTER, data.to_vec(), Method::PublicKey { seipd_v2: true }, signature, vec![]);
    let composed = view::compose(OUTER, &decrypted);
    check(&composed);
    assert_eq!(view::compose(OUTER, &decrypted), composed);
    let explained = view::explain(data, &DecryptError::NotForThisKey);
    check(&explained);
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
