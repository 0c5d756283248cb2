//! The "Full Chat Server" of netconduit's Server Guide, written with switchboard.
//!
//! Run it with `cargo run -p switchboard-examples --bin chat_server`, then connect any
//! WebSocket client to ws://127.0.0.1:8080/ws and send
//! `{"type":"set_name","payload":{"username":"ada"}}` and
//! `{"type":"chat","payload":{"message":"hello"}}`.
//!
//! Users are kept in application state, keyed by connection id. (The seed also has
//! `get_users` / `get_user_count` RPCs; typed RPC arrives in its own release, so here
//! they are message handlers that return their answer.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;
use switchboard_server::{
    Conn, ConnId, DisconnectReason, Filter, HandlerError, Json, Server, ServerConfig, State,
};

#[derive(Clone, Default)]
struct Users(Arc<Mutex<HashMap<ConnId, String>>>);

impl Users {
    fn get(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct SetName {
    username: String,
}

async fn handle_chat(
    server: Server,
    conn: Conn,
    State(users): State<Users>,
    Json(data): Json<ChatMessage>,
) -> Result<Json<serde_json::Value>, HandlerError> {
    let username = users
        .get()
        .get(&conn.id())
        .cloned()
        .unwrap_or_else(|| "Anonymous".into());
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
) -> Result<Json<serde_json::Value>, HandlerError> {
    if data.username.trim().is_empty() || data.username.len() > 30 {
        return Err(HandlerError::new(
            "INVALID_USERNAME",
            "a username has 1 to 30 characters",
        ));
    }
    let old = users.get().insert(conn.id(), data.username.clone());
    if let Some(old) = old {
        server.broadcast("name_change", &json!({"old": old, "new": data.username}))?;
    }
    Ok(Json(json!({"username": data.username})))
}

async fn get_users(State(users): State<Users>) -> Json<Vec<String>> {
    let mut names: Vec<String> = users.get().values().cloned().collect();
    names.sort();
    Json(names)
}

async fn get_user_count(State(users): State<Users>) -> Json<usize> {
    Json(users.get().len())
}

#[tokio::main]
async fn main() -> Result<(), switchboard_server::ServeError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let users = Users::default();
    let (on_connect_users, on_disconnect_users) = (users.clone(), users.clone());

    let server = Server::builder()
        .config(ServerConfig::new("127.0.0.1", 8080).name("ChatServer"))
        .state(users)
        .on("chat", handle_chat)
        .on("set_name", handle_set_name)
        .on("get_users", get_users)
        .on("get_user_count", get_user_count)
        .on_startup(|srv: Server| async move {
            let addr = srv.local_addr().map(|a| a.to_string()).unwrap_or_default();
            println!("Chat server running on ws://{addr}/ws");
        })
        .on_connect(move |conn: Conn| {
            let users = on_connect_users.clone();
            async move {
                let id = conn.id().to_string();
                let name = format!("User_{}", &id[id.len() - 4..]);
                let count = {
                    let mut u = users.get();
                    u.insert(conn.id(), name.clone());
                    u.len()
                };
                println!("[+] {name} joined ({count} online)");
                if let Some(server) = conn.server() {
                    server
                        .broadcast_with(
                            "user_joined",
                            &json!({"username": name, "count": count}),
                            Filter::exclude([conn.id()]),
                        )
                        .ok();
                }
            }
        })
        .on_disconnect(move |conn: Conn, _reason: DisconnectReason| {
            let users = on_disconnect_users.clone();
            async move {
                let (name, count) = {
                    let mut u = users.get();
                    (
                        u.remove(&conn.id()).unwrap_or_else(|| "Unknown".into()),
                        u.len(),
                    )
                };
                println!("[-] {name} left ({count} online)");
                if let Some(server) = conn.server() {
                    server
                        .broadcast("user_left", &json!({"username": name, "count": count}))
                        .ok();
                }
            }
        })
        .build();
    server.run().await
}
