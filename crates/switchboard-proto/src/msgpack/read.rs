//! MessagePack read straight into JSON text: one pass over the bytes, no values built,
//! every length checked against what is left before it is trusted.

use crate::envelope::{DecodeError, DecodeErrorKind};

/// Why a frame could not be read.
pub(super) enum Refusal {
    /// Not MessagePack this side reads as JSON (with why).
    Invalid(String),
    /// Nested deeper than allowed.
    TooDeep,
    /// Longer than allowed as JSON.
    TooLong,
}

impl From<Refusal> for DecodeError {
    fn from(r: Refusal) -> DecodeError {
        let kind = match r {
            Refusal::Invalid(why) => DecodeErrorKind::NotMessagePack(why),
            Refusal::TooDeep => DecodeErrorKind::PayloadTooDeep,
            Refusal::TooLong => DecodeErrorKind::NotMessagePack(
                "the envelope is longer than the message size limit as JSON".into(),
            ),
        };
        DecodeError::new(kind)
    }
}

/// A reader over one frame, writing its JSON to `out`.
pub(super) struct ToJson<'a> {
    input: &'a [u8],
    pos: usize,
    pub(super) out: Vec<u8>,
    max_len: usize,
    max_depth: usize,
}

type Step = Result<(), Refusal>;

fn invalid<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Invalid(why.into()))
}

impl<'a> ToJson<'a> {
    pub(super) fn new(input: &'a [u8], max_len: usize, max_depth: usize) -> ToJson<'a> {
        ToJson {
            input,
            pos: 0,
            out: Vec::with_capacity(input.len().saturating_mul(2).min(max_len)),
            max_len,
            max_depth,
        }
    }

    /// Reads the one value the frame holds, refusing trailing bytes.
    pub(super) fn frame(&mut self) -> Step {
        self.value(0)?;
        match self.input.len() - self.pos {
            0 => Ok(()),
            n => invalid(format!("{n} bytes after the envelope")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.input.len());
        match end {
            Some(end) => {
                let bytes = &self.input[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            None => invalid("the frame ends inside a value"),
        }
    }

    fn byte(&mut self) -> Result<u8, Refusal> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], Refusal> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A length of `size` bytes (1, 2 or 4), big-endian.
    fn len(&mut self, size: usize) -> Result<usize, Refusal> {
        Ok(match size {
            1 => usize::from(self.byte()?),
            2 => usize::from(u16::from_be_bytes(self.be()?)),
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Step {
        if self.out.len() + bytes.len() > self.max_len {
            return Err(Refusal::TooLong);
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn int(&mut self, n: impl itoa::Integer) -> Step {
        let mut digits = itoa::Buffer::new();
        let s = digits.format(n);
        self.write(s.as_bytes())
    }

    fn float(&mut self, f: impl serde::Serialize) -> Step {
        let mut buf = Vec::with_capacity(24);
        // Writing a number to a Vec cannot fail; NaN and infinities become null.
        let _ = serde_json::to_writer(&mut buf, &f);
        self.write(&buf)
    }

    fn string(&mut self, len: usize) -> Step {
        let bytes = self.take(len)?;
        let Ok(s) = std::str::from_utf8(bytes) else {
            return invalid("a string is not UTF-8");
        };
        if self.out.len() + s.len() + 2 > self.max_len {
            return Err(Refusal::TooLong);
        }
        // Escaping into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.out, s);
        if self.out.len() > self.max_len {
            return Err(Refusal::TooLong);
        }
        Ok(())
    }

    fn array(&mut self, n: usize, depth: usize) -> Step {
        self.write(b"[")?;
        for i in 0..n {
            if i > 0 {
                self.write(b",")?;
            }
            self.value(depth + 1)?;
        }
        self.write(b"]")
    }

    fn map(&mut self, n: usize, depth: usize) -> Step {
        self.write(b"{")?;
        for i in 0..n {
            if i > 0 {
                self.write(b",")?;
            }
            self.key()?;
            self.write(b":")?;
            self.value(depth + 1)?;
        }
        self.write(b"}")
    }

    /// A map key: a string, or an integer written as a string.
    fn key(&mut self) -> Step {
        let m = self.byte()?;
        match m {
            0xa0..=0xbf => self.string(usize::from(m & 0x1f)),
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                self.string(n)
            }
            0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => {
                self.pos -= 1;
                self.write(b"\"")?;
                self.value(0)?;
                self.write(b"\"")
            }
            _ => invalid("a map key must be a string or an integer"),
        }
    }

    fn bin(&mut self, n: usize) -> Step {
        let bytes = self.take(n)?;
        self.write(b"[")?;
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                self.write(b",")?;
            }
            self.int(*b)?;
        }
        self.write(b"]")
    }

    fn value(&mut self, depth: usize) -> Step {
        if depth > self.max_depth {
            return Err(Refusal::TooDeep);
        }
        let m = self.byte()?;
        match m {
            0x00..=0x7f => self.int(m),
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth),
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth),
            0xa0..=0xbf => self.string(usize::from(m & 0x1f)),
            0xc0 => self.write(b"null"),
            0xc2 => self.write(b"false"),
            0xc3 => self.write(b"true"),
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                self.bin(n)
            }
            0xca => {
                let f = f32::from_be_bytes(self.be()?);
                self.float(f)
            }
            0xcb => {
                let f = f64::from_be_bytes(self.be()?);
                self.float(f)
            }
            0xcc => {
                let n = self.byte()?;
                self.int(n)
            }
            0xcd => {
                let n = u16::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xce => {
                let n = u32::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xcf => {
                let n = u64::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xd0 => {
                let n = i8::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xd1 => {
                let n = i16::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xd2 => {
                let n = i32::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xd3 => {
                let n = i64::from_be_bytes(self.be()?);
                self.int(n)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                self.string(n)
            }
            0xdc | 0xdd => {
                let n = self.len(if m == 0xdc { 2 } else { 4 })?;
                self.array(n, depth)
            }
            0xde | 0xdf => {
                let n = self.len(if m == 0xde { 2 } else { 4 })?;
                self.map(n, depth)
            }
            0xe0..=0xff => self.int(m as i8),
            0xc7..=0xc9 | 0xd4..=0xd8 => invalid("extension types have no JSON form"),
            0xc1 => invalid("0xc1 is never used"),
        }
    }
}
