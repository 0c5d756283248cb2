//! What the seed tests share: a handler's messages as a queue, and the next of them.

#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use switchboard_client::Client;
use switchboard_test::TIMEOUT;
use tokio::sync::mpsc;

/// The payloads a client's `on(kind)` handler received, in the order the connection
/// delivered them (a plain handler runs on the connection's task, in arrival order).
pub fn inbox(client: &Client, kind: &str) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.on(kind, move |msg| {
        tx.send(msg.payload.to_value()).ok();
    });
    rx
}

/// The next item, within the test timeout.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("in time")
        .expect("a sender left")
}
