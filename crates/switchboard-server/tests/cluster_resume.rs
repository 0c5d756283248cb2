//! A resume in a cluster, against a backplane that keeps sessions but writes their
//! changes late (as Redis's or NATS's writer does while it waits out an outage): a
//! session comes back as its client last changed it, never as the cluster's record
//! had it before.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use switchboard_server::handler::BoxFuture;
use switchboard_server::proto::ResumeRequest;
use switchboard_server::{
    Backplane, BackplaneError, ClaimedSession, Conn, ConnId, Delivery, DisconnectReason,
    NodeHandle, PresenceEvent, SessionRecord,
};
use switchboard_test::cluster::eventually;
use switchboard_test::{RawClient, TIMEOUT, TestServer};
use tokio::sync::mpsc;

/// The cluster's record of one session, as the backplane has written it.
#[derive(Default)]
struct Store {
    record: Option<SessionRecord>,
    rooms: BTreeSet<String>,
    /// Joins and leaves heard, not yet written, each with the generation of the copy
    /// that made it.
    pending: Vec<(String, bool, Option<u64>)>,
}

/// A backplane keeping one session's record, whose writer can be held (while held,
/// the session's changes wait, and a wait for them to be written never ends), and
/// which can be away (claims fail). It tells the node nothing of other nodes' claims.
#[derive(Clone, Default)]
struct LateWriter {
    store: Arc<Mutex<Store>>,
    held: Arc<AtomicBool>,
    /// The backplane cannot be reached: claims fail.
    away: Arc<AtomicBool>,
    /// Claims made, and claims tried (made or failed).
    claims: Arc<AtomicU64>,
    tries: Arc<AtomicU64>,
    node: Arc<OnceLock<NodeHandle>>,
}

impl LateWriter {
    /// Writes the changes heard, as Redis's and NATS's writers do: only those of the
    /// copy in the record's generation.
    fn write_pending(&self) {
        let mut store = self.store.lock().unwrap();
        let now = store.record.as_ref().map(|r| r.generation);
        for (room, joined, generation) in std::mem::take(&mut store.pending) {
            if generation != now {
                continue;
            }
            if joined {
                store.rooms.insert(room);
            } else {
                store.rooms.remove(&room);
            }
        }
    }
}

