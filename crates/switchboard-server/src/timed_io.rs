//! A byte stream whose writes fail when they stall too long: a client that sends
//! requests and never reads the answers cannot hold a connection (and its file
//! descriptor) forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io`, with a deadline on every write that cannot go on: after `timeout` without
/// progress the write fails with [`io::ErrorKind::TimedOut`].
pub(crate) struct TimedIo<T> {
    io: T,
    timeout: Option<Duration>,
    /// Running while a write is stalled (allocated only then).
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(io: T, timeout: Duration) -> TimedIo<T> {
        TimedIo {
            io,
            timeout: Some(timeout),
            stalled: None,
        }
    }

    /// No more deadlines (the connection became a WebSocket, which has its own
    /// slow-consumer policy).
    pub(crate) fn disarm(&mut self) {
        self.timeout = None;
        self.stalled = None;
    }

    pub(crate) fn into_inner(self) -> T {
        self.io
    }

    /// A write made no progress: pending until the deadline, then an error.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer has not read for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, result: io::Result<R>) -> Poll<io::Result<R>> {
        self.stalled = None;
        Poll::Ready(result)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => this.progress(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.progress(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(r) => this.progress(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout() {
        // A pipe whose reader never reads: 64 bytes of buffer, then writes stall.
        let (_reader, writer) = tokio::io::duplex(64);
        let mut timed = TimedIo::new(writer, Duration::from_secs(10));
        let err = timed.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn disarmed_it_waits_like_the_stream_under_it() {
        let (_reader, writer) = tokio::io::duplex(64);
        let mut timed = TimedIo::new(writer, Duration::from_secs(10));
        timed.disarm();
        let write = timed.write_all(&[0u8; 1024]);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), write)
                .await
                .is_err(),
            "still waiting after a minute"
        );
    }
}
