//! What the Redis suites share: a node over a backplane, with the hub's relay on.

use switchboard_redis::RedisBackplane;
use switchboard_server::{Server, ServerConfig};
use switchboard_test::TestServer;

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
