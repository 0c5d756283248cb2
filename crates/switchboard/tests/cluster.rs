//! Three `switchboard serve --redis` (or `--nats`) processes and a real redis-server
//! (or nats-server): one hub across nodes, and a node killed mid-traffic disappearing
//! from the counts.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_test::{Hub, NatsServer, RedisServer, TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn node(redis: &RedisServer) -> Hub {
    Hub::spawn(
        BIN,
        &[
            "serve",
            "--port",
            "0",
            "--redis",
            &redis.url(),
            "--redis-node-ttl",
            "600ms",
        ],
        &[],
    )
}

fn nats_node(nats: &NatsServer) -> Hub {
    Hub::spawn(
        BIN,
        &[
            "serve",
            "--port",
            "0",
            "--nats",
            &nats.url(),
            "--nats-node-ttl",
            "600ms",
        ],
        &[],
    )
}

async fn cluster_count(c: &mut switchboard_test::RawClient) -> u64 {
    c.send(json!({"type":"rpc","ref":"s","payload":{"method":"status"}}))
        .await;
    // Room notices may come first: wait for this call's ack.
    loop {
        let r = c.recv_type("ack").await;
        if r["payload"]["ref"] == "s" {
            return r["payload"]["result"]["cluster_connections"]
                .as_u64()
                .unwrap();
        }
    }
}

/// Re-asks (bounded) until the cluster count is `n`.
async fn until_count(c: &mut switchboard_test::RawClient, n: u64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = cluster_count(c).await;
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster count stayed {got}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hubs_over_redis_are_one_hub_and_a_killed_node_stops_counting() {
    let redis = RedisServer::start();
    one_hub_and_a_killed_node_stops_counting([node(&redis), node(&redis), node(&redis)]).await;
}

#[tokio::test]
async fn hubs_over_nats_are_one_hub_and_a_killed_node_stops_counting() {
    let nats = NatsServer::start();
    let hubs = [nats_node(&nats), nats_node(&nats), nats_node(&nats)];
    one_hub_and_a_killed_node_stops_counting(hubs).await;
}

async fn one_hub_and_a_killed_node_stops_counting(hubs: [Hub; 3]) {
    let mut a = hubs[0].raw().await;
    let mut b = hubs[1].raw().await;
    let mut c = hubs[2].raw().await;
    let _c2 = hubs[2].raw().await;
    until_count(&mut a, 4).await;
    until_count(&mut b, 4).await;

    // The hub's relay across nodes: a room, `to: all`, a client id.
    for x in [&mut a, &mut b, &mut c] {
        x.roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"lobby"}}))
            .await;
    }
    a.send(json!({"type":"chat","room":"lobby","ref":"m","payload":{"text":"hi"}}))
        .await;
    let ack = loop {
        let r = a.recv_type("ack").await;
        if r["payload"]["ref"] == "m" {
            break r;
        }
    };
    assert_eq!(ack["payload"]["status"], "ok");
    for x in [&mut b, &mut c] {
        let m: Value = x.recv_type("chat").await;
        assert_eq!(
            (m["payload"]["text"].as_str(), m["from"].as_str()),
            (Some("hi"), Some(a.id.as_str()))
        );
    }
    b.send(json!({"type":"dm","to": a.id,"payload":{"text":"psst"}}))
        .await;
    assert_eq!(a.recv_type("dm").await["payload"]["text"], "psst");

    // SIGKILL: no goodbye to the cluster. Its two clients stop counting once its heartbeat
    // is overdue; the others keep talking.
    let [_h0, _h1, h2] = hubs;
    drop(h2); // Hub's drop is a SIGKILL
    until_count(&mut a, 2).await;
    until_count(&mut b, 2).await;
    a.send(json!({"type":"chat","room":"lobby","ref":"m2","payload":{"text":"still here"}}))
        .await;
    let ack = loop {
        let r = a.recv_type("ack").await;
        if r["payload"]["ref"] == "m2" {
            break r;
        }
    };
    assert_eq!(ack["payload"]["status"], "ok");
    assert_eq!(b.recv_type("chat").await["payload"]["text"], "still here");
}
