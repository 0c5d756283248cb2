//! The server's WebSocket frame decoder (`switchboard_proto::websocket`), fed as the
//! server feeds it: the bytes cut into pieces of a size the input chooses, leftovers
//! kept between reads. Nothing panics, every step's sizes are consistent, and the
//! events are the same however the bytes were cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::websocket::{Decoder, Event, FrameError, Step};

const MAX: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = decode_all(stream, stream.len().max(1));
    let pieces = decode_all(stream, usize::from(cut % 64) + 1);
    assert_eq!(whole, pieces);
});

/// Every event (and the error that ends reading) of `stream`, read `chunk` bytes at a
/// time.
fn decode_all(stream: &[u8], chunk: usize) -> Vec<Result<Event, FrameError>> {
    let mut decoder = Decoder::new(MAX);
    let mut pending = Vec::new();
    let mut events = Vec::new();
    for piece in stream.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut pending) {
                Ok(Step::Frame { used, event }) => {
                    assert!((6..=pending.len()).contains(&used), "{used} of {}", pending.len());
                    pending.drain(..used);
                    events.extend(event.map(Ok));
                }
                Ok(Step::Incomplete { needed }) => {
                    assert!(needed > pending.len() && needed <= MAX + 14);
                    break;
                }
                Err(e) => {
                    events.push(Err(e));
                    return events;
                }
            }
        }
    }
    events
}
