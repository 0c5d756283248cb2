//! [`Session`]: what outlives a connection by `session_ttl`: the client id, the resume
//! token, the stream of messages addressed to the client, the answers to its `ref`s,
//! and (once its connection is gone) its identity and rooms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use subtle::ConstantTimeEq;

use super::replies::{Replies, Seen};
use super::stream::{Accept, Budget, Stream, epoch_text};
use crate::backplane::{SessionHistory, SessionRecord};
use crate::config::HistoryPolicy;
use crate::locks::lock;
use crate::ws::{Frame, Text};
use crate::{Conn, ConnId, Identity, SendError, ServerConfig};
use switchboard_proto::{ErrorCode, Position};

/// Why a client is sent to resume when its stream's order broke.
pub(crate) const ORDER_LOST: &str = "this node lost the order of a stream you follow: resume";

/// A session, shared by the connection serving it and (between connections) the
/// node's detached sessions.
pub(crate) struct Session {
    /// (A boxed `str`: exactly its 33 bytes, where `format!` leaves room for 64.)
    id: Box<str>,
    token: u128,
    client: ConnId,
    /// The epoch of its stream, drawn now (`connected` gives it) while the stream
    /// itself is made at the first message; 0 when history is off.
    epoch: u64,
    /// 1, +1 each time it is resumed away from the node that had it (see
    /// [`SessionRecord::generation`]).
    generation: AtomicU64,
    state: Mutex<SessionState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// A session's changing part, under one lock: a direct message, a resume and a
/// disconnect each see it whole.
pub(crate) struct SessionState {
    /// Direct messages, with offsets: made at the first one (an idle connection has
    /// none), never when history is off.
    stream: Option<Box<Stream>>,
    /// The connection serving the session now.
    live: Option<Conn>,
    /// Set while no connection serves it (boxed: a live session keeps 8 bytes).
    detached: Option<Box<Detached>>,
    /// Closed for good (by the client, or kicked): never resumed.
    ended: bool,
    /// Resumed on another node: this node's copy is not the session any more.
    moved: bool,
    /// The highest resume attempt taken here (`ResumeRequest::attempt`; in the
    /// padding after the flags, so a session costs nothing more).
    resume_attempt: u32,
    replies: Option<Box<Replies>>,
}

/// What a session keeps of its connection once the connection is gone.
pub(crate) struct Detached {
    pub(crate) at_ms: u64,
    pub(crate) identity: Option<Identity>,
    pub(crate) rooms: Vec<Arc<str>>,
}

impl Session {
    pub(crate) fn new(client: ConnId, config: &ServerConfig) -> Session {
        let random = switchboard_proto::random_u64;
        Session {
            id: format!("{client}.{:016x}", random()).into_boxed_str(),
            token: (u128::from(random()) << 64) | u128::from(random()),
            client,
            generation: AtomicU64::new(1),
            epoch: if config.history.is_on() {
                random() | 1
            } else {
                0
            },
            state: Mutex::new(SessionState {
                stream: None,
                live: None,
                detached: None,
                ended: false,
                moved: false,
                resume_attempt: 0,
                replies: None,
            }),
        }
    }

    /// A session another node kept ([`SessionRecord`]), rebuilt here for a resume:
    /// waiting, with the identity and rooms it had. `None` when the record is not one
    /// this server could have written.
    pub(crate) fn restored(
        record: &SessionRecord,
        rooms: Vec<String>,
        policy: &HistoryPolicy,
        now_ms: u64,
    ) -> Option<Session> {
        let token = u128::from_str_radix(&record.token, 16).ok()?;
        let epoch = if record.epoch.is_empty() {
            0
        } else {
            u64::from_str_radix(&record.epoch, 16).ok()?
        };
        if Session::client_of(&record.session_id) != Some(record.client) {
            return None;
        }
        Some(Session {
            id: record.session_id.as_str().into(),
            token,
            client: record.client,
            epoch,
            generation: AtomicU64::new(record.generation),
            state: Mutex::new(SessionState {
                // Its order is learnt here from the first numbered message or the
                // history the backplane kept (`absorb`).
                stream: (epoch != 0).then(|| Box::new(Stream::unsynced(*policy, epoch, now_ms))),
                live: None,
                detached: Some(Box::new(Detached {
                    at_ms: now_ms,
                    identity: record.identity.clone(),
                    rooms: rooms.into_iter().map(Arc::from).collect(),
                })),
                ended: false,
                moved: false,
                resume_attempt: 0,
                replies: None,
            }),
        })
    }

