//! The state a client's handle and its driver share: the outbound queue, requests in
//! flight, rooms, handlers, the connection's state and session.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::Session;
use crate::handlers::{Handlers, call_all, snapshot};
use crate::locks::lock;
use crate::streams::Streams;
use crate::{ClientConfig, ClientError, CloseInfo, ConnectionState, RequestError};

/// One frame waiting to be written, with the `ref` of the request it carries.
pub(crate) struct Outgoing {
    pub(crate) msg: Message,
    pub(crate) ref_id: Option<String>,
    pub(crate) len: usize,
}

/// Frames waiting for the socket, shared by the handle (which queues) and the driver
/// (which writes). While offline the same queue holds what is sent meanwhile.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) frames: VecDeque<Outgoing>,
    pub(crate) bytes: usize,
    /// A connection is open and its writer takes frames.
    pub(crate) online: bool,
    /// The client has ended for good.
    pub(crate) closed: bool,
    /// [`Client::close`](crate::Client::close) asked to close with this code and reason.
    pub(crate) close_requested: Option<(u16, String)>,
}

pub(crate) type Answer = Result<Option<serde_json::Value>, RequestError>;

/// A request waiting for its `ack`.
pub(crate) struct Pending {
    pub(crate) tx: oneshot::Sender<Answer>,
    /// Its frame has been written to a socket (so a drop may have lost it).
    pub(crate) written: bool,
    /// Its frame, to send again after a reconnect, and its place in the sending order.
    pub(crate) frame: Option<Message>,
    pub(crate) seq: u64,
}

pub(crate) struct Inner {
    pub(crate) url: String,
    pub(crate) config: ClientConfig,
    pub(crate) outbox: Mutex<Outbox>,
    /// Wakes the driver: frames queued, or close requested.
    pub(crate) wake: Notify,
    /// Wakes senders waiting for room in the queue.
    pub(crate) space: Notify,
    /// Shared with every [`HandlerId`](crate::HandlerId), which removes its handler.
    pub(crate) handlers: Arc<Mutex<Handlers>>,
    pub(crate) pending: Mutex<HashMap<String, Pending>>,
    pub(crate) rooms: Mutex<BTreeSet<String>>,
    /// The rooms whose last join or leave the server answered before the cluster had
    /// kept it (`durable: false`): after a resume, each is made as this client has it
    /// again, in case the session came back from before the change.
    pub(crate) unsettled: Mutex<BTreeSet<String>>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) close_info: Mutex<Option<CloseInfo>>,
    pub(crate) session: Mutex<Session>,
    /// The session to resume and the positions in its streams.
    pub(crate) streams: Mutex<Streams>,
    pub(crate) next_id: AtomicU64,
    /// 64 random bits, the start of every request's `ref`.
    pub(crate) ref_prefix: u64,
    /// The token the client authenticated with last (from its token source).
    pub(crate) token: Mutex<Option<String>>,
    /// Held while [`Client::open`](crate::Client::open) connects: one open at a time.
    pub(crate) opening: tokio::sync::Mutex<()>,
    /// How many times the client has opened; a token refresh loop ends when it changes.
    pub(crate) opened: AtomicU64,
}

impl Inner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A request's `ref`: this client's random prefix and a counter, so no other client
    /// can guess one and answer it with a forged ack.
    /// The `ref` of the request numbered `seq`.
    pub(crate) fn ref_for(&self, seq: u64) -> String {
        format!("r{:016x}.{}", self.ref_prefix, seq)
    }

    /// Reports an error to the `on_error` handlers.
    pub(crate) fn report(&self, error: &ClientError) {
        let fns = snapshot(&lock(&self.handlers).error);
        call_all(&fns, |f| f(error));
    }
}
