//! The `switchboard serve` binary, started for real: a hub with rooms, relay, direct
//! messages, a page at `/`, health, and a clean SIGTERM.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::json;
use switchboard_test::{Hub, RawClient, TempFile, run, unstamped};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A hub on a free port, named `test-hub`, with extra flags.
fn start(extra: &[&str]) -> Hub {
    let mut args = vec!["serve", "--port", "0", "--name", "test-hub"];
    args.extend_from_slice(extra);
    Hub::spawn(BIN, &args, &[])
}

#[tokio::test]
async fn the_hub_relays_rooms_and_direct_messages() {
    let hub = start(&[]);
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
    assert_eq!(a.recv_type("room_update").await["payload"]["users"], 2);

    a.send(json!({"type":"chat","room":"general","payload":{"content":"hi room"}}))
        .await;
    assert_eq!(
        unstamped(b.recv().await),
        json!({"type":"chat","room":"general","from": a.id,"payload":{"content":"hi room"}})
    );
    assert!(c.nothing_pending().await, "not in the room");

    c.send(json!({"type":"dm","to": a.id,"payload":{"text":"psst"}}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type":"dm","from": c.id,"payload":{"text":"psst"},"offset":1}),
        "a's first direct message: offset 1 of its session's stream"
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
    let hub = start(&[]);
    let page = hub.get("/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>switchboard</title>"));
    assert!(
        page.contains("/client.js"),
        "the demo uses the served client"
    );
    let js = hub.get("/client.js");
    assert!(js.starts_with("HTTP/1.1 200"), "{js}");
    assert!(
        js.to_ascii_lowercase()
            .contains("content-type: text/javascript")
    );
    assert!(js.contains("export class Client"));
    // Every module the client imports from beside it is served there, and every module
    // those import.
    let imports_of = |source: &str| -> Vec<String> {
        source
            .split("from \"./")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    let mut to_fetch = imports_of(&js);
    assert!(to_fetch.iter().any(|m| m == "frames.js"), "{to_fetch:?}");
    let mut served_modules = std::collections::BTreeSet::new();
    while let Some(module) = to_fetch.pop() {
        if !served_modules.insert(module.clone()) {
            continue;
        }
        let served = hub.get(&format!("/{module}"));
        assert!(served.starts_with("HTTP/1.1 200"), "/{module}: {served}");
        assert!(served.contains("export "), "/{module}");
        to_fetch.extend(imports_of(&served));
    }
    assert!(served_modules.contains("msgpack.js"), "{served_modules:?}");
    let _c = hub.raw().await;
    let health = hub.get("/health");
    assert!(health.starts_with("HTTP/1.1 200"));
    let body = &health[health.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON health");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["name"], "test-hub");
    assert_eq!(v["connections"], 1);
    // Prometheus metrics.
    let metrics = hub.get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("\nswitchboard_connections 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_connections_accepted_total 1"));
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    let mut hub = start(&[]);
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
    let hub = start(&["--max-message-size", "256"]);
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

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_config_file() {
    let file = TempFile::new(
        "switchboard.toml",
        "port = 0\nname = \"from-file\"\nmax_message_size = 100000\nheartbeat_interval = \"5s\"\n",
    );
    let hub = Hub::spawn(
        BIN,
        &[
            "serve",
            "--config",
            file.path(),
            "--max-message-size",
            "256",
        ],
        &[("SWITCHBOARD_NAME", "from-env")],
    );
    let mut c = RawClient::connect(&hub.url()).await;
    let hello = c.recv().await;
    assert_eq!(
        hello["payload"]["server"], "from-env",
        "environment over file"
    );
    c.send(json!({"type":"x","room":"r","payload":{"pad":"y".repeat(400)}}))
        .await;
    assert_eq!(
        c.recv().await["payload"]["code"],
        "MESSAGE_TOO_LARGE",
        "flag over file"
    );

    let hub = Hub::spawn(BIN, &["serve", "--config", file.path()], &[]);
    let mut c = RawClient::connect(&hub.url()).await;
    assert_eq!(c.recv().await["payload"]["server"], "from-file");
}

#[test]
fn bad_config_names_the_key_and_the_problem() {
    let cases = [
        ("prot = 8080\n", "unknown field `prot`"),
        ("port = \"eighty\"\n", "port"),
        ("auth_timeout = \"soon\"\n", "not a duration"),
        (
            "heartbeat_interval = \"30s\"\nheartbeat_timeout = \"10s\"\n",
            "heartbeat_timeout",
        ),
        (
            "tls_cert = \"/nonexistent/cert.pem\"\n",
            "tls_cert / tls_key",
        ),
        ("password = \"\"\n", "password"),
    ];
    for (contents, expected) in cases {
        let file = TempFile::new("bad.toml", contents);
        let (ok, _, stderr) = run(BIN, &["serve", "--config", file.path()], &[]);
        assert!(!ok, "{contents} should be refused");
        assert!(stderr.contains(expected), "{contents}: {stderr}");
    }
    let (ok, _, stderr) = run(BIN, &["serve", "--config", "/nonexistent.toml"], &[]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent.toml"), "{stderr}");
    // The password is not a flag.
    let (ok, _, stderr) = run(BIN, &["serve", "--password", "x"], &[]);
    assert!(!ok);
    assert!(stderr.contains("--password"), "{stderr}");
}

#[test]
fn config_example_is_a_commented_file_with_every_setting() {
    let (ok, stdout, _) = run(BIN, &["config", "--example"], &[]);
    assert!(ok);
    for key in [
        "port",
        "max_connections",
        "password_file",
        "heartbeat_timeout",
        "rate_limit",
        "tls_cert",
    ] {
        assert!(
            stdout.contains(&format!("# {key} = ")),
            "{key} is documented"
        );
    }
}

#[tokio::test]
async fn a_password_from_the_environment_is_required_of_every_client() {
    let hub = Hub::spawn(
        BIN,
        &["serve", "--port", "0"],
        &[("SWITCHBOARD_PASSWORD", "s3cret-pw")],
    );
    assert!(hub.line.contains("password required"), "{}", hub.line);
    let mut anon = RawClient::connect(&hub.url()).await;
    let r = anon
        .roundtrip(json!({"type":"join_room","payload":{"room_id":"x"}}))
        .await;
    assert_eq!(r["payload"]["code"], "AUTH_REQUIRED");
    let mut wrong = RawClient::connect(&hub.url()).await;
    wrong
        .send(json!({"type":"auth","payload":{"password":"guess"}}))
        .await;
    assert_eq!(wrong.recv().await["payload"]["code"], "AUTH_FAILED");
    assert_eq!(wrong.closed().await.code, 4001);
    let client = switchboard_client::Client::connect_with(
        &hub.url(),
        switchboard_client::ClientConfig::default().password("s3cret-pw"),
    )
    .await
    .unwrap();
    assert!(client.join("general").await.is_ok());
}

#[tokio::test]
async fn tls_flags_serve_wss() {
    let cert = switchboard_test::TestCert::generate();
    let cert_file = TempFile::new("cert.pem", &cert.cert_pem);
    let key_file = TempFile::new("key.pem", &cert.key_pem);
    let hub = Hub::spawn(
        BIN,
        &[
            "serve",
            "--port",
            "0",
            "--tls-cert",
            cert_file.path(),
            "--tls-key",
            key_file.path(),
        ],
        &[],
    );
    assert!(
        hub.line.starts_with("switchboard listening on wss://"),
        "{}",
        hub.line
    );
    let client = switchboard_client::Client::connect_with(
        &format!("wss://{}/ws", hub.addr),
        switchboard_client::ClientConfig {
            tls: Some(cert.client.clone()),
            ..switchboard_client::ClientConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(client.join("secure").await.is_ok());
}

#[tokio::test]
async fn the_echo_endpoint_echoes_frames_as_they_came() {
    let hub = start(&["--echo-path", "/echo"]);
    let addr: std::net::SocketAddr = hub.addr.parse().unwrap();
    let mut c = switchboard_test::WireClient::connect_with(addr, "/echo", &[]).await;
    c.send_text("not even JSON").await;
    let f = c.next_frame().await.unwrap();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (1, b"not even JSON".as_slice())
    );
    c.send_raw(&switchboard_test::wire_frame(
        true,
        0,
        2,
        &[0, 1, 2, 255],
        true,
    ))
    .await;
    let f = c.next_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload), (2, vec![0, 1, 2, 255]));
}

#[tokio::test]
async fn the_hub_has_built_in_methods() {
    let hub = start(&[]);
    let client = switchboard_client::Client::connect(&hub.url())
        .await
        .unwrap();
    let t = std::time::Duration::from_secs(5);
    let echoed: String = client
        .call("echo", &json!({"message": "hi"}), t)
        .await
        .unwrap();
    assert_eq!(echoed, "hi");
    let sum: f64 = client
        .call("sum", &json!({"numbers": [391, 29]}), t)
        .await
        .unwrap();
    assert_eq!(sum, 420.0);
    let err = client
        .call::<f64, _>("sum", &json!({"numbers": [1, "two"]}), t)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("INVALID_PARAMS"));
    let status: serde_json::Value = client.call("status", &(), t).await.unwrap();
    assert_eq!(status["status"], "online");
    assert_eq!(status["name"], "test-hub");
    assert_eq!(status["connections"], 1);
    assert!(status["uptime_secs"].as_f64().unwrap() >= 0.0);
    let methods = client.methods(t).await.unwrap();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["clients", "echo", "listall", "set_name", "status", "sum"]
    );
    let http = hub.get("/rpc");
    assert!(http.starts_with("HTTP/1.1 200"), "{http}");
    assert!(http.contains("\"sum\""));
}

#[tokio::test]
async fn the_hub_raises_its_open_file_limit_to_the_hard_limit() {
    // Started with a soft limit of 256 (a locked-out hub at 1,024 was a finding).
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    let nofile = format!("--nofile=256:{hard}");
    let hub = Hub::spawn("prlimit", &[&nofile, BIN, "serve", "--port", "0"], &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", hub.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (fields[3], fields[4]),
        (hard.as_str(), hard.as_str()),
        "{line}"
    );
    drop(hub);
}

#[tokio::test]
async fn clients_comes_in_pages_that_always_fit_in_a_frame() {
    let hub = start(&[]);
    let t = std::time::Duration::from_secs(5);
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(hub.raw().await);
    }
    let client = switchboard_client::Client::connect(&hub.url())
        .await
        .unwrap();
    let all: Vec<serde_json::Value> = client.call("clients", &(), t).await.unwrap();
    assert_eq!(all.len(), 6);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page: Vec<serde_json::Value> = client
            .call("clients", &json!({"limit": 4, "after": after}), t)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        after = page
            .last()
            .and_then(|c| c["id"].as_str())
            .map(str::to_owned);
        paged.extend(page);
    }
    assert_eq!(paged, all, "the pages, in order, are the whole list");
    let err = client
        .call::<serde_json::Value, _>("clients", &json!({"limit": "all"}), t)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("INVALID_PARAMS"));
}

