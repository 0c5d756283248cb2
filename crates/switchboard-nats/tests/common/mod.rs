//! What the NATS suites share: nodes over a real `nats-server`, with the hub's relay on.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use switchboard_nats::{NatsBackplane, NatsConfig};
use switchboard_server::{HistoryPolicy, Server, ServerConfig};
use switchboard_test::{NatsServer, Proxy, TestServer};

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

/// The history the linked nodes keep, per stream.
pub const HISTORY: usize = 5_000;

/// A random number below `n`.
pub fn random_below(n: u64) -> u64 {
    switchboard_server::proto::random_u64() % n
}

/// A node whose link to NATS goes through a proxy the test can cut.
pub async fn linked_node(nats: &NatsServer) -> (TestServer, Proxy) {
    let link = Proxy::start(nats.addr()).await;
    let backplane = NatsBackplane::with_config(
        &format!("nats://{}", link.addr),
        NatsConfig {
            prefix: "chaos".into(),
            heartbeat: Duration::from_millis(100),
            node_ttl: Duration::from_secs(2),
            history: HISTORY as i64,
            ..NatsConfig::default()
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

pub async fn linked_cluster(nats: &NatsServer) -> LinkedCluster {
    let (n0, link0) = linked_node(nats).await;
    let (n1, link1) = linked_node(nats).await;
    let (n2, link2) = linked_node(nats).await;
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
