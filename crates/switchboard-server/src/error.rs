//! Errors: what handlers return, what sends report, what serving reports.

use std::borrow::Cow;
use std::fmt;

use switchboard_proto::{ErrorBody, ErrorCode, PayloadError};

use crate::ConnId;

/// The error a handler returns: sent to the client as an `error` (or an error `ack`
/// when the message had a `ref`) with its code; the connection stays open.
///
/// Any `std::error::Error` converts into one with code `HANDLER_ERROR`, so `?` works in
/// handlers; use [`HandlerError::new`] for a code of your own.
///
/// ```
/// use switchboard_server::HandlerError;
/// let e = HandlerError::new("USER_NOT_FOUND", "user 7 not found");
/// assert_eq!(e.code(), "USER_NOT_FOUND");
/// let io: HandlerError = std::io::Error::other("disk full").into();
/// assert_eq!(io.code(), "HANDLER_ERROR");
/// ```
pub struct HandlerError(Box<ErrorBody>);

impl HandlerError {
    /// An error with an application code (UPPER_SNAKE by convention) and a message.
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> HandlerError {
        HandlerError(Box::new(ErrorBody::custom(code, message)))
    }

    /// An error with one of switchboard's own codes.
    pub fn code_of(code: ErrorCode, message: impl Into<String>) -> HandlerError {
        HandlerError(Box::new(ErrorBody::new(code, message)))
    }

    /// `INVALID_PAYLOAD`, naming the field that did not fit.
    pub fn invalid_payload(err: &PayloadError) -> HandlerError {
        let body = ErrorBody::new(ErrorCode::InvalidPayload, format!("invalid payload: {err}"))
            .with_details(serde_json::json!({ "path": err.path, "reason": err.message }));
        HandlerError(Box::new(body))
    }

    /// `INTERNAL`: something went wrong on the server side.
    pub fn internal(message: impl Into<String>) -> HandlerError {
        HandlerError::code_of(ErrorCode::Internal, message)
    }

    /// Adds structured details for programs.
    pub fn with_details(mut self, details: serde_json::Value) -> HandlerError {
        self.0.details = Some(details);
        self
    }

    /// The error code.
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The wire form.
    pub fn body(&self) -> &ErrorBody {
        &self.0
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::code_of(ErrorCode::HandlerError, e.to_string())
    }
}

impl HandlerError {
    /// An error from its wire form, keeping its code.
    pub fn from_body(body: ErrorBody) -> HandlerError {
        HandlerError(Box::new(body))
    }
}

/// Why a message could not be queued for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
    /// The client's outbound queue is full; the message was dropped (and, under the
    /// default slow-consumer policy, the client disconnected).
    #[error("outbound queue full (slow consumer)")]
    Full,
    /// No connection with this id is on this server.
    #[error("no client {0}")]
    NotFound(ConnId),
    /// The payload could not be encoded, or is not a JSON object.
    #[error("cannot encode payload: {0}")]
    Encode(String),
    /// The room name is empty or too long, or the connection is in too many rooms.
    #[error("invalid room: {0}")]
    InvalidRoom(String),
    /// One frame bigger than a connection's outbound queue may hold
    /// ([`ServerConfig::max_frame_out`](crate::ServerConfig::max_frame_out)); refused
    /// rather than cut off the client.
    #[error("a frame of {size} bytes is over the {max}-byte outbound limit")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding or accepting failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server I/O error")]
    Io(#[from] std::io::Error),
    /// The configuration asks for something this version cannot do.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backplane could not start.
    #[error("backplane failed to start")]
    Backplane(#[source] crate::backplane::BackplaneError),
    /// `serve` was called on a server that is already running or was shut down.
    #[error("the server is already running or has shut down")]
    AlreadyStarted,
}