impl Backplane for LateWriter {
    fn name(&self) -> &'static str {
        "late-writer"
    }

    fn start(&self, node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>> {
        let _ = self.node.set(node);
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, _delivery: &Delivery) {}

    fn presence(&self, event: &PresenceEvent) {
        let (client, room, joined) = match event {
            PresenceEvent::Joined(client, room) => (client, room, true),
            PresenceEvent::Left(client, room) => (client, room, false),
            _ => return,
        };
        let generation = self.node.get().and_then(|n| n.session_generation(*client));
        let change = (room.clone(), joined, generation);
        self.store.lock().unwrap().pending.push(change);
        if !self.held.load(Ordering::SeqCst) {
            self.write_pending();
        }
    }

    fn sequences(&self) -> bool {
        true
    }

    fn open_session(&self, record: &SessionRecord) -> BoxFuture<'_, Result<(), BackplaneError>> {
        if self.away.load(Ordering::SeqCst) {
            return Box::pin(async { Err(BackplaneError::new("away")) });
        }
        self.store.lock().unwrap().record = Some(record.clone());
        Box::pin(async { Ok(()) })
    }

    fn claim_session(
        &self,
        _client: ConnId,
        resume: &ResumeRequest,
    ) -> BoxFuture<'_, Result<Option<ClaimedSession>, BackplaneError>> {
        self.tries.fetch_add(1, Ordering::SeqCst);
        if self.away.load(Ordering::SeqCst) {
            return Box::pin(async { Err(BackplaneError::new("away")) });
        }
        self.claims.fetch_add(1, Ordering::SeqCst);
        let mut store = self.store.lock().unwrap();
        let rooms: Vec<String> = store.rooms.iter().cloned().collect();
        let claimed = store
            .record
            .as_mut()
            .filter(|r| r.session_id == resume.session_id && r.token == resume.token)
            .map(|r| {
                r.generation += 1;
                (r.clone(), rooms)
            });
        Box::pin(async move { Ok(claimed) })
    }

    fn session_changes_written(&self, _client: ConnId) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if self.held.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.write_pending();
            true
        })
    }

    fn is_healthy(&self) -> bool {
        !self.away.load(Ordering::SeqCst)
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

/// A node over `backplane`, and a channel of the connections it saw end.
async fn node_over(backplane: &LateWriter) -> (TestServer, mpsc::UnboundedReceiver<ConnId>) {
    let (gone, disconnected) = mpsc::unbounded_channel();
    let node = TestServer::start(
        switchboard_server::Server::builder()
            .config(TestServer::config())
            .backplane(backplane.clone())
            .on_disconnect(move |conn: Conn, _: DisconnectReason| {
                let _ = gone.send(conn.id());
                async {}
            }),
    )
    .await;
    (node, disconnected)
}

/// A client's session on `node`, in the rooms `stay` and `flip` (written in the
/// record): the client, and its session id and token.
async fn session_in_two_rooms(node: &TestServer) -> (RawClient, Value, Value) {
    let mut client = RawClient::connect(&node.url()).await;
    let hello = client.recv_type("connected").await;
    let p = &hello["payload"];
    let (sid, token) = (p["session_id"].clone(), p["resume_token"].clone());
    for room in ["stay", "flip"] {
        client
            .send(json!({"type":"join_room","ref":room,"payload":{"room_id":room}}))
            .await;
        client.recv_type("ack").await;
    }
    (client, sid, token)
}

/// Resumes the session `sid` (with `token`) on `node`: the new connection, and the
/// rooms the session came back in.
async fn resume(node: &TestServer, sid: &Value, token: &Value) -> (RawClient, Vec<String>) {
    let mut c = RawClient::connect(&format!("{}?resume=1", node.url())).await;
    c.send(json!({"type":"resume","payload":{"session_id": sid, "token": token}}))
        .await;
    let connected = c.recv().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let rooms = connected["payload"]["resumed"]["rooms"]
        .as_object()
        .unwrap_or_else(|| panic!("resumed: {connected}"));
    let rooms = rooms.keys().cloned().collect();
    (c, rooms)
}

/// A session another node opened, in the backplane's record: this node has no copy of
/// it. Its client, session id and token.
fn opened_elsewhere(backplane: &LateWriter) -> (ConnId, Value, Value) {
    let client = ConnId::from_u64(0x00ab_cdef_0000_0001);
    let record = SessionRecord {
        client,
        session_id: format!("{client}.0123456789abcdef"),
        token: "0123456789abcdef0123456789abcdef".into(),
        epoch: String::new(),
        identity: None,
        ttl: std::time::Duration::from_secs(60),
        generation: 1,
    };
    let (sid, token) = (json!(record.session_id), json!(record.token));
    backplane.store.lock().unwrap().record = Some(record);
    (client, sid, token)
}

async fn ended(disconnected: &mut mpsc::UnboundedReceiver<ConnId>) {
    tokio::time::timeout(TIMEOUT, disconnected.recv())
        .await
        .expect("the connection's end is seen");
}

/// A client leaves a room while the node's writes wait, and its connection drops before
/// the answer; it resumes on the same node once the session waits there. The session
/// comes back out of the room: the node's copy has the leave, the cluster's record not
/// yet. Before, the resume claimed the record first and took its rooms, so the session
/// was back in the room, and the leave, sent again, was answered from the record of
/// answers without being made: the client counted itself out of a room its session was
/// in. Once the writes go again, the session is claimed for the connection serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_the_node_holding_unwritten_changes_keeps_them() {
    let backplane = LateWriter::default();
    let (node, mut disconnected) = node_over(&backplane).await;
    let (mut client, sid, token) = session_in_two_rooms(&node).await;
    assert_eq!(backplane.store.lock().unwrap().rooms.len(), 2);

    backplane.held.store(true, Ordering::SeqCst);
    client
        .send(json!({"type":"leave_room","ref":"l","payload":{"room_id":"flip"}}))
        .await;
    // The leave is made here (heard by the backplane) before the connection drops.
    eventually("the leave is made here", || async {
        !backplane.store.lock().unwrap().pending.is_empty()
    })
    .await;
    drop(client);
    // Its answer waits for the write (2 s at most), then the drop is seen: the session
    // waits here, detached, with the leave.
    ended(&mut disconnected).await;

    let (_served, rooms) = resume(&node, &sid, &token).await;
    assert_eq!(rooms, ["stay"]);
    assert_eq!(
        backplane.claims.load(Ordering::SeqCst),
        0,
        "not claimed from a record without the leave"
    );

    // The writes go again: the leave is written, then the session claimed.
    backplane.held.store(false, Ordering::SeqCst);
    eventually("the session is claimed for its connection", || async {
        backplane.claims.load(Ordering::SeqCst) == 1
    })
    .await;
    {
        let store = backplane.store.lock().unwrap();
        assert_eq!(store.rooms, BTreeSet::from(["stay".to_owned()]));
        assert_eq!(store.record.as_ref().unwrap().generation, 2);
    }
    node.stop().await;
}

