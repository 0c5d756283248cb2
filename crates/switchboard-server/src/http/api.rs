//! The server API over HTTP, for backends in any language: publish to a room, broadcast,
//! send to a client, disconnect a client, a room's members, counts. Served under
//! `/api` when [`ServerConfig::api_key`](crate::ServerConfig::api_key) is set, and only
//! to requests that carry it (`Authorization: Bearer <key>`, compared in constant
//! time; failures are throttled per address). JSON in and out; errors are
//! `{"error": {"code", "message"}}` with switchboard's codes. `GET /api/openapi.json`
//! describes it all.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::ErrorCode;

use crate::auth::{Throttle, password_matches};
use crate::{ConnId, Server};

/// The OpenAPI document, served at `/api/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// The routes, for [`router`](super::router) to nest under `/api`.
pub(crate) fn routes(server: Server, key: String) -> axum::Router {
    let gate = Gate {
        key,
        throttle: std::sync::Arc::new(Throttle::new(10, Duration::from_secs(60))),
    };
    let limit = server.config().max_message_size;
    axum::Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/send", post(send))
        .route("/disconnect", post(disconnect))
        .route("/rooms/{room}/members", get(members))
        .route("/rooms/{room}/presence", get(presence))
        .route("/rooms/{room}/history", get(history))
        .route("/info", get(info))
        .route("/stats", get(super::stats::stats))
        .route("/clients", get(super::stats::clients))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(gate, require_key))
        .route("/openapi.json", get(openapi))
        .with_state(server)
}

#[derive(Clone)]
struct Gate {
    key: String,
    throttle: std::sync::Arc<Throttle>,
}

/// Lets through only requests with the API key; an address that keeps failing is
/// throttled (429) before its key is even compared.
async fn require_key(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let now = std::time::Instant::now();
    if let Some(wait) = ip.and_then(|ip| gate.throttle.blocked(ip, now)) {
        let message = crate::auth::throttled_message(wait);
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            &message,
        );
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match presented {
        Some(key) if password_matches(key, &gate.key) => next.run(req).await,
        _ => {
            if let Some(ip) = ip {
                gate.throttle.failed(ip, now);
            }
            error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::AuthFailed,
                "a valid API key is required: Authorization: Bearer <key>",
            )
        }
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({"error": {"code": code.as_str(), "message": message}});
    (status, Json(body)).into_response()
}

/// A body that is not the JSON an endpoint wants.
fn bad_body(rejection: &JsonRejection) -> Response {
    let status = match rejection {
        JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::MessageTooLarge
    } else {
        ErrorCode::InvalidPayload
    };
    error(status, code, &rejection.body_text())
}

fn sent(result: Result<usize, crate::SendError>) -> Response {
    match result {
        Ok(n) => Json(json!({"delivered": n})).into_response(),
        Err(e) => send_error(&e),
    }
}

fn send_error(e: &crate::SendError) -> Response {
    use crate::SendError as E;
    let (status, code) = match e {
        E::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::ClientNotFound),
        E::InvalidRoom(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom),
        E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::MessageTooLarge),
        E::Encode(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload),
        _ => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Internal),
    };
    error(status, code, &e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    room: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "empty")]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "empty")]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    client: Option<ConnId>,
    user: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "empty")]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    client: Option<ConnId>,
    user: Option<String>,
    reason: Option<String>,
}

/// `client` or `user`, exactly one.
fn one_of(client: Option<ConnId>, user: Option<String>) -> Result<Recipient, Box<Response>> {
    match (client, user) {
        (Some(id), None) => Ok(Recipient::Client(id)),
        (None, Some(user)) if !user.is_empty() => Ok(Recipient::User(user)),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
            "name a `client` or a `user`, one of them",
        ))),
    }
}

enum Recipient {
    Client(ConnId),
    User(String),
}

fn empty() -> Value {
    json!({})
}

