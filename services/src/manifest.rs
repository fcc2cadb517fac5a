//! The shared vocabulary of files in the network: file ids, chunk geometry,
//! bitfields of held chunks, display names and manifests, with the
//! validation both index-svc and peer-agent apply to untrusted input.
//!
//! Everything here is pure: no I/O, no proto types (see [`wire`] for the
//! one conversion point to and from `p2p.index.v1.Manifest`).

use std::fmt;

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
    /// Hash of the whole file.
    pub file_hash: Hash,
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
        validate_name(&name)?;
        if !valid_chunk_size(chunk_size_bytes) {
            return Err(ManifestError::BadChunkSize(chunk_size_bytes));
        }
        if size_bytes > MAX_FILE_BYTES {
            return Err(ManifestError::TooLarge(size_bytes));
        }
        if !chunk_hashes.len().is_multiple_of(HASH_LEN) {
            return Err(ManifestError::RaggedHashes(chunk_hashes.len()));
        }
        let expected = chunk_count(size_bytes, chunk_size_bytes);
        let got = chunk_hashes.len() / HASH_LEN;
        if got as u64 != expected || expected > MAX_CHUNKS {
            return Err(ManifestError::ChunkCountMismatch {
                got,
                expected,
                size_bytes,
                chunk_size_bytes,
            });
        }
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
        let chunk_hashes = chunk_hashes
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Self {
            name,
            size_bytes,
            mime_type,
            chunk_size_bytes,
            chunk_hashes,
            file_hash,
        })
    }

    /// The content-derived id.
    pub fn file_id(&self) -> FileId {
        FileId::derive(&self.file_hash, self.size_bytes, self.chunk_size_bytes)
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_hashes.len() as u32
    }

    /// Byte offset of chunk `index`.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size_bytes)
    }

    /// Length of chunk `index` (the last one may be short), or `None` past
    /// the end.
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        if index >= self.chunk_count() {
            return None;
        }
        let offset = self.chunk_offset(index);
        Some((self.size_bytes - offset).min(u64::from(self.chunk_size_bytes)) as u32)
    }

    /// Whether `data` is chunk `index` of this file (length and hash).
    pub fn chunk_matches(&self, index: u32, data: &[u8]) -> bool {
        match (self.chunk_len(index), self.chunk_hashes.get(index as usize)) {
            (Some(len), Some(hash)) => {
                data.len() == len as usize && blake3::hash(data).as_bytes() == hash
            }
            _ => false,
        }
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
        let mut field = Self::empty(len);
        for i in 0..len {
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

/// The one conversion point between [`Manifest`] and the generated
/// `p2p.index.v1.Manifest` message.
pub mod wire {
    use super::*;
    use p2p_proto::index::v1 as pb;

    /// Validates a received manifest.
    pub fn from_proto(manifest: pb::Manifest) -> Result<Manifest, ManifestError> {
        Manifest::from_parts(
            manifest.name,
            manifest.size_bytes,
            manifest.mime_type,
            manifest.chunk_size_bytes,
            &manifest.chunk_hashes,
            &manifest.file_hash,
        )
    }

    /// The message form, with the derived file id filled in.
    pub fn to_proto(manifest: &Manifest) -> pb::Manifest {
        pb::Manifest {
            file_id: manifest.file_id().to_string(),
            name: manifest.name.clone(),
            size_bytes: manifest.size_bytes,
            mime_type: manifest.mime_type.clone(),
            chunk_size_bytes: manifest.chunk_size_bytes,
            chunk_hashes: manifest.chunk_hashes_bytes(),
            file_hash: manifest.file_hash.to_vec(),
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
