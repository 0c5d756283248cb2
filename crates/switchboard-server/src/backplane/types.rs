//! What crosses nodes, and what a backplane keeps: deliveries, their numbering, session
//! records, histories, interests and presence events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConnId, Identity};

/// Who a delivery is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Target {
    /// Every connection.
    All,
    /// Only these connections.
    Conns(Vec<ConnId>),
    /// The members of a room.
    Room(String),
    /// Every connection of an authenticated user (by identity id), on every node.
    User(String),
}

/// One send, as it crosses nodes: the target, who to leave out, and the frame already
/// encoded (encoded once by the sending node, whatever the number of recipients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Who it is for.
    pub target: Target,
    /// Connections to leave out (the sender, usually).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<ConnId>,
    /// The encoded JSON text frame.
    pub frame: String,
}

/// Where a message stands in its stream, as a backplane that numbers messages
/// ([`Backplane::sequences`](super::Backplane::sequences)) numbered it: the stream's epoch (16 hex digits) and the
/// message's offset in it (+1 per message, from 1).
///
/// ```
/// use switchboard_server::Sequence;
/// // The 42nd message of a stream in epoch 9f2c...
/// let s = Sequence { epoch: "9f2c0000deadbeef".into(), offset: 42 };
/// assert_eq!(s.offset, 42);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// The stream's epoch: it changes when the backplane lost the stream's history.
    pub epoch: String,
    /// The message's offset.
    pub offset: u64,
}

/// What the cluster keeps of a session so that its client may resume on any node.
///
/// ```
/// use std::time::Duration;
/// use switchboard_server::{ConnId, SessionRecord};
/// let record = SessionRecord {
///     client: ConnId::from_u64(7),
///     session_id: "0000000000000007.5eed".into(),
///     token: "secret".into(),
///     epoch: String::new(), // history off
///     identity: None,
///     ttl: Duration::from_secs(120),
///     generation: 1,
/// };
/// assert_eq!(record.client.to_string(), "0000000000000007");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client id the session keeps.
    pub client: ConnId,
    /// The session id `connected` gave.
    pub session_id: String,
    /// The resume token `connected` gave (a secret: whoever has it may resume).
    pub token: String,
    /// The epoch of the session's stream (its direct messages); empty when history
    /// is off.
    pub epoch: String,
    /// Who authenticated, if anyone did.
    pub identity: Option<Identity>,
    /// How long the session waits for a resume once its connection drops.
    pub ttl: Duration,
    /// +1 each time the session is resumed on another node: a notice that it moved
    /// ([`PresenceEvent::SessionMoved`]) concerns only older copies.
    pub generation: u64,
}

/// Who a client authenticated as, for presence: the user's id and its token's `info`.
pub type UserTag = (String, serde_json::Value);

/// A session claimed in the cluster ([`Backplane::claim_session`](super::Backplane::claim_session)): its record and the
/// rooms it is in.
pub type ClaimedSession = (SessionRecord, Vec<String>);

/// A client stream's messages as a backplane keeps them
/// ([`Backplane::session_history`](super::Backplane::session_history)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHistory {
    /// Where the stream stands: its epoch and the offset of its last message.
    pub position: switchboard_proto::Position,
    /// The messages kept after the offset asked for, oldest first: each one's offset
    /// and frame (without its offset).
    pub messages: Vec<(u64, String)>,
}

/// One message of a room's or the broadcasts' stream as a backplane keeps it
/// ([`Backplane::stream_history`](super::Backplane::stream_history)): its offset, its frame (without its offset), and
/// who it was not for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMessage {
    /// The message's offset in its stream.
    pub offset: u64,
    /// The encoded frame, as it was published (no `offset` yet).
    pub frame: String,
    /// The connections it was not for (its sender, usually).
    pub exclude: Vec<ConnId>,
}

/// A room's or the broadcasts' messages as a backplane keeps them, after an offset
/// ([`Backplane::stream_history`](super::Backplane::stream_history)).
///
/// ```
/// use switchboard_server::{KeptMessage, StreamHistory, proto::Position};
/// let h = StreamHistory {
///     position: Position::new("00000000000000aa", 2),
///     messages: vec![KeptMessage { offset: 2, frame: r#"{"type":"chat"}"#.into(), exclude: vec![] }],
/// };
/// assert_eq!(h.messages[0].offset, h.position.offset);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHistory {
    /// Where the stream stands: its epoch and the offset of its last message.
    pub position: switchboard_proto::Position,
    /// The messages kept after the offset asked for, oldest first.
    pub messages: Vec<KeptMessage>,
}

/// What a node needs from the cluster now: the rooms whose messages it must receive
/// and the clients whose direct messages it must receive ([`NodeHandle::interests`](super::NodeHandle::interests)).
/// A backplane that routes by interest subscribes to these and to nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interests {
    /// Rooms with a member here, or whose stream this node keeps for clients that may
    /// come back (sorted).
    pub rooms: Vec<String>,
    /// Clients connected here, or whose session waits here for a resume (sorted).
    pub clients: Vec<ConnId>,
}

/// A change of presence other nodes may want to know about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PresenceEvent {
    /// A connection opened on this node.
    Connected(ConnId),
    /// A connection closed on this node.
    Disconnected(ConnId),
    /// A connection joined a room.
    Joined(ConnId, String),
    /// A connection left a room (it asked to, or the server took it out): its session
    /// is no longer in the room either.
    Left(ConnId, String),
    /// A closing connection was taken out of a room: the node's membership changes,
    /// its session's rooms do not. The [`SessionDetached`](Self::SessionDetached) (or
    /// [`SessionEnded`](Self::SessionEnded)) that follows says what becomes of the
    /// session. A backplane that treated this as [`Left`](Self::Left) would let a
    /// resume on another node, between the two, find the session in no room.
    LeftOnClose(ConnId, String),
    /// A session's connection dropped; the session waits `ttl` for a resume, in these
    /// rooms.
    SessionDetached {
        /// The session's client id.
        client: ConnId,
        /// How long it waits.
        ttl: Duration,
        /// The rooms it was in (its connection has left them).
        rooms: Vec<String>,
    },
    /// A session ended for good (the client said goodbye, or was kicked).
    SessionEnded(ConnId),
    /// A session was resumed here, in this generation: the other nodes let their
    /// (older) copies go.
    SessionMoved(ConnId, u64),
    /// Disconnect these, on every node ([`Server::disconnect_user`](crate::Server::disconnect_user)).
    Disconnect(Disconnect),
    /// A connection authenticated (or refreshed its token) as this user, with the
    /// token's `info`, for presence by user on other nodes.
    Identified(ConnId, String, serde_json::Value),
}

/// Who a cluster-wide disconnect is for, and why ([`PresenceEvent::Disconnect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// Every connection of this user.
    User(String, String),
    /// This client.
    Client(ConnId, String),
}
