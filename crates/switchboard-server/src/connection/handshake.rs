//! Opening a connection: admission (the connection limit), authentication (the first
//! message must be `auth` when the server requires it), registration, `connected`, and
//! the connect hooks.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde_json::json;
use switchboard_proto::{
    Dialect, Envelope, ErrorBody, ErrorCode, Payload, RecoveryGap, ResumeOutcome, ResumeRequest,
    StreamPositions, ack_ok, encode_payload_frame, error_reply, types,
};

use super::closing::close_socket;
use super::dispatch::Rest;
use super::task::{ConnectionTask, Reading};
use super::{Closing, Conn, Mode};
use crate::auth::{Credentials, Outcome};
use crate::dialect::{DialectAdapter, msgpack_json_limit};
use crate::rate_limit::{Admit, RateLimiter};
use crate::server::ConnectedFrame;
use crate::slots::Refused;
use crate::ws::{Frame, Incoming, WebSocket};
use crate::{ConnId, Identity, Server};

/// Admission, authentication, registration and the `connected` message; `None` when the
/// connection was turned away.
pub(super) async fn open(
    server: Server,
    ws: WebSocket,
    remote: Option<SocketAddr>,
    mode: Mode,
) -> Option<ConnectionTask> {
    let config = server.config();
    let (mut dialect, msgpack, echo, resume, upgraded_as, listen_first) = match mode {
        Mode::Messages {
            dialect,
            msgpack,
            resume,
            identity,
            listen_first,
        } => (dialect, msgpack, false, resume, identity, listen_first),
        Mode::Echo => (Default::default(), false, true, false, None, false),
    };
    let id = server.next_conn_id();
    let mut opening = Opening {
        server: &server,
        ws,
        adapter: DialectAdapter::new(dialect, msgpack, id),
        id,
        remote,
        limiter: RateLimiter::new(config.rate_limit, config.rate_burst),
    };

    // A connection that must authenticate first waits in a place of its own, capped
    // overall and per address, and counts against `max_connections` only once it has
    // authenticated: unauthenticated connections cannot hold every place.
    let must_authenticate = !echo && config.auth_required && server.auth().is_configured();
    let authenticated = if let Some(identity) = upgraded_as {
        Some((*identity, None))
    } else if must_authenticate {
        let waiting = match server.auth_slots().take(remote.map(|r| r.ip())) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::warn!(
                    ?remote,
                    ?why,
                    "connection refused: too many waiting to authenticate"
                );
                let (code, message) = match why {
                    Refused::AddressFull => (
                        ErrorCode::RateLimited,
                        "too many connections from this address are waiting to authenticate",
                    ),
                    Refused::Full => (
                        ErrorCode::ServerFull,
                        "too many connections are waiting to authenticate",
                    ),
                };
                opening.refuse(None, code, message).await;
                return None;
            }
        };
        let done = opening.authenticate().await?;
        drop(waiting);
        Some(done)
    } else {
        None
    };
    if !server.try_admit() {
        tracing::warn!(
            max = config.max_connections,
            "connection refused: server full"
        );
        let ref_id = authenticated.as_ref().and_then(|(_, r)| r.as_deref());
        let message = "server at its connection limit";
        opening.refuse(ref_id, ErrorCode::ServerFull, message).await;
        return None;
    }

    // A client that may speak first in another dialect (datadivr's) is heard before
    // anything is sent to it: its first frame may decide what it is sent.
    let mut first = None;
    if listen_first && !resume && authenticated.is_none() {
        match opening.first_frame().await {
            FirstFrame::Gone => {
                server.release_admission();
                return None;
            }
            FirstFrame::Silent => {}
            FirstFrame::Frame(frame) => {
                if let Incoming::Text(text) = &frame {
                    opening.adapter.recognise(text.as_str(), id);
                    dialect = opening.adapter.dialect();
                }
                first = Some(Box::new(frame));
            }
        }
    }

    // A resume is read before the connection is made: it decides the client id.
    let resume = if resume && !echo && dialect == Dialect::Native {
        let request = opening.read_resume().await;
        match request {
            None => {
                server.release_admission();
                return None;
            }
            Some(request) => Some(request),
        }
    } else {
        None
    };

    let (identity, auth_ref) = match authenticated {
        Some((identity, r)) => (Some(identity), r),
        None => (None, None),
    };
    let found = match resume.as_ref() {
        Some((Ok(request), _)) => Some(
            server
                .find_session_anywhere(request, identity.as_ref())
                .await,
        ),
        Some((Err(message), _)) => Some(Err((
            ErrorCode::ResumeFailed,
            *message,
            RecoveryGap::SessionExpired,
        ))),
        None => None,
    };
    if let Some(Err((ErrorCode::ResumeUnavailable, message, _))) = found {
        // The session is kept for the client's next try: no fresh one is made.
        if let Some(metrics) = server.metrics() {
            metrics.resumed("unavailable");
        }
        let ref_id = resume.as_ref().and_then(|(_, r)| r.clone());
        opening
            .refuse(ref_id.as_deref(), ErrorCode::ResumeUnavailable, message)
            .await;
        server.release_admission();
        return None;
    }
    let Opening {
        ws,
        adapter,
        limiter,
        ..
    } = opening;
    let conn;
    let mut resume_error = None;
    let mut resume_ack = None;
    match (found, &resume) {
        (Some(Ok((session, rooms_from_record))), Some((Ok(request), ref_id))) => {
            server.learn_positions(server.streams_of(&session)).await;
            conn = Conn::with_session(session, remote, &server, dialect);
            if let Some(identity) = identity {
                conn.set_identity(identity);
            }
            let build = |p: &StreamPositions, o: Option<&ResumeOutcome>| {
                connected_frame_for(&conn, &server, p, o)
            };
            let resumed = server.register_resumed(&conn, request, rooms_from_record, &build);
            let Some(outcome) = resumed else {
                // A newer attempt of the client's has the session: this one, which it
                // gave up on, ends here.
                tracing::debug!(conn = %conn.id(), "a resume the client gave up on came late");
                server.release_admission();
                return None;
            };
            tracing::debug!(
                conn = %conn.id(),
                server = %server.config().name,
                generation = conn.session().generation(),
                rooms = ?outcome.rooms.keys().collect::<Vec<_>>(),
                recovered = outcome.fully_recovered(),
                "session resumed"
            );
            if let Some(metrics) = server.metrics() {
                metrics.resumed(if outcome.fully_recovered() {
                    "recovered"
                } else {
                    "partial"
                });
            }
            resume_ack = ref_id.clone().map(|r| (r, outcome));
        }
        (found, resume) => {
            conn = Conn::new(id, remote, &server, dialect);
            if let Some(identity) = identity {
                conn.set_identity(identity);
            }
            let failed = match found {
                Some(Err((code, message, reason))) => Some((code, message, reason)),
                _ => None,
            };
            let outcome = failed.map(|(_, _, reason)| ResumeOutcome {
                resumed: false,
                reason: Some(reason),
                session: None,
                all: None,
                rooms: Default::default(),
            });
            let build = |p: &StreamPositions, _: Option<&ResumeOutcome>| {
                connected_frame_for(&conn, &server, p, outcome.as_ref())
            };
            if !echo {
                server.open_in_cluster(&conn).await;
            }
            server.register(&conn, (!echo).then_some(&build as ConnectedFrame<'_>));
            if let Some((code, message, reason)) = failed {
                if let Some(metrics) = server.metrics() {
                    metrics.resumed("failed");
                }
                let ref_id = resume.as_ref().and_then(|(_, r)| r.clone());
                let body = ErrorBody::new(code, message).with_details(json!({ "reason": reason }));
                resume_error = Some(error_reply(ref_id.as_deref(), &body));
            }
        }
    }
    tracing::debug!(conn = %conn.id(), ?remote, "connected");
    if let (Some(metrics), false) = (server.metrics(), echo) {
        metrics.connection_opened();
    }
    if server.is_shutting_down() {
        // Shutdown swept the registry before we were in it.
        conn.close(ErrorCode::ShuttingDown, "server shutting down");
    }
    if !echo {
        if let Some(r) = auth_ref {
            let result = serde_json::value::to_raw_value(&auth_result(&conn)).ok();
            let _ = conn.push(Frame::text(ack_ok(&r, result.as_deref())));
        }
        if let Some(error) = resume_error {
            let _ = conn.push(Frame::text(error));
        }
        if let Some((r, outcome)) = resume_ack {
            let result = serde_json::value::to_raw_value(&outcome).ok();
            let _ = conn.push(Frame::text(ack_ok(&r, result.as_deref())));
        }
    }
    let span = connection_span(&conn, remote);
    // The connect hooks run first, before the client's messages.
    let hooks = (!server.hooks().connect.is_empty()).then(|| connect_hooks(&server, &conn));
    Some(ConnectionTask {
        server,
        conn,
        ws,
        limiter,
        adapter,
        echo,
        calls: None,
        first,
        rest: hooks,
        reading: Reading::Open,
        read_blocked: false,
        finished: None,
        span,
    })
}

/// The connection's span, while debug spans are on.
fn connection_span(conn: &Conn, remote: Option<SocketAddr>) -> Option<Box<tracing::Span>> {
    let span = tracing::debug_span!(
        "connection",
        client = %conn.id(),
        remote = remote.map(tracing::field::display),
        dialect = conn.dialect().as_str(),
    );
    (!span.is_disabled()).then(|| Box::new(span))
}

/// `connected`: `{client_id, user_id, session_id, resume_token?, server, identity?,
/// streams?, resumed?}`.
fn connected_frame_for(
    conn: &Conn,
    server: &Server,
    positions: &StreamPositions,
    resumed: Option<&ResumeOutcome>,
) -> String {
    // `user_id` as the message protocol pattern's `connected` has it: the user's id
    // when it authenticated, else the client id.
    let user_id = conn
        .identity()
        .map_or_else(|| conn.id().to_string(), |i| i.id.clone());
    let mut payload = json!({
        "client_id": conn.id(),
        "user_id": user_id,
        "session_id": conn.session_id(),
        "server": server.name(),
    });
    if !server.config().session_ttl.is_zero() {
        payload["resume_token"] = json!(conn.session().token());
    }
    if let Some(identity) = conn.identity() {
        payload["identity"] = json!(&*identity);
    }
    if positions.session.is_some() || positions.all.is_some() || !positions.rooms.is_empty() {
        payload["streams"] = json!(positions);
    }
    if let Some(resumed) = resumed {
        payload["resumed"] = json!(resumed);
    }
    match Payload::from_serialize(&payload) {
        Ok(payload) => encode_payload_frame(types::CONNECTED, &payload),
        Err(_) => String::new(),
    }
}

/// The result of a successful `auth`: `{client_id, identity}`.
pub(crate) fn auth_result(conn: &Conn) -> serde_json::Value {
    json!({ "client_id": conn.id(), "identity": conn.identity().as_deref() })
}

/// What a client that may speak first did within
/// [`first_frame_wait`](crate::ServerConfig::first_frame_wait).
enum FirstFrame {
    /// Sent this frame (handled once the connection is open).
    Frame(Incoming),
    /// Nothing yet: it waits for `connected`.
    Silent,
    /// Went away.
    Gone,
}

/// A `resume` as read: the request or why it is not one, and its `ref`.
type ResumeRead = (Result<ResumeRequest, &'static str>, Option<String>);

/// A connection not yet registered.
struct Opening<'a> {
    server: &'a Server,
    ws: WebSocket,
    adapter: DialectAdapter,
    id: ConnId,
    remote: Option<SocketAddr>,
    limiter: RateLimiter,
}

impl Opening<'_> {
    /// Turns the connection away: an `error` frame, then a close with the code's close
    /// code.
    async fn refuse(&mut self, ref_id: Option<&str>, code: ErrorCode, message: &str) {
        let error = self
            .adapter
            .localize_frame(error_reply(ref_id, &ErrorBody::new(code, message)));
        let closing = Closing::with_code(code, message);
        let limit = self.server.config().close_timeout;
        close_socket(&mut self.ws, &closing, error, limit).await;
    }

    /// The client's first data frame, if it sends one within
    /// [`first_frame_wait`](crate::ServerConfig::first_frame_wait). Pings count against
    /// the rate as always.
    async fn first_frame(&mut self) -> FirstFrame {
        let wait = self.server.config().first_frame_wait;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return FirstFrame::Silent,
                next = self.ws.next() => next,
            };
            match next {
                None | Some(Err(_)) | Some(Ok(Incoming::Close(_))) => return FirstFrame::Gone,
                Some(Ok(Incoming::Control)) => {
                    if self.limiter.admit() == Admit::Close {
                        return FirstFrame::Gone;
                    }
                }
                Some(Ok(frame)) => return FirstFrame::Frame(frame),
            }
        }
    }

    /// Reads the `resume` the client announced (`?resume=1`), within the auth timeout.
    /// `None` when the connection went away meanwhile.
    async fn read_resume(&mut self) -> Option<ResumeRead> {
        let config = self.server.config();
        let deadline = tokio::time::Instant::now() + config.auth_timeout;
        loop {
            let next = tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return Some((Err("no `resume` message within the auth timeout"), None));
                }
                next = self.ws.next() => next,
            };
            let decoded = match next {
                None | Some(Err(_)) | Some(Ok(Incoming::Close(_))) => return None,
                Some(Ok(Incoming::Control)) => {
                    if self.limiter.admit() == Admit::Close {
                        return None;
                    }
                    continue;
                }
                Some(Ok(Incoming::Binary(data))) => {
                    let max_json = msgpack_json_limit(config.max_message_size);
                    match self.adapter.read_auth_binary(&data, max_json) {
                        Some(decoded) => decoded,
                        None => return Some((Err("the first message must be `resume`"), None)),
                    }
                }
                Some(Ok(Incoming::Text(text))) => Envelope::decode(text.as_str()),
            };
            return Some(match decoded {
                Ok(env) if env.kind == types::RESUME => {
                    let request = env
                        .payload_as::<ResumeRequest>()
                        .map_err(|_| "a `resume` needs `session_id`, `token` and `streams`");
                    (request, env.ref_id)
                }
                Ok(env) => (Err("the first message must be `resume`"), env.ref_id),
                Err(e) => (Err("the first message must be `resume`"), e.ref_id),
            });
        }
    }

    /// The authentication phase: the client's first message must be `auth`, within the
    /// auth timeout. Returns the identity and the `ref` of the `auth` message, or `None`
    /// when the connection was refused (and closed) or dropped.
    async fn authenticate(&mut self) -> Option<(Identity, Option<String>)> {
        let server = self.server;
        let config = server.config();
        let deadline = tokio::time::Instant::now() + config.auth_timeout;
        let limit = config.close_timeout;
        let timed_out = format!(
            "no `auth` message within {} ms",
            config.auth_timeout.as_millis()
        );
        let stopping = server.accepting_stopped();
        loop {
            let next = tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    self.refuse(None, ErrorCode::AuthTimeout, &timed_out).await;
                    return None;
                }
                () = stopping.cancelled() => {
                    self.refuse(None, ErrorCode::ShuttingDown, "server shutting down").await;
                    return None;
                }
                next = self.ws.next() => next,
            };
            let env = match next {
                None => return None,
                Some(Err(e)) => {
                    let closing = Closing::after_read_error(e, config.max_message_size);
                    close_socket(&mut self.ws, &closing, None, limit).await;
                    return None;
                }
                Some(Ok(Incoming::Close(_))) => {
                    close_socket(&mut self.ws, &Closing::lost("closed"), None, limit).await;
                    return None;
                }
                // Counted against the rate below, then passed over.
                Some(Ok(Incoming::Control)) => {
                    if self.limiter.admit() == Admit::Close {
                        let msg = "too many messages before authenticating";
                        self.refuse(None, ErrorCode::RateLimited, msg).await;
                        return None;
                    }
                    continue;
                }
                Some(Ok(Incoming::Binary(data))) => {
                    let max_json = msgpack_json_limit(config.max_message_size);
                    self.adapter.read_auth_binary(&data, max_json)
                }
                Some(Ok(Incoming::Text(text))) => Some(self.adapter.read_auth(text.as_str())),
            };
            let ref_id = match &env {
                Some(Ok(env)) => env.ref_id.clone(),
                Some(Err(e)) => e.ref_id.clone(),
                None => None,
            };
            match self.limiter.admit() {
                Admit::Yes => {}
                Admit::Close => {
                    let msg = "too many messages before authenticating";
                    self.refuse(ref_id.as_deref(), ErrorCode::RateLimited, msg)
                        .await;
                    return None;
                }
                Admit::No { .. } => continue,
            }
            let reply = match env {
                Some(Ok(env)) if env.kind == types::AUTH => {
                    let credentials = Credentials::new(env.payload, self.remote);
                    let checked = server.auth().check(credentials, self.id.to_string());
                    let (code, message) = match tokio::time::timeout_at(deadline, checked).await {
                        Err(_) => (ErrorCode::AuthTimeout, timed_out.clone()),
                        Ok(Outcome::Accepted(identity)) => {
                            tracing::debug!(conn = %self.id, identity = %identity.id, "authenticated");
                            return Some((identity, ref_id));
                        }
                        Ok(Outcome::Rejected(message)) => {
                            tracing::info!(remote = ?self.remote, "authentication failed");
                            if let Some(metrics) = server.metrics() {
                                metrics.auth_failed();
                            }
                            (ErrorCode::AuthFailed, message)
                        }
                        Ok(Outcome::Throttled(wait)) => {
                            (ErrorCode::RateLimited, crate::auth::throttled_message(wait))
                        }
                    };
                    self.refuse(ref_id.as_deref(), code, &message).await;
                    return None;
                }
                Some(Err(e)) => ErrorBody::new(e.code(), e.to_string()),
                _ => ErrorBody::new(
                    ErrorCode::AuthRequired,
                    "authenticate first: send {\"type\":\"auth\",\"payload\":{\"password\":\"...\"}}",
                ),
            };
            let Some(frame) = self
                .adapter
                .localize_frame(error_reply(ref_id.as_deref(), &reply))
            else {
                continue;
            };
            let sent = self.ws.send(frame);
            if !matches!(tokio::time::timeout(limit, sent).await, Ok(Ok(()))) {
                return None;
            }
        }
    }
}

/// The connect hooks, in order, before the client's first message is handled.
fn connect_hooks(server: &Server, conn: &Conn) -> Rest {
    let (server, conn) = (server.clone(), conn.clone());
    Box::pin(async move {
        for hook in server.hooks().connect.iter() {
            if AssertUnwindSafe(hook(conn.clone()))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(conn = %conn.id(), "a connect hook panicked");
            }
        }
    })
}
