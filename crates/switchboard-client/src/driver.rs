//! The task behind a client: runs one connection at a time, and between connections
//! reconnects with backoff, authenticates, rejoins rooms and flushes the offline queue.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::{Ack, Envelope, ErrorBody, Reconnect, reconnect_hint, types};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::connect::{self, AUTH_REF, Ws};
use crate::handlers::{ReconnectAttempt, call_all, snapshot};
use crate::locks::lock;
use crate::room_sync;
use crate::state::{Inner, Outgoing};
use crate::{ClientError, ConnectError, RequestError};
use crate::{CloseInfo, ConnectionState};

/// How one connection ended.
struct Ended {
    info: CloseInfo,
    /// The user closed the client: do not reconnect.
    by_user: bool,
}

pub(crate) async fn run(inner: Arc<Inner>, mut ws: Ws) {
    loop {
        let ended = run_connection(&inner, ws).await;
        go_offline(&inner);
        *lock(&inner.close_info) = Some(ended.info.clone());
        let close_fns = snapshot(&lock(&inner.handlers).close);
        call_all(&close_fns, |f| f(&ended.info));

        let reconnect = &inner.config.reconnect;
        if ended.by_user || !reconnect.enabled || ended.info.reconnect == Reconnect::Never {
            return finish(&inner);
        }
        set_state(&inner, ConnectionState::Reconnecting);
        ws = match reconnect_loop(&inner, ended.info.reconnect).await {
            Some(ws) => ws,
            None => return finish(&inner),
        };
    }
}

/// Tries until a connection opens, the user closes, a refusal says never, or the
/// attempts run out. On success the rooms are rejoined and the state is `Open`.
async fn reconnect_loop(inner: &Arc<Inner>, hint: Reconnect) -> Option<Ws> {
    let reconnect = &inner.config.reconnect;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if reconnect.max_attempts.is_some_and(|max| attempt > max) {
            inner.report(&ClientError::GaveUp {
                attempts: attempt - 1,
            });
            return None;
        }
        let delay = reconnect.jittered_delay(attempt, hint, random_unit());
        let attempt_fns = snapshot(&lock(&inner.handlers).attempt);
        call_all(&attempt_fns, |f| f(&ReconnectAttempt { attempt, delay }));
        if !wait_unless_closed(inner, delay).await {
            return None;
        }
        let in_flight = in_flight(inner);
        let resume = if inner.config.resume {
            let resend = in_flight.iter().map(|(r, _)| r.clone()).collect();
            lock(&inner.streams).resume_request(resend)
        } else {
            None
        };
        match connect::open(&inner.url, &inner.config, resume.as_ref()).await {
            Ok((mut ws, mut session, positions, token)) => {
                if token.is_some() {
                    *lock(&inner.token) = token;
                }
                lock(&inner.streams).connected(&positions);
                let resumed = session.resumed.as_ref().is_some_and(|o| o.resumed);
                // Rooms first (unless the resumed session has them), then what was in
                // flight, then what was queued: the server handles a connection's
                // messages in order, so the rooms are joined before anything sent to them.
                let outcome = session.resumed.as_mut().filter(|_| resumed);
                let rejoined = room_sync::set_rooms(inner, &mut ws, outcome, &in_flight).await;
                if rejoined.is_err() || resend(&mut ws, &in_flight).await.is_err() {
                    inner.report(&ClientError::Connection {
                        attempt,
                        message: "the connection dropped while rejoining rooms".into(),
                        code: None,
                    });
                    continue;
                }
                room_sync::settled(inner);
                tracing::info!(url = %inner.url, attempt, client_id = %session.client_id, "reconnected");
                *lock(&inner.session) = session.clone();
                let closing = {
                    let mut ob = lock(&inner.outbox);
                    if ob.close_requested.is_none() {
                        ob.online = true;
                    }
                    ob.close_requested.is_some()
                };
                if closing {
                    let _ = ws.close().await;
                    return None;
                }
                inner.wake.notify_one();
                inner.space.notify_waiters();
                if let Some(outcome) = &session.resumed {
                    tracing::info!(
                        resumed = outcome.resumed,
                        recovered = outcome.fully_recovered(),
                        "session resume"
                    );
                    let resume_fns = snapshot(&lock(&inner.handlers).resume);
                    call_all(&resume_fns, |f| f(outcome));
                }
                set_state(inner, ConnectionState::Open);
                let open_fns = snapshot(&lock(&inner.handlers).open);
                call_all(&open_fns, |f| f(&session));
                return Some(ws);
            }
            Err(e) => {
                let code = match &e {
                    ConnectError::Refused { code, .. } => Some(code.clone()),
                    _ => None,
                };
                tracing::debug!(url = %inner.url, attempt, error = %e, "reconnect attempt failed");
                inner.report(&ClientError::Connection {
                    attempt,
                    message: e.to_string(),
                    code,
                });
                if e.reconnect() == Reconnect::Never {
                    *lock(&inner.close_info) = Some(CloseInfo {
                        code: 1000,
                        reason: e.to_string(),
                        reconnect: Reconnect::Never,
                    });
                    return None;
                }
            }
        }
    }
}

