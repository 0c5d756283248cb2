//! Prometheus metrics: what a node counts while it runs, and their text exposition
//! (`GET /metrics`, or [`Server::render_metrics`] to serve it elsewhere).
//!
//! Counting costs no lock and no allocation per message: every per-message counter
//! is an atomic resolved once, when the server is built (the label values of
//! `messages_*_total`, the histograms of each registered message type and RPC
//! method). Label values are bounded: classes, close codes from a fixed list, status,
//! and the types and methods the application registered; never client ids or room
//! names. Gauges that describe the node (connections, rooms, queued frames, history)
//! are read when scraped. docs/operations.md lists every metric.

mod timing;

use crate::handler_table::ByName;
use std::time::Instant;

use switchboard_proto::types;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub(crate) use timing::{FrameClass, Timing, frame_class};

/// The close codes counted by their own label value; any other is `other`.
const CLOSE_CODES: &[u16] = &[
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 4000, 4001, 4002, 4003, 4004, 4005,
    4006, 4007, 4008, 4009, 4010, 4011,
];

/// Durations of handlers and RPC methods, in seconds: from 50 µs to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A received message's class, one label value of `switchboard_messages_received_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The application's own types.
    Application,
    /// The protocol's: `ping`, `join_room`, `auth`, `resume`, ...
    System,
    /// `rpc` calls.
    Rpc,
}

impl Class {
    /// The class of a message of type `kind`.
    pub(crate) fn of(kind: &str) -> Class {
        match kind {
            types::RPC => Class::Rpc,
            types::PING
            | types::JOIN_ROOM
            | types::LEAVE_ROOM
            | types::SUBSCRIBE
            | types::UNSUBSCRIBE
            | types::AUTH
            | types::RESUME => Class::System,
            _ => Class::Application,
        }
    }
}

/// A node's metrics. Built with the server when
/// [`ServerConfig::metrics`](crate::ServerConfig::metrics) is on.
pub(crate) struct Metrics {
    registry: Registry,
    connections: IntGauge,
    accepted: IntCounter,
    closed: IntCounterVec,
    auth_failures: IntCounter,
    received: [IntCounter; 3],
    sent: [IntCounter; 2],
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
    slow_consumers: IntCounter,
    dropped: IntCounter,
    rate_limited: IntCounter,
    resumes: IntCounterVec,
    handlers: ByName<Timing>,
    rpc: ByName<Timing>,
    gauges: Gauges,
}

/// What is read from the node when scraped.
struct Gauges {
    rooms: IntGauge,
    queued: IntGauge,
    history_bytes: IntGauge,
    detached: IntGauge,
    backplane_healthy: IntGauge,
    backplane_published: IntGauge,
    backplane_received: IntGauge,
    backplane_dropped: IntGauge,
    backplane_queued: IntGauge,
}

/// The node's running totals, for the admin page (`GET /api/stats`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Totals {
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) slow_consumers: u64,
    pub(crate) dropped: u64,
    pub(crate) rate_limited: u64,
    pub(crate) auth_failures: u64,
    pub(crate) accepted: u64,
}

/// What a scrape reads from the node.
pub(crate) struct NodeState {
    pub(crate) connections: usize,
    pub(crate) rooms: usize,
    pub(crate) queued: usize,
    pub(crate) history_bytes: usize,
    pub(crate) detached: usize,
    pub(crate) backplane_healthy: bool,
    pub(crate) backplane: crate::BackplaneStats,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"));
    register(registry, c.clone());
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"));
    register(registry, g.clone());
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("{name}: {e}"));
    register(registry, v.clone());
    v
}

/// A duration histogram by `what` (a type or a method) and status.
fn durations(registry: &Registry, name: &str, help: &str, what: &str) -> HistogramVec {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        &[what, "status"],
    )
    .unwrap_or_else(|e| unreachable!("{name}: {e}"));
    register(registry, v.clone());
    v
}

fn register(registry: &Registry, c: impl prometheus::core::Collector + 'static) {
    // The names are ours and distinct: registering cannot fail.
    if let Err(e) = registry.register(Box::new(c)) {
        tracing::error!(error = %e, "a metric could not be registered");
    }
}

