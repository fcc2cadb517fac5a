//! Transfer counters of this agent: what `Status` reports, what the
//! heartbeat's load is computed from, and what tests check to prove that
//! chunks flowed the way they should.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use p2p_services::metrics;

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
    /// Of `chunks_served`, those sent as `p2p-chunks/1` frames.
    pub chunks_served_framed: AtomicU64,
    /// Holdings streams opened to watchers, either way.
    pub holdings_streams_served: AtomicU64,
    /// Of `holdings_streams_served`, those served as `p2p-holdings/1`
    /// frames.
    pub holdings_streams_framed: AtomicU64,
    /// FetchChunks streams being served.
    pub active_uploads: AtomicU32,
    /// Upload bytes per second.
    pub upload_meter: RateMeter,
    /// Download bytes per second.
    pub download_meter: RateMeter,
    /// Microseconds per second that upload streams spent handing chunks
    /// on (see [`Self::upload_waited`]): the number of upload streams
    /// waiting on the network, on average, times a million.
    pub upload_waits: RateMeter,
}

/// Seconds the "current rate" figures average over.
pub const RATE_WINDOW_SECS: u64 = 5;

impl Stats {
    /// Counts one chunk sent.
    pub fn chunk_served(&self, bytes: u64, while_downloading: bool) {
        metrics::counter(
            "p2p_agent_uploaded_bytes_total",
            "Bytes of chunks sent to other agents.",
            &[],
        )
        .inc_by(bytes);
        metrics::counter(
            "p2p_agent_chunks_served_total",
            "Chunks sent to other agents.",
            &[],
        )
        .inc();
        self.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
        self.chunks_served.fetch_add(1, Ordering::Relaxed);
        if while_downloading {
            self.chunks_served_while_downloading
                .fetch_add(1, Ordering::Relaxed);
        }
        self.upload_meter.record(bytes);
    }

    /// Counts one chunk of those [`Self::chunk_served`] counted as sent in
    /// a `p2p-chunks/1` frame.
    pub fn chunk_served_framed(&self) {
        metrics::counter(
            "p2p_agent_chunks_served_framed_total",
            "Chunks sent to other agents as p2p-chunks/1 frames.",
            &[],
        )
        .inc();
        self.chunks_served_framed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts how long an upload stream waited to hand one chunk on: its
    /// write into a framed connection, or its place in a FetchChunks
    /// response, which HTTP/2 takes only as fast as the connection drains.
    pub fn upload_waited(&self, waited: Duration) {
        self.upload_waits.record(waited.as_micros() as u64);
    }

    /// Whether this agent's uploads were held back by the network over the
    /// last `seconds`: on average at least half an upload stream waited to
    /// hand a chunk on. Then the upload rate is what the link allows, not
    /// what was asked for.
    pub fn upload_link_bound(&self, seconds: u64) -> bool {
        self.upload_waits.rate_bps(seconds) >= 500_000
    }

    /// Counts one holdings stream opened to a watcher, `framed` when it is
    /// a `p2p-holdings/1` connection.
    pub fn holdings_stream_served(&self, framed: bool) {
        metrics::counter(
            "p2p_agent_holdings_streams_total",
            "Holdings streams opened to other agents' downloads, by how they are carried.",
            &[("carried", if framed { "frames" } else { "grpc" })],
        )
        .inc();
        self.holdings_streams_served.fetch_add(1, Ordering::Relaxed);
        if framed {
            self.holdings_streams_framed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one verified chunk received.
    pub fn chunk_downloaded(&self, bytes: u64, from_partial: bool) {
        metrics::counter(
            "p2p_agent_downloaded_bytes_total",
            "Verified bytes received from other agents.",
            &[],
        )
        .inc_by(bytes);
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
        metrics::counter(
            "p2p_agent_chunks_rejected_total",
            "Chunks received whose hash, index or length did not match the manifest.",
            &[],
        )
        .inc();
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
        active_uploads_gauge().inc();
        Self(stats)
    }
}

impl Drop for ActiveUpload {
    fn drop(&mut self) {
        self.0.active_uploads.fetch_sub(1, Ordering::Relaxed);
        active_uploads_gauge().dec();
    }
}

fn active_uploads_gauge() -> metrics::Gauge {
    metrics::gauge(
        "p2p_agent_active_uploads",
        "FetchChunks streams being served.",
        &[],
    )
}

/// The process-wide gauge of running downloads.
pub fn active_downloads_gauge() -> metrics::Gauge {
    metrics::gauge("p2p_agent_active_downloads", "Downloads running.", &[])
}
