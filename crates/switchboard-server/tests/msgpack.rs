//! The MessagePack encoding of the envelope, byte for byte: negotiated by subprotocol,
//! every frame answered in binary, bad MessagePack a typed error that keeps the
//! connection, authentication in MessagePack too.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::msgpack;
use switchboard_server::{Json, ServerConfig};
use switchboard_test::{TIMEOUT, TestServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket offering `protocols`; returns it and the subprotocol answered.
async fn open(url: &str, protocols: &str) -> (Socket, Option<String>) {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).unwrap(),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|p| p.to_str().unwrap().to_owned());
    (ws, chosen)
}

/// The next data frame: a binary one, read as JSON.
async fn recv(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .unwrap();
        match frame {
            Message::Binary(b) => {
                return serde_json::from_str(&msgpack::to_json(&b, 1 << 20).unwrap()).unwrap();
            }
            Message::Text(t) => panic!("a text frame on a MessagePack connection: {t}"),
            _ => {}
        }
    }
}

async fn send(ws: &mut Socket, value: Value) {
    let bytes = msgpack::from_json(&value.to_string()).unwrap();
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

async fn server(config: ServerConfig) -> TestServer {
    TestServer::with(|b| {
        b.config(config)
            .on("echo", |Json(v): Json<Value>| async move { Json(v) })
    })
    .await
}

#[tokio::test]
async fn the_subprotocol_is_answered_and_every_frame_is_binary() {
    let s = server(TestServer::config()).await;
    let (mut ws, chosen) = open(&s.url(), "switchboard.v1.msgpack").await;
    assert_eq!(chosen.as_deref(), Some(msgpack::SUBPROTOCOL));
    assert_eq!(recv(&mut ws).await["type"], "connected");
    send(
        &mut ws,
        json!({"type": "echo", "ref": "r1", "payload": {"x": [1, 2.5, "é"]}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["payload"]["ref"], "r1");
    assert_eq!(ack["payload"]["result"], json!({"x": [1, 2.5, "é"]}));
    // A JSON text frame is read too, and answered in MessagePack.
    ws.send(Message::text(r#"{"type":"ping","ref":"t"}"#))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["type"], "pong");
    s.stop().await;
}

#[tokio::test]
async fn bad_messagepack_is_a_typed_error_and_the_connection_stays() {
    let s = server(TestServer::config()).await;
    let (mut ws, _) = open(&s.url(), "switchboard.v1.msgpack").await;
    recv(&mut ws).await;
    let deep = {
        let mut b = msgpack::from_json(r#"{"type":"x","payload":{}}"#).unwrap();
        b.pop(); // the empty payload map
        for _ in 0..5_000 {
            b.extend_from_slice(&[0x81, 0xa1, b'a']);
        }
        b.push(0x01);
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xc1], "INVALID_JSON"),
        (vec![0x80, 0x80], "INVALID_JSON"),
        (vec![0x92, 0x01, 0x02], "INVALID_ENVELOPE"),
        (
            msgpack::from_json(r#"{"type":""}"#).unwrap(),
            "INVALID_ENVELOPE",
        ),
        (
            msgpack::from_json(r#"{"type":"echo","payload":[1]}"#).unwrap(),
            "INVALID_ENVELOPE",
        ),
        (deep, "INVALID_PAYLOAD"),
    ];
    for (bytes, code) in cases {
        ws.send(Message::Binary(bytes.clone().into()))
            .await
            .unwrap();
        let err = recv(&mut ws).await;
        assert_eq!(err["type"], "error", "{bytes:x?}");
        assert_eq!(err["payload"]["code"], code, "{bytes:x?}: {err}");
    }
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong", "still served");
    s.stop().await;
}

#[tokio::test]
async fn authentication_in_messagepack() {
    let s = server(ServerConfig {
        password: Some("secret123".into()),
        ..TestServer::config()
    })
    .await;
    let (mut ws, _) = open(&s.url(), "switchboard.v1.msgpack").await;
    send(
        &mut ws,
        json!({"type": "auth", "ref": "a", "payload": {"password": "wrong"}}),
    )
    .await;
    let refused = recv(&mut ws).await;
    assert_eq!(refused["payload"]["code"], "AUTH_FAILED", "{refused}");
    let (mut ws, _) = open(&s.url(), "switchboard.v1.msgpack").await;
    send(
        &mut ws,
        json!({"type": "auth", "ref": "a", "payload": {"password": "secret123"}}),
    )
    .await;
    let mut seen = Vec::new();
    while !seen.contains(&json!("connected")) {
        seen.push(recv(&mut ws).await["type"].clone());
    }
    s.stop().await;
}

#[tokio::test]
async fn only_the_native_dialect_has_messagepack() {
    let s = server(TestServer::config()).await;
    // The client's first choice wins.
    let (_, chosen) = open(&s.url(), "switchboard.v1.msgpack, switchboard.v1").await;
    assert_eq!(chosen.as_deref(), Some(msgpack::SUBPROTOCOL));
    let (_, chosen) = open(&s.url(), "switchboard.v1, switchboard.v1.msgpack").await;
    assert_eq!(chosen.as_deref(), Some("switchboard.v1"));
    // A dialect named in the URL keeps its JSON: MessagePack is not answered.
    // (A client that offered only subprotocols fails a handshake answered with none.)
    let mut request = format!("{}?dialect=datadivr", s.url())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("switchboard.v1.msgpack"),
    );
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(err.to_string().contains("SubProtocol"), "{err}");
    let url = format!("{}?dialect=native", s.url());
    let (_, chosen) = open(&url, "switchboard.v1.msgpack").await;
    assert_eq!(chosen.as_deref(), Some(msgpack::SUBPROTOCOL));
    s.stop().await;
}
