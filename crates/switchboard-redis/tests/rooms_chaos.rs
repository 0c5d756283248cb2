//! Chaos across three nodes over a real `redis-server`, for rooms: a client that joins
//! and leaves a room while its connection is cut at random moments (and the nodes'
//! links to Redis now and then), each resume on the next node, ends in exactly the
//! rooms it chose, as its session and every node see it. Its own binary, so it never
//! runs beside the message chaos test (`chaos.rs`): each loads the machine.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{LinkedCluster, linked_cluster, random_below, session_record, session_rooms};
use switchboard_client::{ConnectionState, ResumeOutcome};
use switchboard_test::cluster::{eventually, eventually_ok};
use switchboard_test::{RedisServer, TIMEOUT};
use tokio::sync::mpsc;

/// A client joins and leaves a room 60 times, each time while its connection is cut
/// at a random moment (and now and then a node's link to Redis), each resume on the
/// next node. It ends in exactly the rooms it chose: in its session's record, in the
/// cluster's membership as every node reads it, and in what one more resume gives
/// back. (A close's leaves once reached the session: a resume in between restored it
/// in no room.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_and_leaving_while_cut_ends_in_the_rooms_it_chose() {
    let redis = RedisServer::start();
    let LinkedCluster {
        nodes: [n0, n1, n2],
        links: [link0, link1, link2],
        proxy,
        client,
    } = linked_cluster(&redis).await;
    let (outcomes, mut resumed) = mpsc::unbounded_channel::<ResumeOutcome>();
    client.on_resume(move |o| {
        let _ = outcomes.send(o.clone());
    });
    client.join("stay").await.unwrap();
    let id = client.id();
    let links = [&link0, &link1, &link2];
    let mut state = client.watch_state();
    let mut joined = false;
    for step in 0..60 {
        let change = async {
            if joined {
                client.leave("flip").await
            } else {
                client.join("flip").await
            }
        };
        let cut = async {
            tokio::time::sleep(Duration::from_micros(random_below(10_000))).await;
            if step % 10 == 3 {
                links[random_below(3) as usize].cut();
            }
            proxy.cut();
        };
        // A request cut off is sent again after the resume and answered once.
        let (changed, ()) = tokio::join!(change, cut);
        if let Err(e) = changed {
            panic!(
                "step {step}: {e}; the connection ended: {:?}",
                client.close_info()
            );
        }
        joined = !joined;
        // Not waiting for the resume: the next cut may land on a reconnect under way,
        // after the server read a `resume` the client then gives up on.
        tokio::time::timeout(TIMEOUT, state.wait_for(|s| *s == ConnectionState::Open))
            .await
            .expect("reconnected")
            .unwrap();
    }
    let mut expected = vec!["stay".to_owned()];
    if joined {
        expected.insert(0, "flip".to_owned());
    }
    assert_eq!(client.rooms(), expected);
    assert_eq!(client.id(), id, "one session throughout");
    let me: switchboard_server::ConnId = id.parse().unwrap();
    eventually_ok("the session's record has the client's rooms", || async {
        let rooms = session_rooms(&redis, "chaos", &id).await;
        if rooms == expected {
            return Ok(());
        }
        let record = session_record(&redis, "chaos", &id).await;
        Err(format!(
            "it has {rooms:?}, the client {expected:?}; the record {record:?}"
        ))
    })
    .await;
    for n in [&n0, &n1, &n2] {
        eventually("every node counts the client where it is", || async {
            let flip = n.server.cluster_room_members("flip").await.contains(&me);
            let stay = n.server.cluster_room_members("stay").await.contains(&me);
            flip == joined && stay
        })
        .await;
    }
    while resumed.try_recv().is_ok() {}
    proxy.cut();
    let outcome = tokio::time::timeout(TIMEOUT, resumed.recv())
        .await
        .expect("resumed once more")
        .unwrap();
    assert!(
        outcome.fully_recovered(),
        "the client is in {expected:?}: {outcome:?}"
    );
    let rooms: Vec<&String> = outcome.rooms.keys().collect();
    assert_eq!(rooms, expected.iter().collect::<Vec<_>>());
    client.close().await;
    for n in [n0, n1, n2] {
        n.stop().await;
    }
}
