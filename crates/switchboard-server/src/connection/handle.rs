//! [`Conn`]: a connected client as server code sees it, cheap to clone and safe to keep.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use switchboard_proto::{Dialect, Envelope, ErrorCode, Payload, encode_payload_frame};

use super::outbox::Outbox;
use crate::clock::now_ms;
use crate::delivery::Session;
use crate::locks::lock;
use crate::server::WeakServer;
use crate::ws::{Frame, Text};
use crate::{ConnId, Identity, SendError, Server};

/// The rooms a connection is in, sorted, exactly as many as it is in (a hash set
/// would reserve room for four, and its hasher's keys: 80 bytes more for a connection
/// in one room). `gone` is set when it disconnects, under the same lock, so a late join
/// cannot leave a dead connection in a room.
#[derive(Debug, Default)]
struct RoomSet {
    names: Box<[Arc<str>]>,
    gone: bool,
}

impl RoomSet {
    /// Where `room` is, or where it would go.
    fn find(&self, room: &str) -> Result<usize, usize> {
        self.names.binary_search_by(|name| (**name).cmp(room))
    }

    fn contains(&self, room: &str) -> bool {
        self.find(room).is_ok()
    }

    fn insert(&mut self, name: Arc<str>) {
        if let Err(at) = self.find(&name) {
            let mut names = std::mem::take(&mut self.names).into_vec();
            names.insert(at, name);
            self.names = names.into_boxed_slice();
        }
    }

    /// False if it was not in `room`.
    fn remove(&mut self, room: &str) -> bool {
        let Ok(at) = self.find(room) else {
            return false;
        };
        let mut names = std::mem::take(&mut self.names).into_vec();
        names.remove(at);
        self.names = names.into_boxed_slice();
        true
    }
}

struct ConnShared {
    id: ConnId,
    /// The session this connection serves (a resume gives a new connection the old
    /// connection's session).
    session: Arc<Session>,
    remote_addr: Option<SocketAddr>,
    server: WeakServer,
    outbox: Outbox,
    rooms: Mutex<RoomSet>,
    /// Who the client authenticated as; replaced when it refreshes its token.
    identity: arc_swap::ArcSwapOption<Identity>,
    /// When the client last sent anything ([`now_ms`]), for heartbeats.
    last_seen: AtomicU64,
    /// The wire format this client speaks (an index into [`Dialect::ALL`]).
    dialect: AtomicU8,
}

/// A connected client, as server code sees it: cheap to clone, safe to keep.
///
/// Sends never wait: they queue a frame on the connection's bounded outbound queue and
/// return. A client that does not keep up meets the server's [`SlowConsumerPolicy`](crate::SlowConsumerPolicy).
///
/// ```no_run
/// # async fn demo(conn: switchboard_server::Conn) {
/// conn.send_message("notification", &serde_json::json!({"text": "Your session expires in 5 minutes"}))
///     .ok();
/// conn.send_message("kicked", &serde_json::json!({"reason": "Violation"})).ok();
/// conn.disconnect("Violation");
/// # }
/// ```
#[derive(Clone)]
pub struct Conn {
    shared: Arc<ConnShared>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("remote_addr", &self.shared.remote_addr)
            .finish()
    }
}

