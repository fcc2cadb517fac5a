//! The coordinator of one download's sources ([`Swarm`]): locates them
//! with the index (at the start, when it runs out, and otherwise only
//! every [`RELOCATE_EVERY`]), starts a [`Worker`] and a holdings
//! [`Watcher`] per source, learns of new chunks and of more peers from the
//! watchers (so the index stays out of the download loop), reports and
//! bans sources that fail or break the holdings contract, publishes
//! progress on the download's `watch` channel and announces our growing
//! bitfield to the index at most every [`ANNOUNCE_EVERY`]. One timer per
//! download drives progress, announcements and the give-up clock.
//!
//! It owns its workers and watchers in two `JoinSet`s: dropping it aborts
//! them; a source's worker and watcher are aborted together when it goes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use p2p_proto::index::v1 as index_pb;
use p2p_proto::peer::v1::PeerHint;
use p2p_services::client::with_bearer;
use p2p_services::manifest::Bitfield;
use p2p_services::tls::ClientTls;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::exchange::{WatchEnd, WatchEvent, Watcher, watch_client};
use super::worker::{Worker, WorkerEnd};
use super::{Progress, Shared};
use crate::error::Error;
use crate::exchange::check_hint;
use crate::holdings::KnownPeer;
use crate::picker::{SourceKey, Stripe};
use crate::stats::RATE_WINDOW_SECS;

/// How often sources are located again while downloading. Sources tell us
/// their new chunks and other peers themselves (`super::exchange`), and
/// downloaders that start watching us become our sources at once, so this
/// only finds sources nobody told us about (a new complete copy).
const RELOCATE_EVERY: Duration = Duration::from_secs(8);
/// Locating again after running out of sources, at first.
const RELOCATE_SOON: Duration = Duration::from_millis(300);
/// Over plaintext, where only the index vouches for a peer's address, a
/// peer a source listed but the index has not named makes the next
/// locate come this soon after the last one (doubling each time, up to
/// [`RELOCATE_EVERY`], so a lister of junk cannot make us poll the index).
const CONFIRM_HINTS_AFTER: Duration = Duration::from_secs(1);
/// Give up when, for this long, no chunk arrived and no source that has
/// not failed this download was there to try.
pub const NO_SOURCE_GIVE_UP: Duration = Duration::from_secs(60);
/// Most sources used at once. Generous on purpose: a chunk held by a peer we
/// do not use looks "held by the seeder only" to the picker, so we would ask
/// the seeder for it again. One idle HTTP/2 connection per source is cheap.
const MAX_SOURCES: usize = 32;
/// How long a failed source is left out of this download.
const BAN_FAILED: Duration = Duration::from_secs(60);
/// How often the growing bitfield is announced to the index (checked every
/// [`PROGRESS_EVERY`]), counted from the start of the download; completion
/// is announced at once. Only newcomers that reach no peer of the swarm
/// learn of our chunks this way: the peers watching us hear of each chunk
/// as it is verified, and every source lists its watchers. With
/// [`RELOCATE_EVERY`] and the heartbeat this keeps a downloader under one
/// index request per second.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
/// Most peers learnt from holdings streams that one download considers.
const MAX_HINTED_PEERS: usize = 256;
/// A source that lists this many unusable peers is banned and reported.
const MAX_JUNK_HINTS: u32 = 8;
/// Events from watchers waiting for the coordinator.
const EVENT_QUEUE: usize = 256;
/// How often progress is published.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The window over which our own upload and download rates are compared
/// (see `Picker::set_own_rates`): long enough to smooth a burst into the
/// socket buffers, short enough to follow the swarm's phases.
const OWN_RATES_SECS: u64 = 2;

struct SourceSlot {
    peer_id: String,
    /// The source that told us about this one, when not the index.
    listed_by: Option<String>,
    claims_own: Arc<AtomicBool>,
    delivered: Arc<AtomicBool>,
    worker: AbortHandle,
    watcher: Option<AbortHandle>,
}

