//! The WebSocket library (tokio-tungstenite) behind the project's own types.
//!
//! This is the one module that names the socket library: the rest of the crate reads
//! [`Incoming`] frames and writes [`Frame`]s through [`WebSocket`], so replacing the
//! library touches only this folder. HTTP (the upgrade request, its checks and the 101
//! answer) is [`crate::http`]'s job; this module takes over the upgraded byte stream.

mod frame;
mod frame_budget;
mod io;

use std::future::poll_fn;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream as _};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub(crate) use frame::{Frame, Incoming, ReadError, Text, WriteError};
use frame_budget::FrameBudget;
use io::{Io, Stream};

use crate::timed_io::TimedIo;

/// The socket's limits and buffer sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Read and write buffer size (frames wait in the connection's outbox, not here).
    pub(crate) buffer_size: usize,
    /// The largest message a client may send.
    pub(crate) max_message_size: usize,
    /// The largest frame the server may write (what the outbox lets through).
    pub(crate) max_frame_out: usize,
    /// Frames (of any kind: data, continuation, ping, pong) a client may send a
    /// second, and at once; 0: no budget.
    pub(crate) frames_per_sec: u32,
    pub(crate) frame_burst: u32,
}

impl Settings {
    fn library_config(self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.buffer_size)
            .write_buffer_size(self.buffer_size)
            // Frames are fed only when the buffer has room, so it holds at most one
            // frame past `buffer_size`.
            .max_write_buffer_size(self.buffer_size + self.max_frame_out.max(self.max_message_size))
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// One client's WebSocket, server side.
pub(crate) struct WebSocket {
    stream: WebSocketStream<Io>,
    /// Charged with the frames that did not become messages (see [`frame_budget`]).
    budget: FrameBudget,
    /// Frames read less messages yielded, since the socket library last ran dry.
    unmatched: i32,
}

impl WebSocket {
    /// The WebSocket over a connection hyper has upgraded. A plain TCP connection is
    /// taken back from hyper, so reads go straight to the socket and can wait on its
    /// readiness; anything else (TLS) stays behind hyper's wrapper. Bytes the client sent
    /// right behind its upgrade request come first.
    pub(crate) async fn from_upgraded(
        upgraded: hyper::upgrade::Upgraded,
        settings: Settings,
    ) -> WebSocket {
        let config = Some(settings.library_config());
        let (stream, early) = take_back(upgraded);
        let mut io = Io::new(stream);
        io.count(&early);
        let stream = if early.is_empty() {
            WebSocketStream::from_raw_socket(io, Role::Server, config).await
        } else {
            // The client sent frames right behind its request: they come first.
            WebSocketStream::from_partially_read(io, early, Role::Server, config).await
        };
        WebSocket {
            stream,
            budget: FrameBudget::new(settings.frames_per_sec, settings.frame_burst),
            unmatched: 0,
        }
    }

    /// Ready when a read may find data (see [`Io::poll_read_ready`]).
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.stream.get_ref().poll_read_ready(cx)
    }

