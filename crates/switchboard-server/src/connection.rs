//! The task that runs one connection: read and dispatch, write from the outbox, close.
//!
//! One task per connection and one loop in it, over the unsplit socket: each turn
//! reads what has come in (handling each message's handlers in order), then moves every
//! queued frame into the socket and flushes once. A handler that has to wait holds up
//! reading, not writing, so it never stalls delivery to its own client.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::json;
use switchboard_proto::code::close;
use switchboard_proto::{
    Dialect, Envelope, ErrorBody, ErrorCode, Parts, RawValue, ack_ok, close_reason, dialect,
    encode_parts, error_reply, types,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::auth::{Credentials, Outcome};
use crate::backplane::{PresenceEvent, Target};
use crate::conn::{Closing, Conn, Frame, WriterStep};
use crate::extract::MessageContext;
use crate::handler::{BoxFuture, HandlerResult};
use crate::router::Route;
use crate::rpc;
use crate::server::{DisconnectReason, validate_room};
use crate::transport::{self, Message, ReadError, Ws, WsError};
use crate::{ConnId, Identity, Server};

/// What a connection does with the messages it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// switchboard's protocol (in this dialect): envelopes, handlers, rooms.
    Messages(Dialect),
    /// Every data frame is sent back as it came (conformance suites, benchmarks).
    Echo,
}

/// Everything an open connection's task keeps between messages.
struct Session {
    server: Server,
    conn: Conn,
    ws: Ws,
    limiter: RateLimiter,
    mode: Mode,
    calls: Option<Calls>,
    /// Work that holds up reading: the connect hooks, a handler that had to wait, the
    /// calls still running when reading ended.
    rest: Option<Rest>,
    reading: Reading,
    /// The socket had nothing the last time it was read: wait for its readiness.
    read_blocked: bool,
    /// Frames taken from the outbox and not yet handed to the socket.
    batch: VecDeque<Frame>,
    /// Frames were handed to the socket since the last flush.
    unflushed: bool,
    /// Whether the next text frame is the connection's first (dialect detection).
    first_frame: bool,
    /// The writer is done, gracefully; the reader has yet to finish.
    finished: Option<Closing>,
}

/// Where reading is.
enum Reading {
    Open,
    /// No more reading; finishing once `rest` is done (with the client's reason, if the
    /// client ended it).
    Draining(Option<Closing>),
    Done,
}

/// How many messages one turn reads before it writes what they produced.
const MESSAGES_PER_TURN: usize = 32;

/// Runs one connection from its upgrade to its end.
///
/// A task's memory is the size of its largest state, kept for the connection's whole
/// life. Opening (admission, authentication) and closing (the close handshake, the
/// disconnect hooks) happen once and are large, so they run boxed, and so does the
/// handling of each message: an idle connection's task holds only what it needs to
/// wait for the next frame. (Not an `async fn`: its arguments, the socket among them,
/// would stay in its state for good.) `tracked` counts it in the server's tasks.
pub(crate) fn run(
    server: Server,
    socket: Ws,
    remote: Option<SocketAddr>,
    mode: Mode,
    tracked: TaskTrackerToken,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(open(server, socket, remote, mode));
    async move {
        if let Some(mut session) = opening.await {
            let closing = session.serve().await;
            Box::pin(session.close(closing)).await;
        }
        // Shutdown waits for this.
        drop(tracked);
    }
}

