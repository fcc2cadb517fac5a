//! One source of one download ([`Worker`]): keeps up to
//! [`PIPELINE_DEPTH`] FetchChunks calls in flight, sized by how fast the
//! source delivers ([`Pace`]), verifies every chunk against the manifest,
//! writes it at its offset and records it as verified.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use p2p_proto::index::v1 as index_pb;
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::with_peer_credentials;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Shared;
use crate::error::Error;
use crate::picker::{SourceKey, to_ranges};

/// Most FetchChunks calls one source has in flight at once.
pub const PIPELINE_DEPTH: usize = 2;
/// Most chunks per FetchChunks call.
const MAX_BATCH: usize = 8;
/// How long one FetchChunks call should take. Calls are sized so that each
/// source has only about this much of its data claimed ahead: a fast source
/// gets big batches two deep, a slow or shared one (a seeder serving many
/// downloaders) one chunk at a time, so chunks are not promised to it long
/// before it can send them, while others could have fetched them elsewhere.
const REQUEST_TARGET: Duration = Duration::from_millis(100);
/// No data from a source for this long: it is stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How a source worker ended.
#[derive(Debug)]
pub(super) enum WorkerEnd {
    /// Nothing left that this source can give.
    NoWork,
    /// The source is at its upload cap.
    Busy,
    /// The source failed; report it unless `reason` is None.
    Failed {
        reason: Option<index_pb::ReportReason>,
        detail: String,
    },
    /// Our side failed (disk full, database): the download stops.
    Fatal(Error),
}

/// Fetches from one source until it has nothing more to give or fails.
pub(super) struct Worker {
    pub(super) key: SourceKey,
    /// Who the index says answers at the source's address; the peer token
    /// we send is good for this peer only.
    pub(super) source_peer_id: String,
    pub(super) shared: Arc<Shared>,
    pub(super) client: PeerServiceClient<Channel>,
    pub(super) complete: bool,
}

impl Worker {
    pub(super) async fn run(self) -> WorkerEnd {
        let mut in_flight = FuturesUnordered::new();
        let mut pace = Pace::default();
        loop {
            while in_flight.len() < pace.depth {
                let chunks = self.shared.picker().pick(self.key, pace.batch);
                if chunks.is_empty() {
                    break;
                }
                in_flight.push(self.fetch(chunks));
            }
            if in_flight.is_empty() {
                if self.shared.is_complete() {
                    return WorkerEnd::NoWork;
                }
                let changed = self.shared.work_changed.notified();
                tokio::pin!(changed);
                // Chunks may have been released between the pick and here.
                changed.as_mut().enable();
                if self.shared.picker().has_source(self.key) {
                    let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
                    continue;
                }
                return WorkerEnd::NoWork;
            }
            match in_flight.next().await {
                Some(Ok(elapsed)) => pace.observe(elapsed),
                Some(Err(end)) => return end,
                None => {}
            }
        }
    }

    /// One FetchChunks call for `chunks`; returns how long it took.
    async fn fetch(&self, chunks: Vec<u32>) -> Result<Duration, WorkerEnd> {
        let started = Instant::now();
        let result = self.fetch_inner(&chunks).await;
        if result.is_err() {
            let mut picker = self.shared.picker();
            for &i in &chunks {
                picker.release(self.key, i);
            }
        }
        result.map(|()| started.elapsed())
    }

    async fn fetch_inner(&self, chunks: &[u32]) -> Result<(), WorkerEnd> {
        let shared = &self.shared;
        let (token, proof) = shared
            .ctx
            .session
            .peer_credentials(&self.source_peer_id)
            .await
            .map_err(|e| WorkerEnd::Failed {
                reason: None,
                detail: e.to_string(),
            })?;
        let request = FetchChunksRequest {
            file_id: shared.holding.file_id.to_string(),
            ranges: to_ranges(chunks)
                .into_iter()
                .map(|(start, count)| ChunkRange { start, count })
                .collect(),
        };
        let mut client = self.client.clone();
        let response = tokio::time::timeout(
            STALL_TIMEOUT,
            client.fetch_chunks(with_peer_credentials(request, &token, &proof)),
        )
        .await
        .map_err(|_| stalled())?
        .map_err(classify)?;
        let mut stream = response.into_inner();
        for &index in chunks {
            let chunk = tokio::time::timeout(STALL_TIMEOUT, stream.message())
                .await
                .map_err(|_| stalled())?
                .map_err(classify)?
                .ok_or_else(|| WorkerEnd::Failed {
                    reason: Some(index_pb::ReportReason::Unreachable),
                    detail: format!("stream ended before chunk {index}"),
                })?;
            if chunk.index != index || !shared.manifest.chunk_matches(index, &chunk.data) {
                shared.ctx.stats.chunk_rejected();
                return Err(WorkerEnd::Failed {
                    reason: Some(index_pb::ReportReason::Corrupt),
                    detail: format!(
                        "asked for chunk {index}, got chunk {} of {} bytes that does not match the manifest",
                        chunk.index,
                        chunk.data.len()
                    ),
                });
            }
            let len = chunk.data.len() as u64;
            shared
                .part
                .write_at(shared.manifest.chunk_offset(index), chunk.data)
                .await
                .map_err(WorkerEnd::Fatal)?;
            let newly = shared.picker().received(index);
            if newly {
                shared
                    .ctx
                    .holdings
                    .mark_verified(&shared.holding, index)
                    .await
                    .map_err(WorkerEnd::Fatal)?;
                shared.have_bytes.fetch_add(len, Ordering::Relaxed);
                shared.meter.record(len);
                shared.ctx.stats.chunk_downloaded(len, !self.complete);
                if shared.is_complete() {
                    shared.complete.notify_one();
                }
            }
        }
        Ok(())
    }
}

