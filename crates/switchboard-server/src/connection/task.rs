//! The task that serves one open connection: one loop over the unsplit socket that
//! reads and dispatches, then writes from the outbox and flushes once; and, at the end,
//! the close handshake, unregistration and the disconnect hooks.
//!
//! A handler that has to wait holds up reading, not writing, so it never stalls
//! delivery to its own client.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use switchboard_proto::ErrorCode;

use super::closing::FLOOD;
use super::dispatch::{self, Rest};
use super::outbox::WriterStep;
use super::{Closing, Conn, closing};
use crate::dialect::{DialectAdapter, Read, ReadBinary, msgpack_json_limit};
use crate::metrics::{Class, FrameClass, frame_class};
use crate::rate_limit::{Admit, RateLimiter};
use crate::rpc::Calls;
use crate::ws::{Frame, Incoming, ReadError, Text, WebSocket, WriteError};
use crate::{DisconnectReason, Server};

/// How many messages one turn reads before it writes what they produced.
const MESSAGES_PER_TURN: usize = 32;

/// Everything an open connection's task keeps between messages.
pub(crate) struct ConnectionTask {
    pub(super) server: Server,
    pub(super) conn: Conn,
    pub(super) ws: WebSocket,
    pub(super) limiter: RateLimiter,
    pub(super) adapter: DialectAdapter,
    /// Every data frame goes back as it came (the echo endpoint).
    pub(super) echo: bool,
    /// The RPC calls running (made at the first call; boxed, so that a connection
    /// that makes none pays 8 bytes).
    pub(super) calls: Option<Box<Calls>>,
    /// A frame read before the connection opened (a client that spoke first), handled
    /// before anything else is read.
    pub(super) first: Option<Box<Incoming>>,
    /// Work that holds up reading: the connect hooks, a handler that had to wait, the
    /// calls still running when reading ended.
    pub(super) rest: Option<Rest>,
    pub(super) reading: Reading,
    /// The socket had nothing the last time it was read: wait for its readiness.
    pub(super) read_blocked: bool,
    /// The writer is done, gracefully; the reader has yet to finish.
    /// (Boxed: set once, at the end; an idle connection pays 8 bytes for it.)
    pub(super) finished: Option<Box<Closing>>,
    /// The connection's span (`connection`: client id, address), entered while the
    /// task runs; boxed, and only while debug spans are on, so an idle connection
    /// pays 8 bytes for it.
    pub(super) span: Option<Box<tracing::Span>>,
}

/// What one write turn wrote, for the metrics (counted locally, added once per turn).
#[derive(Default)]
struct SentCount {
    application: u64,
    system: u64,
    bytes: u64,
}

impl SentCount {
    fn add(&mut self, frame: &Frame) {
        let (class, len) = match frame {
            Frame::Text(t) => (frame_class(t.as_str()), t.len()),
            Frame::Verbatim(t) => (FrameClass::Application, t.len()),
            Frame::Binary(b) => (FrameClass::Application, b.len()),
            Frame::Ping => return,
        };
        match class {
            FrameClass::Application => self.application += 1,
            FrameClass::System => self.system += 1,
        }
        self.bytes += len as u64;
    }
}

/// Where reading is.
pub(super) enum Reading {
    Open,
    /// No more reading; finishing once `rest` is done (with the client's reason, if the
    /// client ended it; boxed, so that an open connection's task does not keep room
    /// for it).
    Draining(Option<Box<Closing>>),
    Done,
}

impl ConnectionTask {
    /// Reads and handles messages, and writes from the outbox, until the connection
    /// closes: one task, one loop, the socket unsplit. Each turn reads what has come
    /// in (a bounded number of messages), then writes what that produced and whatever
    /// else was queued, flushing once. Reading waits on the socket's readiness, so a
    /// turn started by a queued frame costs no read attempt.
    pub(super) fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Closing> {
        let span = self.span.take();
        let entered = span.as_deref().map(tracing::Span::enter);
        let polled = self.poll_turns(cx);
        drop(entered);
        self.span = span;
        polled
    }

