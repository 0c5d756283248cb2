//! Extractors: the typed arguments a handler can ask for.
//!
//! A handler is any async function whose arguments all implement [`FromMessage`]:
//!
//! | argument | what it gives |
//! | --- | --- |
//! | [`Conn`] | the sending connection |
//! | [`Server`] | the server, to broadcast or look up others |
//! | [`Json<T>`] | the payload deserialized into `T`; failure answers `INVALID_PAYLOAD` with the field path |
//! | [`State<T>`] | application state registered with [`ServerBuilder::state`](crate::ServerBuilder::state) |
//! | [`Envelope`] | the whole message (type, payload, ref, room, to) |
//! | [`Payload`] | the raw payload |
//! | [`Binary`] | the data of a binary frame (handlers registered with `on_binary`) |
//! | [`Identity`] | who the client authenticated as; unauthenticated clients get `AUTH_REQUIRED` and the handler does not run |
//! | `Option<Identity>` | the same, without requiring it |

use std::any::type_name;
use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use switchboard_proto::{Envelope, Payload};

use switchboard_proto::ErrorCode;

use crate::{Conn, HandlerError, Identity, Server};

/// Everything a handler can extract from: one incoming message and where it came from.
pub struct MessageContext {
    pub(crate) server: Server,
    pub(crate) conn: Conn,
    pub(crate) envelope: Envelope,
    pub(crate) binary: Option<Bytes>,
    /// When handling began, for the duration metrics (when counted).
    pub(crate) started: Option<std::time::Instant>,
}

impl MessageContext {
    pub(crate) fn new(
        server: &Server,
        conn: &Conn,
        envelope: Envelope,
        binary: Option<Bytes>,
    ) -> MessageContext {
        MessageContext {
            started: server.metrics().map(|_| std::time::Instant::now()),
            server: server.clone(),
            conn: conn.clone(),
            envelope,
            binary,
        }
    }

    /// Records how long the message's handlers took (`ok`: without an error).
    pub(crate) fn handled(&self, ok: bool) {
        if let (Some(metrics), Some(started)) = (self.server.metrics(), self.started) {
            metrics.handled(&self.envelope.kind, started, ok);
        }
    }

    /// The message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The connection it came from.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

/// A handler argument built from the incoming message.
///
/// Extraction is synchronous and cheap: everything is in hand when a message arrives.
/// A failed extraction answers the client with the error and skips the handler.
pub trait FromMessage: Sized + Send + 'static {
    /// Builds the argument, or rejects the message.
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError>;
}

impl FromMessage for Conn {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(cx.conn.clone())
    }
}

impl FromMessage for Server {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(cx.server.clone())
    }
}

impl FromMessage for Envelope {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(cx.envelope.clone())
    }
}

impl FromMessage for Payload {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(cx.envelope.payload.clone())
    }
}

/// The message's version (`v`, 1 when absent), for a handler that reads more than one
/// version of its messages (listed in [`ServerConfig::versions`](crate::ServerConfig::versions)).
///
/// ```
/// use switchboard_server::{Json, Version};
///
/// async fn chat(Version(v): Version, Json(p): Json<serde_json::Value>) -> Json<String> {
///     // Version 2 of `chat` calls it `text`; version 1 `content`.
///     let field = if v >= 2 { "text" } else { "content" };
///     Json(p[field].as_str().unwrap_or_default().to_owned())
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub u32);

impl FromMessage for Version {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(Version(cx.envelope.v))
    }
}

/// The payload, deserialized into `T`.
///
/// When the payload does not fit `T`, the client gets `INVALID_PAYLOAD` naming the field
/// (`details.path`) and the reason, and the handler does not run.
///
/// As a return value, `Json(value)` is the reply sent back to the sender.
///
/// ```
/// use serde::Deserialize;
/// use switchboard_server::{Conn, Json};
///
/// #[derive(Deserialize)]
/// struct Chat { content: String, room_id: Option<String> }
///
/// async fn chat(conn: Conn, Json(msg): Json<Chat>) -> Json<serde_json::Value> {
///     Json(serde_json::json!({"sent": true, "len": msg.content.len()}))
/// }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromMessage for Json<T> {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        cx.envelope
            .payload
            .deserialize()
            .map(Json)
            .map_err(|e| HandlerError::invalid_payload(&e))
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Application state, registered once with [`ServerBuilder::state`](crate::ServerBuilder::state)
/// and cloned into each handler that asks for it (wrap it in an `Arc` if it is big).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use switchboard_server::{Server, State};
///
/// #[derive(Clone, Default)]
/// struct Users(Arc<Mutex<Vec<String>>>);
///
/// async fn count(State(users): State<Users>) -> switchboard_server::Json<usize> {
///     switchboard_server::Json(users.0.lock().unwrap().len())
/// }
///
/// let server = Server::builder().state(Users::default()).on("count", count).build();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromMessage for State<T> {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        cx.server.state::<T>().map(State).ok_or_else(|| {
            HandlerError::internal(format!(
                "no state of type {} was registered with the server",
                type_name::<T>()
            ))
        })
    }
}

/// The data of a binary frame, for handlers registered with
/// [`ServerBuilder::on_binary`](crate::ServerBuilder::on_binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary(pub Bytes);

impl FromMessage for Binary {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        cx.binary
            .clone()
            .map(Binary)
            .ok_or_else(|| HandlerError::internal("this message is not a binary frame"))
    }
}

/// Requires authentication: a handler that takes an `Identity` runs only for clients
/// that have authenticated; others get `AUTH_REQUIRED`.
///
/// ```
/// use switchboard_server::{Identity, Json, Server};
///
/// let server = Server::builder()
///     .on("whoami", |who: Identity| async move { Json(who.id) })
///     .build();
/// ```
impl FromMessage for Identity {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        cx.conn.identity().as_deref().cloned().ok_or_else(|| {
            HandlerError::code_of(
                ErrorCode::AuthRequired,
                format!("`{}` needs an authenticated client", cx.envelope.kind),
            )
        })
    }
}

impl FromMessage for Option<Identity> {
    fn from_message(cx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(cx.conn.identity().as_deref().cloned())
    }
}

/// `Json<T>` serializes as `T`, so it can be a field or a result of its own.
impl<T: serde::Serialize> serde::Serialize for Json<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// `Json<T>` has the schema of `T` (for RPC results such as `Result<Json<User>, E>`).
impl<T: schemars::JsonSchema> schemars::JsonSchema for Json<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}
