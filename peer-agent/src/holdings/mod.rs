//! The held-file state: what this agent holds, and the only code that
//! changes it. Both the chunk server ([`crate::upload`]) and the download
//! engine ([`crate::download`]) sit above it; it knows neither, nor the
//! session.
//!
//! - this module: [`Holdings`], the in-memory view of every file held
//!   (complete or partial, its verified chunks, the peers known to hold it),
//!   written through to the store. The chunk server consults it on every
//!   request and the download engine marks chunks in it as they are
//!   verified, so a partial holder serves its chunks while it still
//!   downloads.
//! - [`store`]: the agent's own SQLite database, the only SQL.
//! - [`fingerprint`]: what a held file looked like on disk; a shared or
//!   downloaded file that no longer matches its [`Fingerprint`] is marked
//!   with a [`Problem`] and served no more.
//! - [`integrity`]: the sweep that checks every holding against the disk
//!   and withdraws those that changed.

pub mod fingerprint;
pub mod integrity;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use p2p_services::manifest::{Bitfield, FileId, Manifest};
use tokio::sync::{Notify, watch};

use self::fingerprint::{Fingerprint, Problem, compare};
use self::store::{Kind, LocalFile, Store};
use crate::disk::PartFile;
use crate::error::Error;

/// How long a failed read of a partial waits for a finishing download to
/// point its holding at the renamed file (see [`Holding::read_chunk`]).
pub const MOVE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// One file the agent holds, complete or not.
#[derive(Debug)]
pub struct Holding {
    /// The file's id.
    pub file_id: FileId,
    /// The file's manifest.
    pub manifest: Arc<Manifest>,
    state: Mutex<HoldingState>,
    /// Bumped whenever the bitfield changes, for holdings streams.
    changes: watch::Sender<u64>,
    peers: Mutex<PeerBook>,
    /// The peer book's version, bumped (under the book's lock) whenever it
    /// changes, so holdings streams pass new peers on at once and the
    /// download learns of peers that watch us.
    peer_changes: watch::Sender<u64>,
    /// When verified chunks were last written to the store, and whether
    /// some have been verified since (see [`Holdings::mark_verified`]).
    saved: Mutex<(Option<std::time::Instant>, bool)>,
    /// When a folder's files last all matched (see [`FOLDER_CHECK_EVERY`]).
    folder_checked: Mutex<Option<std::time::Instant>>,
}

/// A held folder's files are all `stat`ed at most this often by
/// [`Holdings::verify`] (a folder of 10,000 files would otherwise cost
/// 10,000 `stat`s per chunk served). A file edited within this window may
/// still be read once; its downloader's hash check refuses the chunk.
pub const FOLDER_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Verified chunks are written to the store, after their data is synced to
/// disk, at most this often per file while downloading (and when the
/// download stops): a crash costs at most this much refetching, a download
/// does not write its whole bitfield once per chunk, and its final flush
/// finds at most this long's writes still to sync.
pub const SAVE_VERIFIED_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A peer that holds (some of) a file, as this agent knows it: from the
/// index, from a holdings stream, or from a caller of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    /// Its peer id.
    pub peer_id: String,
    /// Where its PeerService answers, `ip:port` or `host:port`.
    pub address: String,
}

/// Most peers remembered per file: the newest win.
pub const MAX_KNOWN_PEERS: usize = 32;

/// The peers known for one file, newest first (its version is
/// [`Holding::subscribe_peers`]'s value).
#[derive(Debug, Default)]
struct PeerBook {
    peers: VecDeque<KnownPeer>,
}

/// The changing part of a [`Holding`].
#[derive(Debug, Clone)]
pub struct HoldingState {
    /// Where chunks are read from.
    pub path: PathBuf,
    /// Where a partial goes once complete.
    pub destination: Option<PathBuf>,
    /// How the file is held.
    pub kind: Kind,
    /// Verified chunks.
    pub bitfield: Bitfield,
    /// What the file at `path` looked like when recorded (not for partials).
    pub fingerprint: Option<Fingerprint>,
    /// Set once the file on disk no longer matches `fingerprint`.
    pub problem: Option<Problem>,
    /// Whether the index was told we no longer hold it.
    pub withdrawn: bool,
}

impl HoldingState {
    /// Whether chunk `index` is verified here. Nothing is held of a file
    /// that changed on disk.
    fn holds(&self, index: u32) -> bool {
        self.problem.is_none() && self.bitfield.get(index)
    }
}

