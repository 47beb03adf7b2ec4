//! The local password an OAuth2 account's mail client logs in to the proxy with. Only a slow
//! salted hash is kept (Argon2id, RustCrypto's defaults: 19 MiB, 2 passes), and it is sealed in
//! the store besides. Hashing and checking take tens of milliseconds of CPU, so async callers run
//! them with `spawn_blocking`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core_06::OsRng;

use crate::secret::Secret;

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) of `password`.
pub fn hash(password: &Secret) -> Secret {
    let salt = SaltString::generate(&mut OsRng);
    // Hashing with valid default parameters and a fresh salt cannot fail.
    let phc = Argon2::default().hash_password(password.expose(), &salt).expect("argon2 with default parameters");
    Secret::new(phc.to_string().into_bytes())
}

/// Whether `password` is the one `phc` was made from (constant time in the hash comparison).
/// A stored hash that does not parse matches nothing.
pub fn verify(phc: &Secret, password: &Secret) -> bool {
    let Ok(text) = std::str::from_utf8(phc.expose()) else { return false };
    let Ok(parsed) = PasswordHash::new(text) else { return false };
    Argon2::default().verify_password(password.expose(), &parsed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_check_out() {
        let pw = Secret::new(b"correct horse".to_vec());
        let a = hash(&pw);
        let b = hash(&pw);
        assert_ne!(a.expose(), b.expose(), "a fresh salt each time");
        assert!(a.expose().starts_with(b"$argon2id$"));
        assert!(!a.expose().windows(13).any(|w| w == b"correct horse"));
        assert!(verify(&a, &pw) && verify(&b, &pw));
        assert!(!verify(&a, &Secret::new(b"correct horsf".to_vec())));
        assert!(!verify(&a, &Secret::default()));
        assert!(!verify(&Secret::new(b"not a hash".to_vec()), &pw));
        assert!(!verify(&Secret::new(vec![0xff, 0xfe]), &pw));
    }
}
