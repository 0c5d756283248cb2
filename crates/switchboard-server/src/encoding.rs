//! Native frames in MessagePack, for connections that negotiated
//! [`switchboard_proto::msgpack::SUBPROTOCOL`].
//!
//! A broadcast is one shared JSON frame handed to every recipient's connection; each
//! MessagePack recipient would re-encode it. The worker thread remembers the frames it
//! encoded last by their buffer's address (holding clones of them, so an address cannot
//! be reused by another frame while remembered), and the next recipient served on that
//! thread gets the same bytes. Recipients write whole batches of broadcasts one after
//! another, so the thread remembers up to [`REMEMBERED`] frames and [`REMEMBERED_BYTES`]
//! bytes, forgetting the oldest first.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use switchboard_proto::msgpack;

use crate::ws::Text;

/// How many encoded frames a worker thread remembers.
const REMEMBERED: usize = 4096;
/// How many bytes (JSON and MessagePack) they may hold in all.
const REMEMBERED_BYTES: usize = 2 << 20;

/// The frames a thread encoded last, by address and length; `order` oldest first.
#[derive(Default)]
struct Remembered {
    frames: HashMap<(usize, usize), (Text, Bytes)>,
    order: VecDeque<(usize, usize)>,
    bytes: usize,
}

fn key(text: &Text) -> (usize, usize) {
    (text.as_str().as_ptr() as usize, text.len())
}

impl Remembered {
    fn find(&self, native: &Text) -> Option<Bytes> {
        let (text, bytes) = self.frames.get(&key(native))?;
        // The remembered clone keeps the buffer alive: the same address is the same text.
        debug_assert!(text.same_buffer(native));
        Some(bytes.clone())
    }

    fn keep(&mut self, native: &Text, bytes: &Bytes) {
        let size = native.len() + bytes.len();
        if size > REMEMBERED_BYTES {
            return;
        }
        while self.order.len() >= REMEMBERED || self.bytes + size > REMEMBERED_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((text, old)) = self.frames.remove(&oldest) {
                self.bytes -= text.len() + old.len();
            }
        }
        self.frames
            .insert(key(native), (native.clone(), bytes.clone()));
        self.order.push_back(key(native));
        self.bytes += size;
    }
}

thread_local! {
    static REMEMBER: RefCell<Remembered> = RefCell::new(Remembered::default());
}

/// `native` in MessagePack (`None`: not JSON, which no native frame is).
pub(crate) fn to_msgpack(native: &Text) -> Option<Bytes> {
    REMEMBER.with(|remembered| {
        let mut remembered = remembered.borrow_mut();
        if let Some(bytes) = remembered.find(native) {
            return Some(bytes);
        }
        let bytes = Bytes::from(msgpack::from_json(native.as_str()).ok()?);
        remembered.keep(native, &bytes);
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
        // A batch of broadcasts, written by one recipient after another: each encoded once.
        let batch: Vec<Text> = (0..10)
            .map(|i| Text::from(format!(r#"{{"type":"t","payload":{{"i":{i}}}}}"#)))
            .collect();
        let first: Vec<Bytes> = batch.iter().map(|t| to_msgpack(t).unwrap()).collect();
        for (t, b) in batch.iter().zip(&first) {
            assert_eq!(to_msgpack(t).unwrap().as_ptr(), b.as_ptr());
        }
        let c = Text::from(r#"{"type":"c"}"#.to_owned());
        assert_eq!(
            msgpack::to_json(&to_msgpack(&c).unwrap(), 100).unwrap(),
            r#"{"type":"c"}"#
        );
    }
}
