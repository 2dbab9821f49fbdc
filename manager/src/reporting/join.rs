//! Joins downloads across range requests: did this user get the whole file, even in
//! pieces?
//!
//! For each (tag, file identity) the manager keeps the union of the byte ranges that
//! downloads delivered completely (outcome `complete`, status 200 or 206) within the join
//! window. The file identity is what the ETag is made of (device, inode, size, mtime), so
//! a file replaced under the same name starts a new union. A completion record says
//! `file_complete: true` once the union covers the whole file: two range requests that
//! together deliver every byte count as one complete download, and so do resumed,
//! segmented and accelerated downloads.
//!
//! Memory is bounded:
//! - at most `max_entries` (tag, file) entries; when a new one would exceed that, the oldest
//!   entry is evicted first;
//! - an entry is forgotten `window` after its first range (so only ranges delivered within
//!   the window are joined; a union is never older than the window);
//! - an entry keeps at most [`MAX_INTERVALS`] disjoint intervals; beyond that the smallest
//!   is forgotten (a client fetching thousands of scattered ranges may then not be
//!   reported complete, the safe direction).
//!
//! So an entry costs at most about 1 KiB (tag ≤ 256 bytes, 32 intervals of 16 bytes, map
//! and queue overhead), and the whole table at most `max_entries` KiB.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most disjoint intervals kept per entry.
pub const MAX_INTERVALS: usize = 32;

/// The parts of a file's ETag: which file, in which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

/// A set of byte positions as sorted, disjoint, non-touching half-open intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    intervals: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Adds `[start, end)`, merging with every interval it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First interval that ends at or after `start` (it may touch or overlap).
        let first = self.intervals.partition_point(|&(_, e)| e < start);
        // First interval that starts after `end` (it neither overlaps nor touches).
        let last = self.intervals.partition_point(|&(s, _)| s <= end);
        let mut merged = (start, end);
        if first < last {
            merged.0 = merged.0.min(self.intervals[first].0);
            merged.1 = merged.1.max(self.intervals[last - 1].1);
        }
        self.intervals.splice(first..last, [merged]);
    }

    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.intervals.iter().map(|&(s, e)| e - s).sum()
    }

    /// Whether every byte of `[0, size)` is in the set.
    pub fn covers(&self, size: u64) -> bool {
        size == 0
            || self
                .intervals
                .first()
                .is_some_and(|&(s, e)| s == 0 && e >= size)
    }

    /// Forgets the smallest intervals until at most `max` are left.
    fn limit(&mut self, max: usize) {
        while self.intervals.len() > max {
            if let Some(i) = (0..self.intervals.len()).min_by_key(|&i| {
                let (s, e) = self.intervals[i];
                e - s
            }) {
                self.intervals.remove(i);
            }
        }
    }

    pub fn intervals(&self) -> &[(u64, u64)] {
        &self.intervals
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tag: Arc<str>,
    file: FileId,
}

struct Entry {
    seq: u64,
    since: Instant,
    ranges: RangeSet,
}

/// What the union says after a download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Joined {
    /// Bytes of the file delivered completely under this tag within the window.
    pub bytes: u64,
    /// Those bytes are the whole file.
    pub file_complete: bool,
}

/// The table of unions, oldest first.
pub struct Joins {
    map: HashMap<Key, Entry>,
    /// Entries in creation order, for expiry and eviction.
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
    window: Duration,
    max_entries: usize,
}

