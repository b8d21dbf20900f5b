//! The first try at a record: a hand-written scanner for the plain JSON most records are, about
//! 1.5 times faster than the serde_json visitor of [`super`] (the engine bench's records, on
//! one thread: 115-124 against 192 ns each; docs/benchmarks.md, session 22).
//!
//! It reads what the visitor reads, the same way, or gives up: [`FieldTree::scan`] returns
//! `false` on anything it does not handle, and the record is then read by the visitor from the
//! start, which also gives every error its message. It gives up on
//! - anything that is not valid JSON (the visitor says why);
//! - an escape (`\`) in a key or in a string the job reads (the visitor unescapes it), and `\u`
//!   in any string (the scanner does not check its surrogates);
//! - a number the job reads that is not an integer of at most 18 digits or a decimal of at most
//!   15 significant digits and exponent within ±22 (the only ones it parses; those it parses
//!   exactly, as one correctly rounded operation, so they are the f64 serde_json's
//!   `float_roundtrip` reading gives), a `-0`, and a fraction in an exact slot;
//! - a key the job reads met twice in one object;
//! - nesting deeper than [`MAX_DEPTH`].
//!
//! The property test `the_scanner_reads_what_the_visitor_reads` compares the two on valid and
//! broken records.

use std::borrow::Cow;

use super::{FieldTree, Fields, Node, Scalar};

/// Deeper than this, the scanner gives up (serde_json refuses past 128).
const MAX_DEPTH: usize = 100;

/// `10^0 ..= 10^22`, every one exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl FieldTree {
    /// Read `text` into `out` (already cleared to one `None` per slot); `false` if the scanner
    /// gave up, leaving `out` partly written.
    pub(super) fn scan<'de>(&self, text: &'de str, out: &mut Fields<'de>) -> bool {
        let mut s = Scanner { text, at: 0 };
        s.ws();
        let done = s.eat(b'{') && s.object(&self.root, out, 1).is_some();
        s.ws();
        done && s.at == text.len()
    }
}

/// `±significand × 10^exponent`, when one operation computes it correctly rounded (the nearest
/// f64, as serde_json's `float_roundtrip` reading and `str::parse` give): a significand of at
/// most 15 `digits` (below 10^15 < 2^53, exact in an f64) and a power of ten within ±22 (exact
/// too). `None` otherwise.
pub(crate) fn exact_decimal(
    negative: bool,
    significand: u64,
    digits: usize,
    exponent: i64,
) -> Option<f64> {
    if digits > 15 {
        return None;
    }
    let pow = *POW10.get(usize::try_from(exponent.unsigned_abs()).ok()?)?;
    let magnitude = if exponent < 0 {
        significand as f64 / pow
    } else {
        significand as f64 * pow
    };
    Some(if negative { -magnitude } else { magnitude })
}

struct Scanner<'de> {
    text: &'de str,
    at: usize,
}

/// A JSON number's parts, its syntax checked.
struct Number {
    negative: bool,
    /// The digits of the integer part and the fraction, as an integer (saturating: only up to
    /// 18 digits are used).
    significand: u64,
    /// How many digits the significand has.
    digits: usize,
    /// The power of ten the significand is multiplied by.
    exponent: i64,
    /// Whether the number has a fraction or an exponent (serde_json reads it as a float).
    fraction: bool,
}

