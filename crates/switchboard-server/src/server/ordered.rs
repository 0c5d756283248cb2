//! Delivery in a numbering backplane's order ([`Backplane::sequences`]): room and
//! broadcast messages come back from the backplane with the cluster's epoch and
//! offset, and every node, the sender's included, delivers them alike. A message
//! already delivered is dropped; a break in the order (another epoch, a gap) starts the
//! stream again and sends its members here to resume, so they hear `recovered: false`
//! rather than miss messages silently. A node that must give a position before it has
//! seen a stream's messages (a join) asks the backplane where the stream stands.
//!
//! [`Backplane::sequences`]: crate::Backplane::sequences

use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_proto::{ErrorCode, Position, StreamPositions, stamp_offset};

use super::Server;
use crate::ConnId;
use crate::backplane::{Delivery, Sequence, Target};
use crate::clock::now_ms;
use crate::connection::Conn;
use crate::delivery::session::ORDER_LOST;
use crate::delivery::stream::Accept;
use crate::delivery::streams::SharedStream;
use crate::delivery::{Session, Stream};
use crate::locks::lock;
use crate::ws::Frame;

/// How long a resume waits for this node to reach what its client saw elsewhere.
const CATCH_UP: Duration = Duration::from_secs(5);

impl Server {
    /// Delivers a message the backplane numbered (see the module's documentation).
    pub(crate) fn deliver_sequenced(&self, delivery: &Delivery, sequence: &Sequence) -> usize {
        let epoch = match u64::from_str_radix(&sequence.epoch, 16) {
            Ok(epoch) if sequence.offset > 0 => epoch,
            _ => {
                tracing::warn!(epoch = %sequence.epoch, offset = sequence.offset,
                    "ignoring a numbered message with a malformed position");
                return 0;
            }
        };
        if self.inner.order_waiters.load(Ordering::Acquire) > 0 {
            self.inner.order_advanced.notify_waiters();
        }
        let (target, exclude, text) = (&delivery.target, &delivery.exclude, &delivery.frame);
        let now = now_ms();
        if let Target::Conns(ids) = target {
            return self.deliver_numbered_direct(ids, exclude, (epoch, sequence.offset), text, now);
        }
        let Some(stream) = self.stream_of(target, now) else {
            // The room keeps no history here: stamped, not kept.
            let frame = Frame::text(stamp_offset(text, sequence.offset));
            return self.deliver_frame(target, exclude, &frame);
        };
        let mut stream = lock(&stream);
        let offset = sequence.offset;
        match stream.accept(epoch, offset) {
            Accept::Duplicate => return 0,
            Accept::Next => {}
            Accept::Reset { members_told } => {
                stream.reset(epoch, offset - 1, self.inner.streams.budget());
                if members_told {
                    // Their positions are in the old order: they resume (and hear
                    // `recovered: false`); the message waits in the history.
                    self.for_each_follower(target, |c| c.close(ErrorCode::StreamReset, ORDER_LOST));
                    stream.advance_to(offset);
                    self.keep_only(&mut stream, offset, exclude, text, now);
                    return 0;
                }
            }
        }
        stream.advance_to(offset);
        self.deliver_at(&mut stream, offset, target, exclude, text, now)
    }

