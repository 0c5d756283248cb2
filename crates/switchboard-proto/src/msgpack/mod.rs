//! The envelope in MessagePack: the same fields as the JSON envelope, one map per
//! WebSocket binary frame, on a connection that negotiated the subprotocol
//! [`SUBPROTOCOL`] (`docs/protocol.md`, "MessagePack").
//!
//! MessagePack is an encoding of the envelope, not another protocol: a frame read in it
//! becomes the JSON text the envelope decoder reads (so every check and every error is
//! the JSON envelope's), and a frame written in it is the JSON frame re-encoded value by
//! value, with no tree built in between.
//!
//! ```
//! use switchboard_proto::msgpack;
//!
//! let bytes = msgpack::from_json(r#"{"type":"chat","payload":{"n":1}}"#).unwrap();
//! let env = msgpack::decode(&bytes, 1 << 20).unwrap();
//! assert_eq!(env.kind, "chat");
//! assert_eq!(env.payload.get(), r#"{"n":1}"#);
//! ```

use crate::envelope::{DecodeError, DecodeErrorKind, Envelope};
use crate::limits::MAX_PAYLOAD_DEPTH;

mod read;

/// The WebSocket subprotocol that selects the MessagePack encoding of the native
/// envelope.
pub const SUBPROTOCOL: &str = "switchboard.v1.msgpack";

/// The envelope's type for raw bytes sent to a MessagePack connection, which has no
/// frames other than envelopes: `{"type": "binary", "payload": {"data": <bin>}}`.
pub const BINARY_TYPE: &str = "binary";

/// Nesting MessagePack may have before it is refused unread (the envelope, its payload,
/// and the payload's own levels; the envelope decoder then applies the exact limit).
const MAX_DEPTH: usize = MAX_PAYLOAD_DEPTH + 2;

/// One MessagePack envelope as the JSON text of the same value, at most `max_len` bytes
/// of it.
///
/// Map keys that are integers become strings, binary values become arrays of numbers;
/// anything else JSON cannot hold (extension types, other keys, strings that are not
/// UTF-8), trailing bytes, and nesting past the payload's depth limit are errors. Read in
/// one pass straight into the text, with no values built.
///
/// ```
/// use switchboard_proto::{ErrorCode, msgpack};
///
/// let json = msgpack::to_json(&[0x81, 0xa1, b'a', 0x01], 1024).unwrap();
/// assert_eq!(json, r#"{"a":1}"#);
/// let err = msgpack::to_json(&[0xc1], 1024).unwrap_err();
/// assert_eq!(err.code(), ErrorCode::InvalidJson);
/// ```
pub fn to_json(bytes: &[u8], max_len: usize) -> Result<String, DecodeError> {
    let mut reader = read::ToJson::new(bytes, max_len, MAX_DEPTH);
    reader.frame()?;
    // Strings were checked as UTF-8 and escaped; the rest is ASCII.
    String::from_utf8(reader.out).map_err(|e| not_msgpack(e.to_string()))
}

/// Reads one MessagePack envelope: [`to_json`], then [`Envelope::decode`].
///
/// ```
/// use switchboard_proto::{ErrorCode, msgpack};
///
/// // {"payload": {}}: no type.
/// let err = msgpack::decode(&[0x81, 0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd', 0x80], 1024).unwrap_err();
/// assert_eq!(err.code(), ErrorCode::InvalidEnvelope);
/// ```
pub fn decode(bytes: &[u8], max_len: usize) -> Result<Envelope, DecodeError> {
    Envelope::decode(&to_json(bytes, max_len)?)
}

/// A JSON frame (as the server and clients encode envelopes) in MessagePack: objects
/// as maps, strings as str, integers in their smallest form, other numbers as float 64.
///
/// ```
/// use switchboard_proto::msgpack;
///
/// assert_eq!(msgpack::from_json(r#"{"a":1}"#).unwrap(), [0x81, 0xa1, b'a', 0x01]);
/// assert!(msgpack::from_json("{not json").is_err());
/// ```
pub fn from_json(text: &str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(text.len());
    let mut de = serde_json::Deserializer::from_str(text);
    let mut ser = rmp_serde::Serializer::new(&mut out);
    serde_transcode::transcode(&mut de, &mut ser)
        .map_err(|e| DecodeError::new(DecodeErrorKind::NotJson(e.to_string())))?;
    de.end()
        .map_err(|e| DecodeError::new(DecodeErrorKind::NotJson(e.to_string())))?;
    Ok(out)
}

/// The envelope carrying raw bytes to a MessagePack connection:
/// `{"type": "binary", "payload": {"data": <bin>}}`.
///
/// ```
/// use switchboard_proto::msgpack;
///
/// let frame = msgpack::binary_envelope(&[1, 2, 3]);
/// let json = msgpack::to_json(&frame, 1024).unwrap();
/// assert_eq!(json, r#"{"type":"binary","payload":{"data":[1,2,3]}}"#);
/// ```
pub fn binary_envelope(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    // Writing to a Vec cannot fail, and a length past u32 is not a frame this sends.
    let _ = rmp::encode::write_map_len(&mut out, 2);
    let _ = rmp::encode::write_str(&mut out, "type");
    let _ = rmp::encode::write_str(&mut out, BINARY_TYPE);
    let _ = rmp::encode::write_str(&mut out, "payload");
    let _ = rmp::encode::write_map_len(&mut out, 1);
    let _ = rmp::encode::write_str(&mut out, "data");
    let _ = rmp::encode::write_bin(&mut out, data);
    out
}

