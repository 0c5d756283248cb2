//! Seed 001, the "Message Protocol Pattern", on the wire: its envelope, validation,
//! type-based routing, typed errors, acks with `ref`, versions, its common message
//! types in both directions, and its anti-patterns refused with typed errors. The frames
//! are the document's own, sent by a raw socket to a server configured as the hub is
//! (relay on, `room_update` on).

#![allow(clippy::unwrap_used)]

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_server::{HandlerError, Json, ServerConfig, Version};
use switchboard_test::{RawClient, TestServer};

/// `class ChatPayload(BaseModel): content: str; room_id: str | None = None`
#[derive(Deserialize)]
struct ChatPayload {
    content: String,
    #[allow(dead_code)]
    room_id: Option<String>,
}

/// As the hub: the seed's `chat` and `typing` relayed by `room_id`, `room_update` on,
/// plus the seed's typed `chat_message` handler and a version 2 of it.
async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            room_updates: true,
            versions: vec![2],
            ..TestServer::config()
        })
        .on(
            "chat_message",
            |Version(v): Version, Json(chat): Json<ChatPayload>| async move {
                // dispatch_v1 / dispatch_v2: the application reads `v`.
                Json(json!({"v": v, "len": chat.content.len()}))
            },
        )
        .on("explode", || async {
            Err::<(), _>(HandlerError::new("ROOM_NOT_FOUND", "Invalid room"))
        })
    })
    .await
}

/// The next frame of `kind`, skipping others.
async fn expect(c: &mut RawClient, kind: &str) -> Value {
    c.recv_type(kind).await
}

#[tokio::test]
async fn connected_ping_and_typed_routing_with_validation() {
    let s = server().await;
    let mut c = RawClient::connect(&s.url()).await;
    // connected: {user_id, session_id}
    let connected = c.recv().await;
    assert_eq!(connected["type"], "connected");
    let p = &connected["payload"];
    assert!(
        p["user_id"].is_string() && p["session_id"].is_string(),
        "{p}"
    );
    assert_eq!(
        p["user_id"], p["client_id"],
        "no login: the user is the client"
    );

    // ping {} -> pong {}
    c.send(json!({"type": "ping", "payload": {}})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "payload": {}}));

    // The Core Message Structure example, to a typed handler.
    c.send(json!({"type": "chat_message", "ref": "m1", "payload": {"content": "Hello!", "room_id": "general"}}))
        .await;
    let ack = c.recv().await;
    assert_eq!(ack["payload"]["status"], "ok");
    assert_eq!(ack["payload"]["result"], json!({"v": 1, "len": 6}));

    // Validation: ChatPayload(**payload) fails on a missing content.
    c.send(json!({"type": "chat_message", "ref": "m2", "payload": {"room_id": "general"}}))
        .await;
    let e = c.recv().await["payload"].clone();
    assert_eq!(
        (e["status"].as_str(), e["code"].as_str()),
        (Some("error"), Some("INVALID_PAYLOAD"))
    );
    assert!(e["message"].as_str().unwrap().contains("content"), "{e}");

    // "Handler error": typed, with the application's code, as the seed's ErrorPayload.
    c.send(json!({"type": "explode", "payload": {}})).await;
    let e = c.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(
        (
            e["payload"]["message"].as_str(),
            e["payload"]["code"].as_str()
        ),
        (Some("Invalid room"), Some("ROOM_NOT_FOUND"))
    );

    // "Unknown message type"
    c.send(json!({"type": "teleport", "payload": {}})).await;
    assert_eq!(c.recv().await["payload"]["code"], "UNKNOWN_TYPE");

    // Versioning: v 2 reaches the handler, which reads it; v 3 nobody speaks.
    c.send(json!({"v": 2, "type": "chat_message", "ref": "v2", "payload": {"content": "hi"}}))
        .await;
    assert_eq!(c.recv().await["payload"]["result"]["v"], 2);
    c.send(json!({"v": 3, "type": "chat_message", "payload": {"content": "hi"}}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["payload"]["code"], "UNSUPPORTED_VERSION");
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("version 3")
    );
    s.stop().await;
}

