//! Relay pacing: how downloads relayed by a web server (FastCGI) are fed to it.
//!
//! Behind nginx every byte the manager writes is copied by the web server through user
//! space, once out of our socket and once into the client's. A new download's first bytes
//! do not wait for its client: they fill the socket buffers between the web server and the
//! client, which the kernel grows to megabytes (the first fill). When a thousand downloads
//! start within a second, the web server has gigabytes to copy at once, and while it
//! copies, every other page of the site waits in its event loop. X-Accel-Redirect fills the
//! same buffers with `sendfile` and no copy. A fixed start rate was measured wrong both
//! ways: too fast for one nginx worker (probe p99 4.8 s), too slow for the clients when
//! raised high enough for nginx (147 KB/s of 205 each). So the feed follows what the web
//! server actually takes:
//!
//! - **A first window** of `start_bytes` (the head among them) goes out at once: pacing
//!   never keeps a client waiting for its head. Downloads no longer than it are never
//!   paced.
//! - **Each download then gets bytes as fast as its connection drains**: it writes only
//!   when its socket reports room (the socket's send buffer, a few hundred KiB, is its
//!   window), at most a [`QUANTUM`] per turn, and the downloads waiting for the budget take
//!   turns in order.
//! - **All relayed downloads together get at most [`GAIN`] × what the web server relayed in
//!   an [`INTERVAL`]** (the best of the last [`WINDOW`]), measured, not assumed: the loop sums, over its relayed
//!   sockets, the bytes that left them (bytes written minus the growth of `SIOCOUTQ`, the
//!   bytes still unread in the socket). While the web server keeps up, the budget grows by
//!   [`GAIN`] per interval (from 32 MiB/s to 1 GiB/s in about 0.2 s); when it falls behind,
//!   the budget falls to what it relays, so the queue builds in our sockets (where it
//!   costs the web server nothing) instead of in its event loop. The budget never falls
//!   below `rate` (`--relay-start-rate`), so a quiet site starts fast.
//!
//! Raw HTTP downloads (`php -S`, mod_php) are not paced: the kernel fills their buffers
//! without a copy in user space. `--max-rate`, `rate` and `rate_group` are asked on every
//! write as well: pacing only ever lowers what they allow.
//!
//! This type only keeps the accounts; the download loop does the writing and measuring.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use handoff_core::bucket::TokenBucket;

/// How often the budget follows the measured drain.
pub const INTERVAL: Duration = Duration::from_millis(25);
/// How much more than the web server relayed in the last interval the downloads may get
/// in the next: the headroom that lets the feed grow while the web server keeps up.
pub const GAIN: f64 = 1.5;
/// How many intervals the measured pace is remembered: the budget follows the best of them.
pub const WINDOW: usize = 4;
/// How often downloads waiting for the budget get their turn.
pub const ROUND: Duration = Duration::from_millis(5);
/// The most one download writes per turn: the others get theirs in between, so the web
/// server's work per readiness event stays small.
pub const QUANTUM: u64 = 128 << 10;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceConfig {
    /// The budget's floor in bytes per second, for this loop (0: no pacing).
    pub rate: u64,
    /// The first window, written at once (0: no pacing).
    pub start_bytes: u64,
}

impl PaceConfig {
    pub fn enabled(&self) -> bool {
        self.rate > 0 && self.start_bytes > 0
    }
}

/// The accounts of one download loop's relay pacing.
#[derive(Debug)]
pub struct Pacer {
    config: PaceConfig,
    /// What relayed downloads may write, filled at the adaptive rate; holds one interval.
    budget: TokenBucket,
    /// When the current measuring interval ends, and whether the budget ran dry in it.
    interval_end: Instant,
    starved: bool,
    /// What the relayed sockets drained per second in the last [`WINDOW`] intervals.
    recent: [f64; WINDOW],
    slot: usize,
    /// When the next round of turns is due.
    round_end: Instant,
    /// Downloads waiting for the budget, in turn (each once).
    waiting: VecDeque<usize>,
    queued: HashSet<usize>,
}

