//! A Redis backplane for switchboard: run several nodes behind a load balancer and they
//! act as one server. Broadcasts, room sends and direct messages reach clients on every
//! node; room membership and connection counts are cluster-wide; a dead node's clients
//! stop counting.
//!
//! ```no_run
//! use switchboard_redis::RedisBackplane;
//! use switchboard_server::Server;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .backplane(RedisBackplane::new("redis://127.0.0.1:6379")?)
//!     .build();
//! server.run().await?;
//! # Ok(()) }
//! ```
//!
//! How it works (the full story is `docs/cluster.md`):
//!
//! - **Traffic, routed by interest.** Every send that leaves a node is encoded once by
//!   that node and appended once to a Redis Stream by a script that also numbers it in
//!   its stream (a room's, the broadcasts', or the addressed client's): a room's sends
//!   to the room's log, a direct send to the log of its client's node, broadcasts to
//!   the log every node reads. A node reads only the logs it needs (its rooms', its
//!   own, the shared one), in order from its own cursors, and delivers each entry to
//!   its own connections, the sender's node included, with the same offsets.
//! - **Nothing lost.** A node whose link to Redis drops reads on from where it stopped
//!   when it returns; a batch the writer could not write is written again, never twice.
//!   Sessions live in Redis, so a client resumes on any node with every message it
//!   missed, rooms this node never followed included. When a log lost entries (Redis restarted empty, a node away longer than
//!   `log_window`), the node's clients are told to resume and hear `recovered: false`.
//! - **Membership.** Each node keeps its connections and rooms in Redis sets under its
//!   own keys, and a heartbeat in `{prefix}:nodes`. Counts and room members are read
//!   from the live nodes only; nodes silent for `node_ttl` are reaped.
//! - **Outages.** Sends and presence never block a sender: they go through a bounded
//!   queue (in bytes) to a writer task. While Redis is away, a node keeps its clients,
//!   reports itself unhealthy (`/health`), and holds sends in the queue; past its bound
//!   they are dropped and counted.

