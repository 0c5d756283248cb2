//! Scenarios every backplane that routes by interest (Redis, NATS) must pass, run by
//! each backplane's suite on two nodes of its own.

use serde_json::json;

use crate::cluster::{connect, join, sample};
use crate::{RawClient, TestServer};

/// A node receives nothing of a room it has no member in, and the room from the moment
/// one of its clients joins, in the cluster's order; a direct message reaches only the
/// node of its client.
pub async fn a_node_receives_only_what_its_clients_need(n0: &TestServer, n1: &TestServer) {
    let received = |n: &TestServer| sample(n, "switchboard_backplane_received");
    let (mut a, _) = connect(n0).await;
    let (mut a2, _) = connect(n0).await;
    let (mut b, _) = connect(n1).await;
    let (mut b2, _) = connect(n1).await;
    join(&mut a, "only-here").await;
    join(&mut a2, "only-here").await;
    join(&mut b, "elsewhere").await;
    join(&mut b2, "elsewhere").await;
    // Node 1 has received the room it follows up to here (a room message crosses the
    // backplane, even between two clients of one node).
    b2.send(json!({"type":"m","room":"elsewhere","payload":{}}))
        .await;
    b.recv_type("m").await;
    let before = received(n1);
    for i in 0..50 {
        a.send(json!({"type":"m","room":"only-here","payload":{"i": i}}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(a2.recv_type("m").await["payload"]["i"], i);
    }
    // Node 1 has no member in the room: it was not sent a single message of it.
    assert_eq!(received(n1), before);
    // A member joins on node 1: from then on, node 1 receives the room.
    let position = join(&mut b, "only-here").await;
    a.send(json!({"type":"m","room":"only-here","payload":{"i": 50}}))
        .await;
    let m = b.recv_type("m").await;
    assert_eq!(m["payload"]["i"], 50);
    // Its offset follows the position the join gave (b's own `user_joined`, not for
    // b, may come between): the room's order is the cluster's.
    let (offset, given) = (m["offset"].as_u64(), position["offset"].as_u64());
    let (offset, given) = (offset.expect("an offset"), given.expect("a position"));
    assert!(
        offset == given + 1 || offset == given + 2,
        "{offset} after {given}"
    );
    assert!(received(n1) > before);
    // A direct message goes to its client's node only (node 0 has received the room
    // up to here: its member has b's `user_joined` and message 50, in either order).
    let [_, m] = one_of_each(&mut a2, ["user_joined", "m"]).await;
    assert_eq!(m["payload"]["i"], 50);
    let n0_before = received(n0);
    b2.send(json!({"type":"dm","to":b.id,"payload":{"i": 1}}))
        .await;
    assert_eq!(b.recv_type("dm").await["payload"]["i"], 1);
    a2.send(json!({"type":"m","room":"only-here","payload":{"i": 51}}))
        .await;
    assert_eq!(a.recv_type("m").await["payload"]["i"], 51);
    // Node 0 received the room message, not the direct one.
    assert_eq!(received(n0), n0_before + 1.0);
}

/// Receives until one message of each type in `kinds` came, in whatever order (they
/// come in different streams), returning each type's message.
async fn one_of_each(c: &mut RawClient, kinds: [&str; 2]) -> [serde_json::Value; 2] {
    let mut got = [serde_json::Value::Null, serde_json::Value::Null];
    while got.iter().any(serde_json::Value::is_null) {
        let m = c.recv().await;
        if let Some(i) = kinds.iter().position(|k| m["type"] == *k) {
            got[i] = m;
        }
    }
    got
}

/// A client resumes on node `b`, which never followed its room, with every room and
/// direct message it missed, once and in order; both kinds then find it on `b`.
pub async fn a_client_resumes_where_its_room_was_never_followed(a: &TestServer, b: &TestServer) {
    let (mut x, hello) = connect(a).await;
    let position = join(&mut x, "r").await;
    let (mut watcher, _) = connect(a).await;
    join(&mut watcher, "r").await;
    // y on node b is not in room r: node b does not follow it.
    let (mut y, _) = connect(b).await;
    watcher
        .send(json!({"type":"chat","room":"r","payload":{"i":-1}}))
        .await;
    y.send(json!({"type":"dm","to":hello["client_id"],"payload":{"i":-1}}))
        .await;
    let [seen_room, seen_direct] = one_of_each(&mut x, ["chat", "dm"]).await;
    x.drop_connection();
    watcher.recv_type("user_left").await;

    // Sent while x is away: room messages from node a, direct ones from node b.
    for i in 0..5 {
        watcher
            .send(json!({"type":"chat","room":"r","payload":{"i":i}}))
            .await;
        y.send(json!({"type":"dm","to":hello["client_id"],"payload":{"i":i}}))
            .await;
    }
    let resume = json!({"type":"resume","payload":{
        "session_id": hello["session_id"], "token": hello["resume_token"],
        "streams": {
            "session": {"epoch": hello["streams"]["session"]["epoch"], "offset": seen_direct["offset"]},
            "all": hello["streams"]["all"],
            "rooms": {"r": {"epoch": position["epoch"], "offset": seen_room["offset"]}}}}});
    // A wrong token resumes nothing.
    let mut forged = RawClient::connect(&format!("{}?resume=1", b.url())).await;
    let mut wrong = resume.clone();
    wrong["payload"]["token"] = json!("00000000000000000000000000000000");
    forged.send(wrong).await;
    let refused = forged.recv_type("connected").await;
    assert_eq!(refused["payload"]["resumed"]["resumed"], false);
    assert_ne!(refused["payload"]["client_id"], hello["client_id"]);

    // x comes back on node b: same client id, same room, everything it missed,
    // although node b never followed room r.
    let mut back = RawClient::connect(&format!("{}?resume=1", b.url())).await;
    back.send(resume).await;
    let connected = back.recv_type("connected").await;
    let resumed = &connected["payload"]["resumed"];
    assert_eq!(connected["payload"]["client_id"], hello["client_id"]);
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["rooms"]["r"]["recovered"], true, "{resumed}");
    assert_eq!(resumed["session"]["recovered"], true, "{resumed}");
    let (mut chats, mut dms) = (Vec::new(), Vec::new());
    while chats.len() < 5 || dms.len() < 5 {
        let m = back.recv().await;
        match m["type"].as_str() {
            Some("chat") => chats.push(m["payload"]["i"].clone()),
            Some("dm") => dms.push(m["payload"]["i"].clone()),
            _ => {}
        }
    }
    assert_eq!(chats, [0, 1, 2, 3, 4]);
    assert_eq!(dms, [0, 1, 2, 3, 4]);
    // It is in the room on its new node, and both kinds of message find it there.
    y.send(json!({"type":"dm","to":hello["client_id"],"payload":{"i":5}}))
        .await;
    watcher
        .send(json!({"type":"chat","room":"r","payload":{"i":5}}))
        .await;
    let [chat, dm] = one_of_each(&mut back, ["chat", "dm"]).await;
    assert_eq!(
        (&chat["payload"]["i"], &dm["payload"]["i"]),
        (&json!(5), &json!(5))
    );
    assert!(back.nothing_pending().await, "nothing twice");
}
