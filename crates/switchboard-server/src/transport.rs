//! The WebSocket transport: the one module that knows the socket library (axum's
//! WebSocket over tokio-tungstenite), so it can be swapped without touching the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use futures_util::stream::{SplitSink, SplitStream};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use switchboard_proto::Dialect;

use crate::Server;
use crate::conn::Frame;
use crate::connection::Mode;

/// How long a client has to finish its handshake (TLS, then the HTTP upgrade request).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type Sink = SplitSink<WebSocket, Message>;
pub(crate) type Stream = SplitStream<WebSocket>;

pub(crate) fn router(server: Server) -> axum::Router {
    let path = server.config().path.clone();
    let mut app = server
        .inner
        .routes
        .clone()
        .route(&path, ws_route(server.clone()));
    if let Some(echo) = &server.config().echo_path {
        app = app.route(echo, echo_route(server.clone()));
    }
    app.route("/health", get(health).with_state(server.clone()))
        .route("/rpc", get(methods).with_state(server))
}

/// Accepts connections until `stop` and serves each as HTTP/1.1 with upgrades, in a task
/// of its own that ends when the request is upgraded (the WebSocket then lives in its
/// own task) or the connection closes. `handshake` turns the TCP stream into the
/// transport: nothing for plain `ws://`, TLS for `wss://`. After `stop`, connections
/// still speaking plain HTTP finish their request and close.
pub(crate) async fn accept_loop<H, F, Io>(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    handshake: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F + Clone + Send + 'static,
    F: Future<Output = Option<Io>> + Send,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small frames go out at once: latency, not Nagle's batching (the writer
        // already batches what is queued).
        let _ = tcp.set_nodelay(true);
        let (handshake, app, stop) = (handshake.clone(), app.clone(), stop.clone());
        http.spawn(async move {
            let Ok(Some(io)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, remote)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    // Upgraded WebSockets live on in their own tasks; this ends plain
                    // HTTP keep-alive connections.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    http.close();
}

pub(crate) fn ws_route(server: Server) -> MethodRouter {
    get(upgrade).with_state(server)
}

pub(crate) fn echo_route(server: Server) -> MethodRouter {
    get(upgrade_echo).with_state(server)
}

async fn health(AxumState(server): AxumState<Server>) -> Response {
    axum::Json(server.health()).into_response()
}

/// `GET /rpc`: the methods, as `listall` returns them, for tools that generate clients.
async fn methods(AxumState(server): AxumState<Server>) -> Response {
    axum::Json(server.methods()).into_response()
}

async fn upgrade(
    AxumState(server): AxumState<Server>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: axum::http::Uri,
    extensions: Extensions,
) -> Response {
    let (ws, dialect) = match choose_dialect(&server, ws, uri.query()) {
        Ok(chosen) => chosen,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    accept(server, ws, &headers, &extensions, Mode::Messages(dialect))
}

/// The dialect a client asked for: `?dialect=` first, then a `switchboard.<dialect>`
/// subprotocol, then the server's default.
fn choose_dialect(
    server: &Server,
    ws: WebSocketUpgrade,
    query: Option<&str>,
) -> Result<(WebSocketUpgrade, Dialect), String> {
    let asked = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "dialect")
            .map(|(_, v)| v)
    });
    if let Some(name) = asked {
        return name.parse::<Dialect>().map(|d| (ws, d));
    }
    let offered: Vec<Dialect> = ws
        .requested_protocols()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .filter_map(|p| {
            Dialect::ALL
                .into_iter()
                .find(|d| d.subprotocol() == p.trim())
        })
        .collect();
    match offered.first() {
        Some(d) => Ok((ws.protocols([d.subprotocol()]), *d)),
        None => Ok((ws, server.config().default_dialect)),
    }
}

async fn upgrade_echo(
    AxumState(server): AxumState<Server>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    accept(server, ws, &headers, &extensions, Mode::Echo)
}

/// True if a browser page from this `Origin` may connect. Programs send no `Origin` and
/// are not affected; an empty list allows every origin.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|o| {
            allowed
                .iter()
                .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(o))
        }),
    }
}

fn accept(
    server: Server,
    ws: WebSocketUpgrade,
    headers: &HeaderMap,
    extensions: &Extensions,
    mode: Mode,
) -> Response {
    if server.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down").into_response();
    }
    if !origin_allowed(&server.config().allowed_origins, headers) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "connection refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "FORBIDDEN: origin not allowed").into_response();
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
        .on_upgrade(move |socket| {
            // The connection gets a task of its own that holds only its state: axum's
            // upgrade task also keeps what it built the socket with, for as long as the
            // callback's future runs. That task ends here.
            tokio::spawn(crate::connection::run(server, socket, remote, mode, token));
            std::future::ready(())
        })
}

/// The frame as this client reads it: native text is translated into its dialect
/// (`None`: nothing to send in that dialect).
pub(crate) fn to_message(frame: Frame, dialect: Dialect, client_id: &str) -> Option<Message> {
    use switchboard_proto::dialect::{datadivr, metafor};
    Some(match frame {
        Frame::Text(t) => match dialect {
            Dialect::Datadivr => Message::Text(datadivr::outgoing(t.as_str(), client_id)?.into()),
            Dialect::Metafor => Message::Text(metafor::outgoing(t.as_str())?.into()),
            _ => Message::Text(t),
        },
        Frame::Dialect(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
        Frame::Ping => Message::Ping(bytes::Bytes::new()),
    })
}

pub(crate) fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// What went wrong reading from a client.
pub(crate) enum ReadError {
    /// A frame or message over the size limit.
    TooLarge,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A WebSocket protocol violation (bad opcode, reserved bits, unmasked frame, ...).
    Protocol(String),
    /// The socket failed or closed.
    Lost(String),
}

pub(crate) fn classify_read_error(err: &axum::Error) -> ReadError {
    use std::error::Error as _;
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(ws) = e.downcast_ref::<WsError>() {
            return match ws {
                WsError::Capacity(_) => ReadError::TooLarge,
                WsError::Utf8(_) => ReadError::InvalidUtf8,
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                    ReadError::Lost("connection reset without a close frame".into())
                }
                WsError::Protocol(p) => ReadError::Protocol(p.to_string()),
                other => ReadError::Lost(other.to_string()),
            };
        }
        source = e.source();
    }
    ReadError::Lost(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap_or_else(|_| unreachable!()));
        }
        h
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com/".to_owned()];
        assert!(origin_allowed(&[], &headers(Some("https://evil.example"))));
        assert!(origin_allowed(
            &allowed,
            &headers(Some("https://app.example.com"))
        ));
        assert!(origin_allowed(
            &allowed,
            &headers(Some("https://APP.example.com"))
        ));
        assert!(!origin_allowed(
            &allowed,
            &headers(Some("https://evil.example"))
        ));
        assert!(!origin_allowed(&allowed, &headers(Some("null"))));
        assert!(
            origin_allowed(&allowed, &headers(None)),
            "programs send no Origin"
        );
        assert!(origin_allowed(
            &["*".to_owned()],
            &headers(Some("https://x"))
        ));
    }
}
