//! The "Full Chat Server" of netconduit's Server Guide (seed 003), written with
//! switchboard: the seed's RPC methods (`set_username`, `get_users`,
//! `get_user_count`), its message handlers (`chat`, `set_name`) and its lifecycle
//! hooks, on a [`ServerBuilder`] so the binary runs it and the seed's tests drive it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_server::{
    Conn, ConnId, DisconnectReason, Filter, HandlerError, Json, Server, ServerBuilder, State,
};

/// `users = {}  # client_id -> username`: the application's state, shared by the
/// handlers, methods and hooks.
#[derive(Clone, Default)]
pub struct Users(Arc<Mutex<HashMap<ConnId, String>>>);

impl Users {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnId, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name_of(&self, id: ConnId) -> Option<String> {
        self.lock().get(&id).cloned()
    }

    /// Sets a user's name; returns the old one.
    fn rename(&self, id: ConnId, name: String) -> Option<String> {
        self.lock().insert(id, name)
    }

    /// Every name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().values().cloned().collect();
        names.sort();
        names
    }

    /// How many are online.
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// `set_username(username: str)`.
#[derive(Deserialize, JsonSchema)]
struct SetUsername {
    /// 1 to 30 characters.
    #[schemars(length(min = 1, max = 30))]
    username: String,
}

/// A `chat` message: `data.get("message", "")`.
#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    message: String,
}

/// A `set_name` message: `data.get("username", "Anonymous")`.
#[derive(Deserialize)]
struct SetName {
    #[serde(default = "anonymous")]
    username: String,
}

fn anonymous() -> String {
    "Anonymous".to_owned()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The seed's chat server on `builder`: its state, RPC methods, handlers and hooks.
///
/// ```no_run
/// use switchboard_server::{Server, ServerConfig};
/// # async fn demo() -> Result<(), switchboard_server::ServeError> {
/// let config = ServerConfig::new("127.0.0.1", 8080).name("ChatServer");
/// switchboard_examples::chat::chat_server(Server::builder().config(config))
///     .build()
///     .run()
///     .await
/// # }
/// ```
pub fn chat_server(builder: ServerBuilder) -> ServerBuilder {
    let users = Users::default();
    let (on_connect_users, on_disconnect_users) = (users.clone(), users.clone());
    builder
        .state(users)
        // === RPC Methods ===
        .rpc(
            "set_username",
            // The seed's comment, "will get client context from RPC system": here the
            // caller's connection is an argument like any other.
            |p: SetUsername, conn: Conn, State(users): State<Users>| async move {
                users.rename(conn.id(), p.username.clone());
                Json(json!({"set": true, "username": p.username}))
            },
        )
        .rpc(
            "get_users",
            |(): (), State(users): State<Users>| async move { Json(users.names()) },
        )
        .rpc(
            "get_user_count",
            |(): (), State(users): State<Users>| async move { users.count() },
        )
        // === Message Handlers ===
        .on("chat", handle_chat)
        .on("set_name", handle_set_name)
        // === Lifecycle ===
        .on_startup(|srv: Server| async move {
            let addr = srv.local_addr().map(|a| a.to_string()).unwrap_or_default();
            println!("Chat server running on ws://{addr}/ws");
        })
        .on_connect(move |conn: Conn| {
            let users = on_connect_users.clone();
            async move {
                let id = conn.id().to_string();
                // `f"User_{conn.id[:4]}"`; the end of our ids is what differs.
                let name = format!("User_{}", &id[id.len().saturating_sub(4)..]);
                users.rename(conn.id(), name.clone());
                let count = users.count();
                println!("[+] {name} joined ({count} online)");
                if let Some(server) = conn.server() {
                    let joined = json!({"username": name, "count": count});
                    let _ =
                        server.broadcast_with("user_joined", &joined, Filter::exclude([conn.id()]));
                }
            }
        })
        .on_disconnect(move |conn: Conn, _why: DisconnectReason| {
            let users = on_disconnect_users.clone();
            async move {
                let name = users
                    .lock()
                    .remove(&conn.id())
                    .unwrap_or_else(|| "Unknown".into());
                let count = users.count();
                println!("[-] {name} left ({count} online)");
                if let Some(server) = conn.server() {
                    let _ =
                        server.broadcast("user_left", &json!({"username": name, "count": count}));
                }
            }
        })
}

async fn handle_chat(
    server: Server,
    conn: Conn,
    State(users): State<Users>,
    Json(data): Json<ChatMessage>,
) -> Result<Json<Value>, HandlerError> {
    let username = users.name_of(conn.id()).unwrap_or_else(anonymous);
    server.broadcast_with(
        "chat",
        &json!({"from": username, "message": data.message, "time": now()}),
        Filter::exclude([conn.id()]),
    )?;
    Ok(Json(json!({"sent": true})))
}

async fn handle_set_name(
    server: Server,
    conn: Conn,
    State(users): State<Users>,
    Json(data): Json<SetName>,
) -> Result<Json<Value>, HandlerError> {
    if let Some(old) = users.rename(conn.id(), data.username.clone()) {
        server.broadcast("name_change", &json!({"old": old, "new": data.username}))?;
    }
    Ok(Json(json!({"username": data.username})))
}
