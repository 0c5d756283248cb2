//! What a node needs from a backplane that routes by interest: the rooms and clients
//! it must receive messages for ([`Interests`]), and, for a resume of a session whose
//! rooms this node did not follow, the messages the backplane kept for them.

use std::future::Future;
use std::time::Duration;

use switchboard_proto::StreamPositions;

use super::Server;
use crate::backplane::{BackplaneError, Interests, StreamHistory, Target};
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
            let backplane = &self.inner.backplane;
            let kept = match patiently(|| backplane.stream_history(&target, since.offset)).await {
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

/// Waits between tries of a history read (or of a claim, for a session with no copy
/// here): a resume that lands on a node while its link to the backplane is coming back
/// (a dropped connection being remade) gets the history a moment later instead of being
/// told its messages are lost. 775 ms in all at most.
const RETRY_WAITS: [Duration; 5] = [
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
];

/// `read`, tried again after each of [`RETRY_WAITS`] while it fails.
pub(super) async fn patiently<T, F, Fut>(mut read: F) -> Result<T, BackplaneError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackplaneError>>,
{
    for wait in RETRY_WAITS {
        match read().await {
            Ok(v) => return Ok(v),
            Err(e) => tracing::debug!(error = %e, "a history read failed; trying again"),
        }
        tokio::time::sleep(wait).await;
    }
    read().await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn a_history_read_failing_while_the_link_comes_back_is_tried_again() {
        // Found by the Redis chaos test: a client resumed on a node whose link to Redis
        // had just been cut; the one read failed and the room was reported lost.
        let tries = Cell::new(0);
        let read = || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                if n < 3 {
                    Err(BackplaneError::new("link down"))
                } else {
                    Ok(n)
                }
            }
        };
        assert_eq!(patiently(read).await.ok(), Some(3));
        // A backplane that stays down: an error after every wait, no endless loop.
        let tries = Cell::new(0);
        let down = || {
            tries.set(tries.get() + 1);
            async { Err::<(), _>(BackplaneError::new("down")) }
        };
        assert!(patiently(down).await.is_err());
        assert_eq!(tries.get(), RETRY_WAITS.len() + 1);
    }
}
