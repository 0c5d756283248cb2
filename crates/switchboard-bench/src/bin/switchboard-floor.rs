//! `switchboard-floor`: the floor the benchmarks compare against.

#[path = "../json_floor.rs"]
mod json_floor;
#[path = "../socket_config.rs"]
mod socket_config;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use socket_config::ws_config;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The start of a fan-out tick the floor broadcasts: the bare payload.
const BARE_TICK: &str = r#"{"t":"#;
/// The start of a fan-out tick shaped like switchboard's delivery of it.
const ENVELOPED_TICK: &str = r#"{"type":"tick","payload":"#;

/// `switchboard bench-floor`: a bare tokio-tungstenite server with 4 KiB buffers. It
/// echoes every text frame to its sender, except fan-out ticks (frames starting with
/// `{"t":` or `{"type":"tick","payload":`), which it broadcasts as they are to every
/// other connection (the floor for fan-out).
pub async fn floor(port: u16) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::sync::mpsc;
    type Peers = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("floor listening on ws://{}/", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let mut next = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        next += 1;
        let id = next;
        let peers = peers.clone();
        tokio::spawn(async move {
            let Ok(ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::channel::<Message>(8192);
            if let Ok(mut p) = peers.lock() {
                p.insert(id, tx.clone());
            }
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    while let Ok(m) = rx.try_recv() {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = &msg {
                    let text = t.as_str();
                    if text.starts_with(BARE_TICK) || text.starts_with(ENVELOPED_TICK) {
                        let targets: Vec<_> = peers
                            .lock()
                            .map(|p| {
                                p.iter()
                                    .filter(|(k, _)| **k != id)
                                    .map(|(_, v)| v.clone())
                                    .collect()
                            })
                            .unwrap_or_default();
                        for t2 in targets {
                            let _ = t2.try_send(msg.clone());
                        }
                        continue;
                    }
                }
                if msg.is_text() || msg.is_binary() {
                    let _ = tx.send(msg).await;
                }
            }
            if let Ok(mut p) = peers.lock() {
                p.remove(&id);
            }
            writer.abort();
        });
    }
}

/// `--plain`: a bare tokio-tungstenite server that only echoes, one task per
/// connection reading a frame and writing it back (the floor for echo and RPC).
pub async fn plain(port: u16) -> anyhow::Result<()> {
    accept_each(port, |mut ws| async move {
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Accepts WebSocket connections on `port`, each served by `serve` in a task of its own.
pub async fn accept_each<F, Serving>(port: u16, serve: F) -> anyhow::Result<()>
where
    F: Fn(WebSocketStream<TcpStream>) -> Serving + Clone + Send + 'static,
    Serving: Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("floor listening on ws://{}/", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let serve = serve.clone();
        tokio::spawn(async move {
            if let Ok(ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
            {
                serve(ws).await;
            }
        });
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let port = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let served = if std::env::args().any(|a| a == "--plain") {
        plain(port).await
    } else if std::env::args().any(|a| a == "--json") {
        json_floor::json(port).await
    } else {
        floor(port).await
    };
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-floor: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
