//! A cheap millisecond clock, to keep times in atomics (heartbeats).

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// [`now_ms`] in 32 bits, for the per-connection token buckets: it wraps after 49 days,
/// and only differences of a few seconds matter.
pub(crate) fn now_ms32() -> u32 {
    now_ms() as u32
}
