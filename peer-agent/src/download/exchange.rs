//! The peer-to-peer holdings stream, `PeerService/WatchHoldings`, both
//! ends: a source tells a downloader what it holds of a file (its bitfield,
//! then every chunk it verifies as it verifies it: BitTorrent's HAVE) and
//! which other peers it knows for the file (peer exchange), so downloaders
//! learn of each other's new chunks and of each other without the index.
//!
//! Everything is bounded on both sides. A source coalesces updates to at
//! most one per [`MIN_UPDATE_GAP`], lists at most [`MAX_PEERS_PER_UPDATE`]
//! peers as soon as its peer book changes but at most every
//! [`PEERS_EVERY`], and sends a keepalive every
//! [`KEEPALIVE_EVERY`]. A watcher ([`Watcher`]) reads messages of at most
//! [`MAX_UPDATE_BYTES`] plus the bitfield, drops a source silent for
//! [`SILENT_DROP`], and ends with [`WatchEnd::Misbehaved`] (the coordinator
//! reports and bans it) on a malformed update, an index past the end, more
//! than [`MAX_UPDATES_PER_SEC`] sustained, or too many peers in one update.
//! Every listed peer is checked by [`check_hint`] before anyone dials it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{HoldingsUpdate, PeerHint, WatchHoldingsRequest};
use p2p_services::client::with_peer_credentials;
use p2p_services::manifest::Bitfield;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::holdings::{Holding, Holdings, KnownPeer};
use crate::picker::SourceKey;

/// Least time between two updates a source sends on one stream.
pub const MIN_UPDATE_GAP: Duration = Duration::from_millis(100);
/// A source sends at least one message this often, empty if need be.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// A watcher drops a source that sent nothing for this long.
pub const SILENT_DROP: Duration = Duration::from_secs(15);
/// Least time between two peer lists on one stream. A list goes out as
/// soon as the peer book changes (a downloader started watching us), so
/// downloaders that start together know each other within this.
pub const PEERS_EVERY: Duration = Duration::from_millis(250);
/// Most peers one update lists.
pub const MAX_PEERS_PER_UPDATE: usize = 16;
/// Most chunk indexes one update lists.
pub const MAX_HAVE_PER_UPDATE: usize = 1024;
/// Longest peer id or address in a hint.
pub const MAX_HINT_BYTES: usize = 64;
/// Most bytes of an update besides the bitfield of its first message.
pub const MAX_UPDATE_BYTES: usize = 16 * 1024;
/// A watcher tolerates this many updates per second, sustained (sources
/// send at most 10 and a keepalive); more is a flood.
pub const MAX_UPDATES_PER_SEC: u32 = 25;
/// ... and bursts of this many.
const UPDATE_BURST: u32 = 50;

/// The client for a source's holdings stream: small messages only.
pub fn watch_client(channel: Channel, chunk_count: u32) -> PeerServiceClient<Channel> {
    let bitfield_bytes = (chunk_count as usize).div_ceil(8);
    PeerServiceClient::new(channel).max_decoding_message_size(bitfield_bytes + MAX_UPDATE_BYTES)
}

