//! Which chunk to ask which source for next: pure logic, no I/O.
//!
//! Rarest first among the chunks a source holds, ties broken by a
//! per-download pseudo-random order of the indexes; a chunk is asked of one
//! source at a time until every missing chunk is in flight, then the endgame
//! lets a second source duplicate the outstanding ones so one slow source
//! cannot hold up the end. Faster sources come back for work sooner and so
//! get more of it.
//!
//! Why random ties and not a rotated sequential walk: concurrent
//! downloaders that walk the file in order from different starting points
//! catch up with each other, and from then on ask the seeder for the same
//! chunks at the same moment (each sees the other's frontier as "held by the
//! seeder only" until the next announcement). A random order makes such
//! collisions rare, so the seeder sends each chunk about once.
//!
//! Sources are not equally fast: on a LAN of wired desktops and Wi-Fi
//! laptops a laptop uploads at a tenth of a desktop's rate. The picker
//! measures each source's chunk time (the time between its deliveries
//! while it has work, a moving average, as Dragonfly times each parent's
//! pieces) and uses it twice, both times comparing sources with each other,
//! never with a rate fixed in advance:
//! - a seeder may be asked for a chunk whose only partial holders are
//!   [`SLOWER`] times slower than the seeder (otherwise every chunk a seeder
//!   handed to a laptop would have to crawl out of the laptop's uplink);
//! - a downloader whose link holds its uploads to that much less than an
//!   equal peer's share of what it downloads is a poor relay (a laptop's
//!   Wi-Fi uplink, see [`Picker::set_own_rates`]): it asks seeders for
//!   fresh chunks only when its peers have nothing for it, so the seeder's
//!   one copy goes to the hosts that pass it on fastest (BitTorrent's
//!   super-seeding and choking reward fast uploaders the same way).
//!
//! Stripes make them rarer still: the downloaders that can see each other
//! as partial holders sort their peer ids, and each prefers, among equally
//! rare chunks, those of its own stripe (a fixed hash of the index modulo
//! the number of downloaders). Two downloaders then ask a shared source for
//! the same chunk only when one has exhausted its stripe.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use p2p_services::manifest::Bitfield;

/// Identifies a source within one download.
pub type SourceKey = u64;

/// Most sources fetching the same chunk at once during the endgame.
const MAX_DUPLICATES: usize = 2;

/// How many times slower than another a source must be to count as slow
/// next to it. Two: a chunk from a source at half the speed takes as long
/// as two from the faster one, so below that the faster one's queue is as
/// likely to be the later one; above it, waiting for the slow source costs
/// more than the copy the faster one sends again.
pub const SLOWER: u32 = 2;

/// Weight of the newest delivery in a source's chunk time.
const CHUNK_TIME_WEIGHT: f64 = 0.25;

/// The piece picker of one download.
#[derive(Debug)]
pub struct Picker {
    have: Bitfield,
    sources: HashMap<SourceKey, Bitfield>,
    availability: Vec<u32>,
    in_flight: HashMap<u32, Vec<SourceKey>>,
    seed: u32,
    stripe: Stripe,
    /// Complete sources that choose which chunks to send (seeders), sorted.
    choosers: Vec<SourceKey>,
    /// Sources that have delivered a verified chunk.
    delivering: HashSet<SourceKey>,
    /// How fast each source has delivered.
    timing: HashMap<SourceKey, Timing>,
    /// Whether the link holds this agent's uploads to [`SLOWER`] times
    /// less than an equal peer's share of what it downloads (see
    /// [`Self::set_own_rates`]).
    slow_relay: bool,
}

/// How fast one source delivers: its chunk time, measured from when it
/// was given work or delivered last, whichever is later.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    /// When it was last given work while it had none.
    busy_since: Option<Instant>,
    /// When it last delivered a chunk.
    last: Option<Instant>,
    /// Moving average of the seconds between its deliveries while busy.
    chunk_s: Option<f64>,
}

impl Timing {
    fn delivered(&mut self, now: Instant) {
        let from = match (self.busy_since, self.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(from) = from {
            let took = now.saturating_duration_since(from).as_secs_f64();
            self.chunk_s = Some(match self.chunk_s {
                Some(avg) => avg + CHUNK_TIME_WEIGHT * (took - avg),
                None => took,
            });
        }
        self.last = Some(now);
    }
}

/// This downloader's share of the file among `count` concurrent downloaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    /// This downloader's position, `0..count`.
    pub position: u32,
    /// How many downloaders share the file right now (1: no striping).
    pub count: u32,
}

