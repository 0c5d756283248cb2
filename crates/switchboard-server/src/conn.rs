//! A connection handle and its bounded outbound queue.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use serde::Serialize;
use switchboard_proto::{
    Dialect, Envelope, ErrorBody, ErrorCode, Parts, Payload, close_reason, encode_parts,
    error_frame,
};

use crate::config::SlowConsumerPolicy;
use crate::server::ServerInner;
use crate::transport::Utf8Bytes;
use crate::util::{lock, now_ms};
use crate::{ConnId, Identity, SendError, Server};

/// One pre-encoded outgoing frame. Clones share the bytes, so a broadcast encodes once.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// Text already in the connection's dialect: written as it is, never translated.
    Dialect(Utf8Bytes),
    /// A WebSocket ping (heartbeat).
    Ping,
}

impl Frame {
    pub(crate) fn text(s: String) -> Frame {
        Frame::Text(Utf8Bytes::from(s))
    }

    fn len(&self) -> usize {
        match self {
            Frame::Text(t) | Frame::Dialect(t) => t.len(),
            Frame::Binary(b) => b.len(),
            Frame::Ping => 0,
        }
    }
}

/// How and why a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
    /// Abort: drop what is queued and stop now (slow consumer, write error). Otherwise
    /// in-flight handlers finish and queued frames are flushed first.
    pub(crate) abort: bool,
    /// The close was the client's doing (it closed, or the socket dropped): no close
    /// frame of ours to send.
    pub(crate) by_client: bool,
}

#[derive(Debug, Default)]
struct OutboxState {
    frames: VecDeque<Frame>,
    bytes: usize,
    closing: Option<Closing>,
    /// The `error` frame written just before the close frame, after everything queued.
    final_error: Option<String>,
    reader_done: bool,
    finished: bool,
}

/// What the writer should do next.
pub(crate) enum WriterStep {
    /// Frames were moved into the batch: write them, flush once.
    Write,
    /// Nothing to do until notified.
    Wait,
    /// Done: close with this.
    Finish(Closing),
}

/// The rooms a connection is in; `gone` is set when it disconnects, under the same
/// lock, so a late join cannot leave a dead connection in a room.
#[derive(Debug, Default)]
pub(crate) struct RoomSet {
    pub(crate) names: HashSet<Arc<str>>,
    pub(crate) gone: bool,
}

pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    pub(crate) session_id: String,
    pub(crate) remote_addr: Option<SocketAddr>,
    server: Weak<ServerInner>,
    outbox: Mutex<OutboxState>,
    queue_len: usize,
    queue_bytes: usize,
    policy: SlowConsumerPolicy,
    /// The connection's task, woken when frames are queued or closing begins.
    waker: AtomicWaker,
    /// True while the task runs: it looks again before it sleeps when `dirty` is set,
    /// so nothing needs to wake it.
    polling: AtomicBool,
    /// Something for the task happened (a frame queued, closing begun).
    dirty: AtomicBool,
    /// Set once closing has begun (the reader stops reading).
    closing: AtomicBool,
    pub(crate) rooms: Mutex<RoomSet>,
    /// Who the client authenticated as; set once.
    identity: OnceLock<Arc<Identity>>,
    /// When the client last sent anything ([`now_ms`]), for heartbeats.
    last_seen: AtomicU64,
    /// The wire format this client speaks (an index into [`Dialect::ALL`]).
    dialect: AtomicU8,
}

