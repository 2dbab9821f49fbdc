//! Shared bandwidth: downloads with the same `rate_group` (send_file()'s option, e.g. a
//! user id) share one token bucket of `rate` bytes/s, across all their connections and
//! across the download loops. A per-connection limit is bypassed by opening several
//! connections; a per-group limit is not.
//!
//! A group is created when its first download starts and freed when its last one ends, so
//! the table holds only groups with running downloads (`handoff_rate_groups` gauge). The
//! bucket's rate is the `rate` of the group's most recent download. Buckets are
//! `Arc<Mutex<_>>`: a download takes its share under a short lock, writes, then pays for
//! what it wrote; two loops writing at once may overdraw the bucket briefly, and then both
//! wait until it refills, so the average holds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::reporting::stats::Counters;
use handoff_core::bucket::TokenBucket;

/// A group's bucket and how many downloads share it.
struct Bucket {
    bucket: TokenBucket,
    members: usize,
}

/// Most tokens held: 1/8 s of the rate, at least 16 KiB (as a single download's limit).
fn burst(rate: u64) -> f64 {
    (rate / 8).max(16 * 1024) as f64
}

/// The most one download takes at a time, so that the group's downloads take turns: 1/20 s
/// of the rate, at least 4 KiB.
fn quantum(rate: u64) -> f64 {
    ((rate / 20).max(4096) as f64).min(burst(rate))
}

/// The live groups, shared by every download loop.
pub struct Groups {
    map: Mutex<HashMap<String, Arc<Mutex<Bucket>>>>,
    counters: Arc<Counters>,
}

/// One download's membership in a group; leaving happens on drop.
pub struct Member {
    name: String,
    bucket: Arc<Mutex<Bucket>>,
    groups: Arc<Groups>,
}

impl Groups {
    pub fn new(counters: Arc<Counters>) -> Arc<Groups> {
        Arc::new(Groups {
            map: Mutex::new(HashMap::new()),
            counters,
        })
    }

    /// Joins (or creates) group `name`, whose bucket then fills at `rate` bytes/s.
    pub fn join(self: &Arc<Groups>, name: &str, rate: u64, now: Instant) -> Member {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = map
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Bucket {
                    bucket: TokenBucket::full(rate, burst(rate.max(1)), now),
                    members: 0,
                }))
            })
            .clone();
        self.publish(map.len());
        drop(map);
        if let Ok(mut b) = bucket.lock() {
            let rate = rate.max(1);
            b.bucket.set(rate, burst(rate), now);
            b.members += 1;
        }
        Member {
            name: name.to_string(),
            bucket,
            groups: self.clone(),
        }
    }

    /// Groups alive now.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, live: usize) {
        self.counters
            .rate_groups
            .store(live as u64, Ordering::Relaxed);
    }
}

impl Member {
    /// How many bytes this download may write now, or when to ask again.
    pub fn allowance(&self, now: Instant) -> Result<usize, Instant> {
        let Ok(mut b) = self.bucket.lock() else {
            return Ok(usize::MAX);
        };
        // A whole quantum or nothing: a few full writes, not a wake-up per byte.
        let quantum = quantum(b.bucket.rate());
        let tokens = b.bucket.available(now) as f64;
        if tokens >= quantum {
            return Ok(tokens.min(quantum) as usize);
        }
        let wait = b.bucket.time_until(quantum);
        Err(now + wait.max(Duration::from_millis(1)))
    }

    /// Pays for bytes written.
    pub fn charge(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Ok(mut b) = self.bucket.lock() {
            b.bucket.take(bytes);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut map = self.groups.map.lock().unwrap_or_else(|e| e.into_inner());
        let last = match self.bucket.lock() {
            Ok(mut b) => {
                b.members = b.members.saturating_sub(1);
                b.members == 0
            }
            Err(_) => true,
        };
        if last {
            map.remove(&self.name);
        }
        self.groups.publish(map.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes the members of one group may write in `secs` seconds when each writes its
    /// whole allowance every millisecond.
    fn drain(members: &[Member], t0: Instant, secs: u64) -> u64 {
        let mut total = 0;
        for ms in 0..secs * 1000 {
            let now = t0 + Duration::from_millis(ms);
            for m in members {
                if let Ok(n) = m.allowance(now) {
                    m.charge(n as u64);
                    total += n as u64;
                }
            }
        }
        total
    }

    #[test]
    fn members_share_one_rate() {
        let groups = Groups::new(Arc::new(Counters::default()));
        let t0 = Instant::now();
        let rate = 1 << 20;
        let one = vec![groups.join("u:1", rate, t0)];
        let alone = drain(&one, t0, 4);
        let t1 = t0 + Duration::from_secs(10);
        let three = vec![
            groups.join("u:2", rate, t1),
            groups.join("u:2", rate, t1),
            groups.join("u:2", rate, t1),
        ];
        let together = drain(&three, t1, 4);
        for total in [alone, together] {
            // 4 s at 1 MiB/s plus the initial burst of 128 KiB.
            assert!(
                (4 * rate..=4 * rate + rate / 8 + 4096).contains(&total),
                "{total} bytes in 4 s"
            );
        }
    }

    #[test]
    fn a_loop_with_an_older_now_does_not_get_the_same_time_twice() {
        let groups = Groups::new(Arc::new(Counters::default()));
        let t0 = Instant::now();
        let m = groups.join("g", 1 << 20, t0);
        let spend_all = |now| {
            while let Ok(n) = m.allowance(now) {
                m.charge(n as u64);
            }
        };
        spend_all(t0);
        let t1 = t0 + Duration::from_millis(100);
        spend_all(t1);
        // Another loop, whose `now` was taken a little earlier.
        assert!(m.allowance(t0 + Duration::from_millis(50)).is_err());
        assert!(m.allowance(t1).is_err());
    }

    #[test]
    fn groups_are_freed_when_their_last_member_leaves() {
        let counters = Arc::new(Counters::default());
        let groups = Groups::new(counters.clone());
        let t0 = Instant::now();
        let a = groups.join("a", 1000, t0);
        let b = groups.join("a", 1000, t0);
        let c = groups.join("c", 1000, t0);
        assert_eq!(groups.len(), 2);
        assert_eq!(Counters::get(&counters.rate_groups), 2);
        drop(a);
        assert_eq!(groups.len(), 2);
        drop(b);
        drop(c);
        assert!(groups.is_empty());
        assert_eq!(Counters::get(&counters.rate_groups), 0);
    }
}
