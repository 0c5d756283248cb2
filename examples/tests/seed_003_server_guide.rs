//! Seed 003, netconduit's "Server Guide": its complete chat server
//! ([`switchboard_examples::chat`]) driven by Rust clients, then its RPC methods with
//! validation, errors and `listall`, lifecycle hooks, broadcasts with a count,
//! selective broadcasts, direct sends, connection info, kicking and graceful shutdown.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_client::{Client, ClientConfig, ConnectError, RequestError};
use switchboard_examples::chat::chat_server;
use switchboard_server::{
    Conn, ConnId, DisconnectReason, Filter, HandlerError, Server, ServerConfig,
};
use switchboard_test::{TIMEOUT, TestServer};

mod common;
use common::{inbox, next};

/// A client that authenticates with `chat_secret` and sees its first connection.
async fn chatter(url: &str) -> Client {
    Client::connect_with(url, ClientConfig::default().password("chat_secret"))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_full_chat_server_of_the_guide() {
    let s = TestServer::start(chat_server(Server::builder().config(ServerConfig {
        password: Some("chat_secret".into()),
        ..TestServer::config().name("ChatServer")
    })))
    .await;
    // The password is checked.
    let refused = Client::connect_with(&s.url(), ClientConfig::default().password("wrong")).await;
    assert!(
        matches!(&refused, Err(ConnectError::Refused { code, .. }) if code == "AUTH_FAILED"),
        "{refused:?}"
    );

    let ada = chatter(&s.url()).await;
    let mut ada_joined = inbox(&ada, "user_joined");
    let mut ada_chat = inbox(&ada, "chat");
    let mut ada_left = inbox(&ada, "user_left");
    let bob = chatter(&s.url()).await;
    // on_client_connect: the others hear user_joined {username: User_xxxx, count}.
    let joined = next(&mut ada_joined).await;
    assert_eq!(joined["count"], 2);
    assert!(joined["username"].as_str().unwrap().starts_with("User_"));

    // RPC: set_username with the caller's context, then get_users / get_user_count.
    let set: Value = bob
        .call("set_username", &json!({"username": "bob"}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(set, json!({"set": true, "username": "bob"}));
    let users: Vec<String> = bob.call("get_users", &json!({}), TIMEOUT).await.unwrap();
    assert_eq!(users.len(), 2);
    assert!(users.contains(&"bob".to_owned()), "{users:?}");
    let count: usize = bob.call("get_user_count", &(), TIMEOUT).await.unwrap();
    assert_eq!(count, 2);
    // Validated: a username of the wrong type is refused before the method runs.
    let bad = bob
        .call::<Value, _>("set_username", &json!({"username": 7}), TIMEOUT)
        .await;
    assert!(
        matches!(&bad, Err(RequestError::Remote { code, .. }) if code == "INVALID_PARAMS"),
        "{bad:?}"
    );
    // listall discovers them.
    let methods = bob.methods(TIMEOUT).await.unwrap();
    let names: Vec<&str> = methods.iter().filter_map(|m| m["name"].as_str()).collect();
    for name in ["set_username", "get_users", "get_user_count", "listall"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }

    // chat: broadcast to the others with the sender's name; {"sent": true} back.
    let sent: Value = bob
        .request("chat", &json!({"message": "hello"}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sent, json!({"sent": true}));
    let chat = next(&mut ada_chat).await;
    assert_eq!(
        (chat["from"].as_str(), chat["message"].as_str()),
        (Some("bob"), Some("hello"))
    );
    assert!(chat["time"].as_f64().unwrap() > 0.0);

    // set_name renames and tells everyone.
    let mut ada_renames = inbox(&ada, "name_change");
    let renamed: Value = bob
        .request("set_name", &json!({"username": "robert"}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(renamed, json!({"username": "robert"}));
    assert_eq!(
        next(&mut ada_renames).await,
        json!({"old": "bob", "new": "robert"})
    );

    // on_client_disconnect: user_left with the new count.
    bob.close().await;
    let left = next(&mut ada_left).await;
    assert_eq!(left, json!({"username": "robert", "count": 1}));
    s.stop().await;
}

/// `create_user(username: str, email: str, age: int, active: bool = True)`.
#[derive(Deserialize, JsonSchema)]
struct CreateUser {
    username: String,
    email: String,
    age: i64,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

/// `divide(a: float, b: float)`.
#[derive(Deserialize, JsonSchema)]
struct Divide {
    a: f64,
    b: f64,
}

#[tokio::test]
async fn rpc_methods_with_validation_errors_and_listall() {
    let s = TestServer::with(|b| {
        b.rpc("add", |p: AddArgs| async move { p.a + p.b })
            .rpc("create_user", |u: CreateUser| async move {
                switchboard_server::Json(json!({
                    "id": 1, "username": u.username, "email": u.email, "age": u.age, "active": u.active,
                }))
            })
            .rpc("divide", |p: Divide| async move {
                if p.b == 0.0 {
                    // Raise exception - will be sent to client
                    return Err(HandlerError::new("VALUE_ERROR", "Cannot divide by zero"));
                }
                Ok(p.a / p.b)
            })
    })
    .await;
    let client = Client::connect(&s.url()).await.unwrap();
    let sum: i64 = client
        .call("add", &json!({"a": 2, "b": 3}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 5);
    let user: Value = client
        .call(
            "create_user",
            &json!({"username": "ada", "email": "ada@example.com", "age": 36}),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(user["active"], true, "active defaults to True");
    // "age must be int"
    let e = client
        .call::<Value, _>(
            "create_user",
            &json!({"username": "ada", "email": "a@b", "age": "old"}),
            TIMEOUT,
        )
        .await
        .unwrap_err();
    let RequestError::Remote { code, details, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(code, "INVALID_PARAMS");
    assert!(details.unwrap().to_string().contains("age"));
    let e = client
        .call::<f64, _>("divide", &json!({"a": 1.0, "b": 0.0}), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RequestError::Remote { code, message, .. } if code == "VALUE_ERROR" && message == "Cannot divide by zero"),
        "{e:?}"
    );
    let e = client
        .call::<Value, _>("nope", &json!({}), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RequestError::Remote { code, .. } if code == "UNKNOWN_METHOD"),
        "{e:?}"
    );
    // listall: every method with its parameters.
    let methods = client.methods(TIMEOUT).await.unwrap();
    let create = methods.iter().find(|m| m["name"] == "create_user").unwrap();
    assert!(create.to_string().contains("email"), "{create}");
    s.stop().await;
}

#[derive(Deserialize, JsonSchema)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[tokio::test]
async fn hooks_broadcasts_direct_sends_connection_info_kick_and_shutdown() {
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let (on_start, on_stop, on_conn, on_gone) = (
        events.clone(),
        events.clone(),
        events.clone(),
        events.clone(),
    );
    let s = TestServer::with(move |b| {
        b.on_startup(move |srv: Server| {
            let events = on_start.clone();
            async move {
                events
                    .lock()
                    .unwrap()
                    .push(format!("started {}", srv.is_running()))
            }
        })
        .on_shutdown(move |srv: Server| {
            let events = on_stop.clone();
            async move {
                events.lock().unwrap().push("stopping".into());
                // Notify all clients
                srv.broadcast(
                    "server_shutdown",
                    &json!({"message": "Server is shutting down"}),
                )
                .ok();
            }
        })
        .on_connect(move |connection: Conn| {
            let events = on_conn.clone();
            async move {
                events.lock().unwrap().push(format!("+{}", connection.id()));
                // Send welcome
                connection
                    .send_message("welcome", &json!({"message": "Welcome to the server!"}))
                    .ok();
            }
        })
        .on_disconnect(move |connection: Conn, _why: DisconnectReason| {
            let events = on_gone.clone();
            async move { events.lock().unwrap().push(format!("-{}", connection.id())) }
        })
    })
    .await;
    let server = s.server.clone();
    let ids = |c: &Client| -> ConnId { c.id().parse().unwrap() };
    let mut clients = Vec::new();
    let mut welcomes = Vec::new();
    for _ in 0..3 {
        let c = Client::new(&s.url(), ClientConfig::default());
        welcomes.push(inbox(&c, "welcome"));
        c.open().await.unwrap();
        clients.push(c);
    }
    for w in &mut welcomes {
        assert_eq!(next(w).await["message"], "Welcome to the server!");
    }
    assert_eq!(server.connection_count(), 3);
    assert!(server.is_running());

    // count = await server.broadcast(...): "Sent to 3 clients"
    let mut notes: Vec<_> = clients.iter().map(|c| inbox(c, "notification")).collect();
    let count = server
        .broadcast(
            "notification",
            &json!({"type": "info", "text": "Server maintenance in 10 minutes"}),
        )
        .unwrap();
    assert_eq!(count, 3);
    for n in &mut notes {
        assert_eq!(next(n).await["type"], "info");
    }
    // include=active_players, exclude=spectators
    let mut updates: Vec<_> = clients.iter().map(|c| inbox(c, "update")).collect();
    let active_players = [ids(&clients[0]), ids(&clients[1])];
    let spectators = [ids(&clients[1])];
    let sent = server
        .broadcast_with(
            "update",
            &json!({"state": 1}),
            Filter::include(active_players).and_exclude(spectators),
        )
        .unwrap();
    assert_eq!(sent, 1);
    assert_eq!(next(&mut updates[0]).await["state"], 1);

    // Direct: connection = server._pool.get(client_id); connection.send_message(...)
    let mut private = inbox(&clients[2], "private");
    let connection = server.connection(ids(&clients[2])).unwrap();
    assert!(!connection.is_authenticated());
    connection
        .send_message("private", &json!({"text": "This is only for you"}))
        .unwrap();
    assert_eq!(next(&mut private).await["text"], "This is only for you");

    // Kick: send_message("kicked"), then disconnect; the client does not come back.
    let mut kicked = inbox(&clients[2], "kicked");
    connection
        .send_message("kicked", &json!({"reason": "Violation"}))
        .unwrap();
    connection.disconnect("Violation");
    assert_eq!(next(&mut kicked).await["reason"], "Violation");
    let info = clients[2].closed().await;
    assert_eq!(info.code, 4004);

    // Graceful shutdown: the shutdown hook's broadcast reaches the clients still here.
    let mut bye = inbox(&clients[0], "server_shutdown");
    s.stop().await;
    assert_eq!(next(&mut bye).await["message"], "Server is shutting down");
    let events = events.lock().unwrap().clone();
    assert_eq!(events[0], "started true");
    assert!(events.contains(&"stopping".to_owned()), "{events:?}");
    assert_eq!(events.iter().filter(|e| e.starts_with('+')).count(), 3);
    assert_eq!(
        events.iter().filter(|e| e.starts_with('-')).count(),
        3,
        "{events:?}"
    );
}