/// Admission, authentication, registration and the `connected` message; `None` when the
/// connection was turned away.
async fn open(
    server: Server,
    socket: Ws,
    remote: Option<SocketAddr>,
    mode: Mode,
) -> Option<Session> {
    let inner = &server.inner;
    let config = &inner.config;
    let mut ws = socket;
    let dialect = match mode {
        Mode::Messages(d) => d,
        Mode::Echo => Dialect::Native,
    };
    let id = inner.ids.next();
    let who = (dialect, id);

    let admitted = inner.admitted.fetch_add(1, Ordering::AcqRel) + 1;
    if admitted > config.max_connections {
        inner.admitted.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            max = config.max_connections,
            "connection refused: server full"
        );
        refuse(
            &mut ws,
            who,
            None,
            ErrorCode::ServerFull,
            "server at its connection limit",
            config.close_timeout,
        )
        .await;
        return None;
    }

    let mut limiter = RateLimiter::new(config.rate_limit, config.rate_burst);
    let must_authenticate =
        matches!(mode, Mode::Messages(_)) && config.auth_required && inner.auth.is_configured();
    let authenticated = if must_authenticate {
        match authenticate(&server, who, remote, &mut ws, &mut limiter).await {
            Some(done) => Some(done),
            None => {
                inner.admitted.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
    } else {
        None
    };

    let conn = Conn::new(id, remote, inner, dialect);
    let auth_ref = authenticated.and_then(|(identity, ref_id)| {
        conn.set_identity(identity);
        ref_id
    });
    inner.registry.insert(conn.clone());
    inner
        .backplane
        .presence(&PresenceEvent::Connected(conn.id()));
    tracing::debug!(conn = %conn.id(), ?remote, "connected");
    if server.is_shutting_down() {
        // Shutdown swept the registry before we were in it.
        conn.close(ErrorCode::ShuttingDown, "server shutting down");
    }
    if matches!(mode, Mode::Messages(_)) {
        let _ = conn.send_message(types::CONNECTED, &connected_payload(&server, &conn));
        if let Some(r) = auth_ref {
            let result = serde_json::value::to_raw_value(&auth_result(&conn)).ok();
            let _ = conn.push(Frame::text(ack_ok(&r, result.as_deref())));
        }
    }
    // The connect hooks run first, before the client's messages.
    let hooks = (!inner.hooks.connect.is_empty()).then(|| connect_hooks(&server, &conn));
    Some(Session {
        server,
        conn,
        ws,
        limiter,
        mode,
        calls: None,
        rest: hooks,
        reading: Reading::Open,
        read_blocked: false,
        batch: VecDeque::new(),
        unflushed: false,
        first_frame: true,
        finished: None,
    })
}

impl Session {
    /// Reads and handles messages, and writes from the outbox, until the connection
    /// closes: one task, one loop, the socket unsplit. Each turn reads what has come
    /// in (a bounded number of messages), then writes what that produced and whatever
    /// else was queued, flushing once. Reading waits on the socket's readiness, so a
    /// turn started by a queued frame costs no read attempt.
    async fn serve(&mut self) -> Closing {
        std::future::poll_fn(|cx| self.poll_serve(cx)).await
    }

    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Closing> {
        self.conn.awake(cx.waker());
        loop {
            let read = self.poll_read(cx);
            if let Poll::Ready(closing) = self.poll_write(cx) {
                if closing.abort || matches!(self.reading, Reading::Done) {
                    return Poll::Ready(closing);
                }
                // A graceful finish waits for the reader: its last handler, its calls.
                self.finished = Some(closing);
            }
            if let (Some(_), Reading::Done) = (&self.finished, &self.reading) {
                return Poll::Ready(self.finished.take().unwrap_or_else(|| lost("closed")));
            }
            if !read && self.conn.sleeping() {
                return Poll::Pending;
            }
            self.conn.awake(cx.waker());
        }
    }

    /// Reads and handles up to a turn's worth of messages. True if it did something
    /// (the caller then writes and comes back).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for _ in 0..MESSAGES_PER_TURN {
            // A handler that has to wait (or the connect hooks, or the calls still
            // running at the end) holds up reading: messages are handled in order.
            if let Some(rest) = &mut self.rest {
                match rest.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.rest = None;
                        progress = true;
                    }
                    Poll::Pending => return progress,
                }
            }
            match &self.reading {
                Reading::Open => {}
                Reading::Draining(_) => {
                    // The calls have answered (or were cancelled): the reader is done.
                    let end = match std::mem::replace(&mut self.reading, Reading::Done) {
                        Reading::Draining(end) => end,
                        _ => None,
                    };
                    self.conn
                        .reader_finished(end.unwrap_or_else(|| lost("closed")));
                    return true;
                }
                Reading::Done => return progress,
            }
            if self.conn.is_closing() {
                self.stop_reading(None);
                progress = true;
                continue;
            }
            if self.read_blocked {
                if self.ws.get_ref().poll_read_ready(cx).is_pending() {
                    return progress;
                }
                self.read_blocked = false;
            }
            let next = match self.ws.poll_next_unpin(cx) {
                Poll::Pending => {
                    self.read_blocked = true;
                    return progress;
                }
                Poll::Ready(next) => next,
            };
            progress = true;
            self.conn.touch();
            if let Some(end) = self.received(next) {
                self.stop_reading(end);
            }
        }
        progress
    }

    /// Handles one thing read from the socket; `Some` when reading ends (with the
    /// reason when it is the client's doing).
    fn received(&mut self, next: Option<Result<Message, WsError>>) -> Option<Option<Closing>> {
        let (server, conn) = (&self.server, &self.conn);
        let message = match next {
            None => return Some(Some(lost("connection dropped"))),
            Some(Err(e)) => {
                let closing = read_error_closing(&e, server.config().max_message_size);
                if closing.abort {
                    return Some(Some(closing));
                }
                if closing.code == close::MESSAGE_TOO_BIG {
                    let max = server.config().max_message_size;
                    let body = ErrorBody::new(
                        ErrorCode::MessageTooLarge,
                        format!("a message may be at most {max} bytes"),
                    );
                    conn.close_with_error(closing, &body);
                } else {
                    conn.begin_close(closing);
                }
                return Some(None);
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                };
                return Some(Some(Closing {
                    code,
                    reason,
                    abort: false,
                    by_client: true,
                }));
            }
            // The socket library answers pings itself; a pong only proves life.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
            Some(Ok(m)) => m,
        };
        match self.limiter.admit() {
            Admit::Yes => {}
            Admit::No { first } => {
                rate_limited(conn, &message, first, self.limiter.retry_after_ms());
                return None;
            }
            Admit::Close => {
                tracing::info!(conn = %conn.id(), "closing a client that keeps flooding");
                conn.close(ErrorCode::RateLimited, "kept sending while rate limited");
                return Some(None);
            }
        }
        self.rest = match (self.mode, message) {
            (Mode::Echo, Message::Text(text)) => {
                let _ = conn.push(Frame::Text(text));
                None
            }
            (Mode::Echo, Message::Binary(data)) => {
                let _ = conn.push(Frame::Binary(data));
                None
            }
            (_, Message::Text(text)) => {
                let first = std::mem::take(&mut self.first_frame);
                dispatch_text(server, conn, text.as_str(), &mut self.calls, first)
            }
            // Metafor's reference server answers anything it cannot read by echoing it.
            (_, Message::Binary(data)) if conn.dialect() == Dialect::Metafor => {
                let _ = conn.push(Frame::Binary(data));
                None
            }
            (_, Message::Binary(data)) => dispatch_binary(server, conn, data),
            _ => None,
        };
        None
    }

    /// Reading has ended (`end`: the client's doing, if it was). The client gone, its
    /// calls' answers have nowhere to go; the server closing gracefully lets them answer.
    fn stop_reading(&mut self, end: Option<Closing>) {
        if let Some(calls) = &self.calls {
            if end.as_ref().is_some_and(|c| c.by_client) {
                calls.cancel.cancel();
            } else {
                let (slots, max) = (calls.semaphore.clone(), calls.max);
                let drain = async move {
                    let _ = slots.acquire_many(max).await;
                };
                // After the handler in flight, if any.
                self.rest = Some(match self.rest.take() {
                    Some(first) => Box::pin(async move {
                        first.await;
                        drain.await;
                    }),
                    None => Box::pin(drain),
                });
            }
        }
        self.reading = Reading::Draining(end);
    }

    /// Writes what is queued (moved out of the outbox in one go), then flushes once.
    /// Ready when the connection is to close.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Closing> {
        loop {
            if self.batch.is_empty() {
                match self.conn.take_batch(&mut self.batch) {
                    WriterStep::Finish(closing) => return Poll::Ready(closing),
                    WriterStep::Wait => {
                        // A flush the socket could not take at once is finished here.
                        if self.unflushed {
                            match self.ws.poll_flush_unpin(cx) {
                                Poll::Ready(Ok(())) => self.unflushed = false,
                                Poll::Ready(Err(e)) => {
                                    self.unflushed = false;
                                    self.conn.begin_close(lost(format!("write failed: {e}")));
                                    continue;
                                }
                                Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                    WriterStep::Write => {}
                }
            } else if self.conn.closing().is_some_and(|c| c.abort) {
                // The client does not read: stop writing to it.
                self.batch.clear();
                continue;
            }
            if let Err(e) = self.write_batch(cx) {
                self.batch.clear();
                self.conn.begin_close(lost(format!("write failed: {e}")));
                continue;
            }
            if !self.batch.is_empty() {
                return Poll::Pending;
            }
        }
    }

    /// Feeds the batch's frames and flushes; what the socket cannot take yet stays in
    /// the batch (the socket wakes the task when it can).
    fn write_batch(&mut self, cx: &mut Context<'_>) -> Result<(), WsError> {
        let dialect = self.conn.dialect();
        let id = if dialect == Dialect::Datadivr {
            self.conn.id().to_string()
        } else {
            String::new()
        };
        while !self.batch.is_empty() {
            if self.ws.poll_ready_unpin(cx)?.is_pending() {
                return Ok(());
            }
            if let Some(msg) = self
                .batch
                .pop_front()
                .and_then(|frame| transport::to_message(frame, dialect, &id))
            {
                self.ws.start_send_unpin(msg)?;
                self.unflushed = true;
            }
        }
        if self.unflushed && self.ws.poll_flush_unpin(cx)?.is_ready() {
            self.unflushed = false;
        }
        Ok(())
    }

    /// The close handshake, unregistration and the disconnect hooks.
    async fn close(self, closing: Closing) {
        let Session {
            server,
            conn,
            mut ws,
            calls,
            ..
        } = self;
        let inner = &server.inner;
        let final_error = conn
            .take_final_error()
            .and_then(|e| localize(conn.dialect(), conn.id(), e));
        finish(&mut ws, &closing, final_error, inner.config.close_timeout).await;
        drop(ws);
        conn.mark_finished();
        if let Some(calls) = calls {
            // Calls still running have nobody to answer.
            calls.cancel.cancel();
        }

        server.remove_connection(&conn);
        let reason = DisconnectReason {
            code: closing.code,
            reason: closing.reason.clone(),
            by_server: !closing.by_client,
        };
        tracing::debug!(conn = %conn.id(), code = reason.code, reason = %reason.reason, "disconnected");
        for hook in &inner.hooks.disconnect {
            if AssertUnwindSafe(hook(conn.clone(), reason.clone()))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(conn = %conn.id(), "a disconnect hook panicked");
            }
        }
    }
}

