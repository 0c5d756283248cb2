//! Error codes, WebSocket close codes and reconnect hints.
//!
//! Every error the server reports carries a stable, UPPER_SNAKE `code`. Most errors
//! leave the connection open; those that end it map to a WebSocket close code and say
//! whether a client should reconnect. The table is the contract of `docs/protocol.md`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a client should do after the server closed its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconnect {
    /// Do not reconnect: retrying cannot succeed (bad credentials, kicked, forbidden).
    Never,
    /// Reconnect after an exponential backoff with jitter (server busy, restarting).
    Backoff,
    /// Reconnect right away (with a little jitter): the condition was local to this socket.
    Now,
}

impl Reconnect {
    /// The hint as it is written on the wire: `never`, `backoff` or `now`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reconnect::Never => "never",
            Reconnect::Backoff => "backoff",
            Reconnect::Now => "now",
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal, close: $close:expr, reconnect: $hint:ident; )*) => {
        /// The error codes the server itself produces.
        ///
        /// Applications may send their own codes (any UPPER_SNAKE string) from handlers;
        /// these are the ones switchboard defines. The wire form is [`ErrorCode::as_str`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order of `docs/protocol.md`.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable wire string, e.g. `"UNKNOWN_TYPE"`.
            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $wire, )* }
            }

            /// The WebSocket close code used when this error ends the connection, or
            /// `None` when the error is reported and the connection stays open.
            pub const fn close_code(self) -> Option<u16> {
                match self { $( ErrorCode::$variant => $close, )* }
            }

            /// What a client should do when a connection is closed with this error.
            pub const fn reconnect(self) -> Reconnect {
                match self { $( ErrorCode::$variant => Reconnect::$hint, )* }
            }

            /// Parses a wire string back into a known code.
            pub fn from_wire(s: &str) -> Option<ErrorCode> {
                match s { $( $wire => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The text frame is not valid JSON.
    InvalidJson = "INVALID_JSON", close: None, reconnect: Backoff;
    /// The frame is JSON but not a valid envelope: not an object, no or empty `type`,
    /// a field of the wrong JSON type, a field too long, or a server-only `type`.
    InvalidEnvelope = "INVALID_ENVELOPE", close: None, reconnect: Backoff;
    /// The envelope's `v` is a protocol version this server does not speak.
    UnsupportedVersion = "UNSUPPORTED_VERSION", close: None, reconnect: Never;
    /// The payload does not have the shape the handler for this type expects.
    InvalidPayload = "INVALID_PAYLOAD", close: None, reconnect: Backoff;
    /// No handler is registered for this message type (and it names no room or client to relay to).
    UnknownType = "UNKNOWN_TYPE", close: None, reconnect: Backoff;
    /// The RPC method does not exist.
    UnknownMethod = "UNKNOWN_METHOD", close: None, reconnect: Backoff;
    /// The RPC parameters failed validation.
    InvalidParams = "INVALID_PARAMS", close: None, reconnect: Backoff;
    /// A handler failed without giving a code of its own.
    HandlerError = "HANDLER_ERROR", close: None, reconnect: Backoff;
    /// A direct message named a client id that is not connected.
    ClientNotFound = "CLIENT_NOT_FOUND", close: None, reconnect: Backoff;
    /// A room name is empty or too long, or the connection is in too many rooms.
    InvalidRoom = "INVALID_ROOM", close: None, reconnect: Backoff;
    /// A binary frame arrived and nothing on the server accepts binary messages.
    UnsupportedFrame = "UNSUPPORTED_FRAME", close: None, reconnect: Backoff;
    /// Authentication is required before this message.
    AuthRequired = "AUTH_REQUIRED", close: None, reconnect: Never;
    /// The client sent messages faster than its allowed rate; they were dropped.
    RateLimited = "RATE_LIMITED", close: Some(4006), reconnect: Backoff;
    /// A frame was larger than the server's maximum message size.
    MessageTooLarge = "MESSAGE_TOO_LARGE", close: Some(1009), reconnect: Backoff;
    /// The credentials were wrong.
    AuthFailed = "AUTH_FAILED", close: Some(4001), reconnect: Never;
    /// The client did not authenticate within the auth timeout.
    AuthTimeout = "AUTH_TIMEOUT", close: Some(4002), reconnect: Backoff;
    /// The connection is not allowed (origin, identity).
    Forbidden = "FORBIDDEN", close: Some(4003), reconnect: Never;
    /// The server (application code) disconnected this client.
    Kicked = "KICKED", close: Some(4004), reconnect: Never;
    /// The server is at its connection limit.
    ServerFull = "SERVER_FULL", close: Some(4005), reconnect: Backoff;
    /// The client did not read its messages fast enough and its outbound queue filled up.
    SlowConsumer = "SLOW_CONSUMER", close: Some(4007), reconnect: Now;
    /// The client stopped answering heartbeats.
    HeartbeatTimeout = "HEARTBEAT_TIMEOUT", close: Some(4008), reconnect: Now;
    /// The server is shutting down or restarting.
    ShuttingDown = "SHUTTING_DOWN", close: Some(1001), reconnect: Backoff;
    /// A `resume` could not restore its session (unknown or expired session, a wrong
    /// token, another user's session, a malformed position): the connection goes on
    /// with a fresh session, and every stream is reported `recovered: false`.
    ResumeFailed = "RESUME_FAILED", close: None, reconnect: Backoff;
    /// The session was resumed on another connection; this one is closed.
    SessionTaken = "SESSION_TAKEN", close: Some(4009), reconnect: Never;
    /// The node lost the order of a stream this connection follows (its link to the
    /// cluster was away longer than the cluster keeps messages, or the cluster's
    /// store was emptied): reconnect and resume at once; the stream answers
    /// `recovered: false`, so the application reloads what it shows.
    StreamReset = "STREAM_RESET", close: Some(4010), reconnect: Now;
    /// The connection's token expired (its `exp`): get a new token, then reconnect
    /// with it.
    TokenExpired = "TOKEN_EXPIRED", close: Some(4011), reconnect: Backoff;
    /// A `resume` reached a node that cannot ask the cluster's store for the session
    /// now (its link is down) and holds no copy of it: the connection is closed, the
    /// session is kept, and the client resumes again after backoff (on this node or
    /// another). Only in a cluster.
    ResumeUnavailable = "RESUME_UNAVAILABLE", close: Some(4012), reconnect: Backoff;
    /// An unexpected server-side failure (a handler panicked, for instance).
    Internal = "INTERNAL", close: None, reconnect: Backoff;
}

impl ErrorCode {
    /// The close code for this error, falling back to 1011 (internal error) for errors
    /// that do not normally end a connection.
    pub fn close_code_or_internal(self) -> u16 {
        self.close_code().unwrap_or(close::INTERNAL_ERROR)
    }

    /// The error a close code stands for, if it is one switchboard defines.
    pub fn from_close_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.close_code() == Some(code))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Standard WebSocket close codes used by switchboard (RFC 6455, section 7.4.1).
pub mod close {
    /// Normal closure: the peer is done.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown, restart).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol (a bad frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The connection dropped without a close frame (never sent on the wire).
    pub const ABNORMAL: u16 = 1006;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message was too big to process.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// What a client should do after a close with `code`, per `docs/protocol.md`.
///
/// Codes switchboard defines follow their table; `1000` (normal closure) means the
/// server is done with this client, so do not reconnect; anything else, including a
/// dropped connection (`1006`), means reconnect with backoff.
///
/// ```
/// use switchboard_proto::{reconnect_hint, Reconnect};
/// assert_eq!(reconnect_hint(4001), Reconnect::Never); // AUTH_FAILED
/// assert_eq!(reconnect_hint(1001), Reconnect::Backoff); // server shutting down
/// assert_eq!(reconnect_hint(1006), Reconnect::Backoff); // connection dropped
/// ```
pub fn reconnect_hint(code: u16) -> Reconnect {
    match ErrorCode::from_close_code(code) {
        Some(known) => known.reconnect(),
        None if code == close::NORMAL => Reconnect::Never,
        None => Reconnect::Backoff,
    }
}

/// The close reason text for `code`: `"CODE: message"`, cut to the 123 bytes a close
/// frame allows, on a character boundary.
pub fn close_reason(code: ErrorCode, message: &str) -> String {
    let mut reason = format!("{}: {}", code.as_str(), message);
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// The longest close reason a WebSocket close frame can carry, in bytes.
pub const MAX_CLOSE_REASON: usize = 123;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn wire_strings_round_trip_and_are_unique() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(*code));
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_')
            );
        }
        assert_eq!(ErrorCode::from_wire("NOPE"), None);
    }

    #[test]
    fn close_codes_are_unique_and_in_range() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            if let Some(c) = code.close_code() {
                assert!(seen.insert(c), "close code {c} used twice");
                assert!(
                    (4000..5000).contains(&c) || [1001, 1009, 1011].contains(&c),
                    "{code} closes with {c}"
                );
                assert_eq!(ErrorCode::from_close_code(c), Some(*code));
            }
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let reason = close_reason(ErrorCode::Kicked, &long);
        assert!(reason.len() <= MAX_CLOSE_REASON);
        assert!(reason.starts_with("KICKED: é"));
        assert_eq!(close_reason(ErrorCode::Kicked, "bye"), "KICKED: bye");
    }

    #[test]
    fn hints_for_unknown_and_normal_codes() {
        assert_eq!(reconnect_hint(1000), Reconnect::Never);
        assert_eq!(reconnect_hint(4999), Reconnect::Backoff);
        assert_eq!(reconnect_hint(4007), Reconnect::Now);
        assert_eq!(reconnect_hint(4004), Reconnect::Never);
    }
}
