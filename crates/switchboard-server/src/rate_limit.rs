//! The per-connection rate limiter: a token bucket, and the decision to close a client
//! that keeps sending while limited.

use std::time::Instant;

/// What the rate limiter says about one incoming message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Process it.
    Yes,
    /// Drop it; `first` is true for the first drop after a quiet spell (tell the client).
    No { first: bool },
    /// The client kept sending while limited: close it.
    Close,
}

/// A token bucket: `rate` messages a second on average, `burst` at once.
///
/// Dropped messages are counted as an excess that drains at `rate` a second; a client
/// whose excess passes `burst` (it kept sending well over the rate, not just in a burst)
/// is closed. A refilled token does not forgive the excess, so a steady flood at many
/// times the rate is closed too, not only an unbroken one.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_ms: f64,
    burst: f64,
    tokens: f64,
    excess: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate` 0 admits everything.
    pub(crate) fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter::starting_at(rate, burst, Instant::now())
    }

    fn starting_at(rate: u32, burst: u32, now: Instant) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            per_ms: f64::from(rate) / 1000.0,
            burst,
            tokens: burst,
            excess: 0.0,
            last: now,
        }
    }

    pub(crate) fn admit(&mut self) -> Admit {
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at a given time (the clock seam the tests use).
    pub(crate) fn admit_at(&mut self, now: Instant) -> Admit {
        if self.per_ms <= 0.0 {
            return Admit::Yes;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0 * self.per_ms;
        self.last = now;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.excess = (self.excess - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Yes;
        }
        let first = self.excess < 1.0;
        self.excess += 1.0;
        if self.excess > self.burst {
            Admit::Close
        } else {
            Admit::No { first }
        }
    }

    /// Milliseconds until the next message would be admitted.
    pub(crate) fn retry_after_ms(&self) -> u64 {
        if self.per_ms <= 0.0 {
            return 0;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        // Rounded up; small and positive by construction.
        (missing / self.per_ms).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::starting_at(1000, 10, t0);
        for _ in 0..10 {
            assert_eq!(l.admit_at(t0), Admit::Yes);
        }
        assert_eq!(l.admit_at(t0), Admit::No { first: true });
        assert_eq!(l.admit_at(t0), Admit::No { first: false });
        assert_eq!(l.retry_after_ms(), 1);
        // One token a millisecond.
        assert_eq!(l.admit_at(at(t0, 1)), Admit::Yes);
        assert_eq!(l.admit_at(at(t0, 1)), Admit::No { first: false });
    }

    #[test]
    fn a_pause_forgives_and_the_next_drop_is_a_first_again() {
        let t0 = Instant::now();
        let mut l = RateLimiter::starting_at(100, 2, t0);
        l.admit_at(t0);
        l.admit_at(t0);
        assert_eq!(l.admit_at(t0), Admit::No { first: true });
        let later = at(t0, 1000);
        assert_eq!(l.admit_at(later), Admit::Yes);
        assert_eq!(l.admit_at(later), Admit::Yes);
        assert_eq!(l.admit_at(later), Admit::No { first: true });
    }

    #[test]
    fn an_unbroken_flood_is_closed() {
        let t0 = Instant::now();
        let mut l = RateLimiter::starting_at(10, 5, t0);
        let verdicts: Vec<Admit> = (0..12).map(|_| l.admit_at(t0)).collect();
        assert_eq!(
            verdicts[..5],
            [Admit::Yes, Admit::Yes, Admit::Yes, Admit::Yes, Admit::Yes]
        );
        assert_eq!(verdicts[10], Admit::Close, "{verdicts:?}");
    }

    #[test]
    fn a_steady_flood_at_many_times_the_rate_is_closed_though_tokens_refill() {
        // 100/s allowed, burst 200; the client sends 20x that, evenly, for 10 s.
        let t0 = Instant::now();
        let mut l = RateLimiter::starting_at(100, 200, t0);
        let mut closed_at = None;
        for i in 0..20_000u64 {
            if l.admit_at(t0 + Duration::from_micros(i * 500)) == Admit::Close {
                closed_at = Some(i);
                break;
            }
        }
        let i = closed_at.expect("a 20x flood is closed");
        assert!(i < 2_000, "closed within the first second, at message {i}");
    }

    #[test]
    fn twice_the_rate_is_limited_but_not_closed() {
        let t0 = Instant::now();
        let mut l = RateLimiter::starting_at(100, 50, t0);
        for second in 0..30u64 {
            for i in 0..200u64 {
                let now = t0 + Duration::from_millis(second * 1000 + i * 5);
                assert_ne!(
                    l.admit_at(now),
                    Admit::Close,
                    "second {second}, message {i}"
                );
            }
        }
    }

    #[test]
    fn rate_zero_admits_everything() {
        let t0 = Instant::now();
        let mut l = RateLimiter::starting_at(0, 1, t0);
        for _ in 0..10_000 {
            assert_eq!(l.admit_at(t0), Admit::Yes);
        }
        assert_eq!(l.retry_after_ms(), 0);
    }
}
