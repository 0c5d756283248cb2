//! datadivr's and Metafor's frames, both ways: whatever a client sends is translated or
//! refused without a panic, and whatever a native frame holds is translated for them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::dialect::{datadivr, metafor};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = datadivr::detect(text);
    if let Ok(env) = datadivr::incoming(text) {
        let _ = datadivr::outgoing(&env.encode(), "0000000000000001");
    }
    let _ = datadivr::outgoing(text, "0000000000000001");
    let _ = metafor::detect(text);
    let _ = metafor::incoming(text);
    let _ = metafor::outgoing(text);
});
