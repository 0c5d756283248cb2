//! What the NATS suites share: nodes over a real `nats-server`, with the hub's relay on.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use switchboard_nats::{NatsBackplane, NatsConfig};
use switchboard_server::{Server, ServerConfig};
use switchboard_test::TestServer;

pub fn config(prefix: &str) -> NatsConfig {
    NatsConfig {
        prefix: prefix.to_owned(),
        heartbeat: Duration::from_millis(100),
        node_ttl: Duration::from_millis(800),
        ..NatsConfig::default()
    }
}

/// A node (a test server on port 0) over NATS at `url`, relaying unhandled messages as
/// the hub does.
pub async fn node(url: &str, prefix: &str) -> TestServer {
    node_over(NatsBackplane::with_config(url, config(prefix)).unwrap()).await
}

pub async fn node_over(backplane: NatsBackplane) -> TestServer {
    TestServer::start(
        Server::builder()
            .config(ServerConfig {
                relay_unhandled: true,
                ..TestServer::config()
            })
            .backplane(backplane),
    )
    .await
}
