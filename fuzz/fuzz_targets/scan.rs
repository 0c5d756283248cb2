//! The fast path's JSON reader (`switchboard_proto::scan::members`, whose values are
//! checked by hand): on any text, what it accepts serde_json reads alike; and a value
//! serde_json reads as raw text (nested no deeper than the payload limit) it reads
//! too, to the same end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use switchboard_proto::MAX_PAYLOAD_DEPTH;
use switchboard_proto::envelope::nests_deeper_than;
use switchboard_proto::scan::{Scanned, members};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The input as a whole object: whatever is read, serde_json reads the same.
    let mut read = Vec::new();
    if members(text, |k, v| {
        read.push((k, v));
        Some(())
    })
    .is_some()
    {
        let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
            Ok(map) => map,
            // serde_json's `Value` refuses numbers out of range and lone surrogates,
            // which raw text keeps; the object must still be valid JSON.
            Err(_) => {
                assert!(serde_json::from_str::<&RawValue>(text).is_ok(), "accepted {text:?}");
                return;
            }
        };
        let mut last = std::collections::BTreeMap::new();
        for (k, v) in read {
            let value = match v {
                Scanned::Plain(s) => Some(serde_json::Value::String(s.to_owned())),
                Scanned::Raw(raw) => serde_json::from_str(raw).ok(),
            };
            last.insert(k, value);
        }
        assert_eq!(last.len(), map.len(), "{text:?}");
        for (k, v) in last {
            if let Some(v) = v {
                assert_eq!(map.get(k), Some(&v), "{text:?}");
            }
        }
    }
    // The input as one member's value.
    let wrapped = format!("{{\"k\":{text}}}");
    let mut values = Vec::new();
    let accepted = members(&wrapped, |_, v| {
        values.push(match v {
            Scanned::Plain(s) => format!("\"{s}\""),
            Scanned::Raw(raw) => raw.to_owned(),
        });
        Some(())
    })
    .is_some();
    if values.len() > 1 {
        // The text ended the value and went on with members of its own (`1,"x":2`):
        // not one value, and the object was checked as a whole above.
        return;
    }
    let value = values.pop();
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) if !nests_deeper_than(raw.get(), MAX_PAYLOAD_DEPTH) => {
            assert!(accepted, "refused {text:?}");
            assert_eq!(value.as_deref(), Some(raw.get()), "{text:?}");
        }
        Ok(_) => assert!(!accepted, "accepted too deep {text:?}"),
        Err(_) => assert!(!accepted, "accepted invalid {text:?}"),
    }
});
