//! The cluster's logs: Redis Streams every node appends its sends to, routed by
//! interest. A room's sends go to the room's log (`{prefix}:log:room:<room>`), read
//! only by the nodes with members there (or keeping the room's stream for clients that
//! may come back); a direct send goes to the log of the node its client's session is
//! on (`{prefix}:log:node:<node>`); broadcasts, user-addressed sends and the cluster's
//! notices go to `{prefix}:log:all`, read by every node. A node reads each log it
//! follows in order from its own cursor (`reader.rs`), so a node whose link drops
//! reads on from where it stopped.
//!
//! Room and broadcast sends are numbered as they are appended (one script: the
//! stream's offset and the log entry together), so every node delivers them with the
//! same epoch and offset, and a client may resume on any node: a node that never
//! followed the room reads what it missed from the room's log ([`Shared::stream_history`]).
//!
//! Retries cannot duplicate: each node numbers its appends, and the script refuses a
//! number it has already appended.

use redis::streams::{StreamId, StreamRangeReply};
use switchboard_server::proto::{Position, random_u64};
use switchboard_server::{ConnId, Delivery, Disconnect, KeptMessage, StreamHistory, Target};

use crate::membership::{Header, Shared};

/// Appends one send to a log. KEYS: the log (a room's, or the one every node reads),
/// this node's last appended number, and for a numbered send the stream's meta hash
/// (`epoch`, `top`); for a direct one also the client's history and its session
/// record. ARGV: the append's number, the delivery (`node \n header \n frame`), an
/// epoch for a stream that has none, the logs' window in ms, a log's most entries, the
/// meta's time to live in ms, the most messages a client's history keeps, and the
/// prefix of the nodes' logs. Returns 0 for a number appended already (a retry), 1
/// otherwise. A direct send goes to the log of the node its client's session is on; to
/// a client with no session record (sessions off, or gone) it is not numbered and
/// goes to the log every node reads.
///
/// The node's log is named here, not in KEYS: the cluster is one Redis (not a Redis
/// Cluster), where a script may write a key it computes.
pub(crate) const APPEND: &str = r"
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = string.format('%.0f', now - tonumber(ARGV[4]))
local log = KEYS[1]
local numbered = KEYS[3] ~= nil
if KEYS[5] then
  local node = redis.call('HGET', KEYS[5], 'node')
  if node then log = ARGV[8] .. node else numbered = false end
end
if numbered then
  if redis.call('HSETNX', KEYS[3], 'epoch', ARGV[3]) == 1 and KEYS[4] then
    redis.call('DEL', KEYS[4])
  end
  local offset = redis.call('HINCRBY', KEYS[3], 'top', 1)
  local epoch = redis.call('HGET', KEYS[3], 'epoch')
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  local o = string.format('%d', offset)
  redis.call('XADD', log, 'MINID', '~', minid, '*', 'd', ARGV[2], 'e', epoch, 'o', o)
  if KEYS[4] then
    local first = string.find(ARGV[2], '\n', 1, true)
    local second = string.find(ARGV[2], '\n', first + 1, true)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], o .. '-1', 'd',
      string.sub(ARGV[2], second + 1))
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
  end
else
  redis.call('XADD', log, 'MINID', '~', minid, '*', 'd', ARGV[2])
end
redis.call('XTRIM', log, 'MAXLEN', '~', ARGV[5])
redis.call('PEXPIRE', log, ARGV[4])
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

/// Entries read at once from a log when looking back for a resume.
const PAGE: usize = 512;

/// Most entries looked at for one resume: beyond, what the client missed is more than
/// a resume should replay (it hears `recovered: false`).
const MOST_LOOKED_BACK: usize = 100_000;

/// A fresh epoch, as streams write theirs.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", random_u64())
}

pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One log entry's delivery: `d` is `node \n header \n frame`.
pub(crate) fn unpack(entry: &StreamId) -> Option<Delivery> {
    let bytes: Vec<u8> = entry.get("d")?;
    let mut parts = bytes.splitn(3, |b| *b == b'\n');
    let (Some(_origin), Some(header), Some(frame)) = (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let header = serde_json::from_slice::<Header>(header).ok()?;
    let frame = std::str::from_utf8(frame).ok()?;
    Some(Delivery {
        target: header.target,
        exclude: header.exclude,
        frame: frame.to_owned(),
    })
}

impl Shared {
    /// The log every node reads: broadcasts, user-addressed sends, notices.
    pub(crate) fn all_log_key(&self) -> String {
        format!("{}:log:all", self.config.prefix)
    }

    /// The prefix of the nodes' logs (each node's direct messages).
    fn node_log_prefix(&self) -> String {
        format!("{}:log:node:", self.config.prefix)
    }

    /// This node's log: the direct messages for its clients.
    pub(crate) fn node_log_key(&self) -> String {
        format!("{}{}", self.node_log_prefix(), self.node)
    }

    /// The prefix of the rooms' logs.
    pub(crate) fn room_log_prefix(&self) -> String {
        format!("{}:log:room:", self.config.prefix)
    }

    /// The log a send to `target` is appended to (a direct send's is chosen by the
    /// script, see [`APPEND`]; this is its fallback).
    pub(crate) fn log_of(&self, target: &Target) -> String {
        match target {
            Target::Room(room) => format!("{}{room}", self.room_log_prefix()),
            _ => self.all_log_key(),
        }
    }

    pub(crate) fn log_epoch_key(&self) -> String {
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
        (log, keys): (&str, &[String]),
    ) {
        let cmd = pipe.cmd("EVALSHA").arg(sha).arg(2 + keys.len());
        cmd.arg(log).arg(self.appended_key()).arg(keys);
        cmd.arg(number)
            .arg(data)
            .arg(new_epoch())
            .arg(millis(self.config.log_window))
            .arg(self.config.log_max_len)
            .arg(millis(self.config.stream_ttl))
            .arg(self.config.client_history)
            .arg(self.node_log_prefix())
            .ignore();
    }

    /// Adds to `pipe` a notice for every node: its fields after this node's id.
    fn notice_pipe(&self, pipe: &mut redis::Pipeline, fields: &[(&str, String)]) {
        let cmd = pipe.cmd("XADD");
        cmd.arg(self.all_log_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.log_max_len)
            .arg("*")
            .arg("n")
            .arg(&self.node);
        for (name, value) in fields {
            cmd.arg(*name).arg(value);
        }
        cmd.ignore();
    }

    /// Adds to `pipe` a notice that a session moved to this node.
    pub(crate) fn moved_pipe(&self, pipe: &mut redis::Pipeline, client: ConnId, generation: u64) {
        let fields = [("m", client.to_string()), ("g", generation.to_string())];
        self.notice_pipe(pipe, &fields);
    }

    /// Adds to `pipe` a notice that every node disconnects these.
    pub(crate) fn disconnect_pipe(&self, pipe: &mut redis::Pipeline, what: &Disconnect) {
        let (who, reason) = match what {
            Disconnect::User(user, reason) => (format!("user:{user}"), reason),
            Disconnect::Client(id, reason) => (format!("client:{id}"), reason),
            _ => return,
        };
        self.notice_pipe(pipe, &[("k", who), ("r", reason.clone())]);
    }

    /// Where a numbered stream stands in the cluster (see [`OPEN_STREAM`]). A room's
    /// log is followed first, so nothing numbered after the position is missed.
    pub(crate) async fn stream_position(
        &self,
        target: &Target,
    ) -> redis::RedisResult<Option<Position>> {
        let Some(key) = self.stream_keys(target).into_iter().next() else {
            return Ok(None);
        };
        if matches!(target, Target::Room(_)) {
            self.follow(self.log_of(target)).await?;
        }
        let mut conn = self.reader_or_err().await?;
        let (epoch, top): (String, u64) = redis::Script::new(OPEN_STREAM)
            .key(key)
            .arg(new_epoch())
            .arg(millis(self.config.stream_ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(Some(Position::new(epoch, top)))
    }

    /// A room's or the broadcasts' messages its log keeps after `since`, for a resume:
    /// the log is followed first (what comes after arrives live), then read back from
    /// its end to the first message after `since`.
    pub(crate) async fn stream_history(
        &self,
        target: &Target,
        since: u64,
    ) -> redis::RedisResult<Option<StreamHistory>> {
        let Some(meta) = self.stream_keys(target).into_iter().next() else {
            return Ok(None);
        };
        let log = self.log_of(target);
        self.follow(log.clone()).await?;
        let mut conn = self.reader_or_err().await?;
        let (epoch, top): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&meta)
            .arg("epoch")
            .arg("top")
            .query_async(&mut conn)
            .await?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let mut messages = Vec::new();
        let mut end = String::from("+");
        let mut looked = 0;
        'pages: while looked < MOST_LOOKED_BACK {
            let page: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(&log)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            let Some(last) = page.ids.last() else { break };
            end = format!("({}", last.id);
            looked += page.ids.len();
            for entry in &page.ids {
                let (Some(e), Some(o)) = (entry.get::<String>("e"), entry.get::<u64>("o")) else {
                    continue; // not numbered (a notice, a user-addressed send)
                };
                if e != epoch || o <= since {
                    break 'pages;
                }
                if let Some(delivery) = unpack(entry) {
                    messages.push(KeptMessage {
                        offset: o,
                        frame: delivery.frame,
                        exclude: delivery.exclude,
                    });
                }
            }
            if page.ids.len() < PAGE {
                break;
            }
        }
        messages.reverse();
        Ok(Some(StreamHistory {
            position: Position::new(epoch, top.unwrap_or(0)),
            messages,
        }))
    }
}
