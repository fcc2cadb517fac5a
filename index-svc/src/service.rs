//! The `p2p.index.v1.IndexService` handlers: glue that converts between
//! the generated messages and the domain types, checks who may do what,
//! and calls the store and the pure modules. Generated types stop here.
//!
//! Every call reaches a handler through `RequireAuth`, so verified claims
//! are always in the request extensions; no handler reads a header.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use p2p_proto::index::v1 as pb;
use p2p_proto::index::v1::index_service_server::IndexService;
use p2p_services::auth::{Claims, claims};
use p2p_services::manifest::{Bitfield, EntryKind, FileId, Manifest, wire};
use p2p_services::metrics;
use p2p_services::time::now_ms;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::advertise::{self, AdvertisePolicy};
use crate::batch::{Full, Registrations, WriteBehind};
use crate::cache::Caches;
use crate::error::Error;
use crate::events::{EventCursor, FileEventKind, StoredEvent};
use crate::lease::Lease;
use crate::listing::{self, Filter, Order, PageCursor, SortKey, TokenError};
use crate::peer::{Holding, PeerId, PeerLoad, PeerRecord};
use crate::selection::{self, Candidate, REPORT_WINDOW, Ranked, ReportReason};
use crate::store::{FileSummary, HoldingUpdate, NewPeer, NewReport, Owner, Renewal, Store};

/// How often each WatchFiles stream looks for new events.
pub const WATCH_POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Most events read per poll.
const WATCH_BATCH: i64 = 256;
/// Longest advertised address accepted.
const MAX_ADDR_BYTES: usize = 255;
/// Longest agent version string kept.
const MAX_VERSION_BYTES: usize = 128;
/// Longest report detail kept.
const MAX_DETAIL_BYTES: usize = 512;

/// The IndexService implementation: the store, the write-behind queue and
/// the registrations' group commit in front of it, the replica-local
/// caches, the lease policy, and the shutdown token that ends WatchFiles
/// streams.
#[derive(Debug, Clone)]
pub struct IndexApi {
    store: Store,
    queue: WriteBehind,
    registrations: Registrations,
    caches: Caches,
    lease: Lease,
    advertise: AdvertisePolicy,
    stop: CancellationToken,
}

impl IndexApi {
    /// A service over `store` whose renewals and holdings go through
    /// `queue` (flushed by [`crate::batch::flusher`]) and whose
    /// registrations go through `registrations` (written by
    /// [`crate::batch::registrar`]); streams end when `stop` is cancelled.
    pub fn new(
        store: Store,
        queue: WriteBehind,
        registrations: Registrations,
        lease: Lease,
        advertise: AdvertisePolicy,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store,
            queue,
            registrations,
            caches: Caches::default(),
            lease,
            advertise,
            stop,
        }
    }

    /// Ok when `peer` exists and belongs to `user_id`; owners are cached
    /// (they never change).
    async fn check_owner(&self, peer: &PeerId, user_id: &str) -> Result<(), Error> {
        let owner = match self.caches.owner(peer) {
            Some(owner) => owner,
            None => {
                let owner = self
                    .store
                    .peer_owner(peer)
                    .await?
                    .ok_or_else(|| Error::PeerNotFound(peer.to_string()))?;
                self.caches.set_owner(peer, &owner);
                owner
            }
        };
        if owner == user_id {
            Ok(())
        } else {
            Err(Error::NotPeerOwner(peer.clone()))
        }
    }

    /// A file's chunk count, or `FileNotFound`; existence is trusted from
    /// the cache for [`crate::cache::FILE_TTL`].
    async fn chunk_count(&self, file_id: &FileId) -> Result<u32, Error> {
        let now = Instant::now();
        if let Some(count) = self.caches.chunk_count(file_id, now) {
            return Ok(count);
        }
        let count = self
            .store
            .chunk_count(file_id)
            .await?
            .ok_or_else(|| Error::FileNotFound(file_id.clone()))?;
        self.caches.set_chunk_count(file_id, count, now);
        Ok(count)
    }

    /// The refusal when the write-behind queue is full.
    fn busy(&self, full: Full) -> Error {
        Error::Busy {
            what: match full {
                Full::Renewals => "heartbeats",
                Full::Holdings => "holding updates",
                Full::Registrations => "registrations",
            },
            retry_after: self.queue.interval.max(Duration::from_secs(1)),
        }
    }
}

