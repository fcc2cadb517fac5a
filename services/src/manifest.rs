//! The shared vocabulary of files in the network: file ids, chunk geometry,
//! bitfields of held chunks, display names and manifests, with the
//! validation both index-svc and peer-agent apply to untrusted input.
//!
//! Everything here is pure: no I/O, no proto types (see [`wire`] for the
//! one conversion point to and from `p2p.index.v1.Manifest`).

pub mod folder;

use std::fmt;
use std::sync::Arc;

pub use self::folder::{FOLDER_MIME_TYPE, Folder, FolderFile};

pub mod tree;

/// Length of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;
/// Smallest chunk size a manifest may use.
pub const MIN_CHUNK_BYTES: u32 = 64 * 1024;
/// Largest chunk size a manifest may use.
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024 * 1024;
/// Longest display name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Largest file the network accepts (1 TiB).
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// Most chunks a manifest may list (keeps a manifest under ~4 MiB).
pub const MAX_CHUNKS: u64 = 1 << 17;

/// A BLAKE3 hash.
pub type Hash = [u8; HASH_LEN];

/// What one entry of the network is: a single file, or a folder published
/// as one entry. Stored by index-svc as `files.kind` ([`EntryKind::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EntryKind {
    /// A single file (what every older agent publishes).
    #[default]
    File,
    /// A folder: one entry whose chunks are its files' chunks.
    Folder,
}

impl EntryKind {
    /// The number stored in the database and sent as `p2p.index.v1.EntryKind`.
    pub fn code(self) -> i32 {
        match self {
            Self::File => 0,
            Self::Folder => 1,
        }
    }

    /// The kind a stored or received number means; unknown numbers are
    /// files, as an older peer would read them.
    pub fn from_code(code: i64) -> Self {
        if code == 1 { Self::Folder } else { Self::File }
    }
}

/// A name as listings compare it: every character lowercased with Unicode
/// rules, one at a time. The index filters and sorts by it
/// (`files.name_folded`) and an agent placing a live row on its page
/// compares the same way. Per character, so a folded part of a name is a
/// part of the folded name (the whole-string rule would turn a final `Σ`
/// into `ς` in one and `σ` in the other).
pub fn fold_name(name: &str) -> String {
    name.chars().flat_map(char::to_lowercase).collect()
}

/// Content-derived identity of a file: 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(String);

impl FileId {
    /// Derives the id from what identifies the content: its whole-file
    /// hash, size and chunk size. Identical content published twice gets
    /// the same id.
    pub fn derive(file_hash: &Hash, size_bytes: u64, chunk_size_bytes: u32) -> Self {
        let mut material = Vec::with_capacity(HASH_LEN + 12);
        material.extend_from_slice(file_hash);
        material.extend_from_slice(&size_bytes.to_le_bytes());
        material.extend_from_slice(&chunk_size_bytes.to_le_bytes());
        Self(hex::encode(blake3::derive_key(
            "p2p-file-transfer 2026 file id v1",
            &material,
        )))
    }

    /// Parses a full id (64 lowercase hex characters).
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(ManifestError::BadFileId(text.chars().take(80).collect()))
        }
    }

    /// The hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, for tables.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a manifest, name, id or bitfield was refused. Each message says
