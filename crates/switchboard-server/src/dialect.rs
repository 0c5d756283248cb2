//! The wire adapter: a client's dialect, chosen at the upgrade (or recognised from a
//! Metafor client's first frame), applied once on read and once on write.
//!
//! Everything past this module sees native envelopes and native frames: dispatch,
//! handlers, rooms and the relay never know which dialect a client speaks. A
//! dialect's own commands become native messages here (Metafor's `_join` is a
//! `join_room`, its answer an ack translated back into `{"status": "joined"}`), so every
//! check the native path makes (server-only types, room names, permissions) applies to
//! every dialect alike.

use bytes::Bytes;
use serde_json::json;
use switchboard_proto::dialect::{datadivr, metafor};
use switchboard_proto::reply::Ack;
use switchboard_proto::{DecodeError, Dialect, Envelope, Payload, error_frame, msgpack, types};

use crate::ConnId;
use crate::encoding;
use crate::ws::{Frame, Text};

/// What a text frame from the client asks for.
#[derive(Debug)]
pub(crate) enum Read {
    /// A native envelope, to dispatch.
    Envelope(Envelope),
    /// Unreadable: answer with this error.
    Invalid(DecodeError),
    /// The dialect answers this frame itself, with this text (Metafor's echo).
    Answer(String),
}

/// What a binary frame from the client asks for.
pub(crate) enum ReadBinary {
    /// An envelope in MessagePack, read as a text frame would be.
    Envelope(Read),
    /// Handle it (the `on_binary` handlers).
    Dispatch(Bytes),
    /// Send it back as it came (Metafor's reference server echoes what it cannot read).
    Echo(Bytes),
}

/// A connection's wire adapter.
#[derive(Debug)]
pub(crate) enum DialectAdapter {
    /// switchboard's own protocol; `undecided` until the first frame, which may show a
    /// Metafor client on the native endpoint.
    Native { undecided: bool },
    /// datadivr: frames addressed to this client carry its id.
    Datadivr { client: ConnId },
    /// Metafor Channels (boxed: an idle native connection's task stays small).
    Metafor(Box<MetaforCommands>),
    /// switchboard's own protocol with envelopes in MessagePack binary frames (the
    /// client negotiated [`msgpack::SUBPROTOCOL`]); JSON text frames are read too.
    MessagePack,
}

/// The Metafor `_join` / `_leave` commands in flight, by the `ref` they were given, so
/// their acks can be answered as Metafor's status messages.
#[derive(Debug, Default)]
pub(crate) struct MetaforCommands {
    commands: Vec<RoomCommand>,
    next: u32,
}

/// A Metafor `_join` or `_leave` waiting for its ack.
#[derive(Debug)]
pub(crate) struct RoomCommand {
    ref_id: String,
    join: bool,
    room: String,
}

/// The `ref` prefix of Metafor room commands (never seen by the client).
const METAFOR_REF: &str = "metafor:";

/// How long an envelope read in MessagePack may be as JSON: binary values grow about
/// fourfold as arrays of numbers.
pub(crate) fn msgpack_json_limit(max_message_size: usize) -> usize {
    max_message_size.saturating_mul(4)
}

impl DialectAdapter {
    /// The adapter for `dialect`; `msgpack`: the client negotiated MessagePack (only
    /// the native dialect has it).
    pub(crate) fn new(dialect: Dialect, msgpack: bool, client: ConnId) -> DialectAdapter {
        match dialect {
            Dialect::Datadivr => DialectAdapter::Datadivr { client },
            Dialect::Metafor => DialectAdapter::Metafor(Box::default()),
            _ if msgpack => DialectAdapter::MessagePack,
            _ => DialectAdapter::Native { undecided: true },
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            DialectAdapter::Native { .. } | DialectAdapter::MessagePack => Dialect::Native,
            DialectAdapter::Datadivr { .. } => Dialect::Datadivr,
            DialectAdapter::Metafor(_) => Dialect::Metafor,
        }
    }

