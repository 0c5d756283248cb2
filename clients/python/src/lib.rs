//! `switchboard._native`: the Rust client (`switchboard-client`) for Python.
//!
//! The Rust client runs on a Tokio runtime of its own threads: it reads, answers
//! heartbeats, reconnects, rejoins and resumes whatever Python does. What it hears is
//! queued here as events (bounded: past [`EVENTS_MAX`] the oldest are dropped and
//! counted), and the Python package drains them on its asyncio loop, so a slow Python
//! handler delays other handlers, never the connection. Every call returns an
//! asyncio awaitable; errors are `NativeError(kind, code, message, details_json)`,
//! which the package turns into its exception classes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde_json::Value;
use switchboard_client::{
    Client, ClientConfig, ClientError, ConnectError, ConnectionState, ReconnectConfig,
    RequestError, SendError,
};
use tokio::sync::Notify;

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

/// What the client heard, for the Python side.
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
}

/// The bounded queue between the client's threads and Python.
struct Events {
    queue: Mutex<VecDeque<Event>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl Events {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Event>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, event: Event) {
        {
            let mut queue = self.queue();
            if queue.len() >= EVENTS_MAX {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(event);
        }
        self.ready.notify_one();
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

fn native_error(kind: &str, code: Option<&str>, message: String, details: Option<&Value>) -> PyErr {
    let details = details.map(Value::to_string).unwrap_or_default();
    NativeError::new_err((
        kind.to_owned(),
        code.unwrap_or_default().to_owned(),
        message,
        details,
    ))
}

fn connect_error(e: ConnectError) -> PyErr {
    let code = match &e {
        ConnectError::Refused { code, .. } => Some(code.clone()),
        _ => None,
    };
    native_error("connect", code.as_deref(), e.to_string(), None)
}

fn send_error(e: SendError) -> PyErr {
    match e {
        SendError::NotConnected => native_error("not_connected", None, e.to_string(), None),
        SendError::QueueFull(_) => native_error("queue_full", None, e.to_string(), None),
        other => native_error("invalid", None, other.to_string(), None),
    }
}

fn request_error(e: RequestError) -> PyErr {
    let kind = match &e {
        RequestError::NotConnected | RequestError::Closed => "not_connected",
        RequestError::ConnectionLost => "connection_lost",
        RequestError::QueueFull(_) => "queue_full",
        RequestError::Timeout(_) => "timeout",
        RequestError::Remote {
            code,
            message,
            details,
        } => return native_error("remote", Some(code), message.clone(), details.as_ref()),
        _ => "invalid",
    };
    native_error(kind, None, e.to_string(), None)
}

fn parse(json: &str) -> PyResult<Value> {
    serde_json::from_str(json).map_err(|e| native_error("invalid", None, e.to_string(), None))
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// One connection to a switchboard server.
#[pyclass(frozen)]
struct NativeClient {
    client: Client,
    events: Arc<Events>,
}

#[pymethods]
impl NativeClient {
    /// Connects; resolves once the server said `connected`.
    #[staticmethod]
    // The keyword arguments of Python's `Client.connect`, one for one.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (url, password=None, token=None, auto_reconnect=true, reconnect_delay=1.0, max_reconnect_attempts=None, connect_timeout=10.0))]
    fn connect(
        py: Python<'_>,
        url: String,
        password: Option<String>,
        token: Option<String>,
        auto_reconnect: bool,
        reconnect_delay: f64,
        max_reconnect_attempts: Option<u32>,
        connect_timeout: f64,
    ) -> PyResult<Bound<'_, PyAny>> {
        let mut config = ClientConfig {
            connect_timeout: seconds(connect_timeout),
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
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let client = Client::new(&url, config);
            let events = Arc::new(Events {
                queue: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
                dropped: AtomicU64::new(0),
            });
            listen(&client, &events);
            client.open().await.map_err(connect_error)?;
            Ok(NativeClient { client, events })
        })
    }

    /// The next events, at least one, at most 512: `(kind, ...)` tuples. Resolves to an
    /// empty list once the client is closed and nothing is left.
    fn next_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = Arc::clone(&self.events);
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            loop {
                let ready = events.ready.notified();
                let batch: Vec<Event> = {
                    let mut queue = events.queue();
                    let n = queue.len().min(BATCH);
                    queue.drain(..n).collect()
                };
                if !batch.is_empty() {
                    return Ok(batch.into_iter().map(EventTuple).collect::<Vec<_>>());
                }
                if client.state() == ConnectionState::Closed && client.close_info().is_some() {
                    return Ok(Vec::new());
                }
                tokio::select! {
                    () = ready => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
    }

    /// Sends a message (`room` or `to` address it); queued while reconnecting.
    #[pyo3(signature = (kind, payload_json, room=None, to=None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        kind: String,
        payload_json: &str,
        room: Option<String>,
        to: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = parse(payload_json)?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let sent = match (room, to) {
                (Some(room), _) => client.send_to(&room, &kind, &payload).await,
                (None, Some(to)) => client.send_direct(&to, &kind, &payload).await,
                (None, None) => client.send(&kind, &payload).await,
            };
            sent.map_err(send_error)
        })
    }

    /// A message that waits for its answer; resolves to the answer's result as JSON.
    #[pyo3(signature = (kind, payload_json, timeout, room=None, to=None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        kind: String,
        payload_json: &str,
        timeout: f64,
        room: Option<String>,
        to: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = parse(payload_json)?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let answer: Value = client
                .request_envelope(
                    &kind,
                    &payload,
                    room.as_deref(),
                    to.as_deref(),
                    seconds(timeout),
                )
                .await
                .map_err(request_error)?;
            Ok(answer.to_string())
        })
    }

    /// Calls an RPC method; resolves to its result as JSON.
    fn call<'py>(
        &self,
        py: Python<'py>,
        method: String,
        params_json: &str,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = parse(params_json)?;
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let result: Value = client
                .call(&method, &params, seconds(timeout))
                .await
                .map_err(request_error)?;
            Ok(result.to_string())
        })
    }

    /// Joins a room (rejoined after every reconnect).
    fn join<'py>(&self, py: Python<'py>, room: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.join(&room).await.map_err(request_error)
        })
    }

    /// Leaves a room.
    fn leave<'py>(&self, py: Python<'py>, room: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.leave(&room).await.map_err(request_error)
        })
    }

    /// Closes the connection for good (no reconnect).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let events = Arc::clone(&self.events);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.close().await;
            events.ready.notify_one();
            Ok(())
        })
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