    /// What the cluster keeps of this session.
    pub(crate) fn record(
        &self,
        identity: Option<Identity>,
        ttl: std::time::Duration,
    ) -> SessionRecord {
        SessionRecord {
            client: self.client,
            session_id: self.id.to_string(),
            token: self.token(),
            epoch: if self.epoch == 0 {
                String::new()
            } else {
                epoch_text(self.epoch)
            },
            identity,
            ttl,
            generation: self.generation(),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The session was claimed in the cluster again (a resume), in `generation`, with
    /// these rooms: a copy that waits here takes them.
    pub(crate) fn claimed(&self, generation: u64, rooms: Vec<String>) {
        self.generation.store(generation, Ordering::Release);
        if let Some(detached) = self.lock().detached.as_mut() {
            detached.rooms = rooms.into_iter().map(Arc::from).collect();
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The client id a session id names (`<client id>.<random>`).
    pub(crate) fn client_of(session_id: &str) -> Option<ConnId> {
        session_id.split_once('.')?.0.parse().ok()
    }

    pub(crate) fn client(&self) -> ConnId {
        self.client
    }

    /// The resume token, as `connected` gives it.
    pub(crate) fn token(&self) -> String {
        format!("{:032x}", self.token)
    }

    /// Compares in constant time.
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        self.token().as_bytes().ct_eq(token.as_bytes()).into()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    /// Where the session's stream is (`None` when history is off).
    pub(crate) fn position(&self, state: &SessionState) -> Option<Position> {
        if self.epoch == 0 {
            return None;
        }
        Some(match &state.stream {
            Some(stream) => stream.position(),
            None => Position::new(epoch_text(self.epoch), 0),
        })
    }

    /// The session's stream, made now if it has none yet (`None`: history is off).
    pub(crate) fn stream<'a>(
        &self,
        state: &'a mut SessionState,
        policy: &HistoryPolicy,
        now_ms: u64,
    ) -> Option<&'a mut Stream> {
        if self.epoch == 0 {
            return None;
        }
        Some(self.made(&mut state.stream, policy, now_ms))
    }

    /// The stream in `slot`, made with the session's epoch if it is not there yet.
    fn made<'a>(
        &self,
        slot: &'a mut Option<Box<Stream>>,
        policy: &HistoryPolicy,
        now_ms: u64,
    ) -> &'a mut Stream {
        let epoch = self.epoch;
        slot.get_or_insert_with(|| Box::new(Stream::with_epoch(*policy, epoch, now_ms)))
    }

    /// A message for this client: stamped with the next offset of its stream, queued
    /// on its connection, and kept for a resume. With no connection it is only kept.
    pub(crate) fn deliver(
        &self,
        text: &str,
        now_ms: u64,
        budget: &Budget,
        policy: &HistoryPolicy,
    ) -> Result<(), SendError> {
        self.deliver_in_order(None, text, now_ms, budget, policy)
    }

    /// A direct message a numbering backplane numbered `(epoch, offset)` (see
    /// `server/ordered.rs`): the next offset is delivered and kept, one already
    /// delivered is dropped, and a break in the order restarts the stream and sends
    /// the client to resume.
    pub(crate) fn deliver_numbered(
        &self,
        sequence: (u64, u64),
        text: &str,
        now_ms: u64,
        budget: &Budget,
        policy: &HistoryPolicy,
    ) -> Result<(), SendError> {
        self.deliver_in_order(Some(sequence), text, now_ms, budget, policy)
    }

