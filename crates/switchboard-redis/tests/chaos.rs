//! Chaos across three nodes over a real `redis-server`: a client's connection cut 100
//! times at random moments, and the nodes' links to Redis cut under load, while room
//! and direct messages stream to it from clients on the nodes. The client comes back
//! through a load balancer without sticky sessions: each reconnect lands on the next
//! node. Every message arrives exactly once, in order: none lost, none duplicated,
//! none out of order.
#![allow(clippy::unwrap_used)]

mod common;

use common::{LinkedCluster, linked_cluster, random_below};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard_client::{ConnectionState, Envelope, ResumeOutcome};
use switchboard_test::cluster::{assert_each_once_in_order, sequence_faults};
use switchboard_test::{RawClient, RedisServer, TIMEOUT};
use tokio::sync::mpsc;

const ROOM_MESSAGES: u64 = 1_500;
const DIRECT_MESSAGES: u64 = 500;
const CUTS: usize = 100;

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
    let LinkedCluster {
        nodes: [n0, n1, n2],
        links: [link0, link1, link2],
        proxy,
        client,
    } = linked_cluster(&redis).await;
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
            "not everything came: room 0 {:?}, room 1 {:?}, direct {:?}; resumes that did not recover: {lost:?}; the client's rooms {:?}; its session's rooms in Redis {session_rooms:?}, its record {record:?}",
            sequence_faults(&r.room[0], ROOM_MESSAGES),
            sequence_faults(&r.room[1], ROOM_MESSAGES),
            sequence_faults(&r.direct, DIRECT_MESSAGES),
            client.rooms(),
        );
    }
    {
        let r = received.lock().unwrap();
        assert_each_once_in_order("node 0's room messages", &r.room[0], ROOM_MESSAGES);
        assert_each_once_in_order("node 1's room messages", &r.room[1], ROOM_MESSAGES);
        assert_each_once_in_order("direct messages", &r.direct, DIRECT_MESSAGES);
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
