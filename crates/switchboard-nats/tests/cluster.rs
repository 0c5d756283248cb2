//! Three nodes over a real `nats-server`: rooms, broadcasts and direct messages across
//! nodes, cluster-wide counts, routing by interest, resume on any node, and NATS
//! restarted mid-traffic.
#![allow(clippy::unwrap_used)]

mod common;

use common::node;
use serde_json::json;
use switchboard_nats::NatsBackplane;
use switchboard_server::{ConnId, Server};
use switchboard_test::cluster::{connect, eventually, join, sample};
use switchboard_test::{NatsServer, RawClient, TIMEOUT, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_act_as_one() {
    let nats = NatsServer::start();
    let prefix = "one";
    let nodes = [
        node(&nats.url(), prefix).await,
        node(&nats.url(), prefix).await,
        node(&nats.url(), prefix).await,
    ];
    let (mut a, _) = connect(&nodes[0]).await;
    let (mut b, _) = connect(&nodes[1]).await;
    let (mut c, _) = connect(&nodes[2]).await;
    let (mut b2, _) = connect(&nodes[1]).await;

    // Counts agree on every node.
    for n in &nodes {
        let server = n.server.clone();
        eventually("4 clients counted everywhere", || {
            let s = server.clone();
            async move { s.cluster_connection_count().await == 4 }
        })
        .await;
    }

    // A room spanning three nodes.
    for x in [&mut a, &mut b, &mut c] {
        join(x, "general").await;
    }
    let ids: Vec<ConnId> = [&a, &b, &c].iter().map(|x| x.id.parse().unwrap()).collect();
    for n in &nodes {
        let server = n.server.clone();
        let mut expected = ids.clone();
        expected.sort();
        eventually("room members agree", || {
            let (s, e) = (server.clone(), expected.clone());
            async move { s.cluster_room_members("general").await == e }
        })
        .await;
    }
    a.send(json!({"type":"chat","room":"general","payload":{"text":"hi from node 0"}}))
        .await;
    // The joins' `user_joined` took the room's first offsets.
    let mut first = Vec::new();
    for x in [&mut b, &mut c] {
        let m = x.recv_type("chat").await;
        assert_eq!(m["payload"]["text"], "hi from node 0");
        assert_eq!(m["from"], a.id.as_str());
        assert_eq!(m["room"], "general");
        first.push(m["offset"].as_u64().unwrap());
    }
    assert_eq!(first[0], first[1], "one offset on every node");
    c.send(json!({"type":"chat","room":"general","payload":{"text":"and from node 2"}}))
        .await;
    for x in [&mut a, &mut b] {
        let m = x.recv_type("chat").await;
        assert_eq!(m["payload"]["text"], "and from node 2");
        assert_eq!(m["offset"], first[0] + 1);
    }

    // A broadcast reaches every client exactly once, the sender's node included.
    nodes[1].server.broadcast("news", &json!({"n": 1})).unwrap();
    for x in [&mut a, &mut b, &mut c, &mut b2] {
        assert_eq!(x.recv_type("news").await["payload"]["n"], 1);
    }
    for x in [&mut a, &mut b, &mut c, &mut b2] {
        assert!(x.nothing_pending().await, "exactly once");
    }

    // A direct message crosses nodes, by client id.
    a.send(json!({"type":"dm","to": c.id,"payload":{"text":"psst"}}))
        .await;
    let m = c.recv_type("dm").await;
    assert_eq!(
        (m["payload"]["text"].as_str(), m["from"].as_str()),
        (Some("psst"), Some(a.id.as_str()))
    );
    assert!(b.nothing_pending().await);

    assert!(sample(&nodes[0], "switchboard_backplane_published") >= 2.0);
    assert!(sample(&nodes[0], "switchboard_backplane_received") >= 3.0);
    assert_eq!(sample(&nodes[0], "switchboard_backplane_healthy"), 1.0);
    assert_eq!(sample(&nodes[0], "switchboard_backplane_dropped"), 0.0);

    // A node that shuts down leaves the counts once its heartbeat is missed.
    let [n0, n1, n2] = nodes;
    n2.stop().await;
    let server = n0.server.clone();
    eventually("node 2's client gone", || {
        let s = server.clone();
        async move { s.cluster_connection_count().await == 3 }
    })
    .await;
    n0.stop().await;
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_the_rooms_its_clients_are_in() {
    let nats = NatsServer::start();
    let prefix = "interest";
    let n0 = node(&nats.url(), prefix).await;
    let n1 = node(&nats.url(), prefix).await;
    let (mut a, _) = connect(&n0).await;
    let (mut a2, _) = connect(&n0).await;
    let (mut b, _) = connect(&n1).await;
    let (mut b2, _) = connect(&n1).await;
    join(&mut a, "only-here").await;
    join(&mut a2, "only-here").await;
    join(&mut b, "elsewhere").await;
    join(&mut b2, "elsewhere").await;
    // Node 1 has read the room it follows up to here (a room message goes through
    // NATS, even between two clients of one node).
    b2.send(json!({"type":"m","room":"elsewhere","payload":{}}))
        .await;
    b.recv_type("m").await;
    let before = sample(&n1, "switchboard_backplane_received");
    for i in 0..50 {
        a.send(json!({"type":"m","room":"only-here","payload":{"i": i}}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(a2.recv_type("m").await["payload"]["i"], i);
    }
    // Node 1 has no member in the room: NATS did not send it a single message of it.
    assert_eq!(sample(&n1, "switchboard_backplane_received"), before);
    // A member joins on node 1: from then on, node 1 receives the room.
    let position = join(&mut b, "only-here").await;
    a.send(json!({"type":"m","room":"only-here","payload":{"i": 50}}))
        .await;
    let m = b.recv_type("m").await;
    assert_eq!(m["payload"]["i"], 50);
    // Its offset follows the position the join gave (b's own `user_joined`, not for
    // b, may come between): the room's order is the cluster's.
    let (offset, given) = (
        m["offset"].as_u64().unwrap(),
        position["offset"].as_u64().unwrap(),
    );
    assert!(
        offset == given + 1 || offset == given + 2,
        "{offset} after {given}"
    );
    assert!(sample(&n1, "switchboard_backplane_received") > before);
    n0.stop().await;
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_a_node_that_never_had_its_room_with_everything_it_missed() {
    let nats = NatsServer::start();
    let prefix = "resume";
    let a = node(&nats.url(), prefix).await;
    let b = node(&nats.url(), prefix).await;
    let (mut x, hello) = connect(&a).await;
    let position = join(&mut x, "r").await;
    let (mut watcher, _) = connect(&a).await;
    join(&mut watcher, "r").await;
    // y on node b is not in room r: node b does not follow it.
    let (mut y, _) = connect(&b).await;
    watcher
        .send(json!({"type":"chat","room":"r","payload":{"i":-1}}))
        .await;
    y.send(json!({"type":"dm","to":hello["client_id"],"payload":{"i":-1}}))
        .await;
    // In either order (they come from two nodes).
    let (mut seen_room, mut seen_direct) = (None, None);
    while seen_room.is_none() || seen_direct.is_none() {
        let m = x.recv().await;
        match m["type"].as_str() {
            Some("chat") => seen_room = Some(m),
            Some("dm") => seen_direct = Some(m),
            _ => {}
        }
    }
    let (seen_room, seen_direct) = (seen_room.unwrap(), seen_direct.unwrap());
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
    let missed_room = resumed["rooms"]["r"]["missed"].as_u64().unwrap();
    let missed_direct = resumed["session"]["missed"].as_u64().unwrap();
    let (mut chats, mut dms) = (Vec::new(), Vec::new());
    while chats.len() < 5 || dms.len() < 5 {
        let m = back.recv().await;
        match m["type"].as_str() {
            Some("chat") => chats.push(m["payload"]["i"].as_i64().unwrap()),
            Some("dm") => dms.push(m["payload"]["i"].as_i64().unwrap()),
            _ => {}
        }
    }
    assert_eq!(chats, [0, 1, 2, 3, 4]);
    assert_eq!(dms, [0, 1, 2, 3, 4]);
    assert!(missed_room <= 5 && missed_direct <= 5);
    // It is in the room on its new node, and both kinds of message find it there.
    y.send(json!({"type":"dm","to":hello["client_id"],"payload":{"i":5}}))
        .await;
    watcher
        .send(json!({"type":"chat","room":"r","payload":{"i":5}}))
        .await;
    // In either order (they come from two nodes).
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = back.recv().await;
        if let Some(t @ ("dm" | "chat")) = m["type"].as_str() {
            got.push((t.to_owned(), m["payload"]["i"].as_i64().unwrap()));
        }
    }
    got.sort();
    assert_eq!(got, [("chat".to_owned(), 5), ("dm".to_owned(), 5)]);
    assert!(back.nothing_pending().await, "nothing twice");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_with_its_store_loses_nothing() {
    let mut nats = NatsServer::start();
    let prefix = "restart";
    let n0 = node(&nats.url(), prefix).await;
    let n1 = node(&nats.url(), prefix).await;
    let (mut a, _) = connect(&n0).await;
    let (mut b, _) = connect(&n1).await;
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    a.send(json!({"type":"m","room":"r","payload":{"n":0}}))
        .await;
    let m = b.recv_type("m").await;
    assert_eq!(m["payload"]["n"], 0);
    let offset = m["offset"].as_i64().unwrap();

    nats.kill();
    let server = n0.server.clone();
    eventually("unhealthy in /health", || {
        let s = server.clone();
        async move { s.health()["backplane"]["healthy"] == false }
    })
    .await;
    // Held for NATS (a room's order is the cluster's), then sent in order.
    for n in 1..=3 {
        a.send(json!({"type":"m","room":"r","payload":{"n":n}}))
            .await;
    }
    nats.restart();
    // In order, once each (offsets may skip b's own `user_joined`, not for b).
    let mut last = offset;
    for n in 1..=3 {
        let m = b.recv_type("m").await;
        assert_eq!(m["payload"]["n"], n);
        let o = m["offset"].as_i64().unwrap();
        assert!(o > last && o <= last + 2, "{o} after {last}");
        last = o;
    }
    eventually("healthy again", || {
        let s = server.clone();
        async move { s.health()["backplane"]["healthy"] == true }
    })
    .await;
    assert!(b.nothing_pending().await, "exactly once");
    n0.stop().await;
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_empty_sends_the_rooms_members_to_resume() {
    let mut nats = NatsServer::start();
    let prefix = "empty";
    let n0 = node(&nats.url(), prefix).await;
    let n1 = node(&nats.url(), prefix).await;
    let (mut a, _) = connect(&n0).await;
    let (mut b, _) = connect(&n1).await;
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    a.send(json!({"type":"m","room":"r","payload":{"n":0}}))
        .await;
    assert_eq!(b.recv_type("m").await["payload"]["n"], 0);
    nats.restart_empty();
    // The room's order starts again in a new epoch: its members resume, and hear
    // `recovered: false` rather than miss messages silently.
    let server = n0.server.clone();
    eventually("healthy again", || {
        let s = server.clone();
        async move { s.health()["backplane"]["healthy"] == true }
    })
    .await;
    a.send(json!({"type":"m","room":"r","payload":{"n":1}}))
        .await;
    for x in [&mut a, &mut b] {
        let closed = x.closed().await;
        assert_eq!(closed.code, 4010, "{}", closed.reason);
    }
    n0.stop().await;
    n1.stop().await;
}

#[tokio::test]
async fn a_wrong_nats_address_fails_at_start() {
    // Nothing listens on port 1.
    let server = Server::builder()
        .config(TestServer::config())
        .backplane(NatsBackplane::new("nats://127.0.0.1:1").unwrap())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = tokio::time::timeout(TIMEOUT, server.serve(listener))
        .await
        .unwrap();
    assert!(
        matches!(served, Err(switchboard_server::ServeError::Backplane(_))),
        "{served:?}"
    );
    assert!(
        NatsBackplane::with_config(
            "nats://127.0.0.1:1",
            switchboard_nats::NatsConfig {
                prefix: "a.b".into(),
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_flooding_one_room_give_every_member_one_order() {
    let nats = NatsServer::start();
    let prefix = "flood";
    let nodes = [
        node(&nats.url(), prefix).await,
        node(&nats.url(), prefix).await,
        node(&nats.url(), prefix).await,
    ];
    // Members on nodes 1 and 2; senders (not members) on nodes 0 and 1, racing for the
    // room's offsets: their sends are stored together, several per stored message.
    let (mut m1, _) = connect(&nodes[1]).await;
    let (mut m2, _) = connect(&nodes[2]).await;
    join(&mut m1, "flood").await;
    join(&mut m2, "flood").await;
    let (mut s0, _) = connect(&nodes[0]).await;
    let (mut s1, _) = connect(&nodes[1]).await;
    for i in 0..300 {
        s0.send(json!({"type":"r","room":"flood","payload":{"i":i,"s":0}}))
            .await;
        s1.send(json!({"type":"r","room":"flood","payload":{"i":i,"s":1}}))
            .await;
    }
    let mut orders = Vec::new();
    for m in [&mut m1, &mut m2] {
        let mut seen = Vec::new();
        let mut per_sender = [Vec::new(), Vec::new()];
        let mut last = 0;
        while seen.len() < 600 {
            let msg = m.recv_type("r").await;
            let offset = msg["offset"].as_u64().unwrap();
            assert!(offset > last, "{offset} after {last}");
            last = offset;
            let s = msg["payload"]["s"].as_u64().unwrap() as usize;
            per_sender[s].push(msg["payload"]["i"].as_u64().unwrap());
            seen.push((offset, s));
        }
        let each: Vec<u64> = (0..300).collect();
        assert_eq!(
            per_sender,
            [each.clone(), each],
            "each sender's, in order, once"
        );
        orders.push(seen);
    }
    assert_eq!(
        orders[0], orders[1],
        "one order, one numbering, on every node"
    );
    for n in nodes {
        n.stop().await;
    }
}
