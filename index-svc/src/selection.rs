//! Source selection: which holders a downloader should fetch from, best
//! first, and why.
//!
//! Modelled on Dragonfly's scheduler evaluator: every candidate gets a
//! weighted score from how much of its upload capacity is free, how much it
//! uploaded recently (less is better, so load spreads over time), how many
//! upload slots are free, and how much of what the caller wants it has. Bad
//! reports from downloaders divide the score for about five minutes. A small
//! random jitter spreads callers over equally good peers so they do not all
//! pile onto the first one. Pure: no I/O, the caller fetches candidates.

use std::time::Duration;

use p2p_services::manifest::Bitfield;
use rand::Rng;

use crate::peer::{Holding, PeerId, PeerLoad};

/// Capacity assumed for a peer with no upload limit: roughly gigabit LAN.
pub const NOMINAL_UPLOAD_BPS: u64 = 125_000_000;
/// Slots assumed for a peer with no concurrent-upload cap.
pub const NOMINAL_UPLOAD_SLOTS: u32 = 8;
/// How long a bad report weighs on a source; its weight falls linearly to
/// zero over this window.
pub const REPORT_WINDOW: Duration = Duration::from_secs(300);
/// At most this many reports per reporter count, so one unhappy (or
/// malicious) downloader cannot sink a peer alone.
pub const MAX_REPORTS_PER_REPORTER: usize = 3;
/// Width of the random jitter added to scores, as a share of the scale.
pub const JITTER: f64 = 0.02;
/// Different reporters saying a holder cannot read a file that take the
/// holding out of `LocateSources` until the holder announces it again.
pub const CANNOT_READ_REPORTERS: u32 = 2;
/// Sources returned when the caller does not say.
pub const DEFAULT_LIMIT: usize = 16;
/// Most sources one call may return.
pub const MAX_LIMIT: usize = 64;

const WEIGHT_COVERAGE: f64 = 0.30;
const WEIGHT_SLOTS: f64 = 0.30;
const WEIGHT_BANDWIDTH: f64 = 0.25;
const WEIGHT_RECENT_UPLOAD: f64 = 0.15;

/// Why a downloader reported a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportReason {
    /// Connection refused or reset, or an error status.
    Unreachable,
    /// No data for longer than the stall timeout.
    Stalled,
    /// Served a chunk that did not match its hash.
    Corrupt,
    /// Said it cannot read the file (its copy was deleted or changed).
    CannotRead,
}

impl ReportReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Stalled => "stalled",
            Self::Corrupt => "corrupt",
            Self::CannotRead => "cannot_read",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "unreachable" => Some(Self::Unreachable),
            "stalled" => Some(Self::Stalled),
            "corrupt" => Some(Self::Corrupt),
            "cannot_read" => Some(Self::CannotRead),
            _ => None,
        }
    }

    /// How much a fresh report of this kind weighs: corrupt data is worse
    /// than a stall, which may be a passing hiccup.
    fn weight(self) -> f64 {
        match self {
            Self::Unreachable => 1.0,
            Self::Stalled => 0.6,
            Self::Corrupt | Self::CannotRead => 1.5,
        }
    }
}

/// A recent report against a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Who reported.
    pub reporter: PeerId,
    /// What went wrong.
    pub reason: ReportReason,
    /// How long ago.
    pub age: Duration,
}

/// An online holder of the file, as fetched from the store.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The holder.
    pub peer_id: PeerId,
    /// Its PeerService address.
    pub address: String,
    /// The user it runs as.
    pub username: String,
    /// What it holds.
    pub holding: Holding,
    /// Last reported load.
    pub load: PeerLoad,
    /// Recent reports against it.
    pub reports: Vec<Report>,
}

/// The coarse reason class of a rank, the label of the choices metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonClass {
    /// A complete holder with spare capacity.
    Complete,
    /// A partial holder with some wanted chunks.
    Partial,
    /// Out of slots or bandwidth.
    Busy,
    /// Pushed down by recent bad reports.
    Penalized,
}

impl ReasonClass {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Partial => "partial",
            Self::Busy => "busy",
            Self::Penalized => "penalized",
        }
    }
}

