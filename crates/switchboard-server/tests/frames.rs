//! The server's WebSocket framing, byte for byte: however a client's bytes are cut or
//! batched, every message is read whole and answered, in order; pings are answered
//! with their payload even when nothing else is being written. (The reader keeps no
//! buffer of its own between frames, so these are the cases where it has to.)

use serde_json::json;
use switchboard_server::Json;
use switchboard_test::{TestServer, WireClient, wire_frame};

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(switchboard_server::ServerConfig {
            max_message_size: 1 << 20,
            ..TestServer::config()
        })
        .on("size", |Json(v): Json<serde_json::Value>| async move {
            Json(v["text"].as_str().map_or(0, str::len))
        })
    })
    .await
}

fn text(value: serde_json::Value) -> Vec<u8> {
    wire_frame(true, 0, 0x1, value.to_string().as_bytes(), true)
}

#[tokio::test]
async fn a_message_sent_one_byte_at_a_time_is_read_whole() {
    let s = server().await;
    let mut c = WireClient::connect(s.addr).await;
    assert_eq!(c.recv().await["type"], "connected");
    let frame = text(json!({"type": "size", "ref": "slow", "payload": {"text": "abc"}}));
    for byte in &frame {
        assert!(c.send_raw(&[*byte]).await);
    }
    let ack = c.recv().await;
    assert_eq!(ack["payload"]["ref"], "slow", "{ack}");
    assert_eq!(ack["payload"]["result"], 3, "{ack}");
    s.stop().await;
}

#[tokio::test]
async fn messages_batched_in_one_write_are_all_answered_in_order() {
    let s = server().await;
    let mut c = WireClient::connect(s.addr).await;
    assert_eq!(c.recv().await["type"], "connected");
    // 300 messages (more than one read's worth), the last one cut in two writes.
    let mut batch: Vec<u8> = (0..300)
        .flat_map(|i| {
            text(json!({"type": "size", "ref": format!("p{i}"), "payload": {"text": "x"}}))
        })
        .collect();
    let tail = batch.split_off(batch.len() - 5);
    assert!(c.send_raw(&batch).await);
    assert!(c.send_raw(&tail).await);
    for i in 0..300 {
        let ack = c.recv().await;
        assert_eq!(ack["payload"]["ref"], format!("p{i}"), "{ack}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_large_message_arriving_in_pieces_and_a_fragmented_one_are_read_whole() {
    let s = server().await;
    let mut c = WireClient::connect(s.addr).await;
    assert_eq!(c.recv().await["type"], "connected");
    let big = "x".repeat(200_000);
    let frame = text(json!({"type": "size", "ref": "big", "payload": {"text": big}}));
    for piece in frame.chunks(7_000) {
        assert!(c.send_raw(piece).await);
    }
    let ack = c.recv().await;
    assert_eq!(ack["payload"]["result"], 200_000, "{ack}");
    // The same message in three fragments, a ping between them.
    let body = json!({"type": "size", "ref": "frag", "payload": {"text": "abcdef"}}).to_string();
    let (a, rest) = body.as_bytes().split_at(10);
    let (b, end) = rest.split_at(10);
    let mut bytes = wire_frame(false, 0, 0x1, a, true);
    bytes.extend(wire_frame(true, 0, 0x9, b"between", true));
    bytes.extend(wire_frame(false, 0, 0x0, b, true));
    bytes.extend(wire_frame(true, 0, 0x0, end, true));
    assert!(c.send_raw(&bytes).await);
    let pong = c.next_frame().await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, &b"between"[..])
    );
    let ack = c.recv().await;
    assert_eq!(
        (ack["payload"]["ref"].as_str(), &ack["payload"]["result"]),
        (Some("frag"), &json!(6))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_ping_on_an_idle_connection_gets_its_pong_with_the_payload() {
    let s = server().await;
    let mut c = WireClient::connect(s.addr).await;
    assert_eq!(c.recv().await["type"], "connected");
    for payload in [&b""[..], b"1", &[7u8; 125]] {
        assert!(c.send_raw(&wire_frame(true, 0, 0x9, payload, true)).await);
        let pong = c.next_frame().await.expect("a pong");
        assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, payload));
    }
    s.stop().await;
}

#[tokio::test]
async fn a_close_is_answered_with_the_same_code() {
    let s = server().await;
    let mut c = WireClient::connect(s.addr).await;
    assert_eq!(c.recv().await["type"], "connected");
    let mut close = 4321u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"done");
    assert!(c.send_raw(&wire_frame(true, 0, 0x8, &close, true)).await);
    let (code, _) = c.closed().await;
    assert_eq!(code, 4321);
    s.stop().await;
}