/// what was wrong in terms a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Empty name.
    #[error("file name is empty")]
    EmptyName,
    /// Name longer than [`MAX_NAME_BYTES`].
    #[error("file name is {0} bytes long; at most 255 are allowed")]
    NameTooLong(usize),
    /// Name contains `/` or `\`.
    #[error("file name {0:?} contains a path separator; use a plain file name")]
    NameHasSeparator(String),
    /// Name is `.` or `..` or contains `..`.
    #[error("file name {0:?} contains \"..\"; use a plain file name")]
    NameHasDotDot(String),
    /// Name contains a control character.
    #[error("file name {0:?} contains control characters")]
    NameHasControl(String),
    /// Name contains an invisible formatting character (bidi override,
    /// zero-width space, ...) that could disguise it.
    #[error("file name {0:?} contains invisible formatting characters that could disguise it")]
    NameHasInvisible(String),
    /// Name starts or ends with white space.
    #[error("file name {0:?} starts or ends with spaces; trim them")]
    NameHasOuterSpace(String),
    /// Chunk size out of bounds or not a power of two.
    #[error("chunk size {0} bytes is not a power of two between 64 KiB and 64 MiB")]
    BadChunkSize(u32),
    /// File too large.
    #[error("file of {0} bytes is larger than the 1 TiB limit")]
    TooLarge(u64),
    /// Hash list length does not match size and chunk size.
    #[error(
        "manifest lists {got} chunk hashes but a {size_bytes}-byte file in {chunk_size_bytes}-byte chunks has {expected}"
    )]
    ChunkCountMismatch {
        /// Hashes present.
        got: usize,
        /// Hashes required.
        expected: u64,
        /// Declared size.
        size_bytes: u64,
        /// Declared chunk size.
        chunk_size_bytes: u32,
    },
    /// `chunk_hashes` is not a multiple of 32 bytes.
    #[error("chunk hashes are {0} bytes, not a multiple of 32")]
    RaggedHashes(usize),
    /// Whole-file hash of the wrong length.
    #[error("file hash is {0} bytes; BLAKE3 hashes are 32")]
    BadFileHash(usize),
    /// Chunk chaining values (manifest v2) that are not one per chunk, or
    /// do not make up the file hash.
    #[error("the chunk chaining values do not match the file hash; publish the file again")]
    BadChainingValues,
    /// Not a file id.
    #[error("{0:?} is not a file id (64 hex characters)")]
    BadFileId(String),
    /// MIME type not plausible.
    #[error("MIME type {0:?} is not of the form type/subtype")]
    BadMimeType(String),
    /// Bitfield length does not fit the chunk count.
    #[error("bitfield is {got} bytes; a file of {chunks} chunks needs {expected}")]
    BadBitfieldLength {
        /// Bytes present.
        got: usize,
        /// Bytes required.
        expected: usize,
        /// Chunk count.
        chunks: u32,
    },
    /// Bits set past the last chunk.
    #[error("bitfield marks chunks past the end of the file")]
    BitfieldPastEnd,
    /// A folder entry's path is not a safe relative path.
    #[error("folder entry {path:?} is refused: {reason}")]
    BadFolderPath {
        /// The path (cut to 300 characters).
        path: String,
        /// Why, in words.
        reason: String,
    },
    /// Two entries of a folder have the same path.
    #[error("folder lists {0:?} twice")]
    DuplicatePath(String),
    /// A path is a file (or empty folder) and also has entries inside it.
    #[error("folder entries conflict: {0}")]
    PathConflict(String),
    /// Entries not in ascending path order.
    #[error("folder entries are not in path order at {0:?}")]
    FolderOutOfOrder(String),
    /// More entries than [`folder::MAX_FOLDER_ENTRIES`].
    #[error("folder lists {0} entries; at most 100000 are allowed")]
    TooManyEntries(usize),
    /// More path bytes than [`folder::MAX_FOLDER_PATH_BYTES`].
    #[error("folder paths add up to {0} bytes; at most 16 MiB are allowed")]
    PathBytesTooMany(usize),
    /// A folder layout of a version this code does not know.
    #[error("folder layout version {0} is not known here; update this program")]
    UnknownFolderLayout(u32),
    /// Stored folder bytes that do not decode.
    #[error("stored folder layout is damaged")]
    BadFolderEncoding,
    /// A folder manifest whose parts do not agree.
    #[error("folder manifest is inconsistent: {0}")]
    BadFolder(String),
}

/// Unicode format characters that change how text is shown without being
/// seen: bidi embeddings, overrides and isolates, zero-width characters,
/// the soft hyphen, the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Checks a display name: non-empty, at most 255 bytes, no path
/// separators, no `..`, no control or invisible formatting characters, no
/// leading or trailing white space.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    if name.trim().is_empty() {
        return Err(ManifestError::EmptyName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ManifestError::NameTooLong(name.len()));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(ManifestError::NameHasSeparator(name.to_string()));
    }
    if name == "." || name.contains("..") {
        return Err(ManifestError::NameHasDotDot(name.to_string()));
    }
    if name.chars().any(char::is_control) {
        return Err(ManifestError::NameHasControl(
            name.escape_debug().to_string(),
        ));
    }
    if name.chars().any(is_invisible_format) {
        return Err(ManifestError::NameHasInvisible(
            name.escape_unicode().to_string(),
        ));
    }
    if name.trim() != name {
        return Err(ManifestError::NameHasOuterSpace(name.to_string()));
    }
    Ok(())
}

/// Whether `size` is an acceptable chunk size.
pub fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&size)
}