/// A native frame in the client's dialect (`None`: that dialect has no such frame).
fn localize(dialect: Dialect, client_id: ConnId, native: String) -> Option<String> {
    match dialect {
        Dialect::Datadivr => dialect::datadivr::outgoing(&native, &client_id.to_string()),
        Dialect::Metafor => dialect::metafor::outgoing(&native),
        _ => Some(native),
    }
}

/// The payload of `connected`: `{client_id, session_id, server, identity?}`.
pub(crate) fn connected_payload(server: &Server, conn: &Conn) -> serde_json::Value {
    let mut payload = json!({
        "client_id": conn.id(),
        "session_id": conn.session_id(),
        "server": server.inner.config.name,
    });
    if let Some(identity) = conn.identity() {
        payload["identity"] = json!(identity);
    }
    payload
}

/// The result of a successful `auth`: `{client_id, identity}`.
pub(crate) fn auth_result(conn: &Conn) -> serde_json::Value {
    json!({ "client_id": conn.id(), "identity": conn.identity() })
}

/// The authentication phase: the client's first message must be `auth`, within the auth
/// timeout. Returns the identity and the `ref` of the `auth` message, or `None` when the
/// connection was refused (and closed) or dropped.
async fn authenticate(
    server: &Server,
    who: (Dialect, ConnId),
    remote: Option<SocketAddr>,
    ws: &mut Ws,
    limiter: &mut RateLimiter,
) -> Option<(Identity, Option<String>)> {
    let inner = &server.inner;
    let config = &inner.config;
    let id = who.1;
    let deadline = tokio::time::Instant::now() + config.auth_timeout;
    let limit = config.close_timeout;
    let timed_out = || {
        format!(
            "no `auth` message within {} ms",
            config.auth_timeout.as_millis()
        )
    };
    loop {
        let next = tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                refuse(
                ws,
                who, None, ErrorCode::AuthTimeout, &timed_out(), limit).await;
                return None;
            }
            () = inner.stop_accepting.cancelled() => {
                refuse(
                ws,
                who, None, ErrorCode::ShuttingDown, "server shutting down", limit).await;
                return None;
            }
            next = ws.next() => next,
        };
        let text = match next {
            None => return None,
            Some(Err(e)) => {
                let closing = read_error_closing(&e, config.max_message_size);
                finish(ws, &closing, None, limit).await;
                return None;
            }
            Some(Ok(Message::Close(_))) => {
                finish(ws, &lost("closed"), None, limit).await;
                return None;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => None,
            Some(Ok(Message::Text(text))) => Some(text),
        };
        let env = text.as_deref().map(|t| match who.0 {
            Dialect::Datadivr => dialect::datadivr::incoming(t),
            _ => Envelope::decode(t),
        });
        let ref_id = match &env {
            Some(Ok(env)) => env.ref_id.clone(),
            Some(Err(e)) => e.ref_id.clone(),
            None => None,
        };
        match limiter.admit() {
            Admit::Yes => {}
            Admit::Close => {
                let msg = "too many messages before authenticating";
                refuse(
                    ws,
                    who,
                    ref_id.as_deref(),
                    ErrorCode::RateLimited,
                    msg,
                    limit,
                )
                .await;
                return None;
            }
            Admit::No { .. } => continue,
        }
        let reply = match env {
            Some(Ok(env)) if env.kind == types::AUTH => {
                let credentials = Credentials::new(env.payload, remote);
                let checked = tokio::time::timeout_at(
                    deadline,
                    inner.auth.check(credentials, id.to_string()),
                );
                match checked.await {
                    Err(_) => {
                        refuse(
                            ws,
                            who,
                            ref_id.as_deref(),
                            ErrorCode::AuthTimeout,
                            &timed_out(),
                            limit,
                        )
                        .await;
                        return None;
                    }
                    Ok(Outcome::Accepted(identity)) => {
                        tracing::debug!(conn = %id, identity = %identity.id, "authenticated");
                        return Some((identity, ref_id));
                    }
                    Ok(Outcome::Rejected(message)) => {
                        tracing::info!(?remote, "authentication failed");
                        refuse(
                            ws,
                            who,
                            ref_id.as_deref(),
                            ErrorCode::AuthFailed,
                            &message,
                            limit,
                        )
                        .await;
                        return None;
                    }
                    Ok(Outcome::Throttled(wait)) => {
                        let msg = crate::auth::throttled_message(wait);
                        refuse(
                            ws,
                            who,
                            ref_id.as_deref(),
                            ErrorCode::RateLimited,
                            &msg,
                            limit,
                        )
                        .await;
                        return None;
                    }
                }
            }
            Some(Err(e)) => ErrorBody::new(e.code(), e.to_string()),
            _ => ErrorBody::new(
                ErrorCode::AuthRequired,
                "authenticate first: send {\"type\":\"auth\",\"payload\":{\"password\":\"...\"}}",
            ),
        };
        let Some(frame) = localize(who.0, id, error_reply(ref_id.as_deref(), &reply)) else {
            continue;
        };
        if !matches!(
            tokio::time::timeout(limit, ws.send(Message::Text(frame.into()))).await,
            Ok(Ok(()))
        ) {
            return None;
        }
    }
}

