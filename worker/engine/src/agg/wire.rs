//! Accumulators in a partial message without serde's machinery: [`Acc::write_wire`] writes the
//! bytes serde_json writes, and [`Acc::read_wire`] reads back what it wrote, through a strict
//! [`Cursor`] that gives up (`None`) on anything else, leaving that to serde_json. Issue 20: a
//! sparse two-stage job writes and reads about one partial per record, and serde_json's
//! derived code spent 18% of the first stage's partition threads writing them and 29% of the
//! merge threads reading them (docs/benchmarks.md, session 23).
//!
//! Written by hand: `count`, `sum`, `min`, `max`, `mean`, the accumulators of the common jobs;
//! the others are written by serde_json and make [`Acc::read_wire`] give up. Values are
//! written as serde_json writes them: floats through its own formatter (`zmij`), integers with
//! `itoa` (which it uses), strings by serde_json itself; `the_wire_writer_writes_what_serde_writes`
//! checks the bytes.
//!
//! The [`Cursor`] reads JSON only in the form serde_json writes it: no white space, fields in
//! their declared order, integers in integer slots, floats with a `.` or an exponent, strings
//! without a raw control character or an escaped surrogate. Where it reads a value, it is the
//! value serde_json reads: integers are checked for overflow, and floats are computed
//! correctly rounded, as serde_json's `float_roundtrip` reading computes them: most from their
//! digits in one exact operation (`decode::exact_decimal`), the rest by `str::parse::<f64>`
//! (an infinite result makes it give up, as serde_json refuses it).

use serde_json::ser::{CompactFormatter, Formatter};

use super::moments::{MeanAcc, SumAcc};
use super::numeric::Dd;
use super::Acc;

/// The longest float the cursor reads: longer than any serde_json writes (the longest shortest
/// representation of an f64, `-2.2250738585072014e-308`, has 24 characters).
const MAX_FLOAT_LEN: usize = 32;

/// A strict reader of JSON as serde_json writes it (see the module documentation). Every
/// method returns `None` where it gives up, and the caller then gives up on the whole message.
pub(crate) struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Whether the whole text has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    /// These exact bytes next.
    pub(crate) fn lit(&mut self, expected: &str) -> Option<()> {
        let next = self
            .text
            .as_bytes()
            .get(self.at..self.at + expected.len())?;
        (next == expected.as_bytes()).then(|| self.at += expected.len())
    }

    /// These exact bytes next, if they are: whether they were.
    pub(crate) fn eat(&mut self, expected: &str) -> bool {
        self.lit(expected).is_some()
    }

    /// A run of decimal digits as an integer, `None` on overflow or no digit, or on a leading
    /// zero followed by another digit (not JSON).
    fn digits(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        (len == 1 || (len > 1 && self.text.as_bytes().get(start) != Some(&b'0'))).then_some(n)
    }

    /// An unsigned integer.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.digits()
    }

    /// A signed integer (`-0` gives up: serde_json never writes it).
    pub(crate) fn i64(&mut self) -> Option<i64> {
        if self.eat("-") {
            let magnitude = self.digits()?;
            if magnitude == 0 {
                return None;
            }
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(self.digits()?).ok()
        }
    }

    /// A signed 32-bit integer.
    pub(crate) fn i32(&mut self) -> Option<i32> {
        i32::try_from(self.i64()?).ok()
    }

    /// A finite float written with a fraction or an exponent. Most are computed from their
    /// digits in one exact operation (`decode::exact_decimal`), the rest parsed by
    /// `str::parse`.
    pub(crate) fn f64(&mut self) -> Option<f64> {
        let start = self.at;
        let negative = self.eat("-");
        let int_start = self.at;
        let mut significand = self.digits()?;
        let mut digits = self.at - int_start;
        let mut exponent: i64 = 0;
        let mut float = false;
        if self.eat(".") {
            let n = self.fraction_digits(&mut significand)?;
            digits += n;
            exponent = -i64::try_from(n).ok()?;
            float = true;
        }
        if self.eat("e") || self.eat("E") {
            let minus = self.eat("-");
            if !minus {
                self.eat("+");
            }
            let mut e = 0;
            self.fraction_digits(&mut e)?;
            let e = i64::try_from(e).unwrap_or(i64::MAX);
            exponent = exponent.saturating_add(if minus { -e } else { e });
            float = true;
        }
        let token = &self.text[start..self.at];
        if !float || token.len() > MAX_FLOAT_LEN {
            return None;
        }
        crate::decode::exact_decimal(negative, significand, digits, exponent)
            .or_else(|| token.parse::<f64>().ok())
            .filter(|x| x.is_finite())
    }

    /// One or more digits, any leading zeros (a fraction or an exponent), accumulated into
    /// `value` (saturating): how many.
    fn fraction_digits(&mut self, value: &mut u64) -> Option<usize> {
        let start = self.at;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            *value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
            self.at += 1;
        }
        (self.at > start).then_some(self.at - start)
    }

    /// A string, unescaped.
    pub(crate) fn string(&mut self) -> Option<String> {
        self.lit("\"")?;
        let bytes = self.text.as_bytes();
        let mut out = String::new();
        let mut from = self.at;
        loop {
            match *bytes.get(self.at)? {
                b'"' => {
                    out.push_str(&self.text[from..self.at]);
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push_str(&self.text[from..self.at]);
                    self.at += 1;
                    out.push(self.escape()?);
                    from = self.at;
                }
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    /// The character of an escape, after its `\`.
    fn escape(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        Some(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = self.text.get(self.at..self.at + 4)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                self.at += 4;
                // A surrogate (half of a pair, or alone) is left to serde_json.
                char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
            }
            _ => return None,
        })
    }
}

