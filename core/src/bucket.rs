//! The one token bucket behind every rate in the project: the in-process fallback's
//! `rate`, the manager's per-download `rate`, its rate groups, its `--max-rate` cap and
//! its relay pacing all keep their accounts with it, so they all mean the same thing by a
//! rate, a burst and a wait.
//!
//! A bucket fills at `rate` bytes per second up to `capacity` bytes. Writers ask how much
//! is [`available`](TokenBucket::available), write, then [`take`](TokenBucket::take) what
//! they wrote. A write may overshoot what was available (a socket takes a whole record, a
//! loop writes before it pays); the bucket then holds a debt, negative tokens, which the
//! refill pays back before anyone may write again, so the average holds. The clock only
//! moves forward: several threads passing their own, slightly older `now` never get the
//! same interval credited twice.
//!
//! Time is passed in, never read here, so that the accounts can be tested without waiting.

use std::time::{Duration, Instant};

/// A token bucket of bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// Most tokens held (`f64::INFINITY`: no limit, the bucket keeps every unused byte).
    capacity: f64,
    /// Tokens now; negative while a debt is being paid back.
    tokens: f64,
    /// The bucket's clock: the latest `now` it has seen.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: u64, capacity: f64, now: Instant) -> TokenBucket {
        TokenBucket::holding(rate, capacity, capacity, now)
    }

    /// A bucket holding `tokens` to start with (at most `capacity`).
    pub fn holding(rate: u64, capacity: f64, tokens: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1) as f64,
            capacity,
            tokens: tokens.min(capacity),
            last: now,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Most tokens held.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Changes the rate and the capacity from `now` on; what was earned before at the old
    /// rate is kept (up to the new capacity).
    pub fn set(&mut self, rate: u64, capacity: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1) as f64;
        self.capacity = capacity;
        self.tokens = self.tokens.min(capacity);
    }

    /// Credits the time since the bucket last saw the clock.
    pub fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let dt = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Tokens now (negative while in debt), without refilling.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Whole bytes that may be written at `now` (0 while in debt).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens.min(u64::MAX as f64) as u64
        } else {
            0
        }
    }

    /// Pays for `bytes` written; the bucket may go into debt.
    pub fn take(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }

    /// Gives back `bytes` taken but not used.
    pub fn give_back(&mut self, bytes: u64) {
        self.tokens = (self.tokens + bytes as f64).min(self.capacity);
    }

    /// How long from the bucket's clock until it holds `need` tokens (zero if it does);
    /// `need` above the capacity is waited for as the capacity.
    pub fn time_until(&self, need: f64) -> Duration {
        let short = need.min(self.capacity) - self.tokens;
        if short <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(short / self.rate)
    }

    /// The instant at which the bucket holds `need` tokens.
    pub fn ready_at(&self, need: f64) -> Instant {
        self.last + self.time_until(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_its_capacity_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(MIB, 64.0 * 1024.0, t0);
        assert_eq!(b.available(t0), 64 * 1024);
        b.take(64 * 1024);
        assert_eq!(b.available(t0), 0);
        // 10 ms at 1 MiB/s.
        assert_eq!(b.available(t0 + ms(10)), MIB / 100);
        // Never more than the capacity, however long it idles.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 64 * 1024);
    }

    #[test]
    fn a_debt_is_paid_back_before_anyone_writes_again() {
        let t0 = Instant::now();
        let mut b = TokenBucket::holding(MIB, 1e9, 0.0, t0);
        b.take(MIB / 2);
        assert_eq!(b.available(t0 + ms(250)), 0, "still a quarter MiB in debt");
        assert_eq!(b.time_until(0.0), ms(250));
        assert!(b.ready_at(1.0) > t0 + ms(500));
        assert!(b.ready_at(1.0) < t0 + ms(501));
        assert!(b.available(t0 + ms(501)) > 0);
    }

    #[test]
    fn over_any_window_the_bytes_taken_stay_within_rate_times_window_plus_capacity() {
        // A writer that takes everything available every millisecond, overshooting by up
        // to 4 KiB each time (a record that does not split).
        let t0 = Instant::now();
        let rate = 4 * MIB;
        let cap = (rate / 20) as f64;
        let mut b = TokenBucket::full(rate, cap, t0);
        let mut taken = vec![0u64; 3000];
        for (i, slot) in taken.iter_mut().enumerate() {
            let now = t0 + ms(i as u64);
            let n = b.available(now);
            if n > 0 {
                let n = n + 4096;
                b.take(n);
                *slot = n;
            }
        }
        for start in [0, 500, 1999] {
            let window: u64 = taken[start..start + 1000].iter().sum();
            assert!(
                window <= rate + cap as u64 + 4096,
                "{window} bytes in the 1 s from {start} ms"
            );
            assert!(window >= rate - 8192, "{window} bytes: the rate is reached");
        }
    }

    #[test]
    fn an_older_clock_is_not_credited_twice() {
        let t0 = Instant::now();
        let mut b = TokenBucket::holding(1000, 1e9, 0.0, t0);
        assert_eq!(b.available(t0 + ms(100)), 100);
        assert_eq!(
            b.available(t0 + ms(50)),
            100,
            "an older now changes nothing"
        );
        assert_eq!(b.available(t0 + ms(200)), 200);
    }

    #[test]
    fn changing_the_rate_keeps_what_was_earned() {
        let t0 = Instant::now();
        let mut b = TokenBucket::holding(1000, 1e9, 0.0, t0);
        b.set(1_000_000, 1e9, t0 + ms(100));
        assert_eq!(b.available(t0 + ms(100)), 100);
        assert_eq!(b.available(t0 + ms(101)), 1100);
        b.set(10, 500.0, t0 + ms(101));
        assert_eq!(
            b.available(t0 + ms(101)),
            500,
            "clipped to the new capacity"
        );
    }

    #[test]
    fn an_unlimited_capacity_keeps_every_unused_byte() {
        let t0 = Instant::now();
        let mut b = TokenBucket::holding(1000, f64::INFINITY, 16.0, t0);
        assert_eq!(b.available(t0 + Duration::from_secs(10)), 10_016);
        b.take(20_000);
        b.give_back(5_000);
        assert_eq!(b.time_until(0.0), Duration::from_secs_f64(4.984));
    }

    #[test]
    fn a_zero_rate_is_one_byte_per_second_not_a_division_by_zero() {
        let t0 = Instant::now();
        let b = TokenBucket::holding(0, 10.0, 0.0, t0);
        assert_eq!(b.rate(), 1);
        assert_eq!(b.time_until(2.0), Duration::from_secs(2));
    }
}
