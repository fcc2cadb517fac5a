//! BLAKE3's own tree over a file's chunks (manifest v2): a chunk of a file
//! whose chunk size is a power of two (at least BLAKE3's 1 KiB chunk) is a
//! complete subtree of the file's hash, so its chaining value
//! (`hazmat::HasherExt::finalize_non_root` at the chunk's offset) depends on
//! the chunk alone, and `hazmat::merge_subtrees_*` combine the chaining
//! values into the whole-file hash with the left-heavy shape `blake3::hash`
//! uses (`hazmat::left_subtree_len`). So one hash pass over a chunk both
//! verifies it (against the chaining value a v2 manifest carries, which
//! [`root`] ties to the file hash) and gives what the whole-file hash is
//! built from.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use super::Hash;

/// Whether a file of `size` bytes in chunks of `chunk_size` has chunks that
/// are whole BLAKE3 subtrees, and at least two of them (one chunk's hash is
/// already the file's).
pub fn usable(size: u64, chunk_size: u64) -> bool {
    chunk_size >= blake3::CHUNK_LEN as u64
        && chunk_size.is_power_of_two()
        && size.div_ceil(chunk_size) >= 2
}

/// The chaining value of the chunk at `offset` holding `data`.
pub fn chaining_value(offset: u64, data: &[u8]) -> Hash {
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(data)
        .finalize_non_root()
}

/// The whole file's hash from every chunk's chaining value, in order; `None`
/// when the geometry is not [`usable`] or the count is wrong.
pub fn root(cvs: &[Hash], chunk_size: u64, size: u64) -> Option<Hash> {
    if !usable(size, chunk_size) || cvs.len() as u64 != size.div_ceil(chunk_size) {
        return None;
    }
    let shape = Shape { chunk_size, size };
    let (left, right) = shape.split(0, cvs.len());
    let l = shape.subtree(cvs, 0, left);
    let r = shape.subtree(cvs, left, right);
    Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

struct Shape {
    chunk_size: u64,
    size: u64,
}

impl Shape {
    /// How the `count` chunks from `first` split into a left and right
    /// subtree: the left one's end, and the end.
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
            let cvs: Vec<Hash> = data
                .chunks(chunk)
                .enumerate()
                .map(|(i, piece)| chaining_value((i * chunk) as u64, piece))
                .collect();
            assert_eq!(
                root(&cvs, chunk as u64, len as u64),
                Some(*blake3::hash(&data).as_bytes()),
                "chunk {chunk}, len {len}"
            );
        }
    }

    #[test]
    fn one_chunk_files_and_odd_chunk_sizes_have_no_tree() {
        assert!(!usable(1000, 1024));
        assert!(!usable(3000, 1000));
        assert_eq!(root(&[[0; 32]], 1024, 1000), None);
        assert_eq!(root(&[[0; 32]], 1024, 3000), None);
    }
}
