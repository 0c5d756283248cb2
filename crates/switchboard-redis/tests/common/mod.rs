//! What the Redis suites share: a node over a backplane, with the hub's relay on.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use switchboard_redis::{RedisBackplane, RedisConfig};
use switchboard_server::{HistoryPolicy, Server, ServerBuilder, ServerConfig};
use switchboard_test::{Proxy, RedisServer, TestServer};

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

/// `builder` with clients authenticated as the user their token names.
pub fn token_users(builder: ServerBuilder) -> ServerBuilder {
    builder.authenticator(|c: switchboard_server::Credentials| async move {
        let user = c.token().unwrap_or_default().to_owned();
        Ok::<_, switchboard_server::AuthRejected>(switchboard_server::Identity::new(user))
    })
}

/// A random number below `n`.
pub fn random_below(n: u64) -> u64 {
    switchboard_server::proto::random_u64() % n
}

/// The history the linked nodes keep, per stream: more than a chaos test sends to a
/// room, so that a resume never outruns it. (With the default 1,000, a client that
/// had resumed onto a node lagging 1,483 messages behind, its link to Redis just cut,
/// was told `history_gap` at its next resume elsewhere: the right answer, but not
/// what the test is about.)
pub const HISTORY: usize = 5_000;

/// A node (keys under `chaos`) whose link to Redis goes through a proxy the test can
/// cut.
pub async fn linked_node(redis: &RedisServer) -> (TestServer, Proxy) {
    let link = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let backplane = RedisBackplane::with_config(
        &format!("redis://{}", link.addr),
        RedisConfig {
            prefix: "chaos".into(),
            heartbeat: Duration::from_millis(100),
            node_ttl: Duration::from_secs(2),
            ..RedisConfig::default()
        },
    )
    .unwrap();
    let server = TestServer::start(
        Server::builder()
            .config(ServerConfig {
                // Each node by name in what the test logs (RUST_LOG).
                name: format!("node-{}", link.addr.port()),
                relay_unhandled: true,
                rate_limit: 0,
                history: HistoryPolicy {
                    size: HISTORY,
                    ..HistoryPolicy::default()
                },
                ..TestServer::config()
            })
            .backplane(backplane),
    )
    .await;
    (server, link)
}

/// Three linked nodes ([`linked_node`]), a load balancer without sticky sessions in
/// front (each connection goes to the next node), and a client through it that
/// reconnects within 5-50 ms.
pub struct LinkedCluster {
    pub nodes: [TestServer; 3],
    pub links: [Proxy; 3],
    pub proxy: Proxy,
    pub client: switchboard_client::Client,
}

pub async fn linked_cluster(redis: &RedisServer) -> LinkedCluster {
    let (n0, link0) = linked_node(redis).await;
    let (n1, link1) = linked_node(redis).await;
    let (n2, link2) = linked_node(redis).await;
    let proxy = Proxy::round_robin(vec![n2.addr, n0.addr, n1.addr]).await;
    let client = switchboard_client::Client::connect_with(
        &proxy.url("/ws"),
        switchboard_client::ClientConfig::default().reconnect(
            switchboard_client::ReconnectConfig {
                initial_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(50),
                jitter: 0.5,
                ..switchboard_client::ReconnectConfig::default()
            },
        ),
    )
    .await
    .unwrap();
    LinkedCluster {
        nodes: [n0, n1, n2],
        links: [link0, link1, link2],
        proxy,
        client,
    }
}

/// The rooms the session of `client` has in Redis, under `prefix`, sorted.
pub async fn session_rooms(
    redis: &RedisServer,
    prefix: &str,
    client: impl std::fmt::Display,
) -> Vec<String> {
    let mut conn = connection(redis).await;
    let mut rooms: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}:session:{client}:rooms"))
        .query_async(&mut conn)
        .await
        .unwrap();
    rooms.sort();
    rooms
}

/// The fields of the session record of `client` in Redis, under `prefix` (node,
/// generation, ...), for a failing test to show.
pub async fn session_record(
    redis: &RedisServer,
    prefix: &str,
    client: impl std::fmt::Display,
) -> Vec<String> {
    let mut conn = connection(redis).await;
    redis::cmd("HGETALL")
        .arg(format!("{prefix}:session:{client}"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default()
}

/// A connection to `redis`, for a test to read what the nodes wrote.
pub async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