impl Stripe {
    /// The stripe of the downloader `own` among `peers` (all of them
    /// downloading the file, `own` included or not): its rank among the
    /// sorted ids.
    pub fn among<'a>(own: &str, peers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut ids: Vec<&str> = peers.into_iter().filter(|p| *p != own).collect();
        ids.push(own);
        ids.sort_unstable();
        ids.dedup();
        let position = ids.iter().position(|p| *p == own).unwrap_or(0) as u32;
        Self {
            position,
            count: ids.len() as u32,
        }
    }

    /// Whether chunk `index` is outside this stripe (0 inside, 1 outside),
    /// the same answer on every downloader.
    fn off(self, index: u32) -> u8 {
        if self.count <= 1 {
            0
        } else {
            u8::from(tie_order(index, STRIPE_SEED) % self.count != self.position)
        }
    }
}

/// Fixed, so every downloader computes the same stripes.
const STRIPE_SEED: u32 = 0x5f37_59df;
/// Splits the seeders' pool among several seeders.
const CHOOSER_SEED: u32 = 0x2545_f491;

impl Picker {
    /// A picker for a file of which `have` is already verified. `seed`
    /// (any number, e.g. random) decides the order among equally rare chunks.
    pub fn new(have: Bitfield, seed: u32) -> Self {
        let len = have.len();
        Self {
            availability: vec![0; len as usize],
            seed,
            stripe: Stripe {
                position: 0,
                count: 1,
            },
            have,
            sources: HashMap::new(),
            in_flight: HashMap::new(),
            choosers: Vec::new(),
            delivering: HashSet::new(),
            timing: HashMap::new(),
            slow_relay: false,
        }
    }

    /// A source's chunk time for this download, once it has delivered.
    pub fn chunk_time(&self, key: SourceKey) -> Option<Duration> {
        let s = self.timing.get(&key)?.chunk_s?;
        Some(Duration::from_secs_f64(s))
    }

    /// Tells the picker how fast this agent uploads (`upload_bps`) and
    /// downloads this file (`download_bps`), over the same recent window,
    /// and whether the network held its uploads back then (`link_bound`).
    ///
    /// Among `p` downloaders that relay equally well, each uploads `p - 1`
    /// of every `p` bytes it downloads (the seeder sends the one copy; the
    /// downloaders send each other the rest). One whose link lets it upload
    /// [`SLOWER`] times less than that, with `p - 1` partial sources beside
    /// it, relays the seeder's fresh chunks slower than the peers it
    /// competes with for them. An upload the link does not hold back is
    /// what peers asked for, not what the link allows: such an agent could
    /// relay more, and is no slow relay. (Judging it by that rate would
    /// feed on itself: a slow relay takes fewer fresh chunks, so fewer
    /// peers ask it for any.)
    pub fn set_own_rates(&mut self, upload_bps: u64, download_bps: u64, link_bound: bool) {
        let peers = self
            .sources
            .keys()
            .filter(|k| !self.choosers.contains(k))
            .count() as u64;
        // upload < download · peers / (peers + 1) / SLOWER
        let slow = link_bound
            && upload_bps
                .saturating_mul(peers + 1)
                .saturating_mul(u64::from(SLOWER))
                < download_bps.saturating_mul(peers);
        if slow != self.slow_relay {
            tracing::debug!(
                slow,
                upload_bps,
                download_bps,
                peers,
                "judged whether this agent relays chunks slower than its peers"
            );
        }
        self.slow_relay = slow;
    }

