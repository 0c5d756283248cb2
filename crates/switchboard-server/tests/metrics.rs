//! `GET /metrics` after a scripted session: the exact deltas a user would see.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use switchboard_server::{ConnId, ServerConfig};
use switchboard_test::{RawClient, TestServer, http};

/// One scrape: every sample by its name and labels, as written.
async fn scrape(s: &TestServer) -> HashMap<String, f64> {
    let r = http(s.addr, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let get = |m: &HashMap<String, f64>| m.get(key).copied().unwrap_or(0.0);
    get(after) - get(before)
}

#[derive(Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::test]
async fn a_scripted_session_shows_its_exact_counts() {
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel();
    let s = TestServer::with(move |b| {
        b.config(ServerConfig {
            password: Some("s3cret-pw".into()),
            outbound_queue: 4,
            ..TestServer::config()
        })
        .on("chat", || async {})
        .rpc("add", |p: Add| async move { p.a + p.b })
        // Runs once the connection's close is counted.
        .on_disconnect(
            move |_: switchboard_server::Conn, why: switchboard_server::DisconnectReason| {
                let gone_tx = gone_tx.clone();
                async move {
                    gone_tx.send(why.code).ok();
                }
            },
        )
    })
    .await;
    let before = scrape(&s).await;

    // One authentication failure.
    let mut wrong = RawClient::connect(&s.url()).await;
    wrong
        .send(json!({"type": "auth", "payload": {"password": "nope"}}))
        .await;
    assert_eq!(wrong.closed().await.code, 4001);

    // A client: 5 application messages, 1 ping, 2 RPC calls.
    let mut c = RawClient::connect(&s.url()).await;
    c.send(json!({"type": "auth", "ref": "a", "payload": {"password": "s3cret-pw"}}))
        .await;
    assert_eq!(c.recv_type("connected").await["type"], "connected");
    assert_eq!(c.recv_type("ack").await["payload"]["ref"], "a");
    for i in 0..5 {
        c.send(json!({"type": "chat", "payload": {"i": i}})).await;
    }
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    for r in ["r1", "r2"] {
        c.send(json!({"type": "rpc", "ref": r, "payload": {"method": "add", "params": {"a": 1, "b": 2}}}))
            .await;
        assert_eq!(c.recv().await["payload"]["result"], 3);
    }

    // A slow consumer: it does not read and the server queues past the bound.
    let mut slow = RawClient::connect(&s.url()).await;
    slow.send(json!({"type": "auth", "payload": {"password": "s3cret-pw"}}))
        .await;
    let hello = slow.recv_type("connected").await;
    let slow_id: ConnId = hello["payload"]["client_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..100 {
        let _ = s.server.send_to(slow_id, "tick", &json!({ "i": i }));
    }
    assert_eq!(slow.closed().await.code, 4007);
    let code = tokio::time::timeout(switchboard_test::TIMEOUT, gone.recv()).await;
    assert_eq!(code.unwrap(), Some(4007));

    let after = scrape(&s).await;
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d("switchboard_auth_failures_total"), 1.0);
    assert_eq!(
        d("switchboard_messages_received_total{class=\"application\"}"),
        5.0
    );
    assert_eq!(
        d("switchboard_messages_received_total{class=\"system\"}"),
        1.0
    );
    assert_eq!(d("switchboard_messages_received_total{class=\"rpc\"}"), 2.0);
    assert_eq!(
        d("switchboard_handler_duration_seconds_count{status=\"ok\",type=\"chat\"}"),
        5.0
    );
    assert_eq!(
        d("switchboard_rpc_duration_seconds_count{method=\"add\",status=\"ok\"}"),
        2.0
    );
    assert_eq!(d("switchboard_slow_consumer_disconnects_total"), 1.0);
    assert_eq!(
        d("switchboard_connections_closed_total{code=\"4007\"}"),
        1.0
    );
    assert_eq!(d("switchboard_connections_accepted_total"), 2.0);
    // Written: to the client `connected`, the auth ack, the pong and two RPC acks; to
    // the slow consumer its `connected` (all system), then the ticks that reached its
    // socket before it was cut off (application).
    assert_eq!(d("switchboard_messages_sent_total{class=\"system\"}"), 6.0);
    assert!(d("switchboard_received_bytes_total") > 0.0);
    assert!(d("switchboard_sent_bytes_total") > 0.0);
    // Gauges read when scraped.
    assert_eq!(after["switchboard_connections"], 1.0);
    assert_eq!(after["switchboard_backplane_healthy"], 1.0);
    s.stop().await;
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let s = TestServer::with_config(ServerConfig {
        metrics: false,
        ..TestServer::config()
    })
    .await;
    assert_eq!(http(s.addr, "GET", "/metrics", &[], None).await.status, 404);
    assert!(s.server.render_metrics().is_none());
    s.stop().await;
}

