//! The seeder-side choice (super-seeding, BEP 16): when a downloader asks
//! a source for "any n of the chunks I lack", the source picks the ones it
//! has handed out least, so no chunk goes out twice while another it holds
//! has not gone out once. Downloaders then fetch the copies they lack from
//! each other, and a seeder with few complete copies in the swarm uploads
//! about one copy of the file. A chunk already handed out is handed out
//! again only once [`RESEND_AFTER`] has passed since (its first taker may
//! be slow to pass it on, or gone); until then a caller that lacks only
//! such chunks gets none and fetches them from its peers. Once a later
//! caller's bitfield shows it holds a chunk handed out, the chunk is in the
//! swarm and waits [`RESEND_SPREAD_AFTER`] instead: on saturated cores a
//! holder can take more than 2 s to tell everyone, and resending it then
//! was most of what a seeder sent beyond one copy at N = 32. It still fills
//! its link: while unsent chunks remain, every caller gets up to n at once.
//!
//! Those waits keep a busy seeder's link for chunks the swarm lacks. A
//! seeder with no other upload under way has nothing better to send, but
//! "idle" alone is no reason to send a chunk twice: between two calls
//! every link is idle for a moment, and on busy cores those moments are
//! many. What marks a chunk worth sending again is that its taker is slow
//! to pass it on. The seeder learns how long its chunks take to show up
//! in the swarm: a chunk is *seen* when a caller's bitfield no longer
//! lacks it (the caller holds it, or knows a fast peer that does), and
//! the time from handing it out to that is its sighting delay. A chunk is
//! *late* when it has waited more than [`LATE_FACTOR`] times the median of
//! the recent sighting delays without being seen, or when it was seen
//! only that late (its holders are slow relays). A laptop behind a
//! 10 Mbit/s uplink may receive as fast as anyone and announce its chunks
//! in time; what gives it away is that the chunks it took are asked for
//! again (a caller asks a seeder only for chunks no peer it judges fast
//! holds) more than that late after they were seen. The seeder scores each
//! taker (each calling agent, by its key) by the share of its chunks asked
//! for again; a taker whose share is at least [`SLOW_TAKER_SHARE`] and
//! more than twice the lower quartile's is a slow relay, and its chunks
//! asked for again are late too. On 2 starved cores every downloader
//! judges its peers slow now and then, so every taker's share rises alike
//! and none stands out: comparing takers, not trusting each ask, is what
//! keeps such a seeder at about one copy. An idle seeder sends late chunks
//! again at once, the longest-waiting first; no other chunk goes out again
//! before its timer.
//!
//! Late chunks are how a mixed LAN ends: the last chunks the seeder gave
//! went to laptops, whose slow links would otherwise keep every wired
//! downloader waiting out those timers while the seeder's link sat idle. On a LAN of
//! equal hosts, chunks are seen at about the same delay, none is late, and
//! a seeder still uploads about one copy.
//!
//! Pure logic, no I/O: the chunk server keeps one [`SeedChoice`] per file it
//! serves this way (see `crate::upload`).

use std::time::{Duration, Instant};

use p2p_services::manifest::Bitfield;

use crate::picker::{take_smallest, tie_order};

/// A chunk already handed out goes out again only this long after.
pub const RESEND_AFTER: Duration = Duration::from_secs(2);
/// A chunk handed out that a caller has since shown it holds goes out
/// again only this long after (in case every holder left).
pub const RESEND_SPREAD_AFTER: Duration = Duration::from_secs(4);
/// A chunk is late once it has waited this many times the median
/// sighting delay without being seen (or was seen only that late).
pub const LATE_FACTOR: u32 = 2;
/// Sighting delays kept for the median: the most recent this many.
const SIGHTINGS_KEPT: usize = 64;
/// No chunk is late before this many sightings give a median.
const SIGHTINGS_NEEDED: usize = 8;
/// Nor sooner than this after it went out or was seen: a chunk takes at
/// least a round trip and its own transfer to show up, whatever a caller
/// that already held it made of the median.
const LATE_AT_LEAST: Duration = Duration::from_millis(50);
/// A taker is a slow relay only if at least this share of its chunks was
/// asked for again late (and more than twice the lower quartile's share).
pub const SLOW_TAKER_SHARE: f64 = 0.5;
/// A taker is scored once this many of the chunks it took were seen.
const TAKER_SEEN_NEEDED: u32 = 4;
/// Most takers scored per file; later ones are not scored.
const TAKERS_KEPT: usize = 1024;

