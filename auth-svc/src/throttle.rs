//! Login throttling that slows guessing without locking anyone out.
//!
//! Only failures count: one is recorded after the password check fails, so
//! correct logins, however many arrive at once, use nothing up. Two counters
//! refuse attempts, each with a growing delay after its last failure
//! ([`Backoff`]); a refused attempt checks no password and is not counted.
//! - **per (account, client address)**, [`PER_ACCOUNT_FROM_ADDRESS`]: three
//!   failures are free, then the next attempt must wait 1 s, 2 s, 4 s ... up
//!   to 30 s. A success for that account from that address clears it. A
//!   guesser on one host therefore never delays the owner on another.
//! - **per client address, across accounts**, [`PER_ADDRESS`]: twenty
//!   failures are free, then the same growth up to a minute, against one
//!   host spraying passwords over many usernames. Successes do not clear it
//!   (a sprayer's own account would reset it); it is forgotten after
//!   [`FORGET_AFTER`] without failures, like the other counter.
//!
//! Nothing counts per account alone: any counter an attacker can fill for an
//! account they do not own is a way to lock its owner out. Guessing one
//! account from many addresses is bounded per address only, and shows in the
//! failed-login metric and the log.
//!
//! Unknown usernames are counted exactly like real ones, so the answers say
//! nothing about which accounts exist.
//!
//! **Where the counts live: the database** (`Store::failed_logins` and its
//! neighbours), so they hold across restarts (crashing a replica resets
//! nothing) and across replicas behind one load balancer (which would
//! otherwise multiply the guessing rate by their number). A row is written
//! only on a failure and deleted on a success; rows idle for
//! [`FORGET_AFTER`] are deleted whenever a fresh count starts, so the tables
//! hold about the addresses that failed lately.
//!
//! Within a replica, attempts for one (account, address) run one at a time
//! ([`AttemptLocks`]), so a burst of parallel guesses is counted as a
//! sequence rather than all passing the check before the first failure is
//! recorded. Correct logins from one host for one account wait for each
//! other's password check but are never refused. The lock table holds only
//! the keys with an attempt in flight.
//!
//! A client address ([`ClientAddr`]) is an IPv4 address, or an IPv6 /64
//! (one host usually owns the whole /64). Behind a proxy every client shares
//! the proxy's address.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

/// How long attempts must wait after a number of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures that cost nothing.
    pub free_failures: i64,
    /// The wait after the first failure beyond the free ones; it doubles
    /// with each further failure.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Backoff {
    /// The wait, counted from the last failure, after `failures` of them.
    pub fn delay_after(&self, failures: i64) -> Duration {
        if failures <= self.free_failures {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free_failures - 1).min(31) as u32;
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// Failures for one account from one client address.
pub const PER_ACCOUNT_FROM_ADDRESS: Backoff = Backoff {
    free_failures: 3,
    first_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(30),
};

/// Failures from one client address over all accounts; higher than the
/// per-account budget because several people may share an address.
pub const PER_ADDRESS: Backoff = Backoff {
    free_failures: 20,
    first_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(60),
};

/// A count with no new failure for this long starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Consecutive failures and when the last one happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    /// Failures since the count started.
    pub count: i64,
    /// The last one, Unix milliseconds.
    pub last_ms: i64,
}

impl Failures {
    /// The count after one more failure at `now_ms`. The store mirrors this
    /// in SQL so concurrent replicas count every failure.
    pub fn next(previous: Option<Failures>, now_ms: i64) -> Failures {
        let count = match previous {
            Some(p) if !p.forgotten(now_ms) => p.count + 1,
            _ => 1,
        };
        Failures {
            count,
            last_ms: now_ms,
        }
    }

    fn forgotten(&self, now_ms: i64) -> bool {
        self.last_ms + FORGET_AFTER.as_millis() as i64 <= now_ms
    }

    /// How much longer an attempt at `now_ms` must wait; `None` when it may
    /// go ahead.
    pub fn wait(&self, backoff: &Backoff, now_ms: i64) -> Option<Duration> {
        if self.forgotten(now_ms) {
            return None;
        }
        let until_ms = self.last_ms + backoff.delay_after(self.count).as_millis() as i64;
        (now_ms < until_ms).then(|| Duration::from_millis((until_ms - now_ms) as u64))
    }
}

/// The counts that decide one login attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedLogins {
    /// For the named account from this address (`None` also when the name
    /// cannot be an account).
    pub account_from_address: Option<Failures>,
    /// From this address, all accounts together.
    pub address: Option<Failures>,
}

/// Which counter refused an attempt, for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottleScope {
    /// The account (named) from this address.
    Account(String),
    /// This address, whatever the account.
    Address,
}

impl fmt::Display for ThrottleScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleScope::Account(name) => write!(f, "from this address for {name}"),
            ThrottleScope::Address => f.write_str("from this address"),
        }
    }
}

