//! Authentication, heartbeats, rate limits, origins and connection limits, over real
//! sockets.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_server::proto::{Reconnect, reconnect_hint};
use switchboard_server::{
    AuthRejected, Conn, Credentials, Identity, Json, ServerBuilder, ServerConfig,
};
use switchboard_test::{RawClient, TIMEOUT, TestServer, WireClient};
use tokio::sync::mpsc;

fn with_password(b: ServerBuilder) -> ServerBuilder {
    b.config(ServerConfig {
        password: Some("secret123".into()),
        ..TestServer::config()
    })
    .on("whoami", |conn: Conn, who: Identity| async move {
        Json(json!({"id": who.id, "authenticated": conn.is_authenticated()}))
    })
}

#[tokio::test]
async fn the_right_password_connects_and_is_acknowledged() {
    let s = TestServer::with(with_password).await;
    let mut c = RawClient::connect(&s.url()).await;
    c.send(json!({"type":"auth","payload":{"password":"secret123","username":"alice"},"ref":"a1"}))
        .await;
    let connected = c.recv().await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["payload"]["identity"]["id"], "alice");
    let id = connected["payload"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ack = c.recv().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["payload"]["ref"], "a1");
    assert_eq!(ack["payload"]["status"], "ok");
    assert_eq!(ack["payload"]["result"]["client_id"], id.as_str());
    let who = c.roundtrip(json!({"type":"whoami","ref":"w"})).await;
    assert_eq!(
        who["payload"]["result"],
        json!({"id":"alice","authenticated":true})
    );
    assert_eq!(s.server.connection_count(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_password_gets_auth_failed_and_a_close_that_says_do_not_retry() {
    let s = TestServer::with(with_password).await;
    let mut c = RawClient::connect(&s.url()).await;
    c.send(json!({"type":"auth","payload":{"password":"secret124"},"ref":"a1"}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(reply["payload"]["status"], "error");
    assert_eq!(reply["payload"]["code"], "AUTH_FAILED");
    let closed = c.closed().await;
    assert_eq!(closed.code, 4001);
    assert!(
        closed.reason.starts_with("AUTH_FAILED"),
        "{}",
        closed.reason
    );
    assert_eq!(reconnect_hint(closed.code), Reconnect::Never);
    assert_eq!(s.server.connection_count(), 0);
    s.stop().await;
}

#[tokio::test]
async fn nothing_is_processed_before_authentication() {
    let ran = Arc::new(Mutex::new(0));
    let counter = ran.clone();
    let s = TestServer::with(move |b| {
        with_password(b).on("count", move || {
            let counter = counter.clone();
            async move {
                *counter.lock().unwrap() += 1;
            }
        })
    })
    .await;
    let mut c = RawClient::connect(&s.url()).await;
    let r = c.roundtrip(json!({"type":"count","ref":"c1"})).await;
    assert_eq!(r["payload"]["code"], "AUTH_REQUIRED");
    assert_eq!(r["payload"]["ref"], "c1");
    let r = c
        .roundtrip(json!({"type":"join_room","payload":{"room_id":"general"}}))
        .await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["payload"]["code"], "AUTH_REQUIRED");
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(c.recv().await["payload"]["code"], "AUTH_REQUIRED");
    assert_eq!(*ran.lock().unwrap(), 0);
    assert!(s.server.rooms().is_empty());
    assert_eq!(s.server.connection_count(), 0, "not counted before auth");

    // The connection is still usable: authenticate, then the same message runs.
    c.send(json!({"type":"auth","payload":{"password":"secret123"}}))
        .await;
    assert_eq!(c.recv().await["type"], "connected");
    let r = c.roundtrip(json!({"type":"count","ref":"c2"})).await;
    assert_eq!(r["payload"]["status"], "ok");
    assert_eq!(*ran.lock().unwrap(), 1);
    s.stop().await;
}

#[tokio::test]
async fn silence_past_the_auth_timeout_closes_with_4002() {
    let s = TestServer::with_config(ServerConfig {
        password: Some("secret123".into()),
        auth_timeout: Duration::from_millis(200),
        ..TestServer::config()
    })
    .await;
    let mut c = RawClient::connect(&s.url()).await;
    let error = c.recv().await;
    assert_eq!(error["payload"]["code"], "AUTH_TIMEOUT");
    let closed = c.closed().await;
    assert_eq!(closed.code, 4002);
    assert_eq!(reconnect_hint(closed.code), Reconnect::Backoff);
    s.stop().await;
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    let s = TestServer::with_config(ServerConfig {
        password: Some("secret123".into()),
        auth_max_failures: 3,
        ..TestServer::config()
    })
    .await;
    for _ in 0..3 {
        let mut c = RawClient::connect(&s.url()).await;
        c.send(json!({"type":"auth","payload":{"password":"guess"}}))
            .await;
        assert_eq!(c.recv().await["payload"]["code"], "AUTH_FAILED");
        assert_eq!(c.closed().await.code, 4001);
    }
    // Now even the right password is refused unchecked until the window ends.
    let mut c = RawClient::connect(&s.url()).await;
    c.send(json!({"type":"auth","payload":{"password":"secret123"}}))
        .await;
    let error = c.recv().await;
    assert_eq!(error["payload"]["code"], "RATE_LIMITED");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("too many failed attempts")
    );
    assert_eq!(c.closed().await.code, 4006);
    s.stop().await;
}

#[tokio::test]
async fn an_authenticator_checks_tokens_and_handlers_see_the_identity() {
    let s = TestServer::with(|b| {
        b.config(TestServer::config())
            .authenticator(|creds: Credentials| async move {
                match creds.token() {
                    Some("tok-alice") => {
                        Ok(Identity::new("alice").with_claims(json!({"role": "admin"})))
                    }
                    _ => Err(AuthRejected::new("invalid token")),
                }
            })
            .on("role", |conn: Conn| async move {
                Json(conn.identity().map(|i| i.claims["role"].clone()))
            })
    })
    .await;
    let mut ok = RawClient::connect(&s.url()).await;
    ok.send(json!({"type":"auth","payload":{"token":"tok-alice"}}))
        .await;
    let connected = ok.recv().await;
    assert_eq!(connected["payload"]["identity"]["id"], "alice");
    let r = ok.roundtrip(json!({"type":"role","ref":"r"})).await;
    assert_eq!(r["payload"]["result"], "admin");

    let mut bad = RawClient::connect(&s.url()).await;
    bad.send(json!({"type":"auth","payload":{"token":"tok-mallory"}}))
        .await;
    let error = bad.recv().await;
    assert_eq!(error["payload"]["code"], "AUTH_FAILED");
    assert_eq!(error["payload"]["message"], "invalid token");
    assert_eq!(bad.closed().await.code, 4001);
    s.stop().await;
}

#[tokio::test]
async fn with_optional_auth_anonymous_clients_connect_and_some_handlers_require_it() {
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            password: Some("secret123".into()),
            auth_required: false,
            ..TestServer::config()
        })
        .on("whoami", |who: Identity| async move { Json(who.id) })
        .on("hello", || async { Json("hi") })
    })
    .await;
    let mut c = s.raw().await;
    let r = c.roundtrip(json!({"type":"hello","ref":"h"})).await;
    assert_eq!(r["payload"]["result"], "hi");
    let r = c.roundtrip(json!({"type":"whoami","ref":"w1"})).await;
    assert_eq!(r["payload"]["code"], "AUTH_REQUIRED");
    // A wrong guess is an error here, not a disconnect.
    let r = c
        .roundtrip(json!({"type":"auth","payload":{"password":"nope"},"ref":"a0"}))
        .await;
    assert_eq!(r["payload"]["code"], "AUTH_FAILED");
    let r = c
        .roundtrip(
            json!({"type":"auth","payload":{"password":"secret123","username":"bob"},"ref":"a1"}),
        )
        .await;
    assert_eq!(r["payload"]["status"], "ok");
    assert_eq!(r["payload"]["result"]["identity"]["id"], "bob");
    let r = c.roundtrip(json!({"type":"whoami","ref":"w2"})).await;
    assert_eq!(r["payload"]["result"], "bob");
    s.stop().await;
}

