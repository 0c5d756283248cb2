//! The client surviving the network: sockets cut under it (through a proxy), servers
//! shut down and started again on the same address, in the middle of traffic.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_client::{
    Client, ClientConfig, ClientError, ConnectError, ConnectionState, ReconnectConfig,
    RequestError, SendError,
};
use switchboard_server::{Conn, Json, ServerConfig};
use switchboard_test::{Proxy, TIMEOUT, TestServer};
use tokio::sync::mpsc;

fn hub_config() -> ServerConfig {
    ServerConfig {
        relay_unhandled: true,
        ..TestServer::config()
    }
}

async fn hub() -> TestServer {
    TestServer::with(|b| b.config(hub_config())).await
}

async fn hub_on(addr: SocketAddr) -> TestServer {
    TestServer::start_on(
        addr,
        switchboard_server::Server::builder().config(hub_config()),
    )
    .await
}

/// Fast, deterministic reconnects for tests.
fn quick() -> ReconnectConfig {
    ReconnectConfig {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        jitter: 0.0,
        ..ReconnectConfig::default()
    }
}

fn states(client: &Client) -> mpsc::UnboundedReceiver<ConnectionState> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.on_state(move |s| {
        tx.send(s).ok();
    });
    rx
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("an event in time")
        .expect("the channel is open")
}

async fn wait_for(rx: &mut mpsc::UnboundedReceiver<ConnectionState>, state: ConnectionState) {
    while next(rx).await != state {}
}