/// The chunk size for a file of `size_bytes`: a power of two giving about
/// 2,048 chunks, at least 256 KiB (small files need few round trips) and at
/// most 16 MiB (a 100 GiB file has 6,400 chunks, a 200 KiB manifest).
pub fn chunk_size_for(size_bytes: u64) -> u32 {
    const FLOOR: u64 = 256 * 1024;
    const CEILING: u64 = 16 * 1024 * 1024;
    let target = size_bytes.div_ceil(2048).max(1).next_power_of_two();
    target.clamp(FLOOR, CEILING) as u32
}

/// Number of chunks of a file (0 for an empty file).
pub fn chunk_count(size_bytes: u64, chunk_size_bytes: u32) -> u64 {
    size_bytes.div_ceil(u64::from(chunk_size_bytes.max(1)))
}

/// Checks what a file's and a folder's manifest share (name, chunk size,
/// total size, `expected` chunk hashes present) and splits the hashes.
fn checked_chunks(
    name: &str,
    size_bytes: u64,
    chunk_size_bytes: u32,
    expected: u64,
    chunk_hashes: &[u8],
) -> Result<Vec<Hash>, ManifestError> {
    validate_name(name)?;
    if !valid_chunk_size(chunk_size_bytes) {
        return Err(ManifestError::BadChunkSize(chunk_size_bytes));
    }
    if size_bytes > MAX_FILE_BYTES {
        return Err(ManifestError::TooLarge(size_bytes));
    }
    if !chunk_hashes.len().is_multiple_of(HASH_LEN) {
        return Err(ManifestError::RaggedHashes(chunk_hashes.len()));
    }
    let got = chunk_hashes.len() / HASH_LEN;
    if got as u64 != expected || expected > MAX_CHUNKS {
        return Err(ManifestError::ChunkCountMismatch {
            got,
            expected,
            size_bytes,
            chunk_size_bytes,
        });
    }
    Ok(chunk_hashes
        .chunks_exact(HASH_LEN)
        .map(|c| {
            let mut h = [0u8; HASH_LEN];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// A file's content description, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Display name.
    pub name: String,
    /// Exact size.
    pub size_bytes: u64,
    /// MIME type.
    pub mime_type: String,
    /// Chunk size, a power of two.
    pub chunk_size_bytes: u32,
    /// One hash per chunk.
    pub chunk_hashes: Vec<Hash>,
    /// Hash of the whole file; for a folder, [`Folder::digest`].
    pub file_hash: Hash,
    /// Manifest v2: each chunk's BLAKE3 chaining value ([`tree`]), which
    /// merge into `file_hash`; empty in a v1 manifest and for files of one
    /// chunk. Set with [`Manifest::with_chaining_values`].
    pub chunk_chaining_values: Vec<Hash>,
    /// The tree, when this entry is a folder (see [`folder`]).
    pub folder: Option<Arc<Folder>>,
}

/// Where chunk `index` of a complete copy is read from: the file itself,
/// or one file of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The folder file (position in [`Folder::files`]), `None` for a file.
    pub file: Option<usize>,
    /// Byte offset within that file.
    pub offset: u64,
    /// The chunk's length.
    pub len: u32,
}

impl Manifest {
    /// Builds and validates a manifest from raw parts (as received).
    pub fn from_parts(
        name: String,
        size_bytes: u64,
        mime_type: String,
        chunk_size_bytes: u32,
        chunk_hashes: &[u8],
        file_hash: &[u8],
    ) -> Result<Self, ManifestError> {
        let chunk_hashes = checked_chunks(
            &name,
            size_bytes,
            chunk_size_bytes,
            chunk_count(size_bytes, chunk_size_bytes),
            chunk_hashes,
        )?;
        let file_hash: Hash = file_hash
            .try_into()
            .map_err(|_| ManifestError::BadFileHash(file_hash.len()))?;
        let mime_type = if mime_type.trim().is_empty() {
            "application/octet-stream".to_string()
        } else {
            mime_type
        };
        if mime_type.len() > 255
            || !mime_type.contains('/')
            || mime_type
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ManifestError::BadMimeType(mime_type));
        }
        Ok(Self {
            name,
            size_bytes,
            mime_type,
            chunk_size_bytes,
            chunk_hashes,
            file_hash,
            chunk_chaining_values: Vec::new(),
            folder: None,
        })
    }

    /// Makes this a v2 manifest with these chaining values (32 bytes per
    /// chunk, concatenated), checked to make up the file hash; empty ones
    /// leave it v1.
    pub fn with_chaining_values(mut self, cvs: &[u8]) -> Result<Self, ManifestError> {
        if cvs.is_empty() {
            return Ok(self);
        }
        if !cvs.len().is_multiple_of(HASH_LEN) {
            return Err(ManifestError::BadChainingValues);
        }
        let cvs: Vec<Hash> = cvs.chunks_exact(HASH_LEN).map(to_hash).collect();
        let root = tree::root(&cvs, u64::from(self.chunk_size_bytes), self.size_bytes);
        if root != Some(self.file_hash) {
            return Err(ManifestError::BadChainingValues);
        }
        self.chunk_chaining_values = cvs;
        Ok(self)
    }

    /// The concatenated chaining values, as carried on the wire and stored
    /// (empty for a v1 manifest).
    pub fn chaining_values_bytes(&self) -> Vec<u8> {
        self.chunk_chaining_values.concat()
    }

    /// Builds and validates a folder's manifest: `chunk_hashes` are its
    /// files' chunk hashes in path order; the whole-content hash is the
    /// folder's digest, so the id follows the whole tree.
    pub fn for_folder(
        name: String,
        folder: Folder,
        chunk_hashes: &[u8],
    ) -> Result<Self, ManifestError> {
        let chunk_size_bytes = folder.chunk_size_bytes();
        let size_bytes = folder.total_bytes();
        let chunk_hashes = checked_chunks(
            &name,
            size_bytes,
            chunk_size_bytes,
            folder.chunk_count(),
            chunk_hashes,
        )?;
        Ok(Self {
            name,
            size_bytes,
            mime_type: FOLDER_MIME_TYPE.to_string(),
            chunk_size_bytes,
            file_hash: folder.digest(&chunk_hashes),
            chunk_hashes,
            chunk_chaining_values: Vec::new(),
            folder: Some(Arc::new(folder)),
        })
    }

    /// Rebuilds a stored manifest: `folder_layout` is
    /// [`Folder::encode`]'s bytes for a folder, empty for a file.
    pub fn from_stored(
        name: String,
        size_bytes: u64,
        mime_type: String,
        chunk_size_bytes: u32,
        chunk_hashes: &[u8],
        file_hash: &[u8],
        folder_layout: &[u8],
    ) -> Result<Self, ManifestError> {
        if folder_layout.is_empty() {
            return Self::from_parts(
                name,
                size_bytes,
                mime_type,
                chunk_size_bytes,
                chunk_hashes,
                file_hash,
            );
        }
        let folder = Folder::decode(folder_layout, chunk_size_bytes)?;
        let built = Self::for_folder(name, folder, chunk_hashes)?;
        if built.file_hash.as_slice() != file_hash || built.size_bytes != size_bytes {
            return Err(ManifestError::BadFolder(
                "the stored digest or size does not match the stored tree".into(),
            ));
        }
        Ok(built)
    }

    /// The stored form of the tree ([`Folder::encode`]), empty for a file.
    pub fn folder_layout_bytes(&self) -> Vec<u8> {
        self.folder.as_ref().map(|f| f.encode()).unwrap_or_default()
    }

    /// Whether this entry is a single file or a folder.
    pub fn kind(&self) -> EntryKind {
        if self.folder.is_some() {
            EntryKind::Folder
        } else {
            EntryKind::File
        }
    }

    /// Files in the entry: a folder's file count, 0 for a file.
    pub fn entry_count(&self) -> u32 {
        self.folder.as_ref().map_or(0, |f| f.files().len() as u32)
    }

    /// Length of the partial file a download writes chunks into (each
    /// chunk at [`Manifest::chunk_offset`]): the file's size, or for a
    /// folder every chunk at a whole chunk's stride.
    pub fn part_len(&self) -> u64 {
        match &self.folder {
            None => self.size_bytes,
            Some(_) => u64::from(self.chunk_count()) * u64::from(self.chunk_size_bytes),
        }
    }

    /// Where chunk `index` of a complete copy is, or `None` past the end.
    pub fn chunk_place(&self, index: u32) -> Option<ChunkPlace> {
        match &self.folder {
            Some(folder) => folder.locate(index).map(|c| ChunkPlace {
                file: Some(c.file),
                offset: c.offset,
                len: c.len,
            }),
            None => {
                if index >= self.chunk_count() {
                    return None;
                }
                let offset = self.chunk_offset(index);
                Some(ChunkPlace {
                    file: None,
                    offset,
                    len: (self.size_bytes - offset).min(u64::from(self.chunk_size_bytes)) as u32,
                })
            }
        }
    }

    /// The content-derived id.
    pub fn file_id(&self) -> FileId {
        FileId::derive(&self.file_hash, self.size_bytes, self.chunk_size_bytes)
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_hashes.len() as u32
    }

    /// Byte offset of chunk `index` in the file, or for a folder in the
    /// download's partial file (see [`Manifest::part_len`]).
    pub fn chunk_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size_bytes)
    }

    /// Length of chunk `index` (the last one may be short), or `None` past
    /// the end.
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        self.chunk_place(index).map(|place| place.len)
    }

    /// Whether `data` is chunk `index` of this file (length and hash).
    pub fn chunk_matches(&self, index: u32, data: &[u8]) -> bool {
        self.verify_chunk(index, data).is_some()
    }

    /// The one check of a received chunk: `None` unless `data` is chunk
    /// `index` of this file. One hash pass: a v2 manifest checks the
    /// chunk's chaining value and returns it (`Some(Some(cv))`), for the
    /// whole-file hash to be built from; a v1 manifest checks the chunk
    /// hash (`Some(None)`).
    pub fn verify_chunk(&self, index: u32, data: &[u8]) -> Option<Option<Hash>> {
        if self.chunk_len(index)? as usize != data.len() {
            return None;
        }
        if let Some(cv) = self.chunk_chaining_values.get(index as usize) {
            let got = tree::chaining_value(self.chunk_offset(index), data);
            return (got == *cv).then_some(Some(got));
        }
        let hash = self.chunk_hashes.get(index as usize)?;
        (blake3::hash(data).as_bytes() == hash).then_some(None)
    }

    /// The concatenated chunk hashes, as carried on the wire and stored.
    pub fn chunk_hashes_bytes(&self) -> Vec<u8> {
        self.chunk_hashes.concat()
    }
}

