//! Write-behind for the hot paths: lease renewals (Heartbeat) and holdings
//! (UpdateHoldings) are kept in memory and written to the database in one
//! transaction every flush interval (default 500 ms), so a heartbeat costs
//! no transaction of its own and a download announcing its bitfield many
//! times a second costs one row per flush.
//!
//! [`Pending`] is the pure part: the latest renewal per peer and the latest
//! holding per (peer, file), bounded, with the rules for what a direct
//! write (StopSharing, DeleteFile) cancels. [`flusher`] is the task that
//! drains it into [`Store::apply_batch`]; it is owned by `run`, watches the
//! shutdown token and writes what is left before it returns.
//!
//! What a replica keeps here lives at most one flush interval (longer only
//! while the database refuses the write; then the entries stay, newest
//! first, until it accepts), so replicas on one database agree on who is
//! online and who holds what within about a flush interval.
//!
//! Registrations are grouped too, but never acknowledged before they are
//! written: [`Registrations`] is a group commit. Each RegisterPeer call
//! queues its row and waits; [`registrar`] takes everything that queued
//! while the previous group was being written (up to
//! [`MAX_REGISTRATIONS_PER_COMMIT`]) and writes it as one multi-row
//! upsert, one commit, then answers every caller with its own id. So a
//! registration storm (every agent restarting after a power cut) costs a
//! commit per group instead of one per agent, a lone registration waits
//! for no timer, and RegisterPeer still returns only once the peer is
//! durable and visible to every replica.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_services::manifest::FileId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::peer::PeerId;
use crate::store::{Batch, HoldingUpdate, NewPeer, Renewal, Store};

/// Default time between two flushes.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Most peers whose renewal waits at once (beyond it, heartbeats are shed).
pub const MAX_PENDING_RENEWALS: usize = 200_000;
/// Most (peer, file) holdings waiting at once.
pub const MAX_PENDING_HOLDINGS: usize = 100_000;
/// Most registrations waiting for their group commit (beyond it,
/// RegisterPeer is shed). Admission's slots usually bound them first.
pub const MAX_PENDING_REGISTRATIONS: usize = 1024;
/// Most registrations written in one statement (12 parameters each, well
/// under SQLite's and PostgreSQL's parameter limits).
pub const MAX_REGISTRATIONS_PER_COMMIT: usize = 256;

/// Why a write was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Too many peers' renewals wait.
    Renewals,
    /// Too many holdings wait.
    Holdings,
    /// Too many registrations wait for their commit.
    Registrations,
}

/// A caller of [`WriteBehind::hold_now`], told when its flush committed.
type Waiter = oneshot::Sender<Result<(), Error>>;

/// The writes waiting for the next flush.
#[derive(Debug)]
pub struct Pending {
    renewals: HashMap<PeerId, Renewal>,
    holdings: HashMap<(PeerId, FileId), HoldingUpdate>,
    waiters: Vec<Waiter>,
    max_renewals: usize,
    max_holdings: usize,
}

impl Pending {
    /// Empty, with room for `max_renewals` peers and `max_holdings`
    /// holdings.
    pub fn new(max_renewals: usize, max_holdings: usize) -> Self {
        Self {
            renewals: HashMap::new(),
            holdings: HashMap::new(),
            waiters: Vec::new(),
            max_renewals,
            max_holdings,
        }
    }

    /// Queues a renewal, replacing the peer's previous one.
    pub fn renew(&mut self, renewal: Renewal) -> Result<(), Full> {
        let full = self.renewals.len() >= self.max_renewals;
        match self.renewals.get_mut(&renewal.peer) {
            Some(slot) => *slot = renewal,
            None if full => return Err(Full::Renewals),
            None => {
                self.renewals.insert(renewal.peer.clone(), renewal);
            }
        }
        Ok(())
    }

