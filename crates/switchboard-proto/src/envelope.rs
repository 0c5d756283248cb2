//! The JSON envelope: `{"type", "payload", "ref"?, "v"?, "room"?, "to"?, "from"?}`, and
//! decoding it with typed errors.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::code::ErrorCode;
use crate::trace::is_traceparent;
// Re-exported where they were before the split.
pub use crate::encode::{Parts, encode_parts, encode_payload_frame, stamp_offset};
use crate::limits::{MAX_ID_LEN, MAX_PAYLOAD_DEPTH, MAX_TYPE_LEN, PROTOCOL_VERSION};
pub use crate::payload::{Payload, PayloadError};
use crate::payload::{is_object, strip_position};

/// One message: the unit of the switchboard protocol, in either direction.
///
/// On the wire it is a JSON object; see `docs/protocol.md`.
///
/// ```
/// use switchboard_proto::Envelope;
/// let env = Envelope::decode(r#"{"type":"chat","payload":{"content":"hi"},"ref":"m1"}"#).unwrap();
/// assert_eq!(env.kind, "chat");
/// assert_eq!(env.ref_id.as_deref(), Some("m1"));
/// assert_eq!(env.payload.get(), r#"{"content":"hi"}"#);
/// assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The message type (`type` on the wire): routes the message to its handlers.
    pub kind: String,
    /// The message data, always a JSON object (`{}` when absent).
    pub payload: Payload,
    /// The client's correlation id (`ref` on the wire); a message with one gets an `ack`.
    pub ref_id: Option<String>,
    /// The message's version (`v` on the wire; 1 when absent). switchboard's own
    /// protocol is version 1; a server may accept others for its application's
    /// messages (`ServerConfig::versions` in switchboard-server), which its handlers
    /// read here.
    pub v: u32,
    /// The room the message is for (client to server) or came through (server to client).
    pub room: Option<String>,
    /// The client id a direct message is for, or `all` / `others` for a broadcast.
    pub to: Option<String>,
    /// Set by the server on relayed messages: the sender's client id. Ignored when a
    /// client sends it.
    pub from: Option<String>,
    /// Set by the server: the message's position in its stream (its room, the
    /// broadcasts, or the recipient's session), for resuming without loss or
    /// duplicates. Ignored when a client sends it.
    pub offset: Option<u64>,
    /// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) that ties the message to
    /// a distributed trace: the server's handler span for it carries it, and a relayed
    /// message keeps it. One that is not a valid `traceparent` is ignored.
    pub trace: Option<String>,
}

impl Envelope {
    /// A message of type `kind` with an empty payload.
    pub fn new(kind: impl Into<String>) -> Envelope {
        Envelope {
            kind: kind.into(),
            payload: Payload::empty(),
            ref_id: None,
            v: PROTOCOL_VERSION,
            room: None,
            to: None,
            from: None,
            offset: None,
            trace: None,
        }
    }

    /// A message of type `kind` carrying `payload`.
    pub fn with_payload(kind: impl Into<String>, payload: Payload) -> Envelope {
        Envelope {
            payload,
            ..Envelope::new(kind)
        }
    }

    /// Decodes one text frame. Never panics: any input that is not a valid envelope
    /// comes back as a [`DecodeError`] saying what was wrong (and the `ref`, when it
    /// could be read, so the error can be acknowledged).
    pub fn decode(text: &str) -> Result<Envelope, DecodeError> {
        match crate::plain_envelope::decode_plain(text) {
            Some(env) => Ok(env),
            None => Envelope::decode_general(text),
        }
    }

