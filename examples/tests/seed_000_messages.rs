//! Seed 000, netconduit's "Messages Guide", example by example: the server's sends
//! (to one client, to all, to a set, to all but a set), the client's sends, handlers on
//! both sides with the return value sent back, handler priority, and the guide's
//! request/response pattern with ids and a timeout.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_client::Client;
use switchboard_server::{Conn, ConnId, Filter, Json, Server};
use switchboard_test::{TIMEOUT, TestServer};
use tokio::sync::{mpsc, oneshot};

mod common;
use common::{inbox, next};

fn time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn id_of(client: &Client) -> ConnId {
    client.id().parse().unwrap()
}

/// The guide's server-side `chat` handler: log, broadcast to the others, return an
/// acknowledgment to the sender.
async fn handle_chat(server: Server, client: Conn, Json(data): Json<Value>) -> Json<Value> {
    let username = data["username"].as_str().unwrap_or("Anonymous").to_owned();
    let message = data["message"].as_str().unwrap_or_default().to_owned();
    println!("[{username}]: {message}");
    server
        .broadcast_with(
            "chat",
            &json!({"from": username, "message": message, "timestamp": time()}),
            Filter::exclude([client.id()]),
        )
        .unwrap();
    Json(json!({"sent": true, "timestamp": time()}))
}

#[tokio::test]
async fn sending_from_the_server_to_one_all_a_set_and_all_but_a_set() {
    let s = TestServer::with(|b| b).await;
    let (p1, p2, p3) = (
        Client::connect(&s.url()).await.unwrap(),
        Client::connect(&s.url()).await.unwrap(),
        Client::connect(&s.url()).await.unwrap(),
    );
    let mut notes = inbox(&p1, "notification");
    let announcements: Vec<_> = [&p1, &p2, &p3]
        .iter()
        .map(|c| inbox(c, "announcement"))
        .collect();
    let mut teams: Vec<_> = [&p1, &p2, &p3]
        .iter()
        .map(|c| inbox(c, "team_update"))
        .collect();
    let mut chats: Vec<_> = [&p1, &p2, &p3].iter().map(|c| inbox(c, "chat")).collect();
    let server = &s.server;

    // Send to specific client
    let connection = server.connection(id_of(&p1)).unwrap();
    connection
        .send_message(
            "notification",
            &json!({"type": "alert", "text": "Your session expires in 5 minutes"}),
        )
        .unwrap();
    assert_eq!(
        next(&mut notes).await["text"],
        "Your session expires in 5 minutes"
    );

    // Broadcast to all clients
    server
        .broadcast(
            "announcement",
            &json!({"text": "Server maintenance at midnight"}),
        )
        .unwrap();
    for mut rx in announcements {
        assert_eq!(
            next(&mut rx).await["text"],
            "Server maintenance at midnight"
        );
    }

    // Broadcast to some clients: include={player1_id, player2_id}
    let (player1_id, player2_id) = (id_of(&p1), id_of(&p2));
    server
        .broadcast_with(
            "team_update",
            &json!({"team": "red", "score": 42}),
            Filter::include([player1_id, player2_id]),
        )
        .unwrap();
    // Broadcast to all except some: exclude={sender_id}
    let sender_id = id_of(&p3);
    server
        .broadcast_with(
            "chat",
            &json!({"from": "p3", "message": "hi"}),
            Filter::exclude([sender_id]),
        )
        .unwrap();
    for (i, rx) in teams.iter_mut().enumerate().take(2) {
        assert_eq!(next(rx).await["score"], 42, "player {}", i + 1);
    }
    for rx in chats.iter_mut().take(2) {
        assert_eq!(next(rx).await["message"], "hi");
    }
    // The third player got neither: a message sent to it after both arrives first.
    let mut marker = inbox(&p3, "marker");
    server
        .connection(sender_id)
        .unwrap()
        .send_message("marker", &json!({}))
        .unwrap();
    next(&mut marker).await;
    assert!(teams[2].try_recv().is_err(), "not in the include set");
    assert!(chats[2].try_recv().is_err(), "excluded");
    s.stop().await;
}