fn parse_peer(field: &str, text: &str) -> Result<PeerId, Error> {
    PeerId::parse(text).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{field} {:?} is not a peer id (use the id RegisterPeer returned)",
            text.chars().take(64).collect::<String>()
        ))
    })
}

fn parse_file(text: &str) -> Result<FileId, Error> {
    Ok(FileId::parse(text)?)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Whether the caller may delete a file owned by `owner_id`.
fn may_delete(owner_id: &str, caller: &Claims) -> bool {
    caller.sub == owner_id || caller.is_admin()
}

fn load_from_proto(load: Option<pb::PeerLoad>) -> PeerLoad {
    let load = load.unwrap_or_default();
    PeerLoad {
        active_uploads: load.active_uploads,
        max_uploads: load.max_uploads,
        upload_rate_bps: load.upload_rate_bps,
        max_upload_rate_bps: load.max_upload_rate_bps,
        uploaded_bytes_last_60s: load.uploaded_bytes_last_60s,
        free_disk_bytes: load.free_disk_bytes,
    }
}

fn load_to_proto(load: &PeerLoad) -> pb::PeerLoad {
    pb::PeerLoad {
        active_uploads: load.active_uploads,
        max_uploads: load.max_uploads,
        upload_rate_bps: load.upload_rate_bps,
        max_upload_rate_bps: load.max_upload_rate_bps,
        uploaded_bytes_last_60s: load.uploaded_bytes_last_60s,
        free_disk_bytes: load.free_disk_bytes,
    }
}

/// The order a ListFiles request asks for.
fn sort_order(request: &pb::ListFilesRequest) -> Result<Order, Error> {
    let key = match pb::FileSort::try_from(request.sort) {
        Ok(pb::FileSort::Unspecified) => return Ok(Order::NEWEST_FIRST),
        Ok(pb::FileSort::Name) => SortKey::Name,
        Ok(pb::FileSort::Size) => SortKey::Size,
        Ok(pb::FileSort::Added) => SortKey::Added,
        Ok(pb::FileSort::Holders) => SortKey::Holders,
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "sort {} is not one of name (1), size (2), added (3) or holders (4)",
                request.sort
            )));
        }
    };
    Ok(Order {
        key,
        descending: request.descending,
    })
}

fn file_to_proto(file: FileSummary) -> pb::FileInfo {
    pb::FileInfo {
        file_id: file.file_id.to_string(),
        name: file.name,
        size_bytes: file.size_bytes,
        mime_type: file.mime_type,
        owner_id: file.owner.user_id,
        owner_name: file.owner.username,
        added_at_ms: file.added_at_ms,
        online_holders: file.online_holders,
        complete_copies: file.complete_copies,
        chunk_size_bytes: file.chunk_size_bytes,
        chunk_count: file.chunk_count,
        kind: file.kind.code(),
        entry_count: file.entry_count,
    }
}

fn peer_to_proto(peer: PeerRecord, lease: &Lease, now: i64) -> pb::Peer {
    let state = if lease.is_online(peer.last_seen_ms, now) {
        pb::PeerState::Online
    } else {
        pb::PeerState::Offline
    };
    pb::Peer {
        peer_id: peer.peer_id.to_string(),
        advertise_addr: peer.advertise_addr,
        user_id: peer.user_id,
        username: peer.username,
        state: state as i32,
        load: Some(load_to_proto(&peer.load)),
        last_seen_ms: peer.last_seen_ms,
        agent_version: peer.agent_version,
        complete_files: peer.complete_files,
    }
}

fn source_to_proto(ranked: Ranked) -> pb::Source {
    let candidate = ranked.candidate;
    let (complete, bitfield) = match candidate.holding {
        Holding::Complete => (true, Vec::new()),
        Holding::Partial(field) => (false, field.as_bytes().to_vec()),
    };
    pb::Source {
        peer_id: candidate.peer_id.to_string(),
        address: candidate.address,
        username: candidate.username,
        complete,
        bitfield,
        load: Some(load_to_proto(&candidate.load)),
        score: ranked.score,
        reason: ranked.reason,
    }
}

