//! Three nodes over a real `nats-server`: rooms, broadcasts and direct messages across
//! nodes, cluster-wide counts, routing by interest, resume on any node, and NATS
//! restarted mid-traffic.
#![allow(clippy::unwrap_used)]

mod common;

use common::node;
use serde_json::json;
use switchboard_nats::NatsBackplane;
use switchboard_server::{Backplane, ConnId, Server};
use switchboard_test::cluster::{connect, eventually, join, sample};
use switchboard_test::routing;
use switchboard_test::{NatsServer, TIMEOUT, TestServer};

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
async fn a_node_receives_only_the_rooms_its_clients_are_in_and_its_clients_direct_messages() {
    let nats = NatsServer::start();
    let n0 = node(&nats.url(), "interest").await;
    let n1 = node(&nats.url(), "interest").await;
    routing::a_node_receives_only_what_its_clients_need(&n0, &n1).await;
    n0.stop().await;
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_a_node_that_never_had_its_room_with_everything_it_missed() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), "resume").await;
    let b = node(&nats.url(), "resume").await;
    routing::a_client_resumes_where_its_room_was_never_followed(&a, &b).await;
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

/// The rooms of a client's session as NATS keeps them: the record a resume on another
/// node reads (`prefix` is the nodes' `NatsConfig::prefix`).
async fn kept_rooms(nats: &NatsServer, prefix: &str, client: &str) -> Vec<String> {
    let link = async_nats::connect(nats.url()).await.unwrap();
    let sessions = async_nats::jetstream::new(link)
        .get_key_value(format!("{prefix}-sessions"))
        .await
        .unwrap();
    let Some(value) = sessions.get(format!("s.{client}")).await.unwrap() else {
        return Vec::new();
    };
    let record: serde_json::Value = serde_json::from_slice(&value).unwrap();
    record["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// A room joined while the node's link to NATS is down reaches the session's record
/// once the link is back, so a resume on another node gives it back. The record's
/// write used to be dropped at its first error (the rooms chaos test saw a client
/// resume into a room it had left, and out of one it had joined).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_while_the_link_is_down_is_kept_once_it_is_back() {
    let nats = NatsServer::start();
    let common::LinkedCluster {
        nodes,
        links,
        proxy: _proxy,
        client,
    } = common::linked_cluster(&nats).await;
    client.join("stay").await.unwrap();
    let id = client.id();
    let me: ConnId = id.parse().unwrap();
    let serving = nodes
        .iter()
        .position(|n| n.server.connection_ids().contains(&me))
        .expect("a node serves the client");
    eventually("the session is kept in NATS", || async {
        kept_rooms(&nats, "chaos", &id).await == ["stay"]
    })
    .await;

    links[serving].block();
    // Answered once the write is done, or after the node's wait for it (2 s).
    client.join("flip").await.unwrap();
    assert_eq!(
        kept_rooms(&nats, "chaos", &id).await,
        ["stay"],
        "not written while the link is down"
    );
    links[serving].unblock();
    eventually("the join reaches the session's record", || async {
        kept_rooms(&nats, "chaos", &id).await == ["flip", "stay"]
    })
    .await;
    client.close().await;
    for n in nodes {
        n.stop().await;
    }
}

/// A leave answered before NATS kept it (the node's link is down: the answer says
/// `durable: false` after its 2 s wait), then a resume on another node: the session
/// comes back from before the leave, in the room, and the client leaves it again.
/// Before, the client stayed in a room it had left, and nothing said so (the rooms
/// chaos test failed now and then on this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_nats_had_not_kept_is_made_again_after_a_resume_elsewhere() {
    let nats = NatsServer::start();
    let common::LinkedCluster {
        nodes,
        links,
        proxy,
        client,
    } = common::linked_cluster(&nats).await;
    client.join("stay").await.unwrap();
    client.join("flip").await.unwrap();
    let id = client.id();
    let me: ConnId = id.parse().unwrap();
    eventually("the session is kept in NATS", || async {
        kept_rooms(&nats, "chaos", &id).await == ["flip", "stay"]
    })
    .await;
    let serving = nodes
        .iter()
        .position(|n| n.server.connection_ids().contains(&me))
        .expect("a node serves the client");
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    client.on("ack", move |m| {
        let _ = answers.send(serde_json::from_str::<serde_json::Value>(m.payload.get()).unwrap());
    });

    links[serving].block();
    client.leave("flip").await.unwrap();
    let answer = answered.recv().await.unwrap();
    assert_eq!(answer["result"]["durable"], false, "{answer}");
    // The connection drops; the next node resumes the session from NATS.
    let mut state = client.watch_state();
    proxy.cut();
    tokio::time::timeout(
        switchboard_test::TIMEOUT,
        state.wait_for(|s| *s == switchboard_client::ConnectionState::Open),
    )
    .await
    .expect("reconnected")
    .unwrap();
    assert_eq!(client.id(), id, "the session resumed");
    eventually("the session's record is out of the room again", || async {
        kept_rooms(&nats, "chaos", &id).await == ["stay"]
    })
    .await;
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != serving) {
        assert!(
            !node.server.cluster_room_members("flip").await.contains(&me),
            "node {i} does not count the client in the room it left"
        );
    }
    links[serving].unblock();
    assert_eq!(client.rooms(), ["stay"]);
    client.close().await;
    for n in nodes {
        n.stop().await;
    }
}

