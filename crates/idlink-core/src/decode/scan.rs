//! The fast path of decoding: a scanner for the shape nearly every input
//! line has, one flat JSON object whose values are strings without
//! escapes, small non-negative integers, `null`, `true` or `false`.
//!
//! serde_json stays the reference. Whatever the scanner is not sure of (an
//! escape, a nested value, a fraction, a negative number, a known field
//! given twice, malformed JSON) makes it answer `None`, and the line goes
//! through serde_json as before. Where it answers, it answers exactly what
//! serde_json would: the property `the_fast_path_agrees_with_serde_json`
//! and the decode fuzz target compare the two on arbitrary input. The
//! point is speed: serde_json's field and value visitors, not its string
//! scanning, were most of its cost on these short, flat objects.

use super::{Field, Raw, last_block};

/// Longest integer the scanner reads: 18 digits always fit an `i64`.
const MAX_DIGITS: usize = 18;

/// Bytes that [`first_special`] examines at once.
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 16;
/// Bytes that [`first_special`] examines at once.
#[cfg(not(target_arch = "x86_64"))]
const BLOCK: usize = 8;

/// Where the first byte that ends or interrupts a plain string (a quote,
/// a backslash or a control character) is in `block`: three SSE2
/// compares of all sixteen bytes.
#[cfg(target_arch = "x86_64")]
fn first_special(block: &[u8; BLOCK]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };
    let bits = u128::from_le_bytes(*block);
    // SAFETY: SSE2 is part of the x86_64 baseline, so these instructions
    // exist on every processor this code runs on; they work on registers
    // only and touch no memory.
    let marks = unsafe {
        let x = _mm_set_epi64x((bits >> 64) as i64, bits as i64);
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20, unsigned: the byte is its own minimum with 0x1f.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
    };
    (marks != 0).then(|| marks.trailing_zeros() as usize)
}

/// Where the first byte that ends or interrupts a plain string (a quote,
/// a backslash or a control character) is in `block`, eight bytes in one
/// integer. A borrow can mark bytes above the first, never below it.
#[cfg(not(target_arch = "x86_64"))]
fn first_special(block: &[u8; BLOCK]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = u64::from_le_bytes(*block);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let marks = quote | backslash | control;
    (marks != 0).then(|| marks.trailing_zeros() as usize / 8)
}

/// The known fields' keys, in the order of [`slot`].
const KNOWN: [&str; 8] = [
    "ts",
    "kind",
    "device_id",
    "ip",
    "account_id",
    "event_id",
    "source",
    "user_agent",
];

/// The field of `raw` that known field `i` (a position in [`KNOWN`]) fills.
fn slot<'r, 'a>(raw: &'r mut Raw<'a>, i: usize) -> &'r mut Option<Field<'a>> {
    match i {
        0 => &mut raw.ts,
        1 => &mut raw.kind,
        2 => &mut raw.device_id,
        3 => &mut raw.ip,
        4 => &mut raw.account_id,
        5 => &mut raw.event_id,
        6 => &mut raw.source,
        _ => &mut raw.user_agent,
    }
}

/// Scans `text` as one flat JSON object into `raw`, which starts empty;
/// `None` hands the text to serde_json (and leaves `raw` partly filled).
pub(super) fn scan<'a>(text: &'a str, raw: &mut Raw<'a>) -> Option<()> {
    let mut c = Cursor {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    // Which known fields were seen: serde_json rejects a known field given
    // twice, so a repeat goes to it for the error.
    let mut seen = 0u8;
    c.skip_ws();
    c.eat(b'{')?;
    c.skip_ws();
    if c.eat(b'}').is_none() {
        loop {
            let known = match c.plain_known_key() {
                Some(field) => Some(field),
                None => {
                    c.eat(b'"')?;
                    let key = c.string_body()?;
                    c.skip_ws();
                    c.eat(b':')?;
                    KNOWN.iter().position(|&k| k == key)
                }
            };
            c.skip_ws();
            let value = c.value()?;
            // Unknown fields are ignored, as the contract says.
            if let Some(field) = known {
                if seen & (1 << field) != 0 {
                    return None;
                }
                seen |= 1 << field;
                *slot(raw, field) = value;
            }
            c.skip_ws();
            if c.eat(b'}').is_some() {
                break;
            }
            c.eat(b',')?;
            c.skip_ws();
        }
    }
    c.skip_ws();
    (c.at == c.bytes.len()).then_some(())
}

