//! Who writes when bytes are scarce: the `--max-rate` cap (shared by the downloads of this
//! loop through one bucket, handed out shortest remaining first or round robin, with every
//! other turn round robin and a starvation bound) and relay pacing (a relayed download's
//! first window at once, then at most what the web server has been draining).

use std::time::{Duration, Instant};

use handoff_core::bucket::TokenBucket;

use super::{Loop, Schedule, BUDGET};
use crate::downloads::download::{Download, Step};
use crate::downloads::pacing::Pacer;

/// Under a bandwidth cap, a download that has waited this long is served first whatever
/// its size: the starvation bound of shortest-remaining-first.
const STARVE: Duration = Duration::from_secs(1);

/// The loop's bandwidth cap: a bucket of 1/20 s of the rate (at least 64 KiB).
pub(super) fn cap_bucket(rate: u64, now: Instant) -> TokenBucket {
    TokenBucket::full(rate, (rate as f64 / 20.0).max(64.0 * 1024.0), now)
}

/// How long until the cap holds a useful amount (1/8 of its capacity).
pub(super) fn cap_wait(cap: &TokenBucket) -> Duration {
    cap.time_until(cap.capacity() / 8.0)
        .max(Duration::from_millis(1))
}

/// Whether relay pacing governs a download: relayed by a web server, longer than the
/// first window (a shorter one fills no buffer beyond its own end, so pacing it would only
/// slow small files down), and still sending (`start_bytes` is 0 while pacing is off).
pub(super) fn in_start_phase(d: &Download, start_bytes: u64) -> bool {
    start_bytes > 0 && d.is_relayed() && d.planned > start_bytes && !d.is_lingering()
}

impl Loop {
    /// The first window of a relayed download; 0 while relay pacing is off.
    pub(super) fn start_bytes(&self) -> u64 {
        self.pacer.as_ref().map_or(0, Pacer::start_bytes)
    }

    /// Whether download `id` is paced.
    pub(super) fn in_start(&self, id: usize) -> bool {
        let start_bytes = self.start_bytes();
        self.downloads
            .get(&id)
            .is_some_and(|d| in_start_phase(d, start_bytes))
    }

    /// Relay pacing: at the end of each interval the budget follows what the relayed
    /// sockets drained; when a round begins, the downloads that waited for it write, in
    /// turn.
    pub(super) fn pace(&mut self, now: Instant) {
        if self.pacer.as_ref().is_some_and(|p| p.due(now)) {
            let drained: u64 = self
                .downloads
                .values_mut()
                .filter(|d| d.is_relayed())
                .map(|d| d.drained())
                .sum();
            if let Some(pacer) = &mut self.pacer {
                pacer.measured(drained, now);
            }
        }
        let Some(waiting) = self.pacer.as_mut().and_then(|p| p.begin_round(now)) else {
            return;
        };
        for id in waiting {
            self.write_starting(id, now, false);
        }
    }

    /// A writable relayed download writes its first window at once, then what the budget
    /// allows (a quantum at most), or waits for the next round. One that is not paced
    /// (finished writing) is back on the ordinary path. Under `--max-rate`, past its first
    /// window it writes only when the cap's scheduler gives it a turn (`scheduled`): were it
    /// to write whenever it happens to be writable, the downloads woken most often (a
    /// stream of new ones) would take the cap's bytes before the scheduler could share them.
    pub(super) fn write_starting(&mut self, id: usize, now: Instant, scheduled: bool) {
        let start_bytes = self.start_bytes();
        let (Some(pacer), Some(d)) = (self.pacer.as_mut(), self.downloads.get_mut(&id)) else {
            return;
        };
        if !in_start_phase(d, start_bytes) {
            self.on_event(id, false, true, now);
            return;
        }
        // The head and the first window go out at once: pacing never delays a response's
        // head. Only what follows waits for the budget.
        let free = start_bytes.saturating_sub(d.written());
        if free == 0 && !scheduled && self.cap.is_some() {
            self.wanting.insert(id);
            return;
        }
        let allowed = if free > 0 {
            free
        } else if let Some(allowed) = pacer.allowance(now) {
            allowed
        } else {
            pacer.defer(id);
            return;
        };
        // The cap is asked before writing, like every other write under it: a start phase
        // never borrows from it (the head too waits for the cap).
        let allowed = match &mut self.cap {
            Some(cap) => match cap.available(now) {
                0 => {
                    self.wanting.insert(id);
                    return;
                }
                n => allowed.min(n),
            },
            None => allowed,
        };
        let budget = allowed.min(BUDGET as u64);
        let before = d.written();
        let step = d.on_writable(budget as usize, now);
        let spent = d.written() - before;
        pacer.charge(spent.saturating_sub(free));
        if let Some(cap) = &mut self.cap {
            cap.take(spent);
        }
        self.apply(id, step);
    }

    /// Under a bandwidth cap: gives the available bytes to the waiting downloads, the
    /// starved first, then every other turn by the schedule (shortest remaining, or served
    /// longest ago) and in between by round robin, so that at least half of the cap is
    /// shared fairly: a stream of new, shorter downloads cannot starve a running one.
    pub(super) fn schedule(&mut self, now: Instant) {
        let Some(cap) = &mut self.cap else {
            return;
        };
        if self.wanting.is_empty() || cap.available(now) == 0 {
            return;
        }
        self.fair_turn = !self.fair_turn;
        let schedule = if self.fair_turn {
            Schedule::Fair
        } else {
            self.config.schedule
        };
        let mut order: Vec<(bool, u64, Instant, usize)> = self
            .wanting
            .iter()
            .filter_map(|&id| self.downloads.get(&id).map(|d| (id, d)))
            .map(|(id, d)| {
                let starved = now.duration_since(d.last_progress()) >= STARVE;
                (!starved, d.remaining(), d.last_progress(), id)
            })
            .collect();
        match schedule {
            Schedule::Srpt => order.sort_unstable_by_key(|&(s, rem, last, _)| (s, rem, last)),
            Schedule::Fair => order.sort_unstable_by_key(|&(s, _, last, _)| (s, last)),
        }
        for (_, _, _, id) in order {
            let budget = self.cap.as_mut().map_or(0, |cap| cap.available(now));
            if budget == 0 {
                break;
            }
            if self.in_start(id) {
                // Start pacing and the cap both decide (it comes back if the cap runs dry).
                self.wanting.remove(&id);
                self.write_starting(id, now, true);
                continue;
            }
            let Some(d) = self.downloads.get_mut(&id) else {
                self.wanting.remove(&id);
                continue;
            };
            let budget = usize::try_from(budget).unwrap_or(BUDGET).min(BUDGET);
            let before = d.written();
            let step = d.on_writable(budget, now);
            if let Some(cap) = &mut self.cap {
                cap.take(d.written() - before);
            }
            if step != Step::Yield {
                self.wanting.remove(&id);
                self.apply(id, step);
            }
        }
    }
}