/// The refusal of a message type the API may not send: empty, too long, or one of the
/// protocol's own.
fn type_refused(kind: &str) -> Option<Response> {
    let reserved = switchboard_proto::types::is_server_only(kind);
    (kind.is_empty() || kind.len() > switchboard_proto::MAX_ID_LEN || reserved).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidEnvelope,
            "`type` must be a non-empty name that is not one of the protocol's own",
        )
    })
}

/// A message the API sends: its `type`, for [`Checked`].
trait Message {
    fn kind(&self) -> &str;
}

impl Message for Publish {
    fn kind(&self) -> &str {
        &self.kind
    }
}

impl Message for Broadcast {
    fn kind(&self) -> &str {
        &self.kind
    }
}

impl Message for Send {
    fn kind(&self) -> &str {
        &self.kind
    }
}

/// A JSON body of the shape `T`, with a `type` the API may send; otherwise the typed
/// refusal.
struct Checked<T>(T);

impl<S, T> axum::extract::FromRequest<S> for Checked<T>
where
    S: std::marker::Send + Sync,
    T: serde::de::DeserializeOwned + Message,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let Json(body) = Json::<T>::from_request(req, state)
            .await
            .map_err(|e| bad_body(&e))?;
        match type_refused(body.kind()) {
            Some(refused) => Err(refused),
            None => Ok(Checked(body)),
        }
    }
}

async fn publish(State(server): State<Server>, Checked(p): Checked<Publish>) -> Response {
    sent(server.send_to_room(&p.room, &p.kind, &p.payload))
}

async fn broadcast(State(server): State<Server>, Checked(b): Checked<Broadcast>) -> Response {
    sent(server.broadcast(&b.kind, &b.payload))
}

async fn send(State(server): State<Server>, Checked(s): Checked<Send>) -> Response {
    match one_of(s.client, s.user) {
        Ok(Recipient::Client(id)) => sent(server.send_to(id, &s.kind, &s.payload).map(|()| 1)),
        Ok(Recipient::User(user)) => sent(server.send_to_user(&user, &s.kind, &s.payload)),
        Err(refused) => *refused,
    }
}

async fn disconnect(
    State(server): State<Server>,
    body: Result<Json<Disconnect>, JsonRejection>,
) -> Response {
    let Json(d) = match body {
        Ok(d) => d,
        Err(e) => return bad_body(&e),
    };
    let reason = d.reason.as_deref().unwrap_or("disconnected by the server");
    match one_of(d.client, d.user) {
        Ok(Recipient::User(user)) => {
            let here = server.disconnect_user(&user, reason);
            Json(json!({"disconnected_here": here})).into_response()
        }
        Ok(Recipient::Client(id)) if server.may_reach(id) => {
            let here = server.disconnect_client(id, reason);
            Json(json!({"disconnected_here": usize::from(here)})).into_response()
        }
        Ok(Recipient::Client(id)) => error(
            StatusCode::NOT_FOUND,
            ErrorCode::ClientNotFound,
            &format!("no client {id} is connected"),
        ),
        Err(refused) => *refused,
    }
}

async fn members(State(server): State<Server>, Path(room): Path<String>) -> Response {
    let members = server.cluster_room_members(&room).await;
    Json(json!({"room": room, "members": members, "count": members.len()})).into_response()
}

async fn presence(State(server): State<Server>, Path(room): Path<String>) -> Response {
    Json(server.room_presence(&room).await).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// The most messages one history request returns.
const HISTORY_LIMIT: usize = 1000;

async fn history(
    State(server): State<Server>,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).min(HISTORY_LIMIT);
    match server.room_history(&room, q.since.unwrap_or(0), limit) {
        Some(h) => Json(h).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRoom,
            &format!("room {room:?} keeps no history here (no message yet, or history is off)"),
        ),
    }
}

async fn info(State(server): State<Server>) -> Response {
    let connections = server.cluster_connection_count().await;
    Json(json!({
        "name": server.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "connections": connections,
        "connections_here": server.connection_count(),
        "rooms_here": server.rooms().len(),
        "uptime_s": server.uptime().as_secs(),
    }))
    .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
