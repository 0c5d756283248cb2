//! netconduit's frames: a 32-byte big-endian header (`>4sHHHHIQQ`: magic `CNDT`,
//! version `0x0100`, type, flags, reserved, content length, correlation id, timestamp
//! in ms), then a MessagePack payload, zlib-compressed when flag `0x0001` is set.
//!
//! Every check a hostile peer could defeat is made before memory is spent: the length
//! is read from the header and refused past the limit before the body is read, and a
//! compressed body is inflated into at most the limit (a decompression bomb is an
//! error, not an allocation).

use std::io::Read;

/// The header's length.
pub const HEADER_LEN: usize = 32;

/// The header's first four bytes.
pub const MAGIC: &[u8; 4] = b"CNDT";

/// The protocol version netconduit 5 speaks (1.0).
pub const VERSION: u16 = 0x0100;

/// The flag of a zlib-compressed payload.
pub const COMPRESSED: u16 = 0x0001;

/// A frame's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// `{"type", "data"}`.
    Message,
    /// `{"method", "params"}`, the correlation id naming the call.
    RpcRequest,
    /// `{"success", "result"}` (errors travel inside `result`).
    RpcResponse,
    /// `{"success": false, "error", "code"}`.
    RpcError,
    /// Heartbeat.
    Ping,
    /// Heartbeat answer.
    Pong,
    /// `{"password_hash", "client_info"}`.
    AuthRequest,
    /// `{"session_token", "server_info"}`.
    AuthSuccess,
    /// `{"reason"}`.
    AuthFailure,
    /// Backpressure: stop sending.
    Pause,
    /// Backpressure: send again.
    Resume,
    /// Close request.
    Close,
    /// Any other type (acks, fragments, discovery): read, then ignored.
    Other(u16),
}

impl Kind {
    /// The type's number on the wire.
    pub fn code(self) -> u16 {
        match self {
            Kind::Message => 0x01,
            Kind::RpcRequest => 0x02,
            Kind::RpcResponse => 0x03,
            Kind::RpcError => 0x04,
            Kind::Ping => 0x05,
            Kind::Pong => 0x06,
            Kind::AuthRequest => 0x07,
            Kind::AuthSuccess => 0x08,
            Kind::AuthFailure => 0x09,
            Kind::Pause => 0x0A,
            Kind::Resume => 0x0B,
            Kind::Close => 0x0E,
            Kind::Other(code) => code,
        }
    }

    /// The type a number names.
    pub fn from_code(code: u16) -> Kind {
        match code {
            0x01 => Kind::Message,
            0x02 => Kind::RpcRequest,
            0x03 => Kind::RpcResponse,
            0x04 => Kind::RpcError,
            0x05 => Kind::Ping,
            0x06 => Kind::Pong,
            0x07 => Kind::AuthRequest,
            0x08 => Kind::AuthSuccess,
            0x09 => Kind::AuthFailure,
            0x0A => Kind::Pause,
            0x0B => Kind::Resume,
            0x0E => Kind::Close,
            other => Kind::Other(other),
        }
    }
}

/// A frame's header.
///
/// ```
/// use switchboard_proto::netconduit::{Header, Kind, encode_frame};
/// let frame = encode_frame(Kind::Ping, 7, None);
/// let header = Header::parse(frame[..32].try_into().unwrap(), 1024).unwrap();
/// assert_eq!((header.kind, header.correlation, header.length), (Kind::Ping, 7, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's type.
    pub kind: Kind,
    /// Its flags ([`COMPRESSED`]).
    pub flags: u16,
    /// The payload's length in bytes.
    pub length: u32,
    /// The correlation id (an RPC's, or 0).
    pub correlation: u64,
}

/// What is wrong with a frame. Each is fatal to the connection: the stream can no
/// longer be read in step (a bad header), or the peer is hostile (a bomb).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not `CNDT`.
    #[error("not a netconduit frame (bad magic)")]
    BadMagic,
    /// Another protocol version.
    #[error("unsupported netconduit version {0:#06x}")]
    BadVersion(u16),
    /// The header announces more than the limit.
    #[error("frame of {length} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// What the header announced.
        length: u64,
        /// The limit.
        max: usize,
    },
    /// The compressed payload inflates past the limit.
    #[error("compressed payload inflates past the {max}-byte limit")]
    InflatesTooLarge {
        /// The limit.
        max: usize,
    },
    /// The compressed payload is not zlib.
    #[error("compressed payload is not valid zlib")]
    BadCompression,
    /// The payload is not MessagePack this side can read.
    #[error("payload is not valid MessagePack: {0}")]
    BadPayload(String),
}

