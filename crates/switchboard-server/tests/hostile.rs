//! The hostile-input suite: malformed and abusive input, byte for byte on real sockets.
//! Each case gets its typed error (the connection survives) or its close code (the
//! connection ends), and a bystander client keeps being served throughout.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_server::proto::MAX_PAYLOAD_DEPTH;
use switchboard_server::{Json, ServerConfig};
use switchboard_test::{RawClient, TestServer, WireClient, wire_frame};

#[derive(Deserialize)]
struct Add {
    a: f64,
    b: f64,
}

/// Waits until the server counts `n` connections (closed ones linger for the close
/// timeout), checking that `probe` is still served.
async fn settle(s: &TestServer, probe: &mut RawClient, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.server.connection_count() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} connections",
            s.server.connection_count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(probe.nothing_pending().await);
}

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(TestServer::config())
            .on("add", |Json(x): Json<Add>| async move { Json(x.a + x.b) })
            .on("store", |Json(v): Json<Value>| async move {
                Json(v.to_string().len())
            })
    })
    .await
}

/// Text frames that are answered with a typed error on a connection that stays open.
fn survivable() -> Vec<(&'static str, String, &'static str)> {
    let deep = format!(
        r#"{{"type":"add","payload":{{"a":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_value = format!(
        r#"{{"type":"store","payload":{{"v":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_envelope = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    vec![
        ("not JSON", "hello".into(), "INVALID_JSON"),
        (
            "truncated JSON",
            r#"{"type":"add","payl"#.into(),
            "INVALID_JSON",
        ),
        ("empty frame", String::new(), "INVALID_JSON"),
        ("whitespace only", " \n\t ".into(), "INVALID_JSON"),
        (
            "byte order mark",
            "\u{feff}{\"type\":\"ping\"}".into(),
            "INVALID_JSON",
        ),
        (
            "trailing garbage",
            r#"{"type":"ping"} x"#.into(),
            "INVALID_JSON",
        ),
        ("a JSON array", "[1,2,3]".into(), "INVALID_ENVELOPE"),
        ("a JSON string", r#""ping""#.into(), "INVALID_ENVELOPE"),
        ("null", "null".into(), "INVALID_ENVELOPE"),
        ("no type", r#"{"payload":{}}"#.into(), "INVALID_ENVELOPE"),
        ("empty type", r#"{"type":""}"#.into(), "INVALID_ENVELOPE"),
        ("numeric type", r#"{"type":42}"#.into(), "INVALID_ENVELOPE"),
        (
            "object type",
            r#"{"type":{"a":1}}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "a type of 10,000 bytes",
            format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000)),
            "INVALID_ENVELOPE",
        ),
        (
            "duplicate type",
            r#"{"type":"ping","type":"add"}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "payload is an array",
            r#"{"type":"add","payload":[1,2]}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "payload is a string",
            r#"{"type":"add","payload":"1+2"}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "numeric ref",
            r#"{"type":"ping","ref":5}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "unsupported version",
            r#"{"type":"ping","v":99}"#.into(),
            "UNSUPPORTED_VERSION",
        ),
        (
            "negative version",
            r#"{"type":"ping","v":-1}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "a forged ack",
            r#"{"type":"ack","payload":{"ref":"x","status":"ok"}}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "a forged error",
            r#"{"type":"error","payload":{"code":"X"}}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "lone surrogate in type",
            r#"{"type":"\ud800"}"#.into(),
            "INVALID_ENVELOPE",
        ),
        (
            "unknown type",
            r#"{"type":"no_such_thing"}"#.into(),
            "UNKNOWN_TYPE",
        ),
        (
            "wrong field type",
            r#"{"type":"add","payload":{"a":"x","b":2}}"#.into(),
            "INVALID_PAYLOAD",
        ),
        (
            "missing field",
            r#"{"type":"add","payload":{"a":1}}"#.into(),
            "INVALID_PAYLOAD",
        ),
        (
            "a number too big for f64",
            r#"{"type":"add","payload":{"a":1e999999,"b":1}}"#.into(),
            "INVALID_PAYLOAD",
        ),
        (
            "a 400-digit integer",
            format!(
                r#"{{"type":"add","payload":{{"a":{},"b":1}}}}"#,
                "9".repeat(400)
            ),
            "INVALID_PAYLOAD",
        ),
        (
            "deep nesting where a number belongs",
            deep,
            "INVALID_PAYLOAD",
        ),
        (
            "deep nesting into a JSON value",
            deep_value,
            "INVALID_PAYLOAD",
        ),
        (
            "deep nesting as the envelope",
            deep_envelope,
            "INVALID_ENVELOPE",
        ),
        (
            "an empty room name",
            r#"{"type":"join_room","payload":{"room_id":""}}"#.into(),
            "INVALID_ROOM",
        ),
        (
            "a room name of 1,000 bytes",
            format!(
                r#"{{"type":"join_room","payload":{{"room_id":"{}"}}}}"#,
                "r".repeat(1000)
            ),
            "INVALID_ROOM",
        ),
        (
            "a room id that is a number",
            r#"{"type":"join_room","payload":{"room_id":7}}"#.into(),
            "INVALID_PAYLOAD",
        ),
    ]
}

#[tokio::test]
async fn malformed_text_frames_get_typed_errors_and_the_connection_survives() {
    let s = server().await;
    let mut c = s.raw().await;
    let mut bystander = s.raw().await;
    let cases = survivable();
    assert!(cases.len() >= 30);
    for (name, text, code) in &cases {
        c.send_text(text).await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{name}: {reply}");
        assert_eq!(reply["payload"]["code"], *code, "{name}: {reply}");
        assert!(
            !reply["payload"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{name}: the error says what was wrong"
        );
    }
    // Still the same, working connection.
    let r = c
        .roundtrip(json!({"type":"add","payload":{"a":1,"b":2},"ref":"ok"}))
        .await;
    assert_eq!(r["payload"]["result"], 3.0);
    assert!(bystander.nothing_pending().await);
    s.stop().await;
}

#[tokio::test]
async fn a_binary_frame_without_a_binary_handler_is_refused_politely() {
    let s = server().await;
    let mut c = s.raw().await;
    c.send_binary(vec![0xff; 1000]).await;
    assert_eq!(c.recv().await["payload"]["code"], "UNSUPPORTED_FRAME");
    assert!(c.nothing_pending().await);
    s.stop().await;
}

/// Frames that break the WebSocket protocol or the limits: the connection ends with the
/// RFC's close code, and nothing else is disturbed.
#[tokio::test]
async fn protocol_violations_close_with_the_rfc_code_and_the_server_carries_on() {
    let s = server().await;
    let mut bystander = s.raw().await;
    let ten_mb_header = {
        // Claims 10 MB; only the header and a little data are sent.
        let mut f = vec![0x81, 0xff];
        f.extend_from_slice(&(10u64 * 1024 * 1024).to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(&[b'a'; 1024]);
        f
    };
    let huge_header = {
        let mut f = vec![0x82, 0xff];
        f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f
    };
    let fragmented_over_limit = {
        let chunk = vec![b'x'; 40 * 1024];
        let mut f = wire_frame(false, 0, 1, &chunk, true);
        f.extend(wire_frame(false, 0, 0, &chunk, true));
        f.extend(wire_frame(true, 0, 0, &chunk, true));
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            wire_frame(true, 0, 1, b"{\"type\":\"\xff\xfe\"}", true),
            1007,
        ),
        (
            "a truncated UTF-8 sequence",
            wire_frame(true, 0, 1, b"{\"type\":\"\xe2\x82", true),
            1007,
        ),
        (
            "a reserved opcode",
            wire_frame(true, 0, 3, b"x", true),
            1002,
        ),
        (
            "a reserved control opcode",
            wire_frame(true, 0, 0xb, b"", true),
            1002,
        ),
        (
            "reserved bits set",
            wire_frame(true, 0b100, 1, b"{}", true),
            1002,
        ),
        (
            "an unmasked client frame",
            wire_frame(true, 0, 1, br#"{"type":"ping"}"#, false),
            1002,
        ),
        (
            "a continuation with nothing to continue",
            wire_frame(true, 0, 0, b"x", true),
            1002,
        ),
        (
            "a fragmented ping",
            wire_frame(false, 0, 9, b"x", true),
            1002,
        ),
        (
            "a ping of 126 bytes",
            wire_frame(true, 0, 9, &[0; 126], true),
            1002,
        ),
        ("a text frame claiming 10 MB", ten_mb_header, 1009),
        ("a frame claiming 2^63 bytes", huge_header, 1009),
        (
            "a fragmented message over the limit",
            fragmented_over_limit,
            1009,
        ),
        (
            "a single 100 KB frame",
            wire_frame(true, 0, 1, &vec![b' '; 100 * 1024], true),
            1009,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut c = WireClient::connect(s.addr).await;
        assert_eq!(c.recv().await["type"], "connected");
        c.send_raw(&bytes).await;
        let (got, texts) = c.closed().await;
        assert_eq!(got, code, "{name}: {texts:?}");
        if code == 1009 {
            assert_eq!(
                texts.last().unwrap()["payload"]["code"],
                "MESSAGE_TOO_LARGE",
                "{name}"
            );
        }
        assert!(
            bystander.nothing_pending().await,
            "{name}: others are served"
        );
    }
    // Each closed connection lingers for the close timeout, then is gone.
    settle(&s, &mut bystander, 1).await;
    s.stop().await;
}

#[tokio::test]
async fn garbage_instead_of_http_gets_no_websocket_and_no_crash() {
    let s = server().await;
    let head = WireClient::http_head(s.addr, "\x16\x03\x01\x02\x00 not http at all\r\n\r\n").await;
    assert!(!head.contains("101"), "{head}");
    let head = WireClient::http_head(
        s.addr,
        &format!("GET /ws HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 4"),
        "a plain GET is not an upgrade: {head}"
    );
    let mut c = s.raw().await;
    assert!(c.nothing_pending().await);
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_during_a_broadcast_storm_is_cut_off_with_bounded_memory() {
    let s = TestServer::with_config(ServerConfig {
        outbound_queue_bytes: 256 * 1024,
        ..TestServer::config()
    })
    .await;
    // Never reads: its socket buffers fill, then its queue.
    let mut deaf = WireClient::connect(s.addr).await;
    let reader = switchboard_client::Client::connect(&s.url()).await.unwrap();
    let mut received = reader.messages(200_000);
    let payload = json!({"blob": "y".repeat(1000)});
    let mut sent = 0;
    while s.server.connection_count() == 2 && sent < 100_000 {
        s.server.broadcast("storm", &payload).unwrap();
        sent += 1;
        if sent % 16 == 0 {
            // Let the writers run, as a real server's other tasks would.
            tokio::task::yield_now().await;
        }
    }
    assert!(
        sent < 100_000,
        "the deaf client was cut off after {sent} messages"
    );
    // Its queue never held more than the bound: 256 KiB over ~1 KB frames.
    let (code, _) = deaf.closed().await;
    assert!(code == 4007 || code == 1006, "closed with {code}");
    // The reading client is still there and got every message.
    assert_eq!(reader.state(), switchboard_client::ConnectionState::Open);
    for _ in 0..sent {
        let m = tokio::time::timeout(Duration::from_secs(10), received.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, "storm");
    }
    reader.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_flood_before_authenticating_is_cut_off() {
    let s = TestServer::with_config(ServerConfig {
        password: Some("pw-123456".into()),
        rate_limit: 10,
        rate_burst: 10,
        ..TestServer::config()
    })
    .await;
    let mut c = WireClient::connect(s.addr).await;
    for _ in 0..100 {
        if !c.send_text(r#"{"type":"spam"}"#).await {
            break;
        }
    }
    let (code, texts) = c.closed().await;
    assert_eq!(code, 4006);
    assert!(
        texts
            .iter()
            .any(|t| t["payload"]["code"] == "AUTH_REQUIRED")
    );
    assert_eq!(texts.last().unwrap()["payload"]["code"], "RATE_LIMITED");
    s.stop().await;
}

#[tokio::test]
async fn many_connections_opened_and_dropped_at_once_leave_nothing_behind() {
    let s = server().await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(WireClient::connect(s.addr).await);
    }
    for c in &mut clients {
        assert_eq!(c.recv().await["type"], "connected");
    }
    drop(clients);
    let mut c = s.raw().await;
    settle(&s, &mut c, 1).await;
    let v: Value = s.server.health();
    assert_eq!(v["connections"], 1);
    s.stop().await;
}

#[tokio::test]
async fn large_replies_arrive_or_are_refused_with_a_typed_error_and_error_quotes_are_bounded() {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Size {
        n: usize,
    }
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Numbers {
        #[allow(dead_code)]
        numbers: Vec<f64>,
    }
    let s = TestServer::with(|b| {
        b.config(TestServer::config())
            .rpc("big", |p: Size| async move { "x".repeat(p.n) })
            .rpc("sum", |_: Numbers| async move { 0 })
    })
    .await;
    let mut c = s.raw().await;
    // Over twice the message size limit (what once cut the recipient off): it arrives.
    let n = 3 * switchboard_server::ServerConfig::default().max_message_size;
    let ack = c
        .roundtrip(json!({"type":"rpc","ref":"1","payload":{"method":"big","params":{"n": n}}}))
        .await;
    assert_eq!(ack["payload"]["status"], "ok");
    assert_eq!(ack["payload"]["result"].as_str().map(str::len), Some(n));
    // Over the outbound limit: a typed error, and the connection stays.
    let n = s.server.config().max_frame_out() + 1;
    let ack = c
        .roundtrip(json!({"type":"rpc","ref":"2","payload":{"method":"big","params":{"n": n}}}))
        .await;
    assert_eq!(ack["payload"]["code"], "MESSAGE_TOO_LARGE", "{ack}");
    // An invalid value quoted in an error is an excerpt.
    let quotes = "\"".repeat(20_000);
    let ack = c
        .roundtrip(
            json!({"type":"rpc","ref":"3","payload":{"method":"sum","params":{"numbers": quotes}}}),
        )
        .await;
    assert_eq!(ack["payload"]["code"], "INVALID_PARAMS");
    assert!(
        ack.to_string().len() < 4_096,
        "{} bytes",
        ack.to_string().len()
    );
    assert_eq!(c.roundtrip(json!({"type":"ping"})).await["type"], "pong");
    s.stop().await;
}

#[tokio::test]
async fn upgrade_requests_with_a_wrong_version_or_a_bad_key_are_refused_as_the_rfc_says() {
    let s = server().await;
    let request = |version: &str, key: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\r\n",
            s.addr
        )
    };
    let head = WireClient::http_head(s.addr, &request("8", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    for key in ["", "x", "not base64 at all but 24c"] {
        let head = WireClient::http_head(s.addr, &request("13", key)).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{key:?}: {head}");
    }
    let head = WireClient::http_head(s.addr, &request("13", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.stop().await;
}

#[tokio::test]
async fn a_payload_nested_thousands_deep_is_refused_before_it_reaches_the_room() {
    let s = TestServer::with_config(ServerConfig {
        relay_unhandled: true,
        ..TestServer::config()
    })
    .await;
    let mut sender = s.raw().await;
    let mut member = s.raw().await;
    member
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"py"}}))
        .await;
    // 20,000 levels, 40 KB: under the size limit, and enough to crash Python's `json`.
    let deep = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
    sender
        .send_text(&format!(
            r#"{{"type":"chat","room":"py","ref":"deep","payload":{{"v":{deep}}}}}"#
        ))
        .await;
    let ack = sender.recv().await;
    assert_eq!(ack["payload"]["ref"], "deep");
    assert_eq!(ack["payload"]["code"], "INVALID_PAYLOAD");
    assert_eq!(
        ack["payload"]["message"],
        format!("the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    );
    assert!(member.nothing_pending().await, "the room never sees it");
    // Both connections carry on; a reasonable payload goes through.
    sender
        .send(json!({"type":"chat","room":"py","payload":{"a":{"b":[1,[2]]}}}))
        .await;
    assert_eq!(member.recv_type("chat").await["payload"]["a"]["b"][1][0], 2);
    s.stop().await;
}