    fn poll_turns(&mut self, cx: &mut Context<'_>) -> Poll<Closing> {
        let outbox = self.conn.outbox();
        outbox.awake(cx.waker());
        loop {
            let read = self.poll_read(cx);
            if let Poll::Ready(closing) = self.poll_write(cx) {
                if closing.abort || matches!(self.reading, Reading::Done) {
                    return Poll::Ready(closing);
                }
                // A graceful finish waits for the reader: its last handler, its calls.
                self.finished = Some(Box::new(closing));
            }
            if let (Some(_), Reading::Done) = (&self.finished, &self.reading) {
                let closing = self.finished.take().map(|c| *c);
                return Poll::Ready(closing.unwrap_or_else(|| Closing::lost("closed")));
            }
            let outbox = self.conn.outbox();
            if !read && outbox.sleeping() {
                return Poll::Pending;
            }
            outbox.awake(cx.waker());
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
                    let end = end.map_or_else(|| Closing::lost("closed"), |end| *end);
                    self.conn.outbox().reader_finished(end);
                    return true;
                }
                Reading::Done => return progress,
            }
            if self.conn.is_closing() {
                self.stop_reading(None);
                progress = true;
                continue;
            }
            if let Some(first) = self.first.take() {
                progress = true;
                if let Some(end) = self.received(Some(Ok(*first))) {
                    self.stop_reading(end);
                }
                continue;
            }
            if self.read_blocked {
                if self.ws.poll_read_ready(cx).is_pending() {
                    return progress;
                }
                self.read_blocked = false;
            }
            let next = match self.ws.poll_next(cx) {
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
    fn received(&mut self, next: Option<Result<Incoming, ReadError>>) -> Option<Option<Closing>> {
        let message = match next {
            None => return Some(Some(Closing::lost("connection dropped"))),
            Some(Err(e)) => {
                let max = self.server.config().max_message_size;
                // Closes that say why in an `error` frame first.
                let with_error = match &e {
                    ReadError::TooLarge => Some((
                        ErrorCode::MessageTooLarge,
                        format!("a message may be at most {max} bytes"),
                    )),
                    ReadError::Flood => Some((ErrorCode::RateLimited, FLOOD.to_owned())),
                    _ => None,
                };
                let closing = Closing::after_read_error(e, max);
                if closing.abort {
                    return Some(Some(closing));
                }
                match with_error {
                    Some((code, message)) => self.conn.outbox().close_with_code(code, &message),
                    None => self.conn.outbox().begin_close(closing),
                }
                return Some(None);
            }
            Some(Ok(Incoming::Close(frame))) => {
                let (code, reason) = frame.unwrap_or((1005, String::new()));
                return Some(Some(Closing::by_client(code, reason)));
            }
            Some(Ok(m)) => m,
        };
        // Pings and pongs count against the rate like any message (the socket library
        // answers pings itself: a flood of them costs writes too).
        match self.limiter.admit() {
            Admit::Yes => {}
            Admit::No { first } => {
                if let Some(metrics) = self.server.metrics() {
                    metrics.rate_limited();
                }
                let text = match &message {
                    Incoming::Text(t) => Some(t.as_str()),
                    _ => None,
                };
                dispatch::rate_limited(&self.conn, text, first, self.limiter.retry_after_ms());
                return None;
            }
            Admit::Close => {
                tracing::info!(conn = %self.conn.id(), "closing a client that keeps flooding");
                self.conn
                    .close(ErrorCode::RateLimited, "kept sending while rate limited");
                return Some(None);
            }
        }
        if !matches!(message, Incoming::Control) {
            self.rest = self.handle(message);
        }
        None
    }

    /// One data frame, through the dialect adapter to dispatch (or back, on the echo
    /// endpoint).
    fn handle(&mut self, message: Incoming) -> Option<Rest> {
        let (server, conn) = (&self.server, &self.conn);
        match message {
            Incoming::Text(text) if self.echo => {
                let _ = conn.push(Frame::Text(text));
                None
            }
            Incoming::Binary(data) if self.echo => {
                let _ = conn.push(Frame::Binary(data));
                None
            }
            Incoming::Text(text) => {
                let was = self.adapter.dialect();
                let read = self.adapter.read_text(text.as_str(), conn.id());
                if self.adapter.dialect() != was {
                    tracing::debug!(conn = %conn.id(), dialect = %self.adapter.dialect().as_str(), "dialect recognised");
                    conn.set_dialect(self.adapter.dialect());
                }
                self.dispatch(read, text.len())
            }
            Incoming::Binary(data) => {
                let max_json = msgpack_json_limit(server.config().max_message_size);
                let len = data.len();
                match self.adapter.read_binary(data, max_json) {
                    ReadBinary::Envelope(read) => self.dispatch(read, len),
                    ReadBinary::Dispatch(data) => {
                        if let Some(metrics) = server.metrics() {
                            metrics.received(Class::Application, len);
                        }
                        dispatch::binary(server, conn, data)
                    }
                    ReadBinary::Echo(data) => {
                        if let Some(metrics) = server.metrics() {
                            metrics.received(Class::Application, len);
                        }
                        let _ = conn.push(Frame::Binary(data));
                        None
                    }
                }
            }
            Incoming::Close(_) | Incoming::Control => None,
        }
    }

    /// What a frame of `len` bytes asked for, counted and carried out.
    fn dispatch(&mut self, read: Read, len: usize) -> Option<Rest> {
        let (server, conn) = (&self.server, &self.conn);
        if let Some(metrics) = server.metrics() {
            let class = match &read {
                Read::Envelope(env) => Class::of(&env.kind),
                _ => Class::Application,
            };
            metrics.received(class, len);
        }
        match read {
            Read::Envelope(env) => dispatch::envelope(server, conn, env, &mut self.calls),
            Read::Invalid(e) => {
                dispatch::decode_error(conn, &e);
                None
            }
            Read::Answer(text) => {
                let _ = conn.push(Frame::Verbatim(Text::from(text)));
                None
            }
        }
    }

    /// Reading has ended (`end`: the client's doing, if it was). The client gone, its
    /// calls' answers have nowhere to go; the server closing gracefully lets them answer.
    fn stop_reading(&mut self, end: Option<Closing>) {
        if let Some(calls) = &self.calls {
            if end.as_ref().is_some_and(|c| c.by_client) {
                calls.cancel();
            } else {
                let drain = calls.drained();
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
        self.reading = Reading::Draining(end.map(Box::new));
    }

    /// Writes what is queued (moved out of the outbox in one go), then flushes once.
    /// Ready when the connection is to close.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Closing> {
        // Kept across turns: the outbox gives a written batch's buffer to the thread's
        // spare when it hands out the next (see `crate::spare`).
        let mut batch = VecDeque::new();
        loop {
            // While the socket takes nothing more, frames wait in the outbox, where
            // they count against its bounds: a client that stops reading meets the
            // slow-consumer policy. Only a cut-off is looked for meanwhile.
            match self.ws.poll_ready(cx) {
                Poll::Pending => {
                    return match self.conn.outbox().cut_off() {
                        Some(closing) => Poll::Ready(closing),
                        None => Poll::Pending,
                    };
                }
                // The connection is lost: the outbox now says to finish.
                Poll::Ready(Err(e)) => self.write_failed(&e),
                Poll::Ready(Ok(())) => {}
            }
            match self.conn.outbox().take_batch(&mut batch) {
                WriterStep::Finish(closing) => return Poll::Ready(closing),
                WriterStep::Wait => {
                    // A flush the socket could not take at once (or a pong the
                    // socket queued) is finished here.
                    if self.ws.has_unflushed() {
                        if let Poll::Ready(Err(e)) = self.ws.poll_flush(cx) {
                            self.write_failed(&e);
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                WriterStep::Write => {}
            }
            if let Err(e) = self.write_batch(&mut batch, cx) {
                self.write_failed(&e);
                continue;
            }
            if !batch.is_empty() {
                // The socket wakes the task when it takes more.
                self.conn.outbox().put_back(std::mem::take(&mut batch));
                return Poll::Pending;
            }
        }
    }

    fn write_failed(&self, e: &WriteError) {
        tracing::debug!(conn = %self.conn.id(), error = %e, "write failed");
        let closing = Closing::lost(format!("write failed: {e}"));
        self.conn.outbox().begin_close(closing);
    }

    /// Feeds the batch's frames (each through the dialect adapter) and flushes; what the
    /// socket cannot take yet stays in the batch (the socket wakes the task when it can).
    fn write_batch(
        &mut self,
        batch: &mut VecDeque<Frame>,
        cx: &mut Context<'_>,
    ) -> Result<(), WriteError> {
        let mut counted = SentCount::default();
        let result = self.write_frames(batch, cx, &mut counted);
        if let Some(metrics) = self.server.metrics() {
            metrics.sent(counted.application, counted.system, counted.bytes);
        }
        result
    }

    /// [`write_batch`](Self::write_batch)'s loop, counting what it writes.
    fn write_frames(
        &mut self,
        batch: &mut VecDeque<Frame>,
        cx: &mut Context<'_>,
        counted: &mut SentCount,
    ) -> Result<(), WriteError> {
        while !batch.is_empty() {
            if self.ws.poll_ready(cx)?.is_pending() {
                return Ok(());
            }
            let Some(native) = batch.pop_front() else {
                break;
            };
            counted.add(&native);
            if let Some(frame) = self.adapter.write(native) {
                self.ws.start_send(frame)?;
            }
        }
        if self.ws.has_unflushed() {
            // What the socket cannot take now waits for its wake-up.
            let _ = self.ws.poll_flush(cx)?;
        }
        Ok(())
    }

    /// The close handshake, unregistration and the disconnect hooks.
    pub(super) async fn close(self, closing: Closing) {
        let ConnectionTask {
            server,
            conn,
            mut ws,
            calls,
            mut adapter,
            echo,
            ..
        } = self;
        let final_error = conn
            .outbox()
            .take_final_error()
            .and_then(|e| adapter.localize_frame(e));
        let limit = server.config().close_timeout;
        closing::close_socket(&mut ws, &closing, final_error, limit).await;
        drop(ws);
        conn.outbox().mark_finished();
        if let Some(calls) = calls {
            if closing.resumable() {
                // The client may resume: calls still running finish, and their answers
                // wait in the session for the `ref`s it sends again.
                drop(calls);
            } else {
                // Nobody to answer.
                calls.cancel();
            }
        }

        server.remove_connection(&conn, closing.resumable());
        // The echo endpoint's connections are not counted as opened, nor here.
        if let (Some(metrics), false) = (server.metrics(), echo) {
            metrics.connection_closed(closing.code);
        }
        let reason = DisconnectReason {
            code: closing.code,
            reason: closing.reason.clone(),
            by_server: !closing.by_client,
        };
        tracing::debug!(conn = %conn.id(), code = reason.code, reason = %reason.reason, "disconnected");
        for hook in server.hooks().disconnect.iter() {
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
