//! The download engine: fetches a file from the swarm, several sources in
//! parallel, and puts the verified file in place.
//!
//! The data flow, top-down:
//! - this module: [`Downloads`] (one transfer per file, joined by later
//!   requests), [`run_download`] (resume state, space, then the swarm, then
//!   the whole-file check and the rename);
//! - [`coordinator`]: one download's sources: locating them, starting a
//!   worker per source, banning and reporting those that fail, progress and
//!   announcements;
//! - [`worker`]: one source: FetchChunks calls sized by its pace, every
//!   chunk verified, written and recorded;
//! - [`exchange`]: the downloader end of each source's holdings stream
//!   (`WatchHoldings`): its HAVEs and the peers it knows;
//! - [`tree`]: the whole-file hash built from the chunks' chaining values
//!   as they arrive, so the finished file is not read back.
//!
//! Ownership: [`Downloads`] owns one coordinator task per running download
//! (in a `TaskTracker`, each with a cancellation token that is a child of
//! the agent's shutdown token); each coordinator owns its source workers in
//! a `JoinSet`, so cancelling or finishing a download aborts its workers.

mod coordinator;
mod exchange;
mod framed;
mod tree;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_proto::index::v1 as index_pb;
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_services::client::MAX_MESSAGE_BYTES;
use p2p_services::manifest::folder::Selection;
use p2p_services::manifest::{Bitfield, FileId, Manifest};
use p2p_services::tls::ClientTls;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tonic::transport::Channel;

use crate::disk::PartFile;
use crate::error::Error;
use crate::holdings::{Holding, Holdings, held_bytes};
use crate::picker::Picker;
use crate::rate::RateMeter;
use crate::session::Session;
use crate::stats::Stats;

pub use coordinator::{NO_SOURCE_GIVE_UP, locate_with_manifest};
pub use worker::{PIPELINE_DEPTH, STALL_TIMEOUT};

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
    /// Whether chunks are fetched as `p2p-chunks/1` frames where a source
    /// offers them (needs TLS).
    framing: bool,
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
            framing: false,
        }
    }

    /// Also fetches chunks as `p2p-chunks/1` frames, and watches holdings
    /// as `p2p-holdings/1` frames, from sources that offer them, falling
    /// back to FetchChunks and WatchHoldings for the rest.
    pub fn with_framing(mut self, framing: bool) -> Self {
        self.framing = framing && self.session.config().peer_tls.is_tls();
        self
    }

    /// A pool of framed connections to the source at `address`, when
    /// this agent uses the framing.
    pub(crate) fn framed_pool(&self, address: &str) -> Option<framed::Pool> {
        self.framing
            .then(|| framed::Pool::new(address.to_string(), self.session.config().peer_tls.clone()))
    }

    /// The address of a source and how to reach it over TLS, for a
    /// `p2p-holdings/1` stream, when this agent uses the framings.
    pub(crate) fn framed_watch(&self, address: &str) -> Option<(String, ClientTls)> {
        self.framing
            .then(|| (address.to_string(), self.session.config().peer_tls.clone()))
    }

    /// One channel per source address, reused across calls and downloads.
    pub(crate) fn peer_channel(&self, address: &str) -> Result<Channel, Error> {
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
        Ok(channel)
    }
}

/// `pause` ±25 %, so sources and downloaders that backed off together do
/// not all come back at the same moment.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
}

