//! A NATS backplane for switchboard: several nodes behind a load balancer act as one
//! server, and each node receives only what its clients need.
//!
//! ```no_run
//! use switchboard_nats::NatsBackplane;
//! use switchboard_server::Server;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .backplane(NatsBackplane::new("nats://127.0.0.1:4222")?)
//!     .build();
//! server.run().await?;
//! # Ok(()) }
//! ```
//!
//! How it works (the full story is `docs/cluster.md`):
//!
//! - **Interest-based routing.** Every room has subjects of its own. A node subscribes
//!   to a room's subject only while it has members there (or keeps the room's stream
//!   for clients that may come back), to a client's only while the client's session is
//!   on it: NATS sends a node what its clients need, not the whole cluster's traffic.
//! - **Nothing lost.** Room, broadcast and direct messages are stored in one JetStream
//!   stream (`{prefix}.s.>`), each with its stream's epoch and next offset (a
//!   compare-and-set on the subject's last message, so offsets are the cluster's), and
//!   republished by JetStream to `{prefix}.d.>` once stored, where nodes subscribe. A
//!   node delivers each stream in order and once; a gap (a cut link, a slow subscriber)
//!   is filled from the stream, and a link that comes back catches up every stream the
//!   node follows. Sessions live in a key-value bucket, so a client resumes on any node
//!   with what it missed, rooms that node did not follow included.
//! - **No store of our own for membership.** Nodes beat on `{prefix}.hb`, and counts,
//!   room members and identities are questions every live node answers about its own
//!   clients.
//! - **Outages.** Sends never block a sender: a bounded queue (in bytes) feeds a writer
//!   task. While NATS is away a node keeps its clients, reports itself unhealthy, and
//!   holds sends in the queue; beyond its bound they are dropped and counted.