    /// The sources [`SLOWER`] times slower than `fast` at `now`; none while
    /// `fast` has not been timed. A source with work that has not
    /// delivered for longer than its chunk time is judged by how long it
    /// has been at it, so a source too slow to deliver its first chunk yet
    /// (a laptop on a 2 Mbit/s uplink shared by seven callers) counts as
    /// slow as soon as it has taken longer than [`SLOWER`] of the fast
    /// one's chunks.
    fn slower_than(&self, fast: SourceKey, now: Instant) -> HashSet<SourceKey> {
        let Some(f) = self.timing.get(&fast).and_then(|t| t.chunk_s) else {
            return HashSet::new();
        };
        let working: HashSet<SourceKey> = self.in_flight.values().flatten().copied().collect();
        let slow = |key: &SourceKey, timing: &Timing| {
            let waited = timing
                .busy_since
                .filter(|_| working.contains(key))
                .map(|since| {
                    let from = timing.last.map_or(since, |last| last.max(since));
                    now.saturating_duration_since(from).as_secs_f64()
                });
            match (timing.chunk_s, waited) {
                (None, None) => false,
                (s, w) => s.unwrap_or(0.0).max(w.unwrap_or(0.0)) > f64::from(SLOWER) * f,
            }
        };
        self.timing
            .iter()
            .filter(|&(key, timing)| *key != fast && slow(key, timing))
            .map(|(key, _)| *key)
            .collect()
    }

    /// Whether this agent relays chunks [`SLOWER`] times slower than an
    /// equal peer would (see [`Self::set_own_rates`]): it should leave a
    /// seeder's fresh chunks to peers that relay them faster.
    pub fn is_slow_relay(&self) -> bool {
        self.slow_relay
    }

    /// Adds a source or replaces what it holds.
    pub fn upsert_source(&mut self, key: SourceKey, holds: Bitfield) {
        if holds.len() != self.have.len() {
            return;
        }
        if let Some(old) = self.sources.remove(&key) {
            for i in old.held() {
                self.availability[i as usize] -= 1;
            }
        }
        for i in holds.held() {
            self.availability[i as usize] += 1;
        }
        self.sources.insert(key, holds);
    }

    /// Adds chunks a source just verified (its HAVE messages). Unknown
    /// sources and indexes past the end are ignored.
    pub fn add_held(&mut self, key: SourceKey, indexes: &[u32]) {
        let Some(holds) = self.sources.get_mut(&key) else {
            return;
        };
        for &i in indexes {
            if i < holds.len() && !holds.get(i) {
                holds.set(i);
                self.availability[i as usize] += 1;
            }
        }
    }

    /// Makes `key` (a complete source) one that chooses its chunks, or
    /// stops that.
    pub fn set_chooser(&mut self, key: SourceKey, chooses: bool) {
        self.choosers.retain(|k| *k != key);
        if chooses {
            self.choosers.push(key);
            self.choosers.sort_unstable();
        }
    }

    /// What chooser `key` is asked to choose from (a seeder, see
    /// `upload::seeding`): the missing chunks nobody is fetching that no
    /// source but the choosers holds, so the swarm's copies come from the
    /// downloaders themselves; with several choosers each gets its own
    /// share of those, so two seeders do not send the same chunk. `None`
    /// when there are none: the other sources can give the rest.
    ///
    /// A partial source [`SLOWER`] times slower than the chooser does not
    /// count as a holder (nor, in the endgame, as a fetcher), so a chunk a
    /// slow laptop holds can still come from the seeder. A slow relay (see
    /// [`Self::is_slow_relay`]) gets `None` while a peer has a chunk for it.
    pub fn seed_pool(&mut self, key: SourceKey) -> Option<Bitfield> {
        self.seed_pool_at(key, Instant::now())
    }

    /// [`Self::seed_pool`] at `now`.
    pub fn seed_pool_at(&mut self, key: SourceKey, now: Instant) -> Option<Bitfield> {
        let holds = self.sources.get(&key)?;
        let choosers = self.choosers.len() as u32;
        let rank = self.choosers.iter().position(|k| *k == key)? as u32;
        let partial: Vec<(SourceKey, &Bitfield)> = self
            .sources
            .iter()
            .filter(|(k, _)| !self.choosers.contains(k))
            .map(|(k, b)| (*k, b))
            .collect();
        if self.is_slow_relay()
            && self
                .have
                .missing()
                .any(|i| !self.in_flight.contains_key(&i) && partial.iter().any(|(_, b)| b.get(i)))
        {
            return None;
        }
        let slow = self.slower_than(key, now);
        let counted: Vec<&Bitfield> = partial
            .iter()
            .filter(|(k, _)| !slow.contains(k))
            .map(|(_, b)| *b)
            .collect();
        let endgame = self.all_missing_in_flight();
        let only_choosers = |i: u32| {
            let fetching = match self.in_flight.get(&i) {
                None => false,
                Some(fetchers) if endgame => {
                    fetchers.iter().any(|f| *f == key || !slow.contains(f))
                }
                Some(_) => true,
            };
            holds.get(i)
                && !fetching
                && (self.availability[i as usize] <= choosers || !counted.iter().any(|b| b.get(i)))
        };
        let share = |i: u32| choosers <= 1 || tie_order(i, CHOOSER_SEED) % choosers == rank;
        let mut pool = Bitfield::empty(self.have.len());
        let mut any = false;
        for i in self
            .have
            .missing()
            .filter(|&i| only_choosers(i) && share(i))
        {
            pool.set(i);
            any = true;
        }
        if !any && choosers > 1 {
            for i in self.have.missing().filter(|&i| only_choosers(i)) {
                pool.set(i);
                any = true;
            }
        }
        if any {
            // A chooser has one call at a time: it is busy from now.
            self.timing.entry(key).or_default().busy_since = Some(now);
        }
        any.then_some(pool)
    }

