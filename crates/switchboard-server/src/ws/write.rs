//! Writing frames: each queued frame is its header (built on the spot, at most 10
//! bytes) and its payload (the shared bytes every recipient of a broadcast holds). A
//! flush copies a small batch (up to 16 KiB, the usual case) into one buffer of the
//! worker thread's and hands it to the socket in one plain write; a larger one goes in
//! vectored writes, without copying. An idle connection holds no write buffer: the
//! queue's allocation is freed once it has been written.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use switchboard_proto::websocket::{Kind, MAX_SERVER_HEADER, header};

use super::frame::WriteError;
use super::io::Stream;
use crate::spare;

/// The most frames one vectored write takes (two slices each, under Linux's 1,024).
const FRAMES_PER_WRITE: usize = 64;

/// Up to this many queued bytes are copied into one buffer of the worker thread's and
/// written with one plain `send`: for small frames the kernel's vectored path (each
/// slice copied in and checked, the VFS layer of `writev`) costs more than the copy.
const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// The worker thread's buffer for gathered writes (see [`GATHER_MAX`]).
    static GATHERED: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(GATHER_MAX));
    /// The thread's spare write queue (see [`crate::spare`]).
    static SPARE_QUEUE: std::cell::RefCell<VecDeque<Queued>> =
        const { std::cell::RefCell::new(VecDeque::new()) };
}

/// One frame waiting for the socket.
struct Queued {
    head: [u8; MAX_SERVER_HEADER],
    head_len: u8,
    payload: Bytes,
    /// Bytes of the header and payload already written.
    written: usize,
}

impl Queued {
    fn len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }

    /// What is left to write: of the header, then of the payload.
    fn unwritten(&self) -> (&[u8], &[u8]) {
        let head_len = usize::from(self.head_len);
        if self.written < head_len {
            (&self.head[self.written..head_len], &self.payload[..])
        } else {
            (&[], &self.payload[self.written - head_len..])
        }
    }
}

/// One connection's writing state.
#[derive(Default)]
pub(super) struct Writer {
    queue: VecDeque<Queued>,
    /// Bytes queued and not yet written, headers included.
    queued: usize,
    /// A close frame was queued: nothing may follow it.
    closed: bool,
}

impl Writer {
    /// Bytes waiting for the socket.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Whether a close frame has been queued.
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Queues a frame (a close frame is the last one).
    pub(super) fn push(&mut self, kind: Kind, payload: Bytes) -> Result<(), WriteError> {
        if self.closed {
            return Err(WriteError("the connection is closing".into()));
        }
        self.closed = kind == Kind::Close;
        let (head, head_len) = header(kind, payload.len());
        let frame = Queued {
            head,
            head_len: head_len as u8,
            payload,
            written: 0,
        };
        self.queued += frame.len();
        spare::take(&SPARE_QUEUE, &mut self.queue);
        self.queue.push_back(frame);
        Ok(())
    }

    /// Writes everything queued, then flushes the stream.
    pub(super) fn poll_flush(
        &mut self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        while !self.queue.is_empty() {
            if self.queued <= GATHER_MAX {
                match ready!(self.poll_write_gathered(stream, cx)) {
                    Ok(0) => {
                        return Poll::Ready(Err(WriteError("the socket took no bytes".into())));
                    }
                    Ok(n) => self.advance(n),
                    Err(e) => return Poll::Ready(Err(WriteError(e.to_string()))),
                }
                continue;
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut count = 0;
            for frame in self.queue.iter().take(FRAMES_PER_WRITE) {
                let (head, payload) = frame.unwritten();
                for part in [head, payload] {
                    if !part.is_empty() {
                        slices[count] = IoSlice::new(part);
                        count += 1;
                    }
                }
            }
            match ready!(stream.poll_write_vectored(cx, &slices[..count])) {
                Ok(0) => return Poll::Ready(Err(WriteError("the socket took no bytes".into()))),
                Ok(n) => self.advance(n),
                Err(e) => return Poll::Ready(Err(WriteError(e.to_string()))),
            }
        }
        // Written: the queue's buffer goes to the thread's spare, so an idle
        // connection keeps none.
        spare::give(&SPARE_QUEUE, &mut self.queue);
        stream.poll_flush(cx).map_err(|e| WriteError(e.to_string()))
    }

    /// Copies what is queued into the thread's buffer and writes it in one call.
    fn poll_write_gathered(
        &self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        GATHERED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            for frame in &self.queue {
                let (head, payload) = frame.unwritten();
                buf.extend_from_slice(head);
                buf.extend_from_slice(payload);
            }
            stream.poll_write(cx, &buf)
        })
    }

    /// Takes `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued = self.queued.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            let left = front.len() - front.written;
            if n < left {
                front.written += n;
                return;
            }
            n -= left;
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut w = Writer::default();
        w.push(Kind::Text, Bytes::from_static(b"hello")).unwrap();
        w.push(Kind::Binary, Bytes::from(vec![9u8; 300])).unwrap();
        assert_eq!(w.queued(), 2 + 5 + 4 + 300);
        w.advance(1);
        assert_eq!(w.queue[0].unwritten(), (&[5u8][..], &b"hello"[..]));
        w.advance(3);
        assert_eq!(w.queue[0].unwritten(), (&[][..], &b"llo"[..]));
        w.advance(3 + 1);
        assert_eq!(w.queue.len(), 1);
        assert_eq!(w.queue[0].unwritten().0, &[126, 1, 44][..]);
        w.advance(303);
        assert_eq!(w.queued(), 0);
        assert!(w.queue.is_empty());
    }

    /// Small batches go out gathered in one buffer, large ones vectored: either way the
    /// peer reads every frame, whole and in order.
    #[tokio::test]
    async fn gathered_and_vectored_writes_carry_the_same_bytes() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let mut peer = client.unwrap();
        let mut stream = Stream::Tcp(accepted.unwrap().0);
        let mut w = Writer::default();
        let mut expected = Vec::new();
        let mut queue = |w: &mut Writer, payload: Vec<u8>| {
            let (head, len) = header(Kind::Binary, payload.len());
            expected.extend_from_slice(&head[..len]);
            expected.extend_from_slice(&payload);
            w.push(Kind::Binary, Bytes::from(payload)).unwrap();
        };
        // Three small frames: under GATHER_MAX, one gathered write.
        for i in 0..3u8 {
            queue(&mut w, vec![i; 100]);
        }
        std::future::poll_fn(|cx| w.poll_flush(&mut stream, cx))
            .await
            .unwrap();
        // Then more than GATHER_MAX at once: vectored.
        for i in 0..4u8 {
            queue(&mut w, vec![10 + i; GATHER_MAX / 2]);
        }
        assert!(w.queued() > GATHER_MAX);
        let (flushed, read) = tokio::join!(
            std::future::poll_fn(|cx| w.poll_flush(&mut stream, cx)),
            async {
                let mut got = vec![0u8; expected.len()];
                peer.read_exact(&mut got).await.map(|_| got)
            }
        );
        flushed.unwrap();
        assert_eq!(read.unwrap(), expected);
        assert_eq!(w.queued(), 0);
    }

    #[test]
    fn nothing_follows_a_close_frame() {
        let mut w = Writer::default();
        w.push(Kind::Close, Bytes::from_static(&[3, 232])).unwrap();
        assert!(w.is_closed());
        assert!(w.push(Kind::Text, Bytes::from_static(b"late")).is_err());
    }
}
