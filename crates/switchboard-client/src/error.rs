//! The client's typed errors.

use std::time::Duration;

use switchboard_proto::{ErrorBody, Reconnect};

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
    /// The server accepted the socket, then refused the client (server full, wrong
    /// password, shutting down, ...).
    #[error("refused by the server: {code}: {message}")]
    Refused {
        /// The error code (e.g. `SERVER_FULL`, `AUTH_FAILED`).
        code: String,
        /// The server's message.
        message: String,
        /// Whether to try again.
        reconnect: Reconnect,
    },
    /// The server did not confirm the connection in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The token source ([`ClientConfig::get_token`](crate::ClientConfig::get_token))
    /// gave no token.
    #[error("could not get a token: {0}")]
    Token(String),
}

impl ConnectError {
    /// What the protocol says about trying again: never after a refusal that cannot
    /// change (wrong credentials, kicked), with backoff otherwise.
    pub fn reconnect(&self) -> Reconnect {
        match self {
            ConnectError::Refused { reconnect, .. } => *reconnect,
            ConnectError::InvalidUrl(_) => Reconnect::Never,
            _ => Reconnect::Backoff,
        }
    }
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The client is not connected and will not be: it was closed, gave up
    /// reconnecting, or has auto-reconnect off and is between connections.
    #[error("not connected")]
    NotConnected,
    /// The client is reconnecting and its offline queue is full; the message was not
    /// queued (older queued messages are kept).
    #[error("offline queue full ({0} messages)")]
    QueueFull(usize),
    /// The payload could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(String),
}

/// Why a request (a message waiting for its `ack`, or an RPC call) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The client is not connected.
    #[error("not connected")]
    NotConnected,
    /// The client was closed before the answer arrived.
    #[error("client closed before the answer arrived")]
    Closed,
    /// The connection dropped after the request was sent and before its answer came:
    /// the server may or may not have processed it. Requests still queued when the
    /// connection drops are not affected; they are sent after the reconnect.
    #[error("connection lost before the answer arrived; the request may have been processed")]
    ConnectionLost,
    /// The offline queue was full.
    #[error("offline queue full ({0} messages)")]
    QueueFull(usize),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Remote {
        /// The error code (`UNKNOWN_TYPE`, `INVALID_PARAMS`, or the application's own).
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
            SendError::QueueFull(n) => RequestError::QueueFull(n),
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

/// What [`Client::on_error`](crate::Client::on_error) reports: a problem with the
/// connection, or an error the server sent about a message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or reconnecting failed (`attempt` counts from 1 after each drop).
    Connection {
        /// Which reconnect attempt failed.
        attempt: u32,
        /// Why.
        message: String,
        /// The server's code when it refused (e.g. `AUTH_FAILED`), if it did.
        code: Option<String>,
    },
    /// The client gave up reconnecting after `attempts` attempts.
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The server reported an error about a message that had no `ref` (an `error` frame).
    Message {
        /// The error code.
        code: String,
        /// The server's message.
        message: String,
        /// Structured details, if any.
        details: Option<serde_json::Value>,
    },
}

/// An `error` the server sent about a message.
impl From<ErrorBody> for ClientError {
    fn from(b: ErrorBody) -> Self {
        ClientError::Message {
            code: b.code.into_owned(),
            message: b.message,
            details: b.details,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connection {
                attempt, message, ..
            } => write!(f, "connection error (attempt {attempt}): {message}"),
            ClientError::GaveUp { attempts } => {
                write!(f, "gave up reconnecting after {attempts} attempts")
            }
            ClientError::Message { code, message, .. } => {
                write!(f, "message error: {code}: {message}")
            }
        }
    }
}

impl std::error::Error for ClientError {}
