//! The hub application: the server library with the hub's own handlers (presence,
//! datadivr's `sum_event`, binary echo), RPC methods (`echo`, `sum`, `clients`,
//! `set_name`, `status`), the demo page, the admin page and the JS client it serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header;
use axum::response::Html;
use axum::routing::get;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard_server::{Binary, Conn, ConnId, Json, RpcMethod, Server, ServerConfig, State};

/// The demo page at `/`.
const INDEX: &str = include_str!("../assets/index.html");
/// The admin page at `/admin`: live counts, rooms, clients, kick and publish, all
/// through the server API (so behind its key; the page itself holds no data).
const ADMIN: &str = include_str!("../assets/admin.html");
/// The browser and Node client, served at `/client.js` (and its types at `/client.d.ts`):
/// `assets/` links to `clients/js`, and packaging copies the files into the crate.
const CLIENT_JS: &str = include_str!("../assets/switchboard.js");
/// The modules `client.js` imports from beside it (`./msgpack.js`, ...), served at
/// those paths.
const CLIENT_MODULES: [(&str, &str); 8] = [
    ("/msgpack.js", include_str!("../assets/msgpack.js")),
    ("/options.js", include_str!("../assets/options.js")),
    ("/frames.js", include_str!("../assets/frames.js")),
    ("/errors.js", include_str!("../assets/errors.js")),
    ("/reconnect.js", include_str!("../assets/reconnect.js")),
    ("/positions.js", include_str!("../assets/positions.js")),
    ("/handlers.js", include_str!("../assets/handlers.js")),
    ("/requests.js", include_str!("../assets/requests.js")),
];
const CLIENT_DTS: &str = include_str!("../assets/switchboard.d.ts");

/// A JavaScript module's response.
fn javascript(source: &'static str) -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
}

/// The room whose members hear `presence` (who comes and goes, and names).
const PRESENCE_ROOM: &str = "_presence";

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

/// `clients`: one page of the connected clients, in id order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClientsPage {
    /// Start after this client id (the last one of the previous page).
    #[serde(default)]
    after: Option<String>,
    /// At most this many (1 to 500).
    #[serde(default = "default_clients_page")]
    limit: usize,
}

/// The largest page of `clients`: its reply stays far under the outbound frame limit.
const MAX_CLIENTS_PAGE: usize = 500;

fn default_clients_page() -> usize {
    200
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

/// The hub's link to its cluster: where, and the settings the hub exposes.
pub(crate) enum ClusterLink<'a> {
    Redis {
        url: &'a str,
        node_ttl: Option<Duration>,
        log_window: Option<Duration>,
    },
    Nats {
        url: &'a str,
        node_ttl: Option<Duration>,
    },
}

pub(crate) fn hub(
    config: ServerConfig,
    cluster: Option<ClusterLink<'_>>,
    access: crate::access::Access,
) -> anyhow::Result<Server> {
    let pages = axum::Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/admin", get(|| async { Html(ADMIN) }))
        .route("/client.js", get(|| async { javascript(CLIENT_JS) }))
        .route(
            "/client.d.ts",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    CLIENT_DTS,
                )
            }),
        );
    let pages = CLIENT_MODULES
        .into_iter()
        .fold(pages, |pages, (path, source)| {
            pages.route(path, get(move || async move { javascript(source) }))
        });
    let mut builder = Server::builder();
    if let Some(jwt) = access.jwt {
        builder = builder.authenticator(jwt);
    }
    if let Some(policy) = access.policy {
        builder = builder.policy(policy);
    }
    match cluster {
        Some(ClusterLink::Redis {
            url,
            node_ttl,
            log_window,
        }) => {
            let mut redis_config = switchboard_redis::RedisConfig::default();
            if let Some(ttl) = node_ttl {
                redis_config.node_ttl = ttl;
                redis_config.heartbeat = (ttl / 5).max(Duration::from_millis(50));
            }
            if let Some(window) = log_window {
                redis_config.log_window = window;
            }
            builder = builder.backplane(
                switchboard_redis::RedisBackplane::with_config(url, redis_config)
                    .map_err(|e| anyhow::anyhow!("redis: {e}"))?,
            );
        }
        Some(ClusterLink::Nats { url, node_ttl }) => {
            let mut nats_config = switchboard_nats::NatsConfig::default();
            if let Some(ttl) = node_ttl {
                nats_config.node_ttl = ttl;
                nats_config.heartbeat = (ttl / 5).max(Duration::from_millis(50));
            }
            builder = builder.backplane(
                switchboard_nats::NatsBackplane::with_config(url, nats_config)
                    .map_err(|e| anyhow::anyhow!("nats: {e}"))?,
            );
        }
        None => {}
    }
    Ok(builder
        // The message protocol pattern's `room_update` after joins and leaves.
        .config(ServerConfig {
            room_updates: true,
            ..config
        })
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
                |page: ClientsPage, server: Server, State(names): State<Names>| async move {
                    let mut ids = server.connection_ids();
                    ids.sort();
                    let after = page.after.as_deref().and_then(|a| a.parse::<ConnId>().ok());
                    let list: Vec<ClientInfo> = ids
                        .into_iter()
                        .filter(|id| after.is_none_or(|a| *id > a))
                        .take(page.limit.clamp(1, MAX_CLIENTS_PAGE))
                        .map(|id| ClientInfo {
                            id: id.to_string(),
                            name: names.get(id),
                        })
                        .collect();
                    Json(list)
                },
            )
            .description("The clients connected to this node, with their names, in pages: at most `limit` (200 by default, 500 at most) after the id `after`."),
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
