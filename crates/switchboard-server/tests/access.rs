//! Next to a backend: JWT identities (in `auth` or the URL), room permissions from the
//! token's claims, a token that expires, and the server API with its key. Every refusal
//! is typed; the connection (or the server) carries on.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard_server::{ClaimsPolicy, JwtAuthenticator, ServerConfig};
use switchboard_test::{RawClient, TestServer, http};

const SECRET: &[u8] = b"the backend's secret, 32 bytes or more";
const API_KEY: &str = "an-api-key-for-the-backend";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A token for `sub` that may join `chat:*` and `news`, and publish to `chat:*`.
fn alice(exp: u64) -> String {
    token(json!({"sub": "alice", "exp": exp, "rooms": ["chat:*", "news"], "publish": ["chat:*"]}))
}

async fn server() -> TestServer {
    TestServer::with(|b| {
        b.config(ServerConfig {
            relay_unhandled: true,
            api_key: Some(API_KEY.into()),
            heartbeat_interval: Duration::from_millis(200),
            // The refusals below all come from one address.
            auth_max_failures: 100,
            ..TestServer::config()
        })
        .authenticator(JwtAuthenticator::hs256(SECRET))
        .policy(ClaimsPolicy)
    })
    .await
}

/// Connects and authenticates with `token` in an `auth` message.
async fn connect(s: &TestServer, token: &str) -> RawClient {
    let mut c = RawClient::connect(&s.url()).await;
    c.send(json!({"type":"auth","ref":"a","payload":{"token": token}}))
        .await;
    // `connected`, and the `auth`'s ack, in either order.
    let (mut hello, mut acked) = (None, false);
    while hello.is_none() || !acked {
        let frame = c.recv().await;
        match frame["type"].as_str() {
            Some("connected") => hello = Some(frame),
            Some("ack") => acked = true,
            _ => panic!("unexpected {frame}"),
        }
    }
    c.id = hello.unwrap()["payload"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    c
}

async fn join(c: &mut RawClient, room: &str) -> Value {
    c.roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id": room}}))
        .await
}

#[tokio::test]
async fn a_token_grants_its_rooms_and_nothing_else_and_refusals_keep_the_connection() {
    let s = server().await;
    let mut a = connect(&s, &alice(now() + 60)).await;
    assert_eq!(join(&mut a, "chat:lobby").await["payload"]["status"], "ok");
    assert_eq!(join(&mut a, "news").await["payload"]["status"], "ok");
    let refused = join(&mut a, "admin").await;
    assert_eq!(refused["payload"]["status"], "error", "{refused}");
    assert_eq!(refused["payload"]["code"], "FORBIDDEN");
    assert!(
        refused["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("\"admin\""),
        "it names what was refused: {refused}"
    );
    // Join-only: publishing to `news` is refused; to `chat:lobby` allowed.
    let published = a
        .roundtrip(json!({"type":"m","room":"news","ref":"p1","payload":{}}))
        .await;
    assert_eq!(published["payload"]["code"], "FORBIDDEN", "{published}");
    let ok = a
        .roundtrip(json!({"type":"m","room":"chat:lobby","ref":"p2","payload":{}}))
        .await;
    assert_eq!(ok["payload"]["status"], "ok", "{ok}");
    // The connection is still there.
    assert_eq!(
        a.roundtrip(json!({"type":"ping","ref":"x"})).await["type"],
        "pong"
    );
    s.stop().await;
}

#[tokio::test]
async fn forged_expired_and_premature_tokens_are_refused_in_auth_and_in_the_url() {
    let s = server().await;
    let t = now();
    let forged = encode(
        &Header::default(),
        &json!({"sub": "mallory", "exp": t + 60}),
        &EncodingKey::from_secret(b"not the backend's secret at all, no"),
    )
    .unwrap();
    let wrong_alg = encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "mallory", "exp": t + 60}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let cases = [
        (forged, "invalid token"),
        (wrong_alg, "invalid token"),
        (alice(t - 120), "token expired"),
        (
            token(json!({"sub": "alice", "exp": t + 600, "nbf": t + 300})),
            "token not valid yet",
        ),
    ];
    for (bad, why) in &cases {
        let mut c = RawClient::connect(&s.url()).await;
        c.send(json!({"type":"auth","ref":"a","payload":{"token": bad}}))
            .await;
        let closed = c.closed().await;
        assert_eq!(closed.code, 4001, "{}", closed.reason);
        assert_eq!(closed.reason, format!("AUTH_FAILED: {why}"));
        // In the URL: refused at the upgrade, before any WebSocket.
        let head = switchboard_test::WireClient::http_head(
            s.addr,
            &format!(
                "GET /ws?token={bad} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    }
    // A good token in the URL: no `auth` message needed.
    let mut c = RawClient::connect(&format!("{}?token={}", s.url(), alice(t + 60))).await;
    let hello = c.recv_type("connected").await;
    assert_eq!(hello["payload"]["user_id"], "alice", "{hello}");
    s.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let s = server().await;
    // Valid for about a second (and the 5 s leeway only applies when it is checked).
    let mut c = connect(&s, &alice(now() + 1)).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, 4011, "{}", closed.reason);
    assert!(
        closed.reason.starts_with("TOKEN_EXPIRED"),
        "{}",
        closed.reason
    );
    s.stop().await;
}

#[tokio::test]
async fn the_server_api_publishes_sends_disconnects_and_refuses_without_its_key() {
    let s = server().await;
    let mut a = connect(&s, &alice(now() + 60)).await;
    join(&mut a, "chat:lobby").await;
    let key = format!("Bearer {API_KEY}");
    let auth = [("Authorization", key.as_str())];

    let r = http(
        s.addr,
        "POST",
        "/api/publish",
        &auth,
        Some(r#"{"room":"chat:lobby","type":"news","payload":{"n":1}}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["delivered"].clone()),
        (200, json!(1)),
        "{r:?}"
    );
    let m = a.recv_type("news").await;
    assert_eq!(m["payload"]["n"], 1);
    assert_eq!(m["room"], "chat:lobby");

    let r = http(
        s.addr,
        "POST",
        "/api/send",
        &auth,
        Some(&json!({"client": a.id, "type": "dm", "payload": {"x": true}}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(a.recv_type("dm").await["payload"]["x"], true);

    // The room's history, as its members received it.
    let r = http(s.addr, "GET", "/api/rooms/chat:lobby/history", &auth, None).await;
    let h = r.json();
    let messages = h["messages"].as_array().unwrap();
    let last = messages.last().unwrap();
    assert_eq!(
        (last["type"].clone(), last["payload"].clone()),
        (json!("news"), json!({"n": 1})),
        "{h}"
    );
    assert_eq!(last["offset"], h["position"]["offset"], "{h}");
    let since = h["position"]["offset"].as_u64().unwrap();
    let r = http(
        s.addr,
        "GET",
        &format!("/api/rooms/chat:lobby/history?since={since}"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.json()["messages"], json!([]), "{r:?}");
    let r = http(s.addr, "GET", "/api/rooms/nowhere/history", &auth, None).await;
    assert_eq!(r.status, 404, "{r:?}");

    let r = http(s.addr, "GET", "/api/rooms/chat:lobby/members", &auth, None).await;
    assert_eq!(r.json()["members"], json!([a.id]), "{r:?}");
    let r = http(s.addr, "GET", "/api/info", &auth, None).await;
    assert_eq!(r.json()["connections"], 1, "{r:?}");

    // Bad bodies: typed errors, nothing sent.
    for (body, code) in [
        ("{not json", "INVALID_PAYLOAD"),
        (r#"{"room":"r"}"#, "INVALID_PAYLOAD"),
        (
            r#"{"room":"r","type":"ack","payload":{}}"#,
            "INVALID_ENVELOPE",
        ),
        (r#"{"room":"","type":"m"}"#, "INVALID_ROOM"),
    ] {
        let r = http(s.addr, "POST", "/api/publish", &auth, Some(body)).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.json()["error"]["code"], code, "{body}: {r:?}");
    }
    let huge = format!(
        r#"{{"room":"r","type":"m","payload":{{"x":"{}"}}}}"#,
        "a".repeat(2 << 20)
    );
    let r = http(s.addr, "POST", "/api/publish", &auth, Some(&huge)).await;
    assert_eq!(r.status, 413, "{r:?}");

    // Without the key, or with a wrong one: refused, and throttled after a few.
    let r = http(s.addr, "GET", "/api/info", &[], None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (401, json!("AUTH_FAILED"))
    );
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let wrong = [("Authorization", "Bearer not-the-key")];
        statuses.push(http(s.addr, "GET", "/api/info", &wrong, None).await.status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The description is public.
    let r = http(s.addr, "GET", "/api/openapi.json", &[], None).await;
    assert_eq!(r.json()["openapi"], "3.1.0");

    let r = http(
        s.addr,
        "POST",
        "/api/disconnect",
        &[],
        Some(&json!({"client": a.id}).to_string()),
    )
    .await;
    assert_eq!(
        r.status, 429,
        "the throttled address stays throttled: {r:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_api_disconnects_a_client() {
    let s = server().await;
    let mut a = connect(&s, &alice(now() + 60)).await;
    let key = format!("Bearer {API_KEY}");
    let r = http(
        s.addr,
        "POST",
        "/api/disconnect",
        &[("Authorization", key.as_str())],
        Some(&json!({"client": a.id, "reason": "account closed"}).to_string()),
    )
    .await;
    assert_eq!(r.json()["disconnected_here"], 1, "{r:?}");
    let closed = a.closed().await;
    assert_eq!(closed.code, 4004);
    assert!(
        closed.reason.contains("account closed"),
        "{}",
        closed.reason
    );
    s.stop().await;
}

#[tokio::test]
async fn a_fresh_token_on_the_open_connection_swaps_permissions_and_outlives_the_old_one() {
    let s = server().await;
    let t = now();
    let mut a = connect(&s, &alice(t + 1)).await;
    join(&mut a, "chat:lobby").await;
    join(&mut a, "news").await;
    // Another user's token: refused; the connection stays as it was.
    let bob = token(json!({"sub": "bob", "exp": t + 60, "rooms": ["*"]}));
    let refused = a
        .roundtrip(json!({"type":"auth","ref":"r1","payload":{"token": bob}}))
        .await;
    assert_eq!(refused["payload"]["code"], "AUTH_FAILED", "{refused}");
    // Alice's fresh token, without `news`: she leaves it, and stays connected past
    // the first token's expiry.
    let fresh =
        token(json!({"sub": "alice", "exp": t + 60, "rooms": ["chat:*"], "publish": ["chat:*"]}));
    let swapped = a
        .roundtrip(json!({"type":"auth","ref":"r2","payload":{"token": fresh}}))
        .await;
    assert_eq!(swapped["payload"]["status"], "ok", "{swapped}");
    assert_eq!(swapped["payload"]["result"]["left"], json!(["news"]));
    assert_eq!(
        swapped["payload"]["result"]["identity"]["claims"]["exp"],
        t + 60
    );
    while now() <= t + 2 {
        // Time passing is what is tested: the first token's `exp`, then a heartbeat tick.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a.roundtrip(json!({"type":"ping"})).await["type"],
        "pong",
        "still connected"
    );
    let r = join(&mut a, "news").await;
    assert_eq!(r["payload"]["code"], "FORBIDDEN", "{r}");
    s.stop().await;
}

#[tokio::test]
async fn the_rust_client_fetches_tokens_and_refreshes_them_before_they_expire() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use switchboard_client::{Client, ClientConfig, ConnectionState};

    let s = server().await;
    let fetched = Arc::new(AtomicUsize::new(0));
    let f = fetched.clone();
    let config = ClientConfig::default()
        .get_token(move || {
            f.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(token(
                    json!({"sub": "alice", "exp": now() + 3, "rooms": ["chat:*"], "publish": ["chat:*"]}),
                ))
            }
        });
    let config = ClientConfig {
        refresh_before: Duration::from_millis(1500),
        ..config
    };
    let client = Client::connect_with(&s.url(), config).await.unwrap();
    assert_eq!(client.session().user_id.as_deref(), Some("alice"));
    client.join("chat:lobby").await.unwrap();
    let mut state = client.watch_state();
    // Past two lifetimes of a token: it was refreshed on the open connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while fetched.load(Ordering::SeqCst) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tokens fetched: {}",
            fetched.load(Ordering::SeqCst)
        );
        assert_eq!(
            *state.borrow_and_update(),
            ConnectionState::Open,
            "never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*state.borrow(), ConnectionState::Open);
    assert!(!state.has_changed().unwrap(), "the state never changed");
    // The server sees the latest token's expiry.
    let conn = s.server.connection(client.id().parse().unwrap()).unwrap();
    let exp = conn.identity().unwrap().claims["exp"].as_u64().unwrap();
    assert!(exp > now(), "a live token");
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_user_is_an_address_for_sends_relays_and_disconnects() {
    let s = server().await;
    let t = now();
    let mut phone = connect(&s, &alice(t + 60)).await;
    let mut laptop = connect(&s, &alice(t + 60)).await;
    let bob = token(json!({"sub": "bob", "exp": t + 60}));
    let mut b = connect(&s, &bob).await;
    let key = format!("Bearer {API_KEY}");
    let auth = [("Authorization", key.as_str())];

    let r = http(
        s.addr,
        "POST",
        "/api/send",
        &auth,
        Some(r#"{"user":"alice","type":"note","payload":{"n":1}}"#),
    )
    .await;
    assert_eq!(r.json()["delivered"], 2, "{r:?}");
    for c in [&mut phone, &mut laptop] {
        assert_eq!(c.recv_type("note").await["payload"]["n"], 1);
    }
    // A client addresses a user too.
    b.send(json!({"type":"hi","to":"user:alice","payload":{}}))
        .await;
    for c in [&mut phone, &mut laptop] {
        let m = c.recv_type("hi").await;
        assert_eq!(m["from"], b.id.as_str());
    }
    assert!(b.nothing_pending().await, "bob is not alice");
    // Neither or both of client and user: a typed refusal.
    let r = http(s.addr, "POST", "/api/send", &auth, Some(r#"{"type":"x"}"#)).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("INVALID_PAYLOAD"))
    );

    let r = http(
        s.addr,
        "POST",
        "/api/disconnect",
        &auth,
        Some(r#"{"user":"alice","reason":"signed out everywhere"}"#),
    )
    .await;
    assert_eq!(r.json()["disconnected_here"], 2, "{r:?}");
    for c in [&mut phone, &mut laptop] {
        let closed = c.closed().await;
        assert_eq!(closed.code, 4004);
        assert!(closed.reason.contains("signed out everywhere"));
    }
    assert_eq!(
        b.roundtrip(json!({"type":"ping"})).await["type"],
        "pong",
        "bob stays"
    );
    s.stop().await;
}

#[tokio::test]
async fn room_presence_is_by_user_with_the_tokens_info() {
    let s = server().await;
    let t = now();
    let alice_token = token(
        json!({"sub": "alice", "exp": t + 60, "rooms": ["chat:*"], "info": {"name": "Alice"}}),
    );
    let carol_token = token(json!({"sub": "carol", "exp": t + 60, "rooms": ["chat:*"]}));
    let mut phone = connect(&s, &alice_token).await;
    let mut laptop = connect(&s, &alice_token).await;
    let mut carol = connect(&s, &carol_token).await;
    for c in [&mut phone, &mut laptop, &mut carol] {
        join(c, "chat:lobby").await;
    }
    let key = format!("Bearer {API_KEY}");
    let r = http(
        s.addr,
        "GET",
        "/api/rooms/chat:lobby/presence",
        &[("Authorization", key.as_str())],
        None,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"room": "chat:lobby", "anonymous": 0, "truncated": false, "users": [
            {"user": "alice", "info": {"name": "Alice"}, "connections": 2},
            {"user": "carol", "info": null, "connections": 1},
        ]}),
        "{r:?}"
    );
    s.stop().await;
}