/// The bytes of an integer as serde_json writes it (with `itoa`, as serde_json does).
pub(crate) fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The bytes of a float as serde_json writes it (`null` when not finite).
fn write_f64(out: &mut Vec<u8>, x: f64) -> std::io::Result<()> {
    if x.is_finite() {
        CompactFormatter.write_f64(out, x)
    } else {
        CompactFormatter.write_null(out)
    }
}

/// `[hi, lo]` or `null`, as `Dd`'s `Serialize`.
fn write_dd(out: &mut Vec<u8>, dd: &Dd) -> std::io::Result<()> {
    match dd.parts() {
        Some([hi, lo]) => {
            out.push(b'[');
            write_f64(out, hi)?;
            out.push(b',');
            write_f64(out, lo)?;
            out.push(b']');
        }
        None => out.extend_from_slice(b"null"),
    }
    Ok(())
}

/// `[hi, lo]` (`null` gives up: serde_json reads it as an overflowed sum, which is rare).
fn read_dd(c: &mut Cursor<'_>) -> Option<Dd> {
    c.lit("[")?;
    let hi = c.f64()?;
    c.lit(",")?;
    let lo = c.f64()?;
    c.lit("]")?;
    Some(Dd::from_parts(hi, lo))
}

/// A float or `null`.
fn read_opt_f64(c: &mut Cursor<'_>) -> Option<Option<f64>> {
    if c.eat("null") {
        Some(None)
    } else {
        c.f64().map(Some)
    }
}

impl Acc {
    /// Append this accumulator's JSON, the bytes `serde_json::to_writer` writes.
    pub(crate) fn write_wire(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let io = |r: std::io::Result<()>| r.map_err(serde_json::Error::io);
        match self {
            Acc::Count(n) => {
                out.extend_from_slice(b"{\"count\":");
                write_int(out, *n);
            }
            Acc::Sum(SumAcc(dd)) => {
                out.extend_from_slice(b"{\"sum\":");
                io(write_dd(out, dd))?;
            }
            Acc::Min(m) | Acc::Max(m) => {
                out.extend_from_slice(if matches!(self, Acc::Min(_)) {
                    b"{\"min\":"
                } else {
                    b"{\"max\":"
                });
                match m {
                    Some(x) => io(write_f64(out, *x))?,
                    None => out.extend_from_slice(b"null"),
                }
            }
            Acc::Mean(MeanAcc { n, sum }) => {
                out.extend_from_slice(b"{\"mean\":{\"n\":");
                write_int(out, *n);
                out.extend_from_slice(b",\"sum\":");
                io(write_dd(out, sum))?;
                out.push(b'}');
            }
            other => return serde_json::to_writer(out, other),
        }
        out.push(b'}');
        Ok(())
    }

    /// Read an accumulator [`Acc::write_wire`] wrote by hand; `None` for any other text.
    pub(crate) fn read_wire(c: &mut Cursor<'_>) -> Option<Acc> {
        c.lit("{\"")?;
        let acc = if c.eat("count\":") {
            Acc::Count(c.u64()?)
        } else if c.eat("sum\":") {
            Acc::Sum(SumAcc(read_dd(c)?))
        } else if c.eat("min\":") {
            Acc::Min(read_opt_f64(c)?)
        } else if c.eat("max\":") {
            Acc::Max(read_opt_f64(c)?)
        } else if c.eat("mean\":{\"n\":") {
            let n = c.u64()?;
            c.lit(",\"sum\":")?;
            let sum = read_dd(c)?;
            c.lit("}")?;
            Acc::Mean(MeanAcc { n, sum })
        } else {
            return None;
        };
        c.lit("}")?;
        Some(acc)
    }
}
