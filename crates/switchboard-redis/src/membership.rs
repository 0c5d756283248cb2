//! What one node keeps in Redis: its keys, its health, its membership (connections,
//! rooms) written event by event or all at once after an outage, and the reaping of
//! dead nodes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use switchboard_server::{BackplaneError, ConnId, NodeHandle, PresenceEvent, Target};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::RedisConfig;
use crate::sessions::{EXPIRE_AS_DROPPED_SCRIPT, FORGET_IDENTITY_SCRIPT, SessionCopy, eval_pipe};

/// What the writer task sends to Redis.
pub(crate) enum Out {
    /// A send for `log`; `keys` number it (see `log.rs`).
    Publish {
        data: Vec<u8>,
        log: String,
        keys: Vec<String>,
    },
    /// A presence change, with the generation this node had of the session it
    /// concerns, if any, when it was made (see `sessions.rs`, `CHANGE`).
    Presence(PresenceEvent, Option<u64>),
    /// Told once everything queued before it is written: whether every join and leave
    /// since the mark before was made (`false` when Redis refused one: the session had
    /// moved to another node, or its record was gone).
    Written(tokio::sync::oneshot::Sender<bool>),
}

impl Out {
    /// What it counts against `queue_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Out::Publish { data, .. } => data.len(),
            Out::Presence(..) => 64,
            Out::Written(_) => 16,
        }
    }
}

/// Leaves a room in Redis: the member out of the room's set, and the room out of the
/// node's rooms once it has no member here (one script: nothing in between).
const LEAVE_ROOM: &str = "redis.call('SREM', KEYS[1], ARGV[1]) \
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end";

/// [`LEAVE_ROOM`], sent by its hash (loaded with the writer's other scripts).
pub(crate) static LEAVE_ROOM_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(LEAVE_ROOM));

/// The header of a published delivery (the frame follows it, unescaped).
#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    #[serde(rename = "t")]
    pub(crate) target: Target,
    #[serde(rename = "x", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) exclude: Vec<ConnId>,
}

pub(crate) struct Shared {
    pub(crate) client: redis::Client,
    pub(crate) config: RedisConfig,
    /// This node's id in the cluster.
    pub(crate) node: String,
    pub(crate) out: mpsc::Sender<Out>,
    pub(crate) out_rx: Mutex<Option<mpsc::Receiver<Out>>>,
    pub(crate) healthy: AtomicBool,
    /// The logs this node reads (`reader.rs`).
    pub(crate) follows: crate::reader::Follows,
    /// The logs' reader is connected (health needs it and a working connection).
    pub(crate) subscribed: AtomicBool,
    /// Bytes of sends queued or being written (bounded by `queue_bytes`).
    pub(crate) queued_bytes: AtomicUsize,
    /// Set when Redis came back: the writer rewrites this node's membership.
    pub(crate) resync: AtomicBool,
    pub(crate) resync_now: Notify,
    pub(crate) dropped: AtomicU64,
    /// Sends and presence changes written to Redis.
    pub(crate) published: AtomicU64,
    /// Messages read from the cluster log and delivered here.
    pub(crate) received: AtomicU64,
    pub(crate) node_handle: OnceLock<NodeHandle>,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// A connection for reads (counts, members), made on first use.
    pub(crate) reader: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
}

pub(crate) fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64)
}

