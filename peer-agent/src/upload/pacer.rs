//! Keeps this agent's uploads from filling its own uplink while it is
//! itself downloading (LEDBAT's idea, as BitTorrent's uTP uses it).
//!
//! A link's queue is one FIFO on most LANs' bottlenecks: a Wi-Fi uplink, a
//! shaped port, a cheap switch. A host whose uplink is full of its uploads
//! sends its own `FETCH`es and TCP ACKs behind them, so every flow into it
//! runs a queue's length slower, and its download falls behind for good:
//! on the emulated LAN, the host that finished last was the one that
//! uploaded most (BENCHMARKS.md, section 2b). So while a file is still
//! downloading here, the chunks served from it are paced at a rate that
//! keeps the queuing delay on our upload connections near
//! [`TARGET_QUEUING`]:
//!
//! - after each chunk written on a framed connection, the kernel's
//!   smoothed round-trip time of that connection (`TCP_INFO`) less the
//!   least round trip any of our connections has seen is that
//!   connection's queuing delay ([`queuing_delay`]);
//! - every [`WINDOW`], the least queuing delay of the window's chunks is
//!   the delay of the one queue they all share, our uplink (a receiver's
//!   own queues lengthen only its connections);
//! - above the target, the rate becomes [`DECREASE`] times what was sent
//!   in the window (never below [`FLOOR_BPS`]); below half of it, a rate
//!   in force grows by [`INCREASE`], and is lifted once it is far above
//!   what is sent.
//!
//! A complete file (a seeder) is never paced: its host has no download to
//! protect, and its link should be full.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The queuing delay the pacer keeps our uplink near.
pub const TARGET_QUEUING: Duration = Duration::from_millis(20);
/// How often the rate is adjusted.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Over the target: the new rate, as a share of what the window sent.
pub const DECREASE: f64 = 0.85;
/// Under half the target: how much a rate in force grows per window.
pub const INCREASE: f64 = 1.1;
/// The pacer never goes below this (bytes per second).
pub const FLOOR_BPS: f64 = 128.0 * 1024.0;
/// A rate this many times what is sent is not holding anything back.
const LIFT_ABOVE: f64 = 4.0;

