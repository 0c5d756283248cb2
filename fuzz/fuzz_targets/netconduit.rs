//! netconduit's frames as the TCP listener reads them: a header, a payload (maybe
//! zlib), its translation to a native envelope; and native frames translated back.
//! Nothing panics, nothing inflates past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::netconduit::{HEADER_LEN, Header, decode_payload, inbound, outbound};

const MAX: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = outbound(text);
    }
    let Some((head, body)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(header) = Header::parse(head, MAX) else {
        return;
    };
    let body = &body[..body.len().min(header.length as usize)];
    if let Ok(payload) = decode_payload(&header, body, MAX) {
        let _ = inbound(&header, payload);
    }
});
