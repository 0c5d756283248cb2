//! [`Stream`]: one ordered log (a room, the broadcasts, or a session's direct messages)
//! with its epoch, its offsets and its bounded history.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchboard_proto::{Position, Recovery, RecoveryGap};

use crate::ConnId;
use crate::config::HistoryPolicy;
use crate::ws::Text;

/// The bytes of history a node keeps, all streams together.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.max
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// An epoch as it is written on the wire.
pub(crate) fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// One kept message: its offset, when it was sent, its frame (shared with the
/// recipients' queues) and who it was not for.
#[derive(Debug)]
struct Entry {
    offset: u64,
    at_ms: u64,
    frame: Text,
    exclude: Box<[ConnId]>,
}

impl Entry {
    /// What it counts against the budget: the entry, the frame, and the frame's
    /// allocation (its shared header and the allocator's own), so the budget is close
    /// to what the process holds (docs/benchmarks.md measures it).
    fn cost(&self) -> usize {
        const ALLOCATION: usize = 48;
        std::mem::size_of::<Entry>()
            + self.frame.len()
            + ALLOCATION
            + self.exclude.len() * std::mem::size_of::<ConnId>()
    }
}

/// An ordered log: an epoch (random, new whenever the log is created, so a restart
/// or a lost log is seen as an epoch change), offsets (+1 per message, from 1) and
/// the last messages, bounded by the policy and the node's budget.
#[derive(Debug)]
pub(crate) struct Stream {
    epoch: u64,
    top: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    policy: HistoryPolicy,
    last_active_ms: u64,
    /// In a cluster whose backplane numbers messages: whether the epoch and offsets
    /// are the cluster's (learnt from a numbered message or from the backplane), so
    /// that members who were given positions must be told when the order breaks.
    synced: bool,
}

/// What a message the backplane numbered is to a node's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// The next one: deliver it.
    Next,
    /// Already delivered (a replay after a reconnect): drop it.
    Duplicate,
    /// Not what follows: another epoch (the cluster's store lost the stream), a gap
    /// (messages this node will never see), or the first message of a stream this node
    /// did not know. The stream starts again from it; `members_told` says whether
    /// members were given positions in the old order (and must resume).
    Reset {
        /// The stream had the cluster's order before: its members' positions are void.
        members_told: bool,
    },
}

impl Stream {
    pub(crate) fn new(policy: HistoryPolicy, now_ms: u64) -> Stream {
        Stream::unsynced(policy, switchboard_proto::random_u64(), now_ms)
    }

    /// A stream whose epoch was drawn before it was made (a session's, given in
    /// `connected` before its first message, so its order is known: synced).
    pub(crate) fn with_epoch(policy: HistoryPolicy, epoch: u64, now_ms: u64) -> Stream {
        Stream {
            synced: true,
            ..Stream::unsynced(policy, epoch, now_ms)
        }
    }

    /// A stream whose order is not known yet (see [`Accept`]).
    pub(crate) fn unsynced(policy: HistoryPolicy, epoch: u64, now_ms: u64) -> Stream {
        Stream {
            epoch,
            top: 0,
            entries: VecDeque::new(),
            bytes: 0,
            policy,
            last_active_ms: now_ms,
            synced: false,
        }
    }

    /// Whether the stream follows the cluster's numbering (see [`Accept`]).
    pub(crate) fn is_synced(&self) -> bool {
        self.synced
    }

    /// Where a message numbered `offset` in `epoch` by the backplane falls.
    pub(crate) fn accept(&self, epoch: u64, offset: u64) -> Accept {
        if self.synced && epoch == self.epoch {
            if offset <= self.top {
                return Accept::Duplicate;
            }
            if offset == self.top + 1 {
                return Accept::Next;
            }
        }
        Accept::Reset {
            members_told: self.synced,
        }
    }

    /// Starts again at the cluster's `epoch` and `top` (the offset of its last
    /// message), forgetting the history kept in another order.
    pub(crate) fn reset(&mut self, epoch: u64, top: u64, budget: &Budget) {
        self.release(budget);
        self.epoch = epoch;
        self.top = top;
        self.synced = true;
    }