impl Metrics {
    /// The metrics of a server whose handlers take `types` and whose methods are
    /// `methods`.
    pub(crate) fn new(types: &[String], methods: &[String]) -> Metrics {
        let r = Registry::new();
        let received = counter_vec(
            &r,
            "switchboard_messages_received_total",
            "Messages received from clients, by class (application, system, rpc).",
            &["class"],
        );
        let sent = counter_vec(
            &r,
            "switchboard_messages_sent_total",
            "Messages written to clients, by class (application, system: acks, errors, pongs, presence).",
            &["class"],
        );
        let handler_durations = durations(
            &r,
            "switchboard_handler_duration_seconds",
            "How long a message type's handlers took, by type and status (ok, error).",
            "type",
        );
        let rpc_durations = durations(
            &r,
            "switchboard_rpc_duration_seconds",
            "How long RPC calls took, by method and status (ok, error).",
            "method",
        );
        let timings = |vec: &HistogramVec, names: &[String]| -> ByName<Timing> {
            names
                .iter()
                .map(|n| (n.as_str().into(), Timing::new(vec, n)))
                .collect()
        };
        Metrics {
            connections: gauge(&r, "switchboard_connections", "Open connections."),
            accepted: counter(
                &r,
                "switchboard_connections_accepted_total",
                "Connections opened (after authentication).",
            ),
            closed: counter_vec(
                &r,
                "switchboard_connections_closed_total",
                "Connections closed, by close code (`other` for codes outside the protocol's).",
                &["code"],
            ),
            auth_failures: counter(
                &r,
                "switchboard_auth_failures_total",
                "Authentications refused (wrong password, bad or expired token).",
            ),
            received: [
                received.with_label_values(&["application"]),
                received.with_label_values(&["system"]),
                received.with_label_values(&["rpc"]),
            ],
            sent: [
                sent.with_label_values(&["application"]),
                sent.with_label_values(&["system"]),
            ],
            received_bytes: counter(
                &r,
                "switchboard_received_bytes_total",
                "Bytes of message data received from clients.",
            ),
            sent_bytes: counter(
                &r,
                "switchboard_sent_bytes_total",
                "Bytes of message data written to clients.",
            ),
            slow_consumers: counter(
                &r,
                "switchboard_slow_consumer_disconnects_total",
                "Clients disconnected because their outbound queue was full.",
            ),
            dropped: counter(
                &r,
                "switchboard_dropped_messages_total",
                "Messages not queued for a client whose outbound queue was full (drop-new policy).",
            ),
            rate_limited: counter(
                &r,
                "switchboard_rate_limited_messages_total",
                "Messages dropped because their client was over its rate limit.",
            ),
            resumes: counter_vec(
                &r,
                "switchboard_resumes_total",
                "Session resumes, by outcome (recovered, partial: some stream not recovered, failed: a fresh session, unavailable: refused for now, the cluster's sessions out of reach).",
                &["outcome"],
            ),
            handlers: timings(&handler_durations, types),
            rpc: timings(&rpc_durations, methods),
            gauges: Gauges {
                rooms: gauge(&r, "switchboard_rooms", "Rooms with members on this node."),
                queued: gauge(
                    &r,
                    "switchboard_outbound_queued_frames",
                    "Frames waiting in clients' outbound queues, all clients together.",
                ),
                history_bytes: gauge(
                    &r,
                    "switchboard_history_bytes",
                    "Bytes of message history kept for resume.",
                ),
                detached: gauge(
                    &r,
                    "switchboard_detached_sessions",
                    "Sessions of dropped clients kept for resume.",
                ),
                backplane_healthy: gauge(
                    &r,
                    "switchboard_backplane_healthy",
                    "1 while the backplane's link is up (always 1 on a single node).",
                ),
                backplane_published: gauge(
                    &r,
                    "switchboard_backplane_published",
                    "Messages this node handed to the backplane since it started.",
                ),
                backplane_received: gauge(
                    &r,
                    "switchboard_backplane_received",
                    "Messages this node read from the backplane since it started.",
                ),
                backplane_dropped: gauge(
                    &r,
                    "switchboard_backplane_dropped",
                    "Messages the backplane refused for good or dropped since the node started.",
                ),
                backplane_queued: gauge(
                    &r,
                    "switchboard_backplane_queued",
                    "Messages waiting to be written to the backplane (its lag).",
                ),
            },
            registry: r,
        }
    }