/// A connected client, as server code sees it: cheap to clone, safe to keep.
///
/// Sends never wait: they queue a frame on the connection's bounded outbound queue and
/// return. A client that does not keep up meets the server's [`SlowConsumerPolicy`].
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
    pub(crate) shared: Arc<ConnShared>,
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
        server: &Arc<ServerInner>,
        dialect: Dialect,
    ) -> Conn {
        let config = &server.config;
        Conn {
            shared: Arc::new(ConnShared {
                id,
                session_id: format!("{:016x}", crate::id::random_u64()),
                remote_addr,
                server: Arc::downgrade(server),
                outbox: Mutex::new(OutboxState::default()),
                queue_len: config.outbound_queue.max(1),
                queue_bytes: config.outbound_queue_bytes.max(1),
                policy: config.slow_consumer,
                waker: AtomicWaker::new(),
                polling: AtomicBool::new(false),
                dirty: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                rooms: Mutex::new(RoomSet::default()),
                identity: OnceLock::new(),
                last_seen: AtomicU64::new(now_ms()),
                dialect: AtomicU8::new(dialect_index(dialect)),
            }),
        }
    }

    /// The connection's id (`client_id` on the wire).
    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    /// This connection's session id (`session_id` in `connected`).
    pub fn session_id(&self) -> &str {
        &self.shared.session_id
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
        self.shared.identity.get().is_some()
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
    pub fn identity(&self) -> Option<&Identity> {
        self.shared.identity.get().map(|i| &**i)
    }

    /// Records the identity; false if the connection already had one.
    pub(crate) fn set_identity(&self, identity: Identity) -> bool {
        self.shared.identity.set(Arc::new(identity)).is_ok()
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
        self.shared.server.upgrade().map(|inner| Server { inner })
    }

    /// Sends `{"type": kind, "payload": payload}` to this client.
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
        self.push(Frame::text(encode_parts(&Parts {
            kind,
            payload: payload.as_raw(),
            ref_id: None,
            room: None,
            to: None,
            from: None,
        })))
    }

    /// Sends a whole envelope to this client.
    pub fn send(&self, envelope: &Envelope) -> Result<(), SendError> {
        self.push(Frame::text(envelope.encode()))
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
        self.close_with_error(
            Closing {
                code: code.close_code_or_internal(),
                reason: close_reason(code, reason),
                abort: false,
                by_client: false,
            },
            &ErrorBody::new(code, reason),
        );
    }

    /// Begins closing with a final `error` frame, sent after everything already queued.
    pub(crate) fn close_with_error(&self, closing: Closing, error: &ErrorBody) {
        {
            let mut st = lock(&self.shared.outbox);
            if st.closing.is_none() && st.final_error.is_none() {
                st.final_error = Some(error_frame(error));
            }
        }
        self.begin_close(closing);
    }

    /// The final `error` frame, if the close has one.
    pub(crate) fn take_final_error(&self) -> Option<String> {
        lock(&self.shared.outbox).final_error.take()
    }

    /// True until the connection has closed.
    pub fn is_connected(&self) -> bool {
        !lock(&self.shared.outbox).finished
    }

    /// The rooms this connection is in (after it has gone: the rooms it was in).
    pub fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = lock(&self.shared.rooms)
            .names
            .iter()
            .map(|r| r.to_string())
            .collect();
        rooms.sort();
        rooms
    }

    /// True if this connection is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        lock(&self.shared.rooms).names.contains(room)
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
        let mut st = lock(&self.shared.outbox);
        if st.finished || st.closing.as_ref().is_some_and(|c| c.abort || c.by_client) {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        // One frame is always accepted into an empty queue, however big (the message
        // size limit bounds it), so a large reply cannot count as a slow consumer.
        let full = !st.frames.is_empty()
            && (st.frames.len() >= self.shared.queue_len
                || st.bytes + len > self.shared.queue_bytes);
        if full {
            match self.shared.policy {
                SlowConsumerPolicy::DropNew => {
                    tracing::debug!(conn = %self.shared.id, "outbound queue full, message dropped");
                    return Err(SendError::Full);
                }
                SlowConsumerPolicy::Disconnect => {
                    tracing::info!(conn = %self.shared.id, "slow consumer, disconnecting");
                    st.frames.clear();
                    st.bytes = 0;
                    st.closing = Some(Closing {
                        code: ErrorCode::SlowConsumer.close_code_or_internal(),
                        reason: close_reason(ErrorCode::SlowConsumer, "outbound queue full"),
                        abort: true,
                        by_client: false,
                    });
                    self.shared.closing.store(true, Ordering::Release);
                    drop(st);
                    self.wake();
                    return Err(SendError::Full);
                }
            }
        }
        st.bytes += len;
        st.frames.push_back(frame);
        drop(st);
        self.wake();
        Ok(())
    }

    /// Wakes the connection's task, unless it is running (it then looks at the queue
    /// and the closing state before it sleeps; see [`Conn::sleeping`]).
    fn wake(&self) {
        self.shared.dirty.store(true, Ordering::SeqCst);
        if !self.shared.polling.load(Ordering::SeqCst) {
            self.shared.waker.wake();
        }
    }

    /// The connection's task starts a turn: nothing needs to wake it until
    /// [`sleeping`](Conn::sleeping).
    pub(crate) fn awake(&self, waker: &std::task::Waker) {
        self.shared.waker.register(waker);
        self.shared.polling.store(true, Ordering::SeqCst);
        self.shared.dirty.store(false, Ordering::SeqCst);
    }

    /// The connection's task is about to sleep: false if something happened during its
    /// turn (it must look again). Whatever happens after this wakes it.
    pub(crate) fn sleeping(&self) -> bool {
        self.shared.polling.store(false, Ordering::SeqCst);
        if self.shared.dirty.swap(false, Ordering::SeqCst) {
            self.shared.polling.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// True once closing has begun: the reader reads no more.
    pub(crate) fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Starts closing; the first reason wins, except that an abort overrides a graceful close.
    pub(crate) fn begin_close(&self, closing: Closing) {
        let mut st = lock(&self.shared.outbox);
        match &st.closing {
            Some(existing) if existing.abort || !closing.abort => return,
            _ => {}
        }
        if closing.abort {
            st.frames.clear();
            st.bytes = 0;
        }
        st.closing = Some(closing);
        self.shared.closing.store(true, Ordering::Release);
        drop(st);
        self.wake();
    }

    /// The reader has stopped: no more handlers will run for this connection.
    pub(crate) fn reader_finished(&self, closing_if_none: Closing) {
        let mut st = lock(&self.shared.outbox);
        st.reader_done = true;
        if st.closing.is_none() {
            st.closing = Some(closing_if_none);
        }
        self.shared.closing.store(true, Ordering::Release);
    }

    /// Moves queued frames into `batch`, or says to wait or finish.
    pub(crate) fn take_batch(&self, batch: &mut VecDeque<Frame>) -> WriterStep {
        let mut st = lock(&self.shared.outbox);
        if let Some(c) = st.closing.clone() {
            if c.abort || c.by_client {
                st.finished = true;
                return WriterStep::Finish(c);
            }
        }
        if !st.frames.is_empty() {
            std::mem::swap(&mut st.frames, batch);
            st.bytes = 0;
            return WriterStep::Write;
        }
        // Going idle: one queue buffer is enough, and after a burst none that is big.
        // The writer's is handed back when the queue has none, so a steady exchange of
        // messages allocates nothing here.
        if st.frames.capacity() > 64 {
            st.frames = VecDeque::new();
        }
        if st.frames.capacity() == 0 && batch.capacity() <= 64 {
            std::mem::swap(&mut st.frames, batch);
        } else {
            *batch = VecDeque::new();
        }
        match &st.closing {
            Some(c) if st.reader_done => {
                let c = c.clone();
                st.finished = true;
                WriterStep::Finish(c)
            }
            _ => WriterStep::Wait,
        }
    }

    /// The closing state, if closing has begun.
    pub(crate) fn closing(&self) -> Option<Closing> {
        lock(&self.shared.outbox).closing.clone()
    }

    /// Marks the connection finished (no more frames accepted).
    pub(crate) fn mark_finished(&self) {
        lock(&self.shared.outbox).finished = true;
        // The task is ending: a `Conn` kept by application code must not keep it alive.
        drop(self.shared.waker.take());
    }
}

fn dialect_index(dialect: Dialect) -> u8 {
    Dialect::ALL
        .iter()
        .position(|d| *d == dialect)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}
