//! Encrypted mail from anyone, as the account worker and the decrypted view read it: PGP/MIME
//! detection, OpenPGP parsing, decryption with the account key (Bob) and with passwords (the
//! SecureJoin steps 1 and 2 of Alice's invite), signature check and the inner message. Each
//! input is tried as a message and as an envelope's OpenPGP payload (`common/pgp.rs`).
#![no_main]

#[path = "common/pgp.rs"]
mod pgp;

use coi_proxy::openpgp::decrypt::{NoKeys, decrypt, decrypt_with_passwords, encrypted_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let password = pgp::alice_invite().password();
    for message in &pgp::forms(data) {
        let _ = encrypted_payload(message);
        let _ = decrypt(message, pgp::bob(), &NoKeys);
        let _ = decrypt_with_passwords(message, &[&password, "wrong"], &NoKeys);
    }
});
