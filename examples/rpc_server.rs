//! netconduit's RPC examples, rewritten with switchboard: typed parameters validated
//! from their JSON Schema (the seed's `create_user` with its constraints), errors that
//! reach the caller with a code, methods that need authentication, and `listall`.
//!
//! `cargo run -p switchboard-examples --bin rpc_server`, then call it from any client:
//! `{"type":"rpc","ref":"1","payload":{"method":"add","params":{"a":1,"b":2}}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchboard_server::{HandlerError, Identity, Json, RpcMethod, Server, ServerConfig, State};

/// Echo back the message.
#[derive(Deserialize, JsonSchema)]
struct Echo {
    message: String,
}

/// Add two numbers.
#[derive(Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

/// Divide a by b.
#[derive(Deserialize, JsonSchema)]
struct Divide {
    a: f64,
    b: f64,
}

/// Create a new user.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateUserRequest {
    /// 3 to 30 characters.
    #[schemars(length(min = 3, max = 30))]
    username: String,
    /// A valid email address.
    #[schemars(email)]
    email: String,
    /// 0 to 150.
    #[schemars(range(min = 0, max = 150))]
    age: u8,
    /// Defaults to none.
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Clone, Serialize, JsonSchema)]
struct UserResponse {
    id: u64,
    username: String,
    email: String,
    created_at: String,
}

/// Find a user by id.
#[derive(Deserialize, JsonSchema)]
struct GetUser {
    user_id: u64,
}

/// The "database".
#[derive(Clone, Default)]
struct Users(Arc<Mutex<HashMap<u64, UserResponse>>>);

#[tokio::main]
async fn main() -> Result<(), switchboard_server::ServeError> {
    tracing_subscriber::fmt::init();
    let started = std::time::Instant::now();
    Server::builder()
        .config(ServerConfig {
            password: std::env::var("RPC_PASSWORD").ok(),
            auth_required: false, // anonymous callers may use the open methods
            ..ServerConfig::new("127.0.0.1", 8080).name("RpcServer")
        })
        .state(Users::default())
        .rpc("echo", |e: Echo| async move { e.message })
        .rpc("add", |p: Add| async move { p.a + p.b })
        .rpc("get_status", move |(): (), server: Server| async move {
            Json(serde_json::json!({
                "status": "online",
                "clients": server.connection_count(),
                "uptime": started.elapsed().as_secs_f64(),
            }))
        })
        .rpc("divide", |p: Divide| async move {
            if p.b == 0.0 {
                return Err(HandlerError::new(
                    "DIVISION_BY_ZERO",
                    "Cannot divide by zero",
                ));
            }
            Ok(p.a / p.b)
        })
        .rpc(
            "create_user",
            |req: CreateUserRequest, State(users): State<Users>| async move {
                let mut users = users
                    .0
                    .lock()
                    .map_err(|_| HandlerError::internal("poisoned"))?;
                let id = users.len() as u64 + 1;
                let _roles = req.roles;
                let _age = req.age;
                let user = UserResponse {
                    id,
                    username: req.username,
                    email: req.email,
                    created_at: format!("{:?}", std::time::SystemTime::now()),
                };
                users.insert(id, user.clone());
                Ok::<_, HandlerError>(Json(user))
            },
        )
        .rpc(
            "get_user",
            |q: GetUser, State(users): State<Users>| async move {
                let users = users
                    .0
                    .lock()
                    .map_err(|_| HandlerError::internal("poisoned"))?;
                users.get(&q.user_id).cloned().map(Json).ok_or_else(|| {
                    HandlerError::new("USER_NOT_FOUND", format!("User {} not found", q.user_id))
                })
            },
        )
        .rpc_method(
            RpcMethod::new("whoami", |(): (), who: Identity| async move { who.id })
                .description("Who the caller authenticated as (needs auth).")
                .requires_auth(),
        )
        .build()
        .run()
        .await
}
