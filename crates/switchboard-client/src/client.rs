//! The client handle: sends, requests, rooms, handlers and state.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchboard_proto::{Envelope, Parts, Payload, Reconnect, encode_parts, types};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{self, Session};
use crate::handlers::{HandlerId, Handlers, ReconnectAttempt, RoomHandler};
use crate::{ClientConfig, ClientError, ConnectError, RequestError, SendError};

/// The connection's state, readable with [`Client::state`], watchable with
/// [`Client::watch_state`], and reported transition by transition to
/// [`Client::on_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first handshake is under way.
    Connecting,
    /// Connected: messages flow.
    Open,
    /// The connection dropped; the client is waiting to reconnect or reconnecting.
    /// Sends are queued (up to the offline queue's bound).
    Reconnecting,
    /// [`Client::close`] was called; waiting for the server's answer.
    Closing,
    /// The connection has ended for good.
    Closed,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (1006 when the connection dropped without one).
    pub code: u16,
    /// The close reason.
    pub reason: String,
    /// What the protocol says to do next.
    pub reconnect: Reconnect,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One frame waiting to be written, with the `ref` of the request it carries.
pub(crate) struct Outgoing {
    pub(crate) msg: Message,
    pub(crate) ref_id: Option<String>,
    pub(crate) len: usize,
}

/// Frames waiting for the socket, shared by the handle (which queues) and the driver
/// (which writes). While offline the same queue holds what is sent meanwhile.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) frames: VecDeque<Outgoing>,
    pub(crate) bytes: usize,
    /// A connection is open and its writer takes frames.
    pub(crate) online: bool,
    /// The client has ended for good.
    pub(crate) closed: bool,
    /// [`Client::close`] asked to close with this code and reason.
    pub(crate) close_requested: Option<(u16, String)>,
}

pub(crate) type Answer = Result<Option<serde_json::Value>, RequestError>;

/// A request waiting for its `ack`.
pub(crate) struct Pending {
    pub(crate) tx: oneshot::Sender<Answer>,
    /// Its frame has been written to a socket (so a drop may have lost it).
    pub(crate) written: bool,
}

pub(crate) struct Inner {
    pub(crate) url: String,
    pub(crate) config: ClientConfig,
    pub(crate) outbox: Mutex<Outbox>,
    /// Wakes the driver: frames queued, or close requested.
    pub(crate) wake: Notify,
    /// Wakes senders waiting for room in the queue.
    pub(crate) space: Notify,
    pub(crate) handlers: Mutex<Handlers>,
    pub(crate) pending: Mutex<HashMap<String, Pending>>,
    pub(crate) rooms: Mutex<BTreeSet<String>>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) close_info: Mutex<Option<CloseInfo>>,
    pub(crate) session: Mutex<Session>,
    next_id: AtomicU64,
    /// 64 random bits, the start of every request's `ref`.
    ref_prefix: u64,
}

impl Inner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A request's `ref`: this client's random prefix and a counter, so no other client
    /// can guess one and answer it with a forged ack.
    pub(crate) fn next_ref(&self) -> String {
        format!("r{:016x}.{}", self.ref_prefix, self.next_id())
    }
}

