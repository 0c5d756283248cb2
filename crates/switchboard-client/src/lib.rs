//! The Rust client for switchboard.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard_client::Client;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws").await?;
//! client.on("chat", |msg| println!("{}: {}", msg.from.as_deref().unwrap_or("?"), msg.payload));
//! client.join("general").await?;
//! client.send_to_room("general", "chat", &serde_json::json!({"content": "hello"})).await?;
//! let sum: f64 = client
//!     .request("sum", &serde_json::json!({"numbers": [1, 2]}), Duration::from_secs(5))
//!     .await?;
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! A [`Client`] is a cheap handle to one connection task that owns the socket. Handlers
//! run on that task, in the order messages arrive; keep them short (spawn for slow work)
//! or read messages from a [`Messages`] stream instead. Requests are matched to their
//! `ack` by `ref`, so any number can be in flight at once.
//!
//! The client survives the network: when the connection drops it reconnects with
//! exponential backoff and jitter ([`ReconnectConfig`]), authenticates again, rejoins
//! every room it was in, then sends what was queued while it was offline, in order.
//! A close the server marks "do not reconnect" (wrong credentials, kicked) ends it.
//! Every transition is reported to [`Client::on_state`]; failures to
//! [`Client::on_error`] as typed [`ClientError`]s. See `docs/client.md`.

mod client;
mod config;
mod connect;
mod driver;
mod error;
mod handlers;
mod locks;
mod room_sync;
mod socket;
mod state;
mod status;
mod streams;
mod token;

pub use client::{Client, Messages};
pub use config::{ClientConfig, ReconnectConfig};
pub use connect::Session;
pub use error::{ClientError, ConnectError, RequestError, SendError};
pub use handlers::{HandlerId, ReconnectAttempt};
pub use status::{CloseInfo, ConnectionState};
pub use switchboard_proto::{
    Envelope, ErrorCode, Position, Reconnect, Recovery, RecoveryGap, ResumeOutcome,
};
pub use token::{TokenSource, token_expiry};
