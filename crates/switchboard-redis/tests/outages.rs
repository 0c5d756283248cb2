//! Redis stalling and nodes churning rooms: health comes back when Redis does, the
//! Redis room sets shrink with the rooms, and a stall costs a bounded amount of memory.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::json;
use switchboard_redis::{RedisBackplane, RedisConfig};
use switchboard_test::{RedisServer, TIMEOUT, TestServer};

fn backplane(redis: &RedisServer, prefix: &str, queue_bytes: usize) -> RedisBackplane {
    RedisBackplane::with_config(
        &redis.url(),
        RedisConfig {
            prefix: format!("{prefix}{}", std::process::id()),
            heartbeat: Duration::from_millis(100),
            node_ttl: Duration::from_millis(800),
            queue_bytes,
            ..RedisConfig::default()
        },
    )
    .unwrap()
}

/// Waits (re-checking, bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn healthy(s: &TestServer) -> bool {
    s.server.health()["backplane"]["healthy"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_comes_back_after_redis_stalls() {
    let redis = RedisServer::start();
    let n = common::node_over(backplane(&redis, "stall", 64 << 20)).await;
    eventually("healthy at start", || healthy(&n)).await;
    redis.pause();
    eventually("unhealthy while Redis stalls", || !healthy(&n)).await;
    redis.resume();
    eventually("healthy once Redis answers again", || healthy(&n)).await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_room_sets_shrink_when_rooms_empty() {
    let redis = RedisServer::start();
    let bp = backplane(&redis, "rooms", 64 << 20);
    let key = format!("rooms{}:node:{}:rooms", std::process::id(), bp.node_id());
    let n = common::node_over(bp).await;
    let mut c = n.raw().await;
    for i in 0..200 {
        let room = format!("room-{i}");
        c.roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id": room}}))
            .await;
        c.roundtrip(json!({"type":"leave_room","ref":"l","payload":{"room_id": room}}))
            .await;
    }
    c.roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"kept"}}))
        .await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if rooms == ["kept"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rooms still listed",
            rooms.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_at_most_the_queue_bytes() {
    let redis = RedisServer::start();
    let bp = backplane(&redis, "bytes", 1 << 20);
    let n = common::node_over(bp.clone()).await;
    eventually("healthy at start", || healthy(&n)).await;
    redis.pause();
    // 200 broadcasts of about 100 KB (20 MB) against a 1 MiB bound: nearly all dropped,
    // and counted, instead of queued.
    let blob = "z".repeat(100_000);
    for _ in 0..200 {
        n.server.broadcast("big", &json!({ "blob": blob })).unwrap();
    }
    assert!(bp.dropped() >= 180, "dropped {}", bp.dropped());
    redis.resume();
    eventually("healthy again", || healthy(&n)).await;
    n.stop().await;
}