/// A position in the text being scanned.
struct Cursor<'a> {
    /// The whole text, for borrowing string values out of it.
    text: &'a str,
    /// The same text as bytes, for scanning.
    bytes: &'a [u8],
    /// The next byte to read.
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A known field's key written plainly with its colon right after
    /// (`"ts":`), read by one compare of the bytes; moves past the colon.
    /// The known keys start with eight different letters, so the letter
    /// after the quote picks the one candidate. `None` (another key,
    /// spaces, an escape) leaves the member to the general path.
    fn plain_known_key(&mut self) -> Option<usize> {
        /// The length of `pattern` if `rest` starts with it, compared as
        /// one array of a size known to the compiler.
        fn plain<const N: usize>(rest: &[u8], pattern: &[u8; N]) -> Option<usize> {
            (rest.first_chunk::<N>() == Some(pattern)).then_some(N)
        }
        let rest = &self.bytes[self.at..];
        let (field, len) = match rest.get(1)? {
            b't' => (0, plain(rest, b"\"ts\":")?),
            b'k' => (1, plain(rest, b"\"kind\":")?),
            b'd' => (2, plain(rest, b"\"device_id\":")?),
            b'i' => (3, plain(rest, b"\"ip\":")?),
            b'a' => (4, plain(rest, b"\"account_id\":")?),
            b'e' => (5, plain(rest, b"\"event_id\":")?),
            b's' => (6, plain(rest, b"\"source\":")?),
            b'u' => (7, plain(rest, b"\"user_agent\":")?),
            _ => return None,
        };
        self.at += len;
        Some(field)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// Skips JSON whitespace (not Unicode's: serde_json rejects the rest).
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string's body after its opening quote, if it has no escape and
    /// no control character; moves past the closing quote. Inlined: it
    /// runs for every key and value, and its call cost was a fifth of it.
    #[inline(always)]
    fn string_body(&mut self) -> Option<&'a str> {
        let start = self.at;
        let rest = &self.bytes[start..];
        // A block at a time while it holds nothing special; most strings
        // here are shorter than the set-up of a longer vectorized search.
        // The line's last few bytes, fewer than a block, are read as the
        // line's last whole block, which overlaps bytes already found
        // plain; a line shorter than a block is padded with plain bytes.
        let (blocks, _) = rest.as_chunks::<BLOCK>();
        let found = blocks
            .iter()
            .enumerate()
            .find_map(|(i, block)| Some(i * BLOCK + first_special(block)?));
        let len = match found {
            Some(len) => len,
            None => {
                let (last, at) = last_block::<BLOCK>(rest, b'a');
                at + first_special(&last)?
            }
        };
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        // Quotes are ASCII, so both ends are character boundaries (two
        // inlined splits; `str::get` with a range was an out-of-line call).
        let (head, _) = self.text.split_at_checked(start + len)?;
        let (_, body) = head.split_at_checked(start)?;
        self.at = start + len + 1;
        Some(body)
    }

    /// A value, as serde_json gives it to an `Option<Field>`: `null` is
    /// `None`.
    fn value(&mut self) -> Option<Option<Field<'a>>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                Some(Some(Field::Str(self.string_body()?)))
            }
            b'0'..=b'9' => self.integer().map(|n| Some(Field::Int(n))),
            b'n' => self.literal("null").map(|()| None),
            b't' => self
                .literal("true")
                .map(|()| Some(Field::Other("a boolean"))),
            b'f' => self
                .literal("false")
                .map(|()| Some(Field::Other("a boolean"))),
            _ => None,
        }
    }

    /// A non-negative integer of at most [`MAX_DIGITS`] digits without a
    /// leading zero (which JSON forbids), not followed by a fraction or
    /// an exponent.
    fn integer(&mut self) -> Option<i64> {
        let rest = &self.bytes[self.at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_DIGITS || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        if matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let n = rest[..digits]
            .iter()
            .fold(0i64, |n, &b| n * 10 + i64::from(b - b'0'));
        self.at += digits;
        Some(n)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Parsed;
    use super::*;
    use proptest::prelude::*;

    /// What the scanner makes of the text.
    fn scanned(text: &str) -> Option<Raw<'_>> {
        let mut raw = Raw::default();
        scan(text, &mut raw).map(|()| raw)
    }

    /// What serde_json makes of the text, the reference.
    fn reference(text: &str) -> Option<Parsed<'_>> {
        serde_json::from_str(text).ok()
    }

    /// Whether the scanner, where it answers, answers what serde_json does.
    fn agrees(text: &str) -> Result<(), TestCaseError> {
        if let Some(fast) = scanned(text) {
            let parsed = reference(text);
            prop_assert_eq!(Some(fast), parsed.as_ref().map(Parsed::view), "{:?}", text);
        }
        Ok(())
    }

    #[test]
    fn common_lines_take_the_fast_path() {
        for line in [
            r#"{"ts":"2026-01-05T00:00:20.629Z","kind":"widget_view","device_id":"9XHrfTIWQ6nni6vKUuSSvr","ip":"90.98.57.150","event_id":"ev-38a6feda49bf1bfe","source":"web","user_agent":"python-requests/2.31.0"}"#,
            r#"{"ts": 1767632400000, "kind": "login", "device_id": "gerät-ü", "ip": "2a02::1", "account_id": "a", "extra": [1, {"x": 2}]}"#,
            "  {\"ts\":1767632400000,\t\"kind\":null,\"x\":true,\"y\":false}\r\n",
            "{}",
        ] {
            let fast = scanned(line);
            // The array of an unknown field is not scanned.
            if line.contains('[') {
                assert_eq!(fast, None);
                continue;
            }
            assert!(fast.is_some(), "{line}");
            assert_eq!(fast, reference(line).as_ref().map(Parsed::view), "{line}");
        }
    }

    #[test]
    fn every_known_key_written_plainly_is_read_in_one_compare() {
        for (i, key) in KNOWN.iter().enumerate() {
            let member = format!("\"{key}\":1");
            let mut c = Cursor {
                text: &member,
                bytes: member.as_bytes(),
                at: 0,
            };
            assert_eq!(c.plain_known_key(), Some(i), "{key}");
            assert_eq!(c.peek(), Some(b'1'), "{key}");
            let mut raw = Raw::default();
            *slot(&mut raw, i) = Some(Field::Int(1));
            assert_eq!(scanned(&format!("{{{member}}}")), Some(raw), "{key}");
        }
        for member in [r#""ts" :1"#, r#""tsx":1"#, r#""t\u0073":1"#, r#""x":1"#] {
            let mut c = Cursor {
                text: member,
                bytes: member.as_bytes(),
                at: 0,
            };
            assert_eq!(c.plain_known_key(), None, "{member}");
        }
    }

    #[test]
    fn what_it_is_unsure_of_goes_to_serde_json() {
        for line in [
            r#"{"ts":"a\"b"}"#,
            r#"{"t\u0073":1}"#,
            r#"{"ts":1,"ts":2}"#,
            r#"{"ts":-5}"#,
            r#"{"ts":01}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":1e3}"#,
            r#"{"ts":1234567890123456789}"#,
            r#"{"ts":1,}"#,
            r#"{"ts":1} x"#,
            r#"{"ts":nul}"#,
            "{\"ts\":\"a\u{1}b\"}",
            "\u{feff}{}",
            r#"{"ts":1"#,
        ] {
            assert_eq!(scanned(line), None, "{line}");
        }
    }

    /// A JSON value, valid or nearly so, of the kinds input carries.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-z0-9:. -]{0,12}".prop_map(|s| format!("\"{s}\"")),
            2 => "[ -~\\\\\u{1}\u{7f}\u{e9}\u{2028}]{0,24}".prop_map(|s| format!("\"{s}\"")),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            3 => (0u64..2_000_000_000_000_000).prop_map(|n| n.to_string()),
            2 => prop::sample::select(vec![
                "null", "true", "false", "nul", "truex", "0", "00", "01", "-0", "1.5", "2e3",
                "1E+2", "[]", "[1,\"a\"]", "{}", "{\"a\":{}}", "\"", "", "9223372036854775808",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// A key: mostly the contract's fields, sometimes unknown or escaped.
    fn key() -> impl Strategy<Value = String> {
        let others = ["x", "TS", "t\\u0073", "", "ü"];
        prop::sample::select(KNOWN.iter().chain(&others).copied().collect::<Vec<_>>())
            .prop_map(|k| format!("\"{k}\""))
    }

    /// JSON whitespace, sometimes other characters a producer might emit.
    fn space() -> impl Strategy<Value = String> {
        prop_oneof![
            30 => Just(""),
            6 => prop::sample::select(vec![" ", "\t", "\r\n"]),
            1 => prop::sample::select(vec!["\u{a0}", "x"]),
        ]
        .prop_map(str::to_owned)
    }

    /// An object of such members, then a few random edits.
    fn line() -> impl Strategy<Value = String> {
        let member = (key(), space(), space(), value(), space());
        (
            space(),
            prop::collection::vec(member, 0..10),
            prop::sample::select(vec![",", ",", ",", ",", ",", ",", ",", ";", ",,"]),
            space(),
            prop_oneof![
                4 => Just(vec![]),
                1 => prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..3),
            ],
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(lead, members, sep, tail, edits, cut, do_cut)| {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, s1, s2, v, s3)| format!("{k}{s1}:{s2}{v}{s3}"))
                    .collect();
                let mut text = format!("{lead}{{{}}}{tail}", body.join(sep));
                for (at, ch) in edits {
                    let mut i = at.index(text.len() + 1);
                    while !text.is_char_boundary(i) {
                        i -= 1;
                    }
                    text.insert(i, ch);
                }
                if do_cut {
                    let mut i = cut.index(text.len() + 1);
                    while !text.is_char_boundary(i) {
                        i -= 1;
                    }
                    text.truncate(i);
                }
                text
            })
    }

    /// The generated lines reach both paths, so the property below is not
    /// vacuous.
    #[test]
    fn the_generated_lines_reach_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let total = 4000;
        let fast = (0..total)
            .filter(|_| {
                let text = line().new_tree(&mut runner).map(|t| t.current());
                scanned(&text.unwrap_or_default()).is_some()
            })
            .count();
        assert!(
            fast * 10 > total && fast * 10 < total * 9,
            "{fast} of {total} lines took the fast path"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A block's first mark is its first quote, backslash or control
        /// byte.
        #[test]
        fn the_first_mark_is_the_first_special_byte(
            block in prop::array::uniform16(prop_oneof![
                1 => Just(b'"'),
                1 => Just(b'\\'),
                2 => any::<u8>(),
                12 => b' '..=b'~',
            ])
        ) {
            let mut head = [0; BLOCK];
            head.copy_from_slice(&block[..BLOCK]);
            let first = head.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(first_special(&head), first);
        }

        /// Where the fast path answers, serde_json answers the same.
        #[test]
        fn the_fast_path_agrees_with_serde_json(text in line()) {
            agrees(&text)?;
        }

        /// The same on text with no structure at all.
        #[test]
        fn the_fast_path_agrees_on_any_text(text in "[{}\":,0-9a-z \\\\]{0,40}") {
            agrees(&text)?;
        }
    }
}