/// A candidate with its score and the one-line reason for it.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// The candidate as given.
    pub candidate: Candidate,
    /// Between 0 and 1; higher is better.
    pub score: f64,
    /// Why, for people: "complete, 2/8 upload slots busy, 40% bandwidth free".
    pub reason: String,
    /// The coarse class, for metrics.
    pub class: ReasonClass,
}

/// The score components of one candidate, each between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Components {
    coverage: f64,
    slots_free: f64,
    bandwidth_free: f64,
    recent_upload_free: f64,
    penalty: f64,
}

/// The share of `used` out of `capacity`, clamped to [0, 1].
fn share(used: f64, capacity: f64) -> f64 {
    if capacity <= 0.0 {
        1.0
    } else {
        (used / capacity).clamp(0.0, 1.0)
    }
}

fn capacity_bps(load: &PeerLoad) -> u64 {
    if load.max_upload_rate_bps > 0 {
        load.max_upload_rate_bps
    } else {
        NOMINAL_UPLOAD_BPS
    }
}

fn slots(load: &PeerLoad) -> u32 {
    if load.max_uploads > 0 {
        load.max_uploads
    } else {
        NOMINAL_UPLOAD_SLOTS
    }
}

/// The decayed weight of recent reports, counting at most
/// [`MAX_REPORTS_PER_REPORTER`] (the freshest) per reporter.
fn report_penalty(reports: &[Report]) -> f64 {
    let mut sorted: Vec<&Report> = reports.iter().filter(|r| r.age < REPORT_WINDOW).collect();
    sorted.sort_by_key(|r| r.age);
    let mut per_reporter: std::collections::HashMap<&PeerId, usize> = Default::default();
    let mut total = 0.0;
    for report in sorted {
        let seen = per_reporter.entry(&report.reporter).or_default();
        if *seen >= MAX_REPORTS_PER_REPORTER {
            continue;
        }
        *seen += 1;
        let freshness = 1.0 - report.age.as_secs_f64() / REPORT_WINDOW.as_secs_f64();
        total += report.reason.weight() * freshness.max(0.0);
    }
    total
}

fn components(candidate: &Candidate, wanted: Option<&Bitfield>) -> Components {
    let load = &candidate.load;
    let capacity = capacity_bps(load) as f64;
    let coverage = match (&candidate.holding, wanted) {
        (Holding::Complete, _) => 1.0,
        (Holding::Partial(held), Some(wanted)) if wanted.count() > 0 => {
            f64::from(wanted_held(held, wanted)) / f64::from(wanted.count())
        }
        (Holding::Partial(held), _) => share(f64::from(held.count()), f64::from(held.len())),
    };
    Components {
        coverage,
        slots_free: 1.0 - share(f64::from(load.active_uploads), f64::from(slots(load))),
        bandwidth_free: 1.0 - share(load.upload_rate_bps as f64, capacity),
        recent_upload_free: 1.0 - share(load.uploaded_bytes_last_60s as f64, capacity * 60.0),
        penalty: report_penalty(&candidate.reports),
    }
}

impl Components {
    /// The weighted score before jitter, in [0, 1].
    fn score(&self) -> f64 {
        let base = WEIGHT_COVERAGE * self.coverage
            + WEIGHT_SLOTS * self.slots_free
            + WEIGHT_BANDWIDTH * self.bandwidth_free
            + WEIGHT_RECENT_UPLOAD * self.recent_upload_free;
        base / (1.0 + self.penalty)
    }

    fn class(&self, complete: bool) -> ReasonClass {
        if self.penalty >= 0.5 {
            ReasonClass::Penalized
        } else if self.slots_free <= 0.0 || self.bandwidth_free < 0.1 {
            ReasonClass::Busy
        } else if complete {
            ReasonClass::Complete
        } else {
            ReasonClass::Partial
        }
    }
}

