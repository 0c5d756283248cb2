//! The byte stream under a WebSocket: a TCP socket (or TLS over one) taken back from
//! hyper, or hyper's upgraded connection when the router is mounted elsewhere.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frame_budget::FrameScanner;
use crate::timed_io::TimedIo;

/// The byte stream under a WebSocket, counting the frames read from it.
pub(crate) struct Io {
    stream: Stream,
    scanner: FrameScanner,
    /// Frames whose headers were read since [`take_frames_read`](Io::take_frames_read).
    frames_read: u32,
}

/// Where the bytes come from.
pub(crate) enum Stream {
    Tcp(TcpStream),
    /// TLS over our TCP socket (the write deadline disarmed).
    Tls(Box<tokio_rustls::server::TlsStream<TimedIo<TcpStream>>>),
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

impl Io {
    pub(crate) fn new(stream: Stream) -> Io {
        Io {
            stream,
            scanner: FrameScanner::default(),
            frames_read: 0,
        }
    }

    /// Counts the frames in bytes read before the socket library took over (what
    /// hyper read past the upgrade request).
    pub(crate) fn count(&mut self, early: &[u8]) {
        self.frames_read = self.frames_read.saturating_add(self.scanner.scan(early));
    }

    /// The frames read since the last call.
    pub(crate) fn take_frames_read(&mut self) -> u32 {
        std::mem::take(&mut self.frames_read)
    }

    /// Ready when a read may find data: always, unless this is a TCP socket that the
    /// kernel says has nothing (then the task is woken when it has). Lets the
    /// connection skip asking the WebSocket layer for a frame that cannot be there.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.stream {
            // An error is for the read itself to report.
            Stream::Tcp(tcp) => tcp.poll_read_ready(cx).map(|_| ()),
            Stream::Tls(_) | Stream::Other(_) => Poll::Ready(()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.stream {
            Stream::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Stream::Other(o) => Pin::new(o).poll_read(cx, buf),
        };
        if read.is_ready() {
            let frames = this.scanner.scan(&buf.filled()[before..]);
            this.frames_read = this.frames_read.saturating_add(frames);
        }
        read
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Stream::Other(o) => Pin::new(o).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(t) => Pin::new(t).poll_flush(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Stream::Other(o) => Pin::new(o).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Stream::Other(o) => Pin::new(o).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Other(o) => Pin::new(o).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tcp(t) => t.is_write_vectored(),
            Stream::Tls(t) => t.is_write_vectored(),
            Stream::Other(o) => o.is_write_vectored(),
        }
    }
}
