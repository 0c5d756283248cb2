//! A fast reader for the plain JSON objects nearly every message is made of: keys
//! without escapes, and values that are plain strings or any valid JSON.
//!
//! serde_json reading an envelope into a struct matches every key through its visitor
//! machinery and, for a field kept as raw text, scans a string twice (once to find its
//! end, once to read it). This reads the object's structure by hand, hands out strings
//! without escapes as they stand, and every other value (a payload, a number, a string
//! with escapes) as its text, its grammar checked by hand in one pass.
//! Anything unusual (a key with an escape, a byte that is not JSON, a value nested
//! deeper than [`MAX_PAYLOAD_DEPTH`]) ends the fast path with `None`: the caller then
//! reads the text with serde_json, which explains what is wrong. So the fast path never
//! has to produce an error, only to be right about what it accepts.

use crate::limits::MAX_PAYLOAD_DEPTH;
use crate::validate::{run_end, value_end};

/// One member's value, as [`members`] reads it.
#[derive(Debug, Clone, Copy)]
pub enum Scanned<'a> {
    /// A string without escapes or control characters: its text between the quotes.
    Plain(&'a str),
    /// Any other JSON value (a string with escapes among them), validated: its text.
    Raw(&'a str),
}

impl<'a> Scanned<'a> {
    /// The string, when the value is a plain one.
    pub fn plain(self) -> Option<&'a str> {
        match self {
            Scanned::Plain(s) => Some(s),
            Scanned::Raw(_) => None,
        }
    }

    /// The value's raw text, when it is not a plain string.
    pub fn raw(self) -> Option<&'a str> {
        match self {
            Scanned::Raw(r) => Some(r),
            Scanned::Plain(_) => None,
        }
    }
}

/// Calls `each` with every member of the JSON object that `text` is, in order.
///
/// `None` when this fast path does not read the text: it is not one JSON object (with
/// JSON whitespace around it), a key has an escape, a value nests deeper than
/// [`MAX_PAYLOAD_DEPTH`], or `each` said `None`. What it accepts is valid JSON; what it
/// refuses may be valid too, and is for serde_json to read.
///
/// ```
/// use switchboard_proto::scan::members;
///
/// let mut seen = Vec::new();
/// let read = members(r#"{"type":"chat","payload":{"n":1}}"#, |key, value| {
///     seen.push((key, value));
///     Some(())
/// });
/// assert!(read.is_some());
/// assert_eq!((seen[0].0, seen[0].1.plain()), ("type", Some("chat")));
/// assert_eq!(seen[1].1.raw(), Some(r#"{"n":1}"#));
/// // A key with an escape is left to serde_json.
/// assert!(members(r#"{"typ\u0065":"chat"}"#, |_, _| Some(())).is_none());
/// ```
pub fn members<'a>(
    text: &'a str,
    each: impl FnMut(&'a str, Scanned<'a>) -> Option<()>,
) -> Option<()> {
    walk(
        text,
        |at| match plain_string(text, at) {
            Some((s, after)) => Some((Scanned::Plain(s), after)),
            None => {
                let end = value_end(text.as_bytes(), at, MAX_PAYLOAD_DEPTH)?;
                Some((Scanned::Raw(text.get(at..end)?), end))
            }
        },
        each,
    )
}

/// Calls `each` with every member of `text`, a JSON object already known to be valid
/// (a [`Payload`](crate::Payload)'s text), and each value's text as it stands: values
/// are skipped by their brackets and quotes, not validated again. `None` as for
/// [`members`] (a key with an escape, or `each` said `None`).
///
/// ```
/// use switchboard_proto::scan::{members_of_valid, plain};
///
/// let mut seen = Vec::new();
/// members_of_valid(r#"{"method":"add","params":{"a":[1,"]"]}}"#, |key, value| {
///     seen.push((key, value));
///     Some(())
/// });
/// assert_eq!(seen, [("method", r#""add""#), ("params", r#"{"a":[1,"]"]}"#)]);
/// assert_eq!(plain(seen[0].1), Some("add"));
/// ```
pub fn members_of_valid<'a>(
    text: &'a str,
    each: impl FnMut(&'a str, &'a str) -> Option<()>,
) -> Option<()> {
    walk(
        text,
        |at| {
            let end = skip_valid_value(text.as_bytes(), at)?;
            Some((text.get(at..end)?, end))
        },
        each,
    )
}

/// A JSON value's text, when it is a string without escapes or control characters:
/// the string.
pub fn plain(value: &str) -> Option<&str> {
    plain_string(value, 0).and_then(|(s, end)| (end == value.len()).then_some(s))
}

