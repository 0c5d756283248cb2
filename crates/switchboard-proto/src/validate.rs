//! One JSON value's grammar, checked by hand in one pass: what serde_json checks when
//! it reads a value as raw text, without its deserializer's machinery (for a small
//! RPC payload about a quarter of the instructions).
//!
//! It accepts only what serde_json accepts. It may refuse more (a value nested deeper
//! than its limit): a caller then leaves the text to serde_json, which reads it or
//! explains what is wrong. Like serde_json reading raw text, it checks that a `\u`
//! escape has four hex digits, not which code point they name.

use crate::scan::skip_whitespace;

/// The deepest nesting [`value_end`] follows: which containers are open is kept as
/// one bit each in a `u128`. serde_json's own recursion limit is 128 as well.
const MAX_TRACKED_DEPTH: usize = 128;

/// The bytes that end a run of ordinary string bytes: the closing quote, a backslash,
/// and the control characters JSON does not allow unescaped.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_le_bytes([1; 8]);
/// The high bit of every byte of a word.
const HIGH_BITS: u64 = ONES << 7;

/// The index of the first byte at or after `at` that ends a run of ordinary string
/// bytes (see [`STRING_STOP`]), or `b.len()`. Eight bytes are checked at a time, so a
/// long string costs about a quarter of what a byte at a time does.
pub(crate) fn run_end(b: &[u8], mut at: usize) -> usize {
    // Most strings (keys, ids, short values) end within a few bytes: those are looked
    // at one by one, which costs them less than a word would.
    let head = b.get(at..b.len().min(at + 8)).unwrap_or_default();
    if let Some(stop) = head.iter().position(|&c| STRING_STOP[usize::from(c)]) {
        return at + stop;
    }
    at += head.len();
    let rest = b.get(at..).unwrap_or_default();
    for word in rest.chunks_exact(8) {
        // Always eight bytes; a zero word (never used) would stop the run here.
        let word = <[u8; 8]>::try_from(word).unwrap_or_default();
        if may_stop(u64::from_le_bytes(word)) {
            break;
        }
        at += 8;
    }
    while b.get(at).is_some_and(|&c| !STRING_STOP[usize::from(c)]) {
        at += 1;
    }
    at
}

/// Whether a word of eight string bytes may hold a quote, a backslash or a control
/// character: never false when it does (it may be true when it does not, and the
/// caller then looks byte by byte).
fn may_stop(word: u64) -> bool {
    // A byte of `x` that is zero sets its high bit in `x - ONES` and not in `x`; a borrow
    // can only add such bits above a zero byte, never hide one.
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    // Below 0x20: subtracting 0x20 borrows into the high bit, which the byte lacks.
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    quote | backslash | control != 0
}

/// The index after the JSON value that starts at `at` in `b` (the bytes of a `str`),
/// when it is valid and nests no deeper than `max_depth` containers (and 128 at
/// most); `None` otherwise. Whatever follows the value is the caller's to check.
pub(crate) fn value_end(b: &[u8], at: usize, max_depth: usize) -> Option<usize> {
    let max_depth = max_depth.min(MAX_TRACKED_DEPTH);
    // The open containers, the innermost in the lowest bit: 1 an object, 0 an array.
    let mut open: u128 = 0;
    let mut depth = 0;
    let mut i = at;
    loop {
        // A value starts at `i`.
        match *b.get(i)? {
            b'"' => i = string_end(b, i)?,
            c @ (b'{' | b'[') => {
                if depth == max_depth {
                    return None;
                }
                let object = c == b'{';
                depth += 1;
                open = open << 1 | u128::from(object);
                i = skip_whitespace(b, i + 1);
                if b.get(i) != Some(if object { &b'}' } else { &b']' }) {
                    // The first member or element.
                    if object {
                        i = member_value(b, i)?;
                    }
                    continue;
                }
                // Empty: closed at once, a whole value; what follows it is read below.
                depth -= 1;
                open >>= 1;
                i += 1;
            }
            b't' => i = literal_end(b, i, b"true")?,
            b'f' => i = literal_end(b, i, b"false")?,
            b'n' => i = literal_end(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            _ => return None,
        }
        // After a value: close what it ends, or go on to the next member or element.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = skip_whitespace(b, i);
            let object = open & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i = skip_whitespace(b, i + 1);
                    if object {
                        i = member_value(b, i)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            depth -= 1;
            open >>= 1;
            i += 1;
        }
    }
}

/// A member's key and colon, starting at `at`: the index where its value starts.
fn member_value(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let i = skip_whitespace(b, string_end(b, at)?);
    if b.get(i) != Some(&b':') {
        return None;
    }
    Some(skip_whitespace(b, i + 1))
}

/// The index after the string whose opening quote is at `at`: its escapes well formed
/// and no control character in it.
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i = run_end(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            _ => return None, // a control character
        }
    }
}

