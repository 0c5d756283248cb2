//! One spare queue buffer per worker thread, for the outbound queues.
//!
//! An idle connection keeps no queue buffer (issue 24's idle budget), so a connection
//! that answers one message at a time would allocate a buffer when the answer is
//! queued and free it once it is written: twice per message (the outbox's queue and
//! the socket's). Instead, an emptied buffer waits here for the next connection on the
//! same thread that queues something. A thread keeps at most one of each kind, and
//! only a small one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::thread::LocalKey;

/// The most elements a kept buffer may hold room for: one grown for a burst is freed.
const MAX_KEPT: usize = 64;

/// A thread's spare buffer of one kind.
pub(crate) type Spare<T> = LocalKey<RefCell<VecDeque<T>>>;

/// Gives `queue`, empty and without a buffer, the thread's spare buffer if it keeps one.
///
/// Buffers move by swapping: no empty queue is built or dropped on the way (each drop
/// of one is a call that checks it holds nothing, several per message).
pub(crate) fn take<T: 'static>(spare: &'static Spare<T>, queue: &mut VecDeque<T>) {
    if queue.capacity() != 0 {
        return;
    }
    let _ = spare.try_with(|slot| {
        if let Ok(mut kept) = slot.try_borrow_mut() {
            std::mem::swap(&mut *kept, queue);
        }
    });
}

/// Takes `queue`'s emptied buffer, leaving it without one: kept for the next queue on
/// this thread, or freed (a large one, or when the thread keeps one already). A queue
/// that is not empty is left as it is.
pub(crate) fn give<T: 'static>(spare: &'static Spare<T>, queue: &mut VecDeque<T>) {
    if queue.capacity() == 0 || !queue.is_empty() {
        return;
    }
    if queue.capacity() <= MAX_KEPT {
        let kept = spare.try_with(|slot| match slot.try_borrow_mut() {
            Ok(mut kept) if kept.capacity() == 0 => {
                std::mem::swap(&mut *kept, queue);
                true
            }
            _ => false,
        });
        if kept == Ok(true) {
            return;
        }
    }
    *queue = VecDeque::new();
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SPARE: RefCell<VecDeque<u32>> = const { RefCell::new(VecDeque::new()) };
    }

    /// What a new queue gets from the thread's spare.
    fn taken() -> VecDeque<u32> {
        let mut q = VecDeque::new();
        take(&SPARE, &mut q);
        q
    }

    #[test]
    fn an_emptied_buffer_is_given_to_the_next_taker_on_the_thread() {
        let mut q = taken();
        assert_eq!(q.capacity(), 0, "none kept yet");
        q.extend([1, 2, 3]);
        q.clear();
        let room = q.capacity();
        give(&SPARE, &mut q);
        assert_eq!(q.capacity(), 0, "the queue keeps no buffer");
        assert_eq!(taken().capacity(), room, "the same buffer back");
        assert_eq!(taken().capacity(), 0, "taken once only");
    }

    #[test]
    fn a_large_buffer_is_freed_and_an_unemptied_one_left_alone() {
        let mut big = VecDeque::with_capacity(MAX_KEPT * 2);
        big.push_back(1);
        big.clear();
        give(&SPARE, &mut big);
        assert_eq!(big.capacity(), 0, "freed");
        assert_eq!(taken().capacity(), 0, "not kept");
        let mut full = VecDeque::with_capacity(4);
        full.push_back(1);
        give(&SPARE, &mut full);
        assert_eq!(full, [1], "left as it is");
        assert_eq!(taken().capacity(), 0);
    }

    #[test]
    fn the_thread_keeps_one() {
        let (mut a, mut b) = (VecDeque::with_capacity(4), VecDeque::with_capacity(8));
        give(&SPARE, &mut a);
        give(&SPARE, &mut b);
        assert_eq!(b.capacity(), 0, "freed: the thread keeps one already");
        assert_eq!(taken().capacity(), 4, "the first kept");
        assert_eq!(taken().capacity(), 0);
    }

    #[test]
    fn a_queue_with_a_buffer_takes_none() {
        let mut kept = VecDeque::with_capacity(4);
        give(&SPARE, &mut kept);
        let mut q = VecDeque::with_capacity(2);
        let room = q.capacity();
        take(&SPARE, &mut q);
        assert_eq!(q.capacity(), room);
        assert_eq!(taken().capacity(), 4, "still the thread's");
    }
}
