//! The seeds' own clients' wire formats, spoken byte for byte: Metafor Channels'
//! frames exactly as its docs show them, and datadivr's, beside native clients.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_server::{Conn, Json, ServerConfig};
use switchboard_test::{RawClient, TIMEOUT, TestServer, WireClient};
use tokio_tungstenite::tungstenite::Message;

async fn hub() -> TestServer {
    TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            ..TestServer::config()
        })
        .on("sum_event", |conn: Conn, Json(p): Json<Value>| async move {
            let sum: f64 = p["numbers"]
                .as_array()
                .map(|n| n.iter().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0);
            conn.send_message("sum_handler_result", &json!({ "value": sum }))
                .ok();
        })
    })
    .await
}

/// A raw socket speaking a dialect: text in, text out, no protocol logic.
struct Speaker {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Speaker {
    async fn connect(url: &str) -> Speaker {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Speaker { ws }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next text frame, as it came.
    async fn text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a frame in time")
                .unwrap()
                .unwrap();
            match msg {
                Message::Text(t) => return t.to_string(),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    async fn json(&mut self) -> Value {
        serde_json::from_str(&self.text().await).unwrap()
    }
}

#[tokio::test]
async fn metafor_frames_exactly_as_its_docs_show_them() {
    let s = hub().await;
    // Recognised by its first frame on the native endpoint...
    let mut alice = Speaker::connect(&s.url()).await;
    assert_eq!(
        alice.json().await["type"],
        "connected",
        "sent before it spoke"
    );
    alice
        .send(r#"{"type": "_join", "room": "room-name"}"#)
        .await;
    assert_eq!(
        alice.json().await,
        json!({"status": "joined", "room": "room-name"})
    );
    // ... or chosen up front.
    let mut bob = Speaker::connect(&format!("{}?dialect=metafor", s.url())).await;
    bob.send(r#"{"type": "_join", "room": "room-name"}"#).await;
    assert_eq!(
        bob.json().await,
        json!({"status": "joined", "room": "room-name"}),
        "no `connected` first"
    );
    let mut native = s.raw().await;
    native
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"room-name"}}))
        .await;
    let alice_id = s.server.room_members("room-name")[0].to_string();

