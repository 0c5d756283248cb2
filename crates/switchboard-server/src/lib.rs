//! The switchboard server library: real-time messaging over WebSocket.
//!
//! Handlers by message type with typed payloads, several per type by priority, their
//! return value sent back to the sender; broadcast to all, to a set, or to all but a
//! set; direct sends by client id; rooms with join/leave notifications; lifecycle hooks;
//! kicking; graceful shutdown. Every connection has a bounded outbound queue with a
//! documented slow-consumer policy, broadcasts are encoded once, and everything that
//! leaves the node goes through a [`Backplane`] (in-process by default).
//!
//! ```no_run
//! use serde::Deserialize;
//! use switchboard_server::{Conn, Filter, Json, Server, ServerConfig};
//!
//! #[derive(Deserialize)]
//! struct Chat { message: String }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), switchboard_server::ServeError> {
//!     let server = Server::builder()
//!         .config(ServerConfig::new("127.0.0.1", 8080).name("ChatServer"))
//!         .on("chat", |server: Server, conn: Conn, Json(chat): Json<Chat>| async move {
//!             let msg = serde_json::json!({"from": conn.id(), "message": chat.message});
//!             server.broadcast_with("chat", &msg, Filter::exclude([conn.id()]))?;
//!             Ok::<_, switchboard_server::HandlerError>(Json(serde_json::json!({"sent": true})))
//!         })
//!         .build();
//!     server.run().await // until Ctrl-C / SIGTERM, then a graceful shutdown
//! }
//! ```
//!
//! The wire protocol is specified in `docs/protocol.md` and implemented by
//! [`switchboard_proto`].

mod auth;
pub mod backplane;
mod clock;
mod config;
mod connection;
mod delivery;
mod dialect;
mod encoding;
mod error;
pub mod extract;
pub mod handler;
mod handler_table;
mod http;
mod id;
mod jwt;
mod locks;
mod metrics;
mod netconduit;
mod policy;
mod rate_limit;
mod registry;
pub mod rpc;
mod server;
mod slots;
mod spare;
mod telemetry;
mod timed_io;
mod ws;

pub use auth::{AuthRejected, Authenticator, Credentials, Identity};
pub use backplane::{
    Backplane, BackplaneError, BackplaneStats, ClaimedSession, Delivery, Disconnect, Interests,
    KeptMessage, LocalBackplane, NodeHandle, PresenceEvent, Sequence, SessionHistory,
    SessionRecord, StreamHistory, Target, UserTag,
};
pub use config::{HistoryPolicy, HistoryRule, ServerConfig, SlowConsumerPolicy};
pub use connection::Conn;
pub use error::{HandlerError, SendError, ServeError};
pub use extract::{Binary, FromMessage, Json, MessageContext, State, Version};
pub use handler::{Handler, IntoReply};
pub use http::{Listening, TlsConfig, shutdown_signal};
pub use id::{ConnId, ParseConnIdError};
pub use jwt::{JwtAuthenticator, JwtKeyError};
pub use netconduit::NetconduitConfig;
pub use policy::{Action, ClaimsPolicy, OpenPolicy, Policy, RulesPolicy};
pub use rpc::{IntoRpcResult, MethodInfo, RpcHandler, RpcMethod};
pub use server::{
    DisconnectReason, Filter, MAX_MEMBERS, RoomHistory, RoomPresence, Server, ServerBuilder,
    UserPresence,
};

/// The Prometheus client the metrics are kept with ([`Server::metrics_registry`]).
pub use prometheus;
pub use switchboard_proto as proto;
pub use switchboard_proto::{Envelope, ErrorCode, Payload};
