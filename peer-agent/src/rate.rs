//! Byte rates: the token bucket every upload stream draws from, and a
//! sliding per-second meter for "rate over the last few seconds" and
//! "bytes in the last 60 s".

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket on bytes, shared by every upload stream. Takers may go
/// into debt: a chunk larger than the burst is sent whole, and the taker
/// sleeps until the debt is repaid, so the long-run rate holds exactly.
#[derive(Debug)]
pub struct TokenBucket {
    rate_bps: u64,
    burst_bytes: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `rate_bps` (0: unlimited) holding at most a
    /// tenth of a second of tokens.
    pub fn new(rate_bps: u64) -> Self {
        Self {
            rate_bps,
            burst_bytes: rate_bps as f64 / 10.0,
            state: Mutex::new(BucketState {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// The configured rate (0: unlimited).
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// Takes `bytes` tokens, waiting as long as the rate requires.
    pub async fn take(&self, bytes: u64) {
        if let Some(wait) = self.debit(bytes) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Debits the bucket and returns how long the caller must wait.
    fn debit(&self, bytes: u64) -> Option<Duration> {
        if self.rate_bps == 0 {
            return None;
        }
        let rate = self.rate_bps as f64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(state.last).as_secs_f64();
        state.last = now;
        state.tokens = (state.tokens + elapsed * rate).min(self.burst_bytes);
        state.tokens -= bytes as f64;
        (state.tokens < 0.0).then(|| Duration::from_secs_f64(-state.tokens / rate))
    }
}

const METER_SLOTS: usize = 64;

/// Bytes per second over sliding windows, kept in one-second slots.
#[derive(Debug)]
pub struct RateMeter {
    start: Instant,
    slots: Mutex<[(u64, u64); METER_SLOTS]>,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateMeter {
    /// An empty meter.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: Mutex::new([(u64::MAX, 0); METER_SLOTS]),
        }
    }

    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Counts `bytes` now.
    pub fn record(&self, bytes: u64) {
        let second = self.second();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[(second % METER_SLOTS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += bytes;
    }

    /// Bytes counted in the last `seconds` whole seconds (not counting the
    /// current, partial one).
    pub fn total_over(&self, seconds: u64) -> u64 {
        let now = self.second();
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|(s, _)| *s != u64::MAX && *s < now && now - *s <= seconds)
            .map(|(_, b)| b)
            .sum()
    }

    /// Average bytes per second over the last `seconds` seconds.
    pub fn rate_bps(&self, seconds: u64) -> u64 {
        let seconds = seconds.clamp(1, METER_SLOTS as u64 - 2);
        let covered = self.second().clamp(1, seconds);
        self.total_over(seconds) / covered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_holds_the_configured_rate() {
        let bucket = TokenBucket::new(1_000_000);
        let start = Instant::now();
        for _ in 0..40 {
            bucket.take(250_000).await;
        }
        let secs = start.elapsed().as_secs_f64();
        // 10 MB at 1 MB/s: 10 s, less at most the burst.
        assert!((9.8..=10.01).contains(&secs), "took {secs} s");
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_is_shared_by_concurrent_takers() {
        let bucket = std::sync::Arc::new(TokenBucket::new(2_000_000));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let bucket = bucket.clone();
            tasks.spawn(async move {
                for _ in 0..10 {
                    bucket.take(100_000).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let secs = start.elapsed().as_secs_f64();
        assert!((1.9..=2.01).contains(&secs), "took {secs} s");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_bucket_never_waits() {
        let bucket = TokenBucket::new(0);
        let start = Instant::now();
        bucket.take(u64::MAX / 2).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn meter_reports_recent_rate_and_forgets_old_bytes() {
        let meter = RateMeter::new();
        for _ in 0..5 {
            meter.record(1000);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(meter.rate_bps(5), 1000);
        assert_eq!(meter.total_over(60), 5000);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(meter.total_over(60), 0);
    }
}