/// The index after the number that starts at `at`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    if b[i] == b'-' {
        i += 1;
    }
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits_end(b, i + 1),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = some_digits_end(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = some_digits_end(b, i)?;
    }
    Some(i)
}

/// The index after the digits from `at` (none is fine).
fn digits_end(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// The index after the digits from `at`, when there is at least one.
fn some_digits_end(b: &[u8], at: usize) -> Option<usize> {
    let end = digits_end(b, at);
    (end > at).then_some(end)
}

/// The index after `word` when the text at `at` is it.
fn literal_end(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at + word.len();
    (b.get(at..end)? == word).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// The value's length when the whole text is one valid value (whitespace around it
    /// allowed), as a caller checks what follows.
    fn whole(text: &str, max_depth: usize) -> Option<usize> {
        let b = text.as_bytes();
        let start = skip_whitespace(b, 0);
        let end = value_end(b, start, max_depth)?;
        (skip_whitespace(b, end) == b.len()).then_some(end - start)
    }

    #[test]
    fn valid_values_are_read_to_their_end() {
        for text in [
            "0",
            "-0",
            "-0.5e-3",
            "12E+4",
            "1.25",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a\"b\\c\/d\b\f\n\r\t\u00e9\uD800é""#,
            "[]",
            "{}",
            " [ 1 , [ ] , { } , \"x\" ] ",
            r#"{"a":{"b":[1,{"c":null}]},"d" : "e"}"#,
            "{\"k\"\n:\t[true,false]}",
        ] {
            assert_eq!(whole(text, 64), Some(text.trim().len()), "{text:?}");
            assert!(serde_json::from_str::<&RawValue>(text).is_ok());
        }
    }

    #[test]
    fn invalid_values_are_refused() {
        for text in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "True",
            "\"open",
            "\"tab\there\"",
            r#""\x""#,
            r#""\u12g4""#,
            r#""\u12""#,
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":}",
            "{1:2}",
            "[}",
            "{]",
            "[[]",
            "'a'",
        ] {
            assert_eq!(whole(text, 64), None, "{text:?}");
            assert!(serde_json::from_str::<&RawValue>(text).is_err());
        }
    }

    #[test]
    fn a_run_ends_at_the_first_quote_backslash_or_control_byte_wherever_it_lies() {
        let ordinary = "abcdefghijklmnopqrstuvwxyz0123456789é ~!#";
        for stop in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..ordinary.len() {
                if !ordinary.is_char_boundary(at) {
                    continue;
                }
                let text = format!("{}{stop}{}", &ordinary[..at], &ordinary[at..]);
                assert_eq!(run_end(text.as_bytes(), 0), at, "{text:?}");
            }
        }
        assert_eq!(run_end(ordinary.as_bytes(), 0), ordinary.len());
        assert_eq!(run_end(b"ab\"c", 0), 2);
        assert_eq!(run_end(b"ab\"c", 3), 4, "from past the quote, to the end");
        assert_eq!(run_end(b"", 0), 0);
        // Bytes of 0x20 and above, 0x7f and the UTF-8 range among them, never stop a run.
        let all: Vec<u8> = (0x20..=0xffu8)
            .filter(|&c| c != b'"' && c != b'\\')
            .collect();
        assert_eq!(run_end(&all, 0), all.len());
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(whole(&nested(3), 3).is_some());
        assert!(whole(&nested(4), 3).is_none());
        assert!(whole(&nested(128), 500).is_some());
        assert!(whole(&nested(129), 500).is_none(), "128 tracked at most");
        assert!(whole(r#"{"a":[{"b":[]}]}"#, 4).is_some());
        assert!(whole(r#"{"a":[{"b":[[]]}]}"#, 4).is_none());
    }

    /// On texts made of JSON's pieces strung at random: what is accepted serde_json
    /// reads as raw text of the same length, and what is refused it refuses.
    #[test]
    fn accepts_only_what_serde_json_accepts() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"a\"",
            "\"\\n\"",
            "\"\\u00e9\"",
            "\"é\"",
            "1",
            "-0.5",
            "2e9",
            "0",
            "true",
            "null",
            "\"",
            "\\",
            "\n",
            "x",
            "-",
            ".",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let text: String = (0..1 + next(12))
                .map(|_| pieces[next(pieces.len())])
                .collect();
            match whole(&text, 128) {
                Some(len) => {
                    accepted += 1;
                    let raw: &RawValue = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("accepted {text:?}: serde says {e}"));
                    assert_eq!(raw.get().len(), len, "{text:?}");
                }
                None => {
                    refused += 1;
                    assert!(
                        serde_json::from_str::<&RawValue>(&text).is_err(),
                        "refused valid {text:?}"
                    );
                }
            }
        }
        assert!(
            accepted > 2_000 && refused > 2_000,
            "{accepted} accepted, {refused} refused"
        );
    }
}
