//! Encoding frames: written by hand at their exact size, the same text serde_json writes.

use crate::Payload;
use serde::Serialize;

/// The borrowed fields of one outgoing frame, for encoding without building an
/// [`Envelope`](crate::Envelope).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Parts<'a> {
    /// The message type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The payload, a JSON object.
    pub payload: &'a Payload,
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
    /// The W3C `traceparent` the message carries, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<&'a str>,
    /// The message's position in its stream (a room, the broadcasts, or the
    /// recipient's session), when the server keeps history for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl<'a> Parts<'a> {
    /// A frame with a type and a payload and nothing else.
    pub fn new(kind: &'a str, payload: &'a Payload) -> Parts<'a> {
        Parts {
            kind,
            payload,
            ref_id: None,
            room: None,
            to: None,
            from: None,
            trace: None,
            offset: None,
        }
    }
}

/// `{"type": kind, "payload": payload}`: the frame of a message with nothing but a type
/// and a payload.
///
/// ```
/// let payload = switchboard_proto::Payload::from_json(r#"{"n":1}"#).unwrap();
/// let frame = switchboard_proto::encode_payload_frame("tick", &payload);
/// assert_eq!(frame, r#"{"type":"tick","payload":{"n":1}}"#);
/// ```
pub fn encode_payload_frame(kind: &str, payload: &Payload) -> String {
    encode_parts(&Parts::new(kind, payload))
}

/// Encodes one frame from its parts.
///
/// Written by hand, field by field in the order `type`, `payload`, `ref`, `room`, `to`,
/// `from`, `trace`, `offset`, into a string of exactly the right size (every message goes through here,
/// and an exact size lets the socket layer take the buffer without copying). The text
/// is the same as serde_json writes for [`Parts`].
pub fn encode_parts(parts: &Parts<'_>) -> String {
    let optional = [
        ("ref", parts.ref_id),
        ("room", parts.room),
        ("to", parts.to),
        ("from", parts.from),
        ("trace", parts.trace),
    ];
    let mut len =
        r#"{"type":,"payload":}"#.len() + quoted_len(parts.kind) + parts.payload.get().len();
    for (name, value) in optional {
        if let Some(value) = value {
            len += r#","":"#.len() + name.len() + quoted_len(value);
        }
    }
    let mut digits = itoa::Buffer::new();
    let offset = parts.offset.map(|n| digits.format(n));
    if let Some(offset) = offset {
        len += r#","offset":"#.len() + offset.len();
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
    if let Some(offset) = offset {
        out.push_str(r#","offset":"#);
        out.push_str(offset);
    }
    out.push('}');
    out
}

/// `frame` (an encoded envelope, ending in `}`) with `"offset": offset` added at its
/// end: how a frame encoded once, without a position, is stamped with its stream
/// offset (the same text as [`encode_parts`] with `offset` set).
///
/// ```
/// let frame = r#"{"type":"chat","payload":{},"room":"general"}"#;
/// assert_eq!(
///     switchboard_proto::stamp_offset(frame, 42),
///     r#"{"type":"chat","payload":{},"room":"general","offset":42}"#
/// );
/// ```
pub fn stamp_offset(frame: &str, offset: u64) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    let mut digits = itoa::Buffer::new();
    let offset = digits.format(offset);
    let mut out = String::with_capacity(body.len() + r#","offset":}"#.len() + offset.len());
    out.push_str(body);
    out.push_str(r#","offset":"#);
    out.push_str(offset);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_frames_are_what_serde_json_writes() {
        let payload = Payload::from_json(r#"{"a":[1,"x\"y"],"b":{}}"#).unwrap();
        let cases = [
            ("chat", None, None, None, None, None),
            (
                "chat",
                Some("r1"),
                Some("lobby"),
                Some("42"),
                Some("7"),
                Some(0),
            ),
            (
                "we\"ird\\type\n",
                Some("\u{1}ref"),
                None,
                Some("all"),
                None,
                Some(u64::MAX),
            ),
            (
                "ünïcode ✓",
                None,
                Some("room/🙂"),
                None,
                Some("x\ty"),
                Some(1234567890),
            ),
        ];
        for (kind, ref_id, room, to, from, offset) in cases {
            let parts = Parts {
                kind,
                payload: &payload,
                ref_id,
                room,
                to,
                from,
                // A trace on every other case.
                trace: offset
                    .is_some()
                    .then_some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                offset,
            };
            let ours = encode_parts(&parts);
            assert_eq!(ours, serde_json::to_string(&parts).unwrap());
            assert_eq!(ours.len(), ours.capacity(), "exact size for {kind:?}");
            if let Some(offset) = offset {
                let unstamped = encode_parts(&Parts {
                    offset: None,
                    ..parts
                });
                let stamped = stamp_offset(&unstamped, offset);
                assert_eq!(stamped, ours);
                assert_eq!(stamped.len(), stamped.capacity());
            }
        }
    }
}
