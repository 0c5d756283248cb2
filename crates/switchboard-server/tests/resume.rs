//! Streams, history and session resume, over real sockets: what a client that lost its
//! connection gets back (its id, rooms, and every message it missed, in order, once),
//! and what it is told when it cannot (all or nothing per stream, never someone
//! else's messages).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_server::{
    AuthRejected, Conn, ConnId, Credentials, DisconnectReason, HistoryPolicy, HistoryRule,
    Identity, Json, ServerConfig,
};
use switchboard_test::{RawClient, TIMEOUT, TestServer};
use tokio::sync::mpsc;

/// What a client keeps to resume: its session and its position in each stream.
#[derive(Debug, Clone)]
struct Resumable {
    client_id: String,
    session_id: String,
    token: String,
    session: Value,
    all: Value,
    rooms: BTreeMap<String, Value>,
}

impl Resumable {
    fn from_connected(connected: &Value) -> Resumable {
        assert_eq!(connected["type"], "connected", "{connected}");
        let p = &connected["payload"];
        Resumable {
            client_id: p["client_id"].as_str().unwrap().to_owned(),
            session_id: p["session_id"].as_str().unwrap().to_owned(),
            token: p["resume_token"].as_str().unwrap().to_owned(),
            session: p["streams"]["session"].clone(),
            all: p["streams"]["all"].clone(),
            rooms: BTreeMap::new(),
        }
    }

    /// Moves the position of the stream `frame` belongs to; panics on a duplicate or a
    /// message out of order.
    fn saw(&mut self, frame: &Value) {
        let Some(offset) = frame["offset"].as_u64() else {
            return;
        };
        let position = if let Some(room) = frame["room"].as_str() {
            self.rooms.get_mut(room).expect("a room this client joined")
        } else if frame["to"] == "all" {
            &mut self.all
        } else {
            &mut self.session
        };
        let last = position["offset"].as_u64().unwrap();
        assert!(offset > last, "offset {offset} after {last}: {frame}");
        position["offset"] = json!(offset);
    }

    fn request(&self, resend: &[&str]) -> Value {
        json!({"type": "resume", "payload": {
            "session_id": self.session_id,
            "token": self.token,
            "streams": {"session": self.session, "all": self.all, "rooms": self.rooms},
            "resend": resend,
        }})
    }
}

fn hub_config() -> ServerConfig {
    ServerConfig {
        relay_unhandled: true,
        ..TestServer::config()
    }
}

/// A server that reports each disconnect, so tests wait for the drop to be noticed.
async fn server_with(config: ServerConfig) -> (TestServer, mpsc::UnboundedReceiver<ConnId>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let s = TestServer::with(move |b| {
        b.config(config)
            .on_disconnect(move |conn: Conn, _: DisconnectReason| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(conn.id());
                }
            })
    })
    .await;
    (s, rx)
}

async fn gone(rx: &mut mpsc::UnboundedReceiver<ConnId>, id: &str) {
    loop {
        let got = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if got.to_string() == id {
            return;
        }
    }
}

/// Connects, reads `connected`, joins `rooms` (tracking their positions).
async fn connect(s: &TestServer, rooms: &[&str]) -> (RawClient, Resumable) {
    let mut c = RawClient::connect(&s.url()).await;
    let mut r = Resumable::from_connected(&c.recv().await);
    c.id = r.client_id.clone();
    for room in rooms {
        let ack = c
            .roundtrip(json!({"type":"join_room","ref":"j","payload":{"room_id":room}}))
            .await;
        assert_eq!(ack["payload"]["status"], "ok", "{ack}");
        r.rooms.insert(
            room.to_string(),
            ack["payload"]["result"]["position"].clone(),
        );
    }
    (c, r)
}

/// Opens a `?resume=1` connection and sends `resume`; returns it and `connected`.
async fn resume(s: &TestServer, request: Value) -> (RawClient, Value) {
    let mut c = RawClient::connect(&format!("{}?resume=1", s.url())).await;
    c.send(request).await;
    let connected = c.recv().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    c.id = connected["payload"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, connected)
}

