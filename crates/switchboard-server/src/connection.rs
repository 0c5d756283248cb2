//! The task that runs one connection: read and dispatch, write from the outbox, close.
//!
//! One task per connection, two futures inside it joined together: the reader runs the
//! handlers of each message in order; the writer moves every queued frame into the
//! socket and flushes once per batch, so a slow handler never stalls delivery to its
//! own client.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::json;
use switchboard_proto::code::close;
use switchboard_proto::{
    Envelope, ErrorBody, ErrorCode, Parts, RawValue, ack_ok, close_reason, encode_parts,
    error_reply, types,
};

use crate::backplane::{PresenceEvent, Target};
use crate::conn::{Closing, Conn, Frame, WriterStep};
use crate::extract::MessageContext;
use crate::router::Route;
use crate::server::{DisconnectReason, validate_room};
use crate::transport::{self, Sink, Stream};
use crate::{ConnId, Server};

pub(crate) async fn run(server: Server, socket: WebSocket, remote: Option<SocketAddr>) {
    let inner = &server.inner;
    let (mut sink, mut stream) = socket.split();

    let admitted = inner.admitted.fetch_add(1, Ordering::AcqRel) + 1;
    if admitted > inner.config.max_connections {
        inner.admitted.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            max = inner.config.max_connections,
            "connection refused: server full"
        );
        refuse(
            &mut sink,
            &mut stream,
            ErrorCode::ServerFull,
            "server at its connection limit",
            inner.config.close_timeout,
        )
        .await;
        return;
    }

    let conn = Conn::new(inner.ids.next(), remote, inner);
    inner.registry.insert(conn.clone());
    inner
        .backplane
        .presence(&PresenceEvent::Connected(conn.id()));
    tracing::debug!(conn = %conn.id(), ?remote, "connected");
    if server.is_shutting_down() {
        // Shutdown swept the registry before we were in it.
        conn.close(ErrorCode::ShuttingDown, "server shutting down");
    }
    let _ = conn.send_message(
        types::CONNECTED,
        &json!({
            "client_id": conn.id(),
            "session_id": conn.session_id(),
            "server": inner.config.name,
        }),
    );

    let closing = {
        let reader = read_loop(&server, &conn, &mut stream);
        let writer = write_loop(&conn, &mut sink);
        tokio::pin!(reader, writer);
        tokio::select! {
            closing = &mut writer => {
                // A graceful finish happens only once the reader is done; an abort
                // (slow consumer, dead socket, grace period over) drops an in-flight handler.
                if !closing.abort {
                    reader.await;
                }
                closing
            }
            () = &mut reader => writer.await,
        }
    };
    finish(&mut sink, &mut stream, &closing, inner.config.close_timeout).await;
    conn.mark_finished();

    server.remove_connection(&conn);
    let reason = DisconnectReason {
        code: closing.code,
        reason: closing.reason.clone(),
        by_server: !closing.by_client,
    };
    tracing::debug!(conn = %conn.id(), code = reason.code, reason = %reason.reason, "disconnected");
    for hook in &inner.hooks.disconnect {
        if AssertUnwindSafe(hook(conn.clone(), reason.clone()))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(conn = %conn.id(), "a disconnect hook panicked");
        }
    }
}

/// Turns a connection away: an `error` frame, then a close with the code's close code.
async fn refuse(
    sink: &mut Sink,
    stream: &mut Stream,
    code: ErrorCode,
    message: &str,
    limit: std::time::Duration,
) {
    let error = switchboard_proto::error_frame(&ErrorBody::new(code, message));
    let closing = Closing {
        code: code.close_code_or_internal(),
        reason: close_reason(code, message),
        abort: false,
        by_client: false,
    };
    let _ = tokio::time::timeout(limit, sink.feed(Message::Text(error.into()))).await;
    finish(sink, stream, &closing, limit).await;
}

fn lost(reason: impl Into<String>) -> Closing {
    Closing {
        code: close::ABNORMAL,
        reason: reason.into(),
        abort: true,
        by_client: true,
    }
}

