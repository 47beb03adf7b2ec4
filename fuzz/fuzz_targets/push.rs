//! WebPush input from peers: a subscription's JSON and endpoint (from a client), and the
//! FETCH responses, headers and bodies the push payload is built from (from the provider).
#![no_main]

use coi_proxy::push::{imap, payload, subscription};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sub) = subscription::parse(data) {
        let _ = subscription::check_endpoint(&sub.endpoint);
    }
    let _ = imap::parse_fetch(data);
    let _ = imap::copyuid(&[data]);
    let _ = payload::parse_header(data);
    let _ = payload::body_text(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = subscription::check_id(text);
        let _ = imap::internal_date(text);
    }
});
