//! File I/O on the data path: positional chunk reads and writes (never a
//! whole file in memory), hashing a file into a manifest on all cores, the
//! final verify-fsync-rename of a download, and free space for the
//! heartbeat. [`folder`] does the same for folders.
//!
//! Chunk reads and writes take the page cache's fast path on the calling
//! runtime thread, and the blocking pool only when the disk would make
//! them wait. Handing each chunk to a pool thread and back costs a thread
//! wake each way: on the benchmark VM a 1 GiB transfer on loopback ran at
//! 62 % of a raw TCP copy with every chunk on the pool and at 79 % without
//! (`BENCHMARKS.md`, 2b).
//! - A read first asks for the chunk with `RWF_NOWAIT`: a chunk in the
//!   page cache (a file just shared, downloaded or served) is copied at
//!   once; one the disk must fetch is read on the blocking pool.
//! - A write to the page cache cannot be asked not to wait on Linux's
//!   common file systems (`RWF_NOWAIT` on a buffered write is refused), so
//!   [`PartFile::write_at`] writes on the calling thread and times it: a
//!   write that took longer than [`INLINE_WRITE_BUDGET`] (the kernel held
//!   it back for a disk slower than the download) sends that file's writes
//!   to the blocking pool for [`POOLED_WRITES_FOR`].

pub mod folder;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use blake3::hazmat::HasherExt;
use bytes::Bytes;
use p2p_services::manifest::{Hash, Manifest, chunk_size_for, tree};

use crate::error::Error;

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::io("blocking file task failed", std::io::Error::other(e)))?
}

/// Reads `len` bytes at `offset` of the file at `path`, into a buffer from
/// [`READ_BUFFERS`] that goes back there when the returned `Bytes` (and
/// every slice of it) is dropped. The file is opened on the calling thread
/// (a lookup, like the `stat` the chunk server makes per chunk), and read
/// there if the page cache holds the chunk, else on the blocking pool.
pub async fn read_chunk(path: PathBuf, offset: u64, len: u32) -> Result<Bytes, Error> {
    let file =
        File::open(&path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut buf = READ_BUFFERS.take(len as usize);
    if read_cached(&file, &mut buf.0, offset) {
        return Ok(Bytes::from_owner(buf));
    }
    blocking(move || {
        file.read_exact_at(&mut buf.0, offset)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Ok(Bytes::from_owner(buf))
    })
    .await
}

/// Fills `buf` from `offset` of `file` if the page cache holds all of it,
/// without waiting for the disk; false when some of it is not cached (or
/// the read failed: the blocking read then tells why).
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> bool {
    let flags = rustix::io::ReadWriteFlags::NOWAIT;
    matches!(
        rustix::io::preadv2(file, &mut [std::io::IoSliceMut::new(buf)], offset, flags),
        Ok(n) if n == buf.len()
    )
}

/// A chunk write on the calling thread that takes longer than this means
/// the kernel is holding writes back for the disk.
pub const INLINE_WRITE_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);
/// ... and the file's writes then go to the blocking pool for this long.
pub const POOLED_WRITES_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Most bytes of idle read buffers kept for reuse.
const POOL_BYTES: usize = 16 * 1024 * 1024;

/// Chunk read buffers for reuse. A served chunk lives only until the
/// response encoder has copied it, so a source reading every chunk into a
/// fresh allocation would map, fault in and zero a new 256 KiB buffer per
/// chunk (`perf`: a third of a swarm's page faults were that zeroing); a
/// reused buffer is already mapped and is overwritten by the read.
static READ_BUFFERS: BufferPool = BufferPool {
    idle: std::sync::Mutex::new(Vec::new()),
};