async fn read_loop(server: &Server, conn: &Conn, stream: &mut Stream) {
    for hook in &server.inner.hooks.connect {
        if AssertUnwindSafe(hook(conn.clone()))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(conn = %conn.id(), "a connect hook panicked");
        }
    }
    let end = loop {
        if conn.closing().is_some() {
            break None;
        }
        let next = tokio::select! {
            biased;
            () = conn.shared.wake_reader.notified() => continue,
            next = stream.next() => next,
        };
        match next {
            None => break Some(lost("connection dropped")),
            Some(Err(e)) if transport::is_too_large(&e) => {
                let max = server.config().max_message_size;
                send_error(
                    conn,
                    None,
                    &ErrorBody::new(
                        ErrorCode::MessageTooLarge,
                        format!("a message may be at most {max} bytes"),
                    ),
                );
                conn.close(ErrorCode::MessageTooLarge, &format!("limit is {max} bytes"));
                break None;
            }
            Some(Err(e)) => break Some(lost(e.to_string())),
            Some(Ok(Message::Text(text))) => dispatch_text(server, conn, text.as_str()).await,
            Some(Ok(Message::Binary(data))) => dispatch_binary(server, conn, data).await,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = match frame {
                    Some(f) => (f.code, f.reason.to_string()),
                    None => (1005, String::new()),
                };
                break Some(Closing {
                    code,
                    reason,
                    abort: false,
                    by_client: true,
                });
            }
            // The socket library answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    };
    conn.reader_finished(end.unwrap_or_else(|| lost("closed")));
}

async fn write_loop(conn: &Conn, sink: &mut Sink) -> Closing {
    let mut batch = VecDeque::new();
    loop {
        match conn.take_batch(&mut batch) {
            WriterStep::Finish(closing) => return closing,
            WriterStep::Wait => conn.shared.wake_writer.notified().await,
            WriterStep::Write => {
                let written = tokio::select! {
                    biased;
                    // Only an abort wakes this: the client is not reading; stop writing.
                    () = conn.shared.wake_abort.notified() => {
                        batch.clear();
                        continue;
                    }
                    r = write_batch(sink, &mut batch) => r,
                };
                if let Err(e) = written {
                    batch.clear();
                    conn.begin_close(lost(format!("write failed: {e}")));
                }
            }
        }
    }
}

/// Feeds every frame of the batch, then flushes once.
async fn write_batch(sink: &mut Sink, batch: &mut VecDeque<Frame>) -> Result<(), axum::Error> {
    while let Some(frame) = batch.pop_front() {
        sink.feed(transport::to_message(frame)).await?;
    }
    sink.flush().await
}