    /// Queues a holding, replacing that peer's previous one for the file.
    pub fn hold(&mut self, update: HoldingUpdate) -> Result<(), Full> {
        let key = (update.peer.clone(), update.file_id.clone());
        let full = self.holdings.len() >= self.max_holdings;
        match self.holdings.get_mut(&key) {
            Some(slot) => *slot = update,
            None if full => return Err(Full::Holdings),
            None => {
                self.holdings.insert(key, update);
            }
        }
        Ok(())
    }

    /// Queues a holding that changes what holder counts show, replacing a
    /// queued one for the same (peer, file), and the caller that waits for
    /// it to be committed. It is taken even past the bound: admission
    /// bounds the calls that can wait here.
    fn hold_now(&mut self, update: HoldingUpdate, waiter: Waiter) {
        let key = (update.peer.clone(), update.file_id.clone());
        self.holdings.insert(key, update);
        self.waiters.push(waiter);
    }

    /// Drops a queued holding: the peer stopped sharing the file, and the
    /// direct write that says so must not be undone by the next flush.
    pub fn forget_holding(&mut self, peer: &PeerId, file_id: &FileId) {
        self.holdings.remove(&(peer.clone(), file_id.clone()));
    }

    /// Drops whatever is queued for a retired peer (its address changed),
    /// so a flush never brings it back online.
    pub fn forget_peer(&mut self, peer: &PeerId) {
        self.renewals.remove(peer);
        self.holdings.retain(|(holder, _), _| holder != peer);
    }

    /// Drops every queued holding of a deleted file.
    pub fn forget_file(&mut self, file_id: &FileId) {
        self.holdings.retain(|(_, file), _| file != file_id);
    }

    /// Takes everything queued.
    pub fn take(&mut self) -> Batch {
        Batch {
            renewals: self.renewals.drain().map(|(_, r)| r).collect(),
            holdings: self.holdings.drain().map(|(_, h)| h).collect(),
            durable: !self.waiters.is_empty(),
        }
    }

    /// Takes everything queued, and the callers waiting for it.
    fn take_waited(&mut self) -> (Batch, Vec<Waiter>) {
        let batch = self.take();
        (batch, std::mem::take(&mut self.waiters))
    }

    /// Puts back a batch the database refused, except entries that newer
    /// ones replaced meanwhile (and beyond the bounds).
    pub fn restore(&mut self, batch: Batch) {
        for renewal in batch.renewals {
            if !self.renewals.contains_key(&renewal.peer) && self.renewals.len() < self.max_renewals
            {
                self.renewals.insert(renewal.peer.clone(), renewal);
            }
        }
        for update in batch.holdings {
            let key = (update.peer.clone(), update.file_id.clone());
            if !self.holdings.contains_key(&key) && self.holdings.len() < self.max_holdings {
                self.holdings.insert(key, update);
            }
        }
    }

