//! The download engine: fetches a file from the swarm, several sources in
//! parallel, and puts the verified file in place.
//!
//! Ownership: [`Downloads`] owns one coordinator task per running download
//! (in a `TaskTracker`, each with a cancellation token that is a child of
//! the agent's shutdown token); each coordinator owns its source workers in
//! a `JoinSet`, so cancelling or finishing a download aborts its workers.
//!
//! A coordinator locates sources (again every few seconds, and at once when
//! it runs out), starts a worker per source, reports and bans sources that
//! fail, publishes progress on a `watch` channel (any number of `Download`
//! streams may watch; the download goes on when they drop), and announces
//! our growing bitfield to the index so others can fetch from us while we
//! download. A worker keeps up to [`PIPELINE_DEPTH`] FetchChunks calls in
//! flight, sized by how fast the source delivers ([`Pace`]), verifies every
//! chunk against the manifest, writes it at its offset and persists it as
//! verified. When every chunk is in, the
//! whole file is hashed, flushed and renamed into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use p2p_proto::index::v1 as index_pb;
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::{MAX_MESSAGE_BYTES, with_bearer, with_peer_credentials};
use p2p_services::manifest::{Bitfield, FileId, Manifest};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::disk::PartFile;
use crate::error::Error;
use crate::holdings::{Holding, Holdings, held_bytes};
use crate::picker::{Picker, SourceKey, Stripe, to_ranges};
use crate::rate::RateMeter;
use crate::session::Session;
use crate::stats::{RATE_WINDOW_SECS, Stats};

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
/// How often sources are located again while downloading: this is how
/// quickly chunks that other downloaders just got become fetchable from them.
const RELOCATE_EVERY: Duration = Duration::from_millis(250);
/// Locating again after running out of sources, at first.
const RELOCATE_SOON: Duration = Duration::from_millis(300);
/// Give up when, for this long, no chunk arrived and no source that has
/// not failed this download was there to try.
pub const NO_SOURCE_GIVE_UP: Duration = Duration::from_secs(60);
/// Most sources used at once. Generous on purpose: a chunk held by a peer we
/// do not use looks "held by the seeder only" to the picker, so we would ask
/// the seeder for it again. One idle HTTP/2 connection per source is cheap.
const MAX_SOURCES: usize = 32;
/// How long a failed source is left out of this download.
const BAN_FAILED: Duration = Duration::from_secs(60);
/// How long a busy source is left alone.
const BAN_BUSY: Duration = Duration::from_secs(2);
/// How often the growing bitfield is announced (checked every
/// [`PROGRESS_EVERY`]): with [`RELOCATE_EVERY`], how stale others' view of
/// us gets.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);
/// How often progress is published.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Where a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Finding sources.
    Locating,
    /// Fetching chunks.
    Downloading,
    /// Checking the whole file.
    Verifying,
    /// In place.
    Done,
    /// Stopped with an error (see [`Progress::failure`]).
    Failed,
}

/// A snapshot of one download, published to every watcher.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Where it is.
    pub stage: Stage,
    /// Which file.
    pub file_id: FileId,
    /// Its name.
    pub name: String,
    /// Its size.
    pub total_bytes: u64,
    /// Verified bytes so far, including resumed chunks.
    pub have_bytes: u64,
    /// Bytes per second over the last few seconds.
    pub rate_bps: u64,
    /// Sources currently in use.
    pub sources_in_use: u32,
    /// Estimated time left, when known.
    pub eta: Option<Duration>,
    /// The final path, once done.
    pub final_path: Option<PathBuf>,
    /// Chunks already verified when this run started.
    pub resumed_chunks: u32,
    /// Why it failed, when [`Stage::Failed`].
    pub failure: Option<Status>,
    /// Destinations of requests that joined this download whose copy
    /// could not be made, with why; the download itself may still be done.
    pub failed_copies: Vec<(PathBuf, Status)>,
}

impl Progress {
    /// Whether the download is over (done or failed).
    pub fn is_final(&self) -> bool {
        matches!(self.stage, Stage::Done | Stage::Failed)
    }
}