/// Which chunks of a file a peer holds: one bit per chunk, most
/// significant bit of byte 0 is chunk 0 (BitTorrent's layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
}

impl Bitfield {
    /// No chunk held.
    pub fn empty(len: u32) -> Self {
        Self {
            bytes: vec![0; (len as usize).div_ceil(8)],
            len,
        }
    }

    /// Every chunk held.
    pub fn full(len: u32) -> Self {
        Self::of(len, 0..len)
    }

    /// Chunks `held` held, of `len`; indexes past the end are ignored.
    pub fn of(len: u32, held: impl IntoIterator<Item = u32>) -> Self {
        let mut field = Self::empty(len);
        for i in held {
            field.set(i);
        }
        field
    }

    /// Parses received bytes for a file of `len` chunks; the length must be
    /// exact and no bit past the end may be set.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, ManifestError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(ManifestError::BadBitfieldLength {
                got: bytes.len(),
                expected,
                chunks: len,
            });
        }
        let field = Self {
            bytes: bytes.to_vec(),
            len,
        };
        let spare = expected * 8 - len as usize;
        if spare > 0 && bytes[expected - 1] & ((1u8 << spare) - 1) != 0 {
            return Err(ManifestError::BitfieldPastEnd);
        }
        Ok(field)
    }

    /// Number of chunks the field describes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the file has no chunks at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `index` is held (false past the end).
    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.bytes[(index / 8) as usize] & (0x80 >> (index % 8)) != 0
    }

    /// Marks chunk `index` as held; ignored past the end.
    pub fn set(&mut self, index: u32) {
        if index < self.len {
            self.bytes[(index / 8) as usize] |= 0x80 >> (index % 8);
        }
    }

    /// Marks chunk `index` as not held.
    pub fn clear(&mut self, index: u32) {
        if index < self.len {
            self.bytes[(index / 8) as usize] &= !(0x80 >> (index % 8));
        }
    }

    /// Number of chunks held.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    /// Indexes of held chunks, ascending.
    pub fn held(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// Indexes of missing chunks, ascending.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }

    /// Whether this field holds any chunk that `wanted` marks.
    pub fn intersects(&self, wanted: &Bitfield) -> bool {
        self.bytes
            .iter()
            .zip(&wanted.bytes)
            .any(|(a, b)| a & b != 0)
    }

    /// The wire and storage form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(bytes);
    h
}

