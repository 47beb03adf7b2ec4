//! SecureJoin, the inviter's side: any message to Alice, who issued the invite link of the
//! captured handshake (so its step 1, password-encrypted, and step 3, encrypted to her, reach
//! the checks and the answers she would send). Each input is tried as a message and as an
//! envelope's OpenPGP payload (`common/pgp.rs`).
#![no_main]

#[path = "common/pgp.rs"]
mod pgp;

use coi_proxy::openpgp::securejoin::inviter::{Inviter, Issued};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let issued = [Issued::from_invite(pgp::alice_invite(), 0)];
    let inviter = Inviter { key: pgp::alice(), name: "Alice", invites: &issued };
    for message in &pgp::forms(data) {
        let _ = inviter.handle(message, 1);
    }
});