/// A session moves to another node (its record claimed there, its rooms changed there)
/// while this node, cut off, keeps its older copy and hears nothing of it. The client
/// comes back here while the cluster cannot be asked, and is served from that copy.
/// Once the cluster answers, the copy shows itself older than the record: the
/// connection is closed with `STREAM_RESET`, and the client's resume then gives it the
/// session as the record has it. Before, the node served the old copy on (the Redis
/// rooms chaos test failed now and then so: the record and the client disagreed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_served_from_an_older_copy_is_sent_to_resume_again() {
    let backplane = LateWriter::default();
    let (node, mut disconnected) = node_over(&backplane).await;
    let (client, sid, token) = session_in_two_rooms(&node).await;
    drop(client);
    ended(&mut disconnected).await;

    // Another node claims it and leaves `flip`; this node hears nothing of it.
    {
        let mut store = backplane.store.lock().unwrap();
        store.record.as_mut().unwrap().generation += 1;
        store.rooms.remove("flip");
    }
    backplane.away.store(true, Ordering::SeqCst);
    let (mut served, rooms) = resume(&node, &sid, &token).await;
    assert_eq!(rooms, ["flip", "stay"], "served from the copy here");

    backplane.away.store(false, Ordering::SeqCst);
    let closed = served.closed().await;
    assert_eq!(closed.code, 4010, "{}", closed.reason);
    assert!(
        closed.reason.contains("older than the cluster's"),
        "{}",
        closed.reason
    );
    ended(&mut disconnected).await;
    let (_again, rooms) = resume(&node, &sid, &token).await;
    assert_eq!(rooms, ["stay"], "the session as the record has it");
    assert_eq!(
        backplane.store.lock().unwrap().rooms,
        BTreeSet::from(["stay".to_owned()]),
        "the old copy's rooms are not written"
    );
    node.stop().await;
}

/// The client went away from a connection the node has not seen end, and on to
/// another node, where its session left a room (this node heard nothing of it); it
/// comes back here. The session comes back with the rooms of the cluster's record, not
/// those of the old connection it takes over, and the node no longer counts the client
/// in the room it left. Before, the old connection's rooms won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_taking_over_an_old_connection_has_the_records_rooms() {
    let backplane = LateWriter::default();
    let (node, _disconnected) = node_over(&backplane).await;
    let (mut old, sid, token) = session_in_two_rooms(&node).await;
    let me: ConnId = sid
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    {
        let mut store = backplane.store.lock().unwrap();
        store.record.as_mut().unwrap().generation += 1;
        store.rooms.remove("flip");
    }
    let (_new, rooms) = resume(&node, &sid, &token).await;
    assert_eq!(rooms, ["stay"]);
    assert_eq!(node.server.room_members("stay"), [me]);
    assert!(
        node.server.room_members("flip").is_empty(),
        "the client is not counted in the room its session left"
    );
    assert_eq!(
        old.closed().await.code,
        4009,
        "the old connection is closed"
    );
    node.stop().await;
}

/// A node cut from the cluster serves a resume from its own copy; the notice that the
/// session was claimed on another node meanwhile reaches it later. The connection is
/// likely the client's own, served from an old copy: it is sent to resume again
/// (`STREAM_RESET`), not closed for good as one a resume elsewhere replaced
/// (`SESSION_TAKEN`, after which the client never reconnects; the NATS rooms chaos test
/// ended so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_notice_of_a_claim_sends_an_unclaimed_connection_to_resume() {
    let backplane = LateWriter::default();
    let (node, mut disconnected) = node_over(&backplane).await;
    let (client, sid, token) = session_in_two_rooms(&node).await;
    let me: ConnId = sid
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    drop(client);
    ended(&mut disconnected).await;

    backplane.away.store(true, Ordering::SeqCst);
    let (mut served, _) = resume(&node, &sid, &token).await;
    backplane.node.get().unwrap().session_moved(me, 2);
    let closed = served.closed().await;
    assert_eq!(closed.code, 4010, "{}", closed.reason);
    node.stop().await;
}

