//! Chaos across three nodes over a real `redis-server`: a client's connection cut 100
//! times at random moments, and the nodes' links to Redis cut under load, while room
//! and direct messages stream to it from clients on the nodes. The client comes back
//! through a load balancer without sticky sessions: each reconnect lands on the next
//! node. Every message arrives exactly once, in order: none lost, none duplicated,
//! none out of order. And a client that joins and leaves a room while cut ends in
//! exactly the rooms it chose, as its session and every node see it.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard_client::{
    Client, ClientConfig, ConnectionState, Envelope, ReconnectConfig, ResumeOutcome,
};
use switchboard_redis::{RedisBackplane, RedisConfig};
use switchboard_server::{Server, ServerConfig};
use switchboard_test::cluster::eventually;
use switchboard_test::{Proxy, RawClient, RedisServer, TIMEOUT, TestServer};
use tokio::sync::mpsc;

const ROOM_MESSAGES: u64 = 1_500;
const DIRECT_MESSAGES: u64 = 500;
const CUTS: usize = 100;

fn random_below(n: u64) -> u64 {
    switchboard_server::proto::random_u64() % n
}

/// A node whose link to Redis goes through a proxy the test can cut.
async fn node(redis: &RedisServer) -> (TestServer, Proxy) {
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
                relay_unhandled: true,
                rate_limit: 0,
                ..TestServer::config()
            })
            .backplane(backplane),
    )
    .await;
    (server, link)
}

#[derive(Default)]
struct Received {
    /// Room messages by sender (0: node 0's, 1: node 1's).
    room: [Vec<u64>; 2],
    direct: Vec<u64>,
}

impl Received {
    fn count(&self) -> u64 {
        (self.room[0].len() + self.room[1].len() + self.direct.len()) as u64
    }
}

