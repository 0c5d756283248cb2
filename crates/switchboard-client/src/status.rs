//! What the application can read of a connection: its state and how it ended.

use switchboard_proto::Reconnect;

/// The connection's state, readable with [`Client::state`](crate::Client::state), watchable with
/// [`Client::watch_state`](crate::Client::watch_state), and reported transition by transition to
/// [`Client::on_state`](crate::Client::on_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first handshake is under way.
    Connecting,
    /// Connected: messages flow.
    Open,
    /// The connection dropped; the client is waiting to reconnect or reconnecting.
    /// Sends are queued (up to the offline queue's bound).
    Reconnecting,
    /// [`Client::close`](crate::Client::close) was called; waiting for the server's answer.
    Closing,
    /// The connection has ended for good.
    Closed,
}

impl ConnectionState {
    /// The WebSocket `readyState` number of this state (Metafor's `ready_state`, the
    /// browser's `WebSocket.readyState`): 0 connecting (or reconnecting), 1 open,
    /// 2 closing, 3 closed.
    ///
    /// ```
    /// use switchboard_client::ConnectionState;
    /// assert_eq!(ConnectionState::Open.ready_state(), 1);
    /// assert_eq!(ConnectionState::Reconnecting.ready_state(), 0);
    /// assert_eq!(ConnectionState::Closed.ready_state(), 3);
    /// ```
    pub fn ready_state(self) -> u8 {
        match self {
            ConnectionState::Connecting | ConnectionState::Reconnecting => 0,
            ConnectionState::Open => 1,
            ConnectionState::Closing => 2,
            ConnectionState::Closed => 3,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (1006 when the connection dropped without one).
    pub code: u16,
    /// The close reason.
    pub reason: String,
    /// What the protocol says to do next.
    pub reconnect: Reconnect,
}
