//! The byte stream under a WebSocket: a TCP socket (or TLS over one) taken back from
//! hyper, or hyper's upgraded connection when the router is mounted elsewhere.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::timed_io::TimedIo;

/// The byte stream under a WebSocket.
pub(crate) enum Io {
    Tcp(TcpStream),
    /// TLS over our TCP socket (the write deadline disarmed).
    Tls(Box<tokio_rustls::server::TlsStream<TimedIo<TcpStream>>>),
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

impl Io {
    /// Ready when a read may find data: always, unless this is a TCP socket that the
    /// kernel says has nothing (then the task is woken when it has). Lets the
    /// connection skip asking the WebSocket layer for a frame that cannot be there.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            // An error is for the read itself to report.
            Io::Tcp(tcp) => tcp.poll_read_ready(cx).map(|_| ()),
            Io::Tls(_) | Io::Other(_) => Poll::Ready(()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Io::Other(o) => Pin::new(o).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Io::Other(o) => Pin::new(o).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Io::Other(o) => Pin::new(o).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Io::Other(o) => Pin::new(o).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
            Io::Other(o) => Pin::new(o).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
            Io::Other(o) => o.is_write_vectored(),
        }
    }
}
