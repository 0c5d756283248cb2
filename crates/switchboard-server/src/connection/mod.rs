//! One client's connection: its handle ([`Conn`]), its bounded outbox, and the task that
//! serves it.
//!
//! The path of a message: [`task`] reads a frame from the socket and hands text to the
//! connection's dialect adapter ([`crate::dialect`]), which yields a native envelope;
//! [`dispatch`] sends it to RPC ([`crate::rpc`]), to the handlers of its type, or to the
//! hub's [`relay`]; replies are queued in the [`outbox`] and written by the same task,
//! through the adapter again. [`handshake`] opens the connection (admission,
//! authentication, `connected`); [`closing`] ends it.

mod closing;
mod dispatch;
mod handle;
mod handshake;
mod outbox;
mod relay;
mod task;

use std::net::SocketAddr;

use switchboard_proto::Dialect;
use tokio_util::task::task_tracker::TaskTrackerToken;

pub(crate) use closing::Closing;
pub(crate) use dispatch::{Rest, panic_text, send_error, send_reply};
pub use handle::Conn;
pub(crate) use handshake::auth_result;

use crate::Server;
use crate::ws::WebSocket;

/// What a connection does with the messages it reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mode {
    /// switchboard's protocol (in this dialect): envelopes, handlers, rooms; `resume`:
    /// the client asked to resume a session (`?resume=1`), so its first message after
    /// `auth` is a `resume`.
    Messages {
        dialect: Dialect,
        resume: bool,
        /// Who the client proved to be at the upgrade (`?token=`), if it did.
        identity: Option<Box<crate::Identity>>,
        /// The client may speak first in a dialect it did not name (datadivr's client
        /// does): read its first frame, for up to
        /// [`first_frame_wait`](crate::ServerConfig::first_frame_wait), before sending
        /// anything.
        listen_first: bool,
    },
    /// Every data frame is sent back as it came (conformance suites, benchmarks).
    Echo,
}

/// Runs one connection from its upgrade to its end.
///
/// A task's memory is the size of its largest state, kept for the connection's whole
/// life. Opening (admission, authentication) and closing (the close handshake, the
/// disconnect hooks) happen once and are large, so they run boxed, and so does the
/// handling of each message: an idle connection's task holds only what it needs to
/// wait for the next frame. (Not an `async fn`: its arguments, the socket among them,
/// would stay in its state for good.) `tracked` counts it in the server's tasks.
pub(crate) fn run(
    server: Server,
    socket: WebSocket,
    remote: Option<SocketAddr>,
    mode: Mode,
    tracked: TaskTrackerToken,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(handshake::open(server, socket, remote, mode));
    async move {
        if let Some(mut task) = opening.await {
            let closing = task.serve().await;
            Box::pin(task.close(closing)).await;
        }
        // Shutdown waits for this.
        drop(tracked);
    }
}
