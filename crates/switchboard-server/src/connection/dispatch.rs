//! Dispatch: a native envelope to RPC, to the handlers of its type (in priority order,
//! the first reply going back to the sender), or to the hub's relay; binary frames to the
//! binary handlers. Every reply, ack and error of a message is sent from here.

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::json;
use switchboard_proto::{
    DecodeError, Envelope, ErrorBody, ErrorCode, PROTOCOL_VERSION, Payload, RawValue, ack_ok,
    encode_payload_frame, error_reply, types,
};
use tracing::Instrument;

use super::Conn;
use super::relay::relay;
use crate::Server;
use crate::delivery::Seen;
use crate::extract::MessageContext;
use crate::handler::{BoxFuture, HandlerResult};
use crate::handler_table::Route;
use crate::rpc::{self, Calls};
use crate::ws::Frame;

/// What is left of handling a message when a handler (or an RPC call waiting for a
/// slot) has to wait. Most messages are handled without waiting, and then nothing is
/// allocated for this; the reader awaits what is left before it reads on, so one
/// connection's messages are handled in order.
pub(crate) type Rest = BoxFuture<'static, ()>;

/// Dispatches a native envelope in a span of its own (`message`: its type, `ref` and
/// `trace`, a child of the connection's span): RPC, the handlers of its type, the
/// hub's relay, or `UNKNOWN_TYPE`. The span costs nothing while debug spans are off.
pub(crate) fn envelope(
    server: &Server,
    conn: &Conn,
    env: Envelope,
    calls: &mut Option<Box<Calls>>,
) -> Option<Rest> {
    let span = tracing::debug_span!(
        "message",
        r#type = %env.kind,
        r#ref = env.ref_id.as_deref(),
        trace = env.trace.as_deref(),
    );
    if span.is_disabled() {
        return route(server, conn, env, calls);
    }
    crate::telemetry::follow(&span, env.trace.as_deref());
    let rest = span.in_scope(|| route(server, conn, env, calls));
    // What has to wait goes on in the same span.
    rest.map(|rest| Box::pin(rest.instrument(span)) as Rest)
}

fn route(
    server: &Server,
    conn: &Conn,
    env: Envelope,
    calls: &mut Option<Box<Calls>>,
) -> Option<Rest> {
    if types::is_server_only(&env.kind) {
        let msg = format!("`{}` is a type only the server sends", env.kind);
        send_error(
            conn,
            env.ref_id.as_deref(),
            &ErrorBody::new(ErrorCode::InvalidEnvelope, msg),
        );
        return None;
    }
    // Version 1 is always spoken; others when the application says so.
    if env.v != PROTOCOL_VERSION && !server.config().versions.contains(&env.v) {
        let msg = unsupported(env.v, &server.config().versions);
        send_error(
            conn,
            env.ref_id.as_deref(),
            &ErrorBody::new(ErrorCode::UnsupportedVersion, msg),
        );
        return None;
    }
    if let Some(r) = env.ref_id.as_deref() {
        // A message sent again after a reconnect (its answer had not arrived) gets
        // the first answer and is not handled twice.
        match conn
            .session()
            .begin_reply(r, server.config().session_replies)
        {
            Seen::New => {}
            Seen::Answered(answer) => {
                let _ = conn.push(Frame::Text(answer));
                return None;
            }
            Seen::InProgress => return None,
        }
    }
    if env.kind == types::RPC {
        return rpc::start_call(server, conn, env, calls);
    }
    match server.handlers_of(&env.kind) {
        Some(routes) => run_chain(routes, MessageContext::new(server, conn, env, None), None),
        None if server.config().relay_unhandled
            && (env.room.is_some()
                || env.to.is_some()
                // The message protocol pattern's `chat` / `typing`: the room in the payload.
                || env.payload.get().contains("\"room_id\"")) =>
        {
            relay(server, conn, &env);
            None
        }
        None => {
            let msg = format!("no handler for message type `{}`", env.kind);
            send_error(
                conn,
                env.ref_id.as_deref(),
                &ErrorBody::new(ErrorCode::UnknownType, msg),
            );
            None
        }
    }
}

/// `unsupported protocol version 3 (this server speaks version 1)`.
fn unsupported(v: u32, versions: &[u32]) -> String {
    let mut spoken = vec![PROTOCOL_VERSION];
    spoken.extend(versions.iter().filter(|&&x| x != PROTOCOL_VERSION));
    spoken.sort_unstable();
    let list: Vec<String> = spoken.iter().map(u32::to_string).collect();
    let noun = if list.len() == 1 {
        "version"
    } else {
        "versions"
    };
    format!(
        "unsupported protocol version {v} (this server speaks {noun} {})",
        list.join(", ")
    )
}

pub(crate) fn binary(server: &Server, conn: &Conn, data: Bytes) -> Option<Rest> {
    let routes = server.binary_handlers();
    if routes.is_empty() {
        send_error(
            conn,
            None,
            &ErrorBody::new(
                ErrorCode::UnsupportedFrame,
                "this server does not accept binary messages",
            ),
        );
        return None;
    }
    let cx = MessageContext::new(server, conn, Envelope::new("binary"), Some(data));
    run_chain(routes, cx, None)
}