fn reason(candidate: &Candidate, c: &Components, wanted: Option<&Bitfield>) -> String {
    let load = &candidate.load;
    let mut parts = Vec::with_capacity(4);
    parts.push(match (&candidate.holding, wanted) {
        (Holding::Complete, _) => "complete".to_string(),
        (Holding::Partial(held), Some(w)) if w.count() > 0 => {
            format!("has {}/{} wanted chunks", wanted_held(held, w), w.count())
        }
        (Holding::Partial(held), _) => format!("has {}/{} chunks", held.count(), held.len()),
    });
    if load.max_uploads > 0 {
        parts.push(format!(
            "{}/{} upload slots busy",
            load.active_uploads, load.max_uploads
        ));
    } else {
        parts.push(format!("{} uploads (no slot cap)", load.active_uploads));
    }
    parts.push(format!(
        "{:.0}% bandwidth free",
        (c.bandwidth_free * 100.0).round()
    ));
    let reports = candidate
        .reports
        .iter()
        .filter(|r| r.age < REPORT_WINDOW)
        .count();
    if reports > 0 {
        parts.push(format!(
            "{reports} bad report{} in the last 5 min",
            if reports == 1 { "" } else { "s" }
        ));
    }
    parts.join(", ")
}

/// How many of the wanted chunks `held` has.
fn wanted_held(held: &Bitfield, wanted: &Bitfield) -> u32 {
    held.as_bytes()
        .iter()
        .zip(wanted.as_bytes())
        .map(|(a, b)| (a & b).count_ones())
        .sum()
}

/// Whether a candidate can serve anything the caller wants.
pub fn has_wanted(candidate: &Candidate, wanted: Option<&Bitfield>) -> bool {
    match (&candidate.holding, wanted) {
        (Holding::Complete, _) => wanted.is_none_or(|w| w.count() > 0),
        (Holding::Partial(held), Some(w)) => held.intersects(w),
        (Holding::Partial(held), None) => held.count() > 0,
    }
}