/// The object's structure, read by hand; each value read by `value` (which returns
/// it and the index after it).
fn walk<'a, V>(
    text: &'a str,
    mut value: impl FnMut(usize) -> Option<(V, usize)>,
    mut each: impl FnMut(&'a str, V) -> Option<()>,
) -> Option<()> {
    let b = text.as_bytes();
    let mut at = skip_whitespace(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_whitespace(b, at + 1);
    if b.get(at) == Some(&b'}') {
        return (skip_whitespace(b, at + 1) == b.len()).then_some(());
    }
    loop {
        let (key, after) = plain_string(text, at)?;
        at = skip_whitespace(b, after);
        if b.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(b, at + 1);
        let (v, after) = value(at)?;
        at = after;
        each(key, v)?;
        at = skip_whitespace(b, at);
        match b.get(at)? {
            b',' => at = skip_whitespace(b, at + 1),
            b'}' => return (skip_whitespace(b, at + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

/// The index after the value starting at `at` in valid JSON: a string to its closing
/// quote, an object or array to its closing bracket, anything else to the next `,`,
/// `}`, `]` or whitespace.
fn skip_valid_value(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'"' => i = skip_valid_string(b, i)?,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ if depth == 0 => {
                // A number or a literal.
                let len = b[i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                    .unwrap_or(b.len() - i);
                return Some(i + len);
            }
            _ => i += 1,
        }
        if depth == 0 {
            return Some(i);
        }
    }
}

/// The index after the string whose opening quote is at `at`, in valid JSON.
fn skip_valid_string(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i = run_end(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2, // an escape: the backslash and the byte it escapes
            _ => i += 1,     // a control character: not in valid JSON, passed over
        }
    }
}

/// The index of the first byte at or after `at` that is not JSON whitespace.
pub(crate) fn skip_whitespace(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(at) {
        at += 1;
    }
    at
}

/// The string starting at `at` (its opening quote), when it has no escape and no
/// control character: its text, and the index after its closing quote.
fn plain_string(text: &str, at: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = run_end(b, start);
    // Stopped at the closing quote, not at an escape or a control character (or the end).
    (b.get(end) == Some(&b'"')).then(|| (&text[start..end], end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        members(text, |k, v| {
            let v = match v {
                Scanned::Plain(s) => format!("plain:{s}"),
                Scanned::Raw(r) => format!("raw:{r}"),
            };
            out.push((k.to_owned(), v));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn plain_objects_are_read_member_by_member() {
        let got =
            read(" {\"a\" : \"x\" ,\n\"b\":[1, {\"c\":\"\\n\"}],\"d\":\"q\\\"\", \"e\":-1.5e3}\t")
                .unwrap();
        let want = [
            ("a", "plain:x"),
            ("b", r#"raw:[1, {"c":"\n"}]"#),
            ("d", r#"raw:"q\"""#),
            ("e", "raw:-1.5e3"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(read("{}"), Some(vec![]));
        assert_eq!(read(" { } "), Some(vec![]));
    }

    #[test]
    fn anything_not_plain_or_not_json_is_refused() {
        for text in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":1}x",
            "{\"a\":1}}",
            "{\"a\\n\":1}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":01}",
            "{\"a\":tru}",
            "{'a':1}",
            "\u{a0}{}",
            "{\"a\":1}\u{a0}",
        ] {
            assert_eq!(read(text), None, "{text:?}");
        }
    }

    /// Whatever the fast path reads, serde_json reads alike: the same members with the
    /// same values, on objects built from JSON's pieces, a fifth of them then broken
    /// by a piece put in at a random place.
    #[test]
    fn agrees_with_serde_json_on_generated_texts() {
        let keys = [
            "\"a\"",
            "\"b\"",
            "\"k\\\"\"",
            "\"\\u00e9\"",
            "\"é\"",
            "\"\"",
            "a",
        ];
        let values = [
            "\"x\"",
            "\"y\\n\"",
            "\"t\tab\"",
            "1",
            "-0.5",
            "1e9",
            "01",
            "-",
            "true",
            "nul",
            "null",
            "[1,[2]]",
            "[1,]",
            "{\"c\":{}}",
            "{\"c\":}",
            "\"é\"",
            "\"\\u00e9\"",
            "[]",
        ];
        let noise = ["{", "}", ",", ":", " ", "\"", "\\", "\n", "x", "\u{a0}"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut read_some, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::from(if next(8) == 0 { " {" } else { "{" });
            for i in 0..next(5) {
                if i > 0 {
                    text.push_str(if next(6) == 0 { " , " } else { "," });
                }
                text.push_str(keys[next(keys.len())]);
                text.push_str(if next(6) == 0 { " :\n" } else { ":" });
                text.push_str(values[next(values.len())]);
            }
            text.push('}');
            if next(5) == 0 {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, noise[next(noise.len())]);
            }
            let serde: Option<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(&text).ok();
            if let Some(map) = &serde {
                // On valid text, skipping values by their brackets finds the same ones.
                let mut last = std::collections::BTreeMap::new();
                let skipped = members_of_valid(&text, |k, v| {
                    let value: serde_json::Value = serde_json::from_str(v).unwrap();
                    last.insert(k.to_owned(), value);
                    Some(())
                });
                if skipped.is_some() {
                    assert_eq!(last.len(), map.len(), "{text:?}");
                    for (k, v) in &last {
                        assert_eq!(map.get(k), Some(v), "{text:?}");
                    }
                } else {
                    assert!(read(&text).is_none(), "{text:?}");
                }
            }
            let Some(ours) = read(&text) else {
                refused += 1;
                continue;
            };
            read_some += 1;
            let serde = serde.unwrap_or_else(|| panic!("accepted invalid {text:?}"));
            // serde's map keeps the last of a repeated key: compare the last of each.
            let mut last = std::collections::BTreeMap::new();
            for (k, v) in &ours {
                let value: serde_json::Value = match v.split_once(':') {
                    Some(("plain", s)) => serde_json::Value::String(s.to_owned()),
                    Some((_, raw)) => serde_json::from_str(raw).unwrap(),
                    None => unreachable!(),
                };
                last.insert(k.clone(), value);
            }
            assert_eq!(last.len(), serde.len(), "{text:?}");
            for (k, v) in &last {
                assert_eq!(serde.get(k), Some(v), "{text:?}");
            }
        }
        assert!(
            read_some > 3_000 && refused > 3_000,
            "{read_some} read, {refused} refused"
        );
    }
}
