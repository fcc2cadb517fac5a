//! One source of one download ([`Worker`]): keeps up to
//! [`PIPELINE_DEPTH`] FetchChunks calls in flight, sized by how fast the
//! source delivers ([`Pace`]), verifies every chunk against the manifest,
//! writes it at its offset and records it as verified.
//!
//! A complete source (a seeder) is asked for "any n of the chunks only it
//! can give" and chooses itself (`crate::upload::seeding`), one call at a time so
//! two calls never leave it the same choice; everyone else is asked for
//! named chunks, rarest first (`crate::picker`). A source that claimed a
//! chunk on its own holdings stream and then says it does not hold it has
//! lied: that is reported like a corrupt chunk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use p2p_proto::index::v1 as index_pb;
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::with_peer_credentials;
use p2p_services::manifest::Bitfield;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Shared;
use super::framed::{self, Fault};
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
/// A source at its cap of concurrent uploads is asked again after this
/// (doubling while it stays busy, up to [`BUSY_MAX`], with jitter so the
/// downloaders it turned away do not all come back at once). It stays a
/// source meanwhile: its holdings stream keeps telling us what it has.
const BUSY_MIN: Duration = Duration::from_millis(100);
const BUSY_MAX: Duration = Duration::from_secs(2);
/// How a source worker ended.
#[derive(Debug)]
pub(super) enum WorkerEnd {
    /// Nothing left that this source can give.
    NoWork,
    /// The source is at its upload cap: the worker asks again later.
    Busy,
    /// The source failed; report it unless `reason` is None.
    Failed {
        reason: Option<index_pb::ReportReason>,
        detail: String,
    },
    /// Our side failed (disk full, database): the download stops.
    Fatal(Error),
    /// The source refused to choose chunks itself: name them instead.
    Refused,
}

/// Fetches from one source until it has nothing more to give or fails.
pub(super) struct Worker {
    pub(super) key: SourceKey,
    /// Who the index says answers at the source's address; the peer token
    /// we send is good for this peer only.
    pub(super) source_peer_id: String,
    pub(super) shared: Arc<Shared>,
    pub(super) client: PeerServiceClient<Channel>,
    /// Framed connections to the source, when we speak the framing; the
    /// worker falls back to `client` when the source does not.
    pub(super) framed: Option<framed::Pool>,
    pub(super) complete: bool,
    /// Set while what we know the source holds comes from its own holdings
    /// stream: then a NOT_FOUND for a chunk is a false claim.
    pub(super) claims_own: Arc<AtomicBool>,
    /// Set once the source delivered a verified chunk.
    pub(super) delivered: Arc<AtomicBool>,
}

/// What one call asks a source for.
enum Ask {
    /// These chunks, in this order (marked in flight by the picker).
    Named(Vec<u32>),
    /// Any `n` of these, the source's choice.
    Any(Bitfield, usize),
}

impl Worker {
    pub(super) async fn run(self) -> WorkerEnd {
        let mut in_flight = FuturesUnordered::new();
        let mut pace = Pace::default();
        // An older agent refuses "any n" (no ranges): name chunks from then on.
        let mut chooses = self.complete;
        self.shared.picker().set_chooser(self.key, chooses);
        let mut busy_until: Option<tokio::time::Instant> = None;
        let mut busy_backoff = BUSY_MIN;
        let mut attempt = 1;
        loop {
            let paused = busy_until.filter(|&t| t > tokio::time::Instant::now());
            while paused.is_none() && in_flight.len() < if chooses { 1 } else { pace.depth } {
                let ask = {
                    let mut picker = self.shared.picker();
                    match chooses.then(|| picker.seed_pool(self.key)).flatten() {
                        Some(pool) => Ask::Any(pool, pace.batch),
                        // Peers serve the endgame: a seeder sends each chunk once.
                        None if chooses => break,
                        None => Ask::Named(picker.pick(self.key, pace.batch)),
                    }
                };
                if matches!(&ask, Ask::Named(chunks) if chunks.is_empty()) {
                    break;
                }
                in_flight.push(self.fetch(ask));
            }
            if in_flight.is_empty() {
                if self.shared.is_complete() {
                    return WorkerEnd::NoWork;
                }
                if let Some(until) = paused {
                    tokio::time::sleep_until(until).await;
                    continue;
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
                Some(Ok(Some(elapsed))) => {
                    pace.observe(elapsed);
                    busy_backoff = BUSY_MIN;
                }
                Some(Err(WorkerEnd::Busy)) => {
                    // Its chunks were released; others may serve them.
                    busy_until = Some(tokio::time::Instant::now() + super::jittered(busy_backoff));
                    busy_backoff = (busy_backoff * 2).min(BUSY_MAX);
                    self.shared.work_changed.notify_waiters();
                }
                Some(Ok(None)) => {
                    // The seeder has nothing for us that it has not just
                    // handed to someone else: our peers will have it soon.
                    let changed = self.shared.work_changed.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(250), changed).await;
                }
                Some(Err(WorkerEnd::Failed {
                    reason: Some(index_pb::ReportReason::Unreachable),
                    detail,
                })) if !self.delivered.load(Ordering::Relaxed)
                    && attempt < super::exchange::OPEN_ATTEMPTS =>
                {
                    tracing::debug!(peer = %self.source_peer_id, attempt, %detail, "cannot reach a source yet; trying again");
                    // Never reached yet: the connection may only have been
                    // lost on a saturated link. Its chunks were released.
                    busy_until =
                        Some(tokio::time::Instant::now() + super::exchange::reopen_after(attempt));
                    attempt += 1;
                    self.shared.work_changed.notify_waiters();
                }
                Some(Err(WorkerEnd::Refused)) if chooses => {
                    chooses = false;
                    self.shared.picker().set_chooser(self.key, false);
                }
                Some(Err(end)) => return end,
                None => {}
            }
        }
    }

