//! The reader: this node reads the logs it follows and no other (routing by interest):
//! the one every node reads, its own (its clients' direct messages), and the log of
//! each room it has members in or keeps the stream of. One blocking `XREAD` covers
//! them all, each from its own cursor; a log followed while it blocks wakes it
//! (`CLIENT UNBLOCK`). Every entry is delivered in order, the sender's node included.
//!
//! When the link returns, the reader reads on from its cursors. What the logs no
//! longer hold is lost: a numbered stream's next message shows the gap (its members
//! resume); a node away longer than `log_window`, or a Redis restarted empty (a new
//! `{prefix}:log:epoch`), sends every client of the node to resume
//! ([`NodeHandle::lost_messages`](switchboard_server::NodeHandle::lost_messages)).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use switchboard_server::{Disconnect, Sequence};
use tokio::sync::{Notify, oneshot};

use crate::log::{new_epoch, unpack};
use crate::membership::Shared;

/// The log's epoch, made if Redis has none (it never had one, or restarted empty).
const OPEN_LOG: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// How long one read waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(1);

/// A reading connection up this long before it dropped is connected again at once; one
/// that dropped sooner (a link that keeps failing) is retried after a backoff.
const STEADY: Duration = Duration::from_secs(1);

/// Entries read at once, per log.
const BATCH: usize = 512;

/// How often the followed rooms are matched against what the node needs.
const RECONCILE: Duration = Duration::from_millis(500);

/// How often a wake-up is said again until the blocked read returns.
const WAKE_AGAIN: Duration = Duration::from_millis(20);

/// How long a room's log stays followed before the node's interests may drop it (a
/// join or a resume follows it a moment before the node counts it as needed).
const GRACE: Duration = Duration::from_secs(2);

/// Where the reading of one log stands.
struct Cursor {
    /// The id of the last entry read.
    id: String,
    /// When the node began following the log.
    since: Instant,
}

/// The logs this node follows, each with its cursor.
#[derive(Default)]
pub(crate) struct Follows {
    cursors: Mutex<HashMap<String, Cursor>>,
    /// A log was followed: the blocked read should start again with it.
    changed: Notify,
    /// The `CLIENT ID` of the reading connection (0: none yet).
    reader_id: AtomicI64,
}

impl Follows {
    fn cursors(&self) -> MutexGuard<'_, HashMap<String, Cursor>> {
        self.cursors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_followed(&self, key: &str) -> bool {
        self.cursors().contains_key(key)
    }

    /// The logs and their cursors, for one read.
    fn snapshot(&self) -> (Vec<String>, Vec<String>) {
        self.cursors()
            .iter()
            .map(|(k, v)| (k.clone(), v.id.clone()))
            .unzip()
    }

    /// Moves a log's cursor, if the log is still followed.
    fn advance(&self, key: &str, id: &str) {
        if let Some(cursor) = self.cursors().get_mut(key) {
            id.clone_into(&mut cursor.id);
        }
    }
}

impl Shared {
    /// Follows a log from its current end (once): every entry appended after this
    /// returns is read. Fails only when Redis cannot say where the log ends.
    pub(crate) async fn follow(&self, key: String) -> redis::RedisResult<()> {
        if self.follows.is_followed(&key) {
            return Ok(());
        }
        let mut conn = self.reader_or_err().await?;
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let cursor = last
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        let since = Instant::now();
        self.follows
            .cursors()
            .entry(key)
            .or_insert(Cursor { id: cursor, since });
        self.follows.changed.notify_one();
        Ok(())
    }

    /// Matches the followed rooms to the node's interests now and every
    /// [`RECONCILE`]: a room gained is followed, a room no longer needed is not.
    pub(crate) async fn follow_loop(self: Arc<Self>) {
        let prefix = self.room_log_prefix();
        let mut tick = tokio::time::interval(RECONCILE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(node) = self.node_handle.get() else {
                continue;
            };
            let wanted: HashSet<String> = node
                .interests()
                .rooms
                .into_iter()
                .map(|room| format!("{prefix}{room}"))
                .collect();
            self.follows.cursors().retain(|key, cursor| {
                !key.starts_with(&prefix) || wanted.contains(key) || cursor.since.elapsed() < GRACE
            });
            for key in wanted {
                if let Err(e) = self.follow(key).await {
                    tracing::debug!(error = %e, "cannot follow a room's log; later");
                    break;
                }
            }
        }
    }

