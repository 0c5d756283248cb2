//! Redis stalling and nodes churning rooms: health comes back when Redis does, the
//! Redis room sets shrink with the rooms, and a stall costs a bounded amount of memory.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::json;
use switchboard_redis::{RedisBackplane, RedisConfig};
use switchboard_test::{Proxy, RedisServer, TIMEOUT, TestServer};

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

/// A node behind a proxy to Redis, so the test can cut its link.
async fn node_behind(redis: &RedisServer, prefix: &str) -> (TestServer, Proxy) {
    let link = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let bp = RedisBackplane::with_config(
        &format!("redis://{}", link.addr),
        RedisConfig {
            prefix: format!("{prefix}{}", std::process::id()),
            heartbeat: Duration::from_millis(100),
            node_ttl: Duration::from_secs(3),
            ..RedisConfig::default()
        },
    )
    .unwrap();
    // Clients may authenticate later, as the user their token names.
    let node = TestServer::start(
        common::token_users(switchboard_server::Server::builder())
            .config(switchboard_server::ServerConfig {
                relay_unhandled: true,
                auth_required: false,
                ..TestServer::config()
            })
            .backplane(bp),
    )
    .await;
    (node, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_redis_for_a_second_and_a_half_catches_up_on_everything() {
    let redis = RedisServer::start();
    let (a, _link_a) = node_behind(&redis, "cut").await;
    let (b, link_b) = node_behind(&redis, "cut").await;
    let mut listener = b.raw().await;
    let me = listener.id.clone();
    listener
        .send(json!({"type":"join_room","ref":"j","payload":{"room_id":"r"}}))
        .await;
    listener.recv_type("ack").await;
    let mut sender = a.raw().await;
    // 600 room and 100 direct messages over about 3 s; b's link is down for 1.5 s of it.
    let sending = tokio::spawn(async move {
        for i in 0..600 {
            sender
                .send(json!({"type":"m","room":"r","payload":{"i":i}}))
                .await;
            if i % 6 == 0 {
                sender
                    .send(json!({"type":"d","to":me,"payload":{"i":i / 6}}))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sender
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    link_b.block();
    eventually("b sees Redis gone", || !healthy(&b)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    link_b.unblock();
    sending.await.unwrap();
    let (mut room, mut direct) = (Vec::new(), Vec::new());
    while room.len() < 600 || direct.len() < 100 {
        let m = listener.recv().await;
        match m["type"].as_str() {
            Some("m") => room.push(m["payload"]["i"].as_u64().unwrap()),
            Some("d") => direct.push(m["payload"]["i"].as_u64().unwrap()),
            _ => {}
        }
    }
    assert_eq!(
        room,
        (0..600).collect::<Vec<_>>(),
        "room: none lost, none twice, in order"
    );
    assert_eq!(
        direct,
        (0..100).collect::<Vec<_>>(),
        "direct: none lost, none twice, in order"
    );
    assert!(listener.nothing_pending().await, "nothing more");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_keys_live_while_it_may_be_resumed_and_no_longer() {
    let redis = RedisServer::start();
    let bp = backplane(&redis, "keys", 64 << 20);
    let prefix = format!("keys{}", std::process::id());
    let n = common::node_over(bp).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    let ttl_ms = |key: String| {
        let mut r = r.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut r)
                .await
                .unwrap()
        }
    };
    let keys = |id: &str| {
        [
            format!("{prefix}:session:{id}"),
            format!("{prefix}:stream:client:{id}"),
        ]
    };

    // Dropped: kept for a resume, for `session_ttl` (2 minutes), not a day.
    let dropped = n.raw().await;
    let id = dropped.id.clone();
    for key in keys(&id) {
        assert!(
            ttl_ms(key.clone()).await > 120_000,
            "{key} lives while connected"
        );
    }
    dropped.drop_connection();
    for key in keys(&id) {
        until(
            &format!("{key} waits 2 minutes at most"),
            || ttl_ms(key.clone()),
            |t| (0..=120_000).contains(&t),
        )
        .await;
    }
    // Said goodbye: nothing stays.
    let gone = n.raw().await;
    let id = gone.id.clone();
    gone.close().await;
    for key in keys(&id) {
        until(
            &format!("{key} deleted"),
            || ttl_ms(key.clone()),
            |t| t == -2,
        )
        .await;
    }
    let _ = &mut r;
    n.stop().await;
}

/// Waits (re-reading, bounded) until what `read` gives satisfies `done`.
async fn until<F, Fut>(what: &str, read: F, done: impl Fn(i64) -> bool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let value = read().await;
        if done(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what} (last {value})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_redis_refuses_for_good_is_dropped_and_counted_not_retried_forever() {
    let redis = RedisServer::start();
    let bp = backplane(&redis, "refused", 64 << 20);
    let appended = format!(
        "refused{}:node:{}:appended",
        std::process::id(),
        bp.node_id()
    );
    let n = common::node_over(bp.clone()).await;
    let mut c = n.raw().await;
    c.send(json!({"type":"join_room","ref":"j","payload":{"room_id":"r"}}))
        .await;
    c.recv_type("ack").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    // Someone overwrites the node's append counter: every append's script now fails.
    let _: () = redis::cmd("SET")
        .arg(&appended)
        .arg("oops")
        .query_async(&mut r)
        .await
        .unwrap();
    let before = bp.dropped();
    n.server.send_to_room("r", "lost", &json!({})).unwrap();
    eventually("the refused send counted", || bp.dropped() > before).await;
    // Repaired: the next send goes through (the writer did not stall on the first).
    let _: () = redis::cmd("DEL")
        .arg(&appended)
        .query_async(&mut r)
        .await
        .unwrap();
    n.server.send_to_room("r", "after", &json!({})).unwrap();
    assert_eq!(c.recv_type("after").await["type"], "after");
    n.stop().await;
}

/// A node whose link to Redis is down longer than `node_ttl` is taken for dead by its
/// peers, which remove its keys: its membership, its clients' identities, and the
/// connected life of its clients' session records (they wait `session_ttl` from then,
/// as if their clients had dropped). Once its link is back it learns it was removed
/// (from its heartbeat) and writes all three again, so its clients count in their
/// rooms, under their user, and can still resume on any node when they drop later.
/// Before, it wrote its membership again only after a write of its own had failed (a
/// node with nothing to write while it was cut stayed out of every room), and it never
/// wrote its clients' identities or their records' life again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taken_for_dead_while_cut_writes_its_membership_again() {
    let redis = RedisServer::start();
    let (a, _link_a) = node_behind(&redis, "reaped").await;
    let (b, link_b) = node_behind(&redis, "reaped").await;
    let mut listener = b.raw().await;
    let me: switchboard_server::ConnId = listener.id.parse().unwrap();
    listener
        .send(json!({"type":"auth","ref":"a","payload":{"token":"bob"}}))
        .await;
    listener.recv_type("ack").await;
    listener
        .send(json!({"type":"join_room","ref":"j","payload":{"room_id":"r"}}))
        .await;
    listener.recv_type("ack").await;
    let counted_on_a = || async { a.server.cluster_room_members("r").await.contains(&me) };
    let bob_on_a = || async {
        let p = a.server.room_presence("r").await;
        p.anonymous == 0 && p.users.len() == 1 && p.users[0].user == "bob"
    };
    switchboard_test::cluster::eventually("a counts b's client in the room", counted_on_a).await;
    switchboard_test::cluster::eventually("a sees bob in the room", bob_on_a).await;
    let record = format!("reaped{}:session:{me}", std::process::id());
    let connected_life = record_life_ms(&redis, &record).await;
    assert!(
        connected_life > 3_600_000,
        "a connected client's record lives long: {connected_life} ms"
    );
    link_b.block();
    // b's heartbeat stops: after `node_ttl` (3 s) a reaps it, keys and all.
    tokio::time::timeout(TIMEOUT * 2, async {
        while counted_on_a().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a reaps b");
    // (a stops counting b's clients once b's heartbeat is stale; the reap follows.)
    switchboard_test::cluster::eventually("the reap sets bob's record to wait session_ttl", || {
        let record = record.clone();
        let redis = &redis;
        async move { (1..=120_000).contains(&record_life_ms(redis, &record).await) }
    })
    .await;
    link_b.unblock();
    switchboard_test::cluster::eventually("a counts b's client again", counted_on_a).await;
    assert!(
        b.server.cluster_room_members("r").await.contains(&me),
        "and b does too"
    );
    switchboard_test::cluster::eventually("a sees bob again, not an anonymous client", bob_on_a)
        .await;
    switchboard_test::cluster::eventually("bob's record lives as a connected one again", || {
        let record = record.clone();
        let redis = &redis;
        async move { record_life_ms(redis, &record).await > 3_600_000 }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// How many milliseconds a Redis key has left to live (`PTTL`: -1 none, -2 no key).
async fn record_life_ms(redis: &RedisServer, key: &str) -> i64 {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// How many nodes the live set under `key` holds.
async fn live_nodes(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// A node with no clients is reaped too: its peer removes it from the live nodes. (The
/// reaper sets the dead node's sessions to expire first, in a pipeline of its own,
/// which is empty for a node without clients.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_without_clients_is_reaped() {
    let redis = RedisServer::start();
    let (a, _link_a) = node_behind(&redis, "reaped-empty").await;
    let (b, link_b) = node_behind(&redis, "reaped-empty").await;
    let key = format!("reaped-empty{}:nodes", std::process::id());
    let mut conn = common::connection(&redis).await;
    // Both started: their backplanes' starts are over (b's cut in the middle of its
    // start would fail its server), and both are among the live nodes.
    tokio::time::timeout(TIMEOUT, async {
        while !(a.server.is_running()
            && b.server.is_running()
            && live_nodes(&mut conn, &key).await == 2)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both nodes are live");
    link_b.block();
    // b's heartbeat stops: after `node_ttl` (3 s) a reaps it.
    tokio::time::timeout(TIMEOUT * 2, async {
        while live_nodes(&mut conn, &key).await != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a reaps b");
    a.stop().await;
    b.stop().await;
}
