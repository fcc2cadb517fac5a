//! What a replica remembers between calls so the hot paths read less:
//!
//! - **peer owners** (`peer_id` → user id): fixed when the peer first
//!   registers and never changed or deleted, so kept until the cache is
//!   full (then cleared).
//! - **files** (`file_id` → chunk count): a file id is derived from the
//!   content, so its chunk count never changes; whether the file still
//!   exists does, so an entry counts for [`FILE_TTL`] only (a deletion
//!   through another replica is seen within that) and a deletion through
//!   this one drops it at once.
//! - **manifests**: immutable for a file id; kept up to
//!   [`MAX_MANIFEST_HASH_BYTES`] of chunk hashes. Only used after the
//!   file's existence was read from the database in the same call.
//!
//! - **sources** (`file_id` → the online holders `LocateSources` ranks,
//!   with their bitfields, load and recent reports): read from the database
//!   at most once per [`SOURCES_TTL`] per file, and dropped at once when
//!   this replica changes the file's holders or reports (a new or complete
//!   holder, a withdrawal, a report, a deletion). So a replica offers what
//!   the database said at most [`SOURCES_TTL`] ago: a holder another
//!   replica wrote, a lease that lapsed or a load another replica flushed
//!   is seen within that plus the writer's flush interval.
//!
//! - **counts** (a listing filter → how many files it matches): kept for
//!   the files' generation they were counted in (see
//!   [`crate::store::Store::files_generation`]), which the database bumps
//!   on every change that could alter them, whoever makes it. Up to
//!   [`MAX_COUNTS`] filters (then cleared).
//!
//! Who is online and who holds what is otherwise always read from the
//! database (plus this replica's unflushed writes, see [`crate::batch`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_services::manifest::{FileId, Manifest};

use crate::listing::Filter;
use crate::peer::PeerId;
use crate::selection::Candidate;

/// How long a file's existence is trusted without asking the database.
pub const FILE_TTL: Duration = Duration::from_secs(1);
/// Most peers whose owner is remembered.
pub const MAX_OWNERS: usize = 200_000;
/// Most files whose chunk count is remembered.
pub const MAX_FILES: usize = 100_000;
/// Most chunk-hash bytes of cached manifests (32 bytes a chunk).
pub const MAX_MANIFEST_HASH_BYTES: usize = 32 << 20;
/// How long a file's candidate sources are served from memory.
pub const SOURCES_TTL: Duration = Duration::from_secs(1);
/// Most files whose candidate sources are remembered at once.
pub const MAX_SOURCE_LISTS: usize = 1024;
/// Most listing filters whose counts are remembered.
pub const MAX_COUNTS: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    owners: HashMap<PeerId, String>,
    files: HashMap<FileId, (u32, Instant)>,
    manifests: HashMap<FileId, Arc<Manifest>>,
    manifest_bytes: usize,
    sources: HashMap<FileId, (Arc<Vec<Candidate>>, Instant)>,
    /// Bumped by every forget, so a read that overlapped one is not kept.
    sources_generation: u64,
    counts: HashMap<Filter, (i64, u64)>,
}

/// The replica-local caches. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Caches {
    inner: Arc<Mutex<Inner>>,
}

