//! The wire protocol over a real socket: every error code a client can provoke, and
//! the connection surviving each of them.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use switchboard_server::{Conn, HandlerError, Json, ServerConfig};
use switchboard_test::{RawClient, TestServer, WireClient, wire_frame};

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct ChatPayload {
    content: String,
    room_id: Option<String>,
    meta: Option<Meta>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Meta {
    priority: u8,
}

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(TestServer::config())
            .on("chat", |Json(c): Json<ChatPayload>| async move {
                Json(json!({"sent": true, "len": c.content.len()}))
            })
            .on("fail", || async {
                Err::<(), _>(HandlerError::new("USER_NOT_FOUND", "user 7 not found"))
            })
            .on("io_fail", || async {
                Err::<(), _>(std::io::Error::other("disk full"))
            })
            .on("panic", || async {
                if true {
                    panic!("boom");
                }
            })
            .on("add", |Json(v): Json<Value>| async move {
                Json(v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0))
            })
            .on("nothing", |_c: Conn| async {})
            .on("deep", || async {
                // An object nested past the payload depth limit: no payload can carry it.
                let mut v = json!({});
                for _ in 0..70 {
                    v = json!({ "a": v });
                }
                Json(v)
            })
    })
    .await
}

async fn assert_alive(c: &mut RawClient) {
    assert!(c.nothing_pending().await, "connection still answers ping");
}

fn error_of(frame: &Value) -> (&str, &str) {
    assert_eq!(
        frame["type"], "error",
        "expected an error frame, got {frame}"
    );
    (
        frame["payload"]["code"].as_str().expect("code"),
        frame["payload"]["message"].as_str().expect("message"),
    )
}

#[tokio::test]
async fn connected_comes_first_with_ids_and_server_name() {
    let s = server().await;
    let mut c = RawClient::connect(&s.url()).await;
    let hello = c.recv().await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["payload"]["server"], "switchboard");
    assert_eq!(hello["payload"]["client_id"].as_str().unwrap().len(), 16);
    assert!(!hello["payload"]["session_id"].as_str().unwrap().is_empty());
    // Not authenticated: the user id is the client id (the seed's `{user_id, session_id}`).
    assert_eq!(hello["payload"]["user_id"], hello["payload"]["client_id"]);
    s.stop().await;
}