/// How much one source is asked for at a time: `depth` calls of `batch`
/// chunks, adjusted after every call so a call takes about
/// [`REQUEST_TARGET`]. Starts at one chunk, one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pace {
    depth: usize,
    batch: usize,
}

impl Default for Pace {
    fn default() -> Self {
        Self { depth: 1, batch: 1 }
    }
}

impl Pace {
    /// Adjusts after a call that took `elapsed`: quick calls double the
    /// batch (and allow a second call in flight, to hide the round trip);
    /// slow ones halve it, and a slow single chunk drops to one call.
    fn observe(&mut self, elapsed: Duration) {
        if elapsed < REQUEST_TARGET / 2 {
            self.depth = PIPELINE_DEPTH;
            self.batch = (self.batch * 2).min(MAX_BATCH);
        } else if elapsed > REQUEST_TARGET {
            if self.batch > 1 {
                self.batch /= 2;
            } else {
                self.depth = 1;
            }
        }
    }
}

fn stalled() -> WorkerEnd {
    WorkerEnd::Failed {
        reason: Some(index_pb::ReportReason::Stalled),
        detail: format!("no data for {} s", STALL_TIMEOUT.as_secs()),
    }
}

fn classify(status: Status) -> WorkerEnd {
    // Older agents answer Unavailable "cannot read chunk" for a file that
    // is gone on their disk.
    let cannot_read = status.code() == Code::DataLoss
        || (status.code() == Code::Unavailable && status.message().contains("cannot read chunk"));
    if cannot_read {
        return WorkerEnd::Failed {
            reason: Some(index_pb::ReportReason::CannotRead),
            detail: status.message().to_string(),
        };
    }
    match status.code() {
        Code::ResourceExhausted => WorkerEnd::Busy,
        // Stale holdings at the index, or our token: not the source's fault.
        Code::NotFound | Code::Unauthenticated | Code::OutOfRange => WorkerEnd::Failed {
            reason: None,
            detail: status.message().to_string(),
        },
        _ => WorkerEnd::Failed {
            reason: Some(index_pb::ReportReason::Unreachable),
            detail: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_source_gets_big_batches_two_deep() {
        let mut pace = Pace::default();
        for _ in 0..10 {
            pace.observe(Duration::from_millis(5));
        }
        assert_eq!(
            pace,
            Pace {
                depth: PIPELINE_DEPTH,
                batch: MAX_BATCH
            }
        );
    }

    #[test]
    fn a_slow_source_gets_one_chunk_at_a_time() {
        let mut pace = Pace {
            depth: PIPELINE_DEPTH,
            batch: MAX_BATCH,
        };
        for _ in 0..10 {
            pace.observe(Duration::from_millis(400));
        }
        assert_eq!(pace, Pace::default());
    }

    #[test]
    fn a_call_near_the_target_keeps_the_pace() {
        let mut pace = Pace {
            depth: PIPELINE_DEPTH,
            batch: 2,
        };
        pace.observe(REQUEST_TARGET * 3 / 4);
        assert_eq!(
            pace,
            Pace {
                depth: PIPELINE_DEPTH,
                batch: 2
            }
        );
    }

    #[test]
    fn a_source_that_cannot_read_the_file_is_told_apart() {
        for status in [
            Status::data_loss("this agent cannot read file f"),
            Status::unavailable("this agent cannot read chunk 3: No such file"),
        ] {
            assert!(matches!(
                classify(status),
                WorkerEnd::Failed {
                    reason: Some(index_pb::ReportReason::CannotRead),
                    ..
                }
            ));
        }
        assert!(matches!(
            classify(Status::unavailable("connection reset")),
            WorkerEnd::Failed {
                reason: Some(index_pb::ReportReason::Unreachable),
                ..
            }
        ));
    }
}
