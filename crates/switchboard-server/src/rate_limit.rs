//! The per-connection rate limiter: a token bucket, and the decision to close a client
//! that keeps sending while limited.

use crate::clock::now_ms32;

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
/// Kept in 20 bytes (4-byte numbers, the clock in wrapping milliseconds): it lives
/// in every connection's task, whose size is the idle connection's cost.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_ms: f32,
    burst: f32,
    tokens: f32,
    excess: f32,
    /// When it last admitted or refused ([`now_ms32`], wrapping).
    last_ms: u32,
}

impl RateLimiter {
    /// `rate` 0 admits everything.
    pub(crate) fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter::starting_at(rate, burst, now_ms32())
    }

    fn starting_at(rate: u32, burst: u32, now_ms: u32) -> RateLimiter {
        let burst = burst.max(1) as f32;
        RateLimiter {
            per_ms: rate as f32 / 1000.0,
            burst,
            tokens: burst,
            excess: 0.0,
            last_ms: now_ms,
        }
    }

    pub(crate) fn admit(&mut self) -> Admit {
        if self.per_ms <= 0.0 {
            return Admit::Yes;
        }
        self.admit_at(now_ms32())
    }

    /// [`admit`](Self::admit) at a given time (the clock seam the tests use).
    fn admit_at(&mut self, now_ms: u32) -> Admit {
        if self.per_ms <= 0.0 {
            return Admit::Yes;
        }
        let refill = now_ms.wrapping_sub(self.last_ms) as f32 * self.per_ms;
        self.last_ms = now_ms;
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

    fn at(start: u32, ms: u32) -> u32 {
        start.wrapping_add(ms)
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        let t0 = now_ms32();
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
        let t0 = now_ms32();
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
        let t0 = now_ms32();
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
        let t0 = now_ms32();
        let mut l = RateLimiter::starting_at(100, 200, t0);
        let mut closed_at = None;
        for i in 0..20_000u32 {
            // Two a millisecond.
            if l.admit_at(at(t0, i / 2)) == Admit::Close {
                closed_at = Some(i);
                break;
            }
        }
        let i = closed_at.expect("a 20x flood is closed");
        assert!(i < 2_000, "closed within the first second, at message {i}");
    }

    #[test]
    fn twice_the_rate_is_limited_but_not_closed() {
        let t0 = now_ms32();
        let mut l = RateLimiter::starting_at(100, 50, t0);
        for second in 0..30u32 {
            for i in 0..200u32 {
                let now = at(t0, second * 1000 + i * 5);
                assert_ne!(
                    l.admit_at(now),
                    Admit::Close,
                    "second {second}, message {i}"
                );
            }
        }
    }

    #[test]
    fn the_clock_wrapping_is_a_small_step() {
        let mut l = RateLimiter::starting_at(1000, 1, u32::MAX);
        assert_eq!(l.admit_at(u32::MAX), Admit::Yes);
        assert_eq!(l.admit_at(u32::MAX), Admit::No { first: true });
        // One millisecond later, across the wrap: one token.
        assert_eq!(l.admit_at(0), Admit::Yes);
    }

    #[test]
    fn it_stays_small() {
        assert!(std::mem::size_of::<RateLimiter>() <= 20);
    }

    #[test]
    fn rate_zero_admits_everything() {
        let t0 = now_ms32();
        let mut l = RateLimiter::starting_at(0, 1, t0);
        for _ in 0..10_000 {
            assert_eq!(l.admit_at(t0), Admit::Yes);
        }
        assert_eq!(l.retry_after_ms(), 0);
    }
}