/// Checks a peer some other agent told us about before we dial it. Only an
/// IP literal with a port (no name to resolve, so a hint cannot make us
/// query DNS), never unspecified, multicast, broadcast or link-local (where
/// cloud metadata services live), loopback only when we are on loopback
/// ourselves; the peer id short and printable. Dialling it is then safe:
/// over TLS the peer must present a certificate from the deployment's CA
/// for that address and accept a proof naming `peer_id`.
pub fn check_hint(hint: &PeerHint, own_address: &str) -> Result<KnownPeer, String> {
    let id = hint.peer_id.as_str();
    if id.is_empty()
        || id.len() > MAX_HINT_BYTES
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "peer id {:?} is not a peer id",
            truncate(id, MAX_HINT_BYTES)
        ));
    }
    if hint.address.len() > MAX_HINT_BYTES {
        return Err("address is too long".into());
    }
    let addr: SocketAddr = hint.address.parse().map_err(|_| {
        format!(
            "address {:?} is not ip:port",
            truncate(&hint.address, MAX_HINT_BYTES)
        )
    })?;
    let ip = addr.ip().to_canonical();
    let own_loopback = own_address
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
        || own_address.starts_with("localhost:");
    let bad = addr.port() == 0
        || ip.is_unspecified()
        || ip.is_multicast()
        || (ip.is_loopback() && !own_loopback)
        || match ip {
            IpAddr::V4(v4) => v4.is_broadcast() || v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
    if bad {
        return Err(format!("address {addr} is not a peer's address"));
    }
    Ok(KnownPeer {
        peer_id: id.to_string(),
        address: addr.to_string(),
    })
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The caller's own hint, accepted when its host is the address the call
/// came from (as index-svc accepts an advertised address).
pub fn caller_hint(hint: Option<&PeerHint>, from: Option<IpAddr>) -> Option<KnownPeer> {
    let hint = hint?;
    let from = from?.to_canonical();
    let peer = check_hint(hint, "127.0.0.1:1").ok()?;
    let addr: SocketAddr = peer.address.parse().ok()?;
    (addr.ip().to_canonical() == from).then_some(peer)
}

/// The source side of one stream: sends updates until the caller goes
/// away, stops reading for `stall_timeout`, the holding goes, or shutdown.
pub async fn serve_updates(
    holding: Arc<Holding>,
    holdings: Arc<Holdings>,
    watcher: Option<String>,
    tx: mpsc::Sender<Result<HoldingsUpdate, Status>>,
    stall_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = holding.subscribe();
    let mut peer_changes = holding.subscribe_peers();
    peer_changes.mark_unchanged();
    let mut sent = holding.bitfield();
    let (peers_version, peers) = holding.known_peers(watcher.as_deref(), MAX_PEERS_PER_UPDATE);
    let mut peers_sent = (peers_version, Instant::now());
    let mut peers_listed = hints(peers);
    let first = HoldingsUpdate {
        bitfield: sent.as_bytes().to_vec(),
        have: Vec::new(),
        complete: sent.is_complete(),
        peers: peers_listed.clone(),
    };
    let send = |update: Result<HoldingsUpdate, Status>| {
        let tx = tx.clone();
        async move { tx.send_timeout(update, stall_timeout).await.is_ok() }
    };
    if !send(Ok(first)).await {
        return;
    }
    let mut last_sent = Instant::now();
    loop {
        let peers_pending = *peer_changes.borrow() != peers_sent.0;
        let wake = if peers_pending {
            (last_sent + KEEPALIVE_EVERY).min(peers_sent.1 + PEERS_EVERY)
        } else {
            last_sent + KEEPALIVE_EVERY
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.try_send(Err(Status::unavailable("the agent is shutting down")));
                return;
            }
            () = tx.closed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = peer_changes.changed(), if !peers_pending => {
                if changed.is_err() {
                    return;
                }
            }
            // A keepalive is due, or a changed peer book waits out its gap.
            () = tokio::time::sleep_until(wake) => {}
        }
        tokio::time::sleep_until(last_sent + MIN_UPDATE_GAP).await;
        let still_held = holdings
            .get(&holding.file_id)
            .is_some_and(|h| Arc::ptr_eq(&h, &holding));
        if !still_held || !holdings.verify(&holding) {
            let _ = send(Err(Status::not_found(format!(
                "this agent no longer holds file {}",
                holding.file_id
            ))))
            .await;
            return;
        }
        let now = holding.bitfield();
        if sent.held().any(|i| !now.get(i)) {
            let _ = send(Err(Status::aborted(
                "this agent dropped chunks it had verified; watch again",
            )))
            .await;
            return;
        }
        let mut new: Vec<u32> = now.held().filter(|&i| !sent.get(i)).collect();
        let complete = now.is_complete();
        if complete && new.len() > MAX_HAVE_PER_UPDATE {
            new.clear();
        }
        let mut update = HoldingsUpdate {
            bitfield: Vec::new(),
            have: Vec::new(),
            complete,
            peers: Vec::new(),
        };
        let version = *peer_changes.borrow_and_update();
        if version != peers_sent.0 && peers_sent.1.elapsed() >= PEERS_EVERY {
            let (version, peers) = holding.known_peers(watcher.as_deref(), MAX_PEERS_PER_UPDATE);
            peers_sent.0 = version;
            // The book also changes when this watcher itself is noted, or
            // a known peer moves up: only a different list is news.
            let peers = hints(peers);
            if peers != peers_listed {
                update.peers = peers.clone();
                peers_listed = peers;
                peers_sent.1 = Instant::now();
            }
        }
        if new.is_empty()
            && update.peers.is_empty()
            && complete == sent.is_complete()
            && last_sent.elapsed() < KEEPALIVE_EVERY
        {
            continue;
        }
        // More than fit in one update (a jump after a pause): in several,
        // still at most one per gap.
        let mut batches = new.chunks(MAX_HAVE_PER_UPDATE).peekable();
        if batches.peek().is_none() {
            if !send(Ok(update)).await {
                return;
            }
        } else {
            let mut first_batch = true;
            for batch in batches {
                if !first_batch {
                    tokio::time::sleep(MIN_UPDATE_GAP).await;
                }
                first_batch = false;
                let mut message = update.clone();
                message.have = batch.to_vec();
                update.peers.clear();
                if !send(Ok(message)).await {
                    return;
                }
            }
        }
        sent = now;
        last_sent = Instant::now();
    }
}

