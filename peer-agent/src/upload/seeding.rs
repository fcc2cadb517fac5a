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
//! seeder with no other upload under way has nothing better to send: a
//! caller that lacks only chunks it handed out recently gets the ones
//! handed out longest ago at once. That is the end of a mixed LAN: the
//! last chunks the seeder gave went to laptops, whose slow uplinks would
//! otherwise keep every wired downloader waiting out those timers while
//! the seeder's link sat idle.
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

/// Whether a source's link has other uploads under way when it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Other uploads are under way: chunks handed out recently wait.
    Busy,
    /// No other upload: chunks handed out recently go out again at once
    /// rather than leave the link idle.
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
    seed: u32,
}

impl SeedChoice {
    /// Nothing handed out yet, for a file of `chunk_count` chunks; `seed`
    /// orders equally sent chunks (any number, e.g. random).
    pub fn new(chunk_count: u32, seed: u32) -> Self {
        Self {
            sent: vec![0; chunk_count as usize],
            last: vec![None; chunk_count as usize],
            spread: Bitfield::empty(chunk_count),
            seed,
        }
    }

    /// Up to `n` chunks among those the caller lacks (`lacks`) and this
    /// source holds (`held`), least handed out first; each counts as handed
    /// out from now on (give back what was not sent with [`Self::unsend`]).
    /// `link` says whether other uploads are under way.
    pub fn choose(&mut self, lacks: &Bitfield, held: &Bitfield, n: usize, link: Link) -> Vec<u32> {
        self.choose_at(lacks, held, n, Instant::now(), link)
    }

    /// [`Self::choose`] at `now`.
    pub fn choose_at(
        &mut self,
        lacks: &Bitfield,
        held: &Bitfield,
        n: usize,
        now: Instant,
        link: Link,
    ) -> Vec<u32> {
        if n == 0 || lacks.len() as usize != self.sent.len() || held.len() != lacks.len() {
            return Vec::new();
        }
        for i in lacks.missing() {
            if self.last[i as usize].is_some() {
                self.spread.set(i);
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
        let candidates = if candidates.is_empty() && link == Link::Idle {
            // Nothing better to send: the longest-waiting first.
            let mut waiting: Vec<u32> = lacks.held().filter(|&i| held.get(i)).collect();
            let last = &self.last;
            take_smallest(&mut waiting, n, |i| (last[i as usize], tie_order(i, seed)))
        } else {
            let sent = &self.sent;
            take_smallest(&mut candidates, n, |i| {
                (sent[i as usize], tie_order(i, seed))
            })
        };
        for &i in &candidates {
            self.sent[i as usize] = self.sent[i as usize].saturating_add(1);
            self.last[i as usize] = Some(now);
        }
        candidates
    }

    /// Gives back a chunk [`Self::choose`] counted but that was not sent
    /// (the stream ended first).
    pub fn unsend(&mut self, index: u32) {
        if let Some(count) = self.sent.get_mut(index as usize) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.last[index as usize] = None;
                self.spread.clear(index);
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
            given.extend(choice.choose(&all(64), &all(64), 3, Link::Busy));
        }
        given.truncate(64);
        given.sort_unstable();
        given.dedup();
        assert_eq!(given.len(), 64, "the first 64 handed out are all distinct");
    }

    #[test]
    fn only_chunks_the_caller_lacks_and_the_source_holds_are_chosen() {
        let mut choice = SeedChoice::new(8, 1);
        let mut lacks = Bitfield::empty(8);
        lacks.set(1);
        lacks.set(2);
        lacks.set(5);
        let mut held = Bitfield::empty(8);
        for i in (0..8).filter(|&i| i != 5) {
            held.set(i);
        }
        let mut got = choice.choose(&lacks, &held, 10, Link::Busy);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn a_lone_downloader_is_given_as_much_as_it_asks() {
        let mut choice = SeedChoice::new(100, 3);
        assert_eq!(choice.choose(&all(100), &all(100), 8, Link::Busy).len(), 8);
    }

    #[test]
    fn a_chunk_handed_out_goes_out_again_only_after_a_while() {
        let start = Instant::now();
        let mut choice = SeedChoice::new(4, 3);
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy)
                .len(),
            4
        );
        assert!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy)
                .is_empty()
        );
        let later = start + RESEND_AFTER;
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 2, later, Link::Busy)
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
                .choose_at(&all(4), &all(4), 4, start, Link::Busy)
                .len(),
            4
        );
        // A second caller already holds chunk 0: it is in the swarm.
        let mut lacks = all(4);
        lacks.clear(0);
        assert!(
            choice
                .choose_at(&lacks, &all(4), 4, start, Link::Busy)
                .is_empty()
        );
        let later = start + RESEND_AFTER;
        let mut again = choice.choose_at(&all(4), &all(4), 4, later, Link::Busy);
        again.sort_unstable();
        assert_eq!(again, vec![1, 2, 3], "chunk 0 is held by a peer");
        let much_later = start + RESEND_SPREAD_AFTER;
        assert_eq!(
            choice.choose_at(&all(4), &all(4), 1, much_later, Link::Busy),
            vec![0]
        );
    }

    #[test]
    fn unsent_chunks_are_chosen_again_first() {
        let mut choice = SeedChoice::new(4, 0);
        let first = choice.choose(&all(4), &all(4), 1, Link::Busy)[0];
        choice.choose(&all(4), &all(4), 3, Link::Busy);
        choice.unsend(first);
        assert_eq!(choice.sent(first), 0);
        assert_eq!(choice.choose(&all(4), &all(4), 1, Link::Busy), vec![first]);
    }

    #[test]
    fn a_bitfield_of_the_wrong_length_gets_nothing() {
        let mut choice = SeedChoice::new(4, 0);
        assert!(choice.choose(&all(5), &all(5), 2, Link::Busy).is_empty());
    }

    #[test]
    fn an_idle_link_sends_again_what_a_busy_one_would_make_wait_for() {
        let mut choice = SeedChoice::new(4, 3);
        let start = Instant::now();
        assert_eq!(
            choice
                .choose_at(&all(4), &all(4), 4, start, Link::Busy)
                .len(),
            4
        );
        let soon = start + Duration::from_millis(100);
        assert!(
            choice
                .choose_at(&all(4), &all(4), 2, soon, Link::Busy)
                .is_empty(),
            "a busy link leaves them to the swarm"
        );
        // Chunk 2 goes out again a little later: idle, the others come first.
        let later = soon + Duration::from_millis(100);
        let mut lacks = Bitfield::empty(4);
        lacks.set(2);
        assert_eq!(
            choice.choose_at(&lacks, &all(4), 1, later, Link::Idle),
            vec![2]
        );
        let again = choice.choose_at(&all(4), &all(4), 4, later, Link::Idle);
        assert_eq!(again.len(), 4);
        assert_eq!(again[3], 2, "the one handed out last goes last");
        // Fresh chunks still come before any resend, idle or not.
        let mut fresh = SeedChoice::new(4, 3);
        let first = fresh.choose_at(&all(4), &all(4), 1, start, Link::Idle);
        let second = fresh.choose_at(&all(4), &all(4), 1, start, Link::Idle);
        assert_ne!(first, second);
    }
}