#[tokio::test]
async fn a_client_cut_off_gets_its_id_rooms_and_every_missed_message_in_order() {
    let (s, mut disconnects) = server_with(hub_config()).await;
    let (mut a, mut ra) = connect(&s, &["general"]).await;
    let (mut b, _) = connect(&s, &["general"]).await;
    ra.saw(&a.recv_type("user_joined").await);
    for i in 0..3 {
        b.send(json!({"type":"chat","room":"general","payload":{"n":i}}))
            .await;
        ra.saw(&a.recv().await);
    }

    a.drop_connection();
    gone(&mut disconnects, &ra.client_id).await;
    assert_eq!(
        b.recv_type("user_left").await["payload"]["user_id"],
        ra.client_id
    );
    // Sent while a is away: to its room, to it, to everyone.
    for i in 3..8 {
        b.send(json!({"type":"chat","room":"general","payload":{"n":i}}))
            .await;
    }
    for i in 0..3 {
        let ack = b
            .roundtrip(
                json!({"type":"dm","to":ra.client_id,"ref":format!("d{i}"),"payload":{"n":i}}),
            )
            .await;
        assert_eq!(
            ack["payload"]["status"], "ok",
            "a direct message to an absent session is kept: {ack}"
        );
    }
    s.server.broadcast("notice", &json!({"n": 0})).unwrap();
    s.server.broadcast("notice", &json!({"n": 1})).unwrap();
    b.recv_type("notice").await;
    b.recv_type("notice").await;

    let (mut a2, connected) = resume(&s, ra.request(&[])).await;
    let resumed = &connected["payload"]["resumed"];
    assert_eq!(
        connected["payload"]["client_id"], ra.client_id,
        "the same client id"
    );
    assert_eq!(connected["payload"]["session_id"], ra.session_id);
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["rooms"]["general"]["recovered"], true, "{resumed}");
    assert_eq!(resumed["rooms"]["general"]["missed"], 5);
    assert_eq!(resumed["session"]["missed"], 3);
    assert_eq!(resumed["all"]["missed"], 2);

    let mut room = Vec::new();
    let mut direct = Vec::new();
    let mut all = Vec::new();
    for _ in 0..10 {
        let m = a2.recv().await;
        ra.saw(&m);
        match m["type"].as_str().unwrap() {
            "chat" => room.push(m["payload"]["n"].as_u64().unwrap()),
            "dm" => direct.push(m["payload"]["n"].as_u64().unwrap()),
            "notice" => all.push(m["payload"]["n"].as_u64().unwrap()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(room, [3, 4, 5, 6, 7]);
    assert_eq!(direct, [0, 1, 2]);
    assert_eq!(all, [0, 1]);
    assert!(a2.nothing_pending().await, "nothing twice");

    // It is back in its room, and the room knows.
    assert_eq!(
        b.recv_type("user_joined").await["payload"]["user_id"],
        ra.client_id
    );
    b.send(json!({"type":"chat","room":"general","payload":{"n":8}}))
        .await;
    let live = a2.recv().await;
    ra.saw(&live);
    assert_eq!(live["payload"]["n"], 8);
    s.stop().await;
}

#[tokio::test]
async fn a_forged_or_stale_token_gets_a_typed_error_and_a_fresh_session() {
    let (s, mut disconnects) = server_with(hub_config()).await;
    let (a, ra) = connect(&s, &["general"]).await;
    let (mut b, _) = connect(&s, &[]).await;
    a.drop_connection();
    gone(&mut disconnects, &ra.client_id).await;
    b.roundtrip(json!({"type":"chat","room":"general","ref":"1","payload":{"secret":1}}))
        .await;
    b.roundtrip(json!({"type":"dm","to":ra.client_id,"ref":"2","payload":{"secret":2}}))
        .await;

    let forged = Resumable {
        token: "0".repeat(32),
        ..ra.clone()
    };
    let mut request = forged.request(&[]);
    request["ref"] = json!("res");
    let (mut c, connected) = resume(&s, request).await;
    assert_ne!(
        connected["payload"]["client_id"], ra.client_id,
        "a fresh session"
    );
    assert_eq!(connected["payload"]["resumed"]["resumed"], false);
    assert_eq!(connected["payload"]["resumed"]["reason"], "session_expired");
    let ack = c.recv().await;
    assert_eq!(ack["payload"]["ref"], "res");
    assert_eq!(ack["payload"]["code"], "RESUME_FAILED");
    assert_eq!(ack["payload"]["details"]["reason"], "session_expired");
    assert!(c.nothing_pending().await, "none of the session's messages");

    // Malformed requests, an unknown session id, a non-resume first message.
    for bad in [
        json!({"type":"resume","payload":{"token":"x"}}),
        json!({"type":"resume","payload":{"session_id":"nonsense","token":"x"}}),
        json!({"type":"resume","payload":{"session_id":"0000000000000bad.0","token":"x"}}),
        json!({"type":"chat","payload":{}}),
    ] {
        let (mut c, connected) = resume(&s, bad.clone()).await;
        assert_eq!(connected["payload"]["resumed"]["resumed"], false, "{bad}");
        assert_eq!(c.recv().await["payload"]["code"], "RESUME_FAILED", "{bad}");
        assert!(c.nothing_pending().await);
    }

    // The genuine token still works afterwards.
    let (mut a2, connected) = resume(&s, ra.request(&[])).await;
    assert_eq!(connected["payload"]["client_id"], ra.client_id);
    assert_eq!(
        a2.recv().await["payload"]["secret"],
        2,
        "the session's stream first"
    );
    assert_eq!(a2.recv().await["payload"]["secret"], 1);
    s.stop().await;
}

#[tokio::test]
async fn another_users_session_is_refused() {
    let (tx, mut disconnects) = mpsc::unbounded_channel();
    let s = TestServer::with(move |b| {
        b.config(hub_config())
            .authenticator(|creds: Credentials| async move {
                match creds.token() {
                    Some(user) if !user.is_empty() => Ok(Identity::new(user)),
                    _ => Err(AuthRejected::new("invalid token")),
                }
            })
            .on_disconnect(move |conn: Conn, _: DisconnectReason| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(conn.id());
                }
            })
    })
    .await;
    let mut alice = RawClient::connect(&s.url()).await;
    alice
        .send(json!({"type":"auth","payload":{"token":"alice"}}))
        .await;
    let ra = Resumable::from_connected(&alice.recv().await);
    alice.drop_connection();
    gone(&mut disconnects, &ra.client_id).await;

    let mut mallory = RawClient::connect(&format!("{}?resume=1", s.url())).await;
    mallory
        .send(json!({"type":"auth","payload":{"token":"mallory"}}))
        .await;
    mallory.send(ra.request(&[])).await;
    let connected = mallory.recv().await;
    assert_ne!(connected["payload"]["client_id"], ra.client_id);
    assert_eq!(connected["payload"]["identity"]["id"], "mallory");
    assert_eq!(
        connected["payload"]["user_id"], "mallory",
        "the user id is the identity's"
    );
    let error = mallory.recv().await;
    assert_eq!(error["payload"]["code"], "RESUME_FAILED");
    assert_eq!(
        error["payload"]["message"],
        "that session belongs to another user"
    );

    // Alice herself may, and gets her identity back.
    let mut back = RawClient::connect(&format!("{}?resume=1", s.url())).await;
    back.send(json!({"type":"auth","payload":{"token":"alice"}}))
        .await;
    back.send(ra.request(&[])).await;
    let connected = back.recv().await;
    assert_eq!(connected["payload"]["client_id"], ra.client_id);
    assert_eq!(connected["payload"]["identity"]["id"], "alice");
    s.stop().await;
}

