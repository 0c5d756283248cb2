//! A connection's bounded outbound queue of pre-encoded frames, its closing state, and
//! the wake-ups of the connection's task.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use futures_util::task::AtomicWaker;
use switchboard_proto::{ErrorBody, ErrorCode, error_frame};

use super::Closing;
use crate::config::SlowConsumerPolicy;
use crate::locks::lock;
use crate::spare;
use crate::ws::Frame;
use crate::{ConnId, SendError, ServerConfig};

thread_local! {
    /// The thread's spare queue buffer (see [`crate::spare`]).
    static SPARE_FRAMES: RefCell<VecDeque<Frame>> = const { RefCell::new(VecDeque::new()) };
}

#[derive(Debug, Default)]
struct OutboxState {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Frames (and bytes) not counted against the bounds: what a resume replayed, so
    /// a client that was cut off for being slow can catch up (the history holds them
    /// already; the queue shares their bytes), and what was taken for the socket and
    /// put back (see [`Outbox::put_back`]).
    exempt: usize,
    exempt_bytes: usize,
    closing: Option<Closing>,
    /// The `error` frame written just before the close frame, after everything queued.
    final_error: Option<Box<str>>,
    reader_done: bool,
    finished: bool,
}

/// What the writer should do next.
pub(crate) enum WriterStep {
    /// Frames were moved into the batch: write them, flush once.
    Write,
    /// Nothing to do until notified.
    Wait,
    /// Done: close with this.
    Finish(Closing),
}