/// A connection to a switchboard server that survives the network: it reconnects with
/// backoff, authenticates again, rejoins its rooms and sends what was queued while it
/// was offline. Cheap to clone; every clone is the same client.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_client::{Client, ClientConfig, ReconnectConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::connect_with(
///     "ws://127.0.0.1:8080/ws",
///     ClientConfig::default().reconnect(ReconnectConfig {
///         initial_delay: Duration::from_secs(2),
///         max_attempts: Some(5),
///         ..ReconnectConfig::default()
///     }),
/// )
/// .await?;
/// client.on_open(|session| println!("connected as {}", session.client_id));
/// client.on_close(|info| println!("disconnected: {} {}", info.code, info.reason));
/// client.on_error(|e| eprintln!("{e}"));
/// client.join("chat-room-1").await?;
/// client.send_to("chat-room-1", "chat", &serde_json::json!({"text": "Hello room!"})).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .field("id", &self.id())
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connects with default settings and waits for the server's `connected`.
    ///
    /// The first connection is not retried: an unreachable server or a refusal is a
    /// [`ConnectError`] at once. Once connected, drops are reconnected automatically.
    pub async fn connect(url: &str) -> Result<Client, ConnectError> {
        Client::connect_with(url, ClientConfig::default()).await
    }

    /// Connects with these settings.
    pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Client, ConnectError> {
        let (ws, session) = connect::open(url, &config).await?;
        let (state, _) = watch::channel(ConnectionState::Open);
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            config,
            outbox: Mutex::new(Outbox {
                online: true,
                ..Outbox::default()
            }),
            wake: Notify::new(),
            space: Notify::new(),
            handlers: Mutex::new(Handlers::default()),
            pending: Mutex::new(HashMap::new()),
            rooms: Mutex::new(BTreeSet::new()),
            state,
            close_info: Mutex::new(None),
            session: Mutex::new(session),
            next_id: AtomicU64::new(1),
            ref_prefix: switchboard_proto::random_u64(),
        });
        tokio::spawn(crate::driver::run(Arc::clone(&inner), ws));
        Ok(Client { inner })
    }

    /// This client's id on the server (`client_id`). A reconnect gets a new one.
    pub fn id(&self) -> String {
        lock(&self.inner.session).client_id.clone()
    }

    /// What the server said when the current (or last) connection opened.
    pub fn session(&self) -> Session {
        lock(&self.inner.session).clone()
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// A receiver of the latest state (it may skip states that pass quickly; use
    /// [`on_state`](Client::on_state) to see every transition).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// True while the connection is open.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Open
    }

    /// True while connecting or reconnecting.
    pub fn is_connecting(&self) -> bool {
        matches!(
            self.state(),
            ConnectionState::Connecting | ConnectionState::Reconnecting
        )
    }

    /// How the last connection ended, once one has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        lock(&self.inner.close_info).clone()
    }

    fn handle(&self, id: u64) -> HandlerId {
        HandlerId {
            id,
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Queues one frame: written at once while connected, kept (up to the offline
    /// bound) while reconnecting, refused when the client has ended.
    pub(crate) async fn enqueue(
        &self,
        msg: Message,
        ref_id: Option<String>,
    ) -> Result<(), SendError> {
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        let mut out = Some(Outgoing { msg, ref_id, len });
        let config = &self.inner.config;
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut ob = lock(&self.inner.outbox);
                if ob.closed || ob.close_requested.is_some() {
                    return Err(SendError::NotConnected);
                }
                if !ob.online {
                    if !config.reconnect.enabled {
                        return Err(SendError::NotConnected);
                    }
                    if ob.frames.len() >= config.offline_queue.max(1)
                        || ob.bytes + len > config.offline_queue_bytes
                    {
                        return Err(SendError::QueueFull(ob.frames.len()));
                    }
                    ob.bytes += len;
                    if let Some(o) = out.take() {
                        ob.frames.push_back(o);
                    }
                    return Ok(());
                }
                if ob.frames.len() < config.send_queue.max(1) {
                    ob.bytes += len;
                    if let Some(o) = out.take() {
                        ob.frames.push_back(o);
                    }
                    drop(ob);
                    self.inner.wake.notify_one();
                    return Ok(());
                }
            }
            space.await;
        }
    }

    async fn send_parts<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        ref_id: Option<&str>,
        room: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), SendError> {
        let payload =
            Payload::from_serialize(payload).map_err(|e| SendError::Encode(e.to_string()))?;
        let text = encode_parts(&Parts {
            kind,
            payload: payload.as_raw(),
            ref_id,
            room,
            to,
            from: None,
        });
        self.enqueue(Message::text(text), ref_id.map(str::to_owned))
            .await
    }

    /// Sends `{"type": kind, "payload": payload}`. The payload must serialize to a JSON
    /// object. While reconnecting the message is queued and sent, in order, once the
    /// connection is back.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, None, None).await
    }

    /// Sends a whole envelope as it is.
    pub async fn send_envelope(&self, envelope: &Envelope) -> Result<(), SendError> {
        self.enqueue(Message::text(envelope.encode()), envelope.ref_id.clone())
            .await
    }

    /// Sends raw text (which the server will parse as an envelope).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        self.enqueue(Message::text(text.into()), None).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.enqueue(Message::Binary(data.into()), None).await
    }

    /// Sends a message to a room (`room` in the envelope): its other members receive it.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, Some(room), None).await
    }

    /// The same as [`send_to`](Client::send_to).
    pub async fn send_to_room<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_to(room, kind, payload).await
    }

    /// Sends a message to one client by id, or to `"all"` / `"others"` (`to` in the envelope).
    pub async fn send_direct<T: Serialize + ?Sized>(
        &self,
        to: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, None, Some(to)).await
    }

    /// Sends a message with a fresh `ref` and waits for its `ack`: the handler's result,
    /// deserialized into `R` (use `serde_json::Value` to take it as it is, `()` to ignore it).
    ///
    /// While reconnecting the request is queued and sent after the reconnect (its
    /// timeout still runs). A request already sent when the connection drops fails with
    /// [`RequestError::ConnectionLost`]: the server may or may not have processed it.
    pub async fn request<R: DeserializeOwned, T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        self.request_envelope(kind, payload, None, None, timeout)
            .await
    }

    /// Like [`request`](Client::request), with the envelope's `room` and `to` set.
    pub async fn request_envelope<R: DeserializeOwned, T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        room: Option<&str>,
        to: Option<&str>,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let ref_id = self.inner.next_ref();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(ref_id.clone(), Pending { tx, written: false });
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = tokio::time::timeout_at(
            deadline,
            self.send_parts(kind, payload, Some(&ref_id), room, to),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                lock(&self.inner.pending).remove(&ref_id);
                return Err(e.into());
            }
            Err(_) => {
                lock(&self.inner.pending).remove(&ref_id);
                return Err(RequestError::Timeout(timeout));
            }
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(RequestError::Closed),
            Err(_) => {
                lock(&self.inner.pending).remove(&ref_id);
                // Not sent yet (offline): take it out of the queue too.
                let mut ob = lock(&self.inner.outbox);
                if let Some(pos) = ob
                    .frames
                    .iter()
                    .position(|o| o.ref_id.as_deref() == Some(ref_id.as_str()))
                {
                    if let Some(o) = ob.frames.remove(pos) {
                        ob.bytes -= o.len;
                    }
                }
                return Err(RequestError::Timeout(timeout));
            }
        };
        let value = answer?.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| RequestError::Decode(e.to_string()))
    }

    /// Calls an RPC method and returns its typed result. `params` is an object of named
    /// arguments (a struct, a map, `json!({...})`), an array of positional ones, or `()`
    /// for none. Any number of calls may be in flight at once; each waits for its own
    /// answer, matched by `ref`.
    ///
    /// Errors: [`RequestError::Remote`] with the server's code (`UNKNOWN_METHOD`,
    /// `INVALID_PARAMS` with `details.errors`, `AUTH_REQUIRED`, the method's own code,
    /// `INTERNAL`), [`RequestError::Timeout`], [`RequestError::NotConnected`],
    /// [`RequestError::ConnectionLost`], [`RequestError::Decode`] when the result is not
    /// an `R`.
    ///
    /// ```no_run
    /// # async fn demo(client: switchboard_client::Client) -> Result<(), switchboard_client::RequestError> {
    /// use std::time::Duration;
    /// let sum: i64 = client
    ///     .call("add", &serde_json::json!({"a": 1, "b": 2}), Duration::from_secs(5))
    ///     .await?;
    /// assert_eq!(sum, 3);
    /// # Ok(()) }
    /// ```
    pub async fn call<R: DeserializeOwned, P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let params =
            serde_json::to_value(params).map_err(|e| RequestError::Encode(e.to_string()))?;
        let params = if params.is_null() { json!({}) } else { params };
        self.request(
            types::RPC,
            &json!({ "method": method, "params": params }),
            timeout,
        )
        .await
    }

    /// The server's RPC methods with their descriptions and JSON Schemas (`listall`).
    pub async fn methods(&self, timeout: Duration) -> Result<Vec<serde_json::Value>, RequestError> {
        self.call("listall", &(), timeout).await
    }

    /// Joins a room and waits for the server to confirm. The client remembers its rooms
    /// and joins them again after every reconnect.
    pub async fn join(&self, room: &str) -> Result<(), RequestError> {
        let _: serde_json::Value = self
            .request(
                types::JOIN_ROOM,
                &json!({ "room_id": room }),
                self.inner.config.request_timeout,
            )
            .await?;
        lock(&self.inner.rooms).insert(room.to_owned());
        Ok(())
    }

    /// Leaves a room and waits for the server to confirm.
    pub async fn leave(&self, room: &str) -> Result<(), RequestError> {
        // Forget it first, so a reconnect meanwhile does not join it again.
        lock(&self.inner.rooms).remove(room);
        let _: serde_json::Value = self
            .request(
                types::LEAVE_ROOM,
                &json!({ "room_id": room }),
                self.inner.config.request_timeout,
            )
            .await?;
        Ok(())
    }

    /// The rooms this client has joined.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.inner.rooms).iter().cloned().collect()
    }

    /// True if this client has joined `room`.
    pub fn is_in_room(&self, room: &str) -> bool {
        lock(&self.inner.rooms).contains(room)
    }

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

    /// Calls `handler` each time a connection opens again after a drop (with the new
    /// session; the first connection is already open when `connect` returns).
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

    /// Closes the connection (code 1000) for good, stops reconnecting, and waits until
    /// it has closed. Queued messages not yet sent are dropped; waiting requests fail
    /// with [`RequestError::Closed`].
    pub async fn close(&self) {
        let mut state = self.watch_state();
        {
            let mut ob = lock(&self.inner.outbox);
            if !ob.closed && ob.close_requested.is_none() {
                ob.close_requested = Some((1000, "client closed".into()));
            }
        }
        self.inner.wake.notify_one();
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
    }

    /// Waits until the client has closed for good (closed by either side with no
    /// reconnect, or given up), and says how the last connection ended.
    pub async fn closed(&self) -> CloseInfo {
        let mut state = self.watch_state();
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
        self.close_info().unwrap_or(CloseInfo {
            code: 1006,
            reason: String::new(),
            reconnect: Reconnect::Backoff,
        })
    }

    /// Reports an error to the `on_error` handlers.
    pub(crate) fn report(inner: &Inner, error: &ClientError) {
        let fns = crate::handlers::snapshot(&lock(&inner.handlers).error);
        crate::handlers::call_all(&fns, |f| f(error));
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
