//! The serving side of the agent: the `p2p.peer.v1.PeerService` server
//! with its upload limits. It sits beside the download engine, above the
//! held-file state ([`crate::holdings`]) it serves from, and is used by
//! nothing but `run`.
//!
//! - this module: [`ChunkServer`] (both RPCs) and `FetchChunks`, with
//!   [`Uploads`], the limits every stream shares;
//! - [`exchange`]: the source end of `WatchHoldings` (the contract both
//!   ends keep is [`crate::exchange`]);
//! - [`seeding`]: which chunks a caller that asks for "any n" gets;
//! - [`framed`]: the same chunks as `p2p-chunks/1` frames on the TLS
//!   listener, beside HTTP/2. [`Uploads::open`] and [`UploadStream`] are
//!   what both paths share: the checks, limits and reads live there once.
//!
//! The token and proof are checked by `RequireAuth` once per call, before
//! a call gets here. A FetchChunks call names its chunks, or asks for "any
//! n of these" and the source chooses ([`seeding`]). Each
//! stream has one producer task, owned by the response stream (aborted when
//! tonic drops it, i.e. when the caller goes away), that reads a chunk from
//! disk and hands it over through a channel of capacity one: at most two
//! chunks per stream are in memory. A caller that keeps the stream open but
//! stops reading would otherwise hold an upload slot forever, so a producer
//! that cannot hand a chunk over within the stall timeout
//! (`--upload-stall-timeout`) gives up and
//! frees its slot. Every chunk first draws its length from the token bucket
//! shared by all streams; a semaphore caps concurrent streams.

