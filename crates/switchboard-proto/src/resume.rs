//! Stream positions and the resume handshake's shapes, shared by the server and the
//! clients (see `docs/protocol.md`, "Streams and resume").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a client is in one stream: the stream's epoch and the offset of the last
/// message it received (0: none yet).
///
/// ```
/// use switchboard_proto::Position;
/// let p: Position = serde_json::from_str(r#"{"epoch":"9f2c","offset":41}"#).unwrap();
/// assert_eq!(p, Position::new("9f2c", 41));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The stream's epoch: changes whenever the stream's history is lost.
    pub epoch: String,
    /// The offset of the last message received (offsets start at 1).
    pub offset: u64,
}

impl Position {
    /// A position in the stream of this epoch.
    pub fn new(epoch: impl Into<String>, offset: u64) -> Position {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }
}

/// A client's positions in its streams: its session's, the broadcasts', and each room's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPositions {
    /// The session's own stream (direct messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Position>,
    /// The broadcasts to everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Position>,
    /// Each room's stream, by room name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rooms: BTreeMap<String, Position>,
}

/// The payload of `resume`: the session to restore, its token (from `connected`), and
/// where the client is in each stream.
///
/// ```
/// use switchboard_proto::ResumeRequest;
/// let r: ResumeRequest = serde_json::from_str(
///     r#"{"session_id":"s1","token":"t1","streams":{"rooms":{"general":{"epoch":"e","offset":3}}}}"#,
/// ).unwrap();
/// assert_eq!(r.streams.rooms["general"].offset, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The `session_id` of the `connected` message that opened the session.
    pub session_id: String,
    /// The `resume_token` of that `connected` message.
    pub token: String,
    /// Where the client is in each stream.
    #[serde(default)]
    pub streams: StreamPositions,
    /// The `ref`s of the messages the client will send again, right after, because
    /// their answers had not arrived: one the server has answered gets that answer
    /// again instead of being handled twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resend: Vec<String>,
    /// The client's count of its attempts to resume this session: one more each
    /// attempt. A resume whose count is not above one the server already took for the
    /// session is one the client gave up on (its connection failed during the
    /// handshake): it is refused, so it never takes the session from the connection
    /// the client went on with. 0 (or absent): not counted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a stream could not be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecoveryGap {
    /// The messages after the client's position are no longer in the history (older
    /// than `history_ttl`, or pushed out by `history_size` or the memory budget).
    HistoryGap,
    /// The stream's history was lost (a restart, an emptied store): its epoch changed.
    EpochChanged,
    /// The session expired (`session_ttl`), ended, or is unknown; a fresh one began.
    SessionExpired,
    /// The client gave no position for a stream it was in.
    NoPosition,
    /// The client's position is ahead of the stream: it cannot have come from it.
    OffsetAhead,
    /// The stream keeps no history (its room's policy is off).
    NoHistory,
    /// The resumed session did not have this room the client was in; the client
    /// joined it again (said by the client, never by the server).
    NotRestored,
}

/// One stream's outcome of a resume: all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// True: every message after the client's position follows, in order (`missed` of
    /// them). False: none are replayed, and the application should reload its state.
    pub recovered: bool,
    /// How many messages are replayed.
    #[serde(default)]
    pub missed: u64,
    /// Why the stream could not be recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RecoveryGap>,
    /// The stream's position now (after the replay): where the client continues from.
    pub position: Position,
}

impl Recovery {
    /// Recovered, with `missed` messages to replay.
    pub fn recovered(missed: u64, position: Position) -> Recovery {
        Recovery {
            recovered: true,
            missed,
            reason: None,
            position,
        }
    }

    /// Not recovered, for this reason.
    pub fn lost(reason: RecoveryGap, position: Position) -> Recovery {
        Recovery {
            recovered: false,
            missed: 0,
            reason: Some(reason),
            position,
        }
    }
}

/// The outcome of a resume, in `connected` (`resumed`): per stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeOutcome {
    /// True when the session (client id, identity, rooms) was restored.
    pub resumed: bool,
    /// Why it was not, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RecoveryGap>,
    /// The session's own stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Recovery>,
    /// The broadcasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Recovery>,
    /// Each restored room.
    #[serde(default)]
    pub rooms: BTreeMap<String, Recovery>,
}

impl ResumeOutcome {
    /// True when the session and every stream in it were recovered.
    pub fn fully_recovered(&self) -> bool {
        self.resumed
            && self.session.as_ref().is_none_or(|r| r.recovered)
            && self.all.as_ref().is_none_or(|r| r.recovered)
            && self.rooms.values().all(|r| r.recovered)
    }
}
