//! HTTP serving: the accept loop (plain and TLS), the routes (`/ws`, `/health`, `/rpc`, `/metrics`,
//! the application's own), the WebSocket upgrade, and the binding that `Server::run`
//! does.

mod accept;
mod api;
mod forwarded;
mod serve;
mod stats;
mod tls;
mod upgrade;

use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub(crate) use accept::{accept_next, serve_http};
pub use serve::{Listening, shutdown_signal};
pub use tls::TlsConfig;
pub(crate) use upgrade::{echo_route, ws_route};

use crate::Server;

/// The axum router: the WebSocket endpoint, the echo endpoint when configured,
/// `/health`, `/rpc`, `/metrics` and the application's routes.
pub(crate) fn router(server: Server) -> axum::Router {
    let path = server.config().path.clone();
    let mut app = server.http_routes().route(&path, ws_route(server.clone()));
    if let Some(echo) = &server.config().echo_path {
        app = app.route(echo, echo_route(server.clone()));
    }
    if let Some(key) = &server.config().api_key {
        app = app.nest("/api", api::routes(server.clone(), key.clone()));
    }
    if server.config().metrics {
        app = app.route("/metrics", get(metrics).with_state(server.clone()));
    }
    app.route("/health", get(health).with_state(server.clone()))
        .route("/rpc", get(methods).with_state(server))
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(AxumState(server): AxumState<Server>) -> Response {
    let text = server.render_metrics().unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn health(AxumState(server): AxumState<Server>) -> Response {
    axum::Json(server.health()).into_response()
}

/// `GET /rpc`: the methods, as `listall` returns them, for tools that generate clients.
async fn methods(AxumState(server): AxumState<Server>) -> Response {
    axum::Json(server.methods()).into_response()
}
