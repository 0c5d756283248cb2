//! Delivery guarantees: streams with epochs and offsets, their bounded history,
//! sessions that outlive their connections, and the answers a session remembers.
//!
//! Every room is a [`Stream`](stream::Stream), and so are the broadcasts to everyone
//! and each session's direct messages. A message sent to a stream takes the next
//! offset and is stamped with it (`"offset": n`, once, whatever the number of
//! recipients) under the stream's lock, which also covers queueing it for the
//! stream's members: offsets reach every member in order. A client that reconnects
//! presents its last offset per stream; what it missed is replayed from the history,
//! all or nothing (see `docs/delivery.md`).
//!
//! The server's sending and resume logic (`server/send.rs`, `server/resume.rs`) use
//! these types; nothing here knows about sockets.

pub(crate) mod replies;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod streams;
pub(crate) mod waiting;

pub(crate) use replies::Seen;
pub(crate) use session::Session;
pub(crate) use stream::Stream;
pub(crate) use streams::Streams;
pub(crate) use waiting::Sessions;
