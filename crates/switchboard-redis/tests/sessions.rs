//! A session's record in Redis, as another node claiming it would read it.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::json;
use switchboard_redis::RedisBackplane;
use switchboard_server::{Backplane, ConnId, PresenceEvent};
use switchboard_test::RedisServer;
use switchboard_test::cluster::eventually;

/// The rooms the session of `client` has in Redis, under `prefix`.
async fn session_rooms(redis: &RedisServer, prefix: &str, client: ConnId) -> Vec<String> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut rooms: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}:session:{client}:rooms"))
        .query_async(&mut conn)
        .await
        .unwrap();
    rooms.sort();
    rooms
}

/// A closing connection leaves its rooms just before its session's detachment is
/// written. Had the leaves been written to the session, a resume on another node in
/// between would have found it in no room, and its client would have missed every
/// later room message without being told (the chaos test lost 155 of 1,500 so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connection_leaves_its_session_in_its_rooms() {
    let redis = RedisServer::start();
    let prefix = "closing";
    let backplane = RedisBackplane::with_config(&redis.url(), common::config(prefix)).unwrap();
    let node = common::node_over(backplane.clone()).await;
    let mut client = node.raw().await;
    let id: ConnId = client.id.parse().unwrap();
    client
        .send(json!({"type":"join_room","ref":"j","payload":{"room_id":"kept"}}))
        .await;
    client.recv_type("ack").await;
    eventually("the join is in the session's record", || async {
        session_rooms(&redis, prefix, id).await == ["kept"]
    })
    .await;

    // What the node says first when the connection closes; then a join of another
    // room, so that once it is written, everything before it is.
    backplane.presence(&PresenceEvent::LeftOnClose(id, "kept".into()));
    backplane.presence(&PresenceEvent::Joined(id, "later".into()));
    eventually("the writer got past the close's leave", || async {
        session_rooms(&redis, prefix, id)
            .await
            .contains(&"later".to_owned())
    })
    .await;
    assert_eq!(
        session_rooms(&redis, prefix, id).await,
        ["kept", "later"],
        "the session is still in the room its closing connection left"
    );

    // A leave the client asked for is the session's too.
    backplane.presence(&PresenceEvent::Left(id, "kept".into()));
    eventually("the leave is written", || async {
        session_rooms(&redis, prefix, id).await == ["later"]
    })
    .await;
    node.stop().await;
}
