//! `switchboard`: a ready real-time hub on the switchboard server library.
// The doc comments on the command types are clap help texts (shell examples with
// brackets), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod bench;
mod cli;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::response::Html;
use axum::routing::get;
use clap::{Parser, Subcommand};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use settings::FileSettings;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::header;
use switchboard_server::{
    Binary, Conn, ConnId, Json, RpcMethod, Server, ServerConfig, State, TlsConfig,
};
use tracing_subscriber::EnvFilter;

const INDEX: &str = include_str!("index.html");
/// The browser and Node client, served at `/client.js` (and its types at `/client.d.ts`).
const CLIENT_JS: &str = include_str!("../../../clients/js/switchboard.js");
const CLIENT_DTS: &str = include_str!("../../../clients/js/switchboard.d.ts");

/// The room whose members hear `presence` (who comes and goes, and names).
const PRESENCE_ROOM: &str = "_presence";

/// Real-time messaging over WebSocket: a hub that runs with no setup.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        target: cli::Target,
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
        target: cli::Target,
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
        target: cli::Target,
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
        target: cli::Target,
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
    /// Measure: a load generator run against switchboard, a bare tokio-tungstenite floor
    /// and (optionally) Socket.IO, side by side, with ratios to the floor.
    ///
    /// Every run is bounded, targets loopback only, and starts its own servers.
    ///
    /// Examples:
    ///   switchboard bench echo -n 100 -d 3s --rounds 3     # targets take turns; medians
    ///   switchboard bench rpc -n 100 --rate 40000          # latency at a fixed rate
    ///   switchboard bench fanout -n 1000 --messages 2000
    ///   switchboard bench rooms -n 1000 --rooms 50 --messages 200
    ///   switchboard bench idle -n 10000
    ///   switchboard bench storm -n 100 --stalled 10 --messages 10000 --size 4096 --rate 1000
    ///   switchboard bench fanout -n 1000 --nodes 3 --redis redis://127.0.0.1:6379
    ///   switchboard bench echo --target switchboard --target floor --target socketio
    ///   taskset -c 1 switchboard bench rpc --wrap "taskset -c 0"   # server and load apart
    ///   switchboard bench echo -d 3s --wrap "valgrind --tool=callgrind"   # profile
    #[command(verbatim_doc_comment)]
    Bench(bench::BenchArgs),
    /// The bench's floor: a bare tokio-tungstenite echo/broadcast server.
    #[command(hide = true)]
    BenchFloor {
        #[arg(long, default_value_t = 0)]
        port: u16,
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
struct ServeArgs {
    /// A TOML config file (see `switchboard config --example`).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "SWITCHBOARD_HOST")]
    host: Option<String>,
    /// Port to listen on, 0 for any free one [default: 8080].
    #[arg(long, env = "SWITCHBOARD_PORT")]
    port: Option<u16>,
    /// The server's name, sent to clients in `connected` [default: switchboard].
    #[arg(long, env = "SWITCHBOARD_NAME")]
    name: Option<String>,
    /// Most concurrent connections [default: 10000].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Largest incoming message in bytes [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Most rooms one connection may be in [default: 100].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS")]
    max_rooms: Option<usize>,
    /// How long shutdown waits for in-flight handlers [default: 10s].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", value_parser = settings::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// Read the password from this file (clients must then authenticate).
    #[arg(long, env = "SWITCHBOARD_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// How long a new client has to authenticate [default: 10s].
    #[arg(long, env = "SWITCHBOARD_AUTH_TIMEOUT", value_parser = settings::parse_duration)]
    auth_timeout: Option<Duration>,
    /// Ping clients idle this long; 0 turns heartbeats off [default: 25s].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", value_parser = settings::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Drop clients silent this long [default: 60s].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT", value_parser = settings::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// Messages per second per connection; 0 for no limit [default: 1000].
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Messages one connection may send at once above the rate [default: 2000].
    #[arg(long, env = "SWITCHBOARD_RATE_BURST")]
    rate_burst: Option<u32>,
    /// A browser origin allowed to connect (repeat it; none means any).
    #[arg(
        long = "allowed-origin",
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Option<Vec<String>>,
    /// PEM certificate chain: serve wss:// (with --tls-key).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The wire format of clients that do not choose one: native, datadivr or metafor
    /// [default: native].
    #[arg(long, env = "SWITCHBOARD_DIALECT")]
    dialect: Option<switchboard_server::proto::Dialect>,
    /// Join a cluster over Redis: redis://host:port (several nodes, one hub).
    #[arg(long, env = "SWITCHBOARD_REDIS")]
    redis: Option<String>,
    /// With --redis: a node silent this long is dead and its clients stop counting
    /// [default: 5s].
    #[arg(long, env = "SWITCHBOARD_REDIS_NODE_TTL", value_parser = settings::parse_duration)]
    redis_node_ttl: Option<Duration>,
    /// Also serve a raw echo endpoint at this path (conformance testing; no auth).
    #[arg(long, env = "SWITCHBOARD_ECHO_PATH")]
    echo_path: Option<String>,
}

impl ServeArgs {
    /// Flags and environment, as settings; the password only from the environment.
    fn settings(&self) -> FileSettings {
        FileSettings {
            host: self.host.clone(),
            port: self.port,
            name: self.name.clone(),
            max_connections: self.max_connections,
            max_message_size: self.max_message_size,
            max_rooms_per_connection: self.max_rooms,
            shutdown_grace: self.shutdown_grace,
            password: std::env::var("SWITCHBOARD_PASSWORD").ok(),
            password_file: self.password_file.clone(),
            auth_timeout: self.auth_timeout,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            allowed_origins: self.allowed_origins.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            echo_path: self.echo_path.clone(),
            dialect: self.dialect,
            redis: self.redis.clone(),
            redis_node_ttl: self.redis_node_ttl,
            ..FileSettings::default()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs at info; the client commands keep stderr for what matters.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => match serve(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Config { example } => {
            if example {
                print!("{}", settings::EXAMPLE);
            } else {
                println!("switchboard config --example   prints a commented config file");
            }
            ExitCode::SUCCESS
        }
        Command::Connect { target, json } => cli::connect(&target, json).await,
        Command::Send {
            target,
            kind,
            payload,
            room,
            to,
        } => cli::send(&target, &kind, &payload, room.as_deref(), to.as_deref()).await,
        Command::Call {
            target,
            method,
            params,
        } => cli::call(&target, &method, params.as_deref()).await,
        Command::Listen {
            target,
            rooms,
            kinds,
            count,
        } => cli::listen(&target, &rooms, &kinds, count).await,
        Command::Bench(args) => match bench::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard bench: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::BenchFloor { port } => match bench::floor(port).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-floor: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "switchboard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// `echo`: the message back.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EchoParams {
    /// What to send back.
    message: String,
}

/// `sum`: the sum of a list of numbers (datadivr's `sum_event`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SumParams {
    /// The numbers to add up.
    numbers: Vec<f64>,
}

/// The answer of `status`.
#[derive(Debug, Serialize, JsonSchema)]
struct Status {
    /// Always `"online"` when it answers.
    status: &'static str,
    /// The server's name.
    name: String,
    /// Clients connected to this node.
    connections: usize,
    /// Clients connected across the cluster (this node's count on a single node).
    cluster_connections: usize,
    /// Rooms with members on this node.
    rooms: usize,
    /// Seconds since the hub started.
    uptime_secs: f64,
    /// The hub's version.
    version: &'static str,
}

/// `set_name`: what others see instead of your id.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SetName {
    /// 1 to 32 characters.
    #[schemars(length(min = 1, max = 32))]
    name: String,
}

/// One connected client, as `clients` lists it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
struct ClientInfo {
    /// The client id (for direct messages).
    id: String,
    /// The name it set, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// Display names by client id.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<HashMap<ConnId, String>>>);

impl Names {
    fn get(&self, id: ConnId) -> Option<String> {
        self.0.lock().ok().and_then(|m| m.get(&id).cloned())
    }
}

fn presence(server: &Server, id: ConnId, online: bool, name: Option<String>) {
    let payload = serde_json::json!({ "user_id": id, "online": online, "name": name });
    let _ = server.send_to_room_except(PRESENCE_ROOM, "presence", &payload, &[id]);
}

fn hub(config: ServerConfig, redis: Option<(&str, Option<Duration>)>) -> anyhow::Result<Server> {
    let pages = axum::Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/client.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    CLIENT_JS,
                )
            }),
        )
        .route(
            "/client.d.ts",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    CLIENT_DTS,
                )
            }),
        );
    let mut builder = Server::builder();
    if let Some((url, ttl)) = redis {
        let mut redis_config = switchboard_redis::RedisConfig::default();
        if let Some(ttl) = ttl {
            redis_config.node_ttl = ttl;
            redis_config.heartbeat = (ttl / 5).max(Duration::from_millis(50));
        }
        builder = builder.backplane(
            switchboard_redis::RedisBackplane::with_config(url, redis_config)
                .map_err(|e| anyhow::anyhow!("redis: {e}"))?,
        );
    }
    Ok(builder
        .config(config)
        .routes(pages)
        .state(Names::default())
        // Who comes and goes, for the members of `_presence` (the demo page joins it).
        .on_connect(|conn: Conn| async move {
            if let Some(server) = conn.server() {
                presence(&server, conn.id(), true, None);
            }
        })
        .on_disconnect(|conn: Conn, _| async move {
            if let Some(server) = conn.server() {
                if let Some(names) = server.state::<Names>() {
                    if let Ok(mut m) = names.0.lock() {
                        m.remove(&conn.id());
                    }
                }
                presence(&server, conn.id(), false, None);
            }
        })
        // Binary frames come back to their sender.
        .on_binary(|conn: Conn, Binary(data): Binary| async move {
            conn.send_binary(data).ok();
        })
        // datadivr's built-in: {"numbers": [...]} -> `sum_handler_result` to the sender.
        .on(
            "sum_event",
            |conn: Conn, Json(p): Json<SumParams>| async move {
                let sum: f64 = p.numbers.iter().sum();
                conn.send_message("sum_handler_result", &serde_json::json!({ "value": sum }))
                    .ok();
            },
        )
        .rpc_method(
            RpcMethod::new("echo", |p: EchoParams| async move { p.message })
                .description("Sends the message back."),
        )
        .rpc_method(
            RpcMethod::new("sum", |p: SumParams| async move {
                p.numbers.iter().sum::<f64>()
            })
            .description("The sum of a list of numbers."),
        )
        .rpc_method(
            RpcMethod::new(
                "clients",
                |(): (), server: Server, State(names): State<Names>| async move {
                    let mut list: Vec<ClientInfo> = server
                        .connection_ids()
                        .into_iter()
                        .map(|id| ClientInfo {
                            id: id.to_string(),
                            name: names.get(id),
                        })
                        .collect();
                    list.sort_by(|a, b| a.id.cmp(&b.id));
                    Json(list)
                },
            )
            .description("The clients connected to this node, with their names."),
        )
        .rpc_method(
            RpcMethod::new(
                "set_name",
                |p: SetName, conn: Conn, server: Server, State(names): State<Names>| async move {
                    if let Ok(mut m) = names.0.lock() {
                        m.insert(conn.id(), p.name.clone());
                    }
                    presence(&server, conn.id(), true, Some(p.name.clone()));
                    Json(ClientInfo {
                        id: conn.id().to_string(),
                        name: Some(p.name),
                    })
                },
            )
            .description("Sets the name others see (members of `_presence` are told)."),
        )
        .rpc_method(
            RpcMethod::new("status", |(): (), server: Server| async move {
                Json(Status {
                    status: "online",
                    name: server.name().to_owned(),
                    connections: server.connection_count(),
                    cluster_connections: server.cluster_connection_count().await,
                    rooms: server.rooms().len(),
                    uptime_secs: server.uptime().as_secs_f64(),
                    version: env!("CARGO_PKG_VERSION"),
                })
            })
            .description("The server's status: connections, rooms, uptime."),
        )
        .build())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileSettings::load(path)?,
        None => FileSettings::default(),
    };
    let settings = file.merge(args.settings());
    let redis = settings.redis.clone();
    let redis_ttl = settings.redis_node_ttl;
    let config = settings.into_config()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
        _ => None,
    };
    let addr = format!("{}:{}", config.host, config.port);
    let authenticated = config.password.is_some();
    let server = hub(config, redis.as_deref().map(|url| (url, redis_ttl)))?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let (ws, http) = if tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    // On stdout, for people and for scripts that started us on port 0.
    println!(
        "switchboard listening on {ws}://{local}{} (page: {http}://{local}/){}",
        server.config().path,
        if authenticated {
            ", password required"
        } else {
            ""
        }
    );
    let stopper = server.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down");
        stopper.shutdown().await;
    });
    match tls {
        Some(tls) => server.serve_tls(listener, tls).await,
        None => server.serve(listener).await,
    }
    .context("server failed")?;
    Ok(())
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
