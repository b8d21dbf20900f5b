//! Decoding a JSON record into the few values a job reads, in one pass and without building a
//! document tree: fields the job does not name are skipped by the parser, and strings without
//! escapes are borrowed from the input.
//!
//! A record that is not a JSON object, or is not valid JSON, is an error; a missing field is
//! `None` in its slot, for the caller to judge.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

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
}

impl FieldTree {
    /// Add a path (or find it) and return its slot.
    pub fn insert<'a>(&mut self, segments: impl Iterator<Item = &'a str>) -> usize {
        let mut node = &mut self.root;
        for seg in segments {
            let i = match node.children.iter().position(|(n, _)| n == seg) {
                Some(i) => i,
                None => {
                    node.children.push((seg.to_string(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[i].1;
        }
        match node.slot {
            Some(s) => s,
            None => {
                node.slot = Some(self.slots);
                self.slots += 1;
                self.slots - 1
            }
        }
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
        out.values.clear();
        out.values.resize(self.slots, None);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        ObjectSeed {
            node: &self.root,
            out: &mut out.values,
        }
        .deserialize(&mut de)
        .map_err(|e| DecodeError(e.to_string()))?;
        de.end().map_err(|e| DecodeError(e.to_string()))
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
    /// Any other number.
    Float(f64),
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
            Scalar::Float(f) => Some(*f),
            Scalar::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    /// Write the value as canonical JSON text: the same value always gives the same bytes
    /// (strings re-escaped, numbers in their shortest form). `false` for composites.
    pub fn write_json(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Scalar::Null => out.extend_from_slice(b"null"),
            Scalar::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Scalar::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Scalar::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
            Scalar::Float(f) => {
                // serde_json only produces finite floats; the shortest round-trip form.
                out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes())
            }
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
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Composite => "an object or array",
        }
    }
}

/// The decoded slots of one record. Reused between records to avoid allocation.
#[derive(Debug, Default)]
pub struct Fields<'de> {
    /// One entry per slot; `None` when the record lacks the field.
    pub values: Vec<Option<Scalar<'de>>>,
}

/// Why a record is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct ObjectSeed<'a, 'o, 'de> {
    node: &'a Node,
    out: &'o mut Vec<Option<Scalar<'de>>>,
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
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let child = self
                .node
                .children
                .iter()
                .find(|(n, _)| n.as_str() == key.as_ref());
            match child {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some((_, node)) => map.next_value_seed(ValueSeed {
                    node,
                    out: &mut *self.out,
                })?,
            }
        }
        Ok(())
    }
}

/// A value at a node of the tree: captured if the node is a leaf, descended into if it has
/// children (a path may be both a leaf and a prefix of another path).
struct ValueSeed<'a, 'o, 'de> {
    node: &'a Node,
    out: &'o mut Vec<Option<Scalar<'de>>>,
}

impl ValueSeed<'_, '_, '_> {
    fn set<'de>(out: &mut [Option<Scalar<'de>>], slot: Option<usize>, v: Scalar<'de>) {
        if let Some(s) = slot.and_then(|s| out.get_mut(s)) {
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
        Self::set(self.out, self.node.slot, Scalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        Self::set(self.out, self.node.slot, Scalar::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let s = match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::UInt(v),
        };
        Self::set(self.out, self.node.slot, s);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Self::set(self.out, self.node.slot, Scalar::Float(v));
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        Self::set(self.out, self.node.slot, Scalar::Str(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Self::set(
            self.out,
            self.node.slot,
            Scalar::Str(Cow::Owned(v.to_string())),
        );
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        Self::set(self.out, self.node.slot, Scalar::Str(Cow::Owned(v)));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Self::set(self.out, self.node.slot, Scalar::Null);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        Self::set(self.out, self.node.slot, Scalar::Composite);
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Self::set(self.out, self.node.slot, Scalar::Composite);
        ObjectSeed {
            node: self.node,
            out: self.out,
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
    fn numbers_and_numeric_strings() {
        assert_eq!(Scalar::Str(" 12.5 ".into()).as_number(), Some(12.5));
        assert_eq!(Scalar::Str("NaN".into()).as_number(), None);
        assert_eq!(Scalar::Str("inf".into()).as_number(), None);
        assert_eq!(Scalar::Str("abc".into()).as_number(), None);
        assert_eq!(Scalar::Bool(true).as_number(), None);
        assert_eq!(Scalar::UInt(u64::MAX).as_number(), Some(u64::MAX as f64));
    }
}
