//! Sessions in the cluster: a record per session in a JetStream key-value bucket
//! (`{prefix}-sessions`), written when the session opens, when its rooms change and
//! when its connection drops; claimed by the node a resume reaches with a
//! compare-and-set on the record's revision (the generation goes up by one, so the
//! notice that it moved reaches every older copy). A client's direct messages are kept
//! in the stream under its own subject, opened with a mark in the session's epoch.

use std::collections::BTreeSet;

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use bytes::Bytes;
use subtle::ConstantTimeEq;
use switchboard_server::proto::Position;
use switchboard_server::{
    BackplaneError, ClaimedSession, ConnId, SessionHistory, SessionRecord, StreamHistory, Target,
};

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::shared::{SessionWrite, Shared, StoredSession, lock, now_ms};

/// The first wait before a session write is tried again (it doubles up to a second).
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);

fn key(client: ConnId) -> String {
    format!("s.{client}")
}

pub(crate) fn nats_err(what: &str, e: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::new(format!("{what}: {e}"))
}

impl Shared {
    /// Keeps a new session's record, and opens its stream (direct messages) in its
    /// epoch.
    pub(crate) async fn open_session(&self, record: &SessionRecord) -> Result<(), BackplaneError> {
        let link = self.link()?;
        let stored = StoredSession {
            record: record.clone(),
            rooms: BTreeSet::new(),
            expires_ms: None,
            attempt: 0,
            node: self.node.clone(),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| nats_err("encoding", e))?;
        // Created, never overwritten: a record that exists is an earlier try of this
        // one, written after all, and perhaps claimed since (then this node's writes
        // of it are refused, as for any copy older than the record).
        match link.sessions.create(key(record.client), value.into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats_err("keeping a session in NATS", e)),
        }
        lock(&self.sessions).insert(record.client, stored);
        // Followed before the client hears its position: no direct message after it is
        // missed.
        self.follow(&Target::Conns(vec![record.client])).await;
        if !record.epoch.is_empty() {
            let subject = self
                .subjects
                .stored(&Target::Conns(vec![record.client]))
                .unwrap_or_default();
            self.open_stream(&subject, &record.epoch)
                .await
                .map_err(|e| nats_err("opening a session's stream", e))?;
        }
        Ok(())
    }

    /// A change to a session this node keeps: its record is written again.
    pub(crate) fn change_session(&self, client: ConnId, change: impl FnOnce(&mut StoredSession)) {
        let mut sessions = lock(&self.sessions);
        let Some(stored) = sessions.get_mut(&client) else {
            drop(sessions);
            self.write_session(SessionWrite::NotKept);
            return;
        };
        change(stored);
        let Ok(value) = serde_json::to_vec(stored) else {
            return;
        };
        drop(sessions);
        self.write_session(SessionWrite::Put(client, value.into()));
    }

    /// A session ended for good: its record goes, and its kept direct messages.
    pub(crate) fn end_session_soon(&self, client: ConnId) {
        if lock(&self.sessions).remove(&client).is_some() {
            self.write_session(SessionWrite::End(client));
        }
    }

    /// Resolves once every session write queued before it is done: `true`; `false` at
    /// once if the queue is full.
    pub(crate) fn session_writes_done(&self) -> impl std::future::Future<Output = bool> + use<> {
        let (written, wait) = tokio::sync::oneshot::channel();
        let _ = self.session_writes.try_send(SessionWrite::Written(written));
        async move { wait.await.unwrap_or(false) }
    }

    pub(crate) fn write_session(&self, write: SessionWrite) {
        if self.session_writes.try_send(write).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("too many session changes waiting for NATS: one dropped");
        }
    }

    /// Writes the sessions' changes in order; of several for one session waiting at
    /// once, only the last record is written. A mark is told whether every write since
    /// the mark before was made.
    pub(crate) async fn session_loop(
        self: std::sync::Arc<Self>,
        mut rx: mpsc::Receiver<SessionWrite>,
    ) {
        let mut all_made = true;
        loop {
            let first = tokio::select! {
                () = self.stop.cancelled() => return,
                w = rx.recv() => w,
            };
            let Some(first) = first else { return };
            // A batch ends at a mark: what it waits for is all before it.
            let mut batch = vec![first];
            while !matches!(batch.last(), Some(SessionWrite::Written(_))) && batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            // The last write per session wins.
            let mut last: HashMap<ConnId, usize> = HashMap::new();
            for (i, w) in batch.iter().enumerate() {
                if let SessionWrite::Put(c, _) | SessionWrite::End(c) = w {
                    last.insert(*c, i);
                }
            }
            for (i, w) in batch.into_iter().enumerate() {
                match w {
                    SessionWrite::Put(c, value) if last.get(&c) == Some(&i) => {
                        all_made &= self.put_session(c, value).await;
                    }
                    SessionWrite::End(c) if last.get(&c) == Some(&i) => self.end_session(c).await,
                    SessionWrite::NotKept => all_made = false,
                    SessionWrite::Written(waiting) => {
                        let _ = waiting.send(std::mem::replace(&mut all_made, true));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Writes a session's record, unless another node claimed the session meanwhile
    /// (a newer generation there): a late write from its old node must not undo the
    /// claim. A write that fails (the link is down, or another write came first) is
    /// tried again until it is done or the node stops: a room change dropped here
    /// would be undone by the client's next resume on another node. (The writes after
    /// it wait meanwhile, in order.) True when it was written; false when it was
    /// refused (the session moved: the change it carries is not in the cluster's
    /// record, and the join or leave that made it says `durable: false`).
    pub(crate) async fn put_session(&self, client: ConnId, value: Bytes) -> bool {
        let Ok(link) = self.link() else { return false };
        let Ok(mine) = serde_json::from_slice::<StoredSession>(&value) else {
            return false;
        };
        let mut backoff = RETRY_FIRST;
        while !self.stop.is_cancelled() {
            let entry = match link.sessions.entry(key(client)).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read a session's record; again soon");
                    self.pause(&mut backoff).await;
                    continue;
                }
            };
            let (revision, theirs) = match &entry {
                Some(e) if e.operation == Operation::Put => (
                    e.revision,
                    serde_json::from_slice::<StoredSession>(&e.value).ok(),
                ),
                Some(e) => (e.revision, None),
                None => (0, None),
            };
            if theirs.is_some_and(|t| t.record.generation > mine.record.generation) {
                // Claimed elsewhere: not ours to write.
                forget_superseded(&mut lock(&self.sessions), client, mine.record.generation);
                return false;
            }
            let written = if revision == 0 {
                link.sessions
                    .create(key(client), value.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                link.sessions
                    .update(key(client), value.clone(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            match written {
                Ok(()) => return true,
                Err(e) => {
                    tracing::debug!(error = %e, "a session's record was not written; again");
                    self.pause(&mut backoff).await;
                }
            }
        }
        false
    }

    /// Removes an ended session's record (tried again until done or the node stops: a
    /// record left behind could be resumed) and its kept messages.
    pub(crate) async fn end_session(&self, client: ConnId) {
        let Ok(link) = self.link() else { return };
        let mut backoff = RETRY_FIRST;
        while !self.stop.is_cancelled() {
            match link.sessions.purge(key(client)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot remove a session's record; again soon");
                    self.pause(&mut backoff).await;
                }
            }
        }
        if let Some(subject) = self.subjects.stored(&Target::Conns(vec![client])) {
            if let Err(e) = link.stream.purge().filter(subject).await {
                tracing::debug!(error = %e, "cannot remove a session's messages");
            }
        }
    }

    /// Claims a session for this node if `session_id` and `token` are its own.
    pub(crate) async fn claim_session(
        &self,
        client: ConnId,
        resume: &switchboard_server::proto::ResumeRequest,
    ) -> Result<Option<ClaimedSession>, BackplaneError> {
        let (session_id, token) = (resume.session_id.as_str(), resume.token.as_str());
        let link = self.link()?;
        for _ in 0..10 {
            let entry = link
                .sessions
                .entry(key(client))
                .await
                .map_err(|e| nats_err("reading a session", e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                return Ok(None);
            };
            let Ok(mut stored) = serde_json::from_slice::<StoredSession>(&entry.value) else {
                return Ok(None);
            };
            let record = &stored.record;
            let token_ok: bool = record.token.as_bytes().ct_eq(token.as_bytes()).into();
            let expired = stored.expires_ms.is_some_and(|at| at < now_ms());
            // An attempt the client gave up on comes after a newer one: not claimed.
            let stale = resume.attempt > 0 && stored.attempt >= resume.attempt;
            if record.session_id != session_id || !token_ok || expired || stale {
                return Ok(None);
            }
            stored.attempt = stored.attempt.max(resume.attempt);
            stored.record.generation += 1;
            stored.expires_ms = None;
            stored.node.clone_from(&self.node);
            let value = serde_json::to_vec(&stored).map_err(|e| nats_err("encoding", e))?;
            match link
                .sessions
                .update(key(client), value.into(), entry.revision)
                .await
            {
                Ok(_) => {
                    let claimed = (
                        stored.record.clone(),
                        stored.rooms.iter().cloned().collect(),
                    );
                    lock(&self.sessions).insert(client, stored);
                    return Ok(Some(claimed));
                }
                Err(e) => tracing::debug!(error = %e, "a session's claim raced; trying again"),
            }
        }
        Err(BackplaneError::new("a session's claim kept racing"))
    }

    /// The direct messages kept for `client` after `since`, and where its stream
    /// stands.
    pub(crate) async fn session_history(
        &self,
        client: ConnId,
        since: u64,
    ) -> Result<Option<SessionHistory>, BackplaneError> {
        let target = Target::Conns(vec![client]);
        // Followed first: what comes after what is read here arrives live.
        self.follow(&target).await;
        let Some((tip, kept)) = self.kept_after(&target, since).await? else {
            return Ok(None);
        };
        Ok(Some(SessionHistory {
            position: Position::new(tip.epoch, tip.offset),
            messages: kept.into_iter().map(|m| (m.offset, m.frame)).collect(),
        }))
    }

    /// A room's or the broadcasts' messages kept after `since`: the node follows the
    /// stream from now on, then reads what it holds.
    pub(crate) async fn stream_history(
        &self,
        target: &Target,
        since: u64,
    ) -> Result<Option<StreamHistory>, BackplaneError> {
        self.follow(target).await;
        let Some((tip, messages)) = self.kept_after(target, since).await? else {
            return Ok(None);
        };
        Ok(Some(StreamHistory {
            position: Position::new(tip.epoch, tip.offset),
            messages,
        }))
    }

    /// Where a room's or the broadcasts' stream stands, opened if it has no message:
    /// the node follows it first, so nothing after the position is missed.
    pub(crate) async fn stream_position(
        &self,
        target: &Target,
    ) -> Result<Option<Position>, BackplaneError> {
        let Some(subject) = self.subjects.stored(target) else {
            return Ok(None);
        };
        self.follow(target).await;
        let tip = self
            .open_stream(&subject, &crate::shared::new_epoch())
            .await
            .map_err(|e| nats_err("opening a stream", e))?;
        Ok(Some(Position::new(tip.epoch, tip.offset)))
    }
}

/// A session's record as it is after its client's connection dropped.
pub(crate) fn detached(stored: &mut StoredSession, ttl: std::time::Duration, rooms: Vec<String>) {
    let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    stored.expires_ms = Some(now_ms().saturating_add(ttl));
    stored.rooms = rooms.into_iter().collect();
}

/// Forgets this node's copy of `client`'s session after a write of its `generation`
/// was refused (another node claimed it since), unless this node has claimed it again
/// in the meantime: a newer copy serves the client now, and its changes must go on
/// being written. (A write queued in an older generation, tried again until the link
/// came back, once removed the copy of a session that had come back to this node: its
/// later joins and leaves were answered but never written, and the client's next
/// resume elsewhere restored the rooms from before them.)
fn forget_superseded(
    sessions: &mut HashMap<ConnId, StoredSession>,
    client: ConnId,
    generation: u64,
) {
    if sessions
        .get(&client)
        .is_some_and(|kept| kept.record.generation <= generation)
    {
        sessions.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(client: ConnId, generation: u64) -> StoredSession {
        StoredSession {
            record: SessionRecord {
                client,
                session_id: format!("{client}.s"),
                token: "t".into(),
                epoch: String::new(),
                identity: None,
                ttl: std::time::Duration::from_secs(60),
                generation,
            },
            rooms: BTreeSet::new(),
            expires_ms: None,
            attempt: 0,
            node: String::new(),
        }
    }

    #[test]
    fn a_refused_write_forgets_only_a_copy_no_newer_than_itself() {
        let client = ConnId::from_u64(7);
        // The copy the write came from, or an older one: forgotten.
        for kept in [2, 3] {
            let mut sessions = HashMap::from([(client, stored(client, kept))]);
            forget_superseded(&mut sessions, client, 3);
            assert!(sessions.is_empty(), "a copy of generation {kept}");
        }
        // The session came back to this node (generation 5) before the refused write
        // of generation 3 was tried again: its copy stays.
        let mut sessions = HashMap::from([(client, stored(client, 5))]);
        forget_superseded(&mut sessions, client, 3);
        assert_eq!(sessions[&client].record.generation, 5);
    }
}
