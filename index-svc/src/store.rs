//! All SQL of index-svc, behind methods named for what they mean.
//!
//! The same query text runs on SQLite and PostgreSQL through sqlx's `Any`
//! driver. Online state is never stored: queries compare `last_seen_ms`
//! with a cutoff computed from the lease (see [`crate::lease`]), so every
//! replica agrees. Changes to the file list write their `file_events` row
//! in the same transaction as the change.
//!
//! **Architecture Invariant:** no module but this one writes SQL.

use std::time::Duration;

use p2p_services::db::{self, Backend, Migrations};
use p2p_services::manifest::{Bitfield, EntryKind, FileId, Manifest};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::error::Error;
use crate::events::{FileEventKind, StoredEvent};
use crate::listing::{self, Filter, KeyValue, Order, PageCursor, SortKey};
use crate::peer::{Holding, PeerId, PeerLoad, PeerRecord};
use crate::selection::{Candidate, Report, ReportReason};

/// Most holders considered for one LocateSources call.
pub const MAX_CANDIDATES: i64 = 1000;
/// Most peers ListPeers returns.
pub const MAX_PEERS_LISTED: i64 = 10_000;
/// Renewals per multi-row UPDATE (8 parameters each, well under SQLite's
/// and PostgreSQL's parameter limits).
const RENEWALS_PER_STATEMENT: usize = 500;
/// Most recent reports read for one LocateSources call.
const MAX_REPORTS_READ: i64 = 5000;

/// Who published a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The user id (the token's `sub`).
    pub user_id: String,
    /// The username at publish time.
    pub username: String,
}

/// A file as listed: what it is, who owns it and how available it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Content-derived id.
    pub file_id: FileId,
    /// Display name.
    pub name: String,
    /// Size.
    pub size_bytes: u64,
    /// MIME type.
    pub mime_type: String,
    /// Publisher.
    pub owner: Owner,
    /// Unix ms of the first publish.
    pub added_at_ms: i64,
    /// Online peers holding at least one chunk.
    pub online_holders: u32,
    /// Online peers holding every chunk.
    pub complete_copies: u32,
    /// Chunk size.
    pub chunk_size_bytes: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// A single file or a folder.
    pub kind: EntryKind,
    /// Files in a folder; 0 for a file.
    pub entry_count: u32,
    /// Holders recorded, online or not (what the holders sort compares).
    pub holder_count: i64,
}

/// A heartbeat to write (queued by `crate::batch` until its flush).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The peer renewing.
    pub peer: PeerId,
    /// Its load at the heartbeat.
    pub load: PeerLoad,
    /// When it heartbeated (Unix ms).
    pub seen_ms: i64,
}

/// A holding to write (queued by `crate::batch` until its flush).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldingUpdate {
    /// The holder.
    pub peer: PeerId,
    /// The file.
    pub file_id: FileId,
    /// What it holds (validated against `chunk_count`).
    pub holding: Holding,
    /// The file's chunk count.
    pub chunk_count: u32,
    /// When it announced (Unix ms).
    pub at_ms: i64,
}

/// One flush's worth of writes, for [`Store::apply_batch`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Latest renewal per peer.
    pub renewals: Vec<Renewal>,
    /// Latest holding per (peer, file).
    pub holdings: Vec<HoldingUpdate>,
    /// A caller waits for this batch to be committed (it carries a holder
    /// change, `batch::WriteBehind::hold_now`), so it is committed durably.
    pub durable: bool,
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.renewals.is_empty() && self.holdings.is_empty()
    }
}

/// A peer registering: who runs it, where it listens, and its load.
#[derive(Debug, Clone)]
pub struct NewPeer {
    /// The token's user id.
    pub user_id: String,
    /// The token's username.
    pub username: String,
    /// `host:port` of its PeerService.
    pub advertise_addr: String,
    /// Self-reported version.
    pub agent_version: String,
    /// Load at registration.
    pub load: PeerLoad,
}

/// A source report to record.
#[derive(Debug, Clone)]
pub struct NewReport {
    /// The peer reporting.
    pub reporter: PeerId,
    /// The peer reported.
    pub source: PeerId,
    /// The file being fetched.
    pub file_id: FileId,
    /// What went wrong.
    pub reason: ReportReason,
    /// Free-form detail, already truncated.
    pub detail: String,
}

