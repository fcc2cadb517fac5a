//! Login throttling: fixed windows of counted attempts, per username and
//! per client address.
//!
//! An attempt is counted *before* the password is checked (and uncounted on
//! success), so a burst of parallel guesses cannot all slip in before the
//! first failure is recorded. Per username the counter lives in the
//! database (`store::Store::count_login_attempt`, which mirrors
//! [`next_window`] in SQL) so it holds across restarts and replicas, and it
//! is kept for unknown usernames too, so throttling reveals nothing about
//! which accounts exist. Per address the counter is in memory: it resets on
//! restart and is per replica, which is acceptable because its job is only
//! to slow one noisy client, and its size is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Attempts one username may fail within [`WINDOW`] before it is refused.
pub const MAX_ACCOUNT_FAILURES: i64 = 5;
/// Failed attempts one client address may make within [`WINDOW`]; higher
/// than the per-account limit because several people may share an address.
pub const MAX_ADDRESS_FAILURES: i64 = 20;
/// Length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Addresses tracked at most; beyond it expired entries are dropped, then
/// the oldest window.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Attempts counted in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    /// When the window started, Unix milliseconds.
    pub started_ms: i64,
    /// Attempts counted in it (including the one being made).
    pub attempts: i64,
}

impl FailureWindow {
    fn expired(&self, now_ms: i64, window: Duration) -> bool {
        self.started_ms + window.as_millis() as i64 <= now_ms
    }
}

/// The window after counting one more attempt at `now_ms`.
pub fn next_window(
    previous: Option<FailureWindow>,
    now_ms: i64,
    window: Duration,
) -> FailureWindow {
    match previous {
        Some(w) if !w.expired(now_ms, window) => FailureWindow {
            started_ms: w.started_ms,
            attempts: w.attempts + 1,
        },
        _ => FailureWindow {
            started_ms: now_ms,
            attempts: 1,
        },
    }
}

/// Whether the attempt that made `current` must be refused, and for how
/// long (rounded up to whole seconds, at least one).
pub fn refusal(current: FailureWindow, limit: i64, window: Duration, now_ms: i64) -> Option<u64> {
    if current.attempts <= limit {
        return None;
    }
    let ends_ms = current.started_ms + window.as_millis() as i64;
    let left_ms = (ends_ms - now_ms).max(1) as u64;
    Some(left_ms.div_ceil(1000))
}

/// In-memory attempt counters per client address.
#[derive(Debug, Default)]
pub struct AddressThrottle {
    windows: Mutex<HashMap<IpAddr, FailureWindow>>,
}

impl AddressThrottle {
    /// Counts an attempt from `addr`; `Err(seconds)` when it must be refused.
    pub fn begin(&self, addr: IpAddr, now_ms: i64) -> Result<(), u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_TRACKED_ADDRESSES && !windows.contains_key(&addr) {
            windows.retain(|_, w| !w.expired(now_ms, WINDOW));
            if windows.len() >= MAX_TRACKED_ADDRESSES
                && let Some(oldest) = windows
                    .iter()
                    .min_by_key(|(_, w)| w.started_ms)
                    .map(|(a, _)| *a)
            {
                windows.remove(&oldest);
            }
        }
        let current = next_window(windows.get(&addr).copied(), now_ms, WINDOW);
        windows.insert(addr, current);
        match refusal(current, MAX_ADDRESS_FAILURES, WINDOW, now_ms) {
            Some(secs) => Err(secs),
            None => Ok(()),
        }
    }

    /// Uncounts a successful attempt: only failures use up the budget.
    pub fn succeeded(&self, addr: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = windows.get_mut(&addr) {
            w.attempts = (w.attempts - 1).max(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn attempts_accumulate_within_a_window_and_reset_after() {
        let first = next_window(None, 1_000, W);
        assert_eq!(
            first,
            FailureWindow {
                started_ms: 1_000,
                attempts: 1
            }
        );
        let second = next_window(Some(first), 30_000, W);
        assert_eq!(second.attempts, 2);
        let later = next_window(Some(second), 61_000, W);
        assert_eq!(
            later,
            FailureWindow {
                started_ms: 61_000,
                attempts: 1
            }
        );
    }

    #[test]
    fn refusal_starts_after_the_limit_and_says_how_long() {
        let w = FailureWindow {
            started_ms: 0,
            attempts: 5,
        };
        assert_eq!(refusal(w, 5, W, 10_000), None);
        let w = FailureWindow {
            started_ms: 0,
            attempts: 6,
        };
        assert_eq!(refusal(w, 5, W, 10_000), Some(50));
        assert_eq!(refusal(w, 5, W, 59_999), Some(1));
    }

    #[test]
    fn one_noisy_address_does_not_affect_another() {
        let throttle = AddressThrottle::default();
        let noisy: IpAddr = "10.0.0.1".parse().unwrap();
        let quiet: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_ADDRESS_FAILURES {
            assert!(throttle.begin(noisy, 0).is_ok());
        }
        assert!(throttle.begin(noisy, 0).is_err());
        assert!(throttle.begin(quiet, 0).is_ok());
    }

    #[test]
    fn successes_do_not_use_up_the_budget() {
        let throttle = AddressThrottle::default();
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..(MAX_ADDRESS_FAILURES * 3) {
            assert!(throttle.begin(addr, 0).is_ok());
            throttle.succeeded(addr);
        }
    }
}
