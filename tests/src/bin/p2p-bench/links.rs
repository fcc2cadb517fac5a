//! How a transfer used the emulated LAN's links: the throughput the
//! switch's counters saw ([`LinkUse`]) and the round-trip times on the bulk
//! connections mid-transfer, from `ss` ([`LoadedRtt`]). Ours and the
//! baselines are measured the same way.

use std::time::{Duration, Instant};

use p2p_tests::netns::{Host, LinkSample};

use crate::stats::median;

/// How the swarm used the links, from counters sampled every
/// [`LINK_SAMPLE_EVERY`] at the switch: where the time above the bound went.
#[derive(Clone, serde::Serialize)]
pub struct LinkUse {
    /// Median over downloaders of when the first chunk's worth of bytes
    /// had arrived (start-up: the CLI, the index calls, the handshakes).
    pub first_chunk_s: f64,
    /// When the seeder had sent 99 % of what it sent.
    pub seeder_busy_s: f64,
    /// What the seeder sent until then over what its link could carry.
    pub seeder_link_use: f64,
    /// Median over downloaders of the time, between their first chunk and
    /// their end, their download link carried under half its rate.
    pub starved_s: f64,
    /// (seconds, seeder sent Mbit/s, downloaders' received Mbit/s: mean,
    /// min) per sample interval.
    pub timeline: Vec<(f64, f64, f64, f64)>,
    /// (seconds, `flows[to][from]`: bytes host `from` sent host `to` since
    /// the start) per sample, when the switch counted flows: who each host
    /// got its bytes from, over time.
    #[serde(skip)]
    pub flows: Vec<(f64, Vec<Vec<u64>>)>,
}

/// How often the switch's counters are read while a swarm runs.
pub const LINK_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// [`LinkUse`] of one run: host 1 is the seeder (uploading at most
/// `seeder_up_bps` bytes/s), hosts 2.. the downloaders (downloading at
/// most `down_bps`, finished after `done_s`).
pub fn link_use(
    samples: &[LinkSample],
    started: Instant,
    seeder_up_bps: f64,
    down_bps: &[f64],
    done_s: &[f64],
) -> Option<LinkUse> {
    let first = samples.iter().rposition(|s| s.at <= started).unwrap_or(0);
    let samples = samples.get(first..)?;
    let base = samples.first()?;
    let t = |s: &LinkSample| s.at.saturating_duration_since(started).as_secs_f64();
    let n = done_s.len();
    let mut first_chunk = Vec::new();
    let mut starved = Vec::new();
    for (i, &done) in done_s.iter().enumerate() {
        let host = i + 2;
        let got = |s: &LinkSample| s.received[host].saturating_sub(base.received[host]);
        let Some(at) = samples.iter().find(|s| got(s) >= 256 * 1024) else {
            continue;
        };
        let from = t(at);
        first_chunk.push(from);
        let slow: f64 = samples
            .windows(2)
            .filter(|w| t(&w[0]) >= from && t(&w[1]) <= done)
            .filter(|w| {
                let secs = (t(&w[1]) - t(&w[0])).max(1e-3);
                (got(&w[1]) - got(&w[0])) as f64 / secs < down_bps[i] / 2.0
            })
            .map(|w| t(&w[1]) - t(&w[0]))
            .fold(0.0, |a, b| a + b);
        starved.push(slow);
    }
    let seeder_sent = |s: &LinkSample| s.sent[1].saturating_sub(base.sent[1]);
    let total = seeder_sent(samples.last()?);
    let busy = samples
        .iter()
        .find(|s| seeder_sent(s) as f64 >= 0.99 * total as f64)?;
    let seeder_busy_s = t(busy);
    let timeline = samples
        .windows(2)
        .map(|w| {
            let secs = (t(&w[1]) - t(&w[0])).max(1e-3);
            let mbit = |bytes: u64| bytes as f64 * 8.0 / 1e6 / secs;
            let rx: Vec<f64> = (2..n + 2)
                .map(|h| mbit(w[1].received[h].saturating_sub(w[0].received[h])))
                .collect();
            (
                t(&w[1]),
                mbit(seeder_sent(&w[1]) - seeder_sent(&w[0])),
                rx.iter().sum::<f64>() / n.max(1) as f64,
                rx.iter().copied().fold(f64::INFINITY, f64::min),
            )
        })
        .collect();
    let flows = samples
        .iter()
        .filter(|s| s.flows.len() == base.flows.len() && !s.flows.is_empty())
        .map(|s| {
            let since: Vec<Vec<u64>> = s
                .flows
                .iter()
                .zip(&base.flows)
                .map(|(now, then)| {
                    now.iter()
                        .zip(then)
                        .map(|(a, b)| a.saturating_sub(*b))
                        .collect()
                })
                .collect();
            (t(s), since)
        })
        .collect();
    Some(LinkUse {
        first_chunk_s: median(first_chunk)?,
        seeder_busy_s,
        seeder_link_use: seeder_sent(busy) as f64 / (seeder_up_bps * seeder_busy_s.max(1e-3)),
        starved_s: median(starved)?,
        timeline,
        flows,
    })
}