    /// The running totals.
    pub(crate) fn totals(&self) -> Totals {
        Totals {
            messages_in: self.received.iter().map(IntCounter::get).sum(),
            messages_out: self.sent.iter().map(IntCounter::get).sum(),
            bytes_in: self.received_bytes.get(),
            bytes_out: self.sent_bytes.get(),
            slow_consumers: self.slow_consumers.get(),
            dropped: self.dropped.get(),
            rate_limited: self.rate_limited.get(),
            auth_failures: self.auth_failures.get(),
            accepted: self.accepted.get(),
        }
    }

    /// The registry, for the application's own metrics.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn connection_opened(&self) {
        self.accepted.inc();
    }

    pub(crate) fn connection_closed(&self, code: u16) {
        let label = if CLOSE_CODES.contains(&code) {
            code.to_string()
        } else {
            "other".to_owned()
        };
        self.closed.with_label_values(&[label.as_str()]).inc();
    }

    pub(crate) fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// One message received, of `bytes` bytes.
    pub(crate) fn received(&self, class: Class, bytes: usize) {
        self.received[class as usize].inc();
        self.received_bytes.inc_by(bytes as u64);
    }

    /// Frames written to a client: `application` and `system` of them, `bytes` in all.
    pub(crate) fn sent(&self, application: u64, system: u64, bytes: u64) {
        if application > 0 {
            self.sent[FrameClass::Application as usize].inc_by(application);
        }
        if system > 0 {
            self.sent[FrameClass::System as usize].inc_by(system);
        }
        self.sent_bytes.inc_by(bytes);
    }

    pub(crate) fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    pub(crate) fn dropped(&self) {
        self.dropped.inc();
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// A resume's outcome: `recovered`, `partial` or `failed`.
    pub(crate) fn resumed(&self, outcome: &str) {
        self.resumes.with_label_values(&[outcome]).inc();
    }

    /// A message type's handlers finished (`ok`: without an error).
    pub(crate) fn handled(&self, kind: &str, started: Instant, ok: bool) {
        if let Some(t) = self.handlers.get(kind) {
            t.observe(started, ok);
        }
    }

    /// The duration histograms of RPC method `method`, for the method to keep (so a
    /// call does not look them up by name).
    pub(crate) fn rpc_timing(&self, method: &str) -> Option<Timing> {
        self.rpc.get(method).cloned()
    }

    /// The text exposition, with the node's gauges read now.
    pub(crate) fn render(&self, node: &NodeState) -> String {
        let g = &self.gauges;
        let set = |gauge: &IntGauge, v: usize| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.connections, node.connections);
        set(&g.rooms, node.rooms);
        set(&g.queued, node.queued);
        set(&g.history_bytes, node.history_bytes);
        set(&g.detached, node.detached);
        g.backplane_healthy.set(i64::from(node.backplane_healthy));
        let b = &node.backplane;
        let set64 = |gauge: &IntGauge, v: u64| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set64(&g.backplane_published, b.published);
        set64(&g.backplane_received, b.received);
        set64(&g.backplane_dropped, b.dropped);
        set64(&g.backplane_queued, b.queued);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_with_bounded_labels() {
        let m = Metrics::new(&["chat".into()], &["add".into()]);
        m.received(Class::Rpc, 10);
        m.sent(2, 1, 30);
        m.connection_closed(1000);
        m.connection_closed(3999);
        m.handled("chat", Instant::now(), true);
        m.handled("not-registered", Instant::now(), true);
        let text = m.render(&NodeState {
            connections: 3,
            rooms: 1,
            queued: 0,
            history_bytes: 0,
            detached: 0,
            backplane_healthy: true,
            backplane: crate::BackplaneStats::default(),
        });
        for line in [
            "switchboard_messages_received_total{class=\"rpc\"} 1",
            "switchboard_received_bytes_total 10",
            "switchboard_messages_sent_total{class=\"application\"} 2",
            "switchboard_messages_sent_total{class=\"system\"} 1",
            "switchboard_connections_closed_total{code=\"1000\"} 1",
            "switchboard_connections_closed_total{code=\"other\"} 1",
            "switchboard_handler_duration_seconds_count{status=\"ok\",type=\"chat\"} 1",
            "switchboard_connections 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("not-registered"));
    }
}
