//! The WebSocket transport: the one module that knows the socket library (axum's
//! WebSocket over tokio-tungstenite), so it can be swapped without touching the rest.

use std::net::SocketAddr;

use axum::extract::State as AxumState;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use futures_util::stream::{SplitSink, SplitStream};

use crate::Server;
use crate::conn::Frame;

pub(crate) type Sink = SplitSink<WebSocket, Message>;
pub(crate) type Stream = SplitStream<WebSocket>;

pub(crate) fn router(server: Server) -> axum::Router {
    let path = server.config().path.clone();
    server
        .inner
        .routes
        .clone()
        .route(&path, ws_route(server.clone()))
        .route("/health", get(health).with_state(server))
}

pub(crate) fn ws_route(server: Server) -> MethodRouter {
    get(upgrade).with_state(server)
}

async fn health(AxumState(server): AxumState<Server>) -> Response {
    axum::Json(server.health()).into_response()
}

async fn upgrade(
    AxumState(server): AxumState<Server>,
    ws: WebSocketUpgrade,
    extensions: Extensions,
) -> Response {
    if server.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down").into_response();
    }
    // Counted before the upgrade so a shutdown waits for this connection too.
    let token = server.inner.tracker.token();
    let remote = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let config = server.config();
    ws.read_buffer_size(config.buffer_size)
        .write_buffer_size(config.buffer_size)
        // Frames are queued in the connection's outbox; the socket buffer stays small.
        .max_write_buffer_size(config.buffer_size.max(config.max_message_size) * 2)
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size)
        .on_upgrade(move |socket| async move {
            crate::connection::run(server, socket, remote).await;
            drop(token);
        })
}

pub(crate) fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
    }
}

pub(crate) fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// True if a read error means the peer sent a message over the size limit.
pub(crate) fn is_too_large(err: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(ts) = e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(ts, tokio_tungstenite::tungstenite::Error::Capacity(_));
        }
        source = e.source();
    }
    false
}