/// Whether a source's link has other uploads under way when it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Other uploads are under way: chunks handed out recently wait.
    Busy,
    /// No other upload: late chunks (see the module's documentation) go
    /// out again at once rather than leave the link idle.
    Idle,
}

/// How many times this source handed out each chunk of one file, and when
/// last.
#[derive(Debug, Clone)]
pub struct SeedChoice {
    sent: Vec<u32>,
    last: Vec<Option<Instant>>,
    /// Handed out, and since seen held by a caller.
    spread: Bitfield,
    /// Seen only later than the late threshold after it was last handed
    /// out: its holders pass it on slowly.
    seen_late: Bitfield,
    /// When each chunk was first seen after it was last handed out; `None`
    /// while a chunk handed out is not seen yet (see [`Self::unseen_since`]).
    seen_at: Vec<Option<Instant>>,
    /// Who each chunk was last handed to (an index into `takers`).
    taken_by: Vec<Option<u16>>,
    /// Asked for again, late, since it was last handed out.
    asked_again: Bitfield,
    takers: Takers,
    sightings: Sightings,
    seed: u32,
}

/// The calling agents chunks were handed to, each with how many of its
/// chunks were seen and how many of those were asked for again late.
#[derive(Debug, Clone, Default)]
struct Takers {
    index: std::collections::HashMap<String, u16>,
    seen: Vec<u32>,
    asked_again: Vec<u32>,
}

impl Takers {
    /// The index of `caller` (its key), added if new; `None` for a caller
    /// with no key or past [`TAKERS_KEPT`].
    fn of(&mut self, caller: &str) -> Option<u16> {
        if caller.is_empty() {
            return None;
        }
        if let Some(&i) = self.index.get(caller) {
            return Some(i);
        }
        if self.seen.len() >= TAKERS_KEPT {
            return None;
        }
        let i = self.seen.len() as u16;
        self.index.insert(caller.to_owned(), i);
        self.seen.push(0);
        self.asked_again.push(0);
        Some(i)
    }

    /// Which takers are slow relays (see the module's documentation).
    fn slow(&self) -> Vec<bool> {
        let share = |t: usize| {
            (self.seen[t] >= TAKER_SEEN_NEEDED)
                .then(|| f64::from(self.asked_again[t]) / f64::from(self.seen[t]))
        };
        let mut scored: Vec<f64> = (0..self.seen.len()).filter_map(share).collect();
        if scored.len() < 2 {
            return vec![false; self.seen.len()];
        }
        scored.sort_by(f64::total_cmp);
        let quartile = scored[scored.len() / 4];
        (0..self.seen.len())
            .map(|t| share(t).is_some_and(|r| r >= SLOW_TAKER_SHARE && r > 2.0 * quartile))
            .collect()
    }
}

/// The recent sighting delays: how long chunks took from being handed out
/// to showing up in a caller's bitfield.
#[derive(Debug, Clone, Default)]
struct Sightings {
    delays: std::collections::VecDeque<Duration>,
}

impl Sightings {
    fn record(&mut self, delay: Duration) {
        if self.delays.len() == SIGHTINGS_KEPT {
            self.delays.pop_front();
        }
        self.delays.push_back(delay);
    }

