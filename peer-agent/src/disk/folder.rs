//! Folders on disk: reading a shared tree (what is shared, what is
//! skipped), hashing it into a folder manifest, and writing a downloaded
//! folder's tree out of its partial file, every file verified before the
//! tree gets its final name.
//!
//! The symlink rule: a shared folder is read without following any
//! symbolic link (a link to a file or a folder, inside the folder or out of
//! it, is skipped and reported), and so are sockets, FIFOs and devices. So
//! sharing a folder never shares anything outside it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use p2p_services::manifest::folder::{Selection, validate_path};
use p2p_services::manifest::{Folder, FolderFile, Hash, Manifest, chunk_size_for};

use super::{PartFile, blocking, read_full};
use crate::error::Error;

/// What a folder about to be shared holds.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Regular files: path relative to the folder, and size.
    pub files: Vec<(String, u64)>,
    /// Folders with nothing shared inside.
    pub empty_dirs: Vec<String>,
    /// Entries left out (symbolic links, sockets, devices), relative paths.
    pub skipped: Vec<String>,
}

impl Scan {
    /// Bytes of all files together.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// Reads the tree under `root` (see the module doc for what is skipped),
/// checking every path as a receiver will ([`validate_path`]), in path
/// order.
pub fn scan(root: &Path) -> Result<Scan, Error> {
    let mut scan = Scan::default();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot read the folder {}", dir.display()), e))?;
        let mut shared_here = 0usize;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
            let name = entry.file_name().into_string().map_err(|raw| {
                Error::InvalidArgument(format!(
                    "{} has a name that is not UTF-8 text; rename it to share the folder",
                    dir.join(raw).display()
                ))
            })?;
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            validate_path(&relative).map_err(|e| {
                Error::InvalidArgument(format!("{e}; rename it to share {}", root.display()))
            })?;
            let kind = entry
                .file_type()
                .map_err(|e| Error::io(format!("cannot stat {}", entry.path().display()), e))?;
            if kind.is_dir() {
                pending.push((entry.path(), relative));
                shared_here += 1;
            } else if kind.is_file() {
                let size = entry
                    .metadata()
                    .map_err(|e| Error::io(format!("cannot stat {}", entry.path().display()), e))?
                    .len();
                scan.files.push((relative, size));
                shared_here += 1;
            } else {
                scan.skipped.push(relative);
            }
        }
        if shared_here == 0 && !prefix.is_empty() {
            scan.empty_dirs.push(prefix);
        }
    }
    scan.files.sort_unstable();
    scan.empty_dirs.sort_unstable();
    scan.skipped.sort_unstable();
    // An entry count the index would refuse is refused before hashing.
    Folder::new(
        scan.files
            .iter()
            .map(|(path, size_bytes)| FolderFile {
                path: path.clone(),
                size_bytes: *size_bytes,
                file_hash: [0; 32],
            })
            .collect(),
        scan.empty_dirs.clone(),
        chunk_size_for(scan.total_bytes()),
    )?;
    Ok(scan)
}

/// Hashes every file of `scan` under `root` into a folder manifest named
/// `name`: one chunk in memory at a time. `hashed` counts bytes done;
/// setting `cancel` stops early.
pub async fn hash_folder(
    root: PathBuf,
    name: String,
    scan: Scan,
    hashed: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
) -> Result<Manifest, Error> {
    blocking(move || {
        let chunk_size = chunk_size_for(scan.total_bytes());
        let mut buf = vec![0u8; chunk_size as usize];
        let mut chunk_hashes = Vec::new();
        let mut files = Vec::with_capacity(scan.files.len());
        let mut total = 0u64;
        for (relative, size_bytes) in scan.files {
            let path = root.join(&relative);
            let context = |what: &str| format!("cannot {what} {}", path.display());
            let mut file = File::open(&path).map_err(|e| Error::io(context("open"), e))?;
            let mut whole = blake3::Hasher::new();
            let mut read = 0u64;
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                let n =
                    read_full(&mut file, &mut buf).map_err(|e| Error::io(context("read"), e))?;
                if n == 0 {
                    break;
                }
                chunk_hashes.extend_from_slice(blake3::hash(&buf[..n]).as_bytes());
                whole.update(&buf[..n]);
                read += n as u64;
                total += n as u64;
                hashed.store(total, Ordering::Relaxed);
            }
            if read != size_bytes {
                return Err(Error::InvalidArgument(format!(
                    "{} changed size while it was being hashed; share the folder again once it is written",
                    path.display()
                )));
            }
            files.push(FolderFile {
                path: relative,
                size_bytes,
                file_hash: *whole.finalize().as_bytes(),
            });
        }
        let folder = Folder::new(files, scan.empty_dirs, chunk_size)?;
        Ok(Manifest::for_folder(name, folder, &chunk_hashes)?)
    })
    .await
}

