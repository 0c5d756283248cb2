//! Server settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use switchboard_proto::DEFAULT_MAX_MESSAGE_SIZE;

/// What happens when a client's outbound queue is full because it reads slower than
/// messages arrive for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Drop the queued messages and close the connection with `SLOW_CONSUMER` (4007).
    /// The client reconnects and resynchronises; the server's memory stays bounded.
    #[default]
    Disconnect,
    /// Drop the new message and keep the connection (the send reports
    /// [`SendError::Full`](crate::SendError::Full)). For feeds where only the latest
    /// state matters.
    DropNew,
}

/// Server settings, mirroring netconduit's `ServerDescriptor`.
///
/// Every limit has an explicit default, listed on its field.
///
/// ```
/// use switchboard_server::ServerConfig;
/// let config = ServerConfig {
///     port: 9000,
///     name: "ChatServer".into(),
///     ..ServerConfig::default()
/// };
/// assert_eq!(config.host, "127.0.0.1");
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind to. Default `127.0.0.1` (loopback: exposing a server is a choice).
    pub host: String,
    /// Port to listen on; 0 picks a free one. Default `8080`.
    pub port: u16,
    /// The server's name, sent to clients in `connected`. Default `"switchboard"`.
    pub name: String,
    /// The HTTP path of the WebSocket endpoint. Default `/ws`.
    pub path: String,
    /// The largest incoming message, in bytes; larger ones get `MESSAGE_TOO_LARGE` and a
    /// close with 1009. Default 64 KiB; at most 4 GiB less 32 KiB, whatever is set.
    pub max_message_size: usize,
    /// Most concurrent connections; the next client gets `SERVER_FULL` (close 4005, retry
    /// after backoff). Default 10,000.
    pub max_connections: usize,
    /// Most frames waiting to be written to one client. Default 8,192.
    pub outbound_queue: usize,
    /// Most bytes waiting to be written to one client. One frame into an empty queue is
    /// always accepted, whatever its size, so a large reply is never a slow consumer.
    /// Default 4 MiB.
    pub outbound_queue_bytes: usize,
    /// What happens when a client's outbound queue is full. Default: disconnect.
    pub slow_consumer: SlowConsumerPolicy,
    /// The socket write buffer per connection, in bytes (netconduit's `buffer_size`).
    /// Default 4 KiB: larger buffers cost memory on every idle connection.
    pub buffer_size: usize,
    /// How long shutdown waits for in-flight handlers and queued messages. Default 10 s.
    pub shutdown_grace: Duration,
    /// How long closing waits to write a close frame, and then for the client's answer,
    /// before dropping the socket. Default 2 s.
    pub close_timeout: Duration,
    /// Most rooms one connection may be in. Default 100.
    pub max_rooms_per_connection: usize,
    /// Send `user_joined` / `user_left` to a room's members. Default true.
    pub room_notifications: bool,
    /// After a `user_joined` / `user_left`, also send the room's members
    /// `room_update {room_id, users}` with how many members it has now, across the
    /// cluster (the message protocol pattern's message; the joiner learns the count
    /// from its join's answer), at most once per [`room_update_interval`](Self::room_update_interval)
    /// while changes keep coming. Default false; the hub's true.
    pub room_updates: bool,
    /// How often a room's `room_update` goes out while its membership keeps changing:
    /// a room's first change is counted at once, later ones at the end of this
    /// interval, once, with the count then (to every member), so a burst of joins sends
    /// two counts instead of one per join to every member. Zero: every change is sent.
    /// Default 1 s.
    pub room_update_interval: Duration,
    /// Relay messages of types no handler takes to the room (`room`) or client (`to`)
    /// they name, instead of answering `UNKNOWN_TYPE`. The hub turns this on. Default false.
    pub relay_unhandled: bool,
    /// The password clients must send in their `auth` message
    /// (`{"type": "auth", "payload": {"password": "..."}}`), compared in constant time.
    /// Default none. See also [`ServerBuilder::authenticator`](crate::ServerBuilder::authenticator).
    pub password: Option<String>,
    /// With a password or an authenticator: clients must authenticate with their first
    /// message, and nothing else is processed before it (`AUTH_REQUIRED`). Set it to false
    /// to let anonymous clients in and authenticate later; handlers that need an identity
    /// then ask for the [`Identity`](crate::Identity) extractor. Default true.
    pub auth_required: bool,
    /// How long a client has to authenticate before it is closed with `AUTH_TIMEOUT`
    /// (4002). Default 10 s.
    pub auth_timeout: Duration,
    /// Failed authentications one IP address may make within
    /// [`auth_failure_window`](Self::auth_failure_window) before its attempts are refused
    /// unchecked (`RATE_LIMITED`, 4006) until the window ends. 0 turns the throttle off.
    /// Default 5.
    pub auth_max_failures: u32,
    /// The window of [`auth_max_failures`](Self::auth_max_failures). Default 60 s.
    pub auth_failure_window: Duration,
    /// How often the server checks its clients and pings those idle this long (a
    /// WebSocket ping, which every client answers without application code). Zero turns
    /// heartbeats off. Default 25 s.
    pub heartbeat_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is considered gone:
    /// it is closed with `HEARTBEAT_TIMEOUT` (4008) and the disconnect hooks run.
    /// Default 60 s.
    pub heartbeat_timeout: Duration,
    /// Most messages per second one connection may send, on average (a token bucket;
    /// pings and pongs are free). Messages over the rate are dropped and answered with
    /// `RATE_LIMITED`; a client that keeps sending while limited is closed with 4006.
    /// 0 turns the limit off. Default 1,000.
    pub rate_limit: u32,
    /// How many messages one connection may send at once above the rate (the bucket's
    /// size). Default 2,000.
    pub rate_burst: u32,
    /// Most RPC calls one connection may have running at once. Calls run concurrently
    /// (a slow one does not hold up the others or the connection's messages); past this
    /// many, the server stops reading from that client until one finishes. Default 64.
    pub max_calls_in_flight: usize,
    /// The wire format of clients that do not choose one (`?dialect=` or a
    /// `switchboard.<dialect>` subprotocol): native, or datadivr / Metafor so that those
    /// clients work unchanged at the default path. Default native. (Metafor clients are
    /// and datadivr clients are also recognised by their first frame.)
    pub default_dialect: switchboard_proto::Dialect,
    /// Count what the node does for Prometheus, served at `GET /metrics`
    /// ([`Server::render_metrics`](crate::Server::render_metrics) to serve it
    /// elsewhere). Costs no lock and no allocation per message. Default on.
    pub metrics: bool,
    /// The message versions (`v`) this server accepts besides 1 (the protocol's own,
    /// always accepted). An application that reads a version 2 of its messages itself,
    /// as the message protocol pattern's `dispatch_v2` does, lists it here and reads
    /// `v` in its handlers ([`Version`](crate::Version)); a message of any other version
    /// is answered `UNSUPPORTED_VERSION`. Default `[1]`.
    pub versions: Vec<u32>,
    /// How long a connection from Python's `websockets` library (datadivr's client, by
    /// its `User-Agent`) that chose no dialect may take to send its first frame before
    /// the server sends `connected`. datadivr's client speaks first (its `CLI_HELLO`)
    /// and fails on a native `connected`; waiting for that frame lets it be recognised
    /// before anything is sent. Other clients are not affected; a Python client that
    /// waits for `connected` gets it after this long. Zero turns it off. Default 250 ms.
    pub first_frame_wait: Duration,
    /// The `Origin`s browsers may connect from, e.g. `https://app.example.com`. Empty
    /// allows any. A browser page from another origin gets HTTP 403; clients that send no
    /// `Origin` (programs, not browsers) are not affected. Default empty.
    pub allowed_origins: Vec<String>,
    /// A PEM certificate chain: with [`tls_key`](Self::tls_key),
    /// [`Server::run`](crate::Server::run) serves `wss://`. Default none.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for [`tls_cert`](Self::tls_cert). Default none.
    pub tls_key: Option<PathBuf>,
    /// Also serve [`Server::echo_route`](crate::Server::echo_route) at this path: a raw
    /// echo endpoint, without protocol or authentication, for conformance suites
    /// (Autobahn) and transport benchmarks. Default none.
    pub echo_path: Option<String>,
    /// Most connections still speaking plain HTTP (a request, not yet a WebSocket) at
    /// once; past it new ones are dropped at once. 0: no limit.
    pub max_http_connections: usize,
    /// Most plain HTTP connections from one IP address (a page, its scripts and a few
    /// tabs need a handful). 0: no limit.
    pub max_http_connections_per_address: usize,
    /// How long a plain HTTP connection may leave a response unread before it is
    /// dropped (a client that sends requests and never reads the answers).
    pub http_write_timeout: Duration,
    /// Most connections waiting to authenticate at once, counted apart from
    /// `max_connections` (which counts authenticated ones), so unauthenticated
    /// connections cannot hold every place. 0: no limit.
    pub max_pending_auth: usize,
    /// Most connections from one IP address waiting to authenticate. 0: no limit.
    pub max_pending_auth_per_address: usize,
    /// Reverse proxies (their addresses) whose `Forwarded` / `X-Forwarded-For` header
    /// names the client: behind them, the per-address limits (authentication throttle,
    /// pending authentications) and [`Conn::remote_addr`](crate::Conn::remote_addr)
    /// use the client's address, not the proxy's. Empty (the default): the headers are
    /// ignored, since any client could send them.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The key of the server API over HTTP (`/api`, for backends: publish, broadcast,
    /// send, disconnect, members, counts). `None` (the default): no API is served.
    pub api_key: Option<String>,
    /// The history every stream keeps (rooms, broadcasts, each session's direct
    /// messages) unless a rule in [`history_rooms`](Self::history_rooms) says otherwise:
    /// enough for a client to resume after a two-minute outage without configuration.
    /// A size of 0 turns history, offsets and recovery off. Default 1,000 messages for
    /// 5 minutes, no latest message on join.
    pub history: HistoryPolicy,
    /// Per room-name pattern (`*` matches any run of characters, as in `chat:*`): the
    /// first rule whose pattern matches a room sets its history. Default none.
    pub history_rooms: Vec<HistoryRule>,
    /// The bytes of history one node keeps, all streams together; past it, a stream's
    /// new message pushes out that stream's oldest. Default 64 MiB.
    pub history_memory: usize,
    /// How long a session outlives its connection: a client that reconnects within it
    /// with its `resume_token` gets its client id, identity and rooms back, and what it
    /// missed. 0 turns resume off. Default 2 minutes.
    pub session_ttl: Duration,
    /// How many answers to a client's `ref`s a session remembers (those of its last
    /// messages with a `ref`; for a `ref` used more than once, the newest), so that a
    /// message the client sends again after a reconnect is answered with its first
    /// answer instead of being handled twice. Default 256.
    pub session_replies: usize,
}