pub mod exchange;
pub mod framed;
pub mod seeding;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use p2p_proto::peer::v1::peer_service_server::PeerService;
use p2p_proto::peer::v1::{Chunk, FetchChunksRequest, HoldingsUpdate, WatchHoldingsRequest};
use p2p_services::manifest::{Bitfield, FileId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use self::seeding::{Link, SeedChoice};
use crate::holdings::{Holding, Holdings};
use crate::rate::TokenBucket;
use crate::stats::{ActiveUpload, Stats};

/// Most chunks one FetchChunks request may ask for.
pub const MAX_CHUNKS_PER_REQUEST: u64 = 1024;
/// Most holdings streams served at once (they are cheap: no disk reads).
pub const MAX_WATCHERS: usize = 512;

/// What the chunk server needs: the holdings it serves, the limits every
/// stream shares, and the counters it keeps.
#[derive(Debug)]
pub struct Uploads {
    /// What this agent holds.
    holdings: Arc<Holdings>,
    /// The upload rate limit shared by every stream.
    bucket: TokenBucket,
    /// The configured cap on concurrent streams (0: unlimited).
    max_uploads: u32,
    /// How long a stream may wait for its caller to take the next chunk.
    stall_timeout: std::time::Duration,
    slots: Option<Arc<Semaphore>>,
    /// Counters.
    stats: Arc<Stats>,
    /// Fault injection: corrupt every chunk served.
    corrupt: bool,
    shutdown: CancellationToken,
    /// What each file's "any n" callers were handed, per file.
    seeding: std::sync::Mutex<std::collections::HashMap<FileId, SeedChoice>>,
    watchers: Arc<Semaphore>,
}

impl Uploads {
    /// The upload side of an agent.
    pub fn new(
        holdings: Arc<Holdings>,
        max_upload_rate_bps: u64,
        max_uploads: u32,
        stall_timeout: std::time::Duration,
        stats: Arc<Stats>,
        corrupt: bool,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            holdings,
            bucket: TokenBucket::new(max_upload_rate_bps),
            max_uploads,
            stall_timeout,
            slots: (max_uploads > 0).then(|| Arc::new(Semaphore::new(max_uploads as usize))),
            stats,
            corrupt,
            shutdown,
            seeding: std::sync::Mutex::new(std::collections::HashMap::new()),
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
        }
    }

    fn seeding(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<FileId, SeedChoice>> {
        self.seeding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chooses up to `n` of the chunks a caller lacks for it (see
    /// [`SeedChoice`]).
    fn choose(&self, holding: &Holding, lacks: &Bitfield, n: usize, caller: &str) -> Vec<u32> {
        let held = holding.bitfield();
        // This call's own upload is not counted yet.
        let link = match self.stats.active_uploads.load(Ordering::Relaxed) {
            0 => Link::Idle,
            _ => Link::Busy,
        };
        let mut seeding = self.seeding();
        seeding
            .entry(holding.file_id.clone())
            .or_insert_with(|| SeedChoice::new(holding.manifest.chunk_count(), rand::random()))
            .choose(lacks, &held, n, link, caller)
    }

    /// The held file a call names, if this agent holds it and its copy on
    /// disk still matches what was recorded.
    fn served(&self, file_id: &str) -> Result<Arc<Holding>, Status> {
        let file_id =
            FileId::parse(file_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let holding = self
            .holdings
            .get(&file_id)
            .ok_or_else(|| Status::not_found(format!("this agent does not hold file {file_id}")))?;
        if !self.holdings.verify(&holding) {
            return Err(gone(&holding));
        }
        Ok(holding)
    }

    /// Checks what a caller asks for (FetchChunks or a `FETCH` frame: the
    /// rules, limits and answers live here once for both) and takes an
    /// upload slot: the chunks to send, in order.
    pub fn open(self: &Arc<Self>, ask: Ask<'_>) -> Result<UploadStream, Status> {
        let holding = self.served(ask.file_id)?;
        let file_id = holding.file_id.clone();
        let chosen = ask.ranges.is_empty() && !ask.any_of.is_empty();
        let indexes = if chosen {
            let lacks = Bitfield::from_bytes(ask.any_of, holding.manifest.chunk_count())
                .map_err(|e| Status::invalid_argument(format!("any_of: {e}")))?;
            let n = ask.any_count;
            if n == 0 || u64::from(n) > MAX_CHUNKS_PER_REQUEST {
                return Err(Status::invalid_argument(format!(
                    "any_count is {n}; ask for 1 to {MAX_CHUNKS_PER_REQUEST} chunks"
                )));
            }
            let indexes = self.choose(&holding, &lacks, n as usize, ask.caller);
            if indexes.is_empty() && !lacks.held().any(|i| holding.holds(i)) {
                return Err(Status::not_found(format!(
                    "this agent holds none of the chunks asked for of file {file_id}"
                )));
            }
            // Empty: all of them were just handed to others (an empty
            // stream says "from your peers").
            indexes
        } else {
            requested_chunks(ask.ranges, holding.manifest.chunk_count()).map_err(|e| match e {
                RangeError::PastEnd { .. } => Status::out_of_range(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            })?
        };
        if let Some(missing) = indexes.iter().find(|&&i| !holding.holds(i)) {
            return Err(Status::not_found(format!(
                "this agent does not hold chunk {missing} of file {file_id}"
            )));
        }
        let permit = match &self.slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    if chosen {
                        for &i in &indexes {
                            self.unsend(&file_id, i);
                        }
                    }
                    return Err(Status::resource_exhausted(format!(
                        "agent is serving its maximum of {} uploads; try another source",
                        self.max_uploads
                    )));
                }
            },
            None => None,
        };
        Ok(UploadStream {
            chosen,
            _active: ActiveUpload::start(self.stats.clone()),
            uploads: self.clone(),
            holding,
            indexes: indexes.into_iter(),
            _permit: permit,
        })
    }

    /// Admits one watcher of a file's holdings (either front door): the
    /// file must be served here and a stream free (at most
    /// [`MAX_WATCHERS`]). A caller that names itself by the address it
    /// calls from joins the file's peer book.
    pub fn watch(
        &self,
        request: &WatchHoldingsRequest,
        from: Option<std::net::IpAddr>,
    ) -> Result<exchange::Watch, Status> {
        let holding = self.served(&request.file_id)?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "agent is serving its maximum of {MAX_WATCHERS} holdings streams; rely on the index"
            ))
        })?;
        let caller = exchange::caller_hint(request.caller.as_ref(), from);
        let watcher = caller.as_ref().map(|c| c.peer_id.clone());
        if let Some(caller) = caller {
            holding.note_peer(caller);
        }
        Ok(exchange::Watch {
            holding,
            holdings: self.holdings.clone(),
            watcher,
            stall_timeout: self.stall_timeout,
            shutdown: self.shutdown.clone(),
            _permit: permit,
        })
    }

    /// How long a stream may wait for its caller to take the next chunk.
    pub fn stall_timeout(&self) -> std::time::Duration {
        self.stall_timeout
    }

    fn unsend(&self, file: &FileId, index: u32) {
        if let Some(choice) = self.seeding().get_mut(file) {
            choice.unsend(index);
        }
    }
}

