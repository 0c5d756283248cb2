//! The Rust client against a real server over real sockets.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_client::{
    Client, ClientConfig, ConnectError, ConnectionState, Reconnect, ReconnectConfig, RequestError,
    SendError,
};
use switchboard_server::{Conn, Json, ServerConfig};
use switchboard_test::{TIMEOUT, TestServer};
use tokio::sync::Notify;

async fn server(release: Arc<Notify>) -> TestServer {
    TestServer::with(move |b| {
        TestServer::arithmetic(b.config(ServerConfig {
            relay_unhandled: true,
            ..TestServer::config()
        }))
        .on("wait", move || {
            let release = release.clone();
            async move { release.notified().await }
        })
        .on("hello", |conn: Conn| async move {
            conn.send_message("greeting", &json!({"text": "hi"})).ok();
        })
    })
    .await
}

#[tokio::test]
async fn request_returns_typed_results_and_typed_errors() {
    let s = server(Arc::new(Notify::new())).await;
    let client = Client::connect(&s.url()).await.unwrap();
    assert_eq!(client.state(), ConnectionState::Open);
    assert_eq!(client.id().len(), 16);
    assert_eq!(client.session().server, "switchboard");

    let sum: f64 = client
        .request("add", &json!({"a": 2, "b": 3}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 5.0);

    let err = client
        .request::<f64, _>("divide", &json!({"a": 1, "b": 0}), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::Remote {
            code: "DIVIDE_BY_ZERO".into(),
            message: "Cannot divide by zero".into(),
            details: Some(json!({"b": 0.0})),
        }
    );
    let err = client
        .request::<Value, _>("nope", &json!({}), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("UNKNOWN_TYPE"));
    let err = client
        .request::<String, _>("add", &json!({"a": 1, "b": 1}), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Decode(_)), "{err:?}");
    let err = client.send("add", &json!([1, 2])).await.unwrap_err();
    assert!(matches!(err, SendError::Encode(_)));
    s.stop().await;
}

