//! The chat classifier on raw header blocks.
#![no_main]

use coi_proxy::coi::classify::{self, ChatHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let headers = ChatHeaders::parse(data);
    let _ = classify::is_chat(&headers, |id| id.len() == 7);
});
