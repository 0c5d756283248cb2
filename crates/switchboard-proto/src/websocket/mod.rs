//! WebSocket frames (RFC 6455) as a server reads and writes them, with no I/O.
//!
//! The server keeps no buffer of its own for an idle connection: it reads into a buffer
//! borrowed for the read, hands it to a [`Decoder`], and keeps only the bytes of a frame
//! that has not fully arrived. The decoder unmasks in place, checks every rule a client
//! frame must follow (masked, no reserved bits or opcodes, control frames short and
//! whole, continuations only inside a message, valid close codes), refuses a frame
//! over the message limit from its header, before its payload is read, and assembles
//! fragmented messages. A text message's fragments are checked for UTF-8 as they
//! arrive, so a bad byte fails at once; the whole message is returned unchecked, for the
//! caller to turn into its string type (which checks it).
//!
//! ```
//! use switchboard_proto::websocket::{Decoder, Event, Step, Kind, header};
//!
//! // A text frame "hi", masked with [1, 2, 3, 4] as a client sends it.
//! let mut frame = vec![0x81, 0x80 | 2, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
//! let mut decoder = Decoder::new(1024);
//! match decoder.decode(&mut frame).unwrap() {
//!     Step::Frame { used, event: Some(Event::Text(text)) } => {
//!         assert_eq!(used, 8);
//!         assert_eq!(&text[..], b"hi");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // Half a frame: the decoder says how many bytes the frame needs in all.
//! assert_eq!(decoder.decode(&mut frame[..3]).unwrap(), Step::Incomplete { needed: 6 });
//! // The server's own frames are not masked.
//! let (head, len) = header(Kind::Text, 2);
//! assert_eq!(&head[..len], &[0x81, 2]);
//! ```

use bytes::Bytes;

/// The longest header a server writes (2 bytes, and 8 of extended length).
pub const MAX_SERVER_HEADER: usize = 10;

/// The kinds of frame a server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message (UTF-8).
    Text,
    /// A binary message.
    Binary,
    /// A ping (a heartbeat; the client answers with a pong).
    Ping,
    /// A pong (the answer to a client's ping, with its payload).
    Pong,
    /// A close frame.
    Close,
}

impl Kind {
    fn opcode(self) -> u8 {
        match self {
            Kind::Text => 0x1,
            Kind::Binary => 0x2,
            Kind::Close => 0x8,
            Kind::Ping => 0x9,
            Kind::Pong => 0xA,
        }
    }
}

/// The header of an unfragmented, unmasked frame (what a server sends) of `kind` with a
/// payload of `len` bytes; the header is the first `.1` bytes of `.0`.
///
/// ```
/// use switchboard_proto::websocket::{Kind, header};
///
/// let (head, len) = header(Kind::Binary, 300);
/// assert_eq!(&head[..len], &[0x82, 126, 1, 44]);
/// ```
pub fn header(kind: Kind, len: usize) -> ([u8; MAX_SERVER_HEADER], usize) {
    let mut head = [0u8; MAX_SERVER_HEADER];
    head[0] = 0x80 | kind.opcode();
    let used = if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (head, used)
}

/// The payload of a close frame: the code, then the reason, cut to fit in the 125 bytes
/// a control frame may carry (at a character boundary).
///
/// ```
/// use switchboard_proto::websocket::close_payload;
///
/// assert_eq!(close_payload(1000, "bye"), b"\x03\xe8bye");
/// assert!(close_payload(4000, &"x".repeat(500)).len() <= 125);
/// ```
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Whether a client may close with `code` (RFC 6455 7.4: the codes defined for use on
/// the wire, and the registered and private ranges 3000-4999).
///
/// ```
/// use switchboard_proto::websocket::is_valid_close_code;
///
/// assert!(is_valid_close_code(1000) && is_valid_close_code(4004));
/// assert!(!is_valid_close_code(1005) && !is_valid_close_code(999));
/// ```
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What one decoded frame gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole text message (its UTF-8 not yet checked).
    Text(Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping, with the payload its pong must carry.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame: its code and reason (`None`: a close without a code).
    Close(Option<(u16, String)>),
}

/// The result of [`Decoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The bytes hold less than one frame: it needs `needed` bytes in all, counted from
    /// the start of the bytes given (the header's size, while even that is incomplete).
    Incomplete {
        /// Bytes the frame needs, at least.
        needed: usize,
    },
    /// One frame, `used` bytes long, was decoded; `event` is `None` for a fragment that
    /// did not end its message.
    Frame {
        /// Bytes the frame took, from the start of the bytes given.
        used: usize,
        /// What it gave.
        event: Option<Event>,
    },
}

/// A client frame that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message (or the frame announcing it) over the limit.
    #[error("a message may be at most {0} bytes")]
    TooLarge(usize),
    /// A close frame's reason, or a fragment of a text message, is not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A WebSocket protocol violation.
    #[error("{0}")]
    Protocol(&'static str),
}

mod decoder;

pub use decoder::{Decoder, unmask};
