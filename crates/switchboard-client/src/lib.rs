//! The Rust client for switchboard.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard_client::Client;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws").await?;
//! client.on("chat", |msg| println!("{}: {}", msg.from.as_deref().unwrap_or("?"), msg.payload));
//! client.join("general").await?;
//! client.send_to_room("general", "chat", &serde_json::json!({"content": "hello"})).await?;
//! let sum: f64 = client
//!     .request("sum", &serde_json::json!({"numbers": [1, 2]}), Duration::from_secs(5))
//!     .await?;
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! A [`Client`] is a cheap handle to one connection task that owns the socket. Handlers
//! run on that task, in the order messages arrive; keep them short (spawn for slow work)
//! or read messages from a [`Messages`] stream instead. Requests are matched to their
//! `ack` by `ref`, so any number can be in flight at once.
//!
//! Reconnection arrives in a later release; today a dropped connection ends the client
//! (its state becomes [`ConnectionState::Closed`] and sends fail with `Closed`).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchboard_proto::{
    Ack, Envelope, ErrorBody, Parts, Payload, encode_parts, reconnect_hint, types,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub use switchboard_proto::{ErrorCode, Reconnect};

/// The `ref` of the `auth` message the client sends when it connects.
const AUTH_REF: &str = "auth";

/// The connection's state, readable with [`Client::state`] and watchable with
/// [`Client::watch_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The handshake is under way.
    Connecting,
    /// Connected: messages flow.
    Open,
    /// A close was asked for; waiting for the server's answer.
    Closing,
    /// The connection has ended.
    Closed,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a `ws://` or `wss://` URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The server could not be reached or the WebSocket handshake failed.
    #[error("cannot connect: {0}")]
    Unreachable(#[source] tokio_tungstenite::tungstenite::Error),
    /// The server accepted the socket, then refused the client (server full, shutting down, ...).
    #[error("refused by the server: {code}: {message}")]
    Refused {
        /// The error code (e.g. `SERVER_FULL`).
        code: String,
        /// The server's message.
        message: String,
        /// Whether to try again.
        reconnect: Reconnect,
    },
    /// The server did not confirm the connection in time.
    #[error("timed out waiting for the server")]
    Timeout,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The client is not connected (not yet, or no longer).
    #[error("not connected")]
    NotConnected,
    /// The connection closed while sending.
    #[error("connection closed")]
    Closed,
    /// The payload could not be encoded or is not a JSON object.
    #[error("cannot encode payload: {0}")]
    Encode(String),
}

/// Why a request did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The client is not connected.
    #[error("not connected")]
    NotConnected,
    /// The connection closed before the answer arrived.
    #[error("connection closed before the answer arrived")]
    Closed,
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Remote {
        /// The error code (`UNKNOWN_TYPE`, `INVALID_PAYLOAD`, or the application's own).
        code: String,
        /// The server's message.
        message: String,
        /// Structured details, when the server gave any.
        details: Option<serde_json::Value>,
    },
    /// The payload could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(String),
    /// The result did not have the type asked for.
    #[error("unexpected result: {0}")]
    Decode(String),
}

impl RequestError {
    /// The error code of a `Remote` error.
    pub fn code(&self) -> Option<&str> {
        match self {
            RequestError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<SendError> for RequestError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotConnected => RequestError::NotConnected,
            SendError::Closed => RequestError::Closed,
            SendError::Encode(m) => RequestError::Encode(m),
        }
    }
}

impl From<ErrorBody> for RequestError {
    fn from(b: ErrorBody) -> Self {
        RequestError::Remote {
            code: b.code.into_owned(),
            message: b.message,
            details: b.details,
        }
    }
}

/// How the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (1006 when the connection dropped without one).
    pub code: u16,
    /// The close reason.
    pub reason: String,
    /// What the protocol says to do next.
    pub reconnect: Reconnect,
}

/// What the server said when the connection opened (`connected`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Session {
    /// This client's id, which others use to send it direct messages.
    pub client_id: String,
    /// This connection's session id.
    pub session_id: String,
    /// The server's name.
    pub server: String,
}

/// Identifies a registered handler, for [`Client::off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

