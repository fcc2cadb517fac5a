//! Folders published as one entry of the network (layout version
//! [`FOLDER_LAYOUT_VERSION`]), in the manner of BitTorrent v2 (BEP 52):
//! the folder's chunks are its files' chunks in path order, each file
//! starting at a chunk boundary, so every chunk belongs to exactly one file
//! and the swarm (bitfields, holdings streams, FetchChunks, resume) treats a
//! folder as one entry of `chunk_count` chunks.
//!
//! A download writes those chunks into one partial file at `index *
//! chunk_size` (the gaps after short last chunks stay holes); a complete
//! copy is read file by file ([`super::Manifest::chunk_place`]).
//!
//! Paths are checked here, once, for everyone who receives them (index-svc
//! at publish, an agent receiving a manifest, an agent writing a tree):
//! relative, `/`-separated, each component a valid display name
//! ([`super::validate_name`]: no `..`, no control or invisible characters,
//! no `\`, at most 255 bytes), at most [`MAX_PATH_BYTES`] in all, no
//! duplicates, no path both a file and a folder, at most
//! [`MAX_FOLDER_ENTRIES`] entries and [`MAX_FOLDER_PATH_BYTES`] of paths.
//! Paths differing only in letter case or Unicode normalisation are
//! distinct (as on the Linux filesystems that share them); writing such a
//! tree onto a case-insensitive filesystem fails at the second name
//! rather than overwriting the first.

use std::ops::Range;

use super::{Hash, ManifestError, chunk_count, validate_name};

/// The version of the folder layout this code reads and writes.
pub const FOLDER_LAYOUT_VERSION: u32 = 1;
/// Most entries (files plus empty folders) one folder may list.
pub const MAX_FOLDER_ENTRIES: usize = 100_000;
/// Most bytes of paths one folder may list, all entries together.
pub const MAX_FOLDER_PATH_BYTES: usize = 16 << 20;
/// Longest path of one entry, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// The MIME type a folder is listed with.
pub const FOLDER_MIME_TYPE: &str = "inode/directory";

/// One file inside a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderFile {
    /// Its path relative to the folder, components separated by `/`.
    pub path: String,
    /// Its exact size.
    pub size_bytes: u64,
    /// BLAKE3 hash of its content, checked before it gets its final name.
    pub file_hash: Hash,
}

/// A folder's tree: its files in path order (which is chunk order) and its
/// empty folders. Always valid: built only through [`Folder::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    files: Vec<FolderFile>,
    empty_dirs: Vec<String>,
    /// The first chunk of each file, and the chunk count at the end.
    first_chunk: Vec<u32>,
    chunk_size_bytes: u32,
}

/// Where one chunk of a folder is, within its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileChunk {
    /// The file's position in [`Folder::files`].
    pub file: usize,
    /// Byte offset of the chunk in that file.
    pub offset: u64,
    /// The chunk's length.
    pub len: u32,
}

/// Part of a folder: one file, or a subfolder with everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The path asked for, relative to the folder (no trailing `/`).
    pub base: String,
    /// Whether `base` is one file (else a folder).
    pub is_file: bool,
    /// The files it holds (positions in [`Folder::files`]).
    pub files: Vec<usize>,
    /// The empty folders in it (positions in [`Folder::empty_dirs`]).
    pub empty_dirs: Vec<usize>,
}

impl Selection {
    /// Where an entry of the folder goes under a destination for this
    /// selection: its path relative to `base` (empty for the file itself).
    pub fn relative<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(self.base.as_str())
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(path)
    }
}

/// One entry directly inside a folder or subfolder, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Its name (one path component).
    pub name: String,
    /// Whether it is a folder.
    pub is_folder: bool,
    /// Its size; for a folder, all files in it.
    pub size_bytes: u64,
    /// Files in it, subfolders included (1 for a file).
    pub file_count: u32,
}

/// Checks one entry's path (see the module doc).
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    let refuse = |reason: String| ManifestError::BadFolderPath {
        path: path.chars().take(300).collect(),
        reason,
    };
    if path.is_empty() {
        return Err(refuse("the path is empty".into()));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(refuse(format!(
            "the path is {} bytes; at most {MAX_PATH_BYTES} are allowed",
            path.len()
        )));
    }
    if path.starts_with('/') {
        return Err(refuse("absolute paths are not allowed".into()));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(refuse(
                "the path has an empty component (`//` or a trailing `/`)".into(),
            ));
        }
        validate_name(component).map_err(|e| refuse(e.to_string()))?;
    }
    Ok(())
}

