//! [`NodeHandle`]: this node as its backplane sees it.

use std::fmt;

use super::{Delivery, Disconnect, Interests, Sequence};
use crate::ConnId;
use crate::server::WeakServer;

/// This node, as a backplane sees it: where deliveries from other nodes go.
#[derive(Clone)]
pub struct NodeHandle {
    server: WeakServer,
}

impl fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle").finish_non_exhaustive()
    }
}

impl NodeHandle {
    pub(crate) fn new(server: WeakServer) -> NodeHandle {
        NodeHandle { server }
    }

    /// Delivers a delivery that came from another node to this node's connections.
    /// Returns how many connections it reached (0 once the server is gone).
    pub fn deliver(&self, delivery: &Delivery) -> usize {
        match self.server.upgrade() {
            Some(server) => server.deliver_local(delivery),
            None => 0,
        }
    }

    /// Delivers a message a numbering backplane ([`Backplane::sequences`](super::Backplane::sequences)) numbered,
    /// from any node, this one included, in the order of its stream: the next offset is
    /// delivered, one already delivered is dropped, and a break in the order (another
    /// epoch, a gap) starts the stream again and tells its members here to resume.
    /// Returns how many connections it reached.
    pub fn deliver_sequenced(&self, delivery: &Delivery, sequence: &Sequence) -> usize {
        match self.server.upgrade() {
            Some(server) => server.deliver_sequenced(delivery, sequence),
            None => 0,
        }
    }

    /// Tells the node that the backplane lost messages it cannot give back (its link
    /// was away longer than the backplane keeps them, or its store was emptied): every
    /// stream here forgets its order and its clients are told to resume, so they hear
    /// `recovered: false` instead of missing messages silently.
    pub fn lost_messages(&self) {
        if let Some(server) = self.server.upgrade() {
            server.forget_stream_order();
        }
    }

    /// A session resumed on another node, in `generation`
    /// ([`PresenceEvent::SessionMoved`](super::PresenceEvent::SessionMoved)): this node lets an older copy go, and closes
    /// a connection still serving it (`SESSION_TAKEN`).
    pub fn session_moved(&self, client: ConnId, generation: u64) {
        if let Some(server) = self.server.upgrade() {
            server.let_session_go(client, generation);
        }
    }

    /// Disconnects what another node asked for ([`PresenceEvent::Disconnect`](super::PresenceEvent::Disconnect)) from
    /// this node's connections; returns how many.
    pub fn disconnect(&self, what: &Disconnect) -> usize {
        match self.server.upgrade() {
            Some(server) => server.disconnect_here(what),
            None => 0,
        }
    }

    /// The generation of the session of `client` as this node has it (its
    /// connection's, or one waiting here for a resume), or `None` if it has none. A
    /// backplane that keeps sessions writes a change of one only while the cluster's
    /// record is still in that generation, so a change written late (after an outage)
    /// never undoes a newer claim ([`ClaimedSession`](super::ClaimedSession)).
    pub fn session_generation(&self, client: ConnId) -> Option<u64> {
        let server = self.server.upgrade()?;
        server.session_generation(client)
    }

    /// What this node needs from the cluster now (see [`Interests`]).
    pub fn interests(&self) -> Interests {
        match self.server.upgrade() {
            Some(server) => server.interests(),
            None => Interests::default(),
        }
    }

    /// This node's members of `room` now.
    pub fn room_members(&self, room: &str) -> Vec<ConnId> {
        self.server
            .upgrade()
            .map(|s| s.room_members(room))
            .unwrap_or_default()
    }

    /// How many connections this node has now.
    pub fn connection_count(&self) -> usize {
        self.server.upgrade().map_or(0, |s| s.connection_count())
    }

    /// The server's name.
    pub fn server_name(&self) -> Option<String> {
        self.server.upgrade().map(|s| s.name().to_owned())
    }

    /// This node's connections now (for a backplane resynchronising after an outage).
    pub fn connections(&self) -> Vec<ConnId> {
        self.server
            .upgrade()
            .map(|s| s.connection_ids())
            .unwrap_or_default()
    }

    /// Who this node's identified clients are now: each one's id, user and token's
    /// `info`, as [`PresenceEvent::Identified`](super::PresenceEvent::Identified) announced them (for a backplane writing
    /// its state again after an outage).
    pub fn identities(&self) -> Vec<(ConnId, String, serde_json::Value)> {
        self.server
            .upgrade()
            .map(|s| s.identities_here())
            .unwrap_or_default()
    }

    /// This node's rooms and their members now.
    pub fn rooms(&self) -> Vec<(String, Vec<ConnId>)> {
        match self.server.upgrade() {
            Some(s) => s
                .rooms()
                .into_iter()
                .map(|room| {
                    let members = s.room_members(&room);
                    (room, members)
                })
                .collect(),
            None => Vec::new(),
        }
    }
}