struct BufferPool {
    idle: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A buffer of exactly `len` initialised bytes: an idle one if any is
    /// large enough, else a new one.
    fn take(&'static self, len: usize) -> Pooled {
        let reused = {
            let mut idle = self.lock();
            idle.iter()
                .position(|b| b.capacity() >= len)
                .map(|i| idle.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_default();
        buf.resize(len, 0);
        Pooled(buf)
    }

    /// Keeps `buf` for reuse unless that would keep more than
    /// [`POOL_BYTES`] idle.
    fn give(&self, buf: Vec<u8>) {
        let mut idle = self.lock();
        let kept: usize = idle.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= POOL_BYTES {
            idle.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A buffer of [`READ_BUFFERS`], handed back when dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        READ_BUFFERS.give(std::mem::take(&mut self.0));
    }
}

/// The `.part` file a download writes into.
#[derive(Debug, Clone)]
pub struct PartFile {
    file: Arc<File>,
    path: PathBuf,
    /// Until when writes go to the blocking pool (see the module's
    /// documentation); `None` while they are written in place.
    pooled_until: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl PartFile {
    /// Opens (creating if needed) the part file and sizes it. Returns
    /// whether it already existed, so the caller knows whether recorded
    /// chunks can be trusted.
    pub async fn open(path: PathBuf, size_bytes: u64) -> Result<(Self, bool), Error> {
        blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
            }
            let existed = path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
            file.set_len(size_bytes).map_err(|e| {
                Error::io(
                    format!("cannot size {} to {size_bytes} bytes", path.display()),
                    e,
                )
            })?;
            Ok((
                Self {
                    file: Arc::new(file),
                    path,
                    pooled_until: Arc::default(),
                },
                existed,
            ))
        })
        .await
    }

    /// Writes a verified chunk at its offset: in place while the page cache
    /// takes writes at once, else on the blocking pool (see the module's
    /// documentation).
    pub async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), Error> {
        if self.writes_in_place() {
            let began = std::time::Instant::now();
            let written = self.write_now(offset, &data);
            let took = began.elapsed();
            if took > INLINE_WRITE_BUDGET {
                tracing::debug!(
                    path = %self.path.display(),
                    took_ms = took.as_millis() as u64,
                    "a chunk write waited for the disk; writing this file on the blocking pool for a while"
                );
                *self.pooled() = Some(began + took + POOLED_WRITES_FOR);
            }
            return written;
        }
        let this = self.clone();
        blocking(move || this.write_now(offset, &data)).await
    }

    /// Whether writes go in place now, ending a pooled spell that is over.
    fn writes_in_place(&self) -> bool {
        let mut until = self.pooled();
        match *until {
            Some(at) if at > std::time::Instant::now() => false,
            _ => {
                *until = None;
                true
            }
        }
    }

    fn pooled(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.pooled_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_now(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.file.write_all_at(data, offset).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::StorageFull {
                "the disk is full"
            } else {
                "the write failed"
            };
            Error::io(
                format!(
                    "cannot write to {} ({what}); the download stopped and keeps its verified chunks: free space (`p2p rm` removes a partial download) and get it again",
                    self.path.display()
                ),
                e,
            )
        })
    }

    /// Makes every chunk written so far durable (`fdatasync`), so the
    /// chunks recorded as verified after it survive a crash, and the final
    /// flush of a finished download has only the last moments' writes left.
    pub async fn sync_data(&self) -> Result<(), Error> {
        let this = self.clone();
        blocking(move || {
            this.file
                .sync_data()
                .map_err(|e| Error::io(format!("cannot flush {}", this.path.display()), e))
        })
        .await
    }

    /// The part file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Hashes `reader` whole with BLAKE3 on all cores.
