//! The server: its state and its handle, [`Server`].
//!
//! `Server` and [`Conn`] are the two handles of one core (a server holds its
//! connections; a connection knows its server). What the server does is split by job:
//! [`builder`] builds it, [`send`] delivers (broadcast, rooms, direct, the relay's
//! fan-out), [`rooms`] keeps membership, [`lifecycle`] starts, beats and shuts down,
//! [`builtin`] holds the built-in message types. Serving over HTTP is [`crate::http`]'s.

mod builder;
mod builtin;
mod interests;
mod lifecycle;
mod ordered;
mod presence;
mod room_updates;
mod rooms;
mod send;
mod sessions;
mod unrecorded;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

pub(crate) use builder::Hooks;
pub use builder::ServerBuilder;
use builder::StateMap;
pub use presence::{MAX_MEMBERS, RoomHistory, RoomPresence, UserPresence};
pub(crate) use rooms::validate_room;
pub use send::Filter;
pub(crate) use sessions::ConnectedFrame;

use crate::auth::Auth;
use crate::backplane::Backplane;
use crate::connection::Conn;
use crate::delivery::{Sessions, Streams};
use crate::handler_table::{HandlerTable, Route};
use crate::id::IdGen;
use crate::registry::Registry;
use crate::slots::SlotTable;
use crate::ws;
use crate::{ConnId, ServerConfig};

/// Why a connection ended, as the disconnect hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectReason {
    /// The WebSocket close code (1006 when the connection dropped without one).
    pub code: u16,
    /// The close reason text.
    pub reason: String,
    /// True when the server closed it (kick, slow consumer, shutdown), false when the
    /// client closed it or the connection dropped.
    pub by_server: bool,
}

/// What a [`Server`] handle points to. Its fields are private to this module
/// and its children; the rest of the crate goes through `Server`'s methods.
pub(crate) struct ServerInner {
    /// What the node counts (`None` with `ServerConfig::metrics` off).
    metrics: Option<crate::metrics::Metrics>,
    /// HTTP routes served beside the WebSocket endpoint.
    http_routes: axum::Router,
    methods: crate::rpc::Methods,
    auth: Auth,
    config: ServerConfig,
    /// The message handlers by type.
    handlers: HandlerTable,
    state: StateMap,
    hooks: Hooks,
    backplane: Arc<dyn Backplane>,
    /// What clients may do; `None`: everything (no identity to look at).
    policy: Option<Arc<dyn crate::Policy>>,
    clustered: bool,
    /// The backplane numbers room and broadcast messages: they are delivered in its
    /// order, on every node alike (`ordered.rs`).
    sequenced: bool,
    /// Resumes waiting for this node to reach the positions their client saw on
    /// another node, and the wake-up the backplane's messages give them.
    order_waiters: AtomicUsize,
    order_advanced: tokio::sync::Notify,
    registry: Registry,
    ids: IdGen,
    tracker: TaskTracker,
    /// Cancelled when shutdown begins: stops accepting.
    stop_accepting: CancellationToken,
    started: AtomicBool,
    running: AtomicBool,
    shutting_down: AtomicBool,
    /// Live connections, counted at admission (before the registry insert).
    admitted: AtomicUsize,
    stopped: watch::Sender<bool>,
    started_at: Instant,
    local_addr: OnceLock<SocketAddr>,
    /// Connections still speaking plain HTTP, by address.
    http_slots: Arc<SlotTable>,
    /// Connections waiting to authenticate, by address.
    auth_slots: Arc<SlotTable>,
    /// Room and broadcast streams, and the history budget.
    streams: Streams,
    /// Sessions without a connection, waiting for a resume.
    sessions: Sessions,
    /// Sessions whose cluster record this node still owes: a claim of one resumed from
    /// its copy, a first write of one opened while the cluster was away.
    unrecorded: unrecorded::Unrecorded,
    /// The rooms inside their `room_update` interval.
    room_updates: room_updates::RoomUpdates,
}

/// A switchboard server: a cheap, cloneable handle.
///
/// Build one with [`Server::builder`], then [`serve`](Server::serve) it on a listener,
/// [`run`](Server::run) it on its configured address until Ctrl-C, or mount
/// [`router`](Server::router) in an axum app.
///
/// ```no_run
/// use switchboard_server::{Conn, Filter, Json, Server};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .on("chat", |server: Server, conn: Conn, Json(msg): Json<serde_json::Value>| async move {
///         // Everyone but the sender gets it; the sender gets {"sent": true}.
///         server.broadcast_with("chat", &msg, Filter::exclude([conn.id()])).ok();
///         Json(serde_json::json!({"sent": true}))
///     })
///     .build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// server.serve(listener).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<ServerInner>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.inner.config.name)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