    /// [`decode`](Self::decode) without its fast path: serde_json reads every field.
    /// What the fast path accepts, this decodes the same (the `envelope` fuzz target
    /// checks it); it is public for that target only.
    #[doc(hidden)]
    pub fn decode_general(text: &str) -> Result<Envelope, DecodeError> {
        if !is_object(text) {
            // Tell "not JSON" from "JSON but not an object".
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => DecodeError::new(DecodeErrorKind::NotObject),
                Err(e) => DecodeError::new(DecodeErrorKind::NotJson(e.to_string())),
            });
        }
        let wire: WireIn<'_> = serde_json::from_str(text).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                DecodeError::new(DecodeErrorKind::NotJson(e.to_string()))
            } else {
                DecodeError::new(DecodeErrorKind::InvalidField {
                    field: "envelope",
                    reason: strip_position(&e.to_string()),
                })
            }
        })?;

        // Read `ref` first so later errors can be acknowledged against it.
        let ref_id = optional_string(wire.ref_id, "ref")?;
        let with_ref = |kind| DecodeError {
            kind,
            ref_id: ref_id.clone(),
        };

        let kind = match wire.kind {
            None => return Err(with_ref(DecodeErrorKind::MissingType)),
            Some(raw) if raw.get() == "null" => {
                return Err(with_ref(DecodeErrorKind::MissingType));
            }
            Some(raw) => {
                json_string(raw).ok_or_else(|| with_ref(DecodeErrorKind::TypeNotString))?
            }
        };
        if kind.is_empty() {
            return Err(with_ref(DecodeErrorKind::EmptyType));
        }
        if kind.len() > MAX_TYPE_LEN {
            return Err(with_ref(DecodeErrorKind::TypeTooLong { len: kind.len() }));
        }

        let v = match wire.v {
            None => PROTOCOL_VERSION,
            Some(raw) if raw.get() == "null" => PROTOCOL_VERSION,
            Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
                Ok(v) if v == u64::from(PROTOCOL_VERSION) => PROTOCOL_VERSION,
                // Which versions are spoken is the server's to say (an application may
                // handle version 2 itself); none is beyond u32.
                Ok(v) if v > 0 => u32::try_from(v)
                    .map_err(|_| with_ref(DecodeErrorKind::UnsupportedVersion(v)))?,
                // 0 is not a version: the same error as any other non-positive value.
                _ => {
                    return Err(with_ref(DecodeErrorKind::InvalidField {
                        field: "v",
                        reason: "must be a positive integer".to_owned(),
                    }));
                }
            },
        };

        let payload = match wire.payload {
            None => Payload::empty(),
            Some(raw) if raw.get() == "null" => Payload::empty(),
            Some(raw) if is_object(raw.get()) => {
                if nests_deeper_than(raw.get(), MAX_PAYLOAD_DEPTH) {
                    return Err(with_ref(DecodeErrorKind::PayloadTooDeep));
                }
                Payload::checked(raw.get().into())
            }
            Some(_) => return Err(with_ref(DecodeErrorKind::PayloadNotObject)),
        };

        let room = optional_string(wire.room, "room").map_err(|e| with_ref(e.kind))?;
        let to = optional_string(wire.to, "to").map_err(|e| with_ref(e.kind))?;
        let from = optional_string(wire.from, "from").map_err(|e| with_ref(e.kind))?;
        let offset = match wire.offset {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
                with_ref(DecodeErrorKind::InvalidField {
                    field: "offset",
                    reason: "must be a non-negative integer".to_owned(),
                })
            })?),
        };
        // A `traceparent` that is not one is ignored, as W3C Trace Context says.
        let trace = optional_string(wire.trace, "trace")
            .map_err(|e| with_ref(e.kind))?
            .filter(|t| is_traceparent(t));

        Ok(Envelope {
            kind,
            payload,
            ref_id,
            v,
            room,
            to,
            from,
            offset,
            trace,
        })
    }

    /// Encodes the message as the JSON text of one frame. `v` is written only when it
    /// is not the default.
    ///
    /// ```
    /// use switchboard_proto::Envelope;
    /// let mut env = Envelope::new("chat");
    /// assert_eq!(env.encode(), r#"{"type":"chat","payload":{}}"#);
    /// env.v = 2;
    /// assert_eq!(env.encode(), r#"{"type":"chat","payload":{},"v":2}"#);
    /// ```
    pub fn encode(&self) -> String {
        let frame = encode_parts(&Parts {
            kind: &self.kind,
            payload: &self.payload,
            ref_id: self.ref_id.as_deref(),
            room: self.room.as_deref(),
            to: self.to.as_deref(),
            from: self.from.as_deref(),
            trace: self.trace.as_deref(),
            offset: self.offset,
        });
        if self.v == PROTOCOL_VERSION {
            return frame;
        }
        let body = frame.strip_suffix('}').unwrap_or(&frame);
        format!("{body},\"v\":{}}}", self.v)
    }

    /// Deserializes the payload into `T`. See [`Payload::deserialize`].
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        self.payload.deserialize()
    }
}