impl Folder {
    /// Builds and checks a folder: `files` in strictly ascending path order
    /// (by bytes), `empty_dirs` likewise, for chunks of `chunk_size_bytes`.
    pub fn new(
        files: Vec<FolderFile>,
        empty_dirs: Vec<String>,
        chunk_size_bytes: u32,
    ) -> Result<Self, ManifestError> {
        let entries = files.len() + empty_dirs.len();
        if entries > MAX_FOLDER_ENTRIES {
            return Err(ManifestError::TooManyEntries(entries));
        }
        let path_bytes: usize = files.iter().map(|f| f.path.len()).sum::<usize>()
            + empty_dirs.iter().map(String::len).sum::<usize>();
        if path_bytes > MAX_FOLDER_PATH_BYTES {
            return Err(ManifestError::PathBytesTooMany(path_bytes));
        }
        check_sorted(files.iter().map(|f| f.path.as_str()))?;
        check_sorted(empty_dirs.iter().map(String::as_str))?;
        // A path that is a file must be no other entry's folder, and an
        // "empty" folder holds nothing.
        let mut all: Vec<(&str, bool)> = files
            .iter()
            .map(|f| (f.path.as_str(), true))
            .chain(empty_dirs.iter().map(|d| (d.as_str(), false)))
            .collect();
        all.sort_unstable();
        for pair in all.windows(2) {
            let ((a, a_file), (b, _)) = (pair[0], pair[1]);
            if a == b {
                return Err(ManifestError::DuplicatePath(a.to_string()));
            }
            if b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'/' {
                let what = if a_file { "a file" } else { "an empty folder" };
                return Err(ManifestError::PathConflict(format!(
                    "{a:?} is {what} but {b:?} is inside it"
                )));
            }
        }
        let mut first_chunk = Vec::with_capacity(files.len() + 1);
        let mut next = 0u64;
        for file in &files {
            first_chunk.push(next as u32);
            next += chunk_count(file.size_bytes, chunk_size_bytes);
            if next > u64::from(u32::MAX) {
                return Err(ManifestError::TooManyEntries(entries));
            }
        }
        first_chunk.push(next as u32);
        Ok(Self {
            files,
            empty_dirs,
            first_chunk,
            chunk_size_bytes,
        })
    }

    /// The files, in path (and chunk) order.
    pub fn files(&self) -> &[FolderFile] {
        &self.files
    }

    /// The empty folders, in path order.
    pub fn empty_dirs(&self) -> &[String] {
        &self.empty_dirs
    }

    /// The chunk size every file is cut into.
    pub fn chunk_size_bytes(&self) -> u32 {
        self.chunk_size_bytes
    }

