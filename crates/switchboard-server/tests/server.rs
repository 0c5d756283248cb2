//! Server behaviour over real sockets: handlers and priority, broadcast, direct sends,
//! hooks, kicks, floods and shutdown (rooms: `rooms.rs`; slow readers: `slow_readers.rs`).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_server::{
    Conn, ConnId, DisconnectReason, Filter, Json, Server, ServerConfig, State,
};
use switchboard_test::{RawClient, TIMEOUT, TestServer, unstamped};
use tokio::sync::{Notify, mpsc};

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn several_handlers_run_by_priority_and_the_first_reply_wins() {
    let log = Log::default();
    let s = TestServer::with(|b| {
        b.config(TestServer::config())
            .state(log.clone())
            .on_with_priority("event", 1, |State(log): State<Log>| async move {
                log.push("low");
                Json(json!({"from": "low"}))
            })
            .on_with_priority("event", 10, |State(log): State<Log>| async move {
                log.push("high")
            })
            .on_with_priority("event", 5, |State(log): State<Log>| async move {
                log.push("mid");
                Json(json!({"from": "mid"}))
            })
            .on_with_priority("guarded", 10, |Json(v): Json<Value>| async move {
                if v["allowed"] != true {
                    return Err(switchboard_server::HandlerError::new(
                        "FORBIDDEN_EVENT",
                        "not allowed",
                    ));
                }
                Ok(())
            })
            .on("guarded", |State(log): State<Log>| async move {
                log.push("guarded ran")
            })
    })
    .await;
    let mut c = s.raw().await;
    let reply = c.roundtrip(json!({"type":"event"})).await;
    assert_eq!(
        reply,
        json!({"type":"event_response","payload":{"from":"mid"}})
    );
    assert_eq!(log.take(), vec!["high", "mid", "low"]);

    // An error stops the chain: the lower-priority handler does not run.
    let reply = c
        .roundtrip(json!({"type":"guarded","payload":{"allowed":false}}))
        .await;
    assert_eq!(reply["payload"]["code"], "FORBIDDEN_EVENT");
    assert!(log.take().is_empty());
    c.send(json!({"type":"guarded","payload":{"allowed":true}}))
        .await;
    assert!(c.nothing_pending().await);
    assert_eq!(log.take(), vec!["guarded ran"]);
    s.stop().await;
}

fn chat_server()
-> impl FnOnce(switchboard_server::ServerBuilder) -> switchboard_server::ServerBuilder {
    |b| {
        b.config(TestServer::config())
            .on(
                "chat",
                |server: Server, conn: Conn, Json(v): Json<Value>| async move {
                    let n = server.broadcast_with(
                        "chat",
                        &json!({"from": conn.id(), "message": v["message"]}),
                        Filter::exclude([conn.id()]),
                    )?;
                    Ok::<_, switchboard_server::HandlerError>(Json(
                        json!({"sent": true, "reached": n}),
                    ))
                },
            )
            .on("team", |server: Server, Json(v): Json<Value>| async move {
                let ids = |k: &str| -> Vec<ConnId> {
                    v[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().parse().unwrap())
                        .collect()
                };
                let n = server.broadcast_with(
                    "team_update",
                    &json!({"score": 42}),
                    Filter::include(ids("include")).and_exclude(ids("exclude")),
                )?;
                Ok::<_, switchboard_server::HandlerError>(Json(json!({"reached": n})))
            })
            .on(
                "whisper",
                |server: Server, conn: Conn, Json(v): Json<Value>| async move {
                    let to: ConnId = v["to"].as_str().unwrap_or_default().parse()?;
                    server.send_to(
                        to,
                        "private",
                        &json!({"text": v["text"], "from": conn.id()}),
                    )?;
                    Ok::<_, switchboard_server::HandlerError>(())
                },
            )
    }
}

#[tokio::test]
async fn broadcast_with_include_and_exclude() {
    let s = TestServer::with(chat_server()).await;
    let mut a = s.raw().await;
    let mut b = s.raw().await;
    let mut c = s.raw().await;

    let reply = a
        .roundtrip(json!({"type":"chat","ref":"1","payload":{"message":"hi"}}))
        .await;
    assert_eq!(
        reply["payload"]["result"],
        json!({"sent": true, "reached": 2})
    );
    for other in [&mut b, &mut c] {
        let got = other.recv().await;
        assert_eq!(got["type"], "chat");
        assert_eq!(got["payload"], json!({"from": a.id, "message": "hi"}));
    }
    assert!(a.nothing_pending().await, "the sender is excluded");

    // include {a, b} exclude {a}: only b.
    let reply = c
        .roundtrip(
            json!({"type":"team","ref":"2","payload":{"include":[a.id, b.id],"exclude":[a.id]}}),
        )
        .await;
    assert_eq!(reply["payload"]["result"]["reached"], 1);
    assert_eq!(b.recv().await["type"], "team_update");
    assert!(a.nothing_pending().await);
    assert!(c.nothing_pending().await);

    // From server code: everyone, and the count.
    assert_eq!(
        s.server
            .broadcast("announcement", &json!({"text":"midnight"}))
            .unwrap(),
        3
    );
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(
            unstamped(x.recv().await),
            json!({"type":"announcement","payload":{"text":"midnight"},"to":"all"})
        );
    }
    // Payloads must be objects.
    assert!(s.server.broadcast("bad", &json!([1])).is_err());
    s.stop().await;
}

