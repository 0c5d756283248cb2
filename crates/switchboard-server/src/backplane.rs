//! The `Backplane`: everything that leaves this node goes through it.
//!
//! A server delivers every send to its own connections first, then hands the same
//! [`Delivery`] to its backplane so other nodes deliver it to theirs. The default,
//! [`LocalBackplane`], is a single node: publishing does nothing and costs nothing.
//! Cluster backends (Redis, NATS) live in their own crates and implement this trait.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::handler::BoxFuture;
use crate::server::WeakServer;
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
/// ([`Backplane::sequences`]) numbered it: the stream's epoch (16 hex digits) and the
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

/// A session claimed in the cluster ([`Backplane::claim_session`]): its record and the
/// rooms it is in.
pub type ClaimedSession = (SessionRecord, Vec<String>);

/// A client stream's messages as a backplane keeps them
/// ([`Backplane::session_history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHistory {
    /// Where the stream stands: its epoch and the offset of its last message.
    pub position: switchboard_proto::Position,
    /// The messages kept after the offset asked for, oldest first: each one's offset
    /// and frame (without its offset).
    pub messages: Vec<(u64, String)>,
}

/// One message of a room's or the broadcasts' stream as a backplane keeps it
/// ([`Backplane::stream_history`]): its offset, its frame (without its offset), and
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
/// ([`Backplane::stream_history`]).
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
/// and the clients whose direct messages it must receive ([`NodeHandle::interests`]).
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

