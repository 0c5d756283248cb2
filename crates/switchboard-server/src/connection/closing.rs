//! How a connection ends: why ([`Closing`]), and the close handshake on the socket.

use std::time::Duration;

use switchboard_proto::code::close;
use switchboard_proto::{ErrorCode, close_reason};

use crate::ws::{Frame, Incoming, ReadError, WebSocket};

/// Why a client that floods frames (pings, continuations) is closed.
pub(crate) const FLOOD: &str = "too many WebSocket frames too fast";

/// How and why a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
    /// Abort: drop what is queued and stop now (slow consumer, write error). Otherwise
    /// in-flight handlers finish and queued frames are flushed first.
    pub(crate) abort: bool,
    /// The close was the client's doing (it closed, or the socket dropped): no close
    /// frame of ours to send.
    pub(crate) by_client: bool,
}

impl Closing {
    /// Whether the session may be resumed after this close: not when the client said
    /// goodbye (1000), nor after a close that tells it never to reconnect (kicked,
    /// forbidden, its session taken).
    pub(crate) fn resumable(&self) -> bool {
        if self.by_client {
            return self.code != close::NORMAL;
        }
        switchboard_proto::reconnect_hint(self.code) != switchboard_proto::Reconnect::Never
    }

    /// The server closes with one of switchboard's codes, gracefully: what is queued
    /// goes out first.
    pub(crate) fn with_code(code: ErrorCode, message: &str) -> Closing {
        Closing {
            code: code.close_code_or_internal(),
            reason: close_reason(code, message),
            abort: false,
            by_client: false,
        }
    }

    /// The server closes with one of switchboard's codes at once, dropping what is
    /// queued (a slow consumer, a dead peer, the end of the shutdown grace).
    pub(crate) fn abort_with_code(code: ErrorCode, message: &str) -> Closing {
        Closing {
            abort: true,
            ..Closing::with_code(code, message)
        }
    }

    /// The server closes with a WebSocket (RFC 6455) code, after a bad frame.
    pub(crate) fn protocol(code: u16, reason: String) -> Closing {
        Closing {
            code,
            reason: truncate_reason(reason),
            abort: false,
            by_client: false,
        }
    }

    /// The client closed with this code and reason.
    pub(crate) fn by_client(code: u16, reason: String) -> Closing {
        Closing {
            code,
            reason,
            abort: false,
            by_client: true,
        }
    }

    /// The connection dropped (1006): nothing more to send or read.
    pub(crate) fn lost(reason: impl Into<String>) -> Closing {
        Closing {
            code: close::ABNORMAL,
            reason: reason.into(),
            abort: true,
            by_client: true,
        }
    }

    /// How a read error ends the connection: the close code the RFC asks for, or a
    /// dropped connection when the socket itself failed.
    pub(crate) fn after_read_error(err: ReadError, max_message_size: usize) -> Closing {
        match err {
            ReadError::TooLarge => Closing::with_code(
                ErrorCode::MessageTooLarge,
                &format!("a message may be at most {max_message_size} bytes"),
            ),
            ReadError::InvalidUtf8 => {
                Closing::protocol(close::INVALID_DATA, "invalid UTF-8".into())
            }
            ReadError::Protocol(what) => Closing::protocol(close::PROTOCOL_ERROR, what),
            ReadError::Flood => Closing::with_code(ErrorCode::RateLimited, FLOOD),
            ReadError::Lost(what) => Closing::lost(what),
        }
    }
}

/// A close reason must fit in 123 bytes.
fn truncate_reason(mut s: String) -> String {
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The close handshake: our final `error` frame and close frame (unless the client
/// closed first), then a short wait for the client's answer so the TCP connection ends
/// cleanly. Each step is bounded by `limit`.
pub(crate) async fn close_socket(
    ws: &mut WebSocket,
    closing: &Closing,
    final_error: Option<Frame>,
    limit: Duration,
) {
    if closing.by_client {
        // Flushes the close reply the socket library queued.
        let _ = tokio::time::timeout(limit, ws.shutdown()).await;
        return;
    }
    if let Some(error) = final_error {
        let _ = tokio::time::timeout(limit, ws.feed(error)).await;
    }
    let sent = tokio::time::timeout(limit, ws.send_close(closing.code, &closing.reason)).await;
    let read_side_failed = matches!(
        closing.code,
        close::PROTOCOL_ERROR | close::INVALID_DATA | close::MESSAGE_TOO_BIG
    );
    if read_side_failed {
        // After a bad frame the socket library reads nothing more, and unread data left
        // in the kernel makes closing reset the connection, which would throw away our
        // close frame before the client reads it. Shut our side, then linger briefly.
        let _ = tokio::time::timeout(limit, ws.shutdown()).await;
        tokio::time::sleep(limit).await;
        return;
    }
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(frame)) = ws.next().await {
                if matches!(frame, Incoming::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(limit, ws.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_in_a_close_frame() {
        let long = "é".repeat(100);
        let c = Closing::protocol(close::PROTOCOL_ERROR, long);
        assert!(c.reason.len() <= 120);
        assert!(c.reason.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn server_codes_carry_their_close_code_and_hint() {
        let c = Closing::with_code(ErrorCode::Kicked, "bye");
        assert_eq!(c.code, 4004);
        assert!(!c.abort && !c.by_client);
        assert!(Closing::abort_with_code(ErrorCode::SlowConsumer, "x").abort);
    }
}
