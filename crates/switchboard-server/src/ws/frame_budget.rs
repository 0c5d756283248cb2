//! Every WebSocket frame a client sends, counted where the bytes arrive. The socket
//! library assembles continuation frames itself, so the message rate limiter never sees
//! them, and a flood of empty ones would cost the server CPU for free: the frames that
//! did not become a message are charged to a frame budget, a token bucket per
//! connection.

use crate::clock::now_ms;

/// The clock in milliseconds, kept in 32 bits (it wraps after 49 days; only differences
/// of a few seconds matter).
fn now_ms32() -> u32 {
    now_ms() as u32
}

/// Scans the bytes read from a client for frame boundaries (client frames are masked:
/// a 2-byte header, 0/2/8 bytes of length, a 4-byte mask, the payload).
#[derive(Debug, Default)]
pub(crate) struct FrameScanner {
    /// Bytes of the current frame's payload still to skip.
    payload_left: u64,
    /// The current header's bytes so far, the first left out (at most 9 more: the
    /// length byte and 8 of extended length; the mask is skipped, never kept).
    header: [u8; 9],
    /// Bytes of the current header read, the first included.
    header_len: u8,
}

/// A token bucket of frames.
#[derive(Debug)]
pub(crate) struct FrameBudget {
    /// Frames a second, and at once; 0 disables the budget.
    per_sec: f32,
    burst: f32,
    tokens: f32,
    /// When it was last charged ([`now_ms`], wrapping).
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

impl FrameScanner {
    /// How many frames start in `data` (their headers complete in it).
    pub(crate) fn scan(&mut self, mut data: &[u8]) -> u32 {
        let mut frames = 0u32;
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skip =
                    usize::try_from(self.payload_left).map_or(data.len(), |n| n.min(data.len()));
                data = &data[skip..];
                self.payload_left -= skip as u64;
                continue;
            }
            if self.header_len > 0 && usize::from(self.header_len) <= self.header.len() {
                self.header[usize::from(self.header_len) - 1] = data[0];
            }
            self.header_len += 1;
            data = &data[1..];
            if let Some(payload) = self.header_complete() {
                frames = frames.saturating_add(1);
                self.header_len = 0;
                self.payload_left = payload;
            }
        }
        frames
    }

    /// The payload length once the header so far (first byte, length byte, extended
    /// length, mask) is complete.
    fn header_complete(&self) -> Option<u64> {
        let len = usize::from(self.header_len);
        if len < 2 {
            return None;
        }
        let second = self.header[0];
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let (extra, len7) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if len < 2 + extra + mask {
            return None;
        }
        Some(match len7 {
            Some(n) => n,
            None => self.header[1..=extra]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        })
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

    /// A masked client frame.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_counted_whatever_their_size_and_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        stream.extend(frame(0x1, true, b"hello"));
        stream.extend(frame(0x2, true, &vec![7u8; 300]));
        stream.extend(frame(0x2, true, &vec![7u8; 70_000]));
        stream.extend(frame(0x9, true, b""));
        stream.extend(frame(0x0, false, b""));
        for cut in [1usize, 3, 7, 64, 1 << 20] {
            let mut scanner = FrameScanner::default();
            let frames: u32 = stream.chunks(cut).map(|chunk| scanner.scan(chunk)).sum();
            assert_eq!(frames, 5, "cut every {cut} bytes");
        }
    }

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