/// Sleeps `delay`; false if the user closed the client meanwhile.
async fn wait_unless_closed(inner: &Inner, delay: Duration) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        if lock(&inner.outbox).close_requested.is_some() {
            return false;
        }
        tokio::select! {
            () = &mut sleep => return lock(&inner.outbox).close_requested.is_none(),
            () = inner.wake.notified() => {}
        }
    }
}

/// The requests written to the socket that dropped and not answered, oldest first:
/// what to send again (empty when `retry_in_flight` is off).
fn in_flight(inner: &Inner) -> Vec<(String, Message)> {
    if !inner.config.retry_in_flight {
        return Vec::new();
    }
    let pending = lock(&inner.pending);
    let mut v: Vec<(u64, String, Message)> = pending
        .iter()
        .filter(|(_, p)| p.written)
        .filter_map(|(r, p)| p.frame.clone().map(|f| (p.seq, r.clone(), f)))
        .collect();
    v.sort_by_key(|(seq, _, _)| *seq);
    v.into_iter().map(|(_, r, f)| (r, f)).collect()
}

async fn resend(
    ws: &mut Ws,
    frames: &[(String, Message)],
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for (_, frame) in frames {
        ws.feed(frame.clone()).await?;
    }
    ws.flush().await
}

/// The connection is gone: stop taking frames for it. Requests whose frames went out on
/// it are sent again after the reconnect, or (`retry_in_flight` off) fail: they may or
/// may not have been processed.
fn go_offline(inner: &Inner) {
    lock(&inner.outbox).online = false;
    if inner.config.retry_in_flight && inner.config.reconnect.enabled {
        inner.space.notify_waiters();
        return;
    }
    let lost: Vec<_> = {
        let mut pending = lock(&inner.pending);
        let keys: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.written)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| pending.remove(&k))
            .collect()
    };
    for p in lost {
        let _ = p.tx.send(Err(RequestError::ConnectionLost));
    }
    inner.space.notify_waiters();
}

/// The client has ended for good: fail what waits, end the streams.
fn finish(inner: &Inner) {
    {
        let mut ob = lock(&inner.outbox);
        ob.closed = true;
        ob.online = false;
        ob.frames.clear();
        ob.bytes = 0;
    }
    inner.space.notify_waiters();
    let pending: Vec<_> = lock(&inner.pending).drain().map(|(_, p)| p).collect();
    for p in pending {
        let _ = p.tx.send(Err(RequestError::Closed));
    }
    lock(&inner.handlers).streams.clear();
    set_state(inner, ConnectionState::Closed);
}

pub(crate) fn set_state(inner: &Inner, state: ConnectionState) {
    if *inner.state.borrow() == state {
        return;
    }
    inner.state.send_replace(state);
    let fns = snapshot(&lock(&inner.handlers).state);
    call_all(&fns, |f| f(state));
}

/// A number in [0, 1) for jitter; no need for a cryptographic source.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs one connection: writes queued frames (feeding all that are ready, flushing
/// once), reads and dispatches incoming frames, until it ends.
async fn run_connection(inner: &Arc<Inner>, ws: Ws) -> Ended {
    let (mut sink, mut stream) = ws.split();
    let mut batch: std::collections::VecDeque<Outgoing> = std::collections::VecDeque::new();
    let mut close_sent = false;
    let close_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(close_deadline);
    loop {
        tokio::select! {
            () = &mut close_deadline, if close_sent => {
                return Ended {
                    info: CloseInfo { code: 1006, reason: "the server did not answer the close".into(), reconnect: Reconnect::Backoff },
                    by_user: true,
                };
            }
            () = inner.wake.notified(), if !close_sent => {
                let close = {
                    let mut ob = lock(&inner.outbox);
                    match ob.close_requested.clone() {
                        Some(c) => Some(c),
                        None => {
                            std::mem::swap(&mut ob.frames, &mut batch);
                            ob.bytes = 0;
                            None
                        }
                    }
                };
                inner.space.notify_waiters();
                if let Some((code, reason)) = close {
                    set_state(inner, ConnectionState::Closing);
                    let frame = Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }));
                    if sink.send(frame).await.is_err() {
                        return Ended {
                            info: CloseInfo { code, reason: "closed by the client".into(), reconnect: Reconnect::Never },
                            by_user: true,
                        };
                    }
                    close_sent = true;
                    close_deadline.as_mut().reset(tokio::time::Instant::now() + inner.config.close_timeout);
                    continue;
                }
                if let Err(e) = write_batch(inner, &mut sink, &mut batch).await {
                    return Ended {
                        info: CloseInfo { code: 1006, reason: e, reconnect: Reconnect::Backoff },
                        by_user: false,
                    };
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => dispatch(inner, t.as_str()),
                Some(Ok(Message::Binary(b))) => {
                    let fns = snapshot(&lock(&inner.handlers).binary);
                    call_all(&fns, |f| f(&b));
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    let _ = sink.flush().await; // sends our close reply
                    return Ended {
                        info: CloseInfo { code, reason, reconnect: reconnect_hint(code) },
                        by_user: close_sent,
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Ended {
                        info: CloseInfo { code: 1006, reason: e.to_string(), reconnect: Reconnect::Backoff },
                        by_user: close_sent,
                    };
                }
                None => {
                    return Ended {
                        info: CloseInfo { code: 1006, reason: "connection dropped".into(), reconnect: Reconnect::Backoff },
                        by_user: close_sent,
                    };
                }
            },
        }
    }
}