impl Header {
    /// Reads a header, refusing a wrong magic or version and a length past `max`.
    pub fn parse(bytes: &[u8; HEADER_LEN], max: usize) -> Result<Header, FrameError> {
        let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        if &bytes[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let version = u16_at(4);
        if version != VERSION {
            return Err(FrameError::BadVersion(version));
        }
        let length = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if length as usize > max {
            return Err(FrameError::TooLarge {
                length: u64::from(length),
                max,
            });
        }
        let mut correlation = [0u8; 8];
        correlation.copy_from_slice(&bytes[16..24]);
        Ok(Header {
            kind: Kind::from_code(u16_at(6)),
            flags: u16_at(8),
            length,
            correlation: u64::from_be_bytes(correlation),
        })
    }
}

/// A frame's payload as JSON: inflated first if compressed (into at most `max`
/// bytes), then read as MessagePack. An empty payload is `null`.
///
/// ```
/// use switchboard_proto::netconduit::{Header, Kind, decode_payload, encode_frame};
/// let frame = encode_frame(Kind::Message, 0, Some(&serde_json::json!({"type": "hi", "data": 1})));
/// let header = Header::parse(frame[..32].try_into().unwrap(), 1024).unwrap();
/// let payload = decode_payload(&header, &frame[32..], 1024).unwrap();
/// assert_eq!(payload["type"], "hi");
/// ```
pub fn decode_payload(
    header: &Header,
    body: &[u8],
    max: usize,
) -> Result<serde_json::Value, FrameError> {
    let inflated;
    let bytes = if header.flags & COMPRESSED != 0 {
        inflated = inflate(body, max)?;
        &inflated[..]
    } else {
        body
    };
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    rmp_serde::from_slice(bytes).map_err(|e| FrameError::BadPayload(e.to_string()))
}

/// Inflates zlib `body` into at most `max` bytes.
fn inflate(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::ZlibDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| FrameError::BadCompression)?;
    if out.len() > max {
        return Err(FrameError::InflatesTooLarge { max });
    }
    Ok(out)
}

/// One frame: the header (now as its timestamp) and `payload` as MessagePack, never
/// compressed (netconduit's readers take both).
pub fn encode_frame(kind: Kind, correlation: u64, payload: Option<&serde_json::Value>) -> Vec<u8> {
    let body = payload
        .and_then(|p| rmp_serde::to_vec_named(p).ok())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&VERSION.to_be_bytes());
    frame.extend_from_slice(&kind.code().to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes());
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&correlation.to_be_bytes());
    frame.extend_from_slice(&now.to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header(frame: &[u8]) -> Result<Header, FrameError> {
        let bytes: &[u8; HEADER_LEN] = frame[..HEADER_LEN]
            .try_into()
            .map_err(|_| FrameError::BadMagic)?;
        Header::parse(bytes, 1 << 20)
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let payload = json!({"method": "add", "params": {"a": 1, "b": -2.5, "s": "é", "n": null}});
        let frame = encode_frame(Kind::RpcRequest, 42, Some(&payload));
        let h = header(&frame).unwrap();
        assert_eq!((h.kind, h.correlation, h.flags), (Kind::RpcRequest, 42, 0));
        assert_eq!(h.length as usize, frame.len() - HEADER_LEN);
        assert_eq!(
            decode_payload(&h, &frame[HEADER_LEN..], 1 << 20).unwrap(),
            payload
        );
    }

    #[test]
    fn bad_magic_version_and_length_are_refused_from_the_header() {
        let mut frame = encode_frame(Kind::Ping, 0, None);
        frame[0] = b'X';
        assert_eq!(header(&frame), Err(FrameError::BadMagic));
        let mut frame = encode_frame(Kind::Ping, 0, None);
        frame[5] = 2;
        assert_eq!(header(&frame), Err(FrameError::BadVersion(0x0102)));
        let mut frame = encode_frame(Kind::Message, 0, None);
        frame[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(header(&frame), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn a_zlib_bomb_is_an_error_not_an_allocation() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bomb = z.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        let h = Header {
            kind: Kind::Message,
            flags: COMPRESSED,
            length: bomb.len() as u32,
            correlation: 0,
        };
        assert_eq!(
            decode_payload(&h, &bomb, 1 << 20),
            Err(FrameError::InflatesTooLarge { max: 1 << 20 })
        );
        assert_eq!(
            decode_payload(&h, b"not zlib", 1 << 20),
            Err(FrameError::BadCompression)
        );
    }

    #[test]
    fn a_compressed_payload_is_read() {
        use std::io::Write;
        let payload = json!({"type": "t", "data": "x".repeat(4000)});
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&rmp_serde::to_vec_named(&payload).unwrap())
            .unwrap();
        let body = z.finish().unwrap();
        let h = Header {
            kind: Kind::Message,
            flags: COMPRESSED,
            length: body.len() as u32,
            correlation: 0,
        };
        assert_eq!(decode_payload(&h, &body, 1 << 20).unwrap(), payload);
    }

    #[test]
    fn garbage_payloads_are_typed_errors() {
        let h = Header {
            kind: Kind::Message,
            flags: 0,
            length: 3,
            correlation: 0,
        };
        assert!(matches!(
            decode_payload(&h, &[0xc1, 0xc1, 0xc1], 1024),
            Err(FrameError::BadPayload(_))
        ));
    }
}
