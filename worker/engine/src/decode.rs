//! Decoding a JSON record into the few values a job reads, in one pass and without building a
//! document tree: fields the job does not name are skipped by the parser, and strings without
//! escapes are borrowed from the input.
//!
//! A record that is not a JSON object, or is not valid JSON, is an error; a missing field is
//! `None` in its slot, for the caller to judge. A key on the path to a field the job reads that
//! appears twice in one object is reported in [`Fields::duplicate`] (which of the two a reader
//! means is ambiguous: JSON parsers disagree).
//!
//! Numbers in *exact* slots (group values, values compared as JSON) keep their exact value: the
//! first pass reads every value as serde_json gives it, and only a record in which an exact slot
//! got a non-integer number (or one beyond u64) is read again, taking each value's text as
//! written. Other slots (event time, numeric aggregations) only need the number as f64.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

mod scan;

pub(crate) use scan::exact_decimal;

/// The field paths a job reads, as a tree of names; each leaf is a slot in [`Fields`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTree {
    root: Node,
    slots: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    children: Vec<(String, Node)>,
    slot: Option<usize>,
    /// The slot needs the exact value of a number, not only its f64.
    exact: bool,
    /// The dotted path to this node, for messages.
    path: String,
}

impl FieldTree {
    /// Add a path (or find it) whose numbers are read as f64, and return its slot.
    pub fn insert<'a>(&mut self, segments: impl Iterator<Item = &'a str>) -> usize {
        self.insert_node(segments).0
    }

    /// Add a path (or find it) whose numbers keep their exact value ([`Scalar::Number`]), and
    /// return its slot.
    pub fn insert_exact<'a>(&mut self, segments: impl Iterator<Item = &'a str>) -> usize {
        let (slot, exact) = self.insert_node(segments);
        *exact = true;
        slot
    }

    fn insert_node<'a>(&mut self, segments: impl Iterator<Item = &'a str>) -> (usize, &mut bool) {
        let mut node = &mut self.root;
        for seg in segments {
            let i = match node.children.iter().position(|(n, _)| n == seg) {
                Some(i) => i,
                None => {
                    let path = if node.path.is_empty() {
                        seg.to_string()
                    } else {
                        format!("{}.{seg}", node.path)
                    };
                    node.children.push((
                        seg.to_string(),
                        Node {
                            path,
                            ..Node::default()
                        },
                    ));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[i].1;
        }
        let slot = match node.slot {
            Some(s) => s,
            None => {
                node.slot = Some(self.slots);
                self.slots += 1;
                self.slots - 1
            }
        };
        (slot, &mut node.exact)
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots
    }

    /// Whether no path was added.
    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    /// Decode one JSON record into `out` (resized to the number of slots).
    pub fn decode<'de>(&self, bytes: &'de [u8], out: &mut Fields<'de>) -> Result<(), DecodeError> {
        self.pass(bytes, out, false)?;
        if out.reread {
            // An exact slot holds a number serde_json could only give as f64.
            self.pass(bytes, out, true)?;
        }
        Ok(())
    }

    /// One pass over the record; `raw`: every value read takes its text as written.
    fn pass<'de>(
        &self,
        bytes: &'de [u8],
        out: &mut Fields<'de>,
        raw: bool,
    ) -> Result<(), DecodeError> {
        out.values.clear();
        out.values.resize(self.slots, None);
        out.duplicate = None;
        out.reread = false;
        // Checking the whole record's UTF-8 once is cheaper than serde_json checking each key
        // and string it reads (the engine bench's decode_only: 297-320 ms against 351-406).
        // A record that is not UTF-8 is read as bytes, as before, so that it gets the same
        // error (or none, when only a skipped string is not UTF-8).
        let read = match std::str::from_utf8(bytes) {
            Ok(text) if !raw && self.scan(text, out) => Ok(()),
            Ok(text) => {
                // The scanner gave up (see `scan`), perhaps half way: the visitor reads it all.
                out.values.iter_mut().for_each(|v| *v = None);
                self.read_object(&mut serde_json::Deserializer::from_str(text), out, raw)
            }
            Err(_) => self.read_object(&mut serde_json::Deserializer::from_slice(bytes), out, raw),
        };
        read.map_err(|e| {
            if bytes.starts_with(b"\xEF\xBB\xBF") {
                DecodeError(format!(
                    "the record starts with a UTF-8 byte-order mark (EF BB BF), which JSON \
                     does not allow: {e}"
                ))
            } else {
                DecodeError(e.to_string())
            }
        })
    }

    /// Read one JSON object, and nothing after it, from `de` into `out`.
    fn read_object<'de, R: serde_json::de::Read<'de>>(
        &self,
        de: &mut serde_json::Deserializer<R>,
        out: &mut Fields<'de>,
        raw: bool,
    ) -> Result<(), serde_json::Error> {
        ObjectSeed {
            node: &self.root,
            out,
            raw,
        }
        .deserialize(&mut *de)
        .and_then(|()| de.end())
    }
}