fn hash_stream(
    mut reader: impl Read,
    buf_len: usize,
    cancel: &AtomicBool,
) -> std::io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; buf_len];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("cancelled"));
        }
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            return Ok(*hasher.finalize().as_bytes());
        }
        hasher.update_rayon(&buf[..n]);
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Hashes the file at `path` into a manifest: one chunk in memory at a time,
/// each chunk and the whole file hashed with BLAKE3 across all cores.
/// `hashed` counts progress; setting `cancel` stops early.
pub async fn hash_into_manifest(
    path: PathBuf,
    name: String,
    mime_type: String,
    hashed: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
) -> Result<Manifest, Error> {
    blocking(move || {
        let context = |what: &str| format!("cannot {what} {}", path.display());
        let mut file = File::open(&path).map_err(|e| Error::io(context("open"), e))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| Error::io(context("stat"), e))?
            .len();
        let chunk_size = chunk_size_for(size_bytes);
        // Manifest v2: each chunk's chaining value, from which the whole-file
        // hash is built, so sharing still reads and hashes each byte twice.
        let tree = tree::usable(size_bytes, u64::from(chunk_size));
        let mut whole = (!tree).then(blake3::Hasher::new);
        let mut cvs: Vec<Hash> = Vec::new();
        let mut chunk_hashes = Vec::new();
        let mut buf = vec![0u8; chunk_size as usize];
        let mut total = 0u64;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = read_full(&mut file, &mut buf).map_err(|e| Error::io(context("read"), e))?;
            if n == 0 {
                break;
            }
            chunk_hashes.extend_from_slice(
                blake3::Hasher::new()
                    .update_rayon(&buf[..n])
                    .finalize()
                    .as_bytes(),
            );
            match &mut whole {
                Some(whole) => {
                    whole.update_rayon(&buf[..n]);
                }
                None => cvs.push(
                    blake3::Hasher::new()
                        .set_input_offset(total)
                        .update_rayon(&buf[..n])
                        .finalize_non_root(),
                ),
            }
            total += n as u64;
            hashed.store(total, Ordering::Relaxed);
        }
        if total != size_bytes {
            return Err(Error::io(
                context("hash"),
                std::io::Error::other("the file changed size while it was being hashed"),
            ));
        }
        let file_hash = match whole {
            Some(whole) => *whole.finalize().as_bytes(),
            None => tree::root(&cvs, u64::from(chunk_size), size_bytes)
                .ok_or_else(|| Error::io(context("hash"), std::io::Error::other("chunk tree")))?,
        };
        Ok(Manifest::from_parts(
            name,
            size_bytes,
            mime_type,
            chunk_size,
            &chunk_hashes,
            &file_hash,
        )?
        .with_chaining_values(&cvs.concat())?)
    })
    .await
}

/// Flushes the part file to disk, checks its whole-file hash and moves it
/// to `destination` (rename, or copy then rename across filesystems). The
/// hash checked is `computed` when the caller built it from the chunks as
/// they arrived (`download::tree`), else the file is read back and hashed.
/// The destination name only ever holds a complete, verified file.
pub async fn finalize(
    part: PartFile,
    expected: Hash,
    computed: Option<Hash>,
    destination: PathBuf,
) -> Result<(), Error> {
    blocking(move || {
        let part_path = part.path.clone();
        part.file
            .sync_all()
            .map_err(|e| Error::io(format!("cannot flush {}", part_path.display()), e))?;
        let actual = match computed {
            Some(hash) => hash,
            None => {
                let reader = File::open(&part_path)
                    .map_err(|e| Error::io(format!("cannot reopen {}", part_path.display()), e))?;
                hash_stream(reader, 4 << 20, &AtomicBool::new(false))
                    .map_err(|e| Error::io(format!("cannot read {}", part_path.display()), e))?
            }
        };
        if actual != expected {
            return Err(Error::Corrupt(format!(
                "every chunk matched the manifest but the whole file does not match its hash; the download of {} was discarded",
                destination.display()
            )));
        }
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        match std::fs::rename(&part_path, &destination) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(18) => {
                copy_then_rename(&part_path, &destination)?;
                let _ = std::fs::remove_file(&part_path);
                Ok(())
            }
            Err(e) => Err(Error::io(
                format!("cannot move the download to {}", destination.display()),
                e,
            )),
        }
    })
    .await
}

