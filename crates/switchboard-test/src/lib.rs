//! Test harness for switchboard: a server on port 0 and a raw WebSocket client that
//! speaks frames exactly as written, for tests that check the wire itself.
//!
//! Every wait is bounded by [`TIMEOUT`] so a broken test fails instead of hanging, and
//! nothing sleeps to synchronise: tests wait for the frame or event they expect.

pub mod cluster;
mod http;
mod hub;
mod nats;
mod proxy;
mod raw_client;
mod redis;
pub mod routing;
mod server;
mod wire_client;

use std::time::Duration;

pub use http::{HttpResponse, http};
pub use hub::{Hub, TempFile, run};
pub use nats::NatsServer;
pub use proxy::Proxy;
pub use raw_client::{Closed, RawClient};
pub use redis::RedisServer;
pub use server::{TestCert, TestServer};
pub use wire_client::{WireClient, WireFrame, wire_frame};

/// The longest any harness wait lasts before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A delivered message without its stream `offset`, for tests about routing rather
/// than positions. Panics when the offset is there and is not a positive integer.
///
/// ```
/// use serde_json::json;
/// let frame = json!({"type": "chat", "payload": {}, "room": "general", "offset": 3});
/// assert_eq!(switchboard_test::unstamped(frame), json!({"type": "chat", "payload": {}, "room": "general"}));
/// ```
pub fn unstamped(mut frame: serde_json::Value) -> serde_json::Value {
    if let Some(offset) = frame.as_object_mut().and_then(|obj| obj.remove("offset")) {
        assert!(
            offset.as_u64().is_some_and(|n| n > 0),
            "an offset is a positive integer, got {offset}"
        );
    }
    frame
}
