//! The cluster log: one Redis Stream (`{prefix}:log`) every node appends its sends to
//! and reads in order from its own cursor. Pub/sub forgets what a node misses while its
//! link is down; the log does not, so a node that comes back reads on from where it
//! stopped. Room and broadcast sends are numbered as they are appended (one script:
//! the stream's offset and the log entry together), so every node delivers them with
//! the same epoch and offset, and a client may resume on any node.
//!
//! Retries cannot duplicate: each node numbers its appends, and the script refuses a
//! number it has already appended. What the log no longer holds when a node returns
//! (it was away longer than `log_window`, or Redis restarted empty) is lost: the node
//! says so to its clients ([`NodeHandle::lost_messages`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use switchboard_server::proto::{Position, random_u64};
use switchboard_server::{ConnId, Delivery, Disconnect, Sequence, Target};
use tokio::sync::oneshot;

use crate::membership::{Header, Shared};

/// Appends one send to the log. KEYS: the log, this node's last appended number,
/// and for a numbered send the stream's meta hash (`epoch`, `top`); for a direct one
/// also the client's history and its session record. ARGV: the append's number, the
/// delivery (`node \n header \n frame`), an epoch for a stream that has none, the
/// log's window in ms, its most entries, the meta's time to live in ms, the most
/// messages a client's history keeps. Returns 0 for a number appended already (a
/// retry), 1 otherwise. A direct send to a client with no session record (sessions
/// off, or gone) is not numbered.
pub(crate) const APPEND: &str = r"
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = string.format('%.0f', now - tonumber(ARGV[4]))
local numbered = KEYS[3] ~= nil
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 0 then numbered = false end
if numbered then
  if redis.call('HSETNX', KEYS[3], 'epoch', ARGV[3]) == 1 and KEYS[4] then
    redis.call('DEL', KEYS[4])
  end
  local offset = redis.call('HINCRBY', KEYS[3], 'top', 1)
  local epoch = redis.call('HGET', KEYS[3], 'epoch')
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  local o = string.format('%d', offset)
  redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'd', ARGV[2], 'e', epoch, 'o', o)
  if KEYS[4] then
    local first = string.find(ARGV[2], '\n', 1, true)
    local second = string.find(ARGV[2], '\n', first + 1, true)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], o .. '-1', 'd',
      string.sub(ARGV[2], second + 1))
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
  end
else
  redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'd', ARGV[2])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[5])
return 1
";

/// Where a stream stands, made if new. KEYS: its meta hash. ARGV: an epoch for a new
/// stream, the meta's time to live in ms. Returns `[epoch, top]`.
const OPEN_STREAM: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('HSETNX', KEYS[1], 'top', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'epoch', 'top')
";

/// The log's epoch, made if Redis has none (it never had one, or restarted empty).
const OPEN_LOG: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// How long one read waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(1);

/// Entries read at once.
const BATCH: usize = 512;

