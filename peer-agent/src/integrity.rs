//! Held files follow the files on disk. Every shared and downloaded file is
//! recorded with a [`Fingerprint`] (size, modification time, inode); a copy
//! whose fingerprint no longer matches was deleted, moved or edited by the
//! user, and its chunks can no longer be promised to anyone.
//!
//! The check is a `stat`, cheap enough to make before serving a file, after
//! a read fails, and for every holding every [`SWEEP_EVERY`]. A holding that
//! fails it stops being served at once ([`crate::holdings::Holdings::verify`]
//! marks it) and is then withdrawn from the index by [`sweep`]: a downloaded
//! copy is forgotten (the next `p2p get` fetches it again), a shared
//! original is kept, marked "changed since shared", until the user shares
//! it again or removes it.
//!
//! Ownership: [`sweep`] is one future, awaited by the agent's `run` until
//! shutdown; it spawns nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::holdings::{Holding, Holdings};
use crate::session::Session;
use crate::store::Kind;

/// How often every holding is checked against the disk.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// What a held file looked like on disk when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Its length.
    pub size_bytes: u64,
    /// Its modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Its inode number (a moved-away and replaced file has another).
    pub inode: u64,
}

impl Fingerprint {
    /// The fingerprint of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(Self {
            size_bytes: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            inode: meta.ino(),
        })
    }
}

/// Why a held file can no longer be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Nothing is at its path any more (deleted or moved away).
    Gone,
    /// Something else is at its path, or it was edited.
    Changed,
}

impl Problem {
    /// What the user reads about a held file with this problem.
    pub fn describe(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Problem::Changed, Kind::Shared) => "changed since shared: share it again",
            (Problem::Gone, Kind::Shared) => "deleted or moved since shared: share it again",
            (Problem::Changed, _) => "changed since downloaded: download it again",
            (Problem::Gone, _) => "deleted or moved since downloaded: download it again",
        }
    }
}

/// Compares what a file looks like `now` with what was `recorded`.
pub fn compare(recorded: &Fingerprint, now: std::io::Result<Fingerprint>) -> Option<Problem> {
    match now {
        Ok(now) if now == *recorded => None,
        Ok(_) => Some(Problem::Changed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Problem::Gone),
        Err(_) => Some(Problem::Changed),
    }
}

/// Checks every holding every [`SWEEP_EVERY`] (and at once when a check
/// elsewhere found a problem) and withdraws those that failed, until
/// `shutdown`.
pub async fn sweep(holdings: Arc<Holdings>, session: Arc<Session>, shutdown: CancellationToken) {
    loop {
        for holding in holdings.all() {
            holdings.verify(&holding);
            if holding.needs_withdrawing() {
                withdraw(&session, &holdings, &holding).await;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = holdings.problem_found() => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// Tells the index we no longer hold `holding`'s file and updates our
/// records: a downloaded copy is forgotten, a shared original stays,
/// marked, so the user learns why it is no longer offered.
pub async fn withdraw(session: &Session, holdings: &Holdings, holding: &Holding) {
    let state = holding.snapshot();
    tracing::warn!(
        file = %holding.file_id,
        path = %state.path.display(),
        problem = holding.problem().unwrap_or_default(),
        "a held file changed on disk; no longer offering it"
    );
    holding.mark_withdrawn();
    if let Some(peer_id) = session.peer_id()
        && let Err(err) = session
            .stop_sharing(&peer_id, holding.file_id.as_str())
            .await
    {
        tracing::warn!(file = %holding.file_id, %err, "cannot tell the index; the next registration will");
    }
    if state.kind == Kind::Downloaded
        && let Err(err) = holdings.remove(&holding.file_id).await
    {
        tracing::warn!(file = %holding.file_id, %err, "cannot forget a vanished download");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_intact_until_it_is_edited_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let recorded = Fingerprint::of(&path).unwrap();
        assert_eq!(compare(&recorded, Fingerprint::of(&path)), None);

        std::fs::write(&path, b"hellp").unwrap();
        let edited = Fingerprint::of(&path).unwrap();
        assert_eq!(edited.size_bytes, recorded.size_bytes);
        assert_eq!(
            compare(&recorded, Ok(edited)),
            (edited != recorded).then_some(Problem::Changed)
        );

        std::fs::rename(&path, dir.path().join("g")).unwrap();
        assert_eq!(
            compare(&edited, Fingerprint::of(&path)),
            Some(Problem::Gone)
        );
    }

    #[test]
    fn a_replaced_file_is_changed_even_with_the_same_size_and_time() {
        let recorded = Fingerprint {
            size_bytes: 5,
            mtime_ns: 1,
            inode: 7,
        };
        let replaced = Fingerprint {
            inode: 8,
            ..recorded
        };
        assert_eq!(compare(&recorded, Ok(replaced)), Some(Problem::Changed));
    }
}
