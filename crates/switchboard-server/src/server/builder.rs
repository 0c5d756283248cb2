//! Building a [`Server`]: handlers, RPC methods, hooks, state, settings, backplane.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DisconnectReason, Server, ServerInner, builtin};
use crate::ServerConfig;
use crate::auth::{Auth, Authenticator};
use crate::backplane::{Backplane, LocalBackplane};
use crate::clock::now_ms;
use crate::connection::Conn;
use crate::delivery::{Sessions, Streams};
use crate::handler::{BoxFuture, Erased, Handler};
use crate::handler_table::{HandlerTable, Route};
use crate::id::IdGen;
use crate::registry::Registry;
use crate::slots::SlotTable;

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
    handlers: HandlerTable,
    state: StateMap,
    hooks: Hooks,
    backplane: Arc<dyn Backplane>,
    authenticator: Option<Arc<dyn Authenticator>>,
    /// `None`: everything is allowed ([`OpenPolicy`](crate::OpenPolicy)).
    policy: Option<Arc<dyn crate::Policy>>,
    methods: crate::rpc::Methods,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("types", &self.handlers.types())
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
            handlers: HandlerTable::default(),
            state: StateMap::default(),
            hooks: Hooks::default(),
            backplane: Arc::new(LocalBackplane),
            authenticator: None,
            policy: None,
            methods: crate::rpc::Methods::default(),
        };
        builtin::register(builder)
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
        self.handlers.add(
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
        self.handlers.add_binary(Route {
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

    /// Sets what clients may do ([`Policy`](crate::Policy)): joins, publishing to rooms,
    /// direct messages and RPC calls are checked against it, and a refusal is a
    /// `FORBIDDEN` error. Default: [`OpenPolicy`](crate::OpenPolicy), everything.
    ///
    /// ```
    /// use switchboard_server::{ClaimsPolicy, JwtAuthenticator, Server};
    /// let server = Server::builder()
    ///     .authenticator(JwtAuthenticator::hs256(b"a secret of at least 32 bytes, really"))
    ///     .policy(ClaimsPolicy)
    ///     .build();
    /// ```
    pub fn policy(mut self, policy: impl crate::Policy) -> ServerBuilder {
        self.policy = Some(Arc::new(policy));
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
        let sequenced = clustered && self.backplane.sequences();
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
        let http_slots = SlotTable::new(
            self.config.max_http_connections,
            self.config.max_http_connections_per_address,
        );
        let auth_slots = SlotTable::new(
            self.config.max_pending_auth,
            self.config.max_pending_auth_per_address,
        );
        let metrics = self.config.metrics.then(|| {
            let mut types = self.handlers.types();
            if !self.handlers.binary.is_empty() {
                types.push("binary".to_owned());
            }
            let metrics = crate::metrics::Metrics::new(&types, &methods.names());
            methods.time_with(&metrics);
            metrics
        });
        Server {
            inner: Arc::new(ServerInner {
                metrics,
                streams: Streams::new(&self.config, now_ms()),
                sessions: Sessions::default(),
                unrecorded: Default::default(),
                room_updates: Default::default(),
                http_routes: self.routes,
                methods,
                auth,
                config: self.config,
                handlers: self.handlers,
                state: self.state,
                hooks: self.hooks,
                backplane: self.backplane,
                policy: self.policy,
                clustered,
                sequenced,
                order_waiters: AtomicUsize::new(0),
                order_advanced: tokio::sync::Notify::new(),
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
                http_slots,
                auth_slots,
            }),
        }
    }
}