/// A bucket holding one interval of `rate` (at least one quantum): a loop that gets the
/// CPU late (a busy machine) still finds what it was owed, or it would fall behind its
/// budget, measure less drain and shrink the budget for nothing.
fn capacity(rate: u64) -> f64 {
    (rate as f64 * INTERVAL.as_secs_f64()).max(QUANTUM as f64)
}

impl Pacer {
    pub fn new(config: PaceConfig, now: Instant) -> Pacer {
        let rate = config.rate.max(1);
        Pacer {
            config,
            budget: TokenBucket::full(rate, capacity(rate), now),
            interval_end: now + INTERVAL,
            starved: false,
            recent: [0.0; WINDOW],
            slot: 0,
            round_end: now,
            waiting: VecDeque::new(),
            queued: HashSet::new(),
        }
    }

    /// The first window.
    pub fn start_bytes(&self) -> u64 {
        self.config.start_bytes
    }

    /// The budget's rate now, bytes/s.
    pub fn rate(&self) -> u64 {
        self.budget.rate()
    }

    /// Whether a measuring interval is over: then the loop measures what its relayed
    /// sockets drained and calls [`Pacer::measured`].
    pub fn due(&self, now: Instant) -> bool {
        now >= self.interval_end
    }

    /// The relayed sockets drained `drained` bytes since the last call: the next interval's
    /// rate is [`GAIN`] × the best drain rate of the last [`WINDOW`] intervals when the
    /// budget was what held the downloads back, and
    /// never below the floor. When the budget did not run dry the downloads did not want
    /// more, and it stays (it grows only while used up, so an idle spell does not leave a
    /// rate nobody measured).
    pub fn measured(&mut self, drained: u64, now: Instant) {
        let since = self.interval_end.checked_sub(INTERVAL).unwrap_or(now);
        let secs = now.saturating_duration_since(since).as_secs_f64().max(1e-3);
        // The best of the last few intervals: one interval in which the web server was off
        // the CPU (a busy machine) must not throw the budget back to the floor.
        self.recent[self.slot % self.recent.len()] = drained as f64 / secs;
        self.slot += 1;
        let relayed = self.recent.iter().copied().fold(0.0, f64::max);
        let current = self.budget.rate() as f64;
        let next = if self.starved {
            GAIN * relayed
        } else {
            current.min(GAIN * relayed)
        };
        let next = (next as u64).max(self.config.rate.max(1));
        self.budget.set(next, capacity(next), now);
        self.starved = false;
        self.interval_end = now + INTERVAL;
    }

    /// How many bytes a download past its first window may write now (at most a quantum);
    /// `None`: wait for the next round.
    pub fn allowance(&mut self, now: Instant) -> Option<u64> {
        let n = self.budget.available(now).min(QUANTUM);
        if n == 0 {
            self.starved = true;
        }
        (n > 0).then_some(n)
    }

    /// Counts `bytes` written past a first window.
    pub fn charge(&mut self, bytes: u64) {
        self.budget.take(bytes);
    }

    /// Download `id` wants to write but the budget is spent: it waits for the next round
    /// (once, however often it asks).
    pub fn defer(&mut self, id: usize) {
        if self.queued.insert(id) {
            self.waiting.push_back(id);
        }
    }

    /// When a round is due and someone waits for it: the downloads that waited, in turn;
    /// the caller offers each its turn (and [`Pacer::defer`]s those that still want more).
    pub fn begin_round(&mut self, now: Instant) -> Option<Vec<usize>> {
        if now < self.round_end || self.waiting.is_empty() {
            return None;
        }
        self.round_end = now + ROUND;
        self.queued.clear();
        Some(std::mem::take(&mut self.waiting).into())
    }

    /// When the loop must wake up: for the next round if anyone waits for it, and for the
    /// next measurement.
    pub fn wake_at(&self) -> Instant {
        if self.waiting.is_empty() {
            self.interval_end
        } else {
            self.round_end
                .max(self.budget.ready_at(1.0))
                .min(self.interval_end)
        }
    }

    /// Download `id` is gone.
    pub fn forget(&mut self, id: usize) {
        if self.queued.remove(&id) {
            self.waiting.retain(|&w| w != id);
        }
    }

