//! The "Full Chat Server" of netconduit's Server Guide (seed 003), written with
//! switchboard; the program itself is [`switchboard_examples::chat`].
//!
//! Run it with `cargo run -p switchboard-examples --bin chat_server` (the password is
//! the seed's `chat_secret`, or `CHAT_PASSWORD`), then connect a client to
//! ws://127.0.0.1:8080/ws, authenticate, and call or send:
//! `{"type":"auth","payload":{"password":"chat_secret"}}`,
//! `{"type":"rpc","ref":"1","payload":{"method":"set_username","params":{"username":"ada"}}}`,
//! `{"type":"chat","payload":{"message":"hello"}}`,
//! `{"type":"rpc","ref":"2","payload":{"method":"get_users"}}`.
//!
//! It listens on 127.0.0.1, not the seed's 0.0.0.0: reachable from this machine only
//! until you mean otherwise (docs/cli.md says why each default differs).

use switchboard_server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), switchboard_server::ServeError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let password = std::env::var("CHAT_PASSWORD").unwrap_or_else(|_| "chat_secret".to_owned());
    let config = ServerConfig {
        password: Some(password),
        ..ServerConfig::new("127.0.0.1", 8080).name("ChatServer")
    };
    switchboard_examples::chat::chat_server(Server::builder().config(config))
        .build()
        .run()
        .await
}