/// The index database. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// The rows of a multi-row `VALUES` list: `rows` tuples of numbered
/// placeholders, row `i` naming `$(i * per_row + c)` for every `c` of
/// `columns` (1-based; a number may appear twice, for a value bound once
/// and used in two columns).
fn values_rows(rows: usize, per_row: usize, columns: &[usize]) -> String {
    (0..rows)
        .map(|i| {
            let row: Vec<String> = columns
                .iter()
                .map(|c| format!("${}", i * per_row + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Large counters are stored as BIGINT; clamp what does not fit.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// The columns of a [`FileSummary`] from a row set aliased `f`; `$1` is
/// the online cutoff.
macro_rules! summary_columns {
    () => {
        "SELECT f.file_id, f.name, f.size_bytes, f.mime_type, f.owner_id, f.owner_name, \
                f.added_at_ms, f.chunk_size_bytes, f.chunk_count, f.kind, f.entry_count, \
                f.holder_count, \
                (SELECT COUNT(*) FROM holdings h JOIN peers p ON p.peer_id = h.peer_id \
                  WHERE h.file_id = f.file_id AND (h.complete = 1 OR h.chunks_held > 0) \
                    AND p.last_seen_ms > $1) AS online_holders, \
                (SELECT COUNT(*) FROM holdings h JOIN peers p ON p.peer_id = h.peer_id \
                  WHERE h.file_id = f.file_id AND h.complete = 1 \
                    AND p.last_seen_ms > $1) AS complete_copies "
    };
}

/// [`summary_columns`] of the `files` table.
macro_rules! summary_select {
    () => {
        concat!(summary_columns!(), "FROM files f ")
    };
}

/// The load columns of `peers`, aliased `p`.
macro_rules! load_columns {
    () => {
        "p.active_uploads, p.max_uploads, p.upload_rate_bps, p.max_upload_rate_bps, \
         p.uploaded_bytes_last_60s, p.free_disk_bytes"
    };
}

fn summary_from_row(row: &AnyRow) -> Result<FileSummary, Error> {
    let file_id: String = row.try_get("file_id")?;
    Ok(FileSummary {
        file_id: FileId::parse(&file_id).map_err(|e| Error::Corrupt(e.to_string()))?,
        name: row.try_get("name")?,
        size_bytes: to_u64(row.try_get("size_bytes")?),
        mime_type: row.try_get("mime_type")?,
        owner: Owner {
            user_id: row.try_get("owner_id")?,
            username: row.try_get("owner_name")?,
        },
        added_at_ms: row.try_get("added_at_ms")?,
        online_holders: to_u32(row.try_get("online_holders")?),
        complete_copies: to_u32(row.try_get("complete_copies")?),
        chunk_size_bytes: to_u32(row.try_get("chunk_size_bytes")?),
        chunk_count: to_u32(row.try_get("chunk_count")?),
        kind: EntryKind::from_code(row.try_get("kind")?),
        entry_count: to_u32(row.try_get("entry_count")?),
        holder_count: row.try_get("holder_count")?,
    })
}

fn load_from_row(row: &AnyRow) -> Result<PeerLoad, Error> {
    Ok(PeerLoad {
        active_uploads: to_u32(row.try_get("active_uploads")?),
        max_uploads: to_u32(row.try_get("max_uploads")?),
        upload_rate_bps: to_u64(row.try_get("upload_rate_bps")?),
        max_upload_rate_bps: to_u64(row.try_get("max_upload_rate_bps")?),
        uploaded_bytes_last_60s: to_u64(row.try_get("uploaded_bytes_last_60s")?),
        free_disk_bytes: to_u64(row.try_get("free_disk_bytes")?),
    })
}

/// A query with a peer's load bound next, in the column order every
/// statement that writes it lists: `active_uploads, max_uploads,
/// upload_rate_bps, max_upload_rate_bps, uploaded_bytes_last_60s,
/// free_disk_bytes` (the reverse of [`load_from_row`]).
fn bind_load<'q>(query: AnyQuery<'q>, load: &PeerLoad) -> AnyQuery<'q> {
    query
        .bind(i64::from(load.active_uploads))
        .bind(i64::from(load.max_uploads))
        .bind(to_i64(load.upload_rate_bps))
        .bind(to_i64(load.max_upload_rate_bps))
        .bind(to_i64(load.uploaded_bytes_last_60s))
        .bind(to_i64(load.free_disk_bytes))
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Stored holdings keep an empty bitfield for complete holders.
fn holding_columns(holding: &Holding, chunk_count: u32) -> (i64, Vec<u8>, i64) {
    match holding {
        Holding::Complete => (1, Vec::new(), i64::from(chunk_count)),
        Holding::Partial(field) => (0, field.as_bytes().to_vec(), i64::from(field.count())),
    }
}

/// Whether a holding (complete, chunks held) shows its peer as a holder.
fn shows_as_holder(holding: Option<(bool, i64)>) -> bool {
    holding.is_some_and(|(complete, held)| complete || held > 0)
}

/// How the number of holders shown changes when a holding goes from
/// `before` to `after`: -1, 0 or 1.
pub fn holder_delta(before: Option<(bool, i64)>, after: Option<(bool, i64)>) -> i64 {
    i64::from(shows_as_holder(after)) - i64::from(shows_as_holder(before))
}

/// Whether going from `before` (complete, chunks held) to `after` changes
/// what holder counts show.
pub fn holders_changed(before: Option<(bool, i64)>, after: Option<(bool, i64)>) -> bool {
    let visible =
        |h: Option<(bool, i64)>| h.map(|(complete, held)| (complete, complete || held > 0));
    let (b, a) = (visible(before), visible(after));
    match (b, a) {
        (None, None) => false,
        (None, Some((_, shown))) | (Some((_, shown)), None) => shown,
        (Some(b), Some(a)) => b != a,
    }
}

/// The columns of `files` a listing page carries to [`summary_columns`].
const LISTED_COLUMNS: &str = "f.file_id, f.name, f.size_bytes, f.mime_type, f.owner_id, \
     f.owner_name, f.added_at_ms, f.chunk_size_bytes, f.chunk_count, f.kind, f.entry_count, \
     f.name_folded, f.holder_count";

/// The SQL conditions of `filter` over `files f`, numbering placeholders
/// from `next` (left after the last one used); bind them with
/// [`bind_filter`], in the same order.
fn filter_conditions(filter: &Filter, next: &mut usize) -> Vec<String> {
    let mut conditions = Vec::new();
    let mut placeholder = || {
        let n = *next;
        *next += 1;
        n
    };
    if !filter.name_contains.is_empty() {
        conditions.push(format!(
            "COALESCE(f.name_folded, LOWER(f.name)) LIKE ${} ESCAPE '\\'",
            placeholder()
        ));
    }
    if filter.owner_name.is_some() {
        conditions.push(format!("f.owner_name = ${}", placeholder()));
    }
    if filter.kind.is_some() {
        conditions.push(format!("f.kind = ${}", placeholder()));
    }
    conditions
}

fn bind_filter<'q>(mut query: AnyQuery<'q>, filter: &Filter) -> AnyQuery<'q> {
    if !filter.name_contains.is_empty() {
        query = query.bind(listing::contains_pattern(&filter.name_contains));
    }
    if let Some(owner) = &filter.owner_name {
        query = query.bind(owner.clone());
    }
    if let Some(kind) = filter.kind {
        query = query.bind(i64::from(kind.code()));
    }
    query
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Self, Error> {
        let database = db::connect(
            url,
            &Migrations {
                sqlite: sqlx::migrate!("migrations/sqlite"),
                postgres: sqlx::migrate!("migrations/postgres"),
            },
        )
        .await?;
        let store = Self {
            pool: database.pool,
            backend: database.backend,
        };
        store.fold_unfolded_names().await?;
        Ok(store)
    }

    /// Fills `name_folded` for files published before it existed (or by an
    /// older replica still running): SQL cannot run Rust's folding, so the
    /// migration adds the column and this fills it. Safe to run on several
    /// replicas at once: each writes the same value.
    async fn fold_unfolded_names(&self) -> Result<(), Error> {
        let rows = sqlx::query("SELECT file_id, name FROM files WHERE name_folded IS NULL")
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for row in &rows {
            let name: String = row.try_get("name")?;
            sqlx::query("UPDATE files SET name_folded = $1 WHERE file_id = $2")
                .bind(listing::fold_name(&name))
                .bind(row.try_get::<String, _>("file_id")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        tracing::info!(
            files = rows.len(),
            "folded the names of older files for the name filter"
        );
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`): a deferred transaction that reads
    /// and then writes fails at once with "database is locked" when another
    /// writer committed in between, without waiting on the busy timeout.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, Error> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Which backend the store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Registers peers in one statement (one commit): each a new peer or,
    /// when its user already registered its address, a renewal that keeps
    /// the existing id (so its holdings survive). Returns the ids in the
    /// order of `peers`. No two entries may share (user, address): one
    /// statement cannot update a row twice (`batch::Registrations` merges
    /// them first). The caller sorts them by that key, so two replicas
    /// writing overlapping groups lock rows in the same order.
    pub async fn register_peers(
        &self,
        peers: &[&NewPeer],
        now_ms: i64,
    ) -> Result<Vec<PeerId>, Error> {
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "INSERT INTO peers (peer_id, user_id, username, advertise_addr, agent_version, \
                 registered_at_ms, last_seen_ms, active_uploads, max_uploads, upload_rate_bps, \
                 max_upload_rate_bps, uploaded_bytes_last_60s, free_disk_bytes) VALUES ",
        );
        // $6 of each row (the time) is both registered_at_ms and last_seen_ms.
        sql.push_str(&values_rows(
            peers.len(),
            12,
            &[1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12],
        ));
        sql.push_str(
            " ON CONFLICT (user_id, advertise_addr) DO UPDATE SET \
                 username = excluded.username, agent_version = excluded.agent_version, \
                 last_seen_ms = excluded.last_seen_ms, \
                 active_uploads = excluded.active_uploads, max_uploads = excluded.max_uploads, \
                 upload_rate_bps = excluded.upload_rate_bps, \
                 max_upload_rate_bps = excluded.max_upload_rate_bps, \
                 uploaded_bytes_last_60s = excluded.uploaded_bytes_last_60s, \
                 free_disk_bytes = excluded.free_disk_bytes \
             RETURNING peer_id, user_id, advertise_addr",
        );
        let mut query = sqlx::query(&sql);
        for peer in peers {
            query = query
                .bind(PeerId::generate().as_str().to_string())
                .bind(&peer.user_id)
                .bind(&peer.username)
                .bind(&peer.advertise_addr)
                .bind(&peer.agent_version)
                .bind(now_ms);
            query = bind_load(query, &peer.load);
        }
        let rows = query.fetch_all(&self.pool).await?;
        // RETURNING's order is not promised to follow VALUES: match by key.
        let mut ids = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let key: (String, String) = (row.try_get("user_id")?, row.try_get("advertise_addr")?);
            ids.insert(key, PeerId::from_stored(row.try_get("peer_id")?));
        }
        peers
            .iter()
            .map(|peer| {
                ids.remove(&(peer.user_id.clone(), peer.advertise_addr.clone()))
                    .ok_or_else(|| {
                        Error::Corrupt(format!(
                            "registering {} returned no row",
                            peer.advertise_addr
                        ))
                    })
            })
            .collect()
    }

    /// Writes one flush of the write-behind queue in one transaction:
    /// every renewal (lease and load) as multi-row UPDATEs, then every
    /// holding with its `file_events` row when holder counts change. Rows
    /// are written in key order so two replicas flushing overlapping
    /// batches lock them in the same order (no deadlock on PostgreSQL).
    /// Renewals of unknown peers and holdings of deleted files are dropped.
    pub async fn apply_batch(&self, batch: &Batch) -> Result<(), Error> {
        let mut renewals: Vec<&Renewal> = batch.renewals.iter().collect();
        renewals.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut holdings: Vec<&HoldingUpdate> = batch.holdings.iter().collect();
        holdings.sort_by(|a, b| (&a.file_id, &a.peer).cmp(&(&b.file_id, &b.peer)));
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres && !batch.durable {
            // Everything in a flush is restated by the next heartbeat or
            // announcement (within one interval): a crash that loses the
            // last flush loses nothing agents do not send again, so the
            // commit need not wait for the WAL to reach the disk.
            // Registrations, publishes and a flush that carries a holder
            // change someone waits for keep waiting.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        for chunk in renewals.chunks(RENEWALS_PER_STATEMENT) {
            let mut sql = String::from(
                "UPDATE peers SET last_seen_ms = v.column2, active_uploads = v.column3, \
                     max_uploads = v.column4, upload_rate_bps = v.column5, \
                     max_upload_rate_bps = v.column6, uploaded_bytes_last_60s = v.column7, \
                     free_disk_bytes = v.column8 \
                 FROM (VALUES ",
            );
            sql.push_str(&values_rows(chunk.len(), 8, &[1, 2, 3, 4, 5, 6, 7, 8]));
            sql.push_str(") AS v WHERE peers.peer_id = v.column1");
            let mut query = sqlx::query(&sql);
            for renewal in chunk {
                query = query.bind(renewal.peer.as_str()).bind(renewal.seen_ms);
                query = bind_load(query, &renewal.load);
            }
            query.execute(&mut *tx).await?;
        }
        for update in holdings {
            if Self::put_holding(
                &mut tx,
                &update.peer,
                &update.file_id,
                &update.holding,
                update.chunk_count,
                update.at_ms,
            )
            .await?
            {
                Self::log_event(
                    &mut tx,
                    FileEventKind::HoldersChanged,
                    &update.file_id,
                    "",
                    update.at_ms,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user who registered `peer`, or `None` for an unknown peer.
    pub async fn peer_owner(&self, peer: &PeerId) -> Result<Option<String>, Error> {
        Ok(sqlx::query("SELECT user_id FROM peers WHERE peer_id = $1")
            .bind(peer.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("user_id"))
            .transpose()?)
    }

    /// Takes `peer` offline at once (its lease lapses now): the agent
    /// registered again at another address.
    pub async fn retire_peer(&self, peer: &PeerId) -> Result<(), Error> {
        sqlx::query("UPDATE peers SET last_seen_ms = 0 WHERE peer_id = $1")
            .bind(peer.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ok when `peer` exists and belongs to `user_id`.
    pub async fn check_peer_owner(&self, peer: &PeerId, user_id: &str) -> Result<(), Error> {
        match self.peer_owner(peer).await? {
            None => Err(Error::PeerNotFound(peer.to_string())),
            Some(owner) if owner == user_id => Ok(()),
            Some(_) => Err(Error::NotPeerOwner(peer.clone())),
        }
    }

    /// Peers last seen after `seen_after_ms` (pass `i64::MIN` for all),
    /// by user and address.
    pub async fn peers(&self, seen_after_ms: i64) -> Result<Vec<PeerRecord>, Error> {
        let rows = sqlx::query(concat!(
            "SELECT p.peer_id, p.advertise_addr, p.user_id, p.username, p.agent_version, \
                    p.last_seen_ms, ",
            load_columns!(),
            ", (SELECT COUNT(*) FROM holdings h WHERE h.peer_id = p.peer_id AND h.complete = 1) \
                 AS complete_files \
             FROM peers p WHERE p.last_seen_ms > $1 \
             ORDER BY p.username, p.advertise_addr LIMIT $2"
        ))
        .bind(seen_after_ms)
        .bind(MAX_PEERS_LISTED)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PeerRecord {
                    peer_id: PeerId::from_stored(row.try_get("peer_id")?),
                    advertise_addr: row.try_get("advertise_addr")?,
                    user_id: row.try_get("user_id")?,
                    username: row.try_get("username")?,
                    agent_version: row.try_get("agent_version")?,
                    last_seen_ms: row.try_get("last_seen_ms")?,
                    load: load_from_row(row)?,
                    complete_files: to_u32(row.try_get("complete_files")?),
                })
            })
            .collect()
    }

    /// Number of peers last seen after `seen_after_ms`.
    pub async fn count_peers_seen_after(&self, seen_after_ms: i64) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM peers WHERE last_seen_ms > $1")
            .bind(seen_after_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Number of files in the index.
    pub async fn count_files(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM files")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Publishes a manifest owned by `owner`; `holder` (already checked to
    /// belong to the owner's user) becomes a complete holder. Returns
    /// whether the file is new (identical content published before is not).
    pub async fn publish(
        &self,
        manifest: &Manifest,
        owner: &Owner,
        holder: Option<&PeerId>,
        now_ms: i64,
    ) -> Result<bool, Error> {
        let file_id = manifest.file_id();
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO files (file_id, name, size_bytes, mime_type, chunk_size_bytes, \
                 chunk_count, chunk_hashes, file_hash, owner_id, owner_name, added_at_ms, \
                 name_folded, kind, entry_count, folder_layout, chunk_chaining_values) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (file_id) DO NOTHING RETURNING file_id",
        )
        .bind(file_id.as_str())
        .bind(&manifest.name)
        .bind(to_i64(manifest.size_bytes))
        .bind(&manifest.mime_type)
        .bind(i64::from(manifest.chunk_size_bytes))
        .bind(i64::from(manifest.chunk_count()))
        .bind(manifest.chunk_hashes_bytes())
        .bind(manifest.file_hash.to_vec())
        .bind(&owner.user_id)
        .bind(&owner.username)
        .bind(now_ms)
        .bind(listing::fold_name(&manifest.name))
        .bind(i64::from(manifest.kind().code()))
        .bind(i64::from(manifest.entry_count()))
        .bind(manifest.folder_layout_bytes())
        .bind(
            (!manifest.chunk_chaining_values.is_empty()).then(|| manifest.chaining_values_bytes()),
        )
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        let mut changed = false;
        if let Some(peer) = holder {
            changed = Self::put_holding(
                &mut tx,
                peer,
                &file_id,
                &Holding::Complete,
                manifest.chunk_count(),
                now_ms,
            )
            .await?;
        }
        if created {
            Self::log_event(
                &mut tx,
                FileEventKind::Published,
                &file_id,
                &manifest.name,
                now_ms,
            )
            .await?;
        } else if changed {
            Self::log_event(
                &mut tx,
                FileEventKind::HoldersChanged,
                &file_id,
                &manifest.name,
                now_ms,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn put_holding(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        peer: &PeerId,
        file_id: &FileId,
        holding: &Holding,
        chunk_count: u32,
        now_ms: i64,
    ) -> Result<bool, Error> {
        let before = Self::holding_state(tx, peer, file_id).await?;
        let (complete, bitfield, held) = holding_columns(holding, chunk_count);
        // Through the write-behind queue a holding may arrive after its
        // file was deleted: it is then dropped, not an error that would
        // fail the whole batch on the foreign key.
        let written = sqlx::query(
            "INSERT INTO holdings (file_id, peer_id, complete, bitfield, chunks_held, updated_at_ms) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM files WHERE file_id = $1) \
             ON CONFLICT (file_id, peer_id) DO UPDATE SET complete = excluded.complete, \
                 bitfield = excluded.bitfield, chunks_held = excluded.chunks_held, \
                 updated_at_ms = excluded.updated_at_ms",
        )
        .bind(file_id.as_str())
        .bind(peer.as_str())
        .bind(complete)
        .bind(bitfield)
        .bind(held)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        let after = Some((complete == 1, held));
        if written > 0 {
            Self::count_holder(tx, file_id, before, after).await?;
        }
        Ok(written > 0 && holders_changed(before, after))
    }

    /// Keeps `files.holder_count` in step with a holding going from
    /// `before` to `after`, in the transaction that changes it.
    async fn count_holder(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        file_id: &FileId,
        before: Option<(bool, i64)>,
        after: Option<(bool, i64)>,
    ) -> Result<(), Error> {
        let delta = holder_delta(before, after);
        if delta != 0 {
            sqlx::query("UPDATE files SET holder_count = holder_count + $1 WHERE file_id = $2")
                .bind(delta)
                .bind(file_id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn holding_state(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        peer: &PeerId,
        file_id: &FileId,
    ) -> Result<Option<(bool, i64)>, Error> {
        let row = sqlx::query(
            "SELECT complete, chunks_held FROM holdings WHERE file_id = $1 AND peer_id = $2",
        )
        .bind(file_id.as_str())
        .bind(peer.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|row| -> Result<_, Error> {
            Ok((
                row.try_get::<i64, _>("complete")? == 1,
                row.try_get::<i64, _>("chunks_held")?,
            ))
        })
        .transpose()
    }

    async fn log_event(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        kind: FileEventKind,
        file_id: &FileId,
        name: &str,
        now_ms: i64,
    ) -> Result<(), Error> {
        sqlx::query("INSERT INTO file_events (kind, file_id, name, at_ms) VALUES ($1, $2, $3, $4)")
            .bind(kind.as_str())
            .bind(file_id.as_str())
            .bind(name)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The file with holder counts as of `online_after_ms`.
    pub async fn file_summary(
        &self,
        file_id: &FileId,
        online_after_ms: i64,
    ) -> Result<Option<FileSummary>, Error> {
        sqlx::query(concat!(summary_select!(), "WHERE f.file_id = $2"))
            .bind(online_after_ms)
            .bind(file_id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(summary_from_row)
            .transpose()
    }

    /// One page of the files `filter` matches, in `order`, strictly
    /// after `cursor`, at most `limit`. The page is picked from the sort's
    /// index first and holders are counted for its rows only, so a page
    /// costs the same whatever the network's size (the name filter, a
    /// substring, still scans). A row an older replica wrote without a
    /// folded name matches the name filter through the database's `LOWER`
    /// until the next start-up fills it in.
    pub async fn list_files(
        &self,
        filter: &Filter,
        order: Order,
        cursor: Option<&PageCursor>,
        limit: u32,
        online_after_ms: i64,
    ) -> Result<Vec<FileSummary>, Error> {
        let column = match order.key {
            SortKey::Name => "f.name_folded",
            SortKey::Size => "f.size_bytes",
            SortKey::Added => "f.added_at_ms",
            SortKey::Holders => "f.holder_count",
        };
        let (direction, after) = if order.descending {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        let mut next = 2;
        let mut conditions = filter_conditions(filter, &mut next);
        if cursor.is_some() {
            conditions.push(format!(
                "({column}, f.file_id) {after} (${}, ${})",
                next,
                next + 1
            ));
            next += 2;
        }
        let sql = format!(
            concat!(
                summary_columns!(),
                "FROM (SELECT {listed} FROM files f {where_} \
                   ORDER BY {column} {direction}, f.file_id {direction} LIMIT ${limit}) f \
                 ORDER BY {column} {direction}, f.file_id {direction}"
            ),
            listed = LISTED_COLUMNS,
            where_ = where_clause(&conditions),
            limit = next,
            column = column,
            direction = direction,
        );
        let mut query = bind_filter(sqlx::query(&sql).bind(online_after_ms), filter);
        if let Some(cursor) = cursor {
            query = match &cursor.value {
                KeyValue::Text(text) => query.bind(text.clone()),
                KeyValue::Number(n) => query.bind(*n),
            }
            .bind(cursor.file_id.clone());
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(summary_from_row).collect()
    }

    /// How many files `filter` matches.
    pub async fn count_matching(&self, filter: &Filter) -> Result<u64, Error> {
        let mut next = 1;
        let conditions = filter_conditions(filter, &mut next);
        let sql = format!(
            "SELECT COUNT(*) AS n FROM files f {}",
            where_clause(&conditions)
        );
        let row = bind_filter(sqlx::query(&sql), filter)
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(row.try_get("n")?))
    }

    /// The files' generation: bumped (by triggers) whenever a file is
    /// added or removed or its name, owner or kind changes, so a count of
    /// the files a filter matches holds while it stays the same.
    pub async fn files_generation(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT generation FROM files_generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("generation")?)
    }

    /// The sort key of a listed file in `order`, for its page token.
    pub fn sort_value(file: &FileSummary, order: Order) -> KeyValue {
        match order.key {
            SortKey::Name => KeyValue::Text(listing::fold_name(&file.name)),
            SortKey::Size => KeyValue::Number(to_i64(file.size_bytes)),
            SortKey::Added => KeyValue::Number(file.added_at_ms),
            SortKey::Holders => KeyValue::Number(file.holder_count),
        }
    }

    /// The stored manifest of a file.
    pub async fn manifest(&self, file_id: &FileId) -> Result<Option<Manifest>, Error> {
        let Some(row) = sqlx::query(
            "SELECT name, size_bytes, mime_type, chunk_size_bytes, chunk_hashes, file_hash, \
             folder_layout, chunk_chaining_values FROM files WHERE file_id = $1",
        )
        .bind(file_id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let chunk_size: i64 = row.try_get("chunk_size_bytes")?;
        let hashes: Vec<u8> = row.try_get("chunk_hashes")?;
        let file_hash: Vec<u8> = row.try_get("file_hash")?;
        let layout: Vec<u8> = row.try_get("folder_layout")?;
        let cvs: Option<Vec<u8>> = row.try_get("chunk_chaining_values")?;
        Manifest::from_stored(
            row.try_get("name")?,
            to_u64(row.try_get("size_bytes")?),
            row.try_get("mime_type")?,
            to_u32(chunk_size),
            &hashes,
            &file_hash,
            &layout,
        )
        .and_then(|m| m.with_chaining_values(cvs.as_deref().unwrap_or_default()))
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("stored manifest of {file_id}: {e}")))
    }

    /// Chunk count of a file, or `None` when there is no such file.
    pub async fn chunk_count(&self, file_id: &FileId) -> Result<Option<u32>, Error> {
        Ok(
            sqlx::query("SELECT chunk_count FROM files WHERE file_id = $1")
                .bind(file_id.as_str())
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get::<i64, _>("chunk_count"))
                .transpose()?
                .map(to_u32),
        )
    }

    /// Removes a file, its holdings and its reports. Returns false when
    /// there was no such file.
    pub async fn delete_file(&self, file_id: &FileId, now_ms: i64) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("DELETE FROM files WHERE file_id = $1 RETURNING name")
            .bind(file_id.as_str())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let name: String = row.try_get("name")?;
        sqlx::query("DELETE FROM holdings WHERE file_id = $1")
            .bind(file_id.as_str())
            .execute(&mut *tx)
            .await?;
        Self::log_event(&mut tx, FileEventKind::Deleted, file_id, &name, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// What the database says `peer` holds of a file: (complete, chunks
    /// held), or `None` when it holds nothing.
    pub async fn holding_shown(
        &self,
        peer: &PeerId,
        file_id: &FileId,
    ) -> Result<Option<(bool, i64)>, Error> {
        let row = sqlx::query(
            "SELECT complete, chunks_held FROM holdings WHERE file_id = $1 AND peer_id = $2",
        )
        .bind(file_id.as_str())
        .bind(peer.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| -> Result<_, Error> {
            Ok((
                row.try_get::<i64, _>("complete")? == 1,
                row.try_get::<i64, _>("chunks_held")?,
            ))
        })
        .transpose()
    }

    /// Stops offering `peer` for a file. Idempotent.
    pub async fn remove_holding(
        &self,
        peer: &PeerId,
        file_id: &FileId,
        now_ms: i64,
    ) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let before = Self::holding_state(&mut tx, peer, file_id).await?;
        sqlx::query("DELETE FROM holdings WHERE file_id = $1 AND peer_id = $2")
            .bind(file_id.as_str())
            .bind(peer.as_str())
            .execute(&mut *tx)
            .await?;
        Self::count_holder(&mut tx, file_id, before, None).await?;
        if holders_changed(before, None) {
            Self::log_event(&mut tx, FileEventKind::HoldersChanged, file_id, "", now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Online holders of a file with at least one chunk, except `exclude`,
    /// with their reports since `reports_since_ms`.
    pub async fn candidate_sources(
        &self,
        file_id: &FileId,
        chunk_count: u32,
        exclude: Option<&PeerId>,
        online_after_ms: i64,
        now_ms: i64,
        reports_since_ms: i64,
    ) -> Result<Vec<Candidate>, Error> {
        let exclude = exclude.map(PeerId::as_str).unwrap_or("");
        let rows = sqlx::query(concat!(
            "SELECT p.peer_id, p.advertise_addr, p.username, h.complete, h.bitfield, ",
            load_columns!(),
            " FROM holdings h JOIN peers p ON p.peer_id = h.peer_id \
             WHERE h.file_id = $1 AND p.last_seen_ms > $2 AND p.peer_id <> $3 \
               AND (h.complete = 1 OR h.chunks_held > 0) \
             LIMIT $4"
        ))
        .bind(file_id.as_str())
        .bind(online_after_ms)
        .bind(exclude)
        .bind(MAX_CANDIDATES)
        .fetch_all(&self.pool)
        .await?;
        let mut reports = self
            .reports_against_holders(file_id, reports_since_ms, now_ms)
            .await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for row in &rows {
            let peer_id = PeerId::from_stored(row.try_get("peer_id")?);
            let holding = if row.try_get::<i64, _>("complete")? == 1 {
                Holding::Complete
            } else {
                let bytes: Vec<u8> = row.try_get("bitfield")?;
                match Bitfield::from_bytes(&bytes, chunk_count) {
                    Ok(field) => Holding::Partial(field),
                    Err(err) => {
                        tracing::warn!(%peer_id, %file_id, %err, "skipping unreadable stored bitfield");
                        continue;
                    }
                }
            };
            candidates.push(Candidate {
                reports: reports.remove(&peer_id).unwrap_or_default(),
                address: row.try_get("advertise_addr")?,
                username: row.try_get("username")?,
                load: load_from_row(row)?,
                holding,
                peer_id,
            });
        }
        Ok(candidates)
    }

    async fn reports_against_holders(
        &self,
        file_id: &FileId,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<std::collections::HashMap<PeerId, Vec<Report>>, Error> {
        let rows = sqlx::query(
            "SELECT r.source_peer_id, r.reporter_peer_id, r.reason, r.reported_at_ms \
             FROM source_reports r \
             WHERE r.reported_at_ms > $2 \
               AND r.source_peer_id IN (SELECT h.peer_id FROM holdings h WHERE h.file_id = $1) \
             ORDER BY r.reported_at_ms DESC LIMIT $3",
        )
        .bind(file_id.as_str())
        .bind(since_ms)
        .bind(MAX_REPORTS_READ)
        .fetch_all(&self.pool)
        .await?;
        let mut by_source: std::collections::HashMap<PeerId, Vec<Report>> = Default::default();
        for row in &rows {
            let reason: String = row.try_get("reason")?;
            let Some(reason) = ReportReason::parse(&reason) else {
                continue;
            };
            let at: i64 = row.try_get("reported_at_ms")?;
            by_source
                .entry(PeerId::from_stored(row.try_get("source_peer_id")?))
                .or_default()
                .push(Report {
                    reporter: PeerId::from_stored(row.try_get("reporter_peer_id")?),
                    reason,
                    age: Duration::from_millis(to_u64(now_ms - at)),
                });
        }
        Ok(by_source)
    }

    /// Whether a peer with this id exists.
    pub async fn peer_exists(&self, peer: &PeerId) -> Result<bool, Error> {
        Ok(sqlx::query("SELECT 1 AS one FROM peers WHERE peer_id = $1")
            .bind(peer.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// How many different peers reported, since `source` last announced
    /// its holding of `file_id`, that it cannot read the file.
    pub async fn cannot_read_reporters(
        &self,
        source: &PeerId,
        file_id: &FileId,
    ) -> Result<u32, Error> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT r.reporter_peer_id) AS reporters \
             FROM source_reports r JOIN holdings h \
               ON h.peer_id = r.source_peer_id AND h.file_id = r.file_id \
             WHERE r.source_peer_id = $1 AND r.file_id = $2 AND r.reason = $3 \
               AND r.reported_at_ms >= h.updated_at_ms",
        )
        .bind(source.as_str())
        .bind(file_id.as_str())
        .bind(ReportReason::CannotRead.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u32(row.try_get("reporters")?))
    }

    /// Records a report against a source.
    pub async fn record_report(&self, report: &NewReport, now_ms: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO source_reports (source_peer_id, reporter_peer_id, file_id, reason, \
                 detail, reported_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(report.source.as_str())
        .bind(report.reporter.as_str())
        .bind(report.file_id.as_str())
        .bind(report.reason.as_str())
        .bind(&report.detail)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest event's sequence number (0 when the log is empty).
    pub async fn latest_event_seq(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM file_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("seq")?)
    }

    /// Events after `seq`, oldest first, at most `limit`.
    pub async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<StoredEvent>, Error> {
        let rows = sqlx::query(
            "SELECT seq, kind, file_id, name, at_ms FROM file_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            let Some(kind) = FileEventKind::parse(&kind) else {
                tracing::warn!(%kind, "skipping event of unknown kind");
                continue;
            };
            events.push(StoredEvent {
                seq: row.try_get("seq")?,
                kind,
                file_id: row.try_get("file_id")?,
                name: row.try_get("name")?,
                at_ms: row.try_get("at_ms")?,
            });
        }
        Ok(events)
    }

    /// Drops events and reports older than the given instants.
    pub async fn prune(&self, events_before_ms: i64, reports_before_ms: i64) -> Result<u64, Error> {
        let events = sqlx::query("DELETE FROM file_events WHERE at_ms < $1")
            .bind(events_before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let reports = sqlx::query("DELETE FROM source_reports WHERE reported_at_ms < $1")
            .bind(reports_before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(events + reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_counts_change_only_on_visible_transitions() {
        assert!(holders_changed(None, Some((false, 1))));
        assert!(!holders_changed(None, Some((false, 0))));
        assert!(!holders_changed(Some((false, 1)), Some((false, 5))));
        assert!(holders_changed(Some((false, 5)), Some((true, 8))));
        assert!(holders_changed(Some((true, 8)), None));
        assert!(!holders_changed(None, None));
    }

    #[test]
    fn holder_count_moves_only_when_a_holder_appears_or_goes() {
        assert_eq!(holder_delta(None, Some((false, 1))), 1);
        assert_eq!(holder_delta(None, Some((false, 0))), 0);
        assert_eq!(holder_delta(Some((false, 3)), Some((true, 8))), 0);
        assert_eq!(holder_delta(Some((true, 8)), None), -1);
        assert_eq!(holder_delta(Some((false, 0)), None), 0);
    }

    #[test]
    fn values_rows_number_every_row_from_its_own_base() {
        assert_eq!(
            values_rows(2, 3, &[1, 2, 2, 3]),
            "($1, $2, $2, $3), ($4, $5, $5, $6)"
        );
        assert_eq!(values_rows(0, 3, &[1, 2, 3]), "");
    }
}