/// What the rate limiter says about one incoming message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Process it.
    Yes,
    /// Drop it; `first` is true for the first drop in a row (tell the client).
    No { first: bool },
    /// The client kept sending while limited: close it.
    Close,
}

/// A token bucket per connection: `rate` messages a second on average, `burst` at once.
/// A client that goes on sending more than `burst` messages in a row while limited is
/// closed.
pub(crate) struct RateLimiter {
    per_ms: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
    dropped: u32,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            per_ms: f64::from(rate) / 1000.0,
            burst,
            tokens: burst,
            last: std::time::Instant::now(),
            dropped: 0,
        }
    }

    pub(crate) fn admit(&mut self) -> Admit {
        self.admit_at(std::time::Instant::now())
    }

    fn admit_at(&mut self, now: std::time::Instant) -> Admit {
        if self.per_ms <= 0.0 {
            return Admit::Yes;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.dropped = 0;
            return Admit::Yes;
        }
        self.dropped = self.dropped.saturating_add(1);
        if f64::from(self.dropped) > self.burst {
            Admit::Close
        } else {
            Admit::No {
                first: self.dropped == 1,
            }
        }
    }

    /// Milliseconds until the next message would be admitted.
    pub(crate) fn retry_after_ms(&self) -> u64 {
        if self.per_ms <= 0.0 {
            return 0;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        // Rounded up; small and positive by construction.
        (missing / self.per_ms).ceil() as u64
    }
}

