//! docs/protocol.md and the server agree: every exchange written in it as `→` (what a
//! client sends) and `←` (what it receives) lines is replayed here, on a connection of
//! its own, and each reply is compared with what the document says.
//!
//! In an expected frame the string `"*"` stands for any value (ids, text that depends on
//! the machine). A `←` line marked `(to the others)` is what other clients receive and
//! is not checked here; `(to the sender)` is dropped before parsing.
#![allow(clippy::unwrap_used)]

use serde::Deserialize;
use serde_json::Value;
use switchboard_server::{HandlerError, Json, ServerConfig};
use switchboard_test::TestServer;

/// One exchange: what to send, then the frames expected, in order.
#[derive(Debug)]
struct Exchange {
    line: usize,
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Send(String),
    Expect(Value),
}

/// Every block of `→` / `←` lines in the document.
fn exchanges(doc: &str) -> Vec<Exchange> {
    let mut all = Vec::new();
    let mut current: Option<Exchange> = None;
    for (i, line) in doc.lines().enumerate() {
        let line = line.trim_end();
        if line.starts_with("```") {
            if let Some(x) = current.take() {
                if !x.steps.is_empty() {
                    all.push(x);
                }
            }
            current = Some(Exchange {
                line: i + 1,
                steps: Vec::new(),
            });
            continue;
        }
        let Some(x) = current.as_mut() else { continue };
        if let Some(sent) = line.strip_prefix("→ ") {
            x.steps.push(Step::Send(sent.trim().to_owned()));
        } else if let Some(expected) = line.strip_prefix("← ") {
            if expected.contains("(to the others)") {
                continue;
            }
            let expected = expected.replace("(to the sender)", "");
            let value = serde_json::from_str(expected.trim())
                .unwrap_or_else(|e| panic!("protocol.md line {}: {e}: {expected}", i + 1));
            x.steps.push(Step::Expect(value));
        }
    }
    all
}

/// `actual` matches `expected`, where the string "*" in `expected` matches anything.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        _ => expected == actual,
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Sum {
    numbers: Vec<f64>,
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct Divide {
    a: f64,
    b: f64,
}

/// The server the examples are written against: a hub (relay on) with the handlers the
/// document uses.
async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            ..TestServer::config()
        })
        .on("chat", |Json(_): Json<Value>| async move {
            Json(serde_json::json!({"sent": true}))
        })
        .on("add", |Json(x): Json<Add>| async move { Json(x.a + x.b) })
        .on("divide", |Json(x): Json<Divide>| async move {
            if x.b == 0.0 {
                return Err(HandlerError::new("DIVIDE_BY_ZERO", "Cannot divide by zero"));
            }
            Ok(Json(x.a / x.b))
        })
        .rpc("sum", |p: Sum| async move { p.numbers.iter().sum::<f64>() })
    })
    .await
}

#[tokio::test]
async fn every_exchange_in_protocol_md_is_what_the_server_does() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    let all = exchanges(&doc);
    let sends = all
        .iter()
        .flat_map(|x| &x.steps)
        .filter(|s| matches!(s, Step::Send(_)))
        .count();
    assert!(sends >= 20, "found only {sends} frames to send");
    let s = server().await;
    let mut failures = Vec::new();
    for x in &all {
        let mut c = s.raw().await;
        for step in &x.steps {
            match step {
                Step::Send(text) => c.send_text(text).await,
                Step::Expect(expected) => {
                    let actual = c.recv().await;
                    if !matches(expected, &actual) {
                        failures.push(format!(
                            "protocol.md block at line {}:\n  expected {expected}\n  got      {actual}",
                            x.line
                        ));
                        break;
                    }
                }
            }
        }
        // Nothing more than the document says.
        if failures.is_empty() {
            assert!(
                c.nothing_pending().await,
                "protocol.md block at line {}: more frames came",
                x.line
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    s.stop().await;
}

#[test]
fn the_matcher_takes_stars_for_anything_and_nothing_else() {
    let e: Value = serde_json::json!({"a": "*", "b": [1, {"c": "*"}]});
    assert!(matches(
        &e,
        &serde_json::json!({"a": 5, "b": [1, {"c": "x"}]})
    ));
    assert!(!matches(
        &e,
        &serde_json::json!({"a": 5, "b": [2, {"c": "x"}]})
    ));
    assert!(!matches(
        &e,
        &serde_json::json!({"a": 5, "b": [1, {"c": "x"}], "d": 0})
    ));
}
