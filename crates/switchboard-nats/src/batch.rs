//! Several sends to one stream stored as one JetStream message: each stored message
//! costs a round trip (its offset follows the stream's last, by compare-and-set), so
//! the writer stores the sends waiting for one stream together. The stored message's
//! offset is its last send's, `Sb-Count` says how many it holds, and its payload is
//! each send in turn: `<frame length> <excluded ids, comma-separated>\n<frame>`.
//! A lone send is stored as it is (its frame the payload, its exclusions a header).

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use switchboard_server::ConnId;

use crate::writer::{Tip, exclude_of, header, join_ids};

/// Header: how many sends a stored message holds (absent: one).
pub(crate) const COUNT: &str = "Sb-Count";

/// Most sends stored together.
pub(crate) const MOST: usize = 256;

/// Most bytes stored together (NATS's default `max_payload` is 1 MiB).
pub(crate) const MOST_BYTES: usize = 256 * 1024;

/// One send out of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unpacked {
    pub(crate) offset: u64,
    pub(crate) frame: String,
    pub(crate) exclude: Vec<ConnId>,
}

/// The payload of several sends stored together.
pub(crate) fn pack<'a>(sends: impl IntoIterator<Item = (&'a [u8], &'a [ConnId])>) -> Bytes {
    let mut out = BytesMut::new();
    for (frame, exclude) in sends {
        out.put_slice(frame.len().to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(join_ids(exclude).as_bytes());
        out.put_u8(b'\n');
        out.put_slice(frame);
    }
    out.freeze()
}

/// The sends a stored message at `tip` holds, in order (none for the mark that opens a
/// stream, or a malformed message).
pub(crate) fn unpack(headers: Option<&HeaderMap>, payload: &[u8], tip: &Tip) -> Vec<Unpacked> {
    let Some(count) = header(headers, COUNT).and_then(|c| c.parse::<u64>().ok()) else {
        if tip.offset == 0 {
            return Vec::new();
        }
        return match std::str::from_utf8(payload) {
            Ok(frame) => vec![Unpacked {
                offset: tip.offset,
                frame: frame.to_owned(),
                exclude: exclude_of(headers),
            }],
            Err(_) => Vec::new(),
        };
    };
    if count == 0 || count > tip.offset {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = payload;
    let first = tip.offset + 1 - count;
    for offset in first..=tip.offset {
        let Some(line_end) = rest.iter().position(|b| *b == b'\n') else {
            return Vec::new();
        };
        let Ok(line) = std::str::from_utf8(&rest[..line_end]) else {
            return Vec::new();
        };
        let (len, exclude) = line.split_once(' ').unwrap_or((line, ""));
        let Ok(len) = len.parse::<usize>() else {
            return Vec::new();
        };
        let body = &rest[line_end + 1..];
        let (Some(frame), Some(after)) = (body.get(..len), body.get(len..)) else {
            return Vec::new();
        };
        let Ok(frame) = std::str::from_utf8(frame) else {
            return Vec::new();
        };
        out.push(Unpacked {
            offset,
            frame: frame.to_owned(),
            exclude: exclude
                .split(',')
                .filter_map(|id| id.parse().ok())
                .collect(),
        });
        rest = after;
    }
    if rest.is_empty() { out } else { Vec::new() }
}

/// The offset of the first send a stored message at `tip` holds.
pub(crate) fn first_offset(headers: Option<&HeaderMap>, tip: &Tip) -> u64 {
    let count = header(headers, COUNT)
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    tip.offset.saturating_add(1).saturating_sub(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(offset: u64) -> Tip {
        Tip {
            epoch: "00000000000000ab".into(),
            offset,
            seq: 9,
        }
    }

    #[test]
    fn sends_stored_together_come_out_in_order_with_their_offsets() {
        let a = [ConnId::from_u64(1)];
        let payload = pack([
            (&b"{\"type\":\"a\"}"[..], &a[..]),
            (&b"{\"type\":\"b\",\n\"x\":\" 1 \"}"[..], &[][..]),
            (&b""[..], &[][..]),
        ]);
        let mut h = HeaderMap::new();
        h.insert(COUNT, "3");
        let got = unpack(Some(&h), &payload, &tip(12));
        assert_eq!(
            got.iter().map(|u| u.offset).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(got[0].exclude, a);
        assert_eq!(got[1].frame, "{\"type\":\"b\",\n\"x\":\" 1 \"}");
        assert!(got[1].exclude.is_empty());
        assert_eq!(first_offset(Some(&h), &tip(12)), 10);
        // A lone send, and the mark that opens a stream.
        let one = unpack(None, b"{\"type\":\"c\"}", &tip(4));
        assert_eq!((one[0].offset, one.len()), (4, 1));
        assert!(unpack(None, b"", &tip(0)).is_empty());
        assert_eq!(first_offset(None, &tip(4)), 4);
    }

    #[test]
    fn a_malformed_batch_gives_nothing_rather_than_wrong_offsets() {
        let mut h = HeaderMap::new();
        h.insert(COUNT, "2");
        let one = pack([(&b"{}"[..], &[][..])]);
        assert!(
            unpack(Some(&h), &one, &tip(5)).is_empty(),
            "fewer than said"
        );
        let three = pack([(&b"{}"[..], &[][..]); 3]);
        assert!(
            unpack(Some(&h), &three, &tip(5)).is_empty(),
            "more than said"
        );
        assert!(unpack(Some(&h), b"99 \n{}", &tip(5)).is_empty(), "too long");
        assert!(unpack(Some(&h), b"x \n{}", &tip(5)).is_empty());
        h.insert(COUNT, "9");
        assert!(
            unpack(Some(&h), &one, &tip(5)).is_empty(),
            "before offset 1"
        );
    }
}