    /// Bytes of all files together.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size_bytes).sum()
    }

    /// Chunks of all files together.
    pub fn chunk_count(&self) -> u64 {
        u64::from(*self.first_chunk.last().unwrap_or(&0))
    }

    /// The chunks of file `file`.
    pub fn chunks_of(&self, file: usize) -> Range<u32> {
        self.first_chunk[file]..self.first_chunk[file + 1]
    }

    /// Which file chunk `index` belongs to, and where in it.
    pub fn locate(&self, index: u32) -> Option<FileChunk> {
        if u64::from(index) >= self.chunk_count() {
            return None;
        }
        // The last file whose first chunk is at or before `index` and that
        // has chunks at all (zero-byte files share their neighbour's start).
        let file = self.first_chunk.partition_point(|&first| first <= index) - 1;
        let within = u64::from(index - self.first_chunk[file]);
        let chunk = u64::from(self.chunk_size_bytes);
        let offset = within * chunk;
        let len = (self.files[file].size_bytes - offset).min(chunk) as u32;
        Some(FileChunk { file, offset, len })
    }

    /// The file or subfolder at `path` (relative, `/`-separated; a
    /// trailing `/` is ignored), or `None` when the folder has nothing
    /// there.
    pub fn select(&self, path: &str) -> Option<Selection> {
        let base = path.trim_end_matches('/');
        if base.is_empty() || validate_path(base).is_err() {
            return None;
        }
        if let Ok(found) = self.files.binary_search_by(|f| f.path.as_str().cmp(base)) {
            return Some(Selection {
                base: base.to_string(),
                is_file: true,
                files: vec![found],
                empty_dirs: Vec::new(),
            });
        }
        let inside = |p: &str| {
            p == base || (p.starts_with(base) && p.as_bytes().get(base.len()) == Some(&b'/'))
        };
        let files: Vec<usize> = (0..self.files.len())
            .filter(|&i| inside(&self.files[i].path))
            .collect();
        let empty_dirs: Vec<usize> = (0..self.empty_dirs.len())
            .filter(|&i| inside(&self.empty_dirs[i]))
            .collect();
        (!files.is_empty() || !empty_dirs.is_empty()).then(|| Selection {
            base: base.to_string(),
            is_file: false,
            files,
            empty_dirs,
        })
    }

    /// What is directly inside `path` ("" for the folder itself; a
    /// trailing `/` is ignored): subfolders first, then files, each by
    /// name. `None` when there is no folder at `path`.
    pub fn children(&self, path: &str) -> Option<Vec<Child>> {
        let base = path.trim_end_matches('/');
        let prefix = if base.is_empty() {
            String::new()
        } else {
            format!("{base}/")
        };
        let mut folders: std::collections::BTreeMap<&str, Child> = Default::default();
        let mut files = Vec::new();
        let mut found = base.is_empty();
        for file in &self.files {
            let Some(rest) = file.path.strip_prefix(prefix.as_str()) else {
                continue;
            };
            found = true;
            match rest.split_once('/') {
                None => files.push(Child {
                    name: rest.to_string(),
                    is_folder: false,
                    size_bytes: file.size_bytes,
                    file_count: 1,
                }),
                Some((dir, _)) => {
                    let entry = folders.entry(dir).or_insert_with(|| Child {
                        name: dir.to_string(),
                        is_folder: true,
                        size_bytes: 0,
                        file_count: 0,
                    });
                    entry.size_bytes += file.size_bytes;
                    entry.file_count += 1;
                }
            }
        }
        for dir in &self.empty_dirs {
            if dir == base {
                found = true;
            }
            let Some(rest) = dir.strip_prefix(prefix.as_str()) else {
                continue;
            };
            found = true;
            let name = rest.split('/').next().unwrap_or(rest);
            folders.entry(name).or_insert_with(|| Child {
                name: name.to_string(),
                is_folder: true,
                size_bytes: 0,
                file_count: 0,
            });
        }
        found.then(|| folders.into_values().chain(files).collect())
    }

    /// The folder's whole-content digest: BLAKE3 (keyed by purpose) of the
    /// canonical encoding ([`Folder::encode`]) and every chunk hash, so
    /// identical trees cut the same way get the same digest (and file id),
    /// and any change to a path, size, hash or empty folder changes it.
    pub fn digest(&self, chunk_hashes: &[Hash]) -> Hash {
        let mut hasher = blake3::Hasher::new_derive_key("p2p-file-transfer 2026 folder v1");
        hasher.update(&self.chunk_size_bytes.to_le_bytes());
        hasher.update(&self.encode());
        for hash in chunk_hashes {
            hasher.update(hash);
        }
        *hasher.finalize().as_bytes()
    }

    /// The canonical bytes of the tree (layout version, files with size and
    /// hash, empty folders; lengths little-endian), as index-svc and the
    /// agent store it. [`Folder::decode`] reads it back.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&FOLDER_LAYOUT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.files.len() as u64).to_le_bytes());
        for file in &self.files {
            put_str(&mut out, &file.path);
            out.extend_from_slice(&file.size_bytes.to_le_bytes());
            out.extend_from_slice(&file.file_hash);
        }
        out.extend_from_slice(&(self.empty_dirs.len() as u64).to_le_bytes());
        for dir in &self.empty_dirs {
            put_str(&mut out, dir);
        }
        out
    }

    /// Reads [`Folder::encode`]'s bytes back, checking everything
    /// [`Folder::new`] checks.
    pub fn decode(bytes: &[u8], chunk_size_bytes: u32) -> Result<Self, ManifestError> {
        let mut reader = Reader(bytes);
        let version = u32::from_le_bytes(reader.take()?);
        if version != FOLDER_LAYOUT_VERSION {
            return Err(ManifestError::UnknownFolderLayout(version));
        }
        let files_len = reader.count()?;
        let mut files = Vec::with_capacity(files_len.min(1024));
        for _ in 0..files_len {
            let path = reader.string()?;
            let size_bytes = u64::from_le_bytes(reader.take()?);
            let file_hash = reader.take()?;
            files.push(FolderFile {
                path,
                size_bytes,
                file_hash,
            });
        }
        let dirs_len = reader.count()?;
        let mut empty_dirs = Vec::with_capacity(dirs_len.min(1024));
        for _ in 0..dirs_len {
            empty_dirs.push(reader.string()?);
        }
        if !reader.0.is_empty() {
            return Err(ManifestError::BadFolderEncoding);
        }
        Self::new(files, empty_dirs, chunk_size_bytes)
    }
}