/// Turns a connection away: an `error` frame, then a close with the code's close code.
async fn refuse(
    ws: &mut Ws,
    who: (Dialect, ConnId),
    ref_id: Option<&str>,
    code: ErrorCode,
    message: &str,
    limit: std::time::Duration,
) {
    let error = localize(
        who.0,
        who.1,
        error_reply(ref_id, &ErrorBody::new(code, message)),
    );
    let closing = Closing {
        code: code.close_code_or_internal(),
        reason: close_reason(code, message),
        abort: false,
        by_client: false,
    };
    finish(ws, &closing, error, limit).await;
}

fn lost(reason: impl Into<String>) -> Closing {
    Closing {
        code: close::ABNORMAL,
        reason: reason.into(),
        abort: true,
        by_client: true,
    }
}

/// How a read error ends the connection: the close code the RFC asks for, or a dropped
/// connection when the socket itself failed.
fn read_error_closing(err: &WsError, max_message_size: usize) -> Closing {
    match transport::classify_read_error(err) {
        ReadError::TooLarge => Closing {
            code: close::MESSAGE_TOO_BIG,
            reason: close_reason(
                ErrorCode::MessageTooLarge,
                &format!("limit is {max_message_size} bytes"),
            ),
            abort: false,
            by_client: false,
        },
        ReadError::InvalidUtf8 => Closing {
            code: close::INVALID_DATA,
            reason: "invalid UTF-8 in a text frame".into(),
            abort: false,
            by_client: false,
        },
        ReadError::Protocol(what) => Closing {
            code: close::PROTOCOL_ERROR,
            reason: truncate_reason(what),
            abort: false,
            by_client: false,
        },
        ReadError::Lost(what) => lost(what),
    }
}

/// A close reason must fit in 123 bytes.
fn truncate_reason(mut s: String) -> String {
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The connect hooks, in order, before the client's first message is handled.
fn connect_hooks(server: &Server, conn: &Conn) -> Rest {
    let (server, conn) = (server.clone(), conn.clone());
    Box::pin(async move {
        for hook in &server.inner.hooks.connect {
            if AssertUnwindSafe(hook(conn.clone()))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(conn = %conn.id(), "a connect hook panicked");
            }
        }
    })
}

/// The RPC calls of one connection: at most `max` run at once, each in its own task.
pub(crate) struct Calls {
    semaphore: Arc<Semaphore>,
    cancel: CancellationToken,
    max: u32,
}

impl Calls {
    fn new(max: usize) -> Calls {
        let max = u32::try_from(max.clamp(1, 1 << 20)).unwrap_or(1);
        Calls {
            semaphore: Arc::new(Semaphore::new(max as usize)),
            cancel: CancellationToken::new(),
            max,
        }
    }
}

