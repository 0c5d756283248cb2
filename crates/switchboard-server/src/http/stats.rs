//! What the admin page reads, under `/api` with the API key: the node at a glance
//! (`GET /api/stats`) and its clients (`GET /api/clients`).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::Server;

/// The most rooms and clients one answer lists.
const MAX_LISTED: usize = 500;

#[derive(Deserialize)]
pub(super) struct Limit {
    limit: Option<usize>,
}

impl Limit {
    fn get(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, MAX_LISTED)
    }
}

/// `GET /api/stats?limit=`: counts, the largest rooms, the running totals (when metrics
/// are on) and the backplane.
pub(super) async fn stats(State(server): State<Server>, Query(q): Query<Limit>) -> Response {
    let (backplane, healthy, carried) = server.backplane_state();
    let rooms: Vec<_> = server
        .room_sizes(q.get())
        .into_iter()
        .map(|(room, members)| json!({ "room": room, "members": members }))
        .collect();
    Json(json!({
        "name": server.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": server.uptime().as_secs(),
        "connections": server.connection_count(),
        "cluster_connections": server.cluster_connection_count().await,
        "room_count": server.room_count(),
        "rooms": rooms,
        "totals": server.metrics().map(crate::metrics::Metrics::totals),
        "backplane": {
            "name": backplane,
            "healthy": healthy,
            "published": carried.published,
            "received": carried.received,
            "dropped": carried.dropped,
            "queued": carried.queued,
        },
    }))
    .into_response()
}

/// `GET /api/clients?limit=`: the clients on this node, in id order: id, user, address,
/// dialect, rooms, frames queued.
pub(super) async fn clients(State(server): State<Server>, Query(q): Query<Limit>) -> Response {
    let mut ids = server.connection_ids();
    ids.sort();
    ids.truncate(q.get());
    let list: Vec<_> = ids
        .into_iter()
        .filter_map(|id| server.connection(id))
        .map(|c| {
            json!({
                "id": c.id(),
                "user": c.identity().map(|i| i.id.clone()),
                "remote": c.remote_addr().map(|a| a.to_string()),
                "dialect": c.dialect().as_str(),
                "rooms": c.rooms(),
                "queued": c.outbox().queued(),
            })
        })
        .collect();
    Json(json!({ "clients": list })).into_response()
}