impl<'de> Scanner<'de> {
    fn bytes(&self) -> &'de [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let yes = self.peek() == Some(c);
        self.at += usize::from(yes);
        yes
    }

    /// The members of an object whose `{` was read, up to its `}`, into `node`'s slots.
    fn object(&mut self, node: &Node, out: &mut Fields<'de>, depth: usize) -> Option<()> {
        let mut seen: u128 = 0;
        self.members(b'}', depth, |s| {
            if !s.eat(b'"') {
                return None;
            }
            let key = s.plain_string()?;
            s.colon()?;
            let child = node
                .children
                .iter()
                .enumerate()
                .find(|(_, (name, _))| same(name.as_bytes(), key.as_bytes()));
            match child {
                None => s.skip(depth),
                Some((i, (_, child))) => {
                    let bit = 1u128.checked_shl(i as u32).unwrap_or(0);
                    if seen & bit != 0 || bit == 0 {
                        return None;
                    }
                    seen |= bit;
                    s.value(child, out, depth)
                }
            }
        })
    }

    /// The members of an object or array whose opening bracket was read, each read by
    /// `member`, separated by commas, up to `close`.
    fn members(
        &mut self,
        close: u8,
        depth: usize,
        mut member: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        if self.eat(close) {
            return Some(());
        }
        loop {
            self.ws();
            member(self)?;
            self.ws();
            if self.eat(close) {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// The `:` after a key, and the space around it.
    fn colon(&mut self) -> Option<()> {
        self.ws();
        let found = self.eat(b':');
        self.ws();
        found.then_some(())
    }

    /// A value at a node of the tree: captured in its slot, descended into if it is an object
    /// and the node has children, as the visitor's `ValueSeed` does.
    fn value(&mut self, node: &Node, out: &mut Fields<'de>, depth: usize) -> Option<()> {
        let value = match self.peek()? {
            b'"' => {
                self.at += 1;
                Scalar::Str(Cow::Borrowed(self.plain_string()?))
            }
            b'{' => {
                self.at += 1;
                set(node, out, Scalar::Composite);
                return self.object(node, out, depth + 1);
            }
            b'[' => {
                self.skip(depth)?;
                Scalar::Composite
            }
            b't' => self.literal("true").map(|()| Scalar::Bool(true))?,
            b'f' => self.literal("false").map(|()| Scalar::Bool(false))?,
            b'n' => self.literal("null").map(|()| Scalar::Null)?,
            _ => self.number(node.exact && node.slot.is_some())?,
        };
        set(node, out, value);
        Some(())
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// A string whose `"` was read, up to its closing `"`: its text, when it has no escape and
    /// no control character.
    fn plain_string(&mut self) -> Option<&'de str> {
        let start = self.at;
        self.skip_to_special();
        if self.peek()? != b'"' {
            return None;
        }
        // Both ends are at an ASCII quote, so at a char boundary.
        let text = self.text.get(start..self.at)?;
        self.at += 1;
        Some(text)
    }

    /// Move to the next `"`, `\\` or control character (or to the end), eight bytes at a time.
    fn skip_to_special(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.bytes().get(self.at..self.at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            // The high bit of each byte that is a quote, a backslash or below 0x20 (a borrow
            // may also flag a byte after a flagged one, never before: the lowest is exact).
            let quote = w ^ (ONES * u64::from(b'"'));
            let backslash = w ^ (ONES * u64::from(b'\\'));
            let special = (quote.wrapping_sub(ONES) & !quote
                | backslash.wrapping_sub(ONES) & !backslash
                | w.wrapping_sub(ONES * 0x20) & !w)
                & HIGH;
            if special != 0 {
                self.at += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(c) = self.peek() {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return;
            }
            self.at += 1;
        }
    }

    /// A number's syntax, into its parts.
    fn number_parts(&mut self) -> Option<Number> {
        let negative = self.eat(b'-');
        let mut significand = 0;
        let int_start = self.at;
        let mut digits = self.digits(&mut significand);
        if digits == 0 || (digits > 1 && self.bytes().get(int_start) == Some(&b'0')) {
            return None;
        }
        let mut exponent: i64 = 0;
        let mut fraction = false;
        if self.eat(b'.') {
            fraction = true;
            let n = self.digits(&mut significand);
            if n == 0 {
                return None;
            }
            digits += n;
            exponent -= n as i64;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            fraction = true;
            let minus = self.eat(b'-');
            if !minus {
                self.eat(b'+');
            }
            let mut e = 0;
            if self.digits(&mut e) == 0 {
                return None;
            }
            let e = i64::try_from(e).unwrap_or(i64::MAX);
            exponent = exponent.saturating_add(if minus { -e } else { e });
        }
        Some(Number {
            negative,
            significand,
            digits,
            exponent,
            fraction,
        })
    }

    /// A number the job reads, in the forms the scanner parses exactly (see the module doc).
    fn number(&mut self, exact: bool) -> Option<Scalar<'de>> {
        let Number {
            negative,
            significand,
            digits,
            exponent,
            fraction,
        } = self.number_parts()?;
        if !fraction {
            // An integer: serde_json gives -0 as a float, and 19 digits may not fit an i64.
            if digits > 18 || (negative && significand == 0) {
                return None;
            }
            let value = significand as i64;
            return Some(Scalar::Int(if negative { -value } else { value }));
        }
        // An exact slot needs the text of a fraction: the visitor reads it in its second pass.
        if exact {
            return None;
        }
        exact_decimal(negative, significand, digits, exponent).map(Scalar::Float)
    }

    /// Skip one valid JSON value, not read by the job.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.skip_string()
            }
            b'{' => {
                self.at += 1;
                self.skip_object(depth + 1)
            }
            b'[' => {
                self.at += 1;
                self.skip_array(depth + 1)
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            // serde_json does not judge the range of a number it skips, only its syntax.
            _ => self.number_parts().map(drop),
        }
    }

    /// A string whose `"` was read, with any escape but `\u`.
    fn skip_string(&mut self) -> Option<()> {
        loop {
            self.skip_to_special();
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => self.at += 1,
            }
        }
    }

    /// The digits from here on, accumulated into `value` (saturating at `u64::MAX`): how many.
    fn digits(&mut self, value: &mut u64) -> usize {
        let start = self.at;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            *value = value.saturating_mul(10).saturating_add(u64::from(c - b'0'));
            self.at += 1;
        }
        self.at - start
    }

    fn skip_object(&mut self, depth: usize) -> Option<()> {
        self.members(b'}', depth, |s| {
            if !s.eat(b'"') {
                return None;
            }
            s.skip_string()?;
            s.colon()?;
            s.skip(depth)
        })
    }

    fn skip_array(&mut self, depth: usize) -> Option<()> {
        self.members(b']', depth, |s| s.skip(depth))
    }
}

