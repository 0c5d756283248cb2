//! Sessions in Redis, so a client may resume on any node: each session's record (id,
//! token, its stream's epoch, identity, how long it waits), the rooms it is in, and
//! the direct messages numbered for it (`log.rs` appends them). A record lives while
//! its connection does, then `ttl` once it drops, and goes when the session ends.

use std::sync::LazyLock;

use switchboard_server::proto::Position;
use switchboard_server::{ConnId, SessionHistory, SessionRecord};

use crate::log::millis;
use crate::membership::Shared;

/// Keeps a new session, unless its record exists (an earlier try was written after
/// all, and may have been claimed since). KEYS: the record, its stream's meta. ARGV:
/// session id, token, epoch, identity, ttl in ms, node, the record's life while
/// connected in ms.
const OPEN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'sid', ARGV[1], 'token', ARGV[2], 'epoch', ARGV[3],
  'identity', ARGV[4], 'ttl', ARGV[5], 'node', ARGV[6], 'gen', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if ARGV[3] ~= '' then
  redis.call('HSETNX', KEYS[2], 'epoch', ARGV[3])
  redis.call('HSETNX', KEYS[2], 'top', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
";

/// Claims a session for a node: if the session id and token are the record's, and the
/// resume's attempt (when counted) is above every one claimed before, its generation
/// goes up by one, the node is written, and it lives as connected again. KEYS: the
/// record, its rooms, its stream's meta. ARGV: session id, token, node, life while
/// connected in ms, the attempt (0: not counted). Returns
/// `[generation, epoch, identity, ttl, rooms...]` or nil.
const CLAIM: &str = r"
local sid, token, last = unpack(redis.call('HMGET', KEYS[1], 'sid', 'token', 'attempt'))
if sid ~= ARGV[1] or token ~= ARGV[2] then return nil end
local attempt = tonumber(ARGV[5])
if attempt > 0 then
  if tonumber(last or '0') >= attempt then return nil end
  redis.call('HSET', KEYS[1], 'attempt', ARGV[5])
end
local generation = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'epoch', 'identity', 'ttl')
local reply = {tostring(generation), f[1] or '', f[2] or '', f[3] or '0'}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do table.insert(reply, room) end
return reply
";

/// Changes a session's record only from the copy that has it: the node the record
/// names, in the generation the record has (a node that lost it to a resume
/// elsewhere may still report its old connection's end, and one whose writes waited
/// out an outage may write them after the session came back to it in a newer
/// generation). KEYS: the record, its rooms. ARGV: node, the generation of the copy
/// that changed (empty: not known), what (`join`, `leave`, `detach`, `end`), then the
/// room (join, leave), or the ttl in ms and the rooms (detach).
const CHANGE: &str = r"
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'gen') ~= ARGV[2] then return 0 end
local what = ARGV[3]
if what == 'join' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
elseif what == 'leave' then
  redis.call('SREM', KEYS[2], ARGV[4])
elseif what == 'detach' then
  -- The record and the client's stream live as long as the wait for a resume (the
  -- stream's history, `log_window` at most, also goes by then).
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('DEL', KEYS[2])
  if #ARGV > 4 then
    redis.call('SADD', KEYS[2], unpack(ARGV, 5))
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
end
return 1
";

/// Forgets a client's identity if the node that wrote it is this one. KEYS: the hash.
/// ARGV: the client, the node's mark (`"n":"<node>"`).
const FORGET_IDENTITY: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.find(v, ARGV[2], 1, true) then redis.call('HDEL', KEYS[1], ARGV[1]) end
";

/// A dead node's session: waits its own `ttl` from now, as if it had dropped. KEYS: the
/// record, its rooms, its stream's meta. ARGV: the dead node.
const EXPIRE_AS_DROPPED: &str = r"
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
local ttl = redis.call('HGET', KEYS[1], 'ttl')
if ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return 1
";

/// A connected client's session: its record lives as a connected one's again, if this
/// node still has it (a peer that took this node for dead set it to wait as if
/// dropped). KEYS: the record, its rooms, its stream's meta. ARGV: this node, the
/// record's life while connected in ms.
const KEEP_CONNECTED: &str = r"
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
";

/// [`CHANGE`], [`KEEP_CONNECTED`], [`FORGET_IDENTITY`] and [`EXPIRE_AS_DROPPED`], sent
/// by their hash (`EVALSHA`): a join or leave costs Redis its arguments, not the
/// script's kilobyte. The writer loads them (with the append script) when it connects,
/// and again after Redis answers `NOSCRIPT` (it restarted); the reaper before each
/// dead node's pipeline.
pub(crate) static CHANGE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(CHANGE));
pub(crate) static KEEP_CONNECTED_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(KEEP_CONNECTED));
pub(crate) static FORGET_IDENTITY_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FORGET_IDENTITY));
pub(crate) static EXPIRE_AS_DROPPED_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(EXPIRE_AS_DROPPED));