    /// One FetchChunks call; returns how long it took, or `None` when a
    /// choosing source sent nothing.
    async fn fetch(&self, ask: Ask) -> Result<Option<Duration>, WorkerEnd> {
        let started = Instant::now();
        let result = match &ask {
            Ask::Named(chunks) => self.fetch_inner(chunks, None).await,
            Ask::Any(pool, n) => self.fetch_inner(&[], Some((pool, *n))).await,
        };
        let mut picker = self.shared.picker();
        let claimed: &[u32] = match &ask {
            Ask::Named(chunks) if result.is_err() => chunks,
            _ => &[],
        };
        for &i in claimed {
            picker.release(self.key, i);
        }
        drop(picker);
        result.map(|(received, began)| (received > 0).then(|| began.unwrap_or(started).elapsed()))
    }

    /// The chunks received, and when the source began to answer if that
    /// was later than the call (a framed call's turn on its connection).
    async fn fetch_inner(
        &self,
        chunks: &[u32],
        any: Option<(&Bitfield, usize)>,
    ) -> Result<(usize, Option<Instant>), WorkerEnd> {
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
        if let Some(pool) = &self.framed {
            match pool.checkout(&token, &proof).await {
                Ok(Some(connection)) => {
                    return self.fetch_framed(connection, chunks, any).await;
                }
                Ok(None) => {}
                Err(fault) => return Err(self.fault(fault, any.is_some())),
            }
        }
        let request = FetchChunksRequest {
            file_id: shared.holding.file_id.to_string(),
            ranges: to_ranges(chunks)
                .into_iter()
                .map(|(start, count)| ChunkRange { start, count })
                .collect(),
            any_of: any
                .map(|(pool, _)| pool.as_bytes().to_vec())
                .unwrap_or_default(),
            any_count: any.map_or(0, |(_, n)| n as u32),
        };
        let mut client = self.client.clone();
        let response = tokio::time::timeout(
            STALL_TIMEOUT,
            client.fetch_chunks(with_peer_credentials(request, &token, &proof)),
        )
        .await
        .map_err(|_| stalled())?
        .map_err(|status| self.classify(status, any.is_some()))?;
        let mut stream = response.into_inner();
        let expected = any.map_or(chunks.len(), |(_, n)| n);
        for n in 0..expected {
            let message = tokio::time::timeout(STALL_TIMEOUT, stream.message())
                .await
                .map_err(|_| stalled())?
                .map_err(|status| self.classify(status, any.is_some()))?;
            let Some(chunk) = message else {
                if any.is_some() {
                    // A chooser may send fewer than asked, or none.
                    return Ok((n, None));
                }
                return Err(short_stream(n, expected));
            };
            let index = wanted(chunks, any, n, chunk.index);
            self.take(index, chunk.index, chunk.data).await?;
        }
        Ok((expected, None))
    }

    /// [`Self::fetch_inner`] on the source's framed connection: the
    /// `FETCH` goes out at once, its answer is read in its turn.
    async fn fetch_framed(
        &self,
        connection: Arc<framed::Connection>,
        chunks: &[u32],
        any: Option<(&Bitfield, usize)>,
    ) -> Result<(usize, Option<Instant>), WorkerEnd> {
        let shared = &self.shared;
        let fetch = p2p_services::framing::Fetch {
            file_id: shared.holding.file_id.to_string(),
            ranges: to_ranges(chunks),
            any_of: any
                .map(|(pool, _)| pool.as_bytes().to_vec())
                .unwrap_or_default(),
            any_count: any.map_or(0, |(_, n)| n as u32),
        };
        let chose = any.is_some();
        let mut answer = connection
            .send(&fetch, STALL_TIMEOUT)
            .await
            .map_err(|f| self.fault(f, chose))?;
        let expected = any.map_or(chunks.len(), |(_, n)| n);
        let mut n = 0;
        loop {
            let length = |got: u32| {
                (n < expected)
                    .then(|| wanted(chunks, any, n, got))
                    .filter(|&index| index == got)
                    .and_then(|index| shared.manifest.chunk_len(index))
            };
            let next = answer
                .next(length, STALL_TIMEOUT)
                .await
                .map_err(|fault| self.fault(fault, chose))?;
            let Some((index, data)) = next else {
                if n < expected && !chose {
                    answer.abandon();
                    return Err(short_stream(n, expected));
                }
                return Ok((n, answer.began()));
            };
            self.take(index, index, data).await?;
            n += 1;
        }
    }

