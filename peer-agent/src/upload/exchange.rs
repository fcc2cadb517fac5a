//! The source end of the holdings stream (its contract in
//! [`crate::exchange`]): for one watcher of one file, the bitfield, then
//! every chunk verified here, and the peers this agent knows for the file,
//! paced and bounded as the contract says. A caller that names itself
//! ([`caller_hint`]) joins the file's peer book, so the downloads here and
//! the other watchers hear of it.
//!
//! Two front doors open a stream, `PeerService/WatchHoldings` (gRPC) and a
//! `p2p-holdings/1` connection (`super::framed`); both go through
//! [`super::Uploads::watch`] and [`serve_updates`], and differ only in the
//! [`UpdateSink`] the updates go to.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::peer::v1::{HoldingsUpdate, PeerHint};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::exchange::{
    KEEPALIVE_EVERY, MAX_HAVE_PER_UPDATE, MAX_PEERS_PER_UPDATE, MIN_UPDATE_GAP, PEERS_EVERY,
    check_hint,
};
use crate::holdings::{Holding, Holdings, KnownPeer};

/// The caller's own hint, accepted when its host is the address the call
/// came from (as index-svc accepts an advertised address).
pub fn caller_hint(hint: Option<&PeerHint>, from: Option<IpAddr>) -> Option<KnownPeer> {
    let hint = hint?;
    let from = from?.to_canonical();
    let peer = check_hint(hint, "127.0.0.1:1").ok()?;
    let addr: SocketAddr = peer.address.parse().ok()?;
    (addr.ip().to_canonical() == from).then_some(peer)
}

/// How long a stream ending at shutdown waits to tell its watcher so.
const SHUTDOWN_NOTICE: Duration = Duration::from_millis(200);

/// Where one holdings stream's updates go.
pub trait UpdateSink: Send {
    /// Sends one update, or the status that ends the stream; false when
    /// the watcher is gone or did not take it within `stall`.
    fn send(
        &mut self,
        update: Result<HoldingsUpdate, Status>,
        stall: Duration,
    ) -> impl Future<Output = bool> + Send;

    /// Resolves once the watcher has gone away.
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
}

/// The gRPC response's channel.
impl UpdateSink for mpsc::Sender<Result<HoldingsUpdate, Status>> {
    async fn send(&mut self, update: Result<HoldingsUpdate, Status>, stall: Duration) -> bool {
        self.send_timeout(update, stall).await.is_ok()
    }

    async fn closed(&mut self) {
        mpsc::Sender::closed(self).await;
    }
}

/// One watcher of one file, admitted by [`super::Uploads::watch`]: what
/// [`serve_updates`] serves it from.
pub struct Watch {
    pub(super) holding: Arc<Holding>,
    pub(super) holdings: Arc<Holdings>,
    /// The watcher's peer id, when it named itself.
    pub(super) watcher: Option<String>,
    pub(super) stall_timeout: Duration,
    pub(super) shutdown: CancellationToken,
    /// Its place among the streams served at once.
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The source side of one stream: sends updates until the caller goes
/// away, stops reading for the stall timeout, the holding goes, or
/// shutdown.
pub async fn serve_updates(watch: Watch, mut sink: impl UpdateSink) {
    let Watch {
        holding,
        holdings,
        watcher,
        stall_timeout,
        shutdown,
        _permit,
    } = watch;
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
    if !sink.send(Ok(first), stall_timeout).await {
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
                let status = Status::unavailable("the agent is shutting down");
                sink.send(Err(status), SHUTDOWN_NOTICE).await;
                return;
            }
            () = sink.closed() => return,
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
            let status = Status::not_found(format!(
                "this agent no longer holds file {}",
                holding.file_id
            ));
            sink.send(Err(status), stall_timeout).await;
            return;
        }
        let now = holding.bitfield();
        if sent.held().any(|i| !now.get(i)) {
            let status = Status::aborted("this agent dropped chunks it had verified; watch again");
            sink.send(Err(status), stall_timeout).await;
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
            if !sink.send(Ok(update), stall_timeout).await {
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
                if !sink.send(Ok(message), stall_timeout).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::testing::hint;

    #[test]
    fn a_caller_may_name_only_its_own_address() {
        let from: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(caller_hint(Some(&hint("p5", "10.0.0.5:7000")), Some(from)).is_some());
        assert!(caller_hint(Some(&hint("p5", "10.0.0.6:7000")), Some(from)).is_none());
        assert!(caller_hint(Some(&hint("p5", "10.0.0.5:7000")), None).is_none());
    }
}