#[tokio::test]
async fn recovery_is_all_or_nothing_per_stream() {
    let (s, mut disconnects) = server_with(ServerConfig {
        history_rooms: vec![HistoryRule::new(
            "short",
            HistoryPolicy {
                size: 2,
                ..HistoryPolicy::default()
            },
        )],
        ..hub_config()
    })
    .await;
    let (a, ra) = connect(&s, &["short", "long"]).await;
    let (mut b, _) = connect(&s, &[]).await;
    a.drop_connection();
    gone(&mut disconnects, &ra.client_id).await;
    for i in 0..5 {
        for room in ["short", "long"] {
            b.send(json!({"type":"chat","room":room,"payload":{"n":i}}))
                .await;
        }
    }
    let ack = b.roundtrip(json!({"type":"ping","ref":"sync"})).await;
    assert_eq!(ack["type"], "pong");

    let mut ahead = ra.clone();
    ahead.session["offset"] = json!(999);
    let (mut a2, connected) = resume(&s, ahead.request(&[])).await;
    let resumed = &connected["payload"]["resumed"];
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["session"]["recovered"], false);
    assert_eq!(resumed["session"]["reason"], "offset_ahead");
    let short = &resumed["rooms"]["short"];
    assert_eq!(
        (short["recovered"].clone(), short["reason"].clone()),
        (json!(false), json!("history_gap"))
    );
    assert_eq!(resumed["rooms"]["long"]["recovered"], true);
    assert_eq!(resumed["rooms"]["long"]["missed"], 5);
    // Only the recoverable stream is replayed: none of "short".
    for i in 0..5 {
        let m = a2.recv().await;
        assert_eq!(
            (m["room"].clone(), m["payload"]["n"].clone()),
            (json!("long"), json!(i))
        );
    }
    assert!(a2.nothing_pending().await);
    // The position to continue from is given even when recovery failed.
    assert_eq!(
        short["position"]["offset"], 7,
        "a's join and leave, five messages"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_expired_ended_or_kicked_session_cannot_be_resumed() {
    let (s, mut disconnects) = server_with(ServerConfig {
        session_ttl: Duration::from_millis(100),
        ..hub_config()
    })
    .await;
    let (a, ra) = connect(&s, &["general"]).await;
    a.drop_connection();
    gone(&mut disconnects, &ra.client_id).await;
    // The housekeeping expires it: wait until the node keeps no detached session.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while s.server.health()["history"]["detached_sessions"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut c, connected) = resume(&s, ra.request(&[])).await;
    assert_eq!(connected["payload"]["resumed"]["reason"], "session_expired");
    assert_eq!(c.recv().await["payload"]["code"], "RESUME_FAILED");

    // Closing normally (1000) ends a session at once; so does a kick.
    let (s, mut disconnects) = server_with(hub_config()).await;
    let (a, ra) = connect(&s, &[]).await;
    a.close().await;
    gone(&mut disconnects, &ra.client_id).await;
    let (_, connected) = resume(&s, ra.request(&[])).await;
    assert_eq!(
        connected["payload"]["resumed"]["resumed"], false,
        "said goodbye"
    );
    let (mut a, ra) = connect(&s, &[]).await;
    let id: ConnId = ra.client_id.parse().unwrap();
    s.server.connection(id).unwrap().disconnect("bye");
    assert_eq!(a.closed().await.code, 4004);
    gone(&mut disconnects, &ra.client_id).await;
    let (_, connected) = resume(&s, ra.request(&[])).await;
    assert_eq!(connected["payload"]["resumed"]["resumed"], false, "kicked");
    s.stop().await;
}

#[tokio::test]
async fn a_message_sent_again_after_a_reconnect_takes_effect_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (tx, mut disconnects) = mpsc::unbounded_channel();
    let counted = runs.clone();
    let s = TestServer::with(move |b| {
        b.config(hub_config())
            .on("order", move || {
                let runs = counted.clone();
                async move { Json(json!({"order": runs.fetch_add(1, Ordering::SeqCst) + 1})) }
            })
            .on_disconnect(move |conn: Conn, _: DisconnectReason| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(conn.id());
                }
            })
    })
    .await;
    let (mut a, ra) = connect(&s, &[]).await;
    // Sent, handled, and the connection drops before the answer is read.
    a.send(json!({"type":"order","ref":"o1","payload":{}}))
        .await;
    a.send(json!({"type":"ping","ref":"p"})).await;
    a.recv_type("pong").await;
    a.drop_connection();
    gone(&mut disconnects, &ra.client_id).await;

    let (mut a2, connected) = resume(&s, ra.request(&["o1", "o2"])).await;
    assert_eq!(connected["payload"]["resumed"]["resumed"], true);
    let again = a2
        .roundtrip(json!({"type":"order","ref":"o1","payload":{}}))
        .await;
    assert_eq!(
        again["payload"]["result"],
        json!({"order": 1}),
        "the first answer"
    );
    let new = a2
        .roundtrip(json!({"type":"order","ref":"o2","payload":{}}))
        .await;
    assert_eq!(
        new["payload"]["result"],
        json!({"order": 2}),
        "never seen: handled"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "o1 ran once");
    // A ref reused later (not announced as resent) is a new message.
    let reused = a2
        .roundtrip(json!({"type":"order","ref":"o1","payload":{}}))
        .await;
    assert_eq!(reused["payload"]["result"], json!({"order": 3}));
    s.stop().await;
}