fn hints(peers: Vec<KnownPeer>) -> Vec<PeerHint> {
    peers
        .into_iter()
        .map(|p| PeerHint {
            peer_id: p.peer_id,
            address: p.address,
        })
        .collect()
}

/// What a watcher learnt, for the coordinator.
#[derive(Debug)]
pub enum WatchEvent {
    /// The source holds exactly these chunks.
    Holds(Bitfield),
    /// The source verified these chunks.
    Have(Vec<u32>),
    /// Peers the source knows for the file (not checked yet).
    Peers(Vec<PeerHint>),
    /// The stream ended.
    Ended(WatchEnd),
}

/// How a holdings stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The source does not serve WatchHoldings (an older agent): the index
    /// stays its only news.
    Unsupported,
    /// The source ended it or could not be reached; not its fault.
    Closed(String),
    /// Nothing for [`SILENT_DROP`].
    Silent,
    /// The source broke the contract: report and ban it.
    Misbehaved(String),
}

/// Watches one source's holdings for one download.
pub struct Watcher {
    /// The source within the download.
    pub key: SourceKey,
    /// Who answers at the source's address (the proof names it).
    pub source_peer_id: String,
    /// The file.
    pub file_id: String,
    /// Its chunk count.
    pub chunk_count: u32,
    /// Our own hint, so the source can tell others about us.
    pub caller: Option<PeerHint>,
    /// For the peer token and a proof for `source_peer_id`.
    pub session: Arc<crate::session::Session>,
    /// The source's client (see [`watch_client`]).
    pub client: PeerServiceClient<Channel>,
    /// Where events go.
    pub events: mpsc::Sender<(SourceKey, WatchEvent)>,
}

impl Watcher {
    /// Reads the stream until it ends; every event, and the end, goes to
    /// the coordinator.
    pub async fn run(self) {
        let key = self.key;
        let events = self.events.clone();
        let mut attempt = 1;
        let end = loop {
            match self.watch().await {
                Ok(end) => break end,
                Err(status) if status.code() == Code::Unavailable && attempt < OPEN_ATTEMPTS => {
                    tracing::debug!(peer = %self.source_peer_id, attempt, %status, "cannot open a holdings stream yet; trying again");
                    tokio::time::sleep(reopen_after(attempt)).await;
                    attempt += 1;
                }
                Err(status) => break ended(&status),
            }
        };
        let _ = events.send((key, WatchEvent::Ended(end))).await;
    }