impl Holding {
    /// A copy of the current state.
    pub fn snapshot(&self) -> HoldingState {
        self.lock().clone()
    }

    /// The verified chunks (without copying the rest of the state, as
    /// [`Holding::snapshot`] does).
    pub fn bitfield(&self) -> Bitfield {
        self.lock().bitfield.clone()
    }

    /// Whether chunk `index` is held, without copying the path as
    /// [`Holding::chunk_source`] does, for every chunk a source serves.
    pub fn holds(&self, index: u32) -> bool {
        self.lock().holds(index)
    }

    /// Whether chunk `index` is held and where the file is.
    pub fn chunk_source(&self, index: u32) -> Option<PathBuf> {
        let state = self.lock();
        state.holds(index).then(|| state.path.clone())
    }

    /// Reads chunk `index` from wherever the file is now; `Ok(None)` when
    /// it is not held. A download that finishes renames its `.part` file
    /// into place and only then points the holding at it
    /// ([`Holdings::finish_download`]), so a read of a partial that fails
    /// waits up to [`MOVE_GRACE`] for the holding to move and reads again
    /// there. Without that, every source finishing its own download failed
    /// the chunks it was serving in that moment, and its downloaders
    /// dropped it just when the endgame needed it.
    pub async fn read_chunk(&self, index: u32) -> Result<Option<bytes::Bytes>, Error> {
        let Some(place) = self.manifest.chunk_place(index) else {
            return Ok(None);
        };
        let len = place.len;
        let offset = self.manifest.chunk_offset(index);
        let mut changes = self.subscribe();
        let (path, partial) = {
            let state = self.lock();
            if state.problem.is_some() || !state.bitfield.get(index) {
                return Ok(None);
            }
            (state.path.clone(), state.kind == Kind::Partial)
        };
        if !partial && let (Some(file), Some(folder)) = (place.file, &self.manifest.folder) {
            // A complete folder is read from the file the chunk belongs to.
            let file_path = crate::disk::folder::inside(&path, &folder.files()[file].path)?;
            return crate::disk::read_chunk(file_path, place.offset, len)
                .await
                .map(Some);
        }
        let err = match crate::disk::read_chunk(path.clone(), offset, len).await {
            Ok(data) => return Ok(Some(data)),
            Err(err) if partial => err,
            Err(err) => return Err(err),
        };
        let moved = tokio::time::timeout(MOVE_GRACE, async {
            loop {
                match self.chunk_source(index) {
                    Some(now) if now != path => return Some(now),
                    Some(_) => {}
                    None => return None,
                }
                changes.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten();
        match moved {
            // Moved into place: read it there (a folder from its files).
            Some(_) => Box::pin(self.read_chunk(index)).await,
            None => Err(err),
        }
    }

    /// What is wrong with the file on disk, in the user's words.
    pub fn problem(&self) -> Option<&'static str> {
        let state = self.lock();
        state.problem.map(|p| describe(p, state.kind))
    }

    /// Whether the file changed on disk and the index was not told yet.
    pub fn needs_withdrawing(&self) -> bool {
        let state = self.lock();
        state.problem.is_some() && !state.withdrawn
    }

    /// Notes that the index was told we no longer hold this file.
    pub fn mark_withdrawn(&self) {
        self.lock().withdrawn = true;
    }

    /// Whether verified chunks wait to be written to the store and the
    /// last write is [`SAVE_VERIFIED_EVERY`] old.
    pub fn save_due(&self) -> bool {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.1 && saved.0.is_none_or(|at| at.elapsed() >= SAVE_VERIFIED_EVERY)
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.lock().kind != Kind::Partial
    }

    /// Bytes of verified chunks.
    pub fn held_bytes(&self) -> u64 {
        held_bytes(&self.manifest, &self.lock().bitfield)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HoldingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes whenever the bitfield does (a chunk verified, a reset, the
    /// download finished).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Remembers a peer that holds this file (moving it to the front).
    pub fn note_peer(&self, peer: KnownPeer) {
        let mut book = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if book.peers.front() == Some(&peer) {
            return;
        }
        book.peers
            .retain(|p| p.peer_id != peer.peer_id && p.address != peer.address);
        book.peers.push_front(peer);
        book.peers.truncate(MAX_KNOWN_PEERS);
        self.peer_changes.send_modify(|v| *v += 1);
    }

    /// Forgets a peer that failed us.
    pub fn forget_peer(&self, peer_id: &str) {
        let mut book = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let before = book.peers.len();
        book.peers.retain(|p| p.peer_id != peer_id);
        if book.peers.len() != before {
            self.peer_changes.send_modify(|v| *v += 1);
        }
    }

    /// Changes whenever the peer book does (its value is the book's
    /// version, as [`Self::known_peers`] returns it).
    pub fn subscribe_peers(&self) -> watch::Receiver<u64> {
        self.peer_changes.subscribe()
    }

    /// The book's version and up to `max` known peers, newest first, but
    /// not `except`.
    pub fn known_peers(&self, except: Option<&str>, max: usize) -> (u64, Vec<KnownPeer>) {
        let book = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let peers = book
            .peers
            .iter()
            .filter(|p| Some(p.peer_id.as_str()) != except)
            .take(max)
            .cloned()
            .collect();
        (*self.peer_changes.borrow(), peers)
    }

    fn record(&self) -> LocalFile {
        let state = self.lock();
        LocalFile {
            manifest: (*self.manifest).clone(),
            path: state.path.clone(),
            destination: state.destination.clone(),
            kind: state.kind,
            bitfield: state.bitfield.clone(),
            fingerprint: state.fingerprint,
        }
    }
}

/// What the user reads about a held file of `kind` with `problem`.
fn describe(problem: Problem, kind: Kind) -> &'static str {
    match (problem, kind) {
        (Problem::Changed, Kind::Shared) => "changed since shared: share it again",
        (Problem::Gone, Kind::Shared) => "deleted or moved since shared: share it again",
        (Problem::Changed, _) => "changed since downloaded: download it again",
        (Problem::Gone, _) => "deleted or moved since downloaded: download it again",
    }
}

/// What the held file or folder at `path` looks like now (for a folder,
/// every file of its manifest: [`fingerprint::of_folder`]).
pub fn fingerprint_of(manifest: &Manifest, path: &Path) -> std::io::Result<Fingerprint> {
    match &manifest.folder {
        None => Fingerprint::of(path),
        Some(folder) => {
            fingerprint::of_folder(path, folder.files().iter().map(|f| f.path.as_str()))
        }
    }
}

/// Total length of the chunks marked in `bitfield`.
pub fn held_bytes(manifest: &Manifest, bitfield: &Bitfield) -> u64 {
    bitfield
        .held()
        .filter_map(|i| manifest.chunk_len(i))
        .map(u64::from)
        .sum()
}

/// Every holding, by file id.
#[derive(Debug)]
pub struct Holdings {
    store: Store,
    map: RwLock<HashMap<FileId, Arc<Holding>>>,
    problem_found: Notify,
}

impl Holdings {
    /// Loads what the store remembers.
    pub async fn load(store: Store) -> Result<Self, Error> {
        let mut map = HashMap::new();
        for mut file in store.all().await? {
            if file.kind != Kind::Partial && file.fingerprint.is_none() {
                // Recorded before fingerprints: trust the file as it is now.
                file.fingerprint = fingerprint_of(&file.manifest, &file.path).ok();
                if file.fingerprint.is_some() {
                    store.save(&file).await?;
                }
            }
            let file_id = file.manifest.file_id();
            map.insert(file_id.clone(), Arc::new(holding_of(file)));
        }
        Ok(Self {
            store,
            map: RwLock::new(map),
            problem_found: Notify::new(),
        })
    }

    /// Checks a shared or downloaded file against its fingerprint (one
    /// `stat`); marks it, and wakes the sweep, when it no longer matches.
    /// Returns whether it can still be served. Partials are not checked:
    /// their `.part` file is ours and changes as it grows.
    pub fn verify(&self, holding: &Holding) -> bool {
        let (path, recorded) = {
            let state = holding.lock();
            if state.problem.is_some() {
                return false;
            }
            match (state.kind, state.fingerprint) {
                (Kind::Partial, _) | (_, None) => return true,
                (_, Some(recorded)) => (state.path.clone(), recorded),
            }
        };
        let folder = holding.manifest.folder.is_some();
        if folder {
            let checked = holding
                .folder_checked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if checked.is_some_and(|at| at.elapsed() < FOLDER_CHECK_EVERY) {
                return true;
            }
        }
        let Some(problem) = compare(&recorded, fingerprint_of(&holding.manifest, &path)) else {
            if folder {
                *holding
                    .folder_checked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            }
            return true;
        };
        holding.lock().problem = Some(problem);
        self.problem_found.notify_one();
        false
    }

    /// Resolves when [`Holdings::verify`] finds a problem.
    pub async fn problem_found(&self) {
        self.problem_found.notified().await;
    }

    /// The holding of `file`, if any.
    pub fn get(&self, file: &FileId) -> Option<Arc<Holding>> {
        self.read().get(file).cloned()
    }

    /// Every holding.
    pub fn all(&self) -> Vec<Arc<Holding>> {
        self.read().values().cloned().collect()
    }

    /// Records a file shared in place from `path`, as it was (`fingerprint`)
    /// when it was hashed. Replaces an earlier record of the same content.
    pub async fn add_shared(
        &self,
        manifest: Manifest,
        path: &Path,
        fingerprint: Fingerprint,
    ) -> Result<Arc<Holding>, Error> {
        let file = LocalFile {
            bitfield: Bitfield::full(manifest.chunk_count()),
            manifest,
            path: path.to_path_buf(),
            destination: None,
            kind: Kind::Shared,
            fingerprint: Some(fingerprint),
        };
        self.insert(file).await
    }

    /// The partial holding for a download into `part_path`: the existing
    /// one (with its verified chunks) or a new, empty one.
    pub async fn start_partial(
        &self,
        manifest: Manifest,
        part_path: &Path,
        destination: &Path,
    ) -> Result<Arc<Holding>, Error> {
        if let Some(existing) = self.get(&manifest.file_id()) {
            let changed = {
                let mut state = existing.lock();
                let changed = state.destination.as_deref() != Some(destination);
                state.destination = Some(destination.to_path_buf());
                changed
            };
            if changed {
                self.store.save(&existing.record()).await?;
            }
            return Ok(existing);
        }
        let file = LocalFile {
            bitfield: Bitfield::empty(manifest.chunk_count()),
            manifest,
            path: part_path.to_path_buf(),
            destination: Some(destination.to_path_buf()),
            kind: Kind::Partial,
            fingerprint: None,
        };
        self.insert(file).await
    }

    /// Marks a verified chunk (already written): it is served and streamed
    /// to watchers at once, and persisted (so a restarted agent does not
    /// fetch it again) by the download's [`Holdings::flush`], on its timer
    /// when [`Holding::save_due`] and when it stops.
    pub fn mark_verified(&self, holding: &Holding, index: u32) {
        {
            let mut state = holding.lock();
            if state.bitfield.get(index) {
                return;
            }
            state.bitfield.set(index);
        }
        holding.changed();
        holding.saved.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
    }

    /// Writes verified chunks not yet in the store, once their data in
    /// `part` is durable: the chunks recorded are those verified before the
    /// sync began, so the store never lists a chunk that a crash could
    /// still lose (a resume would trust it, and only the whole-file check
    /// at the end would find the hole, and discard the download).
    pub async fn flush(&self, holding: &Holding, part: &PartFile) -> Result<(), Error> {
        {
            let mut saved = holding.saved.lock().unwrap_or_else(|e| e.into_inner());
            if !saved.1 {
                return Ok(());
            }
            *saved = (Some(std::time::Instant::now()), false);
        }
        let bitfield = holding.lock().bitfield.clone();
        part.sync_data().await?;
        self.store
            .save_verified_chunks(&holding.file_id, &bitfield)
            .await
    }

    /// Forgets every verified chunk of a partial (its data turned out bad
    /// or its file vanished).
    pub async fn reset_partial(&self, holding: &Holding) -> Result<(), Error> {
        let bitfield = {
            let mut state = holding.lock();
            state.bitfield = Bitfield::empty(holding.manifest.chunk_count());
            state.bitfield.clone()
        };
        holding.changed();
        self.store
            .save_verified_chunks(&holding.file_id, &bitfield)
            .await
    }

    /// Turns a finished partial into a downloaded file served from `path`,
    /// fingerprinted as it is now.
    pub async fn finish_download(&self, holding: &Holding, path: &Path) -> Result<(), Error> {
        let fingerprint = fingerprint_of(&holding.manifest, path)
            .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
        {
            let mut state = holding.lock();
            state.path = path.to_path_buf();
            state.destination = None;
            state.kind = Kind::Downloaded;
            state.bitfield = Bitfield::full(holding.manifest.chunk_count());
            state.fingerprint = Some(fingerprint);
            state.problem = None;
            state.withdrawn = false;
        }
        holding.changed();
        self.store.save(&holding.record()).await
    }

    /// Forgets a holding; returns it so the caller can delete our files.
    pub async fn remove(&self, file: &FileId) -> Result<Option<Arc<Holding>>, Error> {
        let removed = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(file);
        self.store.forget(file).await?;
        Ok(removed)
    }

    async fn insert(&self, file: LocalFile) -> Result<Arc<Holding>, Error> {
        self.store.save(&file).await?;
        let file_id = file.manifest.file_id();
        let holding = Arc::new(holding_of(file));
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file_id, holding.clone());
        Ok(holding)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<FileId, Arc<Holding>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn holding_of(file: LocalFile) -> Holding {
    Holding {
        file_id: file.manifest.file_id(),
        manifest: Arc::new(file.manifest),
        state: Mutex::new(HoldingState {
            path: file.path,
            destination: file.destination,
            kind: file.kind,
            bitfield: file.bitfield,
            fingerprint: file.fingerprint,
            problem: None,
            withdrawn: false,
        }),
        changes: watch::Sender::new(0),
        peers: Mutex::new(PeerBook::default()),
        peer_changes: watch::Sender::new(0),
        saved: Mutex::new((None, false)),
        folder_checked: Mutex::new(None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::Duration;

    use super::*;

    /// A partial holding of the file `bytes`, chunk 0 verified, its `.part`
    /// file in `dir`.
    async fn partial(dir: &Path, bytes: &[u8]) -> (Holdings, Arc<Holding>, PathBuf, PathBuf) {
        let source = dir.join("source.bin");
        std::fs::write(&source, bytes).unwrap();
        let manifest = crate::disk::hash_into_manifest(
            source.clone(),
            "f.bin".into(),
            "application/octet-stream".into(),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
        let holdings = Holdings::load(Store::open(dir).await.unwrap())
            .await
            .unwrap();
        let (part, dest) = (dir.join("f.part"), dir.join("f.bin"));
        std::fs::copy(&source, &part).unwrap();
        let holding = holdings
            .start_partial(manifest, &part, &dest)
            .await
            .unwrap();
        holdings.mark_verified(&holding, 0);
        (holdings, holding, part, dest)
    }

    #[tokio::test]
    async fn a_read_racing_a_finishing_download_reads_the_renamed_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (holdings, holding, part, dest) = partial(dir.path(), &bytes).await;
        // The download has renamed its .part file but not yet moved the
        // holding: a read now finds no file at the path it was given.
        std::fs::rename(&part, &dest).unwrap();
        let finish = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            holdings.finish_download(&holding, &dest).await.unwrap();
        };
        let (read, ()) = tokio::join!(holding.read_chunk(0), finish);
        let len = holding.manifest.chunk_len(0).unwrap() as usize;
        assert_eq!(&read.unwrap().unwrap()[..], &bytes[..len]);
    }

    #[tokio::test]
    async fn a_partial_whose_file_is_gone_fails_with_the_real_cause() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![7u8; 1_000_000];
        let (_holdings, holding, part, _dest) = partial(dir.path(), &bytes).await;
        std::fs::remove_file(&part).unwrap();
        let err = holding.read_chunk(0).await.unwrap_err().to_string();
        assert!(err.contains("f.part"), "{err}");
        assert!(
            holding.read_chunk(1).await.unwrap().is_none(),
            "chunk 1 was never verified"
        );
    }

    #[tokio::test]
    async fn verified_chunks_reach_the_store_by_a_flush_that_syncs_the_part_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![9u8; 1_000_000];
        let (holdings, holding, part_path, _dest) = partial(dir.path(), &bytes).await;
        let size = holding.manifest.size_bytes;
        let (part, existed) = PartFile::open(part_path, size).await.unwrap();
        assert!(existed);
        assert!(holding.save_due(), "a verified chunk waits to be saved");
        holdings.flush(&holding, &part).await.unwrap();
        assert!(!holding.save_due(), "nothing left to save");
        holdings.mark_verified(&holding, 1);
        assert!(
            !holding.save_due(),
            "the next save waits {SAVE_VERIFIED_EVERY:?} after the last"
        );
        let reloaded = Holdings::load(Store::open(dir.path()).await.unwrap())
            .await
            .unwrap();
        let saved = reloaded.get(&holding.file_id).unwrap().bitfield();
        assert!(
            saved.get(0) && !saved.get(1),
            "only the flushed chunk is on record"
        );
        holdings.flush(&holding, &part).await.unwrap();
        let reloaded = Holdings::load(Store::open(dir.path()).await.unwrap())
            .await
            .unwrap();
        assert!(reloaded.get(&holding.file_id).unwrap().bitfield().get(1));
    }
}
