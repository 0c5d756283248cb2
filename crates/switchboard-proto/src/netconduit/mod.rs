//! netconduit's wire (the `netconduit` 5 package on PyPI, imported as `conduit`): raw
//! TCP with a 32-byte binary header and MessagePack payloads, and its messages as
//! native envelopes. A server speaks it on a TCP port of its own and translates at
//! the edge, so everything past the edge sees native envelopes.

mod frame;
mod translate;

pub use frame::{
    COMPRESSED, FrameError, HEADER_LEN, Header, Kind, MAGIC, VERSION, decode_payload, encode_frame,
};
pub use translate::{Inbound, Outbound, code_of, inbound, outbound};