    /// Marks chunks a choosing source is about to send as in flight from it.
    pub fn claim(&mut self, key: SourceKey, index: u32) {
        if !self.have.get(index) {
            let fetchers = self.in_flight.entry(index).or_default();
            if !fetchers.contains(&key) {
                fetchers.push(key);
            }
        }
    }

    /// Forgets a source and releases the chunks it was fetching.
    pub fn remove_source(&mut self, key: SourceKey) {
        self.choosers.retain(|k| *k != key);
        self.delivering.remove(&key);
        self.timing.remove(&key);
        if let Some(old) = self.sources.remove(&key) {
            for i in old.held() {
                self.availability[i as usize] -= 1;
            }
        }
        self.in_flight.retain(|_, fetchers| {
            fetchers.retain(|k| *k != key);
            !fetchers.is_empty()
        });
    }

    /// Sets this downloader's stripe among the file's current downloaders.
    pub fn set_stripe(&mut self, stripe: Stripe) {
        self.stripe = stripe;
    }

    /// Whether `key` is a known source.
    pub fn has_source(&self, key: SourceKey) -> bool {
        self.sources.contains_key(&key)
    }

    /// Up to `max` chunks for source `key` to fetch next, marked in flight.
    ///
    /// In the endgame a chunk goes to at most [`MAX_DUPLICATES`] sources
    /// that have delivered; a source that has not may still be connecting
    /// (at N = 32 on two saturated cores a connection can take its whole
    /// 5 s timeout), so it neither counts towards that limit nor takes a
    /// duplicate of a chunk a delivering source is already fetching.
    pub fn pick(&mut self, key: SourceKey, max: usize) -> Vec<u32> {
        self.pick_at(key, max, Instant::now())
    }

    /// [`Self::pick`] at `now`.
    pub fn pick_at(&mut self, key: SourceKey, max: usize, now: Instant) -> Vec<u32> {
        let Some(holds) = self.sources.get(&key) else {
            return Vec::new();
        };
        let seed = self.seed;
        let stripe = self.stripe;
        let order = |i: u32| {
            (
                self.availability[i as usize],
                stripe.off(i),
                tie_order(i, seed),
            )
        };
        let mut fresh: Vec<u32> = self
            .have
            .missing()
            .filter(|&i| holds.get(i) && !self.in_flight.contains_key(&i))
            .collect();
        let picked = if !fresh.is_empty() {
            take_smallest(&mut fresh, max, order)
        } else if self.all_missing_in_flight() {
            let delivering = |k: &SourceKey| self.delivering.contains(k);
            let proven = delivering(&key);
            let mut dup: Vec<u32> = self
                .in_flight
                .iter()
                .filter(|(i, fetchers)| {
                    let busy = fetchers.iter().filter(|k| delivering(k)).count();
                    let room = if proven {
                        busy < MAX_DUPLICATES
                    } else {
                        busy == 0 && fetchers.len() < MAX_DUPLICATES
                    };
                    holds.get(**i) && room && !fetchers.contains(&key)
                })
                .map(|(i, _)| *i)
                .collect();
            take_smallest(&mut dup, max, order)
        } else {
            Vec::new()
        };
        if !picked.is_empty() && !self.in_flight.values().any(|f| f.contains(&key)) {
            self.timing.entry(key).or_default().busy_since = Some(now);
        }
        for &i in &picked {
            self.in_flight.entry(i).or_default().push(key);
        }
        picked
    }