/// The coordinator of one download's sources.
pub(super) struct Swarm {
    shared: Arc<Shared>,
    workers: JoinSet<(SourceKey, WorkerEnd)>,
    active: HashMap<String, SourceKey>,
    slots: HashMap<SourceKey, SourceSlot>,
    banned: HashMap<String, Instant>,
    /// Sources that failed this download, with the last reason; those that
    /// cannot read the file or sent rejected chunks are never asked again.
    failures: HashMap<String, Failure>,
    next_key: SourceKey,
    /// When there was last reason to wait: a chunk arrived, or a source that
    /// has not failed was started. [`NO_SOURCE_GIVE_UP`] counts from here.
    last_hope: Instant,
    last_have_bytes: u64,
    /// When the bitfield was last announced (the start of the download at
    /// first) and how many chunks it held.
    last_announced: (Instant, u32),
    watchers: JoinSet<()>,
    events_tx: mpsc::Sender<(SourceKey, WatchEvent)>,
    events: mpsc::Receiver<(SourceKey, WatchEvent)>,
    /// Peers learnt from holdings streams, considered once each.
    hinted: HashSet<String>,
    /// Unusable peers each source listed.
    junk: HashMap<String, u32>,
    /// Listed peers another lister, a watcher or the index also named: a
    /// failure to reach one of them is the network's, not its lister's.
    vouched: HashSet<String>,
    /// Where the index said each peer answers (over plaintext, the only
    /// vouching there is).
    index_addresses: HashMap<String, String>,
    /// Over plaintext: a source listed a peer the index has not named
    /// (yet), so ask the index again soon ([`CONFIRM_HINTS_AFTER`]).
    unconfirmed_hints: bool,
    /// The index's answer the download started with, used instead of
    /// asking again at the start.
    located: Option<index_pb::LocateSourcesResponse>,
}

/// A download's first call to the index: its sources and its manifest in
/// one `LocateSources` (an older index leaves the manifest out).
pub async fn locate_with_manifest(
    session: &crate::session::Session,
    file_id: &p2p_services::manifest::FileId,
) -> Result<index_pb::LocateSourcesResponse, Error> {
    locate_sources(session, file_id.as_str(), Vec::new(), true).await
}

/// `LocateSources` for up to [`MAX_SOURCES`] holders of the `wanted` chunks
/// (empty: all), leaving out ourselves.
async fn locate_sources(
    session: &crate::session::Session,
    file_id: &str,
    wanted: Vec<u8>,
    include_manifest: bool,
) -> Result<index_pb::LocateSourcesResponse, Error> {
    let request = index_pb::LocateSourcesRequest {
        file_id: file_id.to_string(),
        peer_id: session.peer_id().unwrap_or_default(),
        wanted,
        limit: MAX_SOURCES as u32,
        include_manifest,
    };
    session
        .call_index(|mut c, t| async move { c.locate_sources(with_bearer(request, &t)).await })
        .await
}

/// How a source failed this download: what kind of failure, as reported
/// to the index (`None`: it refused this agent's credentials or request).
#[derive(Debug, Clone, Copy)]
struct Failure {
    reason: Option<index_pb::ReportReason>,
}

impl Failure {
    /// It cannot read the file or sent data that does not match: asking it
    /// again will not help.
    fn hopeless(self) -> bool {
        matches!(
            self.reason,
            Some(index_pb::ReportReason::CannotRead | index_pb::ReportReason::Corrupt)
        )
    }
}

/// What a failed source's failure means for the person downloading.
fn failure_kind(reason: Option<index_pb::ReportReason>) -> &'static str {
    use index_pb::ReportReason as R;
    match reason {
        Some(R::Unreachable | R::Unspecified) => "offline or unreachable",
        Some(R::Stalled) => "stalled",
        Some(R::CannotRead) => "with the copy deleted, moved or changed",
        Some(R::Corrupt) => "sending data that does not match the file",
        None => "refusing this agent",
    }
}