type MessageFn = Arc<dyn Fn(&Envelope) + Send + Sync>;
type BinaryFn = Arc<dyn Fn(&Bytes) + Send + Sync>;
type CloseFn = Arc<dyn Fn(&CloseInfo) + Send + Sync>;

#[derive(Default)]
struct Handlers {
    by_type: HashMap<String, Vec<(HandlerId, MessageFn)>>,
    any: Vec<(HandlerId, MessageFn)>,
    binary: Vec<(HandlerId, BinaryFn)>,
    close: Vec<(HandlerId, CloseFn)>,
    streams: Vec<(HandlerId, mpsc::Sender<Envelope>)>,
}

type Pending = oneshot::Sender<Result<Option<serde_json::Value>, ErrorBody>>;

struct Inner {
    commands: mpsc::Sender<Command>,
    handlers: Mutex<Handlers>,
    pending: Mutex<HashMap<String, Pending>>,
    rooms: Mutex<BTreeSet<String>>,
    state: watch::Sender<ConnectionState>,
    close_info: Mutex<Option<CloseInfo>>,
    session: Session,
    next_id: AtomicU64,
    request_timeout: Duration,
}

enum Command {
    Send(Message),
    Close(u16, String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Settings for [`Client::connect_with`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long to wait for the server to confirm the connection. Default 10 s.
    pub connect_timeout: Duration,
    /// The default timeout of [`Client::join`] and [`Client::leave`]. Default 10 s.
    pub request_timeout: Duration,
    /// How many outgoing messages may wait for the socket. Default 1,024.
    pub send_queue: usize,
    /// The largest incoming message. Default 16 MiB.
    pub max_message_size: usize,
    /// How long [`Client::close`] waits for the server to answer the close frame
    /// before dropping the socket. Default 5 s.
    pub close_timeout: Duration,
    /// The payload of the `auth` message sent first thing after the handshake, e.g.
    /// `{"password": "..."}` or `{"token": "..."}`. Default none (no `auth` is sent).
    /// A refusal is [`ConnectError::Refused`] with code `AUTH_FAILED`.
    pub auth: Option<serde_json::Value>,
    /// The TLS settings for `wss://` URLs (your own root certificates, client
    /// certificates). Default none: the Web PKI roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    /// Authenticates with this password (`{"password": ...}`).
    ///
    /// ```
    /// let config = switchboard_client::ClientConfig::default().password("secret123");
    /// assert_eq!(config.auth.unwrap()["password"], "secret123");
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> ClientConfig {
        self.auth = Some(json!({ "password": password.into() }));
        self
    }

    /// Authenticates with this token (`{"token": ...}`), for servers with an authenticator.
    pub fn token(mut self, token: impl Into<String>) -> ClientConfig {
        self.auth = Some(json!({ "token": token.into() }));
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            send_queue: 1024,
            max_message_size: 16 * 1024 * 1024,
            close_timeout: Duration::from_secs(5),
            auth: None,
            tls: None,
        }
    }
}

/// A connection to a switchboard server. Cheap to clone; every clone is the same
/// connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.inner.session.client_id)
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connects with default settings and waits for the server's `connected`.
    pub async fn connect(url: &str) -> Result<Client, ConnectError> {
        Client::connect_with(url, ClientConfig::default()).await
    }

