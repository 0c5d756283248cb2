//! `switchboard._native`: the Rust client (`switchboard-client`) for Python.
//!
//! The Rust client runs on threads of its own (a Tokio runtime): it reads, answers
//! heartbeats, reconnects, rejoins and resumes whatever Python does, and it never calls
//! into Python. What it hears, and the outcome of every operation Python started, are
//! queued here as events (bounded: past [`EVENTS_MAX`] the oldest messages are dropped
//! and counted); the Python package takes them with [`NativeClient::wait`] from a
//! thread of its own and hands them to its asyncio loop. So a slow Python handler
//! delays other handlers, never the connection, and nothing on these threads can race
//! the interpreter's exit.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde_json::Value;
use switchboard_client::{
    Client, ClientConfig, ClientError, ConnectError, ConnectionState, ReconnectConfig,
    RequestError, SendError,
};

create_exception!(
    _native,
    NativeError,
    PyException,
    "A failure of the native client: (kind, code, message, details_json)."
);

/// Events waiting for Python; past this, the oldest are dropped (and counted).
const EVENTS_MAX: usize = 65_536;

/// Events handed to Python at once.
const BATCH: usize = 512;

/// Why an operation failed: kind (`connect`, `not_connected`, `timeout`, `remote`,
/// `connection_lost`, `queue_full`, `invalid`), code, message, details as JSON.
struct PyFailure(&'static str, String, String, String);

/// What the client heard, or an operation's outcome, for the Python side.
enum Event {
    /// A message (the envelope as JSON).
    Message(String),
    /// Connected (again): the session as JSON.
    Open(String),
    /// The connection closed: code and reason.
    Close(u16, String),
    /// An error: kind, code, message, details as JSON.
    Error(String, String, String, String),
    /// The connection's state.
    State(&'static str),
    /// A resume's outcome, as JSON.
    Resume(String),
    /// Operation `id` succeeded with this result (JSON).
    Done(u64, String),
    /// Operation `id` failed.
    Failed(u64, PyFailure),
}

/// The bounded queue between the client's threads and Python.
struct Events {
    queue: Mutex<VecDeque<Event>>,
    ready: Condvar,
    dropped: AtomicU64,
    /// The client was closed: once the queue is empty, nothing more comes.
    ended: AtomicBool,
}

impl Events {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Event>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, event: Event) {
        {
            let mut queue = self.queue();
            // Outcomes are never dropped (an awaited call would wait for ever).
            if queue.len() >= EVENTS_MAX && matches!(event, Event::Message(_)) {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(event);
        }
        self.ready.notify_all();
    }
}

fn state_name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Connecting => "connecting",
        ConnectionState::Open => "open",
        ConnectionState::Reconnecting => "reconnecting",
        ConnectionState::Closing => "closing",
        _ => "closed",
    }
}

fn failure(
    kind: &'static str,
    code: Option<&str>,
    message: String,
    details: Option<&Value>,
) -> PyFailure {
    let details = details.map(Value::to_string).unwrap_or_default();
    PyFailure(kind, code.unwrap_or_default().to_owned(), message, details)
}

fn connect_error(e: ConnectError) -> PyFailure {
    let code = match &e {
        ConnectError::Refused { code, .. } => Some(code.clone()),
        _ => None,
    };
    failure("connect", code.as_deref(), e.to_string(), None)
}

fn send_error(e: SendError) -> PyFailure {
    match e {
        SendError::NotConnected => failure("not_connected", None, e.to_string(), None),
        SendError::QueueFull(_) => failure("queue_full", None, e.to_string(), None),
        other => failure("invalid", None, other.to_string(), None),
    }
}

fn request_error(e: RequestError) -> PyFailure {
    let kind = match &e {
        RequestError::NotConnected | RequestError::Closed => "not_connected",
        RequestError::ConnectionLost => "connection_lost",
        RequestError::QueueFull(_) => "queue_full",
        RequestError::Timeout(_) => "timeout",
        RequestError::Remote {
            code,
            message,
            details,
        } => return failure("remote", Some(code), message.clone(), details.as_ref()),
        _ => "invalid",
    };
    failure(kind, None, e.to_string(), None)
}

/// A payload from Python, as JSON; a bad one is a `NativeError` at once.
fn parse(json: &str) -> PyResult<Value> {
    serde_json::from_str(json).map_err(|e| {
        NativeError::new_err((
            "invalid".to_owned(),
            String::new(),
            e.to_string(),
            String::new(),
        ))
    })
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// The runtime the clients run on: threads of their own, never calling into Python
/// (completions are events Python takes with [`NativeClient::wait`], so nothing here
/// races the interpreter's exit).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("switchboard")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the client's threads: {e}"))
    })
}

