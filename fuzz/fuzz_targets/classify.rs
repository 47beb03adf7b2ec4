//! The chat classifier on raw header blocks, and the receipts read from messages others send:
//! whether a header asks for a read receipt, and DSN / MDN reports (who they are from, their ids).
#![no_main]

use coi_proxy::coi::classify::{self, ChatHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let headers = ChatHeaders::parse(data);
    let _ = classify::is_chat(&headers, |id| id.len() == 7);
    let _ = coi_proxy::receipts::formats::mdn_request(data, &["a@b".to_string()]);
    if let Some(report) = coi_proxy::receipts::formats::parse_report(data) {
        let _ = report.fallback_id();
    }
    let _ = coi_proxy::receipts::formats::report_id(data);
});
