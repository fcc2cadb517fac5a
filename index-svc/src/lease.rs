//! Leases: a peer is online while `last_seen + ttl` is in the future.
//!
//! State is computed from time at query time rather than flipped by a
//! sweeper, so every replica on the same database agrees, a restarted index
//! needs nothing from agents but their next heartbeat, and a lapsed peer
//! stops being offered the instant its lease ends.

use std::time::Duration;

/// The lease policy: how long a heartbeat keeps a peer online and how often
/// agents are asked to heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Time after the last heartbeat at which a peer goes offline.
    pub ttl: Duration,
    /// How often agents should heartbeat (well under `ttl`).
    pub heartbeat_interval: Duration,
}

impl Lease {
    /// The lease length in milliseconds, as stored and sent.
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Peers last seen strictly after this instant (Unix ms) are online at
    /// `now_ms`. Queries compare `last_seen_ms > online_after(now)`.
    pub fn online_after(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.ttl_ms())
    }

    /// Whether a peer last seen at `last_seen_ms` is online at `now_ms`.
    pub fn is_online(&self, last_seen_ms: i64, now_ms: i64) -> bool {
        last_seen_ms > self.online_after(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_online_until_its_lease_lapses() {
        let lease = Lease {
            ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
        };
        assert!(lease.is_online(1_000, 1_000));
        assert!(lease.is_online(1_000, 15_999));
        assert!(!lease.is_online(1_000, 16_000));
        assert_eq!(lease.online_after(20_000), 5_000);
    }
}