/// Sends our close frame (unless the client closed first) and waits briefly for the
/// client's answer so the TCP connection ends cleanly.
async fn finish(
    sink: &mut Sink,
    stream: &mut Stream,
    closing: &Closing,
    limit: std::time::Duration,
) {
    if closing.by_client {
        // Flushes the close reply the socket library queued.
        let _ = tokio::time::timeout(limit, sink.close()).await;
        return;
    }
    let sent = tokio::time::timeout(
        limit,
        sink.send(transport::close_message(closing.code, &closing.reason)),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(limit, sink.close()).await;
}

fn send_error(conn: &Conn, ref_id: Option<&str>, error: &ErrorBody) {
    let _ = conn.push(Frame::text(error_reply(ref_id, error)));
}

async fn dispatch_text(server: &Server, conn: &Conn, text: &str) {
    let env = match Envelope::decode(text) {
        Ok(env) => env,
        Err(e) => {
            return send_error(
                conn,
                e.ref_id.as_deref(),
                &ErrorBody::new(e.code(), e.to_string()),
            );
        }
    };
    if types::is_server_only(&env.kind) {
        let msg = format!("`{}` is a type only the server sends", env.kind);
        return send_error(
            conn,
            env.ref_id.as_deref(),
            &ErrorBody::new(ErrorCode::InvalidEnvelope, msg),
        );
    }
    match server.inner.router.get(&env.kind) {
        Some(routes) => run_chain(server, conn, routes, env, None).await,
        None if server.config().relay_unhandled && (env.room.is_some() || env.to.is_some()) => {
            relay(server, conn, env)
        }
        None => {
            let msg = format!("no handler for message type `{}`", env.kind);
            send_error(
                conn,
                env.ref_id.as_deref(),
                &ErrorBody::new(ErrorCode::UnknownType, msg),
            );
        }
    }
}

async fn dispatch_binary(server: &Server, conn: &Conn, data: Bytes) {
    let routes = &server.inner.router.binary;
    if routes.is_empty() {
        return send_error(
            conn,
            None,
            &ErrorBody::new(
                ErrorCode::UnsupportedFrame,
                "this server does not accept binary messages",
            ),
        );
    }
    run_chain(server, conn, routes, Envelope::new("binary"), Some(data)).await;
}

/// Runs a type's handlers in priority order; sends the reply, the ack or the error.
async fn run_chain(
    server: &Server,
    conn: &Conn,
    routes: &[Route],
    env: Envelope,
    binary: Option<Bytes>,
) {
    let cx = MessageContext {
        server: server.clone(),
        conn: conn.clone(),
        envelope: env,
        binary,
    };
    let ref_id = cx.envelope.ref_id.as_deref();
    let mut reply: Option<Box<RawValue>> = None;
    for route in routes {
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| route.handler.call(&cx)));
        let outcome = match started {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        match outcome {
            Ok(Ok(Some(value))) => {
                if reply.is_none() {
                    reply = Some(value);
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => return send_error(conn, ref_id, error.body()),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(conn = %conn.id(), kind = %cx.envelope.kind, panic = %what, "handler panicked");
                return send_error(
                    conn,
                    ref_id,
                    &ErrorBody::new(ErrorCode::Internal, "the handler failed unexpectedly"),
                );
            }
        }
    }
    let frame = match (ref_id, reply) {
        (Some(r), value) => ack_ok(r, value.as_deref()),
        (None, Some(value)) => {
            let kind = types::response_type(&cx.envelope.kind);
            let payload = if value.get().trim_start().starts_with('{') {
                value
            } else {
                // A payload is always an object: wrap scalars and arrays.
                match serde_json::value::to_raw_value(&json!({ "result": value })) {
                    Ok(p) => p,
                    Err(_) => return,
                }
            };
            encode_parts(&Parts {
                kind: &kind,
                payload: &payload,
                ref_id: None,
                room: None,
                to: None,
                from: None,
            })
        }
        (None, None) => return,
    };
    let _ = conn.push(Frame::text(frame));
}

/// The hub's relay: a message no handler takes, sent on to the room or client it names.
fn relay(server: &Server, conn: &Conn, env: Envelope) {
    let from = conn.id();
    let outcome: Result<usize, ErrorBody> = match (env.to.as_deref(), env.room.as_deref()) {
        (Some(_), Some(_)) => Err(ErrorBody::new(
            ErrorCode::InvalidEnvelope,
            "name a `room` or a `to`, not both",
        )),
        (Some("all"), None) => {
            Ok(server.relay(Target::All, vec![], &env.kind, &env.payload, None, from))
        }
        (Some("others"), None) => {
            Ok(server.relay(Target::All, vec![from], &env.kind, &env.payload, None, from))
        }
        (Some(to), None) => match to.parse::<ConnId>() {
            Ok(id) if server.may_reach(id) => Ok(server.relay(
                Target::Conns(vec![id]),
                vec![],
                &env.kind,
                &env.payload,
                None,
                from,
            )),
            _ => Err(ErrorBody::new(
                ErrorCode::ClientNotFound,
                format!("no client `{to}` is connected"),
            )),
        },
        (None, Some(room)) => match validate_room(room) {
            Ok(()) => Ok(server.relay(
                Target::Room(room.to_owned()),
                vec![from],
                &env.kind,
                &env.payload,
                Some(room),
                from,
            )),
            Err(e) => Err(ErrorBody::new(ErrorCode::InvalidRoom, e.to_string())),
        },
        (None, None) => Err(ErrorBody::new(
            ErrorCode::UnknownType,
            "nothing to relay to",
        )),
    };
    match (outcome, env.ref_id.as_deref()) {
        (Ok(n), Some(r)) => {
            let result = serde_json::value::to_raw_value(&json!({ "delivered": n })).ok();
            let _ = conn.push(Frame::text(ack_ok(r, result.as_deref())));
        }
        (Ok(_), None) => {}
        (Err(e), r) => send_error(conn, r, &e),
    }
}
