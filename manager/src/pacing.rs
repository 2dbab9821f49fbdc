//! Start pacing: how the first bytes of relayed downloads are fed to the web server.
//!
//! Behind nginx (FastCGI) every byte the manager writes is copied by the web server
//! through user space, once out of our socket and once into the client's. A new
//! download's first bytes do not wait for its client: they fill the socket buffers between
//! the web server and the client, which the kernel grows to megabytes on a fast link (the
//! first fill). When a thousand downloads start within a second, the web server has
//! gigabytes to copy at once, and while it copies, every other page of the site waits in
//! its event loop: the storm benchmark (S1) measured probe pages at 0.1 to 0.7 s behind a
//! relay, against a few milliseconds with X-Accel-Redirect, which fills the same buffers
//! with `sendfile` and no copy. Worse, each readiness event of one download makes nginx
//! relay until the client's buffer is full, so a batch of such events holds its event
//! loop for a long time.
//!
//! So while a relayed download is in its start phase (its first `start_bytes` written),
//! the manager feeds it, after its first [`FREE`] bytes, in rounds of [`ROUND`]: in each round the start-phase downloads
//! share `rate × ROUND` bytes, each at most an equal share of that, and never less than
//! [`MIN_SHARE`]. A download that has used its share waits for the next round; a round's
//! budget spent, everyone waits. Few downloads starting at once get large shares and are
//! not slowed down (one download alone gets the whole budget, more than a socket buffer
//! takes per round); many get small, equal ones, so the web server does a bounded amount
//! of work per readiness event and per round and gets to its other requests in between.
//! After its start phase a download writes as fast as the web server takes it. Downloads
//! no longer than the start phase are not paced at all (the benchmark's 256 KiB files ran
//! at the start rate's limit when they were). Raw HTTP
//! downloads (`php -S`, mod_php) are not paced: the kernel fills their buffers without
//! a copy in user space.
//!
//! This type only keeps the accounts; the download loop does the writing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use handoff_core::bucket::TokenBucket;

/// A download's first bytes, its response head among them, are not paced: pacing must
/// never keep a client waiting for the head (a burst of a thousand new downloads would
/// otherwise wait for rounds before the last one saw its first byte).
pub const FREE: u64 = 64 << 10;
/// The length of a round.
pub const ROUND: Duration = Duration::from_millis(5);
/// The smallest share per download and round (when many downloads share a round, the
/// round's budget runs out before everyone got a turn; the next round goes on in order).
pub const MIN_SHARE: u64 = 64 << 10;

/// Settings: the budget rate and the length of the start phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceConfig {
    /// Bytes per second the start phases share (0: no pacing).
    pub rate: u64,
    /// Bytes a download writes in its start phase (0: no pacing).
    pub start_bytes: u64,
}

impl PaceConfig {
    pub fn enabled(&self) -> bool {
        self.rate > 0 && self.start_bytes > 0
    }
}

/// The budget of one round at `rate` bytes/s.
fn round_budget(rate: u64) -> u64 {
    let per_round = rate as u128 * ROUND.as_nanos() / 1_000_000_000;
    u64::try_from(per_round).unwrap_or(u64::MAX).max(1)
}

/// The accounts of one download loop's start pacing.
#[derive(Debug)]
pub struct Pacer {
    config: PaceConfig,
    /// When the current round ends.
    round_end: Instant,
    /// The rounds' budget: filled at the rate, holding at most one round's worth.
    budget: TokenBucket,
    /// Each download's share in the current round.
    share: u64,
    /// Bytes written this round, per download.
    used: HashMap<usize, u64>,
    /// Downloads waiting for the next round, in turn.
    waiting: VecDeque<usize>,
    queued: HashSet<usize>,
}

impl Pacer {
    pub fn new(config: PaceConfig, now: Instant) -> Pacer {
        Pacer {
            config,
            round_end: now,
            budget: TokenBucket::full(config.rate, round_budget(config.rate) as f64, now),
            share: 0,
            used: HashMap::new(),
            waiting: VecDeque::new(),
            queued: HashSet::new(),
        }
    }

    /// The length of the start phase.
    pub fn start_bytes(&self) -> u64 {
        self.config.start_bytes
    }

    /// Starts a new round if the current one is over. Returns the downloads that waited
    /// for it, in turn; the caller offers each one its share (and [`Pacer::defer`]s those
    /// that still want more). The round's budget is shared by as many downloads as wrote
    /// or waited in the last round.
    pub fn begin_round(&mut self, now: Instant) -> Option<Vec<usize>> {
        if now < self.round_end {
            return None;
        }
        let in_start = self.used.len()
            + self
                .waiting
                .iter()
                .filter(|w| !self.used.contains_key(w))
                .count();
        // Rounds follow each other on the clock; after an idle spell the next one starts
        // now rather than catching up.
        self.round_end = if now.duration_since(self.round_end) < ROUND {
            self.round_end + ROUND
        } else {
            now + ROUND
        };
        self.budget.refill(now);
        let budget = round_budget(self.config.rate);
        self.share = (budget / in_start.max(1) as u64).max(MIN_SHARE);
        self.used.clear();
        self.queued.clear();
        Some(std::mem::take(&mut self.waiting).into())
    }

