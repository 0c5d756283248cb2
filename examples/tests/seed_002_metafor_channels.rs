//! Seed 002, Metafor Channels, with switchboard's Rust client in Metafor's place:
//! creating with auto-reconnect settings, connecting with `on_open` seen, the state
//! properties, JSON / text / binary sends, multiple and removable handlers, rooms with
//! room handlers, open / close / error events, and auto-reconnect that rejoins the rooms
//! and sends what was queued. (Metafor's own frames on the wire, `_join`, `_leave` and
//! `_room`, are spoken byte for byte in switchboard-server's `tests/dialects.rs`; the JS
//! client's Metafor names in `clients/js/test/client.test.mjs`.)

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_client::{Client, ClientConfig, ClientError, ConnectionState, ReconnectConfig};
use switchboard_server::{Binary, Conn, Json, ServerConfig};
use switchboard_test::{Proxy, TIMEOUT, TestServer};
use tokio::sync::mpsc;

mod common;
use common::next;

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            ..TestServer::config()
        })
        // Metafor's reference server answers what it gets; so do these.
        .on("message", |Json(msg): Json<Value>| async move {
            Json(json!({"echo": msg}))
        })
        .on_binary(|conn: Conn, Binary(data): Binary| async move {
            conn.send_binary(data).ok();
        })
    })
    .await
}

fn recorder<T: Send + 'static>() -> (mpsc::UnboundedSender<T>, mpsc::UnboundedReceiver<T>) {
    mpsc::unbounded_channel()
}

#[tokio::test]
async fn the_channel_guide_with_the_rust_client() {
    let s = server().await;
    let proxy = Proxy::start(s.addr).await;
    let url = proxy.url("/ws");

    // channel = Channel(url, auto_reconnect=True, reconnect_delay=.., max_reconnect_attempts=5)
    let channel = Client::new(
        &url,
        ClientConfig::default().reconnect(ReconnectConfig {
            max_attempts: Some(5),
            ..ReconnectConfig::fixed(Duration::from_millis(50))
        }),
    );
    assert_eq!(channel.state(), ConnectionState::Closed);
    assert_eq!(channel.state().ready_state(), 3);

    // on_open -> set_is_connected(True), seen for the first connection too.
    let is_connected = Arc::new(Mutex::new(false));
    let flag = is_connected.clone();
    let (open_tx, mut opens) = recorder();
    channel.on_open(move |session| {
        *flag.lock().unwrap() = true;
        open_tx.send(session.client_id.clone()).ok();
    });
    let (closed_tx, mut closes) = recorder();
    channel.on_close(move |info| {
        closed_tx.send(info.code).ok();
    });
    let (err_tx, mut errors) = recorder();
    channel.on_error(move |e: &ClientError| {
        err_tx.send(e.to_string()).ok();
    });
    let first = channel.open().await.unwrap();
    assert!(*is_connected.lock().unwrap());
    assert_eq!(next(&mut opens).await, first.client_id);
    assert!(channel.is_connected() && !channel.is_connecting());
    assert_eq!(channel.state().ready_state(), 1);

    // Multiple handlers; removing one.
    let (h1_tx, mut h1) = recorder();
    let (h2_tx, mut h2) = recorder();
    channel.on_message(move |msg| {
        h1_tx.send(msg.kind.clone()).ok();
    });
    let handler = channel.on_message(move |msg| {
        h2_tx.send(msg.kind.clone()).ok();
    });

    // Send a dictionary (JSON): answered by the server.
    let echoed: Value = channel
        .request("message", &json!({"text": "Hello"}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(echoed["echo"]["text"], "Hello");
    assert_eq!(next(&mut h1).await, "ack");
    assert_eq!(next(&mut h2).await, "ack");
    assert!(channel.off(&handler), "channel.remove_handler(handler)");

    // Send binary data.
    let (bin_tx, mut binary) = recorder();
    channel.on_binary(move |b| {
        bin_tx.send(b.to_vec()).ok();
    });
    channel.send_binary(b"Binary data".to_vec()).await.unwrap();
    assert_eq!(next(&mut binary).await, b"Binary data");

    // Send plain text: not an envelope, so the server says why (on_error); the
    // connection stays.
    channel.send_text("Hello, World!").await.unwrap();
    assert!(next(&mut errors).await.contains("INVALID_JSON"));

    // Rooms: join, is_in_room, get_rooms, a room handler, send_to, leave.
    let other = Client::connect(&s.url()).await.unwrap();
    channel.join("chat-room-1").await.unwrap();
    channel.join("notifications").await.unwrap();
    other.join("chat-room-1").await.unwrap();
    assert!(channel.is_in_room("chat-room-1"));
    assert_eq!(channel.rooms(), vec!["chat-room-1", "notifications"]);
    let (room_tx, mut room) = recorder();
    channel.on_room_type("chat-room-1", "chat", move |msg| {
        room_tx.send(msg.payload.to_value()["text"].clone()).ok();
    });
    other
        .send_to("chat-room-1", "chat", &json!({"text": "Hello room!"}))
        .await
        .unwrap();
    assert_eq!(next(&mut room).await, "Hello room!");
    channel.leave("notifications").await.unwrap();
    assert!(!channel.is_in_room("notifications"));

    // Auto-reconnect: a cut network; meanwhile a message is queued; on reconnect the
    // rooms are rejoined and the queue is sent.
    *is_connected.lock().unwrap() = false;
    proxy.block();
    assert_eq!(next(&mut closes).await, 1006);
    let mut other_inbox = other.messages(16);
    channel
        .send_to(
            "chat-room-1",
            "chat",
            &json!({"text": "sent while offline"}),
        )
        .await
        .unwrap();
    proxy.unblock();
    let got = other_inbox.next_of("chat").await.unwrap();
    assert_eq!(got.payload.to_value()["text"], "sent while offline");
    next(&mut opens).await; // on_open after the reconnect
    assert!(*is_connected.lock().unwrap());
    assert_eq!(channel.rooms(), vec!["chat-room-1"]);
    other
        .send_to("chat-room-1", "chat", &json!({"text": "still here?"}))
        .await
        .unwrap();
    assert_eq!(next(&mut room).await, "still here?");

    // Clear handlers; close.
    channel.clear_room_handlers(Some("chat-room-1"));
    channel.clear_handlers();
    channel.close().await;
    assert_eq!(channel.state(), ConnectionState::Closed);
    assert_eq!(next(&mut closes).await, 1000);
    s.stop().await;
}
