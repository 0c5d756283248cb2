//! Dialects: the wire formats the seeds' own clients already speak, translated at the
//! edge into the native envelope so nothing else in the server knows about them.
//!
//! - **datadivr**: `{"event_name", "payload", "to", "from_id", "message"}`.
//! - **Metafor Channels**: `{"type": "_join" | "_leave", "room"}`, room messages carrying
//!   `"_room"`, any other JSON, plain text and binary frames.
//!
//! `docs/protocol.md` ("Dialects") is the specification; this module is its
//! implementation, pure functions over text.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::envelope::{DecodeError, DecodeErrorKind, Envelope, Payload};
use crate::limits::{MAX_ID_LEN, MAX_TYPE_LEN};
use crate::types;

/// The wire format one connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dialect {
    /// switchboard's own envelope.
    #[default]
    Native,
    /// datadivr's `event_name` messages.
    Datadivr,
    /// Metafor Channels' `_join` / `_leave` / `_room` messages.
    Metafor,
}

impl Dialect {
    /// The name used in `?dialect=` and configuration: `native`, `datadivr`, `metafor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Datadivr => "datadivr",
            Dialect::Metafor => "metafor",
        }
    }

    /// The WebSocket subprotocol that selects it: `switchboard.datadivr`, ...
    pub fn subprotocol(self) -> &'static str {
        match self {
            Dialect::Native => "switchboard.v1",
            Dialect::Datadivr => "switchboard.datadivr",
            Dialect::Metafor => "switchboard.metafor",
        }
    }

    /// Every dialect.
    pub const ALL: [Dialect; 3] = [Dialect::Native, Dialect::Datadivr, Dialect::Metafor];
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Dialect, String> {
        match s.to_ascii_lowercase().as_str() {
            "native" | "switchboard" => Ok(Dialect::Native),
            "datadivr" => Ok(Dialect::Datadivr),
            "metafor" | "channels" => Ok(Dialect::Metafor),
            other => Err(format!(
                "unknown dialect `{other}` (native, datadivr or metafor)"
            )),
        }
    }
}

fn invalid(field: &'static str, reason: &str) -> DecodeError {
    DecodeError::new(DecodeErrorKind::InvalidField {
        field,
        reason: reason.to_owned(),
    })
}

fn object_of(text: &str) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DecodeError::new(DecodeErrorKind::NotObject)),
        Err(e) => Err(DecodeError::new(DecodeErrorKind::NotJson(e.to_string()))),
    }
}

/// datadivr's format.
pub mod datadivr {
    use super::*;