/// How much history a stream keeps: at most `size` messages, none older than `ttl`.
///
/// ```
/// use std::time::Duration;
/// use switchboard_server::HistoryPolicy;
/// // A dashboard room: the last state, delivered to whoever joins.
/// let latest = HistoryPolicy::latest();
/// assert_eq!(latest.size, 1);
/// assert!(latest.latest_on_join);
/// let off = HistoryPolicy::off();
/// assert!(!off.is_on());
/// let chat = HistoryPolicy { size: 500, ttl: Duration::from_secs(600), latest_on_join: false };
/// assert!(chat.is_on());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most messages kept; 0 keeps none and gives the stream no offsets.
    pub size: usize,
    /// Messages older than this are dropped.
    pub ttl: Duration,
    /// A client that joins the room gets its latest message first (the room's current
    /// state, for dashboards and game state).
    pub latest_on_join: bool,
}

impl HistoryPolicy {
    /// No history: no offsets, nothing to recover.
    pub const fn off() -> HistoryPolicy {
        HistoryPolicy {
            size: 0,
            ttl: Duration::ZERO,
            latest_on_join: false,
        }
    }

    /// Only the latest message, delivered to each client that joins (for an hour).
    pub const fn latest() -> HistoryPolicy {
        HistoryPolicy {
            size: 1,
            ttl: Duration::from_secs(3600),
            latest_on_join: true,
        }
    }