    /// The reader: at start it follows the log every node reads (from its end) and
    /// its own; `started` fires once it reads. After an outage it reads on from its
    /// cursors.
    pub(crate) async fn read_loop(self: Arc<Self>, started: oneshot::Sender<()>) {
        let mut started = Some(started);
        let mut log_epoch: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        let mut last_read = Instant::now();
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
        loop {
            let opened = async {
                let mut conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let epoch: String = redis::Script::new(OPEN_LOG)
                    .key(self.log_epoch_key())
                    .arg(new_epoch())
                    .invoke_async(&mut conn)
                    .await?;
                let id: i64 = redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut conn)
                    .await?;
                if started.is_some() {
                    self.follow(self.all_log_key()).await?;
                    let mine = Cursor {
                        id: "0-0".to_owned(),
                        since: Instant::now(),
                    };
                    self.follows.cursors().insert(self.node_log_key(), mine);
                }
                redis::RedisResult::Ok((conn, epoch, id))
            };
            let opened = tokio::select! {
                () = self.stop.cancelled() => return,
                r = opened => r,
            };
            match opened {
                Ok((conn, epoch, id)) => {
                    backoff = Duration::from_millis(100);
                    self.follows.reader_id.store(id, Ordering::Release);
                    let emptied = log_epoch.as_ref().is_some_and(|old| *old != epoch);
                    let away = last_read.elapsed() >= self.config.log_window;
                    if emptied || (away && log_epoch.is_some()) {
                        tracing::warn!(
                            node = %self.node,
                            emptied,
                            "the cluster's logs lost entries this node had not read"
                        );
                        if let Some(node) = self.node_handle.get() {
                            node.lost_messages();
                        }
                        if emptied {
                            for cursor in self.follows.cursors().values_mut() {
                                "0-0".clone_into(&mut cursor.id);
                            }
                        }
                    }
                    log_epoch = Some(epoch);
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                    self.subscribed.store(true, Ordering::Release);
                    self.set_healthy(true);
                    // Redis may have lost (or never had) our membership: write it again.
                    self.resync.store(true, Ordering::Release);
                    self.resync_now.notify_one();
                    let up_since = Instant::now();
                    self.read_on(conn, &mut last_read).await;
                    self.follows.reader_id.store(0, Ordering::Release);
                    if self.stop.is_cancelled() {
                        return;
                    }
                    self.subscribed.store(false, Ordering::Release);
                    self.set_healthy(false);
                    if up_since.elapsed() >= STEADY {
                        // A link that had been working dropped: connect again at once
                        // (every moment away is messages this node's clients wait
                        // for); only a link that keeps failing is waited for.
                        continue;
                    }
                }
                Err(e) => {
                    self.set_healthy(false);
                    tracing::debug!(error = %e, "cannot read the cluster's logs; retrying");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Reads and delivers until the connection fails or the node stops.
    async fn read_on(&self, mut conn: MultiplexedConnection, last_read: &mut Instant) {
        let options = StreamReadOptions::default()
            .count(BATCH)
            .block(usize::try_from(BLOCK.as_millis()).unwrap_or(1000));
        loop {
            let (keys, ids) = self.follows.snapshot();
            let read = conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &options);
            tokio::pin!(read);
            let mut waking = false;
            let reply = loop {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    r = &mut read => break r,
                    () = self.follows.changed.notified(), if !waking => waking = true,
                    () = tokio::time::sleep(WAKE_AGAIN), if waking => {}
                }
                // A log was followed: the read starts again with it.
                self.wake_reader().await;
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the cluster's logs failed");
                    return;
                }
            };
            *last_read = Instant::now();
            for log in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(last) = log.ids.last().map(|e| e.id.clone()) else {
                    continue;
                };
                for entry in &log.ids {
                    self.receive_entry(entry);
                }
                self.follows.advance(&log.key, &last);
            }
        }
    }

    /// Ends the reading connection's blocked `XREAD` (it answers as if nothing came).
    async fn wake_reader(&self) {
        let id = self.follows.reader_id.load(Ordering::Acquire);
        if id == 0 {
            return;
        }
        if let Ok(mut conn) = self.reader_or_err().await {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut conn)
                .await;
        }
    }

    /// One log entry: a delivery (numbered ones with their epoch `e` and offset `o`),
    /// or another node's notice.
    fn receive_entry(&self, entry: &redis::streams::StreamId) {
        let Some(node) = self.node_handle.get() else {
            return;
        };
        if !entry.contains_key("d") {
            self.receive_notice(entry);
            return;
        }
        let Some(delivery) = unpack(entry) else {
            tracing::warn!("ignoring a malformed entry of the cluster's logs");
            return;
        };
        let epoch: Option<String> = entry.get("e");
        let offset: Option<u64> = entry.get("o");
        // Every node, the sender's included, delivers what the logs hold.
        self.received.fetch_add(1, Ordering::Relaxed);
        match (epoch, offset) {
            (Some(epoch), Some(offset)) => {
                node.deliver_sequenced(&delivery, &Sequence { epoch, offset });
            }
            _ => {
                node.deliver(&delivery);
            }
        }
    }

    /// Another node's notice: disconnect these (`k`), or a session moved (`m`).
    fn receive_notice(&self, entry: &redis::streams::StreamId) {
        let Some(node) = self.node_handle.get() else {
            return;
        };
        let from: Option<String> = entry.get("n");
        if from.as_deref() == Some(self.node.as_str()) {
            return; // our own notice: done here already
        }
        let kick: Option<String> = entry.get("k");
        if let Some(kick) = kick {
            let reason: String = entry.get("r").unwrap_or_default();
            let what = match kick.split_once(':') {
                Some(("user", user)) => Some(Disconnect::User(user.to_owned(), reason)),
                Some(("client", id)) => id.parse().ok().map(|id| Disconnect::Client(id, reason)),
                _ => None,
            };
            if let Some(what) = what {
                node.disconnect(&what);
            }
            return;
        }
        let moved: Option<String> = entry.get("m");
        let generation: Option<u64> = entry.get("g");
        if let (Some(client), Some(generation)) = (moved, generation) {
            if let Ok(client) = client.parse() {
                node.session_moved(client, generation);
            }
        }
    }
}