/// The runs of `0..total` not in `got`, as `(first, last)` pairs.
fn missing(got: &[u64], total: u64) -> Vec<(u64, u64)> {
    let seen: std::collections::HashSet<u64> = got.iter().copied().collect();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for i in (0..total).filter(|i| !seen.contains(i)) {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

/// Sends `room` messages to the room and `direct` ones to `to`, interleaved, in a
/// steady stream.
async fn send(mut sender: RawClient, tag: u64, to: Option<String>, room: u64) -> RawClient {
    let direct_total = if to.is_some() { DIRECT_MESSAGES } else { 0 };
    let (mut r, mut d) = (0, 0);
    while r < room || d < direct_total {
        match &to {
            Some(to) if d < direct_total && (r >= room || random_below(4) == 0) => {
                sender
                    .send(json!({"type":"d","to":to,"payload":{"i":d}}))
                    .await;
                d += 1;
            }
            _ => {
                sender
                    .send(json!({"type":"r","room":"chaos","payload":{"i":r,"s":tag}}))
                    .await;
                r += 1;
            }
        }
        if (r + d) % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    sender.send(json!({"type":"ping","ref":"end"})).await;
    sender.recv_type("pong").await;
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_100_times_and_resumed_on_any_node_loses_and_duplicates_nothing() {
    let redis = RedisServer::start();
    let (n0, link0) = node(&redis).await;
    let (n1, link1) = node(&redis).await;
    let (n2, link2) = node(&redis).await;
    let proxy = Proxy::round_robin(vec![n2.addr, n0.addr, n1.addr]).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig::default().reconnect(ReconnectConfig {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            jitter: 0.5,
            ..ReconnectConfig::default()
        }),
    )
    .await
    .unwrap();
    let total = 2 * ROOM_MESSAGES + DIRECT_MESSAGES;
    let received = Arc::new(Mutex::new(Received::default()));
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let r = received.clone();
    client.on_message(move |env: &Envelope| {
        let Ok(p) = env.payload.deserialize::<serde_json::Value>() else {
            return;
        };
        let Some(i) = p["i"].as_u64() else { return };
        let mut r = r.lock().unwrap();
        match (env.kind.as_str(), p["s"].as_u64()) {
            ("r", Some(s)) if s < 2 => r.room[s as usize].push(i),
            ("d", _) => r.direct.push(i),
            _ => return,
        }
        if r.count() == total {
            done_tx.send(()).ok();
        }
    });
    let lost = Arc::new(Mutex::new(Vec::<ResumeOutcome>::new()));
    let l = lost.clone();
    client.on_resume(move |outcome| {
        if !outcome.fully_recovered() {
            l.lock().unwrap().push(outcome.clone());
        }
    });
    client.join("chaos").await.unwrap();
    let id = client.id();

    let mut s0 = n0.raw().await;
    let mut s1 = n1.raw().await;
    for s in [&mut s0, &mut s1] {
        s.send(json!({"type":"join_room","ref":"j","payload":{"room_id":"chaos-senders"}}))
            .await;
        s.recv_type("ack").await;
    }
    let sending = [
        tokio::spawn(send(s0, 0, Some(id.clone()), ROOM_MESSAGES)),
        tokio::spawn(send(s1, 1, None, ROOM_MESSAGES)),
    ];
    let links = [&link0, &link1, &link2];
    let mut state = client.watch_state();
    for cut in 0..CUTS {
        tokio::time::sleep(Duration::from_millis(5 + random_below(25))).await;
        if cut % 10 == 3 {
            // A node's link to Redis: its reader and writer reconnect and catch up.
            links[random_below(3) as usize].cut();
        }
        proxy.cut();
        tokio::time::timeout(TIMEOUT, state.wait_for(|s| *s != ConnectionState::Open))
            .await
            .ok();
        tokio::time::timeout(TIMEOUT, state.wait_for(|s| *s == ConnectionState::Open))
            .await
            .expect("reconnected")
            .unwrap();
    }
    // One longer outage of the receiving node's link, under load.
    link2.block();
    tokio::time::sleep(Duration::from_millis(300)).await;
    link2.unblock();
    for s in sending {
        s.await.unwrap();
    }

    if tokio::time::timeout(TIMEOUT * 6, done.recv())
        .await
        .is_err()
    {
        let mut redis_conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let session_rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("chaos:session:{id}:rooms"))
            .query_async(&mut redis_conn)
            .await
            .unwrap_or_default();
        let record: Vec<String> = redis::cmd("HGETALL")
            .arg(format!("chaos:session:{id}"))
            .query_async(&mut redis_conn)
            .await
            .unwrap_or_default();
        let r = received.lock().unwrap();
        let lost = lost.lock().unwrap();
        panic!(
            "got {}+{} of {ROOM_MESSAGES}x2 room and {} of {DIRECT_MESSAGES} direct messages; missing: room 0 {:?}, room 1 {:?}, direct {:?}; resumes that did not recover: {lost:?}; the client's rooms {:?}; its session's rooms in Redis {session_rooms:?}, its record {record:?}",
            r.room[0].len(),
            r.room[1].len(),
            r.direct.len(),
            missing(&r.room[0], ROOM_MESSAGES),
            missing(&r.room[1], ROOM_MESSAGES),
            missing(&r.direct, DIRECT_MESSAGES),
            client.rooms(),
        );
    }
    {
        let r = received.lock().unwrap();
        let room: Vec<u64> = (0..ROOM_MESSAGES).collect();
        let direct: Vec<u64> = (0..DIRECT_MESSAGES).collect();
        assert!(
            r.room[0] == room,
            "node 0's room messages lost, duplicated or out of order"
        );
        assert!(
            r.room[1] == room,
            "node 1's room messages lost, duplicated or out of order"
        );
        assert!(
            r.direct == direct,
            "direct messages lost, duplicated or out of order"
        );
    }
    assert!(proxy.accepted() > CUTS, "every cut was a reconnect");
    assert_eq!(client.id(), id, "one session throughout");
    let lost = lost.lock().unwrap().clone();
    assert!(lost.is_empty(), "every resume recovered: {lost:?}");
    client.close().await;
    for n in [n0, n1, n2] {
        n.stop().await;
    }
}

/// The rooms the session of `client` has in Redis (under the prefix `chaos`), sorted.
async fn session_rooms(redis: &RedisServer, client: &str) -> Vec<String> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut rooms: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("chaos:session:{client}:rooms"))
        .query_async(&mut conn)
        .await
        .unwrap();
    rooms.sort();
    rooms
}