/// What downloads need from the rest of the agent.
#[derive(Debug)]
pub struct DownloadContext {
    /// Tokens, peer id, index calls.
    pub session: Arc<Session>,
    /// What we hold.
    pub holdings: Arc<Holdings>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Where `.part` files live: `<data-dir>/partial`.
    pub partial_dir: PathBuf,
    /// Cancelled when the agent stops.
    pub shutdown: CancellationToken,
    channels: Mutex<HashMap<String, Channel>>,
}

impl DownloadContext {
    /// The context of an agent's downloads.
    pub fn new(
        session: Arc<Session>,
        holdings: Arc<Holdings>,
        stats: Arc<Stats>,
        partial_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            session,
            holdings,
            stats,
            partial_dir,
            shutdown,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// One channel per source address, reused across calls and downloads.
    fn peer_client(&self, address: &str) -> Result<PeerServiceClient<Channel>, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let tls = &self.session.config().peer_tls;
                let channel = p2p_services::client::channel(address, tls).map_err(|e| {
                    Error::InvalidArgument(format!("source address {address:?} is unusable: {e}"))
                })?;
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

struct Running {
    progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
    destination: PathBuf,
    /// Destinations of later requests for the same file: each gets its own
    /// copy of the verified file once the one transfer is done.
    also_to: Vec<PathBuf>,
}

/// Every running download, by file.
pub struct Downloads {
    ctx: Arc<DownloadContext>,
    running: Mutex<HashMap<FileId, Running>>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("running", &self.running_count())
            .finish()
    }
}

impl Downloads {
    /// No download running yet.
    pub fn new(ctx: Arc<DownloadContext>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            running: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of running downloads.
    pub fn running_count(&self) -> usize {
        self.lock().len()
    }

    /// The progress of a running download of `file`.
    pub fn progress(&self, file: &FileId) -> Option<Progress> {
        self.lock().get(file).map(|r| r.progress.borrow().clone())
    }

    /// Starts downloading `manifest` to `destination`, or attaches to the
    /// running download of the same file; then `destination` gets its own
    /// copy of the file when that download is done, so every request ends
    /// with the file at the path it asked for.
    pub fn start(
        self: &Arc<Self>,
        manifest: Manifest,
        destination: PathBuf,
    ) -> watch::Receiver<Progress> {
        let file_id = manifest.file_id();
        let mut running = self.lock();
        if let Some(existing) = running.get_mut(&file_id) {
            if existing.destination != destination && !existing.also_to.contains(&destination) {
                existing.also_to.push(destination);
            }
            return existing.progress.clone();
        }
        let (tx, rx) = watch::channel(Progress {
            stage: Stage::Locating,
            file_id: file_id.clone(),
            name: manifest.name.clone(),
            total_bytes: manifest.size_bytes,
            have_bytes: 0,
            rate_bps: 0,
            sources_in_use: 0,
            eta: None,
            final_path: None,
            resumed_chunks: 0,
            failure: None,
            failed_copies: Vec::new(),
        });
        let cancel = self.ctx.shutdown.child_token();
        running.insert(
            file_id.clone(),
            Running {
                progress: rx.clone(),
                cancel: cancel.clone(),
                destination: destination.clone(),
                also_to: Vec::new(),
            },
        );
        drop(running);
        let this = self.clone();
        crate::stats::active_downloads_gauge().inc();
        self.tasks.spawn(async move {
            let result =
                run_download(&this.ctx, Arc::new(manifest), destination, &tx, cancel).await;
            // Taken under the same lock that adds to it: a request that comes
            // later finds no running download and copies the held file itself.
            let also_to = this
                .lock()
                .remove(&file_id)
                .map(|r| r.also_to)
                .unwrap_or_default();
            let mut failed_copies = Vec::new();
            if let Ok(done) = &result {
                for to in also_to {
                    if let Err(err) = copy_held(done.clone(), to.clone()).await {
                        tracing::warn!(file = %file_id, path = %to.display(), %err, "cannot copy a finished download");
                        failed_copies.push((to, Status::from(err)));
                    }
                }
            }
            crate::stats::active_downloads_gauge().dec();
            tx.send_modify(|p| p.failed_copies = failed_copies);
            tx.send_modify(|p| match result {
                Ok(path) => {
                    p.stage = Stage::Done;
                    p.have_bytes = p.total_bytes;
                    p.final_path = Some(path);
                    p.eta = None;
                }
                Err(err) => {
                    tracing::warn!(file = %p.file_id, %err, "download stopped");
                    p.stage = Stage::Failed;
                    p.failure = Some(Status::from(err));
                }
            });
        });
        rx
    }

    /// Stops the running download of `file`; false when none runs.
    pub fn cancel(&self, file: &FileId) -> bool {
        match self.lock().get(file) {
            Some(running) => {
                running.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every download and waits for their tasks to end.
    pub async fn shutdown(&self) {
        for running in self.lock().values() {
            running.cancel.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Runs one download to the end; returns the final path.
async fn run_download(
    ctx: &Arc<DownloadContext>,
    manifest: Arc<Manifest>,
    destination: PathBuf,
    progress: &watch::Sender<Progress>,
    cancel: CancellationToken,
) -> Result<PathBuf, Error> {
    let file_id = manifest.file_id();
    let part_path = ctx.partial_dir.join(format!("{file_id}.part"));
    let mut holding = ctx
        .holdings
        .start_partial((*manifest).clone(), &part_path, &destination)
        .await?;
    if holding.is_complete() {
        if let Some(done) = copy_from_held(ctx, &holding, &destination).await? {
            return Ok(done);
        }
        // The held copy was deleted, moved or edited: fetch it again.
        crate::integrity::withdraw(&ctx.session, &ctx.holdings, &holding).await;
        ctx.holdings.remove(&file_id).await?;
        holding = ctx
            .holdings
            .start_partial((*manifest).clone(), &part_path, &destination)
            .await?;
    }
    let state = holding.snapshot();
    if let Err(err) = crate::space::check_download(
        &ctx.partial_dir,
        &destination,
        manifest.size_bytes,
        held_bytes(&manifest, &state.bitfield),
    ) {
        if state.bitfield.count() == 0 {
            // Nothing was kept: leave no empty partial behind.
            let _ = ctx.holdings.remove(&file_id).await;
        }
        return Err(err);
    }
    let (part, existed) = PartFile::open(state.path.clone(), manifest.size_bytes).await?;
    if !existed && state.bitfield.count() > 0 {
        tracing::warn!(file = %file_id, "partial file vanished; starting over");
        ctx.holdings.reset_partial(&holding).await?;
    }
    let have = holding.snapshot().bitfield;
    let resumed_chunks = have.count();
    let have_bytes = held_bytes(&manifest, &have);
    progress.send_modify(|p| {
        p.resumed_chunks = resumed_chunks;
        p.have_bytes = have_bytes;
    });
    let shared = Arc::new(Shared {
        picker: Mutex::new(Picker::new(have, rand::random())),
        work_changed: Notify::new(),
        complete: Notify::new(),
        have_bytes: AtomicU64::new(have_bytes),
        meter: RateMeter::new(),
        ctx: ctx.clone(),
        holding: holding.clone(),
        manifest: manifest.clone(),
        part: part.clone(),
    });
    if !shared.is_complete() {
        progress.send_modify(|p| p.stage = Stage::Downloading);
        Swarm::new(shared.clone()).run(progress, &cancel).await?;
    }
    progress.send_modify(|p| {
        p.stage = Stage::Verifying;
        p.have_bytes = p.total_bytes;
        p.sources_in_use = 0;
    });
    if let Err(err) = crate::disk::finalize(part, manifest.file_hash, destination.clone()).await {
        if matches!(err, Error::Corrupt(_)) {
            ctx.holdings.reset_partial(&holding).await?;
        }
        return Err(err);
    }
    ctx.holdings.finish_download(&holding, &destination).await?;
    if let Some(peer_id) = ctx.session.peer_id() {
        let full = Bitfield::full(manifest.chunk_count());
        if let Err(err) = ctx
            .session
            .announce(&peer_id, file_id.as_str(), &full, true)
            .await
        {
            tracing::warn!(file = %file_id, %err, "cannot announce the finished download; the heartbeat will");
        }
    }
    tracing::info!(file = %file_id, path = %destination.display(), "download complete");
    Ok(destination)
}

/// Puts the complete file we hold at `destination`; `None` when our copy
/// turned out to be gone or changed, so it must be downloaded again.
async fn copy_from_held(
    ctx: &DownloadContext,
    holding: &Holding,
    destination: &Path,
) -> Result<Option<PathBuf>, Error> {
    if !ctx.holdings.verify(holding) {
        return Ok(None);
    }
    let held_at = holding.snapshot().path;
    if held_at == destination {
        return Ok(Some(held_at));
    }
    crate::space::check_copy(destination, holding.manifest.size_bytes)?;
    match copy_held(held_at, destination.to_path_buf()).await {
        Ok(()) if ctx.holdings.verify(holding) => Ok(Some(destination.to_path_buf())),
        Ok(()) => {
            // Changed while we copied it: the copy cannot be trusted.
            let _ = tokio::fs::remove_file(destination).await;
            Ok(None)
        }
        Err(_) if !ctx.holdings.verify(holding) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Copies a held, complete file to `to` (under a temporary name first).
async fn copy_held(from: PathBuf, to: PathBuf) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || crate::disk::copy_then_rename(&from, &to))
        .await
        .map_err(|e| Error::io("copy task failed", std::io::Error::other(e)))?
}

/// State shared by a download's coordinator and its workers.
struct Shared {
    picker: Mutex<Picker>,
    work_changed: Notify,
    complete: Notify,
    have_bytes: AtomicU64,
    meter: RateMeter,
    ctx: Arc<DownloadContext>,
    holding: Arc<Holding>,
    manifest: Arc<Manifest>,
    part: PartFile,
}

impl Shared {
    fn picker(&self) -> std::sync::MutexGuard<'_, Picker> {
        self.picker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_complete(&self) -> bool {
        self.picker().is_complete()
    }
}

/// How a source worker ended.
#[derive(Debug)]
enum WorkerEnd {
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

struct SourceSlot {
    peer_id: String,
}

/// The coordinator of one download's sources.
struct Swarm {
    shared: Arc<Shared>,
    workers: JoinSet<(SourceKey, WorkerEnd)>,
    active: HashMap<String, SourceKey>,
    slots: HashMap<SourceKey, SourceSlot>,
    banned: HashMap<String, Instant>,
    /// Sources that failed this download, with the last reason; those that
    /// cannot read the file or sent rejected chunks are never asked again.
    failures: HashMap<String, Failure>,
    next_key: SourceKey,
    /// When there was last reason to wait: a chunk arrived, or a source that
    /// has not failed was started. [`NO_SOURCE_GIVE_UP`] counts from here.
    last_hope: Instant,
    last_have_bytes: u64,
    last_announced: Option<(Instant, u32)>,
}

/// How a source failed this download.
#[derive(Debug, Clone)]
struct Failure {
    detail: String,
    /// It cannot read the file or sent data that does not match: asking it
    /// again will not help.
    hopeless: bool,
}

/// Why a download with no usable source gives up, naming what the sources
/// said (pure, for the unit tests).
fn give_up_message(failures: &HashMap<String, Failure>, missing_chunks: u32) -> String {
    let secs = NO_SOURCE_GIVE_UP.as_secs();
    let mut details: Vec<&str> = failures.values().map(|f| f.detail.as_str()).collect();
    details.sort_unstable();
    details.dedup();
    match failures.len() {
        0 => format!(
            "no online peer has offered the missing chunks for {secs} s; verified chunks are kept, try again later"
        ),
        n => format!(
            "{n} peer{} listed but none could serve the {missing_chunks} missing chunk{} for {secs} s ({}); the file may have been deleted or changed on them; verified chunks are kept, try again later",
            if n == 1 { " is" } else { "s are" },
            if missing_chunks == 1 { "" } else { "s" },
            details
                .iter()
                .take(2)
                .copied()
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

impl Swarm {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            workers: JoinSet::new(),
            active: HashMap::new(),
            slots: HashMap::new(),
            banned: HashMap::new(),
            failures: HashMap::new(),
            next_key: 1,
            last_hope: Instant::now(),
            last_have_bytes: 0,
            last_announced: None,
        }
    }

    /// Gives up when nothing hopeful happened for [`NO_SOURCE_GIVE_UP`].
    async fn check_give_up(&mut self) -> Result<(), Error> {
        let have_bytes = self.shared.have_bytes.load(Ordering::Relaxed);
        if have_bytes != self.last_have_bytes {
            self.last_have_bytes = have_bytes;
            self.last_hope = Instant::now();
        }
        if self.last_hope.elapsed() <= NO_SOURCE_GIVE_UP {
            return Ok(());
        }
        self.announce().await;
        let missing = self.shared.picker().wanted().count();
        Err(Error::NoSources(give_up_message(&self.failures, missing)))
    }

    async fn run(
        mut self,
        progress: &watch::Sender<Progress>,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let mut next_locate = tokio::time::Instant::now();
        let mut relocate_delay = RELOCATE_SOON;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shared.is_complete() {
                self.announce().await;
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    self.announce().await;
                    return Err(if self.shared.ctx.shutdown.is_cancelled() {
                        Error::ShuttingDown
                    } else {
                        Error::Cancelled
                    });
                }
                () = self.shared.complete.notified() => {}
                Some(joined) = self.workers.join_next() => {
                    let Ok((key, end)) = joined else { continue };
                    self.worker_ended(key, end).await?;
                    if self.active.is_empty() {
                        next_locate = next_locate.min(tokio::time::Instant::now() + relocate_delay);
                    }
                }
                () = tokio::time::sleep_until(next_locate) => {
                    self.locate().await;
                    self.check_give_up().await?;
                    if self.active.is_empty() {
                        next_locate = tokio::time::Instant::now() + relocate_delay;
                        relocate_delay = (relocate_delay * 2).min(RELOCATE_EVERY);
                    } else {
                        relocate_delay = RELOCATE_SOON;
                        next_locate = tokio::time::Instant::now() + RELOCATE_EVERY;
                    }
                }
                _ = tick.tick() => {
                    self.publish(progress);
                    self.maybe_announce().await;
                    self.check_give_up().await?;
                }
            }
        }
    }

    fn publish(&self, progress: &watch::Sender<Progress>) {
        let have_bytes = self.shared.have_bytes.load(Ordering::Relaxed);
        let rate_bps = self.shared.meter.rate_bps(RATE_WINDOW_SECS);
        progress.send_modify(|p| {
            p.have_bytes = have_bytes;
            p.rate_bps = rate_bps;
            p.sources_in_use = self.active.len() as u32;
            p.eta = (rate_bps > 0).then(|| {
                Duration::from_secs_f64(
                    p.total_bytes.saturating_sub(have_bytes) as f64 / rate_bps as f64,
                )
            });
        });
    }

    /// Announces the bitfield when it grew: at once for the first new chunk,
    /// then at most every [`ANNOUNCE_EVERY`].
    async fn maybe_announce(&mut self) {
        let count = self.shared.picker().have().count();
        let due = match self.last_announced {
            None => count > 0,
            Some((at, announced)) => count != announced && at.elapsed() >= ANNOUNCE_EVERY,
        };
        if due {
            self.announce().await;
        }
    }

    async fn announce(&mut self) {
        let Some(peer_id) = self.shared.ctx.session.peer_id() else {
            return;
        };
        let have = self.shared.picker().have().clone();
        if have.count() == 0 {
            return;
        }
        self.last_announced = Some((Instant::now(), have.count()));
        let file_id = self.shared.holding.file_id.as_str();
        if let Err(err) = self
            .shared
            .ctx
            .session
            .announce(&peer_id, file_id, &have, false)
            .await
        {
            tracing::debug!(%err, "cannot announce partial holdings");
        }
    }

    async fn locate(&mut self) {
        let ctx = &self.shared.ctx;
        let own = ctx.session.peer_id().unwrap_or_default();
        let wanted = self.shared.picker().wanted();
        let request = index_pb::LocateSourcesRequest {
            file_id: self.shared.holding.file_id.to_string(),
            peer_id: own.clone(),
            wanted: wanted.as_bytes().to_vec(),
            limit: MAX_SOURCES as u32,
        };
        let response = match ctx
            .session
            .call_index(|mut c, t| async move { c.locate_sources(with_bearer(request, &t)).await })
            .await
        {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(%err, "cannot locate sources; keeping the current ones");
                return;
            }
        };
        let chunks = self.shared.manifest.chunk_count();
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        let downloading = response
            .sources
            .iter()
            .filter(|s| !s.complete)
            .map(|s| s.peer_id.as_str());
        self.shared
            .picker()
            .set_stripe(Stripe::among(&own, downloading));
        for source in response.sources {
            if source.peer_id == own
                || self.banned.contains_key(&source.peer_id)
                || self
                    .failures
                    .get(&source.peer_id)
                    .is_some_and(|f| f.hopeless)
            {
                continue;
            }
            let holds = if source.complete {
                Bitfield::full(chunks)
            } else {
                match Bitfield::from_bytes(&source.bitfield, chunks) {
                    Ok(field) => field,
                    Err(err) => {
                        tracing::debug!(peer = %source.peer_id, %err, "ignoring a source with a bad bitfield");
                        continue;
                    }
                }
            };
            if let Some(&key) = self.active.get(&source.peer_id) {
                self.shared.picker().upsert_source(key, holds);
                self.shared.work_changed.notify_waiters();
                continue;
            }
            if self.active.len() >= MAX_SOURCES {
                continue;
            }
            let client = match ctx.peer_client(&source.address) {
                Ok(client) => client,
                Err(err) => {
                    tracing::debug!(peer = %source.peer_id, %err, "ignoring a source");
                    continue;
                }
            };
            let key = self.next_key;
            self.next_key += 1;
            if !self.failures.contains_key(&source.peer_id) && wanted.held().any(|i| holds.get(i)) {
                self.last_hope = Instant::now();
            }
            self.shared.picker().upsert_source(key, holds);
            self.active.insert(source.peer_id.clone(), key);
            self.slots.insert(
                key,
                SourceSlot {
                    peer_id: source.peer_id.clone(),
                },
            );
            tracing::debug!(peer = %source.peer_id, address = %source.address, complete = source.complete, "using source");
            let worker = Worker {
                key,
                source_peer_id: source.peer_id.clone(),
                shared: self.shared.clone(),
                client,
                complete: source.complete,
            };
            self.workers.spawn(async move { (key, worker.run().await) });
        }
    }

    async fn worker_ended(&mut self, key: SourceKey, end: WorkerEnd) -> Result<(), Error> {
        self.shared.picker().remove_source(key);
        self.shared.work_changed.notify_waiters();
        let Some(slot) = self.slots.remove(&key) else {
            return Ok(());
        };
        self.active.remove(&slot.peer_id);
        match end {
            WorkerEnd::NoWork => {}
            WorkerEnd::Busy => {
                tracing::debug!(peer = %slot.peer_id, "source busy; trying others");
                self.banned.insert(slot.peer_id, Instant::now() + BAN_BUSY);
            }
            WorkerEnd::Failed { reason, detail } => {
                tracing::warn!(peer = %slot.peer_id, %detail, "dropping a source");
                self.banned
                    .insert(slot.peer_id.clone(), Instant::now() + BAN_FAILED);
                let hopeless = matches!(
                    reason,
                    Some(index_pb::ReportReason::CannotRead | index_pb::ReportReason::Corrupt)
                );
                self.failures.insert(
                    slot.peer_id.clone(),
                    Failure {
                        detail: detail.clone(),
                        hopeless,
                    },
                );
                if let Some(reason) = reason {
                    self.report(&slot, reason, detail).await;
                }
            }
            WorkerEnd::Fatal(err) => return Err(err),
        }
        Ok(())
    }

    async fn report(&self, slot: &SourceSlot, reason: index_pb::ReportReason, detail: String) {
        let session = &self.shared.ctx.session;
        let request = index_pb::ReportSourceRequest {
            peer_id: session.peer_id().unwrap_or_default(),
            source_peer_id: slot.peer_id.clone(),
            file_id: self.shared.holding.file_id.to_string(),
            reason: reason as i32,
            detail,
        };
        if let Err(err) = session
            .call_index(|mut c, t| async move { c.report_source(with_bearer(request, &t)).await })
            .await
        {
            tracing::debug!(%err, "cannot report a source");
        }
    }
}

/// Fetches from one source until it has nothing more to give or fails.
struct Worker {
    key: SourceKey,
    /// Who the index says answers at the source's address; the peer token
    /// we send is good for this peer only.
    source_peer_id: String,
    shared: Arc<Shared>,
    client: PeerServiceClient<Channel>,
    complete: bool,
}

impl Worker {
    async fn run(self) -> WorkerEnd {
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

/// Where a download goes: `requested` as given (an absolute path, or an
/// existing directory to put `name` in), or `name` in the downloads dir.
/// A bare name or a relative path stays inside the downloads dir; an
/// existing file is refused unless `force`.
pub fn resolve_destination(
    downloads_dir: &Path,
    requested: &str,
    name: &str,
    force: bool,
) -> Result<PathBuf, Error> {
    p2p_services::manifest::validate_name(name)?;
    let requested = requested.trim();
    let path = if requested.is_empty() {
        downloads_dir.join(name)
    } else {
        let given = Path::new(requested);
        if given.is_absolute() {
            given.to_path_buf()
        } else {
            let escapes = given.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if escapes {
                return Err(Error::InvalidArgument(format!(
                    "destination {requested:?} would leave the downloads directory; give an absolute path or a plain name"
                )));
            }
            downloads_dir.join(given)
        }
    };
    let path = if path.is_dir() { path.join(name) } else { path };
    if path.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "destination {} is a directory",
            path.display()
        )));
    }
    if path.exists() && !force {
        return Err(Error::DestinationExists(path));
    }
    Ok(path)
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
    fn giving_up_names_what_the_sources_said() {
        let mut failures = HashMap::new();
        assert!(give_up_message(&failures, 3).starts_with("no online peer has offered"));
        for peer in ["a", "b"] {
            failures.insert(
                peer.to_string(),
                Failure {
                    detail: "this agent cannot read file f".into(),
                    hopeless: true,
                },
            );
        }
        assert_eq!(
            give_up_message(&failures, 1),
            "2 peers are listed but none could serve the 1 missing chunk for 60 s (this agent cannot read file f); the file may have been deleted or changed on them; verified chunks are kept, try again later"
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

    #[test]
    fn destination_defaults_to_the_downloads_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dest = resolve_destination(dir.path(), "", "a.txt", false).unwrap();
        assert_eq!(dest, dir.path().join("a.txt"));
    }

    #[test]
    fn names_that_escape_the_downloads_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve_destination(dir.path(), "../x", "a.txt", false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(resolve_destination(dir.path(), "", "../a", false).is_err());
        assert_eq!(
            resolve_destination(dir.path(), "sub/b.txt", "a.txt", false).unwrap(),
            dir.path().join("sub/b.txt")
        );
    }

    #[test]
    fn existing_destination_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        assert!(matches!(
            resolve_destination(dir.path(), "", "a.txt", false),
            Err(Error::DestinationExists(_))
        ));
        assert!(resolve_destination(dir.path(), "", "a.txt", true).is_ok());
        let abs = dir.path().to_string_lossy().into_owned();
        assert!(matches!(
            resolve_destination(dir.path(), &abs, "a.txt", false),
            Err(Error::DestinationExists(_))
        ));
    }
}
