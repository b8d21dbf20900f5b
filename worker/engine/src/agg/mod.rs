//! Aggregation accumulators: mergeable, serialisable, deterministic.
//!
//! One [`Acc`] per (window pane, group, aggregation). The engine feeds it records with
//! [`Acc::update`], combines panes and partial aggregates from other workers with [`Acc::merge`],
//! checkpoints it with serde, and turns it into a result value with [`Acc::result`].
//!
//! Every accumulator's result is a function of the *multiset* of inputs it has seen (with their
//! [`Order`] for first/last), not of how they were split into parts, updated and merged — exactly
//! for count, min, max, first, last, countDistinct and percentile, and under the condition stated
//! below for the floating-point sums. Serde round trips preserve the result.
//!
//! # What each function guarantees
//!
//! * **count**: exact (`u64`, saturating).
//! * **sum, mean**: a double-double accumulator `hi + lo`, renormalised after each value with two
//!   error-free two-sums, so `hi` is always `hi + lo` rounded to `f64`.
//!   *Exactness condition*: if every input is an integer multiple of one power of two `q` and
//!   `Σ|x| < 2^104·q`, then `hi + lo` is the exact sum of the inputs in every partial accumulator
//!   and in every merge, so `sum` is the exact sum correctly rounded to `f64` and `mean` is the
//!   exact sum divided by `n` to within one rounding; both are then bit-identical for every split
//!   and merge order. Examples: integers with `Σ|x| < 2^104 ≈ 2·10^31`; any values of magnitude
//!   ≥ 1 (`q = 2^-52`) with `Σ|x| < 2^52 ≈ 4.5·10^15`; values ≥ 2^-7 such as prices in cents
//!   (`q = 2^-59`) with `Σ|x| < 2^45 ≈ 3.5·10^13`. Outside the condition the sum keeps about 104
//!   bits (error ≲ `n·2^-104·Σ|x|`) and the last bit may depend on the merge order.
//!   A partial sum beyond `±f64::MAX` makes the result `null` (sticky). Sum of nothing is `0.0`;
//!   mean of nothing is `null`.
//! * **min, max**: exact, by `f64::total_cmp` (so `-0.0 < 0.0` and ties are deterministic);
//!   `null` when empty.
//! * **variance, stddev** (sample, `n − 1`; `null` for `n < 2`): count `n` and three double-double
//!   sums, `Σx`, `Σfl(x²)` and `Σ(x² − fl(x²))` (each square split exactly by Dekker's
//!   two-product; the rounding errors are summed apart so they keep their low bits when the squares
//!   are huge). The result evaluates `D = n·Σx² − (Σx)²` from an exact 14-term expansion of the
//!   stored sums, distilled with error-free transformations, so `D` is faithfully rounded from them
//!   even under total cancellation; variance `= max(D, 0)/(n(n−1))`, stddev its square root.
//!   *Exactness condition*: each of the three sums is exact when the sum of the magnitudes of its
//!   terms is below `2^104` times the largest power of two dividing all of them, and no square
//!   under- or overflows (`x = 0` or `2^-480 ≤ |x| ≤ 2^480`). Then the result is within a few ulp of
//!   the exact value and bit-identical for every split and merge order. This covers integers with
//!   `Σx² < 2^104`, and data whose nonzero magnitudes lie within a factor `2^k` of each other for
//!   `n < 2^(50−2k)`: e.g. values around `10^9` or `10^12` with `σ = 1` (mean ≫ stddev) are exact,
//!   and constant data gives exactly `0`. Otherwise (magnitudes spread widely, so little
//!   cancellation) the error is that of the stored sums, `≲ n·2^-104` relative to `Σx²`, i.e.
//!   `≲ n·2^-104·(μ² + σ²)/σ²` relative to the variance, and merge orders can differ at that level
//!   (tested ≤ 10^-12). `n·Σx²` beyond `f64::MAX` (`|x| ≳ 10^154/√n`) gives `null`.
//! * **countDistinct**: values are hashed with XXH3-64 and a fixed seed (identical across
//!   processes, runs and platforms). Up to [`DISTINCT_EXACT_LIMIT`] distinct hashes are kept in a
//!   hash set and counted exactly (wrong only on a 64-bit collision, probability ≈ `n²/2^65`).
//!   Above that, a HyperLogLog++ sketch (`hyperloglogplus`, precision 14, `m = 16384` registers):
//!   sparse representation (precision 25) up to a few thousand values, then dense registers with
//!   standard error `1.04/√m ≈ 0.81%`. The sketch's state is a function of the set of hashes, so
//!   merge (union) and the result are independent of insertion and merge order.
//! * **percentile(q)**: up to [`PERCENTILE_EXACT_LIMIT`] values are kept exactly, and the result
//!   is then the exact nearest-rank value (the `r`-th smallest, `r` as below). Beyond that limit
//!   the values move into a DDSketch (`sketches-ddsketch`) with relative accuracy
//!   [`PERCENTILE_ALPHA`] = 0.99%, positive and negative stores plus a zero bucket (magnitudes below
//!   `f64::MIN_POSITIVE` count as zero), and enough bins for the whole `f64` range so it never
//!   collapses (memory ≈ 0.9 KiB per decade spanned, per sign). Merge adds bucket counts: exact and
//!   order-independent. The result is the *nearest-rank* value: the `r`-th smallest input with
//!   `r = ⌈q·n⌉` computed in `f64` as `(q * n as f64).ceil()`, clamped to `[1, n]` — the exact
//!   minimum for `r = 1`, the exact maximum for `r = n`, otherwise the midpoint `2γ^(k+1)/(γ+1)` of
//!   the bucket holding that value, clamped to `[min, max]`. Relative error ≤ α (+ ~10^-12
//!   floating-point slack) < 1%. (The crate's own `quantile` uses rank `⌊q·(n−1)⌋`, 0-based; we
//!   query it with a quantile that maps onto the nearest rank, see `nearest_rank`.)
//!   Whether the state is exact or a sketch depends only on the number of values, and the
//!   sketch's bucket counts and min/max only on their multiset, so the result is independent of
//!   how the values were split, updated and merged (by update or by merge, a state crosses the
//!   limit into the very sketch it would have had).
//! * **first, last**: the JSON value of the input with the smallest / largest [`Order`]; equal
//!   orders are broken by the JSON text (smaller text for first, larger for last), so merges are
//!   commutative. The result is the picked value's canonical JSON text, written as it is
//!   ([`Output::Json`]): a number keeps its exact value (an integer beyond 64 bits stays itself,
//!   `-0` is `0`, as for group values; `weir_engine::decode::write_number`). Text that does not
//!   parse as JSON yields `null`.
//!
//! Numeric results (sum, mean, min, max, variance, stddev, percentile) are `f64`s, written in
//! their shortest round-trip form, `-0` as `0`: an integer beyond 2^53 is read as the nearest
//! `f64` and written as it (`12345678901234567890123` → `1.2345678901234568e22`).
//!
//! Non-finite numbers (which the decoder should never produce) and inputs of the wrong kind
//! (e.g. [`Input::Json`] for `sum`) are ignored; `count` counts every update. Merging accumulators
//! of different functions is a no-op. Nothing here panics on the record path.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod acc;
mod column;
mod distinct;
mod hashset;
mod moments;
mod numeric;
mod percentile;
mod pick;
mod rank;
pub(crate) mod wire;

