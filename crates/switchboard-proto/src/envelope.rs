//! The JSON envelope: `{"type", "payload", "ref"?, "v"?, "room"?, "to"?, "from"?}`.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::code::ErrorCode;
use crate::limits::{MAX_ID_LEN, MAX_TYPE_LEN, PROTOCOL_VERSION};

/// A message payload: always a JSON object, kept as the JSON text it arrived as.
///
/// Keeping the text (rather than a parsed tree) means a message that is only relayed
/// is never parsed twice, and a typed handler parses it straight into its own type.
///
/// ```
/// use switchboard_proto::Payload;
/// let p = Payload::from_serialize(&serde_json::json!({"content": "hi"})).unwrap();
/// assert_eq!(p.get(), r#"{"content":"hi"}"#);
/// assert!(Payload::from_serialize(&42).is_err()); // a payload is always an object
/// ```
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

/// Payloads compare by their JSON text: `{"a":1}` and `{ "a": 1 }` differ.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Payload {}

impl Payload {
    /// The empty payload, `{}`.
    pub fn empty() -> Payload {
        // `{}` is valid JSON, so this cannot fail; `from_string` only validates.
        Payload(RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!()))
    }

    /// Serializes `value` into a payload. Fails unless it serializes to a JSON object.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Payload, PayloadError> {
        let raw = serde_json::value::to_raw_value(value).map_err(|e| PayloadError {
            path: String::new(),
            message: e.to_string(),
        })?;
        Payload::from_raw(raw)
    }

    /// Wraps JSON text already known to be valid, checking that it is an object.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Payload, PayloadError> {
        if is_object(raw.get()) {
            Ok(Payload(raw))
        } else {
            Err(PayloadError {
                path: String::new(),
                message: "payload must be a JSON object".to_owned(),
            })
        }
    }

    /// Parses JSON text into a payload, checking that it is an object.
    pub fn from_json(text: &str) -> Result<Payload, PayloadError> {
        let raw = RawValue::from_string(text.to_owned()).map_err(|e| PayloadError {
            path: String::new(),
            message: e.to_string(),
        })?;
        Payload::from_raw(raw)
    }

    /// The payload's JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The payload as a raw JSON value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// Deserializes the payload into `T`; the error names the path of the field that
    /// did not fit (for example `user.age`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        // Most payloads fit: read those at full speed, and track the path only to
        // explain one that does not.
        if let Ok(value) = serde_json::from_str(self.0.get()) {
            return Ok(value);
        }
        let mut de = serde_json::Deserializer::from_str(self.0.get());
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            PayloadError {
                path: if path == "." { String::new() } else { path },
                message: strip_position(&inner.to_string()),
            }
        })
    }

    /// The payload as a `serde_json::Value` tree.
    pub fn to_value(&self) -> serde_json::Value {
        // The text is valid JSON by construction.
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// True for `{}` (with or without whitespace inside).
    pub fn is_empty(&self) -> bool {
        let text = self.0.get().trim();
        // An object's text starts with `{` and ends with `}` (both ASCII).
        text.len() >= 2 && text[1..text.len() - 1].trim().is_empty()
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Payload::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<serde_json::Value> for Payload {
    type Error = PayloadError;
    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        Payload::from_serialize(&v)
    }
}

/// A payload that did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("at `{path}`: ") })]
pub struct PayloadError {
    /// Where in the payload it went wrong, e.g. `items[2].name`; empty for the payload itself.
    pub path: String,
    /// What was wrong there.
    pub message: String,
}

/// serde_json appends " at line 1 column 17"; the field path says more to a user.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

fn is_object(json: &str) -> bool {
    json.trim_start().starts_with('{')
}

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
    /// The protocol version; 1 is the only one so far.
    pub v: u32,
    /// The room the message is for (client to server) or came through (server to client).
    pub room: Option<String>,
    /// The client id a direct message is for, or `all` / `others` for a broadcast.
    pub to: Option<String>,
    /// Set by the server on relayed messages: the sender's client id. Ignored when a
    /// client sends it.
    pub from: Option<String>,
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
                Ok(v) => return Err(with_ref(DecodeErrorKind::UnsupportedVersion(v))),
                Err(_) => {
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
            Some(raw) if is_object(raw.get()) => Payload(raw.to_owned()),
            Some(_) => return Err(with_ref(DecodeErrorKind::PayloadNotObject)),
        };

        let room = optional_string(wire.room, "room").map_err(|e| with_ref(e.kind))?;
        let to = optional_string(wire.to, "to").map_err(|e| with_ref(e.kind))?;
        let from = optional_string(wire.from, "from").map_err(|e| with_ref(e.kind))?;

        Ok(Envelope {
            kind,
            payload,
            ref_id,
            v,
            room,
            to,
            from,
        })
    }

    /// Encodes the message as the JSON text of one frame. `v` is written only when it
    /// is not the default.
    pub fn encode(&self) -> String {
        encode_parts(&Parts {
            kind: &self.kind,
            payload: self.payload.as_raw(),
            ref_id: self.ref_id.as_deref(),
            room: self.room.as_deref(),
            to: self.to.as_deref(),
            from: self.from.as_deref(),
        })
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

/// The borrowed fields of one outgoing frame, for encoding without building an
/// [`Envelope`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Parts<'a> {
    /// The message type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The payload, a JSON object.
    pub payload: &'a RawValue,
    /// The correlation id, if any.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<&'a str>,
    /// The room it came through, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// The recipient, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    /// The sender's client id, if relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// A frame with a type and a payload and nothing else.
    pub fn new(kind: &'a str, payload: &'a RawValue) -> Parts<'a> {
        Parts {
            kind,
            payload,
            ref_id: None,
            room: None,
            to: None,
            from: None,
        }
    }
}