/// A client resumes on a node that has no copy of its session, just as the node's link
/// to the cluster drops and is remade. The claim is tried again for a moment, and the
/// session is resumed. Before, the first failed claim ended the resume: the client lost
/// its session to a cut of a few milliseconds (the Redis rooms chaos test failed so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_failing_while_the_link_is_remade_is_tried_again() {
    let backplane = LateWriter::default();
    let (node, _disconnected) = node_over(&backplane).await;
    let (client, sid, token) = opened_elsewhere(&backplane);
    backplane.store.lock().unwrap().rooms.insert("stay".into());

    backplane.away.store(true, Ordering::SeqCst);
    let resuming = tokio::spawn({
        let url = node.url();
        async move {
            let mut c = RawClient::connect(&format!("{url}?resume=1")).await;
            c.send(json!({"type":"resume","payload":{"session_id": sid, "token": token}}))
                .await;
            c.recv().await
        }
    });
    eventually("a claim was tried while away", || async {
        backplane.tries.load(Ordering::SeqCst) > 0
    })
    .await;
    backplane.away.store(false, Ordering::SeqCst);
    let connected = resuming.await.unwrap();
    assert_eq!(
        connected["payload"]["client_id"],
        client.to_string(),
        "{connected}"
    );
    assert_eq!(
        connected["payload"]["resumed"]["resumed"], true,
        "{connected}"
    );
    assert_eq!(backplane.claims.load(Ordering::SeqCst), 1);
    node.stop().await;
}

/// The backplane is away when a client connects: its session's record cannot be
/// written then. It is written once the backplane answers, with the room the client
/// joined meanwhile, so the client may resume on another node. Before, the session
/// stayed this node's alone, and a resume elsewhere started the client afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_while_the_backplane_is_away_is_kept_once_it_answers() {
    let backplane = LateWriter::default();
    let (node, _disconnected) = node_over(&backplane).await;
    backplane.away.store(true, Ordering::SeqCst);
    let mut client = RawClient::connect(&node.url()).await;
    let hello = client.recv_type("connected").await;
    let (sid, token) = (
        hello["payload"]["session_id"].clone(),
        hello["payload"]["resume_token"].clone(),
    );
    client
        .send(json!({"type":"join_room","ref":"j","payload":{"room_id":"stay"}}))
        .await;
    client.recv_type("ack").await;
    assert!(backplane.store.lock().unwrap().record.is_none());

    backplane.away.store(false, Ordering::SeqCst);
    eventually("the session's record is written, with its room", || async {
        let store = backplane.store.lock().unwrap();
        store.record.is_some() && store.rooms.contains("stay")
    })
    .await;
    // Another node could claim it now.
    let resume = ResumeRequest {
        session_id: sid.as_str().unwrap().to_owned(),
        token: token.as_str().unwrap().to_owned(),
        streams: Default::default(),
        resend: Vec::new(),
        attempt: 0,
    };
    let me: ConnId = hello["payload"]["client_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let claimed = backplane.claim_session(me, &resume).await.unwrap();
    assert_eq!(
        claimed.map(|(_, rooms)| rooms),
        Some(vec!["stay".to_owned()])
    );
    node.stop().await;
}

/// A client resumes on a node that cannot reach the cluster's store and holds no copy
/// of its session. The node closes the connection with `RESUME_UNAVAILABLE` (4012)
/// and makes no fresh session: the client comes back and resumes once the store
/// answers. Before, it was started afresh, and what was sent to it meanwhile was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_the_cluster_cannot_answer_is_refused_for_now_not_started_afresh() {
    let backplane = LateWriter::default();
    let (node, _disconnected) = node_over(&backplane).await;
    let (client, sid, token) = opened_elsewhere(&backplane);

    backplane.away.store(true, Ordering::SeqCst);
    let mut refused = RawClient::connect(&format!("{}?resume=1", node.url())).await;
    refused
        .send(json!({"type":"resume","ref":"r","payload":{"session_id": sid, "token": token}}))
        .await;
    let error = refused.recv().await;
    assert_eq!(error["payload"]["code"], "RESUME_UNAVAILABLE", "{error}");
    assert_eq!(refused.closed().await.code, 4012);
    assert!(node.server.connection_ids().is_empty(), "no fresh session");

    backplane.away.store(false, Ordering::SeqCst);
    let (_back, rooms) = resume(&node, &sid, &token).await;
    assert!(rooms.is_empty());
    assert_eq!(node.server.connection_ids(), [client], "the same session");
    node.stop().await;
}
