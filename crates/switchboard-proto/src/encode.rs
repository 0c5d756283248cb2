//! Encoding frames: written by hand at their exact size, the same text serde_json writes.

use serde::Serialize;
use serde_json::value::RawValue;

/// The borrowed fields of one outgoing frame, for encoding without building an
/// [`Envelope`](crate::Envelope).
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
}
