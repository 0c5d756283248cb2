//! [`Replies`]: the answers a session gave to its client's `ref`s, so that a message
//! the client sends again after a reconnect (it had not seen the answer) is answered
//! with the first answer instead of being handled twice.

use std::collections::HashSet;

use crate::ws::Text;

/// What to do with a message that carries a `ref`. Only the refs a resume said the
/// client is sending again are looked up; any other ref is a new message, even one
/// used before (clients may reuse a ref once it is answered).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time: handle it.
    New,
    /// Handled, and this was the answer: send it again.
    Answered(Text),
    /// Being handled now (the first copy came on the connection before): its answer
    /// will come; drop this copy.
    InProgress,
}

/// The log is never compacted below this many bytes.
const LOG_MIN: usize = 4096;

/// The last `capacity` messages with a `ref` of one session, and their answers, oldest
/// dropped first.
///
/// Every session that calls keeps one, and it changes on every call while nobody looks
/// at it, so recording is built to touch only memory that is hot: the refs and answers
/// are copied to the end of one byte log, in the order they come, and a ring of
/// `capacity` fixed-size slots says where each is; the newest overwrites the oldest's
/// slot. Nothing is allocated or freed once both have grown, and nothing written
/// `capacity` calls ago is read (keeping each ref in a `Box<str>` and each answer as a
/// shared frame, dropped oldest first, cost an RPC call about 11% of its server CPU,
/// most of it cache misses on the frees; this costs about 4%). Once the log is twice
/// what it held after it was last compacted, or `capacity` messages after that, its
/// dropped front is cut off, and memory far beyond what it holds is given back.
///
/// An answer is nearly always to the message just begun, so recording one compares a
/// single ref, and a lookup by ref happens only for the refs a resume said are coming
/// again. A ref used again while still in the ring takes a second place; a lookup finds
/// the newest.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    capacity: usize,
    /// Messages begun; the newest is number `begun - 1`, in slot `(begun - 1) % capacity`.
    begun: usize,
    /// Message `n`'s slot is `n % capacity`; grows to `capacity` slots.
    slots: Vec<Slot>,
    /// The refs and answers of the slots, and dropped ones not cut off yet.
    log: Vec<u8>,
    /// Bytes cut off the log's front: a [`Slot`]'s positions count from the log's
    /// first byte ever, so `log[at - cut]`.
    cut: usize,
    /// The log's length that makes the next message compact it.
    compact_at: usize,
    /// The message that compacts the log even if it has not grown: once every
    /// `capacity` messages, so that a burst of long answers gone by is let go.
    check_at: usize,
    /// The refs the client said (in its `resume`) it is sending again.
    resending: HashSet<Box<str>>,
}

/// Where one message's ref and answer are in the log.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ref_at: usize,
    ref_len: u32,
    /// `PENDING` until answered.
    answer_len: u32,
    answer_at: usize,
}

const PENDING: u32 = u32::MAX;

impl Replies {
    pub(crate) fn new(capacity: usize) -> Replies {
        Replies {
            capacity,
            compact_at: LOG_MIN,
            check_at: capacity,
            ..Replies::default()
        }
    }

    /// The client is about to send these refs again (they were unanswered when its
    /// connection dropped).
    pub(crate) fn expect_resent(&mut self, refs: &[String]) {
        self.resending = refs.iter().map(|r| r.as_str().into()).collect();
    }

