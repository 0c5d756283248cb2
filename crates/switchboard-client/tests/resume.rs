//! What the client does with a resume's outcome, against a scripted server (a real
//! WebSocket on a free port that says exactly what the test needs).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_client::{Client, ClientConfig, ReconnectConfig, ResumeOutcome};
use switchboard_test::TIMEOUT;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Socket = WebSocketStream<tokio::net::TcpStream>;

async fn accept(listener: &TcpListener) -> Socket {
    let (tcp, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("the client connects")
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

async fn send(ws: &mut Socket, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn recv(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a frame from the client")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

fn position(offset: u64) -> Value {
    json!({"epoch": "00000000000000aa", "offset": offset})
}

fn connected(resumed: Option<Value>) -> Value {
    let mut payload = json!({
        "client_id": "c1", "session_id": "c1.s", "resume_token": "t", "server": "script",
        "streams": {"session": position(0)},
    });
    if let Some(resumed) = resumed {
        payload["resumed"] = resumed;
    }
    json!({"type": "connected", "payload": payload})
}

/// A server that gives a session back without a room its client was in (none of
/// ours does since the closing connection's leaves stopped reaching the session; the
/// client must not rely on it): the client joins the room again, and its `on_resume`
/// says the room was not recovered, instead of the client staying out of it while
/// `rooms()` still lists it.
#[tokio::test]
async fn a_room_the_resumed_session_lacks_is_joined_again_and_reported_lost() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let config = ClientConfig::default().reconnect(ReconnectConfig {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..ReconnectConfig::default()
    });
    let client = tokio::spawn(async move { Client::connect_with(&url, config).await });
    let mut ws = accept(&listener).await;
    send(&mut ws, connected(None)).await;
    let client = client.await.unwrap().unwrap();
    let (outcomes, mut resumed) = mpsc::unbounded_channel::<ResumeOutcome>();
    client.on_resume(move |o| {
        let _ = outcomes.send(o.clone());
    });

    let joining = tokio::spawn({
        let client = client.clone();
        async move { client.join("kept").await }
    });
    let join = recv(&mut ws).await;
    assert_eq!(join["type"], "join_room", "{join}");
    let result = json!({"room_id": "kept", "position": position(4)});
    let ack = json!({"ref": join["ref"], "status": "ok", "result": result});
    send(&mut ws, json!({"type": "ack", "payload": ack})).await;
    joining.await.unwrap().unwrap();
    drop(ws); // cut, no close frame

    let mut ws = accept(&listener).await;
    let resume = recv(&mut ws).await;
    assert_eq!(resume["type"], "resume", "{resume}");
    assert_eq!(
        resume["payload"]["streams"]["rooms"]["kept"],
        position(4),
        "the client asks for the room"
    );
    let outcome = json!({"resumed": true, "session": {"recovered": true, "missed": 0, "position": position(0)}, "rooms": {}});
    send(&mut ws, connected(Some(outcome))).await;

    let rejoin = recv(&mut ws).await;
    assert_eq!(rejoin["type"], "join_room", "{rejoin}");
    assert_eq!(rejoin["payload"]["room_id"], "kept");
    let outcome = tokio::time::timeout(TIMEOUT, resumed.recv())
        .await
        .expect("on_resume is called")
        .unwrap();
    assert!(outcome.resumed);
    assert!(!outcome.fully_recovered(), "{outcome:?}");
    let kept = &outcome.rooms["kept"];
    assert!(!kept.recovered);
    assert_eq!(
        serde_json::to_value(kept.reason).unwrap(),
        json!("not_restored")
    );
    assert_eq!(client.rooms(), ["kept"]);
}
