//! The server's WebSocket (RFC 6455) over the upgraded byte stream, behind the
//! project's own types.
//!
//! The rest of the crate reads [`Incoming`] frames and writes [`Frame`]s through
//! [`WebSocket`]. Frames are decoded by `switchboard_proto::websocket` (no I/O); this
//! module adds the socket: reads go through a buffer of the worker thread's
//! ([`read`]), writes hand queued frames to the socket without copying them
//! ([`write`]), so an idle connection holds no buffer at all. HTTP (the upgrade
//! request, its checks and the 101 answer) is [`crate::http`]'s job.

mod frame;
mod frame_budget;
mod io;
mod read;
mod write;

use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use switchboard_proto::websocket::{Event, Kind, close_payload};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(crate) use frame::{Frame, Incoming, ReadError, Text, WriteError};
use frame_budget::FrameBudget;
use io::Stream;
use read::Reader;
use write::Writer;

use crate::timed_io::TimedIo;

/// The socket's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Bytes queued for the socket past which no more frames are taken (they wait in
    /// the connection's outbox instead).
    pub(crate) buffer_size: usize,
    /// The largest message a client may send.
    pub(crate) max_message_size: usize,
    /// Frames (of any kind: data, continuation, ping, pong) a client may send a
    /// second, and at once; 0: no budget.
    pub(crate) frames_per_sec: u32,
    pub(crate) frame_burst: u32,
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// One client's WebSocket, server side.
pub(crate) struct WebSocket {
    stream: Stream,
    reader: Reader,
    writer: Writer,
    /// Bytes queued for the socket past which [`poll_ready`](Self::poll_ready) waits.
    buffer_size: usize,
}

impl WebSocket {
    /// The WebSocket over a connection hyper has upgraded. A plain TCP connection is
    /// taken back from hyper, so reads go straight to the socket and can wait on its
    /// readiness; anything else (TLS) stays behind hyper's wrapper. Bytes the client sent
    /// right behind its upgrade request come first.
    pub(crate) fn from_upgraded(
        upgraded: hyper::upgrade::Upgraded,
        settings: Settings,
    ) -> WebSocket {
        let (stream, early) = take_back(upgraded);
        let budget = FrameBudget::new(settings.frames_per_sec, settings.frame_burst);
        WebSocket {
            stream,
            reader: Reader::new(settings.max_message_size, budget, early),
            writer: Writer::default(),
            buffer_size: settings.buffer_size,
        }
    }

    /// Ready when a read may find data (see [`Stream::poll_read_ready`]).
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.stream.poll_read_ready(cx)
    }

    /// The next frame from the client; `None` when the connection has ended. A ping is
    /// answered here (its pong queued and flushed), a close frame too.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, ReadError>>> {
        let event = match ready!(self.reader.poll_event(&mut self.stream, cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(event)) => event,
        };
        let incoming = match event {
            Event::Text(bytes) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => Incoming::Text(Text(text)),
                Err(_) => return Poll::Ready(Some(Err(ReadError::InvalidUtf8))),
            },
            Event::Binary(bytes) => Incoming::Binary(bytes),
            Event::Ping(payload) => {
                if !self.writer.is_closed() {
                    let _ = self.writer.push(Kind::Pong, payload);
                    // What the socket cannot take now, the connection's next flush does
                    // (see `has_unflushed`); a failure shows on that write.
                    let _ = self.writer.poll_flush(&mut self.stream, cx);
                }
                Incoming::Control
            }
            Event::Pong => Incoming::Control,
            Event::Close(frame) => {
                if !self.writer.is_closed() {
                    // The reply echoes the code; sent by the close that follows.
                    let reply = frame
                        .as_ref()
                        .map_or_else(Vec::new, |(code, _)| code.to_be_bytes().to_vec());
                    let _ = self.writer.push(Kind::Close, Bytes::from(reply));
                }
                Incoming::Close(frame)
            }
        };
        Poll::Ready(Some(Ok(incoming)))
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Incoming, ReadError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Frames are queued for the socket and not yet all written.
    pub(crate) fn has_unflushed(&self) -> bool {
        self.writer.queued() > 0
    }

    /// Ready when the socket takes another frame: fewer than `buffer_size` bytes are
    /// waiting for it, after trying to write them.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        if self.writer.queued() < self.buffer_size {
            return Poll::Ready(Ok(()));
        }
        match self.writer.poll_flush(&mut self.stream, cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending if self.writer.queued() < self.buffer_size => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Queues a frame (after [`poll_ready`](Self::poll_ready)).
    pub(crate) fn start_send(&mut self, frame: Frame) -> Result<(), WriteError> {
        let (kind, payload) = match frame {
            Frame::Text(t) | Frame::Verbatim(t) => (Kind::Text, Bytes::from(t.0)),
            Frame::Binary(b) => (Kind::Binary, b),
            Frame::Ping => (Kind::Ping, Bytes::new()),
        };
        self.writer.push(kind, payload)
    }

    /// Writes what is queued.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        self.writer.poll_flush(&mut self.stream, cx)
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

    /// Sends a close frame with `code` and `reason` (cut to fit in the frame); nothing
    /// if one was sent already.
    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), WriteError> {
        if !self.writer.is_closed() {
            let payload = Bytes::from(close_payload(code, reason));
            self.writer.push(Kind::Close, payload)?;
        }
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Flushes what is queued (a close reply included) and shuts the write side.
    pub(crate) async fn shutdown(&mut self) {
        if poll_fn(|cx| self.poll_flush(cx)).await.is_ok() {
            let _ = poll_fn(|cx| self.stream.poll_shutdown(cx)).await;
        }
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
        Err(upgraded) => (Stream::Other(Box::new(TokioIo::new(upgraded))), Vec::new()),
    }
}