impl Caches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user who owns `peer`, if known.
    pub fn owner(&self, peer: &PeerId) -> Option<String> {
        self.lock().owners.get(peer).cloned()
    }

    /// Remembers who owns `peer`.
    pub fn set_owner(&self, peer: &PeerId, user_id: &str) {
        let mut inner = self.lock();
        if inner.owners.len() >= MAX_OWNERS {
            inner.owners.clear();
        }
        inner.owners.insert(peer.clone(), user_id.to_string());
    }

    /// The chunk count of a file seen to exist less than [`FILE_TTL`] ago.
    pub fn chunk_count(&self, file_id: &FileId, now: Instant) -> Option<u32> {
        let inner = self.lock();
        let (count, at) = inner.files.get(file_id)?;
        (now.duration_since(*at) < FILE_TTL).then_some(*count)
    }

    /// Remembers that a file exists, with its chunk count.
    pub fn set_chunk_count(&self, file_id: &FileId, chunk_count: u32, now: Instant) {
        let mut inner = self.lock();
        if inner.files.len() >= MAX_FILES {
            inner
                .files
                .retain(|_, (_, at)| now.duration_since(*at) < FILE_TTL);
        }
        if inner.files.len() < MAX_FILES {
            inner.files.insert(file_id.clone(), (chunk_count, now));
        }
    }

    /// How many files `filter` matched in the files' `generation`.
    pub fn count(&self, filter: &Filter, generation: i64) -> Option<u64> {
        let inner = self.lock();
        let (counted_in, count) = inner.counts.get(filter)?;
        (*counted_in == generation).then_some(*count)
    }

    /// Remembers how many files `filter` matched, counted after reading
    /// the files' `generation`.
    pub fn set_count(&self, filter: &Filter, generation: i64, count: u64) {
        let mut inner = self.lock();
        if inner.counts.len() >= MAX_COUNTS {
            inner
                .counts
                .retain(|_, (counted_in, _)| *counted_in == generation);
            if inner.counts.len() >= MAX_COUNTS {
                inner.counts.clear();
            }
        }
        inner.counts.insert(filter.clone(), (generation, count));
    }

    /// A cached manifest.
    pub fn manifest(&self, file_id: &FileId) -> Option<Arc<Manifest>> {
        self.lock().manifests.get(file_id).cloned()
    }

    /// Caches a manifest, making room by clearing when over the bound.
    pub fn set_manifest(&self, file_id: &FileId, manifest: Arc<Manifest>) {
        let bytes = manifest.chunk_count() as usize * 32;
        if bytes > MAX_MANIFEST_HASH_BYTES {
            return;
        }
        let mut inner = self.lock();
        if inner.manifest_bytes + bytes > MAX_MANIFEST_HASH_BYTES {
            inner.manifests.clear();
            inner.manifest_bytes = 0;
        }
        if inner.manifests.insert(file_id.clone(), manifest).is_none() {
            inner.manifest_bytes += bytes;
        }
    }

    /// The candidate sources of a file read less than [`SOURCES_TTL`] ago.
    pub fn sources(&self, file_id: &FileId, now: Instant) -> Option<Arc<Vec<Candidate>>> {
        let inner = self.lock();
        let (sources, at) = inner.sources.get(file_id)?;
        (now.duration_since(*at) < SOURCES_TTL).then(|| sources.clone())
    }

    /// What to pass to [`Caches::set_sources`] for a read starting now.
    pub fn sources_generation(&self) -> u64 {
        self.lock().sources_generation
    }

    /// Remembers a file's candidate sources as read at `now`, unless this
    /// replica changed some file's sources since the read began
    /// (`generation` from [`Caches::sources_generation`]): that read may
    /// predate the change.
    pub fn set_sources(
        &self,
        file_id: &FileId,
        sources: Arc<Vec<Candidate>>,
        now: Instant,
        generation: u64,
    ) {
        let mut inner = self.lock();
        if inner.sources_generation != generation {
            return;
        }
        if inner.sources.len() >= MAX_SOURCE_LISTS {
            inner
                .sources
                .retain(|_, (_, at)| now.duration_since(*at) < SOURCES_TTL);
        }
        if inner.sources.len() < MAX_SOURCE_LISTS {
            inner.sources.insert(file_id.clone(), (sources, now));
        }
    }

    /// Forgets a file's candidate sources after this replica changed them.
    pub fn forget_sources(&self, file_id: &FileId) {
        let mut inner = self.lock();
        inner.sources.remove(file_id);
        inner.sources_generation += 1;
    }

    /// Forgets every file's candidate sources: a peer's address changed.
    pub fn forget_all_sources(&self) {
        let mut inner = self.lock();
        inner.sources.clear();
        inner.sources_generation += 1;
    }

    /// Forgets a file deleted through this replica.
    pub fn forget_file(&self, file_id: &FileId) {
        let mut inner = self.lock();
        inner.files.remove(file_id);
        inner.sources.remove(file_id);
        inner.sources_generation += 1;
        if let Some(manifest) = inner.manifests.remove(file_id) {
            inner.manifest_bytes -= manifest.chunk_count() as usize * 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_trusted_to_exist_only_for_the_ttl() {
        let caches = Caches::default();
        let file = FileId::parse(&"ab".repeat(32)).expect("file id");
        let t = Instant::now();
        caches.set_chunk_count(&file, 7, t);
        assert_eq!(caches.chunk_count(&file, t + FILE_TTL / 2), Some(7));
        assert_eq!(caches.chunk_count(&file, t + FILE_TTL), None);
        caches.set_chunk_count(&file, 7, t);
        caches.forget_file(&file);
        assert_eq!(caches.chunk_count(&file, t), None);
    }

    #[test]
    fn sources_are_served_for_the_ttl_or_until_forgotten() {
        let caches = Caches::default();
        let file = FileId::parse(&"cd".repeat(32)).expect("file id");
        let t = Instant::now();
        let set =
            |at| caches.set_sources(&file, Arc::new(Vec::new()), at, caches.sources_generation());
        assert!(caches.sources(&file, t).is_none());
        set(t);
        assert!(caches.sources(&file, t + SOURCES_TTL / 2).is_some());
        assert!(caches.sources(&file, t + SOURCES_TTL).is_none());
        set(t);
        caches.forget_sources(&file);
        assert!(caches.sources(&file, t).is_none());
        set(t);
        caches.forget_file(&file);
        assert!(caches.sources(&file, t).is_none());
    }

    #[test]
    fn a_read_that_overlapped_a_change_is_not_kept() {
        let caches = Caches::default();
        let file = FileId::parse(&"ef".repeat(32)).expect("file id");
        let t = Instant::now();
        let before = caches.sources_generation();
        caches.forget_sources(&file);
        caches.set_sources(&file, Arc::new(Vec::new()), t, before);
        assert!(caches.sources(&file, t).is_none());
    }

    #[test]
    fn owners_are_remembered() {
        let caches = Caches::default();
        let peer = PeerId::generate();
        assert_eq!(caches.owner(&peer), None);
        caches.set_owner(&peer, "alice");
        assert_eq!(caches.owner(&peer).as_deref(), Some("alice"));
    }
}