    /// Renewals and holdings waiting.
    pub fn len(&self) -> (usize, usize) {
        (self.renewals.len(), self.holdings.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.renewals.is_empty() && self.holdings.is_empty()
    }
}

/// The shared handle handlers queue into. Cheap to clone.
///
/// A flush and a direct write of a holding (StopSharing, DeleteFile,
/// PublishFile) never interleave: both hold the write gate
/// ([`WriteBehind::gate`]), so a batch already taken cannot bring back a
/// holding removed, or overwrite one written, meanwhile. A new holder or
/// complete copy goes through the queue too, but starts a flush at once
/// and waits for its commit ([`WriteBehind::hold_now`]).
#[derive(Debug, Clone)]
pub struct WriteBehind {
    pending: Arc<Mutex<Pending>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the flusher before its tick: a holder change waits.
    wake: Arc<tokio::sync::Notify>,
    /// Set by the flusher before its last flush: nothing queued after it
    /// would be written.
    stopped: Arc<AtomicBool>,
    /// Time between flushes (also the retry hint when the queue is full).
    pub interval: Duration,
}

impl WriteBehind {
    /// A queue flushed every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            pending: Arc::new(Mutex::new(Pending::new(
                MAX_PENDING_RENEWALS,
                MAX_PENDING_HOLDINGS,
            ))),
            gate: Arc::default(),
            wake: Arc::default(),
            stopped: Arc::default(),
            interval,
        }
    }

    /// Runs `f` on the queue.
    pub fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        f(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues a holding that changes what holder counts show (a new
    /// holder, a complete copy) and returns once a flush, started at once,
    /// has committed it with its event: every replica offers the new holder
    /// as soon as the call returns. Holder changes that arrive while a
    /// flush runs share the next one, one commit for all of them, instead
    /// of each waiting for the gate and committing alone.
    pub async fn hold_now(&self, update: HoldingUpdate) -> Result<(), Error> {
        let (waiter, committed) = oneshot::channel();
        self.with(|pending| pending.hold_now(update, waiter));
        self.wake.notify_one();
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Error::Stopping);
        }
        committed.await.unwrap_or(Err(Error::Stopping))
    }

    /// Held while writing a holding directly, so no flush runs meanwhile.
    pub async fn gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Writes everything queued now; on failure the entries go back in the
    /// queue for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<(), crate::Error> {
        let _gate = self.gate.lock().await;
        let (batch, waiters) = self.with(Pending::take_waited);
        if batch.is_empty() {
            for waiter in waiters {
                let _ = waiter.send(Ok(()));
            }
            return Ok(());
        }
        let renewals = batch.renewals.len();
        let holdings = batch.holdings.len();
        let started = std::time::Instant::now();
        match store.apply_batch(&batch).await {
            Ok(()) => {
                p2p_services::metrics::histogram(
                    "p2p_index_flush_seconds",
                    "Time to write one batch of renewals and holdings.",
                    &[],
                )
                .observe(started.elapsed().as_secs_f64());
                tracing::trace!(renewals, holdings, took = ?started.elapsed(), "flushed");
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                Ok(())
            }
            Err(err) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(err.for_another_caller()));
                }
                self.with(|p| p.restore(batch));
                Err(err)
            }
        }
    }
}

/// Flushes `queue` into `store` every interval, and at once when a holder
/// change waits, until `stop` is cancelled, then once more so nothing
/// acknowledged is lost on a clean shutdown.
pub async fn flusher(queue: WriteBehind, store: Store, stop: CancellationToken) {
    let mut tick = tokio::time::interval(queue.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
            () = queue.wake.notified() => {}
        }
        if let Err(err) = queue.flush(&store).await {
            tracing::warn!(%err, "cannot write renewals and holdings; retrying at the next flush");
        }
    }
    queue.stopped.store(true, Ordering::SeqCst);
    if let Err(err) = queue.flush(&store).await {
        tracing::warn!(%err, "cannot write the last renewals and holdings before stopping");
    }
}

/// A registration waiting for its group commit, and its caller.
#[derive(Debug)]
pub struct Waiting {
    peer: NewPeer,
    reply: oneshot::Sender<Result<PeerId, Error>>,
}

/// The handle RegisterPeer queues into; [`registrar`] writes the groups.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registrations {
    queue: mpsc::Sender<Waiting>,
}

impl Registrations {
    /// A queue of at most `capacity` waiting registrations, and the
    /// receiving end for [`registrar`].
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Waiting>) {
        let (queue, waiting) = mpsc::channel(capacity.max(1));
        (Self { queue }, waiting)
    }

    /// Queues `peer` for the next group commit. The future resolves with
    /// its id once the group is committed, or with the error that refused
    /// its row. `Full` when the queue is at capacity; a replica that is
    /// stopping answers [`Error::Stopping`].
    pub fn register(
        &self,
        peer: NewPeer,
    ) -> Result<impl Future<Output = Result<PeerId, Error>> + use<>, Full> {
        let (reply, answer) = oneshot::channel();
        let queued = match self.queue.try_send(Waiting { peer, reply }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => return Err(Full::Registrations),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        Ok(async move {
            if !queued {
                return Err(Error::Stopping);
            }
            answer.await.unwrap_or(Err(Error::Stopping))
        })
    }
}