/// The files (position, path under the destination) and empty folders
/// (path under the destination) that `only` (or the whole folder) puts
/// at a destination. A selection of one file has the single path "": the
/// destination is that file.
fn outputs(folder: &Folder, only: Option<&Selection>) -> (Vec<(usize, String)>, Vec<String>) {
    match only {
        None => (
            folder
                .files()
                .iter()
                .enumerate()
                .map(|(i, f)| (i, f.path.clone()))
                .collect(),
            folder.empty_dirs().to_vec(),
        ),
        Some(selection) => (
            selection
                .files
                .iter()
                .map(|&i| (i, selection.relative(&folder.files()[i].path).to_string()))
                .collect(),
            selection
                .empty_dirs
                .iter()
                .map(|&i| selection.relative(&folder.empty_dirs()[i]).to_string())
                .collect(),
        ),
    }
}

/// `relative` under `root`, where "" is `root` itself.
fn target(root: &Path, relative: &str) -> Result<PathBuf, Error> {
    if relative.is_empty() {
        Ok(root.to_path_buf())
    } else {
        inside(root, relative)
    }
}

/// Builds what `only` (or the whole folder) puts at `destination` under a
/// hidden staging name beside it with `write(file, path)` for each file,
/// makes the empty folders, flushes the filesystem once (`syncfs`), and
/// renames it into place only when every write succeeded, so
/// `destination` never holds a partial tree or file.
fn stage_then_rename(
    folder: &Folder,
    only: Option<&Selection>,
    destination: &Path,
    tag: &str,
    mut write: impl FnMut(usize, &Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let parent = destination
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let leaf = destination
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".into());
    std::fs::create_dir_all(&parent)
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    let staging = parent.join(format!(".{leaf}.p2p-partial-{tag}"));
    let clear = |path: &Path| {
        let _ = std::fs::remove_dir_all(path);
        let _ = std::fs::remove_file(path);
    };
    clear(&staging);
    let (files, dirs) = outputs(folder, only);
    let single = only.is_some_and(|s| s.is_file);
    let result = (|| {
        if !single {
            std::fs::create_dir(&staging)
                .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
        }
        for (index, relative) in &files {
            let path = target(&staging, relative)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            }
            write(*index, &path)?;
        }
        for relative in &dirs {
            let path = target(&staging, relative)?;
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        }
        // One flush of the filesystem for the whole tree: a folder of
        // 10,000 small files would otherwise wait for 10,000 fsyncs.
        let root = File::open(if single { &parent } else { &staging })
            .map_err(|e| Error::io(format!("cannot open {}", staging.display()), e))?;
        rustix::fs::syncfs(&root)
            .map_err(|e| Error::io(format!("cannot flush {}", staging.display()), e.into()))?;
        if destination.exists() {
            return Err(Error::DestinationExists(destination.to_path_buf()));
        }
        std::fs::rename(&staging, destination).map_err(|e| {
            Error::io(
                format!("cannot move the download to {}", destination.display()),
                e,
            )
        })?;
        let _ = File::open(&parent).and_then(|d| d.sync_all());
        Ok(())
    })();
    if result.is_err() {
        clear(&staging);
    }
    result
}

/// Writes the folder of `manifest` (or only the part `only`) from the
/// partial file `part`, whose chunks for it are all verified, to
/// `destination` (which must not exist): each file is copied out of the
/// partial file, checked against its whole-file hash, in a
/// staging tree renamed into place at the end ([`stage_then_rename`]). A
/// file that does not match discards the download with [`Error::Corrupt`].
/// The partial file is deleted once the whole folder is in place.
pub async fn finalize_folder(
    part: PartFile,
    manifest: Arc<Manifest>,
    destination: PathBuf,
    only: Option<Selection>,
) -> Result<(), Error> {
    blocking(move || {
        let Some(folder) = manifest.folder.clone() else {
            return Err(Error::Corrupt("not a folder".into()));
        };
        let mut buf = vec![0u8; manifest.chunk_size_bytes as usize];
        stage_then_rename(
            &folder,
            only.as_ref(),
            &destination,
            manifest.file_id().short(),
            |index, path| write_file(&part, &manifest, &folder, index, path, &mut buf),
        )?;
        if only.is_none() {
            let _ = std::fs::remove_file(part.path());
        }
        Ok(())
    })
    .await
}

/// Copies file `index` of the folder out of `part` to `path`, checking its
/// whole-file hash.
fn write_file(
    part: &PartFile,
    manifest: &Manifest,
    folder: &Folder,
    index: usize,
    path: &Path,
    buf: &mut [u8],
) -> Result<(), Error> {
    let file = &folder.files()[index];
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    let mut whole = blake3::Hasher::new();
    for chunk in folder.chunks_of(index) {
        let len = manifest.chunk_len(chunk).unwrap_or(0) as usize;
        let data = &mut buf[..len];
        part.read_at(manifest.chunk_offset(chunk), data)?;
        whole.update(data);
        out.write_all(data)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    }
    let actual: Hash = *whole.finalize().as_bytes();
    if actual != file.file_hash {
        return Err(Error::Corrupt(format!(
            "every chunk matched the manifest but {} does not match its hash; the download was discarded",
            file.path
        )));
    }
    Ok(())
}