#[tokio::test]
async fn a_cut_socket_reconnects_rejoins_and_delivers_the_offline_queue_once_in_order() {
    let s = hub().await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig::default().reconnect(quick()),
    )
    .await
    .unwrap();
    let mut changes = states(&client);
    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    client.on_open(move |session| {
        opened_tx.send(session.client_id.clone()).ok();
    });
    client.join("room").await.unwrap();
    let first_id = client.id();
    let mut watcher = s.raw().await;
    watcher
        .send(json!({"type":"join_room","payload":{"room_id":"room"}}))
        .await;
    watcher.recv_type("join_room_response").await;

    // Traffic before the cut arrives.
    client
        .send_to("room", "n", &json!({"i": -1}))
        .await
        .unwrap();
    assert_eq!(watcher.recv_type("n").await["payload"]["i"], -1);

    proxy.block();
    assert_eq!(next(&mut changes).await, ConnectionState::Reconnecting);
    assert!(client.is_connecting());
    // Sent while offline: queued, in order.
    for i in 0..100 {
        client.send_to("room", "n", &json!({"i": i})).await.unwrap();
    }
    assert!(client.is_in_room("room"), "the client remembers its rooms");
    proxy.unblock();
    assert_eq!(next(&mut changes).await, ConnectionState::Open);
    let new_id = next(&mut opened).await;
    assert_eq!(new_id, first_id, "the session resumed: the same id");
    assert_eq!(client.id(), new_id);

    // The watcher sees the old connection leave, the new one join (rejoined before the
    // queue was sent), then the 100 messages exactly once, in order.
    let mut got = Vec::new();
    let mut joined_before_messages = false;
    while got.len() < 100 {
        let m = watcher.recv().await;
        match m["type"].as_str().unwrap() {
            "user_joined" => {
                assert_eq!(m["payload"]["user_id"], new_id.as_str());
                joined_before_messages = got.is_empty();
            }
            "n" => {
                assert_eq!(m["from"], new_id.as_str());
                got.push(m["payload"]["i"].as_i64().unwrap());
            }
            _ => {}
        }
    }
    assert!(
        joined_before_messages,
        "rooms are rejoined before the queue is sent"
    );
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(watcher.nothing_pending().await, "nothing twice");
    let members = s.server.room_members("room");
    assert_eq!(members.len(), 2);
    assert!(members.iter().any(|m| m.to_string() == new_id));
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_server_restart_mid_traffic_is_survived() {
    let s = hub().await;
    let addr = s.addr;
    let client = Client::connect_with(&s.url(), ClientConfig::default().reconnect(quick()))
        .await
        .unwrap();
    let mut changes = states(&client);
    client.join("lobby").await.unwrap();
    let (closes_tx, mut closes) = mpsc::unbounded_channel();
    client.on_close(move |info| {
        closes_tx.send(info.code).ok();
    });
    // The server goes away (a graceful restart: 1001, reconnect after backoff).
    s.stop().await;
    assert_eq!(next(&mut closes).await, 1001);
    wait_for(&mut changes, ConnectionState::Reconnecting).await;
    client
        .send_to("lobby", "hello", &json!({"n": 1}))
        .await
        .unwrap();
    // It comes back on the same address.
    let s = hub_on(addr).await;
    wait_for(&mut changes, ConnectionState::Open).await;
    let mut other = s.raw().await;
    // The client rejoined; the message sent while the server was down was delivered
    // (before `other` joined, so `other` does not see it); new traffic flows.
    let r = other
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"lobby"}}))
        .await;
    assert_eq!(
        r["payload"]["result"]["members"], 2,
        "the client is back in the room"
    );
    client
        .send_to("lobby", "hello", &json!({"n": 2}))
        .await
        .unwrap();
    assert_eq!(other.recv_type("hello").await["payload"]["n"], 2);
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn max_attempts_are_honoured_and_the_backoff_grows() {
    let s = hub().await;
    let proxy = Proxy::start(s.addr).await;
    let config = ClientConfig::default().reconnect(ReconnectConfig {
        initial_delay: Duration::from_millis(10),
        multiplier: 2.0,
        max_delay: Duration::from_secs(1),
        jitter: 0.0,
        max_attempts: Some(4),
        ..ReconnectConfig::default()
    });
    let client = Client::connect_with(&proxy.url("/ws"), config)
        .await
        .unwrap();
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    client.on_reconnect_attempt(move |a| {
        attempts_tx.send(*a).ok();
    });
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    client.on_error(move |e| {
        errors_tx.send(e.clone()).ok();
    });
    proxy.block();
    let info = client.closed().await;
    assert_eq!(info.code, 1006);
    let mut seen = Vec::new();
    while let Ok(a) = attempts.try_recv() {
        seen.push((a.attempt, a.delay.as_millis()));
    }
    assert_eq!(seen, vec![(1, 10), (2, 20), (3, 40), (4, 80)]);
    let mut failed = 0;
    let gave_up = loop {
        match next(&mut errors).await {
            ClientError::Connection { attempt, .. } => {
                failed += 1;
                assert_eq!(attempt, failed);
            }
            ClientError::GaveUp { attempts } => break attempts,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((failed, gave_up), (4, 4));
    assert_eq!(client.state(), ConnectionState::Closed);
    assert_eq!(
        client.send("x", &json!({})).await,
        Err(SendError::NotConnected)
    );
    s.stop().await;
}

#[tokio::test]
async fn the_attempt_counter_resets_after_a_successful_reconnect() {
    let s = hub().await;
    let proxy = Proxy::start(s.addr).await;
    let config = ClientConfig::default().reconnect(ReconnectConfig {
        max_attempts: Some(2),
        ..quick()
    });
    let client = Client::connect_with(&proxy.url("/ws"), config)
        .await
        .unwrap();
    let mut changes = states(&client);
    // Three drops in a row, each recovered at the first attempt: never more than 2
    // attempts in a row, so the client never gives up.
    for _ in 0..3 {
        proxy.cut();
        wait_for(&mut changes, ConnectionState::Reconnecting).await;
        wait_for(&mut changes, ConnectionState::Open).await;
    }
    assert_eq!(proxy.accepted(), 4);
    assert!(client.is_connected());
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_kick_is_not_reconnected() {
    let s = TestServer::with(|b| {
        b.config(hub_config()).on(
            "kick_me",
            |conn: Conn| async move { conn.disconnect("bye") },
        )
    })
    .await;
    let client = Client::connect_with(&s.url(), ClientConfig::default().reconnect(quick()))
        .await
        .unwrap();
    let mut changes = states(&client);
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    client.on_reconnect_attempt(move |a| {
        attempts_tx.send(*a).ok();
    });
    client.send("kick_me", &json!({})).await.unwrap();
    let info = client.closed().await;
    assert_eq!(info.code, 4004);
    assert_eq!(next(&mut changes).await, ConnectionState::Closed);
    assert!(attempts.try_recv().is_err(), "no attempt after a kick");
    s.stop().await;
}

#[tokio::test]
async fn a_changed_password_stops_the_reconnect() {
    let s = TestServer::with_config(ServerConfig {
        password: Some("old-password".into()),
        ..hub_config()
    })
    .await;
    let addr = s.addr;
    let client = Client::connect_with(
        &s.url(),
        ClientConfig::default()
            .password("old-password")
            .reconnect(quick()),
    )
    .await
    .unwrap();
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    client.on_error(move |e| {
        errors_tx.send(e.clone()).ok();
    });
    s.stop().await;
    let s = TestServer::start_on(
        addr,
        switchboard_server::Server::builder().config(ServerConfig {
            password: Some("new-password".into()),
            ..hub_config()
        }),
    )
    .await;
    let info = client.closed().await;
    assert_eq!(info.reconnect, switchboard_client::Reconnect::Never);
    loop {
        if let ClientError::Connection {
            code: Some(code), ..
        } = next(&mut errors).await
        {
            assert_eq!(code, "AUTH_FAILED");
            break;
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn reconnecting_authenticates_again() {
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            password: Some("pw-123456".into()),
            ..hub_config()
        })
        .on("whoami", |who: switchboard_server::Identity| async move {
            Json(who.id)
        })
    })
    .await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig {
            auth: Some(json!({"password": "pw-123456", "username": "dora"})),
            ..ClientConfig::default().reconnect(quick())
        },
    )
    .await
    .unwrap();
    let mut changes = states(&client);
    proxy.cut();
    wait_for(&mut changes, ConnectionState::Open).await;
    let who: String = client.request("whoami", &json!({}), TIMEOUT).await.unwrap();
    assert_eq!(who, "dora");
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn without_auto_reconnect_a_drop_ends_the_client() {
    let s = hub().await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig::default().reconnect(ReconnectConfig::disabled()),
    )
    .await
    .unwrap();
    proxy.cut();
    let info = client.closed().await;
    assert_eq!(info.code, 1006);
    assert_eq!(
        client.send("x", &json!({})).await,
        Err(SendError::NotConnected)
    );
    assert_eq!(
        client.request::<Value, _>("x", &json!({}), TIMEOUT).await,
        Err(RequestError::NotConnected)
    );
    assert_eq!(proxy.accepted(), 1, "no reconnect");
    s.stop().await;
}

#[tokio::test]
async fn the_offline_queue_is_bounded_and_keeps_what_it_has() {
    let s = hub().await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig {
            offline_queue: 5,
            ..ClientConfig::default().reconnect(quick())
        },
    )
    .await
    .unwrap();
    let mut changes = states(&client);
    client.join("q").await.unwrap();
    let mut watcher = s.raw().await;
    watcher
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"q"}}))
        .await;
    proxy.block();
    wait_for(&mut changes, ConnectionState::Reconnecting).await;
    for i in 0..5 {
        client.send_to("q", "m", &json!({"i": i})).await.unwrap();
    }
    assert_eq!(
        client.send_to("q", "m", &json!({"i": 5})).await,
        Err(SendError::QueueFull(5))
    );
    proxy.unblock();
    wait_for(&mut changes, ConnectionState::Open).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = watcher.recv().await;
        if m["type"] == "m" {
            got.push(m["payload"]["i"].as_i64().unwrap());
        }
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    assert!(watcher.nothing_pending().await);
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_at_a_drop_is_sent_again_and_answered_once() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let (g, r) = (gate.clone(), runs.clone());
    let s = TestServer::with(move |b| {
        b.config(hub_config()).on("slow", move || {
            let (g, r, started) = (g.clone(), r.clone(), started_tx.clone());
            async move {
                let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                started.send(()).ok();
                g.notified().await;
                Json(n)
            }
        })
    })
    .await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig::default().reconnect(quick()),
    )
    .await
    .unwrap();
    let mut changes = states(&client);
    let (resumed_tx, mut resumed) = mpsc::unbounded_channel();
    client.on_resume(move |outcome| {
        resumed_tx.send(outcome.clone()).ok();
    });
    let c = client.clone();
    let in_flight =
        tokio::spawn(async move { c.request::<usize, _>("slow", &json!({}), TIMEOUT).await });
    next(&mut started).await;
    proxy.block();
    wait_for(&mut changes, ConnectionState::Reconnecting).await;
    proxy.unblock();
    assert!(next(&mut resumed).await.resumed);
    // Handled on the old connection, answered on the new one: once.
    gate.notify_waiters();
    assert_eq!(in_flight.await.unwrap(), Ok(1));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn without_retry_requests_sent_before_a_drop_fail_typed_and_queued_ones_are_answered() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let g = gate.clone();
    let s = TestServer::with(move |b| {
        let g = g.clone();
        b.config(hub_config())
            .on("slow", move || {
                let (g, started) = (g.clone(), started_tx.clone());
                async move {
                    started.send(()).ok();
                    g.notified().await;
                    Json(1)
                }
            })
            .on("fast", || async { Json(2) })
    })
    .await;
    let proxy = Proxy::start(s.addr).await;
    let client = Client::connect_with(
        &proxy.url("/ws"),
        ClientConfig {
            retry_in_flight: false,
            ..ClientConfig::default().reconnect(quick())
        },
    )
    .await
    .unwrap();
    let mut changes = states(&client);
    let c = client.clone();
    let in_flight =
        tokio::spawn(async move { c.request::<i64, _>("slow", &json!({}), TIMEOUT).await });
    // The server is running `slow`: its frame went out.
    next(&mut started).await;
    proxy.block();
    assert_eq!(in_flight.await.unwrap(), Err(RequestError::ConnectionLost));
    wait_for(&mut changes, ConnectionState::Reconnecting).await;
    let c = client.clone();
    let queued =
        tokio::spawn(async move { c.request::<i64, _>("fast", &json!({}), TIMEOUT).await });
    proxy.unblock();
    assert_eq!(queued.await.unwrap(), Ok(2));
    gate.notify_waiters();
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn connect_fails_with_a_typed_error_and_message_errors_are_reported() {
    // Nothing listens here.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", free.local_addr().unwrap());
    drop(free);
    assert!(matches!(
        Client::connect(&url).await,
        Err(ConnectError::Unreachable(_))
    ));
    let s = hub().await;
    let client = Client::connect(&s.url()).await.unwrap();
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    client.on_error(move |e| {
        errors_tx.send(e.clone()).ok();
    });
    client.send("no_such_type", &json!({})).await.unwrap();
    match next(&mut errors).await {
        ClientError::Message { code, .. } => assert_eq!(code, "UNKNOWN_TYPE"),
        other => panic!("{other:?}"),
    }
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn room_handlers_and_clearing() {
    let s = hub().await;
    let client = Client::connect(&s.url()).await.unwrap();
    client.join("a").await.unwrap();
    client.join("b").await.unwrap();
    let mut peer = s.raw().await;
    let mut joins = client.messages(8);
    for room in ["a", "b"] {
        peer.roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id": room}}))
            .await;
        joins.next_of("user_joined").await.unwrap();
    }
    drop(joins);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (ta, tb, tt) = (tx.clone(), tx.clone(), tx.clone());
    client.on_room("a", move |m| {
        ta.send(format!("a:{}", m.kind)).ok();
    });
    let in_b = client.on_room_type("b", "chat", move |m| {
        tb.send(format!("b:{}", m.kind)).ok();
    });
    client.on("chat", move |m| {
        tt.send(format!("any:{}", m.room.as_deref().unwrap_or("-")))
            .ok();
    });
    peer.send(json!({"type":"chat","room":"a","payload":{}}))
        .await;
    assert_eq!(next(&mut rx).await, "any:a");
    assert_eq!(next(&mut rx).await, "a:chat");
    peer.send(json!({"type":"ping_b","room":"b","payload":{}}))
        .await;
    peer.send(json!({"type":"chat","room":"b","payload":{}}))
        .await;
    assert_eq!(next(&mut rx).await, "any:b");
    assert_eq!(next(&mut rx).await, "b:chat", "only chat in b");
    assert!(in_b.remove());
    client.clear_room_handlers(Some("a"));
    peer.send(json!({"type":"chat","room":"a","payload":{}}))
        .await;
    assert_eq!(next(&mut rx).await, "any:a");
    client.clear_handlers();
    peer.send(json!({"type":"chat","room":"b","payload":{}}))
        .await;
    // Nothing more: prove it with a message we do wait for.
    let mut stream = client.messages(8);
    peer.send(json!({"type":"done","room":"a","payload":{}}))
        .await;
    stream.next_of("done").await.unwrap();
    assert!(rx.try_recv().is_err());
    client.close().await;
    s.stop().await;
}
