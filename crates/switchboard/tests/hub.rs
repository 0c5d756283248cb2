//! The `switchboard serve` binary, started for real: a hub with rooms, relay, direct
//! messages, a page at `/`, health, and a clean SIGTERM.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use serde_json::json;
use switchboard_test::RawClient;

struct Hub {
    child: Child,
    addr: String,
}

impl Hub {
    fn start(extra: &[&str]) -> Hub {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--port", "0", "--name", "test-hub"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switchboard");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split("ws://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Hub { child, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn raw(&self) -> RawClient {
        let mut c = RawClient::connect(&self.url()).await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected");
        assert_eq!(hello["payload"]["server"], "test-hub");
        c.id = hello["payload"]["client_id"].as_str().unwrap().to_owned();
        c
    }

    fn get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_hub_relays_rooms_and_direct_messages() {
    let hub = Hub::start(&[]);
    let mut a = hub.raw().await;
    let mut b = hub.raw().await;
    let mut c = hub.raw().await;
    for x in [&mut a, &mut b] {
        let r = x
            .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"general"}}))
            .await;
        assert_eq!(r["payload"]["status"], "ok");
    }
    a.recv_type("user_joined").await;

    a.send(json!({"type":"chat","room":"general","payload":{"content":"hi room"}}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type":"chat","room":"general","from": a.id,"payload":{"content":"hi room"}})
    );
    assert!(c.nothing_pending().await, "not in the room");

    c.send(json!({"type":"dm","to": a.id,"payload":{"text":"psst"}}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type":"dm","from": c.id,"payload":{"text":"psst"}})
    );

    c.send(json!({"type":"news","to":"others","payload":{}}))
        .await;
    assert_eq!(a.recv().await["type"], "news");
    assert_eq!(b.recv().await["type"], "news");
    assert!(c.nothing_pending().await);

    let r = a.roundtrip(json!({"type":"nothing-to-route"})).await;
    assert_eq!(r["payload"]["code"], "UNKNOWN_TYPE");
}

#[tokio::test]
async fn the_hub_serves_its_page_and_health() {
    let hub = Hub::start(&[]);
    let page = hub.get("/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>switchboard</title>"));
    assert!(page.contains("join_room"));
    let _c = hub.raw().await;
    let health = hub.get("/health");
    assert!(health.starts_with("HTTP/1.1 200"));
    let body = &health[health.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON health");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["name"], "test-hub");
    assert_eq!(v["connections"], 1);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    let mut hub = Hub::start(&[]);
    let mut a = hub.raw().await;
    let status = tokio::task::spawn_blocking(move || hub.terminate())
        .await
        .unwrap();
    let closed = a.closed().await;
    assert_eq!(closed.code, 1001);
    assert!(closed.reason.starts_with("SHUTTING_DOWN"));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn flags_set_limits() {
    let hub = Hub::start(&["--max-message-size", "256"]);
    let mut a = hub.raw().await;
    a.send(json!({"type":"x","room":"r","payload":{"pad":"y".repeat(400)}}))
        .await;
    assert_eq!(a.recv().await["payload"]["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(a.closed().await.code, 1009);
}

#[test]
fn help_lists_serve_with_examples() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--port"));
    assert!(text.contains("switchboard serve --host 0.0.0.0"));
}