    fn deliver_in_order(
        &self,
        sequence: Option<(u64, u64)>,
        text: &str,
        now_ms: u64,
        budget: &Budget,
        policy: &HistoryPolicy,
    ) -> Result<(), SendError> {
        let mut guard = self.lock();
        let SessionState {
            stream,
            live,
            ended,
            ..
        } = &mut *guard;
        if self.epoch == 0 {
            let frame = Frame::text(text.to_owned());
            return match live {
                Some(conn) => conn.push(frame),
                None => Err(SendError::NotFound(self.client)),
            };
        }
        if *ended {
            return Err(SendError::NotFound(self.client));
        }
        let stream = self.made(stream, policy, now_ms);
        let mut deliver = true;
        let offset = match sequence {
            None => stream.next_offset(),
            Some((epoch, offset)) => {
                match stream.accept(epoch, offset) {
                    Accept::Duplicate => return Ok(()),
                    Accept::Next => {}
                    Accept::Reset { members_told } => {
                        stream.reset(epoch, offset - 1, budget);
                        if members_told {
                            deliver = false;
                            if let Some(conn) = live {
                                conn.close(ErrorCode::StreamReset, ORDER_LOST);
                            }
                        }
                    }
                }
                stream.advance_to(offset);
                offset
            }
        };
        let frame = Text::from(switchboard_proto::stamp_offset(text, offset));
        let pushed = match live {
            Some(conn) if deliver => conn.push(Frame::Text(frame.clone())),
            _ => Ok(()),
        };
        // Kept even when the queue refused it: a slow consumer is disconnected, and
        // recovers it when it resumes.
        stream.keep(offset, frame, &[], now_ms, budget);
        pushed
    }

    /// Takes in what a backplane kept of this session's stream after `since` (a resume
    /// away from its node); false when it is not all there (see [`Stream::absorb`]).
    pub(crate) fn absorb(
        &self,
        history: SessionHistory,
        since: u64,
        now_ms: u64,
        budget: &Budget,
        policy: &HistoryPolicy,
    ) -> bool {
        let Ok(epoch) = u64::from_str_radix(&history.position.epoch, 16) else {
            return false;
        };
        if self.epoch == 0 {
            return true;
        }
        let kept = history
            .messages
            .into_iter()
            .map(|(offset, text)| {
                (
                    offset,
                    Text::from(switchboard_proto::stamp_offset(&text, offset)),
                    Box::default(),
                )
            })
            .collect();
        let mut state = self.lock();
        self.made(&mut state.stream, policy, now_ms).absorb(
            epoch,
            since,
            history.position.offset,
            kept,
            now_ms,
            budget,
        )
    }

    /// Forgets the order of its stream (the backplane lost messages that may have been
    /// for it): a new epoch and no history, so a resume from before hears
    /// `recovered: false`.
    pub(crate) fn forget_order(&self, budget: &Budget, policy: &HistoryPolicy, now_ms: u64) {
        if self.epoch == 0 {
            return;
        }
        let mut state = self.lock();
        self.made(&mut state.stream, policy, now_ms).desync(budget);
    }

    /// Looks a client's `ref` up (see [`Replies`]).
    pub(crate) fn begin_reply(&self, ref_id: &str, capacity: usize) -> Seen {
        let mut state = self.lock();
        state
            .replies
            .get_or_insert_with(|| Box::new(Replies::new(capacity)))
            .begin(ref_id)
    }

    /// Sends the answer to a `ref` to whichever connection serves the session now
    /// (`conn`, unless a resume moved it), and remembers it.
    pub(crate) fn reply(&self, conn: &Conn, ref_id: &str, frame: Text) -> Result<(), SendError> {
        let state = &mut *self.lock();
        if let Some(replies) = state.replies.as_mut() {
            replies.answer(ref_id, &frame);
        }
        match &state.live {
            Some(live) if live != conn => live.push(Frame::Text(frame)),
            _ => conn.push(Frame::Text(frame)),
        }
    }

    /// The session's connection is gone. Keeps what a resume needs, unless the session
    /// ended for good; returns whether it can be resumed. A connection that a resume
    /// already replaced changes nothing.
    /// `unregister` runs under the session's lock when `conn` was serving it.
    pub(crate) fn detach(
        &self,
        conn: &Conn,
        rooms: Vec<Arc<str>>,
        resumable: bool,
        now_ms: u64,
        unregister: impl FnOnce(),
    ) -> bool {
        let mut state = self.lock();
        if state.live.as_ref() != Some(conn) {
            return false;
        }
        state.live = None;
        if let Some(stream) = state.stream.as_mut() {
            stream.touch(now_ms);
        }
        if !resumable {
            state.ended = true;
            unregister();
            return false;
        }
        state.detached = Some(Box::new(Detached {
            at_ms: now_ms,
            identity: conn.identity().as_deref().cloned(),
            rooms,
        }));
        unregister();
        true
    }

