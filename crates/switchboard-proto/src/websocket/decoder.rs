//! [`Decoder`]: a client's frames read one at a time from bytes the caller owns,
//! checked against RFC 6455's rules, fragments assembled.

use bytes::Bytes;

use super::{Event, FrameError, Step, is_valid_close_code};

/// A fragmented message being assembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// Bytes of a text message known to be UTF-8 (a character cut by a fragment's end
    /// is checked when the rest arrives).
    checked: usize,
}

impl Fragments {
    /// Checks the text received since the last check.
    fn check_text(&mut self) -> Result<(), FrameError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }
}

/// Decodes the frames a client sends, one at a time, from bytes the caller owns.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Boxed: a connection pays one pointer for it until a client fragments a message.
    fragments: Option<Box<Fragments>>,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    ///
    /// ```
    /// use switchboard_proto::websocket::{Decoder, FrameError};
    ///
    /// // A binary frame announcing 1,000 bytes is refused from its header alone.
    /// let mut head = [0x82, 0x80 | 126, 0x03, 0xE8];
    /// assert_eq!(Decoder::new(512).decode(&mut head), Err(FrameError::TooLarge(512)));
    /// ```
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Whether a fragmented message is part-way through.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Decodes the frame at the start of `buf`, unmasking its payload in place. Errors
    /// are final: the connection is to be closed (with 1002, or 1007 and 1009 for
    /// [`FrameError::InvalidUtf8`] and [`FrameError::TooLarge`]).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Step, FrameError> {
        if buf.len() < 2 {
            return Ok(Step::Incomplete { needed: 2 });
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let control = opcode & 0x08 != 0;
        match opcode {
            0x0..=0x2 | 0x8..=0xA => {}
            _ => return Err(FrameError::Protocol("reserved opcode")),
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("a client's frame must be masked"));
        }
        let short = usize::from(b1 & 0x7F);
        if control && !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if control && short > 125 {
            return Err(FrameError::Protocol("control frame longer than 125 bytes"));
        }
        match (opcode, &self.fragments) {
            (0x0, None) => {
                return Err(FrameError::Protocol(
                    "continuation frame with no message to continue",
                ));
            }
            (0x1 | 0x2, Some(_)) => {
                return Err(FrameError::Protocol(
                    "a new message began before the last one ended",
                ));
            }
            _ => {}
        }
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + extended + 4;
        // The length is checked as soon as it has arrived, before the mask.
        if buf.len() < 2 + extended {
            return Ok(Step::Incomplete { needed: head });
        }
        let len = match extended {
            2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            8 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("frame length with its high bit set"));
                }
                len
            }
            _ => short as u64,
        };
        // A continuation counts with the fragments before it; a control frame (at most
        // 125 bytes, checked above) is no part of the message it may interrupt.
        let so_far = match (opcode, &self.fragments) {
            (0x0, Some(f)) => f.data.len() as u64,
            _ => 0,
        };
        if !control && so_far.saturating_add(len) > self.max_message as u64 {
            return Err(FrameError::TooLarge(self.max_message));
        }
        if buf.len() < head {
            return Ok(Step::Incomplete { needed: head });
        }
        // Within the limit, so it fits in a usize.
        let len = len as usize;
        let needed = head + len;
        if buf.len() < needed {
            return Ok(Step::Incomplete { needed });
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[head - 4..head]);
        let payload = &mut buf[head..needed];
        unmask(payload, mask);
        let event = self.frame(opcode, fin, payload)?;
        Ok(Step::Frame {
            used: needed,
            event,
        })
    }

    /// What a whole, unmasked frame gives.
    fn frame(
        &mut self,
        opcode: u8,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Event>, FrameError> {
        let event = match opcode {
            0x8 => Event::Close(close_frame(payload)?),
            0x9 => Event::Ping(Bytes::copy_from_slice(payload)),
            0xA => Event::Pong,
            0x0 => {
                let Some(mut fragments) = self.fragments.take() else {
                    return Err(FrameError::Protocol(
                        "continuation frame with no message to continue",
                    ));
                };
                fragments.data.extend_from_slice(payload);
                if !fin {
                    fragments.check_text()?;
                    self.fragments = Some(fragments);
                    return Ok(None);
                }
                let data = Bytes::from(fragments.data);
                if fragments.text {
                    Event::Text(data)
                } else {
                    Event::Binary(data)
                }
            }
            _ if !fin => {
                let mut fragments = Box::new(Fragments {
                    text: opcode == 0x1,
                    data: payload.to_vec(),
                    checked: 0,
                });
                fragments.check_text()?;
                self.fragments = Some(fragments);
                return Ok(None);
            }
            0x1 => Event::Text(Bytes::copy_from_slice(payload)),
            _ => Event::Binary(Bytes::copy_from_slice(payload)),
        };
        Ok(Some(event))
    }
}