/// Writes queued registrations in groups until `stop` is cancelled, then
/// writes what is still queued (new ones are refused from then on).
pub async fn registrar(
    mut waiting: mpsc::Receiver<Waiting>,
    store: Store,
    stop: CancellationToken,
) {
    let mut group = Vec::with_capacity(MAX_REGISTRATIONS_PER_COMMIT);
    loop {
        let taken = tokio::select! {
            () = stop.cancelled() => break,
            taken = waiting.recv_many(&mut group, MAX_REGISTRATIONS_PER_COMMIT) => taken,
        };
        if taken == 0 {
            return;
        }
        commit_group(&store, std::mem::take(&mut group)).await;
    }
    waiting.close();
    while waiting
        .recv_many(&mut group, MAX_REGISTRATIONS_PER_COMMIT)
        .await
        > 0
    {
        commit_group(&store, std::mem::take(&mut group)).await;
    }
}

/// One group's distinct rows, sorted by (user, address), and for each
/// caller in arrival order the row it gets its id from. Two callers with
/// the same user and address share one row (the later one's values, as if
/// written one after the other) and so one id.
pub fn merge(peers: &[&NewPeer]) -> (Vec<usize>, Vec<usize>) {
    let mut latest: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, peer) in peers.iter().enumerate() {
        latest.insert((&peer.user_id, &peer.advertise_addr), i);
    }
    let rows: Vec<usize> = latest.values().copied().collect();
    let row_of: HashMap<(&str, &str), usize> = latest
        .keys()
        .enumerate()
        .map(|(row, &key)| (key, row))
        .collect();
    let callers = peers
        .iter()
        .map(|peer| row_of[&(peer.user_id.as_str(), peer.advertise_addr.as_str())])
        .collect();
    (rows, callers)
}

