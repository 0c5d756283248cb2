//! How deep a payload nests: [`nests_deeper_than`], the check behind
//! `INVALID_PAYLOAD`'s "nested deeper than 64 levels".
//!
//! Counting the brackets settles nearly every payload (fewer opening brackets than the
//! limit cannot nest deeper). A bracket-heavy one (a list of records, say) is walked 64
//! bytes at a time, the way simdjson finds structure: the quotes, backslashes and
//! brackets of a block become bit masks (eight bytes per word, no `unsafe`), a prefix
//! XOR of the quotes marks what lies inside strings, and only the brackets outside
//! strings count. A block whose brackets cannot reach the limit moves the depth by
//! their counts; one that can is walked bracket by bracket. A block with a backslash
//! (an escape, which may hide a quote) is walked byte by byte, as is the tail.

/// Each byte's low seven bits.
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// One in each byte.
const ONES: u64 = 0x0101_0101_0101_0101;

/// True if valid JSON `text` nests objects and arrays deeper than `limit`.
///
/// Public for `switchboard-parsers` (the benchmark that times it); not part of the API.
///
/// ```
/// use switchboard_proto::envelope::nests_deeper_than;
/// assert!(!nests_deeper_than(r#"{"a":[1,{"b":"[[["}]}"#, 3));
/// assert!(nests_deeper_than(r#"{"a":[1,{"b":[]}]}"#, 3));
/// ```
#[doc(hidden)]
pub fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    // Nesting deeper than `limit` takes `limit + 1` opening brackets and as many
    // closing ones: a shorter text (most payloads) cannot.
    if bytes.len() < limit.saturating_add(1).saturating_mul(2) {
        return false;
    }
    let opening = bytes.iter().filter(|&&b| b == b'{' || b == b'[').count();
    if opening <= limit {
        return false;
    }
    let mut walk = Walk::default();
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        if walk.block(block, limit) {
            return true;
        }
    }
    walk.bytes(blocks.remainder(), limit)
}

/// Where a walk through the text stands between blocks.
#[derive(Debug, Default)]
struct Walk {
    depth: usize,
    in_string: bool,
    /// The last byte was a backslash inside a string.
    escaped: bool,
}