/// A JSON value as read from a record field.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'de> {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// A larger unsigned integer.
    UInt(u64),
    /// Any other number in a slot that is not exact: only its f64.
    Float(f64),
    /// Any other number (a fraction, an exponent, or an integer beyond u64): the nearest f64
    /// (finite), and the text as written, whose value is exact.
    Number(f64, &'de str),
    /// A string (borrowed from the input when it has no escapes).
    Str(Cow<'de, str>),
    /// An object or an array: not a scalar.
    Composite,
}

impl Scalar<'_> {
    /// The value as a number: JSON numbers, and strings that hold a finite number.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::UInt(u) => Some(*u as f64),
            Scalar::Float(f) | Scalar::Number(f, _) => Some(*f),
            Scalar::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    /// Write the value as canonical JSON text: equal values always give the same bytes
    /// (strings re-escaped; numbers by exact value, see [`write_number`]). `false` for
    /// composites.
    pub fn write_json(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Scalar::Null => out.extend_from_slice(b"null"),
            Scalar::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Scalar::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Scalar::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
            Scalar::Number(_, t) => write_number(t, out),
            // Not an exact slot: the f64's shortest form, canonical like any other number.
            Scalar::Float(f) => write_number(ryu::Buffer::new().format_finite(*f), out),
            Scalar::Str(s) => {
                // Writing a str into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, s.as_ref());
            }
            Scalar::Composite => return false,
        }
        true
    }

    /// The JSON type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) | Scalar::Number(..) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Composite => "an object or array",
        }
    }
}

/// Plain integers are written in full up to this many digits; longer ones in exponent form.
const MAX_PLAIN_DIGITS: i64 = 100;

/// Write a valid JSON number in its canonical form, which depends only on its exact value:
/// no sign on zero, no leading or trailing zeros, integers in full (up to
/// [`MAX_PLAIN_DIGITS`] digits), fractions as decimals down to `0.000001`, anything else as
/// `d.ddde±x`. So `1`, `1.0`, `1e0` and `10e-1` are all `1`; `-0` is `0`; `0.10` is `0.1`;
/// `12345678901234567890123` stays itself.
pub fn write_number(text: &str, out: &mut Vec<u8>) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let start = digits.iter().position(|d| *d != b'0');
    let Some(start) = start else {
        out.push(b'0');
        return;
    };
    let end = digits
        .iter()
        .rposition(|d| *d != b'0')
        .map_or(start, |e| e + 1);
    let digits = &digits[start..end];
    // value = 0.digits × 10^point
    let len = digits.len() as i64;
    let point = (int.len() as i64 - start as i64).saturating_add(exponent);
    if negative {
        out.push(b'-');
    }
    let zeros = |n: i64, out: &mut Vec<u8>| out.extend((0..n).map(|_| b'0'));
    if point >= len && point <= MAX_PLAIN_DIGITS {
        out.extend_from_slice(digits);
        zeros(point - len, out);
    } else if point > 0 && point < len {
        let p = point as usize;
        out.extend_from_slice(&digits[..p]);
        out.push(b'.');
        out.extend_from_slice(&digits[p..]);
    } else if point <= 0 && point > -6 {
        out.extend_from_slice(b"0.");
        zeros(-point, out);
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]);
        if len > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.extend_from_slice(itoa::Buffer::new().format(point - 1).as_bytes());
    }
}

/// The decoded slots of one record. Reused between records to avoid allocation.
#[derive(Debug, Default)]
pub struct Fields<'de> {
    /// One entry per slot; `None` when the record lacks the field.
    pub values: Vec<Option<Scalar<'de>>>,
    /// The first key on the path to a field the job reads that appears twice in one object.
    pub duplicate: Option<String>,
    /// An exact slot got a number as f64 only: the record must be read again, raw.
    pub(crate) reread: bool,
}

