//! Routing by interest over Redis: a node reads the logs of the rooms its clients are
//! in (and its own) and no other, and a client resumes with everything it missed on a
//! node that never read its room.

mod common;

use common::node;
use switchboard_test::RedisServer;
use switchboard_test::routing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_only_the_rooms_its_clients_are_in_and_its_clients_direct_messages() {
    let redis = RedisServer::start();
    let (n0, n1) = (
        node(&redis, "interest").await,
        node(&redis, "interest").await,
    );
    routing::a_node_receives_only_what_its_clients_need(&n0, &n1).await;
    n0.stop().await;
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_a_node_that_never_had_its_room_with_everything_it_missed() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "resume").await, node(&redis, "resume").await);
    routing::a_client_resumes_where_its_room_was_never_followed(&a, &b).await;
    a.stop().await;
    b.stop().await;
}
