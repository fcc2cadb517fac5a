//! File I/O on the data path: positional chunk reads and writes on the
//! blocking pool (never a whole file in memory), hashing a file into a
//! manifest on all cores, the final verify-fsync-rename of a download, and
//! free space for the heartbeat. [`folder`] does the same for folders.

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
/// every slice of it) is dropped.
pub async fn read_chunk(path: PathBuf, offset: u64, len: u32) -> Result<Bytes, Error> {
    blocking(move || {
        let file = File::open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let mut buf = READ_BUFFERS.take(len as usize);
        file.read_exact_at(&mut buf.0, offset)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Ok(Bytes::from_owner(buf))
    })
    .await
}

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
                },
                existed,
            ))
        })
        .await
    }

    /// Writes a verified chunk at its offset.
    pub async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), Error> {
        let this = self.clone();
        blocking(move || {
            this.file.write_all_at(&data, offset).map_err(|e| {
                let what = if e.kind() == std::io::ErrorKind::StorageFull {
                    "the disk is full"
                } else {
                    "the write failed"
                };
                Error::io(
                    format!(
                        "cannot write to {} ({what}); the download stopped and keeps its verified chunks: free space (`p2p rm` removes a partial download) and get it again",
                        this.path.display()
                    ),
                    e,
                )
            })
        })
        .await
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
