//! The byte stream under a WebSocket: a TCP socket (or TLS over one) taken back from
//! hyper, or hyper's upgraded connection when the router is mounted elsewhere.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::timed_io::TimedIo;

/// Where the bytes come from.
pub(crate) enum Stream {
    Tcp(TcpStream),
    /// TLS over our TCP socket (the write deadline disarmed).
    Tls(Box<tokio_rustls::server::TlsStream<TimedIo<TcpStream>>>),
    /// Boxed: rare (a router mounted elsewhere, the netconduit bridge) and large.
    Other(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

impl Stream {
    /// Ready when a read may find data: always, unless this is a TCP socket that the
    /// kernel says has nothing (then the task is woken when it has). Lets the
    /// connection skip a read that cannot find anything.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            // An error is for the read itself to report.
            Stream::Tcp(tcp) => tcp.poll_read_ready(cx).map(|_| ()),
            Stream::Tls(_) | Stream::Other(_) => Poll::Ready(()),
        }
    }

    /// Reads into `buf`; the number of bytes read, 0 at the end of the stream.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        let read = match self {
            Stream::Tcp(t) => Pin::new(t).poll_read(cx, &mut buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, &mut buf),
            Stream::Other(o) => Pin::new(o.as_mut()).poll_read(cx, &mut buf),
        };
        read.map_ok(|()| buf.filled().len())
    }

    /// Writes from one buffer (for TCP, one `send`).
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self {
            Stream::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Stream::Other(o) => Pin::new(o.as_mut()).poll_write(cx, buf),
        }
    }

    pub(crate) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self {
            Stream::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Other(o) => Pin::new(o.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            Stream::Tcp(t) => Pin::new(t).poll_flush(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Stream::Other(o) => Pin::new(o.as_mut()).poll_flush(cx),
        }
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            Stream::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Stream::Other(o) => Pin::new(o.as_mut()).poll_shutdown(cx),
        }
    }
}
