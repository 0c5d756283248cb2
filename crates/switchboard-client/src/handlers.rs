//! Registered handlers and streams, each with an id that removes it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use switchboard_proto::Envelope;
use tokio::sync::mpsc;

use crate::locks::lock;
use crate::{ClientError, CloseInfo, ConnectionState, Session};

pub(crate) type MessageFn = Arc<dyn Fn(&Envelope) + Send + Sync>;
pub(crate) type BinaryFn = Arc<dyn Fn(&Bytes) + Send + Sync>;
pub(crate) type CloseFn = Arc<dyn Fn(&CloseInfo) + Send + Sync>;
pub(crate) type OpenFn = Arc<dyn Fn(&Session) + Send + Sync>;
pub(crate) type ErrorFn = Arc<dyn Fn(&ClientError) + Send + Sync>;
pub(crate) type StateFn = Arc<dyn Fn(ConnectionState) + Send + Sync>;
pub(crate) type AttemptFn = Arc<dyn Fn(&ReconnectAttempt) + Send + Sync>;
pub(crate) type ResumeFn = Arc<dyn Fn(&switchboard_proto::ResumeOutcome) + Send + Sync>;

/// A reconnect attempt about to be made, as [`Client::on_reconnect_attempt`](crate::Client::on_reconnect_attempt) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectAttempt {
    /// Which attempt since the connection dropped, from 1.
    pub attempt: u32,
    /// How long the client waits before making it.
    pub delay: Duration,
}

/// A registered handler or stream. [`remove`](HandlerId::remove) it (or pass it to
/// [`Client::off`](crate::Client::off)) to stop it; dropping the id does not.
#[derive(Debug, Clone)]
pub struct HandlerId {
    pub(crate) id: u64,
    pub(crate) handlers: Weak<Mutex<Handlers>>,
}

impl PartialEq for HandlerId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && Weak::ptr_eq(&self.handlers, &other.handlers)
    }
}

impl Eq for HandlerId {}

impl HandlerId {
    /// Removes the handler. Returns false if it was already gone.
    pub fn remove(&self) -> bool {
        match self.handlers.upgrade() {
            Some(handlers) => lock(&handlers).remove(self.id),
            None => false,
        }
    }
}

/// A handler for one room's messages, optionally of one type.
pub(crate) struct RoomHandler {
    pub(crate) id: u64,
    pub(crate) kind: Option<String>,
    pub(crate) f: MessageFn,
}

#[derive(Default)]
pub(crate) struct Handlers {
    pub(crate) by_type: HashMap<String, Vec<(u64, MessageFn)>>,
    pub(crate) any: Vec<(u64, MessageFn)>,
    pub(crate) rooms: HashMap<String, Vec<RoomHandler>>,
    pub(crate) binary: Vec<(u64, BinaryFn)>,
    pub(crate) open: Vec<(u64, OpenFn)>,
    pub(crate) close: Vec<(u64, CloseFn)>,
    pub(crate) error: Vec<(u64, ErrorFn)>,
    pub(crate) state: Vec<(u64, StateFn)>,
    pub(crate) attempt: Vec<(u64, AttemptFn)>,
    pub(crate) resume: Vec<(u64, ResumeFn)>,
    pub(crate) streams: Vec<(u64, mpsc::Sender<Envelope>)>,
}

impl Handlers {
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        fn drop_id<T>(list: &mut Vec<(u64, T)>, id: u64) -> bool {
            let before = list.len();
            list.retain(|(i, _)| *i != id);
            before != list.len()
        }
        let mut removed = false;
        for list in self.by_type.values_mut() {
            removed |= drop_id(list, id);
        }
        self.by_type.retain(|_, l| !l.is_empty());
        for list in self.rooms.values_mut() {
            let before = list.len();
            list.retain(|h| h.id != id);
            removed |= before != list.len();
        }
        self.rooms.retain(|_, l| !l.is_empty());
        removed |= drop_id(&mut self.any, id);
        removed |= drop_id(&mut self.binary, id);
        removed |= drop_id(&mut self.open, id);
        removed |= drop_id(&mut self.close, id);
        removed |= drop_id(&mut self.resume, id);
        removed |= drop_id(&mut self.error, id);
        removed |= drop_id(&mut self.state, id);
        removed |= drop_id(&mut self.attempt, id);
        removed |= drop_id(&mut self.streams, id);
        removed
    }

    /// Removes every message handler (by type, catch-all, room, binary); event handlers
    /// (open, close, error, state) and streams stay.
    pub(crate) fn clear_messages(&mut self) {
        self.by_type.clear();
        self.any.clear();
        self.rooms.clear();
        self.binary.clear();
    }
}

/// Calls each function, catching panics so one bad handler cannot kill the connection.
pub(crate) fn call_all<T: ?Sized>(fns: &[Arc<T>], call: impl Fn(&T)) {
    for f in fns {
        if std::panic::catch_unwind(AssertUnwindSafe(|| call(f))).is_err() {
            tracing::error!("a client handler panicked");
        }
    }
}

/// Clones the functions out of a list so they can be called without the lock.
pub(crate) fn snapshot<T: ?Sized>(list: &[(u64, Arc<T>)]) -> Vec<Arc<T>> {
    list.iter().map(|(_, f)| Arc::clone(f)).collect()
}