    /// True when the stream keeps history (and its messages carry offsets).
    pub fn is_on(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        HistoryPolicy {
            size: 1_000,
            ttl: Duration::from_secs(300),
            latest_on_join: false,
        }
    }
}

/// A history policy for the rooms whose names match `pattern`.
///
/// ```
/// use switchboard_server::{HistoryPolicy, HistoryRule};
/// let rule = HistoryRule::new("scores:*", HistoryPolicy::latest());
/// assert!(rule.matches("scores:league-1"));
/// assert!(!rule.matches("chat:lobby"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    /// A room name, with `*` for any run of characters.
    pub pattern: String,
    /// The history of the rooms it matches.
    pub policy: HistoryPolicy,
}

impl HistoryRule {
    /// A rule for the rooms matching `pattern`.
    pub fn new(pattern: impl Into<String>, policy: HistoryPolicy) -> HistoryRule {
        HistoryRule {
            pattern: pattern.into(),
            policy,
        }
    }

    /// True if `room` matches the pattern.
    pub fn matches(&self, room: &str) -> bool {
        glob_matches(&self.pattern, room)
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub(crate) fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            name: "switchboard".to_owned(),
            path: "/ws".to_owned(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_connections: 10_000,
            outbound_queue: 8192,
            outbound_queue_bytes: 4 * 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            buffer_size: 4 * 1024,
            shutdown_grace: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_rooms_per_connection: 100,
            room_notifications: true,
            room_updates: false,
            room_update_interval: Duration::from_secs(1),
            relay_unhandled: false,
            password: None,
            auth_required: true,
            auth_timeout: Duration::from_secs(10),
            auth_max_failures: 5,
            auth_failure_window: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(60),
            rate_limit: 1_000,
            rate_burst: 2_000,
            max_calls_in_flight: 64,
            default_dialect: switchboard_proto::Dialect::Native,
            first_frame_wait: Duration::from_millis(250),
            versions: vec![switchboard_proto::PROTOCOL_VERSION],
            metrics: true,
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            echo_path: None,
            max_http_connections: 1024,
            max_http_connections_per_address: 256,
            http_write_timeout: Duration::from_secs(10),
            max_pending_auth: 1024,
            max_pending_auth_per_address: 64,
            trusted_proxies: Vec::new(),
            api_key: None,
            history: HistoryPolicy::default(),
            history_rooms: Vec::new(),
            history_memory: 64 * 1024 * 1024,
            session_ttl: Duration::from_secs(120),
            session_replies: 256,
        }
    }
}