/// A close frame's code and reason.
fn close_frame(payload: &[u8]) -> Result<Option<(u16, String)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// XORs `data` with the repeating 4-byte `mask`, 8 bytes at a time.
///
/// ```
/// use switchboard_proto::websocket::unmask;
///
/// let mut data = *b"hello";
/// unmask(&mut data, [1, 2, 3, 4]);
/// unmask(&mut data, [1, 2, 3, 4]);
/// assert_eq!(&data, b"hello");
/// ```
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask lines up from its first byte.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::{Kind, close_payload, header};

    /// A client frame: `b0` (FIN, opcode), masked with a fixed mask.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_one(decoder: &mut Decoder, mut frame: Vec<u8>) -> Result<Option<Event>, FrameError> {
        let len = frame.len();
        match decoder.decode(&mut frame)? {
            Step::Frame { used, event } => {
                assert_eq!(used, len);
                Ok(event)
            }
            Step::Incomplete { needed } => panic!("incomplete, needs {needed}"),
        }
    }

    #[test]
    fn text_binary_and_lengths_of_every_encoding() {
        let mut d = Decoder::new(1 << 20);
        for len in [0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let got = decode_one(&mut d, client_frame(0x82, &payload)).unwrap();
            assert_eq!(
                got,
                Some(Event::Binary(Bytes::from(payload.clone()))),
                "{len}"
            );
        }
        let got = decode_one(&mut d, client_frame(0x81, "héllo".as_bytes())).unwrap();
        assert_eq!(got, Some(Event::Text(Bytes::from("héllo"))));
    }

    #[test]
    fn incomplete_frames_say_what_they_need() {
        let mut d = Decoder::new(1 << 20);
        let frame = client_frame(0x81, &[b'x'; 300]);
        for cut in 0..frame.len() {
            let mut part = frame[..cut].to_vec();
            let Step::Incomplete { needed } = d.decode(&mut part).unwrap() else {
                panic!("complete at {cut}");
            };
            assert!(needed > cut && needed <= frame.len(), "{cut}: {needed}");
        }
    }

    #[test]
    fn fragments_are_assembled_with_control_frames_between() {
        let mut d = Decoder::new(1 << 20);
        assert_eq!(decode_one(&mut d, client_frame(0x01, b"ab")).unwrap(), None);
        assert!(d.in_message());
        let ping = decode_one(&mut d, client_frame(0x89, b"p")).unwrap();
        assert_eq!(ping, Some(Event::Ping(Bytes::from_static(b"p"))));
        assert_eq!(decode_one(&mut d, client_frame(0x00, b"cd")).unwrap(), None);
        let done = decode_one(&mut d, client_frame(0x80, b"e")).unwrap();
        assert_eq!(done, Some(Event::Text(Bytes::from_static(b"abcde"))));
        assert!(!d.in_message());
    }

    #[test]
    fn rule_breaking_frames_are_refused() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("reserved bits", client_frame(0xC1, b"x")),
            ("reserved opcode", client_frame(0x83, b"x")),
            ("fragmented control", client_frame(0x09, b"x")),
            ("long control", client_frame(0x89, &[0; 126])),
            ("lone continuation", client_frame(0x80, b"x")),
            ("unmasked", vec![0x81, 0x01, b'x']),
            ("1-byte close", client_frame(0x88, &[3])),
        ];
        for (what, frame) in cases {
            let err = decode_one(&mut Decoder::new(1024), frame).unwrap_err();
            assert!(matches!(err, FrameError::Protocol(_)), "{what}: {err:?}");
        }
        let mut d = Decoder::new(1024);
        decode_one(&mut d, client_frame(0x01, b"a")).unwrap();
        let err = decode_one(&mut d, client_frame(0x81, b"b")).unwrap_err();
        assert!(matches!(err, FrameError::Protocol(_)));
    }

    #[test]
    fn a_bad_byte_in_a_text_fragment_fails_at_once() {
        let mut d = Decoder::new(1024);
        // "é" cut between two fragments is fine.
        assert_eq!(
            decode_one(&mut d, client_frame(0x01, &[b'a', 0xC3])).unwrap(),
            None
        );
        assert_eq!(
            decode_one(&mut d, client_frame(0x00, &[0xA9])).unwrap(),
            None
        );
        let err = decode_one(&mut d, client_frame(0x00, &[0xFF, b'b'])).unwrap_err();
        assert_eq!(err, FrameError::InvalidUtf8);
        // Binary fragments are bytes.
        let mut d = Decoder::new(1024);
        assert_eq!(
            decode_one(&mut d, client_frame(0x02, &[0xFF])).unwrap(),
            None
        );
    }

    #[test]
    fn size_is_refused_from_the_header_and_across_fragments() {
        let mut d = Decoder::new(100);
        // Only the header: the payload never has to arrive.
        let mut head = client_frame(0x82, &[0; 101])[..8].to_vec();
        assert_eq!(d.decode(&mut head), Err(FrameError::TooLarge(100)));
        let mut huge = vec![0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(
            Decoder::new(100).decode(&mut huge),
            Err(FrameError::TooLarge(100))
        );
        let mut d = Decoder::new(100);
        decode_one(&mut d, client_frame(0x02, &[0; 60])).unwrap();
        // A ping between the fragments is not part of the message.
        let ping = decode_one(&mut d, client_frame(0x89, &[1; 125])).unwrap();
        assert_eq!(ping, Some(Event::Ping(Bytes::from(vec![1; 125]))));
        let err = decode_one(&mut d, client_frame(0x80, &[0; 41])).unwrap_err();
        assert_eq!(err, FrameError::TooLarge(100));
    }

    #[test]
    fn close_codes_and_reasons_are_checked() {
        let close = |code: u16, reason: &[u8]| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            decode_one(&mut Decoder::new(1024), client_frame(0x88, &p))
        };
        assert_eq!(
            close(1000, b"bye").unwrap(),
            Some(Event::Close(Some((1000, "bye".into()))))
        );
        assert_eq!(
            close(4321, b"").unwrap(),
            Some(Event::Close(Some((4321, String::new()))))
        );
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
            assert!(
                matches!(close(bad, b""), Err(FrameError::Protocol(_))),
                "{bad}"
            );
        }
        assert_eq!(close(1000, &[0xff, 0xfe]), Err(FrameError::InvalidUtf8));
        let empty = decode_one(&mut Decoder::new(1024), client_frame(0x88, b"")).unwrap();
        assert_eq!(empty, Some(Event::Close(None)));
    }

    #[test]
    fn server_headers_and_close_payloads() {
        assert_eq!(
            header(Kind::Binary, 125),
            ([0x82, 125, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        let (h, n) = header(Kind::Text, 126);
        assert_eq!(&h[..n], &[0x81, 126, 0, 126]);
        let (h, n) = header(Kind::Ping, 65536);
        assert_eq!(&h[..n], &[0x89, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let payload = close_payload(1000, &"é".repeat(100));
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn unmask_matches_the_byte_at_a_time_definition() {
        let mask = [1, 2, 3, 250];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }
}
