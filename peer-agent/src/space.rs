//! Disk space is planned, not discovered: before a download writes a byte,
//! the filesystems of the partial dir and of the destination must have room
//! for what is still missing (and, on the data dir's filesystem, a reserve
//! so the agent's own database can still record what happens next).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Kept free on the data dir's filesystem for the agent's database.
pub const DATABASE_RESERVE_BYTES: u64 = 4 << 20;

/// Free space on one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// Where the filesystem is mounted (what the user recognises).
    pub mount_point: PathBuf,
    /// Its device, to tell two paths on one filesystem apart from two.
    pub device: u64,
    /// Bytes an unprivileged process may still write.
    pub free_bytes: u64,
}

/// The free space of the filesystem holding `path` (or its nearest existing
/// ancestor, for a destination dir not created yet).
pub fn room_of(path: &Path) -> Result<Room, Error> {
    let mut existing = path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or_else(|| Path::new("/"));
    }
    let meta = std::fs::metadata(existing)
        .map_err(|e| Error::io(format!("cannot stat {}", existing.display()), e))?;
    let stat = rustix::fs::statvfs(existing).map_err(|e| {
        Error::io(
            format!("cannot read the free space of {}", existing.display()),
            e.into(),
        )
    })?;
    let device = meta.dev();
    let mut mount_point = existing.to_path_buf();
    while let Some(parent) = mount_point.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == device => mount_point = parent.to_path_buf(),
            _ => break,
        }
    }
    Ok(Room {
        mount_point,
        device,
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

/// What one filesystem must hold: `bytes` of data, and `reserve_bytes`
/// more that must stay free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Where.
    pub room: Room,
    /// Bytes to be written there.
    pub bytes: u64,
    /// Bytes that must stay free there afterwards.
    pub reserve_bytes: u64,
}

/// What must be free where, for a download of `size_bytes` of which
/// `have_bytes` are already in the partial file: the missing bytes plus the
/// database reserve on the partial dir's filesystem, and the whole file on
/// the destination's when it is another filesystem (then the final move is
/// a copy).
pub fn needs(partial: &Room, destination: &Room, size_bytes: u64, have_bytes: u64) -> Vec<Need> {
    let mut needs = vec![Need {
        room: partial.clone(),
        bytes: size_bytes.saturating_sub(have_bytes),
        reserve_bytes: DATABASE_RESERVE_BYTES,
    }];
    if destination.device != partial.device {
        needs.push(Need {
            room: destination.clone(),
            bytes: size_bytes,
            reserve_bytes: 0,
        });
    }
    needs
}

/// Refuses a download that would not fit (see [`needs`]).
pub fn check_download(
    partial_dir: &Path,
    destination: &Path,
    size_bytes: u64,
    have_bytes: u64,
) -> Result<(), Error> {
    let partial = room_of(partial_dir)?;
    let destination = room_of(destination.parent().unwrap_or(destination))?;
    check(needs(&partial, &destination, size_bytes, have_bytes))
}

/// Refuses a copy of `size_bytes` to `destination` that would not fit.
pub fn check_copy(destination: &Path, size_bytes: u64) -> Result<(), Error> {
    let room = room_of(destination.parent().unwrap_or(destination))?;
    check(vec![Need {
        room,
        bytes: size_bytes,
        reserve_bytes: 0,
    }])
}

fn check(needs: Vec<Need>) -> Result<(), Error> {
    for need in needs {
        if need.bytes.saturating_add(need.reserve_bytes) > need.room.free_bytes {
            return Err(Error::NoSpace {
                needed_bytes: need.bytes,
                reserve_bytes: need.reserve_bytes,
                free_bytes: need.room.free_bytes,
                mount_point: need.room.mount_point,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(device: u64, free_bytes: u64) -> Room {
        Room {
            mount_point: PathBuf::from(format!("/fs{device}")),
            device,
            free_bytes,
        }
    }

    #[test]
    fn one_filesystem_needs_the_missing_bytes_and_the_reserve() {
        let fs = room(1, 100 << 20);
        let needs = needs(&fs, &fs, 64 << 20, 16 << 20);
        assert_eq!(
            needs,
            vec![Need {
                room: fs,
                bytes: 48 << 20,
                reserve_bytes: DATABASE_RESERVE_BYTES
            }]
        );
    }

    #[test]
    fn the_reserve_is_named_when_it_makes_the_difference() {
        let fs = room(1, 66 << 20);
        let err = check(needs(&fs, &fs, 64 << 20, 0)).unwrap_err().to_string();
        assert_eq!(
            err,
            "needs 64.0 MiB, 66.0 MiB free on /fs1 (4.0 MiB more is kept free for the agent's database); free some space or choose another destination with -o"
        );
    }

    #[test]
    fn another_destination_filesystem_needs_the_whole_file() {
        let (data, dest) = (room(1, 100 << 20), room(2, 10 << 20));
        let needs = needs(&data, &dest, 64 << 20, 64 << 20);
        assert_eq!(needs[1].room, dest);
        assert_eq!(needs[1].bytes, 64 << 20);
        let err = check(needs).unwrap_err().to_string();
        assert_eq!(
            err,
            "needs 64.0 MiB, 10.0 MiB free on /fs2; free some space or choose another destination with -o"
        );
    }

    #[test]
    fn the_free_space_of_a_real_dir_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let room = room_of(&dir.path().join("not/yet")).unwrap();
        assert!(room.free_bytes > 0);
        assert!(room.mount_point.is_absolute());
    }
}
