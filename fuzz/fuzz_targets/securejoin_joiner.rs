//! SecureJoin, the joiner's side: any message to Bob while he joins Alice's invite link, in both
//! waiting stages (for her `vc-pubkey`, password-encrypted, and with her key for her
//! `vc-contact-confirm`), as in the captured handshake. Each input is tried as a message and as
//! an envelope's OpenPGP payload (`common/pgp.rs`).
#![no_main]

#[path = "common/pgp.rs"]
mod pgp;

use coi_proxy::openpgp::securejoin::joiner::{Joining, Stage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let requested = Joining { link: pgp::ALICE_LINK.trim().to_string(), stage: Stage::RequestSent, started_at: 0 };
    let confirming =
        Joining { stage: Stage::AuthSent { inviter_key: pgp::alice().public_key().clone() }, ..requested.clone() };
    for message in &pgp::forms(data) {
        let _ = requested.handle(pgp::bob(), "Bob", message, 1);
        let _ = confirming.handle(pgp::bob(), "Bob", message, 1);
    }
});