/// The raw bytes of a frame that is exactly [`binary_envelope`]'s layout (the keys in
/// that order, `data` a MessagePack bin), or `None` for any other frame.
///
/// ```
/// use switchboard_proto::msgpack;
///
/// let frame = msgpack::binary_envelope(b"raw");
/// assert_eq!(msgpack::binary_data(&frame), Some(&b"raw"[..]));
/// let other = msgpack::from_json(r#"{"type":"binary","payload":{"data":"raw"}}"#).unwrap();
/// assert_eq!(msgpack::binary_data(&other), None);
/// ```
pub fn binary_data(frame: &[u8]) -> Option<&[u8]> {
    const PREFIX: &[u8] = b"\x82\xa4type\xa6binary\xa7payload\x81\xa4data";
    let rest = frame.strip_prefix(PREFIX)?;
    let (&marker, rest) = rest.split_first()?;
    let (len, data) = match marker {
        0xc4 => (usize::from(*rest.first()?), rest.get(1..)?),
        0xc5 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            rest.get(2..)?,
        ),
        0xc6 => (
            usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?,
            rest.get(4..)?,
        ),
        _ => return None,
    };
    (data.len() == len).then_some(data)
}

fn not_msgpack(reason: String) -> DecodeError {
    DecodeError::new(DecodeErrorKind::NotMessagePack(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn round_trip(json: &str) -> String {
        let bytes = from_json(json).expect("valid JSON");
        to_json(&bytes, 1 << 20).expect("valid MessagePack")
    }

    #[test]
    fn envelopes_read_back_as_written() {
        for json in [
            r#"{"type":"chat","payload":{"content":"Hello!"},"ref":"msg_001","v":1,"room":"general"}"#,
            r#"{"type":"x","payload":{"n":-5,"f":1.5,"big":18446744073709551615,"neg":-9223372036854775808}}"#,
            r#"{"type":"x","payload":{"s":"é \" \\ \n \u0001","a":[true,false,null,[],{}]}}"#,
        ] {
            assert_eq!(round_trip(json), json);
        }
    }

    #[test]
    fn floats_read_back_exactly() {
        // Found by the fuzzer: without exact float parsing this came back 1 ULP off.
        let bytes = [
            0x93, 0x07, 0xcb, 0xcb, 0xeb, 0xeb, 0xeb, 0xeb, 0xeb, 0xeb, 0x63, 0xc0,
        ];
        let json = to_json(&bytes, 1024).unwrap();
        assert_eq!(from_json(&json).unwrap(), bytes);
    }

    #[test]
    fn integers_take_their_smallest_form() {
        assert_eq!(from_json("1").unwrap(), [0x01]);
        assert_eq!(from_json("-1").unwrap(), [0xff]);
        assert_eq!(from_json("300").unwrap(), [0xcd, 0x01, 0x2c]);
    }

    #[test]
    fn what_json_cannot_hold_is_a_typed_error() {
        // 0xc1 is never used; 0xd4 is a fixext 1 (an extension type).
        for bytes in [
            &[0xc1][..],
            &[0x82, 0xa1, b'a'][..],
            &[0x81, 0x80, 0x01][..],
        ] {
            let err = to_json(bytes, 1024).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidJson, "{bytes:?}: {err}");
        }
        let err = to_json(&[0x80, 0x80], 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid MessagePack: 1 bytes after the envelope"
        );
    }

    #[test]
    fn number_keys_become_strings() {
        assert_eq!(to_json(&[0x81, 0x07, 0xc3], 64).unwrap(), r#"{"7":true}"#);
    }

    #[test]
    fn nesting_past_the_limit_is_refused_unread() {
        let mut bytes = vec![0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'x'];
        bytes.extend_from_slice(&[0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd']);
        bytes.extend(std::iter::repeat_n([0x81, 0xa1, b'a'], 10_000).flatten());
        bytes.push(0x01);
        let err = decode(&bytes, 1 << 20).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::PayloadTooDeep);
    }

    #[test]
    fn the_json_length_is_bounded() {
        // 1,000 bytes of bin become about 3,900 bytes of JSON.
        let frame = binary_envelope(&[200; 1000]);
        let err = to_json(&frame, 1000).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        assert!(to_json(&frame, 8000).is_ok());
    }

    #[test]
    fn raw_bytes_of_every_length_encoding_read_back() {
        for len in [0, 1, 255, 256, 65_535, 65_536, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = binary_envelope(&data);
            assert_eq!(binary_data(&frame), Some(&data[..]), "{len}");
            // Cut or extended, it is not the layout.
            assert_eq!(
                binary_data(&frame[..frame.len() - 1]).filter(|_| len > 0),
                None
            );
            let mut longer = frame.clone();
            longer.push(0);
            assert_eq!(binary_data(&longer), None);
        }
    }

    #[test]
    fn an_envelope_decodes_with_the_json_checks() {
        let bytes = from_json(r#"{"type":"","payload":{}}"#).unwrap();
        assert_eq!(
            decode(&bytes, 1024).unwrap_err().kind,
            DecodeErrorKind::EmptyType
        );
        let bytes = from_json(r#"{"type":"t","payload":[1]}"#).unwrap();
        assert_eq!(
            decode(&bytes, 1024).unwrap_err().kind,
            DecodeErrorKind::PayloadNotObject
        );
    }
}