impl Joins {
    pub fn new(window: Duration, max_entries: usize) -> Joins {
        Joins {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            window,
            max_entries: max_entries.max(1),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records a finished download of `file` under `tag`: its file ranges (offset,
    /// length) join the union if `delivered` (it completed with a body). Returns the
    /// union's state.
    pub fn add(
        &mut self,
        tag: &str,
        file: FileId,
        ranges: &[(u64, u64)],
        delivered: bool,
        now: Instant,
    ) -> Joined {
        self.expire(now);
        let key = Key {
            tag: Arc::from(tag),
            file,
        };
        if !delivered || ranges.is_empty() {
            return match self.map.get(&key) {
                Some(e) => joined(&e.ranges, file.size),
                None => Joined {
                    bytes: 0,
                    file_complete: false,
                },
            };
        }
        if !self.map.contains_key(&key) && self.map.len() >= self.max_entries {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        let entry = match self.map.entry(key.clone()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                self.next_seq += 1;
                self.order.push_back((seq, key));
                v.insert(Entry {
                    seq,
                    since: now,
                    ranges: RangeSet::default(),
                })
            }
        };
        for &(offset, length) in ranges {
            entry
                .ranges
                .insert(offset, offset.saturating_add(length).min(file.size));
        }
        entry.ranges.limit(MAX_INTERVALS);
        joined(&entry.ranges, file.size)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((seq, key)) = self.order.front() {
            match self.map.get(key) {
                Some(e) if e.seq == *seq && now.duration_since(e.since) <= self.window => break,
                Some(e) if e.seq == *seq => {
                    self.map.remove(key);
                }
                _ => {}
            }
            self.order.pop_front();
        }
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to_fit();
            self.map.shrink_to_fit();
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
                return;
            }
        }
    }
}

fn joined(ranges: &RangeSet, size: u64) -> Joined {
    Joined {
        bytes: ranges.covered(),
        file_complete: ranges.covers(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(intervals: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in intervals {
            s.insert(a, b);
        }
        s
    }

    #[test]
    fn union_merges_overlapping_and_touching_intervals() {
        assert_eq!(set(&[(0, 10), (20, 30)]).intervals(), &[(0, 10), (20, 30)]);
        assert_eq!(set(&[(0, 10), (10, 20)]).intervals(), &[(0, 20)]);
        assert_eq!(set(&[(10, 20), (0, 10)]).intervals(), &[(0, 20)]);
        assert_eq!(set(&[(0, 10), (5, 15)]).intervals(), &[(0, 15)]);
        assert_eq!(
            set(&[(0, 5), (10, 15), (20, 25), (4, 21)]).intervals(),
            &[(0, 25)]
        );
        assert_eq!(set(&[(5, 8), (0, 100)]).intervals(), &[(0, 100)]);
        assert_eq!(set(&[(0, 100), (5, 8)]).intervals(), &[(0, 100)]);
        assert_eq!(
            set(&[(30, 40), (0, 10), (15, 20)]).intervals(),
            &[(0, 10), (15, 20), (30, 40)]
        );
        assert_eq!(set(&[(7, 7)]).intervals(), &[]);
        assert_eq!(set(&[(0, 10), (20, 30)]).covered(), 20);
    }

    #[test]
    fn covers_only_from_zero_to_the_end() {
        assert!(set(&[(0, 50), (50, 100)]).covers(100));
        assert!(set(&[(0, 200)]).covers(100));
        assert!(!set(&[(0, 50), (51, 100)]).covers(100));
        assert!(!set(&[(1, 100)]).covers(100));
        assert!(!RangeSet::default().covers(1));
        assert!(RangeSet::default().covers(0));
    }

    #[test]
    fn intervals_are_bounded_by_forgetting_the_smallest() {
        let mut s = RangeSet::default();
        for i in 0..40u64 {
            s.insert(i * 100, i * 100 + 1 + i);
        }
        s.limit(MAX_INTERVALS);
        assert_eq!(s.intervals().len(), MAX_INTERVALS);
        assert_eq!(s.intervals()[0], (800, 809));
    }

    fn file(size: u64) -> FileId {
        FileId {
            dev: 1,
            ino: 2,
            size,
            mtime_sec: 3,
            mtime_nsec: 4,
        }
    }

    #[test]
    fn two_ranges_under_one_tag_complete_the_file() {
        let t0 = Instant::now();
        let mut j = Joins::new(Duration::from_secs(60), 10);
        let first = j.add("u:1", file(100), &[(0, 60)], true, t0);
        assert_eq!(
            first,
            Joined {
                bytes: 60,
                file_complete: false
            }
        );
        // Another tag, or another version of the file, does not join.
        assert!(!j.add("u:2", file(100), &[(60, 40)], true, t0).file_complete);
        let mut newer = file(100);
        newer.mtime_sec += 1;
        assert!(!j.add("u:1", newer, &[(60, 40)], true, t0).file_complete);
        // An aborted download adds nothing, but is told the union so far.
        assert_eq!(j.add("u:1", file(100), &[(60, 40)], false, t0).bytes, 60);
        let second = j.add("u:1", file(100), &[(50, 50)], true, t0);
        assert_eq!(
            second,
            Joined {
                bytes: 100,
                file_complete: true
            }
        );
    }

    #[test]
    fn entries_expire_after_the_window() {
        let t0 = Instant::now();
        let mut j = Joins::new(Duration::from_secs(60), 10);
        j.add("u:1", file(100), &[(0, 60)], true, t0);
        let later = t0 + Duration::from_secs(61);
        let r = j.add("u:1", file(100), &[(60, 40)], true, later);
        assert!(!r.file_complete);
        assert_eq!(r.bytes, 40);
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn the_oldest_entry_is_evicted_first() {
        let t0 = Instant::now();
        let mut j = Joins::new(Duration::from_secs(60), 2);
        j.add("a", file(100), &[(0, 50)], true, t0);
        j.add("b", file(100), &[(0, 50)], true, t0);
        // Updating "a" does not make it younger: eviction is by age of the union.
        j.add("a", file(100), &[(0, 10)], true, t0);
        j.add("c", file(100), &[(0, 50)], true, t0);
        assert_eq!(j.len(), 2);
        assert!(!j.add("a", file(100), &[(50, 50)], true, t0).file_complete);
        assert!(j.len() <= 2);
        assert!(j.add("c", file(100), &[(50, 50)], true, t0).file_complete);
    }
}