/// Starts an `EVALSHA` of `script`, with `keys` keys, in `pipe`; the keys and the
/// arguments follow.
pub(crate) fn eval_pipe<'p>(
    pipe: &'p mut redis::Pipeline,
    script: &redis::Script,
    keys: usize,
) -> &'p mut redis::Pipeline {
    pipe.cmd("EVALSHA").arg(script.get_hash()).arg(keys)
}

/// Which copy of a session a change comes from: its client, and the generation this
/// node had of it when the change was made (`None`: this node keeps no copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionCopy {
    pub(crate) client: ConnId,
    pub(crate) generation: Option<u64>,
}

impl Shared {
    pub(crate) fn session_key(&self, client: ConnId) -> String {
        format!("{}:session:{client}", self.config.prefix)
    }

    fn session_rooms_key(&self, client: ConnId) -> String {
        format!("{}:session:{client}:rooms", self.config.prefix)
    }

    pub(crate) fn client_stream_key(&self, client: ConnId) -> String {
        format!("{}:stream:client:{client}", self.config.prefix)
    }

    pub(crate) fn client_history_key(&self, client: ConnId) -> String {
        format!("{}:history:client:{client}", self.config.prefix)
    }

    /// Keeps a new session (see [`OPEN`]).
    pub(crate) async fn open_session(&self, record: &SessionRecord) -> redis::RedisResult<()> {
        let identity = record
            .identity
            .as_ref()
            .and_then(|i| serde_json::to_string(i).ok())
            .unwrap_or_default();
        let script = redis::Script::new(OPEN);
        let mut open = script.prepare_invoke();
        open.key(self.session_key(record.client))
            .key(self.client_stream_key(record.client))
            .arg(&record.session_id)
            .arg(&record.token)
            .arg(&record.epoch)
            .arg(identity)
            .arg(millis(record.ttl))
            .arg(&self.node)
            .arg(millis(self.config.stream_ttl));
        let mut attempt = 0;
        loop {
            let mut conn = self.reader_or_err().await?;
            match open.invoke_async(&mut conn).await {
                Err(e) if again(&e, &mut attempt).await => {}
                done => return done,
            }
        }
    }

