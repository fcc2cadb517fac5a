//! What a held file looked like on disk when it was recorded: its
//! [`Fingerprint`] (size, modification time, inode), and the [`Problem`]
//! a later look finds when the user deleted, moved or edited it. Pure: one
//! `stat` and a comparison, no state; [`super::Holdings::verify`] and the
//! sweep ([`super::integrity`]) use it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a held file looked like on disk when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Its length.
    pub size_bytes: u64,
    /// Its modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Its inode number (a moved-away and replaced file has another).
    pub inode: u64,
}

impl Fingerprint {
    /// The fingerprint of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(Self::of_meta(&meta))
    }

    fn of_meta(meta: &std::fs::Metadata) -> Self {
        Self {
            size_bytes: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            inode: meta.ino(),
        }
    }
}

/// What every file of a held folder looked like, in the folder's file
/// order, folded into one [`Fingerprint`] (its size the files' total, its
/// time and inode fields a digest of every file's), so the store keeps one
/// record per holding whatever its kind. A file of the folder that is
/// deleted, replaced or edited changes it.
pub fn of_folder<'a>(
    root: &Path,
    paths: impl Iterator<Item = &'a str>,
) -> std::io::Result<Fingerprint> {
    let mut digest = blake3::Hasher::new();
    let mut size_bytes = 0u64;
    for path in paths {
        let meta = std::fs::symlink_metadata(root.join(path))?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let file = Fingerprint::of_meta(&meta);
        size_bytes += file.size_bytes;
        digest.update(&file.size_bytes.to_le_bytes());
        digest.update(&file.mtime_ns.to_le_bytes());
        digest.update(&file.inode.to_le_bytes());
    }
    let folded = digest.finalize();
    let bytes = folded.as_bytes();
    Ok(Fingerprint {
        size_bytes,
        mtime_ns: i64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()),
        inode: u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
    })
}

/// Why a held file can no longer be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Nothing is at its path any more (deleted or moved away).
    Gone,
    /// Something else is at its path, or it was edited.
    Changed,
}

/// Compares what a file looks like `now` with what was `recorded`.
pub fn compare(recorded: &Fingerprint, now: std::io::Result<Fingerprint>) -> Option<Problem> {
    match now {
        Ok(now) if now == *recorded => None,
        Ok(_) => Some(Problem::Changed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Problem::Gone),
        Err(_) => Some(Problem::Changed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_intact_until_it_is_edited_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let recorded = Fingerprint::of(&path).unwrap();
        assert_eq!(compare(&recorded, Fingerprint::of(&path)), None);

        std::fs::write(&path, b"hellp").unwrap();
        let edited = Fingerprint::of(&path).unwrap();
        assert_eq!(edited.size_bytes, recorded.size_bytes);
        assert_eq!(
            compare(&recorded, Ok(edited)),
            (edited != recorded).then_some(Problem::Changed)
        );

        std::fs::rename(&path, dir.path().join("g")).unwrap();
        assert_eq!(
            compare(&edited, Fingerprint::of(&path)),
            Some(Problem::Gone)
        );
    }

    #[test]
    fn a_replaced_file_is_changed_even_with_the_same_size_and_time() {
        let recorded = Fingerprint {
            size_bytes: 5,
            mtime_ns: 1,
            inode: 7,
        };
        let replaced = Fingerprint {
            inode: 8,
            ..recorded
        };
        assert_eq!(compare(&recorded, Ok(replaced)), Some(Problem::Changed));
    }
}