/// A configured bound, kept in 32 bits (in every connection; 4 GiB is past any queue's
/// bound), at least 1.
fn bound(n: usize) -> u32 {
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

/// The outbound queue: bounded in frames and bytes, with a slow-consumer policy.
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    max_frames: u32,
    max_bytes: u32,
    /// The largest single frame it takes (larger ones are refused, never dropped
    /// silently by the socket).
    max_frame: u32,
    policy: SlowConsumerPolicy,
    /// The connection's task, woken when frames are queued or closing begins.
    waker: AtomicWaker,
    /// True while the task runs: it looks again before it sleeps when `dirty` is set,
    /// so nothing needs to wake it.
    polling: AtomicBool,
    /// Something for the task happened (a frame queued, closing begun).
    dirty: AtomicBool,
    /// Set once closing has begun (the reader stops reading).
    closing: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(config: &ServerConfig) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            max_frames: bound(config.outbound_queue),
            max_bytes: bound(config.outbound_queue_bytes),
            max_frame: bound(config.max_frame_out()),
            policy: config.slow_consumer,
            waker: AtomicWaker::new(),
            polling: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    /// Queues a frame, applying the slow-consumer policy when the queue is full.
    pub(crate) fn push(&self, frame: Frame, id: ConnId) -> Result<(), SendError> {
        let len = frame.len();
        if len > self.max_frame as usize {
            return Err(SendError::TooLarge {
                size: len,
                max: self.max_frame as usize,
            });
        }
        let mut st = lock(&self.state);
        if st.finished || st.closing.as_ref().is_some_and(|c| c.abort || c.by_client) {
            return Err(SendError::Closed);
        }
        // One frame is always accepted into an empty queue (up to `max_frame`), so a
        // large reply cannot count as a slow consumer.
        let full = !st.frames.is_empty()
            && (st.frames.len() >= self.max_frames as usize + st.exempt
                || st.bytes + len > self.max_bytes as usize + st.exempt_bytes);
        if full {
            match self.policy {
                SlowConsumerPolicy::DropNew => {
                    tracing::debug!(conn = %id, "outbound queue full, message dropped");
                    return Err(SendError::Full);
                }
                SlowConsumerPolicy::Disconnect => {
                    tracing::info!(conn = %id, "slow consumer, disconnecting");
                    st.frames.clear();
                    st.bytes = 0;
                    st.closing = Some(Closing::abort_with_code(
                        ErrorCode::SlowConsumer,
                        "outbound queue full",
                    ));
                    self.closing.store(true, Ordering::Release);
                    drop(st);
                    self.wake();
                    return Err(SendError::Full);
                }
            }
        }
        st.bytes += len;
        spare::take(&SPARE_FRAMES, &mut st.frames);
        st.frames.push_back(frame);
        drop(st);
        self.wake();
        Ok(())
    }

    /// How many frames wait to be written.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state).frames.len()
    }

    /// Queues what a resume replays, whatever the bounds (see `exempt`).
    pub(crate) fn push_replayed(&self, frames: Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        if st.finished || st.closing.is_some() {
            return;
        }
        for frame in frames {
            let len = frame.len();
            st.bytes += len;
            st.exempt += 1;
            st.exempt_bytes += len;
            st.frames.push_back(frame);
        }
        drop(st);
        self.wake();
    }

    /// Wakes the connection's task, unless it is running (it then looks at the queue
    /// and the closing state before it sleeps; see [`Outbox::sleeping`]).
    fn wake(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// The connection's task starts a turn: nothing needs to wake it until
    /// [`sleeping`](Outbox::sleeping).
    pub(crate) fn awake(&self, waker: &Waker) {
        self.waker.register(waker);
        self.polling.store(true, Ordering::SeqCst);
        self.dirty.store(false, Ordering::SeqCst);
    }

    /// The connection's task is about to sleep: false if something happened during its
    /// turn (it must look again). Whatever happens after this wakes it.
    pub(crate) fn sleeping(&self) -> bool {
        self.polling.store(false, Ordering::SeqCst);
        if self.dirty.swap(false, Ordering::SeqCst) {
            self.polling.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// True once closing has begun: the reader reads no more.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Starts closing; the first reason wins, except that an abort overrides a graceful
    /// close.
    pub(crate) fn begin_close(&self, closing: Closing) {
        let mut st = lock(&self.state);
        match &st.closing {
            Some(existing) if existing.abort || !closing.abort => return,
            _ => {}
        }
        if closing.abort {
            st.frames.clear();
            st.bytes = 0;
        }
        st.closing = Some(closing);
        self.closing.store(true, Ordering::Release);
        drop(st);
        self.wake();
    }

    /// Begins closing with a final `error` frame, sent after everything already queued.
    pub(crate) fn close_with_error(&self, closing: Closing, error: &ErrorBody) {
        {
            let mut st = lock(&self.state);
            if st.closing.is_none() && st.final_error.is_none() {
                st.final_error = Some(error_frame(error).into_boxed_str());
            }
        }
        self.begin_close(closing);
    }

    /// Closes with one of switchboard's codes: a final `error` frame, then the close.
    pub(crate) fn close_with_code(&self, code: ErrorCode, message: &str) {
        self.close_with_error(
            Closing::with_code(code, message),
            &ErrorBody::new(code, message),
        );
    }

    /// The final `error` frame, if the close has one.
    pub(crate) fn take_final_error(&self) -> Option<String> {
        lock(&self.state).final_error.take().map(String::from)
    }

    /// The reader has stopped: no more handlers will run for this connection.
    pub(crate) fn reader_finished(&self, closing_if_none: Closing) {
        let mut st = lock(&self.state);
        st.reader_done = true;
        if st.closing.is_none() {
            st.closing = Some(closing_if_none);
        }
        self.closing.store(true, Ordering::Release);
    }

    /// Moves queued frames into `batch` (the written batch it held goes back to the
    /// thread's spare), or says to wait or finish.
    pub(crate) fn take_batch(&self, batch: &mut VecDeque<Frame>) -> WriterStep {
        let mut st = lock(&self.state);
        if let Some(c) = cut_off(&mut st) {
            return WriterStep::Finish(c);
        }
        if !st.frames.is_empty() {
            // The written batch's buffer to the spare; the queued frames become the batch.
            spare::give(&SPARE_FRAMES, batch);
            std::mem::swap(batch, &mut st.frames);
            st.bytes = 0;
            st.exempt = 0;
            st.exempt_bytes = 0;
            return WriterStep::Write;
        }
        // Going idle: no queue buffer is kept (an idle connection holds none); the
        // next frame queued takes the thread's spare one.
        spare::give(&SPARE_FRAMES, &mut st.frames);
        spare::give(&SPARE_FRAMES, batch);
        match &st.closing {
            Some(c) if st.reader_done => {
                let c = c.clone();
                st.finished = true;
                WriterStep::Finish(c)
            }
            _ => WriterStep::Wait,
        }
    }

    /// The closing that ends the connection without writing what is queued (the
    /// client is gone, or is cut off for not reading), once it has begun: the writer
    /// is then finished.
    pub(crate) fn cut_off(&self) -> Option<Closing> {
        cut_off(&mut lock(&self.state))
    }

    /// Takes back the frames of a batch the socket could not take yet, in front of
    /// whatever was queued since: they are written first when the socket is ready, and
    /// are not counted against the bounds (they were not while taken). The connection's
    /// task keeps no queue of its own this way.
    pub(crate) fn put_back(&self, mut batch: VecDeque<Frame>) {
        if batch.is_empty() {
            return;
        }
        let bytes: usize = batch.iter().map(Frame::len).sum();
        let mut st = lock(&self.state);
        if st.finished {
            return;
        }
        st.exempt += batch.len();
        st.exempt_bytes += bytes;
        st.bytes += bytes;
        batch.append(&mut st.frames);
        st.frames = batch;
    }

    /// True once the connection has finished (no more frames accepted).
    pub(crate) fn is_finished(&self) -> bool {
        lock(&self.state).finished
    }

    /// Marks the connection finished (no more frames accepted).
    pub(crate) fn mark_finished(&self) {
        lock(&self.state).finished = true;
        // The task is ending: a `Conn` kept by application code must not keep it alive.
        drop(self.waker.take());
    }
}

/// See [`Outbox::cut_off`].
fn cut_off(st: &mut OutboxState) -> Option<Closing> {
    match &st.closing {
        Some(c) if c.abort || c.by_client => {
            let c = c.clone();
            st.finished = true;
            Some(c)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SlowConsumerPolicy;

    fn outbox(max_frames: usize) -> Outbox {
        Outbox::new(&ServerConfig {
            outbound_queue: max_frames,
            slow_consumer: SlowConsumerPolicy::DropNew,
            ..ServerConfig::default()
        })
    }

    fn texts(frames: &VecDeque<Frame>) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Text(t) => t.as_str().to_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn what_is_put_back_goes_out_first_and_is_not_counted_twice() {
        let id = ConnId::from_u64(1);
        let out = outbox(2);
        out.push(Frame::text("a".into()), id).unwrap();
        out.push(Frame::text("b".into()), id).unwrap();
        let mut batch = VecDeque::new();
        assert!(matches!(out.take_batch(&mut batch), WriterStep::Write));
        // The socket took "a" only; "c" was queued meanwhile.
        batch.pop_front();
        out.push(Frame::text("c".into()), id).unwrap();
        out.put_back(batch);
        // "b" does not count against the bound, as while it was taken: "d" still fits.
        out.push(Frame::text("d".into()), id).unwrap();
        assert_eq!(out.push(Frame::text("e".into()), id), Err(SendError::Full));
        let mut batch = VecDeque::new();
        assert!(matches!(out.take_batch(&mut batch), WriterStep::Write));
        assert_eq!(texts(&batch), ["b", "c", "d"]);
        // Taken again, nothing is exempt any more.
        out.push(Frame::text("f".into()), id).unwrap();
        out.push(Frame::text("g".into()), id).unwrap();
        assert_eq!(out.push(Frame::text("h".into()), id), Err(SendError::Full));
    }

    #[test]
    fn a_cut_off_finishes_the_writer_and_a_graceful_close_does_not() {
        let out = outbox(8);
        assert!(out.cut_off().is_none());
        out.begin_close(Closing::with_code(ErrorCode::Kicked, "bye"));
        assert!(
            out.cut_off().is_none(),
            "a graceful close writes what is queued"
        );
        assert!(!out.is_finished());
        out.begin_close(Closing::lost("gone"));
        assert!(out.cut_off().is_some_and(|c| c.abort));
        assert!(out.is_finished());
    }
}