/// A join or leave whose record write NATS refused (the session was claimed on another
/// node meanwhile, a notice this node has not heard) is answered `durable: false`: the
/// change is not in the cluster's record. It was answered as kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_refused_because_the_session_moved_is_answered_not_durable() {
    let nats = NatsServer::start();
    let prefix = "refused";
    let a = node(&nats.url(), prefix).await;
    let other = NatsBackplane::with_config(&nats.url(), common::config(prefix)).unwrap();
    let b = common::node_over(other.clone()).await;
    let (mut client, hello) = connect(&a).await;
    let id: ConnId = client.id.parse().unwrap();
    let answer = |r: serde_json::Value| r["payload"]["result"].clone();
    client
        .send(json!({"type":"join_room","ref":"j","payload":{"room_id":"kept"}}))
        .await;
    let joined = answer(client.recv_type("ack").await);
    assert_eq!(joined.get("durable"), None, "written: {joined}");

    // Node b claims the session (generation 2) through its backplane, as a resume there
    // would, without telling node a.
    let resume = resume_of(&hello);
    let (record, _) = other.claim_session(id, &resume).await.unwrap().unwrap();
    assert_eq!(record.generation, 2);
    client
        .send(json!({"type":"leave_room","ref":"l","payload":{"room_id":"kept"}}))
        .await;
    let left = answer(client.recv_type("ack").await);
    assert_eq!(left["durable"], false, "refused: {left}");
    // And so is every later change from this copy (node a let it go).
    client
        .send(json!({"type":"join_room","ref":"j2","payload":{"room_id":"later"}}))
        .await;
    let later = answer(client.recv_type("ack").await);
    assert_eq!(later["durable"], false, "not kept: {later}");
    a.stop().await;
    b.stop().await;
}

/// The server opens a session's record again when its first try failed or timed out
/// (it may have been written after all, and claimed since): the record is left as it
/// is, so a claim made since stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_session_again_leaves_its_record_as_it_is() {
    let nats = NatsServer::start();
    let prefix = "reopen";
    let a = node(&nats.url(), prefix).await;
    let other = NatsBackplane::with_config(&nats.url(), common::config(prefix)).unwrap();
    let b = common::node_over(other.clone()).await;
    let (client, hello) = connect(&a).await;
    let id: ConnId = client.id.parse().unwrap();
    let resume = resume_of(&hello);
    let (claimed, _) = other.claim_session(id, &resume).await.unwrap().unwrap();
    assert_eq!(claimed.generation, 2);

    let again = switchboard_server::SessionRecord {
        generation: 1,
        ..claimed
    };
    other.open_session(&again).await.unwrap();
    // Claimed once more: from generation 2, not from a record opened anew.
    let (record, _) = other.claim_session(id, &resume).await.unwrap().unwrap();
    assert_eq!(record.generation, 3);
    a.stop().await;
    b.stop().await;
}

/// A resume of the session a `connected` payload gave, as another node would claim it.
fn resume_of(hello: &serde_json::Value) -> switchboard_server::proto::ResumeRequest {
    switchboard_server::proto::ResumeRequest {
        session_id: hello["session_id"].as_str().unwrap().to_owned(),
        token: hello["resume_token"].as_str().unwrap().to_owned(),
        streams: Default::default(),
        resend: Vec::new(),
        attempt: 0,
    }
}

/// Whether the session record of `client` in the bucket of `prefix` waits as a dropped
/// one's (`expires_ms` set), or `None` without a record.
async fn session_waits(nats: &NatsServer, prefix: &str, client: &str) -> Option<bool> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js
        .get_key_value(format!("{prefix}-sessions"))
        .await
        .unwrap();
    let entry = bucket.entry(format!("s.{client}")).await.unwrap()?;
    let record: serde_json::Value = serde_json::from_slice(&entry.value).ok()?;
    Some(!record["expires_ms"].is_null())
}

/// A node goes silent (its link to NATS down longer than `node_ttl`): its peers take it
/// for dead, and the session of its connected client waits its `ttl` from then, as if
/// the client had dropped. Before, it stayed resumable until the bucket's 7-day
/// backstop. Once the node's link is back, it writes its client's session again as
/// connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_sessions_wait_their_ttl_and_come_back_with_it() {
    let nats = NatsServer::start();
    let (a, link_a) = common::linked_node(&nats).await;
    let (b, _link_b) = common::linked_node(&nats).await;
    let (client, _) = connect(&a).await;
    assert_eq!(session_waits(&nats, "chaos", &client.id).await, Some(false));

    link_a.block();
    eventually(
        "the silent node's session waits as a dropped one's",
        || async { session_waits(&nats, "chaos", &client.id).await == Some(true) },
    )
    .await;
    link_a.unblock();
    eventually(
        "the node back writes its session as connected again",
        || async { session_waits(&nats, "chaos", &client.id).await == Some(false) },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// A node that died before its peer ever heard of it: the peer's first sweep, once its
/// own link has been up for `node_ttl`, finds the dead node's session kept as connected
/// and sets it to wait its `ttl`. Before, only a peer heard going silent triggered a
/// sweep before the minute's (CI saw the test above fail so, when the peer's
/// subscription came after the node's last heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dead_before_its_peer_heard_of_it_is_swept_too() {
    let nats = NatsServer::start();
    let (a, link_a) = common::linked_node(&nats).await;
    let (client, _) = connect(&a).await;
    link_a.block();
    let (b, _link_b) = common::linked_node(&nats).await;
    eventually(
        "the dead node's session waits as a dropped one's",
        || async { session_waits(&nats, "chaos", &client.id).await == Some(true) },
    )
    .await;
    a.stop().await;
    b.stop().await;
}