/// Starts an RPC call: checks it (method, auth, params) here, then runs it (see
/// [`begin_call`]). When `max_calls_in_flight` are running, what is returned waits for
/// one to finish (the client is not read meanwhile: back-pressure instead of an
/// unbounded backlog).
fn start_call(
    server: &Server,
    conn: &Conn,
    env: Envelope,
    calls: &mut Option<Calls>,
) -> Option<Rest> {
    let cx = MessageContext::new(server, conn, env, None);
    let ref_id = cx.envelope.ref_id.clone();
    let prepared = match rpc::prepare(&server.inner.methods, &cx) {
        Ok(p) => p,
        Err(e) => {
            send_error(conn, ref_id.as_deref(), e.body());
            return None;
        }
    };
    // A slot first: at most `max_calls_in_flight` calls run at once, counting this one.
    let calls = calls.get_or_insert_with(|| Calls::new(server.config().max_calls_in_flight));
    let cancel = calls.cancel.clone();
    match calls.semaphore.clone().try_acquire_owned() {
        Ok(permit) => {
            begin_call(cx, prepared, ref_id, permit, cancel);
            None
        }
        Err(_) => {
            // Every slot is taken: wait for one before reading on (back-pressure
            // instead of an unbounded backlog), unless the connection closes.
            let slots = calls.semaphore.clone();
            Some(Box::pin(async move {
                let acquire = slots.acquire_owned();
                tokio::pin!(acquire);
                let permit = std::future::poll_fn(|task| {
                    if cx.conn.is_closing() {
                        return Poll::Ready(None);
                    }
                    acquire.as_mut().poll(task).map(Result::ok)
                })
                .await;
                if let Some(permit) = permit {
                    begin_call(cx, prepared, ref_id, permit, cancel);
                }
            }))
        }
    }
}

/// Runs a call that holds its slot. Most methods finish without waiting (a
/// computation, a lookup): those are answered at once. Only a call that has to wait
/// runs in a task of its own, so it holds up neither the connection nor other calls.
fn begin_call(
    cx: MessageContext,
    prepared: rpc::Prepared,
    ref_id: Option<String>,
    permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    let (server, conn) = (cx.server.clone(), cx.conn.clone());
    let method = prepared.method();
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| prepared.run(cx)));
    let mut fut = match started {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
        Err(panic) => return rpc_reply(&conn, ref_id.as_deref(), method.name(), Err(panic)),
    };
    if let Some(outcome) = (&mut fut).now_or_never() {
        drop(permit);
        return rpc_reply(&conn, ref_id.as_deref(), method.name(), outcome);
    }
    server.inner.tracker.spawn(async move {
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = fut => r,
        };
        rpc_reply(&conn, ref_id.as_deref(), method.name(), outcome);
        drop(permit);
    });
}

type CallOutcome =
    Result<Result<Box<RawValue>, crate::HandlerError>, Box<dyn std::any::Any + Send>>;

/// Queues a call's answer: the ack of its `ref`, or `rpc_response`, or the error.
fn rpc_reply(conn: &Conn, ref_id: Option<&str>, method: &str, outcome: CallOutcome) {
    let frame = match outcome {
        Ok(Ok(result)) => match ref_id {
            Some(r) => ack_ok(r, Some(&result)),
            None => {
                let payload = json!({ "method": method, "result": result });
                match serde_json::value::to_raw_value(&payload) {
                    Ok(p) => encode_parts(&Parts {
                        kind: RPC_RESPONSE,
                        payload: &p,
                        ref_id: None,
                        room: None,
                        to: None,
                        from: None,
                    }),
                    Err(_) => return,
                }
            }
        },
        Ok(Err(e)) => error_reply(ref_id, e.body()),
        Err(panic) => {
            tracing::error!(conn = %conn.id(), %method, panic = %panic_text(&*panic), "RPC method panicked");
            let body = ErrorBody::new(ErrorCode::Internal, "the method failed unexpectedly")
                .with_details(json!({ "method": method }));
            error_reply(ref_id, &body)
        }
    };
    let _ = conn.push(Frame::text(frame));
}

/// The reply type of an `rpc` message sent without a `ref`.
const RPC_RESPONSE: &str = "rpc_response";

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Answers a dropped message: always when it carried a `ref` (so a request fails fast
/// instead of timing out), otherwise only the first in a row.
fn rate_limited(conn: &Conn, message: &Message, first: bool, retry_after_ms: u64) {
    let ref_id = match message {
        Message::Text(t) => switchboard_proto::peek_ref(t.as_str()),
        _ => None,
    };
    if ref_id.is_none() && !first {
        return;
    }
    let body = ErrorBody::new(
        ErrorCode::RateLimited,
        "too many messages; this one was dropped",
    )
    .with_details(json!({ "retry_after_ms": retry_after_ms }));
    send_error(conn, ref_id.as_deref(), &body);
}

/// Sends our close frame (unless the client closed first) and waits briefly for the
/// client's answer so the TCP connection ends cleanly.
async fn finish(
    ws: &mut Ws,
    closing: &Closing,
    final_error: Option<String>,
    limit: std::time::Duration,
) {
    if closing.by_client {
        // Flushes the close reply the socket library queued.
        let _ = tokio::time::timeout(limit, SinkExt::close(ws)).await;
        return;
    }
    if let Some(error) = final_error {
        let _ = tokio::time::timeout(limit, ws.feed(Message::Text(error.into()))).await;
    }
    let sent = tokio::time::timeout(
        limit,
        ws.send(transport::close_message(closing.code, &closing.reason)),
    )
    .await;
    let read_side_failed = matches!(
        closing.code,
        close::PROTOCOL_ERROR | close::INVALID_DATA | close::MESSAGE_TOO_BIG
    );
    if read_side_failed {
        // After a bad frame the socket library reads nothing more, and unread data left
        // in the kernel makes closing reset the connection, which would throw away our
        // close frame before the client reads it. Shut our side, then linger briefly.
        let _ = tokio::time::timeout(limit, SinkExt::close(ws)).await;
        tokio::time::sleep(limit).await;
        return;
    }
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(msg)) = ws.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(limit, SinkExt::close(ws)).await;
}