/// The FetchChunks client for a source's channel: chunk-sized messages.
fn peer_client(channel: Channel) -> PeerServiceClient<Channel> {
    PeerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

struct Running {
    progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
    destination: PathBuf,
    /// Destinations of later requests for the same file: each gets its own
    /// copy of the verified file once the one transfer is done.
    also_to: Vec<PathBuf>,
    /// The part of a folder this download fetches (`None`: all of it).
    only: Option<String>,
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
    ///
    /// `located` is the index's answer to [`locate_with_manifest`], when
    /// the caller asked it: the download's first sources.
    pub fn start(
        self: &Arc<Self>,
        manifest: Manifest,
        destination: PathBuf,
        located: Option<index_pb::LocateSourcesResponse>,
        only: Option<Selection>,
    ) -> Result<watch::Receiver<Progress>, Error> {
        let file_id = manifest.file_id();
        let mut running = self.lock();
        let base = only.as_ref().map(|o| o.base.clone());
        if let Some(existing) = running.get_mut(&file_id) {
            if existing.only != base {
                return Err(Error::InvalidArgument(format!(
                    "another part of {} is downloading right now; get this part once it is done, or cancel it (`p2p cancel`)",
                    manifest.name
                )));
            }
            if existing.destination != destination && !existing.also_to.contains(&destination) {
                existing.also_to.push(destination);
            }
            return Ok(existing.progress.clone());
        }
        let total_bytes = match (&only, &manifest.folder) {
            (Some(selection), Some(folder)) => selection
                .files
                .iter()
                .map(|&i| folder.files()[i].size_bytes)
                .sum(),
            _ => manifest.size_bytes,
        };
        let (tx, rx) = watch::channel(Progress {
            stage: Stage::Locating,
            file_id: file_id.clone(),
            name: match &only {
                Some(selection) => format!("{}/{}", manifest.name, selection.base),
                None => manifest.name.clone(),
            },
            total_bytes,
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
                only: base,
            },
        );
        drop(running);
        let this = self.clone();
        crate::stats::active_downloads_gauge().inc();
        let manifest = Arc::new(manifest);
        self.tasks.spawn(async move {
            let result = run_download(
                &this.ctx,
                manifest.clone(),
                destination,
                located,
                only.clone(),
                &tx,
                cancel,
            )
            .await;
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
                    let copied = match &manifest.folder {
                        // The finished copy is laid out as every
                        // destination of this request: copy it as it is.
                        Some(folder) if only.as_ref().is_none_or(|o| !o.is_file) => {
                            let (folder, from, to, only) =
                                (folder.clone(), done.clone(), to.clone(), only.clone());
                            tokio::task::spawn_blocking(move || {
                                crate::disk::folder::copy_tree(&folder, only.as_ref(), &from, &to, true)
                            })
                            .await
                            .map_err(|e| Error::io("copy task failed", std::io::Error::other(e)))
                            .and_then(|r| r)
                        }
                        _ => copy_held(done.clone(), to.clone()).await,
                    };
                    if let Err(err) = copied {
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
        Ok(rx)
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
    located: Option<index_pb::LocateSourcesResponse>,
    only: Option<Selection>,
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
        if let Some(done) = copy_from_held(ctx, &holding, &destination, only.as_ref()).await? {
            return Ok(done);
        }
        // The held copy was deleted, moved or edited: fetch it again.
        crate::holdings::integrity::withdraw(&*ctx.session, &ctx.holdings, &holding).await;
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
    let (part, existed) = PartFile::open(state.path.clone(), manifest.part_len()).await?;
    if !existed && state.bitfield.count() > 0 {
        tracing::warn!(file = %file_id, "partial file vanished; starting over");
        ctx.holdings.reset_partial(&holding).await?;
    }
    let have = holding.bitfield();
    let resumed_chunks = have.count();
    // A part of a folder: the chunks of the rest count as had for the
    // picker, so the swarm asks only for the part's.
    let mut picker_have = have.clone();
    let mut have_bytes = held_bytes(&manifest, &have);
    if let (Some(selection), Some(folder)) = (&only, &manifest.folder) {
        let mut wanted = Bitfield::empty(manifest.chunk_count());
        for &file in &selection.files {
            for chunk in folder.chunks_of(file) {
                wanted.set(chunk);
            }
        }
        for chunk in wanted.missing().collect::<Vec<_>>() {
            picker_have.set(chunk);
        }
        have_bytes = wanted
            .held()
            .filter(|&i| have.get(i))
            .filter_map(|i| manifest.chunk_len(i))
            .map(u64::from)
            .sum();
    }
    progress.send_modify(|p| {
        p.resumed_chunks = resumed_chunks;
        p.have_bytes = have_bytes;
    });
    let shared = Arc::new(Shared {
        picker: Mutex::new(Picker::new(picker_have, rand::random())),
        work_changed: Notify::new(),
        complete: Notify::new(),
        have_bytes: AtomicU64::new(have_bytes),
        meter: RateMeter::new(),
        ctx: ctx.clone(),
        holding: holding.clone(),
        manifest: manifest.clone(),
        part: part.clone(),
        tree: tree::ChunkTree::for_manifest(&manifest),
    });
    if !shared.is_complete() {
        progress.send_modify(|p| p.stage = Stage::Downloading);
        coordinator::Swarm::new(shared.clone(), located)
            .run(progress, &cancel)
            .await?;
    }
    progress.send_modify(|p| {
        p.stage = Stage::Verifying;
        p.have_bytes = p.total_bytes;
        p.sources_in_use = 0;
    });
    let finalized = if manifest.folder.is_some() {
        if only.is_some() {
            ctx.holdings.flush(&holding, &part).await?;
        }
        crate::disk::folder::finalize_folder(
            part,
            manifest.clone(),
            destination.clone(),
            only.clone(),
        )
        .await
    } else {
        let computed = whole_file_hash(&shared, &state.path).await?;
        crate::disk::finalize(part, manifest.file_hash, computed, destination.clone()).await
    };
    if let Err(err) = finalized {
        if matches!(err, Error::Corrupt(_)) {
            ctx.holdings.reset_partial(&holding).await?;
        }
        return Err(err);
    }
    if only.is_some() {
        // The rest of the folder is still missing: the holding stays
        // partial, serving the chunks it has.
        tracing::info!(file = %file_id, path = %destination.display(), "part of a folder downloaded");
        return Ok(destination);
    }
    ctx.holdings.finish_download(&holding, &destination).await?;
    if let Some(peer_id) = ctx.session.peer_id() {
        let full = Bitfield::full(manifest.chunk_count());
        if let Err(err) = ctx.session.announce(&peer_id, &file_id, &full, true).await {
            tracing::warn!(file = %file_id, %err, "cannot announce the finished download; the heartbeat retries");
        }
    }
    tracing::info!(file = %file_id, path = %destination.display(), "download complete");
    Ok(destination)
}

/// The whole file's hash from the chunks' chaining values, reading only the
/// chunks resumed from an earlier run; `None` when the file must be read.
async fn whole_file_hash(
    shared: &Shared,
    part_path: &Path,
) -> Result<Option<p2p_services::manifest::Hash>, Error> {
    let Some(tree) = &shared.tree else {
        return Ok(None);
    };
    for index in tree.missing() {
        let Some(len) = shared.manifest.chunk_len(index) else {
            return Ok(None);
        };
        let offset = shared.manifest.chunk_offset(index);
        let data = crate::disk::read_chunk(part_path.to_path_buf(), offset, len).await?;
        tree.record(index, None, &data);
    }
    Ok(tree.root())
}

/// Puts the complete file we hold at `destination`; `None` when our copy
/// turned out to be gone or changed, so it must be downloaded again.
async fn copy_from_held(
    ctx: &DownloadContext,
    holding: &Holding,
    destination: &Path,
    only: Option<&Selection>,
) -> Result<Option<PathBuf>, Error> {
    if !ctx.holdings.verify(holding) {
        return Ok(None);
    }
    let held_at = holding.snapshot().path;
    if held_at == destination {
        return Ok(Some(held_at));
    }
    crate::space::check_copy(destination, holding.manifest.size_bytes)?;
    let copied = match holding.manifest.folder.clone() {
        Some(folder) => {
            let (to, only) = (destination.to_path_buf(), only.cloned());
            tokio::task::spawn_blocking(move || {
                crate::disk::folder::copy_tree(&folder, only.as_ref(), &held_at, &to, false)
            })
            .await
            .map_err(|e| Error::io("copy task failed", std::io::Error::other(e)))?
        }
        None => copy_held(held_at, destination.to_path_buf()).await,
    };
    match copied {
        Ok(()) if ctx.holdings.verify(holding) => Ok(Some(destination.to_path_buf())),
        Ok(()) => {
            // Changed while we copied it: the copy cannot be trusted.
            if holding.manifest.folder.is_some() {
                let _ = tokio::fs::remove_dir_all(destination).await;
            } else {
                let _ = tokio::fs::remove_file(destination).await;
            }
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
pub(crate) struct Shared {
    picker: Mutex<Picker>,
    work_changed: Notify,
    complete: Notify,
    have_bytes: AtomicU64,
    meter: RateMeter,
    ctx: Arc<DownloadContext>,
    holding: Arc<Holding>,
    manifest: Arc<Manifest>,
    part: PartFile,
    /// The whole-file hash as chunks arrive (`None`: read the file back).
    tree: Option<tree::ChunkTree>,
}

impl Shared {
    pub(crate) fn picker(&self) -> std::sync::MutexGuard<'_, Picker> {
        self.picker.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.picker().is_complete()
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
