//! The WebSocket transport: the one module that knows the socket library
//! (tokio-tungstenite, on connections upgraded by hyper), so it can be swapped without
//! touching the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
pub(crate) use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
pub(crate) use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use switchboard_proto::Dialect;

use crate::Server;
use crate::conn::Frame;
use crate::connection::Mode;

/// How long a client has to finish its handshake (TLS, then the HTTP upgrade request).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

async fn upgrade(AxumState(server): AxumState<Server>, req: Request) -> Response {
    let asked = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "dialect")
            .map(|(_, v)| v.to_owned())
    });
    let (dialect, subprotocol) = match choose_dialect(&server, asked.as_deref(), req.headers()) {
        Ok(chosen) => chosen,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    accept(server, req, Mode::Messages(dialect), subprotocol)
}

/// The dialect a client asked for: `?dialect=` first, then a `switchboard.<dialect>`
/// subprotocol (answered in the handshake), then the server's default.
fn choose_dialect(
    server: &Server,
    asked: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Dialect, Option<&'static str>), String> {
    if let Some(name) = asked {
        return name.parse::<Dialect>().map(|d| (d, None));
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .find_map(|p| {
            Dialect::ALL
                .into_iter()
                .find(|d| d.subprotocol() == p.trim())
        });
    Ok(match offered {
        Some(d) => (d, Some(d.subprotocol())),
        None => (server.config().default_dialect, None),
    })
}

async fn upgrade_echo(AxumState(server): AxumState<Server>, req: Request) -> Response {
    accept(server, req, Mode::Echo, None)
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

/// True if the header holds `token` in its comma-separated list (case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` answer to a valid upgrade request (RFC 6455 section
/// 4.2.1), or what is wrong with it.
fn accept_key(headers: &HeaderMap) -> Result<String, &'static str> {
    if !header_has(headers, header::CONNECTION, "upgrade") {
        return Err("a WebSocket endpoint: `Connection: upgrade` is missing");
    }
    if !header_has(headers, header::UPGRADE, "websocket") {
        return Err("a WebSocket endpoint: `Upgrade: websocket` is missing");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("`Sec-WebSocket-Version: 13` is required");
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) => Ok(derive_accept_key(key.as_bytes())),
        None => Err("`Sec-WebSocket-Key` is missing"),
    }
}

/// Checks the upgrade request and answers it with 101; the
/// connection then runs in a task of its own.
fn accept(server: Server, mut req: Request, mode: Mode, subprotocol: Option<&str>) -> Response {
    let headers = req.headers();
    let accept_key = match accept_key(headers) {
        Ok(key) => key,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    if server.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down").into_response();
    }
    if !origin_allowed(&server.config().allowed_origins, headers) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "connection refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "FORBIDDEN: origin not allowed").into_response();
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Counted before the upgrade so a shutdown waits for this connection too.
    let token = server.inner.tracker.token();
    let config = websocket_config(server.config());
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "the upgrade failed");
                return;
            }
        };
        let ws = websocket(upgraded, config).await;
        // The connection gets a task of its own, holding only its own state; this one,
        // which also holds what the upgrade took, ends here.
        tokio::spawn(crate::connection::run(server, ws, remote, mode, token));
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key);
    if let Some(p) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The socket library's settings: small buffers (frames wait in the connection's
/// outbox, not in the socket's buffer), and the message size limit.
fn websocket_config(config: &crate::ServerConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.buffer_size)
        .write_buffer_size(config.buffer_size)
        .max_write_buffer_size(config.buffer_size.max(config.max_message_size) * 2)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}

/// The WebSocket over an upgraded connection. A plain TCP connection (the server's own
/// listener, or axum's) is taken back from hyper, so reads go straight to the socket
/// and can wait on its readiness; anything else (TLS) stays behind hyper's wrapper.
async fn websocket(upgraded: hyper::upgrade::Upgraded, config: WebSocketConfig) -> Ws {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) if parts.read_buf.is_empty() => {
            WebSocketStream::from_raw_socket(
                Io::Tcp(parts.io.into_inner()),
                Role::Server,
                Some(config),
            )
            .await
        }
        Ok(parts) => {
            // The client sent frames right behind its request: they come first.
            WebSocketStream::from_partially_read(
                Io::Tcp(parts.io.into_inner()),
                parts.read_buf.to_vec(),
                Role::Server,
                Some(config),
            )
            .await
        }
        Err(upgraded) => {
            WebSocketStream::from_raw_socket(
                Io::Other(TokioIo::new(upgraded)),
                Role::Server,
                Some(config),
            )
            .await
        }
    }
}

/// A connection's WebSocket.
pub(crate) type Ws = WebSocketStream<Io>;

/// The byte stream under a WebSocket: a TCP socket, or hyper's upgraded connection.
pub(crate) enum Io {
    Tcp(TcpStream),
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

impl Io {
    /// Ready when a read may find data: always, unless this is a TCP socket that the
    /// kernel says has nothing (then the task is woken when it has). Lets the
    /// connection skip asking the WebSocket layer for a frame that cannot be there.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            // An error is for the read itself to report.
            Io::Tcp(tcp) => tcp.poll_read_ready(cx).map(|_| ()),
            Io::Other(_) => Poll::Ready(()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Other(o) => Pin::new(o).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Other(o) => Pin::new(o).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Other(o) => Pin::new(o).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Other(o) => Pin::new(o).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Other(o) => Pin::new(o).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(t) => t.is_write_vectored(),
            Io::Other(o) => o.is_write_vectored(),
        }
    }
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
        code: code.into(),
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

pub(crate) fn classify_read_error(err: &WsError) -> ReadError {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match err {
        WsError::Capacity(_) => ReadError::TooLarge,
        WsError::Utf8(_) => ReadError::InvalidUtf8,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ReadError::Lost("connection reset without a close frame".into())
        }
        WsError::Protocol(p) => ReadError::Protocol(p.to_string()),
        other => ReadError::Lost(other.to_string()),
    }
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
    fn upgrade_requests_are_checked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        // RFC 6455's own example.
        assert_eq!(
            accept_key(&h).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        for (name, missing) in [
            (header::CONNECTION, "Connection"),
            (header::UPGRADE, "Upgrade"),
            (header::SEC_WEBSOCKET_VERSION, "Version"),
            (header::SEC_WEBSOCKET_KEY, "Key"),
        ] {
            let mut without = h.clone();
            without.remove(name);
            let why = accept_key(&without).unwrap_err();
            assert!(why.contains(missing), "{why}");
        }
        h.insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert!(accept_key(&h).is_err());
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