/// The chunk indexes a request asks for, in request order, checked against
/// the file's chunk count.
pub fn requested_chunks(ranges: &[(u32, u32)], chunk_count: u32) -> Result<Vec<u32>, RangeError> {
    let total: u64 = ranges.iter().map(|&(_, count)| u64::from(count)).sum();
    if total == 0 {
        return Err(RangeError::Empty);
    }
    if total > MAX_CHUNKS_PER_REQUEST {
        return Err(RangeError::TooMany(total));
    }
    let mut indexes = Vec::with_capacity(total as usize);
    for &(start, count) in ranges {
        let end = u64::from(start) + u64::from(count);
        if end > u64::from(chunk_count) {
            return Err(RangeError::PastEnd {
                end: end - 1,
                chunk_count,
            });
        }
        indexes.extend(start..start + count);
    }
    Ok(indexes)
}

/// Why a request's ranges were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// No chunk asked for.
    #[error("the request asks for no chunks")]
    Empty,
    /// More than [`MAX_CHUNKS_PER_REQUEST`].
    #[error("the request asks for {0} chunks; at most 1024 per request")]
    TooMany(u64),
    /// A chunk index past the end of the file.
    #[error("chunk {end} is past the end of the file ({chunk_count} chunks)")]
    PastEnd {
        /// The largest index asked for.
        end: u64,
        /// The file's chunk count.
        chunk_count: u32,
    },
}

/// The PeerService implementation.
#[derive(Debug, Clone)]
pub struct ChunkServer {
    uploads: Arc<Uploads>,
}

impl ChunkServer {
    /// Serves what `uploads` holds.
    pub fn new(uploads: Arc<Uploads>) -> Self {
        Self { uploads }
    }
}

/// What one caller asks one stream for: a `FetchChunksRequest`'s fields,
/// from FetchChunks or from a `FETCH` frame.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The file, as the caller wrote its id.
    pub file_id: &'a str,
    /// Named chunks as (start, count) runs, in the order wanted.
    pub ranges: &'a [(u32, u32)],
    /// Instead of `ranges`: the bitfield of chunks the caller lacks.
    pub any_of: &'a [u8],
    /// How many of `any_of` this agent chooses.
    pub any_count: u32,
    /// The calling agent's key from its verified peer token (empty if
    /// none): who the seeder hands chosen chunks to (see [`seeding`]).
    pub caller: &'a str,
}

/// One stream's chunks to send, holding its upload slot until dropped;
/// chosen chunks not sent are given back to "any n" (see [`seeding`]).
pub struct UploadStream {
    /// The source chose the chunks: give back those not sent.
    chosen: bool,
    uploads: Arc<Uploads>,
    holding: Arc<Holding>,
    indexes: std::vec::IntoIter<u32>,
    _permit: Option<OwnedSemaphorePermit>,
    _active: ActiveUpload,
}

