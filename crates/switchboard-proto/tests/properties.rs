//! Property tests: decoding never panics, and what encodes decodes back.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use switchboard_proto::{Envelope, Payload};

fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_\\-é\"\\\\ ]{1,40}"
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        id(),
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..5),
        proptest::option::of(id()),
        proptest::option::of(id()),
        proptest::option::of(id()),
        proptest::option::of(id()),
    )
        .prop_map(|(kind, map, ref_id, room, to, from)| {
            let obj = serde_json::Value::Object(map.into_iter().collect());
            Envelope {
                payload: Payload::from_serialize(&obj).expect("object"),
                ref_id,
                room,
                to,
                from,
                ..Envelope::new(kind)
            }
        })
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_text(s in ".{0,200}") {
        let _ = Envelope::decode(&s);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_json(v in json_value()) {
        let _ = Envelope::decode(&v.to_string());
    }

    #[test]
    fn decode_never_panics_on_envelope_like_objects(
        t in json_value(), p in json_value(), r in json_value(), v in json_value()
    ) {
        let text = serde_json::json!({"type": t, "payload": p, "ref": r, "v": v}).to_string();
        if let Err(e) = Envelope::decode(&text) {
            // Every error has a code and a message a person can read.
            prop_assert!(!e.to_string().is_empty());
            let _ = e.code();
        }
    }

    #[test]
    fn encode_then_decode_is_identity(env in envelope()) {
        let text = env.encode();
        prop_assert_eq!(Envelope::decode(&text).expect("decodes"), env);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics(env in envelope(), cut in 0usize..1000) {
        let text = env.encode();
        let mut end = cut.min(text.len().saturating_sub(1));
        while !text.is_char_boundary(end) { end -= 1; }
        prop_assert!(Envelope::decode(&text[..end]).is_err());
    }
}

proptest! {
    /// The dialect readers take anything a client can send without panicking.
    #[test]
    fn dialects_never_panic_on_arbitrary_json(v in json_value(), text in ".{0,200}") {
        use switchboard_proto::dialect::{datadivr, metafor};
        for input in [v.to_string(), text] {
            let _ = datadivr::incoming(&input);
            let _ = metafor::incoming(&input);
            let _ = metafor::detect(&input);
        }
    }

    /// Every datadivr frame that reads becomes a valid native envelope, and every native
    /// envelope can be written to datadivr and Metafor clients.
    #[test]
    fn dialect_frames_map_to_valid_envelopes(
        event in "[a-zA-Z_]{1,20}",
        payload in json_value(),
        message in proptest::option::of(".{0,20}"),
        env in envelope(),
    ) {
        use switchboard_proto::dialect::{datadivr, metafor};
        let frame = serde_json::json!({"event_name": event, "payload": payload, "message": message});
        let native = datadivr::incoming(&frame.to_string()).unwrap();
        prop_assert!(Envelope::decode(&native.encode()).is_ok());
        let text = env.encode();
        if !switchboard_proto::types::is_server_only(&env.kind) {
            prop_assert!(datadivr::outgoing(&text, "c1").is_some());
        }
        let _ = metafor::outgoing(&text);
    }
}
