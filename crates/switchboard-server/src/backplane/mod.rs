//! The `Backplane`: everything that leaves this node goes through it.
//!
//! A server delivers every send to its own connections first, then hands the same
//! [`Delivery`] to its backplane so other nodes deliver it to theirs. The default,
//! [`LocalBackplane`], is a single node: publishing does nothing and costs nothing.
//! Cluster backends (Redis, NATS) live in their own crates and implement this trait.
//!
//! The data that crosses nodes is in `types.rs`, this node as a backplane sees it
//! ([`NodeHandle`]) in `node.rs`.

mod node;
mod types;

use crate::ConnId;
use crate::handler::BoxFuture;

pub use node::NodeHandle;
pub use types::{
    ClaimedSession, Delivery, Disconnect, Interests, KeptMessage, PresenceEvent, Sequence,
    SessionHistory, SessionRecord, StreamHistory, Target, UserTag,
};

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
