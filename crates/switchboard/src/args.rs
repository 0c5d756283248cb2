//! The command line: every subcommand and flag (clap), with the help texts.
// The doc comments on the command types are clap help texts (shell examples with
// brackets), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client_commands;
use crate::settings::{self, FileSettings};

/// Real-time messaging over WebSocket: a hub that runs with no setup.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// How logs are written to stderr: `text` (colours only on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
}

/// The format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a hub: rooms, broadcast, direct messages and relay, a page at `/`.
    ///
    /// Settings come from flags, then SWITCHBOARD_* environment variables, then the
    /// --config file, then the defaults. The password is never a flag (other users can
    /// read a process's arguments): use SWITCHBOARD_PASSWORD, `password_file`, or the file.
    ///
    /// Examples:
    ///   switchboard serve
    ///   switchboard serve --host 0.0.0.0 --port 9000 --name chat
    ///   switchboard serve --config switchboard.toml
    ///   SWITCHBOARD_PASSWORD=s3cret switchboard serve --tls-cert cert.pem --tls-key key.pem
    ///   SWITCHBOARD_PORT=0 switchboard serve     # any free port; the address is printed
    #[command(verbatim_doc_comment)]
    Serve(Box<ServeArgs>),
    /// An interactive client: line editing, history, messages printed as they arrive.
    ///
    /// Type a JSON envelope, text (sent to the room you joined last), or a command:
    /// /join ROOM, /leave ROOM, /room ROOM TEXT, /to ID TEXT, /call METHOD {json},
    /// /methods, /rooms, /id, /help, /quit. It reconnects by itself and says so.
    ///
    /// Examples:
    ///   switchboard connect localhost:8080
    ///   SWITCHBOARD_PASSWORD=s3cret switchboard connect wss://chat.example.com/ws
    ///   switchboard connect ws://127.0.0.1:8080/ws --json < commands.txt
    #[command(verbatim_doc_comment)]
    Connect {
        #[command(flatten)]
        target: client_commands::Target,
        /// Print every incoming envelope as one JSON line (for scripts); notices go to stderr.
        #[arg(long)]
        json: bool,
    },
    /// Send one message and wait for the server's acknowledgement.
    ///
    /// Prints the ack's result (e.g. {"delivered":2}) if there is one. Exit code 0 on
    /// success, 1 when the server answered with an error (its code on stderr), 2 when it
    /// could not be reached.
    ///
    /// Examples:
    ///   switchboard send localhost:8080 chat '{"text":"hello"}' --room general
    ///   switchboard send localhost:8080 dm '{"text":"psst"}' --to 9f1c02aa00000001
    ///   switchboard send localhost:8080 news '{"title":"v2"}' --to all
    #[command(verbatim_doc_comment)]
    Send {
        #[command(flatten)]
        target: client_commands::Target,
        /// The message type.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The payload, a JSON object.
        payload: String,
        /// Send to this room's members.
        #[arg(long, conflicts_with = "to")]
        room: Option<String>,
        /// Send to this client id, or `all` / `others`.
        #[arg(long)]
        to: Option<String>,
    },
    /// Call an RPC method and print its result as JSON.
    ///
    /// Exit code 0 on success, 1 when the method failed (CODE: message on stderr),
    /// 2 when the server could not be reached.
    ///
    /// Examples:
    ///   switchboard call localhost:8080 sum '{"numbers":[391,29]}'
    ///   switchboard call localhost:8080 listall
    ///   switchboard call localhost:8080 status
    #[command(verbatim_doc_comment)]
    Call {
        #[command(flatten)]
        target: client_commands::Target,
        /// The method name.
        method: String,
        /// The parameters: a JSON object (named) or array (positional). Default {}.
        params: Option<String>,
    },
    /// Print incoming messages as JSON lines until interrupted (or --count).
    ///
    /// Examples:
    ///   switchboard listen localhost:8080 --room general
    ///   switchboard listen localhost:8080 --room a --room b --type chat --count 10
    #[command(verbatim_doc_comment)]
    Listen {
        #[command(flatten)]
        target: client_commands::Target,
        /// Join this room first (repeat for several).
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Only messages of this type (repeat for several).
        #[arg(long = "type")]
        kinds: Vec<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Print a shell completion script.
    ///
    /// Examples:
    ///   switchboard completions bash > /etc/bash_completion.d/switchboard
    ///   switchboard completions zsh > "${fpath[1]}/_switchboard"
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print configuration help.
    ///
    /// Examples:
    ///   switchboard config --example > switchboard.toml
    #[command(verbatim_doc_comment)]
    Config {
        /// Print a commented example config file with every setting and its default.
        #[arg(long)]
        example: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML config file (see `switchboard config --example`).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "SWITCHBOARD_HOST")]
    pub(crate) host: Option<String>,
    /// Port to listen on, 0 for any free one [default: 8080].
    #[arg(long, env = "SWITCHBOARD_PORT")]
    pub(crate) port: Option<u16>,
    /// The server's name, sent to clients in `connected` [default: switchboard].
    #[arg(long, env = "SWITCHBOARD_NAME")]
    pub(crate) name: Option<String>,
    /// Most concurrent connections [default: 10000].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Largest incoming message in bytes [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE")]
    pub(crate) max_message_size: Option<usize>,
    /// The socket write buffer per connection, in bytes (netconduit's `buffer_size`);
    /// larger costs memory on every idle connection [default: 4096].
    #[arg(long, env = "SWITCHBOARD_BUFFER_SIZE")]
    pub(crate) buffer_size: Option<usize>,
    /// Most rooms one connection may be in [default: 100].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS")]
    pub(crate) max_rooms: Option<usize>,
    /// How long shutdown waits for in-flight handlers [default: 10s].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", value_parser = settings::parse_duration)]
    pub(crate) shutdown_grace: Option<Duration>,
    /// Read the password from this file (clients must then authenticate).
    #[arg(long, env = "SWITCHBOARD_PASSWORD_FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// How long a new client has to authenticate [default: 10s].
    #[arg(long, env = "SWITCHBOARD_AUTH_TIMEOUT", value_parser = settings::parse_duration)]
    pub(crate) auth_timeout: Option<Duration>,
    /// Ping clients idle this long; 0 turns heartbeats off [default: 25s].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", value_parser = settings::parse_duration)]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Drop clients silent this long [default: 60s].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT", value_parser = settings::parse_duration)]
    pub(crate) heartbeat_timeout: Option<Duration>,
    /// Send a room's member count (`room_update`) at most this often while its
    /// membership keeps changing; 0 sends one per join and leave [default: 1s].
    #[arg(long, env = "SWITCHBOARD_ROOM_UPDATE_INTERVAL", value_parser = settings::parse_duration)]
    pub(crate) room_update_interval: Option<Duration>,
    /// Messages per second per connection; 0 for no limit [default: 1000].
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT")]
    pub(crate) rate_limit: Option<u32>,
    /// Messages one connection may send at once above the rate [default: 2000].
    #[arg(long, env = "SWITCHBOARD_RATE_BURST")]
    pub(crate) rate_burst: Option<u32>,
    /// A browser origin allowed to connect (repeat it; none means any).
    #[arg(
        long = "allowed-origin",
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// PEM certificate chain: serve wss:// (with --tls-key).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The wire format of clients that do not choose one: native, datadivr or metafor
    /// [default: native].
    #[arg(long, env = "SWITCHBOARD_DIALECT")]
    pub(crate) dialect: Option<switchboard_server::proto::Dialect>,
    /// Join a cluster over Redis: redis://host:port (several nodes, one hub).
    #[arg(long, env = "SWITCHBOARD_REDIS")]
    pub(crate) redis: Option<String>,
    /// With --redis: a node silent this long is dead and its clients stop counting
    /// [default: 5s].
    #[arg(long, env = "SWITCHBOARD_REDIS_NODE_TTL", value_parser = settings::parse_duration)]
    pub(crate) redis_node_ttl: Option<Duration>,
    /// With --redis: how long the cluster log keeps messages, so a node cut from Redis
    /// for less loses nothing [default: 5m].
    #[arg(long, env = "SWITCHBOARD_REDIS_LOG_WINDOW", value_parser = settings::parse_duration)]
    pub(crate) redis_log_window: Option<Duration>,
    /// Join a cluster over NATS with JetStream: nats://host:port (several nodes, one
    /// hub; each node receives only the rooms its clients are in).
    #[arg(long, env = "SWITCHBOARD_NATS", conflicts_with = "redis")]
    pub(crate) nats: Option<String>,
    /// With --nats: a node silent this long is dead and its clients stop counting
    /// [default: 5s].
    #[arg(long, env = "SWITCHBOARD_NATS_NODE_TTL", value_parser = settings::parse_duration)]
    pub(crate) nats_node_ttl: Option<Duration>,
    /// Also serve netconduit's own clients (its Python package, raw TCP) on this port
    /// [default: off].
    #[arg(long, env = "SWITCHBOARD_NETCONDUIT_PORT")]
    pub(crate) netconduit_port: Option<u16>,
    /// With --netconduit-port and a password: accept netconduit's password hash (an
    /// unsalted SHA-256, replayable by whoever sees it; trusted networks only).
    #[arg(long, env = "SWITCHBOARD_NETCONDUIT_PASSWORD_HASH", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) netconduit_password_hash: Option<bool>,
    /// Messages each room (and each client's own stream) keeps for clients that
    /// reconnect; 0 turns history and resume of missed messages off [default: 1000].
    #[arg(long, env = "SWITCHBOARD_HISTORY_SIZE")]
    pub(crate) history_size: Option<usize>,
    /// How long kept messages stay [default: 5m].
    #[arg(long, env = "SWITCHBOARD_HISTORY_TTL", value_parser = settings::parse_duration)]
    pub(crate) history_ttl: Option<Duration>,
    /// How long a dropped client's session waits to be resumed; 0 turns resume off
    /// [default: 2m].
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL", value_parser = settings::parse_duration)]
    pub(crate) session_ttl: Option<Duration>,
    /// Verify clients' JWTs (RS256 or ES256) with this PEM public key file; HS256 takes
    /// its secret from SWITCHBOARD_JWT_SECRET or `jwt_secret_file` (docs/auth.md).
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub(crate) jwt_public_key: Option<PathBuf>,
    /// With a JWT key: only tokens with this `iss`.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    /// With a JWT key: only tokens with this `aud`.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,
    /// Rooms anyone may join and publish to (names, or patterns like `lobby:*`).
    #[arg(long, env = "SWITCHBOARD_PUBLIC_ROOMS", value_delimiter = ',')]
    pub(crate) public_rooms: Option<Vec<String>>,
    /// Rooms that need the token's `rooms` / `publish` claim [default with a JWT key: *].
    #[arg(long, env = "SWITCHBOARD_PRIVATE_ROOMS", value_delimiter = ',')]
    pub(crate) private_rooms: Option<Vec<String>>,
    /// Whether clients may publish to rooms (false: only the server API does) [default: true].
    #[arg(long, env = "SWITCHBOARD_CLIENTS_PUBLISH")]
    pub(crate) clients_publish: Option<bool>,
    /// Whether clients may message each other (and everyone) directly [default: true].
    #[arg(long, env = "SWITCHBOARD_CLIENTS_MESSAGE_DIRECTLY")]
    pub(crate) clients_message_directly: Option<bool>,
    /// Serve Prometheus metrics at /metrics [default: true].
    #[arg(long, env = "SWITCHBOARD_METRICS")]
    pub(crate) metrics: Option<bool>,
    /// Also serve a raw echo endpoint at this path (conformance testing; no auth).
    #[arg(long, env = "SWITCHBOARD_ECHO_PATH")]
    pub(crate) echo_path: Option<String>,
}