    /// Verifies a chunk that came as `got` where `index` was wanted, writes
    /// it at its offset and records it.
    async fn take(&self, index: u32, got: u32, data: bytes::Bytes) -> Result<(), WorkerEnd> {
        let shared = &self.shared;
        let verified = (got == index)
            .then(|| shared.manifest.verify_chunk(index, &data))
            .flatten();
        let Some(chaining_value) = verified else {
            shared.ctx.stats.chunk_rejected();
            return Err(WorkerEnd::Failed {
                reason: Some(index_pb::ReportReason::Corrupt),
                detail: format!(
                    "asked for chunk {index}, got chunk {got} of {} bytes that does not match the manifest",
                    data.len()
                ),
            });
        };
        let len = data.len() as u64;
        if let Some(tree) = &shared.tree {
            tree.record(index, chaining_value, &data);
        }
        shared
            .part
            .write_at(shared.manifest.chunk_offset(index), data)
            .await
            .map_err(WorkerEnd::Fatal)?;
        let newly = shared.picker().received_from(self.key, index);
        self.delivered.store(true, Ordering::Relaxed);
        if newly {
            shared.ctx.holdings.mark_verified(&shared.holding, index);
            shared.have_bytes.fetch_add(len, Ordering::Relaxed);
            shared.meter.record(len);
            shared.ctx.stats.chunk_downloaded(len, !self.complete);
            if shared.is_complete() {
                shared.complete.notify_one();
            }
        }
        Ok(())
    }

    /// How a framed fetch's failure ends this worker: an `ERROR` as the
    /// same status from FetchChunks would; a broken frame as a corrupt
    /// chunk.
    fn fault(&self, fault: Fault, chose: bool) -> WorkerEnd {
        match fault {
            Fault::Status(status) => self.classify(status, chose),
            Fault::Protocol(detail) => {
                self.shared.ctx.stats.chunk_rejected();
                WorkerEnd::Failed {
                    reason: Some(index_pb::ReportReason::Corrupt),
                    detail,
                }
            }
            Fault::Io(detail) => WorkerEnd::Failed {
                reason: Some(index_pb::ReportReason::Unreachable),
                detail,
            },
            Fault::Stalled => stalled(),
        }
    }
}

/// The chunk the `n`th answer to a call must be, given it says it is
/// `got`: the `n`th named chunk, or for "any n" `got` itself when it is
/// one of those offered (`u32::MAX`, no chunk, otherwise).
fn wanted(chunks: &[u32], any: Option<(&Bitfield, usize)>, n: usize, got: u32) -> u32 {
    match any {
        Some((pool, _)) if pool.get(got) => got,
        Some(_) => u32::MAX,
        None => chunks.get(n).copied().unwrap_or(u32::MAX),
    }
}

fn short_stream(n: usize, expected: usize) -> WorkerEnd {
    WorkerEnd::Failed {
        reason: Some(index_pb::ReportReason::Unreachable),
        detail: format!("stream ended after {n} of {expected} chunks"),
    }
}

/// How much one source is asked for at a time: `depth` calls of `batch`
/// chunks, adjusted after every call so a call takes about
/// [`REQUEST_TARGET`]. Starts at one chunk, one call. A framed call is
/// timed from when its turn on the connection came, so the answer it
/// waited behind is not taken for a slow source.
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

impl Worker {
    /// How a failed call ends this worker: [`classify`], except that a
    /// NOT_FOUND for a chunk the source claimed itself is a lie, and a
    /// refused "any n" call means an older agent.
    fn classify(&self, status: Status, chose: bool) -> WorkerEnd {
        if chose && status.code() == Code::InvalidArgument {
            return WorkerEnd::Refused;
        }
        let chunk_level = status.message().contains("does not hold chunk");
        if status.code() == Code::NotFound && chunk_level && self.claims_own.load(Ordering::Relaxed)
        {
            return WorkerEnd::Failed {
                reason: Some(index_pb::ReportReason::Corrupt),
                detail: format!(
                    "claimed chunks on its holdings stream that it does not serve ({})",
                    status.message()
                ),
            };
        }
        classify(status)
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