fn report_reason(reason: i32) -> Result<ReportReason, Error> {
    match pb::ReportReason::try_from(reason) {
        Ok(pb::ReportReason::Unreachable) => Ok(ReportReason::Unreachable),
        Ok(pb::ReportReason::Stalled) => Ok(ReportReason::Stalled),
        Ok(pb::ReportReason::Corrupt) => Ok(ReportReason::Corrupt),
        Ok(pb::ReportReason::CannotRead) => Ok(ReportReason::CannotRead),
        _ => Err(Error::InvalidArgument(
            "reason must be UNREACHABLE, STALLED, CORRUPT or CANNOT_READ".into(),
        )),
    }
}

fn record_choice(ranked: &[Ranked]) {
    if let Some(best) = ranked.first() {
        metrics::counter(
            "p2p_index_source_choices_total",
            "LocateSources answers by the reason class of the top-ranked source.",
            &[("reason", best.class.as_str())],
        )
        .inc();
    }
}

impl IndexApi {
    async fn register_peer(
        &self,
        claims: &Claims,
        caller: Option<std::net::IpAddr>,
        request: pb::RegisterPeerRequest,
    ) -> Result<pb::RegisterPeerResponse, Error> {
        if request.agent_version.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "agent_version contains control characters; send a plain version such as 0.1.0"
                    .into(),
            ));
        }
        let addr = match (request.advertise_addr.trim(), request.advertise_port) {
            ("", 0) => {
                return Err(Error::InvalidArgument(
                    "send advertise_addr (host:port of your PeerService), or advertise_port to be \
                     recorded at the address this call comes from"
                        .into(),
                ));
            }
            ("", port) => {
                let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
                    Error::InvalidArgument(format!("advertise_port {port} is not a TCP port"))
                })?;
                let ip = caller.ok_or_else(|| {
                    Error::InvalidArgument(
                        "the index cannot see this call's source address: send advertise_addr"
                            .into(),
                    )
                })?;
                std::net::SocketAddr::new(ip.to_canonical(), port).to_string()
            }
            (addr, _) => addr.to_string(),
        };
        // Checked before registering, so a refusal leaves nothing behind;
        // an unknown peer is fine (already gone).
        let replaces = match request.replaces_peer_id.trim() {
            "" => None,
            text => {
                let old = parse_peer("replaces_peer_id", text)?;
                match self.check_owner(&old, &claims.sub).await {
                    Ok(()) => Some(old),
                    Err(Error::PeerNotFound(_)) => None,
                    Err(err) => return Err(err),
                }
            }
        };
        let (host, port) =
            advertise::split(&addr, MAX_ADDR_BYTES).map_err(Error::InvalidArgument)?;
        self.advertise
            .check(&addr, host, port, caller)
            .await
            .map_err(Error::AdvertiseRefused)?;
        let peer = NewPeer {
            user_id: claims.sub.clone(),
            username: claims.name.clone(),
            advertise_addr: addr,
            agent_version: truncate(request.agent_version, MAX_VERSION_BYTES),
            load: load_from_proto(request.load),
        };
        let addr = peer.advertise_addr.clone();
        let peer_id = self
            .registrations
            .register(peer)
            .map_err(|full| self.busy(full))?
            .await?;
        self.caches.set_owner(&peer_id, &claims.sub);
        tracing::info!(%peer_id, user = %claims.name, %addr, "peer registered");
        if let Some(old) = replaces.filter(|old| *old != peer_id) {
            self.retire(&old).await?;
            tracing::info!(%old, new = %peer_id, %addr, "peer moved; its old address is no longer offered");
        }
        Ok(pb::RegisterPeerResponse {
            peer_id: peer_id.to_string(),
            lease_ttl_ms: self.lease.ttl.as_millis() as u64,
            heartbeat_interval_ms: self.lease.heartbeat_interval.as_millis() as u64,
            advertise_addr: addr,
            observed_ip: caller
                .map(|ip| ip.to_canonical().to_string())
                .unwrap_or_default(),
        })
    }

    /// Takes `old` (the caller's own, checked by the caller) offline at
    /// once, with anything queued for it.
    async fn retire(&self, old: &PeerId) -> Result<(), Error> {
        let _gate = self.queue.gate().await;
        self.queue.with(|pending| pending.forget_peer(old));
        self.store.retire_peer(old).await?;
        self.caches.forget_all_sources();
        Ok(())
    }

    async fn heartbeat(
        &self,
        claims: &Claims,
        caller: Option<std::net::IpAddr>,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, Error> {
        let peer = parse_peer("peer_id", &request.peer_id)?;
        let load = load_from_proto(request.load);
        self.check_owner(&peer, &claims.sub).await?;
        let renewal = Renewal {
            peer,
            load,
            seen_ms: now_ms(),
        };
        self.queue
            .with(|pending| pending.renew(renewal))
            .map_err(|full| self.busy(full))?;
        Ok(pb::HeartbeatResponse {
            lease_ttl_ms: self.lease.ttl.as_millis() as u64,
            observed_ip: caller
                .map(|ip| ip.to_canonical().to_string())
                .unwrap_or_default(),
        })
    }

    async fn list_peers(
        &self,
        request: pb::ListPeersRequest,
    ) -> Result<pb::ListPeersResponse, Error> {
        let now = now_ms();
        let seen_after = if request.include_offline {
            i64::MIN
        } else {
            self.lease.online_after(now)
        };
        let peers = self.store.peers(seen_after).await?;
        Ok(pb::ListPeersResponse {
            peers: peers
                .into_iter()
                .map(|p| peer_to_proto(p, &self.lease, now))
                .collect(),
        })
    }

    async fn summary(&self, file_id: &FileId) -> Result<FileSummary, Error> {
        self.store
            .file_summary(file_id, self.lease.online_after(now_ms()))
            .await?
            .ok_or_else(|| Error::FileNotFound(file_id.clone()))
    }

    async fn publish_file(
        &self,
        claims: &Claims,
        request: pb::PublishFileRequest,
    ) -> Result<pb::PublishFileResponse, Error> {
        let manifest = request
            .manifest
            .ok_or_else(|| Error::InvalidArgument("manifest is missing".into()))?;
        let manifest = wire::from_proto(manifest)?;
        let holder = match request.peer_id.trim() {
            "" => None,
            text => {
                let peer = parse_peer("peer_id", text)?;
                self.check_owner(&peer, &claims.sub).await?;
                Some(peer)
            }
        };
        let owner = Owner {
            user_id: claims.sub.clone(),
            username: claims.name.clone(),
        };
        let created = {
            let _gate = self.queue.gate().await;
            if let Some(peer) = &holder {
                let file_id = manifest.file_id();
                self.queue
                    .with(|pending| pending.forget_holding(peer, &file_id));
            }
            self.store
                .publish(&manifest, &owner, holder.as_ref(), now_ms())
                .await?
        };
        let file = self.summary(&manifest.file_id()).await?;
        if created {
            tracing::info!(file_id = %file.file_id, name = %file.name, owner = %claims.name, "file published");
        }
        Ok(pb::PublishFileResponse {
            file: Some(file_to_proto(file)),
            created,
        })
    }

    async fn list_files(
        &self,
        request: pb::ListFilesRequest,
    ) -> Result<pb::ListFilesResponse, Error> {
        let limit = listing::page_size(request.page_size).ok_or_else(|| {
            Error::TooLarge(format!(
                "page_size {} is over the limit of {}; page through with next_page_token",
                request.page_size,
                listing::MAX_PAGE_SIZE
            ))
        })?;
        if request.name_contains.len() > listing::MAX_FILTER_BYTES {
            return Err(Error::TooLarge(format!(
                "name_contains is {} bytes; at most {}",
                request.name_contains.len(),
                listing::MAX_FILTER_BYTES
            )));
        }
        let order = sort_order(&request)?;
        let cursor = match request.page_token.trim() {
            "" => None,
            token => Some(PageCursor::decode(token, order).map_err(|err| match err {
                TokenError::Garbled => Error::InvalidArgument(
                    "page_token is not one this index issued; start again without it".into(),
                ),
                TokenError::OtherOrder { issued_for } => Error::InvalidArgument(format!(
                    "page_token was issued for the list sorted by {}, not by {}; \
                     start again without it when changing the sort",
                    issued_for.label(),
                    order.label()
                )),
            })?),
        };
        let kind = match request.kind {
            None => None,
            Some(code) => Some(match pb::EntryKind::try_from(code) {
                Ok(kind) => EntryKind::from_code(i64::from(kind as i32)),
                Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "kind {code} is neither a file (0) nor a folder (1)"
                    )));
                }
            }),
        };
        let owner_name = request.owner_name.trim();
        if owner_name.len() > listing::MAX_FILTER_BYTES {
            return Err(Error::TooLarge(format!(
                "owner_name is {} bytes; at most {}",
                owner_name.len(),
                listing::MAX_FILTER_BYTES
            )));
        }
        let filter = Filter {
            name_contains: request.name_contains,
            owner_name: (!owner_name.is_empty()).then(|| owner_name.to_string()),
            kind,
        };
        let (files, total_count) = tokio::join!(
            self.store.list_files(
                &filter,
                order,
                cursor.as_ref(),
                limit + 1,
                self.lease.online_after(now_ms()),
            ),
            async {
                match request.include_total {
                    true => self.count_matching(&filter).await.map(Some),
                    false => Ok(None),
                }
            }
        );
        let (mut files, total_count) = (files?, total_count?);
        let next_page_token = if files.len() > limit as usize {
            files.truncate(limit as usize);
            files
                .last()
                .map(|f| {
                    PageCursor {
                        order,
                        value: Store::sort_value(f, order),
                        file_id: f.file_id.to_string(),
                    }
                    .encode()
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListFilesResponse {
            files: files.into_iter().map(file_to_proto).collect(),
            next_page_token,
            total_count,
        })
    }

    /// How many files `filter` matches, counted at most once per change
    /// to the files (see [`Caches::count`]).
    async fn count_matching(&self, filter: &Filter) -> Result<u64, Error> {
        let generation = self.store.files_generation().await?;
        if let Some(count) = self.caches.count(filter, generation) {
            return Ok(count);
        }
        let count = self.store.count_matching(filter).await?;
        self.caches.set_count(filter, generation, count);
        Ok(count)
    }

    async fn get_file(&self, request: pb::GetFileRequest) -> Result<pb::GetFileResponse, Error> {
        let file_id = parse_file(&request.file_id)?;
        let file = self.summary(&file_id).await?;
        let manifest = self.manifest(&file_id).await?;
        Ok(pb::GetFileResponse {
            file: Some(file_to_proto(file)),
            manifest: Some(wire::to_proto(&manifest)),
        })
    }

    /// A file's manifest, from this replica's cache when it has it (a
    /// manifest never changes).
    async fn manifest(&self, file_id: &FileId) -> Result<std::sync::Arc<Manifest>, Error> {
        if let Some(manifest) = self.caches.manifest(file_id) {
            return Ok(manifest);
        }
        let manifest = std::sync::Arc::new(
            self.store
                .manifest(file_id)
                .await?
                .ok_or_else(|| Error::FileNotFound(file_id.clone()))?,
        );
        self.caches.set_manifest(file_id, manifest.clone());
        Ok(manifest)
    }

    async fn delete_file(
        &self,
        claims: &Claims,
        request: pb::DeleteFileRequest,
    ) -> Result<pb::DeleteFileResponse, Error> {
        let file_id = parse_file(&request.file_id)?;
        let file = self.summary(&file_id).await?;
        if !may_delete(&file.owner.user_id, claims) {
            return Err(Error::NotFileOwner(file_id));
        }
        let _gate = self.queue.gate().await;
        self.queue.with(|pending| pending.forget_file(&file_id));
        let deleted = self.store.delete_file(&file_id, now_ms()).await?;
        self.caches.forget_file(&file_id);
        if !deleted {
            return Err(Error::FileNotFound(file_id));
        }
        tracing::info!(%file_id, name = %file.name, by = %claims.name, "file deleted");
        Ok(pb::DeleteFileResponse {})
    }

    async fn update_holdings(
        &self,
        claims: &Claims,
        request: pb::UpdateHoldingsRequest,
    ) -> Result<pb::UpdateHoldingsResponse, Error> {
        let peer = parse_peer("peer_id", &request.peer_id)?;
        let file_id = parse_file(&request.file_id)?;
        self.check_owner(&peer, &claims.sub).await?;
        let chunk_count = self.chunk_count(&file_id).await?;
        let holding = if request.complete {
            Holding::Complete
        } else {
            Holding::from_bitfield(Bitfield::from_bytes(&request.bitfield, chunk_count)?)
        };
        // A change that holder counts show (a new holder, a complete copy)
        // is committed with its event before the call returns, in a flush
        // started at once and shared with the other holder changes that
        // arrive meanwhile, so every replica offers the new holder right
        // away; a partial holder's growing bitfield, the bulk of the
        // traffic, waits for the next flush.
        let before = self.store.holding_shown(&peer, &file_id).await?;
        let after = (
            matches!(holding, Holding::Complete),
            i64::from(holding.chunks_held(chunk_count)),
        );
        let update = HoldingUpdate {
            peer,
            file_id,
            holding,
            chunk_count,
            at_ms: now_ms(),
        };
        if crate::store::holders_changed(before, Some(after)) {
            let file_id = update.file_id.clone();
            self.queue.hold_now(update).await?;
            self.caches.forget_sources(&file_id);
        } else {
            self.queue
                .with(|pending| pending.hold(update))
                .map_err(|full| self.busy(full))?;
        }
        Ok(pb::UpdateHoldingsResponse {})
    }

    async fn stop_sharing(
        &self,
        claims: &Claims,
        request: pb::StopSharingRequest,
    ) -> Result<pb::StopSharingResponse, Error> {
        let peer = parse_peer("peer_id", &request.peer_id)?;
        let file_id = parse_file(&request.file_id)?;
        self.check_owner(&peer, &claims.sub).await?;
        let _gate = self.queue.gate().await;
        self.queue
            .with(|pending| pending.forget_holding(&peer, &file_id));
        self.store.remove_holding(&peer, &file_id, now_ms()).await?;
        self.caches.forget_sources(&file_id);
        Ok(pb::StopSharingResponse {})
    }

    async fn locate_sources(
        &self,
        request: pb::LocateSourcesRequest,
    ) -> Result<pb::LocateSourcesResponse, Error> {
        let file_id = parse_file(&request.file_id)?;
        let exclude = match request.peer_id.trim() {
            "" => None,
            text => Some(parse_peer("peer_id", text)?),
        };
        let chunk_count = self.chunk_count(&file_id).await?;
        let wanted = if request.wanted.is_empty() {
            None
        } else {
            Some(Bitfield::from_bytes(&request.wanted, chunk_count)?)
        };
        let candidates: Vec<Candidate> = self
            .sources(&file_id, chunk_count)
            .await?
            .iter()
            .filter(|c| Some(&c.peer_id) != exclude.as_ref())
            .cloned()
            .collect();
        let ranked = selection::rank(
            candidates,
            wanted.as_ref(),
            selection::effective_limit(request.limit),
            &mut rand::thread_rng(),
        );
        record_choice(&ranked);
        let manifest = if request.include_manifest {
            Some(wire::to_proto(&*self.manifest(&file_id).await?))
        } else {
            None
        };
        Ok(pb::LocateSourcesResponse {
            sources: ranked.into_iter().map(source_to_proto).collect(),
            chunk_count,
            manifest,
        })
    }

    /// A file's online holders with their load and recent reports, from
    /// the database or, read less than [`crate::cache::SOURCES_TTL`] ago,
    /// from this replica's cache.
    async fn sources(
        &self,
        file_id: &FileId,
        chunk_count: u32,
    ) -> Result<std::sync::Arc<Vec<Candidate>>, Error> {
        if let Some(sources) = self.caches.sources(file_id, Instant::now()) {
            return Ok(sources);
        }
        let generation = self.caches.sources_generation();
        let read_at = Instant::now();
        let now = now_ms();
        let sources = std::sync::Arc::new(
            self.store
                .candidate_sources(
                    file_id,
                    chunk_count,
                    None,
                    self.lease.online_after(now),
                    now,
                    now - REPORT_WINDOW.as_millis() as i64,
                )
                .await?,
        );
        self.caches
            .set_sources(file_id, sources.clone(), read_at, generation);
        Ok(sources)
    }

    async fn report_source(
        &self,
        claims: &Claims,
        request: pb::ReportSourceRequest,
    ) -> Result<pb::ReportSourceResponse, Error> {
        let reporter = parse_peer("peer_id", &request.peer_id)?;
        let source = parse_peer("source_peer_id", &request.source_peer_id)?;
        let file_id = parse_file(&request.file_id)?;
        let reason = report_reason(request.reason)?;
        self.check_owner(&reporter, &claims.sub).await?;
        if !self.store.peer_exists(&source).await? {
            return Err(Error::PeerNotFound(source.to_string()));
        }
        let report = NewReport {
            reporter,
            source,
            file_id,
            reason,
            detail: truncate(request.detail, MAX_DETAIL_BYTES),
        };
        let now = now_ms();
        self.store.record_report(&report, now).await?;
        self.caches.forget_sources(&report.file_id);
        if reason == ReportReason::CannotRead {
            let reporters = self
                .store
                .cannot_read_reporters(&report.source, &report.file_id)
                .await?;
            if reporters >= selection::CANNOT_READ_REPORTERS {
                tracing::info!(source = %report.source, file_id = %report.file_id, reporters,
                    "holder cannot read the file; not offering it until it announces again");
                let _gate = self.queue.gate().await;
                self.queue
                    .with(|pending| pending.forget_holding(&report.source, &report.file_id));
                self.store
                    .remove_holding(&report.source, &report.file_id, now)
                    .await?;
                self.caches.forget_sources(&report.file_id);
            }
        }
        metrics::counter(
            "p2p_index_source_reports_total",
            "Bad-source reports received, by reason.",
            &[("reason", reason.as_str())],
        )
        .inc();
        tracing::info!(source = %report.source, reporter = %report.reporter, file_id = %report.file_id,
            reason = reason.as_str(), detail = %report.detail, "source reported");
        Ok(pb::ReportSourceResponse {})
    }

    /// The message for one logged event, or `None` when the file it names
    /// is gone and the event no longer says anything useful.
    async fn event_message(
        &self,
        event: &StoredEvent,
        resume_after_seq: i64,
    ) -> Result<Option<pb::FileEvent>, Error> {
        let kind = match event.kind {
            FileEventKind::Published => pb::FileEventKind::Published,
            FileEventKind::Deleted => pb::FileEventKind::Deleted,
            FileEventKind::HoldersChanged => pb::FileEventKind::HoldersChanged,
        };
        let file = if event.kind == FileEventKind::Deleted {
            Some(pb::FileInfo {
                file_id: event.file_id.clone(),
                name: event.name.clone(),
                ..Default::default()
            })
        } else {
            let Ok(file_id) = FileId::parse(&event.file_id) else {
                return Ok(None);
            };
            match self
                .store
                .file_summary(&file_id, self.lease.online_after(now_ms()))
                .await?
            {
                Some(summary) => Some(file_to_proto(summary)),
                None => return Ok(None),
            }
        };
        Ok(Some(pb::FileEvent {
            kind: kind as i32,
            file_id: event.file_id.clone(),
            file,
            at_ms: event.at_ms,
            seq: event.seq,
            resume_after_seq,
        }))
    }

    /// A stream of file events after `after_seq` (0: after the current end
    /// of the log). It polls the log every [`WATCH_POLL_INTERVAL`], holds at
    /// most one batch, and ends when the client goes away (the stream is
    /// dropped) or the server shuts down. No task is spawned: the stream is
    /// owned by the call. Each event carries the position a client resumes
    /// from (on any replica) without losing one: everything up to it was
    /// sent, counting the events of the batch still waiting to be.
    async fn watch_files(&self, after_seq: i64) -> Result<WatchStream, Error> {
        if after_seq < 0 {
            return Err(Error::InvalidArgument(
                "after_seq must be 0 (from now) or a resume_after_seq this index sent".into(),
            ));
        }
        struct State {
            api: IndexApi,
            cursor: EventCursor,
            pending: VecDeque<StoredEvent>,
        }
        let start = if after_seq > 0 {
            after_seq
        } else {
            self.store.latest_event_seq().await?
        };
        let state = State {
            api: self.clone(),
            cursor: EventCursor::starting_after(start),
            pending: VecDeque::new(),
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            loop {
                while let Some(event) = state.pending.pop_front() {
                    let resume_after = match state.pending.front() {
                        Some(next) => state.cursor.after().min(next.seq - 1),
                        None => state.cursor.after(),
                    };
                    match state.api.event_message(&event, resume_after).await {
                        Ok(Some(message)) => return Some((Ok(message), state)),
                        Ok(None) => {}
                        Err(err) => tracing::warn!(%err, "cannot describe file event"),
                    }
                }
                tokio::select! {
                    () = state.api.stop.cancelled() => return None,
                    () = tokio::time::sleep(WATCH_POLL_INTERVAL) => {}
                }
                match state
                    .api
                    .store
                    .events_after(state.cursor.after(), WATCH_BATCH)
                    .await
                {
                    Ok(events) => {
                        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
                        let fresh = state.cursor.accept(&seqs, Instant::now());
                        state
                            .pending
                            .extend(events.into_iter().filter(|e| fresh.contains(&e.seq)));
                    }
                    Err(err) => tracing::warn!(%err, "cannot read file events; retrying"),
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// The response stream of WatchFiles.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::FileEvent, Status>> + Send>>;

fn caller<T>(request: &Request<T>) -> Result<Claims, Status> {
    claims(request).cloned()
}

fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl IndexService for IndexApi {
    async fn register_peer(
        &self,
        request: Request<pb::RegisterPeerRequest>,
    ) -> Result<Response<pb::RegisterPeerResponse>, Status> {
        let claims = caller(&request)?;
        let from = request.remote_addr().map(|a| a.ip());
        reply(
            self.register_peer(&claims, from, request.into_inner())
                .await,
        )
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let claims = caller(&request)?;
        let from = request.remote_addr().map(|a| a.ip());
        reply(self.heartbeat(&claims, from, request.into_inner()).await)
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        caller(&request)?;
        reply(self.list_peers(request.into_inner()).await)
    }

    async fn publish_file(
        &self,
        request: Request<pb::PublishFileRequest>,
    ) -> Result<Response<pb::PublishFileResponse>, Status> {
        let claims = caller(&request)?;
        reply(self.publish_file(&claims, request.into_inner()).await)
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        caller(&request)?;
        reply(self.list_files(request.into_inner()).await)
    }

    async fn get_file(
        &self,
        request: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::GetFileResponse>, Status> {
        caller(&request)?;
        reply(self.get_file(request.into_inner()).await)
    }

    async fn delete_file(
        &self,
        request: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let claims = caller(&request)?;
        reply(self.delete_file(&claims, request.into_inner()).await)
    }

    async fn update_holdings(
        &self,
        request: Request<pb::UpdateHoldingsRequest>,
    ) -> Result<Response<pb::UpdateHoldingsResponse>, Status> {
        let claims = caller(&request)?;
        reply(self.update_holdings(&claims, request.into_inner()).await)
    }

    async fn stop_sharing(
        &self,
        request: Request<pb::StopSharingRequest>,
    ) -> Result<Response<pb::StopSharingResponse>, Status> {
        let claims = caller(&request)?;
        reply(self.stop_sharing(&claims, request.into_inner()).await)
    }

    async fn locate_sources(
        &self,
        request: Request<pb::LocateSourcesRequest>,
    ) -> Result<Response<pb::LocateSourcesResponse>, Status> {
        caller(&request)?;
        reply(self.locate_sources(request.into_inner()).await)
    }

    async fn report_source(
        &self,
        request: Request<pb::ReportSourceRequest>,
    ) -> Result<Response<pb::ReportSourceResponse>, Status> {
        let claims = caller(&request)?;
        reply(self.report_source(&claims, request.into_inner()).await)
    }

    type WatchFilesStream = WatchStream;

    async fn watch_files(
        &self,
        request: Request<pb::WatchFilesRequest>,
    ) -> Result<Response<Self::WatchFilesStream>, Status> {
        caller(&request)?;
        reply(self.watch_files(request.into_inner().after_seq).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_services::auth::Role;

    fn claims(sub: &str, role: Role) -> Claims {
        Claims {
            iss: String::new(),
            aud: String::new(),
            sub: sub.into(),
            name: sub.into(),
            role,
            iat: 0,
            exp: 0,
            jti: String::new(),
        }
    }

    #[test]
    fn only_owner_or_admin_may_delete() {
        assert!(may_delete("alice", &claims("alice", Role::User)));
        assert!(!may_delete("alice", &claims("bob", Role::User)));
        assert!(may_delete("alice", &claims("root", Role::Admin)));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
