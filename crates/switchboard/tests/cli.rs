//! The client commands, driven for real: one-shot commands against a running hub
//! (exit codes and output), and the interactive client through a pseudo-terminal.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_test::{Hub, run};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn hub() -> Hub {
    Hub::spawn(BIN, &["serve", "--port", "0"], &[])
}

/// Runs a command; its exit code and stderr.
fn exit_of(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `switchboard send` to a room; its stdout.
fn send_to_room(hub: &Hub, kind: &str, payload: &str, room: &str) -> String {
    let (ok, out, err) = run(
        BIN,
        &["send", &hub.addr, kind, payload, "--room", room],
        &[],
    );
    assert!(ok, "{err}");
    out
}

#[tokio::test]
async fn call_prints_the_result_and_exits_by_outcome() {
    let hub = hub();
    let (ok, out, _) = run(
        BIN,
        &["call", &hub.addr, "sum", r#"{"numbers":[391,29]}"#],
        &[],
    );
    assert!(ok);
    assert_eq!(out.trim().parse::<f64>().unwrap(), 420.0);

    let (ok, out, _) = run(BIN, &["call", &hub.url(), "echo", r#"["positional"]"#], &[]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), "positional");

    let (code, stderr) = exit_of(&["call", &hub.addr, "sum", r#"{"numbers":"x"}"#]);
    assert_eq!(code, Some(1), "the server said no");
    assert!(stderr.starts_with("INVALID_PARAMS: "), "{stderr}");

    let (code, stderr) = exit_of(&["call", &hub.addr, "nope"]);
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("UNKNOWN_METHOD"), "{stderr}");

    let (code, _) = exit_of(&["call", &hub.addr, "sum", "{not json"]);
    assert_eq!(code, Some(2), "bad input");

    // Nothing listens on port 1.
    let (code, stderr) = exit_of(&["call", "127.0.0.1:1", "status", "--timeout", "2s"]);
    assert_eq!(code, Some(2), "unreachable");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    let (ok, out, _) = run(BIN, &["call", &hub.addr, "listall"], &[]);
    assert!(ok);
    let methods: Value = serde_json::from_str(&out).unwrap();
    assert!(
        methods
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "status")
    );
}

#[tokio::test]
async fn send_and_listen_move_messages_between_scripts() {
    let hub = hub();
    // A watcher in the room first, so it sees the listener join.
    let mut watcher = hub.raw().await;
    watcher
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"general"}}))
        .await;
    let listener = std::process::Command::new(BIN)
        .args(["listen", &hub.addr, "--room", "general", "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let joined = watcher.recv_type("user_joined").await;
    assert_eq!(joined["room"], "general");

    let out = send_to_room(&hub, "chat", r#"{"text":"one"}"#, "general");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"delivered": 2})
    );
    send_to_room(&hub, "chat", r#"{"text":"two"}"#, "general");
    let output = tokio::task::spawn_blocking(move || listener.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "--count 2");
    assert_eq!(lines[0]["payload"]["text"], "one");
    assert_eq!(lines[1]["payload"]["text"], "two");
    assert_eq!(lines[0]["room"], "general");

    // A direct message to a client id, and errors.
    let mut target = hub.raw().await;
    let (ok, _, _) = run(
        BIN,
        &[
            "send",
            &hub.addr,
            "dm",
            r#"{"text":"psst"}"#,
            "--to",
            &target.id,
        ],
        &[],
    );
    assert!(ok);
    assert_eq!(target.recv_type("dm").await["payload"]["text"], "psst");
    let (code, stderr) = exit_of(&["send", &hub.addr, "dm", "{}", "--to", "0000000000000000"]);
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("CLIENT_NOT_FOUND"), "{stderr}");
    let (code, _) = exit_of(&["send", &hub.addr, "dm", "[1]", "--to", "all"]);
    assert_eq!(code, Some(2), "a payload must be an object");
}

#[tokio::test]
async fn json_mode_reads_commands_from_stdin_and_prints_envelopes() {
    let hub = hub();
    let mut child = std::process::Command::new(BIN)
        .args(["connect", &hub.addr, "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, r#"{{"type":"ping","ref":"p1"}}"#).unwrap();
        writeln!(stdin, r#"{{"type":"rpc","ref":"c1","payload":{{"method":"sum","params":{{"numbers":[2,3]}}}}}}"#).unwrap();
    }
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut got = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let done = v["payload"]["ref"] == "c1";
            got.push(v);
            if done {
                break;
            }
        }
        got
    });
    let lines = tokio::time::timeout(Duration::from_secs(10), lines)
        .await
        .unwrap()
        .unwrap();
    assert!(lines.iter().any(|v| v["type"] == "pong"));
    let sum = lines.iter().find(|v| v["payload"]["ref"] == "c1").unwrap();
    assert_eq!(sum["payload"]["result"], 5.0);
    drop(child.stdin.take()); // EOF: the client quits
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_client_in_a_terminal() {
    let hub = hub();
    let mut peer = hub.raw().await;
    let mut term = rexpect::spawn(&format!("{BIN} connect {}", hub.addr), Some(10_000)).unwrap();
    let blocking = |f: &mut dyn FnMut()| tokio::task::block_in_place(f);
    blocking(&mut || {
        term.exp_string("connected to").unwrap();
        term.exp_string("switchboard> ").unwrap();
        term.send_line("/join general").unwrap();
        term.exp_string("joined general").unwrap();
    });
    peer.roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"general"}}))
        .await;
    peer.send(json!({"type":"chat","room":"general","payload":{"text":"hello from peer"}}))
        .await;
    let peer_id = peer.id.clone();
    blocking(&mut || {
        // Printed as it arrives, above the prompt.
        term.exp_string(&format!("[general] {peer_id} chat: hello from peer"))
            .unwrap();
        term.send_line("hi everyone").unwrap();
    });
    let m = peer.recv_type("message").await;
    assert_eq!(
        (m["room"].as_str(), m["payload"]["text"].as_str()),
        (Some("general"), Some("hi everyone"))
    );
    blocking(&mut || {
        term.send_line(&format!("/to {peer_id} just you")).unwrap();
    });
    let m = peer.recv_type("message").await;
    assert_eq!(m["payload"]["text"], "just you");
    assert!(m["room"].is_null());
    blocking(&mut || {
        term.send_line(r#"/call sum {"numbers":[1,2]}"#).unwrap();
        term.exp_string("3.0").unwrap();
        term.send_line("/methods").unwrap();
        term.exp_string("The sum of a list of numbers.").unwrap();
        term.send_line("/rooms").unwrap();
        term.exp_string("rooms: general").unwrap();
        term.send_line(r#"{"type":"nope"}"#).unwrap();
        term.exp_string("! UNKNOWN_TYPE").unwrap();
        term.send_line("/frobnicate").unwrap();
        term.exp_string("unknown command").unwrap();
        term.send_line("/quit").unwrap();
        term.exp_eof().unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_client_says_when_it_reconnects() {
    let mut first = hub();
    let addr = first.addr.clone();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mut term = rexpect::spawn(&format!("{BIN} connect {addr}"), Some(15_000)).unwrap();
    tokio::task::block_in_place(|| {
        term.exp_string("switchboard> ").unwrap();
        term.send_line("/join lobby").unwrap();
        term.exp_string("joined lobby").unwrap();
    });
    assert!(first.terminate().success());
    tokio::task::block_in_place(|| {
        term.exp_string("* disconnected: 1001").unwrap();
        term.exp_string("* reconnecting").unwrap();
    });
    let second = Hub::spawn(BIN, &["serve", "--port", &port], &[]);
    tokio::task::block_in_place(|| {
        term.exp_string("* reconnected as").unwrap();
    });
    // Back in its room on the new server.
    let mut peer = second.raw().await;
    let r = peer
        .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":"lobby"}}))
        .await;
    assert_eq!(r["payload"]["result"]["members"], 2);
    tokio::task::block_in_place(|| {
        term.send_line("/quit").unwrap();
        term.exp_eof().unwrap();
    });
}

#[test]
fn help_has_examples_and_completions_are_generated() {
    for cmd in [
        "serve",
        "connect",
        "send",
        "call",
        "listen",
        "config",
        "completions",
    ] {
        let (ok, out, _) = run(BIN, &[cmd, "--help"], &[]);
        assert!(ok, "{cmd} --help");
        assert!(out.contains("Examples:"), "{cmd} --help has examples");
    }
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, _) = run(BIN, &["completions", shell], &[]);
        assert!(ok);
        assert!(
            out.contains("switchboard") && out.contains("listen"),
            "{shell}"
        );
    }
}
