//! The server: builder, handle, sends, rooms, serving and shutdown.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use switchboard_proto::{ErrorCode, MAX_ID_LEN, Parts, Payload, close_reason, encode_parts, types};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Authenticator};
use crate::backplane::{Backplane, Delivery, LocalBackplane, NodeHandle, PresenceEvent, Target};
use crate::conn::{Closing, Conn, Frame};
use crate::handler::{BoxFuture, Erased, Handler};
use crate::id::IdGen;
use crate::registry::Registry;
use crate::router::{Route, Router};
use crate::util::lock;
use crate::{ConnId, SendError, ServeError, ServerConfig, system};

type ServerHook = Arc<dyn Fn(Server) -> BoxFuture<'static, ()> + Send + Sync>;
type ConnHook = Arc<dyn Fn(Conn) -> BoxFuture<'static, ()> + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(Conn, DisconnectReason) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) startup: Vec<ServerHook>,
    pub(crate) shutdown: Vec<ServerHook>,
    pub(crate) connect: Vec<ConnHook>,
    pub(crate) disconnect: Vec<DisconnectHook>,
}

/// Application state by type.
#[derive(Default)]
pub(crate) struct StateMap(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl StateMap {
    pub(crate) fn get<T: 'static>(&self) -> Option<&T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref())
    }
}

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

/// Which connections a broadcast reaches: all of them, or only `include`, less `exclude`.
///
/// ```
/// use switchboard_server::{ConnId, Filter};
/// let (a, b) = (ConnId::from_u64(1), ConnId::from_u64(2));
/// let everyone_but_a = Filter::exclude([a]);
/// let only_b = Filter::include([a, b]).and_exclude([a]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    include: Option<Vec<ConnId>>,
    exclude: Vec<ConnId>,
}

impl Filter {
    /// Everyone.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Only these connections.
    pub fn include(ids: impl IntoIterator<Item = ConnId>) -> Filter {
        Filter {
            include: Some(ids.into_iter().collect()),
            exclude: Vec::new(),
        }
    }

    /// Everyone but these connections.
    pub fn exclude(ids: impl IntoIterator<Item = ConnId>) -> Filter {
        Filter {
            include: None,
            exclude: ids.into_iter().collect(),
        }
    }

    /// Also leaves out these connections.
    pub fn and_exclude(mut self, ids: impl IntoIterator<Item = ConnId>) -> Filter {
        self.exclude.extend(ids);
        self
    }
}

pub(crate) struct ServerInner {
    pub(crate) routes: axum::Router,
    pub(crate) methods: crate::rpc::Methods,
    pub(crate) auth: Auth,
    pub(crate) config: ServerConfig,
    pub(crate) router: Router,
    pub(crate) state: StateMap,
    pub(crate) hooks: Hooks,
    pub(crate) backplane: Arc<dyn Backplane>,
    clustered: bool,
    pub(crate) registry: Registry,
    pub(crate) ids: IdGen,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when shutdown begins: stops accepting.
    pub(crate) stop_accepting: CancellationToken,
    started: AtomicBool,
    running: AtomicBool,
    shutting_down: AtomicBool,
    /// Live connections, counted at admission (before the registry insert).
    pub(crate) admitted: AtomicUsize,
    stopped: watch::Sender<bool>,
    started_at: Instant,
    pub(crate) local_addr: OnceLock<SocketAddr>,
}

impl ServerInner {
    /// Delivers an encoded frame to this node's connections.
    pub(crate) fn deliver_local(&self, delivery: &Delivery) -> usize {
        let frame = Frame::text(delivery.frame.clone());
        self.deliver_frame(&delivery.target, &delivery.exclude, &frame)
    }