/// One connection to a switchboard server. Every operation is started with an id and
/// completes as a `("done", id, result_json)` or `("failed", id, kind, code, message,
/// details_json)` event.
#[pyclass(frozen)]
struct NativeClient {
    client: Client,
    events: Arc<Events>,
}

impl NativeClient {
    /// Runs `work` on the client's threads; its outcome becomes an event.
    fn start<F>(&self, id: u64, work: F)
    where
        F: Future<Output = Result<Value, PyFailure>> + Send + 'static,
    {
        let events = Arc::clone(&self.events);
        runtime().spawn(async move {
            let event = match work.await {
                Ok(value) => Event::Done(id, value.to_string()),
                Err(f) => Event::Failed(id, f),
            };
            events.push(event);
        });
    }
}

#[pymethods]
impl NativeClient {
    /// A client for `url`, not connected yet ([`open`](NativeClient::open)).
    #[new]
    // The keyword arguments of Python's `Client.connect`, one for one.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (url, password=None, token=None, auto_reconnect=true, reconnect_delay=1.0, max_reconnect_attempts=None, connect_timeout=10.0, msgpack=false))]
    fn new(
        url: String,
        password: Option<String>,
        token: Option<String>,
        auto_reconnect: bool,
        reconnect_delay: f64,
        max_reconnect_attempts: Option<u32>,
        connect_timeout: f64,
        msgpack: bool,
    ) -> NativeClient {
        let mut config = ClientConfig {
            connect_timeout: seconds(connect_timeout),
            msgpack,
            ..ClientConfig::default()
        };
        if let Some(p) = password {
            config = config.password(p);
        }
        if let Some(t) = token {
            config = config.token(t);
        }
        let reconnect = if auto_reconnect {
            ReconnectConfig {
                initial_delay: seconds(reconnect_delay),
                max_attempts: max_reconnect_attempts,
                ..ReconnectConfig::default()
            }
        } else {
            ReconnectConfig::disabled()
        };
        config = config.reconnect(reconnect);
        let _inside = runtime().enter();
        let client = Client::new(&url, config);
        let events = Arc::new(Events {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        listen(&client, &events);
        NativeClient { client, events }
    }

    /// Connects; done once the server said `connected`.
    fn open(&self, id: u64) {
        let client = self.client.clone();
        self.start(id, async move {
            client.open().await.map_err(connect_error)?;
            Ok(Value::Null)
        });
    }

    /// Waits (without the GIL) up to `timeout` seconds for events: up to 512 of them,
    /// `[]` if none came, `None` once the client is closed and every event was taken.
    fn wait(&self, py: Python<'_>, timeout: f64) -> Option<Vec<EventTuple>> {
        let events = Arc::clone(&self.events);
        let batch = py.detach(move || {
            let mut queue = events.queue();
            if queue.is_empty() && !events.ended.load(Ordering::Acquire) {
                queue = events
                    .ready
                    .wait_timeout(queue, seconds(timeout))
                    .map_or_else(|e| e.into_inner().0, |(q, _)| q);
            }
            let n = queue.len().min(BATCH);
            let batch: Vec<Event> = queue.drain(..n).collect();
            (batch, events.ended.load(Ordering::Acquire))
        });
        match batch {
            (batch, true) if batch.is_empty() => None,
            (batch, _) => Some(batch.into_iter().map(EventTuple).collect()),
        }
    }

    /// Sends a message (`room` or `to` address it); queued while reconnecting.
    #[pyo3(signature = (id, kind, payload_json, room=None, to=None))]
    fn send(
        &self,
        id: u64,
        kind: String,
        payload_json: &str,
        room: Option<String>,
        to: Option<String>,
    ) -> PyResult<()> {
        let payload = parse(payload_json)?;
        let client = self.client.clone();
        self.start(id, async move {
            let sent = match (room, to) {
                (Some(room), _) => client.send_to(&room, &kind, &payload).await,
                (None, Some(to)) => client.send_direct(&to, &kind, &payload).await,
                (None, None) => client.send(&kind, &payload).await,
            };
            sent.map_err(send_error)?;
            Ok(Value::Null)
        });
        Ok(())
    }

    /// A message that waits for its answer; done with the answer's result.
    #[pyo3(signature = (id, kind, payload_json, timeout, room=None, to=None))]
    fn request(
        &self,
        id: u64,
        kind: String,
        payload_json: &str,
        timeout: f64,
        room: Option<String>,
        to: Option<String>,
    ) -> PyResult<()> {
        let payload = parse(payload_json)?;
        let client = self.client.clone();
        self.start(id, async move {
            client
                .request_envelope(
                    &kind,
                    &payload,
                    room.as_deref(),
                    to.as_deref(),
                    seconds(timeout),
                )
                .await
                .map_err(request_error)
        });
        Ok(())
    }

    /// Calls an RPC method; done with its result.
    fn call(&self, id: u64, method: String, params_json: &str, timeout: f64) -> PyResult<()> {
        let params = parse(params_json)?;
        let client = self.client.clone();
        self.start(id, async move {
            client
                .call(&method, &params, seconds(timeout))
                .await
                .map_err(request_error)
        });
        Ok(())
    }

    /// Joins a room (rejoined after every reconnect).
    fn join(&self, id: u64, room: String) {
        let client = self.client.clone();
        self.start(id, async move {
            client.join(&room).await.map_err(request_error)?;
            Ok(Value::Null)
        });
    }

    /// Leaves a room.
    fn leave(&self, id: u64, room: String) {
        let client = self.client.clone();
        self.start(id, async move {
            client.leave(&room).await.map_err(request_error)?;
            Ok(Value::Null)
        });
    }

    /// Closes the connection for good (no reconnect); after its `done`, [`wait`]
    /// returns what is left, then `None`.
    ///
    /// [`wait`]: NativeClient::wait
    fn close(&self, id: u64) {
        let client = self.client.clone();
        let events = Arc::clone(&self.events);
        runtime().spawn(async move {
            client.close().await;
            events.push(Event::Done(id, "null".to_owned()));
            events.ended.store(true, Ordering::Release);
            events.ready.notify_all();
        });
    }

    /// The rooms joined.
    fn rooms(&self) -> Vec<String> {
        let mut rooms = self.client.rooms();
        rooms.sort();
        rooms
    }

    fn is_in_room(&self, room: &str) -> bool {
        self.client.is_in_room(room)
    }

    /// `connecting`, `open`, `reconnecting`, `closing` or `closed`.
    fn state(&self) -> &'static str {
        state_name(self.client.state())
    }

    /// This client's id (kept across reconnects when the session is resumed).
    fn client_id(&self) -> String {
        self.client.id()
    }

    /// True if envelopes travel in MessagePack on the current connection.
    fn msgpack(&self) -> bool {
        self.client.session().msgpack
    }

    /// Events dropped because Python did not take them in time.
    fn dropped(&self) -> u64 {
        self.events.dropped.load(Ordering::Relaxed)
    }
}

/// An event as the tuple Python receives.
struct EventTuple(Event);

impl<'py> IntoPyObject<'py> for EventTuple {
    type Target = pyo3::types::PyTuple;
    type Output = Bound<'py, Self::Target>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        match self.0 {
            Event::Message(json) => ("message", json).into_pyobject(py),
            Event::Open(json) => ("open", json).into_pyobject(py),
            Event::Close(code, reason) => ("close", code, reason).into_pyobject(py),
            Event::Error(kind, code, message, details) => {
                ("error", kind, code, message, details).into_pyobject(py)
            }
            Event::State(state) => ("state", state).into_pyobject(py),
            Event::Resume(json) => ("resume", json).into_pyobject(py),
            Event::Done(id, json) => ("done", id, json).into_pyobject(py),
            Event::Failed(id, PyFailure(kind, code, message, details)) => {
                ("failed", id, kind, code, message, details).into_pyobject(py)
            }
        }
    }
}