mod batch;
mod cluster;
mod config;
mod history;
mod janitor;
mod reader;
mod sessions;
mod shared;
mod subjects;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use switchboard_server::handler::BoxFuture;
use switchboard_server::proto::Position;
use switchboard_server::{
    Backplane, BackplaneError, BackplaneStats, ClaimedSession, ConnId, Delivery, Disconnect,
    NodeHandle, PresenceEvent, SessionHistory, SessionRecord, StreamHistory, Target, UserTag,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cluster::{Notice, Question};
pub use config::{NatsConfig, Storage};
use shared::{Link, Out, Shared, lock, random_node_id};
use subjects::Subjects;

/// How long a JetStream request (a publish's acknowledgement, a read) waits: a request
/// lost with a cut link is retried after it.
const REQUEST: Duration = Duration::from_secs(2);

/// How long `start` waits for the reader's first subscriptions.
const START: Duration = Duration::from_secs(10);

/// The NATS backplane. Cheap to clone.
#[derive(Clone)]
pub struct NatsBackplane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackplane")
            .field("node", &self.shared.node)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl NatsBackplane {
    /// A backplane on the NATS at `url` (`nats://host:port`, several comma-separated,
    /// `tls://...`), with default settings. Nothing connects until the server starts.
    ///
    /// ```
    /// let backplane = switchboard_nats::NatsBackplane::new("nats://127.0.0.1:4222").unwrap();
    /// assert_eq!(backplane.node_id().len(), 16);
    /// ```
    pub fn new(url: &str) -> Result<NatsBackplane, BackplaneError> {
        NatsBackplane::with_config(url, NatsConfig::default())
    }

    /// A backplane with these settings. Fails on a prefix NATS cannot name a stream
    /// with.
    pub fn with_config(url: &str, config: NatsConfig) -> Result<NatsBackplane, BackplaneError> {
        let valid = !config.prefix.is_empty()
            && config
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(BackplaneError::new(format!(
                "bad NATS prefix {:?}: letters, digits, '-' and '_' only",
                config.prefix
            )));
        }
        let (out, out_rx) = mpsc::channel(config.queue.max(1));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (session_writes, session_writes_rx) = mpsc::channel(config.queue.max(1));
        Ok(NatsBackplane {
            shared: Arc::new(Shared {
                subjects: Subjects::new(&config.prefix),
                config,
                url: url.to_owned(),
                node: random_node_id(),
                link: OnceLock::new(),
                out,
                out_rx: Mutex::new(Some(out_rx)),
                commands,
                commands_rx: Mutex::new(Some(commands_rx)),
                session_writes,
                session_writes_rx: Mutex::new(Some(session_writes_rx)),
                seen_tips: Mutex::new(HashMap::new()),
                followed: Mutex::new(std::collections::HashSet::new()),
                queued_bytes: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
                published: AtomicU64::new(0),
                received: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                connected: AtomicBool::new(false),
                reconnected: Notify::new(),
                node_handle: OnceLock::new(),
                peers: Mutex::new(HashMap::new()),
                link_since: Mutex::new(None),
                identities: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Sends dropped because NATS was away, too slow, or refused them.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn numbered(&self, target: &Target, exclude: &[ConnId], frame: &str) {
        let Some(subject) = self.shared.subjects.stored(target) else {
            return;
        };
        self.shared.enqueue(Out::Numbered {
            subject,
            frame: bytes::Bytes::copy_from_slice(frame.as_bytes()),
            exclude: exclude.to_vec(),
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
        });
    }
}

impl Shared {
    /// Makes (or brings up to date) the stream every numbered message is kept in, and
    /// the sessions' bucket. Returns true when the stream is not the one this node
    /// knew (NATS lost it, with every message it held).
    pub(crate) async fn ensure_stream(&self) -> Result<bool, async_nats::Error> {
        let link = self.link()?;
        let mut stream = make_stream(&link.js, &self.config, &self.subjects).await?;
        make_sessions(&link.js, &self.config).await?;
        let created = stream.info().await?.created.to_string();
        let mut known = lock(&link.created);
        let lost = *known != created;
        *known = created;
        Ok(lost)
    }
}

async fn make_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    subjects: &Subjects,
) -> Result<stream::Stream, async_nats::Error> {
    let storage = match config.storage {
        Storage::Memory => stream::StorageType::Memory,
        _ => stream::StorageType::File,
    };
    let wanted = stream::Config {
        name: config.prefix.clone(),
        description: Some("switchboard: room, broadcast and direct messages".to_owned()),
        subjects: vec![subjects.stored_all()],
        storage,
        max_messages_per_subject: config.history.max(1),
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subjects.stored_all(),
            destination: subjects.delivered_all(),
            headers_only: false,
        }),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    match js.get_stream(&config.prefix).await {
        Ok(mut existing) => {
            let info = existing.info().await?;
            let c = &info.config;
            let same = c.subjects == wanted.subjects
                && c.max_messages_per_subject == wanted.max_messages_per_subject
                && c.max_bytes == wanted.max_bytes
                && c.max_age == wanted.max_age
                && c.republish == wanted.republish;
            if !same {
                js.update_stream(&wanted).await?;
            }
            Ok(existing)
        }
        // Another node may be making it at the same moment: then it is there.
        Err(_) => match js.create_stream(wanted).await {
            Ok(stream) => Ok(stream),
            Err(e) => js.get_stream(&config.prefix).await.map_err(|_| e.into()),
        },
    }
}

async fn make_sessions(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<kv::Store, async_nats::Error> {
    let bucket = format!("{}-sessions", config.prefix);
    if js.get_stream(format!("KV_{bucket}")).await.is_ok() {
        return Ok(js.get_key_value(&bucket).await?);
    }
    let storage = match config.storage {
        Storage::Memory => stream::StorageType::Memory,
        _ => stream::StorageType::File,
    };
    // The bucket's stream, made as a key-value bucket's is: async-nats's own
    // `create_key_value` cannot read nats-server 2.9's answer.
    let made = js
        .create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("switchboard: sessions a client may resume on any node".to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            // A backstop for the records of nodes that died: no session lives longer.
            max_age: Duration::from_secs(7 * 24 * 3600),
            storage,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    // Another node may have made it at the same moment.
    if let Err(e) = made {
        if js.get_stream(format!("KV_{bucket}")).await.is_err() {
            return Err(e.into());
        }
    }
    Ok(js.get_key_value(&bucket).await?)
}

impl Backplane for NatsBackplane {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn start(&self, node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>> {
        Box::pin(async move {
            let shared = &self.shared;
            let _ = shared.node_handle.set(node);
            let taken = (
                lock(&shared.out_rx).take(),
                lock(&shared.commands_rx).take(),
                lock(&shared.session_writes_rx).take(),
            );
            let (Some(out_rx), Some(commands_rx), Some(session_writes_rx)) = taken else {
                return Err(BackplaneError::new(
                    "the NATS backplane was already started",
                ));
            };
            let events = Arc::downgrade(shared);
            let options = async_nats::ConnectOptions::new()
                .name(format!("switchboard {}", shared.node))
                .connection_timeout(Duration::from_secs(5))
                .subscription_capacity(16_384)
                .max_reconnects(None)
                .reconnect_delay_callback(|attempt| {
                    Duration::from_millis((100u64 << attempt.min(4)).min(1000))
                })
                .event_callback(move |event| {
                    let events = events.clone();
                    async move {
                        let Some(shared) = events.upgrade() else {
                            return;
                        };
                        match event {
                            async_nats::Event::Connected => {
                                shared.set_connected(true);
                                shared.reconnected.notify_one();
                            }
                            async_nats::Event::Disconnected => shared.set_connected(false),
                            _ => {}
                        }
                    }
                });
            // Fail fast on a wrong address; later outages are survived.
            let client = options
                .connect(shared.url.as_str())
                .await
                .map_err(|e| BackplaneError::with_source("cannot reach NATS", e))?;
            let js = jetstream::ContextBuilder::new()
                .timeout(REQUEST)
                .build(client.clone());
            let err = |what: &str, e: async_nats::Error| {
                BackplaneError::new(format!("{what} (is JetStream on? nats-server -js): {e}"))
            };
            let stream = make_stream(&js, &shared.config, &shared.subjects)
                .await
                .map_err(|e| err("cannot make the JetStream stream", e))?;
            let sessions = make_sessions(&js, &shared.config)
                .await
                .map_err(|e| err("cannot make the sessions bucket", e))?;
            let created = stream.cached_info().created.to_string();
            let _ = shared.link.set(Link {
                client,
                js,
                stream,
                sessions,
                created: Mutex::new(created),
            });
            shared.set_connected(true);
            tracing::info!(node = %shared.node, "joined the cluster over NATS");
            shared.tasks.spawn(Arc::clone(shared).write_loop(out_rx));
            shared
                .tasks
                .spawn(Arc::clone(shared).session_loop(session_writes_rx));
            shared.tasks.spawn(Arc::clone(shared).cluster_loop());
            let (started, reading) = oneshot::channel();
            shared
                .tasks
                .spawn(Arc::clone(shared).read_loop(commands_rx, started));
            if tokio::time::timeout(START, reading).await.is_err() {
                tracing::warn!("subscribing over NATS is slow; serving meanwhile");
            }
            Ok(())
        })
    }

    fn publish(&self, delivery: &Delivery) {
        let shared = &self.shared;
        match &delivery.target {
            Target::Conns(ids) => {
                // One per client: each is numbered in the client's own stream.
                let mut seen = std::collections::HashSet::new();
                for id in ids {
                    if !delivery.exclude.contains(id) && seen.insert(*id) {
                        self.numbered(&Target::Conns(vec![*id]), &[], &delivery.frame);
                    }
                }
            }
            Target::User(user) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    writer::EXCLUDE,
                    writer::join_ids(&delivery.exclude).as_str(),
                );
                shared.enqueue(Out::Plain {
                    subject: shared.subjects.user(user),
                    headers: Some(headers),
                    payload: bytes::Bytes::copy_from_slice(delivery.frame.as_bytes()),
                });
            }
            target => self.numbered(target, &delivery.exclude, &delivery.frame),
        }
    }

    fn sequences(&self) -> bool {
        true
    }

    fn stream_position(
        &self,
        stream: &Target,
    ) -> BoxFuture<'_, Result<Option<Position>, BackplaneError>> {
        let stream = stream.clone();
        Box::pin(async move { self.shared.stream_position(&stream).await })
    }

    fn stream_history(
        &self,
        stream: &Target,
        since: u64,
    ) -> BoxFuture<'_, Result<Option<StreamHistory>, BackplaneError>> {
        let stream = stream.clone();
        Box::pin(async move { self.shared.stream_history(&stream, since).await })
    }

    fn presence(&self, event: &PresenceEvent) {
        let shared = &self.shared;
        let subjects = &shared.subjects;
        match event {
            PresenceEvent::Connected(id) => {
                if let Some(s) = subjects.delivered(&Target::Conns(vec![*id])) {
                    shared.follow_soon(s);
                }
            }
            PresenceEvent::Joined(id, room) => {
                if let Some(s) = subjects.delivered(&Target::Room(room.clone())) {
                    shared.follow_soon(s);
                }
                shared.change_session(*id, |s| {
                    s.rooms.insert(room.clone());
                });
            }
            PresenceEvent::Left(id, room) => shared.change_session(*id, |s| {
                s.rooms.remove(room);
            }),
            // The session keeps the room: its detachment, next, writes its rooms.
            PresenceEvent::LeftOnClose(..) => {}
            PresenceEvent::Disconnected(id) => {
                lock(&shared.identities).remove(id);
            }
            PresenceEvent::Identified(id, user, info) => {
                lock(&shared.identities).insert(*id, (user.clone(), info.clone()));
                shared.follow_soon(subjects.user(user));
            }
            PresenceEvent::SessionDetached { client, ttl, rooms } => {
                let rooms = rooms.clone();
                shared.change_session(*client, |s| sessions::detached(s, *ttl, rooms));
            }
            PresenceEvent::SessionEnded(client) => shared.end_session_soon(*client),
            PresenceEvent::SessionMoved(client, generation) => shared.notify(&Notice::Moved {
                node: shared.node.clone(),
                client: *client,
                generation: *generation,
            }),
            PresenceEvent::Disconnect(Disconnect::User(user, reason)) => {
                shared.notify(&Notice::DisconnectUser {
                    node: shared.node.clone(),
                    user: user.clone(),
                    reason: reason.clone(),
                });
            }
            PresenceEvent::Disconnect(Disconnect::Client(client, reason)) => {
                shared.notify(&Notice::DisconnectClient {
                    node: shared.node.clone(),
                    client: *client,
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
    }

    fn open_session(&self, record: &SessionRecord) -> BoxFuture<'_, Result<(), BackplaneError>> {
        let record = record.clone();
        Box::pin(async move { self.shared.open_session(&record).await })
    }

    fn claim_session(
        &self,
        client: ConnId,
        resume: &switchboard_server::proto::ResumeRequest,
    ) -> BoxFuture<'_, Result<Option<ClaimedSession>, BackplaneError>> {
        let resume = resume.clone();
        Box::pin(async move { self.shared.claim_session(client, &resume).await })
    }

    fn session_changes_written(&self, _client: ConnId) -> BoxFuture<'_, bool> {
        Box::pin(self.shared.session_writes_done())
    }

    fn identities(
        &self,
        clients: &[ConnId],
    ) -> BoxFuture<'_, Result<Option<Vec<Option<UserTag>>>, BackplaneError>> {
        let clients = clients.to_vec();
        Box::pin(async move {
            let question = Question::Identities {
                clients: clients.clone(),
            };
            let answers = self.shared.ask(&question).await?;
            let known: HashMap<ConnId, UserTag> =
                answers.into_iter().flat_map(|a| a.identities).collect();
            Ok(Some(
                clients.iter().map(|c| known.get(c).cloned()).collect(),
            ))
        })
    }

    fn session_history(
        &self,
        client: ConnId,
        since: u64,
    ) -> BoxFuture<'_, Result<Option<SessionHistory>, BackplaneError>> {
        Box::pin(async move { self.shared.session_history(client, since).await })
    }

    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, BackplaneError>> {
        Box::pin(async move {
            let answers = self.shared.ask(&Question::Count).await?;
            Ok(Some(answers.iter().map(|a| a.count).sum()))
        })
    }

    fn room_members(
        &self,
        room: &str,
    ) -> BoxFuture<'_, Result<Option<Vec<ConnId>>, BackplaneError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let answers = self.shared.ask(&Question::Members { room }).await?;
            let mut members: Vec<ConnId> = answers.into_iter().flat_map(|a| a.members).collect();
            members.sort();
            members.dedup();
            Ok(Some(members))
        })
    }

    fn is_healthy(&self) -> bool {
        self.shared.link.get().is_some() && self.shared.connected.load(Ordering::Acquire)
    }

    fn stats(&self) -> BackplaneStats {
        let shared = &self.shared;
        let queued = shared.out.max_capacity() - shared.out.capacity();
        BackplaneStats::new(
            shared.published.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
            shared.dropped.load(Ordering::Relaxed),
            queued as u64,
        )
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.stop.cancel();
            shared.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.tasks.wait()).await;
            if let Some(link) = shared.link.get() {
                let _ = tokio::time::timeout(Duration::from_secs(2), link.client.flush()).await;
            }
            // Stopped, not unavailable: no warning.
            shared.connected.store(false, Ordering::Release);
        })
    }
}
