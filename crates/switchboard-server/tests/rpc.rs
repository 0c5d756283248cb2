//! Typed RPC over real sockets: validation, errors, discovery, auth, concurrency.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_client::{Client, RequestError};
use switchboard_server::{
    Conn, HandlerError, Identity, Json, RpcMethod, ServerBuilder, ServerConfig, State,
};
use switchboard_test::{RawClient, TestServer, WireClient};
use tokio::sync::{Semaphore, watch};

/// Add two numbers.
#[derive(Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Deserialize, JsonSchema)]
struct Divide {
    a: f64,
    b: f64,
}

/// The seed's create_user, with its constraints declared on the type.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    #[schemars(length(min = 3, max = 30))]
    username: String,
    #[schemars(email)]
    email: String,
    #[schemars(range(min = 0, max = 150))]
    age: i64,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    roles: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, JsonSchema)]
struct User {
    id: u64,
    username: String,
    email: String,
    age: i64,
    active: bool,
    roles: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
struct GetUser {
    user_id: u64,
}

/// A method that waits until the test opens it, counting how many wait at once.
#[derive(Clone)]
struct Gate {
    open: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    changes: Arc<watch::Sender<usize>>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            open: Arc::new(Semaphore::new(0)),
            running: Arc::default(),
            peak: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

fn methods(b: ServerBuilder, gate: &Gate) -> ServerBuilder {
    b.state(gate.clone())
        .rpc("add", |args: Add| async move { args.a + args.b })
        .rpc("divide", |d: Divide| async move {
            if d.b == 0.0 {
                return Err(HandlerError::new(
                    "DIVISION_BY_ZERO",
                    "Cannot divide by zero",
                ));
            }
            Ok(d.a / d.b)
        })
        .rpc("create_user", |u: CreateUser| async move {
            Json(User {
                id: 7,
                username: u.username,
                email: u.email,
                age: u.age,
                active: u.active,
                roles: u.roles,
            })
        })
        .rpc("get_user", |q: GetUser| async move {
            Err::<User, _>(HandlerError::new(
                "USER_NOT_FOUND",
                format!("User {} not found", q.user_id),
            ))
        })
        .rpc("explode", || async {
            if true {
                panic!("boom");
            }
            0
        })
        .rpc("my_id", |(): (), conn: Conn| async move {
            conn.id().to_string()
        })
        .rpc_method(
            RpcMethod::new("whoami", |(): (), who: Identity| async move { who.id })
                .description("Who the caller authenticated as")
                .requires_auth(),
        )
        .rpc("gated", |(): (), State(gate): State<Gate>| async move {
            let now = gate.running.fetch_add(1, Ordering::SeqCst) + 1;
            gate.peak.fetch_max(now, Ordering::SeqCst);
            gate.changes.send_replace(now);
            let permit = gate.open.acquire().await.unwrap();
            permit.forget();
            let left = gate.running.fetch_sub(1, Ordering::SeqCst) - 1;
            gate.changes.send_replace(left);
            "done"
        })
}

async fn server() -> TestServer {
    server_with_gate(&Gate::default(), TestServer::config()).await
}

async fn server_with_gate(gate: &Gate, config: ServerConfig) -> TestServer {
    TestServer::with(|b| methods(b.config(config), gate)).await
}

async fn call(c: &mut RawClient, method: &str, params: Value) -> Value {
    let r = c
        .roundtrip(json!({"type":"rpc","ref":"c","payload":{"method": method, "params": params}}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    r["payload"].clone()
}

#[tokio::test]
async fn typed_methods_take_named_or_positional_params_and_defaults() {
    let s = server().await;
    let mut c = s.raw().await;
    assert_eq!(
        call(&mut c, "add", json!({"a": 1, "b": 2})).await["result"],
        3
    );
    assert_eq!(call(&mut c, "add", json!([40, 2])).await["result"], 42);
    let u = call(
        &mut c,
        "create_user",
        json!({"username": "alice", "email": "alice@example.com", "age": 30}),
    )
    .await;
    assert_eq!(u["status"], "ok");
    assert_eq!(u["result"]["active"], true, "a default applies");
    assert_eq!(u["result"]["roles"], json!([]));
    assert_eq!(
        call(&mut c, "my_id", json!({})).await["result"],
        c.id.as_str()
    );
    // Without a ref, the answer is an `rpc_response`.
    let r = c
        .roundtrip(json!({"type":"rpc","payload":{"method":"add","params":{"a":2,"b":2}}}))
        .await;
    assert_eq!(
        r,
        json!({"type":"rpc_response","payload":{"method":"add","result":4}})
    );
    s.stop().await;
}

#[tokio::test]
async fn invalid_params_name_every_offending_field() {
    let s = server().await;
    let mut c = s.raw().await;
    // netconduit returns "xy" here.
    let r = call(&mut c, "add", json!({"a": "x", "b": "y"})).await;
    assert_eq!(r["code"], "INVALID_PARAMS");
    let paths: Vec<&str> = r["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["a", "b"]);

    let r = call(&mut c, "add", json!({"a": 1})).await;
    assert_eq!(r["code"], "INVALID_PARAMS");
    assert_eq!(
        r["details"]["errors"],
        json!([{"path": "b", "reason": "missing required field"}])
    );

    let r = call(
        &mut c,
        "create_user",
        json!({"username": "al", "email": "not-an-email", "age": 200, "admin": true, "roles": ["ok", 5]}),
    )
    .await;
    assert_eq!(r["code"], "INVALID_PARAMS");
    let errors = r["details"]["errors"].as_array().unwrap();
    let mut paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    assert_eq!(paths, vec!["admin", "age", "email", "roles[1]", "username"]);
    let reason = |p: &str| {
        errors.iter().find(|e| e["path"] == p).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        reason("username").contains("shorter than 3"),
        "{}",
        reason("username")
    );
    assert!(reason("age").contains("150"), "{}", reason("age"));
    assert_eq!(reason("admin"), "unknown field");
    assert!(r["message"].as_str().unwrap().contains("username"));

    let r = call(&mut c, "add", json!([1, 2, 3])).await;
    assert_eq!(r["code"], "INVALID_PARAMS");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 arguments")
    );
    let r = call(&mut c, "add", json!("1+2")).await;
    assert_eq!(r["code"], "INVALID_PARAMS");
    let r = call(&mut c, "my_id", json!({"surprise": 1})).await;
    assert_eq!(r["code"], "INVALID_PARAMS");
    // A call without a method name is a bad payload.
    let r = c
        .roundtrip(json!({"type":"rpc","ref":"x","payload":{"params":{}}}))
        .await;
    assert_eq!(r["payload"]["code"], "INVALID_PAYLOAD");
    s.stop().await;
}

#[tokio::test]
async fn errors_reach_the_caller_with_their_codes_and_panics_are_contained() {
    let s = server().await;
    let mut c = s.raw().await;
    let r = call(&mut c, "nope", json!({})).await;
    assert_eq!(r["code"], "UNKNOWN_METHOD");
    let r = call(&mut c, "divide", json!({"a": 1, "b": 0})).await;
    assert_eq!(
        (r["code"].as_str(), r["message"].as_str()),
        (Some("DIVISION_BY_ZERO"), Some("Cannot divide by zero"))
    );
    let r = call(&mut c, "get_user", json!({"user_id": 42})).await;
    assert_eq!(r["code"], "USER_NOT_FOUND");
    assert_eq!(r["message"], "User 42 not found");
    let r = call(&mut c, "explode", json!({})).await;
    assert_eq!(r["code"], "INTERNAL");
    // The connection and the server carry on.
    assert_eq!(
        call(&mut c, "divide", json!({"a": 1, "b": 4})).await["result"],
        0.25
    );
    let mut other = s.raw().await;
    assert!(other.nothing_pending().await);
    s.stop().await;
}

#[tokio::test]
async fn listall_describes_every_method_over_the_socket_and_http() {
    let s = server().await;
    let mut c = s.raw().await;
    let list = call(&mut c, "listall", json!({})).await["result"].clone();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for n in ["add", "create_user", "divide", "listall", "whoami"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let add = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "add")
        .unwrap();
    assert_eq!(add["description"], "Add two numbers.");
    assert_eq!(add["params"]["properties"]["a"]["type"], "integer");
    assert_eq!(add["params"]["required"], json!(["a", "b"]));
    assert_eq!(add["result"]["type"], "integer");
    assert_eq!(add["requires_auth"], false);
    let cu = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "create_user")
        .unwrap();
    assert_eq!(cu["params"]["properties"]["username"]["minLength"], 3);
    assert_eq!(cu["params"]["properties"]["age"]["maximum"], 150);
    assert_eq!(cu["params"]["additionalProperties"], false);
    assert_eq!(cu["result"]["properties"]["username"]["type"], "string");
    let who = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "whoami")
        .unwrap();
    assert_eq!(who["requires_auth"], true);
    assert_eq!(who["description"], "Who the caller authenticated as");

    let head_and_body = WireClient::http_head(
        s.addr,
        &format!(
            "GET /rpc HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr
        ),
    )
    .await;
    assert!(head_and_body.starts_with("HTTP/1.1 200"), "{head_and_body}");
    let http: Value = reqwest_like_get(s.addr, "/rpc").await;
    assert_eq!(http, list, "GET /rpc is listall");
    s.stop().await;
}

/// A GET over a plain socket; returns the JSON body.
async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn methods_can_require_authentication() {
    let s = server_with_gate(
        &Gate::default(),
        ServerConfig {
            password: Some("pw-12345".into()),
            auth_required: false,
            ..TestServer::config()
        },
    )
    .await;
    let mut c = s.raw().await;
    let r = call(&mut c, "whoami", json!({})).await;
    assert_eq!(r["code"], "AUTH_REQUIRED");
    assert_eq!(call(&mut c, "add", json!({"a":1,"b":1})).await["result"], 2);
    c.send(json!({"type":"auth","ref":"a","payload":{"password":"pw-12345","username":"carol"}}))
        .await;
    assert_eq!(c.recv().await["payload"]["status"], "ok");
    assert_eq!(call(&mut c, "whoami", json!({})).await["result"], "carol");
    s.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_calls_on_one_connection_are_answered_correctly() {
    let s = server().await;
    let client = Client::connect(&s.url()).await.unwrap();
    let calls = (0..1000i64).map(|i| {
        let client = client.clone();
        async move {
            let r: i64 = client
                .call("add", &json!({"a": i, "b": 1000}), Duration::from_secs(30))
                .await
                .unwrap();
            (i, r)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.len(), 1000);
    for (i, r) in results {
        assert_eq!(r, i + 1000);
    }
    // Typed errors through the client.
    match client
        .call::<f64, _>("divide", &json!({"a": 1, "b": 0}), Duration::from_secs(5))
        .await
    {
        Err(RequestError::Remote { code, message, .. }) => {
            assert_eq!(code, "DIVISION_BY_ZERO");
            assert_eq!(message, "Cannot divide by zero");
        }
        other => panic!("{other:?}"),
    }
    match client
        .call::<i64, _>("add", &json!({"a": "x"}), Duration::from_secs(5))
        .await
    {
        Err(RequestError::Remote { code, details, .. }) => {
            assert_eq!(code, "INVALID_PARAMS");
            assert_eq!(details.unwrap()["errors"].as_array().unwrap().len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let methods = client.methods(Duration::from_secs(5)).await.unwrap();
    assert!(methods.iter().any(|m| m["name"] == "create_user"));
    client.close().await;
    match client
        .call::<i64, _>("add", &json!({"a": 1, "b": 2}), Duration::from_secs(5))
        .await
    {
        Err(RequestError::NotConnected | RequestError::Closed) => {}
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn a_slow_call_delays_neither_fast_calls_nor_messages() {
    let gate = Gate::default();
    let s = server_with_gate(&gate, TestServer::config()).await;
    let client = Client::connect(&s.url()).await.unwrap();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call::<String, _>("gated", &(), Duration::from_secs(30))
                .await
        })
    };
    // The fast call and a plain message are answered while the slow one still waits.
    let fast: i64 = client
        .call("add", &json!({"a": 2, "b": 3}), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(fast, 5);
    let joined = client.join("lobby").await;
    assert!(joined.is_ok());
    assert!(!slow.is_finished());
    // Release it.
    gate.open.add_permits(1);
    assert_eq!(slow.await.unwrap().unwrap(), "done");
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn calls_in_flight_are_bounded_per_connection() {
    let gate = Gate::default();
    let s = server_with_gate(
        &gate,
        ServerConfig {
            max_calls_in_flight: 3,
            ..TestServer::config()
        },
    )
    .await;
    let client = Client::connect(&s.url()).await.unwrap();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .call::<String, _>("gated", &(), Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    // Three start; the rest wait for a slot.
    let mut running = gate.changes.subscribe();
    tokio::time::timeout(switchboard_test::TIMEOUT, running.wait_for(|n| *n >= 3))
        .await
        .expect("three calls start")
        .unwrap();
    gate.open.add_permits(10);
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), "done");
    }
    assert_eq!(
        gate.peak.load(Ordering::SeqCst),
        3,
        "never more than the bound at once"
    );
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_a_running_call_to_answer() {
    let gate = Gate::default();
    let s = server_with_gate(&gate, TestServer::config()).await;
    let mut c = s.raw().await;
    c.send(json!({"type":"rpc","ref":"g","payload":{"method":"gated"}}))
        .await;
    let mut running = gate.changes.subscribe();
    tokio::time::timeout(switchboard_test::TIMEOUT, running.wait_for(|n| *n == 1))
        .await
        .expect("the call starts")
        .unwrap();
    let server = s.server.clone();
    let stopping = tokio::spawn(async move { server.shutdown().await });
    gate.open.add_permits(1);
    let r = c.recv().await;
    assert_eq!(
        (r["type"].as_str(), r["payload"]["result"].as_str()),
        (Some("ack"), Some("done"))
    );
    assert_eq!(c.closed().await.code, 1001);
    stopping.await.unwrap();
    s.stop().await;
}
