//! Decoding of the commands the proxy parses itself: the generic parser, METADATA (COI and
//! WebPush entries), the cheap heads (tag and CommandName) read from every relayed line, and
//! mailbox names (modified UTF-7, compared as a provider resolves them).
#![no_main]

use coi_proxy::coi::metadata as coi;
use coi_proxy::imap::wire::{command, mailbox, metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = command::head(data);
    if let Some(head) = command::Head::parse(data) {
        assert!(data.starts_with(head.tag));
    }
    if let Some(name) = mailbox::decode(data) {
        assert_eq!(mailbox::decode(mailbox::encode(&name).as_bytes()).as_deref(), Some(name.as_str()));
    }
    let _ = mailbox::at_or_below(data, b"COI", Some('.'));
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
