//! The agent's own database (always SQLite, in the data dir): which files it
//! holds, where they are, and which chunks of partial downloads are
//! verified. Only [`super::Holdings`] calls it, and it is the only module
//! that writes SQL.

use std::path::{Path, PathBuf};

use p2p_services::db::{self, Migrations};
use p2p_services::manifest::{Bitfield, FileId, Manifest};
use sqlx::{AnyPool, Row};

use super::fingerprint::Fingerprint;
use crate::error::Error;

/// How the agent came to hold a file, which decides what `Remove` may
/// delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shared from the user's own file, served in place; never deleted.
    Shared,
    /// A completed download: our copy, deleted on `Remove`.
    Downloaded,
    /// A download in progress or interrupted; the `.part` file is ours.
    Partial,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Shared => "shared",
            Kind::Downloaded => "downloaded",
            Kind::Partial => "partial",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "shared" => Some(Kind::Shared),
            "downloaded" => Some(Kind::Downloaded),
            "partial" => Some(Kind::Partial),
            _ => None,
        }
    }
}

/// One stored holding.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// The file's manifest.
    pub manifest: Manifest,
    /// Where its chunks are read from.
    pub path: PathBuf,
    /// Where a partial download goes once complete.
    pub destination: Option<PathBuf>,
    /// How it is held.
    pub kind: Kind,
    /// Verified chunks (full for shared and downloaded files).
    pub bitfield: Bitfield,
    /// What the file at `path` looked like when it was recorded (shared and
    /// downloaded files; `None` for partials and old records).
    pub fingerprint: Option<Fingerprint>,
}

