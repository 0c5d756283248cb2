//! A client that negotiated MessagePack (`switchboard.v1.msgpack`) does everything a
//! JSON client does, with the same payloads and the same typed errors, and talks with
//! JSON clients in the same rooms.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use switchboard_client::{Client, ClientConfig, RequestError};
use switchboard_server::{Binary, Conn, ServerConfig};
use switchboard_test::{TIMEOUT, TestServer};
use tokio::sync::mpsc;

async fn server() -> TestServer {
    TestServer::with(|b| {
        TestServer::arithmetic(b.config(ServerConfig {
            relay_unhandled: true,
            ..TestServer::config()
        }))
        .on_binary(|conn: Conn, Binary(data): Binary| async move {
            let mut back = data.to_vec();
            back.reverse();
            conn.send_binary(back).ok();
        })
    })
    .await
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("a message in time")
        .expect("the channel is open")
}

#[tokio::test]
async fn requests_and_typed_errors_in_messagepack() {
    let s = server().await;
    let client = Client::connect_with(&s.url(), ClientConfig::default().msgpack(true))
        .await
        .unwrap();
    assert!(client.session().msgpack, "the server accepted MessagePack");
    let sum: f64 = client
        .request("add", &json!({"a": 1, "b": 2.5}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sum, 3.5);
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
    // A result of the wrong type is the client's typed decode error, as in JSON.
    let err = client
        .request::<String, _>("add", &json!({"a": 1, "b": 1}), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Decode(_)), "{err:?}");
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn messagepack_and_json_clients_share_a_room_with_the_same_payloads() {
    let s = server().await;
    let url = s.url();
    let packed = Client::connect_with(&url, ClientConfig::default().msgpack(true))
        .await
        .unwrap();
    let plain = Client::connect(&url).await.unwrap();
    assert!(!plain.session().msgpack);
    packed.join("room").await.unwrap();
    plain.join("room").await.unwrap();
    let (to_plain, mut at_plain) = mpsc::unbounded_channel();
    plain.on("chat", move |env| {
        to_plain.send(env.payload.get().to_owned()).ok();
    });
    let (to_packed, mut at_packed) = mpsc::unbounded_channel();
    packed.on("chat", move |env| {
        to_packed
            .send((env.payload.get().to_owned(), env.from.clone()))
            .ok();
    });
    let payload = json!({
        "text": "héllo \"quoted\" \n ✓",
        "n": -7,
        "f": 0.1,
        "big": u64::MAX,
        "nested": {"list": [true, null, [], {}]},
    });
    packed.send_to_room("room", "chat", &payload).await.unwrap();
    let got: Value = serde_json::from_str(&next(&mut at_plain).await).unwrap();
    assert_eq!(
        got, payload,
        "a JSON client reads what a MessagePack one sent"
    );
    plain.send_to_room("room", "chat", &payload).await.unwrap();
    let (got, from) = next(&mut at_packed).await;
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got, payload, "and the other way");
    assert_eq!(from.as_deref(), Some(plain.id().as_str()));
    packed.close().await;
    plain.close().await;
    s.stop().await;
}

#[tokio::test]
async fn raw_bytes_travel_both_ways_on_a_messagepack_connection() {
    let s = server().await;
    let client = Client::connect_with(&s.url(), ClientConfig::default().msgpack(true))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    client.on_binary(move |data| {
        tx.send(data.to_vec()).ok();
    });
    client.send_binary(vec![1u8, 2, 3, 255]).await.unwrap();
    assert_eq!(next(&mut rx).await, vec![255, 3, 2, 1]);
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 253) as u8).collect();
    client.send_binary(big.clone()).await.unwrap();
    let mut back = big;
    back.reverse();
    assert_eq!(next(&mut rx).await, back);
    client.close().await;
    s.stop().await;
}
