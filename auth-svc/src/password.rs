//! Argon2id password hashing. Hashing is deliberately slow, so it runs on
//! the blocking pool, never on a runtime worker. Unknown users are checked
//! against a dummy hash so a failed login takes the same time whether or not
//! the account exists.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;

use crate::error::Error;

/// The hasher: Argon2id with the crate's recommended parameters (19 MiB,
/// 2 passes), the OWASP baseline.
fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Hashes `password` into a PHC string (algorithm, parameters and salt
/// included, so parameters can change later without breaking old hashes).
pub async fn hash(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| Error::Internal(format!("password hashing task failed: {e}")))?
}

fn hash_blocking(password: &str) -> Result<String, Error> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("cannot hash password: {e}")))
}

/// Whether `password` matches `stored` (a PHC string). With `stored` None
/// (unknown user) a dummy hash is checked so the time taken is the same,
/// and the answer is false.
pub async fn verify(stored: Option<String>, password: String) -> Result<bool, Error> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = match stored {
            Some(phc) => phc,
            None => dummy_hash()?.to_string(),
        };
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| Error::Internal(format!("stored password hash is unreadable: {e}")))?;
        let matches = argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && matches)
    })
    .await
    .map_err(|e| Error::Internal(format!("password check task failed: {e}")))?
}

/// A hash of a random password, computed once per process.
fn dummy_hash() -> Result<&'static str, Error> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let hash = hash_blocking(&uuid::Uuid::new_v4().to_string())?;
    Ok(DUMMY.get_or_init(|| hash))
}

/// A strong random password for the bootstrap admin: 24 characters from an
/// unambiguous alphabet (about 137 bits).
pub fn generate() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_password_verifies_and_wrong_one_does_not() {
        let phc = hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(
            verify(Some(phc.clone()), "correct horse".into())
                .await
                .unwrap()
        );
        assert!(!verify(Some(phc), "wrong horse".into()).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        assert!(!verify(None, "anything".into()).await.unwrap());
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate();
        assert_eq!(a.len(), 24);
        assert_ne!(a, generate());
    }
}