    /// Gives back the room of a burst's tables.
    pub fn shrink(&mut self) {
        self.waiting.shrink_to_fit();
        self.queued.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pacer(floor: u64) -> (Pacer, Instant) {
        let now = Instant::now();
        let p = Pacer::new(
            PaceConfig {
                rate: floor,
                start_bytes: 64 << 10,
            },
            now,
        );
        (p, now)
    }

    /// Spends the whole budget at `now` (the downloads want more than it holds).
    fn spend_all(p: &mut Pacer, now: Instant) -> u64 {
        let mut spent = 0;
        while let Some(n) = p.allowance(now) {
            p.charge(n);
            spent += n;
        }
        spent
    }

    #[test]
    fn the_budget_grows_while_the_web_server_takes_everything() {
        let (mut p, t0) = pacer(16 * MIB);
        assert_eq!(p.rate(), 16 * MIB);
        let mut now = t0;
        for _ in 0..20 {
            // The web server relays all it was given in the interval.
            let mut given = spend_all(&mut p, now);
            for step in 1..=10 {
                given += spend_all(&mut p, now + INTERVAL * step / 10);
            }
            now += INTERVAL;
            p.measured(given, now);
        }
        assert!(
            p.rate() > 512 * MIB,
            "after 1 s of full drain the budget is {} B/s",
            p.rate()
        );
    }

    #[test]
    fn the_budget_falls_to_what_the_web_server_relays_with_headroom() {
        let (mut p, t0) = pacer(16 * MIB);
        let mut now = t0;
        // Grown to a high rate first.
        for _ in 0..30 {
            spend_all(&mut p, now);
            now += INTERVAL;
            p.measured(100 * MIB, now);
        }
        assert!(p.rate() > GIB_PER_S);
        // The web server now relays 100 MiB/s: one slow interval is not enough to lower
        // the budget (a web server off the CPU for a moment), a window of them is.
        let slow = (100.0 * MIB as f64 * INTERVAL.as_secs_f64()) as u64;
        spend_all(&mut p, now);
        now += INTERVAL;
        p.measured(slow, now);
        assert!(p.rate() > GIB_PER_S, "one slow interval: {} B/s", p.rate());
        for _ in 1..WINDOW {
            spend_all(&mut p, now);
            now += INTERVAL;
            p.measured(slow, now);
        }
        let want = (GAIN * 100.0 * MIB as f64) as u64;
        assert!(
            p.rate().abs_diff(want) < MIB,
            "{} B/s, want about {want}",
            p.rate()
        );
    }

    const GIB_PER_S: u64 = 1 << 30;

    #[test]
    fn the_budget_never_falls_below_the_floor_and_does_not_grow_unused() {
        let (mut p, t0) = pacer(16 * MIB);
        p.measured(0, t0 + INTERVAL);
        assert_eq!(p.rate(), 16 * MIB, "nothing drained: the floor");
        // Not used up: more drain does not raise it (nobody wanted more).
        p.measured(100 * MIB, t0 + 2 * INTERVAL);
        assert_eq!(p.rate(), 16 * MIB);
    }

    #[test]
    fn turns_are_a_quantum_at_most_and_waiting_downloads_keep_their_order() {
        let (mut p, t0) = pacer(GIB_PER_S);
        assert_eq!(p.allowance(t0), Some(QUANTUM));
        spend_all(&mut p, t0);
        assert_eq!(p.allowance(t0), None);
        for id in [3, 1, 3, 2, 1] {
            p.defer(id);
        }
        p.forget(1);
        let wake = p.wake_at();
        assert!(wake >= t0 && wake <= t0 + INTERVAL, "{:?}", wake - t0);
        assert_eq!(p.begin_round(t0 + ROUND), Some(vec![3, 2]));
        assert_eq!(p.begin_round(t0 + ROUND), None, "nobody waits");
    }

    #[test]
    fn the_loop_wakes_for_the_next_measurement_when_nobody_waits() {
        let (p, t0) = pacer(MIB);
        assert_eq!(p.wake_at(), t0 + INTERVAL);
        assert!(p.due(t0 + INTERVAL));
        assert!(!p.due(t0 + INTERVAL / 2));
    }
}