    /// How long a chunk may wait to be seen before it is late; `None`
    /// until enough chunks were seen to tell.
    fn late_after(&self) -> Option<Duration> {
        if self.delays.len() < SIGHTINGS_NEEDED {
            return None;
        }
        let mut sorted: Vec<Duration> = self.delays.iter().copied().collect();
        let mid = sorted.len() / 2;
        let (_, median, _) = sorted.select_nth_unstable(mid);
        Some((*median * LATE_FACTOR).max(LATE_AT_LEAST))
    }
}

impl SeedChoice {
    /// Nothing handed out yet, for a file of `chunk_count` chunks; `seed`
    /// orders equally sent chunks (any number, e.g. random).
    pub fn new(chunk_count: u32, seed: u32) -> Self {
        Self {
            sent: vec![0; chunk_count as usize],
            last: vec![None; chunk_count as usize],
            spread: Bitfield::empty(chunk_count),
            seen_late: Bitfield::empty(chunk_count),
            seen_at: vec![None; chunk_count as usize],
            taken_by: vec![None; chunk_count as usize],
            asked_again: Bitfield::empty(chunk_count),
            takers: Takers::default(),
            sightings: Sightings::default(),
            seed,
        }
    }

    /// Up to `n` chunks among those the caller lacks (`lacks`) and this
    /// source holds (`held`), least handed out first; each counts as handed
    /// out from now on (give back what was not sent with [`Self::unsend`]).
    /// `link` says whether other uploads are under way; `caller` is the
    /// calling agent's key (empty if unknown).
    pub fn choose(
        &mut self,
        lacks: &Bitfield,
        held: &Bitfield,
        n: usize,
        link: Link,
        caller: &str,
    ) -> Vec<u32> {
        self.choose_at(lacks, held, n, Instant::now(), link, caller)
    }

    /// [`Self::choose`] at `now`.
    pub fn choose_at(
        &mut self,
        lacks: &Bitfield,
        held: &Bitfield,
        n: usize,
        now: Instant,
        link: Link,
        caller: &str,
    ) -> Vec<u32> {
        if n == 0 || lacks.len() as usize != self.sent.len() || held.len() != lacks.len() {
            return Vec::new();
        }
        let late_after = self.sightings.late_after();
        for i in lacks.missing() {
            if self.last[i as usize].is_some() {
                self.spread.set(i);
            }
            if let Some(at) = self.unseen_since(i) {
                let delay = now.saturating_duration_since(at);
                if late_after.is_some_and(|late| delay > late) {
                    self.seen_late.set(i);
                }
                self.sightings.record(delay);
                self.seen_at[i as usize] = Some(now);
                if let Some(t) = self.taken_by[i as usize] {
                    self.takers.seen[usize::from(t)] += 1;
                }
            }
        }
        // Chunks asked for again, late after they were seen: their takers'
        // relays are slow for this caller.
        if let Some(late) = late_after {
            for i in lacks.held() {
                let seen_long_ago = self.seen_at[i as usize]
                    .is_some_and(|at| now.saturating_duration_since(at) > late);
                if seen_long_ago && !self.asked_again.get(i) {
                    self.asked_again.set(i);
                    if let Some(t) = self.taken_by[i as usize] {
                        self.takers.asked_again[usize::from(t)] += 1;
                    }
                }
            }
        }
        let seed = self.seed;
        let due = |i: u32| {
            let wait = if self.spread.get(i) {
                RESEND_SPREAD_AFTER
            } else {
                RESEND_AFTER
            };
            self.last[i as usize].is_none_or(|at| now.duration_since(at) >= wait)
        };
        let mut candidates: Vec<u32> = lacks.held().filter(|&i| held.get(i) && due(i)).collect();
        let candidates = match late_after {
            Some(late) if candidates.is_empty() && link == Link::Idle => {
                // Nothing better to send: the late chunks, longest-waiting
                // first.
                let slow = self.takers.slow();
                let is_late = |i: u32| {
                    let taken_by_slow =
                        self.taken_by[i as usize].is_some_and(|t| slow[usize::from(t)]);
                    self.seen_late.get(i)
                        || self
                            .unseen_since(i)
                            .is_some_and(|at| now.saturating_duration_since(at) > late)
                        || (taken_by_slow && self.asked_again.get(i))
                };
                let mut waiting: Vec<u32> = lacks
                    .held()
                    .filter(|&i| held.get(i) && is_late(i))
                    .collect();
                let last = &self.last;
                take_smallest(&mut waiting, n, |i| (last[i as usize], tie_order(i, seed)))
            }
            _ => {
                let sent = &self.sent;
                take_smallest(&mut candidates, n, |i| {
                    (sent[i as usize], tie_order(i, seed))
                })
            }
        };
        let taker = self.takers.of(caller);
        for &i in &candidates {
            self.taken_by[i as usize] = taker;
            self.seen_at[i as usize] = None;
            self.asked_again.clear(i);
            self.sent[i as usize] = self.sent[i as usize].saturating_add(1);
            self.last[i as usize] = Some(now);
            // A new taker: whether it passes the chunk on late is its own.
            self.seen_late.clear(i);
        }
        candidates
    }