    /// True when the session has been without a connection for longer than `ttl_ms`.
    pub(crate) fn expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        let state = self.lock();
        state.ended
            || state
                .detached
                .as_ref()
                .is_some_and(|d| now_ms.saturating_sub(d.at_ms) > ttl_ms)
    }

    /// [`expired`](Self::expired), checked without waiting for the session's lock
    /// (false when it is taken): for the sweep, which holds the waiting map's lock
    /// and must never take a session's under it.
    pub(crate) fn surely_expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        self.state.try_lock().is_ok_and(|st| {
            st.live.is_none()
                && st
                    .detached
                    .as_ref()
                    .is_some_and(|d| now_ms.saturating_sub(d.at_ms) > ttl_ms)
                || st.ended
        })
    }

    /// Gives back what the session's history counts against the budget.
    pub(crate) fn release(&self, budget: &Budget) {
        if let Some(stream) = self.lock().stream.as_mut() {
            stream.release(budget);
        }
    }
}

impl SessionState {
    /// The client is about to send these refs again (see [`Replies`]).
    pub(crate) fn expect_resent(&mut self, refs: &[String], capacity: usize) {
        if refs.is_empty() {
            return;
        }
        self.replies
            .get_or_insert_with(|| Box::new(Replies::new(capacity)))
            .expect_resent(refs);
    }

    /// `conn` serves the session from now on.
    pub(crate) fn attach(&mut self, conn: &Conn) {
        self.live = Some(conn.clone());
        self.detached = None;
    }

    /// The connection serving the session, if one does.
    pub(crate) fn live(&self) -> Option<&Conn> {
        self.live.as_ref()
    }

    /// What was kept when the connection went, if it has gone.
    pub(crate) fn detached(&self) -> Option<&Detached> {
        self.detached.as_deref()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// Takes a resume's attempt (`ResumeRequest::attempt`): false when it is not above
    /// one taken before, i.e. an attempt the client gave up on arrived after a newer
    /// one. 0 (not counted) is always taken.
    pub(crate) fn take_attempt(&mut self, attempt: u64) -> bool {
        if attempt == 0 {
            return true;
        }
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        if attempt <= self.resume_attempt {
            return false;
        }
        self.resume_attempt = attempt;
        true
    }

    /// Whether `attempt` is the newest taken (or not counted): a resume found before
    /// a newer one was taken is not registered.
    pub(crate) fn is_newest_attempt(&self, attempt: u64) -> bool {
        attempt == 0 || u32::try_from(attempt).unwrap_or(u32::MAX) >= self.resume_attempt
    }

    /// Whether the session was resumed on another node (its end here is not its end).
    pub(crate) fn has_moved(&self) -> bool {
        self.moved
    }

    /// The session was resumed on another node.
    pub(crate) fn set_moved(&mut self) {
        self.moved = true;
    }
}

#[cfg(test)]
mod tests {
    /// Every connection has a session: an idle one keeps it small (its stream, its
    /// answers and what a resume needs are made only when first used).
    #[test]
    fn an_idle_session_stays_small() {
        assert!(std::mem::size_of::<super::SessionState>() <= 40);
        assert!(std::mem::size_of::<super::Session>() <= 120);
    }

    /// Resumes are taken in the order the client attempted them: one it gave up on,
    /// found or registered after a newer one, is refused.
    #[test]
    fn a_resume_attempt_older_than_one_taken_is_refused() {
        let config = crate::ServerConfig::default();
        let session = super::Session::new(crate::ConnId::from_u64(7), &config);
        let mut state = session.lock();
        assert!(state.take_attempt(2));
        assert!(!state.take_attempt(1), "found after a newer one");
        assert!(!state.take_attempt(2), "the same attempt twice");
        assert!(!state.is_newest_attempt(1), "registered after a newer one");
        assert!(state.is_newest_attempt(2));
        assert!(state.take_attempt(3));
        assert!(
            state.take_attempt(0) && state.is_newest_attempt(0),
            "not counted"
        );
    }
}
