//! One spare queue buffer per worker thread, for the outbound queues.
//!
//! An idle connection keeps no queue buffer (issue 24's idle budget), so a connection
//! that answers one message at a time would allocate a buffer when the answer is
//! queued and free it once it is written: twice per message (the outbox's queue and
//! the socket's). Instead, an emptied buffer waits here for the next connection on the
//! same thread that queues something. A thread keeps at most one of each kind, and
//! only a small one.

use std::cell::Cell;
use std::collections::VecDeque;
use std::thread::LocalKey;

/// The most elements a kept buffer may hold room for: one grown for a burst is freed.
const MAX_KEPT: usize = 64;

/// A thread's spare buffer of one kind.
pub(crate) type Spare<T> = LocalKey<Cell<VecDeque<T>>>;

/// The thread's spare buffer (empty), or a new one, which allocates nothing until used.
pub(crate) fn take<T: 'static>(spare: &'static Spare<T>) -> VecDeque<T> {
    spare.try_with(Cell::take).unwrap_or_default()
}

/// Keeps an emptied buffer for the next queue on this thread (or frees it: a large
/// one, or when the thread keeps one already).
pub(crate) fn give<T: 'static>(spare: &'static Spare<T>, buffer: VecDeque<T>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT || !buffer.is_empty() {
        return;
    }
    let _ = spare.try_with(|slot| {
        let kept = slot.take();
        if kept.capacity() == 0 {
            slot.set(buffer);
        } else {
            slot.set(kept);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SPARE: Cell<VecDeque<u32>> = const { Cell::new(VecDeque::new()) };
    }

    #[test]
    fn an_emptied_buffer_is_given_to_the_next_taker_on_the_thread() {
        let mut q = take(&SPARE);
        assert_eq!(q.capacity(), 0, "none kept yet");
        q.extend([1, 2, 3]);
        q.clear();
        let room = q.capacity();
        give(&SPARE, q);
        let again = take(&SPARE);
        assert_eq!(again.capacity(), room, "the same buffer back");
        assert_eq!(take(&SPARE).capacity(), 0, "taken once only");
    }

    #[test]
    fn a_large_or_unemptied_buffer_is_not_kept() {
        let mut big = VecDeque::with_capacity(MAX_KEPT * 2);
        big.push_back(1);
        big.clear();
        give(&SPARE, big);
        assert_eq!(take(&SPARE).capacity(), 0);
        let mut full = VecDeque::with_capacity(4);
        full.push_back(1);
        give(&SPARE, full);
        assert_eq!(take(&SPARE).capacity(), 0);
    }

    #[test]
    fn the_thread_keeps_one() {
        give(&SPARE, VecDeque::with_capacity(4));
        give(&SPARE, VecDeque::with_capacity(8));
        assert_eq!(take(&SPARE).capacity(), 4, "the first kept");
        assert_eq!(take(&SPARE).capacity(), 0);
    }
}
