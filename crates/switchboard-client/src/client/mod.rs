//! The client handle: connecting, the connection's state, closing. What it sends is in
//! [`send`], the handlers and streams it registers in [`events`].

mod events;
mod send;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchboard_proto::Reconnect;
use tokio::sync::{Notify, watch};

pub use events::Messages;

use crate::connect::{self, Session};
use crate::handlers::{HandlerId, Handlers, call_all, snapshot};
use crate::locks::lock;
use crate::state::{Inner, Outbox};
use crate::streams::Streams;
use crate::{ClientConfig, CloseInfo, ConnectError, ConnectionState};

/// A connection to a switchboard server that survives the network: it reconnects with
/// backoff, authenticates again, rejoins its rooms and sends what was queued while it
/// was offline. Cheap to clone; every clone is the same client.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_client::{Client, ClientConfig, ReconnectConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::connect_with(
///     "ws://127.0.0.1:8080/ws",
///     ClientConfig::default().reconnect(ReconnectConfig {
///         initial_delay: Duration::from_secs(2),
///         max_attempts: Some(5),
///         ..ReconnectConfig::default()
///     }),
/// )
/// .await?;
/// client.on_open(|session| println!("connected as {}", session.client_id));
/// client.on_close(|info| println!("disconnected: {} {}", info.code, info.reason));
/// client.on_error(|e| eprintln!("{e}"));
/// client.join("chat-room-1").await?;
/// client.send_to("chat-room-1", "chat", &serde_json::json!({"text": "Hello room!"})).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .field("id", &self.id())
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connects with default settings and waits for the server's `connected`.
    ///
    /// The first connection is not retried: an unreachable server or a refusal is a
    /// [`ConnectError`] at once. Once connected, drops are reconnected automatically.
    pub async fn connect(url: &str) -> Result<Client, ConnectError> {
        Client::connect_with(url, ClientConfig::default()).await
    }

    /// Connects with these settings.
    ///
    /// Handlers registered on the returned client see the connections after this one;
    /// to see the first too (an `on_open` that marks the client connected, as Metafor's
    /// guide does), build the client with [`Client::new`], register, then
    /// [`open`](Client::open).
    pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Client, ConnectError> {
        let client = Client::new(url, config);
        client.open().await?;
        Ok(client)
    }

    /// A client that is not connected yet (state [`Closed`](ConnectionState::Closed)):
    /// register its handlers, then call [`open`](Client::open). Sending before it is
    /// open fails with [`SendError::NotConnected`](crate::SendError::NotConnected).
    ///
    /// ```no_run
    /// use switchboard_client::{Client, ClientConfig};
    ///
    /// # async fn demo() -> Result<(), switchboard_client::ConnectError> {
    /// let client = Client::new("ws://127.0.0.1:8080/ws", ClientConfig::default());
    /// client.on_open(|session| println!("connected as {}", session.client_id));
    /// client.open().await?; // the handler runs for this first connection too
    /// # Ok(()) }
    /// ```
    pub fn new(url: &str, config: ClientConfig) -> Client {
        let (state, _) = watch::channel(ConnectionState::Closed);
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            config,
            outbox: Mutex::new(Outbox {
                closed: true,
                ..Outbox::default()
            }),
            wake: Notify::new(),
            space: Notify::new(),
            handlers: Arc::new(Mutex::new(Handlers::default())),
            pending: Mutex::new(HashMap::new()),
            rooms: Mutex::new(BTreeSet::new()),
            unsettled: Mutex::new(BTreeSet::new()),
            state,
            close_info: Mutex::new(None),
            session: Mutex::new(Session::default()),
            streams: Mutex::new(Streams::default()),
            next_id: AtomicU64::new(1),
            ref_prefix: switchboard_proto::random_u64(),
            token: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            opened: AtomicU64::new(0),
        });
        Client { inner }
    }

    /// Opens the connection and waits for the server's `connected`: the first time for
    /// a client made with [`Client::new`], or again after it closed (by
    /// [`close`](Client::close), by the server with no reconnect, or after giving up),
    /// as Metafor's manual reconnection calls `connect()` again. A client that opens
    /// again starts afresh: a new session, no rooms, nothing queued. `on_open`
    /// handlers run before any message of the connection is handled.
    ///
    /// On a client that is already open this returns its session; one that is
    /// connecting or reconnecting is waited for first. This attempt is not retried: an
    /// unreachable server or a refusal is a [`ConnectError`] at once.
    ///
    /// ```no_run
    /// # async fn demo(client: switchboard_client::Client) -> Result<(), switchboard_client::ConnectError> {
    /// client.close().await;
    /// let session = client.open().await?; // connected again, with a new client id
    /// # let _ = session; Ok(()) }
    /// ```
    pub async fn open(&self) -> Result<Session, ConnectError> {
        let _one_at_a_time = self.inner.opening.lock().await;
        let mut state = self.watch_state();
        // The client holds the sender, so waiting cannot fail.
        let now = state
            .wait_for(|s| matches!(s, ConnectionState::Open | ConnectionState::Closed))
            .await
            .map(|s| *s)
            .unwrap_or(ConnectionState::Closed);
        if now == ConnectionState::Open {
            return Ok(self.session());
        }
        crate::driver::set_state(&self.inner, ConnectionState::Connecting);
        let (ws, session, positions, token) =
            match connect::open(&self.inner.url, &self.inner.config, None).await {
                Ok(opened) => opened,
                Err(e) => {
                    crate::driver::set_state(&self.inner, ConnectionState::Closed);
                    return Err(e);
                }
            };
        let inner = &self.inner;
        let generation = inner.opened.fetch_add(1, Ordering::Relaxed) + 1;
        *lock(&inner.token) = token;
        *lock(&inner.session) = session.clone();
        *lock(&inner.streams) = Streams::default();
        lock(&inner.streams).connected(&positions);
        lock(&inner.rooms).clear();
        lock(&inner.unsettled).clear();
        *lock(&inner.outbox) = Outbox {
            online: true,
            ..Outbox::default()
        };
        if let Some(source) = inner.config.token_source.clone() {
            tokio::spawn(crate::token::refresh_loop(
                Arc::downgrade(inner),
                generation,
                source,
                inner.config.refresh_before,
            ));
        }
        crate::driver::set_state(inner, ConnectionState::Open);
        let open_fns = snapshot(&lock(&inner.handlers).open);
        call_all(&open_fns, |f| f(&session));
        tokio::spawn(crate::driver::run(Arc::clone(inner), ws));
        Ok(session)
    }

    /// This client's id on the server (`client_id`). A reconnect gets a new one.
    pub fn id(&self) -> String {
        lock(&self.inner.session).client_id.clone()
    }

    /// What the server said when the current (or last) connection opened.
    pub fn session(&self) -> Session {
        lock(&self.inner.session).clone()
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// A receiver of the latest state (it may skip states that pass quickly; use
    /// [`on_state`](Client::on_state) to see every transition).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// True while the connection is open.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Open
    }

    /// True while connecting or reconnecting.
    pub fn is_connecting(&self) -> bool {
        matches!(
            self.state(),
            ConnectionState::Connecting | ConnectionState::Reconnecting
        )
    }

    /// How the last connection ended, once one has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        lock(&self.inner.close_info).clone()
    }

    pub(super) fn handle(&self, id: u64) -> HandlerId {
        HandlerId {
            id,
            handlers: Arc::downgrade(&self.inner.handlers),
        }
    }

    /// Closes the connection (code 1000) for good, stops reconnecting, and waits until
    /// it has closed. Queued messages not yet sent are dropped; waiting requests fail
    /// with [`RequestError::Closed`](crate::RequestError::Closed).
    pub async fn close(&self) {
        self.close_with(1000, "client closed").await;
    }

    /// Like [`close`](Client::close), with this close code and reason (Metafor's
    /// `close(code, reason)`). A code outside what a client may send (1000, or 3000 to
    /// 4999) is sent as 1000.
    ///
    /// ```no_run
    /// # async fn demo(client: switchboard_client::Client) {
    /// client.close_with(4000, "logging out").await;
    /// # }
    /// ```
    pub async fn close_with(&self, code: u16, reason: &str) {
        let code = if code == 1000 || (3000..=4999).contains(&code) {
            code
        } else {
            1000
        };
        // A close reason is at most 123 bytes (RFC 6455), cut at a character boundary.
        let mut end = reason.len().min(switchboard_proto::code::MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = reason[..end].to_owned();
        let mut state = self.watch_state();
        {
            let mut ob = lock(&self.inner.outbox);
            if !ob.closed && ob.close_requested.is_none() {
                ob.close_requested = Some((code, reason));
            }
        }
        self.inner.wake.notify_one();
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
    }

    /// Waits until the client has closed for good (closed by either side with no
    /// reconnect, or given up), and says how the last connection ended.
    pub async fn closed(&self) -> CloseInfo {
        let mut state = self.watch_state();
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
        self.close_info().unwrap_or(CloseInfo {
            code: 1006,
            reason: String::new(),
            reconnect: Reconnect::Backoff,
        })
    }
}