#[tokio::test]
async fn direct_sends_reach_one_client_and_unknown_ids_are_errors() {
    let s = TestServer::with(chat_server()).await;
    let mut a = s.raw().await;
    let mut b = s.raw().await;
    a.send(json!({"type":"whisper","payload":{"to": b.id, "text":"psst"}}))
        .await;
    assert_eq!(
        unstamped(b.recv().await),
        json!({"type":"private","payload":{"text":"psst","from": a.id}})
    );
    assert!(a.nothing_pending().await);
    let reply = a
        .roundtrip(
            json!({"type":"whisper","ref":"w","payload":{"to":"00000000ffffffff","text":"x"}}),
        )
        .await;
    assert_eq!(reply["payload"]["code"], "HANDLER_ERROR");
    assert!(
        reply["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("no client")
    );

    // From server code.
    let id: ConnId = b.id.parse().unwrap();
    s.server
        .send_to(id, "notification", &json!({"text":"expires soon"}))
        .unwrap();
    assert_eq!(b.recv().await["type"], "notification");
    assert!(s.server.connection(id).is_some());
    assert_eq!(s.server.connection_count(), 2);
    s.stop().await;
}

#[tokio::test]
async fn disconnect_leaves_rooms_notifies_members_and_runs_hooks() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Vec<String>, DisconnectReason, usize)>();
    let (ctx, mut crx) = mpsc::unbounded_channel::<String>();
    let s = TestServer::with(move |b| {
        b.config(TestServer::config())
            .on_connect(move |conn: Conn| {
                let ctx = ctx.clone();
                async move {
                    conn.send_message("welcome", &json!({"message":"Welcome to the server!"}))
                        .ok();
                    ctx.send(conn.id().to_string()).ok();
                }
            })
            .on_disconnect(move |conn: Conn, reason| {
                let tx = tx.clone();
                async move {
                    let count = conn.server().map_or(0, |s| s.connection_count());
                    tx.send((conn.id().to_string(), conn.rooms(), reason, count))
                        .ok();
                }
            })
    })
    .await;
    let mut a = s.raw().await;
    assert_eq!(a.recv().await["type"], "welcome");
    assert_eq!(crx.recv().await.unwrap(), a.id);
    let mut b = s.raw().await;
    b.recv_type("welcome").await;
    for x in [&mut a, &mut b] {
        x.send(json!({"type":"join_room","payload":{"room_id":"general"}}))
            .await;
        x.recv_type("join_room_response").await;
    }
    a.recv_type("user_joined").await;

    let b_id = b.id.clone();
    b.drop_connection();
    let left = a.recv_type("user_left").await;
    assert_eq!(
        left["payload"],
        json!({"user_id": b_id, "room_id":"general"})
    );
    let (id, rooms, reason, count) = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, b_id);
    assert_eq!(rooms, vec!["general"]);
    assert!(!reason.by_server);
    assert_eq!(count, 1, "the hook sees the connection already gone");
    assert_eq!(s.server.room_members("general").len(), 1);

    // A polite close reports its code.
    a.close().await;
    let (_, _, reason, _) = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason.code, 1000);
    assert!(s.server.rooms().is_empty(), "empty rooms are dropped");
    assert_eq!(s.server.connection_count(), 0);
    s.stop().await;
}

#[tokio::test]
async fn kick_delivers_the_last_message_then_closes_4004() {
    let s = TestServer::with(|b| {
        b.config(TestServer::config())
            .on("misbehave", |conn: Conn| async move {
                conn.send_message("kicked", &json!({"reason":"Violation"}))
                    .ok();
                conn.disconnect("Violation");
            })
    })
    .await;
    let mut a = s.raw().await;
    let mut b = s.raw().await;
    a.send(json!({"type":"misbehave"})).await;
    assert_eq!(
        unstamped(a.recv().await),
        json!({"type":"kicked","payload":{"reason":"Violation"}})
    );
    assert_eq!(
        a.recv().await,
        json!({"type":"error","payload":{"code":"KICKED","message":"Violation"}}),
        "the final message says why"
    );
    let closed = a.closed().await;
    assert_eq!(closed.code, 4004);
    assert!(closed.reason.starts_with("KICKED"));
    assert_eq!(
        switchboard_server::proto::reconnect_hint(closed.code),
        switchboard_server::proto::Reconnect::Never
    );

    // Kicking from server code.
    let id: ConnId = b.id.parse().unwrap();
    s.server.connection(id).unwrap().disconnect("bye");
    assert_eq!(b.closed().await.code, 4004);
    s.stop().await;
}