/// Every metric docs/operations.md and the Grafana dashboard name is one the server
/// serves (a renamed metric would leave a dead panel or alert behind).
#[tokio::test]
async fn the_documented_metrics_and_the_dashboard_name_only_real_metrics() {
    let s = TestServer::with(|b| {
        b.on("chat", || async {})
            .rpc("add", |p: Add| async move { p.a + p.b })
    })
    .await;
    let mut c = s.raw().await;
    c.send(json!({"type": "chat"})).await;
    c.send(json!({"type": "rpc", "ref": "1", "payload": {"method": "add", "params": {"a": 1, "b": 1}}}))
        .await;
    c.recv_type("ack").await;
    let served: std::collections::HashSet<String> = scrape(&s)
        .await
        .keys()
        .map(|k| k.split('{').next().unwrap().to_owned())
        .map(|k| {
            ["_bucket", "_count", "_sum"].iter().fold(k, |k, suffix| {
                k.strip_suffix(suffix).map(str::to_owned).unwrap_or(k)
            })
        })
        .collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for file in ["docs/operations.md", "deploy/grafana-dashboard.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("switchboard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name, |n, suffix| {
                    n.strip_suffix(suffix).map(str::to_owned).unwrap_or(n)
                });
            // Vectors without a sample yet (closes by code, resumes by outcome), and
            // the crate's name in a RUST_LOG example.
            let not_yet = [
                "switchboard_connections_closed_total",
                "switchboard_resumes_total",
            ];
            let not_metrics = ["switchboard_", "switchboard_server"];
            assert!(
                served.contains(&name)
                    || not_yet.contains(&name.as_str())
                    || not_metrics.contains(&name.as_str()),
                "{file} names {name}, which the server does not serve"
            );
        }
    }
    s.stop().await;
}

/// The echo endpoint (conformance suites, benchmarks) is not counted as clients.
#[tokio::test]
async fn echo_connections_are_not_counted_as_clients() {
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel();
    let s = TestServer::with(move |b| {
        b.config(ServerConfig {
            echo_path: Some("/echo".into()),
            ..TestServer::config()
        })
        .on_disconnect(
            move |c: switchboard_server::Conn, _: switchboard_server::DisconnectReason| {
                let gone_tx = gone_tx.clone();
                async move {
                    gone_tx.send(c.id().to_string()).ok();
                }
            },
        )
    })
    .await;
    let url = format!("ws://{}/echo", s.addr);
    let mut e = RawClient::connect(&url).await;
    e.send_text("hello").await;
    e.close().await;
    // A real client afterwards; once its close is counted, the echo's is long done.
    let c = s.raw().await;
    let id = c.id.clone();
    c.close().await;
    loop {
        let who = tokio::time::timeout(switchboard_test::TIMEOUT, gone.recv()).await;
        if who.unwrap().unwrap() == id {
            break;
        }
    }
    let m = scrape(&s).await;
    assert_eq!(m["switchboard_connections_accepted_total"], 1.0);
    let closed: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("switchboard_connections_closed_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(closed, 1.0, "only the client's close");
    s.stop().await;
}
