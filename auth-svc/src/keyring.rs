//! The signing keys in force: which one signs, and which ones still verify.
//!
//! Every key lives in the database with when it was made and when it was
//! retired. The newest key not retired signs. `RotateSigningKey` retires it
//! and stores a new one; a retired key stays published (in
//! `GetSigningKeys` and in auth-svc's own verifier) for [`verify_window`]
//! after its retirement, long enough for every token it signed to expire,
//! and is then dropped, so verifiers that refetch forget it.
//!
//! Each replica keeps a [`KeyRing`] built from the stored keys and reloads
//! it every [`KEY_RELOAD_INTERVAL`] (one small query), so a rotation on one
//! replica makes every other one sign with the new key, and accept tokens
//! it signed, within a few seconds. A ring older than [`KEY_MAX_AGE`] (the
//! reloads are failing or late) is reloaded before it signs again.

use std::time::{Duration, Instant};

use p2p_services::auth::{LEEWAY, PublicKey};

use crate::error::Error;
use crate::store::StoredKey;
use crate::tokens::{KeyPair, Signer};

/// How often a replica reloads the keys from the database.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The oldest a key ring may be when it signs: a replica may keep signing
/// with a key retired elsewhere for at most this long.
pub const KEY_MAX_AGE: Duration = Duration::from_secs(5);

/// How long a retired key keeps verifying: the longest-lived token it can
/// have signed (access and peer tokens both live `access_ttl`; refresh
/// tokens are not signed), plus the verifiers' clock leeway, plus
/// [`KEY_MAX_AGE`] for replicas that signed with it before they saw the
/// rotation.
pub fn verify_window(access_ttl: Duration) -> Duration {
    access_ttl + LEEWAY + KEY_MAX_AGE
}

/// Whether a key retired at `retired_at_ms` (`None`: still in use) may
/// still verify tokens at `now_ms`.
pub fn still_verifies(retired_at_ms: Option<i64>, now_ms: i64, window: Duration) -> bool {
    retired_at_ms.is_none_or(|retired| now_ms < retired + window.as_millis() as i64)
}

/// The key that signs among `stored` (newest first): the newest one not
/// retired.
pub fn signing_key(stored: &[StoredKey]) -> Option<&StoredKey> {
    stored.iter().find(|key| key.retired_at_ms.is_none())
}

/// The keys one replica signs and verifies with, as loaded at one moment.
#[derive(Debug)]
pub struct KeyRing {
    /// Signs every new token.
    pub signer: Signer,
    /// The signing key and every retired key still within its window,
    /// newest first: what `GetSigningKeys` publishes.
    pub published: Vec<PublicKey>,
    loaded: Instant,
}

impl KeyRing {
    /// The ring for `stored` (newest first) at `now_ms`. Fails when no key
    /// is in use, or a key in use is unreadable.
    pub fn from_stored(stored: &[StoredKey], now_ms: i64, window: Duration) -> Result<Self, Error> {
        let current = signing_key(stored)
            .ok_or_else(|| Error::Internal("no signing key is in use".into()))?;
        let signer = Signer::new(KeyPair::from_der(&current.kid, &current.private_key_der)?)?;
        let mut published = Vec::new();
        for key in stored
            .iter()
            .filter(|key| still_verifies(key.retired_at_ms, now_ms, window))
        {
            published.push(KeyPair::from_der(&key.kid, &key.private_key_der)?.public());
        }
        Ok(Self {
            signer,
            published,
            loaded: Instant::now(),
        })
    }

    /// Whether the ring was loaded at least `age` ago.
    pub fn older_than(&self, age: Duration) -> bool {
        self.loaded.elapsed() >= age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &KeyPair, created_at_ms: i64, retired_at_ms: Option<i64>) -> StoredKey {
        StoredKey {
            kid: key.kid.clone(),
            private_key_der: key.to_der().unwrap(),
            created_at_ms,
            retired_at_ms,
        }
    }

    #[test]
    fn retired_keys_verify_for_the_longest_token_lifetime_plus_slack() {
        let slack = LEEWAY + KEY_MAX_AGE;
        assert_eq!(
            verify_window(Duration::from_secs(900)),
            Duration::from_secs(900) + slack
        );
        assert_eq!(
            verify_window(Duration::from_secs(10)),
            Duration::from_secs(10) + slack,
            "peer tokens live as long as access tokens, so short ones mean a short window"
        );
        let window = Duration::from_secs(100);
        assert!(still_verifies(None, i64::MAX, window));
        assert!(still_verifies(Some(1_000), 1_000, window));
        assert!(still_verifies(Some(1_000), 100_999, window));
        assert!(!still_verifies(Some(1_000), 101_000, window));
    }

    #[test]
    fn the_newest_key_in_use_signs_and_expired_ones_are_not_published() {
        let (new, old, older) = (
            KeyPair::generate(),
            KeyPair::generate(),
            KeyPair::generate(),
        );
        let window = Duration::from_secs(100);
        let keys = [
            stored(&new, 300_000, None),
            stored(&old, 200_000, Some(300_000)),
            stored(&older, 100_000, Some(200_000)),
        ];
        let ring = KeyRing::from_stored(&keys, 350_000, window).unwrap();
        assert_eq!(ring.signer.kid(), new.kid);
        let kids: Vec<&str> = ring.published.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [new.kid.as_str(), old.kid.as_str()]);

        let later = KeyRing::from_stored(&keys, 400_000, window).unwrap();
        assert_eq!(later.published.len(), 1, "the old key's window is over");

        let all_retired = [stored(&old, 200_000, Some(300_000))];
        assert!(KeyRing::from_stored(&all_retired, 300_000, window).is_err());
    }
}
