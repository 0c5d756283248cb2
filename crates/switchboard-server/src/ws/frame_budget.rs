//! The frames a client sends that do not become messages (the fragments of a message
//! before its last) never reach the message rate limiter, and a flood of empty ones
//! would cost the server CPU for free: they are charged to a frame budget, a token
//! bucket per connection.

use crate::clock::now_ms32;

/// A token bucket of frames.
#[derive(Debug)]
pub(crate) struct FrameBudget {
    /// Frames a second, and at once; 0 disables the budget.
    per_sec: f32,
    burst: f32,
    tokens: f32,
    /// When it was last charged ([`now_ms32`], wrapping).
    last_ms: u32,
}

/// A client sent frames faster than its budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many WebSocket frames too fast")
    }
}

impl std::error::Error for OverBudget {}

impl FrameBudget {
    /// `per_sec` frames a second on average, `burst` at once (`per_sec` 0: unlimited).
    pub(crate) fn new(per_sec: u32, burst: u32) -> FrameBudget {
        let burst = burst.max(1) as f32;
        FrameBudget {
            per_sec: per_sec as f32,
            burst,
            tokens: burst,
            last_ms: now_ms32(),
        }
    }

    /// Charges `frames` that did not become messages; `Err` once over the budget.
    pub(crate) fn charge(&mut self, frames: u32) -> Result<(), OverBudget> {
        if self.per_sec <= 0.0 || frames == 0 {
            return Ok(());
        }
        self.charge_at(frames, now_ms32())
    }
}

impl FrameBudget {
    fn charge_at(&mut self, frames: u32, now_ms: u32) -> Result<(), OverBudget> {
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.tokens -= frames as f32;
        if self.tokens < -self.burst {
            Err(OverBudget)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_burst_twice_then_refuses() {
        let t0 = 1_000;
        let mut b = FrameBudget::new(100, 50);
        assert_eq!(b.charge_at(100, t0), Ok(()), "the burst, and as much again");
        assert_eq!(b.charge_at(1, t0), Err(OverBudget));
        let mut b = FrameBudget::new(100, 50);
        assert_eq!(b.charge_at(90, t0), Ok(()));
        // A second later a hundred more frames are due.
        assert_eq!(b.charge_at(100, t0 + 1_000), Ok(()));
    }

    #[test]
    fn zero_is_unlimited() {
        let mut b = FrameBudget::new(0, 1);
        assert_eq!(b.charge(u32::MAX), Ok(()));
    }
}