    /// The stream until it ends, or `Err` when the call did not open.
    async fn watch(&self) -> Result<WatchEnd, Status> {
        let request = WatchHoldingsRequest {
            file_id: self.file_id.clone(),
            caller: self.caller.clone(),
        };
        let (token, proof) = match self.session.peer_credentials(&self.source_peer_id).await {
            Ok(credentials) => credentials,
            Err(err) => return Ok(WatchEnd::Closed(err.to_string())),
        };
        let (token, proof) = (&token, &proof);
        let mut client = self.client.clone();
        let response = match tokio::time::timeout(
            SILENT_DROP,
            client.watch_holdings(with_peer_credentials(request, token, proof)),
        )
        .await
        {
            Err(_) => return Ok(WatchEnd::Silent),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(response)) => response,
        };
        Ok(self.follow(response.into_inner()).await)
    }

    async fn follow(&self, mut stream: tonic::Streaming<HoldingsUpdate>) -> WatchEnd {
        let mut budget = Budget::new();
        let mut first = true;
        loop {
            let update = match tokio::time::timeout(SILENT_DROP, stream.message()).await {
                Err(_) => return WatchEnd::Silent,
                Ok(Err(status)) => return ended(&status),
                Ok(Ok(None)) => return WatchEnd::Closed("the source ended the stream".into()),
                Ok(Ok(Some(update))) => update,
            };
            if !budget.take() {
                return WatchEnd::Misbehaved(format!(
                    "flooded holdings updates (more than {MAX_UPDATES_PER_SEC} per second)"
                ));
            }
            match check_update(&update, self.chunk_count, first) {
                Err(detail) => return WatchEnd::Misbehaved(detail),
                Ok(events) => {
                    for event in events {
                        if self.events.send((self.key, event)).await.is_err() {
                            return WatchEnd::Closed("the download ended".into());
                        }
                    }
                }
            }
            first = false;
        }
    }
}

/// How many times a holdings stream (and a worker's first call) is tried
/// before a source that never answered is given up: on a saturated link a
/// SYN or SYN-ACK can be lost three times, and the connect times out after
/// 5 s.
pub const OPEN_ATTEMPTS: u32 = 3;

/// The pause before attempt `attempt + 1` to reach a source that has not
/// answered yet: 0.5 s, then 1 s, each ±25 %.
pub fn reopen_after(attempt: u32) -> Duration {
    super::jittered(Duration::from_millis(500) * 2u32.pow(attempt.saturating_sub(1).min(4)))
}

