//! Delivery in a numbering backplane's order ([`Backplane::sequences`]): room and
//! broadcast messages come back from the backplane with the cluster's epoch and
//! offset, and every node, the sender's included, delivers them alike. A message
//! already delivered is dropped; a break in the order (another epoch, a gap) starts the
//! stream again and sends its members here to resume, so they hear `recovered: false`
//! rather than miss messages silently. A node that must give a position before it has
//! seen a stream's messages (a join) asks the backplane where the stream stands.
//!
//! [`Backplane::sequences`]: crate::Backplane::sequences

use switchboard_proto::{ErrorCode, stamp_offset};

use super::Server;
use crate::ConnId;
use crate::backplane::{Delivery, Sequence, Target};
use crate::clock::now_ms;
use crate::connection::Conn;
use crate::delivery::Stream;
use crate::delivery::stream::Accept;
use crate::delivery::streams::SharedStream;
use crate::locks::lock;
use crate::ws::Frame;

/// Why members are sent to resume when their stream's order broke.
const ORDER_LOST: &str = "this node lost the order of a stream you follow: resume";

impl Server {
    /// Delivers a message the backplane numbered (see the module's documentation).
    pub(crate) fn deliver_sequenced(&self, delivery: &Delivery, sequence: &Sequence) -> usize {
        let epoch = match u64::from_str_radix(&sequence.epoch, 16) {
            Ok(epoch) if sequence.offset > 0 => epoch,
            _ => {
                tracing::warn!(epoch = %sequence.epoch, offset = sequence.offset,
                    "ignoring a numbered message with a malformed position");
                return 0;
            }
        };
        let (target, exclude, text) = (&delivery.target, &delivery.exclude, &delivery.frame);
        let now = now_ms();
        let Some(stream) = self.stream_of(target, now) else {
            if let Target::Conns(_) = target {
                return self.deliver_local(delivery);
            }
            // The room keeps no history here: stamped, not kept.
            let frame = Frame::text(stamp_offset(text, sequence.offset));
            return self.deliver_frame(target, exclude, &frame);
        };
        let mut stream = lock(&stream);
        let offset = sequence.offset;
        match stream.accept(epoch, offset) {
            Accept::Duplicate => return 0,
            Accept::Next => {}
            Accept::Reset { members_told } => {
                stream.reset(epoch, offset - 1, self.inner.streams.budget());
                if members_told {
                    // Their positions are in the old order: they resume (and hear
                    // `recovered: false`); the message waits in the history.
                    self.for_each_follower(target, |c| c.close(ErrorCode::StreamReset, ORDER_LOST));
                    stream.advance_to(offset);
                    self.keep_only(&mut stream, offset, exclude, text, now);
                    return 0;
                }
            }
        }
        stream.advance_to(offset);
        self.deliver_at(&mut stream, offset, target, exclude, text, now)
    }

    /// The backplane lost messages it cannot give back: every stream here forgets its
    /// order (sessions' included) and every client is sent to resume.
    pub(crate) fn forget_stream_order(&self) {
        let now = now_ms();
        let budget = self.inner.streams.budget();
        for stream in self.inner.streams.every() {
            lock(&stream).desync(budget);
        }
        let history = &self.inner.config.history;
        for session in self.inner.sessions.all() {
            session.forget_order(budget, history, now);
        }
        self.inner.registry.for_each(|c| {
            c.session().forget_order(budget, history, now);
            c.close(ErrorCode::StreamReset, ORDER_LOST);
        });
        tracing::warn!("the backplane lost messages: every client here resumes");
    }

    /// Learns from the backplane where the streams of `targets` stand, for those this
    /// node has not heard from yet, so that the positions it gives (a join's, a
    /// resume's) are the cluster's. Nothing to do unless the backplane numbers.
    pub(crate) async fn learn_positions(&self, targets: impl IntoIterator<Item = Target>) {
        if !self.inner.sequenced {
            return;
        }
        for target in targets {
            let Some(stream) = self.stream_of(&target, now_ms()) else {
                continue;
            };
            if lock(&stream).is_synced() {
                continue;
            }
            match self.inner.backplane.stream_position(&target).await {
                Ok(Some(position)) => {
                    let Ok(epoch) = u64::from_str_radix(&position.epoch, 16) else {
                        continue;
                    };
                    let mut stream = lock(&stream);
                    // A numbered message may have come meanwhile: it is newer.
                    if !stream.is_synced() {
                        stream.reset(epoch, position.offset, self.inner.streams.budget());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot learn a stream's position; it starts locally")
                }
            }
        }
    }

    /// How many of this node's connections a room or broadcast send is for (what a
    /// send returns when the backplane delivers it).
    pub(super) fn local_recipients(&self, target: &Target, exclude: &[ConnId]) -> usize {
        let mut n = 0;
        self.for_each_follower(target, |c| {
            if !exclude.contains(&c.id()) {
                n += 1;
            }
        });
        n
    }

    /// The stream of a room or of the broadcasts (`None`: no history, or a direct
    /// target).
    fn stream_of(&self, target: &Target, now: u64) -> Option<SharedStream> {
        match target {
            Target::Room(room) => self.inner.streams.room(room, &self.inner.config, now),
            Target::All => self.inner.streams.all().cloned(),
            Target::Conns(_) => None,
        }
    }

    fn for_each_follower(&self, target: &Target, f: impl FnMut(&Conn)) {
        match target {
            Target::Room(room) => self.inner.registry.for_each_in_room(room, f),
            Target::All => self.inner.registry.for_each(f),
            Target::Conns(_) => {}
        }
    }

    /// Keeps a message in a stream's history without delivering it.
    fn keep_only(
        &self,
        stream: &mut Stream,
        offset: u64,
        exclude: &[ConnId],
        text: &str,
        now: u64,
    ) {
        let frame = crate::ws::Text::from(stamp_offset(text, offset));
        stream.keep(offset, frame, exclude, now, self.inner.streams.budget());
    }
}