/// The `ref` of a frame, read without decoding the rest: for answering a message the
/// server will not process (rate limited) so the request fails fast on the client.
///
/// ```
/// use switchboard_proto::peek_ref;
/// assert_eq!(peek_ref(r#"{"type":"x","ref":"r1"}"#).as_deref(), Some("r1"));
/// assert_eq!(peek_ref(r#"{"type":"x"}"#), None);
/// assert_eq!(peek_ref("not json"), None);
/// ```
pub fn peek_ref(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct RefOnly {
        #[serde(rename = "ref")]
        ref_id: Option<String>,
    }
    if !is_object(text) {
        return None;
    }
    serde_json::from_str::<RefOnly>(text)
        .ok()
        .and_then(|r| r.ref_id)
        .filter(|r| r.len() <= MAX_ID_LEN)
}

#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default)]
    ref_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    v: Option<&'a RawValue>,
    #[serde(borrow, default)]
    room: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    from: Option<&'a RawValue>,
    #[serde(borrow, default)]
    offset: Option<&'a RawValue>,
    #[serde(borrow, default)]
    trace: Option<&'a RawValue>,
}

#[doc(hidden)]
pub use crate::depth::nests_deeper_than;

/// A JSON string's value. Strings without escapes (nearly all of them) are copied
/// out of the text; the others are parsed.
fn json_string(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(inner.to_owned()),
        _ => serde_json::from_str(text).ok(),
    }
}

fn optional_string(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    let s = json_string(raw).ok_or_else(|| {
        DecodeError::new(DecodeErrorKind::InvalidField {
            field,
            reason: "must be a string".to_owned(),
        })
    })?;
    if s.is_empty() {
        return Err(DecodeError::new(DecodeErrorKind::InvalidField {
            field,
            reason: "must not be empty".to_owned(),
        }));
    }
    if s.len() > MAX_ID_LEN {
        return Err(DecodeError::new(DecodeErrorKind::InvalidField {
            field,
            reason: format!("is {} bytes, more than the limit of {MAX_ID_LEN}", s.len()),
        }));
    }
    Ok(Some(s))
}

/// A text frame that is not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// The frame's `ref`, when it could be read, so the error can be acknowledged.
    pub ref_id: Option<String>,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind) -> DecodeError {
        DecodeError { kind, ref_id: None }
    }

    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            DecodeErrorKind::NotJson(_) | DecodeErrorKind::NotMessagePack(_) => {
                ErrorCode::InvalidJson
            }
            DecodeErrorKind::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeErrorKind::PayloadTooDeep => ErrorCode::InvalidPayload,
            _ => ErrorCode::InvalidEnvelope,
        }
    }
}