    /// How many bytes download `id` may write now; `None`: wait for the next round.
    pub fn allowance(&self, id: usize) -> Option<u64> {
        let used = self.used.get(&id).copied().unwrap_or(0);
        let left = self.budget.tokens().max(0.0) as u64;
        let allowed = self.share.saturating_sub(used).min(left);
        (allowed > 0).then_some(allowed)
    }

    /// Counts `bytes` written by download `id` in its start phase.
    pub fn charge(&mut self, id: usize, bytes: u64) {
        if bytes == 0 {
            return;
        }
        *self.used.entry(id).or_insert(0) += bytes;
        self.budget.take(bytes);
    }

    /// Download `id` wants to write but has no allowance left: it waits for the next
    /// round (once, however often it asks).
    pub fn defer(&mut self, id: usize) {
        if self.queued.insert(id) {
            self.waiting.push_back(id);
        }
    }

    /// When the loop must wake up for the next round, if anyone waits for it.
    pub fn wake_at(&self) -> Option<Instant> {
        (!self.waiting.is_empty()).then_some(self.round_end)
    }

    /// Download `id` is gone.
    pub fn forget(&mut self, id: usize) {
        self.used.remove(&id);
        if self.queued.remove(&id) {
            self.waiting.retain(|&w| w != id);
        }
    }

    /// Gives back the room of a burst's tables.
    pub fn shrink(&mut self) {
        self.used.shrink_to_fit();
        self.waiting.shrink_to_fit();
        self.queued.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    /// What one round of 1 GiB/s holds.
    const ROUND_OF_GIB: u64 = (GIB as u128 * ROUND.as_nanos() / 1_000_000_000) as u64;

    /// A pacer whose last round saw `active` downloads write.
    fn after_round_with(rate: u64, active: usize) -> (Pacer, Instant) {
        let (mut p, now) = pacer(rate);
        p.begin_round(now);
        for id in 0..active {
            p.charge(10_000 + id, 1);
        }
        let next = now + ROUND;
        p.begin_round(next);
        (p, next)
    }

    fn pacer(rate: u64) -> (Pacer, Instant) {
        let now = Instant::now();
        let p = Pacer::new(
            PaceConfig {
                rate,
                start_bytes: 4 << 20,
            },
            now,
        );
        (p, now)
    }

    #[test]
    fn a_download_alone_gets_the_whole_round() {
        let (mut p, now) = pacer(GIB);
        assert_eq!(p.begin_round(now), Some(vec![]));
        let budget = ROUND_OF_GIB;
        assert_eq!(p.allowance(7), Some(budget));
        p.charge(7, 300 << 10);
        assert_eq!(p.allowance(7), Some(budget - (300 << 10)));
    }

    #[test]
    fn many_downloads_share_a_round_equally_but_never_below_the_minimum() {
        let (p, _) = after_round_with(GIB, 10);
        assert_eq!(p.allowance(1), Some(ROUND_OF_GIB / 10));
        let (mut p, _) = after_round_with(GIB, 1000);
        assert_eq!(p.allowance(1), Some(MIN_SHARE));
        p.charge(1, MIN_SHARE);
        assert_eq!(p.allowance(1), None, "its share is used up");
        assert_eq!(
            p.allowance(2),
            Some(MIN_SHARE),
            "the others still have theirs"
        );
    }

    #[test]
    fn a_spent_round_stops_everyone_until_the_next() {
        let (mut p, now) = after_round_with(GIB, 1000);
        let budget = ROUND_OF_GIB;
        let mut id = 0;
        while let Some(a) = p.allowance(id) {
            p.charge(id, a);
            id += 1;
        }
        assert_eq!(id as u64, budget.div_ceil(MIN_SHARE));
        assert_eq!(p.allowance(id + 1), None);
        p.defer(id + 1);
        assert_eq!(p.wake_at(), Some(now + ROUND));
        assert_eq!(p.begin_round(now + ROUND / 2), None, "not yet");
        assert_eq!(p.begin_round(now + ROUND), Some(vec![id + 1]));
        assert!(
            p.allowance(0).is_some_and(|a| a >= MIN_SHARE),
            "a new round, new shares"
        );
    }

    #[test]
    fn waiting_downloads_keep_their_turn_and_are_queued_once() {
        let (mut p, now) = pacer(GIB);
        p.begin_round(now);
        for id in [3, 1, 3, 2, 1] {
            p.defer(id);
        }
        p.forget(1);
        assert_eq!(p.begin_round(now + ROUND), Some(vec![3, 2]));
        assert_eq!(
            p.allowance(3),
            Some(ROUND_OF_GIB / 2),
            "shared by the two that waited"
        );
        assert_eq!(p.wake_at(), None, "nobody waits");
    }

    #[test]
    fn rounds_keep_to_the_clock_but_do_not_catch_up_after_idling() {
        let (mut p, now) = pacer(GIB);
        p.begin_round(now);
        p.begin_round(now + ROUND + Duration::from_millis(3));
        p.defer(1);
        assert_eq!(p.wake_at(), Some(now + 2 * ROUND));
        let later = now + Duration::from_secs(5);
        p.begin_round(later);
        p.defer(1);
        assert_eq!(p.wake_at(), Some(later + ROUND));
    }

    #[test]
    fn a_tiny_rate_still_moves_a_byte_per_round() {
        let (mut p, now) = pacer(1);
        p.begin_round(now);
        assert_eq!(p.allowance(1), Some(1));
    }
}