#[tokio::test]
async fn ping_pong() {
    let s = server().await;
    let mut c = s.raw().await;
    assert_eq!(
        c.roundtrip(json!({"type":"ping"})).await,
        json!({"type":"pong","payload":{}})
    );
    // With a ref: the pong, then the ack.
    c.send(json!({"type":"ping","ref":"p1"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    assert_eq!(
        c.recv().await,
        json!({"type":"ack","payload":{"ref":"p1","status":"ok"}})
    );
    s.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_the_connection_survives() {
    let s = server().await;
    let mut c = s.raw().await;
    let cases: &[(&str, &str, &str)] = &[
        ("not json", "INVALID_JSON", "invalid JSON"),
        ("{\"type\":", "INVALID_JSON", "invalid JSON"),
        ("[1,2,3]", "INVALID_ENVELOPE", "must be a JSON object"),
        ("\"chat\"", "INVALID_ENVELOPE", "must be a JSON object"),
        (
            "{\"content\":\"Hello\"}",
            "INVALID_ENVELOPE",
            "missing `type`",
        ),
        ("{\"type\":\"\"}", "INVALID_ENVELOPE", "must not be empty"),
        ("{\"type\":42}", "INVALID_ENVELOPE", "must be a string"),
        (
            "{\"type\":\"chat\",\"payload\":\"Hello\"}",
            "INVALID_ENVELOPE",
            "`payload` must be a JSON object",
        ),
        (
            "{\"chat\":{\"content\":\"Hello\"}}",
            "INVALID_ENVELOPE",
            "missing `type`",
        ),
        (
            "{\"type\":\"chat\",\"v\":2}",
            "UNSUPPORTED_VERSION",
            "unsupported protocol version 2",
        ),
        (
            "{\"type\":\"ack\",\"payload\":{\"ref\":\"x\",\"status\":\"ok\"}}",
            "INVALID_ENVELOPE",
            "only the server sends",
        ),
        (
            "{\"type\":\"dance\"}",
            "UNKNOWN_TYPE",
            "no handler for message type `dance`",
        ),
    ];
    for (frame, code, message) in cases {
        c.send_text(frame).await;
        let reply = c.recv().await;
        let (got_code, got_message) = error_of(&reply);
        assert_eq!(got_code, *code, "for {frame}: {reply}");
        assert!(got_message.contains(message), "for {frame}: {got_message}");
    }
    let long_type = "t".repeat(129);
    c.send(json!({"type": long_type})).await;
    let reply = c.recv().await;
    assert_eq!(error_of(&reply).0, "INVALID_ENVELOPE");
    assert!(error_of(&reply).1.contains("more than the limit of 128"));
    assert_alive(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn errors_of_messages_with_a_ref_are_acks() {
    let s = server().await;
    let mut c = s.raw().await;
    let reply = c.roundtrip(json!({"type":"dance","ref":"d1"})).await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(reply["payload"]["ref"], "d1");
    assert_eq!(reply["payload"]["status"], "error");
    assert_eq!(reply["payload"]["code"], "UNKNOWN_TYPE");
    // Even when the envelope is invalid, a readable ref is acknowledged.
    let reply = c
        .roundtrip(json!({"type":"chat","ref":"d2","payload":[1]}))
        .await;
    assert_eq!(reply["payload"]["ref"], "d2");
    assert_eq!(reply["payload"]["code"], "INVALID_ENVELOPE");
    s.stop().await;
}

#[tokio::test]
async fn invalid_payloads_name_the_field() {
    let s = server().await;
    let mut c = s.raw().await;
    let reply = c
        .roundtrip(json!({"type":"chat","payload":{"room_id":"general"}}))
        .await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "INVALID_PAYLOAD");
    assert!(message.contains("missing field `content`"), "{message}");

    let reply = c
        .roundtrip(json!({"type":"chat","payload":{"content":"hi","meta":{"priority":"high"}}}))
        .await;
    assert_eq!(error_of(&reply).0, "INVALID_PAYLOAD");
    assert_eq!(reply["payload"]["details"]["path"], "meta.priority");
    assert!(
        reply["payload"]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("expected u8")
    );

    let reply = c
        .roundtrip(json!({"type":"chat","payload":{"content":7}}))
        .await;
    assert_eq!(reply["payload"]["details"]["path"], "content");
    assert_alive(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn handler_errors_carry_their_code_and_panics_are_internal() {
    let s = server().await;
    let mut c = s.raw().await;
    let reply = c.roundtrip(json!({"type":"fail"})).await;
    assert_eq!(error_of(&reply), ("USER_NOT_FOUND", "user 7 not found"));
    let reply = c.roundtrip(json!({"type":"io_fail","ref":"f"})).await;
    assert_eq!(reply["payload"]["code"], "HANDLER_ERROR");
    assert_eq!(reply["payload"]["message"], "disk full");
    let reply = c.roundtrip(json!({"type":"panic","ref":"p"})).await;
    assert_eq!(reply["payload"]["status"], "error");
    assert_eq!(reply["payload"]["code"], "INTERNAL");
    // The panic did not take the connection or the server down.
    assert_alive(&mut c).await;
    let mut other = s.raw().await;
    assert_alive(&mut other).await;
    s.stop().await;
}

#[tokio::test]
async fn return_values_come_back_as_response_or_ack_result() {
    let s = server().await;
    let mut c = s.raw().await;
    let reply = c
        .roundtrip(json!({"type":"chat","payload":{"content":"Hello"}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"chat_response","payload":{"sent":true,"len":5}})
    );
    let reply = c
        .roundtrip(json!({"type":"chat","ref":"msg_001","payload":{"content":"Hello"}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"ack","payload":{"ref":"msg_001","status":"ok","result":{"sent":true,"len":5}}})
    );
    // Scalars: the ack's result as is; a response payload wraps them, a payload is an object.
    let reply = c
        .roundtrip(json!({"type":"add","ref":"a","payload":{"a":2,"b":3}}))
        .await;
    assert_eq!(reply["payload"]["result"], 5);
    let reply = c
        .roundtrip(json!({"type":"add","payload":{"a":2,"b":3}}))
        .await;
    assert_eq!(reply, json!({"type":"add_response","payload":{"result":5}}));
    // A reply no payload can carry (nested past the depth limit) is an error, not a
    // silence.
    let reply = c.roundtrip(json!({"type":"deep"})).await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "INTERNAL", "{reply}");
    assert!(message.contains("deeper than 64"), "{message}");
    assert_alive(&mut c).await;
    // No return value: nothing without a ref, a bare ok ack with one.
    c.send(json!({"type":"nothing"})).await;
    assert_alive(&mut c).await;
    let reply = c.roundtrip(json!({"type":"nothing","ref":"n"})).await;
    assert_eq!(
        reply,
        json!({"type":"ack","payload":{"ref":"n","status":"ok"}})
    );
    s.stop().await;
}

#[tokio::test]
async fn binary_frames_without_a_handler_are_refused_with_a_code() {
    let s = server().await;
    let mut c = s.raw().await;
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(error_of(&c.recv().await).0, "UNSUPPORTED_FRAME");
    assert_alive(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn binary_handlers_receive_the_bytes() {
    let s = TestServer::with(|b| {
        b.config(TestServer::config()).on_binary(
            |conn: Conn, switchboard_server::Binary(data): switchboard_server::Binary| async move {
                let mut reversed = data.to_vec();
                reversed.reverse();
                conn.send_binary(reversed).ok();
            },
        )
    })
    .await;
    let mut c = s.raw().await;
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(c.recv_binary().await, vec![3, 2, 1]);
    s.stop().await;
}

#[tokio::test]
async fn oversize_messages_get_message_too_large_and_close_1009() {
    let s = TestServer::with_config(ServerConfig {
        max_message_size: 1024,
        ..TestServer::config()
    })
    .await;
    let mut c = s.raw().await;
    // Just under the limit is fine.
    let ok = json!({"type":"ping","payload":{"pad":"x".repeat(900)}});
    assert_eq!(c.roundtrip(ok).await["type"], "pong");
    c.send(json!({"type":"ping","payload":{"pad":"x".repeat(2000)}}))
        .await;
    let reply = c.recv().await;
    assert_eq!(error_of(&reply).0, "MESSAGE_TOO_LARGE");
    assert!(error_of(&reply).1.contains("1024"));
    let closed = c.closed().await;
    assert_eq!(closed.code, 1009);
    assert!(closed.reason.starts_with("MESSAGE_TOO_LARGE"), "{closed:?}");
    // The server carries on.
    let mut other = s.raw().await;
    assert_alive(&mut other).await;
    s.stop().await;
}

#[tokio::test]
async fn frames_sent_right_behind_the_upgrade_request_are_handled() {
    // A client may write its first frames before it reads the 101: the server reads
    // them out of what the HTTP layer had already taken in.
    let s = server().await;
    let mut early = wire_frame(true, 0, 1, br#"{"type":"ping","ref":"p1"}"#, true);
    early.extend(wire_frame(
        true,
        0,
        1,
        br#"{"type":"ping","ref":"p2"}"#,
        true,
    ));
    let mut c = WireClient::connect_sending(s.addr, "/ws", &[], &early).await;
    assert_eq!(c.recv().await["type"], "connected");
    for r in ["p1", "p2"] {
        let ack = loop {
            let m = c.recv().await;
            if m["type"] == "ack" {
                break m;
            }
        };
        assert_eq!(ack["payload"]["ref"], r);
    }
    s.stop().await;
}

/// The message protocol pattern's `dispatch_v2`: an application that declares version 2
/// reads `v` in its handler; versions nobody speaks stay `UNSUPPORTED_VERSION`.
#[tokio::test]
async fn an_application_declares_the_versions_it_reads() {
    use switchboard_server::Version;
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            versions: vec![2],
            ..TestServer::config()
        })
        .on(
            "chat",
            |Version(v): Version, Json(p): Json<Value>| async move {
                // Version 2 calls the text `text`; version 1 `content`.
                let text = if v == 2 { &p["text"] } else { &p["content"] };
                Json(json!({ "v": v, "text": text }))
            },
        )
    })
    .await;
    let mut c = s.raw().await;
    c.send(json!({"type": "chat", "ref": "a", "payload": {"content": "one"}}))
        .await;
    assert_eq!(
        c.recv().await["payload"]["result"],
        json!({"v": 1, "text": "one"})
    );
    c.send(json!({"type": "chat", "ref": "b", "v": 2, "payload": {"text": "two"}}))
        .await;
    assert_eq!(
        c.recv().await["payload"]["result"],
        json!({"v": 2, "text": "two"})
    );
    c.send(json!({"type": "chat", "ref": "c", "v": 3, "payload": {}}))
        .await;
    let refused = c.recv().await;
    assert_eq!(refused["payload"]["code"], "UNSUPPORTED_VERSION");
    assert_eq!(
        refused["payload"]["message"],
        "unsupported protocol version 3 (this server speaks versions 1, 2)"
    );
    // The connection stays.
    c.send(json!({"type": "chat", "ref": "d", "payload": {"content": "still"}}))
        .await;
    assert_eq!(c.recv().await["payload"]["result"]["text"], "still");
    s.stop().await;
}

/// A message's W3C `trace` travels with it when relayed; one that is not a
/// `traceparent` is dropped, not an error.
#[tokio::test]
async fn a_relayed_message_keeps_its_trace() {
    let s = TestServer::with_config(ServerConfig {
        relay_unhandled: true,
        ..TestServer::config()
    })
    .await;
    let mut a = s.raw().await;
    let mut b = s.raw().await;
    for c in [&mut a, &mut b] {
        c.send(json!({"type": "join_room", "ref": "j", "payload": {"room_id": "r"}}))
            .await;
        c.recv_type("ack").await;
    }
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    a.send(json!({"type": "chat", "room": "r", "trace": trace, "payload": {}}))
        .await;
    assert_eq!(b.recv_type("chat").await["trace"], trace);
    a.send(json!({"type": "chat", "room": "r", "trace": "junk", "payload": {"n": 2}}))
        .await;
    let m = b.recv_type("chat").await;
    assert_eq!(m["payload"]["n"], 2);
    assert!(m.get("trace").is_none(), "{m}");
    // Not a string: the envelope is wrong.
    a.send(json!({"type": "chat", "room": "r", "trace": 7}))
        .await;
    assert_eq!(
        a.recv_type("error").await["payload"]["code"],
        "INVALID_ENVELOPE"
    );
    s.stop().await;
}
