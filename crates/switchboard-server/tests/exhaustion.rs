//! Descriptor and place exhaustion: clients that hold connections without using them
//! (stalled HTTP readers, connections that never authenticate) cannot lock others out.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use switchboard_server::ServerConfig;
use switchboard_test::{RawClient, TIMEOUT, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// An HTTP connection from `source` that asks for `requests` copies of `path` at once
/// and then never reads (a tiny receive buffer, so the server's writes stall soon).
async fn stalled_reader(s: &TestServer, source: IpAddr, path: &str, requests: usize) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut tcp = socket.connect(s.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(requests);
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Retries until a WebSocket from `source` gets its `connected` (a freed place may take
/// a moment to show); fails after the harness timeout.
async fn connects_from(s: &TestServer, source: IpAddr) -> RawClient {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Ok(mut c) = RawClient::try_connect_from(&s.url(), source).await {
            if let Ok(hello) = tokio::time::timeout(Duration::from_secs(1), c.recv()).await {
                assert_eq!(hello["type"], "connected");
                return c;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place freed for {source}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stalled_http_readers_are_capped_per_address_and_dropped_when_writes_stall() {
    let big =
        axum::Router::new().route("/big", axum::routing::get(|| async { "x".repeat(1 << 20) }));
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            max_http_connections_per_address: 4,
            http_write_timeout: Duration::from_millis(300),
            ..TestServer::config()
        })
        .routes(big)
    })
    .await;
    let attacker = ip("127.0.0.1");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stalled_reader(&s, attacker, "/big", 20).await);
    }
    // A fifth from the same address is dropped at once, unanswered.
    let mut fifth = stalled_reader(&s, attacker, "/health", 1).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(TIMEOUT, fifth.read(&mut buf))
        .await
        .expect("the server ends it")
        .unwrap_or(0);
    assert_eq!(n, 0, "dropped without an answer");
    // Another address is served meanwhile.
    let mut other = connects_from(&s, ip("127.0.0.2")).await;
    assert_eq!(
        other.roundtrip(json!({"type":"ping"})).await["type"],
        "pong"
    );
    // The stalled ones are cut when their writes stall past the timeout, though their
    // sockets stay open on our side: the address gets its places back.
    let mut again = connects_from(&s, attacker).await;
    assert_eq!(
        again.roundtrip(json!({"type":"ping"})).await["type"],
        "pong"
    );
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn connections_that_never_authenticate_hold_neither_the_connection_limit_nor_other_addresses_places()
 {
    let s = TestServer::with_config(ServerConfig {
        password: Some("secret123".into()),
        max_connections: 2,
        max_pending_auth_per_address: 3,
        ..TestServer::config()
    })
    .await;
    let attacker = ip("127.0.0.1");
    // Three connections that never authenticate: the address's share.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(
            RawClient::try_connect_from(&s.url(), attacker)
                .await
                .unwrap(),
        );
    }
    // A fourth from that address is refused with a code and a retry hint.
    let mut fourth = RawClient::try_connect_from(&s.url(), attacker)
        .await
        .unwrap();
    let error = fourth.recv().await;
    assert_eq!(error["payload"]["code"], "RATE_LIMITED", "{error}");
    assert_eq!(fourth.closed().await.code, 4006);
    // Real users from other addresses log in: the waiting ones do not count against
    // `max_connections` (2).
    let mut users = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        let mut user = RawClient::try_connect_from(&s.url(), ip(source))
            .await
            .unwrap();
        let ack = user
            .roundtrip(json!({"type":"auth","ref":"a","payload":{"password":"secret123"}}))
            .await;
        assert_eq!(ack["type"], "connected", "{ack}");
        users.push(user);
    }
    // And the limit still holds for authenticated connections.
    let mut third = RawClient::try_connect_from(&s.url(), ip("127.0.0.4"))
        .await
        .unwrap();
    third
        .send(json!({"type":"auth","ref":"a","payload":{"password":"secret123"}}))
        .await;
    let refused = third.recv().await;
    assert_eq!(refused["payload"]["code"], "SERVER_FULL", "{refused}");
    drop(waiting);
    s.stop().await;
}

#[tokio::test]
async fn floods_of_pings_or_empty_continuation_frames_are_closed_like_message_floods() {
    use switchboard_test::{WireClient, wire_frame};
    let s = TestServer::with_config(ServerConfig {
        password: Some("secret123".into()),
        auth_required: false,
        rate_limit: 100,
        rate_burst: 50,
        ..TestServer::config()
    })
    .await;
    let mut bystander = s.raw().await;
    // Frames the socket library never hands over as messages: an unfinished text
    // message followed by empty continuations, and pings.
    let mut continuations = wire_frame(false, 0, 0x1, b"x", true);
    for _ in 0..500 {
        continuations.extend(wire_frame(false, 0, 0x0, b"", true));
    }
    let pings: Vec<u8> = (0..500)
        .flat_map(|_| wire_frame(true, 0, 0x9, b"", true))
        .collect();
    for flood in [continuations, pings] {
        let mut c = WireClient::connect(s.addr).await;
        assert_eq!(c.recv().await["type"], "connected");
        c.send_raw(&flood).await;
        let (code, texts) = c.closed().await;
        assert_eq!(code, 4006, "{texts:?}");
        assert_eq!(texts.last().unwrap()["payload"]["code"], "RATE_LIMITED");
        assert_eq!(
            bystander.roundtrip(json!({"type":"ping"})).await["type"],
            "pong"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_frame_flood_before_authenticating_is_closed_too() {
    use switchboard_test::{WireClient, wire_frame};
    let s = TestServer::with_config(ServerConfig {
        password: Some("secret123".into()),
        rate_limit: 100,
        rate_burst: 50,
        ..TestServer::config()
    })
    .await;
    let mut flood = wire_frame(false, 0, 0x1, b"x", true);
    for _ in 0..500 {
        flood.extend(wire_frame(false, 0, 0x0, b"", true));
    }
    let mut c = WireClient::connect(s.addr).await;
    c.send_raw(&flood).await;
    let (code, _) = c.closed().await;
    assert_eq!(code, 4006);
    s.stop().await;
}