/// Whether an attempt for `username` at `now_ms` must be refused: by which
/// counter and for how long (the longer wait when both refuse).
pub fn refusal(
    failed: &FailedLogins,
    username: &str,
    now_ms: i64,
) -> Option<(ThrottleScope, Duration)> {
    let account = failed
        .account_from_address
        .and_then(|f| f.wait(&PER_ACCOUNT_FROM_ADDRESS, now_ms))
        .map(|wait| (ThrottleScope::Account(username.to_string()), wait));
    let address = failed
        .address
        .and_then(|f| f.wait(&PER_ADDRESS, now_ms))
        .map(|wait| (ThrottleScope::Address, wait));
    match (account, address) {
        (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A wait in whole seconds for the client, rounded up, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

/// The address a client is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientAddr(String);

impl ClientAddr {
    /// IPv4 as is (also when mapped into IPv6), IPv6 by its /64; clients
    /// without an IP address (none today) share one key.
    pub fn new(ip: Option<IpAddr>) -> Self {
        let text = match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => v4.to_string(),
            Some(IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            None => "unknown".to_string(),
        };
        Self(text)
    }

    /// The stored text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type AttemptKey = (String, ClientAddr);

/// Makes login attempts for the same (username, address) take turns.
#[derive(Debug, Default)]
pub struct AttemptLocks {
    held: Mutex<HashMap<AttemptKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// Our turn for one (username, address); the next attempt starts when it
/// drops.
#[derive(Debug)]
pub struct AttemptTurn<'a> {
    locks: &'a AttemptLocks,
    key: AttemptKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl AttemptLocks {
    /// Waits until no other attempt for `username` from `addr` is running.
    pub async fn turn(&self, username: &str, addr: &ClientAddr) -> AttemptTurn<'_> {
        let key = (username.to_string(), addr.clone());
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(held.entry(key.clone()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        AttemptTurn {
            locks: self,
            key,
            lock,
            guard: Some(guard),
        }
    }

    /// Keys with an attempt running or waiting.
    pub fn in_flight(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for AttemptTurn<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Only the table and this turn hold the lock: nobody is waiting, and
        // nobody can start waiting while we hold the table.
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_start_after_the_free_failures_double_and_stop_at_the_cap() {
        let b = PER_ACCOUNT_FROM_ADDRESS;
        let delays: Vec<u64> = (0..=10).map(|n| b.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [0, 0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay_after(i64::MAX), 30 * S);
        assert_eq!(PER_ADDRESS.delay_after(20), Duration::ZERO);
        assert_eq!(PER_ADDRESS.delay_after(21), S);
        assert_eq!(PER_ADDRESS.delay_after(30), 60 * S);
    }

    #[test]
    fn failures_count_up_and_start_over_once_forgotten() {
        let first = Failures::next(None, 1_000);
        assert_eq!(
            first,
            Failures {
                count: 1,
                last_ms: 1_000
            }
        );
        let second = Failures::next(Some(first), 5_000);
        assert_eq!(second.count, 2);
        let forget_ms = FORGET_AFTER.as_millis() as i64;
        let later = Failures::next(Some(second), 5_000 + forget_ms);
        assert_eq!(later.count, 1);
    }

    #[test]
    fn the_wait_runs_from_the_last_failure() {
        let f = Failures {
            count: 5,
            last_ms: 10_000,
        };
        let b = PER_ACCOUNT_FROM_ADDRESS;
        assert_eq!(f.wait(&b, 10_000), Some(2 * S));
        assert_eq!(f.wait(&b, 11_500), Some(Duration::from_millis(500)));
        assert_eq!(f.wait(&b, 12_000), None);
        let free = Failures { count: 3, ..f };
        assert_eq!(free.wait(&b, 10_000), None);
        let capped = Failures { count: 99, ..f };
        let forget_ms = FORGET_AFTER.as_millis() as i64;
        assert_eq!(capped.wait(&b, 10_000 + forget_ms), None);
    }

    #[test]
    fn refusal_names_the_counter_with_the_longer_wait() {
        let none = FailedLogins::default();
        assert_eq!(refusal(&none, "alice", 0), None);
        let account = Failures {
            count: 4,
            last_ms: 0,
        };
        let address = Failures {
            count: 23,
            last_ms: 0,
        };
        let only_account = FailedLogins {
            account_from_address: Some(account),
            address: None,
        };
        assert_eq!(
            refusal(&only_account, "alice", 0),
            Some((ThrottleScope::Account("alice".into()), S))
        );
        let both = FailedLogins {
            account_from_address: Some(account),
            address: Some(address),
        };
        assert_eq!(
            refusal(&both, "alice", 0),
            Some((ThrottleScope::Address, 4 * S))
        );
        assert_eq!(
            ThrottleScope::Account("alice".into()).to_string(),
            "from this address for alice"
        );
    }

    #[test]
    fn retry_hints_round_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(2 * S), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn addresses_are_hosts_for_ipv4_and_slash_64s_for_ipv6() {
        let addr = |s: &str| ClientAddr::new(Some(s.parse().unwrap())).to_string();
        assert_eq!(addr("192.0.2.7"), "192.0.2.7");
        assert_eq!(addr("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(addr("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(addr("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64");
        assert_ne!(addr("2001:db8:1:3::1"), addr("2001:db8:1:2::1"));
        assert_eq!(ClientAddr::new(None).as_str(), "unknown");
    }

    #[tokio::test]
    async fn attempts_for_one_key_take_turns_and_leave_nothing_behind() {
        let locks = AttemptLocks::default();
        let a = ClientAddr::new(Some("10.0.0.1".parse().unwrap()));
        let b = ClientAddr::new(Some("10.0.0.2".parse().unwrap()));
        let first = locks.turn("alice", &a).await;
        // Another address, or another account, does not wait.
        let other_addr = locks.turn("alice", &b).await;
        let other_name = locks.turn("bob", &a).await;
        assert_eq!(locks.in_flight(), 3);
        drop((other_addr, other_name));
        assert_eq!(locks.in_flight(), 1);

        let mut second = Box::pin(locks.turn("alice", &a));
        assert!(
            futures_now(&mut second).is_none(),
            "the same key waits for its turn"
        );
        drop(first);
        let second = second.await;
        assert_eq!(locks.in_flight(), 1);
        drop(second);
        assert_eq!(locks.in_flight(), 0);
    }

    /// Polls a future once without waiting.
    fn futures_now<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(future).poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }
}