fn check_sorted<'a>(paths: impl Iterator<Item = &'a str>) -> Result<(), ManifestError> {
    let mut previous: Option<&str> = None;
    for path in paths {
        validate_path(path)?;
        if let Some(previous) = previous {
            if previous == path {
                return Err(ManifestError::DuplicatePath(path.to_string()));
            }
            if previous > path {
                return Err(ManifestError::FolderOutOfOrder(path.to_string()));
            }
        }
        previous = Some(path);
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// A cursor over [`Folder::encode`]'s bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ManifestError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ManifestError::BadFolderEncoding)?;
        self.0 = rest;
        Ok(*head)
    }

    fn count(&mut self) -> Result<usize, ManifestError> {
        let n = u64::from_le_bytes(self.take()?);
        if n > MAX_FOLDER_ENTRIES as u64 {
            return Err(ManifestError::TooManyEntries(n as usize));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, ManifestError> {
        let len = u32::from_le_bytes(self.take()?) as usize;
        if len > self.0.len() {
            return Err(ManifestError::BadFolderEncoding);
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| ManifestError::BadFolderEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 64 * 1024;

    fn file(path: &str, size_bytes: u64) -> FolderFile {
        FolderFile {
            path: path.into(),
            size_bytes,
            file_hash: *blake3::hash(path.as_bytes()).as_bytes(),
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/",
            "",
            ".",
            "a/./b",
            "a\\b",
            "nul\0byte",
            "bell\u{7}",
            "\u{202e}txt.exe",
        ] {
            assert!(
                matches!(validate_path(bad), Err(ManifestError::BadFolderPath { .. })),
                "{bad:?} was accepted"
            );
        }
        assert!(validate_path(&format!("a/{}", "n".repeat(256))).is_err());
        assert!(validate_path(&"abcd/".repeat(1000)).is_err());
        for good in [
            "a",
            "dir/sub/file.txt",
            "Документы/отчёт.pdf",
            "写真/猫.jpg",
            "café/naïve",
        ] {
            validate_path(good).unwrap();
        }
    }

    #[test]
    fn duplicates_conflicts_order_and_caps_are_refused() {
        let dup = Folder::new(vec![file("a", 1), file("a", 2)], vec![], CHUNK);
        assert_eq!(dup, Err(ManifestError::DuplicatePath("a".into())));
        let unsorted = Folder::new(vec![file("b", 1), file("a", 2)], vec![], CHUNK);
        assert_eq!(unsorted, Err(ManifestError::FolderOutOfOrder("a".into())));
        let file_as_dir = Folder::new(vec![file("a", 1), file("a/b", 2)], vec![], CHUNK);
        assert!(matches!(file_as_dir, Err(ManifestError::PathConflict(_))));
        let dir_is_file = Folder::new(vec![file("a", 1)], vec!["a".into()], CHUNK);
        assert_eq!(dir_is_file, Err(ManifestError::DuplicatePath("a".into())));
        let not_empty = Folder::new(vec![file("d/x", 1)], vec!["d".into()], CHUNK);
        assert!(matches!(not_empty, Err(ManifestError::PathConflict(_))));
        let many: Vec<String> = (0..=MAX_FOLDER_ENTRIES)
            .map(|i| format!("d{i:06}"))
            .collect();
        assert_eq!(
            Folder::new(vec![], many, CHUNK),
            Err(ManifestError::TooManyEntries(MAX_FOLDER_ENTRIES + 1))
        );
        // A sibling that sorts between "a" and "a/b" is no conflict.
        Folder::new(
            vec![file("a", 1), file("a.txt", 1)],
            vec!["a b".into()],
            CHUNK,
        )
        .unwrap();
    }

    #[test]
    fn chunks_start_at_each_file_and_skip_empty_files() {
        let chunk = u64::from(CHUNK);
        let folder = Folder::new(
            vec![
                file("a", chunk + 10),
                file("b", 0),
                file("c", 5),
                file("d", 2 * chunk),
            ],
            vec!["e".into()],
            CHUNK,
        )
        .unwrap();
        assert_eq!(folder.chunk_count(), 5);
        assert_eq!(folder.chunks_of(0), 0..2);
        assert_eq!(folder.chunks_of(1), 2..2);
        assert_eq!(folder.chunks_of(2), 2..3);
        let at = |i| folder.locate(i).map(|c| (c.file, c.offset, c.len));
        assert_eq!(at(0), Some((0, 0, CHUNK)));
        assert_eq!(at(1), Some((0, chunk, 10)));
        assert_eq!(at(2), Some((2, 0, 5)));
        assert_eq!(at(3), Some((3, 0, CHUNK)));
        assert_eq!(at(4), Some((3, chunk, CHUNK)));
        assert_eq!(at(5), None);
        assert_eq!(folder.total_bytes(), 3 * chunk + 15);
    }

    #[test]
    fn a_file_or_subfolder_is_selected_by_path() {
        let folder = Folder::new(
            vec![
                file("a/b/c.txt", 1),
                file("a/b.txt", 1),
                file("a/bc", 1),
                file("z", 1),
            ],
            vec!["a/b/empty".into()],
            CHUNK,
        );
        assert!(folder.is_err(), "files must come in path order");
        let mut files = vec![
            file("a/b/c.txt", 1),
            file("a/b.txt", 1),
            file("a/bc", 1),
            file("z", 1),
        ];
        files.sort_by(|x, y| x.path.cmp(&y.path));
        let folder = Folder::new(files, vec!["a/b/empty".into()], CHUNK).unwrap();
        let sub = folder.select("a/b/").unwrap();
        assert!(!sub.is_file);
        let paths: Vec<_> = sub
            .files
            .iter()
            .map(|&i| folder.files()[i].path.as_str())
            .collect();
        assert_eq!(paths, ["a/b/c.txt"], "a/b.txt and a/bc are not inside a/b");
        assert_eq!(sub.empty_dirs, vec![0]);
        assert_eq!(sub.relative("a/b/c.txt"), "c.txt");
        let one = folder.select("z").unwrap();
        assert!(one.is_file);
        assert_eq!(one.relative("z"), "");
        assert_eq!(folder.select("nothing"), None);
        assert_eq!(folder.select("../a"), None);
        assert_eq!(folder.select(""), None);
    }

    #[test]
    fn children_list_subfolders_then_files() {
        let folder = Folder::new(
            vec![
                file("a/x/1", 10),
                file("a/x/2", 5),
                file("a/y", 3),
                file("b", 1),
            ],
            vec!["a/e".into(), "z/deep/er".into()],
            CHUNK,
        )
        .unwrap();
        let names = |path: &str| {
            folder.children(path).map(|c| {
                c.iter()
                    .map(|c| {
                        format!(
                            "{}{}:{}:{}",
                            c.name,
                            if c.is_folder { "/" } else { "" },
                            c.size_bytes,
                            c.file_count
                        )
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            names(""),
            Some(vec!["a/:18:3".into(), "z/:0:0".into(), "b:1:1".into()])
        );
        assert_eq!(
            names("a/"),
            Some(vec!["e/:0:0".into(), "x/:15:2".into(), "y:3:1".into()])
        );
        assert_eq!(names("a/e"), Some(vec![]));
        assert_eq!(names("z"), Some(vec!["deep/:0:0".into()]));
        assert_eq!(names("nope"), None);
    }

    #[test]
    fn encoding_round_trips_and_digest_follows_every_part() {
        let folder = Folder::new(
            vec![file("x/1", 3), file("x/2", 0)],
            vec!["y".into(), "z/w".into()],
            CHUNK,
        )
        .unwrap();
        let bytes = folder.encode();
        assert_eq!(Folder::decode(&bytes, CHUNK), Ok(folder.clone()));
        assert_eq!(
            Folder::decode(&bytes[..bytes.len() - 1], CHUNK),
            Err(ManifestError::BadFolderEncoding)
        );
        let hashes = [[1u8; 32]];
        let same = Folder::new(
            vec![file("x/1", 3), file("x/2", 0)],
            vec!["y".into(), "z/w".into()],
            CHUNK,
        )
        .unwrap();
        assert_eq!(folder.digest(&hashes), same.digest(&hashes));
        let no_empty_dir = Folder::new(
            vec![file("x/1", 3), file("x/2", 0)],
            vec!["y".into()],
            CHUNK,
        )
        .unwrap();
        assert_ne!(folder.digest(&hashes), no_empty_dir.digest(&hashes));
        assert_ne!(folder.digest(&hashes), folder.digest(&[[2u8; 32]]));
    }
}
