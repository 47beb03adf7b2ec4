//! The chat classifier on raw header blocks.
#![no_main]

use coi_proxy::coi::classify::ChatHeaders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let headers = ChatHeaders::parse(data);
    let _ = headers.is_chat(|id| id.len() == 7);
});
