//! Rooms over real sockets: join and leave with their notices and routing, the limit of
//! rooms per connection, and the hub's relay of unhandled types by room and recipient.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_server::{ConnId, ServerConfig};
use switchboard_test::{TestServer, unstamped};

#[tokio::test]
async fn rooms_join_leave_notify_and_route() {
    let s = TestServer::with(|b| b.config(TestServer::config())).await;
    let mut a = s.raw().await;
    let mut b = s.raw().await;
    let mut c = s.raw().await;

    let reply = a
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"general"}}))
        .await;
    let result = &reply["payload"]["result"];
    assert_eq!(
        (&result["room_id"], &result["members"]),
        (&json!("general"), &json!(1))
    );
    assert_eq!(
        result["position"]["offset"], 0,
        "a new room's stream starts at 0"
    );
    let reply = b
        .roundtrip(json!({"type":"join_room","payload":{"room_id":"general"}}))
        .await;
    assert_eq!(reply["type"], "join_room_response");
    assert_eq!(reply["payload"]["members"], 2);
    // a's own join was the stream's first message (to nobody else): b joins after it.
    assert_eq!(reply["payload"]["position"]["offset"], 1);
    assert_eq!(
        a.recv().await,
        json!({"type":"user_joined","payload":{"user_id": b.id,"room_id":"general"},"room":"general","offset":2})
    );
    // `subscribe {topic}` is the same operation.
    c.send(json!({"type":"subscribe","payload":{"topic":"news"}}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribe_response");

    assert_eq!(s.server.rooms(), vec!["general", "news"]);
    let mut members = vec![a.id.clone(), b.id.clone()];
    members.sort();
    let got: Vec<String> = s
        .server
        .room_members("general")
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(got, members);

    // Room sends from server code, with and without the sender.
    assert_eq!(
        s.server
            .send_to_room("general", "room_update", &json!({"users":2}))
            .unwrap(),
        2
    );
    assert_eq!(a.recv().await["room"], "general");
    assert_eq!(b.recv().await["type"], "room_update");
    assert!(c.nothing_pending().await);
    let a_id: ConnId = a.id.parse().unwrap();
    assert_eq!(
        s.server
            .send_to_room_except("general", "typing", &json!({"is_typing":true}), &[a_id])
            .unwrap(),
        1
    );
    assert_eq!(b.recv().await["type"], "typing");

    // Leaving: the others hear of it, the leaver stops receiving.
    let reply = b
        .roundtrip(json!({"type":"leave_room","ref":"l","payload":{"room_id":"general"}}))
        .await;
    assert_eq!(
        reply["payload"]["result"],
        json!({"room_id":"general","members":1})
    );
    assert_eq!(a.recv().await["type"], "user_left");
    s.server
        .send_to_room("general", "after", &json!({}))
        .unwrap();
    assert_eq!(a.recv().await["type"], "after");
    assert!(b.nothing_pending().await);

    // Bad room names.
    let reply = a.roundtrip(json!({"type":"join_room","payload":{}})).await;
    assert_eq!(reply["payload"]["code"], "INVALID_PAYLOAD");
    let reply = a
        .roundtrip(json!({"type":"join_room","payload":{"room_id": "r".repeat(200)}}))
        .await;
    assert_eq!(reply["payload"]["code"], "INVALID_ROOM");
    s.stop().await;
}

#[tokio::test]
async fn a_connection_is_limited_in_rooms() {
    let s = TestServer::with_config(ServerConfig {
        max_rooms_per_connection: 2,
        ..TestServer::config()
    })
    .await;
    let mut a = s.raw().await;
    for room in ["a", "b"] {
        let r = a
            .roundtrip(json!({"type":"join_room","payload":{"room_id":room}}))
            .await;
        assert_eq!(r["type"], "join_room_response");
    }
    let r = a
        .roundtrip(json!({"type":"join_room","payload":{"room_id":"c"}}))
        .await;
    assert_eq!(r["payload"]["code"], "INVALID_ROOM");
    assert!(
        r["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 rooms")
    );
    s.stop().await;
}

#[tokio::test]
async fn hub_relay_routes_unhandled_types_by_room_and_to() {
    let s = TestServer::with_config(ServerConfig {
        relay_unhandled: true,
        ..TestServer::config()
    })
    .await;
    let mut a = s.raw().await;
    let mut b = s.raw().await;
    let mut c = s.raw().await;
    for x in [&mut a, &mut b] {
        x.send(json!({"type":"join_room","payload":{"room_id":"general"}}))
            .await;
        x.recv_type("join_room_response").await;
    }
    a.recv_type("user_joined").await;

    let ack = a
        .roundtrip(json!({"type":"chat","ref":"1","room":"general","payload":{"content":"hi"}}))
        .await;
    assert_eq!(ack["payload"]["result"]["delivered"], 1);
    assert_eq!(
        unstamped(b.recv().await),
        json!({"type":"chat","payload":{"content":"hi"},"room":"general","from": a.id})
    );
    assert!(c.nothing_pending().await);

    // Direct, all, others.
    c.send(json!({"type":"dm","to": a.id,"payload":{"t":1}}))
        .await;
    assert_eq!(
        unstamped(a.recv().await),
        json!({"type":"dm","payload":{"t":1},"from": c.id})
    );
    c.send(json!({"type":"shout","to":"all","payload":{}}))
        .await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.recv().await["type"], "shout");
    }
    c.send(json!({"type":"shout","to":"others","payload":{}}))
        .await;
    assert_eq!(a.recv().await["type"], "shout");
    assert_eq!(b.recv().await["type"], "shout");
    assert!(c.nothing_pending().await);

    // A spoofed `from` is replaced by the real sender.
    a.send(json!({"type":"dm","to": b.id,"from": c.id,"payload":{}}))
        .await;
    assert_eq!(b.recv().await["from"], a.id.as_str());

    let r = a
        .roundtrip(json!({"type":"dm","to":"0000000000000bad","payload":{}}))
        .await;
    assert_eq!(r["payload"]["code"], "CLIENT_NOT_FOUND");
    let r = a
        .roundtrip(json!({"type":"dm","to":"nobody","payload":{}}))
        .await;
    assert_eq!(r["payload"]["code"], "CLIENT_NOT_FOUND");
    let r = a
        .roundtrip(json!({"type":"dm","to": b.id,"room":"general","payload":{}}))
        .await;
    assert_eq!(r["payload"]["code"], "INVALID_ENVELOPE");
    // Without a room or a recipient, an unhandled type is still unknown.
    let r = a.roundtrip(json!({"type":"dm","payload":{}})).await;
    assert_eq!(r["payload"]["code"], "UNKNOWN_TYPE");
    s.stop().await;
}