/// The ways a text frame can fail to be an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    NotJson(String),
    /// Not MessagePack this side can read as an envelope (on a MessagePack connection).
    #[error("invalid MessagePack: {0}")]
    NotMessagePack(String),
    /// JSON, but not an object.
    #[error("a message must be a JSON object")]
    NotObject,
    /// No `type` field (or `null`).
    #[error("missing `type`")]
    MissingType,
    /// `type` is `""`.
    #[error("`type` must not be empty")]
    EmptyType,
    /// `type` is a number, object, ...
    #[error("`type` must be a string")]
    TypeNotString,
    /// `type` is longer than [`MAX_TYPE_LEN`].
    #[error("`type` is {len} bytes, more than the limit of {MAX_TYPE_LEN}")]
    TypeTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// `payload` is present but not an object.
    #[error("`payload` must be a JSON object")]
    PayloadNotObject,
    /// `payload` nests objects and arrays deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels")]
    PayloadTooDeep,
    /// `v` names a version this side does not speak.
    #[error("unsupported protocol version {0} (this server speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u64),
    /// Another field has the wrong JSON type or size.
    #[error("`{field}` {reason}")]
    InvalidField {
        /// The field's wire name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind_of(text: &str) -> DecodeErrorKind {
        Envelope::decode(text).expect_err(text).kind
    }

    #[test]
    fn decodes_the_seed_examples() {
        let env = Envelope::decode(
            r#"{"type": "chat", "ref": "msg_001", "payload": {"content": "Hello"}}"#,
        )
        .unwrap();
        assert_eq!(env.kind, "chat");
        assert_eq!(env.ref_id.as_deref(), Some("msg_001"));
        assert_eq!(env.payload.to_value(), json!({"content": "Hello"}));
        assert_eq!(env.v, 1);

        let ping = Envelope::decode(r#"{"type":"ping"}"#).unwrap();
        assert!(ping.payload.is_empty());
        assert_eq!(ping.payload.get(), "{}");
    }

    #[test]
    fn every_invalid_shape_is_a_typed_error() {
        assert!(matches!(kind_of("not json"), DecodeErrorKind::NotJson(_)));
        assert!(matches!(kind_of("{\"type\":"), DecodeErrorKind::NotJson(_)));
        assert!(matches!(kind_of(""), DecodeErrorKind::NotJson(_)));
        assert_eq!(kind_of("[1,2]"), DecodeErrorKind::NotObject);
        assert_eq!(kind_of("\"chat\""), DecodeErrorKind::NotObject);
        assert_eq!(kind_of("42"), DecodeErrorKind::NotObject);
        assert_eq!(
            kind_of(r#"{"content":"Hello"}"#),
            DecodeErrorKind::MissingType
        );
        assert_eq!(kind_of(r#"{"type":null}"#), DecodeErrorKind::MissingType);
        assert_eq!(kind_of(r#"{"type":""}"#), DecodeErrorKind::EmptyType);
        assert_eq!(kind_of(r#"{"type":7}"#), DecodeErrorKind::TypeNotString);
        assert_eq!(
            kind_of(r#"{"type":{"a":1}}"#),
            DecodeErrorKind::TypeNotString
        );
        assert_eq!(
            kind_of(r#"{"type":"chat","payload":"Hello"}"#),
            DecodeErrorKind::PayloadNotObject
        );
        assert_eq!(
            kind_of(r#"{"type":"chat","payload":[1]}"#),
            DecodeErrorKind::PayloadNotObject
        );
        assert_eq!(Envelope::decode(r#"{"type":"chat","v":2}"#).unwrap().v, 2);
        assert_eq!(
            kind_of(r#"{"type":"chat","v":4294967296}"#),
            DecodeErrorKind::UnsupportedVersion(4_294_967_296)
        );
        assert!(matches!(
            kind_of(r#"{"type":"chat","v":0}"#),
            DecodeErrorKind::InvalidField { field: "v", .. }
        ));
        assert!(matches!(
            kind_of(r#"{"type":"chat","v":"1"}"#),
            DecodeErrorKind::InvalidField { field: "v", .. }
        ));
        assert!(matches!(
            kind_of(r#"{"type":"chat","ref":5}"#),
            DecodeErrorKind::InvalidField { field: "ref", .. }
        ));
        assert!(matches!(
            kind_of(r#"{"type":"chat","room":""}"#),
            DecodeErrorKind::InvalidField { field: "room", .. }
        ));
        let long = "x".repeat(MAX_TYPE_LEN + 1);
        assert_eq!(
            kind_of(&format!(r#"{{"type":"{long}"}}"#)),
            DecodeErrorKind::TypeTooLong {
                len: MAX_TYPE_LEN + 1
            }
        );
        let ok = "x".repeat(MAX_TYPE_LEN);
        assert!(Envelope::decode(&format!(r#"{{"type":"{ok}"}}"#)).is_ok());
        assert!(matches!(
            kind_of(r#"{"type":"a","type":"b"}"#),
            DecodeErrorKind::InvalidField { .. }
        ));
    }

    #[test]
    fn errors_keep_the_ref_and_map_to_codes() {
        let e = Envelope::decode(r#"{"ref":"r1","type":"chat","payload":3}"#).unwrap_err();
        assert_eq!(e.ref_id.as_deref(), Some("r1"));
        assert_eq!(e.code(), ErrorCode::InvalidEnvelope);
        let e = Envelope::decode(r#"{"ref":"r2","type":"chat","v":99999999999}"#).unwrap_err();
        assert_eq!(e.ref_id.as_deref(), Some("r2"));
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
        assert_eq!(
            Envelope::decode("{").unwrap_err().code(),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn nulls_mean_absent_and_unknown_fields_are_ignored() {
        let env = Envelope::decode(
            r#"{"type":"t","payload":null,"ref":null,"v":null,"room":null,"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(env, Envelope::new("t"));
    }

    #[test]
    fn payloads_nested_past_the_limit_are_refused_with_their_ref() {
        let nested = |depth: usize| {
            let inner = format!("{}1{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
            format!(r#"{{"type":"x","ref":"d","payload":{{"a":{inner}}}}}"#)
        };
        // The payload object is level 1: 64 levels in all pass, 65 do not.
        assert!(Envelope::decode(&nested(MAX_PAYLOAD_DEPTH)).is_ok());
        let err = Envelope::decode(&nested(MAX_PAYLOAD_DEPTH + 1)).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::PayloadTooDeep);
        assert_eq!(err.code(), ErrorCode::InvalidPayload);
        assert_eq!(err.ref_id.as_deref(), Some("d"));
        // 20,000 deep, 40 KB: refused, not relayed to break a client.
        assert!(Envelope::decode(&nested(20_000)).is_err());
        // Brackets in strings are text, not nesting; many side by side are not depth.
        let texty = format!(
            r#"{{"type":"x","payload":{{"s":"{}\"{}"}}}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(Envelope::decode(&texty).is_ok());
        let wide = format!(
            r#"{{"type":"x","payload":{{"a":[{}]}}}}"#,
            vec!["[]"; 1000].join(",")
        );
        assert!(Envelope::decode(&wide).is_ok());
    }

    #[test]
    fn escapes_in_type_are_decoded() {
        let env = Envelope::decode(r#"{"type":"caf\u00e9"}"#).unwrap();
        assert_eq!(env.kind, "café");
    }

    #[test]
    fn string_fields_with_and_without_escapes() {
        let env = Envelope::decode(r#"{"type":"a\"b","ref":"\u0041x","room":"plain"}"#).unwrap();
        assert_eq!(env.kind, "a\"b");
        assert_eq!(env.ref_id.as_deref(), Some("Ax"));
        assert_eq!(env.room.as_deref(), Some("plain"));
        let e = Envelope::decode(r#"{"type":"x","ref":5}"#).unwrap_err();
        assert!(e.to_string().contains("ref"), "{e}");
    }
    #[test]
    fn encode_omits_absent_fields() {
        let mut env = Envelope::new("pong");
        assert_eq!(env.encode(), r#"{"type":"pong","payload":{}}"#);
        env.room = Some("general".into());
        env.from = Some("abc".into());
        env.ref_id = Some("1".into());
        assert_eq!(
            env.encode(),
            r#"{"type":"pong","payload":{},"ref":"1","room":"general","from":"abc"}"#
        );
    }
}
