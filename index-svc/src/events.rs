//! The change log behind `WatchFiles`.
//!
//! Every change to the file list writes a row to `file_events` in the same
//! transaction as the change, with an increasing sequence number. Each
//! watcher polls for rows after the last sequence it has seen, so watchers
//! on any replica see changes made through any other.
//!
//! On PostgreSQL, sequence numbers are handed out before commit, so a
//! transaction holding seq 7 may commit after another holding seq 8. A
//! watcher that jumped straight past 7 would miss it; [`EventCursor`]
//! instead remembers such gaps for [`GAP_GRACE`] (a rolled-back
//! transaction leaves a gap that never fills) before moving past them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a gap in the sequence is waited for before it is taken to be a
/// rolled-back transaction.
pub const GAP_GRACE: Duration = Duration::from_secs(5);
/// Gaps wider than this are skipped at once (memory stays bounded whatever
/// the database does to its sequence).
pub const MAX_TRACKED_GAP: i64 = 10_000;

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEventKind {
    /// First published.
    Published,
    /// Removed from the network.
    Deleted,
    /// A holder appeared, disappeared, or became complete.
    HoldersChanged,
}

impl FileEventKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Deleted => "deleted",
            Self::HoldersChanged => "holders_changed",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "published" => Some(Self::Published),
            "deleted" => Some(Self::Deleted),
            "holders_changed" => Some(Self::HoldersChanged),
            _ => None,
        }
    }
}

/// One row of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log.
    pub seq: i64,
    /// What happened.
    pub kind: FileEventKind,
    /// The file it happened to.
    pub file_id: String,
    /// The file's name at the time (kept for deletions).
    pub name: String,
    /// Unix ms of the change.
    pub at_ms: i64,
}

/// A watcher's position in the log: everything at or below `after` has
/// been delivered (or given up on), plus the delivered sequence numbers
/// above it and the gaps still being waited for.
#[derive(Debug, Clone)]
pub struct EventCursor {
    after: i64,
    delivered: BTreeSet<i64>,
    gaps: BTreeMap<i64, Instant>,
}

impl EventCursor {
    /// A cursor that delivers only events after `seq`.
    pub fn starting_after(seq: i64) -> Self {
        Self {
            after: seq,
            delivered: BTreeSet::new(),
            gaps: BTreeMap::new(),
        }
    }

    /// Poll for rows with `seq >` this.
    pub fn after(&self) -> i64 {
        self.after
    }

    /// Takes the sequence numbers just read (any order) and returns those
    /// not delivered before, in ascending order; then moves the cursor past
    /// every delivered number and every gap older than [`GAP_GRACE`].
    pub fn accept(&mut self, seqs: &[i64], now: Instant) -> Vec<i64> {
        let mut fresh: Vec<i64> = seqs
            .iter()
            .copied()
            .filter(|&s| s > self.after && !self.delivered.contains(&s))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        self.delivered.extend(&fresh);
        if let Some(&max) = self.delivered.last() {
            if max - self.after > MAX_TRACKED_GAP {
                self.after = max;
                self.delivered.clear();
                self.gaps.clear();
                return fresh;
            }
            for s in self.after + 1..max {
                if !self.delivered.contains(&s) {
                    self.gaps.entry(s).or_insert(now);
                }
            }
        }
        loop {
            let next = self.after + 1;
            if self.delivered.remove(&next) {
                self.after = next;
            } else if self
                .gaps
                .get(&next)
                .is_some_and(|since| now.duration_since(*since) >= GAP_GRACE)
            {
                self.gaps.remove(&next);
                self.after = next;
            } else {
                break;
            }
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_delivers_each_event_once_in_order() {
        let t = Instant::now();
        let mut cursor = EventCursor::starting_after(10);
        assert_eq!(cursor.accept(&[12, 11], t), vec![11, 12]);
        assert_eq!(cursor.after(), 12);
        assert_eq!(cursor.accept(&[11, 12, 13], t), vec![13]);
        assert_eq!(cursor.after(), 13);
    }

    #[test]
    fn late_commit_behind_a_gap_is_still_delivered() {
        let t = Instant::now();
        let mut cursor = EventCursor::starting_after(0);
        assert_eq!(cursor.accept(&[1, 3], t), vec![1, 3]);
        assert_eq!(cursor.after(), 1, "waits at the gap");
        assert_eq!(
            cursor.accept(&[2, 3], t + Duration::from_millis(300)),
            vec![2]
        );
        assert_eq!(cursor.after(), 3);
    }

    #[test]
    fn rolled_back_gap_is_skipped_after_grace() {
        let t = Instant::now();
        let mut cursor = EventCursor::starting_after(0);
        cursor.accept(&[1, 3], t);
        assert!(cursor.accept(&[3], t + Duration::from_secs(1)).is_empty());
        assert_eq!(cursor.after(), 1);
        cursor.accept(&[3], t + GAP_GRACE);
        assert_eq!(cursor.after(), 3);
    }
}