/// Why a download with no usable source gives up: no online peer holds
/// the missing chunks, with how many of the peers it tried failed in each
/// way (pure, for the unit tests). Every source tried is counted once, by
/// its last failure.
fn give_up_message(failures: &HashMap<String, Failure>, missing_chunks: u32) -> String {
    let secs = NO_SOURCE_GIVE_UP.as_secs();
    let chunks = format!(
        "{missing_chunks} missing chunk{}",
        if missing_chunks == 1 { "" } else { "s" }
    );
    let next = "verified chunks are kept; run the same `p2p get` once a peer that holds the \
                file is online";
    if failures.is_empty() {
        return format!("no online peer holds the {chunks}: none was found for {secs} s; {next}");
    }
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for failure in failures.values() {
        let kind = failure_kind(failure.reason);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    kinds.sort_unstable();
    let counted: Vec<String> = kinds
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    format!(
        "no online peer holds the {chunks}: of the {} peer{} that held them, {}; {next}",
        failures.len(),
        if failures.len() == 1 { "" } else { "s" },
        counted.join(", ")
    )
}

impl Swarm {
    pub(super) fn new(
        shared: Arc<Shared>,
        located: Option<index_pb::LocateSourcesResponse>,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        Self {
            shared,
            workers: JoinSet::new(),
            active: HashMap::new(),
            slots: HashMap::new(),
            banned: HashMap::new(),
            failures: HashMap::new(),
            next_key: 1,
            last_hope: Instant::now(),
            last_have_bytes: 0,
            last_announced: (Instant::now(), 0),
            watchers: JoinSet::new(),
            events_tx,
            events,
            hinted: HashSet::new(),
            junk: HashMap::new(),
            vouched: HashSet::new(),
            index_addresses: HashMap::new(),
            unconfirmed_hints: false,
            located,
        }
    }

    /// Gives up when nothing hopeful happened for [`NO_SOURCE_GIVE_UP`].
    async fn check_give_up(&mut self) -> Result<(), Error> {
        let have_bytes = self.shared.have_bytes.load(Ordering::Relaxed);
        if have_bytes != self.last_have_bytes {
            self.last_have_bytes = have_bytes;
            self.last_hope = Instant::now();
        }
        if self.last_hope.elapsed() <= NO_SOURCE_GIVE_UP {
            return Ok(());
        }
        self.announce().await;
        let missing = self.shared.picker().wanted().count();
        Err(Error::NoSources(give_up_message(&self.failures, missing)))
    }

    pub(super) async fn run(
        mut self,
        progress: &watch::Sender<Progress>,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let result = self.run_sources(progress, cancel).await;
        let shared = &self.shared;
        let flushed = shared
            .ctx
            .holdings
            .flush(&shared.holding, &shared.part)
            .await;
        result.and(flushed)
    }

    async fn run_sources(
        &mut self,
        progress: &watch::Sender<Progress>,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let mut next_locate = tokio::time::Instant::now();
        let mut relocate_delay = RELOCATE_SOON;
        let mut last_locate = next_locate;
        let mut confirm_gap = CONFIRM_HINTS_AFTER;
        // Whether the next locate was brought forward to confirm hints.
        let mut confirming = false;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchers = self.shared.holding.subscribe_peers();
        loop {
            if self.shared.is_complete() {
                // Announced as complete once the file is whole and renamed.
                return Ok(());
            }
            if std::mem::take(&mut self.unconfirmed_hints)
                && last_locate + confirm_gap < next_locate
            {
                next_locate = last_locate + confirm_gap;
                confirming = true;
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    self.announce().await;
                    return Err(if self.shared.ctx.shutdown.is_cancelled() {
                        Error::ShuttingDown
                    } else {
                        Error::Cancelled
                    });
                }
                () = self.shared.complete.notified() => {}
                Some((key, event)) = self.events.recv() => {
                    self.on_event(key, event).await;
                }
                Some(_) = self.watchers.join_next() => {}
                Ok(()) = watchers.changed() => self.consider_watchers(),
                Some(joined) = self.workers.join_next() => {
                    let Ok((key, end)) = joined else { continue };
                    self.worker_ended(key, end).await?;
                    if self.active.is_empty() {
                        next_locate = next_locate.min(tokio::time::Instant::now() + relocate_delay);
                    }
                }
                () = tokio::time::sleep_until(next_locate) => {
                    if std::mem::take(&mut confirming) {
                        confirm_gap = (confirm_gap * 2).min(RELOCATE_EVERY);
                    }
                    self.locate().await;
                    last_locate = tokio::time::Instant::now();
                    self.check_give_up().await?;
                    if self.active.is_empty() {
                        next_locate = tokio::time::Instant::now() + relocate_delay;
                        relocate_delay = (relocate_delay * 2).min(RELOCATE_EVERY);
                    } else {
                        relocate_delay = RELOCATE_SOON;
                        next_locate = tokio::time::Instant::now() + RELOCATE_EVERY;
                    }
                }
                _ = tick.tick() => {
                    self.publish(progress);
                    self.tell_own_rates();
                    if self.shared.holding.save_due() {
                        let shared = &self.shared;
                        shared.ctx.holdings.flush(&shared.holding, &shared.part).await?;
                    }
                    self.maybe_announce().await;
                    self.check_give_up().await?;
                }
            }
        }
    }

    fn publish(&self, progress: &watch::Sender<Progress>) {
        let have_bytes = self.shared.have_bytes.load(Ordering::Relaxed);
        let rate_bps = self.shared.meter.rate_bps(RATE_WINDOW_SECS);
        progress.send_modify(|p| {
            p.have_bytes = have_bytes;
            p.rate_bps = rate_bps;
            p.sources_in_use = self.active.len() as u32;
            p.eta = (rate_bps > 0).then(|| {
                Duration::from_secs_f64(
                    p.total_bytes.saturating_sub(have_bytes) as f64 / rate_bps as f64,
                )
            });
        });
    }

    /// Tells the picker how fast this agent uploads and downloads, so it can
    /// tell whether we relay chunks slower than we take them in (see
    /// `crate::picker`).
    fn tell_own_rates(&self) {
        let stats = &self.shared.ctx.stats;
        self.shared.picker().set_own_rates(
            stats.upload_meter.rate_bps(OWN_RATES_SECS),
            self.shared.meter.rate_bps(OWN_RATES_SECS),
            stats.upload_link_bound(OWN_RATES_SECS),
        );
    }

    /// Whether the data path runs without TLS, where only the index vouches
    /// for a peer's address.
    fn plaintext(&self) -> bool {
        matches!(
            self.shared.ctx.session.config().peer_tls,
            ClientTls::Plaintext
        )
    }

    /// Announces the bitfield when it grew, at most every [`ANNOUNCE_EVERY`].
    /// Over plaintext the first chunk is announced at once: there, peers
    /// can use us only once the index names us (see `consider_peer`).
    async fn maybe_announce(&mut self) {
        let count = self.shared.picker().have().count();
        let (at, announced) = self.last_announced;
        let first_over_plaintext = announced == 0 && self.plaintext();
        if count != announced && (first_over_plaintext || at.elapsed() >= ANNOUNCE_EVERY) {
            self.announce().await;
        }
    }

    async fn announce(&mut self) {
        let Some(peer_id) = self.shared.ctx.session.peer_id() else {
            return;
        };
        let have = self.shared.picker().have().clone();
        if have.count() == 0 {
            return;
        }
        self.last_announced = (Instant::now(), have.count());
        let file_id = &self.shared.holding.file_id;
        if let Err(err) = self
            .shared
            .ctx
            .session
            .announce(&peer_id, file_id, &have, false)
            .await
        {
            tracing::debug!(%err, "cannot announce partial holdings");
        }
    }

    async fn locate(&mut self) {
        let ctx = &self.shared.ctx;
        let own = ctx.session.peer_id().unwrap_or_default();
        let wanted = self.shared.picker().wanted();
        let response = match self.located.take() {
            Some(response) => response,
            None => {
                let file_id = self.shared.holding.file_id.as_str();
                match locate_sources(&ctx.session, file_id, wanted.as_bytes().to_vec(), false).await
                {
                    Ok(response) => response,
                    Err(err) => {
                        tracing::warn!(%err, "cannot locate sources; keeping the current ones");
                        return;
                    }
                }
            }
        };
        let chunks = self.shared.manifest.chunk_count();
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        let downloading = response
            .sources
            .iter()
            .filter(|s| !s.complete)
            .map(|s| s.peer_id.as_str());
        self.shared
            .picker()
            .set_stripe(Stripe::among(&own, downloading));
        for source in response.sources {
            if source.peer_id == own
                || self.banned.contains_key(&source.peer_id)
                || self
                    .failures
                    .get(&source.peer_id)
                    .is_some_and(|f| f.hopeless())
            {
                continue;
            }
            let holds = if source.complete {
                Bitfield::full(chunks)
            } else {
                match Bitfield::from_bytes(&source.bitfield, chunks) {
                    Ok(field) => field,
                    Err(err) => {
                        tracing::debug!(peer = %source.peer_id, %err, "ignoring a source with a bad bitfield");
                        continue;
                    }
                }
            };
            self.index_addresses
                .insert(source.peer_id.clone(), source.address.clone());
            if let Some(&key) = self.active.get(&source.peer_id) {
                // A source's own stream is fresher than the index.
                let own_news = self
                    .slots
                    .get(&key)
                    .is_some_and(|s| s.claims_own.load(Ordering::Relaxed));
                if !own_news {
                    self.shared.picker().upsert_source(key, holds);
                    self.shared.work_changed.notify_waiters();
                }
                continue;
            }
            if !self.failures.contains_key(&source.peer_id) && wanted.held().any(|i| holds.get(i)) {
                self.last_hope = Instant::now();
            }
            let peer = KnownPeer {
                peer_id: source.peer_id,
                address: source.address,
            };
            self.start_source(peer, source.complete, holds, None);
        }
    }

    /// Starts a worker and a holdings watcher for a source we do not use
    /// yet (up to [`MAX_SOURCES`]).
    fn start_source(
        &mut self,
        peer: KnownPeer,
        complete: bool,
        holds: Bitfield,
        listed_by: Option<String>,
    ) {
        if self.active.len() >= MAX_SOURCES || self.active.contains_key(&peer.peer_id) {
            return;
        }
        let ctx = &self.shared.ctx;
        let channel = match ctx.peer_channel(&peer.address) {
            Ok(channel) => channel,
            Err(err) => {
                tracing::debug!(peer = %peer.peer_id, %err, "ignoring a source");
                return;
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        self.shared.picker().upsert_source(key, holds);
        self.active.insert(peer.peer_id.clone(), key);
        tracing::debug!(peer = %peer.peer_id, address = %peer.address, complete, listed_by = ?listed_by, "using source");
        let claims_own = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            key,
            source_peer_id: peer.peer_id.clone(),
            shared: self.shared.clone(),
            client: super::peer_client(channel.clone()),
            framed: ctx.framed_pool(&peer.address),
            complete,
            claims_own: claims_own.clone(),
            delivered: delivered.clone(),
        };
        let worker = self.workers.spawn(async move { (key, worker.run().await) });
        let own = ctx.session.peer_id().unwrap_or_default();
        let watcher = Watcher {
            key,
            source_peer_id: peer.peer_id.clone(),
            file_id: self.shared.holding.file_id.to_string(),
            chunk_count: self.shared.manifest.chunk_count(),
            caller: (!own.is_empty()).then(|| PeerHint {
                peer_id: own,
                address: ctx.session.advertised(),
            }),
            session: ctx.session.clone(),
            client: watch_client(channel, self.shared.manifest.chunk_count()),
            framed: ctx.framed_watch(&peer.address),
            events: self.events_tx.clone(),
        };
        let watcher = self.watchers.spawn(watcher.run());
        self.shared.holding.note_peer(peer.clone());
        self.slots.insert(
            key,
            SourceSlot {
                peer_id: peer.peer_id,
                listed_by,
                claims_own,
                delivered,
                worker,
                watcher: Some(watcher),
            },
        );
    }

    /// What a source's holdings stream said.
    async fn on_event(&mut self, key: SourceKey, event: WatchEvent) {
        let Some(slot) = self.slots.get(&key) else {
            return;
        };
        match event {
            WatchEvent::Holds(holds) => {
                slot.claims_own.store(true, Ordering::Relaxed);
                self.shared.picker().upsert_source(key, holds);
                self.shared.work_changed.notify_waiters();
            }
            WatchEvent::Have(chunks) => {
                self.shared.picker().add_held(key, &chunks);
                self.shared.work_changed.notify_waiters();
            }
            WatchEvent::Peers(hints) => {
                let lister = slot.peer_id.clone();
                for hint in hints {
                    self.consider_hint(&hint, &lister).await;
                }
            }
            WatchEvent::Ended(end) => {
                slot.claims_own.store(false, Ordering::Relaxed);
                match end {
                    WatchEnd::Misbehaved(detail) => {
                        self.drop_source(key, Some(index_pb::ReportReason::Corrupt), detail)
                            .await;
                    }
                    WatchEnd::Silent => {
                        self.drop_source(
                            key,
                            Some(index_pb::ReportReason::Stalled),
                            "its holdings stream went silent".into(),
                        )
                        .await;
                    }
                    WatchEnd::Unsupported | WatchEnd::Closed(_) => {
                        tracing::debug!(peer = %slot.peer_id, ?end, "holdings stream ended");
                    }
                }
            }
        }
    }

    /// A peer a source told us about: checked, then used like one the
    /// index named.
    async fn consider_hint(&mut self, hint: &PeerHint, lister: &str) {
        let ctx = &self.shared.ctx;
        let peer = match check_hint(hint, &ctx.session.advertised()) {
            Ok(peer) => peer,
            Err(detail) => {
                tracing::debug!(lister, %detail, "ignoring a listed peer");
                self.junk(lister).await;
                return;
            }
        };
        self.consider_peer(peer, Some(lister));
    }

    /// Peers that started watching our holdings of this file (their
    /// address checked against where their call came from, see
    /// `crate::upload::exchange::caller_hint`) are downloading it too: used as sources at
    /// once, as they use us, instead of when someone lists them to us.
    fn consider_watchers(&mut self) {
        let (_, peers) = self
            .shared
            .holding
            .known_peers(None, crate::holdings::MAX_KNOWN_PEERS);
        for peer in peers {
            self.consider_peer(peer, None);
        }
    }

    /// A peer not named by the index: used like one the index named unless
    /// it is ourselves, in use, banned, failed, or beyond what we consider.
    fn consider_peer(&mut self, peer: KnownPeer, lister: Option<&str>) {
        let ctx = &self.shared.ctx;
        let own = ctx.session.peer_id().unwrap_or_default();
        if let Some(slot) = self
            .active
            .get(&peer.peer_id)
            .and_then(|k| self.slots.get(k))
            && slot.listed_by.as_deref() != lister
        {
            self.vouched.insert(peer.peer_id.clone());
        }
        if peer.peer_id == own
            || self.active.contains_key(&peer.peer_id)
            || self.banned.contains_key(&peer.peer_id)
            || self.failures.contains_key(&peer.peer_id)
        {
            return;
        }
        if self.plaintext() && self.index_addresses.get(&peer.peer_id) != Some(&peer.address) {
            // Without TLS no certificate vouches for the address: only the
            // index's word does, so ask it soon.
            self.unconfirmed_hints = true;
            return;
        }
        if self.hinted.len() >= MAX_HINTED_PEERS && !self.hinted.contains(&peer.peer_id) {
            return;
        }
        self.hinted.insert(peer.peer_id.clone());
        let chunks = self.shared.manifest.chunk_count();
        self.start_source(
            peer,
            false,
            Bitfield::empty(chunks),
            lister.map(str::to_string),
        );
    }

    /// Counts an unusable peer `lister` told us about; too many and it is
    /// dropped, banned and reported.
    async fn junk(&mut self, lister: &str) {
        let count = self.junk.entry(lister.to_string()).or_default();
        *count += 1;
        if *count == MAX_JUNK_HINTS
            && let Some(&key) = self.active.get(lister)
        {
            self.drop_source(
                key,
                Some(index_pb::ReportReason::Corrupt),
                format!("listed {MAX_JUNK_HINTS} unusable peers on its holdings stream"),
            )
            .await;
        }
    }

    /// Stops using a source now (its worker and watcher are aborted), bans
    /// it and reports it.
    async fn drop_source(
        &mut self,
        key: SourceKey,
        reason: Option<index_pb::ReportReason>,
        detail: String,
    ) {
        if let Some(slot) = self.slots.get(&key) {
            slot.worker.abort();
        }
        let _ = self
            .worker_ended(key, WorkerEnd::Failed { reason, detail })
            .await;
    }

    async fn worker_ended(&mut self, key: SourceKey, end: WorkerEnd) -> Result<(), Error> {
        self.shared.picker().remove_source(key);
        self.shared.work_changed.notify_waiters();
        let Some(slot) = self.slots.remove(&key) else {
            return Ok(());
        };
        self.active.remove(&slot.peer_id);
        if let Some(watcher) = &slot.watcher {
            watcher.abort();
        }
        if matches!(end, WorkerEnd::Failed { .. } | WorkerEnd::Fatal(_)) {
            self.shared.holding.forget_peer(&slot.peer_id);
        }
        if let (Some(lister), WorkerEnd::Failed { .. }) = (&slot.listed_by, &end)
            && !slot.delivered.load(Ordering::Relaxed)
            && !self.vouched.contains(&slot.peer_id)
        {
            let lister = lister.clone();
            Box::pin(self.junk(&lister)).await;
        }
        match end {
            // (A worker waits out a busy source itself, see `worker`.)
            WorkerEnd::NoWork | WorkerEnd::Refused | WorkerEnd::Busy => {}
            WorkerEnd::Failed { reason, detail } => {
                tracing::warn!(peer = %slot.peer_id, %detail, "dropping a source");
                self.banned
                    .insert(slot.peer_id.clone(), Instant::now() + BAN_FAILED);
                self.failures
                    .insert(slot.peer_id.clone(), Failure { reason });
                if let Some(reason) = reason {
                    self.report(&slot, reason, detail).await;
                }
            }
            WorkerEnd::Fatal(err) => return Err(err),
        }
        Ok(())
    }

    async fn report(&self, slot: &SourceSlot, reason: index_pb::ReportReason, detail: String) {
        let session = &self.shared.ctx.session;
        let request = index_pb::ReportSourceRequest {
            peer_id: session.peer_id().unwrap_or_default(),
            source_peer_id: slot.peer_id.clone(),
            file_id: self.shared.holding.file_id.to_string(),
            reason: reason as i32,
            detail,
        };
        if let Err(err) = session
            .call_index(|mut c, t| async move { c.report_source(with_bearer(request, &t)).await })
            .await
        {
            tracing::debug!(%err, "cannot report a source");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(reason: Option<index_pb::ReportReason>) -> Failure {
        Failure { reason }
    }

    #[test]
    fn giving_up_counts_each_kind_of_failed_holder() {
        let mut failures = HashMap::new();
        assert_eq!(
            give_up_message(&failures, 3),
            "no online peer holds the 3 missing chunks: none was found for 60 s; \
             verified chunks are kept; run the same `p2p get` once a peer that holds the file \
             is online"
        );
        failures.insert(
            "seeder".to_string(),
            failed(Some(index_pb::ReportReason::Unreachable)),
        );
        failures.insert(
            "deleted".to_string(),
            failed(Some(index_pb::ReportReason::CannotRead)),
        );
        failures.insert(
            "edited".to_string(),
            failed(Some(index_pb::ReportReason::CannotRead)),
        );
        assert_eq!(
            give_up_message(&failures, 1),
            "no online peer holds the 1 missing chunk: of the 3 peers that held them, 1 offline \
             or unreachable, 2 with the copy deleted, moved or changed; verified chunks are \
             kept; run the same `p2p get` once a peer that holds the file is online"
        );
    }
}
