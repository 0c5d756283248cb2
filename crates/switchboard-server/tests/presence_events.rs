//! What a backplane hears of a connection's rooms: a leave the client asked for
//! changes its session's rooms (`Left`); a closing connection's leaving them does not
//! (`LeftOnClose`), since its session waits with them for a resume. A backplane that
//! wrote the close's leaves let a resume on another node, before the detachment was
//! written, find the session in no room: the client lost every later room message
//! without a word (the Redis chaos test caught it). And a join or leave waits for the
//! session's changes to be written, even one that changed nothing (it may repeat a
//! change not written yet), and its answer says when they were not (`durable: false`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use switchboard_server::handler::BoxFuture;
use switchboard_server::{
    Backplane, BackplaneError, ConnId, Delivery, NodeHandle, PresenceEvent, Server,
};
use switchboard_test::{TIMEOUT, TestServer};
use tokio::sync::mpsc;

/// A backplane that only records the presence events it hears, and counts the waits
/// for a session's changes to be written (it writes nothing; `written`: what it says
/// of them). `sequences`: it numbers the cluster's messages, as Redis and NATS do
/// (only then does a join wait).
struct Recorder {
    events: mpsc::UnboundedSender<PresenceEvent>,
    sequences: bool,
    written: bool,
    waits: Arc<AtomicUsize>,
}

impl Recorder {
    fn new(events: mpsc::UnboundedSender<PresenceEvent>) -> Recorder {
        Recorder {
            events,
            sequences: false,
            written: true,
            waits: Arc::default(),
        }
    }
}

impl Backplane for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn start(&self, _node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>> {
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, _delivery: &Delivery) {}

    fn presence(&self, event: &PresenceEvent) {
        let _ = self.events.send(event.clone());
    }

    fn sequences(&self) -> bool {
        self.sequences
    }

    fn session_changes_written(&self, _client: ConnId) -> BoxFuture<'_, bool> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        let written = self.written;
        Box::pin(async move { written })
    }

    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, BackplaneError>> {
        Box::pin(async { Ok(None) })
    }

    fn room_members(
        &self,
        _room: &str,
    ) -> BoxFuture<'_, Result<Option<Vec<ConnId>>, BackplaneError>> {
        Box::pin(async { Ok(None) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The events heard until (and with) the first that `last` matches.
async fn events_until(
    rx: &mut mpsc::UnboundedReceiver<PresenceEvent>,
    last: impl Fn(&PresenceEvent) -> bool,
) -> Vec<PresenceEvent> {
    let mut heard = Vec::new();
    loop {
        let event = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no more events after {heard:?}"))
            .expect("the server holds the backplane");
        let done = last(&event);
        heard.push(event);
        if done {
            return heard;
        }
    }
}

#[tokio::test]
async fn a_closing_connection_leaves_its_rooms_without_taking_them_from_its_session() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = TestServer::start(
        Server::builder()
            .config(TestServer::config())
            .backplane(Recorder::new(tx)),
    )
    .await;
    let mut client = server.raw().await;
    let id: ConnId = client.id.parse().unwrap();
    for room in ["kept", "left"] {
        client
            .send(json!({"type":"join_room","ref":room,"payload":{"room_id":room}}))
            .await;
        client.recv_type("ack").await;
    }
    client
        .send(json!({"type":"leave_room","ref":"l","payload":{"room_id":"left"}}))
        .await;
    client.recv_type("ack").await;
    let asked = events_until(&mut rx, |e| matches!(e, PresenceEvent::Left(..))).await;
    assert_eq!(
        asked.last(),
        Some(&PresenceEvent::Left(id, "left".into())),
        "a leave the client asked for is the session's too"
    );

    client.drop_connection();
    let closing = events_until(&mut rx, |e| {
        matches!(e, PresenceEvent::SessionDetached { .. })
    })
    .await;
    assert!(
        closing.contains(&PresenceEvent::LeftOnClose(id, "kept".into())),
        "the node's membership changes: {closing:?}"
    );
    assert!(
        !closing
            .iter()
            .any(|e| matches!(e, PresenceEvent::Left(..) | PresenceEvent::SessionEnded(..))),
        "the session keeps its room: {closing:?}"
    );
    let Some(PresenceEvent::SessionDetached { client, rooms, .. }) = closing.last() else {
        unreachable!("events_until stops at the detachment");
    };
    assert_eq!((*client, rooms.as_slice()), (id, &["kept".to_owned()][..]));
    server.stop().await;
}

/// Each join or leave waits for the session's changes, and its answer says
/// `durable: false` when the backplane did not write them.
#[tokio::test]
async fn a_join_or_leave_waits_for_the_session_write_and_says_when_it_was_not_kept() {
    for written in [true, false] {
        let (tx, _rx) = mpsc::unbounded_channel();
        let backplane = Recorder {
            sequences: true,
            written,
            ..Recorder::new(tx)
        };
        let waits = backplane.waits.clone();
        let server = TestServer::start(
            Server::builder()
                .config(TestServer::config())
                .backplane(backplane),
        )
        .await;
        let mut client = server.raw().await;
        let mut ask = async |kind: &str, room: &str| {
            client
                .send(json!({"type":kind,"ref":"r","payload":{"room_id":room}}))
                .await;
            let ack = client.recv_type("ack").await;
            assert_eq!(ack["payload"]["status"], "ok", "{ack}");
            let durable = ack["payload"]["result"].get("durable").cloned();
            assert_eq!(
                durable,
                (!written).then_some(json!(false)),
                "{kind} {room}: {ack}"
            );
            waits.load(Ordering::SeqCst)
        };
        assert_eq!(ask("join_room", "a").await, 1, "a join waits");
        // A change that changes nothing may repeat one not written yet.
        assert_eq!(ask("join_room", "a").await, 2, "joined already: waits too");
        assert_eq!(ask("leave_room", "b").await, 3, "not a member: waits too");
        assert_eq!(ask("leave_room", "a").await, 4, "a leave waits");
        server.stop().await;
    }
}