#[tokio::test]
async fn auth_on_a_server_without_authentication_is_a_harmless_no_op() {
    let s = TestServer::with(|b| b.config(TestServer::config())).await;
    let mut c = s.raw().await;
    let r = c
        .roundtrip(json!({"type":"auth","payload":{"password":"anything"},"ref":"a"}))
        .await;
    assert_eq!(r["payload"]["status"], "ok");
    assert_eq!(r["payload"]["result"]["client_id"], c.id.as_str());
    s.stop().await;
}

#[tokio::test]
async fn shutdown_closes_clients_still_authenticating() {
    let s = TestServer::with(with_password).await;
    let mut c = RawClient::connect(&s.url()).await;
    // The handshake is done; the server waits for `auth`.
    let server = s.server.clone();
    let stop = tokio::spawn(async move { server.shutdown().await });
    let error = c.recv().await;
    assert_eq!(error["payload"]["code"], "SHUTTING_DOWN");
    assert_eq!(c.closed().await.code, 1001);
    stop.await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_by_heartbeats_and_the_disconnect_hook_runs() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = TestServer::with(move |b| {
        b.config(ServerConfig {
            heartbeat_interval: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_millis(300),
            ..TestServer::config()
        })
        .on_disconnect(move |conn: Conn, reason| {
            let tx = tx.clone();
            async move {
                tx.send((conn.id().to_string(), reason.code)).ok();
            }
        })
    })
    .await;
    // A live client answers pings (its socket library does, while it reads) and stays.
    let live = switchboard_client::Client::connect(&s.url()).await.unwrap();
    // A dead one never answers.
    let mut dead = WireClient::connect(s.addr).await;
    let connected = dead.recv().await;
    let dead_id = connected["payload"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut pings = 0;
    let code = loop {
        let frame = dead.next_frame().await.expect("a frame");
        match frame.opcode {
            9 => pings += 1,
            8 => break frame.close_code(),
            _ => {}
        }
    };
    assert!(pings >= 1, "the server pinged before giving up");
    assert_eq!(code, 4008);
    let (id, hook_code) = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id.as_str(), hook_code), (dead_id.as_str(), 4008));
    // The live one outlives the timeout several times over, sending nothing itself.
    let waited = tokio::time::timeout(Duration::from_millis(1000), rx.recv()).await;
    assert!(waited.is_err(), "no other client was dropped");
    assert_eq!(live.state(), switchboard_client::ConnectionState::Open);
    assert_eq!(s.server.connection_count(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_and_others_are_unaffected() {
    let s = TestServer::with(|b| {
        b.config(ServerConfig {
            rate_limit: 1,
            rate_burst: 5,
            ..TestServer::config()
        })
        .on("work", || async { Json("done") })
    })
    .await;
    let mut flooder = s.raw().await;
    let mut other = s.raw().await;
    for i in 0..5 {
        flooder
            .send(json!({"type":"work","ref": format!("w{i}")}))
            .await;
    }
    for i in 0..5 {
        let r = flooder.recv().await;
        assert_eq!(r["payload"]["ref"], format!("w{i}"));
        assert_eq!(r["payload"]["status"], "ok");
    }
    // Over the burst: dropped, and a request learns it at once.
    let r = flooder.roundtrip(json!({"type":"work","ref":"late"})).await;
    assert_eq!(r["payload"]["code"], "RATE_LIMITED");
    assert_eq!(r["payload"]["ref"], "late");
    assert!(r["payload"]["details"]["retry_after_ms"].as_u64().unwrap() > 0);
    // Keep going while limited: closed with 4006.
    for _ in 0..20 {
        flooder.send(json!({"type":"work"})).await;
    }
    let closed = flooder.closed().await;
    assert_eq!(closed.code, 4006);
    assert!(closed.reason.starts_with("RATE_LIMITED"));
    assert_eq!(reconnect_hint(closed.code), Reconnect::Backoff);
    let r = other.roundtrip(json!({"type":"work","ref":"o"})).await;
    assert_eq!(r["payload"]["result"], "done");
    s.stop().await;
}

#[tokio::test]
async fn pages_from_other_origins_are_refused_programs_are_not() {
    let s = TestServer::with_config(ServerConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        ..TestServer::config()
    })
    .await;
    let head = WireClient::http_head(
        s.addr,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: https://evil.example\r\n\r\n",
            s.addr
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let mut ok =
        WireClient::connect_with(s.addr, "/ws", &[("Origin", "https://app.example.com")]).await;
    assert_eq!(ok.recv().await["type"], "connected");
    let mut program = WireClient::connect(s.addr).await;
    assert_eq!(program.recv().await["type"], "connected");
    s.stop().await;
}

#[tokio::test]
async fn the_connection_limit_refuses_with_a_code_and_a_retry_hint() {
    let s = TestServer::with_config(ServerConfig {
        max_connections: 2,
        ..TestServer::config()
    })
    .await;
    let mut a = s.raw().await;
    let _b = s.raw().await;
    let mut c = RawClient::connect(&s.url()).await;
    let error = c.recv().await;
    assert_eq!(error["payload"]["code"], "SERVER_FULL");
    let closed = c.closed().await;
    assert_eq!(closed.code, 4005);
    assert_eq!(reconnect_hint(closed.code), Reconnect::Backoff);
    assert!(a.nothing_pending().await);
    // A freed slot is reusable.
    a.close().await;
    let mut d = RawClient::connect(&s.url()).await;
    // The slot frees when the server has finished with `a`; retry until it has.
    let mut hello: Value = d.recv().await;
    for _ in 0..50 {
        if hello["type"] == "connected" {
            break;
        }
        d = RawClient::connect(&s.url()).await;
        hello = d.recv().await;
    }
    assert_eq!(hello["type"], "connected");
    s.stop().await;
}

#[tokio::test]
async fn tls_serves_wss_and_the_client_connects_with_its_own_roots() {
    let cert = switchboard_test::TestCert::generate();
    let s = TestServer::start_tls(
        switchboard_server::Server::builder()
            .config(ServerConfig {
                password: Some("secret123".into()),
                ..TestServer::config()
            })
            .on("hello", || async { Json("hi") }),
        &cert,
    )
    .await;
    assert!(s.url().starts_with("wss://"));
    let config = switchboard_client::ClientConfig {
        tls: Some(cert.client.clone()),
        ..switchboard_client::ClientConfig::default().password("secret123")
    };
    let client = switchboard_client::Client::connect_with(&s.url(), config)
        .await
        .unwrap();
    let reply: String = client
        .request("hello", &json!({}), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, "hi");
    assert_eq!(s.server.connection_count(), 1);

    // Without trusting the certificate, the handshake fails with a typed error.
    let untrusting = switchboard_client::Client::connect(&s.url()).await;
    assert!(matches!(
        untrusting,
        Err(switchboard_client::ConnectError::Unreachable(_))
    ));
    // Plain ws:// to a TLS port does not connect either.
    let plain = switchboard_client::Client::connect(&format!("ws://{}/ws", s.addr)).await;
    assert!(plain.is_err());
    // A wrong password over TLS is refused like anywhere else.
    let config = switchboard_client::ClientConfig {
        tls: Some(cert.client.clone()),
        ..switchboard_client::ClientConfig::default().password("wrong")
    };
    match switchboard_client::Client::connect_with(&s.url(), config).await {
        Err(switchboard_client::ConnectError::Refused {
            code, reconnect, ..
        }) => {
            assert_eq!(code, "AUTH_FAILED");
            assert_eq!(reconnect, Reconnect::Never);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    client.close().await;
    s.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_client_s_wrong_guesses_do_not_lock_out_the_others() {
    let s = TestServer::with_config(ServerConfig {
        password: Some("secret123".into()),
        auth_max_failures: 2,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..TestServer::config()
    })
    .await;
    let login = |forwarded: &'static str, password: &'static str| {
        let url = s.url();
        async move {
            let mut c =
                RawClient::connect_with_headers(&url, &[("x-forwarded-for", forwarded)]).await;
            c.send(json!({"type":"auth","ref":"a","payload":{"password": password}}))
                .await;
            c.recv().await
        }
    };
    for _ in 0..2 {
        let reply = login("203.0.113.1", "guess").await;
        assert_eq!(reply["payload"]["code"], "AUTH_FAILED", "{reply}");
    }
    let reply = login("203.0.113.1", "secret123").await;
    assert_eq!(
        reply["payload"]["code"], "RATE_LIMITED",
        "the guesser is throttled: {reply}"
    );
    let reply = login("203.0.113.2", "secret123").await;
    assert_eq!(
        reply["type"], "connected",
        "another client behind the proxy: {reply}"
    );
    // (A header from a peer that is not a trusted proxy is ignored: the unit tests of
    // `http::forwarded` show it.)
    s.stop().await;
}
