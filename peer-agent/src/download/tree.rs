//! The whole-file BLAKE3 hash built from the chunks as they arrive, so a
//! finished download is not read back and hashed again.
//!
//! BLAKE3 is a tree: every chunk of a file whose chunk size is a power of
//! two (and at least BLAKE3's own 1 KiB chunk) is a complete subtree, so its
//! chaining value (`hazmat::HasherExt::finalize_non_root` at the chunk's
//! offset) can be computed from the chunk alone, in memory, when it
//! arrives; `hazmat::merge_subtrees_*` then combine the chaining values into
//! the root with the same left-heavy shape `blake3::hash` uses
//! (`hazmat::left_subtree_len`). Chunks resumed from an earlier run have no
//! chaining value yet and are read once from the partial file. Files with
//! one chunk, or an unusual chunk size, keep the whole-file read.

use std::sync::Mutex;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use p2p_services::manifest::{Hash, Manifest};

/// The chaining values of one file's chunks, as they arrive.
#[derive(Debug)]
pub struct ChunkTree {
    chunk_size: u64,
    size: u64,
    cvs: Mutex<Vec<Option<ChainingValue>>>,
}

impl ChunkTree {
    /// A tree for `manifest`, or `None` when its chunks are not whole BLAKE3
    /// subtrees (chunk size not a power of two of at least 1 KiB) or it has
    /// a single chunk (whose chunk hash is already the root).
    pub fn for_manifest(manifest: &Manifest) -> Option<Self> {
        Self::new(manifest.size_bytes, u64::from(manifest.chunk_size_bytes))
    }

    /// A tree for a file of `size` bytes in chunks of `chunk_size` (see
    /// [`Self::for_manifest`]).
    pub fn new(size: u64, chunk_size: u64) -> Option<Self> {
        let chunks = size.div_ceil(chunk_size.max(1));
        let usable =
            chunk_size >= blake3::CHUNK_LEN as u64 && chunk_size.is_power_of_two() && chunks >= 2;
        usable.then(|| Self {
            chunk_size,
            size,
            cvs: Mutex::new(vec![None; chunks as usize]),
        })
    }

    /// The chaining value of the chunk at `offset` holding `data`.
    pub fn chaining_value(offset: u64, data: &[u8]) -> ChainingValue {
        blake3::Hasher::new()
            .set_input_offset(offset)
            .update(data)
            .finalize_non_root()
    }

    /// Records chunk `index` (already verified against the manifest).
    pub fn record(&self, index: u32, data: &[u8]) {
        let cv = Self::chaining_value(u64::from(index) * self.chunk_size, data);
        if let Some(slot) = self.lock().get_mut(index as usize) {
            *slot = Some(cv);
        }
    }

    /// Chunks with no chaining value yet (resumed from an earlier run).
    pub fn missing(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, cv)| cv.is_none())
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// The whole file's hash, once every chunk is recorded.
    pub fn root(&self) -> Option<Hash> {
        let cvs: Vec<ChainingValue> = self.lock().iter().copied().collect::<Option<_>>()?;
        let (left, right) = self.split(0, cvs.len());
        let l = self.subtree(&cvs, 0, left);
        let r = self.subtree(&cvs, left, right);
        Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
    }

    /// How the `count` chunks from `first` split into a left and right
    /// subtree: the left one's chunk count, and the end.
    fn split(&self, first: usize, count: usize) -> (usize, usize) {
        let start = first as u64 * self.chunk_size;
        let end = ((first + count) as u64 * self.chunk_size).min(self.size);
        let left_bytes = left_subtree_len(end - start);
        (
            first + (left_bytes / self.chunk_size) as usize,
            first + count,
        )
    }

    fn subtree(&self, cvs: &[ChainingValue], first: usize, end: usize) -> ChainingValue {
        if end - first == 1 {
            return cvs[first];
        }
        let (mid, end) = self.split(first, end - first);
        let l = self.subtree(cvs, first, mid);
        let r = self.subtree(cvs, mid, end);
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<ChainingValue>>> {
        self.cvs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_root_from_chunks_is_the_whole_file_hash() {
        for (chunk, len) in [
            (1024usize, 2048usize),
            (1024, 2049),
            (1024, 3 * 1024),
            (1024, 5 * 1024 + 7),
            (4096, 4 * 4096),
            (4096, 7 * 4096 + 1),
            (4096, 9 * 4096 - 1),
            (262_144, 3 * 262_144 + 12_345),
        ] {
            let data = data(len);
            let tree = ChunkTree::new(len as u64, chunk as u64).expect("usable");
            for (i, piece) in data.chunks(chunk).enumerate() {
                tree.record(i as u32, piece);
            }
            assert_eq!(
                tree.root(),
                Some(*blake3::hash(&data).as_bytes()),
                "chunk {chunk}, len {len}"
            );
        }
    }

    #[test]
    fn the_root_waits_for_every_chunk() {
        let data = data(3 * 1024);
        let tree = ChunkTree::new(data.len() as u64, 1024).unwrap();
        tree.record(0, &data[..1024]);
        tree.record(2, &data[2048..]);
        assert_eq!(tree.missing(), vec![1]);
        assert_eq!(tree.root(), None);
    }

    #[test]
    fn one_chunk_files_and_odd_chunk_sizes_keep_the_whole_file_read() {
        assert!(ChunkTree::new(1000, 1024).is_none());
        assert!(ChunkTree::new(3000, 1000).is_none());
    }
}
