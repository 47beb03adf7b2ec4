//! `Autocrypt` and `Autocrypt-Gossip` header values and the header sections they come in: a
//! header that parses formats back to one that parses to the same thing.
#![no_main]

use coi_proxy::openpgp::autocrypt::{AutocryptHeader, gossip_headers, sender_header};
use coi_proxy::openpgp::mime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(header) = AutocryptHeader::parse(&text) {
        let again = AutocryptHeader::parse(&header.value()).unwrap();
        assert_eq!(again, header);
        let field = header.field("Autocrypt");
        assert_eq!(mime::all_values(field.as_bytes(), "Autocrypt").len(), 1);
    }
    let values = mime::all_values(data, "Autocrypt");
    let from = mime::first_value(data, "From").unwrap_or_default();
    let _ = sender_header(&values, &from);
    let gossip = mime::all_values(data, "Autocrypt-Gossip");
    let recipients: Vec<String> =
        mime::mailboxes(&mime::first_value(data, "To").unwrap_or_default()).into_iter().map(|m| m.addr).collect();
    let _ = gossip_headers(&gossip, &from, &recipients);
});
