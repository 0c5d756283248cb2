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
//! - **Traffic.** Every send that leaves a node is encoded once by that node and
//!   published once, on one channel (`{prefix}:deliver`), whatever the number of nodes;
//!   each other node delivers it to its own connections. A node ignores its own
//!   publications. Delivery across nodes is at most once: Redis pub/sub does not store.
//! - **Membership.** Each node keeps its connections and rooms in Redis sets under its
//!   own keys, and a heartbeat in `{prefix}:nodes`. Counts and room members are read
//!   from the live nodes only; nodes silent for `node_ttl` are reaped.
//! - **Outages.** Publishing and presence never block a sender: they go through a
//!   bounded queue to a writer task. When Redis goes away, the node keeps serving its
//!   own clients, reports itself unhealthy (`/health`), drops cross-node traffic (and
//!   counts it), and when Redis returns it resubscribes and writes its membership again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use switchboard_server::handler::BoxFuture;
use switchboard_server::{
    Backplane, BackplaneError, ConnId, Delivery, NodeHandle, PresenceEvent, Target,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of a [`RedisBackplane`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The prefix of every key and channel, so several clusters can share a Redis.
    /// Default `switchboard`.
    pub prefix: String,
    /// How often a node says it is alive. Default 1 s.
    pub heartbeat: Duration,
    /// A node silent this long is dead: its clients stop counting. Default 5 s.
    pub node_ttl: Duration,
    /// Most sends and presence changes waiting for Redis; beyond, they are dropped (and
    /// counted). Default 65,536.
    pub queue: usize,
    /// Most bytes of sends waiting for Redis or on their way to it, the batch being
    /// written included; beyond, sends are dropped (and counted), so a Redis outage or
    /// stall costs a node at most this much memory. Default 64 MiB.
    pub queue_bytes: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "switchboard".to_owned(),
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            queue: 65_536,
            queue_bytes: 64 << 20,
        }
    }
}

/// What the writer task sends to Redis.
enum Out {
    Publish(Vec<u8>),
    Presence(PresenceEvent),
}

impl Out {
    /// What it counts against `queue_bytes`.
    fn bytes(&self) -> usize {
        match self {
            Out::Publish(bytes) => bytes.len(),
            Out::Presence(_) => 64,
        }
    }
}

/// Leaves a room in Redis: the member out of the room's set, and the room out of the
/// node's rooms once it has no member here (one script: nothing in between).
const LEAVE_ROOM: &str = "redis.call('SREM', KEYS[1], ARGV[1]) \
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end";

/// The header of a published delivery (the frame follows it, unescaped).
#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(rename = "t")]
    target: Target,
    #[serde(rename = "x", default, skip_serializing_if = "Vec::is_empty")]
    exclude: Vec<ConnId>,
}

struct Shared {
    client: redis::Client,
    config: RedisConfig,
    /// This node's id in the cluster.
    node: String,
    out: mpsc::Sender<Out>,
    out_rx: Mutex<Option<mpsc::Receiver<Out>>>,
    healthy: AtomicBool,
    /// The subscriber is subscribed (health needs it and a working connection).
    subscribed: AtomicBool,
    /// Bytes of sends queued or being written (bounded by `queue_bytes`).
    queued_bytes: AtomicUsize,
    /// Set when Redis came back: the writer rewrites this node's membership.
    resync: AtomicBool,
    resync_now: Notify,
    dropped: AtomicU64,
    node_handle: OnceLock<NodeHandle>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// A connection for reads (counts, members), made on first use.
    reader: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
}

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

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64)
}

fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
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
                subscribed: AtomicBool::new(false),
                queued_bytes: AtomicUsize::new(0),
                resync: AtomicBool::new(false),
                resync_now: Notify::new(),
                dropped: AtomicU64::new(0),
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

    fn enqueue(&self, item: Out) {
        let shared = &self.shared;
        let bytes = item.bytes();
        let reserved = shared
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= shared.config.queue_bytes.max(1)).then_some(queued + bytes)
            })
            .is_ok();
        if reserved && shared.out.try_send(item).is_ok() {
            return;
        }
        if reserved {
            shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
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

impl Shared {
    fn channel(&self) -> String {
        format!("{}:deliver", self.config.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.config.prefix)
    }

    fn conns_key(&self, node: &str) -> String {
        format!("{}:node:{node}:conns", self.config.prefix)
    }

    fn rooms_key(&self, node: &str) -> String {
        format!("{}:node:{node}:rooms", self.config.prefix)
    }

    fn room_key(&self, node: &str, room: &str) -> String {
        format!("{}:node:{node}:room:{room}", self.config.prefix)
    }

    fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            if healthy {
                tracing::info!(node = %self.node, "Redis backplane connected");
            } else {
                tracing::warn!(node = %self.node, "Redis backplane unavailable: serving this node's clients only");
            }
        }
    }

    /// Live nodes: those whose heartbeat is younger than the TTL.
    async fn live_nodes(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<Vec<String>> {
        let since = now_ms() - self.config.node_ttl.as_millis() as f64;
        conn.zrangebyscore(self.nodes_key(), since, "+inf").await
    }

    async fn reader(&self) -> Result<redis::aio::ConnectionManager, BackplaneError> {
        let mut guard = self.reader.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_connection_manager()
            .await
            .map_err(|e| BackplaneError::with_source("cannot connect to Redis", e))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Removes the keys of nodes whose heartbeat stopped.
    async fn reap(&self, conn: &mut redis::aio::ConnectionManager) -> redis::RedisResult<()> {
        let before = now_ms() - self.config.node_ttl.as_millis() as f64;
        let dead: Vec<String> = conn.zrangebyscore(self.nodes_key(), "-inf", before).await?;
        for node in dead {
            let rooms: Vec<String> = conn.smembers(self.rooms_key(&node)).await?;
            let mut pipe = redis::pipe();
            for room in &rooms {
                pipe.del(self.room_key(&node, room)).ignore();
            }
            pipe.del(self.rooms_key(&node)).ignore();
            pipe.del(self.conns_key(&node)).ignore();
            pipe.zrem(self.nodes_key(), &node).ignore();
            pipe.query_async::<()>(conn).await?;
            tracing::info!(node = %node, rooms = rooms.len(), "reaped a dead node");
        }
        Ok(())
    }

    /// Writes this node's whole membership again (after an outage, or at start).
    fn resync_pipe(&self, pipe: &mut redis::Pipeline) {
        let Some(node) = self.node_handle.get() else {
            return;
        };
        let me = &self.node;
        let conns = node.connections();
        let rooms = node.rooms();
        pipe.del(self.conns_key(me)).ignore();
        pipe.del(self.rooms_key(me)).ignore();
        if !conns.is_empty() {
            pipe.sadd(
                self.conns_key(me),
                conns.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .ignore();
        }
        for (room, members) in rooms {
            pipe.del(self.room_key(me, &room)).ignore();
            pipe.sadd(self.rooms_key(me), &room).ignore();
            if !members.is_empty() {
                pipe.sadd(
                    self.room_key(me, &room),
                    members.iter().map(ToString::to_string).collect::<Vec<_>>(),
                )
                .ignore();
            }
        }
        pipe.zadd(self.nodes_key(), me, now_ms()).ignore();
    }

    fn presence_pipe(&self, pipe: &mut redis::Pipeline, event: &PresenceEvent) {
        let me = &self.node;
        match event {
            PresenceEvent::Connected(id) => {
                pipe.sadd(self.conns_key(me), id.to_string()).ignore();
            }
            PresenceEvent::Disconnected(id) => {
                pipe.srem(self.conns_key(me), id.to_string()).ignore();
            }
            PresenceEvent::Joined(id, room) => {
                pipe.sadd(self.rooms_key(me), room).ignore();
                pipe.sadd(self.room_key(me, room), id.to_string()).ignore();
            }
            PresenceEvent::Left(id, room) => {
                pipe.cmd("EVAL")
                    .arg(LEAVE_ROOM)
                    .arg(2)
                    .arg(self.room_key(me, room))
                    .arg(self.rooms_key(me))
                    .arg(id.to_string())
                    .arg(room)
                    .ignore();
            }
            _ => {}
        }
    }

    /// The writer: batches queued publishes and presence changes into one pipeline per
    /// round trip.
    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Out>) {
        let mut conn: Option<redis::aio::ConnectionManager> = None;
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.resync_now.notified() => {}
                n = rx.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return;
                    }
                }
            }
            let c = match &conn {
                Some(c) => c.clone(),
                None => match self.client.get_connection_manager().await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        self.dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        let bytes: usize = batch.iter().map(Out::bytes).sum();
                        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                        batch.clear();
                        tracing::debug!(error = %e, "Redis unavailable; batch dropped");
                        self.resync.store(true, Ordering::Release);
                        continue;
                    }
                },
            };
            let mut pipe = redis::pipe();
            if self.resync.swap(false, Ordering::AcqRel) {
                self.resync_pipe(&mut pipe);
            }
            let channel = self.channel();
            // Counted until written: the batch in flight is part of the bound.
            let in_flight: usize = batch.iter().map(Out::bytes).sum();
            for item in batch.drain(..) {
                match item {
                    Out::Publish(bytes) => {
                        pipe.publish(&channel, bytes).ignore();
                    }
                    Out::Presence(event) => self.presence_pipe(&mut pipe, &event),
                }
            }
            if pipe.is_empty() {
                continue;
            }
            let mut c = c;
            let written = pipe.query_async::<()>(&mut c).await;
            drop(pipe);
            self.queued_bytes.fetch_sub(in_flight, Ordering::AcqRel);
            if let Err(e) = written {
                tracing::debug!(error = %e, "Redis write failed; membership will be rewritten");
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.resync.store(true, Ordering::Release);
                self.set_healthy(false);
            }
        }
    }

    /// The subscriber: delivers other nodes' sends here; reconnects when Redis goes away.
    async fn subscribe_loop(self: Arc<Self>) {
        let channel = self.channel();
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                () = self.stop.cancelled() => return,
                r = subscribed => r,
            };
            match pubsub {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    self.subscribed.store(true, Ordering::Release);
                    self.set_healthy(true);
                    // Redis may have lost (or never had) our membership: write it again.
                    self.resync.store(true, Ordering::Release);
                    self.resync_now.notify_one();
                    let mut stream = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            () = self.stop.cancelled() => return,
                            m = stream.next() => m,
                        };
                        match msg {
                            Some(msg) => self.receive(msg.get_payload_bytes()),
                            None => break,
                        }
                    }
                    self.subscribed.store(false, Ordering::Release);
                    self.set_healthy(false);
                }
                Err(e) => {
                    self.set_healthy(false);
                    tracing::debug!(error = %e, "cannot subscribe to Redis; retrying");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One published delivery: `node \n header \n frame`.
    fn receive(&self, bytes: &[u8]) {
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let (Some(origin), Some(header), Some(frame)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if origin == self.node.as_bytes() {
            return; // delivered locally already
        }
        let (Ok(header), Ok(frame)) = (
            serde_json::from_slice::<Header>(header),
            std::str::from_utf8(frame),
        ) else {
            tracing::warn!("ignoring a malformed delivery from Redis");
            return;
        };
        if let Some(node) = self.node_handle.get() {
            node.deliver(&Delivery {
                target: header.target,
                exclude: header.exclude,
                frame: frame.to_owned(),
            });
        }
    }

    /// The heartbeat: this node is alive; dead ones are reaped.
    async fn heartbeat_loop(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.config.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Ok(mut conn) = self.reader().await else {
                self.set_healthy(false);
                continue;
            };
            let beat: redis::RedisResult<()> =
                conn.zadd(self.nodes_key(), &self.node, now_ms()).await;
            match beat {
                Ok(()) => {
                    // Redis answers again: healthy, if the subscription held (a stall
                    // breaks the heartbeat, not always the subscription).
                    self.set_healthy(self.subscribed.load(Ordering::Acquire));
                    // A rewrite that failed (Redis was still coming back) is retried here.
                    if self.resync.load(Ordering::Acquire) {
                        self.resync_now.notify_one();
                    }
                    if let Err(e) = self.reap(&mut conn).await {
                        tracing::debug!(error = %e, "reaping dead nodes failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis heartbeat failed");
                    self.set_healthy(false);
                }
            }
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
            shared.tasks.spawn(Arc::clone(shared).subscribe_loop());
            shared.tasks.spawn(Arc::clone(shared).heartbeat_loop());
            Ok(())
        })
    }

    fn publish(&self, delivery: &Delivery) {
        let header = Header {
            target: delivery.target.clone(),
            exclude: delivery.exclude.clone(),
        };
        let Ok(header) = serde_json::to_vec(&header) else {
            return;
        };
        let node = self.shared.node.as_bytes();
        let mut bytes = Vec::with_capacity(node.len() + header.len() + delivery.frame.len() + 2);
        bytes.extend_from_slice(node);
        bytes.push(b'\n');
        bytes.extend_from_slice(&header);
        bytes.push(b'\n');
        bytes.extend_from_slice(delivery.frame.as_bytes());
        self.enqueue(Out::Publish(bytes));
    }

    fn presence(&self, event: &PresenceEvent) {
        self.enqueue(Out::Presence(event.clone()));
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
            shared.set_healthy(false);
        })
    }
}
