//! What a node needs from a backplane that routes by interest: the rooms and clients
//! it must receive messages for ([`Interests`]), and, for a resume of a session whose
//! rooms this node did not follow, the messages the backplane kept for them.

use switchboard_proto::StreamPositions;

use super::Server;
use crate::backplane::{Interests, StreamHistory, Target};
use crate::clock::now_ms;
use crate::delivery::Session;
use crate::locks::lock;
use crate::ws::Text;

impl Server {
    /// The rooms with members here or a stream kept here, and the clients connected
    /// here or whose session waits here.
    pub(crate) fn interests(&self) -> Interests {
        let mut rooms = self.inner.registry.room_names();
        rooms.extend(self.inner.streams.room_names());
        rooms.sort();
        rooms.dedup();
        let mut clients = self.inner.registry.ids();
        clients.extend(self.inner.sessions.all().iter().map(|s| s.client()));
        clients.sort();
        clients.dedup();
        Interests { rooms, clients }
    }

    /// For a resume: the streams the client gave positions in whose missed messages are
    /// not all here are filled from the backplane ([`Backplane::stream_history`]), so a
    /// node that did not follow a room still gives the client everything it missed.
    ///
    /// [`Backplane::stream_history`]: crate::Backplane::stream_history
    pub(crate) async fn fetch_missed(&self, session: &Session, seen: &StreamPositions) {
        if !self.inner.sequenced {
            return;
        }
        let rooms = self.streams_of(session);
        let wanted = rooms.into_iter().filter_map(|target| {
            let since = match &target {
                Target::Room(room) => seen.rooms.get(room),
                Target::All => seen.all.as_ref(),
                _ => None,
            }?;
            Some((target, since.clone()))
        });
        for (target, since) in wanted {
            let Some(stream) = self.stream_of(&target, now_ms()) else {
                continue;
            };
            if lock(&stream).can_recover(&since) {
                continue;
            }
            let kept = match self
                .inner
                .backplane
                .stream_history(&target, since.offset)
                .await
            {
                Ok(Some(kept)) => kept,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read a stream's history");
                    continue;
                }
            };
            let StreamHistory { position, messages } = kept;
            let Ok(epoch) = u64::from_str_radix(&position.epoch, 16) else {
                continue;
            };
            if position.epoch != since.epoch {
                continue; // the client hears `epoch_changed` from the stream as it is
            }
            let kept = messages
                .into_iter()
                .map(|m| {
                    let frame = switchboard_proto::stamp_offset(&m.frame, m.offset);
                    (m.offset, Text::from(frame), m.exclude.into_boxed_slice())
                })
                .collect();
            let budget = self.inner.streams.budget();
            let absorbed =
                lock(&stream).absorb(epoch, since.offset, position.offset, kept, now_ms(), budget);
            if !absorbed {
                tracing::debug!(?target, "the backplane's history of a stream has a gap");
            }
        }
    }
}