fn ended(status: &Status) -> WatchEnd {
    match status.code() {
        Code::Unimplemented => WatchEnd::Unsupported,
        _ => WatchEnd::Closed(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Checks one update against the contract and turns it into events (pure,
/// for the unit tests).
pub fn check_update(
    update: &HoldingsUpdate,
    chunk_count: u32,
    first: bool,
) -> Result<Vec<WatchEvent>, String> {
    let mut events = Vec::new();
    if first {
        let holds = if update.complete {
            Bitfield::full(chunk_count)
        } else {
            Bitfield::from_bytes(&update.bitfield, chunk_count)
                .map_err(|e| format!("sent a bad bitfield: {e}"))?
        };
        events.push(WatchEvent::Holds(holds));
    } else if !update.bitfield.is_empty() {
        return Err("sent a second bitfield".into());
    } else if update.complete {
        events.push(WatchEvent::Holds(Bitfield::full(chunk_count)));
    }
    if update.have.len() > MAX_HAVE_PER_UPDATE {
        return Err(format!(
            "listed {} chunks in one update; at most {MAX_HAVE_PER_UPDATE}",
            update.have.len()
        ));
    }
    if let Some(bad) = update.have.iter().find(|&&i| i >= chunk_count) {
        return Err(format!(
            "claimed chunk {bad} of a file of {chunk_count} chunks"
        ));
    }
    if !update.have.is_empty() && !update.complete {
        events.push(WatchEvent::Have(update.have.clone()));
    }
    if update.peers.len() > MAX_PEERS_PER_UPDATE {
        return Err(format!(
            "listed {} peers in one update; at most {MAX_PEERS_PER_UPDATE}",
            update.peers.len()
        ));
    }
    if !update.peers.is_empty() {
        events.push(WatchEvent::Peers(update.peers.clone()));
    }
    Ok(events)
}

/// A token bucket of updates: [`MAX_UPDATES_PER_SEC`], bursts of
/// [`UPDATE_BURST`].
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new() -> Self {
        Self {
            tokens: f64::from(UPDATE_BURST),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(MAX_UPDATES_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(UPDATE_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(peer_id: &str, address: &str) -> PeerHint {
        PeerHint {
            peer_id: peer_id.into(),
            address: address.into(),
        }
    }

    #[test]
    fn junk_addresses_are_refused() {
        let lan = "10.0.0.2:7000";
        for address in [
            "peer.example:7000",
            "10.0.0.3",
            "10.0.0.3:0",
            "0.0.0.0:7000",
            "255.255.255.255:7000",
            "224.0.0.1:7000",
            "169.254.169.254:80",
            "127.0.0.1:7000",
            "[::1]:7000",
            "[fe80::1]:7000",
            "[::]:7000",
        ] {
            assert!(
                check_hint(&hint("p1", address), lan).is_err(),
                "{address} was accepted"
            );
        }
        assert!(check_hint(&hint("p1", "10.0.0.3:7000"), lan).is_ok());
        assert!(check_hint(&hint("", "10.0.0.3:7000"), lan).is_err());
        assert!(check_hint(&hint("p 1\n", "10.0.0.3:7000"), lan).is_err());
        assert!(check_hint(&hint(&"p".repeat(65), "10.0.0.3:7000"), lan).is_err());
    }

    #[test]
    fn loopback_peers_are_accepted_only_on_loopback() {
        assert!(check_hint(&hint("p1", "127.0.0.1:7000"), "127.0.0.1:6000").is_ok());
    }

    #[test]
    fn a_caller_may_name_only_its_own_address() {
        let from: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(caller_hint(Some(&hint("p5", "10.0.0.5:7000")), Some(from)).is_some());
        assert!(caller_hint(Some(&hint("p5", "10.0.0.6:7000")), Some(from)).is_none());
        assert!(caller_hint(Some(&hint("p5", "10.0.0.5:7000")), None).is_none());
    }

    #[test]
    fn updates_past_the_end_or_too_big_are_misbehaviour() {
        let mut update = HoldingsUpdate {
            bitfield: Vec::new(),
            have: vec![3, 10],
            complete: false,
            peers: Vec::new(),
        };
        assert!(check_update(&update, 10, false).is_err());
        update.have = (0..2000).map(|i| i % 10).collect();
        assert!(check_update(&update, 10, false).is_err());
        update.have = vec![1, 2];
        update.peers = (0..17)
            .map(|i| hint(&format!("p{i}"), "10.0.0.1:1"))
            .collect();
        assert!(check_update(&update, 10, false).is_err());
        update.peers.truncate(2);
        let events = check_update(&update, 10, false).unwrap();
        assert_eq!(events.len(), 2);
        update.bitfield = vec![0xff, 0xc0];
        assert!(check_update(&update, 10, false).is_err());
        assert!(check_update(&update, 10, true).is_ok());
        update.bitfield = vec![0xff];
        assert!(check_update(&update, 10, true).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_runs_out_of_budget() {
        let mut budget = Budget::new();
        let taken = (0..200).filter(|_| budget.take()).count();
        assert_eq!(taken, UPDATE_BURST as usize);
        tokio::time::advance(Duration::from_secs(1)).await;
        let taken = (0..200).filter(|_| budget.take()).count();
        assert_eq!(taken, MAX_UPDATES_PER_SEC as usize);
    }
}
