//! Decoding of the commands the proxy parses itself: the generic parser, METADATA (COI and
//! WebPush entries), and the cheap heads (tag and CommandName) read from every relayed line.
#![no_main]

use coi_proxy::coi::metadata as coi;
use coi_proxy::imap::wire::{command, metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = command::head(data);
    if let Some(head) = command::Head::parse(data) {
        assert!(data.starts_with(head.tag));
    }
    if let Ok(cmd) = command::parse(data) {
        if let Ok(get) = metadata::parse_get(&cmd) {
            let (entries, _) = metadata::select(&get, &coi::coi_entries(&Default::default(), "COI"));
            let _ = metadata::format_response(&get.mailbox, &entries);
        }
        if let Ok(set) = metadata::parse_set(&cmd) {
            let _ = coi::coi_change(&set);
            let _ = coi_proxy::push::entries::changes(&set);
        }
    }
});
