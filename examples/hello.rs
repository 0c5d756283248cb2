//! The README's server example: `cargo run -p switchboard-examples --bin hello`.

use serde::Deserialize;
use switchboard_server::{Conn, Filter, HandlerError, Json, Server, ServerConfig};

#[derive(Deserialize)]
struct Chat {
    message: String,
}

#[tokio::main]
async fn main() -> Result<(), switchboard_server::ServeError> {
    Server::builder()
        .config(ServerConfig::new("127.0.0.1", 8080).name("ChatServer"))
        .on(
            "chat",
            |server: Server, conn: Conn, Json(chat): Json<Chat>| async move {
                // Everyone else gets the message; the sender gets {"sent": true} back.
                let msg = serde_json::json!({"from": conn.id(), "message": chat.message});
                server.broadcast_with("chat", &msg, Filter::exclude([conn.id()]))?;
                Ok::<_, HandlerError>(Json(serde_json::json!({"sent": true})))
            },
        )
        .on_connect(|conn: Conn| async move {
            conn.join("lobby").ok();
        })
        .build()
        .run() // until Ctrl-C / SIGTERM
        .await
}
