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
//! Pure logic, no I/O: the chunk server keeps one [`SeedChoice`] per file it
//! serves this way (see `crate::upload`).

use std::time::{Duration, Instant};

use p2p_services::manifest::Bitfield;

use crate::picker::tie_order;

/// A chunk already handed out goes out again only this long after.
pub const RESEND_AFTER: Duration = Duration::from_secs(2);
/// A chunk handed out that a caller has since shown it holds goes out
/// again only this long after (in case every holder left).
pub const RESEND_SPREAD_AFTER: Duration = Duration::from_secs(4);

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
    pub fn choose(&mut self, lacks: &Bitfield, held: &Bitfield, n: usize) -> Vec<u32> {
        self.choose_at(lacks, held, n, Instant::now())
    }

    /// [`Self::choose`] at `now`.
    pub fn choose_at(
        &mut self,
        lacks: &Bitfield,
        held: &Bitfield,
        n: usize,
        now: Instant,
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
        let key = |i: u32| (self.sent[i as usize], tie_order(i, seed));
        if candidates.len() > n {
            candidates.select_nth_unstable_by_key(n - 1, |&i| key(i));
            candidates.truncate(n);
        }
        candidates.sort_by_key(|&i| key(i));
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
            given.extend(choice.choose(&all(64), &all(64), 3));
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
        let mut got = choice.choose(&lacks, &held, 10);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn a_lone_downloader_is_given_as_much_as_it_asks() {
        let mut choice = SeedChoice::new(100, 3);
        assert_eq!(choice.choose(&all(100), &all(100), 8).len(), 8);
    }

    #[test]
    fn a_chunk_handed_out_goes_out_again_only_after_a_while() {
        let start = Instant::now();
        let mut choice = SeedChoice::new(4, 3);
        assert_eq!(choice.choose_at(&all(4), &all(4), 4, start).len(), 4);
        assert!(choice.choose_at(&all(4), &all(4), 4, start).is_empty());
        let later = start + RESEND_AFTER;
        assert_eq!(choice.choose_at(&all(4), &all(4), 2, later).len(), 2);
    }

    #[test]
    fn a_chunk_a_caller_already_holds_waits_longer_to_go_out_again() {
        let start = Instant::now();
        let mut choice = SeedChoice::new(4, 3);
        assert_eq!(choice.choose_at(&all(4), &all(4), 4, start).len(), 4);
        // A second caller already holds chunk 0: it is in the swarm.
        let mut lacks = all(4);
        lacks.clear(0);
        assert!(choice.choose_at(&lacks, &all(4), 4, start).is_empty());
        let later = start + RESEND_AFTER;
        let mut again = choice.choose_at(&all(4), &all(4), 4, later);
        again.sort_unstable();
        assert_eq!(again, vec![1, 2, 3], "chunk 0 is held by a peer");
        let much_later = start + RESEND_SPREAD_AFTER;
        assert_eq!(choice.choose_at(&all(4), &all(4), 1, much_later), vec![0]);
    }

    #[test]
    fn unsent_chunks_are_chosen_again_first() {
        let mut choice = SeedChoice::new(4, 0);
        let first = choice.choose(&all(4), &all(4), 1)[0];
        choice.choose(&all(4), &all(4), 3);
        choice.unsend(first);
        assert_eq!(choice.sent(first), 0);
        assert_eq!(choice.choose(&all(4), &all(4), 1), vec![first]);
    }

    #[test]
    fn a_bitfield_of_the_wrong_length_gets_nothing() {
        let mut choice = SeedChoice::new(4, 0);
        assert!(choice.choose(&all(5), &all(5), 2).is_empty());
    }
}