impl ServerConfig {
    /// The default settings listening on `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> ServerConfig {
        ServerConfig {
            host: host.into(),
            port,
            ..ServerConfig::default()
        }
    }

    /// Sets the server name.
    pub fn name(mut self, name: impl Into<String>) -> ServerConfig {
        self.name = name.into();
        self
    }

    /// The largest single frame the server writes to a client: the larger of
    /// `outbound_queue_bytes` and `max_message_size`. A bigger one is refused with
    /// [`SendError::TooLarge`](crate::SendError::TooLarge) (a reply becomes a
    /// `MESSAGE_TOO_LARGE` error), never written halfway.
    ///
    /// ```
    /// let config = switchboard_server::ServerConfig::default();
    /// assert_eq!(config.max_frame_out(), 4 * 1024 * 1024);
    /// ```
    pub fn max_frame_out(&self) -> usize {
        self.outbound_queue_bytes.max(self.max_message_size)
    }

    /// The history of `room`: the first matching rule of
    /// [`history_rooms`](Self::history_rooms), else [`history`](Self::history).
    ///
    /// ```
    /// use switchboard_server::{HistoryPolicy, HistoryRule, ServerConfig};
    /// let config = ServerConfig {
    ///     history_rooms: vec![HistoryRule::new("ephemeral:*", HistoryPolicy::off())],
    ///     ..ServerConfig::default()
    /// };
    /// assert!(!config.history_of("ephemeral:typing").is_on());
    /// assert!(config.history_of("general").is_on());
    /// ```
    pub fn history_of(&self, room: &str) -> HistoryPolicy {
        self.history_rooms
            .iter()
            .find(|r| r.matches(room))
            .map_or(self.history, |r| r.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn patterns_match_as_globs() {
        for (pattern, name, expected) in [
            ("general", "general", true),
            ("general", "general2", false),
            ("chat:*", "chat:", true),
            ("chat:*", "chat:lobby", true),
            ("chat:*", "chats:lobby", false),
            ("*", "", true),
            ("*:admin", "team:admin", true),
            ("*:admin", "team:admins", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*a", "a", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob_matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }
}