impl Drop for UploadStream {
    fn drop(&mut self) {
        if self.chosen {
            for i in self.indexes.by_ref() {
                self.uploads.unsend(&self.holding.file_id, i);
            }
        }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;
type UpdateStream = Pin<Box<dyn Stream<Item = Result<HoldingsUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl PeerService for ChunkServer {
    type FetchChunksStream = ChunkStream;
    type WatchHoldingsStream = UpdateStream;

    async fn watch_holdings(
        &self,
        request: Request<WatchHoldingsRequest>,
    ) -> Result<Response<Self::WatchHoldingsStream>, Status> {
        let from = request.remote_addr().map(|a| a.ip());
        let watch = self.uploads.watch(&request.into_inner(), from)?;
        self.uploads.stats.holdings_stream_served(false);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let producer = tokio::spawn(exchange::serve_updates(watch, tx));
        let stream = OwnedStream {
            chunks: tokio_stream::wrappers::ReceiverStream::new(rx),
            _producer: AbortOnDrop(producer),
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_chunks(
        &self,
        request: Request<FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        let caller = request
            .extensions()
            .get::<p2p_services::auth::PeerClaims>()
            .map(|claims| claims.cnf.clone())
            .unwrap_or_default();
        let request = request.into_inner();
        let ranges: Vec<(u32, u32)> = request.ranges.iter().map(|r| (r.start, r.count)).collect();
        let state = self.uploads.open(Ask {
            file_id: &request.file_id,
            ranges: &ranges,
            any_of: &request.any_of,
            any_count: request.any_count,
            caller: &caller,
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let producer = tokio::spawn(produce(state, tx));
        let stream = OwnedStream {
            chunks: tokio_stream::wrappers::ReceiverStream::new(rx),
            _producer: AbortOnDrop(producer),
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Reads the requested chunks one by one and hands each to the response
/// stream; ends on the first error, when the caller is gone, when it stops
/// reading for the stall timeout, or on shutdown. Dropping `state` frees
/// the upload slot.
async fn produce(mut state: UploadStream, tx: tokio::sync::mpsc::Sender<Result<Chunk, Status>>) {
    while let Some(item) = state.next().await {
        let failed = item.is_err();
        let item = item.map(|(index, data)| Chunk { index, data });
        let began = Instant::now();
        match tx.send_timeout(item, state.uploads.stall_timeout).await {
            Ok(()) if !failed => state.uploads.stats.upload_waited(began.elapsed()),
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                tracing::info!(
                    file = %state.holding.file_id,
                    "caller stopped reading a FetchChunks stream; freeing its upload slot"
                );
                return;
            }
            Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => return,
        }
    }
}

/// Aborts a task when dropped, so a producer never outlives its stream.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response stream: the messages, and ownership of their producer.
struct OwnedStream<T> {
    chunks: tokio_stream::wrappers::ReceiverStream<Result<T, Status>>,
    _producer: AbortOnDrop,
}

impl<T> Stream for OwnedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.chunks).poll_next(cx)
    }
}

impl UploadStream {
    /// The file this stream serves.
    pub fn file_id(&self) -> &FileId {
        &self.holding.file_id
    }

    /// The next chunk to send (its index and bytes), `None` once all were
    /// sent. An error is the stream's last item; shutdown is one.
    pub async fn next(&mut self) -> Option<Result<(u32, Bytes), Status>> {
        let index = self.indexes.next()?;
        let shutdown = self.uploads.shutdown.clone();
        Some(tokio::select! {
            () = shutdown.cancelled() => Err(Status::unavailable("the agent is shutting down; try another source")),
            item = next_chunk(self, index) => item,
        })
    }
}

/// Reads chunk `index` to send: drawn from the rate limit, checked against
/// the file's fingerprint before and after the read.
async fn next_chunk(state: &UploadStream, index: u32) -> Result<(u32, Bytes), Status> {
    let holding = &state.holding;
    let not_held = || {
        Status::not_found(format!(
            "this agent no longer holds chunk {index} of file {}",
            holding.file_id
        ))
    };
    let Some(len) = holding
        .manifest
        .chunk_len(index)
        .filter(|_| holding.holds(index))
    else {
        return Err(not_held());
    };
    state.uploads.bucket.take(u64::from(len)).await;
    let data = match holding.read_chunk(index).await {
        Ok(Some(data)) if state.uploads.holdings.verify(holding) => data,
        Ok(Some(_)) => return Err(gone(holding)),
        Ok(None) => return Err(not_held()),
        Err(e) => {
            tracing::warn!(file = %holding.file_id, index, error = %e, "cannot read a chunk to serve");
            state.uploads.holdings.verify(holding);
            return Err(Status::data_loss(format!(
                "this agent cannot read chunk {index} of file {}: {e}; try another source",
                holding.file_id
            )));
        }
    };
    let data = if state.uploads.corrupt {
        corrupt(data)
    } else {
        data
    };
    state
        .uploads
        .stats
        .chunk_served(u64::from(len), !holding.is_complete());
    Ok((index, data))
}

/// The answer for a file whose copy here was deleted, moved or edited.
fn gone(holding: &Holding) -> Status {
    Status::data_loss(format!(
        "this agent cannot read file {}: its copy here was deleted, moved or edited; try another source",
        holding.file_id
    ))
}

fn corrupt(data: Bytes) -> Bytes {
    let mut bad = BytesMut::from(&data[..]);
    if let Some(first) = bad.first_mut() {
        *first ^= 0xff;
    }
    bad.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_in_request_order() {
        assert_eq!(requested_chunks(&[(5, 2), (1, 1)], 10), Ok(vec![5, 6, 1]));
    }

    #[test]
    fn ranges_past_the_end_are_out_of_range() {
        assert_eq!(
            requested_chunks(&[(8, 3)], 10),
            Err(RangeError::PastEnd {
                end: 10,
                chunk_count: 10
            })
        );
        assert!(matches!(
            requested_chunks(&[(u32::MAX, 2)], 10),
            Err(RangeError::PastEnd { .. })
        ));
    }

    #[test]
    fn requests_are_capped_at_1024_chunks() {
        assert_eq!(
            requested_chunks(&[(0, 1025)], 5000),
            Err(RangeError::TooMany(1025))
        );
        assert_eq!(
            requested_chunks(&[(0, 1024)], 5000).map(|v| v.len()),
            Ok(1024)
        );
        assert_eq!(requested_chunks(&[], 5), Err(RangeError::Empty));
    }
}
