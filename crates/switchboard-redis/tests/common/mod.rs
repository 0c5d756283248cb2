//! What the Redis suites share: a node over a backplane, with the hub's relay on.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use switchboard_redis::{RedisBackplane, RedisConfig};
use switchboard_server::{Server, ServerConfig};
use switchboard_test::{RedisServer, TestServer};

/// Settings for tests: fast heartbeats, nodes dead after 800 ms.
pub fn config(prefix: &str) -> RedisConfig {
    RedisConfig {
        prefix: prefix.to_owned(),
        heartbeat: Duration::from_millis(100),
        node_ttl: Duration::from_millis(800),
        ..RedisConfig::default()
    }
}

/// A node over `redis`, its keys under `prefix`.
pub async fn node(redis: &RedisServer, prefix: &str) -> TestServer {
    node_over(RedisBackplane::with_config(&redis.url(), config(prefix)).unwrap()).await
}

/// A node (a test server on port 0) over `backplane`, relaying unhandled messages as
/// the hub does.
pub async fn node_over(backplane: RedisBackplane) -> TestServer {
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
