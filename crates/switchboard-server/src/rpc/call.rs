//! Running calls: at most `max_calls_in_flight` per connection, each answered with the
//! ack of its `ref` (or `rpc_response`), a call that has to wait in a task of its own.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;
use serde_json::json;
use switchboard_proto::{
    Envelope, ErrorBody, ErrorCode, Payload, RawValue, ack_ok_text, encode_payload_frame,
    error_reply,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::method::{Answer, Compiled, Running};
use super::prepare::{Prepared, prepare};
use crate::Server;
use crate::connection::{Conn, Rest, panic_text, send_error, send_reply};
use crate::extract::MessageContext;

/// The RPC calls of one connection: at most `max` run at once, each in its own task.
pub(crate) struct Calls {
    semaphore: Arc<Semaphore>,
    cancel: CancellationToken,
    max: u32,
}

impl Calls {
    pub(crate) fn new(max: usize) -> Calls {
        let max = u32::try_from(max.clamp(1, 1 << 20)).unwrap_or(1);
        Calls {
            semaphore: Arc::new(Semaphore::new(max as usize)),
            cancel: CancellationToken::new(),
            max,
        }
    }

    /// Cancels the calls still running (nobody is left to answer).
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Ready when every running call has answered.
    pub(crate) fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let (slots, max) = (self.semaphore.clone(), self.max);
        async move {
            let _ = slots.acquire_many(max).await;
        }
    }
}

/// Starts an RPC call: checks it (method, auth, params) here, then runs it (see
/// [`begin_call`]). When `max_calls_in_flight` are running, what is returned waits for
/// one to finish (the client is not read meanwhile: back-pressure instead of an
/// unbounded backlog).
pub(crate) fn start_call(
    server: &Server,
    conn: &Conn,
    env: Envelope,
    calls: &mut Option<Box<Calls>>,
) -> Option<Rest> {
    let cx = MessageContext::new(server, conn, env, None);
    let prepared = match prepare(server.rpc_methods(), &cx) {
        Ok(p) => p,
        Err(e) => {
            send_error(conn, cx.envelope.ref_id.as_deref(), e.body());
            return None;
        }
    };
    // At most `max_calls_in_flight` calls run at once, counting this one.
    let calls =
        calls.get_or_insert_with(|| Box::new(Calls::new(server.config().max_calls_in_flight)));
    // Only a call that has to wait takes a slot (see `begin_call`); one is free if any
    // is, since only this connection's task takes them.
    match calls.semaphore.available_permits() {
        1.. => {
            begin_call(cx, prepared, Slot::Free(&calls.semaphore), &calls.cancel);
            None
        }
        0 => {
            // Every slot is taken: wait for one before reading on (back-pressure
            // instead of an unbounded backlog), unless the connection closes.
            let slots = calls.semaphore.clone();
            let cancel = calls.cancel.clone();
            Some(Box::pin(async move {
                let acquire = slots.acquire_owned();
                tokio::pin!(acquire);
                let permit = std::future::poll_fn(|task| {
                    if cx.conn.is_closing() {
                        return Poll::Ready(None);
                    }
                    acquire.as_mut().poll(task).map(Result::ok)
                })
                .await;
                if let Some(permit) = permit {
                    begin_call(cx, prepared, Slot::Held(permit), &cancel);
                }
            }))
        }
    }
}

/// A call's slot among the connection's `max_calls_in_flight`.
enum Slot<'a> {
    /// One is free: taken only if the call has to wait. (A call answered at once ends
    /// before the connection reads on, so it never runs beside more than the calls
    /// holding slots; taking and giving back a slot costs the semaphore's lock.)
    Free(&'a Arc<Semaphore>),
    /// Taken while every slot was busy.
    Held(OwnedSemaphorePermit),
}

/// Runs a call. Most methods finish without waiting (a computation, a lookup): those
/// are answered at once. Only a call that has to wait takes its slot and runs in a
/// task of its own, so it holds up neither the connection nor other calls.
fn begin_call(
    mut cx: MessageContext,
    prepared: Prepared,
    slot: Slot<'_>,
    cancel: &CancellationToken,
) {
    let (method, params) = prepared.into_parts();
    let running = std::panic::catch_unwind(AssertUnwindSafe(|| method.run(&cx, params)));
    let waiting = match running {
        Ok(Running::Done(answer)) => return answer_from(&cx, &method, Ok(answer)),
        Ok(Running::Waiting(fut)) => AssertUnwindSafe(fut).catch_unwind(),
        Err(panic) => return answer_from(&cx, &method, Err(panic)),
    };
    // (The server is looked up only for a call that waits: most do not.)
    let Some(server) = cx.conn.server() else {
        return; // shut down: nobody is left to answer
    };
    let permit = match slot {
        // Free a moment ago, and only this connection's task takes slots.
        Slot::Free(slots) => slots.clone().try_acquire_owned().ok(),
        Slot::Held(permit) => Some(permit),
    };
    // The waiting call keeps who to answer, not the message (its payload can be large;
    // the method has what it needs).
    let (conn, ref_id, started) = (cx.conn.clone(), cx.envelope.ref_id.take(), cx.started);
    drop(cx);
    // A call that waits runs in a task of its own, in the message's span. (Only it
    // holds a clone of the token: cloning and dropping one takes the token's lock.)
    let cancel = cancel.clone();
    let span = tracing::Span::current();
    server.spawn_tracked(
        async move {
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                r = waiting => r,
            };
            answer_call(&conn, ref_id.as_deref(), started, &method, outcome);
            drop(permit);
        }
        .instrument(span),
    );
}

/// [`answer_call`] for a call that finished where it started, from its message.
fn answer_from(cx: &MessageContext, method: &Compiled, outcome: CallOutcome) {
    let ref_id = cx.envelope.ref_id.as_deref();
    answer_call(&cx.conn, ref_id, cx.started, method, outcome);
}

/// How a call ended: its answer, or its panic.
type CallOutcome = Result<Answer, Box<dyn std::any::Any + Send>>;

/// Records how long the call took (from `started`, when metrics are counted) and queues
/// its answer: the ack of its `ref`, or `rpc_response`, or the error.
fn answer_call(
    conn: &Conn,
    ref_id: Option<&str>,
    started: Option<std::time::Instant>,
    compiled: &Compiled,
    outcome: CallOutcome,
) {
    if let Some(started) = started {
        compiled.observe(started, matches!(outcome, Ok(Ok(_))));
    }
    let method = compiled.name();
    let frame = match outcome {
        Ok(Ok(result)) => match ref_id {
            // serde_json wrote the result: valid JSON.
            Some(r) => ack_ok_text(r, Some(&result)),
            None => {
                let Ok(result) = RawValue::from_string(result) else {
                    return;
                };
                let payload = json!({ "method": method, "result": result });
                match Payload::from_serialize(&payload) {
                    Ok(p) => encode_payload_frame(RPC_RESPONSE, &p),
                    Err(_) => return,
                }
            }
        },
        Ok(Err(e)) => error_reply(ref_id, e.body()),
        Err(panic) => {
            tracing::error!(conn = %conn.id(), %method, panic = %panic_text(&*panic), "RPC method panicked");
            let body = ErrorBody::new(ErrorCode::Internal, "the method failed unexpectedly")
                .with_details(json!({ "method": method }));
            error_reply(ref_id, &body)
        }
    };
    send_reply(conn, ref_id, frame);
}

/// The reply type of an `rpc` message sent without a `ref`.
const RPC_RESPONSE: &str = "rpc_response";