    /// A numbered direct message, into each recipient's session here (live or waiting
    /// for a resume).
    fn deliver_numbered_direct(
        &self,
        ids: &[ConnId],
        exclude: &[ConnId],
        sequence: (u64, u64),
        text: &str,
        now: u64,
    ) -> usize {
        let budget = self.inner.streams.budget();
        let policy = &self.inner.config.history;
        let mut n = 0;
        for &id in ids {
            if exclude.contains(&id) {
                continue;
            }
            if let Some(session) = self.session_of(id) {
                if session
                    .deliver_numbered(sequence, text, now, budget, policy)
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// A session was resumed on another node in `generation`: an older copy here
    /// goes, and a connection still serving it is closed.
    pub(crate) fn let_session_go(&self, client: ConnId, generation: u64) {
        if let Some(conn) = self.inner.registry.get(client) {
            if conn.session().generation() >= generation {
                return; // a stale notice: the session came here since
            }
            conn.session().lock().set_moved();
            if self.inner.unrecorded.take(client) {
                // Served from this node's copy, unclaimed (the cluster could not be
                // asked): this is likely the client's own connection, on an old copy.
                conn.close(ErrorCode::StreamReset, super::unrecorded::OLDER_COPY);
            } else {
                conn.close(
                    ErrorCode::SessionTaken,
                    "the session was resumed on another node",
                );
            }
        }
        if let Some(session) = self.inner.sessions.get(client) {
            if session.generation() >= generation {
                return;
            }
            session.lock().set_moved();
            self.inner.sessions.take(&session);
            session.release(self.inner.streams.budget());
        }
    }

    /// The backplane lost messages it cannot give back: every stream here forgets its
    /// order (sessions' included) and every client is sent to resume.
    pub(crate) fn forget_stream_order(&self) {
        let now = now_ms();
        let budget = self.inner.streams.budget();
        for stream in self.inner.streams.every() {
            lock(&stream).desync(budget);
        }
        let history = &self.inner.config.history;
        for session in self.inner.sessions.all() {
            session.forget_order(budget, history, now);
        }
        // Taken out of the registry's lock first: a session's lock is never taken under
        // it (registering takes them the other way round).
        let mut conns = Vec::new();
        self.inner.registry.for_each(|c| conns.push(c.clone()));
        for c in conns {
            c.session().forget_order(budget, history, now);
            c.close(ErrorCode::StreamReset, ORDER_LOST);
        }
        tracing::warn!("the backplane lost messages: every client here resumes");
    }

    /// Learns from the backplane where the streams of `targets` stand, for those this
    /// node has not heard from yet, so that the positions it gives (a join's, a
    /// resume's) are the cluster's. Nothing to do unless the backplane numbers.
    pub(crate) async fn learn_positions(&self, targets: impl IntoIterator<Item = Target>) {
        if !self.inner.sequenced {
            return;
        }
        for target in targets {
            let Some(stream) = self.stream_of(&target, now_ms()) else {
                continue;
            };
            if lock(&stream).is_synced() {
                continue;
            }
            match self.inner.backplane.stream_position(&target).await {
                Ok(Some(position)) => {
                    let Ok(epoch) = u64::from_str_radix(&position.epoch, 16) else {
                        continue;
                    };
                    let mut stream = lock(&stream);
                    // A numbered message may have come meanwhile: it is newer.
                    if !stream.is_synced() {
                        stream.reset(epoch, position.offset, self.inner.streams.budget());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot learn a stream's position; it starts locally")
                }
            }
        }
    }

    /// Waits (up to [`CATCH_UP`]) until this node has delivered what the client
    /// resuming `session` saw, on another node perhaps: each node reads the backplane
    /// at its own pace, and a resume must not find a node behind its client.
    pub(crate) async fn catch_up_with(&self, session: &Session, seen: &StreamPositions) {
        if !self.inner.sequenced {
            return;
        }
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        self.inner.order_waiters.fetch_add(1, Ordering::AcqRel);
        loop {
            let advanced = self.inner.order_advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if self.has_reached(session, seen) {
                break;
            }
            tokio::select! {
                () = advanced => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.inner.order_waiters.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether every stream here is at or past where the client saw it (in the same
    /// epoch; another epoch is another matter, answered by the resume).
    fn has_reached(&self, session: &Session, seen: &StreamPositions) -> bool {
        let behind = |here: Option<Position>, seen: &Position| {
            here.is_some_and(|h| h.epoch == seen.epoch && h.offset < seen.offset)
        };
        let now = now_ms();
        let streams = seen
            .rooms
            .iter()
            .map(|(room, p)| (Target::Room(room.clone()), p))
            .chain(seen.all.iter().map(|p| (Target::All, p)));
        for (target, p) in streams {
            let here = self.stream_of(&target, now).map(|s| lock(&s).position());
            if behind(here, p) {
                return false;
            }
        }
        match &seen.session {
            Some(p) => !behind(session.position(&session.lock()), p),
            None => true,
        }
    }

    /// How many of this node's connections a room or broadcast send is for (what a
    /// send returns when the backplane delivers it).
    pub(super) fn local_recipients(&self, target: &Target, exclude: &[ConnId]) -> usize {
        let registry = &self.inner.registry;
        match target {
            Target::Room(room) => registry.room_size_except(room, exclude),
            Target::All => registry.len_except(exclude),
            Target::Conns(ids) => ids
                .iter()
                .filter(|id| !exclude.contains(id) && registry.get(**id).is_some())
                .count(),
            Target::User(user) => registry
                .user_conns(user)
                .iter()
                .filter(|c| !exclude.contains(&c.id()))
                .count(),
        }
    }

    /// The stream of a room or of the broadcasts (`None`: no history, or a direct
    /// target).
    pub(super) fn stream_of(&self, target: &Target, now: u64) -> Option<SharedStream> {
        match target {
            Target::Room(room) => self.inner.streams.room(room, &self.inner.config, now),
            Target::All => self.inner.streams.all().cloned(),
            Target::Conns(_) | Target::User(_) => None,
        }
    }

    fn for_each_follower(&self, target: &Target, f: impl FnMut(&Conn)) {
        match target {
            Target::Room(room) => self.inner.registry.for_each_in_room(room, f),
            Target::All => self.inner.registry.for_each(f),
            Target::Conns(_) | Target::User(_) => {}
        }
    }

    /// Keeps a message in a stream's history without delivering it.
    fn keep_only(
        &self,
        stream: &mut Stream,
        offset: u64,
        exclude: &[ConnId],
        text: &str,
        now: u64,
    ) {
        let frame = crate::ws::Text::from(stamp_offset(text, offset));
        stream.keep(offset, frame, exclude, now, self.inner.streams.budget());
    }
}