    /// Connects with these settings.
    pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Client, ConnectError> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ConnectError::InvalidUrl(format!(
                "{url}: expected ws:// or wss://"
            )));
        }
        let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let connector = config.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let handshake = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(ws_config),
            false,
            connector,
        );
        let (mut ws, _response) = tokio::time::timeout(config.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Unreachable)?;
        if let Some(auth) = &config.auth {
            let frame = Envelope {
                ref_id: Some(AUTH_REF.to_owned()),
                ..Envelope::with_payload(
                    types::AUTH,
                    Payload::from_serialize(auth)
                        .map_err(|e| ConnectError::InvalidUrl(format!("bad auth payload: {e}")))?,
                )
            };
            ws.send(Message::text(frame.encode()))
                .await
                .map_err(ConnectError::Unreachable)?;
        }

        // The first frame is `connected`, or an error and a close when refused.
        let first = tokio::time::timeout(config.connect_timeout, async {
            let mut refusal: Option<ErrorBody> = None;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(env) = Envelope::decode(t.as_str()) else {
                            continue;
                        };
                        match env.kind.as_str() {
                            types::CONNECTED => {
                                return env.payload_as::<Session>().map_err(|e| {
                                    ConnectError::InvalidUrl(format!(
                                        "not a switchboard server: {e}"
                                    ))
                                });
                            }
                            types::ERROR => refusal = env.payload_as().ok(),
                            // A refused `auth` is answered with an error ack.
                            types::ACK => {
                                if let Ok(v) = env.payload_as::<serde_json::Value>() {
                                    if v["status"] == "error" {
                                        refusal = Some(ErrorBody::custom(
                                            v["code"].as_str().unwrap_or("").to_owned(),
                                            v["message"].as_str().unwrap_or(""),
                                        ));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        let (c, m) = match refusal {
                            Some(b) => (b.code.into_owned(), b.message),
                            None => (
                                code.to_string(),
                                frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                            ),
                        };
                        return Err(ConnectError::Refused {
                            code: c,
                            message: m,
                            reconnect: reconnect_hint(code),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ConnectError::Unreachable(e)),
                    None => {
                        return Err(ConnectError::Refused {
                            code: "1006".into(),
                            message: "connection dropped".into(),
                            reconnect: Reconnect::Backoff,
                        });
                    }
                }
            }
        })
        .await
        .map_err(|_| ConnectError::Timeout)??;

        let (commands, rx) = mpsc::channel(config.send_queue.max(1));
        let (state, _) = watch::channel(ConnectionState::Open);
        let inner = Arc::new(Inner {
            commands,
            handlers: Mutex::new(Handlers::default()),
            pending: Mutex::new(HashMap::new()),
            rooms: Mutex::new(BTreeSet::new()),
            state,
            close_info: Mutex::new(None),
            session: first,
            next_id: AtomicU64::new(1),
            request_timeout: config.request_timeout,
        });
        tokio::spawn(drive(ws, rx, Arc::clone(&inner), config.close_timeout));
        Ok(Client { inner })
    }

    /// This client's id on the server (`client_id`).
    pub fn id(&self) -> &str {
        &self.inner.session.client_id
    }

    /// What the server said when the connection opened.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// True while the connection is open.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Open
    }

    /// How the connection ended, once it has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        lock(&self.inner.close_info).clone()
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn send_frame(&self, msg: Message) -> Result<(), SendError> {
        if self.state() != ConnectionState::Open {
            return Err(SendError::NotConnected);
        }
        self.inner
            .commands
            .send(Command::Send(msg))
            .await
            .map_err(|_| SendError::Closed)
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
        self.send_frame(Message::text(text)).await
    }

    /// Sends `{"type": kind, "payload": payload}`. The payload must serialize to a JSON object.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, None, None).await
    }

    /// Sends a whole envelope as it is.
    pub async fn send_envelope(&self, envelope: &Envelope) -> Result<(), SendError> {
        self.send_frame(Message::text(envelope.encode())).await
    }

    /// Sends raw text (which the server will parse as an envelope).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        self.send_frame(Message::text(text.into())).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_frame(Message::Binary(data.into())).await
    }

    /// Sends a message to a room (`room` in the envelope).
    pub async fn send_to_room<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, Some(room), None).await
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
        let ref_id = format!("r{}", self.next_id());
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(ref_id.clone(), tx);
        let sent = self
            .send_parts(kind, payload, Some(&ref_id), room, to)
            .await;
        if let Err(e) = sent {
            lock(&self.inner.pending).remove(&ref_id);
            return Err(e.into());
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(RequestError::Closed),
            Err(_) => {
                lock(&self.inner.pending).remove(&ref_id);
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
    /// [`RequestError::Decode`] when the result is not an `R`.
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

    /// Joins a room and waits for the server to confirm.
    pub async fn join(&self, room: &str) -> Result<(), RequestError> {
        let _: serde_json::Value = self
            .request(
                types::JOIN_ROOM,
                &json!({ "room_id": room }),
                self.inner.request_timeout,
            )
            .await?;
        lock(&self.inner.rooms).insert(room.to_owned());
        Ok(())
    }

    /// Leaves a room and waits for the server to confirm.
    pub async fn leave(&self, room: &str) -> Result<(), RequestError> {
        let _: serde_json::Value = self
            .request(
                types::LEAVE_ROOM,
                &json!({ "room_id": room }),
                self.inner.request_timeout,
            )
            .await?;
        lock(&self.inner.rooms).remove(room);
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
        let id = HandlerId(self.next_id());
        lock(&self.inner.handlers)
            .by_type
            .entry(kind.to_owned())
            .or_default()
            .push((id, Arc::new(handler)));
        id
    }

    /// Calls `handler` for every message, whatever its type (acks included).
    pub fn on_any(&self, handler: impl Fn(&Envelope) + Send + Sync + 'static) -> HandlerId {
        let id = HandlerId(self.next_id());
        lock(&self.inner.handlers).any.push((id, Arc::new(handler)));
        id
    }

    /// Calls `handler` for every binary frame.
    pub fn on_binary(&self, handler: impl Fn(&Bytes) + Send + Sync + 'static) -> HandlerId {
        let id = HandlerId(self.next_id());
        lock(&self.inner.handlers)
            .binary
            .push((id, Arc::new(handler)));
        id
    }

    /// Calls `handler` once the connection has closed.
    pub fn on_close(&self, handler: impl Fn(&CloseInfo) + Send + Sync + 'static) -> HandlerId {
        let id = HandlerId(self.next_id());
        lock(&self.inner.handlers)
            .close
            .push((id, Arc::new(handler)));
        id
    }

    /// Removes a handler or stream. Returns false if it was already gone.
    pub fn off(&self, id: HandlerId) -> bool {
        let mut h = lock(&self.inner.handlers);
        let mut removed = false;
        for list in h.by_type.values_mut() {
            let before = list.len();
            list.retain(|(i, _)| *i != id);
            removed |= list.len() != before;
        }
        h.by_type.retain(|_, l| !l.is_empty());
        let before = h.any.len() + h.binary.len() + h.close.len() + h.streams.len();
        h.any.retain(|(i, _)| *i != id);
        h.binary.retain(|(i, _)| *i != id);
        h.close.retain(|(i, _)| *i != id);
        h.streams.retain(|(i, _)| *i != id);
        removed || before != h.any.len() + h.binary.len() + h.close.len() + h.streams.len()
    }

    /// A stream of every incoming message from now on, buffering up to `capacity`.
    /// A stream that falls further behind loses the newest messages (and logs it); the
    /// connection is never slowed by a reader that does not read.
    pub fn messages(&self, capacity: usize) -> Messages {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = HandlerId(self.next_id());
        lock(&self.inner.handlers).streams.push((id, tx));
        Messages {
            rx,
            id,
            client: self.clone(),
        }
    }

    /// Closes the connection (code 1000) and waits until it has closed.
    pub async fn close(&self) {
        let mut state = self.watch_state();
        if self.state() == ConnectionState::Open {
            let _ = self.inner.state.send_replace(ConnectionState::Closing);
            let _ = self
                .inner
                .commands
                .send(Command::Close(1000, "client closed".into()))
                .await;
        }
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
    }

    /// Waits until the connection has closed, and says how.
    pub async fn closed(&self) -> CloseInfo {
        let mut state = self.watch_state();
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
        self.close_info().unwrap_or(CloseInfo {
            code: 1006,
            reason: String::new(),
            reconnect: Reconnect::Backoff,
        })
    }
}

/// A stream of incoming messages; see [`Client::messages`]. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Envelope>,
    id: HandlerId,
    client: Client,
}

