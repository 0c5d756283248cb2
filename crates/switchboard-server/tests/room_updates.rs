//! `room_update`: a room's member count, sent at once for a lone change and coalesced
//! during a burst (a join storm would otherwise send one count per join to every
//! member).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_server::ServerConfig;
use switchboard_test::{RawClient, TestServer};

async fn server(interval: Duration) -> TestServer {
    TestServer::with_config(ServerConfig {
        room_updates: true,
        room_update_interval: interval,
        ..TestServer::config()
    })
    .await
}

async fn join(c: &mut RawClient, room: &str) {
    c.send(json!({"type":"join_room","ref":"j","payload":{"room_id": room}}))
        .await;
    let r = c.recv_type("ack").await;
    assert_eq!(r["payload"]["status"], "ok", "{r}");
}

#[tokio::test]
async fn a_join_storm_sends_a_few_counts_and_ends_on_the_true_one() {
    let s = server(Duration::from_millis(300)).await;
    let mut watcher = s.raw().await;
    join(&mut watcher, "hall").await;
    let mut others = Vec::new();
    for _ in 0..20 {
        let mut c = s.raw().await;
        join(&mut c, "hall").await;
        others.push(c);
    }
    // Counts until the true one: 21 members.
    let mut counts = Vec::new();
    while counts.last() != Some(&21) {
        let update = watcher.recv_type("room_update").await;
        assert_eq!(update["payload"]["room_id"], "hall");
        counts.push(update["payload"]["users"].as_u64().unwrap());
    }
    assert!(
        counts.len() <= 10,
        "20 joins in a burst, {} counts: {counts:?}",
        counts.len()
    );
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    // The count at the burst's end reaches every member, the last joiner too.
    let last = others.last_mut().unwrap();
    assert_eq!(last.recv_type("room_update").await["payload"]["users"], 21);
}

#[tokio::test]
async fn a_lone_change_is_counted_at_once_and_zero_counts_every_change() {
    for interval in [Duration::from_secs(3600), Duration::ZERO] {
        let s = server(interval).await;
        // The first member of a room has nobody to tell: no count, no interval started.
        let mut a = s.raw().await;
        join(&mut a, "r").await;
        let mut b = s.raw().await;
        join(&mut b, "r").await;
        assert_eq!(a.recv_type("room_update").await["payload"]["users"], 2);
        // b's join started the room's interval (an hour, for the first server): c's
        // join, inside it, is counted at the interval's end; with none, at once.
        let mut c = s.raw().await;
        join(&mut c, "r").await;
        if interval.is_zero() {
            assert_eq!(a.recv_type("room_update").await["payload"]["users"], 3);
            assert_eq!(b.recv_type("room_update").await["payload"]["users"], 3);
        } else {
            // c's arrival itself is told at once; its count waits.
            assert_eq!(b.recv_type("user_joined").await["payload"]["user_id"], c.id);
        }
        // Another room's change is its own: counted at once.
        join(&mut c, "quiet").await;
        join(&mut a, "quiet").await;
        assert_eq!(c.recv_type("room_update").await["payload"]["users"], 2);
        assert!(
            b.nothing_pending().await,
            "{interval:?}: nothing more for b"
        );
    }
}
