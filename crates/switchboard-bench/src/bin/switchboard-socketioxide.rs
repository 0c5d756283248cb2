//! socketioxide (the Rust Socket.IO server) doing what `switchboard-bench` asks of every
//! server, as `bench/socketio/server.mjs` does for Node's Socket.IO: `echo` answered by
//! an emit, `rpc` answered by its ack, `tick` broadcast to the others, rooms. WebSocket
//! transport only, no compression. Prints `socketioxide listening on ws://ADDR/`.

use axum::Router;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};

async fn on_connect(socket: SocketRef) {
    socket.on("echo", async |s: SocketRef, Data::<Value>(m)| {
        let _ = s.emit("echo", &m);
    });
    socket.on("rpc", async |ack: AckSender, Data::<Value>(m)| {
        let _ = ack.send(&m);
    });
    socket.on("tick", async |s: SocketRef, Data::<Value>(m)| {
        let _ = s.broadcast().emit("tick", &m).await;
    });
    socket.on("join", async |s: SocketRef, Data::<String>(room)| {
        s.join(room.clone());
        let _ = s.emit("joined", &room);
    });
    socket.on("room", async |s: SocketRef, Data::<Value>(m)| {
        if let Some(room) = m.get("room").and_then(Value::as_str).map(str::to_owned) {
            let _ = s.to(room).emit("tick", &m).await;
        }
    });
    socket.on("publisher", async || {});
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let (layer, io) = SocketIo::builder()
        .transports([socketioxide::TransportType::Websocket])
        .max_payload(1 << 20)
        .build_layer();
    io.ns("/", on_connect);
    let app = Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("socketioxide listening on ws://{}/", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
