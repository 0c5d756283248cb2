//! What the backplane's tasks share: the link to NATS, the queue to the writer, the
//! counters, and what this node knows of the cluster (live nodes, the identities and
//! sessions of its clients).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_server::{BackplaneError, ConnId, NodeHandle, SessionRecord, UserTag};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NatsConfig;
use crate::reader::Command;
use crate::subjects::Subjects;

/// The connection to NATS and what lives in it, made at start.
pub(crate) struct Link {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: jetstream::stream::Stream,
    pub(crate) sessions: jetstream::kv::Store,
    /// When the stream was made: another time means NATS lost it (and its history).
    pub(crate) created: Mutex<String>,
}

/// What the writer task sends to NATS, in order.
pub(crate) enum Out {
    /// A send for a numbered stream (a room, the broadcasts, one client): stored in
    /// JetStream with the next offset of its subject.
    Numbered {
        /// The stored subject.
        subject: String,
        frame: Bytes,
        exclude: Vec<ConnId>,
        /// This node's number for it: JetStream drops a retried copy.
        id: u64,
    },
    /// A plain NATS message (not kept): user-addressed sends, notices.
    Plain {
        subject: String,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
    },
}

/// A change to a session's record, written by the sessions' own task (never behind
/// messages: a resume elsewhere must find the session's rooms).
pub(crate) enum SessionWrite {
    /// The record written again (its rooms, its detachment).
    Put(ConnId, Bytes),
    /// The session ended: its record and its direct messages go.
    End(ConnId),
    /// A change to a session this node keeps no copy of (it never kept it in the
    /// cluster, or let it go when another node claimed it): nothing to write, and the
    /// next mark says the changes were not all made.
    NotKept,
    /// Told once every write queued before it is done: whether they all were made
    /// (`false` when one was refused since the last mark: the session had moved).
    Written(tokio::sync::oneshot::Sender<bool>),
}

impl Out {
    /// What it counts against `queue_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Out::Numbered { frame, .. } => frame.len() + 64,
            Out::Plain { payload, .. } => payload.len() + 64,
        }
    }
}

/// A session as the cluster keeps it (the key-value bucket's value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub(crate) record: SessionRecord,
    #[serde(default)]
    pub(crate) rooms: BTreeSet<String>,
    /// When a detached session can no longer be resumed (ms since the epoch); `None`
    /// while a connection serves it.
    #[serde(default)]
    pub(crate) expires_ms: Option<u64>,
    /// The highest resume attempt claimed (`ResumeRequest::attempt`).
    #[serde(default)]
    pub(crate) attempt: u64,
    /// The node that opened or last claimed it: should that node die, the session
    /// waits its `ttl` from then, as if its client had dropped (`janitor.rs`).
    #[serde(default)]
    pub(crate) node: String,
}

pub(crate) struct Shared {
    pub(crate) config: NatsConfig,
    pub(crate) url: String,
    pub(crate) subjects: Subjects,
    /// This node's id in the cluster.
    pub(crate) node: String,
    pub(crate) link: OnceLock<Link>,
    pub(crate) out: mpsc::Sender<Out>,
    pub(crate) out_rx: Mutex<Option<mpsc::Receiver<Out>>>,
    pub(crate) session_writes: mpsc::Sender<SessionWrite>,
    pub(crate) session_writes_rx: Mutex<Option<mpsc::Receiver<SessionWrite>>>,
    /// The last message the reader delivered per stored subject: the writer's freshest
    /// knowledge of where a stream it sends to stands.
    pub(crate) seen_tips: Mutex<HashMap<String, crate::writer::Tip>>,
    /// The subjects the reader follows now (for callers that need not wait for it).
    pub(crate) followed: Mutex<std::collections::HashSet<String>>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) commands_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// Bytes of sends queued or being written (bounded by `queue_bytes`).
    pub(crate) queued_bytes: AtomicUsize,
    pub(crate) dropped: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    /// The number of this node's next numbered send.
    pub(crate) next_id: AtomicU64,
    /// Connected to NATS now.
    pub(crate) connected: AtomicBool,
    /// Set by the link's events when it came back: the reader catches up.
    pub(crate) reconnected: Notify,
    pub(crate) node_handle: OnceLock<NodeHandle>,
    /// Live nodes and when each was last heard.
    pub(crate) peers: Mutex<HashMap<String, Instant>>,
    /// When this node's link to NATS last went up or down (`connected` says which;
    /// `None`: it never went up).
    pub(crate) link_since: Mutex<Option<Instant>>,
    /// Who this node's clients authenticated as.
    pub(crate) identities: Mutex<HashMap<ConnId, UserTag>>,
    /// The sessions this node serves or keeps, as the cluster keeps them.
    pub(crate) sessions: Mutex<HashMap<ConnId, StoredSession>>,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// Locks a mutex, poisoned or not (the data stays consistent: no panics under it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn random_node_id() -> String {
    format!("{:016x}", switchboard_server::proto::random_u64())
}

/// A fresh epoch, as streams write theirs.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", switchboard_server::proto::random_u64())
}

impl Shared {
    pub(crate) fn link(&self) -> Result<&Link, BackplaneError> {
        self.link
            .get()
            .ok_or_else(|| BackplaneError::new("the NATS backplane is not started"))
    }

    /// Queues `item` for the writer; drops (and counts) it beyond the queue's bounds.
    pub(crate) fn enqueue(&self, item: Out) {
        let bytes = item.bytes();
        let max = self.config.queue_bytes.max(1);
        let reserved = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= max).then_some(queued + bytes)
            })
            .is_ok();
        if reserved && self.out.try_send(item).is_ok() {
            return;
        }
        if reserved {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                "NATS backplane queue full: cross-node traffic dropped"
            );
        }
    }

    pub(crate) fn set_connected(self: &Arc<Self>, connected: bool) {
        let was = self.connected.swap(connected, Ordering::AcqRel);
        if was == connected {
            return;
        }
        if connected {
            tracing::info!(node = %self.node, "NATS backplane connected");
            let away = lock(&self.link_since).replace(Instant::now());
            if away.is_some_and(|since| since.elapsed() >= self.config.node_ttl) {
                // Away long enough for its peers to take it for dead: its clients'
                // sessions may have been set to wait as if dropped (`janitor.rs`).
                let shared = Arc::clone(self);
                self.tasks
                    .spawn(async move { shared.keep_connected_sessions().await });
            }
        } else {
            tracing::warn!(node = %self.node, "NATS backplane unavailable: serving this node's clients only");
            *lock(&self.link_since) = Some(Instant::now());
        }
    }
}