/// `relative` (a checked folder path) under `root`, checked again here, on
/// the way out: the manifest came from the network.
pub fn inside(root: &Path, relative: &str) -> Result<PathBuf, Error> {
    validate_path(relative)?;
    Ok(root.join(relative))
}

impl PartFile {
    /// Reads `buf.len()` bytes at `offset` (on the calling thread).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("cannot read {}", self.path.display()), e))
    }
}

/// Copies the complete folder `folder` held at `from` (or only the part
/// `only`) to `to`, which must not exist ([`stage_then_rename`]). With
/// `from_is_part`, `from` is an earlier copy of just that part, laid out
/// as `to` will be.
pub fn copy_tree(
    folder: &Folder,
    only: Option<&Selection>,
    from: &Path,
    to: &Path,
    from_is_part: bool,
) -> Result<(), Error> {
    stage_then_rename(folder, only, to, "copy", |index, path| {
        let full = &folder.files()[index].path;
        let source = match only {
            Some(selection) if from_is_part => target(from, selection.relative(full))?,
            _ => inside(from, full)?,
        };
        std::fs::copy(&source, path).map(|_| ()).map_err(|e| {
            Error::io(
                format!("cannot copy {} to {}", source.display(), path.display()),
                e,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use p2p_services::manifest::{ManifestError, wire};

    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a/b/one.txt"), vec![1u8; 300_000]).unwrap();
        std::fs::write(root.join("a/zero"), b"").unwrap();
        std::fs::write(root.join("две.txt"), b"2").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("a/link")).unwrap();
    }

    async fn hashed(root: &Path) -> Manifest {
        let scan = scan(root).unwrap();
        hash_folder(
            root.to_path_buf(),
            "t".into(),
            scan,
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_scan_skips_links_and_keeps_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let scan = scan(dir.path()).unwrap();
        let paths: Vec<_> = scan.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["a/b/one.txt", "a/zero", "две.txt"]);
        assert_eq!(scan.empty_dirs, ["empty"]);
        assert_eq!(scan.skipped, ["a/link"]);
        let manifest = hashed(dir.path()).await;
        assert_eq!(manifest.entry_count(), 3);
        assert_eq!(manifest.size_bytes, 300_001);
    }

    #[tokio::test]
    async fn a_tree_is_written_only_when_every_file_matches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        tree(&root);
        let manifest = Arc::new(hashed(&root).await);
        let (part, _) = PartFile::open(dir.path().join("t.part"), manifest.part_len())
            .await
            .unwrap();
        // The partial file as a download leaves it: every chunk at its offset.
        let folder = manifest.folder.clone().unwrap();
        for (index, file) in folder.files().iter().enumerate() {
            let data = std::fs::read(root.join(&file.path)).unwrap();
            for (k, chunk) in folder.chunks_of(index).enumerate() {
                let start = k * manifest.chunk_size_bytes as usize;
                let end = (start + manifest.chunk_size_bytes as usize).min(data.len());
                assert!(manifest.chunk_matches(chunk, &data[start..end]));
                part.write_at(
                    manifest.chunk_offset(chunk),
                    bytes::Bytes::copy_from_slice(&data[start..end]),
                )
                .await
                .unwrap();
            }
        }
        let out = dir.path().join("out");
        finalize_folder(part.clone(), manifest.clone(), out.clone(), None)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(out.join("a/b/one.txt")).unwrap(),
            vec![1u8; 300_000]
        );
        assert_eq!(std::fs::read(out.join("a/zero")).unwrap(), b"");
        assert!(out.join("empty").is_dir());
        assert!(!out.join("a/link").exists());

        // A bad byte in the partial file: nothing appears at the destination.
        let (part, _) = PartFile::open(dir.path().join("u.part"), manifest.part_len())
            .await
            .unwrap();
        part.write_at(0, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        let bad = dir.path().join("bad");
        let err = finalize_folder(part, manifest, bad.clone(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(!bad.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("p2p-partial"))
            .collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }

    #[tokio::test]
    async fn a_hostile_folder_from_the_network_is_refused_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        let good = wire::to_proto(&hashed(&dir.path().join("src")).await);
        for (bad, why) in [
            ("../x", "refused"),
            ("/etc/x", "absolute"),
            ("a/zero", "twice"),
        ] {
            let mut m = good.clone();
            m.folder.as_mut().unwrap().files[2].path = bad.to_string();
            let err = wire::from_proto(m).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let mut m = good.clone();
        m.folder.as_mut().unwrap().empty_dirs = (0..100_001).map(|i| format!("d{i:06}")).collect();
        assert!(matches!(
            wire::from_proto(m),
            Err(ManifestError::TooManyEntries(_))
        ));
        assert!(inside(dir.path(), "../x").is_err());
        assert!(inside(dir.path(), "/abs").is_err());
        assert!(inside(dir.path(), "a/../../x").is_err());
    }
}
