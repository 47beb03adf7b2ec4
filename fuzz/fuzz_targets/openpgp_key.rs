//! Keys from outside: `coi-proxy key import` (armored secret keys, with and without a
//! passphrase), the store's binary secret keys, Autocrypt `keydata` and armored public keys.
//! A key that imports must export and import again to the same fingerprint.
#![no_main]

use coi_proxy::openpgp::key::{AccountKey, PublicKey};
use coi_proxy::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let passphrase = Secret::new(b"passphrase".to_vec());
    for pw in [None, Some(&passphrase)] {
        if let Ok(key) = AccountKey::import_armored(data, "a@example.org", pw) {
            let again =
                AccountKey::import_armored(key.secret_armored().unwrap().expose(), "a@example.org", None).unwrap();
            assert_eq!(again.fingerprint(), key.fingerprint());
        }
    }
    let _ = AccountKey::from_secret_bytes(data, "a@example.org");
    if let Ok(key) = PublicKey::from_bytes(data) {
        assert_eq!(PublicKey::from_bytes(&key.to_bytes()).unwrap().fingerprint(), key.fingerprint());
        let _ = key.addresses();
        let _ = key.supports_seipd_v2();
    }
    let _ = PublicKey::from_armored(data);
});