/// Copies `from` next to `to` under a temporary name, flushes it and renames
/// it into place, so `to` never holds a partial copy.
pub fn copy_then_rename(from: &Path, to: &Path) -> Result<(), Error> {
    let file_name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let tmp = to.with_file_name(format!(".{file_name}.p2p-tmp"));
    let result = (|| {
        std::fs::copy(from, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        let context = match e.kind() {
            std::io::ErrorKind::StorageFull => format!(
                "cannot copy {} to {}: the disk is full",
                from.display(),
                to.display()
            ),
            std::io::ErrorKind::NotFound if !from.exists() => format!(
                "cannot copy {} to {}: the held copy is gone",
                from.display(),
                to.display()
            ),
            _ => format!("cannot copy {} to {}", from.display(), to.display()),
        };
        Error::io(context, e)
    })
}

/// Free bytes for unprivileged users on the filesystem of `dir`.
pub fn free_disk_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashed_manifest_matches_chunks_and_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let hashed = Arc::new(AtomicU64::new(0));
        let manifest = hash_into_manifest(
            path.clone(),
            "f.bin".into(),
            String::new(),
            hashed.clone(),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
        assert_eq!(manifest.chunk_size_bytes, chunk_size_for(700_000));
        assert_eq!(manifest.file_hash, *blake3::hash(&data).as_bytes());
        assert_eq!(hashed.load(Ordering::Relaxed), 700_000);
        for i in 0..manifest.chunk_count() {
            let chunk = read_chunk(
                path.clone(),
                manifest.chunk_offset(i),
                manifest.chunk_len(i).unwrap(),
            )
            .await
            .unwrap();
            assert!(manifest.chunk_matches(i, &chunk));
        }
    }

    #[tokio::test]
    async fn read_buffers_are_reused_and_never_leak_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, [vec![7u8; 4096], vec![9u8; 100]].concat()).unwrap();
        let first = read_chunk(path.clone(), 0, 4096).await.unwrap();
        assert!(first.iter().all(|&b| b == 7));
        drop(first);
        // A reused buffer holds exactly the bytes read, not the 7s before.
        let second = read_chunk(path.clone(), 4096, 100).await.unwrap();
        assert_eq!(&second[..], &[9u8; 100][..]);
        let third = read_chunk(path.clone(), 0, 4096).await.unwrap();
        assert!(third.iter().all(|&b| b == 7));
        drop(second);
        let err = read_chunk(path, 4000, 4096).await.unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[tokio::test]
    async fn a_chunk_the_page_cache_lacks_is_read_on_the_pool_and_then_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        // Clean pages of a synced file can be dropped from the cache
        // (tmpfs keeps every page in memory, so it has nothing to drop).
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let on_tmpfs = rustix::fs::fstatfs(&file).unwrap().f_type == 0x0102_1994;
        let mut buf = vec![0u8; 262_144];
        if !on_tmpfs {
            assert!(
                !read_cached(&file, &mut buf, 0),
                "a dropped page must not be read without waiting for the disk"
            );
        }
        let chunk = read_chunk(path.clone(), 0, 262_144).await.unwrap();
        assert_eq!(&chunk[..], &data[..262_144]);
        // That read brought it into the cache: now it is read in place.
        assert!(read_cached(&file, &mut buf, 0));
        assert_eq!(&buf[..], &data[..262_144]);
        let tail = read_chunk(path, 262_144, 37_856).await.unwrap();
        assert_eq!(&tail[..], &data[262_144..]);
    }

    #[tokio::test]
    async fn writes_held_back_by_the_disk_go_to_the_pool_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let (part, _) = PartFile::open(dir.path().join("x.part"), 8).await.unwrap();
        assert!(part.writes_in_place());
        // As a write that took longer than the budget leaves it.
        *part.pooled() = Some(std::time::Instant::now() + POOLED_WRITES_FOR);
        assert!(!part.writes_in_place());
        part.write_at(0, Bytes::from_static(b"pool")).await.unwrap();
        *part.pooled() = Some(std::time::Instant::now() - std::time::Duration::from_millis(1));
        assert!(part.writes_in_place(), "the spell ends");
        assert!(part.pooled().is_none());
        part.write_at(4, Bytes::from_static(b"here")).await.unwrap();
        assert_eq!(std::fs::read(part.path()).unwrap(), b"poolhere");
    }

    #[tokio::test]
    async fn finalize_refuses_a_file_that_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let (part, existed) = PartFile::open(dir.path().join("p/x.part"), 10)
            .await
            .unwrap();
        assert!(!existed);
        part.write_at(0, Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        let dest = dir.path().join("out/x");
        let err = finalize(part.clone(), [0; 32], None, dest.clone()).await;
        assert!(matches!(err, Err(Error::Corrupt(_))));
        assert!(!dest.exists());
        finalize(
            part,
            *blake3::hash(b"0123456789").as_bytes(),
            None,
            dest.clone(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"0123456789");
        assert!(free_disk_bytes(dir.path()) > 0);
    }
}