/// A fresh epoch, as streams write theirs.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", random_u64())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Shared {
    pub(crate) fn log_key(&self) -> String {
        format!("{}:log", self.config.prefix)
    }

    fn log_epoch_key(&self) -> String {
        format!("{}:log:epoch", self.config.prefix)
    }

    /// The number of this node's last append.
    pub(crate) fn appended_key(&self) -> String {
        format!("{}:node:{}:appended", self.config.prefix, self.node)
    }

    /// The keys that number a send (see [`APPEND`]): a room's or the broadcasts' meta
    /// hash; for one client, its stream's meta, history and session record.
    pub(crate) fn stream_keys(&self, target: &Target) -> Vec<String> {
        let prefix = &self.config.prefix;
        match target {
            Target::Room(room) => vec![format!("{prefix}:stream:room:{room}")],
            Target::All => vec![format!("{prefix}:stream:all")],
            Target::Conns(ids) if ids.len() == 1 => {
                let client = ids[0];
                vec![
                    self.client_stream_key(client),
                    self.client_history_key(client),
                    self.session_key(client),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// Adds one append to `pipe` (see [`APPEND`]).
    pub(crate) fn append_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        sha: &str,
        number: u64,
        data: &[u8],
        keys: &[String],
    ) {
        let cmd = pipe.cmd("EVALSHA").arg(sha).arg(2 + keys.len());
        cmd.arg(self.log_key()).arg(self.appended_key()).arg(keys);
        cmd.arg(number)
            .arg(data)
            .arg(new_epoch())
            .arg(millis(self.config.log_window))
            .arg(self.config.log_max_len)
            .arg(millis(self.config.stream_ttl))
            .arg(self.config.client_history)
            .ignore();
    }

    /// Adds to `pipe` a notice in the log that a session moved to this node.
    pub(crate) fn moved_pipe(&self, pipe: &mut redis::Pipeline, client: ConnId, generation: u64) {
        pipe.cmd("XADD")
            .arg(self.log_key())
            .arg("*")
            .arg("n")
            .arg(&self.node)
            .arg("m")
            .arg(client.to_string())
            .arg("g")
            .arg(generation)
            .ignore();
    }

    /// Adds to `pipe` a notice in the log that every node disconnects these.
    pub(crate) fn disconnect_pipe(&self, pipe: &mut redis::Pipeline, what: &Disconnect) {
        let (who, reason) = match what {
            Disconnect::User(user, reason) => (format!("user:{user}"), reason),
            Disconnect::Client(id, reason) => (format!("client:{id}"), reason),
            _ => return,
        };
        pipe.cmd("XADD")
            .arg(self.log_key())
            .arg("*")
            .arg("n")
            .arg(&self.node)
            .arg("k")
            .arg(who)
            .arg("r")
            .arg(reason)
            .ignore();
    }

    /// Where a numbered stream stands in the cluster (see [`OPEN_STREAM`]).
    pub(crate) async fn stream_position(
        &self,
        target: &Target,
    ) -> redis::RedisResult<Option<Position>> {
        let Some(key) = self.stream_keys(target).into_iter().next() else {
            return Ok(None);
        };
        let mut conn = self.reader().await.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "no connection", e.to_string()))
        })?;
        let (epoch, top): (String, u64) = redis::Script::new(OPEN_STREAM)
            .key(key)
            .arg(new_epoch())
            .arg(millis(self.config.stream_ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(Some(Position::new(epoch, top)))
    }

    /// The reader: delivers every log entry in order from this node's cursor, at
    /// start from the oldest kept (so this node knows the streams' recent history),
    /// and after an outage from where it stopped. `caught_up` fires once the first
    /// pass reached the end.
    pub(crate) async fn read_loop(self: Arc<Self>, caught_up: oneshot::Sender<()>) {
        let mut caught_up = Some(caught_up);
        let mut cursor = String::from("0-0");
        let mut log_epoch: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
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
                let kept = cursor == "0-0" || self.still_holds(&mut conn, &cursor).await?;
                redis::RedisResult::Ok((conn, epoch, kept))
            };
            let opened = tokio::select! {
                () = self.stop.cancelled() => return,
                r = opened => r,
            };
            match opened {
                Ok((conn, epoch, kept)) => {
                    backoff = Duration::from_millis(100);
                    let emptied = log_epoch.as_ref().is_some_and(|old| *old != epoch);
                    if emptied || !kept {
                        tracing::warn!(
                            node = %self.node,
                            emptied,
                            "the cluster log lost entries this node had not read"
                        );
                        if let Some(node) = self.node_handle.get() {
                            node.lost_messages();
                        }
                        if emptied {
                            cursor = String::from("0-0");
                        }
                    }
                    log_epoch = Some(epoch);
                    self.subscribed.store(true, Ordering::Release);
                    self.set_healthy(true);
                    // Redis may have lost (or never had) our membership: write it again.
                    self.resync.store(true, Ordering::Release);
                    self.resync_now.notify_one();
                    self.read_on(conn, &mut cursor, &mut caught_up).await;
                    if self.stop.is_cancelled() {
                        return;
                    }
                    self.subscribed.store(false, Ordering::Release);
                    self.set_healthy(false);
                }
                Err(e) => {
                    self.set_healthy(false);
                    tracing::debug!(error = %e, "cannot read the cluster log; retrying");
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
    async fn read_on(
        &self,
        mut conn: MultiplexedConnection,
        cursor: &mut String,
        caught_up: &mut Option<oneshot::Sender<()>>,
    ) {
        let key = self.log_key();
        loop {
            // At start, no waiting: read until the end, then say so.
            let mut options = StreamReadOptions::default().count(BATCH);
            if caught_up.is_none() {
                options = options.block(usize::try_from(BLOCK.as_millis()).unwrap_or(1000));
            }
            let keys = [key.as_str()];
            let ids = [cursor.clone()];
            let read = conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &options);
            let reply = tokio::select! {
                () = self.stop.cancelled() => return,
                r = read => r,
            };
            let entries: Vec<StreamId> = match reply {
                Ok(reply) => reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default(),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the cluster log failed");
                    return;
                }
            };
            if entries.len() < BATCH {
                if let Some(done) = caught_up.take() {
                    let _ = done.send(());
                }
            }
            for entry in entries {
                self.receive_entry(&entry);
                *cursor = entry.id;
            }
        }
    }

    /// Whether the log still holds the entry at `cursor` (and so every one after it).
    async fn still_holds(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &str,
    ) -> redis::RedisResult<bool> {
        let found: redis::streams::StreamRangeReply =
            conn.xrange_count(self.log_key(), cursor, cursor, 1).await?;
        Ok(!found.ids.is_empty())
    }

    /// One log entry: `d` is `node \n header \n frame`; a numbered one has its epoch
    /// (`e`) and offset (`o`).
    fn receive_entry(&self, entry: &StreamId) {
        let Some(node) = self.node_handle.get() else {
            return;
        };
        let bytes: Option<Vec<u8>> = entry.get("d");
        let Some(bytes) = bytes else {
            let from: Option<String> = entry.get("n");
            if from.as_deref() == Some(self.node.as_str()) {
                return; // our own notice: done here already
            }
            // Disconnect these (another node's `disconnect_user` / `disconnect_client`).
            let kick: Option<String> = entry.get("k");
            if let Some(kick) = kick {
                let reason: String = entry.get("r").unwrap_or_default();
                let what = match kick.split_once(':') {
                    Some(("user", user)) => Some(Disconnect::User(user.to_owned(), reason)),
                    Some(("client", id)) => {
                        id.parse().ok().map(|id| Disconnect::Client(id, reason))
                    }
                    _ => None,
                };
                if let Some(what) = what {
                    node.disconnect(&what);
                }
                return;
            }
            // A session resumed on another node: ours goes.
            let moved: Option<String> = entry.get("m");
            let from: Option<String> = entry.get("n");
            let generation: Option<u64> = entry.get("g");
            if let (Some(client), Some(from), Some(generation)) = (moved, from, generation) {
                if from != self.node {
                    if let Ok(client) = client.parse() {
                        node.session_moved(client, generation);
                    }
                }
            }
            return;
        };
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let (Some(_origin), Some(header), Some(frame)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(header), Ok(frame)) = (
            serde_json::from_slice::<Header>(header),
            std::str::from_utf8(frame),
        ) else {
            tracing::warn!("ignoring a malformed entry of the cluster log");
            return;
        };
        let delivery = Delivery {
            target: header.target,
            exclude: header.exclude,
            frame: frame.to_owned(),
        };
        let epoch: Option<String> = entry.get("e");
        let offset: Option<u64> = entry.get("o");
        // Every node, the sender's included, delivers what the log holds.
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
}
