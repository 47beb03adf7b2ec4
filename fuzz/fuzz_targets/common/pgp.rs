//! What the OpenPGP role targets (`openpgp_decrypt`, `securejoin_inviter`, `securejoin_joiner`)
//! share: the fixture accounts and invite, parsed once per process (key import and link parsing
//! are not what is fuzzed), and the three shapes an input is tried in: the message itself, and
//! the input as the OpenPGP payload of a PGP/MIME envelope, base64 and armored, so the OpenPGP
//! parser is reached directly.

// Each target uses the part it needs.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::Engine;
use coi_proxy::openpgp::key::AccountKey;
use coi_proxy::openpgp::securejoin::invite::Invite;

const ALICE: &[u8] = include_bytes!("../../../tests/fixtures/deltachat/alice-secret.asc");
const BOB: &[u8] = include_bytes!("../../../tests/fixtures/deltachat/bob-secret.asc");
/// Alice's invite link, as Delta Chat wrote it (the SecureJoin fixtures are Bob joining it).
pub const ALICE_LINK: &str = include_str!("../../../tests/fixtures/deltachat/invite-alice.txt");

/// Alice: the inviter of the captured handshake (steps 1 and 3 are for her).
pub fn alice() -> &'static AccountKey {
    static KEY: OnceLock<AccountKey> = OnceLock::new();
    KEY.get_or_init(|| AccountKey::import_armored(ALICE, "alice@example.org", None).unwrap())
}

/// Bob: the joiner of the captured handshake and the receiver of the captured chat messages.
pub fn bob() -> &'static AccountKey {
    static KEY: OnceLock<AccountKey> = OnceLock::new();
    KEY.get_or_init(|| AccountKey::import_armored(BOB, "bob@example.org", None).unwrap())
}

pub fn alice_invite() -> &'static Invite {
    static INVITE: OnceLock<Invite> = OnceLock::new();
    INVITE.get_or_init(|| Invite::parse(ALICE_LINK.trim()).unwrap())
}

fn envelope(payload: &str, cte: &str) -> Vec<u8> {
    format!(
        "From: <alice@example.org>\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: {cte}\r\n\r\n{payload}\r\n--b--\r\n"
    )
    .into_bytes()
}

/// The input as a whole message, and as a PGP/MIME envelope's payload (base64, armored).
pub fn forms(data: &[u8]) -> [Vec<u8>; 3] {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let armored = format!("-----BEGIN PGP MESSAGE-----\r\n\r\n{b64}\r\n-----END PGP MESSAGE-----");
    [data.to_vec(), envelope(&b64, "base64"), envelope(&armored, "7bit")]
}
