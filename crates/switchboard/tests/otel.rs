//! Built with `--features otel`: the hub exports its spans over OTLP, and a message's
//! span joins the trace its client named in `trace`.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_test::{Hub, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// An OTLP/HTTP receiver: the body of every `POST /v1/traces`, answered 200.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                // Read the head, then as many body bytes as it announces.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + len {
                        tx.send(raw[end + 4..end + 4 + len].to_vec()).ok();
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        raw.clear();
                    }
                }
            });
        }
    });
    (endpoint, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_s_span_joins_its_client_s_trace() {
    let (endpoint, mut bodies) = receiver().await;
    let mut hub = Hub::spawn(
        BIN,
        &["serve", "--port", "0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    let mut c = hub.raw().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    c.send(json!({"type": "ping", "trace": format!("00-{trace_id}-00f067aa0ba902b7-01")}))
        .await;
    assert_eq!(c.recv().await["type"], "pong");
    // SIGTERM flushes the exporter.
    let status = tokio::task::spawn_blocking(move || hub.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let wanted: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    loop {
        let body = tokio::time::timeout(TIMEOUT, bodies.recv())
            .await
            .expect("spans exported before the hub exits")
            .unwrap();
        // The protobuf carries trace ids as 16 raw bytes, and span names as text.
        if body.windows(16).any(|w| w == wanted.as_slice()) {
            assert!(body.windows(7).any(|w| w == b"message"), "the message span");
            break;
        }
    }
}