/// The sources limit to use for a requested one: 0 means the default,
/// anything above [`MAX_LIMIT`] is capped.
pub fn effective_limit(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// Ranks candidates best first: drops those without any wanted chunk,
/// scores the rest, adds jitter from `rng`, and keeps the best `limit`.
/// `wanted` of `None` means the caller wants every chunk.
pub fn rank(
    candidates: Vec<Candidate>,
    wanted: Option<&Bitfield>,
    limit: usize,
    rng: &mut impl Rng,
) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = candidates
        .into_iter()
        .filter(|c| has_wanted(c, wanted))
        .map(|candidate| {
            let c = components(&candidate, wanted);
            let jitter = rng.gen_range(0.0..JITTER);
            let score = (c.score() * (1.0 - JITTER) + jitter).clamp(0.0, 1.0);
            Ranked {
                reason: reason(&candidate, &c, wanted),
                class: c.class(candidate.holding == Holding::Complete),
                candidate,
                score,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked.truncate(limit);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn candidate(name: &str, load: PeerLoad) -> Candidate {
        Candidate {
            peer_id: PeerId::from_stored(name.to_string()),
            address: format!("{name}:1"),
            username: name.to_string(),
            holding: Holding::Complete,
            load,
            reports: Vec::new(),
        }
    }

    fn idle() -> PeerLoad {
        PeerLoad {
            max_uploads: 8,
            max_upload_rate_bps: 10_000_000,
            ..Default::default()
        }
    }

    fn busy() -> PeerLoad {
        PeerLoad {
            active_uploads: 7,
            max_uploads: 8,
            upload_rate_bps: 9_000_000,
            max_upload_rate_bps: 10_000_000,
            uploaded_bytes_last_60s: 500_000_000,
            free_disk_bytes: 0,
        }
    }

    fn names(ranked: &[Ranked]) -> Vec<&str> {
        ranked
            .iter()
            .map(|r| r.candidate.username.as_str())
            .collect()
    }

    #[test]
    fn idle_peer_ranks_above_busy_peer() {
        let mut rng = StdRng::seed_from_u64(1);
        let ranked = rank(
            vec![candidate("busy", busy()), candidate("idle", idle())],
            None,
            16,
            &mut rng,
        );
        assert_eq!(names(&ranked), ["idle", "busy"]);
        assert!(ranked.iter().all(|r| (0.0..=1.0).contains(&r.score)));
        assert_eq!(ranked[0].class, ReasonClass::Complete);
        assert_eq!(ranked[1].class, ReasonClass::Busy);
        assert_eq!(
            ranked[1].reason,
            "complete, 7/8 upload slots busy, 10% bandwidth free"
        );
    }

    #[test]
    fn holders_without_wanted_chunks_are_left_out() {
        let mut partial = candidate("partial", idle());
        let mut held = Bitfield::empty(8);
        held.set(0);
        held.set(1);
        partial.holding = Holding::Partial(held);
        let mut wanted = Bitfield::empty(8);
        wanted.set(5);
        let mut rng = StdRng::seed_from_u64(2);
        let ranked = rank(
            vec![partial.clone(), candidate("seed", busy())],
            Some(&wanted),
            16,
            &mut rng,
        );
        assert_eq!(names(&ranked), ["seed"]);

        wanted.set(1);
        let ranked = rank(vec![partial], Some(&wanted), 16, &mut rng);
        assert_eq!(names(&ranked), ["partial"]);
        assert_eq!(ranked[0].class, ReasonClass::Partial);
        assert!(ranked[0].reason.starts_with("has 1/2 wanted chunks"));
    }

    #[test]
    fn complete_holder_beats_partial_at_equal_load() {
        let mut partial = candidate("partial", idle());
        let mut held = Bitfield::empty(8);
        held.set(3);
        partial.holding = Holding::Partial(held);
        let mut rng = StdRng::seed_from_u64(3);
        let ranked = rank(vec![partial, candidate("seed", idle())], None, 16, &mut rng);
        assert_eq!(names(&ranked), ["seed", "partial"]);
    }

    #[test]
    fn bad_reports_push_a_source_down_and_fade() {
        let mut reported = candidate("reported", idle());
        reported.reports = vec![Report {
            reporter: PeerId::from_stored("x".into()),
            reason: ReportReason::Unreachable,
            age: Duration::from_secs(5),
        }];
        let mut rng = StdRng::seed_from_u64(4);
        let mut other = candidate("other", idle());
        other.load.active_uploads = 2;
        let ranked = rank(vec![reported.clone(), other.clone()], None, 16, &mut rng);
        assert_eq!(names(&ranked), ["other", "reported"]);
        assert_eq!(ranked[1].class, ReasonClass::Penalized);
        assert!(ranked[1].reason.ends_with("1 bad report in the last 5 min"));

        reported.reports[0].age = REPORT_WINDOW + Duration::from_secs(1);
        let ranked = rank(vec![reported, other], None, 16, &mut rng);
        assert_eq!(names(&ranked), ["reported", "other"]);
    }

    #[test]
    fn one_reporter_cannot_sink_a_peer_alone() {
        let report = |age| Report {
            reporter: PeerId::from_stored("spammer".into()),
            reason: ReportReason::Corrupt,
            age: Duration::from_secs(age),
        };
        let many: Vec<Report> = (0..50).map(report).collect();
        assert!((report_penalty(&many) - report_penalty(&many[..3])).abs() < 1e-9);
    }

    #[test]
    fn jitter_spreads_ties() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut first_a = 0;
        for _ in 0..200 {
            let ranked = rank(
                vec![candidate("a", idle()), candidate("b", idle())],
                None,
                16,
                &mut rng,
            );
            if ranked[0].candidate.username == "a" {
                first_a += 1;
            }
        }
        assert!((40..160).contains(&first_a), "a first {first_a}/200 times");
    }

    #[test]
    fn limit_is_defaulted_capped_and_applied() {
        assert_eq!(effective_limit(0), 16);
        assert_eq!(effective_limit(3), 3);
        assert_eq!(effective_limit(1000), 64);
        let mut rng = StdRng::seed_from_u64(6);
        let many = (0..10)
            .map(|i| candidate(&format!("p{i}"), idle()))
            .collect();
        assert_eq!(rank(many, None, 4, &mut rng).len(), 4);
    }
}