/// The answer to a frame that could not be read: its error, acknowledged when its `ref`
/// could be read.
pub(crate) fn decode_error(conn: &Conn, e: &DecodeError) {
    let body = ErrorBody::new(e.code(), e.to_string());
    send_error(conn, e.ref_id.as_deref(), &body);
}

/// Runs a type's handlers in priority order (`reply`: the first reply so far) and sends
/// the reply, the ack or the error. Each handler is polled once where it starts; when
/// one has to wait, it and the handlers after it go on in the returned future.
fn run_chain(
    routes: &[Route],
    cx: MessageContext,
    mut reply: Option<Box<RawValue>>,
) -> Option<Rest> {
    for (i, route) in routes.iter().enumerate() {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut fut = route.handler.call(&cx);
            match (&mut fut).now_or_never() {
                Some(result) => Ok(result),
                None => Err(fut),
            }
        }));
        let outcome = match polled {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(pending)) => {
                let rest = routes[i + 1..].to_vec();
                return Some(Box::pin(async move {
                    let outcome = AssertUnwindSafe(pending).catch_unwind().await;
                    if settle(&cx, outcome, &mut reply) {
                        if let Some(more) = run_chain(&rest, cx, reply) {
                            more.await;
                        }
                    }
                }));
            }
            Err(panic) => Err(panic),
        };
        if !settle(&cx, outcome, &mut reply) {
            return None;
        }
    }
    answer(&cx, reply);
    None
}

/// Takes one handler's outcome: keeps the first reply; an error or a panic answers the
/// sender and stops the chain (false).
fn settle(
    cx: &MessageContext,
    outcome: Result<HandlerResult, Box<dyn std::any::Any + Send>>,
    reply: &mut Option<Box<RawValue>>,
) -> bool {
    let (conn, ref_id) = (&cx.conn, cx.envelope.ref_id.as_deref());
    match outcome {
        Ok(Ok(value)) => {
            if reply.is_none() {
                *reply = value;
            }
            true
        }
        Ok(Err(error)) => {
            cx.handled(false);
            send_error(conn, ref_id, error.body());
            false
        }
        Err(panic) => {
            cx.handled(false);
            let what = panic_text(&*panic);
            tracing::error!(conn = %conn.id(), kind = %cx.envelope.kind, panic = %what, "handler panicked");
            send_error(
                conn,
                ref_id,
                &ErrorBody::new(ErrorCode::Internal, "the handler failed unexpectedly"),
            );
            false
        }
    }
}

/// The chain's answer: the ack of the message's `ref`, or the reply as `<type>_response`.
fn answer(cx: &MessageContext, reply: Option<Box<RawValue>>) {
    cx.handled(true);
    let frame = match (cx.envelope.ref_id.as_deref(), reply) {
        (Some(r), value) => ack_ok(r, value.as_deref()),
        (None, Some(value)) => {
            let kind = types::response_type(&cx.envelope.kind);
            let payload = if value.get().trim_start().starts_with('{') {
                Payload::from_raw(value)
            } else {
                // A payload is always an object: wrap scalars and arrays.
                Payload::from_serialize(&json!({ "result": value }))
            };
            match payload {
                Ok(payload) => encode_payload_frame(&kind, &payload),
                Err(e) => {
                    // Never a silent drop: the client hears the reply could not be sent.
                    tracing::warn!(conn = %cx.conn.id(), kind = %cx.envelope.kind, error = %e, "a handler's reply is not a payload");
                    let message = format!("the handler's reply cannot be sent: {e}");
                    send_error(
                        &cx.conn,
                        None,
                        &ErrorBody::new(ErrorCode::Internal, message),
                    );
                    return;
                }
            }
        }
        (None, None) => return,
    };
    send_reply(&cx.conn, cx.envelope.ref_id.as_deref(), frame);
}

/// Queues a reply; one too large to send is answered with a `MESSAGE_TOO_LARGE` error
/// instead (never written halfway, never a silent drop).
pub(crate) fn send_reply(conn: &Conn, ref_id: Option<&str>, frame: String) {
    if let Err(crate::SendError::TooLarge { size, max }) = conn.reply(ref_id, frame) {
        tracing::warn!(conn = %conn.id(), size, max, "reply too large");
        let message = format!("the reply is {size} bytes, over the {max}-byte limit");
        send_error(
            conn,
            ref_id,
            &ErrorBody::new(ErrorCode::MessageTooLarge, message),
        );
    }
}

pub(crate) fn send_error(conn: &Conn, ref_id: Option<&str>, error: &ErrorBody) {
    let _ = conn.reply(ref_id, error_reply(ref_id, error));
}

/// Answers a dropped message: always when it carried a `ref` (so a request fails fast
/// instead of timing out), otherwise only the first in a row.
pub(crate) fn rate_limited(conn: &Conn, text: Option<&str>, first: bool, retry_after_ms: u64) {
    let ref_id = text.and_then(switchboard_proto::peek_ref);
    if ref_id.is_none() && !first {
        return;
    }
    let body = ErrorBody::new(
        ErrorCode::RateLimited,
        "too many messages; this one was dropped",
    )
    .with_details(json!({ "retry_after_ms": retry_after_ms }));
    send_error(conn, ref_id.as_deref(), &body);
}

pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