    /// Whether every missing chunk is being fetched (the endgame, where
    /// outstanding chunks may be asked of a second source).
    pub fn in_endgame(&self) -> bool {
        self.all_missing_in_flight()
    }

    fn all_missing_in_flight(&self) -> bool {
        self.have.missing().all(|i| self.in_flight.contains_key(&i))
    }

    /// Records a verified chunk from source `key`, which counts as
    /// delivering from now on (see [`Self::pick`]). Returns false when the
    /// chunk was already held (a duplicate from the endgame).
    pub fn received_from(&mut self, key: SourceKey, index: u32) -> bool {
        self.received_from_at(key, index, Instant::now())
    }

    /// [`Self::received_from`] at `now`.
    pub fn received_from_at(&mut self, key: SourceKey, index: u32, now: Instant) -> bool {
        self.timing.entry(key).or_default().delivered(now);
        self.delivering.insert(key);
        self.in_flight.remove(&index);
        if self.have.get(index) {
            return false;
        }
        self.have.set(index);
        true
    }

    /// Gives back a chunk `key` was asked for but did not deliver.
    pub fn release(&mut self, key: SourceKey, index: u32) {
        if let Some(fetchers) = self.in_flight.get_mut(&index) {
            fetchers.retain(|k| *k != key);
            if fetchers.is_empty() {
                self.in_flight.remove(&index);
            }
        }
    }

    /// Whether every chunk is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// The verified chunks.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// The chunks still needed, as a bitfield (for LocateSources).
    pub fn wanted(&self) -> Bitfield {
        Bitfield::of(self.have.len(), self.have.missing())
    }

    /// Whether any known source holds a chunk still needed.
    pub fn any_source_useful(&self) -> bool {
        self.have
            .missing()
            .any(|i| self.availability[i as usize] > 0)
    }
}

