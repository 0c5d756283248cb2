//! What the cluster suites (Redis, NATS) share: a client's `connected`, a join that
//! waits for its own answer, and a bounded wait for state learnt asynchronously.

use std::time::Duration;

use serde_json::json;

use crate::{RawClient, TIMEOUT, TestServer};

/// Connects to `node`, returning the client (its `id` set) and its `connected` payload.
pub async fn connect(node: &TestServer) -> (RawClient, serde_json::Value) {
    let mut c = RawClient::connect(&node.url()).await;
    let connected = c.recv_type("connected").await;
    c.id = connected["payload"]["client_id"]
        .as_str()
        .expect("a client id")
        .to_owned();
    (c, connected["payload"].clone())
}

/// Joins `room`; returns the room's position the join gave.
pub async fn join(c: &mut RawClient, room: &str) -> serde_json::Value {
    c.send(json!({"type":"join_room","ref":"j","payload":{"room_id": room}}))
        .await;
    // Others' `user_joined` may come first (from any node): wait for the ack.
    let r = c.recv_type("ack").await;
    assert_eq!(r["payload"]["status"], "ok", "{r}");
    r["payload"]["result"]["position"].clone()
}

/// Waits (re-checking, bounded by [`TIMEOUT`]) until `check` holds: cluster state
/// (counts, members, health) is learnt asynchronously.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (re-checking, bounded by [`TIMEOUT`]) until `check` says `Ok`; on timeout it
/// panics with what the last check said was wrong (what it saw against what it wanted).
pub async fn eventually_ok<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let Err(wrong) = check().await else { return };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what}: {wrong}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric's value in a node's `/metrics` text (-1 when absent).
pub fn sample(node: &TestServer, name: &str) -> f64 {
    let text = node.server.render_metrics().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

/// Asserts that `got`, the numbers a chaos test's client received of `0..total` (its
/// `what`) in the order they came, holds each once, in order; otherwise it says what is
/// wrong: the runs missing, the numbers that came twice, and where the order first
/// broke, with what came around it.
pub fn assert_each_once_in_order(what: &str, got: &[u64], total: u64) {
    if let Some(faults) = sequence_faults(got, total) {
        panic!("{what}: {faults}");
    }
}

/// What is wrong with `got` (see [`assert_each_once_in_order`]); `None`: nothing.
pub fn sequence_faults(got: &[u64], total: u64) -> Option<String> {
    if got.iter().copied().eq(0..total) {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<u64> = got.iter().copied().filter(|i| !seen.insert(*i)).collect();
    let mut missing: Vec<(u64, u64)> = Vec::new();
    for i in (0..total).filter(|i| !seen.contains(i)) {
        match missing.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => missing.push((i, i)),
        }
    }
    let broke = got.windows(2).position(|w| w[1] <= w[0]).map(|at| {
        let around = &got[at.saturating_sub(3)..(at + 5).min(got.len())];
        format!("at place {} of {}: {around:?}", at + 1, got.len())
    });
    Some(format!(
        "{} received of {total}; missing {missing:?}; twice {twice:?}; order first broken {}",
        got.len(),
        broke.as_deref().unwrap_or("nowhere")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_says_what_is_missing_twice_and_out_of_order() {
        assert_eq!(sequence_faults(&[0, 1, 2], 3), None);
        let faults = sequence_faults(&[0, 2, 1, 2], 5).unwrap_or_default();
        assert_eq!(
            faults,
            "4 received of 5; missing [(3, 4)]; twice [2]; order first broken at place 2 of 4: [0, 2, 1, 2]"
        );
    }
}
