//! The settings of a Redis backplane.

use std::time::Duration;

/// Settings of a [`RedisBackplane`](crate::RedisBackplane).
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
    /// How long the logs keep a send: a node whose link to Redis is down for
    /// less catches up on everything it missed when it returns; one away longer tells
    /// its clients to resume (they hear `recovered: false`). Default 5 minutes.
    pub log_window: Duration,
    /// Most entries each log (a room's, a node's, the broadcasts') keeps
    /// (approximately), whatever their age: Redis's memory bound. Default 1,000,000.
    pub log_max_len: usize,
    /// How long a room's (or the broadcasts') epoch and offset outlive its last message
    /// in Redis. A stream forgotten later starts a new epoch. Default 24 hours.
    pub stream_ttl: Duration,
    /// Most direct messages Redis keeps per client for a resume on another node than
    /// the client's own (for `log_window` at most). Default 1,000.
    pub client_history: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "switchboard".to_owned(),
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            queue: 65_536,
            queue_bytes: 64 << 20,
            log_window: Duration::from_secs(300),
            log_max_len: 1_000_000,
            stream_ttl: Duration::from_secs(24 * 3600),
            client_history: 1_000,
        }
    }
}