    /// Forgets the cluster's order (the backplane lost messages it cannot give back):
    /// a new local epoch, no history, so a resume from before says `epoch_changed`.
    pub(crate) fn desync(&mut self, budget: &Budget) {
        self.release(budget);
        self.epoch = switchboard_proto::random_u64();
        self.top = 0;
        self.synced = false;
    }

    /// Takes in the messages a backplane kept for this stream after `since` (a session
    /// resumed away from its node), beside those that reached it meanwhile: one
    /// history, in order. Returns false (and keeps nothing of them) when they are not
    /// one unbroken run from `since + 1`, or are in another epoch than what reached it.
    pub(crate) fn absorb(
        &mut self,
        epoch: u64,
        since: u64,
        top: u64,
        kept: Vec<(u64, Text, Box<[ConnId]>)>,
        now_ms: u64,
        budget: &Budget,
    ) -> bool {
        if self.synced && self.epoch != epoch && self.top > 0 {
            return false;
        }
        let mut all = kept;
        if self.synced && self.epoch == epoch {
            all.extend(
                self.entries
                    .drain(..)
                    .map(|e| (e.offset, e.frame, e.exclude)),
            );
        }
        // What reached it before `since` (a node reading behind) the client has.
        all.retain(|(o, ..)| *o > since);
        all.sort_by_key(|(o, ..)| *o);
        all.dedup_by_key(|(o, ..)| *o);
        let top = all.last().map_or(top, |(o, ..)| (*o).max(top));
        let unbroken = all
            .iter()
            .zip(since + 1..)
            .all(|((o, ..), expected)| *o == expected)
            && since + all.len() as u64 == top;
        self.release(budget);
        self.epoch = epoch;
        self.synced = true;
        self.top = top;
        if !unbroken {
            return false;
        }
        for (offset, frame, exclude) in all {
            self.keep(offset, frame, &exclude, now_ms, budget);
        }
        true
    }

    /// Whether the messages after `since` are all here (or none are missing): a
    /// client at `since` can be given what it missed without asking the backplane.
    pub(crate) fn can_recover(&self, since: &Position) -> bool {
        if !self.synced || self.epoch() != since.epoch {
            return false;
        }
        since.offset >= self.top
            || self
                .entries
                .front()
                .is_some_and(|e| e.offset <= since.offset + 1)
    }

    /// Takes the next offset of a message the backplane numbered [`Accept::Next`] (or
    /// just [`reset`](Self::reset) before it).
    pub(crate) fn advance_to(&mut self, offset: u64) {
        self.top = offset;
    }

    pub(crate) fn policy(&self) -> &HistoryPolicy {
        &self.policy
    }

    /// The epoch as it is written on the wire.
    pub(crate) fn epoch(&self) -> String {
        epoch_text(self.epoch)
    }

    /// Where the stream is now: its epoch and the offset of its last message.
    pub(crate) fn position(&self) -> Position {
        Position::new(self.epoch(), self.top)
    }

    /// The offset of the next message, taken.
    pub(crate) fn next_offset(&mut self) -> u64 {
        self.top += 1;
        self.top
    }

    /// Keeps a sent message, then drops what the policy and the budget no longer allow
    /// (oldest first; the message just kept stays).
    pub(crate) fn keep(
        &mut self,
        offset: u64,
        frame: Text,
        exclude: &[ConnId],
        now_ms: u64,
        budget: &Budget,
    ) {
        let entry = Entry {
            offset,
            at_ms: now_ms,
            frame,
            exclude: exclude.into(),
        };
        let cost = entry.cost();
        self.bytes += cost;
        budget.add(cost);
        self.entries.push_back(entry);
        self.last_active_ms = now_ms;
        while self.entries.len() > self.policy.size.max(1)
            || (self.entries.len() > 1 && budget.over())
        {
            self.drop_oldest(budget);
        }
        self.drop_expired(now_ms, budget);
    }

