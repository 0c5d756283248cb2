//! Chaos: a client's connection cut 100 times at random moments while room and direct
//! messages stream to it. Every message arrives exactly once, in order: none lost, none
//! duplicated, none out of order.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard_client::{Client, ClientConfig, Envelope, ReconnectConfig, ResumeOutcome};
use switchboard_server::ServerConfig;
use switchboard_test::{Proxy, RawClient, TIMEOUT, TestServer};
use tokio::sync::mpsc;

const ROOM_MESSAGES: u64 = 3_000;
const DIRECT_MESSAGES: u64 = 1_000;
const CUTS: usize = 100;

/// A number in `0..n` (no cryptographic quality needed).
fn random_below(n: u64) -> u64 {
    switchboard_proto::random_u64() % n
}

#[derive(Default)]
struct Received {
    room: Vec<u64>,
    direct: Vec<u64>,
}

#[tokio::test]
async fn a_hundred_cuts_under_load_lose_and_duplicate_nothing() {
    hundred_cuts(false).await;
}

/// The same over MessagePack: the resumed replay and the resent queue take the same path
/// in either encoding.
#[tokio::test]
async fn a_hundred_cuts_in_messagepack_lose_and_duplicate_nothing() {
    hundred_cuts(true).await;
}

async fn hundred_cuts(msgpack: bool) {
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            // The sender sends faster than a client normally may.
            rate_limit: 0,
            ..TestServer::config()
        })
    })
    .await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig::default()
            .msgpack(msgpack)
            .reconnect(ReconnectConfig {
                initial_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(50),
                jitter: 0.5,
                ..ReconnectConfig::default()
            }),
    )
    .await
    .unwrap();
    assert_eq!(client.session().msgpack, msgpack);
    let received = Arc::new(Mutex::new(Received::default()));
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let r = received.clone();
    client.on_message(move |env: &Envelope| {
        let Some(i) = env
            .payload
            .deserialize::<serde_json::Value>()
            .ok()
            .and_then(|p| p["i"].as_u64())
        else {
            return;
        };
        let mut r = r.lock().unwrap();
        match env.kind.as_str() {
            "r" => r.room.push(i),
            "d" => r.direct.push(i),
            _ => return,
        }
        if r.room.len() as u64 == ROOM_MESSAGES && r.direct.len() as u64 == DIRECT_MESSAGES {
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

    // The sender talks to the server directly; only the receiver's link is cut.
    let mut sender = s.raw().await;
    let to = id.clone();
    let sending = tokio::spawn(async move {
        let (mut room, mut direct) = (0, 0);
        while room < ROOM_MESSAGES || direct < DIRECT_MESSAGES {
            if direct < DIRECT_MESSAGES && (room >= ROOM_MESSAGES || random_below(4) == 0) {
                sender
                    .send(json!({"type":"d","to":to,"payload":{"i":direct}}))
                    .await;
                direct += 1;
            } else {
                sender
                    .send(json!({"type":"r","room":"chaos","payload":{"i":room}}))
                    .await;
                room += 1;
            }
            if (room + direct) % 8 == 0 {
                // A steady stream, not one burst: the cuts land all along it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sender
    });
    let mut reconnects = client.watch_state();
    for _ in 0..CUTS {
        tokio::time::sleep(Duration::from_millis(5 + random_below(25))).await;
        proxy.cut();
        // The next cut lands on the new connection, once it is up.
        tokio::time::timeout(
            TIMEOUT,
            reconnects.wait_for(|s| *s != switchboard_client::ConnectionState::Open),
        )
        .await
        .ok();
        tokio::time::timeout(
            TIMEOUT,
            reconnects.wait_for(|s| *s == switchboard_client::ConnectionState::Open),
        )
        .await
        .expect("reconnected")
        .unwrap();
    }
    let mut sender: RawClient = sending.await.unwrap();
    sender.send(json!({"type":"ping","ref":"end"})).await;
    sender.recv_type("pong").await;

    tokio::time::timeout(TIMEOUT * 3, done.recv())
        .await
        .unwrap_or_else(|_| {
            let r = received.lock().unwrap();
            panic!(
                "got {} of {ROOM_MESSAGES} room and {} of {DIRECT_MESSAGES} direct messages",
                r.room.len(),
                r.direct.len()
            )
        });
    {
        let r = received.lock().unwrap();
        let expected_room: Vec<u64> = (0..ROOM_MESSAGES).collect();
        let expected_direct: Vec<u64> = (0..DIRECT_MESSAGES).collect();
        assert!(
            r.room == expected_room,
            "room messages lost, duplicated or out of order"
        );
        assert!(
            r.direct == expected_direct,
            "direct messages lost, duplicated or out of order"
        );
    }
    assert!(proxy.accepted() > CUTS, "every cut was a reconnect");
    assert_eq!(client.id(), id, "one session throughout");
    let lost = lost.lock().unwrap().clone();
    assert!(lost.is_empty(), "every resume recovered: {lost:?}");
    client.close().await;
    s.stop().await;
}
