//! Random bits for ids, session ids and request refs, from the standard library alone.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// 64 random bits from the standard library's per-process random hasher keys, mixed
/// with a counter and the clock: unpredictable to other clients, which is what ids and
/// refs need (not a cryptographic key).
///
/// ```
/// assert_ne!(switchboard_proto::random_u64(), switchboard_proto::random_u64());
/// ```
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}