/// The one conversion point between [`Manifest`] and the generated
/// `p2p.index.v1.Manifest` message.
pub mod wire {
    use super::*;
    use p2p_proto::index::v1 as pb;

    /// Validates a received manifest, a file's or a folder's.
    pub fn from_proto(manifest: pb::Manifest) -> Result<Manifest, ManifestError> {
        let Some(layout) = manifest.folder else {
            return Manifest::from_parts(
                manifest.name,
                manifest.size_bytes,
                manifest.mime_type,
                manifest.chunk_size_bytes,
                &manifest.chunk_hashes,
                &manifest.file_hash,
            )?
            .with_chaining_values(&manifest.chunk_chaining_values);
        };
        if !manifest.chunk_chaining_values.is_empty() {
            // A folder's chunks are subtrees of its files, not of one tree.
            return Err(ManifestError::BadChainingValues);
        }
        if layout.version != folder::FOLDER_LAYOUT_VERSION {
            return Err(ManifestError::UnknownFolderLayout(layout.version));
        }
        if manifest.chunk_size_bytes != 0 {
            return Err(ManifestError::BadFolder(
                "a folder's chunk size belongs in its layout; the manifest's must be 0".into(),
            ));
        }
        if layout.files.len() + layout.empty_dirs.len() > folder::MAX_FOLDER_ENTRIES {
            return Err(ManifestError::TooManyEntries(
                layout.files.len() + layout.empty_dirs.len(),
            ));
        }
        let mut files = Vec::with_capacity(layout.files.len());
        for file in layout.files {
            let file_hash: Hash = file.file_hash.as_slice().try_into().map_err(|_| {
                ManifestError::BadFolder(format!(
                    "the hash of {:?} is {} bytes; BLAKE3 hashes are 32",
                    file.path,
                    file.file_hash.len()
                ))
            })?;
            files.push(FolderFile {
                path: file.path,
                size_bytes: file.size_bytes,
                file_hash,
            });
        }
        let tree = Folder::new(files, layout.empty_dirs, layout.chunk_size_bytes)?;
        let built = Manifest::for_folder(manifest.name, tree, &manifest.chunk_hashes)?;
        if manifest.size_bytes != built.size_bytes {
            return Err(ManifestError::BadFolder(format!(
                "it says {} bytes but its files add up to {}",
                manifest.size_bytes, built.size_bytes
            )));
        }
        if !manifest.file_hash.is_empty() && manifest.file_hash != built.file_hash {
            return Err(ManifestError::BadFolder(
                "its digest does not match its files".into(),
            ));
        }
        Ok(built)
    }