/// Why a record is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scalar a value's JSON text holds (the text is valid JSON: serde_json checked it).
fn scalar<'de>(raw: &'de str) -> Result<Scalar<'de>, String> {
    Ok(match raw.as_bytes().first() {
        Some(b'"') => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains('\\') {
                Scalar::Str(Cow::Owned(
                    serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?,
                ))
            } else {
                Scalar::Str(Cow::Borrowed(inner))
            }
        }
        Some(b't') => Scalar::Bool(true),
        Some(b'f') => Scalar::Bool(false),
        Some(b'n') => Scalar::Null,
        Some(b'{') | Some(b'[') => Scalar::Composite,
        _ => number(raw)?,
    })
}

/// A JSON number's text as a [`Scalar`]: integers that fit i64 or u64 as such, the rest as
/// written. Numbers beyond the f64 range are refused (as serde_json refuses them).
fn number(text: &str) -> Result<Scalar<'_>, String> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Scalar::Int(i));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Ok(Scalar::UInt(u));
    }
    let exponent_digits = text
        .find(['e', 'E'])
        .map_or(0, |i| text[i + 1..].trim_start_matches(['+', '-']).len());
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && exponent_digits <= 15 => Ok(Scalar::Number(f, text)),
        _ => Err(format!("number {text} out of range")),
    }
}

struct ObjectSeed<'a, 'o, 'de> {
    node: &'a Node,
    out: &'o mut Fields<'de>,
    /// Read each value of a slot as its text (the exact pass).
    raw: bool,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Children met in this object (a job reads at most 81 paths, so at most 81 children).
        let mut seen: u128 = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let child = self
                .node
                .children
                .iter()
                .enumerate()
                .find(|(_, (n, _))| n.as_str() == key.as_ref());
            let Some((i, (_, node))) = child else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let bit = 1u128.checked_shl(i as u32).unwrap_or(0);
            if seen & bit != 0 && self.out.duplicate.is_none() {
                self.out.duplicate = Some(node.path.clone());
            }
            seen |= bit;
            if node.slot.is_none() || !self.raw || !node.exact {
                map.next_value_seed(ValueSeed {
                    node,
                    out: &mut *self.out,
                    raw: self.raw,
                })?;
                continue;
            }
            // An exact slot in the exact pass: its text, then its value.
            let raw: &'de RawValue = map.next_value()?;
            let raw = raw.get();
            let value = scalar(raw).map_err(de::Error::custom)?;
            if let Some(slot) = node.slot.and_then(|s| self.out.values.get_mut(s)) {
                *slot = Some(value);
            }
            if !node.children.is_empty() && raw.starts_with('{') {
                // Also a prefix of other paths (`a` and `a.b`): read the object again for them.
                let mut nested = serde_json::Deserializer::from_str(raw);
                ObjectSeed {
                    node,
                    out: &mut *self.out,
                    raw: true,
                }
                .deserialize(&mut nested)
                .map_err(de::Error::custom)?;
            }
        }
        Ok(())
    }
}

/// A value at a node of the tree, in the first pass: captured if the node is a leaf, descended
/// into if it has children (a path may be both a leaf and a prefix of another path).
struct ValueSeed<'a, 'o, 'de> {
    node: &'a Node,
    out: &'o mut Fields<'de>,
    /// The exact pass (only nodes that are not exact slots get here then): passed on to the
    /// children.
    raw: bool,
}

impl<'de> ValueSeed<'_, '_, 'de> {
    fn set(self, v: Scalar<'de>) {
        if let Some(s) = self.node.slot.and_then(|s| self.out.values.get_mut(s)) {
            *s = Some(v);
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.set(Scalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.set(Scalar::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.set(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::UInt(v),
        });
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if self.node.exact && self.node.slot.is_some() {
            // A fraction, an exponent, -0 or an integer beyond u64: its text is needed.
            self.out.reread = true;
        }
        self.set(Scalar::Float(v));
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v)));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.set(Scalar::Null);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.set(Scalar::Composite);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if let Some(s) = self.node.slot.and_then(|s| self.out.values.get_mut(s)) {
            *s = Some(Scalar::Composite);
        }
        ObjectSeed {
            node: self.node,
            out: self.out,
            raw: self.raw,
        }
        .visit_map(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[&str]) -> FieldTree {
        let mut t = FieldTree::default();
        for p in paths {
            t.insert(p.split('.'));
        }
        t
    }

    fn exact_tree(paths: &[&str]) -> FieldTree {
        let mut t = FieldTree::default();
        for p in paths {
            t.insert_exact(p.split('.'));
        }
        t
    }