    /// Reads one text frame of the client `client`. On a native connection, a first
    /// frame that is unmistakably Metafor's or datadivr's switches the adapter to that
    /// dialect.
    pub(crate) fn read_text(&mut self, text: &str, client: ConnId) -> Read {
        if let DialectAdapter::Native { undecided } = self {
            if std::mem::take(undecided) {
                self.recognise(text, client);
            }
        }
        match self {
            DialectAdapter::Native { .. } | DialectAdapter::MessagePack => {
                read(Envelope::decode(text))
            }
            DialectAdapter::Datadivr { .. } => read(datadivr::incoming(text)),
            DialectAdapter::Metafor(state) => match metafor::incoming(text) {
                Err(e) => Read::Invalid(e),
                Ok(metafor::Incoming::Join(room)) => Read::Envelope(state.command(true, room)),
                Ok(metafor::Incoming::Leave(room)) => Read::Envelope(state.command(false, room)),
                Ok(metafor::Incoming::Room(env) | metafor::Incoming::All(env)) => {
                    Read::Envelope(env)
                }
                Ok(metafor::Incoming::Echo(value)) => Read::Answer(metafor::echo(&value)),
                Ok(metafor::Incoming::Text(t)) => Read::Answer(format!("Echo: {t}")),
            },
        }
    }

    /// Switches a native adapter to the dialect this first frame is unmistakably in,
    /// if it is in one.
    pub(crate) fn recognise(&mut self, first: &str, client: ConnId) {
        if metafor::detect(first) {
            *self = DialectAdapter::Metafor(Box::default());
        } else if datadivr::detect(first) {
            *self = DialectAdapter::Datadivr { client };
        }
    }

    /// Reads an envelope during authentication (no dialect detection, no commands).
    pub(crate) fn read_auth(&self, text: &str) -> Result<Envelope, DecodeError> {
        match self {
            DialectAdapter::Datadivr { .. } => datadivr::incoming(text),
            _ => Envelope::decode(text),
        }
    }

    /// Reads an envelope in a binary frame during authentication: `None` unless the
    /// connection speaks MessagePack. `max_json`: how long the envelope may be as JSON.
    pub(crate) fn read_auth_binary(
        &self,
        data: &[u8],
        max_json: usize,
    ) -> Option<Result<Envelope, DecodeError>> {
        match self {
            DialectAdapter::MessagePack => Some(msgpack::decode(data, max_json)),
            _ => None,
        }
    }

    /// Reads one binary frame; `max_json`: how long an envelope in MessagePack may be
    /// as JSON.
    pub(crate) fn read_binary(&self, data: Bytes, max_json: usize) -> ReadBinary {
        match self {
            DialectAdapter::Metafor(_) => ReadBinary::Echo(data),
            DialectAdapter::MessagePack => match msgpack::binary_data(&data) {
                Some(raw) => ReadBinary::Dispatch(data.slice_ref(raw)),
                None => ReadBinary::Envelope(read(msgpack::decode(&data, max_json))),
            },
            _ => ReadBinary::Dispatch(data),
        }
    }

    /// A native frame made for this client alone (an error before closing, a refusal),
    /// as it reads it.
    pub(crate) fn localize_frame(&mut self, native: String) -> Option<Frame> {
        self.write(Frame::text(native))
    }

    /// A frame as this client reads it (`None`: the dialect has no such frame).
    pub(crate) fn write(&mut self, frame: Frame) -> Option<Frame> {
        match (self, frame) {
            (DialectAdapter::Native { .. }, frame) => Some(frame),
            (DialectAdapter::MessagePack, Frame::Text(native)) => {
                encoding::to_msgpack(&native).map(Frame::Binary)
            }
            (DialectAdapter::MessagePack, Frame::Binary(raw)) => {
                Some(Frame::Binary(msgpack::binary_envelope(&raw).into()))
            }
            (DialectAdapter::Datadivr { client }, Frame::Text(native)) => {
                datadivr::outgoing(native.as_str(), &client.to_string()).map(verbatim)
            }
            (DialectAdapter::Metafor(state), Frame::Text(native)) => {
                state.outgoing(native.as_str()).map(verbatim)
            }
            (_, frame) => Some(frame),
        }
    }
}

/// A frame already in the client's dialect.
fn verbatim(text: String) -> Frame {
    Frame::Verbatim(Text::from(text))
}

fn read(decoded: Result<Envelope, DecodeError>) -> Read {
    match decoded {
        Ok(env) => Read::Envelope(env),
        Err(e) => Read::Invalid(e),
    }
}

impl MetaforCommands {
    /// A native frame as Metafor's: the answer to a `_join` / `_leave` in flight, or
    /// the frame translated (`None`: Metafor has no such frame).
    fn outgoing(&mut self, native: &str) -> Option<String> {
        if !self.commands.is_empty() {
            if let Some(answer) = command_answer(&mut self.commands, native) {
                return Some(answer);
            }
        }
        metafor::outgoing(native)
    }

