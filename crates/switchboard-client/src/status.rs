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
