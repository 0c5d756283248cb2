//! Sessions in the cluster: a record per session in a JetStream key-value bucket
//! (`{prefix}-sessions`), written when the session opens, when its rooms change and
//! when its connection drops; claimed by the node a resume reaches with a
//! compare-and-set on the record's revision (the generation goes up by one, so the
//! notice that it moved reaches every older copy). A client's direct messages are kept
//! in the stream under its own subject, opened with a mark in the session's epoch.

use std::collections::BTreeSet;

use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;
use subtle::ConstantTimeEq;
use switchboard_server::proto::Position;
use switchboard_server::{
    BackplaneError, ClaimedSession, ConnId, KeptMessage, SessionHistory, SessionRecord,
    StreamHistory, Target,
};

use crate::shared::{Out, Shared, StoredSession, lock, now_ms};
use crate::writer::{Tip, exclude_of, tip_of};

fn key(client: ConnId) -> String {
    format!("s.{client}")
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> BackplaneError {
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
        };
        let value = serde_json::to_vec(&stored).map_err(|e| nats_err("encoding", e))?;
        link.sessions
            .put(key(record.client), value.into())
            .await
            .map_err(|e| nats_err("keeping a session in NATS", e))?;
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
            return;
        };
        change(stored);
        let Ok(value) = serde_json::to_vec(stored) else {
            return;
        };
        drop(sessions);
        self.enqueue(Out::SessionPut(client, value.into()));
    }

    /// A session ended for good: its record goes, and its kept direct messages.
    pub(crate) fn end_session_soon(&self, client: ConnId) {
        if lock(&self.sessions).remove(&client).is_some() {
            self.enqueue(Out::SessionEnd(client));
        }
    }

    pub(crate) async fn put_session(&self, client: ConnId, value: Bytes) {
        let Ok(link) = self.link() else { return };
        if let Err(e) = link.sessions.put(key(client), value).await {
            tracing::debug!(error = %e, "cannot write a session's record");
        }
    }

    pub(crate) async fn end_session(&self, client: ConnId) {
        let Ok(link) = self.link() else { return };
        if let Err(e) = link.sessions.purge(key(client)).await {
            tracing::debug!(error = %e, "cannot remove a session's record");
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
        session_id: &str,
        token: &str,
    ) -> Result<Option<ClaimedSession>, BackplaneError> {
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
            if record.session_id != session_id || !token_ok || expired {
                return Ok(None);
            }
            stored.record.generation += 1;
            stored.expires_ms = None;
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

    /// The stream's tip and its kept messages after `since` in the tip's epoch.
    async fn kept_after(
        &self,
        target: &Target,
        since: u64,
    ) -> Result<Option<(Tip, Vec<KeptMessage>)>, BackplaneError> {
        let link = self.link()?;
        let Some(subject) = self.subjects.stored(target) else {
            return Ok(None);
        };
        let tip = self
            .read_tip(&subject)
            .await
            .map_err(|e| nats_err("reading a stream", e))?;
        let Some(tip) = tip else { return Ok(None) };
        let mut kept = Vec::new();
        let mut from = 1;
        if tip.offset > since {
            loop {
                let got = link
                    .stream
                    .raw_message_builder()
                    .sequence(from)
                    .next_by_subject(subject.clone())
                    .send()
                    .await;
                let m = match got {
                    Ok(m) => m,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(e) => return Err(nats_err("reading a stream", e)),
                };
                from = m.sequence + 1;
                let Some(at) = tip_of(Some(&m.headers), m.sequence) else {
                    continue;
                };
                if at.epoch == tip.epoch && at.offset > since && at.offset <= tip.offset {
                    if let Ok(frame) = String::from_utf8(m.payload.to_vec()) {
                        kept.push(KeptMessage {
                            offset: at.offset,
                            frame,
                            exclude: exclude_of(Some(&m.headers)),
                        });
                    }
                }
                if m.sequence >= tip.seq {
                    break;
                }
            }
        }
        Ok(Some((tip, kept)))
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
