//! Transfer counters of this agent: what `Status` reports, what the
//! heartbeat's load is computed from, and what tests check to prove that
//! chunks flowed the way they should.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::rate::RateMeter;

/// Process-lifetime counters. All methods are cheap and lock-free except
/// the meters' (a short mutex).
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes sent to other agents.
    pub bytes_uploaded: AtomicU64,
    /// Verified bytes received from other agents.
    pub bytes_downloaded: AtomicU64,
    /// Chunks sent.
    pub chunks_served: AtomicU64,
    /// Verified chunks received.
    pub chunks_downloaded: AtomicU64,
    /// Chunks received that failed verification.
    pub chunks_rejected: AtomicU64,
    /// Verified chunks received from partial holders.
    pub chunks_from_partial_sources: AtomicU64,
    /// Chunks sent of a file this agent was itself still downloading.
    pub chunks_served_while_downloading: AtomicU64,
    /// FetchChunks streams being served.
    pub active_uploads: AtomicU32,
    /// Upload bytes per second.
    pub upload_meter: RateMeter,
    /// Download bytes per second.
    pub download_meter: RateMeter,
}

/// Seconds the "current rate" figures average over.
pub const RATE_WINDOW_SECS: u64 = 5;

impl Stats {
    /// Counts one chunk sent.
    pub fn chunk_served(&self, bytes: u64, while_downloading: bool) {
        self.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
        self.chunks_served.fetch_add(1, Ordering::Relaxed);
        if while_downloading {
            self.chunks_served_while_downloading
                .fetch_add(1, Ordering::Relaxed);
        }
        self.upload_meter.record(bytes);
    }

    /// Counts one verified chunk received.
    pub fn chunk_downloaded(&self, bytes: u64, from_partial: bool) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
        self.chunks_downloaded.fetch_add(1, Ordering::Relaxed);
        if from_partial {
            self.chunks_from_partial_sources
                .fetch_add(1, Ordering::Relaxed);
        }
        self.download_meter.record(bytes);
    }

    /// Counts one chunk that failed verification.
    pub fn chunk_rejected(&self) {
        self.chunks_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts one upload stream as active for as long as it lives.
#[derive(Debug)]
pub struct ActiveUpload(Arc<Stats>);

impl ActiveUpload {
    /// Counts an upload in.
    pub fn start(stats: Arc<Stats>) -> Self {
        stats.active_uploads.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveUpload {
    fn drop(&mut self) {
        self.0.active_uploads.fetch_sub(1, Ordering::Relaxed);
    }
}
