//! The native envelope, as the server reads every text frame: decoding never panics,
//! its fast path (plain envelopes read by hand) decodes exactly as serde_json's general
//! path does, a decoded envelope encodes to text that decodes to the same envelope, and
//! the cheap `ref` peek never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::{Envelope, peek_ref};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = peek_ref(text);
    let decoded = Envelope::decode(text);
    assert_eq!(decoded, Envelope::decode_general(text), "{text:?}");
    if let Ok(env) = decoded {
        let again = Envelope::decode(&env.encode()).expect("an encoded envelope decodes");
        assert_eq!(again.kind, env.kind);
        assert_eq!(again.ref_id, env.ref_id);
        assert_eq!(again.room, env.room);
        assert_eq!(again.to, env.to);
    }
});