/// The agent's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Opens (creating and migrating) `<data_dir>/agent.db`.
    pub async fn open(data_dir: &Path) -> Result<Self, Error> {
        let url = format!("sqlite://{}", data_dir.join("agent.db").display());
        let migrations = Migrations {
            sqlite: sqlx::migrate!("migrations/sqlite"),
            // The agent's database is always SQLite; the field is required.
            postgres: sqlx::migrate!("migrations/sqlite"),
        };
        let database = db::connect(&url, &migrations).await?;
        Ok(Self {
            pool: database.pool,
        })
    }

    /// Every holding, for loading the in-memory view at start.
    pub async fn all(&self) -> Result<Vec<LocalFile>, Error> {
        let rows = sqlx::query(
            "SELECT file_id, name, size_bytes, mime_type, chunk_size_bytes, chunk_hashes, \
             file_hash, path, destination, kind, bitfield, file_size_bytes, file_mtime_ns, \
             file_inode, folder_layout, chunk_chaining_values FROM local_files",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut files = Vec::with_capacity(rows.len());
        for row in rows {
            let file_id: String = row.try_get("file_id")?;
            match decode(&row) {
                Ok(file) => files.push(file),
                Err(reason) => {
                    tracing::warn!(%file_id, %reason, "ignoring unreadable local file record")
                }
            }
        }
        Ok(files)
    }

    /// Records a holding, replacing any earlier record of the same file.
    pub async fn save(&self, file: &LocalFile) -> Result<(), Error> {
        let m = &file.manifest;
        sqlx::query(
            "INSERT INTO local_files (file_id, name, size_bytes, mime_type, chunk_size_bytes, \
             chunk_hashes, file_hash, path, destination, kind, bitfield, updated_at_ms, \
             file_size_bytes, file_mtime_ns, file_inode, folder_layout, chunk_chaining_values) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (file_id) DO UPDATE SET name = excluded.name, path = excluded.path, \
             chunk_chaining_values = CASE WHEN length(excluded.chunk_chaining_values) > 0 \
                 THEN excluded.chunk_chaining_values ELSE local_files.chunk_chaining_values END, \
             destination = excluded.destination, kind = excluded.kind, \
             bitfield = excluded.bitfield, updated_at_ms = excluded.updated_at_ms, \
             file_size_bytes = excluded.file_size_bytes, file_mtime_ns = excluded.file_mtime_ns, \
             file_inode = excluded.file_inode",
        )
        .bind(m.file_id().to_string())
        .bind(m.name.clone())
        .bind(m.size_bytes as i64)
        .bind(m.mime_type.clone())
        .bind(i64::from(m.chunk_size_bytes))
        .bind(m.chunk_hashes_bytes())
        .bind(m.file_hash.to_vec())
        .bind(file.path.to_string_lossy().into_owned())
        .bind(
            file.destination
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
        .bind(file.kind.as_str().to_string())
        .bind(file.bitfield.as_bytes().to_vec())
        .bind(p2p_services::time::now_ms())
        .bind(file.fingerprint.map_or(-1, |f| f.size_bytes as i64))
        .bind(file.fingerprint.map_or(0, |f| f.mtime_ns))
        .bind(file.fingerprint.map_or(0, |f| f.inode as i64))
        .bind(m.folder_layout_bytes())
        .bind(m.chaining_values_bytes())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Persists the verified chunks of a partial download.
    pub async fn save_verified_chunks(
        &self,
        file: &FileId,
        bitfield: &Bitfield,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE local_files SET bitfield = $1, updated_at_ms = $2 WHERE file_id = $3")
            .bind(bitfield.as_bytes().to_vec())
            .bind(p2p_services::time::now_ms())
            .bind(file.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a holding.
    pub async fn forget(&self, file: &FileId) -> Result<(), Error> {
        sqlx::query("DELETE FROM local_files WHERE file_id = $1")
            .bind(file.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn decode(row: &sqlx::any::AnyRow) -> Result<LocalFile, String> {
    let get_text = |col: &str| -> Result<String, String> {
        row.try_get::<String, _>(col).map_err(|e| e.to_string())
    };
    let get_int = |col: &str| -> Result<i64, String> {
        row.try_get::<i64, _>(col).map_err(|e| e.to_string())
    };
    let get_blob = |col: &str| -> Result<Vec<u8>, String> {
        row.try_get::<Vec<u8>, _>(col).map_err(|e| e.to_string())
    };
    let chaining_values = get_blob("chunk_chaining_values")?;
    let manifest = Manifest::from_stored(
        get_text("name")?,
        u64::try_from(get_int("size_bytes")?).map_err(|e| e.to_string())?,
        get_text("mime_type")?,
        u32::try_from(get_int("chunk_size_bytes")?).map_err(|e| e.to_string())?,
        &get_blob("chunk_hashes")?,
        &get_blob("file_hash")?,
        &get_blob("folder_layout")?,
    )
    .and_then(|m| m.with_chaining_values(&chaining_values))
    .map_err(|e| e.to_string())?;
    let kind_text = get_text("kind")?;
    let kind = Kind::parse(&kind_text).ok_or_else(|| format!("unknown kind {kind_text:?}"))?;
    let bitfield = Bitfield::from_bytes(&get_blob("bitfield")?, manifest.chunk_count())
        .map_err(|e| e.to_string())?;
    let destination = get_text("destination")?;
    let recorded_size = get_int("file_size_bytes")?;
    let fingerprint = (recorded_size >= 0).then(|| Fingerprint {
        size_bytes: recorded_size as u64,
        mtime_ns: get_int("file_mtime_ns").unwrap_or(0),
        inode: get_int("file_inode").unwrap_or(0) as u64,
    });
    Ok(LocalFile {
        fingerprint,
        path: PathBuf::from(get_text("path")?),
        destination: (!destination.is_empty()).then(|| PathBuf::from(destination)),
        kind,
        bitfield,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let data = vec![3u8; 300_000];
        let hashes: Vec<u8> = data
            .chunks(65_536)
            .flat_map(|c| *blake3::hash(c).as_bytes())
            .collect();
        let cvs: Vec<u8> = data
            .chunks(65_536)
            .enumerate()
            .flat_map(|(i, c)| p2p_services::manifest::tree::chaining_value(i as u64 * 65_536, c))
            .collect();
        Manifest::from_parts(
            "a.bin".into(),
            data.len() as u64,
            String::new(),
            65_536,
            &hashes,
            blake3::hash(&data).as_bytes(),
        )
        .and_then(|m| m.with_chaining_values(&cvs))
        .unwrap()
    }

    #[tokio::test]
    async fn verified_chunks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let manifest = manifest();
        let id = manifest.file_id();
        let mut file = LocalFile {
            bitfield: Bitfield::empty(manifest.chunk_count()),
            manifest,
            path: dir.path().join("x.part"),
            destination: Some(dir.path().join("x")),
            kind: Kind::Partial,
            fingerprint: None,
        };
        store.save(&file).await.unwrap();
        file.bitfield.set(2);
        store
            .save_verified_chunks(&id, &file.bitfield)
            .await
            .unwrap();
        drop(store);

        let store = Store::open(dir.path()).await.unwrap();
        let all = store.all().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].kind, Kind::Partial);
        assert_eq!(
            all[0].manifest.chunk_chaining_values, file.manifest.chunk_chaining_values,
            "a v2 manifest stays v2"
        );
        assert_eq!(all[0].manifest.chunk_chaining_values.len(), 5);
        assert_eq!(all[0].bitfield.held().collect::<Vec<_>>(), vec![2]);
        assert_eq!(all[0].destination, file.destination);
        store.forget(&id).await.unwrap();
        assert!(store.all().await.unwrap().is_empty());
    }
}