    fn deliver_frame(&self, target: &Target, exclude: &[ConnId], frame: &Frame) -> usize {
        let big: Option<HashSet<ConnId>> =
            (exclude.len() > 8).then(|| exclude.iter().copied().collect());
        let excluded = |id: ConnId| match &big {
            Some(set) => set.contains(&id),
            None => exclude.contains(&id),
        };
        let mut n = 0;
        let mut push = |c: &Conn| {
            if !excluded(c.id()) && c.push(frame.clone()).is_ok() {
                n += 1;
            }
        };
        match target {
            Target::All => self.registry.for_each(&mut push),
            Target::Room(room) => self.registry.for_each_in_room(room, &mut push),
            // A direct message (one id, the common case) needs no de-duplication.
            Target::Conns(ids) if ids.len() == 1 => {
                if let Some(c) = self.registry.get(ids[0]) {
                    push(&c);
                }
            }
            Target::Conns(ids) => {
                let unique: HashSet<ConnId> = ids.iter().copied().collect();
                for id in unique {
                    if let Some(c) = self.registry.get(id) {
                        push(&c);
                    }
                }
            }
        }
        n
    }

    /// Delivers locally, then to the other nodes. Encodes nothing more: `text` is the frame.
    pub(crate) fn send_delivery(
        &self,
        target: Target,
        exclude: Vec<ConnId>,
        text: String,
    ) -> usize {
        let frame = Frame::text(text);
        let n = self.deliver_frame(&target, &exclude, &frame);
        if self.clustered {
            let Frame::Text(t) = &frame else { return n };
            self.backplane.publish(&Delivery {
                target,
                exclude,
                frame: t.as_str().to_owned(),
            });
        }
        n
    }
}

/// Builds a [`Server`]: handlers, hooks, state, configuration, backplane.
///
/// ```
/// use switchboard_server::{Conn, Json, Server, ServerConfig};
///
/// #[derive(serde::Deserialize)]
/// struct Chat { message: String }
///
/// let server = Server::builder()
///     .config(ServerConfig { name: "ChatServer".into(), ..ServerConfig::default() })
///     .on("chat", |conn: Conn, Json(chat): Json<Chat>| async move {
///         Json(serde_json::json!({"sent": true, "from": conn.id(), "len": chat.message.len()}))
///     })
///     .on_connect(|conn: Conn| async move { tracing::info!(id = %conn.id(), "connected") })
///     .build();
/// ```
pub struct ServerBuilder {
    routes: axum::Router,
    config: ServerConfig,
    router: Router,
    state: StateMap,
    hooks: Hooks,
    backplane: Arc<dyn Backplane>,
    authenticator: Option<Arc<dyn Authenticator>>,
    methods: crate::rpc::Methods,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("types", &self.router.types())
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new(ServerConfig::default())
    }
}

impl ServerBuilder {
    /// A builder with these settings and the built-in handlers (`ping`, `join_room`,
    /// `leave_room`, `subscribe`, `unsubscribe`).
    pub fn new(config: ServerConfig) -> ServerBuilder {
        let builder = ServerBuilder {
            routes: axum::Router::new(),
            config,
            router: Router::default(),
            state: StateMap::default(),
            hooks: Hooks::default(),
            backplane: Arc::new(LocalBackplane),
            authenticator: None,
            methods: crate::rpc::Methods::default(),
        };
        system::register(builder)
    }

    /// Replaces the settings.
    pub fn config(mut self, config: ServerConfig) -> ServerBuilder {
        self.config = config;
        self
    }

    /// The settings so far, to adjust in place.
    pub fn config_mut(&mut self) -> &mut ServerConfig {
        &mut self.config
    }

    /// Adds a handler for messages of type `kind`, at priority 0.
    ///
    /// Several handlers may take one type: they run one after the other, higher priority
    /// first, then in the order they were added. The first value one returns is the
    /// reply; an error stops the chain and is sent back.
    pub fn on<H, A>(self, kind: &str, handler: H) -> ServerBuilder
    where
        H: Handler<A>,
        A: 'static,
    {
        self.on_with_priority(kind, 0, handler)
    }