/// Writes a batch and flushes once. On failure the frames not yet handed to the socket
/// go back to the front of the queue, to be sent after the reconnect.
async fn write_batch(
    inner: &Inner,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    batch: &mut std::collections::VecDeque<Outgoing>,
) -> Result<(), String> {
    while let Some(out) = batch.pop_front() {
        let ref_id = out.ref_id.clone();
        let len = out.len;
        if let Err(e) = sink.feed(out.msg.clone()).await {
            let mut ob = lock(&inner.outbox);
            ob.bytes += len + batch.iter().map(|o| o.len).sum::<usize>();
            ob.frames.push_front(out);
            while let Some(o) = batch.pop_back() {
                ob.frames.push_front(o);
            }
            return Err(e.to_string());
        }
        if let Some(r) = ref_id {
            if let Some(p) = lock(&inner.pending).get_mut(&r) {
                p.written = true;
            }
        }
    }
    sink.flush().await.map_err(|e| e.to_string())
}

fn dispatch(inner: &Inner, text: &str) {
    let env = match Envelope::decode(text) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a frame that is not an envelope");
            return;
        }
    };
    if !lock(&inner.streams).accept(&env) {
        tracing::debug!(kind = %env.kind, offset = ?env.offset, "dropping a duplicate");
        return;
    }
    match env.kind.as_str() {
        // An ack comes from the server itself: never relayed (`from`) nor through a room.
        types::ACK if env.from.is_some() || env.room.is_some() => {
            tracing::warn!("ignoring an `ack` that another client sent");
            return;
        }
        types::ACK => {
            if let Ok(ack) = env.payload_as::<Ack>() {
                room_sync::note_answer(inner, &ack);
                if let Some(p) = lock(&inner.pending).remove(&ack.ref_id) {
                    let _ = p.tx.send(ack.into_result().map_err(RequestError::from));
                } else if ack.ref_id.starts_with("rejoin:")
                    || ack.ref_id.starts_with("releave:")
                    || ack.ref_id == AUTH_REF
                {
                    if let Err(e) = ack.into_result() {
                        tracing::warn!(code = %e.code, message = %e.message, "rejoin or auth refused");
                        inner.report(&ClientError::from(e));
                    }
                    return;
                }
            }
        }
        types::ERROR => {
            if let Ok(e) = env.payload_as::<ErrorBody>() {
                inner.report(&ClientError::from(e));
            }
        }
        _ => {}
    }
    let (typed, any, room, streams) = {
        let h = lock(&inner.handlers);
        let typed = h
            .by_type
            .get(&env.kind)
            .map(|l| snapshot(l))
            .unwrap_or_default();
        let any = snapshot(&h.any);
        let room: Vec<_> = env
            .room
            .as_deref()
            .and_then(|r| h.rooms.get(r))
            .map(|l| {
                l.iter()
                    .filter(|rh| rh.kind.as_deref().is_none_or(|k| k == env.kind))
                    .map(|rh| Arc::clone(&rh.f))
                    .collect()
            })
            .unwrap_or_default();
        let streams: Vec<_> = h.streams.iter().map(|(_, s)| s.clone()).collect();
        (typed, any, room, streams)
    };
    call_all(&typed, |f| f(&env));
    call_all(&room, |f| f(&env));
    call_all(&any, |f| f(&env));
    for s in streams {
        if s.try_send(env.clone()).is_err() && !s.is_closed() {
            tracing::warn!(kind = %env.kind, "a message stream is full; message dropped for it");
        }
    }
}