    /// The message form, with the derived file id filled in.
    pub fn to_proto(manifest: &Manifest) -> pb::Manifest {
        let (chunk_size_bytes, folder) = match &manifest.folder {
            None => (manifest.chunk_size_bytes, None),
            Some(tree) => (
                0,
                Some(pb::FolderLayout {
                    version: folder::FOLDER_LAYOUT_VERSION,
                    chunk_size_bytes: manifest.chunk_size_bytes,
                    files: tree
                        .files()
                        .iter()
                        .map(|f| pb::FolderFile {
                            path: f.path.clone(),
                            size_bytes: f.size_bytes,
                            file_hash: f.file_hash.to_vec(),
                        })
                        .collect(),
                    empty_dirs: tree.empty_dirs().to_vec(),
                }),
            ),
        };
        pb::Manifest {
            file_id: manifest.file_id().to_string(),
            name: manifest.name.clone(),
            size_bytes: manifest.size_bytes,
            mime_type: manifest.mime_type.clone(),
            chunk_size_bytes,
            chunk_hashes: manifest.chunk_hashes_bytes(),
            file_hash: manifest.file_hash.to_vec(),
            chunk_chaining_values: manifest.chaining_values_bytes(),
            folder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(data: &[u8], chunk: u32) -> Manifest {
        let hashes: Vec<u8> = data
            .chunks(chunk as usize)
            .flat_map(|c| *blake3::hash(c).as_bytes())
            .collect();
        Manifest::from_parts(
            "data.bin".into(),
            data.len() as u64,
            String::new(),
            chunk,
            &hashes,
            blake3::hash(data).as_bytes(),
        )
        .expect("valid manifest")
    }

    /// `manifest_for` made v2: with every chunk's chaining value.
    fn v2_for(data: &[u8], chunk: u32) -> Manifest {
        let cvs: Vec<u8> = data
            .chunks(chunk as usize)
            .enumerate()
            .flat_map(|(i, c)| tree::chaining_value(i as u64 * u64::from(chunk), c))
            .collect();
        manifest_for(data, chunk)
            .with_chaining_values(&cvs)
            .expect("chaining values of the data")
    }

    #[test]
    fn a_v2_manifest_verifies_a_chunk_by_its_chaining_value_in_one_pass() {
        let data: Vec<u8> = (0..3 * 65_536 + 100).map(|i| (i % 253) as u8).collect();
        let m = v2_for(&data, 65_536);
        let chunk = &data[65_536..2 * 65_536];
        assert_eq!(
            m.verify_chunk(1, chunk),
            Some(Some(tree::chaining_value(65_536, chunk)))
        );
        assert_eq!(m.verify_chunk(2, chunk), None);
        let mut bad = chunk.to_vec();
        bad[7] ^= 1;
        assert_eq!(m.verify_chunk(1, &bad), None);
        assert_eq!(
            m.verify_chunk(3, &data[3 * 65_536..]),
            Some(Some(tree::chaining_value(3 * 65_536, &data[3 * 65_536..])))
        );
        // A v1 manifest checks the chunk hash and has no chaining value.
        assert_eq!(
            manifest_for(&data, 65_536).verify_chunk(1, chunk),
            Some(None)
        );
    }

    #[test]
    fn chaining_values_that_do_not_make_the_file_hash_are_refused() {
        let data: Vec<u8> = (0..2 * 65_536).map(|i| (i % 251) as u8).collect();
        let m = manifest_for(&data, 65_536);
        let mut cvs = v2_for(&data, 65_536).chaining_values_bytes();
        assert!(m.clone().with_chaining_values(&cvs[..32]).is_err());
        assert!(m.clone().with_chaining_values(&cvs[..40]).is_err());
        cvs[0] ^= 1;
        assert!(matches!(
            m.clone().with_chaining_values(&cvs),
            Err(ManifestError::BadChainingValues)
        ));
        assert_eq!(m.clone().with_chaining_values(&[]), Ok(m));
    }

    #[test]
    fn the_wire_form_keeps_v2_and_leaves_v1_as_it_was() {
        let data: Vec<u8> = (0..2 * 65_536 + 3).map(|i| (i % 249) as u8).collect();
        let v2 = v2_for(&data, 65_536);
        let sent = wire::to_proto(&v2);
        assert_eq!(sent.chunk_chaining_values.len(), 3 * 32);
        assert_eq!(wire::from_proto(sent), Ok(v2.clone()));
        let v1 = wire::to_proto(&manifest_for(&data, 65_536));
        assert!(v1.chunk_chaining_values.is_empty());
        assert_eq!(wire::from_proto(v1).map(|m| m.file_id()), Ok(v2.file_id()));
    }

    #[test]
    fn names_that_escape_or_hide_are_refused() {
        assert!(validate_name("report.pdf").is_ok());
        assert!(validate_name("résumé 2026.txt").is_ok());
        assert_eq!(validate_name(""), Err(ManifestError::EmptyName));
        assert!(matches!(
            validate_name("a/b"),
            Err(ManifestError::NameHasSeparator(_))
        ));
        assert!(matches!(
            validate_name("a\\b"),
            Err(ManifestError::NameHasSeparator(_))
        ));
        assert!(matches!(
            validate_name(".."),
            Err(ManifestError::NameHasDotDot(_))
        ));
        assert!(matches!(
            validate_name("x\u{7}y"),
            Err(ManifestError::NameHasControl(_))
        ));
        assert!(matches!(
            validate_name("\u{202e}fdp.exe"),
            Err(ManifestError::NameHasInvisible(_))
        ));
        assert!(matches!(
            validate_name("a\u{200b}b"),
            Err(ManifestError::NameHasInvisible(_))
        ));
        assert!(matches!(
            validate_name(" a.txt"),
            Err(ManifestError::NameHasOuterSpace(_))
        ));
        assert!(matches!(
            validate_name(&"n".repeat(256)),
            Err(ManifestError::NameTooLong(256))
        ));
    }

    #[test]
    fn chunk_size_grows_with_file_within_bounds() {
        assert_eq!(chunk_size_for(0), 256 * 1024);
        assert_eq!(chunk_size_for(1000), 256 * 1024);
        assert_eq!(chunk_size_for(2 << 30), 1 << 20);
        let huge = chunk_size_for(100 << 30);
        assert_eq!(huge, 16 << 20);
        assert!(chunk_count(100 << 30, huge) * 32 < 4 << 20);
        for size in [0u64, 1, 65_536, 1 << 30, 1 << 40] {
            assert!(valid_chunk_size(chunk_size_for(size)));
        }
    }

    #[test]
    fn manifest_with_wrong_chunk_count_is_refused() {
        let err = Manifest::from_parts(
            "f".into(),
            300_000,
            String::new(),
            65_536,
            &[0; 64],
            &[0; 32],
        );
        assert!(matches!(
            err,
            Err(ManifestError::ChunkCountMismatch { expected: 5, .. })
        ));
        let err = Manifest::from_parts("f".into(), 10, String::new(), 1000, &[0; 32], &[0; 32]);
        assert_eq!(err, Err(ManifestError::BadChunkSize(1000)));
        let err = Manifest::from_parts("f".into(), 10, String::new(), 65_536, &[0; 32], &[0; 31]);
        assert_eq!(err, Err(ManifestError::BadFileHash(31)));
    }

    #[test]
    fn chunks_are_checked_by_length_and_hash() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let m = manifest_for(&data, 65_536);
        assert_eq!(m.chunk_count(), 4);
        assert_eq!(m.chunk_len(3), Some(200_000 - 3 * 65_536));
        assert_eq!(m.chunk_len(4), None);
        assert!(m.chunk_matches(3, &data[3 * 65_536..]));
        assert!(!m.chunk_matches(2, &data[3 * 65_536..]));
        let mut bad = data[..65_536].to_vec();
        bad[7] ^= 1;
        assert!(!m.chunk_matches(0, &bad));
    }

    #[test]
    fn identical_content_gets_identical_id() {
        let data = vec![7u8; 100_000];
        let mut a = manifest_for(&data, 65_536);
        let b = manifest_for(&data, 65_536);
        a.name = "other name".into();
        assert_eq!(a.file_id(), b.file_id());
        assert_ne!(manifest_for(&data, 131_072).file_id(), b.file_id());
        assert!(FileId::parse(a.file_id().as_str()).is_ok());
        assert!(FileId::parse("../etc").is_err());
    }

    #[test]
    fn a_folder_round_trips_and_an_agent_without_folders_refuses_it() {
        let data = vec![9u8; 70_000];
        let files = vec![
            FolderFile {
                path: "a/big".into(),
                size_bytes: data.len() as u64,
                file_hash: *blake3::hash(&data).as_bytes(),
            },
            FolderFile {
                path: "b".into(),
                size_bytes: 0,
                file_hash: *blake3::hash(b"").as_bytes(),
            },
        ];
        let hashes: Vec<u8> = data
            .chunks(65_536)
            .flat_map(|c| *blake3::hash(c).as_bytes())
            .collect();
        let folder = Folder::new(files, vec!["e".into()], 65_536).unwrap();
        let m = Manifest::for_folder("tree".into(), folder, &hashes).unwrap();
        assert_eq!(m.kind(), EntryKind::Folder);
        assert!(m.chunk_matches(1, &data[65_536..]));
        assert_eq!(m.part_len(), 2 * 65_536);
        let sent = wire::to_proto(&m);
        assert_eq!(sent.chunk_size_bytes, 0);
        assert_eq!(wire::from_proto(sent.clone()), Ok(m.clone()));
        let stored = Manifest::from_stored(
            m.name.clone(),
            m.size_bytes,
            m.mime_type.clone(),
            m.chunk_size_bytes,
            &m.chunk_hashes_bytes(),
            &m.file_hash,
            &m.folder_layout_bytes(),
        );
        assert_eq!(stored, Ok(m));
        // What an agent from before folders decodes: the manifest without
        // the field it does not know. It refuses it rather than download
        // the folder as one file.
        let old = pb_without_folder(sent);
        assert_eq!(wire::from_proto(old), Err(ManifestError::BadChunkSize(0)));
    }

    fn pb_without_folder(
        mut manifest: p2p_proto::index::v1::Manifest,
    ) -> p2p_proto::index::v1::Manifest {
        manifest.folder = None;
        manifest
    }

    #[test]
    fn bitfield_round_trips_and_rejects_bits_past_end() {
        let mut f = Bitfield::empty(10);
        f.set(0);
        f.set(9);
        f.set(10);
        assert_eq!(f.as_bytes(), &[0x80, 0x40]);
        assert_eq!(f.count(), 2);
        assert_eq!(f.held().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(Bitfield::from_bytes(f.as_bytes(), 10).as_ref(), Ok(&f));
        assert_eq!(
            Bitfield::from_bytes(&[0x80, 0x20], 10),
            Err(ManifestError::BitfieldPastEnd)
        );
        assert!(matches!(
            Bitfield::from_bytes(&[0x80], 10),
            Err(ManifestError::BadBitfieldLength { .. })
        ));
        assert!(Bitfield::full(10).is_complete());
        assert!(f.intersects(&Bitfield::full(10)));
        assert!(!f.intersects(&Bitfield::empty(10)));
    }
}