impl Walk {
    /// Walks 64 bytes; true once the depth passes `limit`.
    fn block(&mut self, block: &[u8], limit: usize) -> bool {
        let (mut quotes, mut backslashes, mut opens, mut closes) = (0u64, 0u64, 0u64, 0u64);
        for (i, chunk) in block.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let word = u64::from_le_bytes(word);
            let at = 8 * i;
            quotes |= gather(equal(word, b'"')) << at;
            backslashes |= gather(equal(word, b'\\')) << at;
            // `[` and `{` differ only in bit 0x20, as do `]` and `}`; no other byte
            // becomes either with that bit set.
            let folded = word | (ONES * 0x20);
            opens |= gather(equal(folded, b'{')) << at;
            closes |= gather(equal(folded, b'}')) << at;
        }
        if backslashes != 0 || self.escaped {
            return self.bytes(block, limit);
        }
        // Bit i: byte i is inside a string (an opening quote counts as inside, a
        // closing one as outside).
        let mut inside = prefix_xor(quotes);
        if self.in_string {
            inside = !inside;
        }
        self.in_string = inside >> 63 == 1;
        let (opens, closes) = (opens & !inside, closes & !inside);
        let opened = opens.count_ones() as usize;
        if self.depth + opened <= limit {
            // Valid JSON never closes more than it opened.
            self.depth = (self.depth + opened).saturating_sub(closes.count_ones() as usize);
            return false;
        }
        let mut brackets = opens | closes;
        while brackets != 0 {
            let bit = 1u64 << brackets.trailing_zeros();
            if opens & bit != 0 {
                self.depth += 1;
                if self.depth > limit {
                    return true;
                }
            } else {
                self.depth = self.depth.saturating_sub(1);
            }
            brackets &= brackets - 1;
        }
        false
    }

    /// Walks `bytes` one at a time; true once the depth passes `limit`.
    fn bytes(&mut self, bytes: &[u8], limit: usize) -> bool {
        for &b in bytes {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > limit {
                        return true;
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }
}

/// The high bit of each byte of `word` that equals `byte`, nothing else.
fn equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    // A byte's high bit ends up set unless all of its bits are zero; no carry crosses
    // bytes (0x7f + 0x7f < 0x100).
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The high bits of a word's eight bytes as eight bits, byte 0 lowest.
fn gather(high_bits: u64) -> u64 {
    // Bit 8k moves to 56 + k; the eight products never overlap or carry.
    ((high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Bit i: the XOR of bits 0 to i.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest nesting of valid JSON `text`, byte by byte.
    fn max_depth(text: &str) -> usize {
        let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
        for b in text.bytes() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => {
                        depth += 1;
                        max = max.max(depth);
                    }
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
            }
        }
        max
    }

    /// A small deterministic generator (xorshift), so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A string literal full of what a walk could mistake: brackets, escaped quotes,
    /// backslashes, escapes at any position, multi-byte characters.
    /// `escapes`: whether it may hold escapes (blocks with a backslash are walked byte
    /// by byte; without, the masks do the work).
    fn string(rng: &mut Rng, escapes: bool, out: &mut String) {
        out.push('"');
        for _ in 0..rng.below(40) {
            match rng.below(9) {
                2..=4 if !escapes => out.push('x'),
                0 => out.push('['),
                1 => out.push('}'),
                2 => out.push_str("\\\""),
                3 => out.push_str("\\\\"),
                4 => out.push_str("\\u005b"),
                5 => out.push('é'),
                6 => out.push('{'),
                7 => out.push(']'),
                _ => out.push('x'),
            }
        }
        out.push('"');
    }

    fn value(rng: &mut Rng, escapes: bool, depth: usize, out: &mut String) {
        let nest = depth < 70 && rng.below(10) < 6;
        match (nest, rng.below(2)) {
            (true, 0) => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    value(rng, escapes, depth + 1, out);
                }
                out.push(']');
            }
            (true, _) => {
                out.push('{');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    string(rng, escapes, out);
                    out.push(':');
                    value(rng, escapes, depth + 1, out);
                }
                out.push('}');
            }
            (false, 0) => string(rng, escapes, out),
            (false, _) => {
                out.push_str(["1", "true", "null", "-2.5e3", "[]", "{}"][rng.below(6) as usize])
            }
        }
    }

    #[test]
    fn the_block_walk_agrees_with_a_byte_walk_at_every_limit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut walked = 0;
        for i in 0..4000 {
            let mut text = String::new();
            value(&mut rng, i % 2 == 0, 0, &mut text);
            assert!(
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "{text}"
            );
            let depth = max_depth(&text);
            for limit in 0..=depth + 1 {
                assert_eq!(
                    nests_deeper_than(&text, limit),
                    depth > limit,
                    "limit {limit}, depth {depth}: {text}"
                );
            }
            walked += usize::from(text.len() >= 64);
        }
        assert!(walked > 1000, "long texts walked by blocks: {walked}");
    }

    #[test]
    fn the_shortest_text_deep_enough_is_caught() {
        // `limit + 1` levels take exactly `2 * (limit + 1)` bytes: the length check
        // lets it through to the walk.
        for limit in 0..80 {
            let deep = format!("{}{}", "[".repeat(limit + 1), "]".repeat(limit + 1));
            assert!(nests_deeper_than(&deep, limit), "{limit}");
            let level = format!("{}{}", "[".repeat(limit), "]".repeat(limit));
            assert!(!nests_deeper_than(&level, limit), "{limit}");
        }
        assert!(!nests_deeper_than("", usize::MAX));
    }

    #[test]
    fn strings_across_block_edges_hide_their_brackets() {
        // A string opened in one block and closed in the next, full of brackets.
        for pad in 0..70 {
            let text = format!(
                r#"{{"p":"{}","s":"{}","a":[[[1]]]}}"#,
                "x".repeat(pad),
                "[{".repeat(40)
            );
            assert!(!nests_deeper_than(&text, 4), "{pad}");
            assert!(nests_deeper_than(&text, 3), "{pad}");
            // An escaped quote right at a block's end does not close the string.
            let text = format!(
                r#"{{"p":"{}\"{}","a":[[[1]]]}}"#,
                "x".repeat(pad),
                "[".repeat(70)
            );
            assert!(!nests_deeper_than(&text, 4), "{pad}");
        }
    }

    #[test]
    fn the_word_helpers_match_byte_by_byte() {
        let mut rng = Rng(7);
        for _ in 0..10_000 {
            let mut bytes = [0u8; 8];
            for b in &mut bytes {
                *b = [b'"', b'\\', b'[', b'x', 0, 0xff, 0x80, b'{'][rng.below(8) as usize];
            }
            let word = u64::from_le_bytes(bytes);
            for c in [b'"', b'\\', b'[', 0u8, 0xff] {
                let expected = bytes
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (i, &b)| m | (u64::from(b == c) << i));
                assert_eq!(gather(equal(word, c)), expected, "{bytes:?} {c}");
            }
        }
        assert_eq!(prefix_xor(0b1001), 0b0111);
        assert_eq!(prefix_xor(1 << 63), 1 << 63);
    }
}