/// A client joins and leaves a room 60 times, each time while its connection is cut
/// at a random moment (and now and then a node's link to Redis), each resume on the
/// next node. It ends in exactly the rooms it chose: in its session's record, in the
/// cluster's membership as every node reads it, and in what one more resume gives
/// back. (A close's leaves once reached the session: a resume in between restored it
/// in no room.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_and_leaving_while_cut_ends_in_the_rooms_it_chose() {
    let redis = RedisServer::start();
    let (n0, link0) = node(&redis).await;
    let (n1, link1) = node(&redis).await;
    let (n2, link2) = node(&redis).await;
    let proxy = Proxy::round_robin(vec![n2.addr, n0.addr, n1.addr]).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig::default().reconnect(ReconnectConfig {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            jitter: 0.5,
            ..ReconnectConfig::default()
        }),
    )
    .await
    .unwrap();
    let (outcomes, mut resumed) = mpsc::unbounded_channel::<ResumeOutcome>();
    client.on_resume(move |o| {
        let _ = outcomes.send(o.clone());
    });
    client.join("stay").await.unwrap();
    let id = client.id();
    let (opens, mut opened) = mpsc::unbounded_channel::<()>();
    client.on_open(move |_| {
        let _ = opens.send(());
    });
    let links = [&link0, &link1, &link2];
    let mut joined = false;
    for step in 0..60 {
        let change = async {
            if joined {
                client.leave("flip").await
            } else {
                client.join("flip").await
            }
        };
        let cut = async {
            tokio::time::sleep(Duration::from_micros(random_below(10_000))).await;
            if step % 10 == 3 {
                links[random_below(3) as usize].cut();
            }
            proxy.cut();
        };
        // A request cut off is sent again after the resume and answered once.
        let (changed, ()) = tokio::join!(change, cut);
        if let Err(e) = changed {
            panic!(
                "step {step}: {e}; the connection ended: {:?}",
                client.close_info()
            );
        }
        joined = !joined;
        // The resume after the cut done (the cut may be noticed after the answer): the
        // next cut lands on the new connection, not on a reconnect under way.
        tokio::time::timeout(TIMEOUT, opened.recv())
            .await
            .expect("reconnected");
    }
    let mut expected = vec!["stay".to_owned()];
    if joined {
        expected.insert(0, "flip".to_owned());
    }
    assert_eq!(client.rooms(), expected);
    assert_eq!(client.id(), id, "one session throughout");
    let me: switchboard_server::ConnId = id.parse().unwrap();
    eventually("the session's record has the client's rooms", || async {
        session_rooms(&redis, &id).await == expected
    })
    .await;
    for n in [&n0, &n1, &n2] {
        eventually("every node counts the client where it is", || async {
            let flip = n.server.cluster_room_members("flip").await.contains(&me);
            let stay = n.server.cluster_room_members("stay").await.contains(&me);
            flip == joined && stay
        })
        .await;
    }
    while resumed.try_recv().is_ok() {}
    proxy.cut();
    let outcome = tokio::time::timeout(TIMEOUT, resumed.recv())
        .await
        .expect("resumed once more")
        .unwrap();
    assert!(outcome.fully_recovered(), "{outcome:?}");
    let rooms: Vec<&String> = outcome.rooms.keys().collect();
    assert_eq!(rooms, expected.iter().collect::<Vec<_>>());
    client.close().await;
    for n in [n0, n1, n2] {
        n.stop().await;
    }
}
