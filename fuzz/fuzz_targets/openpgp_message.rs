//! Encrypted mail from anyone: PGP/MIME detection, OpenPGP parsing and decryption with the
//! account key or SecureJoin passwords, and both SecureJoin state machines on the result. The
//! input is tried as a whole message and as the OpenPGP payload of a PGP/MIME envelope
//! (armored and binary), so the OpenPGP parser is reached directly.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use coi_proxy::openpgp::decrypt::{NoKeys, decrypt, decrypt_with_passwords, encrypted_payload};
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::securejoin::invite::Invite;
use coi_proxy::openpgp::securejoin::inviter::{Inviter, Issued};
use coi_proxy::openpgp::securejoin::joiner::{Joining, Stage};
use libfuzzer_sys::fuzz_target;

const BOB: &[u8] = include_bytes!("../../tests/fixtures/deltachat/bob-secret.asc");
const ALICE_LINK: &str = include_str!("../../tests/fixtures/deltachat/invite-alice.txt");

fn bob() -> &'static AccountKey {
    static KEY: OnceLock<AccountKey> = OnceLock::new();
    KEY.get_or_init(|| AccountKey::import_armored(BOB, "bob@example.org", None).unwrap())
}

fn envelope(payload: &str, cte: &str) -> Vec<u8> {
    format!(
        "From: <alice@example.org>\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: {cte}\r\n\r\n{payload}\r\n--b--\r\n"
    )
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let key = bob();
    let invite = Invite::parse(ALICE_LINK).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let armored = format!("-----BEGIN PGP MESSAGE-----\r\n\r\n{b64}\r\n-----END PGP MESSAGE-----");
    let inputs = [data.to_vec(), envelope(&b64, "base64"), envelope(&armored, "7bit")];
    for message in &inputs {
        let _ = encrypted_payload(message);
        let _ = decrypt(message, key, &NoKeys);
        let _ = decrypt_with_passwords(message, &[&invite.password(), "wrong"], &NoKeys);
        let issued = [Issued::from_invite(&invite, 0)];
        let inviter = Inviter { key, name: "Bob", invites: &issued };
        let _ = inviter.handle(message, 1);
        let joining = Joining { link: ALICE_LINK.trim().to_string(), stage: Stage::RequestSent, started_at: 0 };
        let _ = joining.handle(key, "Bob", message, 1);
        let confirming = Joining { stage: Stage::AuthSent { inviter_key: key.public_key().clone() }, ..joining };
        let _ = confirming.handle(key, "Bob", message, 1);
    }
});
