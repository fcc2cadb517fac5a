//! Held files follow the files on disk. Every shared and downloaded file is
//! recorded with a [`Fingerprint`](super::fingerprint::Fingerprint); a copy
//! whose fingerprint no longer matches was deleted, moved or edited by the
//! user, and its chunks can no longer be promised to anyone.
//!
//! The check is a `stat`, cheap enough to make before serving a file, after
//! a read fails, and for every holding every [`SWEEP_EVERY`]. A holding that
//! fails it stops being served at once ([`Holdings::verify`] marks it) and
//! is then withdrawn from the index by [`sweep`]: a downloaded copy is
//! forgotten (the next `p2p get` fetches it again), a shared original is
//! kept, marked "changed since shared", until the user shares it again or
//! removes it.
//!
//! The index is told through [`Withdraw`], which the session implements:
//! the held-file state sits below the session and never calls it by name.
//!
//! Ownership: [`sweep`] is one future, awaited by the agent's `run` until
//! shutdown; it spawns nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use p2p_services::manifest::FileId;
use tokio_util::sync::CancellationToken;

use super::store::Kind;
use super::{Holding, Holdings};
use crate::error::Error;

/// How often every holding is checked against the disk.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Whoever tells the index what this agent holds (the session).
pub trait Withdraw {
    /// Tells the index this agent no longer holds any of `file`; does
    /// nothing while the agent is not registered (registering announces
    /// every holding afresh).
    fn withdraw(&self, file: &FileId) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Checks every holding every [`SWEEP_EVERY`] (and at once when a check
/// elsewhere found a problem) and withdraws those that failed, until
/// `shutdown`.
pub async fn sweep(
    holdings: Arc<Holdings>,
    index: Arc<impl Withdraw>,
    shutdown: CancellationToken,
) {
    loop {
        for holding in holdings.all() {
            holdings.verify(&holding);
            if holding.needs_withdrawing() {
                withdraw(&*index, &holdings, &holding).await;
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
pub async fn withdraw(index: &impl Withdraw, holdings: &Holdings, holding: &Holding) {
    let state = holding.snapshot();
    tracing::warn!(
        file = %holding.file_id,
        path = %state.path.display(),
        problem = holding.problem().unwrap_or_default(),
        "a held file changed on disk; no longer offering it"
    );
    holding.mark_withdrawn();
    if let Err(err) = index.withdraw(&holding.file_id).await {
        tracing::warn!(file = %holding.file_id, %err, "cannot tell the index; the next registration will");
    }
    if state.kind == Kind::Downloaded
        && let Err(err) = holdings.remove(&holding.file_id).await
    {
        tracing::warn!(file = %holding.file_id, %err, "cannot forget a vanished download");
    }
}