    /// The next frame from the client; `None` when the connection has ended.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, ReadError>>> {
        let next = std::pin::Pin::new(&mut self.stream).poll_next(cx);
        let frames = self.stream.get_mut().take_frames_read();
        self.unmatched = self
            .unmatched
            .saturating_add(i32::try_from(frames).unwrap_or(i32::MAX));
        match &next {
            Poll::Ready(Some(Ok(_))) => self.unmatched -= 1,
            // Every complete frame read so far has been taken in: those that did not
            // become messages were continuations (of a message not yet complete, or of
            // none), which the message limiter never sees.
            Poll::Pending if self.unmatched > 0 => {
                let invisible = self.unmatched.unsigned_abs();
                self.unmatched = 0;
                if self.budget.charge(invisible).is_err() {
                    return Poll::Ready(Some(Err(ReadError::Flood)));
                }
            }
            _ => {}
        }
        next.map(|next| next.map(|r| r.map(incoming).map_err(|e| read_error(&e))))
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Incoming, ReadError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Ready when the socket takes another frame.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        std::pin::Pin::new(&mut self.stream)
            .poll_ready(cx)
            .map_err(write_error)
    }

    /// Hands a frame to the socket (after [`poll_ready`](Self::poll_ready)).
    pub(crate) fn start_send(&mut self, frame: Frame) -> Result<(), WriteError> {
        let message = match frame {
            Frame::Text(t) | Frame::Verbatim(t) => Message::Text(t.0),
            Frame::Binary(b) => Message::Binary(b),
            Frame::Ping => Message::Ping(bytes::Bytes::new()),
        };
        std::pin::Pin::new(&mut self.stream)
            .start_send(message)
            .map_err(write_error)
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        std::pin::Pin::new(&mut self.stream)
            .poll_flush(cx)
            .map_err(write_error)
    }

    /// Queues a frame without flushing.
    pub(crate) async fn feed(&mut self, frame: Frame) -> Result<(), WriteError> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        self.start_send(frame)
    }

    /// Writes a frame and flushes.
    pub(crate) async fn send(&mut self, frame: Frame) -> Result<(), WriteError> {
        self.feed(frame).await?;
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Sends a close frame with `code` and `reason` (at most 123 bytes).
    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), WriteError> {
        let close = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }));
        poll_fn(|cx| self.poll_ready(cx)).await?;
        std::pin::Pin::new(&mut self.stream)
            .start_send(close)
            .map_err(write_error)?;
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Flushes what is queued (a close reply included) and shuts the write side.
    pub(crate) async fn shutdown(&mut self) {
        let _ = poll_fn(|cx| std::pin::Pin::new(&mut self.stream).poll_close(cx)).await;
    }
}

/// The byte stream hyper upgraded, taken back out of hyper's wrapper where it is one of
/// ours (the TCP socket, or TLS over it, with the HTTP write deadline disarmed: a
/// WebSocket has its own slow-consumer policy), so reads go straight to it; and the
/// bytes hyper had read past the request.
fn take_back(upgraded: hyper::upgrade::Upgraded) -> (Stream, Vec<u8>) {
    type Plain = TimedIo<TcpStream>;
    type Tls = tokio_rustls::server::TlsStream<TimedIo<TcpStream>>;
    let upgraded = match upgraded.downcast::<TokioIo<Plain>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner().into_inner();
            return (Stream::Tcp(tcp), parts.read_buf.to_vec());
        }
        Err(upgraded) => upgraded,
    };
    let upgraded = match upgraded.downcast::<TokioIo<Tls>>() {
        Ok(parts) => {
            let mut tls = parts.io.into_inner();
            tls.get_mut().0.disarm();
            return (Stream::Tls(Box::new(tls)), parts.read_buf.to_vec());
        }
        Err(upgraded) => upgraded,
    };
    // Served by someone else's axum (the router mounted in an application).
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (Stream::Tcp(parts.io.into_inner()), parts.read_buf.to_vec()),
        Err(upgraded) => (Stream::Other(TokioIo::new(upgraded)), Vec::new()),
    }
}

fn incoming(message: Message) -> Incoming {
    match message {
        Message::Text(t) => Incoming::Text(Text(t)),
        Message::Binary(b) => Incoming::Binary(b),
        Message::Close(frame) => {
            Incoming::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
    }
}

fn read_error(err: &WsError) -> ReadError {
    match err {
        WsError::Capacity(_) => ReadError::TooLarge,
        WsError::Utf8(_) => ReadError::InvalidUtf8,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ReadError::Lost("connection reset without a close frame".into())
        }
        WsError::Protocol(p) => ReadError::Protocol(p.to_string()),
        other => ReadError::Lost(other.to_string()),
    }
}

fn write_error(err: WsError) -> WriteError {
    WriteError(err.to_string())
}