/// When the links' round-trip times are sampled, as a share of the P2P
/// bound after the start: mid-transfer for every N.
pub const RTT_SAMPLE_AT: f64 = 0.4;

/// TCP round-trip times of the connections that carry bulk data (over
/// 1 MiB sent), sampled once mid-transfer with `ss` in the seeder's and the
/// first downloader's namespace: how long a request, a holdings update or
/// a first byte waits behind the data queued on the links, against the
/// empty-link minimum. Medians over the connections, in ms.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LoadedRtt {
    /// Seconds after the start.
    pub at_s: f64,
    pub seeder_srtt_ms: Option<f64>,
    pub seeder_min_rtt_ms: Option<f64>,
    pub downloader_srtt_ms: Option<f64>,
    pub downloader_min_rtt_ms: Option<f64>,
}

/// Samples [`LoadedRtt`] on `port` (either end) `at` from now, on a thread
/// of its own; `None` when `ss` is missing or failed.
pub fn sample_rtt(
    [seeder, downloader]: [Host; 2],
    port: u16,
    at: Duration,
) -> std::thread::JoinHandle<Option<LoadedRtt>> {
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(at);
        let ss = |host: &Host| {
            let out = host
                .command("ss")
                .args(["-tinH", "state", "established"])
                .arg(format!("( sport = :{port} or dport = :{port} )"))
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            Some(bulk_rtts(&String::from_utf8_lossy(&out.stdout)))
        };
        let seeder = ss(&seeder)?;
        let downloader = ss(&downloader)?;
        Some(LoadedRtt {
            at_s: started.elapsed().as_secs_f64(),
            seeder_srtt_ms: median(seeder.0),
            seeder_min_rtt_ms: median(seeder.1),
            downloader_srtt_ms: median(downloader.0),
            downloader_min_rtt_ms: median(downloader.1),
        })
    })
}

/// (smoothed, minimum) RTTs in ms of the connections in `ss -tin` output
/// that sent over 1 MiB.
fn bulk_rtts(ss: &str) -> (Vec<f64>, Vec<f64>) {
    let (mut srtt, mut min) = (Vec::new(), Vec::new());
    for line in ss.lines() {
        let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name));
        let sent = field("bytes_sent:").and_then(|v| v.parse::<u64>().ok());
        if sent.is_none_or(|sent| sent < 1 << 20) {
            continue;
        }
        if let Some(rtt) = field("rtt:").and_then(|v| v.split('/').next()?.parse().ok()) {
            srtt.push(rtt);
        }
        if let Some(rtt) = field("minrtt:").and_then(|v| v.parse().ok()) {
            min.push(rtt);
        }
    }
    (srtt, min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_rtts_reads_only_connections_that_carried_data() {
        let ss = "\
ESTAB 0 0 10.77.0.2:50053 10.77.0.3:41000
\t bbr wscale:10,10 rto:260 rtt:59.479/26.657 ato:44 mss:1448 cwnd:200 bytes_sent:2632767 bytes_acked:2451320 minrtt:0.032 snd_wnd:65536
ESTAB 0 0 10.77.0.2:50053 10.77.0.4:41002
\t bbr wscale:10,10 rto:204 rtt:0.225/0.367 ato:40 mss:1448 cwnd:27 bytes_sent:10355 bytes_acked:10356 minrtt:0.012
ESTAB 0 0 10.77.0.2:50053 10.77.0.5:41004
\t bbr wscale:10,10 rto:240 rtt:38.827/4.412 ato:40 mss:1448 cwnd:52 bytes_sent:2536751 rcv_rtt:1.5 minrtt:0.023
";
        let (srtt, min) = bulk_rtts(ss);
        assert_eq!(srtt, vec![59.479, 38.827]);
        assert_eq!(min, vec![0.032, 0.023]);
        assert_eq!(median(srtt), Some(59.479));
        assert_eq!(median(Vec::new()), None);
    }
}
