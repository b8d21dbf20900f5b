//! Numeric helpers of the floating-point accumulators: error-free transformations, the
//! double-double sum [`Dd`], accurate summation of an expansion, and the comparisons and JSON
//! form of result numbers. Exact by construction: nothing here rounds where the module
//! documentation of `agg` promises an exact result.

use std::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::Output;

/// `(s, e)` with `s = fl(a + b)` and `s + e = a + b` exactly (Knuth's two-sum; no precondition).
#[inline(always)]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// Veltkamp split of `a` into two 26-bit halves, `hi + lo = a` exactly (scaled for huge `a`).
#[inline(always)]
fn split(a: f64) -> (f64, f64) {
    const SPLITTER: f64 = 134_217_729.0; // 2^27 + 1
    const BIG: f64 = 6.696_928_794_914_171e299; // 2^996
    if a.abs() > BIG {
        let b = a * 3.725_290_298_461_914e-9; // 2^-28, exact
        let c = SPLITTER * b;
        let hi = c - (c - b);
        (hi * 268_435_456.0, (b - hi) * 268_435_456.0)
    } else {
        let c = SPLITTER * a;
        let hi = c - (c - a);
        (hi, a - hi)
    }
}

/// `(p, e)` with `p = fl(a·b)` and `p + e = a·b` exactly, barring overflow and underflow
/// (Dekker's two-product; used instead of `mul_add` so that results do not depend on whether the
/// build has hardware FMA, and because software FMA is slow).
#[inline(always)]
pub(super) fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    let (ah, al) = split(a);
    let (bh, bl) = split(b);
    let e = ((ah * bh - p) + ah * bl + al * bh) + al * bl;
    (p, e)
}

/// A double-double sum `hi + lo`, always normalised (`hi = fl(hi + lo)`); non-finite once any
/// partial sum overflowed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Dd {
    hi: f64,
    pub(super) lo: f64,
}

impl Dd {
    #[inline(always)]
    pub(super) fn add(&mut self, x: f64) {
        let (s, e) = two_sum(self.hi, x);
        let (hi, lo) = two_sum(s, self.lo + e);
        self.hi = hi;
        self.lo = lo;
    }

    #[inline]
    pub(super) fn merge(&mut self, other: &Dd) {
        self.add(other.hi);
        self.add(other.lo);
    }

    /// The sum rounded to `f64`, `None` after overflow.
    pub(super) fn value(&self) -> Option<f64> {
        (self.hi.is_finite() && self.lo.is_finite()).then_some(self.hi)
    }

    /// `[hi, lo]` as serialised, `None` after overflow.
    pub(super) fn parts(&self) -> Option<[f64; 2]> {
        self.value().map(|hi| [hi, self.lo])
    }

    /// The sum read back from its parts. Renormalising is a no-op for what was written, and
    /// restores the invariant otherwise.
    pub(super) fn from_parts(hi: f64, lo: f64) -> Dd {
        let (hi, lo) = two_sum(hi, lo);
        Dd { hi, lo }
    }
}

/// Serialised as `[hi, lo]`, or `null` once overflowed (JSON has no infinities).
impl Serialize for Dd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.parts().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Dd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<[f64; 2]>::deserialize(deserializer)? {
            Some([hi, lo]) => Dd::from_parts(hi, lo),
            None => Dd {
                hi: f64::NAN,
                lo: f64::NAN,
            },
        })
    }
}

/// Sums an expansion accurately: repeated error-free two-sum sweeps (distillation) until the
/// components no longer overlap, then adds them from the smallest up. The result is faithfully
/// rounded, exactly zero when the exact sum is zero, and a deterministic function of the input.
pub(super) fn sum_expansion(v: &mut [f64]) -> f64 {
    for _ in 0..64 {
        let mut changed = false;
        for i in 1..v.len() {
            let (s, e) = two_sum(v[i - 1], v[i]);
            changed |= s.to_bits() != v[i].to_bits() || e.to_bits() != v[i - 1].to_bits();
            v[i] = s;
            v[i - 1] = e;
        }
        if !changed {
            break;
        }
    }
    v.iter().sum()
}

/// Keeps the smaller (`want == Less`) or larger (`Greater`) of `slot` and `x` by `total_cmp`.
#[inline]
pub(super) fn keep_extreme(slot: &mut Option<f64>, x: f64, want: Ordering) {
    match slot {
        Some(cur) if x.total_cmp(cur) != want => {}
        _ => *slot = Some(x),
    }
}

/// [`keep_extreme`] for a slot where NaN means empty; non-finite inputs are ignored.
#[inline]
pub(super) fn keep_extreme_nan(slot: &mut f64, x: f64, want: Ordering) {
    if x.is_finite() && (slot.is_nan() || x.total_cmp(slot) == want) {
        *slot = x;
    }
}

/// A finite number as JSON, anything else as `null`; `-0` as `0` (as group values and
/// first/last write it: one zero), whichever of the two a min or a sum ended on.
pub(super) fn number(x: Option<f64>) -> Output {
    // IEEE 754: -0 + 0 = +0, and x + 0 = x for every other x.
    x.and_then(|x| serde_json::Number::from_f64(x + 0.0))
        .map_or(Output::NULL, |n| Output::Value(Value::Number(n)))
}