impl Messages {
    /// The next message, or `None` once the connection has closed and the buffer is empty.
    pub async fn next(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }

    /// The next message of type `kind`, skipping others; `None` if the connection closes first.
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
        self.client.off(self.id);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The connection task: writes queued commands (feeding all that are ready, flushing
/// once), reads and dispatches incoming frames, and settles everything when it ends.
async fn drive(
    ws: Ws,
    mut commands: mpsc::Receiver<Command>,
    inner: Arc<Inner>,
    close_timeout: Duration,
) {
    let (mut sink, mut stream) = ws.split();
    let mut close_sent = false;
    // Once our close frame is out, the server has this long to answer it.
    let close_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(close_deadline);
    let info = loop {
        tokio::select! {
            () = &mut close_deadline, if close_sent => {
                break CloseInfo { code: 1006, reason: "the server did not answer the close".into(), reconnect: Reconnect::Backoff };
            }
            cmd = commands.recv(), if !close_sent => {
                let mut next = cmd;
                let mut failed = None;
                while let Some(cmd) = next.take() {
                    let msg = match cmd {
                        Command::Send(m) => m,
                        Command::Close(code, reason) => {
                            close_sent = true;
                            close_deadline.as_mut().reset(tokio::time::Instant::now() + close_timeout);
                            Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))
                        }
                    };
                    if let Err(e) = sink.feed(msg).await {
                        failed = Some(e);
                        break;
                    }
                    if close_sent {
                        break;
                    }
                    next = commands.try_recv().ok();
                }
                if failed.is_none() {
                    if let Err(e) = sink.flush().await {
                        failed = Some(e);
                    }
                }
                if let Some(e) = failed {
                    break CloseInfo { code: 1006, reason: e.to_string(), reconnect: Reconnect::Backoff };
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => dispatch(&inner, t.as_str()),
                Some(Ok(Message::Binary(b))) => dispatch_binary(&inner, &b),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    let _ = sink.flush().await; // sends our close reply
                    break CloseInfo { code, reason, reconnect: reconnect_hint(code) };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break CloseInfo { code: 1006, reason: e.to_string(), reconnect: Reconnect::Backoff },
                None => break CloseInfo { code: 1006, reason: "connection dropped".into(), reconnect: Reconnect::Backoff },
            },
        }
    };
    *lock(&inner.close_info) = Some(info.clone());
    inner.state.send_replace(ConnectionState::Closed);
    // Fail every request still waiting: nothing will answer it now.
    let pending: Vec<Pending> = lock(&inner.pending).drain().map(|(_, tx)| tx).collect();
    drop(pending);
    let close_handlers: Vec<CloseFn> = {
        let mut h = lock(&inner.handlers);
        h.streams.clear();
        h.close.iter().map(|(_, f)| Arc::clone(f)).collect()
    };
    for f in close_handlers {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| f(&info)));
    }
}

