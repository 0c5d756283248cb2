//! Native frames in MessagePack, for connections that negotiated
//! [`switchboard_proto::msgpack::SUBPROTOCOL`].
//!
//! A broadcast is one shared JSON frame handed to every recipient's connection; each
//! MessagePack recipient would re-encode it. The worker thread remembers the last frame
//! it encoded (holding a clone of it, so its address cannot be reused by another frame
//! while remembered), and the next recipient served on that thread gets the same bytes.

use std::cell::RefCell;

use bytes::Bytes;
use switchboard_proto::msgpack;

use crate::ws::Text;

thread_local! {
    /// The last native frame encoded on this thread, and its MessagePack.
    static LAST: RefCell<Option<(Text, Bytes)>> = const { RefCell::new(None) };
}

/// `native` in MessagePack (`None`: not JSON, which no native frame is).
pub(crate) fn to_msgpack(native: &Text) -> Option<Bytes> {
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((text, bytes)) = last.as_ref() {
            if text.same_buffer(native) {
                return Some(bytes.clone());
            }
        }
        let bytes = Bytes::from(msgpack::from_json(native.as_str()).ok()?);
        *last = Some((native.clone(), bytes.clone()));
        Some(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_frame_is_encoded_once_and_another_frame_again() {
        let a = Text::from(r#"{"type":"a","payload":{}}"#.to_owned());
        let first = to_msgpack(&a).unwrap();
        let again = to_msgpack(&a.clone()).unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes");
        // Equal text in another buffer is encoded on its own (and equally).
        let b = Text::from(r#"{"type":"a","payload":{}}"#.to_owned());
        let other = to_msgpack(&b).unwrap();
        assert_ne!(first.as_ptr(), other.as_ptr());
        assert_eq!(first, other);
        let c = Text::from(r#"{"type":"c"}"#.to_owned());
        assert_eq!(
            msgpack::to_json(&to_msgpack(&c).unwrap(), 100).unwrap(),
            r#"{"type":"c"}"#
        );
    }
}