    /// A datadivr frame as a native envelope.
    ///
    /// `event_name` becomes the type; `to` (default `"others"`) becomes `to`, so the
    /// message is handled if a handler takes its type and otherwise relayed to `"all"`
    /// (the sender included), `"others"` or one client id. A `room` (switchboard's
    /// addition; datadivr's own client never sends one) routes to that room's members
    /// instead, as a native `room` does. `from_id` is ignored: the
    /// server stamps the sender. The payload: an object stays an object, any other value
    /// becomes `{"value": ...}`; a `message` text is added as `payload.message`.
    ///
    /// ```
    /// use switchboard_proto::dialect::datadivr;
    /// let env = datadivr::incoming(r#"{"event_name":"msg","to":"all","message":"hello","from_id":"forged"}"#).unwrap();
    /// assert_eq!(env.kind, "msg");
    /// assert_eq!(env.to.as_deref(), Some("all"));
    /// assert_eq!(env.payload.get(), r#"{"message":"hello"}"#);
    /// assert_eq!(env.from, None);
    /// ```
    pub fn incoming(text: &str) -> Result<Envelope, DecodeError> {
        let mut map = object_of(text)?;
        let kind = match map.remove("event_name") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TYPE_LEN => s,
            Some(Value::String(s)) if s.len() > MAX_TYPE_LEN => {
                return Err(DecodeError::new(DecodeErrorKind::TypeTooLong {
                    len: s.len(),
                }));
            }
            Some(Value::String(_)) => return Err(DecodeError::new(DecodeErrorKind::EmptyType)),
            Some(_) => return Err(invalid("event_name", "must be a string")),
            None => return Err(invalid("event_name", "missing `event_name`")),
        };
        let room = match map.remove("room") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(s),
            Some(_) => return Err(invalid("room", "a room name is 1 to 128 bytes")),
        };
        let to = match map.remove("to") {
            // A room message goes to the room, not to everyone else.
            None | Some(Value::Null) if room.is_some() => None,
            None | Some(Value::Null) => Some("others".to_owned()),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(s),
            Some(_) => return Err(invalid("to", "must be \"all\", \"others\" or a client id")),
        };
        let mut payload = match map.remove("payload") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        match map.remove("message") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                payload.entry("message").or_insert(Value::String(s));
            }
            Some(_) => return Err(invalid("message", "must be a string")),
        }
        let payload =
            Payload::from_serialize(&payload).map_err(|e| invalid("payload", &e.to_string()))?;
        Ok(Envelope {
            to,
            room,
            ..Envelope::with_payload(kind, payload)
        })
    }

    /// True if a first frame on a native connection is unmistakably datadivr's: an
    /// object with an `event_name` and no `type` (every native message has a `type`).
    ///
    /// ```
    /// use switchboard_proto::dialect::datadivr;
    /// assert!(datadivr::detect(r#"{"event_name":"CLI_HELLO","payload":{"handlers":[]},"to":"others"}"#));
    /// assert!(!datadivr::detect(r#"{"type":"chat","payload":{"event_name":"x"}}"#));
    /// assert!(!datadivr::detect(r#"{"type":"chat","event_name":"x"}"#));
    /// ```
    pub fn detect(text: &str) -> bool {
        // Cheap check first: a native frame rarely mentions `event_name` at all.
        if !text.contains("\"event_name\"") {
            return false;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                matches!(map.get("event_name"), Some(Value::String(_))) && !map.contains_key("type")
            }
            _ => false,
        }
    }

    /// A native frame as datadivr receives it, for the client `recipient`; `None` for
    /// frames datadivr has no use for (`connected`, `ack`, `pong`).
    ///
    /// An `error` becomes `{"event_name": "error", "message": text}`; otherwise the
    /// type becomes `event_name`, `{"value": x}` becomes the payload `x`, and a string
    /// `payload.message` becomes `message`.
    ///
    /// ```
    /// use switchboard_proto::dialect::datadivr;
    /// let out = datadivr::outgoing(r#"{"type":"sum_handler_result","payload":{"value":420.0}}"#, "c1").unwrap();
    /// let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    /// assert_eq!(v, serde_json::json!({"event_name":"sum_handler_result","payload":420.0,"to":"c1","from_id":"server","message":null}));
    /// ```
    pub fn outgoing(native: &str, recipient: &str) -> Option<String> {
        let env = Envelope::decode(native).ok()?;
        let from = env.from.clone().unwrap_or_else(|| "server".to_owned());
        let frame = match env.kind.as_str() {
            types::CONNECTED | types::ACK | types::PONG => return None,
            types::ERROR => {
                let body: Value = env.payload.deserialize().unwrap_or(Value::Null);
                let text = match (body["code"].as_str(), body["message"].as_str()) {
                    (Some(code), Some(msg)) => format!("{code}: {msg}"),
                    (_, Some(msg)) => msg.to_owned(),
                    _ => "error".to_owned(),
                };
                json!({"event_name": "error", "payload": body, "to": recipient, "from_id": "server", "message": text})
            }
            kind => {
                let mut payload: Map<String, Value> = env.payload.deserialize().unwrap_or_default();
                let message = match payload.get("message") {
                    Some(Value::String(_)) => payload.remove("message"),
                    _ => None,
                };
                let payload = if payload.len() == 1 && payload.contains_key("value") {
                    payload.remove("value").unwrap_or(Value::Null)
                } else if payload.is_empty() {
                    Value::Null
                } else {
                    Value::Object(payload)
                };
                let mut frame = json!({
                    "event_name": kind,
                    "payload": payload,
                    "to": recipient,
                    "from_id": from,
                    "message": message,
                });
                if let Some(room) = env.room {
                    frame["room"] = Value::String(room);
                }
                frame
            }
        };
        Some(frame.to_string())
    }
}

