//! Slow readers and big replies: a client that stops reading is cut off (or its new
//! messages dropped, by policy) while the server's memory stays bounded; one that
//! pauses gets everything when it reads again; a reply bigger than the queue's byte
//! limit or the socket's buffers arrives whole.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_server::{ConnId, Json, ServerConfig, SlowConsumerPolicy};
use switchboard_test::{TIMEOUT, TestServer, WireClient};

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected_and_memory_stays_bounded() {
    let s = TestServer::with_config(ServerConfig {
        outbound_queue: 16,
        ..TestServer::config()
    })
    .await;
    let mut slow = s.raw().await;
    let mut fast = s.raw().await;
    let slow_id: ConnId = slow.id.parse().unwrap();
    // Queue far more than the bound without yielding: the writer cannot drain meanwhile.
    let mut reached = 0;
    for i in 0..1000 {
        reached += s
            .server
            .send_to(slow_id, "tick", &json!({"i": i}))
            .map_or(0, |()| 1);
    }
    assert_eq!(reached, 16, "exactly the queue's capacity was accepted");
    let closed = slow.closed().await;
    assert_eq!(closed.code, 4007);
    assert!(closed.reason.starts_with("SLOW_CONSUMER"));
    // Others are unaffected.
    assert!(fast.nothing_pending().await);
    s.stop().await;
}

#[tokio::test]
async fn drop_new_policy_keeps_the_connection() {
    let s = TestServer::with_config(ServerConfig {
        outbound_queue: 16,
        slow_consumer: SlowConsumerPolicy::DropNew,
        ..TestServer::config()
    })
    .await;
    let mut c = s.raw().await;
    let id: ConnId = c.id.parse().unwrap();
    let results: Vec<bool> = (0..100)
        .map(|i| s.server.send_to(id, "tick", &json!({"i": i})).is_ok())
        .collect();
    assert_eq!(results.iter().filter(|ok| **ok).count(), 16);
    for i in 0..16 {
        assert_eq!(
            c.recv().await["payload"]["i"],
            i,
            "the first 16 arrive in order"
        );
    }
    assert!(c.nothing_pending().await, "the connection stays open");
    s.stop().await;
}

#[tokio::test]
async fn a_reply_bigger_than_the_outbound_byte_limit_still_arrives() {
    // Found by Autobahn 9.1.5: an 8 MB echo was cut off as a slow consumer.
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            outbound_queue_bytes: 1024,
            ..TestServer::config()
        })
        .on("big", || async { Json("z".repeat(10_000)) })
    })
    .await;
    let mut c = s.raw().await;
    let r = c.roundtrip(json!({"type":"big","ref":"b"})).await;
    assert_eq!(r["payload"]["result"].as_str().unwrap().len(), 10_000);
    assert!(c.nothing_pending().await);
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_pauses_reading_gets_every_message_when_it_reads_again() {
    // More than the socket buffers on both sides hold, less than the outbound queue's
    // bound: the server keeps what the socket cannot take, and delivers all of it (the
    // last frames too, which wait for the socket to drain) once the client reads.
    let s = TestServer::with_config(ServerConfig {
        outbound_queue: 100_000,
        outbound_queue_bytes: 256 << 20,
        ..TestServer::config()
    })
    .await;
    let mut paused = WireClient::connect(s.addr).await;
    assert_eq!(paused.recv().await["type"], "connected");
    let blob = "z".repeat(4000);
    let n = 8000; // about 32 MB
    for i in 0..n {
        s.server
            .broadcast("burst", &json!({"i": i, "blob": blob}))
            .unwrap();
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for i in 0..n {
        let m = tokio::time::timeout(TIMEOUT, paused.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} never came"));
        assert_eq!(m["type"], "burst");
        assert_eq!(m["payload"]["i"], i);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_reply_bigger_than_the_socket_buffers_arrives_whole() {
    // The socket takes part of it; the rest waits in the socket library's buffer and
    // must be flushed when the socket drains, though nothing else is queued then.
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            max_message_size: 32 << 20,
            ..TestServer::config()
        })
        .on("big", || async {
            Json(json!({"blob": "b".repeat(12 << 20)}))
        })
    })
    .await;
    let mut c = s.raw().await;
    let reply = c.roundtrip(json!({"type": "big"})).await;
    assert_eq!(reply["type"], "big_response");
    assert_eq!(
        reply["payload"]["blob"].as_str().map(str::len),
        Some(12 << 20)
    );
    s.stop().await;
}
