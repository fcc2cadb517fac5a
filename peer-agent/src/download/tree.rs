//! The whole-file BLAKE3 hash built from the chunks as they arrive, so a
//! finished download is not read back and hashed again.
//!
//! Every chunk of our manifests (chunk sizes are powers of two) is a
//! complete subtree of the file's BLAKE3 tree, so its chaining value can be
//! had from the chunk alone (`p2p_services::manifest::tree`). A v2 manifest
//! verifies each chunk by that chaining value, so recording it costs
//! nothing more; for a v1 manifest it is computed here, a second pass over
//! the chunk. Chunks resumed from an earlier run have no chaining value yet
//! and are read once from the partial file. Files with one chunk keep the
//! whole-file read (their chunk hash is the file's).

use std::sync::Mutex;

use p2p_services::manifest::{Hash, Manifest, tree};

/// The chaining values of one file's chunks, as they arrive.
#[derive(Debug)]
pub struct ChunkTree {
    chunk_size: u64,
    size: u64,
    cvs: Mutex<Vec<Option<Hash>>>,
}

impl ChunkTree {
    /// A tree for `manifest`, or `None` when its chunks are not whole BLAKE3
    /// subtrees or it has a single chunk.
    pub fn for_manifest(manifest: &Manifest) -> Option<Self> {
        if manifest.folder.is_some() {
            // A folder checks each file's own hash as it writes the tree.
            return None;
        }
        Self::new(manifest.size_bytes, u64::from(manifest.chunk_size_bytes))
    }

    /// A tree for a file of `size` bytes in chunks of `chunk_size` (see
    /// [`Self::for_manifest`]).
    pub fn new(size: u64, chunk_size: u64) -> Option<Self> {
        tree::usable(size, chunk_size).then(|| Self {
            chunk_size,
            size,
            cvs: Mutex::new(vec![None; size.div_ceil(chunk_size) as usize]),
        })
    }

    /// Records chunk `index` (already verified against the manifest): its
    /// chaining value `cv` when the verification produced it, else computed
    /// from `data`.
    pub fn record(&self, index: u32, cv: Option<Hash>, data: &[u8]) {
        let cv =
            cv.unwrap_or_else(|| tree::chaining_value(u64::from(index) * self.chunk_size, data));
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
        let cvs: Vec<Hash> = self.lock().iter().copied().collect::<Option<_>>()?;
        tree::root(&cvs, self.chunk_size, self.size)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Hash>>> {
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
    fn the_root_from_chunks_as_they_arrive_is_the_whole_file_hash() {
        let data = data(5 * 1024 + 7);
        let tree = ChunkTree::new(data.len() as u64, 1024).expect("usable");
        for (i, piece) in data.chunks(1024).enumerate().rev() {
            let given = (i % 2 == 0).then(|| tree::chaining_value(i as u64 * 1024, piece));
            tree.record(i as u32, given, piece);
        }
        assert_eq!(tree.root(), Some(*blake3::hash(&data).as_bytes()));
    }

    #[test]
    fn the_root_waits_for_every_chunk() {
        let data = data(3 * 1024);
        let tree = ChunkTree::new(data.len() as u64, 1024).unwrap();
        tree.record(0, None, &data[..1024]);
        tree.record(2, None, &data[2048..]);
        assert_eq!(tree.missing(), vec![1]);
        assert_eq!(tree.root(), None);
    }

    #[test]
    fn one_chunk_files_and_odd_chunk_sizes_keep_the_whole_file_read() {
        assert!(ChunkTree::new(1000, 1024).is_none());
        assert!(ChunkTree::new(3000, 1000).is_none());
    }
}
