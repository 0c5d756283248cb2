//! The per-message pieces of the metrics: a handler's or method's pair of duration
//! histograms, and the class of an outgoing frame read from its first bytes.

use std::time::Instant;

use prometheus::{Histogram, HistogramVec};
use switchboard_proto::types;

/// The duration histograms of one message type or RPC method, `ok` and `error`,
/// resolved when the server is built so observing takes no lock.
#[derive(Clone)]
pub(crate) struct Timing {
    ok: Histogram,
    error: Histogram,
}

impl Timing {
    pub(crate) fn new(vec: &HistogramVec, name: &str) -> Timing {
        Timing {
            ok: vec.with_label_values(&[name, "ok"]),
            error: vec.with_label_values(&[name, "error"]),
        }
    }

    pub(crate) fn observe(&self, started: Instant, ok: bool) {
        let seconds = started.elapsed().as_secs_f64();
        if ok {
            self.ok.observe(seconds);
        } else {
            self.error.observe(seconds);
        }
    }
}

/// An outgoing frame's class, one label value of `switchboard_messages_sent_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameClass {
    Application = 0,
    System = 1,
}

/// The class of a native frame, from its type: every frame the server encodes starts
/// with `{"type":"`, and the types only the server sends (`ack`, `error`, `pong`,
/// `connected`, presence) are the protocol's.
///
/// ```text
/// {"type":"ack","payload":{...}}   -> System
/// {"type":"chat","payload":{...}}  -> Application
/// ```
pub(crate) fn frame_class(text: &str) -> FrameClass {
    const START: &str = "{\"type\":\"";
    let kind = text
        .strip_prefix(START)
        .and_then(|rest| rest.get(..rest.len().min(24)))
        .and_then(|head| head.split_once('"'))
        .map(|(kind, _)| kind);
    match kind {
        Some(kind) if types::is_server_only(kind) => FrameClass::System,
        _ => FrameClass::Application,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classed_by_their_type() {
        assert_eq!(
            frame_class(r#"{"type":"ack","payload":{"ref":"1","status":"ok"}}"#),
            FrameClass::System
        );
        assert_eq!(
            frame_class(r#"{"type":"pong","payload":{}}"#),
            FrameClass::System
        );
        assert_eq!(
            frame_class(r#"{"type":"chat","payload":{"type":"ack"}}"#),
            FrameClass::Application
        );
        assert_eq!(frame_class("not a frame"), FrameClass::Application);
        // A multi-byte character near the cut does not panic.
        assert_eq!(
            frame_class("{\"type\":\"ééééééééééééééééé\"}"),
            FrameClass::Application
        );
    }
}
