//! Memory under hostile input. Alone in its test binary so nothing else running in the
//! process moves the resident-memory figure.
#![allow(clippy::unwrap_used)]

use serde::Deserialize;
use switchboard_server::Json;
use switchboard_test::{TestServer, WireClient, wire_frame};

#[derive(Deserialize)]
struct Add {
    a: f64,
    b: f64,
}

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(TestServer::config())
            .on("add", |Json(x): Json<Add>| async move { Json(x.a + x.b) })
    })
    .await
}

/// Resident memory of this process (server and clients), in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test]
async fn a_10_mb_payload_is_refused_without_being_buffered() {
    let s = server().await;
    let mut bystander = s.raw().await;
    // The whole frame, as a careless client would send it.
    let big = wire_frame(
        true,
        0,
        1,
        format!(
            r#"{{"type":"add","payload":{{"data":"{}"}}}}"#,
            "x".repeat(10 * 1024 * 1024)
        )
        .as_bytes(),
        true,
    );
    let before = rss();
    for _ in 0..5 {
        let mut c = WireClient::connect(s.addr).await;
        assert_eq!(c.recv().await["type"], "connected");
        // The server stops reading at the header, so this write may fail half way.
        c.send_raw(&big).await;
        let (code, texts) = c.closed().await;
        assert_eq!(code, 1009);
        assert_eq!(
            texts.last().unwrap()["payload"]["code"],
            "MESSAGE_TOO_LARGE"
        );
        assert!(bystander.nothing_pending().await);
    }
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 8 * 1024 * 1024,
        "50 MB sent in 10 MB frames grew memory by {grown} bytes"
    );
    s.stop().await;
}