pub use acc::Acc;
pub use column::{Column, ResultScratch, Sealed};
pub use distinct::{Distinct, DISTINCT_EXACT_LIMIT, DISTINCT_PRECISION};
pub use moments::{MeanAcc, Moments, SumAcc};
pub use percentile::{Quantile, PERCENTILE_ALPHA, PERCENTILE_EXACT_LIMIT};
pub use pick::{Pick, PickSlot};

/// What one record contributes to one aggregation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Input<'a> {
    /// count: nothing to read.
    Unit,
    /// numeric functions (sum, min, max, mean, stddev, variance, percentile): a finite f64.
    Number(f64),
    /// countDistinct, first, last: the field's value as canonical JSON text (e.g. `"m1"` with
    /// quotes, `12`, `true`).
    Json(&'a str),
}

/// One aggregation's result, as a result record writes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A number (or `null`), as serde_json writes it.
    Value(Value),
    /// `first` / `last`: the picked value's canonical JSON text (valid JSON, checked), written
    /// as it is. A [`Value`] would turn an integer beyond 64 bits into its nearest `f64`.
    Json(Box<str>),
}

impl Output {
    /// `null`.
    pub const NULL: Output = Output::Value(Value::Null);

    /// The result as a serde_json value: the picked text parsed (an integer beyond 64 bits
    /// becomes its nearest `f64`). For tests and tools; results are written with
    /// [`Output::write_to`].
    pub fn to_value(&self) -> Value {
        match self {
            Output::Value(v) => v.clone(),
            Output::Json(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }

    /// Append the result's compact JSON text, the `Display` text, to `out`: numbers and `null`
    /// directly (with `itoa` and `zmij`, as serde_json writes them, without its serializer
    /// and `fmt` per value), anything else through `Display`.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Output::Value(Value::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    out.push_str(itoa::Buffer::new().format(u));
                } else if let Some(i) = n.as_i64() {
                    out.push_str(itoa::Buffer::new().format(i));
                } else if let Some(x) = n.as_f64() {
                    // What serde_json writes a float with (not ryu: `1e16`, not `1e+16`).
                    out.push_str(zmij::Buffer::new().format_finite(x));
                }
            }
            Output::Value(Value::Null) => out.push_str("null"),
            Output::Json(text) => out.push_str(text),
            Output::Value(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

impl From<Value> for Output {
    fn from(v: Value) -> Self {
        Output::Value(v)
    }
}

/// The JSON text of the result, compact: what a result record holds.
impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Value(v) => write!(f, "{v}"),
            Output::Json(text) => f.write_str(text),
        }
    }
}

