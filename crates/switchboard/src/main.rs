//! `switchboard`: a ready real-time hub on the switchboard server library.

use std::time::Duration;

use anyhow::Context;
use axum::response::Html;
use axum::routing::get;
use clap::{Parser, Subcommand};
use switchboard_server::{Server, ServerConfig};
use tracing_subscriber::EnvFilter;

const INDEX: &str = include_str!("index.html");

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
    /// Examples:
    ///   switchboard serve
    ///   switchboard serve --host 0.0.0.0 --port 9000 --name chat
    ///   SWITCHBOARD_PORT=0 switchboard serve     # any free port; the address is printed
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SWITCHBOARD_PORT", default_value_t = 8080)]
    port: u16,
    /// The server's name, sent to clients in `connected`.
    #[arg(long, env = "SWITCHBOARD_NAME", default_value = "switchboard")]
    name: String,
    /// Most concurrent connections.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Largest incoming message in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024)]
    max_message_size: usize,
    /// Seconds shutdown waits for in-flight handlers.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}

fn hub(args: &ServeArgs) -> Server {
    let config = ServerConfig {
        host: args.host.clone(),
        port: args.port,
        name: args.name.clone(),
        max_connections: args.max_connections,
        max_message_size: args.max_message_size,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        relay_unhandled: true,
        ..ServerConfig::default()
    };
    Server::builder()
        .config(config)
        .routes(axum::Router::new().route("/", get(|| async { Html(INDEX) })))
        .build()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = hub(&args);
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // On stdout, for people and for scripts that started us on port 0.
    println!("switchboard listening on ws://{local}/ws (page: http://{local}/)");
    let stopper = server.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down");
        stopper.shutdown().await;
    });
    server.serve(listener).await.context("server failed")?;
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
