//! What a backplane hears of a connection's rooms: a leave the client asked for
//! changes its session's rooms (`Left`); a closing connection's leaving them does not
//! (`LeftOnClose`), since its session waits with them for a resume. A backplane that
//! wrote the close's leaves let a resume on another node, before the detachment was
//! written, find the session in no room: the client lost every later room message
//! without a word (the Redis chaos test caught it).
#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard_server::handler::BoxFuture;
use switchboard_server::{
    Backplane, BackplaneError, ConnId, Delivery, NodeHandle, PresenceEvent, Server,
};
use switchboard_test::{TIMEOUT, TestServer};
use tokio::sync::mpsc;

/// A backplane that only records the presence events it hears.
struct Recorder(mpsc::UnboundedSender<PresenceEvent>);

impl Backplane for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn start(&self, _node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>> {
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, _delivery: &Delivery) {}

    fn presence(&self, event: &PresenceEvent) {
        let _ = self.0.send(event.clone());
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
            .backplane(Recorder(tx)),
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
