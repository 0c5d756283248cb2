//! The WebSocket upgrade: the request's checks (RFC 6455 headers, origin, shutdown),
//! the dialect the client asked for, and the 101 answer; the connection then runs in a
//! task of its own ([`crate::connection`]).

use std::net::SocketAddr;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use switchboard_proto::{Dialect, msgpack};

use super::forwarded::client_addr;
use crate::auth::{Credentials, Outcome};
use crate::connection::Mode;
use crate::ws::{self, WebSocket};
use crate::{Identity, Server};

pub(crate) fn ws_route(server: Server) -> MethodRouter {
    get(upgrade).with_state(server)
}

pub(crate) fn echo_route(server: Server) -> MethodRouter {
    get(upgrade_echo).with_state(server)
}

async fn upgrade(AxumState(server): AxumState<Server>, req: Request) -> Response {
    let (asked, resume, token) = {
        let query = |name: &str| {
            req.uri().query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_owned())
            })
        };
        // `?resume=1`: the client's first message (after `auth`) is a `resume`.
        let resume = query("resume").is_some_and(|v| v != "0" && v != "false");
        (query("dialect"), resume, query("token"))
    };
    let Wire {
        dialect,
        msgpack,
        subprotocol,
    } = match choose_dialect(&server, asked.as_deref(), req.headers()) {
        Ok(chosen) => chosen,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    // `?token=`: checked here, so a refused client costs no WebSocket.
    let identity = match token {
        Some(token) if server.auth().is_configured() => {
            let remote = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| client_addr(c.0, req.headers(), &server.config().trusted_proxies));
            match check_token(&server, remote, token).await {
                Ok(identity) => Some(Box::new(identity)),
                Err(refusal) => return refusal,
            }
        }
        _ => None,
    };
    let listen_first = asked.is_none()
        && subprotocol.is_none()
        && dialect == Dialect::Native
        && !server.config().first_frame_wait.is_zero()
        && speaks_first(req.headers());
    let mode = Mode::Messages {
        dialect,
        msgpack,
        resume,
        identity,
        listen_first,
    };
    accept(server, req, mode, subprotocol)
}

/// The identity a `?token=` proves, or the HTTP refusal (401, or 429 when the address
/// failed too often lately).
async fn check_token(
    server: &Server,
    remote: Option<SocketAddr>,
    token: String,
) -> Result<Identity, Response> {
    let credentials = Credentials::from_token(token, remote);
    let checked = server.auth().check(credentials, String::new());
    match tokio::time::timeout(server.config().auth_timeout, checked).await {
        Ok(Outcome::Accepted(identity)) => Ok(identity),
        Ok(Outcome::Rejected(message)) => {
            tracing::info!(remote = ?remote, "authentication failed at the upgrade");
            if let Some(metrics) = server.metrics() {
                metrics.auth_failed();
            }
            Err((StatusCode::UNAUTHORIZED, format!("AUTH_FAILED: {message}")).into_response())
        }
        Ok(Outcome::Throttled(wait)) => Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("RATE_LIMITED: {}", crate::auth::throttled_message(wait)),
        )
            .into_response()),
        Err(_) => Err((StatusCode::UNAUTHORIZED, "AUTH_TIMEOUT").into_response()),
    }
}

/// True for a client that may speak first in a dialect it did not name: Python's
/// `websockets` library (`User-Agent: Python/3.x websockets/N`), which datadivr's
/// client uses.
fn speaks_first(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|ua| ua.to_str().ok())
        .is_some_and(|ua| ua.contains("websockets/"))
}

/// What a connection speaks on the wire, and the subprotocol answered for it.
struct Wire {
    dialect: Dialect,
    /// Native envelopes in MessagePack binary frames.
    msgpack: bool,
    subprotocol: Option<&'static str>,
}

/// The dialect a client asked for: `?dialect=` first, then a `switchboard.<dialect>`
/// subprotocol (answered in the handshake), then the server's default. The native
/// dialect in MessagePack is the subprotocol `switchboard.v1.msgpack` (with no
/// `?dialect=`, or `?dialect=native`).
fn choose_dialect(
    server: &Server,
    asked: Option<&str>,
    headers: &HeaderMap,
) -> Result<Wire, String> {
    let asked = asked.map(str::parse::<Dialect>).transpose()?;
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .map(str::trim);
    let mut wire = Wire {
        dialect: asked.unwrap_or(server.config().default_dialect),
        msgpack: false,
        subprotocol: None,
    };
    for p in offered {
        if p == msgpack::SUBPROTOCOL && asked.is_none_or(|d| d == Dialect::Native) {
            wire.dialect = Dialect::Native;
            wire.msgpack = true;
            wire.subprotocol = Some(msgpack::SUBPROTOCOL);
            break;
        }
        if asked.is_some() {
            continue;
        }
        if let Some(d) = Dialect::ALL.into_iter().find(|d| d.subprotocol() == p) {
            wire.dialect = d;
            wire.subprotocol = Some(d.subprotocol());
            break;
        }
    }
    Ok(wire)
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
fn accept_key(headers: &HeaderMap) -> Result<String, Refusal> {
    if !header_has(headers, header::CONNECTION, "upgrade") {
        return Err(Refusal::Bad(
            "a WebSocket endpoint: `Connection: upgrade` is missing",
        ));
    }
    if !header_has(headers, header::UPGRADE, "websocket") {
        return Err(Refusal::Bad(
            "a WebSocket endpoint: `Upgrade: websocket` is missing",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refusal::Version);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if is_websocket_key(key.as_bytes()) => Ok(ws::accept_key(key.as_bytes())),
        Some(_) => Err(Refusal::Bad(
            "`Sec-WebSocket-Key` must be 16 bytes in base64 (24 characters)",
        )),
        None => Err(Refusal::Bad("`Sec-WebSocket-Key` is missing")),
    }
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 400, with the reason.
    Bad(&'static str),
    /// A version other than 13: 426 with `Sec-WebSocket-Version: 13` (RFC 6455 4.4).
    Version,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Bad(why) => (StatusCode::BAD_REQUEST, why).into_response(),
            Refusal::Version => (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                "`Sec-WebSocket-Version: 13` is required",
            )
                .into_response(),
        }
    }
}

/// A `Sec-WebSocket-Key` as RFC 6455 4.1 asks: 16 bytes in base64, so 24 characters of
/// the base64 alphabet ending in `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Checks the upgrade request and answers it with 101; the
/// connection then runs in a task of its own.
fn accept(server: Server, mut req: Request, mode: Mode, subprotocol: Option<&str>) -> Response {
    let headers = req.headers();
    let accept_key = match accept_key(headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
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
        .map(|c| client_addr(c.0, headers, &server.config().trusted_proxies));
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
    let token = server.track();
    let settings = server.socket_settings();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "the upgrade failed");
                return;
            }
        };
        let ws = WebSocket::from_upgraded(upgraded, settings);
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
            let text = match why {
                Refusal::Bad(text) => text,
                Refusal::Version => "`Sec-WebSocket-Version: 13` is required",
            };
            assert!(text.contains(missing), "{text}");
        }
        for bad_key in [
            "",
            "short",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ!=",
            "dGhlIHNhbXBsZSBub25jZQ==x",
        ] {
            let mut h = h.clone();
            h.insert(header::SEC_WEBSOCKET_KEY, bad_key.parse().unwrap());
            assert!(
                matches!(accept_key(&h), Err(Refusal::Bad(_))),
                "{bad_key:?}"
            );
        }
        h.insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert_eq!(accept_key(&h), Err(Refusal::Version));
        let response = Refusal::Version.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
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