/// Arrival order of a record, for first/last ties: (event time ms, tie-break sequence; smaller =
/// earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Event time of the record, milliseconds since the Unix epoch.
    pub event_time: i64,
    /// Tie-break among records with the same event time (e.g. derived from partition and offset).
    pub seq: u64,
}

#[cfg(test)]
/// Helpers shared by the unit tests of the accumulators: feeding, splitting and merging,
/// naive references, and the value strategies of the property tests.
pub(crate) mod testkit {
    use proptest::prelude::*;
    use weir_crds::AggregationFn;

    use super::*;

    pub(crate) const ALL: [AggregationFn; 11] = [
        AggregationFn::Count,
        AggregationFn::Sum,
        AggregationFn::Min,
        AggregationFn::Max,
        AggregationFn::Mean,
        AggregationFn::Stddev,
        AggregationFn::Variance,
        AggregationFn::CountDistinct,
        AggregationFn::Percentile,
        AggregationFn::First,
        AggregationFn::Last,
    ];

    pub(super) const NUMERIC: [AggregationFn; 8] = [
        AggregationFn::Count,
        AggregationFn::Sum,
        AggregationFn::Min,
        AggregationFn::Max,
        AggregationFn::Mean,
        AggregationFn::Stddev,
        AggregationFn::Variance,
        AggregationFn::Percentile,
    ];

    pub(super) fn ord(event_time: i64, seq: u64) -> Order {
        Order { event_time, seq }
    }