pub(crate) fn random_node_id() -> String {
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

impl Shared {
    pub(crate) fn nodes_key(&self) -> String {
        format!("{}:nodes", self.config.prefix)
    }

    pub(crate) fn conns_key(&self, node: &str) -> String {
        format!("{}:node:{node}:conns", self.config.prefix)
    }

    pub(crate) fn rooms_key(&self, node: &str) -> String {
        format!("{}:node:{node}:rooms", self.config.prefix)
    }

    pub(crate) fn room_key(&self, node: &str, room: &str) -> String {
        format!("{}:node:{node}:room:{room}", self.config.prefix)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
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
    pub(crate) async fn live_nodes(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<Vec<String>> {
        let since = now_ms() - self.config.node_ttl.as_millis() as f64;
        conn.zrangebyscore(self.nodes_key(), since, "+inf").await
    }

    pub(crate) async fn reader(&self) -> Result<redis::aio::ConnectionManager, BackplaneError> {
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
    pub(crate) async fn reap(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<()> {
        let before = now_ms() - self.config.node_ttl.as_millis() as f64;
        let dead: Vec<String> = conn.zrangebyscore(self.nodes_key(), "-inf", before).await?;
        for node in dead {
            let rooms: Vec<String> = conn.smembers(self.rooms_key(&node)).await?;
            let clients: Vec<String> = conn.smembers(self.conns_key(&node)).await?;
            // Its clients' sessions wait for a resume elsewhere, as after a drop. The
            // scripts go by hash, one call per client; the node's keys go only once
            // they ran (a Redis that lost them in between answers NOSCRIPT, and the
            // next heartbeat reaps the node again).
            EXPIRE_AS_DROPPED_SCRIPT.load_async(conn).await?;
            FORGET_IDENTITY_SCRIPT.load_async(conn).await?;
            let mut pipe = redis::pipe();
            self.expire_sessions_pipe(&mut pipe, &node, &clients);
            for client in clients.iter().filter_map(|c| c.parse().ok()) {
                self.forget_identity_pipe(&mut pipe, client, &node);
            }
            if !pipe.is_empty() {
                pipe.query_async::<()>(conn).await?;
            }
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

    /// Writes this node's whole membership again (after an outage, or at start): its
    /// connections, its rooms and their members, who its identified clients are, and
    /// the connected life of its clients' session records (a peer that took this node
    /// for dead removed the first three and set the records to wait as if dropped).
    pub(crate) fn resync_pipe(&self, pipe: &mut redis::Pipeline) {
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
        for (client, user, info) in node.identities() {
            self.identity_pipe(pipe, client, &user, &info);
        }
        for client in &conns {
            self.keep_connected_pipe(pipe, *client);
        }
        pipe.zadd(self.nodes_key(), me, now_ms()).ignore();
    }

    /// Takes a connection of this node out of a room's members here.
    fn leave_room_pipe(&self, pipe: &mut redis::Pipeline, id: ConnId, room: &str) {
        eval_pipe(pipe, &LEAVE_ROOM_SCRIPT, 2)
            .arg(self.room_key(&self.node, room))
            .arg(self.rooms_key(&self.node))
            .arg(id.to_string())
            .arg(room)
            .ignore();
    }

    pub(crate) fn presence_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        event: &PresenceEvent,
        generation: Option<u64>,
    ) {
        let copy = |client: &ConnId| SessionCopy {
            client: *client,
            generation,
        };
        let me = &self.node;
        match event {
            PresenceEvent::Connected(id) => {
                pipe.sadd(self.conns_key(me), id.to_string()).ignore();
            }
            PresenceEvent::Disconnected(id) => {
                pipe.srem(self.conns_key(me), id.to_string()).ignore();
                self.forget_identity_pipe(pipe, *id, me);
            }
            PresenceEvent::Joined(id, room) => {
                pipe.sadd(self.rooms_key(me), room).ignore();
                pipe.sadd(self.room_key(me, room), id.to_string()).ignore();
                self.session_room_pipe(pipe, copy(id), room, true);
            }
            PresenceEvent::Left(id, room) => {
                self.leave_room_pipe(pipe, *id, room);
                self.session_room_pipe(pipe, copy(id), room, false);
            }
            // The session keeps the room: its detachment, next, writes its rooms.
            PresenceEvent::LeftOnClose(id, room) => self.leave_room_pipe(pipe, *id, room),
            PresenceEvent::SessionDetached { client, ttl, rooms } => {
                self.session_detached_pipe(pipe, copy(client), *ttl, rooms);
            }
            PresenceEvent::SessionEnded(id) => self.session_ended_pipe(pipe, copy(id)),
            PresenceEvent::SessionMoved(id, generation) => {
                self.moved_pipe(pipe, *id, *generation);
            }
            PresenceEvent::Disconnect(what) => self.disconnect_pipe(pipe, what),
            PresenceEvent::Identified(id, user, info) => {
                self.identity_pipe(pipe, *id, user, info);
            }
            _ => {}
        }
    }
}