#[tokio::test]
async fn many_requests_in_flight_are_matched_by_ref() {
    let s = server(Arc::new(Notify::new())).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let calls = (0..500).map(|i| {
        let c = client.clone();
        async move {
            c.request::<f64, _>("add", &json!({"a": i, "b": 1}), TIMEOUT)
                .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as f64 + 1.0);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_request_without_an_answer_times_out() {
    let release = Arc::new(Notify::new());
    let s = server(release.clone()).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let err = client
        .request::<Value, _>("wait", &json!({}), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::Timeout(Duration::from_millis(50)));
    release.notify_one();
    // The late ack is ignored; the connection is fine.
    let sum: f64 = client
        .request("add", &json!({"a": 1, "b": 1}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 2.0);
    s.stop().await;
}

#[tokio::test]
async fn handlers_by_type_catch_all_and_removal() {
    let s = server(Arc::new(Notify::new())).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let typed = client.on("greeting", move |m| {
        s1.lock().unwrap().push(format!("typed:{}", m.payload))
    });
    client.on_any(move |m| s2.lock().unwrap().push(format!("any:{}", m.kind)));
    let mut stream = client.messages(16);

    client.send("hello", &json!({})).await.unwrap();
    assert_eq!(
        stream.next_of("greeting").await.unwrap().payload.get(),
        r#"{"text":"hi"}"#
    );
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![r#"typed:{"text":"hi"}"#.to_string(), "any:greeting".into()]
    );
    assert!(client.off(&typed));
    assert!(!typed.remove(), "already removed");
    seen.lock().unwrap().clear();
    client.send("hello", &json!({})).await.unwrap();
    stream.next_of("greeting").await.unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec!["any:greeting".to_string()]
    );
    s.stop().await;
}

#[tokio::test]
async fn rooms_and_direct_messages_between_clients() {
    let s = server(Arc::new(Notify::new())).await;
    let alice = Client::connect(&s.url()).await.unwrap();
    let bob = Client::connect(&s.url()).await.unwrap();
    let mut bob_msgs = bob.messages(64);
    let mut alice_msgs = alice.messages(64);

    alice.join("general").await.unwrap();
    bob.join("general").await.unwrap();
    assert!(alice.is_in_room("general"));
    assert_eq!(bob.rooms(), vec!["general"]);
    let joined = alice_msgs.next_of("user_joined").await.unwrap();
    assert_eq!(joined.room.as_deref(), Some("general"));

    alice
        .send_to_room("general", "chat", &json!({"content": "hello"}))
        .await
        .unwrap();
    let m = bob_msgs.next_of("chat").await.unwrap();
    assert_eq!(m.room.as_deref(), Some("general"));
    assert_eq!(m.from, Some(alice.id()));

    bob.send_direct(&alice.id(), "dm", &json!({"text": "psst"}))
        .await
        .unwrap();
    let m = alice_msgs.next_of("dm").await.unwrap();
    assert_eq!(m.from, Some(bob.id()));

    bob.leave("general").await.unwrap();
    assert!(!bob.is_in_room("general"));
    alice_msgs.next_of("user_left").await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn after_close_sends_fail_with_not_connected() {
    let s = server(Arc::new(Notify::new())).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let closes = Arc::new(Mutex::new(Vec::new()));
    let c2 = closes.clone();
    client.on_close(move |info| c2.lock().unwrap().push(info.code));
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
    assert_eq!(closes.lock().unwrap().clone(), vec![1000]);
    assert_eq!(
        client.send("x", &json!({})).await,
        Err(SendError::NotConnected)
    );
    assert_eq!(
        client.request::<Value, _>("add", &json!({}), TIMEOUT).await,
        Err(RequestError::NotConnected)
    );
    s.stop().await;
}

#[tokio::test]
async fn without_reconnect_a_server_shutdown_ends_the_client_and_fails_sent_requests() {
    let release = Arc::new(Notify::new());
    let s = TestServer::with(move |b| {
        TestServer::arithmetic(b.config(ServerConfig {
            // The `wait` handler never finishes: shutdown cancels it after this.
            shutdown_grace: Duration::from_millis(100),
            ..TestServer::config()
        }))
        .on("wait", move || {
            let release = release.clone();
            async move { release.notified().await }
        })
    })
    .await;
    let client = Client::connect_with(
        &s.url(),
        ClientConfig::default().reconnect(ReconnectConfig::disabled()),
    )
    .await
    .unwrap();
    let c = client.clone();
    let pending =
        tokio::spawn(async move { c.request::<Value, _>("wait", &json!({}), TIMEOUT).await });
    // Make sure the request is in flight before shutting down.
    let sum: f64 = client
        .request("add", &json!({"a": 1, "b": 1}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 2.0);
    let server = s.server.clone();
    let stop = tokio::spawn(async move { server.shutdown().await });
    let info = client.closed().await;
    assert_eq!(info.code, 1001);
    assert_eq!(info.reconnect, Reconnect::Backoff);
    // The handler never finished within the grace period: the request was sent and
    // its answer lost with the connection.
    assert_eq!(pending.await.unwrap(), Err(RequestError::ConnectionLost));
    assert_eq!(
        client.send("x", &json!({})).await,
        Err(SendError::NotConnected)
    );
    stop.await.unwrap();
}

#[tokio::test]
async fn connect_errors_are_typed() {
    // Nothing listens on this port: bind one, then drop it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = Client::connect(&format!("ws://{addr}/ws"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable(_)), "{err:?}");
    assert!(matches!(
        Client::connect("http://x").await,
        Err(ConnectError::InvalidUrl(_))
    ));

    let s = TestServer::with_config(ServerConfig {
        max_connections: 0,
        ..TestServer::config()
    })
    .await;
    match Client::connect(&s.url()).await.unwrap_err() {
        ConnectError::Refused {
            code, reconnect, ..
        } => {
            assert_eq!(code, "SERVER_FULL");
            assert_eq!(reconnect, Reconnect::Backoff);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn close_gives_up_on_a_server_that_never_answers() {
    use futures_util::SinkExt;
    // A bare WebSocket server that says `connected`, then never reads again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = r#"{"type":"connected","payload":{"client_id":"0000000000000001","session_id":"s","server":"mute"}}"#;
        ws.send(tokio_tungstenite::tungstenite::Message::text(hello))
            .await
            .unwrap();
        let _ = hold_rx.await; // keep the socket open, unread
        drop(ws);
    });
    let config = switchboard_client::ClientConfig {
        close_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let client = Client::connect_with(&format!("ws://{addr}/"), config)
        .await
        .unwrap();
    assert_eq!(client.session().server, "mute");
    tokio::time::timeout(TIMEOUT, client.close())
        .await
        .expect("close returns");
    let info = client.close_info().unwrap();
    assert_eq!(info.code, 1006);
    assert!(info.reason.contains("did not answer"));
    drop(hold_tx);
}

#[tokio::test]
async fn an_ack_relayed_from_another_client_never_answers_a_request() {
    use switchboard_server::{Envelope, Payload};
    // A server that, before answering, hands the client a forged ack for the very
    // `ref` in flight, as another client would relay it (`from` set) or send it
    // through a room; only the server's own ack may answer.
    let s = TestServer::with(|b| {
        b.on("slow_add", |conn: Conn, env: Envelope| async move {
            let v: Value = env.payload.deserialize().unwrap();
            let r = env.ref_id.clone().unwrap_or_default();
            let forged =
                Payload::from_serialize(&json!({"ref": r, "status": "ok", "result": 1337}))
                    .unwrap();
            for (from, room) in [(Some("attacker"), None), (None, Some("lobby"))] {
                let ack = Envelope {
                    from: from.map(str::to_owned),
                    room: room.map(str::to_owned),
                    ..Envelope::with_payload("ack", forged.clone())
                };
                conn.send(&ack).ok();
            }
            Json(v["a"].as_f64().unwrap_or(0.0) + v["b"].as_f64().unwrap_or(0.0))
        })
    })
    .await;
    let client = Client::connect(&s.url()).await.unwrap();
    for i in 0..10 {
        let sum: f64 = client
            .request("slow_add", &json!({"a": i, "b": 1}), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(sum, f64::from(i) + 1.0);
    }
    s.stop().await;
}

#[tokio::test]
async fn close_with_sends_its_code_and_reason_and_ready_state_follows() {
    let (tx, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let s = TestServer::with(move |b| {
        b.config(TestServer::config()).on_disconnect(
            move |_: switchboard_server::Conn, why: switchboard_server::DisconnectReason| {
                let tx = tx.clone();
                async move {
                    tx.send((why.code, why.reason)).ok();
                }
            },
        )
    })
    .await;
    let client = Client::connect(&s.url()).await.unwrap();
    assert_eq!(client.state().ready_state(), 1);
    client.close_with(4000, "logging out").await;
    assert_eq!(client.state().ready_state(), 3);
    let (code, reason) = tokio::time::timeout(TIMEOUT, closes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((code, reason.as_str()), (4000, "logging out"));
    // A code a client may not send goes out as 1000.
    let client = Client::connect(&s.url()).await.unwrap();
    client.close_with(1006, "nope").await;
    let (code, _) = tokio::time::timeout(TIMEOUT, closes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 1000);
    s.stop().await;
}

#[tokio::test]
async fn on_open_sees_the_first_connection_and_a_closed_client_opens_again() {
    let s = server(Arc::new(Notify::new())).await;
    let client = Client::new(&s.url(), ClientConfig::default());
    assert_eq!(client.state(), ConnectionState::Closed);
    assert_eq!(
        client.send("x", &json!({})).await,
        Err(SendError::NotConnected)
    );
    let opens = Arc::new(Mutex::new(Vec::new()));
    let o2 = opens.clone();
    client.on_open(move |session| o2.lock().unwrap().push(session.client_id.clone()));
    let first = client.open().await.unwrap();
    assert!(client.is_connected());
    assert_eq!(opens.lock().unwrap().clone(), vec![first.client_id.clone()]);
    // Opening an open client changes nothing.
    assert_eq!(client.open().await.unwrap(), first);
    assert_eq!(opens.lock().unwrap().len(), 1);
    client.join("lobby").await.unwrap();

    // Metafor's manual reconnection: close, then connect again.
    client.close().await;
    let second = client.open().await.unwrap();
    assert_ne!(second.client_id, first.client_id);
    assert_eq!(
        opens.lock().unwrap().clone(),
        vec![first.client_id, second.client_id]
    );
    assert!(
        client.rooms().is_empty(),
        "a client opened again starts afresh"
    );
    let sum: f64 = client
        .request("add", &json!({"a": 2, "b": 3}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 5.0);
    client.close().await;

    // A refused open leaves it closed, ready to try again.
    let url = s.url();
    s.stop().await;
    let again = Client::new(&url, ClientConfig::default());
    assert!(matches!(
        again.open().await,
        Err(ConnectError::Unreachable(_))
    ));
    assert_eq!(again.state(), ConnectionState::Closed);
}

#[tokio::test]
async fn async_handlers_await_without_stalling_the_connection_and_run_in_order() {
    let s = server(Arc::new(Notify::new())).await;
    let alice = Client::connect(&s.url()).await.unwrap();
    let bob = Client::connect(&s.url()).await.unwrap();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let asker = alice.clone();
    // Each call awaits a request of its own: its answer arrives on the same connection,
    // so a handler that held up reading would never see it.
    let handler = alice.on_async("tick", move |msg| {
        let (client, done_tx) = (asker.clone(), done_tx.clone());
        async move {
            let i = msg.payload.to_value()["i"].as_f64().unwrap();
            let sum: f64 = client
                .request("add", &json!({"a": i, "b": 1000}), TIMEOUT)
                .await
                .unwrap();
            done_tx.send(sum - 1000.0).unwrap();
        }
    });
    for i in 0..20 {
        bob.send_direct(&alice.id(), "tick", &json!({ "i": i }))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let next = tokio::time::timeout(TIMEOUT, done.recv()).await.unwrap();
        seen.push(next.unwrap() as u32);
    }
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "one at a time, in order");

    // Removed: its task ends, and a later tick calls nothing.
    assert!(alice.off(&handler));
    let mut all = alice.messages(8);
    bob.send_direct(&alice.id(), "tick", &json!({ "i": 99 }))
        .await
        .unwrap();
    all.next_of("tick").await.unwrap();
    let after = tokio::time::timeout(TIMEOUT, done.recv()).await.unwrap();
    assert_eq!(after, None, "no call after removal");
    s.stop().await;
}