    /// Small deterministic PRNG (xorshift64*), so the non-proptest tests are reproducible.
    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        pub(super) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(super) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Uniform in [0, 1).
        pub(super) fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Roughly normal, mean 0, standard deviation 1 (Irwin–Hall of 12 uniforms).
        pub(super) fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
        }
    }

    pub(super) fn feed(f: AggregationFn, q: Option<f64>, items: &[(Input<'_>, Order)]) -> Acc {
        let mut acc = Acc::new(f, q);
        for &(input, order) in items {
            acc.update(input, order);
        }
        acc
    }

    pub(super) fn roundtrip(acc: &Acc) -> Acc {
        let json = serde_json::to_string(acc).unwrap();
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    /// Feeds item `i` to part `assign[i] % parts`, then merges the parts in an order driven by
    /// `picks` (which part merges into which, and whether it goes through serde first).
    pub(super) fn split_merge(
        f: AggregationFn,
        q: Option<f64>,
        items: &[(Input<'_>, Order)],
        assign: &[usize],
        parts: usize,
        picks: &[(usize, usize, bool)],
    ) -> Acc {
        let mut pool: Vec<Acc> = (0..parts).map(|_| Acc::new(f, q)).collect();
        for (i, &(input, order)) in items.iter().enumerate() {
            let part = assign.get(i).copied().unwrap_or(i) % parts;
            pool[part].update(input, order);
        }
        let mut k = 0;
        while pool.len() > 1 {
            let (a, b, through_serde) = picks.get(k).copied().unwrap_or((k, k, k % 2 == 0));
            k += 1;
            let mut other = pool.swap_remove(a % pool.len());
            if through_serde {
                other = roundtrip(&other);
            }
            let len = pool.len();
            pool[b % len].merge(&other);
        }
        pool.pop().unwrap()
    }

    /// The result as JSON text, so that `-0.0` and `0.0` (and every bit of a float) differ.
    pub(super) fn text(acc: &Acc) -> String {
        acc.result().to_string()
    }

    pub(super) fn num(acc: &Acc) -> Option<f64> {
        acc.result().to_value().as_f64()
    }

    pub(super) fn rel_err(got: f64, want: f64) -> f64 {
        if got == want {
            0.0
        } else {
            ((got - want) / want).abs()
        }
    }

    pub(super) fn numbers(values: &[f64]) -> Vec<(Input<'static>, Order)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| (Input::Number(x), ord(0, i as u64)))
            .collect()
    }

    /// Nearest-rank reference: the ⌈q·n⌉-th smallest (1-based; the smallest when q·n < 1).
    pub(super) fn nearest_rank_ref(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        sorted[rank - 1]
    }

    /// Corrected two-pass variance, with the mean taken relative to the first value (so that
    /// a large mean does not cost precision).
    pub(super) fn two_pass_variance(values: &[f64]) -> f64 {
        let n = values.len() as f64;
        let x0 = values[0];
        let mean = x0 + values.iter().map(|x| x - x0).sum::<f64>() / n;
        let (sq, dev) = values.iter().fold((0.0, 0.0), |(sq, dev), x| {
            let d = x - mean;
            (sq + d * d, dev + d)
        });
        (sq - dev * dev / n) / (n - 1.0)
    }

    pub(super) fn int_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-(1i64 << 40)..(1i64 << 40)).prop_map(|v| v as f64),
            (-1000i64..1000).prop_map(|v| v as f64),
            Just(0.0),
        ]
    }

    pub(super) fn real_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6..1e6f64,
            -10.0..10.0f64,
            (-(1i64 << 50)..(1i64 << 50)).prop_map(|v| v as f64 / 1024.0),
            Just(0.0),
            Just(-0.0),
        ]
    }

    /// Signed values whose magnitudes are log-uniform over 1e-9..1e12, plus zeros.
    pub(super) fn wide_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (any::<bool>(), -9.0..12.0f64)
                .prop_map(|(neg, e)| if neg { -(10f64.powf(e)) } else { 10f64.powf(e) }),
            1 => Just(0.0),
        ]
    }

    pub(super) fn merge_picks() -> impl Strategy<Value = Vec<(usize, usize, bool)>> {
        prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 0..16)
    }

    pub(super) fn assignment() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0..64usize, 400)
    }
}

#[cfg(test)]
mod output_tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::Output;

    fn written(o: &Output) -> String {
        let mut out = String::from("left:");
        o.write_to(&mut out);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A result's text written directly is its `Display` text, for every number.
        #[test]
        fn a_result_written_directly_is_its_display_text(bits in any::<u64>(), u in any::<u64>(), i in any::<i64>()) {
            let x = f64::from_bits(bits);
            let values = [
                Output::from(json!(x)),
                Output::from(json!(x as f32 as f64)),
                Output::from(json!((bits % 2_000_001) as f64 / 100.0 - 10_000.0)),
                Output::from(json!(u)),
                Output::from(json!(i)),
            ];
            for o in &values {
                prop_assert_eq!(written(o), format!("left:{o}"));
            }
        }
    }

    #[test]
    fn nulls_picks_and_other_values_are_written_as_displayed() {
        for o in [
            Output::NULL,
            Output::Json("{\"a\":[1,2.5e300]}".into()),
            Output::from(Value::Bool(true)),
            Output::from(json!("é\"")),
            Output::from(json!(u64::MAX)),
            Output::from(json!(i64::MIN)),
            Output::from(json!(-0.0)),
            Output::from(json!(1e16)),
            Output::from(json!(1.5e-7)),
        ] {
            assert_eq!(written(&o), format!("left:{o}"));
        }
    }
}
