//! Protocol limits and the defaults servers start from.

/// The protocol version this crate speaks (`v` on the wire).
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest message `type`, in bytes.
pub const MAX_TYPE_LEN: usize = 128;

/// The deepest a payload may nest objects and arrays (the payload itself is level 1).
/// Deeper ones are refused (`INVALID_PAYLOAD`) before any handler or relay sees them:
/// a payload nested thousands deep breaks recursive JSON parsers, Python's among them,
/// in every client it reaches.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// The longest `ref`, `room`, `to` and `from`, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The default maximum size of one incoming message (64 KiB), a frame or a reassembled
/// fragmented message. Servers can raise it; the point is never to accept 64 MiB by default.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