    /// Adds a handler with a priority (higher runs first).
    ///
    /// ```
    /// # use switchboard_server::{Conn, Server, HandlerError};
    /// let server = Server::builder()
    ///     .on_with_priority("event", 10, |conn: Conn| async move { /* runs first */ })
    ///     .on_with_priority("event", 1, || async { /* runs after */ })
    ///     .build();
    /// ```
    pub fn on_with_priority<H, A>(mut self, kind: &str, priority: i32, handler: H) -> ServerBuilder
    where
        H: Handler<A>,
        A: 'static,
    {
        self.router.add(
            kind,
            Route {
                priority,
                handler: Arc::new(Erased::new(handler)),
            },
        );
        self
    }

    /// Adds a handler for binary frames (take the data with the
    /// [`Binary`](crate::Binary) extractor). Without one, binary frames are answered
    /// with `UNSUPPORTED_FRAME`.
    pub fn on_binary<H, A>(mut self, handler: H) -> ServerBuilder
    where
        H: Handler<A>,
        A: 'static,
    {
        self.router.add_binary(Route {
            priority: 0,
            handler: Arc::new(Erased::new(handler)),
        });
        self
    }

    /// Registers application state for the [`State`](crate::State) extractor.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> ServerBuilder {
        self.state.0.insert(TypeId::of::<T>(), Box::new(state));
        self
    }

    /// Runs when the server starts listening.
    pub fn on_startup<F, Fut>(mut self, hook: F) -> ServerBuilder
    where
        F: Fn(Server) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .startup
            .push(Arc::new(move |s| Box::pin(hook(s))));
        self
    }

    /// Runs when shutdown begins, after the server stops accepting and before clients are
    /// closed, so a hook can still tell them goodbye.
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> ServerBuilder
    where
        F: Fn(Server) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .shutdown
            .push(Arc::new(move |s| Box::pin(hook(s))));
        self
    }

    /// Runs for each new connection, after `connected` is queued and before its first
    /// message is read.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> ServerBuilder
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .connect
            .push(Arc::new(move |c| Box::pin(hook(c))));
        self
    }

    /// Runs when a connection has ended, after it left the registry and its rooms
    /// (`conn.rooms()` still lists the rooms it was in).
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> ServerBuilder
    where
        F: Fn(Conn, DisconnectReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .disconnect
            .push(Arc::new(move |c, r| Box::pin(hook(c, r))));
        self
    }

    /// Adds HTTP routes served beside the WebSocket endpoint (a page, an API), so they
    /// share the server's listener and graceful shutdown.
    ///
    /// ```
    /// use axum::routing::get;
    /// let server = switchboard_server::Server::builder()
    ///     .routes(axum::Router::new().route("/", get(|| async { "hello" })))
    ///     .build();
    /// ```
    pub fn routes(mut self, routes: axum::Router) -> ServerBuilder {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Checks every client's credentials with `authenticator` (a token check, a user
    /// database). Clients must then authenticate with their first message (unless
    /// [`auth_required`](ServerConfig::auth_required) is off); the identity it returns is
    /// what handlers see in [`Conn::identity`]. With a
    /// [`password`](ServerConfig::password) configured too, both must pass.
    ///
    /// ```
    /// use switchboard_server::{AuthRejected, Credentials, Identity, Server};
    ///
    /// let server = Server::builder()
    ///     .authenticator(|creds: Credentials| async move {
    ///         let token = creds.token().ok_or_else(|| AuthRejected::new("a token is required"))?;
    ///         match token.strip_prefix("user:") {
    ///             Some(user) => Ok(Identity::new(user)),
    ///             None => Err(AuthRejected::new("invalid token")),
    ///         }
    ///     })
    ///     .build();
    /// ```
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> ServerBuilder {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Adds an RPC method: `handler` takes the parameters (any `Deserialize + JsonSchema`
    /// type, validated against its schema before the call) and any extractors, and
    /// returns the result (or `Result<T, E>`). See [`rpc`](crate::rpc).
    ///
    /// ```
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Add { a: i64, b: i64 }
    ///
    /// let server = switchboard_server::Server::builder()
    ///     .rpc("add", |args: Add| async move { args.a + args.b })
    ///     .build();
    /// ```
    pub fn rpc<H, T, A>(self, name: &str, handler: H) -> ServerBuilder
    where
        H: crate::RpcHandler<T, A>,
        T: serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static,
        A: crate::rpc::ExtractorList,
    {
        self.rpc_method(crate::RpcMethod::new(name, handler))
    }

    /// Adds an RPC method built with [`RpcMethod`](crate::RpcMethod) (a description,
    /// requiring auth).
    /// A method of the same name replaces the earlier one, `listall` included.
    pub fn rpc_method(mut self, method: crate::RpcMethod) -> ServerBuilder {
        self.methods.add(method);
        self
    }

    /// Uses another backplane (Redis, NATS) instead of the single-node default.
    pub fn backplane(mut self, backplane: impl Backplane) -> ServerBuilder {
        self.backplane = Arc::new(backplane);
        self
    }

    /// Builds the server. It does nothing until served.
    pub fn build(self) -> Server {
        let (stopped, _) = watch::channel(false);
        let clustered = self.backplane.name() != LocalBackplane.name();
        let auth = Auth::new(
            self.config.password.clone(),
            self.authenticator,
            self.config.auth_max_failures,
            self.config.auth_failure_window,
        );
        let mut methods = self.methods;
        if methods.get(crate::rpc::LISTALL).is_none() {
            methods.add(
                crate::RpcMethod::new(crate::rpc::LISTALL, |(): (), server: Server| async move {
                    crate::Json(server.methods())
                })
                .description("Every RPC method: name, description, parameter and result JSON Schemas, and whether it needs authentication."),
            );
        }
        Server {
            inner: Arc::new(ServerInner {
                routes: self.routes,
                methods,
                auth,
                config: self.config,
                router: self.router,
                state: self.state,
                hooks: self.hooks,
                backplane: self.backplane,
                clustered,
                registry: Registry::default(),
                ids: IdGen::new(),
                tracker: TaskTracker::new(),
                stop_accepting: CancellationToken::new(),
                started: AtomicBool::new(false),
                running: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                admitted: AtomicUsize::new(0),
                stopped,
                started_at: Instant::now(),
                local_addr: OnceLock::new(),
            }),
        }
    }
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

fn encode_payload<T: Serialize + ?Sized>(payload: &T) -> Result<Payload, SendError> {
    Payload::from_serialize(payload).map_err(|e| SendError::Encode(e.to_string()))
}

fn frame_text(kind: &str, payload: &Payload, room: Option<&str>, from: Option<&str>) -> String {
    encode_parts(&Parts {
        kind,
        payload: payload.as_raw(),
        ref_id: None,
        room,
        to: None,
        from,
    })
}

pub(crate) fn validate_room(room: &str) -> Result<(), SendError> {
    if room.is_empty() {
        return Err(SendError::InvalidRoom(
            "a room name must not be empty".into(),
        ));
    }
    if room.len() > MAX_ID_LEN {
        return Err(SendError::InvalidRoom(format!(
            "a room name is at most {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
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

    /// Sends to every connection. Returns how many connections on this node it was
    /// queued for.
    ///
    /// ```no_run
    /// # fn demo(server: switchboard_server::Server) {
    /// let count = server.broadcast("notification", &serde_json::json!({"text": "maintenance in 10 minutes"})).unwrap();
    /// println!("sent to {count} clients");
    /// # }
    /// ```
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<usize, SendError> {
        self.broadcast_with(kind, payload, Filter::all())
    }

    /// Sends to the connections `filter` selects (netconduit's `include` / `exclude`).
    pub fn broadcast_with<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        filter: Filter,
    ) -> Result<usize, SendError> {
        let payload = encode_payload(payload)?;
        let target = match filter.include {
            Some(ids) => Target::Conns(ids),
            None => Target::All,
        };
        Ok(self.inner.send_delivery(
            target,
            filter.exclude,
            frame_text(kind, &payload, None, None),
        ))
    }

    /// Sends to one client by id, on this node or (in a cluster) another.
    pub fn send_to<T: Serialize + ?Sized>(
        &self,
        id: ConnId,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        let payload = encode_payload(payload)?;
        if let Some(conn) = self.inner.registry.get(id) {
            return conn.push(Frame::text(frame_text(kind, &payload, None, None)));
        }
        if self.inner.clustered {
            self.inner.send_delivery(
                Target::Conns(vec![id]),
                Vec::new(),
                frame_text(kind, &payload, None, None),
            );
            return Ok(());
        }
        Err(SendError::NotFound(id))
    }

    /// Sends to every member of `room`. Returns how many on this node it was queued for.
    pub fn send_to_room<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<usize, SendError> {
        self.send_to_room_except(room, kind, payload, &[])
    }

    /// Sends to the members of `room` except `except` (usually the sender).
    pub fn send_to_room_except<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
        except: &[ConnId],
    ) -> Result<usize, SendError> {
        validate_room(room)?;
        let payload = encode_payload(payload)?;
        Ok(self.inner.send_delivery(
            Target::Room(room.to_owned()),
            except.to_vec(),
            frame_text(kind, &payload, Some(room), None),
        ))
    }

    /// Relays a client's message: encoded once, stamped with the sender's id in `from`.
    pub(crate) fn relay(
        &self,
        target: Target,
        exclude: Vec<ConnId>,
        kind: &str,
        payload: &Payload,
        room: Option<&str>,
        from: ConnId,
    ) -> usize {
        let from = from.to_string();
        self.inner.send_delivery(
            target,
            exclude,
            frame_text(kind, payload, room, Some(&from)),
        )
    }

    /// Whether a client with this id could receive a direct message: connected here, or
    /// possibly on another node of a cluster.
    pub(crate) fn may_reach(&self, id: ConnId) -> bool {
        self.inner.clustered || self.inner.registry.get(id).is_some()
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
        self.inner.router.types()
    }

    /// The rooms that have members on this node, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.inner.registry.room_names()
    }

    /// The members of `room` on this node, sorted.
    pub fn room_members(&self, room: &str) -> Vec<ConnId> {
        self.inner.registry.room_members(room)
    }

    /// Puts `conn` in `room` and tells the room's other members (`user_joined`).
    /// Returns false if it was already in.
    pub fn join(&self, conn: &Conn, room: &str) -> Result<bool, SendError> {
        validate_room(room)?;
        let mut set = lock(&conn.shared.rooms);
        if set.gone {
            return Err(SendError::Closed);
        }
        if set.names.contains(room) {
            return Ok(false);
        }
        if set.names.len() >= self.inner.config.max_rooms_per_connection {
            return Err(SendError::InvalidRoom(format!(
                "a connection may be in at most {} rooms",
                self.inner.config.max_rooms_per_connection
            )));
        }
        let (name, _) = self.inner.registry.join(room, conn);
        set.names.insert(name);
        drop(set);
        self.inner
            .backplane
            .presence(&PresenceEvent::Joined(conn.id(), room.to_owned()));
        self.notify_room(types::USER_JOINED, room, conn.id());
        Ok(true)
    }

    /// Takes `conn` out of `room` and tells the remaining members (`user_left`).
    /// Returns false if it was not in.
    pub fn leave(&self, conn: &Conn, room: &str) -> bool {
        let mut set = lock(&conn.shared.rooms);
        if !set.names.remove(room) {
            return false;
        }
        self.inner.registry.leave(room, conn.id());
        drop(set);
        self.inner
            .backplane
            .presence(&PresenceEvent::Left(conn.id(), room.to_owned()));
        self.notify_room(types::USER_LEFT, room, conn.id());
        true
    }

    fn notify_room(&self, kind: &str, room: &str, user: ConnId) {
        if !self.inner.config.room_notifications {
            return;
        }
        let payload = json!({ "user_id": user, "room_id": room });
        // A JSON object always encodes.
        if let Ok(payload) = Payload::from_serialize(&payload) {
            self.inner.send_delivery(
                Target::Room(room.to_owned()),
                vec![user],
                frame_text(kind, &payload, Some(room), None),
            );
        }
    }

    /// Takes a closed connection out of the registry and its rooms.
    pub(crate) fn remove_connection(&self, conn: &Conn) {
        self.inner.registry.remove(conn.id());
        let rooms: Vec<Arc<str>> = {
            let mut set = lock(&conn.shared.rooms);
            set.gone = true;
            set.names.iter().cloned().collect()
        };
        for room in &rooms {
            self.inner.registry.leave(room, conn.id());
            self.inner
                .backplane
                .presence(&PresenceEvent::Left(conn.id(), room.to_string()));
            self.notify_room(types::USER_LEFT, room, conn.id());
        }
        self.inner
            .backplane
            .presence(&PresenceEvent::Disconnected(conn.id()));
        self.inner.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Starts the backplane and runs the startup hooks. [`serve`](Server::serve) and
    /// [`run`](Server::run) call it; call it yourself when you mount
    /// [`router`](Server::router) in your own app.
    pub async fn start(&self) -> Result<(), ServeError> {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return Err(ServeError::AlreadyStarted);
        }
        if self.inner.config.password.as_deref() == Some("") {
            return Err(ServeError::Config(
                "`password` is empty; set a real one or none".into(),
            ));
        }
        self.inner
            .backplane
            .start(NodeHandle {
                inner: Arc::downgrade(&self.inner),
            })
            .await
            .map_err(ServeError::Backplane)?;
        self.inner.running.store(true, Ordering::Release);
        self.start_heartbeats();
        for hook in &self.inner.hooks.startup {
            hook(self.clone()).await;
        }
        Ok(())
    }

    /// Every `heartbeat_interval`: ping the clients idle that long, close those silent
    /// past `heartbeat_timeout`. One task for the whole server, not a timer per connection.
    fn start_heartbeats(&self) {
        let interval = self.inner.config.heartbeat_interval;
        let timeout = self.inner.config.heartbeat_timeout;
        if interval.is_zero() || timeout.is_zero() {
            return;
        }
        let tick = interval.min(timeout / 2).max(Duration::from_millis(10));
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop_accepting.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ping_after = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            let dead_after = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let now = crate::util::now_ms();
                inner.registry.for_each(|c| {
                    let idle = c.idle_ms(now);
                    if idle >= dead_after {
                        tracing::info!(conn = %c.id(), idle_ms = idle, "heartbeat timeout");
                        c.begin_close(Closing {
                            code: ErrorCode::HeartbeatTimeout.close_code_or_internal(),
                            reason: close_reason(
                                ErrorCode::HeartbeatTimeout,
                                &format!("nothing heard for {idle} ms"),
                            ),
                            abort: true,
                            by_client: false,
                        });
                    } else if idle >= ping_after {
                        let _ = c.push(Frame::Ping);
                    }
                });
            }
        });
    }

    /// Serves on `listener` until [`shutdown`](Server::shutdown) completes.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        let _ = self.inner.local_addr.set(addr);
        self.start().await?;
        tracing::info!(%addr, name = %self.inner.config.name, "switchboard listening");
        let plain = |tcp: TcpStream, _: SocketAddr| std::future::ready(Some(tcp));
        crate::transport::accept_loop(
            listener,
            self.router(),
            self.inner.stop_accepting.clone(),
            plain,
        )
        .await;
        self.stopped().await;
        Ok(())
    }

    /// Binds the configured `host:port` and serves until Ctrl-C or SIGTERM, then shuts
    /// down gracefully.
    /// With [`tls_cert`](ServerConfig::tls_cert) and [`tls_key`](ServerConfig::tls_key)
    /// set, it serves `wss://`.
    pub async fn run(&self) -> Result<(), ServeError> {
        let config = &self.inner.config;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::TlsConfig::from_pem_files(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(ServeError::Config(
                    "`tls_cert` and `tls_key` go together: set both or neither".into(),
                ));
            }
        };
        let addr = format!("{}:{}", self.inner.config.host, self.inner.config.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let server = self.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received");
            server.shutdown().await;
        });
        match tls {
            Some(tls) => self.serve_tls(listener, tls).await,
            None => self.serve(listener).await,
        }
    }

    /// Waits until shutdown has completed.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Shuts down gracefully: stop accepting, run the shutdown hooks, close every client
    /// with 1001 (`SHUTTING_DOWN`, reconnect after backoff) once its in-flight handler
    /// finishes and its queue is flushed, wait for them up to
    /// [`shutdown_grace`](ServerConfig::shutdown_grace) (then cancel the handlers still
    /// running and close those clients too), then stop the backplane.
    /// Calling it again waits for the first call to finish.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            self.stopped().await;
            return;
        }
        self.inner.stop_accepting.cancel();
        for hook in &self.inner.hooks.shutdown {
            hook(self.clone()).await;
        }
        self.inner.registry.for_each(|c| {
            c.close(ErrorCode::ShuttingDown, "server shutting down");
        });
        self.inner.tracker.close();
        if tokio::time::timeout(self.inner.config.shutdown_grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.inner.tracker.len(),
                "shutdown grace period over; aborting in-flight handlers"
            );
            self.inner.registry.for_each(|c| {
                c.begin_close(Closing {
                    code: ErrorCode::ShuttingDown.close_code_or_internal(),
                    reason: close_reason(ErrorCode::ShuttingDown, "server shutting down"),
                    abort: true,
                    by_client: false,
                });
            });
            // Each connection now only sends its close frame (bounded by its own timeouts).
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tracker.wait()).await;
        }
        self.inner.backplane.shutdown().await;
        self.inner.running.store(false, Ordering::Release);
        self.inner.stopped.send_replace(true);
        tracing::info!("switchboard stopped");
    }

    /// The axum router: the WebSocket endpoint at the configured path (default `/ws`),
    /// `/health`, and the routes added with [`ServerBuilder::routes`]. Mount it in your
    /// own app with `Router::merge`.
    pub fn router(&self) -> axum::Router {
        crate::transport::router(self.clone())
    }

    /// The WebSocket endpoint alone, to route at a path of your choice.
    pub fn ws_route(&self) -> axum::routing::MethodRouter {
        crate::transport::ws_route(self.clone())
    }

    /// A WebSocket endpoint that sends every text and binary frame back as it came,
    /// through the same transport, limits and outbound queue as the real endpoint but
    /// with no protocol: for conformance suites (Autobahn) and transport benchmarks.
    /// Not routed unless you route it.
    ///
    /// ```
    /// let server = switchboard_server::Server::builder().build();
    /// let app = server.router().route("/echo", server.echo_route());
    /// ```
    pub fn echo_route(&self) -> axum::routing::MethodRouter {
        crate::transport::echo_route(self.clone())
    }

    /// A JSON health summary (served at `/health`).
    pub fn health(&self) -> serde_json::Value {
        json!({
            "status": if self.is_shutting_down() { "shutting_down" } else { "ok" },
            "name": self.inner.config.name,
            "connections": self.connection_count(),
            "rooms": self.inner.registry.room_names().len(),
            "uptime_secs": self.uptime().as_secs(),
            "backplane": {
                "name": self.inner.backplane.name(),
                "healthy": self.inner.backplane.is_healthy(),
            },
        })
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
