//! The source end of the holdings stream (`PeerService/WatchHoldings`,
//! its contract in [`crate::exchange`]): for one watcher of one file, the
//! bitfield, then every chunk verified here, and the peers this agent knows
//! for the file, paced and bounded as the contract says. A caller that
//! names itself ([`caller_hint`]) joins the file's peer book, so the
//! downloads here and the other watchers hear of it.

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
