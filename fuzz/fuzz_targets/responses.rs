//! Inspection and rewriting of provider responses: capability lists, METADATA responses, the
//! SEARCH / FETCH / response-code / LIST / STATUS readers of the proxy's own commands, the quiet
//! INBOX state machine.
#![no_main]

use coi_proxy::imap::wire::{capability, metadata, response};
use coi_proxy::imap::session::quiet::{Quiet, SyncAbility, Verdicts};
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
    let _ = response::list_mailbox_with(data, "\\Junk");
    let _ = response::status_number(data, "UIDNEXT");
    let _ = response::appenduid(data);
    let _ = response::copyuid(&[data]);
    let mut quiet = Quiet::new(Verdicts { watching: true, ..Verdicts::default() });
    let t0 = std::time::Instant::now();
    let mut now = t0;
    let syncs = [SyncAbility::Now, SyncAbility::Later, SyncAbility::Idle];
    for line in data.split_inclusive(|&b| b == b'\n') {
        let _ = quiet.on_untagged(line, line.len() % 2 == 0, line.len() % 5 == 0, now);
        let _ = quiet.take_growth();
        let _ = quiet.poll(now, syncs[line.len() % 3]);
        if line.len() % 3 == 0 {
            let moved = quiet.verdicts().moved + u64::from(line.len() % 7 == 0);
            quiet.set_verdicts(Verdicts {
                kept: line.len() as u64,
                moved,
                watching: line.len() % 11 != 0,
                looked: Some(now),
                position: Some((1, line.len() as u32)),
            });
        }
        if line.len() % 13 == 0 {
            quiet.learn(line);
        }
        now += std::time::Duration::from_millis(line.len() as u64 * 10);
    }
    let _ = quiet.release();
});
