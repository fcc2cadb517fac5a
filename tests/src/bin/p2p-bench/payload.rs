//! The file a benchmark transfers: pseudo-random bytes made from a seed,
//! and the BLAKE3 hash every copy is checked against.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

/// Writes `size` pseudo-random bytes (BLAKE3 XOF of `seed`) to `path`.
pub fn random_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// The BLAKE3 hash of the file at `path`, read on all cores.
pub fn file_hash(path: &Path) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(hasher.finalize())
}