/// Metafor Channels' format.
pub mod metafor {
    use super::*;

    /// What a Metafor frame asks for.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Incoming {
        /// `{"type": "_join", "room": ...}`: answered `{"status": "joined", "room": ...}`.
        Join(String),
        /// `{"type": "_leave", "room": ...}`: answered `{"status": "left", "room": ...}`.
        Leave(String),
        /// A message carrying `_room`: delivered to the room's other members.
        Room(Envelope),
        /// Any other JSON object: broadcast to everyone (`to: "all"`), as the
        /// reference server's "route messages by room" does.
        All(Envelope),
        /// JSON that is not an object: answered `{"echo": ...}`.
        Echo(Value),
        /// Text that is not JSON: answered `"Echo: " + text`.
        Text(String),
    }

    /// True if a first frame on a native connection is unmistakably Metafor's: a
    /// `_join` / `_leave` or a `_room` field, which native messages never carry.
    pub fn detect(text: &str) -> bool {
        // Cheap check first; most frames will not even contain an underscore key.
        if !(text.contains("\"_join\"")
            || text.contains("\"_leave\"")
            || text.contains("\"_room\""))
        {
            return false;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                map.contains_key("_room")
                    || matches!(
                        map.get("type").and_then(Value::as_str),
                        Some("_join" | "_leave")
                    )
            }
            _ => false,
        }
    }

    fn room_name(map: &Map<String, Value>, key: &'static str) -> Result<String, DecodeError> {
        match map.get(key) {
            Some(Value::String(r)) if !r.is_empty() && r.len() <= MAX_ID_LEN => Ok(r.clone()),
            Some(Value::String(_)) => Err(invalid(key, "a room name is 1 to 128 bytes")),
            _ => Err(invalid(key, "missing room name")),
        }
    }

    /// Reads one Metafor text frame.
    ///
    /// A message's `type` becomes the envelope's (`message` when it has none or one
    /// that is not a usable string); an explicit `"type": "message"` also stays in the
    /// payload, so that it reaches Metafor recipients as it was sent.
    ///
    /// ```
    /// use switchboard_proto::dialect::metafor::{self, Incoming};
    /// assert_eq!(metafor::incoming(r#"{"type":"_join","room":"r1"}"#).unwrap(), Incoming::Join("r1".into()));
    /// assert_eq!(metafor::incoming("Hello, World!").unwrap(), Incoming::Text("Hello, World!".into()));
    /// match metafor::incoming(r#"{"_room":"r1","text":"Hello","user":"alice"}"#).unwrap() {
    ///     Incoming::Room(env) => {
    ///         assert_eq!((env.kind.as_str(), env.room.as_deref()), ("message", Some("r1")));
    ///         assert_eq!(env.payload.get(), r#"{"text":"Hello","user":"alice"}"#);
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn incoming(text: &str) -> Result<Incoming, DecodeError> {
        let mut map = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(other) => return Ok(Incoming::Echo(other)),
            Err(_) => return Ok(Incoming::Text(text.to_owned())),
        };
        match map.get("type").and_then(Value::as_str) {
            Some("_join") => return room_name(&map, "room").map(Incoming::Join),
            Some("_leave") => return room_name(&map, "room").map(Incoming::Leave),
            _ => {}
        }
        let room = match map.contains_key("_room") {
            true => Some(room_name(&map, "_room")?),
            false => None,
        };
        map.remove("_room");
        let kind = match map.remove("type") {
            Some(Value::String(t)) if t == DEFAULT_TYPE => {
                map.insert("type".into(), Value::String(t.clone()));
                t
            }
            Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TYPE_LEN => t,
            Some(other) => {
                // Not a usable type: keep it in the payload as it was.
                map.insert("type".into(), other);
                DEFAULT_TYPE.to_owned()
            }
            None => DEFAULT_TYPE.to_owned(),
        };
        let payload =
            Payload::from_serialize(&map).map_err(|e| invalid("payload", &e.to_string()))?;
        let env = Envelope::with_payload(kind, payload);
        Ok(match room {
            Some(room) => Incoming::Room(Envelope {
                room: Some(room),
                ..env
            }),
            None => Incoming::All(Envelope {
                to: Some("all".to_owned()),
                ..env
            }),
        })
    }

    /// The type of a Metafor message that names none.
    const DEFAULT_TYPE: &str = "message";

    /// A native frame as a Metafor client receives it; `None` for frames its reference
    /// server never sends (`connected`, `ack`, `pong`, `user_joined`, `user_left`,
    /// `room_update`).
    ///
    /// A room message becomes its payload's fields plus `_room` (and `type`, unless it is
    /// the default `message`), as the reference server forwards it; anything else becomes
    /// `{"type": ..., ...payload}`.
    ///
    /// ```
    /// use switchboard_proto::dialect::metafor;
    /// let out = metafor::outgoing(r#"{"type":"message","room":"r1","from":"a","payload":{"text":"Hello"}}"#).unwrap();
    /// assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"_room":"r1","text":"Hello"}));
    /// ```
    pub fn outgoing(native: &str) -> Option<String> {
        let env = Envelope::decode(native).ok()?;
        match env.kind.as_str() {
            types::CONNECTED
            | types::ACK
            | types::PONG
            | types::USER_JOINED
            | types::USER_LEFT
            | types::ROOM_UPDATE => {
                return None;
            }
            _ => {}
        }
        let mut map: Map<String, Value> = env.payload.deserialize().unwrap_or_default();
        // The default type is left out, as a Metafor sender that named none sent it
        // (one that named it has it in the payload still).
        if env.kind != DEFAULT_TYPE {
            map.insert("type".into(), Value::String(env.kind));
        }
        if let Some(room) = env.room {
            map.insert("_room".into(), Value::String(room));
        }
        Some(Value::Object(map).to_string())
    }

    /// The answer to `_join` / `_leave`.
    pub fn status(joined: bool, room: &str) -> String {
        json!({"status": if joined { "joined" } else { "left" }, "room": room}).to_string()
    }

    /// The answer to JSON that is neither a room command nor a room message.
    pub fn echo(value: &Value) -> String {
        json!({ "echo": value }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_names() {
        for d in Dialect::ALL {
            assert_eq!(d.as_str().parse::<Dialect>(), Ok(d));
        }
        assert!("klingon".parse::<Dialect>().is_err());
    }

    #[test]
    fn datadivr_round_trips_through_the_native_envelope() {
        let cases = [
            r#"{"event_name":"sum_event","payload":{"numbers":[391,29]},"to":"others","from_id":"x","message":null}"#,
            r#"{"event_name":"msg","payload":null,"to":"all","message":"hello"}"#,
            r#"{"event_name":"num","payload":3,"to":"c9"}"#,
            r#"{"event_name":"list","payload":[1,2],"message":"two"}"#,
        ];
        for text in cases {
            let env = datadivr::incoming(text).unwrap();
            let native = Envelope {
                from: Some("c1".into()),
                to: None,
                ..env
            }
            .encode();
            let back: Value =
                serde_json::from_str(&datadivr::outgoing(&native, "c2").unwrap()).unwrap();
            let orig: Value = serde_json::from_str(text).unwrap();
            assert_eq!(back["event_name"], orig["event_name"], "{text}");
            assert_eq!(
                back["payload"],
                orig.get("payload").cloned().unwrap_or(Value::Null),
                "{text}"
            );
            assert_eq!(
                back["message"],
                orig.get("message").cloned().unwrap_or(Value::Null),
                "{text}"
            );
            assert_eq!(back["from_id"], "c1", "the server's stamp, not the claim");
        }
    }

    #[test]
    fn a_datadivr_room_routes_to_the_room_alone() {
        let env =
            datadivr::incoming(r#"{"event_name":"msg","room":"lobby","message":"hi"}"#).unwrap();
        assert_eq!(
            (env.room.as_deref(), env.to.as_deref()),
            (Some("lobby"), None)
        );
        let env = datadivr::incoming(r#"{"event_name":"msg","room":"lobby","to":"all"}"#).unwrap();
        assert_eq!(
            (env.room.as_deref(), env.to.as_deref()),
            (Some("lobby"), Some("all"))
        );
        assert!(datadivr::incoming(r#"{"event_name":"msg","room":5}"#).is_err());
    }

    #[test]
    fn datadivr_bad_frames_are_typed_errors() {
        for bad in [
            "nope",
            "[]",
            r#"{"payload":{}}"#,
            r#"{"event_name":""}"#,
            r#"{"event_name":7}"#,
            r#"{"event_name":"x","to":5}"#,
            r#"{"event_name":"x","message":5}"#,
        ] {
            assert!(datadivr::incoming(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datadivr_errors_carry_their_text_in_message() {
        let native = r#"{"type":"error","payload":{"code":"UNKNOWN_TYPE","message":"no handler"}}"#;
        let v: Value = serde_json::from_str(&datadivr::outgoing(native, "c1").unwrap()).unwrap();
        assert_eq!(v["event_name"], "error");
        assert_eq!(v["message"], "UNKNOWN_TYPE: no handler");
        assert!(datadivr::outgoing(r#"{"type":"connected","payload":{}}"#, "c1").is_none());
    }

    #[test]
    fn metafor_frames() {
        use metafor::Incoming;
        assert_eq!(
            metafor::incoming(r#"{"type":"_leave","room":"r"}"#).unwrap(),
            Incoming::Leave("r".into())
        );
        assert!(metafor::incoming(r#"{"type":"_join"}"#).is_err());
        // Without `_room`: to everyone, and back out as it was sent.
        let Incoming::All(env) = metafor::incoming(r#"{"type":"message","text":"Hello"}"#).unwrap()
        else {
            panic!("a broadcast")
        };
        assert_eq!(
            (env.kind.as_str(), env.to.as_deref()),
            ("message", Some("all"))
        );
        let out: Value = serde_json::from_str(&metafor::outgoing(&env.encode()).unwrap()).unwrap();
        assert_eq!(out, json!({"type":"message","text":"Hello"}));
        // Through the server and back out to a Metafor client: as it was sent.
        let relayed = |text: &str| -> Value {
            let env = match metafor::incoming(text).unwrap() {
                Incoming::All(env) | Incoming::Room(env) => env,
                other => panic!("not a message: {other:?}"),
            };
            serde_json::from_str(&metafor::outgoing(&env.encode()).unwrap()).unwrap()
        };
        for sent in [
            json!({"text":"no type"}),
            json!({"_room":"r","type":"message","text":"x"}),
            json!({"_room":"r","type":"chat","text":"hi"}),
        ] {
            assert_eq!(relayed(&sent.to_string()), sent);
        }
        assert_eq!(
            metafor::incoming("[1,2]").unwrap(),
            Incoming::Echo(json!([1, 2]))
        );
        assert!(metafor::detect(r#"{"type":"_join","room":"r"}"#));
        assert!(metafor::detect(r#"{"_room":"r","text":"x"}"#));
        assert!(!metafor::detect(
            r#"{"type":"chat","payload":{"text":"_room"}}"#
        ));
        assert!(!metafor::detect(
            r#"{"type":"chat","payload":{"_room":"x"}}"#
        ));
        assert!(metafor::outgoing(r#"{"type":"user_joined","room":"r","payload":{}}"#).is_none());
        assert!(metafor::outgoing(r#"{"type":"room_update","room":"r","payload":{}}"#).is_none());
    }
}
