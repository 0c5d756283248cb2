//! Handlers by type, room and event, their removal, and message streams.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_proto::Envelope;
use tokio::sync::mpsc;

use super::Client;
use crate::handlers::{HandlerId, ReconnectAttempt, RoomHandler};
use crate::locks::lock;
use crate::{ClientError, CloseInfo, ConnectionState, Session};

/// How many messages wait for an async handler that is behind.
const ASYNC_HANDLER_QUEUE: usize = 1024;

impl Client {
    /// Calls `handler` for every message of type `kind`.
    pub fn on(&self, kind: &str, handler: impl Fn(&Envelope) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .by_type
            .entry(kind.to_owned())
            .or_default()
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Runs the async `handler` for every message of type `kind` (netconduit's
    /// `@client.on("chat") async def ...`): for a handler that must await (a database
    /// write, a request of its own).
    ///
    /// One handler's calls run **one at a time, in the order the messages arrived**, on a
    /// task of their own, so the connection keeps reading while a handler waits. Up to
    /// 1,024 messages wait for a handler that is behind; past that the newest are
    /// dropped (and logged): the connection is never slowed by a slow handler. For
    /// handlers that should run side by side, spawn inside the handler. Removing the
    /// handler ([`off`](Client::off)) lets the messages already waiting finish.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (it spawns the handler's task).
    ///
    /// ```no_run
    /// # fn demo(client: switchboard_client::Client) {
    /// let replies = client.clone();
    /// client.on_async("chat", move |msg| {
    ///     let client = replies.clone();
    ///     async move {
    ///         // Awaiting here holds up the next `chat`, not the connection.
    ///         let _ = client.send("seen", &serde_json::json!({"ref": msg.ref_id})).await;
    ///     }
    /// });
    /// # }
    /// ```
    pub fn on_async<F, Fut>(&self, kind: &str, handler: F) -> HandlerId
    where
        F: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Envelope>(ASYNC_HANDLER_QUEUE);
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                handler(env).await;
            }
        });
        let kind_name = kind.to_owned();
        self.on(kind, move |env| {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(env.clone()) {
                tracing::warn!(kind = %kind_name, "an async handler is {ASYNC_HANDLER_QUEUE} messages behind: message dropped");
            }
        })
    }

    /// Calls `handler` for every message, whatever its type (acks included).
    pub fn on_message(&self, handler: impl Fn(&Envelope) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers).any.push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// The same as [`on_message`](Client::on_message).
    pub fn on_any(&self, handler: impl Fn(&Envelope) + Send + Sync + 'static) -> HandlerId {
        self.on_message(handler)
    }

    /// Calls `handler` for every message the server marks as belonging to `room`
    /// (relayed room messages, `user_joined` / `user_left`).
    pub fn on_room(
        &self,
        room: &str,
        handler: impl Fn(&Envelope) + Send + Sync + 'static,
    ) -> HandlerId {
        self.add_room_handler(room, None, Arc::new(handler))
    }

    /// Calls `handler` for messages of type `kind` in `room`.
    pub fn on_room_type(
        &self,
        room: &str,
        kind: &str,
        handler: impl Fn(&Envelope) + Send + Sync + 'static,
    ) -> HandlerId {
        self.add_room_handler(room, Some(kind.to_owned()), Arc::new(handler))
    }

    fn add_room_handler(
        &self,
        room: &str,
        kind: Option<String>,
        f: crate::handlers::MessageFn,
    ) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .rooms
            .entry(room.to_owned())
            .or_default()
            .push(RoomHandler { id, kind, f });
        self.handle(id)
    }

    /// Calls `handler` for every binary frame.
    pub fn on_binary(&self, handler: impl Fn(&Bytes) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .binary
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Calls `handler` each time a connection opens, with its session: the first one
    /// when the client was made with [`Client::new`] and opened with
    /// [`open`](Client::open) after registering, and every reconnect. (A client from
    /// [`Client::connect`] is already open when you get it, so its handlers see the
    /// reconnects only.)
    pub fn on_open(&self, handler: impl Fn(&Session) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .open
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Calls `handler` each time a connection closes, with its code and reason (also
    /// when the client will reconnect).
    pub fn on_close(&self, handler: impl Fn(&CloseInfo) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .close
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Calls `handler` for connection errors (a failed reconnect attempt, giving up)
    /// and message errors (an `error` the server sent about a message without `ref`).
    pub fn on_error(&self, handler: impl Fn(&ClientError) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .error
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Calls `handler` on every state transition, in order.
    pub fn on_state(&self, handler: impl Fn(ConnectionState) + Send + Sync + 'static) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .state
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Calls `handler` before each reconnect attempt, with its number and delay.
    pub fn on_reconnect_attempt(
        &self,
        handler: impl Fn(&ReconnectAttempt) + Send + Sync + 'static,
    ) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .attempt
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Calls `handler` after each reconnect with what was recovered: whether the
    /// session was resumed (same client id, rooms rejoined by the server) and, per
    /// stream, `recovered` with how many messages were `missed` (they follow, in
    /// order, before anything new), or `recovered: false` and why, when the
    /// application should reload that state.
    ///
    /// ```no_run
    /// # fn demo(client: switchboard_client::Client) {
    /// client.on_resume(|outcome| {
    ///     if !outcome.fully_recovered() {
    ///         println!("some messages were lost: reload ({:?})", outcome.reason);
    ///     }
    /// });
    /// # }
    /// ```
    pub fn on_resume(
        &self,
        handler: impl Fn(&switchboard_proto::ResumeOutcome) + Send + Sync + 'static,
    ) -> HandlerId {
        let id = self.inner.next_id();
        lock(&self.inner.handlers)
            .resume
            .push((id, Arc::new(handler)));
        self.handle(id)
    }

    /// Removes a handler or stream. Returns false if it was already gone.
    pub fn off(&self, id: &HandlerId) -> bool {
        lock(&self.inner.handlers).remove(id.id)
    }

    /// Removes every message handler (by type, catch-all, room and binary handlers).
    /// Event handlers (open, close, error, state) and message streams stay.
    pub fn clear_handlers(&self) {
        lock(&self.inner.handlers).clear_messages();
    }

    /// Removes the room handlers of `room`, or of every room with `None`.
    pub fn clear_room_handlers(&self, room: Option<&str>) {
        let mut h = lock(&self.inner.handlers);
        match room {
            Some(r) => {
                h.rooms.remove(r);
            }
            None => h.rooms.clear(),
        }
    }

    /// A stream of every incoming message from now on, buffering up to `capacity`.
    /// A stream that falls further behind loses the newest messages (and logs it); the
    /// connection is never slowed by a reader that does not read. It continues across
    /// reconnects and ends when the client closes for good.
    pub fn messages(&self, capacity: usize) -> Messages {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.inner.next_id();
        lock(&self.inner.handlers).streams.push((id, tx));
        Messages {
            rx,
            id: self.handle(id),
        }
    }
}

/// A stream of incoming messages; see [`Client::messages`]. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Envelope>,
    id: HandlerId,
}

impl Messages {
    /// The next message, or `None` once the client has closed and the buffer is empty.
    pub async fn next(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }

    /// The next message of type `kind`, skipping others; `None` if the client closes first.
    pub async fn next_of(&mut self, kind: &str) -> Option<Envelope> {
        while let Some(env) = self.rx.recv().await {
            if env.kind == kind {
                return Some(env);
            }
        }
        None
    }

    /// A message already buffered, without waiting.
    pub fn try_next(&mut self) -> Option<Envelope> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        self.id.remove();
    }
}
