//! The system message types. Every other `type` belongs to the application.

/// An error report, server to client: `{code, message, details?}`.
pub const ERROR: &str = "error";
/// An acknowledgement of a message that carried a `ref`: `{ref, status, result? | code, message}`.
pub const ACK: &str = "ack";
/// Authentication, client to server (its payload arrives with the security work).
pub const AUTH: &str = "auth";
/// Application-level keep-alive, client to server; answered by [`PONG`].
pub const PING: &str = "ping";
/// The answer to [`PING`].
pub const PONG: &str = "pong";
/// Join a room: `{room_id}`.
pub const JOIN_ROOM: &str = "join_room";
/// Leave a room: `{room_id}`.
pub const LEAVE_ROOM: &str = "leave_room";
/// Alias of [`JOIN_ROOM`] taking `{topic}` (or `{room_id}`).
pub const SUBSCRIBE: &str = "subscribe";
/// Alias of [`LEAVE_ROOM`] taking `{topic}` (or `{room_id}`).
pub const UNSUBSCRIBE: &str = "unsubscribe";
/// A remote procedure call: `{method, params}`.
pub const RPC: &str = "rpc";
/// Sent once when a connection is ready: `{client_id, session_id, server}`.
pub const CONNECTED: &str = "connected";
/// Sent to a room's members when a client joins it: `{user_id, room_id}`.
pub const USER_JOINED: &str = "user_joined";
/// Sent to a room's members when a client leaves it: `{user_id, room_id}`.
pub const USER_LEFT: &str = "user_left";
/// Sent to a room's other members after a join or a leave, where the server is set
/// to: `{room_id, users}` (how many members it has now).
pub const ROOM_UPDATE: &str = "room_update";
/// Client to server, the first message of a reconnect that asked for it (`?resume=1`):
/// restore a session and replay what it missed.
pub const RESUME: &str = "resume";

/// The suffix of the reply type for a handler's return value when the message had no
/// `ref`: a `chat` message is answered with `chat_response`.
pub const RESPONSE_SUFFIX: &str = "_response";

/// Types only the server sends. A client sending one gets `INVALID_ENVELOPE`, so no
/// client can forge an acknowledgement or an error for another.
pub const SERVER_ONLY: &[&str] = &[
    ERROR,
    ACK,
    PONG,
    CONNECTED,
    USER_JOINED,
    USER_LEFT,
    ROOM_UPDATE,
];

/// True if clients may not send messages of this type.
///
/// ```
/// assert!(switchboard_proto::types::is_server_only("ack"));
/// assert!(!switchboard_proto::types::is_server_only("chat"));
/// ```
pub fn is_server_only(kind: &str) -> bool {
    SERVER_ONLY.contains(&kind)
}

/// The type of the reply to a message of type `kind` without a `ref`.
///
/// ```
/// assert_eq!(switchboard_proto::types::response_type("chat"), "chat_response");
/// ```
pub fn response_type(kind: &str) -> String {
    let mut s = String::with_capacity(kind.len() + RESPONSE_SUFFIX.len());
    s.push_str(kind);
    s.push_str(RESPONSE_SUFFIX);
    s
}