/// A backplane failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackplaneError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackplaneError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> BackplaneError {
        BackplaneError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and its cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BackplaneError {
        BackplaneError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

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

    /// Delivers a message a numbering backplane ([`Backplane::sequences`]) numbered,
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
    /// ([`PresenceEvent::SessionMoved`]): this node lets an older copy go, and closes
    /// a connection still serving it (`SESSION_TAKEN`).
    pub fn session_moved(&self, client: ConnId, generation: u64) {
        if let Some(server) = self.server.upgrade() {
            server.let_session_go(client, generation);
        }
    }

    /// Disconnects what another node asked for ([`PresenceEvent::Disconnect`]) from
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
    /// never undoes a newer claim ([`ClaimedSession`]).
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
    /// `info`, as [`PresenceEvent::Identified`] announced them (for a backplane writing
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

/// The link between the nodes of a cluster.
///
/// Implementations must not block in [`publish`](Backplane::publish) or
/// [`presence`](Backplane::presence): they run on the sending path. A backplane that
/// cannot keep up queues within a bound and drops (and reports) beyond it.
pub trait Backplane: Send + Sync + 'static {
    /// A short name for logs and `/health`: `local`, `redis`, ...
    fn name(&self) -> &'static str;

    /// Starts the backplane. Deliveries from other nodes go to `node`.
    fn start(&self, node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>>;

    /// Sends a delivery to the other nodes (this node has already delivered it locally),
    /// or, for a numbering backplane ([`sequences`](Backplane::sequences)) and a room or
    /// broadcast target, to every node, this one included, through
    /// [`NodeHandle::deliver_sequenced`].
    fn publish(&self, delivery: &Delivery);

    /// Whether this backplane numbers room and broadcast messages itself: one order
    /// and one offset per message for the whole cluster, so a client may resume on any
    /// node, and a node that lost its link catches up. When true, the server does not
    /// deliver room and broadcast messages locally first: every node, the sender's
    /// included, delivers them in the backplane's order. Default false.
    fn sequences(&self) -> bool {
        false
    }

    /// Where a stream (a `Target::Room` or `Target::All`) stands in the cluster now
    /// (its epoch and the offset of its last message), made if new, for a node that
    /// must give a position before it has seen a message of it (a join). Only asked of
    /// a backplane that [`sequences`](Backplane::sequences); `None` by default.
    fn stream_position(
        &self,
        _stream: &Target,
    ) -> BoxFuture<'_, Result<Option<switchboard_proto::Position>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Tells the other nodes about presence changes.
    fn presence(&self, event: &PresenceEvent);

    /// Keeps a new session of this node, so its client may resume on any node.
    /// Awaited before the client hears its token. When it fails or takes too long, the
    /// server asks again later, while the session's connection lasts: a record that
    /// exists already (the first try was written after all, and perhaps claimed since)
    /// must be left as it is. Does nothing by default.
    fn open_session(&self, _record: &SessionRecord) -> BoxFuture<'_, Result<(), BackplaneError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Claims for this node the session the cluster keeps for `client`
    /// ([`open_session`](Backplane::open_session)), if the `resume`'s session id and
    /// token are its own and its `attempt` (when counted) is above every one claimed
    /// before ([`ResumeRequest::attempt`](switchboard_proto::ResumeRequest::attempt)):
    /// its generation goes up by one, atomically, so the notice that it moved reaches
    /// every older copy and no newer one. Returns the record (with the new generation)
    /// and the rooms it is in; `None` when there is no such session (or the token is
    /// wrong, or the attempt is one the client gave up on), and by default (no cluster
    /// view).
    fn claim_session(
        &self,
        _client: ConnId,
        _resume: &switchboard_proto::ResumeRequest,
    ) -> BoxFuture<'_, Result<Option<ClaimedSession>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Resolves once the changes to `client`'s session this node has given the
    /// backplane so far (its joins and leaves, by [`presence`](Backplane::presence))
    /// are written where a resume on another node reads them: `true`. `false` at once
    /// when they cannot be (the backplane's queue is full, or it refused a write). A
    /// join or leave is answered only then (within a bound), so no resume can restore
    /// the session as it was before an answered change; when the answer comes first,
    /// it says so (`durable: false`), and the client makes the change again after its
    /// next resume. Never resolving is fine (the server bounds the wait). `true` at
    /// once by default (no sessions kept).
    fn session_changes_written(&self, _client: ConnId) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }

    /// The user (and `info`) each of these clients authenticated as, in order (`None`
    /// for one that did not, or is unknown), for presence by user across the cluster.
    /// `None` by default (no cluster view).
    fn identities(
        &self,
        _clients: &[ConnId],
    ) -> BoxFuture<'_, Result<Option<Vec<Option<UserTag>>>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The direct messages of a client's stream after `since`, numbered, as the
    /// backplane keeps them, with where the stream stands: for a session resumed on
    /// another node than its own. `None` by default.
    fn session_history(
        &self,
        _client: ConnId,
        _since: u64,
    ) -> BoxFuture<'_, Result<Option<SessionHistory>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The messages of a room's or the broadcasts' stream after `since`, as the
    /// backplane keeps them, with where the stream stands: for a resume on a node that
    /// did not receive that stream's messages (a backplane that routes by interest sends
    /// a node only the rooms it has members in). A backplane that answers also starts
    /// sending this node the stream's new messages. `None` by default (every node
    /// receives every stream).
    fn stream_history(
        &self,
        _stream: &Target,
        _since: u64,
    ) -> BoxFuture<'_, Result<Option<StreamHistory>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Connections across the cluster; `None` when this backplane has no cluster view
    /// (the server then reports its own count).
    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, BackplaneError>>;

    /// A room's members across the cluster; `None` when there is no cluster view.
    fn room_members(
        &self,
        room: &str,
    ) -> BoxFuture<'_, Result<Option<Vec<ConnId>>, BackplaneError>>;

    /// Whether the backplane is currently connected (for `/health`).
    fn is_healthy(&self) -> bool {
        true
    }

    /// What the backplane has carried since the node started, for the metrics
    /// (`switchboard_backplane_*`). All zero by default.
    fn stats(&self) -> BackplaneStats {
        BackplaneStats::default()
    }

    /// Stops the backplane; called once, last, during shutdown.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// The single-node backplane: nothing leaves the process. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalBackplane;

/// What a backplane has carried since its node started ([`Backplane::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Messages this node handed to the backplane.
    pub published: u64,
    /// Messages this node read from the backplane.
    pub received: u64,
    /// Messages the backplane refused for good or dropped.
    pub dropped: u64,
    /// Messages waiting to be written (the node's lag behind the backplane).
    pub queued: u64,
}

impl BackplaneStats {
    /// Stats with these counts.
    ///
    /// ```
    /// let s = switchboard_server::BackplaneStats::new(10, 9, 0, 1);
    /// assert_eq!((s.published, s.queued), (10, 1));
    /// ```
    pub fn new(published: u64, received: u64, dropped: u64, queued: u64) -> BackplaneStats {
        BackplaneStats {
            published,
            received,
            dropped,
            queued,
        }
    }
}

impl Backplane for LocalBackplane {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, _node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(&self, _delivery: &Delivery) {}

    fn presence(&self, _event: &PresenceEvent) {}

    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn room_members(
        &self,
        _room: &str,
    ) -> BoxFuture<'_, Result<Option<Vec<ConnId>>, BackplaneError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_serialize_compactly_for_other_nodes() {
        let d = Delivery {
            target: Target::Room("general".into()),
            exclude: vec![ConnId::from_u64(1)],
            frame: r#"{"type":"chat","payload":{}}"#.into(),
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(
            text,
            r#"{"target":{"kind":"room","value":"general"},"exclude":["0000000000000001"],"frame":"{\"type\":\"chat\",\"payload\":{}}"}"#
        );
        assert_eq!(serde_json::from_str::<Delivery>(&text).unwrap(), d);
    }
}