/// The pace of chunks served from files still downloading, shared by
/// every upload stream.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    /// Bytes paced since `window_start`.
    sent: u64,
    /// The least queuing delay seen since `window_start`.
    queuing: Option<Duration>,
    /// The least round trip any upload connection has had.
    base: Option<Duration>,
    /// Bytes per second; `None`: unpaced.
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// Unpaced until a queue shows.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                window_start: now,
                sent: 0,
                queuing: None,
                base: None,
                rate: None,
                tokens: 0.0,
                last: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an upload connection's round trip: `rtt` now, `min_rtt` the
    /// least it has had.
    pub fn observe(&self, rtt: Duration, min_rtt: Duration) {
        let mut state = self.lock();
        let base = state.base.map_or(min_rtt, |b| b.min(min_rtt));
        state.base = Some(base);
        let queuing = rtt.saturating_sub(base);
        state.queuing = Some(state.queuing.map_or(queuing, |q| q.min(queuing)));
    }

    /// Takes `bytes` of a chunk served from a file still downloading,
    /// waiting as long as the pace requires.
    pub async fn take(&self, bytes: u64) {
        if let Some(wait) = self.debit(bytes, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    /// The rate in force (bytes per second), if any.
    pub fn rate_bps(&self) -> Option<f64> {
        self.lock().rate
    }

    fn debit(&self, bytes: u64, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        state.adjust(now);
        state.sent += bytes;
        let rate = state.rate?;
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.last = now;
        // At most one window of tokens saved up.
        let burst = rate * WINDOW.as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(burst) - bytes as f64;
        (state.tokens < 0.0).then(|| Duration::from_secs_f64(-state.tokens / rate))
    }
}

impl State {
    /// Ends the window once it is [`WINDOW`] old and sets the next rate.
    fn adjust(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let sent_bps = self.sent as f64 / elapsed.as_secs_f64();
        match (self.queuing, self.rate) {
            (Some(q), rate) if q > TARGET_QUEUING => {
                let sent = rate.map_or(sent_bps, |r| sent_bps.min(r));
                if rate.is_none() {
                    self.tokens = 0.0;
                    self.last = now;
                }
                self.rate = Some((sent * DECREASE).max(FLOOR_BPS));
            }
            (Some(q), Some(rate)) if q < TARGET_QUEUING / 2 => {
                let grown = rate * INCREASE;
                self.rate = (grown < LIFT_ABOVE * sent_bps.max(FLOOR_BPS)).then_some(grown);
            }
            (None, Some(rate)) => {
                // Nothing was sent on a connection we can read: let it go.
                let grown = rate * INCREASE;
                self.rate = (grown < LIFT_ABOVE * sent_bps.max(FLOOR_BPS)).then_some(grown);
            }
            _ => {}
        }
        self.window_start = now;
        self.sent = 0;
        self.queuing = None;
    }
}

/// The kernel's smoothed round trip of `tcp` and the least it has had
/// (`TCP_INFO`); `None` if the kernel does not say.
#[allow(unsafe_code)]
pub fn round_trip(tcp: &tokio::net::TcpStream) -> Option<(Duration, Duration)> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a
    // valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is a TCP socket `tcp` keeps open for the
    // call; the kernel writes at most `len` bytes into `info`, which is
    // that large, and stores how many it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) + std::mem::size_of::<u32>();
    if rc != 0 || (len as usize) < needed || info.tcpi_min_rtt == 0 {
        return None;
    }
    Some((
        Duration::from_micros(u64::from(info.tcpi_rtt)),
        Duration::from_micros(u64::from(info.tcpi_min_rtt)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Sends `bytes` over one window ending at `at`, with `queuing` seen.
    fn window(pacer: &Pacer, at: &mut Instant, bytes: u64, queuing: Duration) {
        pacer.observe(Duration::from_micros(100) + queuing, Duration::from_micros(100));
        pacer.debit(bytes, *at);
        *at += WINDOW;
        pacer.debit(0, *at);
    }

    #[test]
    fn an_empty_queue_is_never_paced() {
        let pacer = Pacer::new();
        let mut at = Instant::now();
        for _ in 0..20 {
            window(&pacer, &mut at, MIB, Duration::from_millis(1));
        }
        assert_eq!(pacer.rate_bps(), None);
    }

    #[test]
    fn a_queue_over_the_target_paces_below_what_was_sent_then_it_grows_back() {
        let pacer = Pacer::new();
        let mut at = Instant::now();
        // 1 MiB per 100 ms (10 MiB/s) with 80 ms queued.
        window(&pacer, &mut at, MIB, Duration::from_millis(80));
        let rate = pacer.rate_bps().expect("paced");
        assert!(rate < 10.0 * MIB as f64 && rate > 5.0 * MIB as f64, "{rate}");
        // The queue drains: the pace grows, then is lifted.
        let mut last = rate;
        let mut windows = 0;
        while let Some(rate) = pacer.rate_bps() {
            assert!(rate > last || windows == 0, "{rate} after {last}");
            last = rate;
            window(&pacer, &mut at, (rate / 10.0) as u64 / 4, Duration::ZERO);
            windows += 1;
            assert!(windows < 100, "never lifted");
        }
    }

    #[test]
    fn the_least_queue_of_a_window_is_ours() {
        let pacer = Pacer::new();
        let mut at = Instant::now();
        // One receiver's own queue is long, another's is empty: our
        // uplink is not the one that is full.
        pacer.observe(Duration::from_millis(90), Duration::from_micros(100));
        window(&pacer, &mut at, MIB, Duration::from_millis(2));
        assert_eq!(pacer.rate_bps(), None);
    }

    #[test]
    fn the_pace_holds_a_taker_to_the_rate() {
        let pacer = Pacer::new();
        let mut at = Instant::now();
        window(&pacer, &mut at, MIB, Duration::from_millis(80));
        let rate = pacer.rate_bps().expect("paced");
        // Two windows' worth at once: the second has to wait.
        let chunk = (rate * WINDOW.as_secs_f64()) as u64;
        assert!(pacer.debit(chunk, at).is_none_or(|w| w < WINDOW));
        let wait = pacer.debit(chunk, at).expect("a wait");
        assert!(wait >= WINDOW / 2, "{wait:?}");
    }

    #[test]
    fn it_never_paces_below_the_floor() {
        let pacer = Pacer::new();
        let mut at = Instant::now();
        for _ in 0..50 {
            window(&pacer, &mut at, 1024, Duration::from_millis(500));
        }
        assert_eq!(pacer.rate_bps(), Some(FLOOR_BPS));
    }

    #[tokio::test]
    async fn a_connection_tells_its_round_trip() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (rtt, min_rtt) = round_trip(&client).expect("TCP_INFO on Linux");
        assert!(min_rtt <= rtt + Duration::from_millis(1), "{min_rtt:?} {rtt:?}");
        assert!(rtt < Duration::from_secs(1), "{rtt:?} on loopback");
    }
}