fn send_error(conn: &Conn, ref_id: Option<&str>, error: &ErrorBody) {
    let _ = conn.push(Frame::text(error_reply(ref_id, error)));
}

/// What is left of handling a message when a handler (or an RPC call waiting for a
/// slot) has to wait. Most messages are handled without waiting, and then nothing is
/// allocated for this; the reader awaits what is left before it reads on, so one
/// connection's messages are handled in order.
type Rest = BoxFuture<'static, ()>;

fn dispatch_text(
    server: &Server,
    conn: &Conn,
    text: &str,
    calls: &mut Option<Calls>,
    first: bool,
) -> Option<Rest> {
    let env = match conn.dialect() {
        Dialect::Datadivr => dialect::datadivr::incoming(text),
        Dialect::Metafor => return metafor_text(server, conn, text, calls),
        _ if first && dialect::metafor::detect(text) => {
            tracing::debug!(conn = %conn.id(), "a Metafor client: switching dialect");
            conn.set_dialect(Dialect::Metafor);
            return metafor_text(server, conn, text, calls);
        }
        _ => Envelope::decode(text),
    };
    match env {
        Ok(env) => dispatch_envelope(server, conn, env, calls),
        Err(e) => {
            send_error(
                conn,
                e.ref_id.as_deref(),
                &ErrorBody::new(e.code(), e.to_string()),
            );
            None
        }
    }
}

/// A frame from a Metafor Channels client, handled as its reference server does:
/// `_join` / `_leave` answered with a status, `_room` messages to the room's other
/// members, other JSON echoed as `{"echo": ...}`, other text as `Echo: ...`.
fn metafor_text(
    server: &Server,
    conn: &Conn,
    text: &str,
    calls: &mut Option<Calls>,
) -> Option<Rest> {
    use dialect::metafor::{self, Incoming};
    let raw = |s: String| {
        let _ = conn.push(Frame::Dialect(s.into()));
    };
    match metafor::incoming(text) {
        Err(e) => send_error(conn, None, &ErrorBody::new(e.code(), e.to_string())),
        Ok(Incoming::Join(room)) => match server.join(conn, &room) {
            Ok(_) => raw(metafor::status(true, &room)),
            Err(e) => send_error(
                conn,
                None,
                &ErrorBody::new(ErrorCode::InvalidRoom, e.to_string()),
            ),
        },
        Ok(Incoming::Leave(room)) => {
            server.leave(conn, &room);
            raw(metafor::status(false, &room));
        }
        Ok(Incoming::Room(env)) => {
            if server.inner.router.get(&env.kind).is_some() {
                return dispatch_envelope(server, conn, env, calls);
            } else if let Some(room) = env.room.clone() {
                // The dialect's own routing: to the room's other members.
                server.relay(
                    Target::Room(room.clone()),
                    vec![conn.id()],
                    &env.kind,
                    &env.payload,
                    Some(&room),
                    conn.id(),
                );
            }
        }
        Ok(Incoming::Echo(value)) => raw(metafor::echo(&value)),
        Ok(Incoming::Text(t)) => raw(format!("Echo: {t}")),
    }
    None
}

/// Dispatches a native envelope: RPC, the handlers of its type, the hub's relay, or
/// `UNKNOWN_TYPE`.
fn dispatch_envelope(
    server: &Server,
    conn: &Conn,
    env: Envelope,
    calls: &mut Option<Calls>,
) -> Option<Rest> {
    if types::is_server_only(&env.kind) {
        let msg = format!("`{}` is a type only the server sends", env.kind);
        send_error(
            conn,
            env.ref_id.as_deref(),
            &ErrorBody::new(ErrorCode::InvalidEnvelope, msg),
        );
        return None;
    }
    if env.kind == types::RPC {
        return start_call(server, conn, env, calls);
    }
    match server.inner.router.get(&env.kind) {
        Some(routes) => run_chain(routes, MessageContext::new(server, conn, env, None), None),
        None if server.config().relay_unhandled && (env.room.is_some() || env.to.is_some()) => {
            relay(server, conn, &env);
            None
        }
        None => {
            let msg = format!("no handler for message type `{}`", env.kind);
            send_error(
                conn,
                env.ref_id.as_deref(),
                &ErrorBody::new(ErrorCode::UnknownType, msg),
            );
            None
        }
    }
}

fn dispatch_binary(server: &Server, conn: &Conn, data: Bytes) -> Option<Rest> {
    let routes = &server.inner.router.binary;
    if routes.is_empty() {
        send_error(
            conn,
            None,
            &ErrorBody::new(
                ErrorCode::UnsupportedFrame,
                "this server does not accept binary messages",
            ),
        );
        return None;
    }
    let cx = MessageContext::new(server, conn, Envelope::new("binary"), Some(data));
    run_chain(routes, cx, None)
}