    /// When chunk `i` was last handed out, if no caller has shown it since.
    fn unseen_since(&self, i: u32) -> Option<Instant> {
        self.last[i as usize].filter(|_| self.seen_at[i as usize].is_none())
    }

    /// Gives back a chunk [`Self::choose`] counted but that was not sent
    /// (the stream ended first).
    pub fn unsend(&mut self, index: u32) {
        if let Some(count) = self.sent.get_mut(index as usize) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.last[index as usize] = None;
                self.seen_at[index as usize] = None;
                self.taken_by[index as usize] = None;
                self.asked_again.clear(index);
                self.spread.clear(index);
                self.seen_late.clear(index);
            }
        }
    }

    /// How many times chunk `index` was handed out.
    #[cfg(test)]
    pub fn sent(&self, index: u32) -> u32 {
        self.sent.get(index as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(n: u32) -> Bitfield {
        Bitfield::full(n)
    }

    #[test]
    fn no_chunk_goes_out_twice_before_every_chunk_once() {
        let mut choice = SeedChoice::new(64, 7);
        let mut given = Vec::new();
        // Four downloaders that lack everything ask in turn, 3 at a time.
        for _ in 0..64usize.div_ceil(3) {
            given.extend(choice.choose(&all(64), &all(64), 3, Link::Busy, ""));
        }
        given.truncate(64);
        given.sort_unstable();
        given.dedup();
        assert_eq!(given.len(), 64, "the first 64 handed out are all distinct");
    }

    #[test]
    fn only_chunks_the_caller_lacks_and_the_source_holds_are_chosen() {
        let mut choice = SeedChoice::new(8, 1);
        let lacks = Bitfield::of(8, [1, 2, 5]);
        let held = Bitfield::of(8, (0..8).filter(|&i| i != 5));
        let mut got = choice.choose(&lacks, &held, 10, Link::Busy, "");
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn a_lone_downloader_is_given_as_much_as_it_asks() {
        let mut choice = SeedChoice::new(100, 3);
        assert_eq!(
            choice.choose(&all(100), &all(100), 8, Link::Busy, "").len(),
            8
        );
    }

    #[test]
    fn a_chunk_handed_out_goes_out_again_only_after_a_while() {
        let start = Instant::now();
        let mut choice = SeedChoice::new(4, 3);
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy, "")
                .len(),
            4
        );
        assert!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy, "")
                .is_empty()
        );
        let later = start + RESEND_AFTER;
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 2, later, Link::Busy, "")
                .len(),
            2
        );
    }

    #[test]
    fn a_chunk_a_caller_already_holds_waits_longer_to_go_out_again() {
        let start = Instant::now();
        let mut choice = SeedChoice::new(4, 3);
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy, "")
                .len(),
            4
        );
        // A second caller already holds chunk 0: it is in the swarm.
        let mut lacks = all(4);
        lacks.clear(0);
        assert!(
            choice
                .choose_at(&lacks, &all(4), 4, start, Link::Busy, "")
                .is_empty()
        );
        let later = start + RESEND_AFTER;
        let mut again = choice.choose_at(&all(4), &all(4), 4, later, Link::Busy, "");
        again.sort_unstable();
        assert_eq!(again, vec![1, 2, 3], "chunk 0 is held by a peer");
        let much_later = start + RESEND_SPREAD_AFTER;
        assert_eq!(
            choice.choose_at(&all(4), &all(4), 1, much_later, Link::Busy, ""),
            vec![0]
        );
    }

    #[test]
    fn unsent_chunks_are_chosen_again_first() {
        let mut choice = SeedChoice::new(4, 0);
        let first = choice.choose(&all(4), &all(4), 1, Link::Busy, "")[0];
        choice.choose(&all(4), &all(4), 3, Link::Busy, "");
        choice.unsend(first);
        assert_eq!(choice.sent(first), 0);
        assert_eq!(
            choice.choose(&all(4), &all(4), 1, Link::Busy, ""),
            vec![first]
        );
    }

    #[test]
    fn a_bitfield_of_the_wrong_length_gets_nothing() {
        let mut choice = SeedChoice::new(4, 0);
        assert!(
            choice
                .choose(&all(5), &all(5), 2, Link::Busy, "")
                .is_empty()
        );
    }

    /// A bitfield of `n` chunks lacking exactly `lacking`.
    fn lacking(n: u32, lacking: &[u32]) -> Bitfield {
        Bitfield::of(n, lacking.iter().copied())
    }

    /// A seeder of 16 chunks that handed out chunks 0..10 at `start` and
    /// saw all ten held 100 ms later: late after 200 ms.
    fn seen_ten(start: Instant) -> SeedChoice {
        let mut choice = SeedChoice::new(16, 5);
        let first = lacking(16, &(0..10).collect::<Vec<_>>());
        assert_eq!(
            choice
                .choose_at(&first, &all(16), 10, start, Link::Busy, "")
                .len(),
            10
        );
        let rest = lacking(16, &(10..16).collect::<Vec<_>>());
        let at = start + Duration::from_millis(100);
        assert_eq!(
            choice
                .choose_at(&rest, &all(16), 6, at, Link::Busy, "")
                .len(),
            6
        );
        assert_eq!(
            choice.sightings.late_after(),
            Some(Duration::from_millis(200))
        );
        choice
    }

    #[test]
    fn an_idle_link_sends_nothing_twice_before_chunks_are_seen() {
        let start = Instant::now();
        let mut choice = SeedChoice::new(4, 3);
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy, "")
                .len(),
            4
        );
        let later = start + Duration::from_secs(1);
        assert!(
            choice
                .choose_at(&all(4), &all(4), 4, later, Link::Idle, "")
                .is_empty(),
            "no sighting delays yet, so nothing is late"
        );
    }

    #[test]
    fn an_idle_link_sends_again_only_chunks_late_to_be_seen() {
        let start = Instant::now();
        let mut choice = seen_ten(start);
        // Chunks 10..16 went out at +100 ms. At +250 ms they are not late
        // yet: an idle link leaves them to their takers.
        let soon = start + Duration::from_millis(250);
        assert!(
            choice
                .choose_at(&lacking(16, &[10, 11]), &all(16), 2, soon, Link::Idle, "")
                .is_empty()
        );
        // At +350 ms they are: idle, they go again; busy, they wait.
        let later = start + Duration::from_millis(350);
        assert!(
            choice
                .choose_at(&lacking(16, &[10, 11]), &all(16), 2, later, Link::Busy, "")
                .is_empty()
        );
        let mut again =
            choice.choose_at(&lacking(16, &[10, 11]), &all(16), 2, later, Link::Idle, "");
        again.sort_unstable();
        assert_eq!(again, vec![10, 11]);
        // Sent again, they are no longer late: a new taker has them.
        assert!(
            choice
                .choose_at(&lacking(16, &[10, 11]), &all(16), 2, later, Link::Idle, "")
                .is_empty()
        );
    }

    #[test]
    fn a_chunk_seen_late_goes_again_to_an_idle_link() {
        let start = Instant::now();
        let mut choice = seen_ten(start);
        // Chunks 10..16 are seen at +600 ms, late (a slow taker); chunk 0
        // is asked for again, seen in time.
        let at = start + Duration::from_millis(600);
        assert!(
            choice
                .choose_at(&lacking(16, &[0]), &all(16), 1, at, Link::Idle, "")
                .is_empty(),
            "chunk 0 was seen in time: its holders pass it on"
        );
        let mut again =
            choice.choose_at(&lacking(16, &[0, 12, 13]), &all(16), 4, at, Link::Idle, "");
        again.sort_unstable();
        assert_eq!(again, vec![12, 13], "held only by a slow relay");
    }

    /// A seeder of 16 chunks that handed 8 to "fast" and the other 8 to
    /// "slow" at `start` (returned in that order), all seen 100 ms later:
    /// late after 200 ms.
    fn two_takers(start: Instant) -> (SeedChoice, Vec<u32>, Vec<u32>) {
        let mut choice = SeedChoice::new(16, 5);
        let mut fast = choice.choose_at(&all(16), &all(16), 8, start, Link::Busy, "fast");
        let mut slow = choice.choose_at(&all(16), &all(16), 8, start, Link::Busy, "slow");
        fast.sort_unstable();
        slow.sort_unstable();
        assert_eq!(fast.len() + slow.len(), 16);
        let at = start + Duration::from_millis(100);
        assert!(
            choice
                .choose_at(&Bitfield::empty(16), &all(16), 1, at, Link::Busy, "w")
                .is_empty()
        );
        assert_eq!(
            choice.sightings.late_after(),
            Some(Duration::from_millis(200))
        );
        (choice, fast, slow)
    }

    #[test]
    fn chunks_a_slow_relay_took_go_again_when_asked_for_late() {
        let start = Instant::now();
        let (mut choice, fast, slow) = two_takers(start);
        let at = start + Duration::from_millis(400);
        // Two of the fast taker's chunks asked for again: a quarter of its
        // chunks, so it passes its chunks on.
        assert!(
            choice
                .choose_at(&lacking(16, &fast[..2]), &all(16), 2, at, Link::Idle, "w")
                .is_empty()
        );
        // Six of the slow taker's: three quarters, more than twice the
        // fast one's share. A slow relay: its chunks go again.
        let mut again =
            choice.choose_at(&lacking(16, &slow[..6]), &all(16), 6, at, Link::Idle, "w");
        again.sort_unstable();
        assert_eq!(again, slow[..6]);
        // The fast taker's are still left to it.
        assert!(
            choice
                .choose_at(&lacking(16, &fast[..2]), &all(16), 2, at, Link::Idle, "w2")
                .is_empty()
        );
    }

    #[test]
    fn takers_asked_again_alike_are_no_slow_relays() {
        let start = Instant::now();
        let (mut choice, fast, slow) = two_takers(start);
        let at = start + Duration::from_millis(400);
        // Six of each taker's chunks asked for again: starved cores, not a
        // slow link. Nobody stands out, nothing goes twice.
        let asked: Vec<u32> = fast[..6].iter().chain(&slow[..6]).copied().collect();
        assert!(
            choice
                .choose_at(&lacking(16, &asked), &all(16), 12, at, Link::Idle, "w")
                .is_empty()
        );
    }

    #[test]
    fn fresh_chunks_come_before_any_resend() {
        let start = Instant::now();
        let mut fresh = SeedChoice::new(4, 3);
        let first = fresh.choose_at(&all(4), &all(4), 1, start, Link::Idle, "");
        let second = fresh.choose_at(&all(4), &all(4), 1, start, Link::Idle, "");
        assert_ne!(first, second);
    }
}
