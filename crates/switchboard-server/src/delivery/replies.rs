//! [`Replies`]: the answers a session gave to its client's `ref`s, so that a message
//! the client sends again after a reconnect (it had not seen the answer) is answered
//! with the first answer instead of being handled twice.

use std::collections::{HashSet, VecDeque};

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

/// The last `capacity` messages with a `ref` of one session, and their answers, oldest
/// dropped first.
///
/// A ring, searched from its newest end: an answer is nearly always to the message
/// just begun, so recording one compares a single ref, and a lookup by ref happens only
/// for the refs a resume said are coming again. No hashing and one allocation per
/// message (a `HashMap` with an order queue took two and three hash lookups). A ref
/// used again while still in the ring takes a second place; a lookup finds the newest.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    /// Oldest first: each ref begun, and its answer once given.
    recent: VecDeque<(Box<str>, Option<Text>)>,
    capacity: usize,
    /// The refs the client said (in its `resume`) it is sending again.
    resending: HashSet<Box<str>>,
}

impl Replies {
    pub(crate) fn new(capacity: usize) -> Replies {
        Replies {
            capacity,
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
            if let Some(answer) = self.newest(ref_id) {
                return match answer {
                    Some(answer) => Seen::Answered(answer.clone()),
                    None => Seen::InProgress,
                };
            }
        }
        // New, or a ref used again once answered: a new message.
        if self.recent.len() >= self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back((ref_id.into(), None));
        Seen::New
    }

    /// Records the answer to `ref_id` (only for a ref that [`begin`](Self::begin) took).
    pub(crate) fn answer(&mut self, ref_id: &str, frame: &Text) {
        if let Some(slot) = self.newest(ref_id) {
            *slot = Some(frame.clone());
        }
    }

    /// The answer slot of the newest message with `ref_id`.
    fn newest(&mut self, ref_id: &str) -> Option<&mut Option<Text>> {
        self.recent
            .iter_mut()
            .rev()
            .find(|(r, _)| **r == *ref_id)
            .map(|(_, answer)| answer)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.recent.len()
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
}