/// Byte by byte, inlined: keys are short, and a call to `memcmp` costs more than comparing them.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[inline]
fn set<'de>(node: &Node, out: &mut Fields<'de>, value: Scalar<'de>) {
    if let Some(slot) = node.slot.and_then(|s| out.values.get_mut(s)) {
        *slot = Some(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(paths: &[&str], exact: &[&str]) -> FieldTree {
        let mut t = FieldTree::default();
        for p in paths {
            t.insert(p.split('.'));
        }
        for p in exact {
            t.insert_exact(p.split('.'));
        }
        t
    }

    fn trees() -> Vec<FieldTree> {
        vec![
            tree(&["ts", "merchant", "amount"], &[]),
            tree(&["ts", "amount"], &["merchant"]),
            tree(&["a", "b.c", "b.d.e", "x"], &["e"]),
            tree(&["b", "b.c"], &["a"]),
        ]
    }

    /// The scanner's reading: `None` when it gives up.
    fn scanned(t: &FieldTree, text: &str) -> Option<String> {
        let mut f = Fields::default();
        f.values.resize(t.slots, None);
        t.scan(text, &mut f).then(|| format!("{:?}", f.values))
    }

    /// The visitor's first pass alone, as `decode` ran it before the scanner: the values, or
    /// why it cannot stand for the whole reading (an error, a duplicate, a second pass).
    fn visited(t: &FieldTree, text: &str) -> Result<String, String> {
        let mut f = Fields::default();
        f.values.resize(t.slots, None);
        t.read_object(&mut serde_json::Deserializer::from_str(text), &mut f, false)
            .map_err(|e| e.to_string())?;
        match (&f.duplicate, f.reread) {
            (None, false) => Ok(format!("{:?}", f.values)),
            (d, r) => Err(format!("duplicate {d:?}, reread {r}")),
        }
    }

    fn agree(text: &str) {
        for t in trees() {
            if let Some(s) = scanned(&t, text) {
                assert_eq!(Ok(s), visited(&t, text), "{text:?}, {t:?}");
            }
        }
    }

    /// Records the scanner must read itself, or it saves nothing.
    #[test]
    fn the_scanner_reads_plain_records() {
        let t = tree(&["ts", "merchant", "amount", "b.c"], &[]);
        for text in [
            r#"{"ts":"2026-01-01T00:00:00.511Z","merchant":"m0009574","customer":"c035030","amount":622.60}"#,
            " {\n\t\"amount\" : -12.5e-3 , \"merchant\": \"mé🙂\", \"skip\": [1, {\"a\": [true, null]}, \"x\\n\\\"\"] }\r\n",
            r#"{"b":{"c":7,"d":1e400},"ts":1767225601000,"amount":0.000001,"merchant":null}"#,
            r#"{"amount":123456789012345678,"merchant":false,"b":{}}"#,
            "{}",
        ] {
            assert!(scanned(&t, text).is_some(), "gave up on {text}");
            assert_eq!(scanned(&t, text).ok_or(()), visited(&t, text).map_err(drop));
        }
    }

    /// What it leaves to the visitor, valid or not.
    #[test]
    fn the_scanner_gives_up_on_what_it_does_not_read_exactly() {
        let t = tree(&["a", "b.c"], &["x"]);
        for text in [
            r#"{"a":"\n"}"#,
            r#"{"\u0061":1}"#,
            r#"{"z":"\u00e9"}"#,
            r#"{"a":1.2345678901234567}"#,
            r#"{"a":1e23}"#,
            r#"{"a":-0}"#,
            r#"{"a":1234567890123456789}"#,
            r#"{"x":1.5}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"z":"a"b"}"#,
            "{\"z\":\"\u{1}\"}",
            // Control characters and escapes in the middle of a long string, found eight bytes
            // at a time.
            "{\"a\":\"abcdefghij\u{1f}klmnopqrstuvwxyz\",\"z\":1}",
            "{\"z\":\"abcdefghij\u{0}klmnopqrstuvwxyz\",\"a\":1}",
            r#"{"a":"abcdefghijklm\"nopqrstuvwxyz","z":1}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"[1]"#,
            r#"{"z":"\x"}"#,
            r#"{"a":tru}"#,
            r#"{"a":trux}"#,
            r#"{"z":nul1}"#,
        ] {
            assert_eq!(scanned(&t, text), None, "read {text}");
        }
        let deep = format!(
            "{{\"z\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(scanned(&t, &deep), None);
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            (0u64..100_000_000, 0usize..12).prop_map(|(i, d)| format!("{i}.{:0d$}", i % 997)),
            (-99i64..99, -30i32..30).prop_map(|(i, e)| format!("{i}E{e:+}")),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("123456789012345678901234".to_string()),
            Just("1.7976931348623157e309".to_string()),
            "-?[0-9]{1,20}(\\.[0-9]{0,18})?([eE][+-]?[0-9]{0,3})?",
        ]
    }

    fn leaf() -> impl Strategy<Value = String> {
        prop_oneof![
            number(),
            "\"([a-zé🙂 \"\\\\/\u{1}]|\\\\[nt\"\\\\/bfrx]|\\\\u00[0-9a-f]{2}){0,6}\"",
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
        ]
    }

    fn json() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            "[abcdex]",
            Just("ts".to_string()),
            Just("merchant".to_string()),
            Just("amount".to_string()),
            Just("\\u0061".to_string()),
        ];
        let ws = "[ \t\n\r]{0,2}";
        leaf().prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec((key.clone(), ws, inner.clone()), 0..6).prop_map(|m| {
                    let members: Vec<String> = m
                        .into_iter()
                        .map(|(k, w, v)| format!("{w}\"{k}\"{w}:{w}{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
                prop::collection::vec(inner, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the scanner reads, the visitor reads alike: the same values (compared
        /// through their Debug form, so -0.0 and 0.0 differ), no error, nothing read twice.
        #[test]
        fn the_scanner_reads_what_the_visitor_reads(record in json(), cut in any::<prop::sample::Index>(), edit in 0usize..4, ch in "[ -~é]") {
            agree(&record);
            // And broken at one place: a character removed, replaced or put in.
            if let Some(broken) = crate::testkit::broken_at(&record, cut, edit, &ch) {
                agree(&broken);
            }
        }
    }
}
