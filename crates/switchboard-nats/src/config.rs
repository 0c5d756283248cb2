//! The settings of a NATS backplane.

use std::time::Duration;

/// Where JetStream keeps the stream of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: the history survives a restart of `nats-server`. The default.
    #[default]
    File,
    /// In memory: faster, lost when `nats-server` restarts (clients then hear
    /// `recovered: false`).
    Memory,
}

/// Settings of a [`NatsBackplane`](crate::NatsBackplane).
///
/// ```
/// use std::time::Duration;
/// use switchboard_nats::NatsConfig;
/// let config = NatsConfig {
///     prefix: "chat".into(),
///     history: 100,
///     ..NatsConfig::default()
/// };
/// assert_eq!(config.node_ttl, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The first token of every subject, and the name of the JetStream stream and
    /// key-value bucket (letters, digits, `-` and `_`), so several clusters can share
    /// a NATS. Default `switchboard`.
    pub prefix: String,
    /// Most messages JetStream keeps per room, per client and for the broadcasts: what
    /// a node catching up after a cut, or a client resuming on a node that did not
    /// follow its rooms, can be given. Default 1,000.
    pub history: i64,
    /// Most bytes the stream keeps, all subjects together; beyond, the oldest go.
    /// Default 1 GiB.
    pub max_bytes: i64,
    /// How long the stream keeps a message (zero: as long as `history` and
    /// `max_bytes` allow). A room silent longer loses its last message, and its next
    /// one starts a new epoch: its members then resume with `recovered: false`.
    /// Default zero.
    pub max_age: Duration,
    /// Where JetStream keeps the stream. Default [`Storage::File`].
    pub storage: Storage,
    /// How often a node says it is alive. Default 1 s.
    pub heartbeat: Duration,
    /// A node silent this long is dead: its clients stop counting. Default 5 s.
    pub node_ttl: Duration,
    /// How long a cluster-wide question (a count, a room's members) waits for the
    /// nodes' answers. Default 1 s.
    pub query_timeout: Duration,
    /// Most bytes of sends waiting for NATS or on their way to it; beyond, sends are
    /// dropped (and counted). Default 64 MiB.
    pub queue_bytes: usize,
    /// Most sends and presence changes waiting for NATS. Default 65,536.
    pub queue: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            prefix: "switchboard".to_owned(),
            history: 1_000,
            max_bytes: 1 << 30,
            max_age: Duration::ZERO,
            storage: Storage::File,
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            query_timeout: Duration::from_secs(1),
            queue_bytes: 64 << 20,
            queue: 65_536,
        }
    }
}