#[tokio::test]
async fn resuming_a_session_still_connected_takes_it_over() {
    let s = TestServer::with_config(hub_config()).await;
    let (mut a, ra) = connect(&s, &["general"]).await;
    let (mut b, _) = connect(&s, &["general"]).await;
    let (mut a2, connected) = resume(&s, ra.request(&[])).await;
    assert_eq!(connected["payload"]["resumed"]["resumed"], true);
    assert_eq!(connected["payload"]["client_id"], ra.client_id);
    let closed = a.closed().await;
    assert_eq!(closed.code, 4009);
    assert!(
        closed.reason.starts_with("SESSION_TAKEN"),
        "{}",
        closed.reason
    );
    // The room's members saw no one leave; the new connection has the membership.
    b.send(json!({"type":"chat","room":"general","payload":{"n":1}}))
        .await;
    assert_eq!(a2.recv_type("chat").await["payload"]["n"], 1);
    assert!(b.nothing_pending().await, "no user_left or user_joined");
    s.stop().await;
}

/// A client whose connection failed during a resume's handshake tries again; the
/// server may take the attempt it gave up on after the newer one (it was slow to read
/// it). That one must not take the session from the connection the client went on
/// with: it would close it with `SESSION_TAKEN`, which tells a client never to
/// reconnect (the Redis chaos test saw a client end so).
#[tokio::test]
async fn a_resume_the_client_gave_up_on_does_not_take_the_session_from_a_newer_one() {
    let s = TestServer::with_config(hub_config()).await;
    let (a, ra) = connect(&s, &["general"]).await;
    drop(a);
    let attempt = |n: u64| {
        let mut request = ra.request(&[]);
        request["payload"]["attempt"] = json!(n);
        request
    };
    let (mut live, connected) = resume(&s, attempt(2)).await;
    assert_eq!(connected["payload"]["resumed"]["resumed"], true);

    let (_stale, connected) = resume(&s, attempt(1)).await;
    assert_eq!(
        connected["payload"]["resumed"]["resumed"], false,
        "{connected}"
    );
    assert_ne!(connected["payload"]["client_id"], ra.client_id.as_str());
    let pong = live.roundtrip(json!({"type":"ping","ref":"p"})).await;
    assert_eq!(
        pong["type"], "pong",
        "the newer connection still has the session"
    );

    // A newer attempt still takes it over, as a resume does.
    let (_newest, connected) = resume(&s, attempt(3)).await;
    assert_eq!(connected["payload"]["resumed"]["resumed"], true);
    assert_eq!(live.closed().await.code, 4009);
    s.stop().await;
}

