//! Seed 004, datadivr's WebSocket client: the document's example frames, sent as
//! datadivr's client sends them (Python's `websockets`, the plain `/ws` URL, speaking
//! first), to a server with the hub's `sum_event`. The real datadivr 0.2.4 client from
//! PyPI runs against the hub binary in `tests/python/test_datadivr.py` (scripts/test).

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use switchboard_server::{Conn, Json, ServerConfig};
use switchboard_test::{RawClient, TestServer};

/// What datadivr's client sends first: the handlers it has.
const HELLO: &str = r#"{"event_name":"CLI_HELLO","payload":{"handlers":["sum_handler_result","msg"]},"to":"others","from_id":"server","message":null}"#;

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            ..TestServer::config()
        })
        // The hub's sum_event, as datadivr's server has it.
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

/// A datadivr client: connects as Python's `websockets` does and says hello.
async fn datadivr_client(s: &TestServer) -> RawClient {
    let python = [("User-Agent", "Python/3.12 websockets/13.1")];
    let mut c = RawClient::connect_with_headers(&s.url(), &python).await;
    c.send_text(HELLO).await;
    c
}

/// The next frame with this `event_name` (others skipped); every frame is datadivr's.
async fn event(c: &mut RawClient, name: &str) -> Value {
    loop {
        let m = c.recv().await;
        assert!(m.get("event_name").is_some(), "only datadivr frames: {m}");
        if m["event_name"] == name {
            return m;
        }
    }
}

#[tokio::test]
async fn the_documents_example_messages() {
    let s = server().await;
    let mut a = datadivr_client(&s).await;
    let mut b = datadivr_client(&s).await;

    // Sum calculation: {"event_name": "sum_event", "payload": {"numbers": [391, 29]}}
    a.send_text(r#"{"event_name": "sum_event", "payload": {"numbers": [391, 29]}}"#)
        .await;
    let result = event(&mut a, "sum_handler_result").await;
    assert_eq!(result["payload"], 420.0);
    assert_eq!(result["from_id"], "server");

    // Broadcast message: {"event_name": "msg", "to": "all", "message": "hello"}
    a.send_text(r#"{"event_name": "msg", "to": "all", "message": "hello"}"#)
        .await;
    let mine = event(&mut a, "msg").await;
    let theirs = event(&mut b, "msg").await;
    assert_eq!(
        (mine["message"].as_str(), theirs["message"].as_str()),
        (Some("hello"), Some("hello"))
    );
    let a_id = theirs["from_id"].as_str().unwrap().to_owned();

    // Custom events to one client id.
    b.send_text(&format!(
        r#"{{"event_name": "custom_event", "payload": {{"data": "custom_data"}}, "to": "{a_id}"}}"#
    ))
    .await;
    let custom = event(&mut a, "custom_event").await;
    assert_eq!(custom["payload"], json!({"data": "custom_data"}));
    assert_eq!(custom["to"], a_id.as_str());

    // Invalid message formats: answered as an error event, "handled gracefully".
    a.send_text("not json").await;
    assert!(
        event(&mut a, "error").await["message"]
            .as_str()
            .unwrap()
            .starts_with("INVALID_JSON")
    );
    a.send_text(r#"{"event_name": "sum_event", "payload": {"numbers": [1, 2, 3]}}"#)
        .await;
    assert_eq!(event(&mut a, "sum_handler_result").await["payload"], 6.0);
    s.stop().await;
}
