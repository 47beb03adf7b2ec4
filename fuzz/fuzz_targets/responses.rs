//! Inspection and rewriting of provider responses: capability lists, METADATA responses, the
//! SEARCH / FETCH / response-code readers of the proxy's own commands, the quiet INBOX state
//! machine.
#![no_main]

use coi_proxy::imap::wire::{capability, metadata, response};
use coi_proxy::imap::session::quiet::{Quiet, Verdicts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(rewritten) = capability::rewrite_response(data, &["COI"]) {
        assert!(capability::find_in_response(&rewritten).is_some());
    }
    let _ = metadata::parse_response(data);
    let _ = response::search_uids(data);
    let _ = response::fetch_uid(data);
    let _ = response::first_literal(data);
    let _ = response::response_code_number(data, "UIDNEXT");
    let mut quiet = Quiet::new(Verdicts::default());
    let now = std::time::Instant::now();
    for line in data.split_inclusive(|&b| b == b'\n') {
        let _ = quiet.on_untagged(line, line.len() % 2 == 0, now);
        let _ = quiet.poll(now);
        if line.len() % 3 == 0 {
            quiet.set_verdicts(Verdicts { kept: line.len() as u64, moved: 1 });
        }
    }
    let _ = quiet.release();
});
