//! The switchboard wire protocol, with no I/O.
//!
//! A switchboard connection carries one JSON object per WebSocket text frame:
//!
//! ```json
//! {"type": "chat", "payload": {"content": "Hello!"}, "ref": "msg_001", "room": "general"}
//! ```
//!
//! This crate holds everything about that format and nothing about sockets: the
//! [`Envelope`] and its [`Payload`], decoding that turns any bad input into a typed
//! [`DecodeError`] (never a panic), the `error` and `ack` replies, the [`ErrorCode`]
//! table with WebSocket close codes and [`Reconnect`] hints, and the protocol limits.
//! Server, clients and tools all build on it, so they cannot disagree about the wire.
//!
//! The full specification, with every frame and code, is `docs/protocol.md`.
//!
//! ```
//! use switchboard_proto::{Envelope, ErrorCode};
//!
//! let err = Envelope::decode(r#"{"payload": {}}"#).unwrap_err();
//! assert_eq!(err.code(), ErrorCode::InvalidEnvelope);
//! assert_eq!(err.to_string(), "missing `type`");
//! ```

pub mod code;
mod depth;
pub mod dialect;
pub mod encode;
pub mod envelope;
pub mod limits;
pub mod msgpack;
pub mod netconduit;
pub mod payload;
mod plain_envelope;
mod random;
pub mod reply;
pub mod resume;
pub mod scan;
pub mod trace;
pub mod types;
mod validate;
pub mod websocket;

pub use code::{ErrorCode, Reconnect, close_reason, reconnect_hint};
pub use dialect::Dialect;
pub use envelope::{
    DecodeError, DecodeErrorKind, Envelope, Parts, Payload, PayloadError, encode_parts,
    encode_payload_frame, peek_ref, stamp_offset,
};
pub use limits::{
    DEFAULT_MAX_MESSAGE_SIZE, MAX_ID_LEN, MAX_PAYLOAD_DEPTH, MAX_TYPE_LEN, PROTOCOL_VERSION,
};
pub use random::random_u64;
pub use reply::{
    Ack, AckStatus, ErrorBody, ack_error, ack_ok, ack_ok_text, error_frame, error_reply,
};
pub use resume::{Position, Recovery, RecoveryGap, ResumeOutcome, ResumeRequest, StreamPositions};
pub use trace::is_traceparent;

/// Re-exported so users can name payload types without depending on serde_json directly.
pub use serde_json::value::RawValue;