impl PartialEq for Conn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Conn {}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        remote_addr: Option<SocketAddr>,
        server: &Server,
        dialect: Dialect,
    ) -> Conn {
        let session = Arc::new(Session::new(id, server.config()));
        Conn::with_session(session, remote_addr, server, dialect)
    }

    /// A connection that serves `session` (a new one, or one being resumed).
    pub(crate) fn with_session(
        session: Arc<Session>,
        remote_addr: Option<SocketAddr>,
        server: &Server,
        dialect: Dialect,
    ) -> Conn {
        let config = server.config();
        Conn {
            shared: Arc::new(ConnShared {
                id: session.client(),
                session,
                remote_addr,
                server: server.downgrade(),
                outbox: Outbox::new(config),
                rooms: Mutex::new(RoomSet::default()),
                identity: arc_swap::ArcSwapOption::empty(),
                last_seen: AtomicU64::new(now_ms()),
                dialect: AtomicU8::new(dialect_index(dialect)),
            }),
        }
    }

    /// The connection's id (`client_id` on the wire).
    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    /// This connection's session id (`session_id` in `connected`). A client that
    /// resumes its session keeps it, and its client id.
    pub fn session_id(&self) -> &str {
        self.shared.session.id()
    }

    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.shared.session
    }

    /// The client's address, when the server knows it.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// The wire format this client speaks: native, or one of the seeds' dialects
    /// (translated at the edge; handlers see native envelopes either way).
    pub fn dialect(&self) -> Dialect {
        Dialect::ALL
            .get(usize::from(self.shared.dialect.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn set_dialect(&self, dialect: Dialect) {
        self.shared
            .dialect
            .store(dialect_index(dialect), Ordering::Relaxed);
    }

    /// True once the client has authenticated (with the password or the authenticator).
    pub fn is_authenticated(&self) -> bool {
        self.shared.identity.load().is_some()
    }

    /// Who the client authenticated as, if it has.
    ///
    /// ```no_run
    /// # fn demo(conn: switchboard_server::Conn) {
    /// if let Some(who) = conn.identity() {
    ///     println!("{} is {}", conn.id(), who.id);
    /// }
    /// # }
    /// ```
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.shared.identity.load_full()
    }

    /// Calls `f` with the identity, without taking a reference count (the hot path's
    /// permission checks).
    pub(crate) fn with_identity<T>(&self, f: impl FnOnce(Option<&Identity>) -> T) -> T {
        f(self.shared.identity.load().as_deref())
    }

    /// Records the identity; false if the connection already had one.
    pub(crate) fn set_identity(&self, identity: Identity) -> bool {
        let new = Some(Arc::new(identity));
        let before = self
            .shared
            .identity
            .compare_and_swap(&None::<Arc<Identity>>, new);
        before.is_none()
    }

    /// Replaces the identity (a refreshed token).
    pub(crate) fn replace_identity(&self, identity: Identity) {
        self.shared.identity.store(Some(Arc::new(identity)));
    }

    /// Notes that the client sent something (heartbeats).
    pub(crate) fn touch(&self) {
        self.shared.last_seen.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the client last sent anything.
    pub(crate) fn idle_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.shared.last_seen.load(Ordering::Relaxed))
    }

    /// The server this connection belongs to, while it runs.
    pub fn server(&self) -> Option<Server> {
        self.shared.server.upgrade()
    }

    /// Sends `{"type": kind, "payload": payload}` to this client, in its session's
    /// stream: with an offset, and kept for a resume when history is on.
    ///
    /// Fails if the payload is not a JSON object, if the connection is closing, or if
    /// its outbound queue is full.
    pub fn send_message<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        let payload =
            Payload::from_serialize(payload).map_err(|e| SendError::Encode(e.to_string()))?;
        self.send_in_session(&encode_payload_frame(kind, &payload))
    }

    /// Sends a whole envelope to this client, in its session's stream (its `offset`
    /// is the stream's, whatever the envelope says).
    pub fn send(&self, envelope: &Envelope) -> Result<(), SendError> {
        let envelope = Envelope {
            offset: None,
            ..envelope.clone()
        };
        self.send_in_session(&envelope.encode())
    }

    fn send_in_session(&self, text: &str) -> Result<(), SendError> {
        match self.server() {
            Some(server) => self.shared.session.deliver(
                text,
                now_ms(),
                server.history_budget(),
                &server.config().history,
            ),
            None => Err(SendError::Closed),
        }
    }

    /// Sends the answer to a message: for one with a `ref`, remembered by the session
    /// (a resent copy gets it again) and sent to whichever connection serves the
    /// session now.
    pub(crate) fn reply(&self, ref_id: Option<&str>, frame: String) -> Result<(), SendError> {
        match ref_id {
            Some(r) => self.shared.session.reply(self, r, Text::from(frame)),
            None => self.push(Frame::text(frame)),
        }
    }

    /// Sends a binary frame to this client.
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.push(Frame::Binary(data.into()))
    }

    /// Kicks the client: a final `error` message with code `KICKED` and `reason`, then a
    /// close with 4004, which tells clients not to reconnect. Messages queued before it
    /// are delivered first.
    pub fn disconnect(&self, reason: &str) {
        self.close(ErrorCode::Kicked, reason);
    }

    /// Closes the connection with one of switchboard's codes: a final `error` message
    /// `{code, message: reason}`, then a close frame with the code's close code and a
    /// reason that carries the reconnect hint. Messages queued before it are delivered
    /// first; in-flight handlers finish.
    ///
    /// ```no_run
    /// # fn demo(conn: switchboard_server::Conn) {
    /// use switchboard_server::ErrorCode;
    /// conn.close(ErrorCode::Forbidden, "this account is suspended");
    /// # }
    /// ```
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.shared.outbox.close_with_code(code, reason);
    }

    /// True until the connection has closed.
    pub fn is_connected(&self) -> bool {
        !self.shared.outbox.is_finished()
    }

    /// The rooms this connection is in (after it has gone: the rooms it was in).
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.shared.rooms)
            .names
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    /// True if this connection is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        lock(&self.shared.rooms).contains(room)
    }

    /// Joins `room` (notifying its members with `user_joined`). Returns false if it was
    /// already a member.
    pub fn join(&self, room: &str) -> Result<bool, SendError> {
        match self.server() {
            Some(server) => server.join(self, room),
            None => Err(SendError::Closed),
        }
    }

    /// Leaves `room` (notifying its members with `user_left`). Returns false if it was
    /// not a member.
    pub fn leave(&self, room: &str) -> bool {
        match self.server() {
            Some(server) => server.leave(self, room),
            None => false,
        }
    }

    /// Queues a frame, applying the slow-consumer policy when the queue is full.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), SendError> {
        let pushed = self.shared.outbox.push(frame, self.shared.id);
        if let Err(SendError::Full) = pushed {
            self.count_full();
        }
        pushed
    }

    /// Counts a frame the full queue refused: a slow consumer cut off, or a drop.
    #[cold]
    fn count_full(&self) {
        if let Some(server) = self.server() {
            if let Some(metrics) = server.metrics() {
                if self.is_closing() {
                    metrics.slow_consumer();
                } else {
                    metrics.dropped();
                }
            }
        }
    }

    /// Queues what a resume replays, outside the queue's bounds (they are the
    /// history's frames, bounded by it).
    pub(crate) fn push_replayed(&self, frames: Vec<Text>) {
        self.shared
            .outbox
            .push_replayed(frames.into_iter().map(Frame::Text).collect());
    }

    /// The connection's outbound queue and closing state.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    /// True once closing has begun: the reader reads no more.
    pub(crate) fn is_closing(&self) -> bool {
        self.shared.outbox.is_closing()
    }

    /// Adds `room` to this connection's rooms, `register` (the registry's side) run
    /// under the same lock, so a connection that is going cannot be left in a room.
    /// `Ok(false)`: it was in already.
    pub(crate) fn add_room(
        &self,
        room: &str,
        max: usize,
        register: impl FnOnce() -> Arc<str>,
    ) -> Result<bool, SendError> {
        let mut set = lock(&self.shared.rooms);
        if set.gone {
            return Err(SendError::Closed);
        }
        if set.contains(room) {
            return Ok(false);
        }
        if set.names.len() >= max {
            return Err(SendError::InvalidRoom(format!(
                "a connection may be in at most {max} rooms"
            )));
        }
        let name = register();
        set.insert(name);
        Ok(true)
    }

    /// Takes `room` out of this connection's rooms, `unregister` run under the same
    /// lock; false if it was not in.
    pub(crate) fn remove_room(&self, room: &str, unregister: impl FnOnce()) -> bool {
        let mut set = lock(&self.shared.rooms);
        if !set.remove(room) {
            return false;
        }
        unregister();
        true
    }

    /// The connection has gone: no room will take it any more. Returns the rooms it
    /// was in.
    pub(crate) fn leave_all_rooms(&self) -> Vec<Arc<str>> {
        let mut set = lock(&self.shared.rooms);
        set.gone = true;
        set.names.to_vec()
    }
}

fn dialect_index(dialect: Dialect) -> u8 {
    Dialect::ALL
        .iter()
        .position(|d| *d == dialect)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::RoomSet;

    /// A connection's shared part is one allocation for its whole life: with the
    /// `Arc`'s two counts it fits mimalloc's 320-byte blocks (the next are 384 bytes;
    /// docs/benchmarks.md, "Idle").
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_shared_part_fits_in_320_bytes() {
        let size = std::mem::size_of::<super::ConnShared>() + 16;
        assert!(size <= 320, "Arc<ConnShared> allocates {size} bytes");
    }

    #[test]
    fn a_room_set_stays_sorted_and_exact() {
        let mut set = RoomSet::default();
        for room in ["lobby", "general", "zoo", "general", "a"] {
            set.insert(Arc::from(room));
        }
        let names: Vec<&str> = set.names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["a", "general", "lobby", "zoo"]);
        assert_eq!(set.names.len(), 4);
        assert!(set.contains("lobby") && !set.contains("lobb") && !set.contains("zz"));
        assert!(set.remove("general"));
        assert!(!set.remove("general"));
        assert!(!set.contains("general"));
        assert!(set.remove("a") && set.remove("zoo") && set.remove("lobby"));
        assert!(set.names.is_empty());
    }
}