    /// A change to a session's record from this node's copy of it (see [`CHANGE`]).
    fn change_pipe<'p>(
        &self,
        pipe: &'p mut redis::Pipeline,
        session: SessionCopy,
        what: &str,
    ) -> &'p mut redis::Pipeline {
        let client = session.client;
        let generation = session.generation.map(|g| g.to_string());
        eval_pipe(pipe, &CHANGE_SCRIPT, 4)
            .arg(self.session_key(client))
            .arg(self.session_rooms_key(client))
            .arg(self.client_stream_key(client))
            .arg(self.client_history_key(client))
            .arg(&self.node)
            .arg(generation.unwrap_or_default())
            .arg(what)
    }

    /// The room a session's connection joined or left.
    pub(crate) fn session_room_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        session: SessionCopy,
        room: &str,
        joined: bool,
    ) {
        let what = if joined { "join" } else { "leave" };
        // Not ignored: the only answers a batch reads (1 made, 0 refused), so the
        // join or leave can say whether its change is in the record.
        self.change_pipe(pipe, session, what).arg(room);
    }

    /// A session's connection dropped: the record waits `ttl` for a resume, with the
    /// rooms it was in.
    pub(crate) fn session_detached_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        session: SessionCopy,
        ttl: std::time::Duration,
        rooms: &[String],
    ) {
        self.change_pipe(pipe, session, "detach")
            .arg(millis(ttl).max(1))
            .arg(rooms)
            .ignore();
    }

    fn identities_key(&self) -> String {
        format!("{}:identities", self.config.prefix)
    }

    /// Who a client of this node is (its user and the token's `info`).
    pub(crate) fn identity_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        client: ConnId,
        user: &str,
        info: &serde_json::Value,
    ) {
        let value = serde_json::json!({"u": user, "i": info, "n": self.node}).to_string();
        pipe.hset(self.identities_key(), client.to_string(), value)
            .ignore();
    }

    /// Forgets who a client of `node` was (unless another node has it now).
    pub(crate) fn forget_identity_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        client: ConnId,
        node: &str,
    ) {
        eval_pipe(pipe, &FORGET_IDENTITY_SCRIPT, 1)
            .arg(self.identities_key())
            .arg(client.to_string())
            .arg(format!("\"n\":\"{node}\""))
            .ignore();
    }

    /// The user and `info` of each of these clients, in order.
    pub(crate) async fn identities(
        &self,
        clients: &[ConnId],
    ) -> redis::RedisResult<Vec<Option<(String, serde_json::Value)>>> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.identities_key());
        for c in clients {
            cmd.arg(c.to_string());
        }
        let mut attempt = 0;
        let values: Vec<Option<String>> = loop {
            let mut conn = self.reader_or_err().await?;
            match cmd.query_async(&mut conn).await {
                Err(e) if again(&e, &mut attempt).await => {}
                done => break done?,
            }
        };
        Ok(values
            .into_iter()
            .map(|v| {
                let v: serde_json::Value = serde_json::from_str(&v?).ok()?;
                Some((v["u"].as_str()?.to_owned(), v["i"].clone()))
            })
            .collect())
    }

    /// A session ended for good: nothing of it stays.
    pub(crate) fn session_ended_pipe(&self, pipe: &mut redis::Pipeline, session: SessionCopy) {
        self.change_pipe(pipe, session, "end").ignore();
    }

    /// The sessions of a dead node's connections wait their `ttl` from now.
    pub(crate) fn expire_sessions_pipe(
        &self,
        pipe: &mut redis::Pipeline,
        node: &str,
        clients: &[String],
    ) {
        for client in clients {
            let Ok(client) = client.parse::<ConnId>() else {
                continue;
            };
            eval_pipe(pipe, &EXPIRE_AS_DROPPED_SCRIPT, 3)
                .arg(self.session_key(client))
                .arg(self.session_rooms_key(client))
                .arg(self.client_stream_key(client))
                .arg(node)
                .ignore();
        }
    }

    /// The session record of `client`, connected here, lives as a connected one's
    /// (see [`KEEP_CONNECTED`]).
    pub(crate) fn keep_connected_pipe(&self, pipe: &mut redis::Pipeline, client: ConnId) {
        eval_pipe(pipe, &KEEP_CONNECTED_SCRIPT, 3)
            .arg(self.session_key(client))
            .arg(self.session_rooms_key(client))
            .arg(self.client_stream_key(client))
            .arg(&self.node)
            .arg(millis(self.config.stream_ttl))
            .ignore();
    }

    /// Claims a session for this node (see [`CLAIM`]): its record and rooms.
    pub(crate) async fn claim_session(
        &self,
        client: ConnId,
        session_id: &str,
        token: &str,
        attempt: u64,
    ) -> redis::RedisResult<Option<(SessionRecord, Vec<String>)>> {
        let script = redis::Script::new(CLAIM);
        let mut claim = script.prepare_invoke();
        claim
            .key(self.session_key(client))
            .key(self.session_rooms_key(client))
            .key(self.client_stream_key(client))
            .arg(session_id)
            .arg(token)
            .arg(&self.node)
            .arg(millis(self.config.stream_ttl))
            .arg(attempt);
        let mut tries = 0;
        let reply: Option<Vec<String>> = loop {
            let mut conn = self.reader_or_err().await?;
            match claim.invoke_async(&mut conn).await {
                Err(e) if again(&e, &mut tries).await => {}
                done => break done?,
            }
        };
        let Some(mut reply) = reply.filter(|r| r.len() >= 4) else {
            return Ok(None);
        };
        let mut rooms = reply.split_off(4);
        rooms.sort();
        let identity = Some(&reply[2])
            .filter(|s| !s.is_empty())
            .and_then(|s| serde_json::from_str(s).ok());
        Ok(Some((
            SessionRecord {
                client,
                session_id: session_id.to_owned(),
                token: token.to_owned(),
                epoch: reply[1].clone(),
                identity,
                ttl: std::time::Duration::from_millis(reply[3].parse().unwrap_or(0)),
                generation: reply[0].parse().unwrap_or(1),
            },
            rooms,
        )))
    }

    /// Where a client's stream stands and the direct messages kept after `since`.
    pub(crate) async fn session_history(
        &self,
        client: ConnId,
        since: u64,
    ) -> redis::RedisResult<Option<SessionHistory>> {
        let start = format!("{}-0", since.saturating_add(1));
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.client_stream_key(client))
            .arg("epoch")
            .arg("top")
            .xrange(self.client_history_key(client), start, "+");
        let ((epoch, top), kept): (
            (Option<String>, Option<u64>),
            redis::streams::StreamRangeReply,
        ) = {
            let mut attempt = 0;
            loop {
                let mut conn = self.reader_or_err().await?;
                match pipe.query_async(&mut conn).await {
                    Err(e) if again(&e, &mut attempt).await => {}
                    done => break done?,
                }
            }
        };
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let messages = kept
            .ids
            .iter()
            .filter_map(|entry| {
                let offset = entry.id.split_once('-')?.0.parse().ok()?;
                let frame: String = entry.get("d")?;
                Some((offset, frame))
            })
            .collect();
        Ok(Some(SessionHistory {
            position: Position::new(epoch, top.unwrap_or(0)),
            messages,
        }))
    }

    pub(crate) async fn reader_or_err(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        self.reader().await.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "no connection", e.to_string()))
        })
    }
}

/// Whether to try a command again (up to three times in all): after a cut link, the
/// first command on the reconnecting connection fails. Waits a little first.
pub(crate) async fn again(e: &redis::RedisError, attempt: &mut u32) -> bool {
    *attempt += 1;
    if *attempt >= 3 || !(e.is_io_error() || e.is_connection_dropped()) {
        return false;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20 << (2 * *attempt))).await;
    true
}
