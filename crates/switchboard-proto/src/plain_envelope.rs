//! The envelope's fast path: the plain envelope nearly every message is (each field
//! once, the string fields without escapes, `v` and `offset` integers),
//! read with [`scan::members`](crate::scan::members) instead of serde_json's struct
//! machinery. Anything else, and anything wrong, is left to
//! [`Envelope::decode`]'s general path, which explains errors; so this path only
//! accepts, and what it accepts decodes exactly as the general path decodes it.

use crate::envelope::{Envelope, Payload};
use crate::limits::{MAX_ID_LEN, MAX_TYPE_LEN, PROTOCOL_VERSION};
use crate::scan::members;
use crate::trace::is_traceparent;

/// The envelope `text` is, when it is a plain one and valid; `None` otherwise.
pub(crate) fn decode_plain(text: &str) -> Option<Envelope> {
    let mut kind = None;
    let mut payload = None;
    let mut ref_id = None;
    let mut room = None;
    let mut to = None;
    let mut from = None;
    let mut trace = None;
    let mut v = None;
    let mut offset = None;
    members(text, |key, value| {
        let slot = match key {
            "type" => &mut kind,
            "ref" => &mut ref_id,
            "room" => &mut room,
            "to" => &mut to,
            "from" => &mut from,
            "trace" => &mut trace,
            "payload" => {
                // An object, once (`members` refused it if it nests too deep).
                let raw = value.raw().filter(|r| r.starts_with('{'))?;
                if payload.is_some() {
                    return None;
                }
                payload = Some(Payload::checked(raw.into()));
                return Some(());
            }
            "v" if v.is_none() => {
                // A positive integer that fits in 32 bits (1 when null).
                v = Some(match value.raw()? {
                    "null" => PROTOCOL_VERSION,
                    n => serde_json::from_str::<u64>(n)
                        .ok()
                        .filter(|&n| n > 0)
                        .and_then(|n| u32::try_from(n).ok())?,
                });
                return Some(());
            }
            "offset" if offset.is_none() => {
                // A non-negative integer, or null.
                offset = Some(match value.raw()? {
                    "null" => None,
                    n => Some(serde_json::from_str::<u64>(n).ok()?),
                });
                return Some(());
            }
            // A field given twice, keys of no field: the general path.
            _ => return None,
        };
        if slot.is_some() {
            return None; // a field given twice is an error
        }
        *slot = Some(value.plain()?);
        Some(())
    })?;
    let kind = kind.filter(|k| !k.is_empty() && k.len() <= MAX_TYPE_LEN)?;
    let id = |field: Option<&str>| match field {
        None => Some(None),
        Some(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(Some(s.to_owned())),
        Some(_) => None,
    };
    Some(Envelope {
        kind: kind.to_owned(),
        payload: payload.unwrap_or_else(Payload::empty),
        ref_id: id(ref_id)?,
        v: v.unwrap_or(PROTOCOL_VERSION),
        room: id(room)?,
        to: id(to)?,
        from: id(from)?,
        offset: offset.flatten(),
        // A `traceparent` that is not one is ignored, as W3C Trace Context says.
        trace: id(trace)?.filter(|t| is_traceparent(t)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_envelopes_decode_as_the_general_path_decodes_them() {
        for text in [
            r#"{"type":"ping"}"#,
            r#" {"type" : "chat", "payload": {"content": "hi \"there\"", "n": [1, 2.5]}, "ref": "m1"} "#,
            r#"{"payload":{},"type":"rpc","ref":"7","room":"general","to":"others","from":"x"}"#,
            r#"{"type":"t","trace":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#,
            r#"{"type":"t","trace":"not a traceparent"}"#,
            r#"{"type":"t","v":2,"offset":18446744073709551615}"#,
            r#"{"type":"t","v":null,"offset":null}"#,
            r#"{"type":"t","v":1,"offset":0}"#,
        ] {
            let plain = decode_plain(text).unwrap_or_else(|| panic!("not plain: {text}"));
            assert_eq!(Ok(plain), Envelope::decode_general(text), "{text}");
        }
    }

    #[test]
    fn anything_else_goes_to_the_general_path() {
        let long = "x".repeat(MAX_TYPE_LEN + 1);
        let deep = format!(
            r#"{{"type":"t","payload":{}{}}}"#,
            "{\"a\":".repeat(70),
            "}".repeat(70)
        );
        for text in [
            r#"{"type":"a\nb"}"#,
            r#"{"type":"t","v":0}"#,
            r#"{"type":"t","v":4294967296}"#,
            r#"{"type":"t","v":1.0}"#,
            r#"{"type":"t","v":"1"}"#,
            r#"{"type":"t","v":1,"v":1}"#,
            r#"{"type":"t","offset":-1}"#,
            r#"{"type":"t","offset":18446744073709551616}"#,
            r#"{"type":"t","offset":1,"offset":1}"#,
            r#"{"type":"t","extra":1}"#,
            r#"{"type":"t","type":"u"}"#,
            r#"{"type":"t","payload":{},"payload":{}}"#,
            r#"{"type":"t","payload":null}"#,
            r#"{"type":"t","payload":[]}"#,
            r#"{"type":"t","payload":"s"}"#,
            r#"{"type":"","payload":{}}"#,
            r#"{"type":"t","ref":""}"#,
            r#"{"type":"t","room":5}"#,
            r#"{"payload":{}}"#,
            &format!(r#"{{"type":"{long}"}}"#),
            &deep,
        ] {
            assert!(decode_plain(text).is_none(), "{text}");
        }
    }
}