/// A per-seed pseudo-random permutation key for chunk `index`: a bijective
/// 32-bit mix (the finaliser of MurmurHash3), so ties never tie again.
pub(crate) fn tie_order(index: u32, seed: u32) -> u32 {
    let mut x = index ^ seed;
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

pub(crate) fn take_smallest<K: Ord>(
    items: &mut Vec<u32>,
    max: usize,
    key: impl Fn(u32) -> K,
) -> Vec<u32> {
    if max == 0 || items.is_empty() {
        return Vec::new();
    }
    if items.len() > max {
        items.select_nth_unstable_by_key(max - 1, |&i| key(i));
        items.truncate(max);
    }
    items.sort_by_key(|&i| key(i));
    std::mem::take(items)
}

/// Groups chunk indexes into runs of consecutive ones, as `(start, count)`.
pub fn to_ranges(indexes: &[u32]) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &i in indexes {
        match ranges.last_mut() {
            Some((start, count)) if *start + *count == i => *count += 1,
            _ => ranges.push((i, 1)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeder_is_asked_to_choose_only_among_chunks_nobody_else_has() {
        let mut picker = Picker::new(Bitfield::empty(6), 1);
        picker.upsert_source(1, Bitfield::full(6));
        picker.set_chooser(1, true);
        let mut peer = Bitfield::empty(6);
        peer.set(0);
        picker.upsert_source(2, peer);
        picker.add_held(2, &[1, 99]);
        let pool = picker.seed_pool(1).unwrap();
        assert_eq!(pool.held().collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        let mut from_peer = picker.pick(2, 8);
        from_peer.sort_unstable();
        assert_eq!(from_peer, vec![0, 1]);
        picker.claim(1, 2);
        let pool = picker.seed_pool(1).unwrap();
        assert_eq!(pool.held().collect::<Vec<_>>(), vec![3, 4, 5]);
        for i in 0..6 {
            picker.received_from(2, i);
        }
        assert!(picker.seed_pool(1).is_none());
    }

    /// A picker of `len` missing chunks whose source 1 is a seeder.
    fn seeded(len: u32) -> Picker {
        let mut picker = Picker::new(Bitfield::empty(len), 1);
        picker.upsert_source(1, Bitfield::full(len));
        picker.set_chooser(1, true);
        picker
    }

    /// Times source `key` as delivering a chunk every `every`, with chunks
    /// of `indexes` (the picker's own pick for a partial source, the seed
    /// pool for a chooser), from `start`; returns when it finished.
    fn timed(
        picker: &mut Picker,
        key: SourceKey,
        indexes: &[u32],
        every: Duration,
        start: Instant,
    ) -> Instant {
        let mut now = start;
        for &i in indexes {
            now += every;
            picker.received_from_at(key, i, now);
        }
        now
    }

    #[test]
    fn a_chunk_only_a_slow_peer_holds_can_come_from_the_seeder() {
        let start = Instant::now();
        let mut picker = seeded(8);
        picker.upsert_source(2, field(8, &[0, 1, 2]));
        picker.upsert_source(3, field(8, &[3, 4]));
        assert!(
            !picker.seed_pool_at(1, start).unwrap().get(0),
            "not timed yet"
        );
        // The seeder delivers a chunk every 0.1 s, peer 2 (a laptop) every
        // second, peer 3 every 0.15 s.
        let pool: Vec<u32> = picker
            .seed_pool_at(1, start)
            .unwrap()
            .held()
            .take(2)
            .collect();
        let t = timed(&mut picker, 1, &pool, Duration::from_millis(100), start);
        let own = picker.pick_at(2, 1, t);
        let t2 = timed(&mut picker, 2, &own, Duration::from_secs(1), t);
        let own = picker.pick_at(2, 1, t2);
        let t2 = timed(&mut picker, 2, &own, Duration::from_secs(1), t2);
        let own = picker.pick_at(3, 1, t);
        timed(&mut picker, 3, &own, Duration::from_millis(150), t);
        assert!(picker.chunk_time(2).unwrap() > 5 * picker.chunk_time(1).unwrap());
        let pool = picker.seed_pool_at(1, t2).unwrap();
        let left_with_peer_2: Vec<u32> = (0..3).filter(|&i| !picker.have().get(i)).collect();
        assert_eq!(left_with_peer_2.len(), 1);
        assert!(pool.get(left_with_peer_2[0]), "only the slow peer holds it");
        let left_with_peer_3: Vec<u32> = (3..5).filter(|&i| !picker.have().get(i)).collect();
        assert!(
            left_with_peer_3.iter().all(|&i| !pool.get(i)),
            "peer 3 is about as fast as the seeder: it serves its own"
        );
    }

    #[test]
    fn a_slow_relay_leaves_fresh_chunks_to_its_peers() {
        let start = Instant::now();
        let mut picker = seeded(8);
        picker.upsert_source(2, field(8, &[0, 1]));
        let own = picker.pick_at(2, 1, start);
        timed(&mut picker, 2, &own, Duration::from_millis(100), start);
        // The link holds our uploads to 1 Mbit/s; we download at 10.
        picker.set_own_rates(131_072, 1_310_720, true);
        assert!(picker.is_slow_relay());
        assert!(
            picker.seed_pool_at(1, start).is_none(),
            "peer 2 still has chunk 1"
        );
        picker.pick_at(2, 1, start);
        assert!(
            picker.seed_pool_at(1, start).is_some(),
            "with nothing left at its peers it asks the seeder"
        );
        // An upload the link does not hold back is only what peers asked
        // for: the agent could relay more.
        picker.set_own_rates(131_072, 1_310_720, false);
        assert!(!picker.is_slow_relay());
        // Two downloaders that relay equally well each upload half of what
        // they download: 3 Mbit/s against 10 is no slow relay beside one
        // peer...
        picker.set_own_rates(393_216, 1_310_720, true);
        assert!(!picker.is_slow_relay());
        // ...but is beside seven, who each upload 7/8 of what they take in.
        for peer in 3..9 {
            picker.upsert_source(peer, field(8, &[0]));
        }
        picker.set_own_rates(393_216, 1_310_720, true);
        assert!(picker.is_slow_relay());
    }

    #[test]
    fn in_the_endgame_a_seeder_may_race_a_slow_peer() {
        let start = Instant::now();
        let mut picker = seeded(4);
        picker.upsert_source(2, Bitfield::full(4));
        assert!(
            picker.seed_pool_at(1, start).is_none(),
            "peer 2 holds it all"
        );
        // Seeder at 0.1 s a chunk (chunks 0 and 1), peer 2 at 2 s.
        let t = timed(&mut picker, 1, &[0, 1], Duration::from_millis(100), start);
        let slow = picker.pick_at(2, 1, start);
        let t2 = timed(&mut picker, 2, &slow, Duration::from_secs(2), start);
        let outstanding = picker.pick_at(2, 2, t2);
        assert!(picker.in_endgame());
        let pool = picker.seed_pool_at(1, t.max(t2)).unwrap();
        assert_eq!(sorted(pool.held().collect()), sorted(outstanding));
    }

    #[test]
    fn a_peer_too_slow_to_deliver_its_first_chunk_counts_as_slow() {
        let start = Instant::now();
        let mut picker = seeded(4);
        picker.upsert_source(2, field(4, &[2, 3]));
        // The seeder delivers chunks 0 and 1 at 0.1 s each; peer 2 is asked
        // for chunk 2 and 3 and delivers nothing.
        timed(&mut picker, 1, &[0, 1], Duration::from_millis(100), start);
        let asked = picker.pick_at(2, 2, start);
        assert_eq!(sorted(asked), vec![2, 3]);
        assert!(picker.in_endgame());
        assert!(
            picker
                .seed_pool_at(1, start + Duration::from_millis(150))
                .is_none(),
            "0.15 s into its first chunk it is no slower than the seeder yet"
        );
        let later = start + Duration::from_secs(1);
        let pool = picker.seed_pool_at(1, later).expect("a pool");
        assert_eq!(sorted(pool.held().collect()), vec![2, 3]);
    }

    #[test]
    fn two_seeders_are_given_different_chunks_to_choose_from() {
        let mut picker = Picker::new(Bitfield::empty(64), 1);
        for key in [1, 2] {
            picker.upsert_source(key, Bitfield::full(64));
            picker.set_chooser(key, true);
        }
        let (a, b) = (picker.seed_pool(1).unwrap(), picker.seed_pool(2).unwrap());
        assert!(a.held().all(|i| !b.get(i)));
        assert_eq!(a.count() + b.count(), 64);
        picker.remove_source(2);
        assert_eq!(picker.seed_pool(1).unwrap().count(), 64);
    }

    fn field(len: u32, held: &[u32]) -> Bitfield {
        Bitfield::of(len, held.iter().copied())
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn rarest_chunks_are_picked_first() {
        let mut picker = Picker::new(Bitfield::empty(6), 0);
        picker.upsert_source(1, Bitfield::full(6));
        picker.upsert_source(2, field(6, &[0, 1, 2, 3]));
        // Chunks 4 and 5 are held only by source 1: they go first.
        assert_eq!(sorted(picker.pick(1, 2)), vec![4, 5]);
        let second = picker.pick(1, 2);
        assert_eq!(second.len(), 2);
        let mut rest = picker.pick(2, 4);
        rest.extend(second);
        assert_eq!(sorted(rest), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_source_is_only_given_chunks_it_holds() {
        let mut picker = Picker::new(Bitfield::empty(4), 0);
        picker.upsert_source(1, field(4, &[1, 3]));
        assert_eq!(sorted(picker.pick(1, 4)), vec![1, 3]);
        assert!(picker.pick(1, 4).is_empty());
        assert!(picker.pick(99, 4).is_empty());
    }

    #[test]
    fn chunks_already_held_are_never_picked() {
        let mut picker = Picker::new(field(4, &[0, 2]), 0);
        picker.upsert_source(1, Bitfield::full(4));
        assert_eq!(sorted(picker.pick(1, 10)), vec![1, 3]);
        assert!(picker.received_from(1, 1));
        assert!(picker.received_from(1, 3));
        assert!(picker.is_complete());
    }

    #[test]
    fn a_source_that_has_not_delivered_gets_no_endgame_duplicates() {
        let mut picker = Picker::new(Bitfield::empty(2), 0);
        picker.upsert_source(1, Bitfield::full(2));
        picker.upsert_source(2, Bitfield::full(2));
        picker.upsert_source(3, Bitfield::full(2));
        picker.upsert_source(4, Bitfield::full(2));
        // Sources 1 and 2 (connecting) hold both chunks; 3 has delivered.
        assert_eq!(sorted(picker.pick(1, 2)), vec![0, 1]);
        assert_eq!(sorted(picker.pick(2, 2)), vec![0, 1], "none is delivering");
        picker.received_from(3, 0);
        assert_eq!(
            picker.pick(3, 2),
            vec![1],
            "the connecting ones do not count"
        );
        assert!(picker.pick(4, 2).is_empty(), "a delivering source has it");
    }

    #[test]
    fn endgame_duplicates_outstanding_chunks_on_another_source() {
        let mut picker = Picker::new(Bitfield::empty(3), 0);
        picker.upsert_source(1, Bitfield::full(3));
        picker.upsert_source(2, Bitfield::full(3));
        let first = picker.pick(1, 2);
        let second = picker.pick(2, 2);
        assert_eq!(second.len(), 1);
        // Everything is in flight: source 2 may duplicate source 1's chunks,
        // but not its own, and never a third time.
        assert_eq!(sorted(picker.pick(2, 5)), sorted(first.clone()));
        assert!(picker.pick(2, 5).is_empty());
        picker.upsert_source(3, Bitfield::full(3));
        assert_eq!(picker.pick(3, 5), second, "only that chunk has one fetcher");
        assert!(picker.received_from(1, first[0]));
        assert!(
            !picker.received_from(1, first[0]),
            "the duplicate is not counted twice"
        );
    }

    #[test]
    fn chunks_of_a_failed_source_go_back_to_the_pool() {
        let mut picker = Picker::new(Bitfield::empty(4), 0);
        picker.upsert_source(1, Bitfield::full(4));
        picker.upsert_source(2, Bitfield::full(4));
        assert_eq!(sorted(picker.pick(1, 4)), vec![0, 1, 2, 3]);
        picker.remove_source(1);
        assert_eq!(sorted(picker.pick(2, 4)), vec![0, 1, 2, 3]);
        picker.release(2, 3);
        picker.upsert_source(3, Bitfield::full(4));
        assert_eq!(picker.pick(3, 4), vec![3]);
    }

    #[test]
    fn downloaders_with_different_seeds_start_in_different_places() {
        let firsts: std::collections::HashSet<Vec<u32>> = (0..8)
            .map(|seed| {
                let mut picker = Picker::new(Bitfield::empty(1024), seed);
                picker.upsert_source(1, Bitfield::full(1024));
                picker.pick(1, 4)
            })
            .collect();
        assert_eq!(firsts.len(), 8, "eight seeds, eight different first picks");
    }

    #[test]
    fn downloaders_prefer_their_own_stripe_of_equally_rare_chunks() {
        let seeder = 1;
        let mut stripes = Vec::new();
        for own in ["a", "b", "c"] {
            let stripe = Stripe::among(own, ["a", "b", "c"]);
            let mut picker = Picker::new(field(300, &[]), 7);
            picker.set_stripe(stripe);
            picker.upsert_source(seeder, Bitfield::full(300));
            let picked = picker.pick(seeder, 20);
            assert!(
                picked.iter().all(|&i| stripe.off(i) == 0),
                "{own}: {picked:?}"
            );
            stripes.push(picked);
        }
        for (i, a) in stripes.iter().enumerate() {
            for b in &stripes[i + 1..] {
                assert!(a.iter().all(|c| !b.contains(c)), "stripes overlap");
            }
        }
    }

    #[test]
    fn stripe_ranks_the_sorted_ids() {
        assert_eq!(
            Stripe::among("b", ["c", "a"]),
            Stripe {
                position: 1,
                count: 3
            }
        );
        assert_eq!(Stripe::among("z", []).count, 1);
    }

    #[test]
    fn tie_order_is_a_permutation() {
        let mut keys: Vec<u32> = (0..4096).map(|i| tie_order(i, 12345)).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 4096);
    }

    #[test]
    fn wanted_is_the_complement_of_have() {
        let picker = Picker::new(field(10, &[0, 9]), 0);
        assert_eq!(
            picker.wanted().held().collect::<Vec<_>>(),
            (1..9).collect::<Vec<_>>()
        );
        assert!(!picker.any_source_useful());
    }

    #[test]
    fn consecutive_indexes_become_ranges() {
        assert_eq!(to_ranges(&[1, 2, 3, 7, 8, 0]), vec![(1, 3), (7, 2), (0, 1)]);
        assert!(to_ranges(&[]).is_empty());
    }
}