#[tokio::test]
async fn a_client_sends_and_the_handler_s_return_value_goes_back_to_the_sender() {
    let s = TestServer::with(|b| b.on("chat", handle_chat).on("game_action", || async {})).await;
    let john = Client::connect(&s.url()).await.unwrap();
    let other = Client::connect(&s.url()).await.unwrap();
    // @client.on("chat") async def on_chat(data): sender, message
    let (tx, mut on_chat) = mpsc::unbounded_channel();
    other.on_async("chat", move |msg| {
        let tx = tx.clone();
        async move {
            let data = msg.payload.to_value();
            println!("{}: {}", data["from"], data["message"]);
            tx.send(data).ok();
        }
    });
    let mut john_chat = inbox(&john, "chat");
    let mut ack = inbox(&john, "chat_response");

    john.send(
        "chat",
        &json!({"username": "John", "message": "Hello everyone!"}),
    )
    .await
    .unwrap();
    john.send(
        "game_action",
        &json!({"action": "move", "x": 100, "y": 200}),
    )
    .await
    .unwrap();

    let data = next(&mut on_chat).await;
    let (sender, message) = (data["from"].as_str(), data["message"].as_str());
    assert_eq!((sender, message), (Some("John"), Some("Hello everyone!")));
    assert!(data["timestamp"].as_f64().unwrap() > 0.0);
    // "Return acknowledgment to sender": the sender's `chat_response`.
    assert_eq!(next(&mut ack).await["sent"], true);
    assert!(john_chat.try_recv().is_err(), "exclude={{client.id}}");
    // The same as a request: the return value is the answer.
    let answer: Value = john
        .request("chat", &json!({"message": "again"}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(answer["sent"], true);
    s.stop().await;
}

#[tokio::test]
async fn higher_priority_handlers_run_first() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let (high, low) = (order.clone(), order.clone());
    let s = TestServer::with(move |b| {
        b.on_with_priority("event", 10, move || {
            let order = high.clone();
            async move { order.lock().unwrap().push("high") }
        })
        .on_with_priority("event", 1, move || {
            let order = low.clone();
            async move { order.lock().unwrap().push("low") }
        })
    })
    .await;
    let client = Client::connect(&s.url()).await.unwrap();
    client
        .request::<Value, _>("event", &json!({}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(order.lock().unwrap().clone(), vec!["high", "low"]);
    s.stop().await;
}

/// The guide's request/response pattern built on plain messages: a `request_id`, a
/// future per request, `asyncio.wait_for(future, timeout=10.0)`.
#[tokio::test]
async fn the_request_response_pattern_on_messages() {
    let s = TestServer::with(|b| {
        b.on(
            "request",
            |client: Conn, Json(data): Json<Value>| async move {
                let request_id = data["request_id"].clone();
                // Process request...
                let result = data["payload"]["n"].as_i64().unwrap_or(0) * 2;
                // Send response with same ID
                client
                    .send_message(
                        "response",
                        &json!({"request_id": request_id, "result": result}),
                    )
                    .ok();
            },
        )
    })
    .await;
    let client = Client::connect(&s.url()).await.unwrap();
    type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;
    let pending_requests: Pending = Arc::default();
    let p = pending_requests.clone();
    client.on("response", move |msg| {
        let data = msg.payload.to_value();
        let request_id = data["request_id"].as_str().unwrap_or_default();
        if let Some(future) = p.lock().unwrap().remove(request_id) {
            future.send(data["result"].clone()).ok();
        }
    });
    let make_request = |payload: Value, n: u32| {
        let (client, pending_requests) = (client.clone(), pending_requests.clone());
        async move {
            let request_id = format!("req-{n}");
            let (future, result) = oneshot::channel();
            pending_requests
                .lock()
                .unwrap()
                .insert(request_id.clone(), future);
            client
                .send(
                    "request",
                    &json!({"request_id": request_id, "payload": payload}),
                )
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), result).await
        }
    };
    let (a, b) = tokio::join!(
        make_request(json!({"n": 21}), 1),
        make_request(json!({"n": 5}), 2)
    );
    assert_eq!(
        (a.unwrap().unwrap(), b.unwrap().unwrap()),
        (json!(42), json!(10))
    );
    // switchboard has the pattern built in: `ref` and an `ack`, with a timeout.
    let doubled: Value = client
        .request(
            "request",
            &json!({"request_id": "r", "payload": {"n": 1}}),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(
        doubled,
        Value::Null,
        "the handler returned nothing; it sent `response`"
    );
    s.stop().await;
}