    /// Drops the messages older than the policy's `ttl` (never the newest one before
    /// it expires).
    pub(crate) fn drop_expired(&mut self, now_ms: u64, budget: &Budget) {
        let ttl = u64::try_from(self.policy.ttl.as_millis()).unwrap_or(u64::MAX);
        while self
            .entries
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.at_ms) > ttl)
        {
            self.drop_oldest(budget);
        }
    }

    fn drop_oldest(&mut self, budget: &Budget) {
        if let Some(old) = self.entries.pop_front() {
            let cost = old.cost();
            self.bytes -= cost;
            budget.sub(cost);
        }
    }

    /// Gives back everything this stream counts against the budget (it is going away).
    pub(crate) fn release(&mut self, budget: &Budget) {
        budget.sub(self.bytes);
        self.bytes = 0;
        self.entries.clear();
    }

    /// True when nothing is kept and nothing happened for `idle_ms`.
    pub(crate) fn is_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.entries.is_empty() && now_ms.saturating_sub(self.last_active_ms) > idle_ms
    }

    /// Notes activity (a member left, a session dropped): the stream's position must
    /// outlive the clients that may come back to it.
    pub(crate) fn touch(&mut self, now_ms: u64) {
        self.last_active_ms = now_ms;
    }

    /// The newest kept message, for a client that joins a room that keeps its latest.
    pub(crate) fn latest(&self, now_ms: u64) -> Option<Text> {
        let ttl = u64::try_from(self.policy.ttl.as_millis()).unwrap_or(u64::MAX);
        self.entries
            .back()
            .filter(|e| now_ms.saturating_sub(e.at_ms) <= ttl)
            .map(|e| e.frame.clone())
    }

    /// The last `limit` kept messages (not expired) after offset `since`, oldest first.
    pub(crate) fn recent(&self, since: u64, limit: usize, now_ms: u64) -> Vec<Text> {
        let ttl = u64::try_from(self.policy.ttl.as_millis()).unwrap_or(u64::MAX);
        let kept: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.offset > since && now_ms.saturating_sub(e.at_ms) <= ttl)
            .collect();
        let skip = kept.len().saturating_sub(limit);
        kept[skip..].iter().map(|e| e.frame.clone()).collect()
    }

    /// What a client at `since` missed, all or nothing: every kept message after it
    /// (those not addressed away from `who`), or why they cannot all be given.
    pub(crate) fn missed_since(
        &self,
        since: &Position,
        who: ConnId,
        now_ms: u64,
    ) -> (Recovery, Vec<Text>) {
        let here = self.position();
        if since.epoch != here.epoch {
            return (Recovery::lost(RecoveryGap::EpochChanged, here), Vec::new());
        }
        if since.offset > self.top {
            return (Recovery::lost(RecoveryGap::OffsetAhead, here), Vec::new());
        }
        if since.offset == self.top {
            return (Recovery::recovered(0, here), Vec::new());
        }
        let ttl = u64::try_from(self.policy.ttl.as_millis()).unwrap_or(u64::MAX);
        let kept = self
            .entries
            .iter()
            .skip_while(|e| now_ms.saturating_sub(e.at_ms) > ttl);
        let mut frames = Vec::new();
        let mut expected = since.offset + 1;
        for e in kept {
            if e.offset < expected {
                continue;
            }
            if e.offset != expected {
                break;
            }
            expected += 1;
            if !e.exclude.contains(&who) {
                frames.push(e.frame.clone());
            }
        }
        if expected != self.top + 1 {
            return (Recovery::lost(RecoveryGap::HistoryGap, here), Vec::new());
        }
        (Recovery::recovered(frames.len() as u64, here), frames)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(size: usize) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
            latest_on_join: false,
        }
    }

    fn send(s: &mut Stream, budget: &Budget, now: u64, text: &str, exclude: &[ConnId]) -> u64 {
        let offset = s.next_offset();
        s.keep(offset, Text::from(text.to_owned()), exclude, now, budget);
        offset
    }

    fn texts(frames: &[Text]) -> Vec<&str> {
        frames.iter().map(Text::as_str).collect()
    }

    #[test]
    fn offsets_count_up_and_a_client_gets_what_it_missed_in_order() {
        let budget = Budget::new(usize::MAX);
        let mut s = Stream::new(policy(10), 0);
        let start = s.position();
        assert_eq!(start.offset, 0);
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(send(&mut s, &budget, 1, t, &[]), i as u64 + 1);
        }
        let me = ConnId::from_u64(7);
        let (r, frames) = s.missed_since(&start, me, 2);
        assert!(r.recovered);
        assert_eq!(r.missed, 3);
        assert_eq!(texts(&frames), ["a", "b", "c"]);
        let (r, frames) = s.missed_since(&Position::new(s.epoch(), 2), me, 2);
        assert_eq!((r.recovered, texts(&frames)), (true, vec!["c"]));
        let (r, frames) = s.missed_since(&s.position(), me, 2);
        assert_eq!((r.recovered, r.missed, frames.len()), (true, 0, 0));
    }

    #[test]
    fn what_was_not_for_a_client_is_skipped_not_counted_as_a_gap() {
        let budget = Budget::new(usize::MAX);
        let mut s = Stream::new(policy(10), 0);
        let (me, other) = (ConnId::from_u64(1), ConnId::from_u64(2));
        send(&mut s, &budget, 1, "mine", &[me]);
        send(&mut s, &budget, 1, "theirs", &[other]);
        let (r, frames) = s.missed_since(&Position::new(s.epoch(), 0), me, 1);
        assert_eq!((r.recovered, texts(&frames)), (true, vec!["theirs"]));
    }

    #[test]
    fn all_or_nothing_when_history_is_short_or_the_epoch_differs() {
        let budget = Budget::new(usize::MAX);
        let mut s = Stream::new(policy(2), 0);
        for t in ["a", "b", "c", "d"] {
            send(&mut s, &budget, 1, t, &[]);
        }
        let me = ConnId::from_u64(1);
        let (r, frames) = s.missed_since(&Position::new(s.epoch(), 1), me, 1);
        assert_eq!(r.reason, Some(RecoveryGap::HistoryGap));
        assert!(!r.recovered && frames.is_empty());
        // Offset 2 is the oldest that can still be served: c and d are kept.
        let (r, frames) = s.missed_since(&Position::new(s.epoch(), 2), me, 1);
        assert_eq!((r.recovered, texts(&frames)), (true, vec!["c", "d"]));
        let (r, _) = s.missed_since(&Position::new("feedfacefeedface", 2), me, 1);
        assert_eq!(r.reason, Some(RecoveryGap::EpochChanged));
        let (r, _) = s.missed_since(&Position::new(s.epoch(), 99), me, 1);
        assert_eq!(r.reason, Some(RecoveryGap::OffsetAhead));
        assert_eq!(r.position, s.position());
    }

    #[test]
    fn expired_messages_cannot_be_recovered_and_are_dropped() {
        let budget = Budget::new(usize::MAX);
        let mut s = Stream::new(policy(10), 0);
        send(&mut s, &budget, 1_000, "old", &[]);
        send(&mut s, &budget, 50_000, "new", &[]);
        let me = ConnId::from_u64(1);
        let (r, _) = s.missed_since(&Position::new(s.epoch(), 0), me, 61_500);
        assert_eq!(r.reason, Some(RecoveryGap::HistoryGap));
        let (r, frames) = s.missed_since(&Position::new(s.epoch(), 1), me, 61_500);
        assert_eq!((r.recovered, texts(&frames)), (true, vec!["new"]));
        let before = budget.used();
        s.drop_expired(61_500, &budget);
        assert!(budget.used() < before);
        assert_eq!(
            s.latest(61_500).map(|t| t.as_str().to_owned()),
            Some("new".into())
        );
        s.drop_expired(200_000, &budget);
        assert_eq!(budget.used(), 0);
        assert!(s.latest(200_000).is_none());
    }

    #[test]
    fn numbered_messages_are_delivered_once_in_order_and_a_break_resets() {
        let budget = Budget::new(usize::MAX);
        let mut s = Stream::new(policy(10), 0);
        // Unknown to this node: the first numbered message starts the stream.
        assert_eq!(
            s.accept(7, 41),
            Accept::Reset {
                members_told: false
            }
        );
        s.reset(7, 40, &budget);
        s.advance_to(41);
        s.keep(41, Text::from("a".to_owned()), &[], 1, &budget);
        assert_eq!(s.accept(7, 41), Accept::Duplicate);
        assert_eq!(s.accept(7, 42), Accept::Next);
        // A gap, or another epoch: the members' positions are void.
        assert_eq!(s.accept(7, 44), Accept::Reset { members_told: true });
        assert_eq!(s.accept(8, 1), Accept::Reset { members_told: true });
        s.reset(8, 0, &budget);
        assert_eq!(budget.used(), 0, "the old order's history is gone");
        let me = ConnId::from_u64(1);
        let (r, _) = s.missed_since(&Position::new(epoch_text(7), 41), me, 1);
        assert_eq!(r.reason, Some(RecoveryGap::EpochChanged));
        s.desync(&budget);
        assert!(!s.is_synced());
        assert_eq!(
            s.accept(8, 1),
            Accept::Reset {
                members_told: false
            }
        );
    }

    #[test]
    fn absorbing_a_backplane_history_merges_what_arrived_meanwhile() {
        let budget = Budget::new(usize::MAX);
        let text = |s: &str| Text::from(s.to_owned());
        let me = ConnId::from_u64(1);
        // Arrived meanwhile, from a node reading behind: 3 (before `since`) and 6.
        let mut s = Stream::unsynced(policy(10), 9, 0);
        s.reset(9, 2, &budget);
        s.advance_to(3);
        s.keep(3, text("c"), &[], 1, &budget);
        assert_eq!(s.accept(9, 6), Accept::Reset { members_told: true });
        let mut s = Stream::unsynced(policy(10), 9, 0);
        assert_eq!(
            s.accept(9, 6),
            Accept::Reset {
                members_told: false
            }
        );
        s.reset(9, 5, &budget);
        s.advance_to(6);
        s.keep(6, text("f"), &[], 1, &budget);
        let none = || Box::<[ConnId]>::default();
        let kept = vec![
            (4, text("d"), none()),
            (5, text("e"), none()),
            (6, text("f"), none()),
        ];
        assert!(s.absorb(9, 3, 6, kept, 1, &budget));
        assert!(s.can_recover(&Position::new(epoch_text(9), 3)));
        assert!(!s.can_recover(&Position::new(epoch_text(9), 2)));
        assert!(!s.can_recover(&Position::new(epoch_text(8), 3)));
        let (r, frames) = s.missed_since(&Position::new(epoch_text(9), 3), me, 1);
        assert_eq!((r.recovered, texts(&frames)), (true, vec!["d", "e", "f"]));
        // A hole is not papered over: all or nothing.
        let mut s = Stream::unsynced(policy(10), 9, 0);
        let holed = vec![(4, text("d"), none()), (6, text("f"), none())];
        assert!(!s.absorb(9, 3, 6, holed, 1, &budget));
        let (r, _) = s.missed_since(&Position::new(epoch_text(9), 3), me, 1);
        assert_eq!(r.reason, Some(RecoveryGap::HistoryGap));
    }

    #[test]
    fn the_budget_bounds_all_streams_together() {
        let frame = "x".repeat(100);
        let one = Entry {
            offset: 0,
            at_ms: 0,
            frame: Text::from(frame.clone()),
            exclude: Box::new([]),
        }
        .cost();
        let budget = Budget::new(one * 10);
        let mut streams: Vec<Stream> = (0..5).map(|_| Stream::new(policy(100), 0)).collect();
        for round in 0..20 {
            for s in &mut streams {
                send(s, &budget, round, &frame, &[]);
            }
            // Over by at most the one message each stream always keeps.
            assert!(budget.used() <= one * 10 + one * streams.len());
        }
        for s in &mut streams {
            s.release(&budget);
        }
        assert_eq!(budget.used(), 0);
    }
}
