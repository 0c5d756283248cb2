//! Test harness for switchboard: a server on port 0 and a raw WebSocket client that
//! speaks frames exactly as written, for tests that check the wire itself.
//!
//! Every wait is bounded by [`TIMEOUT`] so a broken test fails instead of hanging, and
//! nothing sleeps to synchronise: tests wait for the frame or event they expect.

mod hub;
mod proxy;
mod raw_client;
mod redis;
mod server;
mod wire_client;

use std::time::Duration;

pub use hub::{Hub, TempFile, run};
pub use proxy::Proxy;
pub use raw_client::{Closed, RawClient};
pub use redis::RedisServer;
pub use server::{TestCert, TestServer};
pub use wire_client::{WireClient, WireFrame, wire_frame};

/// The longest any harness wait lasts before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