#[tokio::test]
async fn the_anti_patterns_are_refused_with_typed_errors_and_the_connection_stays() {
    let s = server().await;
    let mut c = s.raw().await;
    let cases = [
        // Bad: No type field
        (r#"{"content": "Hello"}"#, "INVALID_ENVELOPE"),
        // Bad: Primitive payload
        (
            r#"{"type": "chat", "payload": "Hello"}"#,
            "INVALID_ENVELOPE",
        ),
        // Bad: Using type as payload
        (r#"{"chat": {"content": "Hello"}}"#, "INVALID_ENVELOPE"),
        // Not JSON at all
        ("Error occurred", "INVALID_JSON"),
    ];
    for (frame, code) in cases {
        c.send_text(frame).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{frame}");
        assert_eq!(e["payload"]["code"], code, "{frame}");
    }
    // Still connected.
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    s.stop().await;
}

#[tokio::test]
async fn rooms_chat_typing_and_acks_as_the_common_message_types_say() {
    let s = server().await;
    let mut ada = s.raw().await;
    let mut bob = s.raw().await;

    // join_room {room_id} -> ack; the others hear user_joined {user_id, room_id} and
    // room_update {room_id, users}.
    ada.send(json!({"type": "join_room", "ref": "j1", "payload": {"room_id": "general"}}))
        .await;
    assert_eq!(expect(&mut ada, "ack").await["payload"]["status"], "ok");
    bob.send(json!({"type": "join_room", "ref": "j2", "payload": {"room_id": "general"}}))
        .await;
    assert_eq!(expect(&mut bob, "ack").await["payload"]["status"], "ok");
    let joined = expect(&mut ada, "user_joined").await;
    assert_eq!(
        joined["payload"],
        json!({"user_id": bob.id.as_str(), "room_id": "general"})
    );
    let update = expect(&mut ada, "room_update").await;
    assert_eq!(update["payload"], json!({"room_id": "general", "users": 2}));

    // chat {content, room_id} with a ref -> the others get chat {from, content,
    // room_id}; the sender's ack is `ok` (the seed's "delivered"), with the count.
    ada.send(json!({"type": "chat", "ref": "msg_001", "payload": {"content": "Hello", "room_id": "general"}}))
        .await;
    let chat = expect(&mut bob, "chat").await;
    assert_eq!(chat["payload"]["from"], ada.id.as_str());
    assert_eq!(chat["payload"]["content"], "Hello");
    assert_eq!(chat["payload"]["room_id"], "general");
    let ack = expect(&mut ada, "ack").await;
    assert_eq!(ack["payload"]["ref"], "msg_001");
    assert_eq!(ack["payload"]["status"], "ok");
    assert_eq!(ack["payload"]["result"]["delivered"], 1);

    // typing {room_id, is_typing}
    bob.send(json!({"type": "typing", "payload": {"room_id": "general", "is_typing": true}}))
        .await;
    let typing = expect(&mut ada, "typing").await;
    assert_eq!(typing["payload"]["is_typing"], true);
    assert_eq!(typing["payload"]["from"], bob.id.as_str());

    // subscribe / unsubscribe {topic}: rooms by another name.
    ada.send(json!({"type": "subscribe", "ref": "s1", "payload": {"topic": "news"}}))
        .await;
    assert_eq!(expect(&mut ada, "ack").await["payload"]["status"], "ok");
    ada.send(json!({"type": "unsubscribe", "ref": "s2", "payload": {"topic": "news"}}))
        .await;
    assert_eq!(expect(&mut ada, "ack").await["payload"]["status"], "ok");

    // leave_room {room_id}: the others hear user_left and the new count.
    bob.send(json!({"type": "leave_room", "ref": "l1", "payload": {"room_id": "general"}}))
        .await;
    let left = expect(&mut ada, "user_left").await;
    assert_eq!(
        left["payload"],
        json!({"user_id": bob.id.as_str(), "room_id": "general"})
    );
    assert_eq!(expect(&mut ada, "room_update").await["payload"]["users"], 1);
    s.stop().await;
}
