//! The sessions bucket's upkeep, done by one node: the live node with the lowest id,
//! once its own link has been up for `node_ttl` (so it has heard every live peer).
//! As soon as it can, then every [`SWEEP_EVERY`], and as soon as a peer goes silent,
//! it reads the records:
//!
//! - a session kept as connected by a node that is not alive waits its `ttl` from now,
//!   as if its client had dropped (it stayed resumable until the bucket's 7-day
//!   backstop, whatever `session_ttl` said);
//! - a session past its wait is removed (it stayed in the bucket until the backstop).
//!
//! And a node whose link comes back after being down for `node_ttl` or more (its peers
//! took it for dead) writes its connected clients' sessions again as connected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;

use crate::shared::{SessionWrite, Shared, StoredSession, lock, now_ms};

/// How often the bucket is swept when no peer died.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How long a sweep waits for the next record before it gives up (the link failed).
const READ_STALLED: Duration = Duration::from_secs(10);

/// What a sweep does with one record, given the live nodes and the time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upkeep {
    Keep,
    /// Its node is gone: it waits its `ttl` from now (the new `expires_ms`).
    WaitFrom(u64),
    /// Past its wait: removed.
    Remove,
}

/// What becomes of `stored` (see the module's doc).
pub(crate) fn upkeep(stored: &StoredSession, alive: impl Fn(&str) -> bool, now: u64) -> Upkeep {
    match stored.expires_ms {
        Some(at) if at < now => Upkeep::Remove,
        Some(_) => Upkeep::Keep,
        // Written before records named their node: left to the backstop.
        None if stored.node.is_empty() || alive(&stored.node) => Upkeep::Keep,
        None => {
            let ttl = u64::try_from(stored.record.ttl.as_millis()).unwrap_or(u64::MAX);
            Upkeep::WaitFrom(now.saturating_add(ttl))
        }
    }
}

impl Shared {
    /// Whether this node sweeps: its link has been up for `node_ttl`, and no live node
    /// has a lower id.
    pub(crate) fn is_janitor(&self) -> bool {
        let up = self.connected.load(std::sync::atomic::Ordering::Acquire);
        let steady =
            up && lock(&self.link_since).is_some_and(|at| at.elapsed() >= self.config.node_ttl);
        steady && self.live_nodes().iter().all(|n| *n >= self.node)
    }

    /// Reads every record once and tends it (see the module's doc). The records come
    /// through one ordered consumer, each one's last value (a request per record took
    /// 50x longer: `examples/sweep_speed.rs`); the read ends at the last record of the
    /// moment it began, after twice as many entries as the bucket then held, or when
    /// nothing comes for [`READ_STALLED`].
    pub(crate) async fn sweep_sessions(self: Arc<Self>) {
        let Ok(link) = self.link() else { return };
        // The records now; the read stops after twice as many entries at most (writes
        // made meanwhile come after them, and under steady writes the read might
        // never find itself at the end).
        let mut most = match link.sessions.stream.get_info().await {
            Ok(info) if info.state.messages == 0 => return,
            Ok(info) => info.state.messages.saturating_mul(2),
            Err(e) => return tracing::debug!(error = %e, "cannot read the sessions bucket"),
        };
        let mut records = match link.sessions.watch_with_history(">").await {
            Ok(records) => records,
            Err(e) => return tracing::debug!(error = %e, "cannot read the sessions"),
        };
        let live = self.live_nodes();
        let (mut waiting, mut removed) = (0usize, 0usize);
        while let Ok(Some(Ok(entry))) = tokio::time::timeout(READ_STALLED, records.next()).await {
            if self.stop.is_cancelled() {
                return;
            }
            most = most.saturating_sub(1);
            let last = entry.delta == 0 || most == 0;
            match tend(&link.sessions, entry, |n| live.contains(n)).await {
                Some(Upkeep::WaitFrom(_)) => waiting += 1,
                Some(Upkeep::Remove) => removed += 1,
                Some(Upkeep::Keep) | None => {}
            }
            if last {
                break;
            }
        }
        if waiting + removed > 0 {
            tracing::info!(node = %self.node, waiting, removed, "swept the sessions of dead nodes and expired ones");
        }
    }