impl ServeArgs {
    /// Flags and environment, as settings; the password only from the environment.
    pub(crate) fn settings(&self) -> FileSettings {
        FileSettings {
            host: self.host.clone(),
            port: self.port,
            name: self.name.clone(),
            max_connections: self.max_connections,
            max_message_size: self.max_message_size,
            max_rooms_per_connection: self.max_rooms,
            buffer_size: self.buffer_size,
            shutdown_grace: self.shutdown_grace,
            password: std::env::var("SWITCHBOARD_PASSWORD").ok(),
            jwt_secret: std::env::var("SWITCHBOARD_JWT_SECRET").ok(),
            api_key: std::env::var("SWITCHBOARD_API_KEY").ok(),
            jwt_public_key: self.jwt_public_key.clone(),
            jwt_issuer: self.jwt_issuer.clone(),
            jwt_audience: self.jwt_audience.clone(),
            public_rooms: self.public_rooms.clone(),
            private_rooms: self.private_rooms.clone(),
            clients_publish: self.clients_publish,
            clients_message_directly: self.clients_message_directly,
            metrics: self.metrics,
            password_file: self.password_file.clone(),
            auth_timeout: self.auth_timeout,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            room_update_interval: self.room_update_interval,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            allowed_origins: self.allowed_origins.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            echo_path: self.echo_path.clone(),
            dialect: self.dialect,
            redis: self.redis.clone(),
            redis_node_ttl: self.redis_node_ttl,
            redis_log_window: self.redis_log_window,
            nats: self.nats.clone(),
            nats_node_ttl: self.nats_node_ttl,
            netconduit_port: self.netconduit_port,
            netconduit_password_hash: self.netconduit_password_hash,
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            session_ttl: self.session_ttl,
            ..FileSettings::default()
        }
    }
}
