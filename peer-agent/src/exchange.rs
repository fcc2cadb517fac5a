//! The holdings stream between peers, `PeerService/WatchHoldings`: what
//! both ends agree on. A source tells a downloader what it holds of a file
//! (its bitfield, then every chunk it verifies as it verifies it:
//! BitTorrent's HAVE) and which other peers it knows for the file (peer
//! exchange), so downloaders learn of each other's new chunks and of each
//! other without the index.
//!
//! Each end lives with its side: the source end in `crate::upload::exchange`,
//! the downloader end in `crate::download::exchange`. This module holds
//! the limits both keep and [`check_hint`], the check on every peer address
//! a peer names.
//!
//! Everything is bounded on both sides. A source coalesces updates to at
//! most one per [`MIN_UPDATE_GAP`], lists at most [`MAX_PEERS_PER_UPDATE`]
//! peers as soon as its peer book changes but at most every
//! [`PEERS_EVERY`], and sends a keepalive every [`KEEPALIVE_EVERY`]. A
//! watcher reads messages of at most [`MAX_UPDATE_BYTES`] plus the
//! bitfield, drops a source silent for [`SILENT_DROP`], and ends the stream
//! as misbehaviour (the coordinator reports and bans the source) on a
//! malformed update, an index past the end, more than
//! [`MAX_UPDATES_PER_SEC`] sustained, or too many peers in one update.
//! Every listed peer is checked by [`check_hint`] before anyone dials it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use p2p_proto::peer::v1::PeerHint;

use crate::holdings::KnownPeer;

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
pub const UPDATE_BURST: u32 = 50;

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

/// What the tests of both ends build hints with.
#[cfg(test)]
pub(crate) mod testing {
    use p2p_proto::peer::v1::PeerHint;

    /// A hint naming `peer_id` at `address`.
    pub(crate) fn hint(peer_id: &str, address: &str) -> PeerHint {
        PeerHint {
            peer_id: peer_id.into(),
            address: address.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::hint;
    use super::*;

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
}