/// `{"type": kind, "payload": payload}`: the frame of a message with nothing but a type
/// and a payload.
///
/// ```
/// let payload = serde_json::value::to_raw_value(&serde_json::json!({"n": 1})).unwrap();
/// let frame = switchboard_proto::encode_payload_frame("tick", &payload);
/// assert_eq!(frame, r#"{"type":"tick","payload":{"n":1}}"#);
/// ```
pub fn encode_payload_frame(kind: &str, payload: &RawValue) -> String {
    encode_parts(&Parts::new(kind, payload))
}

/// Encodes one frame from its parts.
///
/// Written by hand, field by field in the order `type`, `payload`, `ref`, `room`, `to`,
/// `from`, into a string of exactly the right size (every message goes through here,
/// and an exact size lets the socket layer take the buffer without copying). The text
/// is the same as serde_json writes for [`Parts`].
pub fn encode_parts(parts: &Parts<'_>) -> String {
    let optional = [
        ("ref", parts.ref_id),
        ("room", parts.room),
        ("to", parts.to),
        ("from", parts.from),
    ];
    let mut len =
        r#"{"type":,"payload":}"#.len() + quoted_len(parts.kind) + parts.payload.get().len();
    for (name, value) in optional {
        if let Some(value) = value {
            len += r#","":"#.len() + name.len() + quoted_len(value);
        }
    }
    let mut out = String::with_capacity(len);
    out.push_str(r#"{"type":"#);
    push_quoted(&mut out, parts.kind);
    out.push_str(r#","payload":"#);
    out.push_str(parts.payload.get());
    for (name, value) in optional {
        if let Some(value) = value {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            push_quoted(&mut out, value);
        }
    }
    out.push('}');
    out
}

/// True if JSON needs `s` escaped: quotes, backslashes and control characters (what
/// serde_json escapes; nothing else).
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// The length of `s` as a JSON string, quotes included.
pub(crate) fn quoted_len(s: &str) -> usize {
    if needs_escape(s) {
        serde_json::to_string(s).map_or(s.len() + 2, |q| q.len())
    } else {
        s.len() + 2
    }
}

/// Appends `s` as a JSON string.
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    if needs_escape(s) {
        // Serializing a str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
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
}

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
            DecodeErrorKind::NotJson(_) => ErrorCode::InvalidJson,
            DecodeErrorKind::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
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

    #[test]
    fn hand_written_frames_are_what_serde_json_writes() {
        let payload = RawValue::from_string(r#"{"a":[1,"x\"y"],"b":{}}"#.to_owned()).unwrap();
        let cases = [
            ("chat", None, None, None, None),
            ("chat", Some("r1"), Some("lobby"), Some("42"), Some("7")),
            ("we\"ird\\type\n", Some("\u{1}ref"), None, Some("all"), None),
            ("ünïcode ✓", None, Some("room/🙂"), None, Some("x\ty")),
        ];
        for (kind, ref_id, room, to, from) in cases {
            let parts = Parts {
                kind,
                payload: &payload,
                ref_id,
                room,
                to,
                from,
            };
            let ours = encode_parts(&parts);
            assert_eq!(ours, serde_json::to_string(&parts).unwrap());
            assert_eq!(ours.len(), ours.capacity(), "exact size for {kind:?}");
        }
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
        assert_eq!(
            kind_of(r#"{"type":"chat","v":2}"#),
            DecodeErrorKind::UnsupportedVersion(2)
        );
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
        let e = Envelope::decode(r#"{"ref":"r2","type":"chat","v":9}"#).unwrap_err();
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
    fn escapes_in_type_are_decoded() {
        let env = Envelope::decode(r#"{"type":"caf\u00e9"}"#).unwrap();
        assert_eq!(env.kind, "café");
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

    #[test]
    fn payload_errors_name_the_field() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct User {
            name: String,
            age: u8,
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            user: User,
        }
        let p = Payload::from_json(r#"{"user":{"name":"a","age":"old"}}"#).unwrap();
        let err = p.deserialize::<Outer>().unwrap_err();
        assert_eq!(err.path, "user.age");
        assert!(err.message.contains("expected u8"), "{err}");
        assert_eq!(err.to_string(), format!("at `user.age`: {}", err.message));

        let p = Payload::from_json(r#"{"user":{"name":"a"}}"#).unwrap();
        let err = p.deserialize::<Outer>().unwrap_err();
        assert_eq!(err.path, "user");
        assert!(err.message.contains("missing field `age`"), "{err}");
    }

    #[test]
    fn payload_must_be_an_object() {
        assert!(Payload::from_json("[1]").is_err());
        assert!(Payload::from_json("nope").is_err());
        assert!(Payload::from_json(" {\"a\":1}").is_ok());
        assert!(Payload::from_serialize(&json!(null)).is_err());
        assert!(Payload::from_json("{ }").unwrap().is_empty());
        assert!(Payload::from_json(" {} ").unwrap().is_empty());
        assert!(!Payload::from_json("{\"a\":1}").unwrap().is_empty());
    }
}