#[tokio::test]
async fn the_message_protocol_patterns_chat_and_typing_name_their_room_in_the_payload() {
    let hub = start(&[]);
    let mut a = hub.raw().await;
    let mut b = hub.raw().await;
    for c in [&mut a, &mut b] {
        let r = c
            .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"general"}}))
            .await;
        assert_eq!(r["payload"]["status"], "ok", "{r}");
    }
    let joined = a.recv_type("user_joined").await;
    assert_eq!(joined["payload"]["user_id"], b.id.as_str());
    // Then, to the others in the room, how many are in it now.
    let update = a.recv_type("room_update").await;
    assert_eq!(update["payload"], json!({"room_id": "general", "users": 2}));
    // Seed 001's client messages, as its tables give them.
    a.send(json!({"type":"chat","ref":"c1","payload":{"content":"Hello","room_id":"general"}}))
        .await;
    let sent = a.recv_type("ack").await;
    assert_eq!(sent["payload"]["status"], "ok", "{sent}");
    let m = b.recv_type("chat").await;
    assert_eq!(
        m["payload"],
        json!({"content":"Hello","room_id":"general","from": a.id}),
        "the seed's `chat`: {{from, content, room_id}}"
    );
    assert_eq!(m["room"], "general");
    a.send(json!({"type":"typing","payload":{"room_id":"general","is_typing":true}}))
        .await;
    let t = b.recv_type("typing").await;
    assert_eq!(t["payload"]["is_typing"], true);
    assert_eq!(t["payload"]["from"], a.id.as_str());
    assert!(a.nothing_pending().await, "not echoed to the sender");
}