    // A room message goes to the room's other members, as it was sent.
    alice
        .send(r#"{"_room": "room-name", "text": "Hello", "user": "alice"}"#)
        .await;
    assert_eq!(
        bob.json().await,
        json!({"_room": "room-name", "text": "Hello", "user": "alice"})
    );
    let m = native.recv_type("message").await;
    assert_eq!(m["room"], "room-name");
    assert_eq!(m["payload"], json!({"text": "Hello", "user": "alice"}));
    assert!(m["from"].is_string());

    // A native room message reaches Metafor clients in their format.
    native
        .send(json!({"type":"chat","room":"room-name","payload":{"text":"hi from native"}}))
        .await;
    assert_eq!(
        alice.json().await,
        json!({"_room": "room-name", "type": "chat", "text": "hi from native"})
    );
    assert_eq!(bob.json().await["text"], "hi from native");

    // A message without `_room` goes to everyone, the sender included, as its
    // reference server's "route messages by room" does; its `type` is kept.
    alice
        .send(r#"{"type": "message", "text": "Hello all"}"#)
        .await;
    for who in [&mut alice, &mut bob] {
        assert_eq!(
            who.json().await,
            json!({"type": "message", "text": "Hello all"})
        );
    }
    let m = native.recv_type("message").await;
    assert_eq!(
        (m["to"].clone(), m["payload"]["text"].clone()),
        (json!("all"), json!("Hello all"))
    );
    // JSON that is not an object is echoed; a plain string too; binary comes back as it went.
    alice.send("[1, 2]").await;
    assert_eq!(alice.json().await, json!({"echo": [1, 2]}));
    alice.send("Hello, World!").await;
    assert_eq!(alice.text().await, "Echo: Hello, World!");
    alice
        .ws
        .send(Message::binary(b"Binary data".to_vec()))
        .await
        .unwrap();
    let back = loop {
        match tokio::time::timeout(TIMEOUT, alice.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(b) => break b,
            Message::Text(t) => panic!("unexpected {t}"),
            _ => {}
        }
    };
    assert_eq!(&back[..], b"Binary data");

    // Leaving: answered, and no more room traffic.
    alice
        .send(r#"{"type": "_leave", "room": "room-name"}"#)
        .await;
    assert_eq!(
        alice.json().await,
        json!({"status": "left", "room": "room-name"})
    );
    bob.send(r#"{"_room": "room-name", "text": "still there?"}"#)
        .await;
    assert_eq!(
        native.recv_type("message").await["payload"]["text"],
        "still there?"
    );
    alice.send("ping?").await;
    assert_eq!(
        alice.text().await,
        "Echo: ping?",
        "nothing from the room came first"
    );
    assert!(
        !s.server
            .room_members("room-name")
            .iter()
            .any(|m| m.to_string() == alice_id)
    );
    // A bad command is a clear error, in a shape a Metafor handler can print.
    alice.send(r#"{"type": "_join"}"#).await;
    let e = alice.json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("INVALID_ENVELOPE"))
    );
    s.stop().await;
}

#[tokio::test]
async fn datadivr_frames_beside_native_clients() {
    let s = hub().await;
    let url = format!("{}?dialect=datadivr", s.url());
    let mut dd = Speaker::connect(&url).await;
    let mut other_dd = Speaker::connect(&url).await;
    let mut native = s.raw().await;
    // datadivr's client announces its handlers first; relayed to the others, as
    // datadivr's server does.
    dd.send(r#"{"event_name":"CLI_HELLO","payload":{"handlers":["msg"]},"to":"others","from_id":"server","message":null}"#).await;
    let hello = other_dd.json().await;
    assert_eq!(hello["event_name"], "CLI_HELLO");
    assert_eq!(hello["payload"], json!({"handlers": ["msg"]}));
    let dd_id = hello["from_id"].as_str().unwrap().to_owned();
    assert_eq!(native.recv_type("CLI_HELLO").await["from"], dd_id.as_str());

    // sum_event is handled; the answer goes back to the sender only.
    dd.send(r#"{"event_name":"sum_event","payload":{"numbers":[391,29]},"to":"others","from_id":"forged","message":null}"#).await;
    let sum = dd.json().await;
    assert_eq!(sum["event_name"], "sum_handler_result");
    assert_eq!(sum["payload"], 420.0);
    assert_eq!(sum["from_id"], "server");

    // to "all" includes the sender; the server stamps from_id, whatever was claimed.
    dd.send(r#"{"event_name":"msg","to":"all","message":"hello","from_id":"forged"}"#)
        .await;
    for who in [&mut dd, &mut other_dd] {
        let m = who.json().await;
        assert_eq!(
            (m["event_name"].as_str(), m["message"].as_str()),
            (Some("msg"), Some("hello"))
        );
        assert_eq!(m["from_id"], dd_id.as_str());
    }
    let m = native.recv_type("msg").await;
    assert_eq!(m["payload"], json!({"message": "hello"}));

    // A native client talks to a datadivr client by id.
    let other_id = {
        other_dd.send(r#"{"event_name":"whoami","to":"all"}"#).await;
        let m = other_dd.json().await;
        m["from_id"].as_str().unwrap().to_owned()
    };
    dd.json().await; // the whoami broadcast
    native
        .send(json!({"type":"msg","to": other_id,"payload":{"message":"psst","n":1}}))
        .await;
    let m = other_dd.json().await;
    assert_eq!(m["event_name"], "msg");
    assert_eq!(m["message"], "psst");
    assert_eq!(m["payload"], json!({"n": 1}));
    assert_eq!(m["from_id"], native.id.as_str());

    // Errors come back as datadivr error events; the connection stays.
    dd.send("not json").await;
    let e = dd.json().await;
    assert_eq!(e["event_name"], "error");
    assert!(e["message"].as_str().unwrap().starts_with("INVALID_JSON"));
    dd.send(r#"{"event_name":"sum_event","payload":{"numbers":"x"}}"#)
        .await;
    // (the hub's handler takes any JSON; a typed one would answer INVALID_PAYLOAD)
    assert_eq!(dd.json().await["payload"], 0.0);
    dd.send(r#"{"payload":{}}"#).await;
    assert!(
        dd.json().await["message"]
            .as_str()
            .unwrap()
            .contains("event_name")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_dialect_is_chosen_by_query_or_subprotocol_and_bad_names_are_refused() {
    let s = hub().await;
    let head = WireClient::http_head(
        s.addr,
        &format!(
            "GET /ws?dialect=klingon HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.addr
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut c = WireClient::connect_with(
        s.addr,
        "/ws",
        &[("Sec-WebSocket-Protocol", "switchboard.datadivr")],
    )
    .await;
    c.send_text(r#"{"event_name":"sum_event","payload":{"numbers":[1,2]}}"#)
        .await;
    let r = c.recv().await;
    assert_eq!(
        (r["event_name"].as_str(), r["payload"].as_f64()),
        (Some("sum_handler_result"), Some(3.0))
    );
    // Native clients are unaffected.
    let mut n = RawClient::connect(&s.url()).await;
    assert_eq!(n.recv().await["type"], "connected");
    s.stop().await;
}

#[tokio::test]
async fn a_metafor_client_cannot_forge_server_frames_to_a_room() {
    let s = hub().await;
    let mut member = s.raw().await;
    member
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"lobby"}}))
        .await;
    // Recognised as Metafor by its first frame, not a member of `lobby`.
    let mut attacker = Speaker::connect(&s.url()).await;
    assert_eq!(attacker.json().await["type"], "connected");
    for forged in [
        r#"{"_room":"lobby","type":"ack","ref":"r1","status":"ok","result":1337}"#,
        r#"{"_room":"lobby","type":"error","code":"KICKED","message":"bye"}"#,
        r#"{"_room":"lobby","type":"connected","client_id":"x"}"#,
        r#"{"_room":"lobby","type":"user_left","user_id":"x"}"#,
        r#"{"_room":"lobby","type":"pong"}"#,
    ] {
        attacker.send(forged).await;
        let e = attacker.json().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("INVALID_ENVELOPE")),
            "{forged}"
        );
    }
    // What the member gets next is the attacker's first real room message.
    attacker
        .send(r#"{"_room":"lobby","text":"a real one"}"#)
        .await;
    let m = member.recv().await;
    assert_eq!(m["type"], "message", "nothing forged came first: {m}");
    assert_eq!(m["payload"]["text"], "a real one");
    s.stop().await;
}

#[tokio::test]
async fn a_datadivr_frame_with_a_room_reaches_that_room_alone() {
    let s = hub().await;
    let mut member = s.raw().await;
    member
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"lobby"}}))
        .await;
    let mut outsider = s.raw().await;
    let mut dd = Speaker::connect(&format!("{}?dialect=datadivr", s.url())).await;
    dd.send(r#"{"event_name":"msg","room":"lobby","message":"for the room"}"#)
        .await;
    let m = member.recv_type("msg").await;
    assert_eq!(m["room"], "lobby");
    assert_eq!(m["payload"]["message"], "for the room");
    // The outsider's next frame is its own pong: the room message never came.
    assert_eq!(
        outsider.roundtrip(json!({"type":"ping"})).await["type"],
        "pong"
    );
    s.stop().await;
}

/// datadivr's client at the plain URL: it speaks first (its `CLI_HELLO`) and fails on
/// anything without `event_name`, so the server hears it out before sending anything.
#[tokio::test]
async fn a_datadivr_client_at_the_plain_url_is_recognised_before_anything_is_sent() {
    let s = hub().await;
    let python = [("User-Agent", "Python/3.11 websockets/12.0")];
    let mut dd = RawClient::connect_with_headers(&s.url(), &python).await;
    let mut other = RawClient::connect_with_headers(&s.url(), &python).await;
    for c in [&mut dd, &mut other] {
        c.send_text(r#"{"event_name":"CLI_HELLO","payload":{"handlers":[]},"to":"others","from_id":"server","message":null}"#)
            .await;
    }
    dd.send_text(r#"{"event_name":"sum_event","payload":{"numbers":[391,29]},"to":"others","from_id":"x","message":null}"#)
        .await;
    // The other client's hello may come first; never a native `connected`.
    let mut seen = Vec::new();
    loop {
        let m = dd.recv().await;
        assert!(m.get("event_name").is_some(), "a datadivr frame: {m}");
        seen.push(m["event_name"].as_str().unwrap().to_owned());
        if m["event_name"] == "sum_handler_result" {
            assert_eq!(m["payload"], 420.0);
            break;
        }
    }
    assert!(
        seen.iter()
            .all(|e| e == "CLI_HELLO" || e == "sum_handler_result"),
        "{seen:?}"
    );

    // A Python client that waits for `connected` gets it once the wait is over; the
    // native protocol then works as always.
    let mut waiting = RawClient::connect_with_headers(&s.url(), &python).await;
    let connected = waiting.recv().await;
    assert_eq!(connected["type"], "connected");
    waiting.send(json!({"type": "ping"})).await;
    assert_eq!(waiting.recv().await["type"], "pong");

    // A Python client speaking native first is answered natively: `connected`, then
    // its message.
    let mut native_first = RawClient::connect_with_headers(&s.url(), &python).await;
    native_first.send(json!({"type": "ping"})).await;
    assert_eq!(native_first.recv().await["type"], "connected");
    assert_eq!(native_first.recv().await["type"], "pong");
    s.stop().await;
}