#[tokio::test]
async fn a_flood_of_10000_messages_arrives_complete_and_in_order() {
    let seen = Log::default();
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            // This test is about order and completeness, not flood control.
            rate_limit: 0,
            ..TestServer::config()
        })
        .state(seen.clone())
        .on(
            "count",
            |State(seen): State<Log>, Json(v): Json<Value>| async move {
                seen.push(v["n"].to_string());
            },
        )
    })
    .await;
    let mut sender = s.raw().await;
    let mut receiver = s.raw().await;
    // Client to server: every message handled, in order.
    for n in 0..10_000 {
        sender
            .send(json!({"type":"count","payload":{"n": n}}))
            .await;
    }
    assert!(sender.nothing_pending().await);
    let got = seen.take();
    assert_eq!(got.len(), 10_000);
    assert!(
        got.iter().enumerate().all(|(i, n)| *n == i.to_string()),
        "in order"
    );

    // Client to client through the relay.
    let to = receiver.id.clone();
    let writer = tokio::spawn(async move {
        for n in 0..10_000 {
            sender
                .send(json!({"type":"seq","to": to,"payload":{"n": n}}))
                .await;
        }
        sender
    });
    for n in 0..10_000 {
        let m = receiver.recv().await;
        assert_eq!(m["payload"]["n"], n);
    }
    writer.await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once() {
    let s = TestServer::with(|b| b.config(TestServer::config())).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(s.raw().await);
    }
    assert_eq!(s.server.connection_count(), 200);
    assert_eq!(s.server.broadcast("hello", &json!({})).unwrap(), 200);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                assert_eq!(c.recv().await["type"], "hello");
                c.roundtrip(json!({"type":"ping"})).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap()["type"], "pong");
    }
    s.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_handlers_then_closes_everyone_with_1001() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let shutdown_hook_ran = Log::default();
    let (st, rl, hook) = (started.clone(), release.clone(), shutdown_hook_ran.clone());
    let s = TestServer::with(move |b| {
        b.config(TestServer::config())
            .on("slow", move || {
                let (st, rl) = (st.clone(), rl.clone());
                async move {
                    st.notify_one();
                    rl.notified().await;
                    Json(json!({"done": true}))
                }
            })
            .on_shutdown(move |server: Server| {
                let hook = hook.clone();
                async move {
                    server
                        .broadcast("server_shutdown", &json!({"message":"bye"}))
                        .ok();
                    hook.push("ran");
                }
            })
    })
    .await;
    let mut busy = s.raw().await;
    let mut idle = s.raw().await;
    busy.send(json!({"type":"slow","ref":"s1"})).await;
    started.notified().await;

    let server = s.server.clone();
    let stopping = tokio::spawn(async move { server.shutdown().await });
    // Idle clients hear the goodbye and the close.
    assert_eq!(idle.recv().await["type"], "server_shutdown");
    let closed = idle.closed().await;
    assert_eq!(closed.code, 1001);
    assert!(closed.reason.starts_with("SHUTTING_DOWN"));
    // The busy one gets its answer first, then the close.
    release.notify_one();
    assert_eq!(
        busy.recv_type("ack").await["payload"]["result"],
        json!({"done": true})
    );
    assert_eq!(busy.closed().await.code, 1001);
    tokio::time::timeout(TIMEOUT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shutdown_hook_ran.take(), vec!["ran"]);
    assert!(!s.server.is_running());
    // No new connections after shutdown.
    assert!(tokio_tungstenite::connect_async(s.url()).await.is_err());
    s.stop().await;
}

#[tokio::test]
async fn mounts_in_an_axum_app_and_serves_health() {
    let server = Server::builder().config(TestServer::config()).build();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .route("/realtime", server.ws_route())
        .merge(axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })));
    server.start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut c = RawClient::connect(&format!("ws://{addr}/realtime")).await;
    assert_eq!(c.recv().await["type"], "connected");
    assert!(c.nothing_pending().await);
    assert!(server.is_running());
    let health = server.health();
    assert_eq!(health["connections"], 1);
    assert_eq!(health["backplane"]["name"], "local");
    server.shutdown().await;
    assert_eq!(c.closed().await.code, 1001);
    let _ = Duration::ZERO;
}