/// Writes one group and answers its callers. When the database refuses
/// the statement itself (a row it will not store), each row is written
/// alone so only that row's caller gets the error; when the database is
/// unreachable, every caller gets that.
async fn commit_group(store: &Store, group: Vec<Waiting>) {
    let started = std::time::Instant::now();
    let peers: Vec<&NewPeer> = group.iter().map(|w| &w.peer).collect();
    let (rows, callers) = merge(&peers);
    let distinct: Vec<&NewPeer> = rows.iter().map(|&i| peers[i]).collect();
    let now = p2p_services::time::now_ms();
    let answers: Vec<Result<PeerId, Error>> = match store.register_peers(&distinct, now).await {
        Ok(ids) => callers.iter().map(|&row| Ok(ids[row].clone())).collect(),
        Err(Error::Database(sqlx::Error::Database(_))) if distinct.len() > 1 => {
            let mut alone = Vec::with_capacity(distinct.len());
            for peer in &distinct {
                alone.push(
                    store
                        .register_peers(&[peer], now)
                        .await
                        .map(|mut ids| ids.remove(0)),
                );
            }
            callers
                .iter()
                .map(|&row| match &alone[row] {
                    Ok(id) => Ok(id.clone()),
                    Err(err) => Err(err.for_another_caller()),
                })
                .collect()
        }
        Err(err) => callers
            .iter()
            .map(|_| Err(err.for_another_caller()))
            .collect(),
    };
    p2p_services::metrics::histogram(
        "p2p_index_registration_commit_seconds",
        "Time to write one group of registrations.",
        &[],
    )
    .observe(started.elapsed().as_secs_f64());
    tracing::trace!(registrations = group.len(), rows = distinct.len(), took = ?started.elapsed(), "registrations committed");
    for (waiting, answer) in group.into_iter().zip(answers) {
        // A caller that gave up (its call was cancelled) no longer listens.
        let _ = waiting.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Holding, PeerLoad};
    use p2p_services::manifest::Bitfield;

    fn peer(n: u8) -> PeerId {
        PeerId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02}")).expect("uuid")
    }

    fn file(n: u8) -> FileId {
        FileId::parse(&format!("{n:02x}").repeat(32)).expect("file id")
    }

    fn renewal(p: u8, seen_ms: i64) -> Renewal {
        Renewal {
            peer: peer(p),
            load: PeerLoad::default(),
            seen_ms,
        }
    }

    fn partial(p: u8, f: u8, chunks: &[u32], at_ms: i64) -> HoldingUpdate {
        let mut field = Bitfield::empty(8);
        for &c in chunks {
            field.set(c);
        }
        HoldingUpdate {
            peer: peer(p),
            file_id: file(f),
            holding: Holding::Partial(field),
            chunk_count: 8,
            at_ms,
        }
    }

    #[test]
    fn only_the_latest_renewal_per_peer_is_written() {
        let mut pending = Pending::new(10, 10);
        pending.renew(renewal(1, 100)).expect("room");
        pending
            .renew(renewal(1, 200))
            .expect("replacing needs no room");
        pending.renew(renewal(2, 150)).expect("room");
        let mut batch = pending.take();
        batch.renewals.sort_by_key(|r| r.seen_ms);
        assert_eq!(batch.renewals, vec![renewal(2, 150), renewal(1, 200)]);
        assert!(pending.is_empty(), "taking empties the queue");
    }

    #[test]
    fn a_full_queue_refuses_new_peers_but_not_known_ones() {
        let mut pending = Pending::new(2, 1);
        pending.renew(renewal(1, 1)).expect("room");
        pending.renew(renewal(2, 1)).expect("room");
        assert_eq!(pending.renew(renewal(3, 1)), Err(Full::Renewals));
        pending.renew(renewal(1, 2)).expect("a known peer replaces");
        pending.hold(partial(1, 1, &[0], 1)).expect("room");
        assert_eq!(pending.hold(partial(1, 2, &[0], 1)), Err(Full::Holdings));
        pending.hold(partial(1, 1, &[0, 1], 2)).expect("replaces");
        assert_eq!(pending.len(), (2, 1));
    }

    #[test]
    fn stop_sharing_and_delete_cancel_queued_holdings() {
        let mut pending = Pending::new(10, 10);
        pending.hold(partial(1, 1, &[0], 1)).expect("room");
        pending.hold(partial(2, 1, &[1], 1)).expect("room");
        pending.hold(partial(1, 2, &[2], 1)).expect("room");
        pending.forget_holding(&peer(1), &file(2));
        pending.forget_file(&file(1));
        assert!(pending.take().holdings.is_empty());
    }

    #[test]
    fn a_refused_batch_goes_back_without_overwriting_newer_entries() {
        let mut pending = Pending::new(10, 10);
        pending.renew(renewal(1, 100)).expect("room");
        pending.hold(partial(1, 1, &[0], 100)).expect("room");
        let refused = pending.take();
        pending.renew(renewal(1, 300)).expect("room");
        pending.restore(refused);
        let batch = pending.take();
        assert_eq!(batch.renewals, vec![renewal(1, 300)]);
        assert_eq!(batch.holdings, vec![partial(1, 1, &[0], 100)]);
    }

    fn new_peer(user: &str, addr: &str, version: &str) -> NewPeer {
        NewPeer {
            user_id: user.into(),
            username: user.into(),
            advertise_addr: addr.into(),
            agent_version: version.into(),
            load: PeerLoad::default(),
        }
    }

    #[test]
    fn a_group_writes_one_row_per_user_and_address_with_the_latest_values() {
        let first = new_peer("bob", "10.0.0.2:7000", "1");
        let other = new_peer("carol", "10.0.0.2:7000", "1");
        let again = new_peer("bob", "10.0.0.2:7000", "2");
        let early = new_peer("bob", "10.0.0.1:7000", "1");
        let (rows, callers) = merge(&[&first, &other, &again, &early]);
        assert_eq!(
            rows,
            vec![3, 2, 1],
            "sorted by (user, address), later values win"
        );
        assert_eq!(
            callers,
            vec![1, 2, 1, 0],
            "bob's two calls for one address share a row"
        );
    }
}
