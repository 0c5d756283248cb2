//! The MessagePack envelope (`switchboard_proto::msgpack`): any bytes read as JSON or
//! refused with a typed error, never a panic; what is read is valid JSON within the
//! length bound, and writing it back as MessagePack and reading that again gives the
//! same JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::msgpack;

const MAX: usize = 16 << 10;

fuzz_target!(|data: &[u8]| {
    // The raw-bytes shortcut reads back what the envelope it recognises carries (a
    // longer length form than needed is read too).
    if let Some(raw) = msgpack::binary_data(data) {
        assert_eq!(msgpack::binary_data(&msgpack::binary_envelope(raw)), Some(raw));
    }
    let Ok(json) = msgpack::to_json(data, MAX) else {
        return;
    };
    assert!(json.len() <= MAX);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let again = msgpack::from_json(&json).expect("JSON written back");
    let json2 = msgpack::to_json(&again, usize::MAX).expect("read again");
    let value2: serde_json::Value = serde_json::from_str(&json2).expect("valid JSON");
    assert_eq!(value, value2);
    let _ = msgpack::decode(data, MAX);
});
