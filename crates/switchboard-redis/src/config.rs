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