    /// This node's link is back after its peers may have taken it for dead: the
    /// sessions of its connected clients are written again as connected.
    pub(crate) async fn keep_connected_sessions(self: Arc<Self>) {
        let Some(node) = self.node_handle.get() else {
            return;
        };
        let connected = node.connections();
        let writes: Vec<SessionWrite> = {
            let sessions = lock(&self.sessions);
            connected
                .iter()
                .filter_map(|client| {
                    let stored = sessions.get(client)?;
                    let value = serde_json::to_vec(stored).ok()?;
                    Some(SessionWrite::Put(*client, value.into()))
                })
                .collect()
        };
        tracing::info!(node = %self.node, sessions = writes.len(), "back after being taken for dead: writing its clients' sessions again");
        for write in writes {
            self.write_session(write);
        }
    }
}

/// Does to one record what [`upkeep`] says, written only over what was read (a claim
/// since wins). Returns what was done, `None` for what is not a session's record or
/// was not written.
async fn tend(
    sessions: &kv::Store,
    entry: kv::Entry,
    alive: impl Fn(&str) -> bool,
) -> Option<Upkeep> {
    if entry.operation != Operation::Put {
        return None;
    }
    let mut stored = serde_json::from_slice::<StoredSession>(&entry.value).ok()?;
    let upkeep = upkeep(&stored, alive, now_ms());
    let done = match upkeep {
        Upkeep::Keep => true,
        Upkeep::WaitFrom(at) => {
            stored.expires_ms = Some(at);
            let value = serde_json::to_vec(&stored).ok()?;
            let update = sessions.update(&entry.key, value.into(), entry.revision);
            update.await.is_ok()
        }
        Upkeep::Remove => {
            let purge = sessions.purge_expect_revision(&entry.key, Some(entry.revision));
            purge.await.is_ok()
        }
    };
    done.then_some(upkeep)
}

/// When the next sweep is due: as soon as this node can sweep (`last`: `None`, it
/// has not swept yet: a peer may have died before it heard of it), at once when a
/// peer went silent, else [`SWEEP_EVERY`] after the last.
pub(crate) fn sweep_due(last: Option<Instant>, peer_died: bool) -> bool {
    peer_died || last.is_none_or(|last| last.elapsed() >= SWEEP_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use switchboard_server::{ConnId, SessionRecord};

    fn stored(node: &str, expires_ms: Option<u64>) -> StoredSession {
        StoredSession {
            record: SessionRecord {
                client: ConnId::from_u64(1),
                session_id: "s".into(),
                token: "t".into(),
                epoch: String::new(),
                identity: None,
                ttl: Duration::from_secs(60),
                generation: 1,
            },
            rooms: BTreeSet::new(),
            expires_ms,
            attempt: 0,
            node: node.into(),
        }
    }

    #[test]
    fn a_dead_nodes_connected_session_waits_its_ttl_and_an_expired_one_goes() {
        let alive = |n: &str| n == "a";
        let now = 1_000_000;
        assert_eq!(upkeep(&stored("a", None), alive, now), Upkeep::Keep);
        assert_eq!(
            upkeep(&stored("dead", None), alive, now),
            Upkeep::WaitFrom(now + 60_000)
        );
        assert_eq!(
            upkeep(&stored("dead", Some(now + 1)), alive, now),
            Upkeep::Keep
        );
        assert_eq!(
            upkeep(&stored("a", Some(now - 1)), alive, now),
            Upkeep::Remove
        );
        // A record from before records named their node: left to the backstop.
        assert_eq!(upkeep(&stored("", None), alive, now), Upkeep::Keep);
    }
}