mod config;
mod log;
mod membership;
mod reader;
mod sessions;
mod tasks;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::AsyncCommands;
use switchboard_server::handler::BoxFuture;
use switchboard_server::proto::{Position, ResumeRequest};
use switchboard_server::{
    Backplane, BackplaneError, ClaimedSession, ConnId, Delivery, NodeHandle, PresenceEvent,
    SessionHistory, SessionRecord, StreamHistory, Target, UserTag,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::RedisConfig;
use membership::{Header, Out, Shared, now_ms, random_node_id};

/// How long `start` waits for the reader to begin.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The Redis backplane. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.shared.node)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    /// A backplane on the Redis at `url` (`redis://host:port/db`, `rediss://...`,
    /// `redis+unix:///path`), with default settings. Nothing connects until the server
    /// starts.
    pub fn new(url: &str) -> Result<RedisBackplane, BackplaneError> {
        RedisBackplane::with_config(url, RedisConfig::default())
    }

    /// A backplane with these settings.
    pub fn with_config(url: &str, config: RedisConfig) -> Result<RedisBackplane, BackplaneError> {
        let client = redis::Client::open(url)
            .map_err(|e| BackplaneError::with_source(format!("bad Redis URL {url}"), e))?;
        let (out, rx) = mpsc::channel(config.queue.max(1));
        Ok(RedisBackplane {
            shared: Arc::new(Shared {
                client,
                config,
                node: random_node_id(),
                out,
                out_rx: Mutex::new(Some(rx)),
                healthy: AtomicBool::new(false),
                follows: reader::Follows::default(),
                subscribed: AtomicBool::new(false),
                queued_bytes: AtomicUsize::new(0),
                resync: AtomicBool::new(false),
                resync_now: Notify::new(),
                dropped: AtomicU64::new(0),
                published: AtomicU64::new(0),
                received: AtomicU64::new(0),
                node_handle: OnceLock::new(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
                reader: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Sends and presence changes dropped because Redis was away or too slow.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues one append to the cluster log: `node \n header \n frame`.
    fn append(&self, target: &Target, exclude: &[ConnId], frame: &str) {
        let header = Header {
            target: target.clone(),
            exclude: exclude.to_vec(),
        };
        let Ok(header) = serde_json::to_vec(&header) else {
            return;
        };
        let node = self.shared.node.as_bytes();
        let mut data = Vec::with_capacity(node.len() + header.len() + frame.len() + 2);
        data.extend_from_slice(node);
        data.push(b'\n');
        data.extend_from_slice(&header);
        data.push(b'\n');
        data.extend_from_slice(frame.as_bytes());
        let keys = self.shared.stream_keys(target);
        let log = self.shared.log_of(target);
        self.enqueue(Out::Publish { data, log, keys });
    }

    fn enqueue(&self, item: Out) {
        let shared = &self.shared;
        let bytes = item.bytes();
        let reserved = shared
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= shared.config.queue_bytes.max(1)).then_some(queued + bytes)
            })
            .is_ok();
        let mark = matches!(item, Out::Written(_));
        if reserved && shared.out.try_send(item).is_ok() {
            return;
        }
        if reserved {
            shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        if mark {
            return; // a mark, not traffic: its wait ends at once (its sender is dropped)
        }
        let n = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                "Redis backplane queue full: cross-node traffic dropped"
            );
        }
    }
}

impl Backplane for RedisBackplane {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn start(&self, node: NodeHandle) -> BoxFuture<'_, Result<(), BackplaneError>> {
        Box::pin(async move {
            let shared = &self.shared;
            let _ = shared.node_handle.set(node);
            let Some(rx) = shared.out_rx.lock().ok().and_then(|mut g| g.take()) else {
                return Err(BackplaneError::new(
                    "the Redis backplane was already started",
                ));
            };
            // Fail fast on a wrong address; later outages are survived.
            let mut conn = shared.reader().await?;
            let _: () = conn
                .zadd(shared.nodes_key(), &shared.node, now_ms())
                .await
                .map_err(|e| BackplaneError::with_source("cannot reach Redis", e))?;
            tracing::info!(node = %shared.node, "joined the cluster over Redis");
            shared.tasks.spawn(Arc::clone(shared).write_loop(rx));
            let (caught_up, first_pass) = tokio::sync::oneshot::channel();
            shared.tasks.spawn(Arc::clone(shared).read_loop(caught_up));
            shared.tasks.spawn(Arc::clone(shared).follow_loop());
            shared.tasks.spawn(Arc::clone(shared).heartbeat_loop());
            if tokio::time::timeout(CATCH_UP, first_pass).await.is_err() {
                tracing::warn!("reading the cluster's logs at start is slow; serving meanwhile");
            }
            Ok(())
        })
    }

    fn publish(&self, delivery: &Delivery) {
        if let Target::Conns(ids) = &delivery.target {
            if ids.len() > 1 {
                // One append per client: each is numbered in the client's own stream.
                let mut seen = std::collections::HashSet::new();
                for id in ids {
                    if !delivery.exclude.contains(id) && seen.insert(*id) {
                        self.append(&Target::Conns(vec![*id]), &[], &delivery.frame);
                    }
                }
                return;
            }
        }
        self.append(&delivery.target, &delivery.exclude, &delivery.frame);
    }

    fn sequences(&self) -> bool {
        true
    }

    fn stream_position(
        &self,
        stream: &Target,
    ) -> BoxFuture<'_, Result<Option<Position>, BackplaneError>> {
        let stream = stream.clone();
        Box::pin(async move {
            self.shared
                .stream_position(&stream)
                .await
                .map_err(|e| BackplaneError::with_source("Redis read failed", e))
        })
    }

    fn stream_history(
        &self,
        stream: &Target,
        since: u64,
    ) -> BoxFuture<'_, Result<Option<StreamHistory>, BackplaneError>> {
        let stream = stream.clone();
        Box::pin(async move {
            self.shared
                .stream_history(&stream, since)
                .await
                .map_err(|e| BackplaneError::with_source("Redis read failed", e))
        })
    }

    fn presence(&self, event: &PresenceEvent) {
        // A session's change carries the generation of this node's copy now: written
        // later (after an outage), it must not undo a newer claim of the session.
        let client = match event {
            PresenceEvent::Joined(id, _)
            | PresenceEvent::Left(id, _)
            | PresenceEvent::SessionEnded(id)
            | PresenceEvent::SessionDetached { client: id, .. } => Some(*id),
            _ => None,
        };
        let generation = client.and_then(|client| {
            let node = self.shared.node_handle.get()?;
            node.session_generation(client)
        });
        self.enqueue(Out::Presence(event.clone(), generation));
    }

    fn open_session(&self, record: &SessionRecord) -> BoxFuture<'_, Result<(), BackplaneError>> {
        let record = record.clone();
        Box::pin(async move {
            self.shared
                .open_session(&record)
                .await
                .map_err(|e| BackplaneError::with_source("Redis write failed", e))
        })
    }

    fn claim_session(
        &self,
        client: ConnId,
        resume: &ResumeRequest,
    ) -> BoxFuture<'_, Result<Option<ClaimedSession>, BackplaneError>> {
        let (session_id, token) = (resume.session_id.clone(), resume.token.clone());
        let attempt = resume.attempt;
        Box::pin(async move {
            self.shared
                .claim_session(client, &session_id, &token, attempt)
                .await
                .map_err(|e| BackplaneError::with_source("Redis read failed", e))
        })
    }

    fn session_changes_written(&self, _client: ConnId) -> BoxFuture<'_, bool> {
        // The writer is one ordered queue: once a mark queued now is written, so is
        // every change queued before it (a full queue, or a refused batch, drops the
        // mark: not written).
        let (written, wait) = tokio::sync::oneshot::channel();
        self.enqueue(Out::Written(written));
        Box::pin(async move { wait.await.unwrap_or(false) })
    }

    fn identities(
        &self,
        clients: &[ConnId],
    ) -> BoxFuture<'_, Result<Option<Vec<Option<UserTag>>>, BackplaneError>> {
        let clients = clients.to_vec();
        Box::pin(async move {
            self.shared
                .identities(&clients)
                .await
                .map(Some)
                .map_err(|e| BackplaneError::with_source("Redis read failed", e))
        })
    }

    fn session_history(
        &self,
        client: ConnId,
        since: u64,
    ) -> BoxFuture<'_, Result<Option<SessionHistory>, BackplaneError>> {
        Box::pin(async move {
            self.shared
                .session_history(client, since)
                .await
                .map_err(|e| BackplaneError::with_source("Redis read failed", e))
        })
    }

    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, BackplaneError>> {
        Box::pin(async move {
            let shared = &self.shared;
            let mut conn = shared.reader().await?;
            let err = |e| BackplaneError::with_source("Redis read failed", e);
            let nodes = shared.live_nodes(&mut conn).await.map_err(err)?;
            let mut pipe = redis::pipe();
            for n in &nodes {
                pipe.scard(shared.conns_key(n));
            }
            let counts: Vec<usize> = pipe.query_async(&mut conn).await.map_err(err)?;
            Ok(Some(counts.into_iter().sum()))
        })
    }

    fn room_members(
        &self,
        room: &str,
    ) -> BoxFuture<'_, Result<Option<Vec<ConnId>>, BackplaneError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let shared = &self.shared;
            let mut conn = shared.reader().await?;
            let err = |e| BackplaneError::with_source("Redis read failed", e);
            let nodes = shared.live_nodes(&mut conn).await.map_err(err)?;
            if nodes.is_empty() {
                return Ok(Some(Vec::new()));
            }
            let keys: Vec<String> = nodes.iter().map(|n| shared.room_key(n, &room)).collect();
            let ids: Vec<String> = conn.sunion(keys).await.map_err(err)?;
            let mut members: Vec<ConnId> = ids.iter().filter_map(|s| s.parse().ok()).collect();
            members.sort();
            Ok(Some(members))
        })
    }

    fn stats(&self) -> switchboard_server::BackplaneStats {
        let shared = &self.shared;
        let queued = shared.out.max_capacity() - shared.out.capacity();
        switchboard_server::BackplaneStats::new(
            shared.published.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
            shared.dropped.load(Ordering::Relaxed),
            queued as u64,
        )
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.stop.cancel();
            shared.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.tasks.wait()).await;
            // Leave the cluster: our clients are gone.
            if let Ok(mut conn) = shared.reader().await {
                let me = &shared.node;
                let rooms: Vec<String> = conn
                    .smembers(shared.rooms_key(me))
                    .await
                    .unwrap_or_default();
                let mut pipe = redis::pipe();
                for room in &rooms {
                    pipe.del(shared.room_key(me, room)).ignore();
                }
                pipe.del(shared.rooms_key(me)).ignore();
                pipe.del(shared.conns_key(me)).ignore();
                pipe.zrem(shared.nodes_key(), me).ignore();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(&mut conn))
                        .await;
            }
            // Stopped, not unavailable: no warning.
            shared.healthy.store(false, Ordering::Release);
        })
    }
}
