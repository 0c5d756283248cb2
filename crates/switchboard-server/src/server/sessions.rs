//! Sessions on a server: registering a connection (a fresh session, or a resumed one
//! with the replay of what it missed), taking a closed connection out (keeping its
//! session for a resume), and the housekeeping that expires sessions and history.

use std::sync::{Arc, MutexGuard};

use switchboard_proto::{
    ErrorCode, Position, Recovery, RecoveryGap, ResumeOutcome, ResumeRequest, StreamPositions,
};

use super::Server;
use crate::backplane::{PresenceEvent, Target};
use crate::clock::now_ms;
use crate::connection::Conn;
use crate::delivery::{Session, Stream};
use crate::locks::lock;
use crate::ws::{Frame, Text};
use crate::{ConnId, Identity};

/// How long a new connection waits for the backplane to keep its session.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a join or leave waits for its session change to be written in the
/// cluster before it is answered anyway (the backplane is away).
const SESSION_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Builds the `connected` frame from the positions the client starts at and, for a
/// resume, its outcome.
pub(crate) type ConnectedFrame<'a> = &'a dyn Fn(&StreamPositions, Option<&ResumeOutcome>) -> String;

/// Why a resume found no session to restore: the error's code and message.
pub(crate) type NoSession = (ErrorCode, &'static str, RecoveryGap);

/// The session a resume found ([`Server::find_session_anywhere`]), and the rooms the
/// cluster's record gives it when they win over what the copy here says (the session
/// lived on another node since this copy).
pub(crate) type FoundSession = (Arc<Session>, Option<Vec<String>>);

impl Server {
    /// Registers a new connection, and queues `connected` (when `connected` is given)
    /// before anything else can reach it, with the positions it starts at.
    pub(crate) fn register(&self, conn: &Conn, connected: Option<ConnectedFrame<'_>>) {
        let session = conn.session();
        let mut state = session.lock();
        let all = self.inner.streams.all().map(|s| lock(s));
        self.inner.registry.insert(conn.clone());
        state.attach(conn);
        if let Some(connected) = connected {
            let positions = StreamPositions {
                session: session.position(&state),
                all: all.as_ref().map(|s| s.position()),
                rooms: Default::default(),
            };
            let _ = conn.push(Frame::text(connected(&positions, None)));
        }
        drop(all);
        drop(state);
        self.inner
            .backplane
            .presence(&PresenceEvent::Connected(conn.id()));
        self.announce_identity(conn);
    }

    /// In a cluster, waits (up to [`SESSION_WRITE_WAIT`]) until the backplane has
    /// written the changes to `conn`'s session made so far: a join or leave is answered
    /// after, so a resume on another node never restores the session without it.
    /// `false` when they are not written (the backplane is away, or dropped them): the
    /// answer then says so (`durable: false`), and the client makes the change again
    /// after its next resume. `true` on one node.
    pub(crate) async fn session_changes_written(&self, conn: &Conn) -> bool {
        if !self.inner.sequenced || self.inner.config.session_ttl.is_zero() {
            return true;
        }
        let kept = self.changes_written_of(conn.id()).await == Some(true);
        if !kept {
            tracing::debug!(conn = %conn.id(), "a session's change is not written yet; answered anyway");
        }
        kept
    }

    /// Waits (up to [`SESSION_WRITE_WAIT`]) until the backplane is done with the
    /// changes to `client`'s session this node made so far: whether all were kept
    /// (`false`: one was refused, or dropped), or `None` when they are still waiting.
    pub(super) async fn changes_written_of(&self, client: ConnId) -> Option<bool> {
        let written = self.inner.backplane.session_changes_written(client);
        tokio::time::timeout(SESSION_WRITE_WAIT, written).await.ok()
    }

    /// In a cluster, the backplane keeps a new session too, so its client may resume
    /// on any node: written before `connected` gives the client its token, so no
    /// resume can come before it. With the backplane away, it is written once the
    /// backplane answers (while the connection lasts), and its rooms with it.
    pub(crate) async fn open_in_cluster(&self, conn: &Conn) {
        if !self.inner.sequenced {
            return;
        }
        // The broadcasts' position `connected` gives is the cluster's (it may have
        // been forgotten when the backplane lost messages).
        self.learn_positions([Target::All]).await;
        let ttl = self.inner.config.session_ttl;
        if ttl.is_zero() {
            return;
        }
        let record = conn
            .session()
            .record(conn.identity().as_deref().cloned(), ttl);
        let opened = self.inner.backplane.open_session(&record);
        let failed = match tokio::time::timeout(OPEN_TIMEOUT, opened).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        // Kept later, once the backplane answers (`unrecorded.rs`).
        tracing::debug!(error = %failed, "cannot keep a session in the cluster yet");
        self.open_later(conn.session());
    }

    /// The session a `resume` names. On one node, [`find_session`](Self::find_session).
    /// In a cluster, the session is claimed in the backplane first (the record there is
    /// the truth: its rooms, and a new generation), then taken from this node if a copy
    /// waits here, or rebuilt from the record with the direct messages the backplane
    /// kept for it since the client's position. With the backplane away, only a copy
    /// here can be resumed.
    pub(crate) async fn find_session_anywhere(
        &self,
        request: &ResumeRequest,
        identity: Option<&Identity>,
    ) -> Result<FoundSession, NoSession> {
        let here_only = |found: Result<Arc<Session>, NoSession>| found.map(|s| (s, None));
        if !self.inner.sequenced || self.inner.config.session_ttl.is_zero() {
            return here_only(self.find_session(request, identity));
        }
        let Some(client) = Session::client_of(&request.session_id) else {
            return here_only(self.find_session(request, identity));
        };
        let backplane = &self.inner.backplane;
        // A copy here may have changes (joins, leaves) the backplane has not written
        // yet (its writer waits out an outage): they go first, or the claim would read
        // the record from before them, and the session would come back without them
        // (a leave answered to the client, undone by its resume on this same node).
        // Not written in time: this copy is served as it is, unclaimed, as when the
        // backplane is away.
        let copy_here = self.session_of(client).is_some();
        if copy_here && backplane.is_healthy() && self.changes_written_of(client).await.is_none() {
            let server = &self.inner.config.name;
            tracing::debug!(%client, %server, "a session's changes are not written: resumed from this node's copy");
            return here_only(self.find_session_unclaimed(request, identity));
        }
        let claimed = if copy_here {
            backplane.claim_session(client, request).await
        } else {
            // No copy here to fall back on: a link being remade gets a moment to come
            // back (775 ms in all), or a brief cut would cost the client its session.
            super::interests::patiently(|| backplane.claim_session(client, request)).await
        };
        let (record, rooms) = match claimed {
            Ok(Some(found)) => found,
            Ok(None) => return here_only(self.find_session(request, identity)),
            Err(e) if copy_here => {
                let server = &self.inner.config.name;
                tracing::debug!(error = %e, %server, "cannot claim a session in the cluster");
                return here_only(self.find_session_unclaimed(request, identity));
            }
            // The session may well be in the cluster: the client keeps it and comes
            // back, rather than start afresh and lose what was sent to it meanwhile.
            Err(e) => {
                let server = &self.inner.config.name;
                tracing::debug!(error = %e, %server, "cannot claim a session in the cluster, and no copy here");
                return Err((
                    ErrorCode::ResumeUnavailable,
                    "this node cannot reach the cluster's sessions now: resume again",
                    RecoveryGap::SessionExpired,
                ));
            }
        };
        if let Ok(here) = self.find_session(request, identity) {
            // The session lived on another node since this copy: what was sent to it
            // there is in the backplane, not here, and its rooms are the record's (a
            // connection here still serving this copy has the old ones).
            let moved_meanwhile = record.generation > here.generation() + 1;
            let server = &self.inner.config.name;
            tracing::debug!(%client, %server, copy = here.generation(), claimed = record.generation, ?rooms, "a session claimed, with a copy here");
            here.claimed(record.generation, rooms.clone());
            if moved_meanwhile {
                self.fill_from_backplane(&here, request).await;
            }
            self.fetch_missed(&here, &request.streams).await;
            self.catch_up_with(&here, &request.streams).await;
            return Ok((here, moved_meanwhile.then_some(rooms)));
        }
        if let (Some(owner), Some(me)) = (&record.identity, identity) {
            if owner.id != me.id {
                let other = "that session belongs to another user";
                return Err((ErrorCode::ResumeFailed, other, RecoveryGap::SessionExpired));
            }
        }
        let now = now_ms();
        let history = &self.inner.config.history;
        let server = &self.inner.config.name;
        tracing::debug!(%client, %server, claimed = record.generation, ?rooms, "a session claimed, restored from its record");
        let Some(session) = Session::restored(&record, rooms, history, now) else {
            return here_only(self.find_session(request, identity));
        };
        // Its claim took the attempt in the cluster; here too, for a later stale one.
        session.lock().take_attempt(request.attempt);
        let session = Arc::new(session);
        // Kept here first: numbered direct messages for it now reach it here too.
        self.inner.sessions.keep(session.clone());
        self.fill_from_backplane(&session, request).await;
        self.fetch_missed(&session, &request.streams).await;
        self.catch_up_with(&session, &request.streams).await;
        Ok((session, None))
    }

    /// The copy here of the session a `resume` names, served without a claim in the
    /// cluster (it could not be asked): claimed once it can be (`unrecorded.rs`).
    fn find_session_unclaimed(
        &self,
        request: &ResumeRequest,
        identity: Option<&Identity>,
    ) -> Result<Arc<Session>, NoSession> {
        let session = self.find_session(request, identity)?;
        self.claim_later(&session, request);
        Ok(session)
    }

    /// Takes in the direct messages the backplane kept for a session after the
    /// client's position (they were sent while the session was on another node).
    async fn fill_from_backplane(&self, session: &Session, request: &ResumeRequest) {
        let Some(since) = request.streams.session.as_ref() else {
            return;
        };
        let budget = self.inner.streams.budget();
        let history = &self.inner.config.history;
        let client = session.client();
        let backplane = &self.inner.backplane;
        match super::interests::patiently(|| backplane.session_history(client, since.offset)).await
        {
            Ok(Some(kept)) if kept.position.epoch == since.epoch => {
                session.absorb(kept, since.offset, now_ms(), budget, history);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read a session's history"),
        }
    }

    /// The session a `resume` names, if this client may have it back: it exists here,
    /// its token matches, it has not ended, and it is not another user's.
    pub(crate) fn find_session(
        &self,
        request: &ResumeRequest,
        identity: Option<&Identity>,
    ) -> Result<Arc<Session>, NoSession> {
        const UNKNOWN: &str = "no session to resume: it expired, ended, or never existed here";
        let expired = (
            ErrorCode::ResumeFailed,
            UNKNOWN,
            RecoveryGap::SessionExpired,
        );
        if self.inner.config.session_ttl.is_zero() {
            let off = "sessions are not kept on this server (session_ttl is 0)";
            return Err((ErrorCode::ResumeFailed, off, RecoveryGap::SessionExpired));
        }
        let client = Session::client_of(&request.session_id).ok_or(expired)?;
        let session = self.session_of(client).ok_or(expired)?;
        // The id is not secret; the token is, and is compared in constant time.
        let token_ok = session.token_matches(&request.token);
        if session.id() != request.session_id || !token_ok {
            return Err(expired);
        }
        let mut state = session.lock();
        if state.is_ended() {
            return Err(expired);
        }
        if !state.take_attempt(request.attempt) {
            let stale = "a newer attempt to resume this session came first";
            return Err((ErrorCode::ResumeFailed, stale, RecoveryGap::SessionExpired));
        }
        let owner = match (state.live(), state.detached()) {
            (Some(live), _) => live.identity().map(|i| i.id.clone()),
            (None, Some(d)) => d.identity.as_ref().map(|i| i.id.clone()),
            (None, None) => None,
        };
        drop(state);
        if let (Some(owner), Some(me)) = (owner, identity) {
            if owner != me.id {
                let other = "that session belongs to another user";
                return Err((ErrorCode::ResumeFailed, other, RecoveryGap::SessionExpired));
            }
        }
        Ok(session)
    }

    /// The streams a resume of `session` restores (its rooms and the broadcasts'), for
    /// [`learn_positions`](Self::learn_positions) before it.
    pub(crate) fn streams_of(&self, session: &Session) -> Vec<Target> {
        let state = session.lock();
        let mut rooms: Vec<Target> = match (state.live(), state.detached()) {
            (Some(live), _) => live.rooms().into_iter().map(Target::Room).collect(),
            (None, Some(d)) => d
                .rooms
                .iter()
                .map(|r| Target::Room(r.to_string()))
                .collect(),
            (None, None) => Vec::new(),
        };
        rooms.push(Target::All);
        rooms
    }

    /// Registers `conn`, which serves a session [`find_session`](Self::find_session)
    /// found, and restores it: identity, rooms, and per stream either every message
    /// the client missed (after the positions it gave) or `recovered: false`. Holds
    /// the session's and the streams' locks throughout, so `connected`, the replay
    /// and the live messages reach the client in that order, with no gap and no
    /// duplicate. A connection still serving the session is closed (`SESSION_TAKEN`).
    ///
    /// `rooms_from_record`: the rooms the cluster's record gives the session, when they
    /// win over those of a connection still serving it here ([`FoundSession`]).
    ///
    /// `None` (nothing registered) when a newer attempt to resume the session was
    /// taken since this one was found ([`ResumeRequest::attempt`]): the client gave
    /// this one up, and the connection it went on with keeps the session.
    pub(crate) fn register_resumed(
        &self,
        conn: &Conn,
        request: &ResumeRequest,
        rooms_from_record: Option<Vec<String>>,
        connected: ConnectedFrame<'_>,
    ) -> Option<ResumeOutcome> {
        let now = now_ms();
        let me = conn.id();
        let session = conn.session();
        let mut state = session.lock();
        if !state.is_newest_attempt(request.attempt) {
            return None;
        }
        let (old, rooms, identity) = match (state.live(), state.detached()) {
            (Some(live), _) => (
                Some((live.clone(), live.rooms())),
                rooms_from_record.unwrap_or_else(|| live.rooms()),
                live.identity().as_deref().cloned(),
            ),
            (None, Some(d)) => (
                None,
                d.rooms.iter().map(|r| r.to_string()).collect(),
                d.identity.clone(),
            ),
            (None, None) => (None, Vec::new(), None),
        };
        if let Some(identity) = identity {
            if !conn.is_authenticated() {
                conn.set_identity(identity);
            }
        }

        let mut replay: Vec<Text> = Vec::new();
        let history = &self.inner.config.history;
        let session_recovery = session.stream(&mut state, history, now).map(|stream| {
            recover(
                stream,
                request.streams.session.as_ref(),
                me,
                now,
                &mut replay,
            )
        });
        let all = self.inner.streams.all().map(|s| lock(s));
        let all_recovery = all
            .as_ref()
            .map(|stream| recover(stream, request.streams.all.as_ref(), me, now, &mut replay));

        let mut rooms = rooms;
        rooms.sort();
        let config = &self.inner.config;
        let streams: Vec<_> = rooms
            .iter()
            .map(|room| self.inner.streams.room(room, config, now))
            .collect();
        let guards: Vec<Option<MutexGuard<'_, Stream>>> = streams
            .iter()
            .map(|s| s.as_ref().map(|s| lock(s)))
            .collect();
        let mut outcome = ResumeOutcome {
            resumed: true,
            reason: None,
            session: session_recovery,
            all: all_recovery,
            rooms: Default::default(),
        };
        for (room, guard) in rooms.iter().zip(&guards) {
            let recovery = match guard {
                Some(stream) => {
                    let since = request.streams.rooms.get(room);
                    recover(stream, since, me, now, &mut replay)
                }
                None => Recovery::lost(RecoveryGap::NoHistory, Position::new("", 0)),
            };
            outcome.rooms.insert(room.clone(), recovery);
        }

        self.inner.registry.insert(conn.clone());
        self.inner.sessions.take(session);
        state.attach(conn);
        state.expect_resent(&request.resend, self.inner.config.session_replies);
        let max = config.max_rooms_per_connection;
        for room in &rooms {
            let registry = &self.inner.registry;
            if conn
                .add_room(room, max, || registry.join(room, conn).0)
                .is_err()
            {
                tracing::warn!(conn = %me, %room, "a resumed connection could not rejoin a room");
            }
        }
        let positions = StreamPositions {
            session: outcome.session.as_ref().map(|r| r.position.clone()),
            all: outcome.all.as_ref().map(|r| r.position.clone()),
            rooms: outcome
                .rooms
                .iter()
                .map(|(k, r)| (k.clone(), r.position.clone()))
                .collect(),
        };
        let _ = conn.push(Frame::text(connected(&positions, Some(&outcome))));
        conn.push_replayed(replay);
        drop(guards);
        drop(all);
        drop(state);

        self.inner.backplane.presence(&PresenceEvent::Connected(me));
        self.announce_identity(conn);
        if self.inner.sequenced && !config.session_ttl.is_zero() {
            self.inner
                .backplane
                .presence(&PresenceEvent::SessionMoved(me, session.generation()));
        }
        match old {
            // The old connection's memberships were handed over: nothing changed for
            // the rooms' other members, but for the rooms the record took away or
            // gave (the session lived on another node since that connection's copy).
            Some((old, before)) => {
                for room in before.iter().filter(|r| !rooms.contains(r)) {
                    if self.inner.registry.leave(room, &old) {
                        self.announce_leave(conn, room);
                    }
                }
                for room in rooms.iter().filter(|r| !before.contains(r)) {
                    self.announce_join(conn, room);
                }
                old.close(
                    ErrorCode::SessionTaken,
                    "the session was resumed on another connection",
                );
            }
            None => {
                for room in &rooms {
                    self.announce_join(conn, room);
                }
            }
        }
        Some(outcome)
    }

    /// Takes a closed connection out of the registry and its rooms. Its session is kept
    /// for `session_ttl` when `resumable` (it dropped, it was not kicked and did not
    /// say goodbye). A connection a resume has replaced leaves the rooms and the id to
    /// its successor.
    pub(crate) fn remove_connection(&self, conn: &Conn, resumable: bool) {
        let rooms = conn.leave_all_rooms();
        let session = conn.session();
        let keep = resumable && !self.inner.config.session_ttl.is_zero();
        let mut current = false;
        session.detach(conn, rooms.clone(), keep, now_ms(), || {
            current = true;
            // Kept before the connection leaves the registry: a direct message finds
            // one or the other, never neither.
            if keep {
                self.inner.sessions.keep(session.clone());
            }
            self.inner.registry.remove(conn);
        });
        if current {
            for room in &rooms {
                if self.inner.registry.leave(room, conn) {
                    self.announce_leave_on_close(conn, room);
                }
            }
            let backplane = &self.inner.backplane;
            backplane.presence(&PresenceEvent::Disconnected(conn.id()));
            if self.inner.clustered {
                if keep {
                    backplane.presence(&PresenceEvent::SessionDetached {
                        client: conn.id(),
                        ttl: self.inner.config.session_ttl,
                        rooms: rooms.iter().map(|r| r.to_string()).collect(),
                    });
                } else if !session.lock().has_moved() {
                    backplane.presence(&PresenceEvent::SessionEnded(conn.id()));
                }
            }
        }
        self.release_admission();
    }

    /// Drops expired sessions and history, and the room streams nobody can come back
    /// to. Runs on a timer.
    pub(crate) fn sweep_history(&self) {
        let now = now_ms();
        let config = &self.inner.config;
        let session_ttl = u64::try_from(config.session_ttl.as_millis()).unwrap_or(u64::MAX);
        let budget = self.inner.streams.budget();
        self.inner.sessions.sweep(now, session_ttl, budget);
        let history_ttl = config
            .history_rooms
            .iter()
            .map(|r| r.policy.ttl)
            .chain([config.history.ttl])
            .max()
            .unwrap_or_default();
        let idle =
            session_ttl.saturating_add(u64::try_from(history_ttl.as_millis()).unwrap_or(u64::MAX));
        let registry = &self.inner.registry;
        self.inner
            .streams
            .sweep(now, idle, |room| registry.room_size(room) > 0);
    }
}

/// One stream's recovery from the client's position, the replayed frames appended.
fn recover(
    stream: &Stream,
    since: Option<&Position>,
    who: ConnId,
    now: u64,
    replay: &mut Vec<Text>,
) -> Recovery {
    match since {
        Some(since) => {
            let (recovery, frames) = stream.missed_since(since, who, now);
            replay.extend(frames);
            recovery
        }
        None => Recovery::lost(RecoveryGap::NoPosition, stream.position()),
    }
}