fn dispatch(inner: &Inner, text: &str) {
    let env = match Envelope::decode(text) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a frame that is not an envelope");
            return;
        }
    };
    if env.kind == types::ACK {
        if let Ok(ack) = env.payload_as::<Ack>() {
            if let Some(tx) = lock(&inner.pending).remove(&ack.ref_id) {
                let _ = tx.send(ack.into_result());
            }
        }
    }
    let (typed, any, streams) = {
        let h = lock(&inner.handlers);
        let typed: Vec<MessageFn> = h
            .by_type
            .get(&env.kind)
            .map(|l| l.iter().map(|(_, f)| Arc::clone(f)).collect())
            .unwrap_or_default();
        let any: Vec<MessageFn> = h.any.iter().map(|(_, f)| Arc::clone(f)).collect();
        let streams: Vec<mpsc::Sender<Envelope>> =
            h.streams.iter().map(|(_, s)| s.clone()).collect();
        (typed, any, streams)
    };
    for f in typed.iter().chain(any.iter()) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(&env))).is_err() {
            tracing::error!(kind = %env.kind, "a message handler panicked");
        }
    }
    for s in streams {
        if s.try_send(env.clone()).is_err() && !s.is_closed() {
            tracing::warn!(kind = %env.kind, "a message stream is full; message dropped for it");
        }
    }
}

fn dispatch_binary(inner: &Inner, data: &Bytes) {
    let handlers: Vec<BinaryFn> = lock(&inner.handlers)
        .binary
        .iter()
        .map(|(_, f)| Arc::clone(f))
        .collect();
    for f in handlers {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| f(data)));
    }
}
