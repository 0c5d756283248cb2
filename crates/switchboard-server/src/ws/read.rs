//! Reading a client's frames with no buffer of the connection's own: every read goes
//! into a buffer that belongs to the worker thread, frames are decoded where they lie,
//! and only the bytes of a frame not yet whole (or of frames read together with the one
//! handed out) are copied into the connection, which frees them once decoded. An idle
//! connection holds no read buffer at all.

use std::cell::RefCell;
use std::task::{Context, Poll, ready};

use switchboard_proto::websocket::{Decoder, Event, FrameError, Step};

use super::frame::ReadError;
use super::frame_budget::FrameBudget;
use super::io::Stream;

/// How much one read asks the socket for (the size of each worker thread's buffer).
const READ_CHUNK: usize = 16 * 1024;

/// How far a frame's own buffer grows ahead of the bytes that have arrived: a client
/// that announces a large frame and sends nothing more costs this, not the frame's size.
const GROW_AHEAD: usize = 64 * 1024;

thread_local! {
    /// The buffer every read on this thread goes through.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// The largest message a reader accepts, whatever the configuration says: what is
/// pending (one frame and one read) then fits the 32-bit position.
const MAX_MESSAGE: usize = u32::MAX as usize - 2 * READ_CHUNK;

/// One connection's reading state.
pub(super) struct Reader {
    decoder: Decoder,
    /// Bytes read and not yet decoded, from `at` on. Empty (and unallocated) whenever the
    /// client has sent nothing more than whole frames that were handed out.
    pending: Vec<u8>,
    /// (32 bits: with `done`, 8 bytes in every connection's task.)
    at: u32,
    /// Charged with the fragments that do not end a message.
    budget: FrameBudget,
    /// Nothing more to read: the stream ended, failed, broke the protocol or closed.
    done: bool,
}

/// What decoding frames from some bytes gave.
enum Decoded {
    /// An event or the error that ends reading.
    Ready(Result<Event, ReadError>),
    /// The bytes end inside a frame that needs this many in all (from where it starts).
    Incomplete(usize),
}

impl Reader {
    /// A reader of messages up to `max_message` bytes; `early` are bytes already read
    /// from the stream (what HTTP read past the upgrade request).
    pub(super) fn new(max_message: usize, budget: FrameBudget, early: Vec<u8>) -> Reader {
        Reader {
            decoder: Decoder::new(max_message.min(MAX_MESSAGE)),
            pending: early,
            at: 0,
            budget,
            done: false,
        }
    }

    /// The next event from the client; `None` once reading has ended.
    pub(super) fn poll_event(
        &mut self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Event, ReadError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.pending_from() < self.pending.len() {
                let (used, decoded) = self.decode(Source::Pending);
                self.at = position(self.pending_from() + used);
                match decoded {
                    Decoded::Ready(event) => {
                        if self.pending_from() == self.pending.len() {
                            self.release();
                        }
                        return Poll::Ready(Some(self.seen(event)));
                    }
                    Decoded::Incomplete(needed) => self.make_room(needed),
                }
            }
            if let Some(event) = ready!(self.poll_read(stream, cx)) {
                return Poll::Ready(Some(self.seen(event)));
            }
        }
    }

    /// Marks the end of reading on an error or a close.
    fn seen(&mut self, event: Result<Event, ReadError>) -> Result<Event, ReadError> {
        if matches!(event, Err(_) | Ok(Event::Close(_))) {
            self.done = true;
            self.release();
        }
        event
    }

    /// Reads once into the thread's buffer. With nothing pending, decodes there and
    /// keeps only what is left; otherwise appends to what is pending. `Some` with the
    /// first event read; `None` to go on.
    fn poll_read(
        &mut self,
        stream: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Event, ReadError>>> {
        SCRATCH.with(|scratch| {
            // The buffer is never lent across an await; a busy one (impossible) costs an
            // allocation, not a panic.
            let mut borrowed = scratch.try_borrow_mut();
            let mut own;
            let buf: &mut [u8] = match &mut borrowed {
                Ok(b) => b,
                Err(_) => {
                    own = vec![0; READ_CHUNK];
                    &mut own
                }
            };
            let n = match ready!(stream.poll_read(cx, buf)) {
                Ok(0) => {
                    let lost = ReadError::Lost("connection reset without a close frame".into());
                    return Poll::Ready(Some(Err(lost)));
                }
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(ReadError::Lost(e.to_string())))),
            };
            if self.pending_from() < self.pending.len() {
                self.pending.extend_from_slice(&buf[..n]);
                return Poll::Ready(None);
            }
            self.release();
            let (used, decoded) = self.decode(Source::Read(&mut buf[..n]));
            let rest = &buf[used..n];
            match decoded {
                Decoded::Ready(event) => {
                    self.pending.extend_from_slice(rest);
                    Poll::Ready(Some(event))
                }
                Decoded::Incomplete(needed) => {
                    self.make_room(needed);
                    self.pending.extend_from_slice(rest);
                    Poll::Ready(None)
                }
            }
        })
    }

    /// Decodes frames from `source` until one gives an event; the bytes used, and the
    /// event or how many bytes the frame that did not fit needs.
    fn decode(&mut self, source: Source<'_>) -> (usize, Decoded) {
        let buf = match source {
            Source::Pending => {
                let from = self.pending_from();
                &mut self.pending[from..]
            }
            Source::Read(buf) => buf,
        };
        let mut used = 0;
        loop {
            match self.decoder.decode(&mut buf[used..]) {
                Ok(Step::Frame { used: n, event }) => {
                    used += n;
                    if let Some(event) = event {
                        return (used, Decoded::Ready(Ok(event)));
                    }
                    // A fragment that did not end its message: no message for the rate
                    // limiter to count, so the frame budget does.
                    if self.budget.charge(1).is_err() {
                        return (used, Decoded::Ready(Err(ReadError::Flood)));
                    }
                }
                Ok(Step::Incomplete { needed }) => return (used, Decoded::Incomplete(needed)),
                Err(e) => return (used, Decoded::Ready(Err(read_error(e)))),
            }
        }
    }

    /// Moves what is pending to the front and makes room for a frame of `needed` bytes
    /// (growing ahead of the data by at most [`GROW_AHEAD`]).
    fn make_room(&mut self, needed: usize) {
        if self.at > 0 {
            self.pending.drain(..self.pending_from());
            self.at = 0;
        }
        let have = self.pending.len();
        let want = needed.min(have + GROW_AHEAD);
        self.pending.reserve(want.saturating_sub(have));
    }

    /// Where the bytes not yet decoded start in `pending`.
    fn pending_from(&self) -> usize {
        self.at as usize
    }

    /// Frees the pending buffer once everything in it has been decoded.
    fn release(&mut self) {
        self.pending = Vec::new();
        self.at = 0;
    }
}

/// A position in `pending`: never past a frame and a read (see [`MAX_MESSAGE`]).
fn position(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

/// Where [`Reader::decode`] decodes from.
enum Source<'a> {
    Pending,
    Read(&'a mut [u8]),
}

fn read_error(e: FrameError) -> ReadError {
    match e {
        FrameError::TooLarge(_) => ReadError::TooLarge,
        FrameError::InvalidUtf8 => ReadError::InvalidUtf8,
        FrameError::Protocol(what) => ReadError::Protocol(what.to_owned()),
    }
}
