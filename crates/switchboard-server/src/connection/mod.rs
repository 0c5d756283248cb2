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
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use switchboard_proto::Dialect;
use tokio_util::task::task_tracker::TaskTrackerToken;

pub(crate) use closing::Closing;
pub(crate) use dispatch::{Rest, panic_text, send_error, send_reply};
pub use handle::Conn;
pub(crate) use handshake::auth_result;

use crate::Server;
use crate::ws::WebSocket;
use task::ConnectionTask;

/// What a connection does with the messages it reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mode {
    /// switchboard's protocol (in this dialect): envelopes, handlers, rooms; `resume`:
    /// the client asked to resume a session (`?resume=1`), so its first message after
    /// `auth` is a `resume`.
    Messages {
        dialect: Dialect,
        /// Envelopes in MessagePack binary frames (negotiated by subprotocol).
        msgpack: bool,
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
/// A task's memory is the size of its future, kept for the connection's whole life.
/// Opening (admission, authentication) and closing (the close handshake, the
/// disconnect hooks) happen once and are large, so they run boxed, and so does the
/// handling of each message. Serving is [`Run`]'s own state: an idle connection's task
/// holds the [`ConnectionTask`] once, and nothing else. (An `async` block would keep
/// room for the task twice over: once as it comes out of opening, once where it is
/// served.) `tracked` counts it in the server's tasks.
pub(crate) fn run(
    server: Server,
    socket: WebSocket,
    remote: Option<SocketAddr>,
    mode: Mode,
    tracked: TaskTrackerToken,
) -> Run {
    Run {
        stage: Stage::Opening(Box::pin(handshake::open(server, socket, remote, mode))),
        tracked: Some(tracked),
    }
}

/// The future of one connection's task (see [`run`]).
pub(crate) struct Run {
    stage: Stage,
    /// Shutdown waits for this; dropped when the connection has ended.
    tracked: Option<TaskTrackerToken>,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The connection lives in `Serving` for its whole life; boxing it would cost an
/// allocation of its own beside the task's.
#[allow(clippy::large_enum_variant)]
enum Stage {
    Opening(Boxed<Option<ConnectionTask>>),
    Serving(ConnectionTask),
    Closing(Boxed<()>),
    Done,
}

impl Future for Run {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Opening(opening) => match ready!(opening.as_mut().poll(cx)) {
                    Some(task) => this.stage = Stage::Serving(task),
                    None => this.stage = Stage::Done,
                },
                Stage::Serving(task) => {
                    let closing = ready!(task.poll_serve(cx));
                    if let Stage::Serving(task) = std::mem::replace(&mut this.stage, Stage::Done) {
                        this.stage = Stage::Closing(Box::pin(task.close(closing)));
                    }
                }
                Stage::Closing(close) => {
                    ready!(close.as_mut().poll(cx));
                    this.stage = Stage::Done;
                }
                Stage::Done => {
                    this.tracked = None;
                    return Poll::Ready(());
                }
            }
        }
    }
}
#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// An idle connection's largest cost is its task: tokio allocates the future with
    /// 96 bytes of its own, in blocks of 128 bytes (its task cells are aligned to 128 on
    /// x86-64 and aarch64). At 288 bytes or less the task takes 384 bytes; one byte
    /// more, and every connection pays 512 (docs/benchmarks.md, "Idle").
    #[test]
    fn a_connection_task_fits_in_384_bytes() {
        let size = std::mem::size_of::<super::Run>();
        assert!(size <= 288, "the connection's future is {size} bytes");
    }
}