#[tokio::test]
async fn a_room_that_keeps_its_latest_gives_it_to_each_joiner() {
    let s = TestServer::with_config(ServerConfig {
        history_rooms: vec![HistoryRule::new("scores:*", HistoryPolicy::latest())],
        ..hub_config()
    })
    .await;
    let (mut b, _) = connect(&s, &[]).await;
    for score in ["1-0", "2-0"] {
        b.send(json!({"type":"score","room":"scores:final","payload":{"score":score}}))
            .await;
    }
    b.roundtrip(json!({"type":"ping","ref":"sync"})).await;
    let mut a = RawClient::connect(&s.url()).await;
    a.recv_type("connected").await;
    a.send(json!({"type":"join_room","ref":"j","payload":{"room_id":"scores:final"}}))
        .await;
    let latest = a.recv().await;
    assert_eq!(latest["payload"]["score"], "2-0", "{latest}");
    assert_eq!(latest["offset"], 2);
    let ack = a.recv().await;
    assert_eq!(ack["payload"]["result"]["position"]["offset"], 2);
    // A room without the rule gives nothing on join.
    let ack = a
        .roundtrip(json!({"type":"join_room","ref":"j2","payload":{"room_id":"plain"}}))
        .await;
    assert_eq!(ack["type"], "ack");
    s.stop().await;
}

#[tokio::test]
async fn history_stays_within_its_memory_budget() {
    let budget = 2 * 1024 * 1024;
    let s = TestServer::with_config(ServerConfig {
        history_memory: budget,
        ..hub_config()
    })
    .await;
    // 10,000 rooms, each sent more than its history can hold in all.
    let payload = json!({"text": "x".repeat(200)});
    for room in 0..10_000 {
        for _ in 0..3 {
            s.server
                .send_to_room(&format!("room-{room}"), "fill", &payload)
                .unwrap();
        }
    }
    let health = s.server.health();
    let used = health["history"]["bytes"].as_u64().unwrap() as usize;
    assert_eq!(health["history"]["rooms"], 10_000);
    // The budget, plus at most the one newest message each room always keeps.
    let one = 500;
    assert!(used <= budget + 10_000 * one, "history holds {used} bytes");
    assert!(used >= budget / 2, "the budget is used, not wasted: {used}");
    s.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_cut_off_recovers_what_its_queue_dropped() {
    let (s, mut disconnects) = server_with(ServerConfig {
        outbound_queue: 16,
        ..hub_config()
    })
    .await;
    let (mut slow, rs) = connect(&s, &["feed"]).await;
    // Queued faster than it reads (it does not read at all): cut off with 4007.
    for i in 0..100 {
        s.server
            .send_to_room("feed", "tick", &json!({"i": i}))
            .unwrap();
    }
    assert_eq!(slow.closed().await.code, 4007);
    gone(&mut disconnects, &rs.client_id).await;
    let (mut back, connected) = resume(&s, rs.request(&[])).await;
    let room = &connected["payload"]["resumed"]["rooms"]["feed"];
    assert_eq!(room["recovered"], true, "{connected}");
    assert_eq!(room["missed"], 100);
    for i in 0..100 {
        assert_eq!(back.recv().await["payload"]["i"], i);
    }
    s.stop().await;
}
