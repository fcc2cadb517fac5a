//! Argon2id password hashing. Hashing is deliberately slow, so it runs on
//! the blocking pool, never on a runtime worker. Unknown users are checked
//! against a dummy hash so a failed login takes the same time whether or not
//! the account exists.
//!
//! Each hash needs its parameters' working memory (19 MiB by default). At
//! most one hash per core runs at once ([`SLOTS`]; more would only queue
//! inside the CPU), and each reuses a buffer kept from the last one
//! ([`Memory`]) instead of allocating its own: freeing 19 MiB per login
//! left that much in the allocator's arenas for every login that ever ran
//! at the same time, so auth-svc grew with the largest burst of logins
//! (8 at once: 22 → 180 MB). Now its hashing memory is at most one buffer
//! per core.

use std::sync::{LazyLock, Mutex, OnceLock};

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

use crate::error::Error;

/// Hashes running at once: one per core.
static SLOT_COUNT: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
/// The permits for [`SLOT_COUNT`] hashes.
static SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(*SLOT_COUNT));

/// Working memory left by finished hashes, for the next ones; never more
/// buffers than [`SLOTS`] lets hashes run at once.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// One hash's working memory, taken from [`MEMORY`] and given back when
/// dropped.
struct Memory(Vec<Block>);

impl Memory {
    fn take() -> Self {
        let kept = MEMORY.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Self(kept.unwrap_or_default())
    }

    /// The first `blocks` blocks, growing the buffer when it is smaller.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::default());
        }
        &mut self.0[..blocks]
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        MEMORY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
    }
}

/// Runs `work` on the blocking pool once a hashing slot is free, with
/// working memory from earlier hashes.
async fn in_slot<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce(&mut Memory) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let _slot = SLOTS
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("{what}: {e}")))?;
    tokio::task::spawn_blocking(move || work(&mut Memory::take()))
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))?
}

/// The hasher for new hashes: Argon2id with the crate's recommended
/// parameters (19 MiB, 2 passes), the OWASP baseline.
fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// The hash of `password` with `salt` by `argon2`, in `memory`: what
/// `PasswordHasher::hash_password` computes, without allocating.
fn compute(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: Salt<'_>,
    memory: &mut Memory,
) -> Result<Output, argon2::password_hash::Error> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let params = argon2.params();
    let blocks = memory.blocks(params.block_count());
    Output::init_with(
        params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN),
        |out| Ok(argon2.hash_password_into_with_memory(password, salt, out, &mut *blocks)?),
    )
}

/// Hashes `password` into a PHC string (algorithm, parameters and salt
/// included, so parameters can change later without breaking old hashes).
pub async fn hash(password: String) -> Result<String, Error> {
    in_slot("password hashing", move |memory| {
        hash_blocking(&password, memory)
    })
    .await
}

fn hash_blocking(password: &str, memory: &mut Memory) -> Result<String, Error> {
    let cannot =
        |e: argon2::password_hash::Error| Error::Internal(format!("cannot hash password: {e}"));
    let salt = SaltString::generate(&mut OsRng);
    let argon2 = argon2();
    let output = compute(&argon2, password.as_bytes(), salt.as_salt(), memory).map_err(cannot)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(cannot)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `phc`, hashed with the parameters `phc`
/// names; the outputs are compared in constant time.
fn matches(phc: &PasswordHash<'_>, password: &str, memory: &mut Memory) -> bool {
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return false;
    };
    let argon2 = (|| -> Result<_, argon2::password_hash::Error> {
        let algorithm = Algorithm::try_from(phc.algorithm)?;
        let version = phc
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        Ok(Argon2::new(algorithm, version, Params::try_from(phc)?))
    })();
    argon2
        .and_then(|argon2| compute(&argon2, password.as_bytes(), salt, memory))
        .is_ok_and(|computed| computed == expected)
}

/// Whether `password` matches `stored` (a PHC string). With `stored` None
/// (unknown user) a dummy hash is checked so the time taken is the same,
/// and the answer is false.
pub async fn verify(stored: Option<String>, password: String) -> Result<bool, Error> {
    in_slot("password check", move |memory| {
        let known = stored.is_some();
        let phc = match stored {
            Some(phc) => phc,
            None => dummy_hash(memory)?.to_string(),
        };
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| Error::Internal(format!("stored password hash is unreadable: {e}")))?;
        Ok(matches(&parsed, &password, memory) && known)
    })
    .await
}

/// A hash of a random password, computed once per process.
fn dummy_hash(memory: &mut Memory) -> Result<&'static str, Error> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let hash = hash_blocking(&uuid::Uuid::new_v4().to_string(), memory)?;
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
    async fn hashes_agree_with_the_argon2_crates_own_hasher() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash("correct horse".into()).await.unwrap();
        argon2()
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .expect("the crate verifies our hash");
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon2()
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        assert!(
            verify(Some(theirs.clone()), "battery staple".into())
                .await
                .unwrap()
        );
        assert!(
            !verify(Some(theirs), "battery stapler".into())
                .await
                .unwrap()
        );
        // A hash made with other parameters verifies with its own.
        let light = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, Some(24)).unwrap(),
        )
        .hash_password(b"old", &salt)
        .unwrap()
        .to_string();
        assert!(verify(Some(light), "old".into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_hashes_at_once_keep_one_buffer_per_slot() {
        let checks: Vec<_> = (0..12)
            .map(|i| tokio::spawn(hash(format!("password {i}"))))
            .collect();
        for check in checks {
            check.await.unwrap().unwrap();
        }
        let kept = MEMORY.lock().unwrap().len();
        assert!(
            kept <= *SLOT_COUNT,
            "{kept} buffers kept for {} slots",
            *SLOT_COUNT
        );
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