/// Everything the client hears goes to `events`.
fn listen(client: &Client, events: &Arc<Events>) {
    let e = Arc::clone(events);
    client.on_message(move |env| {
        if env.kind != "ack" {
            e.push(Event::Message(env.encode()));
        }
    });
    let e = Arc::clone(events);
    client.on_open(move |session| {
        let json = serde_json::json!({
            "client_id": session.client_id,
            "session_id": session.session_id,
            "user_id": session.user_id,
            "server": session.server,
        });
        e.push(Event::Open(json.to_string()));
    });
    let e = Arc::clone(events);
    client.on_close(move |info| e.push(Event::Close(info.code, info.reason.clone())));
    let e = Arc::clone(events);
    client.on_state(move |state| e.push(Event::State(state_name(state))));
    let e = Arc::clone(events);
    client.on_error(move |error| {
        let (kind, code, message, details) = match error {
            ClientError::Message {
                code,
                message,
                details,
            } => ("remote", code.clone(), message.clone(), details.clone()),
            ClientError::Connection { code, message, .. } => (
                "connect",
                code.clone().unwrap_or_default(),
                message.clone(),
                None,
            ),
            other => ("connection_lost", String::new(), other_message(other), None),
        };
        let details = details.map(|d| d.to_string()).unwrap_or_default();
        e.push(Event::Error(kind.to_owned(), code, message, details));
    });
    let e = Arc::clone(events);
    client.on_resume(move |outcome| {
        let json = serde_json::json!({
            "recovered": outcome.fully_recovered(),
            "resumed": outcome.resumed,
        });
        e.push(Event::Resume(json.to_string()));
    });
}

fn other_message(error: &ClientError) -> String {
    match error {
        ClientError::GaveUp { attempts } => {
            format!("gave up reconnecting after {attempts} attempts")
        }
        other => format!("{other:?}"),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    Ok(())
}