    /// A Metafor `_join` / `_leave` as the native `join_room` / `leave_room`.
    fn command(&mut self, join: bool, room: String) -> Envelope {
        self.next = self.next.wrapping_add(1);
        let ref_id = format!("{METAFOR_REF}{}", self.next);
        let kind = if join {
            types::JOIN_ROOM
        } else {
            types::LEAVE_ROOM
        };
        let payload = Payload::from_serialize(&json!({ "room_id": room }))
            .unwrap_or_else(|_| Payload::empty());
        self.commands.push(RoomCommand {
            ref_id: ref_id.clone(),
            join,
            room,
        });
        Envelope {
            ref_id: Some(ref_id),
            ..Envelope::with_payload(kind, payload)
        }
    }
}

/// The answer to a room command, if `native` is the ack of one: Metafor's status
/// message, or its error.
fn command_answer(commands: &mut Vec<RoomCommand>, native: &str) -> Option<String> {
    if !native.starts_with(r#"{"type":"ack""#) {
        return None;
    }
    let ack: Ack = Envelope::decode(native).ok()?.payload_as().ok()?;
    let at = commands.iter().position(|c| c.ref_id == ack.ref_id)?;
    let command = commands.swap_remove(at);
    Some(match ack.into_result() {
        Ok(_) => metafor::status(command.join, &command.room),
        Err(error) => metafor::outgoing(&error_frame(&error))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ConnId {
        ConnId::from_u64(7)
    }

    /// What `a` writes for the native frame `native`, as text.
    fn written(a: &mut DialectAdapter, native: &str) -> Option<String> {
        match a.write(Frame::text(native.to_owned()))? {
            Frame::Verbatim(text) | Frame::Text(text) => Some(text.as_str().to_owned()),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn a_metafor_join_is_a_native_join_answered_in_metafor_s_words() {
        let mut a = DialectAdapter::new(Dialect::Native, false, id());
        let Read::Envelope(env) = a.read_text(r#"{"type":"_join","room":"r1"}"#, id()) else {
            panic!("a join")
        };
        assert_eq!(
            a.dialect(),
            Dialect::Metafor,
            "recognised by its first frame"
        );
        assert_eq!(env.kind, "join_room");
        assert_eq!(env.payload.get(), r#"{"room_id":"r1"}"#);
        let r = env.ref_id.clone().unwrap();
        let ack = switchboard_proto::ack_ok(&r, None);
        assert_eq!(
            written(&mut a, &ack).as_deref(),
            Some(r#"{"room":"r1","status":"joined"}"#)
        );
        assert_eq!(
            written(&mut a, &ack),
            None,
            "answered once; other acks are not Metafor's"
        );
    }

    #[test]
    fn only_the_first_frame_can_switch_to_metafor() {
        let mut a = DialectAdapter::new(Dialect::Native, false, id());
        assert!(matches!(
            a.read_text(r#"{"type":"ping"}"#, id()),
            Read::Envelope(_)
        ));
        assert!(matches!(
            a.read_text(r#"{"_room":"r","text":"x"}"#, id()),
            Read::Invalid(_)
        ));
        assert_eq!(a.dialect(), Dialect::Native);
    }

    #[test]
    fn a_datadivr_first_frame_switches_to_datadivr() {
        let mut a = DialectAdapter::new(Dialect::Native, false, id());
        let hello = r#"{"event_name":"CLI_HELLO","payload":{"handlers":[]},"to":"others"}"#;
        let Read::Envelope(env) = a.read_text(hello, id()) else {
            panic!("datadivr's hello, read")
        };
        assert_eq!(a.dialect(), Dialect::Datadivr);
        assert_eq!(
            (env.kind.as_str(), env.to.as_deref()),
            ("CLI_HELLO", Some("others"))
        );
        // Only the first frame decides.
        let mut b = DialectAdapter::new(Dialect::Native, false, id());
        assert!(matches!(
            b.read_text(r#"{"type":"ping"}"#, id()),
            Read::Envelope(_)
        ));
        assert!(matches!(b.read_text(hello, id()), Read::Invalid(_)));
        assert_eq!(b.dialect(), Dialect::Native);
    }

    #[test]
    fn datadivr_frames_carry_the_client_s_id() {
        let mut a = DialectAdapter::new(Dialect::Datadivr, false, id());
        let out = a
            .write(Frame::text(r#"{"type":"x","payload":{"value":1}}"#.into()))
            .unwrap();
        let Frame::Verbatim(t) = out else {
            panic!("translated")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["to"], id().to_string());
    }
}
