//! The project's own frame types: what the rest of the crate reads from and writes to a
//! WebSocket, whatever library is underneath.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Immutable UTF-8 text whose clones share one buffer: a broadcast is encoded once and
/// every recipient's queue holds the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text(pub(super) Utf8Bytes);

impl Text {
    /// Text known at compile time, never copied.
    pub(crate) const fn from_static(s: &'static str) -> Text {
        Text(Utf8Bytes::from_static(s))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// True if both are clones of one buffer (so, while either lives, the same text).
    pub(crate) fn same_buffer(&self, other: &Text) -> bool {
        self.0.as_str().as_ptr() == other.0.as_str().as_ptr() && self.len() == other.len()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Utf8Bytes::from(s))
    }
}

/// One pre-encoded outgoing frame. Clones share the bytes.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    /// A native envelope, as the protocol encodes it; the connection's wire adapter may
    /// rewrite it for the client's dialect.
    Text(Text),
    /// Text already in the client's wire format: written as it is.
    Verbatim(Text),
    Binary(Bytes),
    /// A WebSocket ping (heartbeat).
    Ping,
}

impl Frame {
    pub(crate) fn text(s: String) -> Frame {
        Frame::Text(Text::from(s))
    }

    /// Bytes of payload (what the outbound queue's byte bound counts).
    pub(crate) fn len(&self) -> usize {
        match self {
            Frame::Text(t) | Frame::Verbatim(t) => t.len(),
            Frame::Binary(b) => b.len(),
            Frame::Ping => 0,
        }
    }
}

/// What a read from the client yields.
#[derive(Debug)]
pub(crate) enum Incoming {
    Text(Text),
    Binary(Bytes),
    /// The client's close frame: its code and reason (`None`: a close without a code).
    Close(Option<(u16, String)>),
    /// A ping or pong: proof of life, answered by the socket layer itself.
    Control,
}

/// What went wrong reading from a client.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A frame or message over the size limit.
    TooLarge,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A WebSocket protocol violation (bad opcode, reserved bits, unmasked frame, ...).
    Protocol(String),
    /// Frames (pings, continuations, anything) faster than the frame budget.
    Flood,
    /// The socket failed or closed.
    Lost(String),
}

/// A write that failed: the connection is gone.
#[derive(Debug)]
pub(crate) struct WriteError(pub(crate) String);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