/// A [`Server`] that does not keep it alive (what a connection and a backplane hold).
#[derive(Clone, Default)]
pub(crate) struct WeakServer(Weak<ServerInner>);

impl WeakServer {
    pub(crate) fn upgrade(&self) -> Option<Server> {
        self.0.upgrade().map(|inner| Server { inner })
    }
}

impl Server {
    /// A builder with default settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }
    /// Looks up a connection on this node.
    pub fn connection(&self, id: ConnId) -> Option<Conn> {
        self.inner.registry.get(id)
    }

    /// The ids of this node's connections.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.inner.registry.ids()
    }

    /// How many clients are connected to this node.
    pub fn connection_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// How many clients are connected across the cluster (this node's count on a single node).
    pub async fn cluster_connection_count(&self) -> usize {
        match self.inner.backplane.connection_count().await {
            Ok(Some(n)) => n,
            Ok(None) => self.connection_count(),
            Err(e) => {
                tracing::warn!(error = %e, "backplane count failed; reporting this node's");
                self.connection_count()
            }
        }
    }

    /// The members of `room` across the cluster (this node's on a single node).
    pub async fn cluster_room_members(&self, room: &str) -> Vec<ConnId> {
        match self.inner.backplane.room_members(room).await {
            Ok(Some(members)) => members,
            Ok(None) => self.room_members(room),
            Err(e) => {
                tracing::warn!(error = %e, "backplane room members failed; reporting this node's");
                self.room_members(room)
            }
        }
    }

    /// True between start and the end of shutdown.
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The address the server listens on, once serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr.get().copied()
    }

    /// How long since the server was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// The application state of type `T` registered with
    /// [`ServerBuilder::state`], for code outside handlers (hooks, tasks).
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.inner.state.get::<T>().cloned()
    }

    /// Every RPC method with its schemas, sorted by name (what `listall` returns).
    pub fn methods(&self) -> Vec<crate::MethodInfo> {
        self.inner.methods.list()
    }

    /// The message types that have handlers, sorted.
    pub fn message_types(&self) -> Vec<String> {
        self.inner.handlers.types()
    }
    /// A JSON health summary (served at `/health`).
    pub fn health(&self) -> serde_json::Value {
        json!({
            "status": if self.is_shutting_down() { "shutting_down" } else { "ok" },
            "name": self.inner.config.name,
            "connections": self.connection_count(),
            "rooms": self.inner.registry.room_names().len(),
            "uptime_secs": self.uptime().as_secs(),
            "history": {
                "bytes": self.inner.streams.budget().used(),
                "rooms": self.inner.streams.room_count(),
                "detached_sessions": self.inner.sessions.len(),
            },
            "backplane": {
                "name": self.inner.backplane.name(),
                "healthy": self.inner.backplane.is_healthy(),
            },
        })
    }

    /// Every room here with its member count, largest first (at most `limit`).
    pub(crate) fn room_sizes(&self, limit: usize) -> Vec<(String, usize)> {
        self.inner.registry.room_sizes(limit)
    }

    /// How many rooms have members here.
    pub(crate) fn room_count(&self) -> usize {
        self.inner.registry.room_count()
    }

    /// The backplane: its name, whether it is up, what it carried.
    pub(crate) fn backplane_state(&self) -> (&'static str, bool, crate::BackplaneStats) {
        let b = &self.inner.backplane;
        (b.name(), b.is_healthy(), b.stats())
    }

    /// The node's metrics, when counted.
    pub(crate) fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.inner.metrics.as_ref()
    }

    /// The node's metrics in Prometheus' text format (what `GET /metrics` serves), or
    /// `None` with [`ServerConfig::metrics`](crate::ServerConfig::metrics) off. For
    /// serving them on a router of your own:
    ///
    /// ```no_run
    /// use axum::routing::get;
    /// use switchboard_server::Server;
    ///
    /// let server = Server::builder().build();
    /// let metrics = server.clone();
    /// let admin: axum::Router = axum::Router::new()
    ///     .route("/internal/metrics", get(move || async move {
    ///         metrics.render_metrics().unwrap_or_default()
    ///     }));
    /// ```
    pub fn render_metrics(&self) -> Option<String> {
        let metrics = self.metrics()?;
        let registry = &self.inner.registry;
        Some(metrics.render(&crate::metrics::NodeState {
            connections: self.connection_count(),
            rooms: registry.room_count(),
            queued: registry.queued_frames(),
            history_bytes: self.inner.streams.budget().used(),
            detached: self.inner.sessions.len(),
            backplane_healthy: self.inner.backplane.is_healthy(),
            backplane: self.inner.backplane.stats(),
        }))
    }

    /// The Prometheus registry the node's metrics are in, for registering the
    /// application's own beside them (served by the same `GET /metrics`); `None` with
    /// [`ServerConfig::metrics`](crate::ServerConfig::metrics) off.
    ///
    /// ```
    /// use switchboard_server::{Server, prometheus};
    ///
    /// let server = Server::builder().build();
    /// let orders = prometheus::IntCounter::new("shop_orders_total", "Orders placed.").unwrap();
    /// server.metrics_registry().unwrap().register(Box::new(orders.clone())).unwrap();
    /// orders.inc();
    /// assert!(server.render_metrics().unwrap().contains("shop_orders_total 1"));
    /// ```
    pub fn metrics_registry(&self) -> Option<&prometheus::Registry> {
        self.metrics().map(crate::metrics::Metrics::registry)
    }

    /// How many members `room` has on this node.
    pub(crate) fn room_size(&self, room: &str) -> usize {
        self.inner.registry.room_size(room)
    }

    /// The bytes of history this node keeps, all streams together.
    pub(crate) fn history_budget(&self) -> &crate::delivery::stream::Budget {
        self.inner.streams.budget()
    }

    pub(crate) fn downgrade(&self) -> WeakServer {
        WeakServer(Arc::downgrade(&self.inner))
    }

    /// Counts a new connection against `max_connections`; false when the server is full.
    pub(crate) fn try_admit(&self) -> bool {
        let admitted = self.inner.admitted.fetch_add(1, Ordering::AcqRel) + 1;
        if admitted > self.inner.config.max_connections {
            self.release_admission();
            return false;
        }
        true
    }

    /// Gives back a connection's place (it was turned away or has gone).
    pub(crate) fn release_admission(&self) {
        self.inner.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.inner.ids.next()
    }

    /// Whether `conn` may do `action` ([`Policy`](crate::Policy)); the refusal says what
    /// was refused.
    pub(crate) fn permit(
        &self,
        conn: &crate::Conn,
        action: crate::Action<'_>,
    ) -> Result<(), crate::HandlerError> {
        let Some(policy) = &self.inner.policy else {
            return Ok(()); // the open policy: every action, for anyone
        };
        if conn.with_identity(|who| policy.allows(who, action)) {
            Ok(())
        } else {
            Err(crate::HandlerError::code_of(
                switchboard_proto::ErrorCode::Forbidden,
                action.describe(),
            ))
        }
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub(crate) fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    /// The handlers of a message type, highest priority first.
    pub(crate) fn handlers_of(&self, kind: &str) -> Option<&[Route]> {
        self.inner.handlers.get(kind)
    }

    /// The handlers of binary frames.
    pub(crate) fn binary_handlers(&self) -> &[Route] {
        &self.inner.handlers.binary
    }

    pub(crate) fn rpc_methods(&self) -> &crate::rpc::Methods {
        &self.inner.methods
    }

    /// The application's own HTTP routes.
    pub(crate) fn http_routes(&self) -> axum::Router {
        self.inner.http_routes.clone()
    }

    /// Cancelled when shutdown begins: the server accepts no more connections.
    pub(crate) fn accepting_stopped(&self) -> CancellationToken {
        self.inner.stop_accepting.clone()
    }

    pub(crate) fn set_local_addr(&self, addr: SocketAddr) {
        let _ = self.inner.local_addr.set(addr);
    }

    /// A token that shutdown waits for (a connection's task holds one).
    pub(crate) fn track(&self) -> TaskTrackerToken {
        self.inner.tracker.token()
    }

    /// Spawns a task that shutdown waits for (and aborts after the grace period).
    pub(crate) fn spawn_tracked<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(task);
    }

    /// The places of connections still speaking plain HTTP.
    pub(crate) fn http_slots(&self) -> Arc<SlotTable> {
        Arc::clone(&self.inner.http_slots)
    }

    /// The places of connections waiting to authenticate.
    pub(crate) fn auth_slots(&self) -> &Arc<SlotTable> {
        &self.inner.auth_slots
    }

    /// The socket settings of this server's connections.
    pub(crate) fn socket_settings(&self) -> ws::Settings {
        let config = &self.inner.config;
        ws::Settings {
            buffer_size: config.buffer_size,
            max_message_size: config.max_message_size,
            // Twice the message rate: room for a ping or a fragment beside each message.
            frames_per_sec: config.rate_limit.saturating_mul(2),
            frame_burst: config.rate_burst.saturating_mul(2),
        }
    }
}
