//! The provider profile's readers of provider responses (NAMESPACE, `LIST "" ""`, `* SEARCH`)
//! and the move planner driven by replies taken from the input.
#![no_main]

use coi_proxy::provider_profile::move_plan::{parse_search, MovePlan, Next, Reply};
use coi_proxy::provider_profile::namespace::{separator_from_list, Namespaces};
use coi_proxy::provider_profile::MoveStrategy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Namespaces::parse(data);
    let _ = separator_from_list(data);
    let searched = parse_search(data);
    // A plan for UIDs from the input's first bytes, fed replies chosen by the rest.
    let Some((&first, rest)) = data.split_first() else { return };
    let strategy = match first % 3 {
        0 => MoveStrategy::Move,
        1 => MoveStrategy::CopyUidExpunge,
        _ => MoveStrategy::CopySafeExpunge,
    };
    let uids: Vec<u32> = rest.iter().take(4).map(|&b| u32::from(b)).collect();
    let Ok(mut plan) = MovePlan::new(strategy, &uids, "COI/Chats", &[3, 5]) else { return };
    let mut next = plan.start();
    for &b in rest.iter().skip(4).take(16) {
        if !matches!(next, Next::Send(_)) {
            break;
        }
        let reply = match b % 4 {
            0 => Reply::Ok,
            1 => Reply::Refused("NO [TRYCREATE] x".into()),
            2 => Reply::Refused(String::from_utf8_lossy(rest).into_owned()),
            _ => Reply::Searched(searched.clone().unwrap_or_default()),
        };
        next = plan.on_reply(reply);
    }
});