    /// Looks `ref_id` up when it is one being sent again, and records it as being
    /// handled when it is new.
    pub(crate) fn begin(&mut self, ref_id: &str) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        let resent = !self.resending.is_empty() && self.resending.remove(ref_id);
        if resent {
            if let Some(slot) = self.newest(ref_id) {
                let slot = self.slots[slot];
                if slot.answer_len == PENDING {
                    return Seen::InProgress;
                }
                let answer = self.bytes(slot.answer_at, slot.answer_len);
                return Seen::Answered(Text::from(String::from_utf8_lossy(answer).into_owned()));
            }
        }
        // New, or a ref used again once answered: a new message.
        let Ok(ref_len) = u32::try_from(ref_id.len()) else {
            return Seen::New;
        };
        if self.log.len() >= self.compact_at || self.begun >= self.check_at {
            self.compact();
        }
        let slot = Slot {
            ref_at: self.append(ref_id.as_bytes()),
            ref_len,
            answer_len: PENDING,
            answer_at: 0,
        };
        let index = self.begun % self.capacity;
        if index < self.slots.len() {
            self.slots[index] = slot;
        } else {
            self.slots.push(slot);
        }
        self.begun += 1;
        Seen::New
    }

    /// Records the answer to `ref_id` (only for a ref that [`begin`](Self::begin) took).
    pub(crate) fn answer(&mut self, ref_id: &str, frame: &Text) {
        let Some(index) = self.newest(ref_id) else {
            return;
        };
        // Longer than 4 GiB (never: frames are far smaller): not kept, handled again.
        let Ok(answer_len) = u32::try_from(frame.len()) else {
            return;
        };
        let answer_at = self.append(frame.as_str().as_bytes());
        let slot = &mut self.slots[index];
        slot.answer_at = answer_at;
        slot.answer_len = answer_len;
    }

    /// The slot of the newest message with `ref_id`, searched from the newest.
    fn newest(&self, ref_id: &str) -> Option<usize> {
        let wanted = ref_id.as_bytes();
        let kept = self.slots.len();
        (1..=kept).find_map(|back| {
            let index = (self.begun - back) % self.capacity;
            let slot = &self.slots[index];
            let same = slot.ref_len as usize == wanted.len()
                && self.bytes(slot.ref_at, slot.ref_len) == wanted;
            same.then_some(index)
        })
    }

    /// Copies `bytes` to the end of the log; returns where they start.
    fn append(&mut self, bytes: &[u8]) -> usize {
        let at = self.cut + self.log.len();
        self.log.extend_from_slice(bytes);
        at
    }

    fn bytes(&self, at: usize, len: u32) -> &[u8] {
        let start = at - self.cut;
        &self.log[start..start + len as usize]
    }

    /// Cuts off the log's bytes before the ref of the oldest message kept, once the
    /// next message takes its slot. (Every answer comes after its own ref, and refs
    /// come in order, so nothing kept is before the oldest ref.)
    fn compact(&mut self) {
        let live_from = if self.slots.len() < self.capacity {
            self.slots.first().map(|s| s.ref_at)
        } else {
            // The slot after the one the next message overwrites.
            self.slots
                .get((self.begun + 1) % self.capacity)
                .map(|s| s.ref_at)
        };
        let live_from = live_from.unwrap_or(self.cut + self.log.len());
        let dead = live_from - self.cut;
        self.log.drain(..dead);
        self.cut = live_from;
        self.compact_at = (2 * self.log.len()).max(LOG_MIN);
        self.check_at = self.begun + self.capacity;
        // A burst of long answers gone by gives its memory back.
        if self.log.capacity() > 2 * self.compact_at {
            self.log.shrink_to(self.compact_at);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    fn log_len(&self) -> usize {
        self.log.len()
    }

    #[cfg(test)]
    fn log_capacity(&self) -> usize {
        self.log.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resend(r: &mut Replies, refs: &[&str]) {
        let refs: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
        r.expect_resent(&refs);
    }

    #[test]
    fn a_resent_ref_gets_the_first_answer_and_is_not_handled_again() {
        let mut r = Replies::new(4);
        assert_eq!(r.begin("a"), Seen::New);
        assert_eq!(r.begin("b"), Seen::New);
        let answer = Text::from(r#"{"type":"ack","payload":{"ref":"a","status":"ok"}}"#.to_owned());
        r.answer("a", &answer);
        resend(&mut r, &["a", "b", "c"]);
        assert_eq!(r.begin("a"), Seen::Answered(answer));
        assert_eq!(r.begin("b"), Seen::InProgress);
        assert_eq!(r.begin("c"), Seen::New, "never seen: handled");
        // An answer to a ref never begun is not recorded.
        r.answer("z", &Text::from("x".to_owned()));
        resend(&mut r, &["z"]);
        assert_eq!(r.begin("z"), Seen::New);
    }

    #[test]
    fn a_ref_used_again_without_a_resume_is_a_new_message() {
        let mut r = Replies::new(4);
        assert_eq!(r.begin("s"), Seen::New);
        r.answer("s", &Text::from("first".to_owned()));
        assert_eq!(r.begin("s"), Seen::New);
        // Looked up once per resume only.
        resend(&mut r, &["s"]);
        assert_eq!(r.begin("s"), Seen::InProgress);
        assert_eq!(r.begin("s"), Seen::New);
    }

    #[test]
    fn the_window_is_bounded_oldest_first() {
        let mut r = Replies::new(3);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(r.begin(k), Seen::New);
        }
        assert_eq!(r.len(), 3);
        resend(&mut r, &["a", "d"]);
        assert_eq!(r.begin("a"), Seen::New, "a fell out of the window");
        assert_eq!(r.begin("d"), Seen::InProgress);
        let mut off = Replies::new(0);
        assert_eq!(off.begin("a"), Seen::New);
        assert_eq!(off.begin("a"), Seen::New);
    }

    #[test]
    fn a_ref_used_again_is_answered_with_its_newest_answer() {
        let mut r = Replies::new(8);
        assert_eq!(r.begin("x"), Seen::New);
        r.answer("x", &Text::from("first".to_owned()));
        assert_eq!(r.begin("y"), Seen::New);
        assert_eq!(r.begin("x"), Seen::New);
        r.answer("x", &Text::from("second".to_owned()));
        r.answer("y", &Text::from("why".to_owned()));
        resend(&mut r, &["x", "y"]);
        assert_eq!(
            r.begin("x"),
            Seen::Answered(Text::from("second".to_owned()))
        );
        assert_eq!(r.begin("y"), Seen::Answered(Text::from("why".to_owned())));
    }

    #[test]
    fn the_log_stays_bounded_and_answers_survive_its_compaction() {
        let mut r = Replies::new(256);
        let answer_of =
            |k: usize| Text::from(format!(r#"{{"type":"ack","payload":{{"ref":"{k}"}}}}"#));
        let mut longest = 0;
        for k in 0..20_000 {
            let ref_id = k.to_string();
            assert_eq!(r.begin(&ref_id), Seen::New);
            // Answers come late and out of order: each one two calls after its ref.
            if k >= 2 {
                r.answer(&(k - 2).to_string(), &answer_of(k - 2));
            }
            longest = longest.max(r.log_len());
        }
        assert_eq!(r.len(), 256);
        // 256 refs and answers of at most 45 bytes, at most twice over, and the next.
        assert!(
            longest <= 2 * 256 * 45 + 45,
            "the log grew to {longest} bytes"
        );
        resend(&mut r, &["19744", "19997", "19998", "19999", "19743"]);
        assert_eq!(r.begin("19744"), Seen::Answered(answer_of(19744)));
        assert_eq!(r.begin("19997"), Seen::Answered(answer_of(19997)));
        assert_eq!(r.begin("19998"), Seen::InProgress);
        assert_eq!(r.begin("19999"), Seen::InProgress);
        assert_eq!(r.begin("19743"), Seen::New, "fell out of the window");
    }

    #[test]
    fn the_memory_of_long_answers_is_given_back_once_they_are_dropped() {
        let mut r = Replies::new(8);
        let long = Text::from("x".repeat(100_000));
        for k in 0..8 {
            r.begin(&format!("long{k}"));
            r.answer(&format!("long{k}"), &long);
        }
        assert!(r.log_capacity() >= 800_000);
        let short = Text::from("y".to_owned());
        for k in 0..100 {
            r.begin(&k.to_string());
            r.answer(&k.to_string(), &short);
        }
        assert!(
            r.log_capacity() <= 2 * LOG_MIN,
            "still {} bytes",
            r.log_capacity()
        );
    }

    #[test]
    fn a_long_answer_is_kept_whole() {
        let mut r = Replies::new(4);
        let long = Text::from("x".repeat(100_000));
        assert_eq!(r.begin("long"), Seen::New);
        assert_eq!(r.begin("short"), Seen::New);
        r.answer("long", &long);
        r.answer("short", &Text::from("y".to_owned()));
        for k in ["a", "b"] {
            assert_eq!(r.begin(k), Seen::New);
        }
        resend(&mut r, &["long"]);
        assert_eq!(r.begin("long"), Seen::Answered(long));
    }
}