    fn decode<'a>(t: &FieldTree, s: &'a str) -> Result<Vec<Option<Scalar<'a>>>, DecodeError> {
        let mut f = Fields::default();
        t.decode(s.as_bytes(), &mut f)?;
        Ok(f.values)
    }

    #[test]
    fn extracts_named_fields_and_skips_the_rest() {
        let t = tree(&["merchant", "payment.amount", "payment.meta.id", "ts"]);
        let v = decode(
            &t,
            r#"{"skip":[1,{"a":2}],"merchant":"m1","payment":{"amount":12.5,"meta":{"id":7}},"ts":"x"}"#,
        )
        .expect("decodes");
        assert_eq!(
            v,
            vec![
                Some(Scalar::Str("m1".into())),
                Some(Scalar::Float(12.5)),
                Some(Scalar::Int(7)),
                Some(Scalar::Str("x".into())),
            ]
        );
    }

    /// A record that is not UTF-8 is judged as it always was: refused when a key or a string it
    /// reads is not UTF-8 (with serde_json's message), accepted when only a skipped one is.
    #[test]
    fn records_that_are_not_utf8() {
        let t = tree(&["a", "b.c"]);
        fn bytes<'a>(t: &FieldTree, v: &'a [u8]) -> Result<Vec<Option<Scalar<'a>>>, DecodeError> {
            let mut f = Fields::default();
            t.decode(v, &mut f)?;
            Ok(f.values)
        }
        assert_eq!(
            bytes(&t, b"{\"skip\":\"\xFF\xFE\",\"a\":1}"),
            Ok(vec![Some(Scalar::Int(1)), None])
        );
        assert_eq!(
            bytes(&t, b"{\"a\":\"x\xFF\"}"),
            Err(DecodeError(
                "invalid unicode code point at line 1 column 8".into()
            ))
        );
        assert_eq!(
            bytes(&t, b"{\"b\":{\"\xC3\":2}}"),
            Err(DecodeError(
                "invalid unicode code point at line 1 column 8".into()
            ))
        );
        assert_eq!(
            bytes(&t, b"{\"a\":1}\xFF"),
            Err(DecodeError("trailing characters at line 1 column 8".into()))
        );
    }

    #[test]
    fn missing_and_null_fields_are_distinguished() {
        let t = tree(&["a", "b.c"]);
        let v = decode(&t, r#"{"a":null,"b":3}"#).expect("decodes");
        assert_eq!(v, vec![Some(Scalar::Null), None]);
    }

    #[test]
    fn composites_are_marked_not_captured() {
        let t = tree(&["a", "a.b"]);
        let v = decode(&t, r#"{"a":{"b":true}}"#).expect("decodes");
        assert_eq!(v, vec![Some(Scalar::Composite), Some(Scalar::Bool(true))]);
    }

    #[test]
    fn escaped_and_unicode_strings_are_canonical() {
        let t = tree(&["k", "ü.ß"]);
        let v = decode(&t, r#"{"k":"\u00e9t\u00e9 \"q\"","ü":{"ß":"日本"}}"#).expect("decodes");
        let mut out = Vec::new();
        for s in v.iter().flatten() {
            assert!(s.write_json(&mut out));
            out.push(b' ');
        }
        assert_eq!(String::from_utf8_lossy(&out), "\"été \\\"q\\\"\" \"日本\" ");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let t = tree(&["a"]);
        for bad in [
            "",
            "[1,2]",
            "3",
            "\"s\"",
            "{",
            r#"{"a":1} x"#,
            "{\"a\":1e400}",
            "\u{0}",
            "nul",
        ] {
            assert!(decode(&t, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_byte_order_mark_is_named() {
        let t = tree(&["a"]);
        let err = decode(&t, "\u{feff}{\"a\":1}").expect_err("not JSON");
        assert!(err.0.contains("byte-order mark"), "{err}");
    }

    #[test]
    fn numbers_and_numeric_strings() {
        assert_eq!(Scalar::Str(" 12.5 ".into()).as_number(), Some(12.5));
        assert_eq!(Scalar::Str("NaN".into()).as_number(), None);
        assert_eq!(Scalar::Str("inf".into()).as_number(), None);
        assert_eq!(Scalar::Str("abc".into()).as_number(), None);
        assert_eq!(Scalar::Bool(true).as_number(), None);
        assert_eq!(Scalar::UInt(u64::MAX).as_number(), Some(u64::MAX as f64));
        assert_eq!(Scalar::Number(-1500.0, "-1.5e3").as_number(), Some(-1500.0));
    }

    fn canonical(t: &FieldTree, record: &str) -> Vec<String> {
        let mut f = Fields::default();
        t.decode(record.as_bytes(), &mut f).expect("decodes");
        f.values
            .iter()
            .map(|v| {
                let mut out = Vec::new();
                assert!(v.as_ref().expect("present").write_json(&mut out));
                String::from_utf8(out).expect("utf-8")
            })
            .collect()
    }

    #[test]
    fn numbers_are_written_by_their_exact_value() {
        let t = exact_tree(&["a"]);
        let one = |n: &str| canonical(&t, &format!(r#"{{"a":{n}}}"#)).remove(0);
        for (written, canon) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("0e10", "0"),
            ("1", "1"),
            ("1.0", "1"),
            ("1e0", "1"),
            ("10e-1", "1"),
            ("100", "100"),
            ("1E2", "100"),
            ("0.10", "0.1"),
            ("12.5", "12.5"),
            ("-12.50", "-12.5"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("1.5e-300", "1.5e-300"),
            ("18446744073709551615", "18446744073709551615"),
            ("18446744073709551616", "18446744073709551616"),
            ("12345678901234567890123", "12345678901234567890123"),
            ("-12345678901234567890123", "-12345678901234567890123"),
            ("1.2345678901234567890123e22", "12345678901234567890123"),
            ("1e21", "1000000000000000000000"),
            ("1e100", "1e100"),
            ("1e99", &format!("1{}", "0".repeat(99))),
            ("1.25e300", "1.25e300"),
        ] {
            assert_eq!(one(written), canon, "{written}");
        }
        // Distinct values stay distinct, even where f64 would merge them.
        assert_ne!(
            one("12345678901234567890123"),
            one("12345678901234567890124")
        );
        assert_ne!(one("0.10000000000000000001"), one("0.1"));
    }

    #[test]
    fn numbers_beyond_f64_are_refused_as_before() {
        for t in [tree(&["a"]), exact_tree(&["a"])] {
            assert!(decode(&t, r#"{"a":1e400}"#).is_err());
            assert!(decode(&t, r#"{"a":-1e400}"#).is_err());
            // A field the job does not read is not looked at.
            assert!(decode(&t, r#"{"b":1e400,"a":1}"#).is_ok());
        }
        let t = exact_tree(&["a"]);
        assert!(decode(&t, r#"{"a":1e-9999999999999999999}"#).is_err());
    }

    #[test]
    fn only_exact_slots_keep_the_text_of_a_number() {
        let mut t = FieldTree::default();
        let fast = t.insert(["f"].into_iter());
        let exact = t.insert_exact(["x", "id"].into_iter());
        let record = r#"{"f":1.5,"x":{"id":12345678901234567890123,"id2":1}}"#;
        let v = decode(&t, record).expect("decodes");
        assert_eq!(v[fast], Some(Scalar::Float(1.5)));
        assert_eq!(
            v[exact],
            Some(Scalar::Number(
                1.2345678901234568e22,
                "12345678901234567890123"
            ))
        );
        // Integers and strings need no second pass; the values are the same either way.
        let v = decode(&t, r#"{"f":2,"x":{"id":"a"}}"#).expect("decodes");
        assert_eq!(v, vec![Some(Scalar::Int(2)), Some(Scalar::Str("a".into()))]);
    }

    #[test]
    fn a_key_the_job_reads_twice_is_reported_the_rest_is_not() {
        for t in [
            tree(&["ts", "p.amount", "a", "a.b"]),
            exact_tree(&["ts", "p.amount", "a", "a.b"]),
        ] {
            duplicates(&t);
        }
    }

    fn duplicates(t: &FieldTree) {
        let dup = |s: &str| {
            let mut f = Fields::default();
            t.decode(s.as_bytes(), &mut f).expect("decodes");
            f.duplicate
        };
        assert_eq!(dup(r#"{"ts":1,"x":1,"x":2}"#), None);
        assert_eq!(dup(r#"{"ts":1,"ts":2}"#), Some("ts".to_string()));
        assert_eq!(
            dup(r#"{"p":{"amount":1},"p":{"other":2}}"#),
            Some("p".to_string())
        );
        assert_eq!(
            dup(r#"{"p":{"amount":1,"amount":2}}"#),
            Some("p.amount".to_string())
        );
        assert_eq!(dup(r#"{"a":{"b":1,"b":2}}"#), Some("a.b".to_string()));
        // Separate objects may use the same key.
        assert_eq!(dup(r#"{"p":{"amount":1},"ts":{"amount":2}}"#), None);
        // A path that is also a prefix: both read from one pass.
        let v = decode(t, r#"{"a":{"b":7}}"#).expect("decodes");
        assert_eq!(v[2], Some(Scalar::Composite));
        assert_eq!(v[3], Some(Scalar::Int(7)));
    }
}