/// Runs a type's handlers in priority order (`reply`: the first reply so far) and sends
/// the reply, the ack or the error. Each handler is polled once where it starts; when
/// one has to wait, it and the handlers after it go on in the returned future.
fn run_chain(
    routes: &[Route],
    cx: MessageContext,
    mut reply: Option<Box<RawValue>>,
) -> Option<Rest> {
    for (i, route) in routes.iter().enumerate() {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut fut = route.handler.call(&cx);
            match (&mut fut).now_or_never() {
                Some(result) => Ok(result),
                None => Err(fut),
            }
        }));
        let outcome = match polled {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(pending)) => {
                let rest = routes[i + 1..].to_vec();
                return Some(Box::pin(async move {
                    let outcome = AssertUnwindSafe(pending).catch_unwind().await;
                    if settle(&cx, outcome, &mut reply) {
                        if let Some(more) = run_chain(&rest, cx, reply) {
                            more.await;
                        }
                    }
                }));
            }
            Err(panic) => Err(panic),
        };
        if !settle(&cx, outcome, &mut reply) {
            return None;
        }
    }
    answer(&cx, reply);
    None
}

/// Takes one handler's outcome: keeps the first reply; an error or a panic answers the
/// sender and stops the chain (false).
fn settle(
    cx: &MessageContext,
    outcome: Result<HandlerResult, Box<dyn std::any::Any + Send>>,
    reply: &mut Option<Box<RawValue>>,
) -> bool {
    let (conn, ref_id) = (&cx.conn, cx.envelope.ref_id.as_deref());
    match outcome {
        Ok(Ok(value)) => {
            if reply.is_none() {
                *reply = value;
            }
            true
        }
        Ok(Err(error)) => {
            send_error(conn, ref_id, error.body());
            false
        }
        Err(panic) => {
            let what = panic_text(&*panic);
            tracing::error!(conn = %conn.id(), kind = %cx.envelope.kind, panic = %what, "handler panicked");
            send_error(
                conn,
                ref_id,
                &ErrorBody::new(ErrorCode::Internal, "the handler failed unexpectedly"),
            );
            false
        }
    }
}

/// The chain's answer: the ack of the message's `ref`, or the reply as `<type>_response`.
fn answer(cx: &MessageContext, reply: Option<Box<RawValue>>) {
    let frame = match (cx.envelope.ref_id.as_deref(), reply) {
        (Some(r), value) => ack_ok(r, value.as_deref()),
        (None, Some(value)) => {
            let kind = types::response_type(&cx.envelope.kind);
            let payload = if value.get().trim_start().starts_with('{') {
                value
            } else {
                // A payload is always an object: wrap scalars and arrays.
                match serde_json::value::to_raw_value(&json!({ "result": value })) {
                    Ok(p) => p,
                    Err(_) => return,
                }
            };
            encode_parts(&Parts {
                kind: &kind,
                payload: &payload,
                ref_id: None,
                room: None,
                to: None,
                from: None,
            })
        }
        (None, None) => return,
    };
    let _ = cx.conn.push(Frame::text(frame));
}

/// The hub's relay: a message no handler takes, sent on to the room or client it names.
fn relay(server: &Server, conn: &Conn, env: &Envelope) {
    let from = conn.id();
    let outcome: Result<usize, ErrorBody> = match (env.to.as_deref(), env.room.as_deref()) {
        (Some(_), Some(_)) => Err(ErrorBody::new(
            ErrorCode::InvalidEnvelope,
            "name a `room` or a `to`, not both",
        )),
        (Some("all"), None) => {
            Ok(server.relay(Target::All, vec![], &env.kind, &env.payload, None, from))
        }
        (Some("others"), None) => {
            Ok(server.relay(Target::All, vec![from], &env.kind, &env.payload, None, from))
        }
        (Some(to), None) => match to.parse::<ConnId>() {
            Ok(id) if server.may_reach(id) => Ok(server.relay(
                Target::Conns(vec![id]),
                vec![],
                &env.kind,
                &env.payload,
                None,
                from,
            )),
            _ => Err(ErrorBody::new(
                ErrorCode::ClientNotFound,
                format!("no client `{to}` is connected"),
            )),
        },
        (None, Some(room)) => match validate_room(room) {
            Ok(()) => Ok(server.relay(
                Target::Room(room.to_owned()),
                vec![from],
                &env.kind,
                &env.payload,
                Some(room),
                from,
            )),
            Err(e) => Err(ErrorBody::new(ErrorCode::InvalidRoom, e.to_string())),
        },
        (None, None) => Err(ErrorBody::new(
            ErrorCode::UnknownType,
            "nothing to relay to",
        )),
    };
    match (outcome, env.ref_id.as_deref()) {
        (Ok(n), Some(r)) => {
            let result = serde_json::value::to_raw_value(&json!({ "delivered": n })).ok();
            let _ = conn.push(Frame::text(ack_ok(r, result.as_deref())));
        }
        (Ok(_), None) => {}
        (Err(e), r) => send_error(conn, r, &e),
    }
}
