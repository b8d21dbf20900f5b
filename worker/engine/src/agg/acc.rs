//! [`Acc`]: the accumulator of one aggregation for one row (a session, a partial aggregate, a
//! checkpoint), the reference form of every function: update, merge, result and serde exactly
//! as the `agg` module documentation states.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_crds::AggregationFn;

use super::distinct::{hash_value, Distinct};
use super::moments::{MeanAcc, Moments, SumAcc};
use super::numeric::{keep_extreme, number};
use super::percentile::Quantile;
use super::pick::{json_output, offer, Pick};
use super::{Input, Order, Output};

/// Per-aggregation accumulator.
///
/// `size_of::<Acc>()` is 48 bytes: the variance state (56 bytes) and the percentile sketch are
/// boxed (allocated by [`Acc::new`], never by [`Acc::update`]), the countDistinct and first/last
/// states are heap-backed. Serialised with serde as an externally tagged enum (`{"count": 3}`,
/// `{"sum": [hi, lo]}`, `{"min": null}`, ...). Floats round-trip exactly through `serde_json`
/// because this crate enables its `float_roundtrip` feature (without it, a parsed `f64` can be one
/// ulp off, which breaks bit-identical merges and, through `Σx²`, the variance).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Acc {
    /// `count`: number of records.
    Count(u64),
    /// `sum`.
    Sum(SumAcc),
    /// `min`: the smallest value, `None` when empty.
    Min(Option<f64>),
    /// `max`: the largest value, `None` when empty.
    Max(Option<f64>),
    /// `mean`.
    Mean(MeanAcc),
    /// `stddev` (sample).
    Stddev(Box<Moments>),
    /// `variance` (sample).
    Variance(Box<Moments>),
    /// `countDistinct`.
    CountDistinct(Distinct),
    /// `percentile`.
    Percentile(Box<Quantile>),
    /// `first`: the earliest pick, `None` when empty.
    First(Option<Pick>),
    /// `last`: the latest pick, `None` when empty.
    Last(Option<Pick>),
}

impl Acc {
    /// A new, empty accumulator for `function`. `quantile` is read by `percentile` only: `None` or
    /// NaN means 0.5, and values are clamped to `[0, 1]`.
    pub fn new(function: AggregationFn, quantile: Option<f64>) -> Acc {
        match function {
            AggregationFn::Count => Acc::Count(0),
            AggregationFn::Sum => Acc::Sum(SumAcc::default()),
            AggregationFn::Min => Acc::Min(None),
            AggregationFn::Max => Acc::Max(None),
            AggregationFn::Mean => Acc::Mean(MeanAcc::default()),
            AggregationFn::Stddev => Acc::Stddev(Box::default()),
            AggregationFn::Variance => Acc::Variance(Box::default()),
            AggregationFn::CountDistinct => Acc::CountDistinct(Distinct::default()),
            AggregationFn::Percentile => Acc::Percentile(Box::new(Quantile::new(quantile))),
            AggregationFn::First => Acc::First(None),
            AggregationFn::Last => Acc::Last(None),
        }
    }

    /// The aggregation function this accumulator computes.
    pub fn function(&self) -> AggregationFn {
        match self {
            Acc::Count(_) => AggregationFn::Count,
            Acc::Sum(_) => AggregationFn::Sum,
            Acc::Min(_) => AggregationFn::Min,
            Acc::Max(_) => AggregationFn::Max,
            Acc::Mean(_) => AggregationFn::Mean,
            Acc::Stddev(_) => AggregationFn::Stddev,
            Acc::Variance(_) => AggregationFn::Variance,
            Acc::CountDistinct(_) => AggregationFn::CountDistinct,
            Acc::Percentile(_) => AggregationFn::Percentile,
            Acc::First(_) => AggregationFn::First,
            Acc::Last(_) => AggregationFn::Last,
        }
    }

    /// Adds one record's contribution. Never panics; allocation-free for count, sum, min, max,
    /// mean, stddev and variance. Non-finite numbers and inputs of the wrong kind are ignored
    /// (`count` counts every call).
    #[inline]
    pub fn update(&mut self, input: Input<'_>, order: Order) {
        match self {
            Acc::Count(n) => *n = n.saturating_add(1),
            Acc::Sum(s) => {
                if let Input::Number(x) = input {
                    if x.is_finite() {
                        s.0.add(x);
                    }
                }
            }
            Acc::Mean(m) => {
                if let Input::Number(x) = input {
                    if x.is_finite() {
                        m.n = m.n.saturating_add(1);
                        m.sum.add(x);
                    }
                }
            }
            Acc::Min(m) => {
                if let Input::Number(x) = input {
                    if x.is_finite() {
                        keep_extreme(m, x, Ordering::Less);
                    }
                }
            }
            Acc::Max(m) => {
                if let Input::Number(x) = input {
                    if x.is_finite() {
                        keep_extreme(m, x, Ordering::Greater);
                    }
                }
            }
            Acc::Stddev(m) | Acc::Variance(m) => {
                if let Input::Number(x) = input {
                    if x.is_finite() {
                        m.add(x);
                    }
                }
            }
            Acc::CountDistinct(d) => {
                if let Input::Json(text) = input {
                    d.insert(hash_value(text));
                }
            }
            Acc::Percentile(p) => {
                if let Input::Number(x) = input {
                    if x.is_finite() {
                        // `+ 0.0` turns -0.0 into 0.0, so the sketch's exact min/max cannot
                        // depend on the order in which zeros of both signs arrive.
                        p.add(x + 0.0);
                    }
                }
            }
            Acc::First(slot) => {
                if let Input::Json(text) = input {
                    offer(slot, order, text, Ordering::Less);
                }
            }
            Acc::Last(slot) => {
                if let Input::Json(text) = input {
                    offer(slot, order, text, Ordering::Greater);
                }
            }
        }
    }

    /// Empties this accumulator in place: afterwards it behaves exactly like [`Acc::new`] of the
    /// same function and quantile, but keeps the memory of its boxed and exact states (for
    /// reusing scratch rows, e.g. when merging the panes of hopping windows).
    pub fn reset(&mut self) {
        match self {
            Acc::Count(n) => *n = 0,
            Acc::Sum(s) => *s = SumAcc::default(),
            Acc::Min(m) | Acc::Max(m) => *m = None,
            Acc::Mean(m) => *m = MeanAcc::default(),
            Acc::Stddev(m) | Acc::Variance(m) => **m = Moments::default(),
            Acc::CountDistinct(d) => d.clear(),
            Acc::Percentile(p) => p.clear(),
            Acc::First(slot) | Acc::Last(slot) => *slot = None,
        }
    }

    /// Merges another accumulator of the same function into this one (used to combine time panes
    /// and partial aggregates from other workers). A different function is ignored.
    pub fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a = a.saturating_add(*b),
            (Acc::Sum(a), Acc::Sum(b)) => a.0.merge(&b.0),
            (Acc::Mean(a), Acc::Mean(b)) => a.merge(b),
            (Acc::Min(a), Acc::Min(Some(b))) => keep_extreme(a, *b, Ordering::Less),
            (Acc::Max(a), Acc::Max(Some(b))) => keep_extreme(a, *b, Ordering::Greater),
            (Acc::Stddev(a), Acc::Stddev(b)) | (Acc::Variance(a), Acc::Variance(b)) => a.merge(b),
            (Acc::CountDistinct(a), Acc::CountDistinct(b)) => a.merge(b),
            (Acc::Percentile(a), Acc::Percentile(b)) => a.merge(b),
            (Acc::First(a), Acc::First(Some(b))) => offer(a, b.order, &b.json, Ordering::Less),
            (Acc::Last(a), Acc::Last(Some(b))) => offer(a, b.order, &b.json, Ordering::Greater),
            _ => {}
        }
    }

    /// The output value for a result record: a JSON number (integer for count and
    /// countDistinct), the picked JSON value for first/last, or `null` when undefined (see the
    /// module documentation).
    pub fn result(&self) -> Output {
        match self {
            Acc::Count(n) => Value::from(*n).into(),
            Acc::Sum(s) => number(s.0.value()),
            Acc::Mean(m) => number(m.mean()),
            Acc::Min(m) | Acc::Max(m) => number(*m),
            Acc::Variance(m) => number(m.variance()),
            Acc::Stddev(m) => number(m.variance().map(f64::sqrt)),
            Acc::CountDistinct(d) => Value::from(d.estimate()).into(),
            Acc::Percentile(p) => number(p.value()),
            Acc::First(slot) | Acc::Last(slot) => match slot {
                Some(pick) => json_output(&pick.json),
                None => Output::NULL,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use serde_json::Value;
    use weir_crds::AggregationFn;

    use crate::agg::testkit::*;
    use crate::agg::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Integer data: every numeric function, split and merged in any order, gives the very
        /// same result as one accumulator; and the exact ones match a naive exact reference.
        #[test]
        fn integer_data_split_merge_and_reference(
            values in prop::collection::vec(int_value(), 0..300),
            assign in assignment(),
            parts in 1..9usize,
            picks in merge_picks(),
            q in 0.0..=1.0f64,
        ) {
            let items = numbers(&values);
            for f in NUMERIC {
                let whole = feed(f, Some(q), &items);
                let split = split_merge(f, Some(q), &items, &assign, parts, &picks);
                prop_assert_eq!(text(&whole), text(&split), "{:?}", f);
                prop_assert_eq!(text(&whole), text(&roundtrip(&whole)), "{:?}", f);
            }
            let n = values.len();
            prop_assert_eq!(feed(AggregationFn::Count, None, &items).result().to_value(), Value::from(n));
            let exact: i128 = values.iter().map(|&x| x as i128).sum();
            prop_assert_eq!(num(&feed(AggregationFn::Sum, None, &items)), Some(exact as f64));
            let min = values.iter().copied().min_by(f64::total_cmp);
            let max = values.iter().copied().max_by(f64::total_cmp);
            prop_assert_eq!(num(&feed(AggregationFn::Min, None, &items)), min);
            prop_assert_eq!(num(&feed(AggregationFn::Max, None, &items)), max);
            let mean = num(&feed(AggregationFn::Mean, None, &items));
            if n == 0 {
                prop_assert_eq!(mean, None);
            } else {
                let want = exact as f64 / n as f64;
                prop_assert!(rel_err(mean.unwrap(), want) <= 1e-15, "{:?} vs {}", mean, want);
            }
            let variance = num(&feed(AggregationFn::Variance, None, &items));
            let stddev = num(&feed(AggregationFn::Stddev, None, &items));
            if n < 2 {
                prop_assert_eq!(variance, None);
                prop_assert_eq!(stddev, None);
            } else {
                // Exact: n·Σx² − (Σx)² in integers (|x| < 2^40, n < 300 fits in i128).
                let s2: i128 = values.iter().map(|&x| (x as i128) * (x as i128)).sum();
                let d = n as i128 * s2 - exact * exact;
                let want = d as f64 / (n as f64 * (n as f64 - 1.0));
                prop_assert!(rel_err(variance.unwrap(), want) <= 1e-15, "{:?} vs {}", variance, want);
                prop_assert!(rel_err(stddev.unwrap(), want.sqrt()) <= 1e-15);
            }
        }

        /// Real-valued data: sum and mean against an exact reference on dyadic data, split/merge
        /// bit-identical for count/sum/mean/min/max/percentile, variance within 1e-12.
        #[test]
        fn real_data_split_merge_and_reference(
            values in prop::collection::vec(real_value(), 0..300),
            assign in assignment(),
            parts in 1..9usize,
            picks in merge_picks(),
            q in 0.0..=1.0f64,
        ) {
            let items = numbers(&values);
            for f in NUMERIC {
                let whole = feed(f, Some(q), &items);
                let split = split_merge(f, Some(q), &items, &assign, parts, &picks);
                match f {
                    AggregationFn::Variance | AggregationFn::Stddev => {
                        match (num(&whole), num(&split)) {
                            (Some(a), Some(b)) => prop_assert!(rel_err(b, a) <= 1e-12, "{:?} {} {}", f, a, b),
                            (a, b) => prop_assert_eq!(a, b),
                        }
                    }
                    _ => prop_assert_eq!(text(&whole), text(&split), "{:?}", f),
                }
                prop_assert_eq!(text(&whole), text(&roundtrip(&whole)), "{:?}", f);
            }
            if values.len() >= 2 {
                let want = two_pass_variance(&values);
                let got = num(&feed(AggregationFn::Variance, None, &items)).unwrap();
                prop_assert!(rel_err(got, want) <= 1e-12 || (got - want).abs() <= 1e-20, "{} vs {}", got, want);
            }
            // The same values scaled to dyadic rationals k/1024: exact reference for the sum.
            let dyadic: Vec<f64> = values.iter().map(|x| (x * 1024.0).round() / 1024.0).collect();
            let exact: i128 = dyadic.iter().map(|&x| (x * 1024.0) as i128).sum();
            let items = numbers(&dyadic);
            prop_assert_eq!(num(&feed(AggregationFn::Sum, None, &items)), Some(exact as f64 / 1024.0));
        }

        /// countDistinct, first and last on JSON values with duplicates and order ties.
        #[test]
        fn json_functions_split_merge_and_reference(
            raw in prop::collection::vec((0..3000u32, -3..3i64, 0..3u64, any::<bool>()), 0..400),
            assign in assignment(),
            parts in 1..9usize,
            picks in merge_picks(),
        ) {
            let texts: Vec<String> = raw
                .iter()
                .map(|&(v, _, _, quoted)| if quoted { format!("\"v{v}\"") } else { v.to_string() })
                .collect();
            let items: Vec<(Input<'_>, Order)> = raw
                .iter()
                .zip(&texts)
                .map(|(&(_, t, s, _), text)| (Input::Json(text.as_str()), ord(t, s)))
                .collect();
            for f in [AggregationFn::CountDistinct, AggregationFn::First, AggregationFn::Last] {
                let whole = feed(f, None, &items);
                let split = split_merge(f, None, &items, &assign, parts, &picks);
                prop_assert_eq!(text(&whole), text(&split), "{:?}", f);
                prop_assert_eq!(text(&whole), text(&roundtrip(&whole)), "{:?}", f);
            }
            let distinct: HashSet<&str> = texts.iter().map(String::as_str).collect();
            prop_assert_eq!(
                feed(AggregationFn::CountDistinct, None, &items).result().to_value(),
                Value::from(distinct.len())
            );
            let keyed = items.iter().map(|&(input, order)| match input {
                Input::Json(t) => (order, t),
                _ => unreachable!(),
            });
            let first = keyed.clone().min().map(|(_, t)| serde_json::from_str::<Value>(t).unwrap());
            let last = keyed.max().map(|(_, t)| serde_json::from_str::<Value>(t).unwrap());
            prop_assert_eq!(feed(AggregationFn::First, None, &items).result().to_value(), first.unwrap_or(Value::Null));
            prop_assert_eq!(feed(AggregationFn::Last, None, &items).result().to_value(), last.unwrap_or(Value::Null));
        }

        /// The record path never panics, whatever the input (NaN, infinities, wrong kinds, junk).
        #[test]
        fn update_and_merge_never_panic(
            xs in prop::collection::vec(any::<f64>(), 0..50),
            junk in prop::collection::vec(".{0,12}", 0..20),
            t in any::<i64>(),
            s in any::<u64>(),
        ) {
            for f in ALL {
                let mut a = Acc::new(f, Some(0.5));
                let mut b = Acc::new(f, None);
                for &x in &xs {
                    a.update(Input::Number(x), ord(t, s));
                    b.update(Input::Unit, ord(t, s));
                }
                for j in &junk {
                    b.update(Input::Json(j), ord(t, s));
                    a.update(Input::Json(j), ord(t, s));
                }
                a.merge(&b);
                a.merge(&Acc::new(AggregationFn::Count, None));
                let _ = a.result().to_value();
                let _ = roundtrip(&a).result().to_value();
            }
        }
    }

    #[test]
    fn size_of_acc_is_small() {
        let size = std::mem::size_of::<Acc>();
        println!("size_of::<Acc>() = {size}");
        assert!(size <= 48, "size_of::<Acc>() = {size}");
    }

    #[test]
    fn empty_accumulators() {
        for f in ALL {
            let acc = Acc::new(f, Some(0.5));
            let want = match f {
                AggregationFn::Count | AggregationFn::CountDistinct => Value::from(0),
                AggregationFn::Sum => Value::from(0.0),
                _ => Value::Null,
            };
            assert_eq!(acc.result().to_value(), want, "{f:?}");
            assert_eq!(roundtrip(&acc).result().to_value(), want, "{f:?}");
            assert_eq!(acc.function(), f);
            // Merging empties into empties stays empty.
            let mut merged = Acc::new(f, Some(0.5));
            merged.merge(&acc);
            assert_eq!(merged.result().to_value(), want, "{f:?}");
        }
    }

    #[test]
    fn overflow_gives_null_and_stays_null() {
        let big = numbers(&[1e308, 1e308]);
        for f in [AggregationFn::Sum, AggregationFn::Mean] {
            let acc = feed(f, None, &big);
            assert_eq!(acc.result().to_value(), Value::Null, "{f:?}");
            let rt = roundtrip(&acc);
            assert_eq!(rt.result().to_value(), Value::Null, "{f:?}");
            // Overflow is sticky: later values and merges keep it null.
            let mut later = rt;
            later.update(Input::Number(-1e308), ord(0, 0));
            later.merge(&feed(f, None, &numbers(&[1.0])));
            assert_eq!(later.result().to_value(), Value::Null, "{f:?}");
            let mut fine = feed(f, None, &numbers(&[1.0]));
            fine.merge(&acc);
            assert_eq!(fine.result().to_value(), Value::Null, "{f:?}");
        }
        // Large but finite sums are fine; the double-double keeps the small part.
        let acc = feed(AggregationFn::Sum, None, &numbers(&[1e308, 1.0, -1e308]));
        assert_eq!(num(&acc), Some(1.0));
        for f in [AggregationFn::Variance, AggregationFn::Stddev] {
            let acc = feed(f, None, &numbers(&[1e200, -1e200, 3.0]));
            assert_eq!(acc.result().to_value(), Value::Null, "{f:?}");
            assert_eq!(roundtrip(&acc).result().to_value(), Value::Null, "{f:?}");
        }
        // Min, max, percentile take huge values in their stride.
        let huge = numbers(&[f64::MAX, -f64::MAX, 1e-300, 5e-324, -0.0]);
        assert_eq!(num(&feed(AggregationFn::Max, None, &huge)), Some(f64::MAX));
        assert_eq!(num(&feed(AggregationFn::Min, None, &huge)), Some(-f64::MAX));
        for (q, want) in [(0.0, -f64::MAX), (0.3, 0.0), (0.7, 1e-300), (1.0, f64::MAX)] {
            let acc = feed(AggregationFn::Percentile, Some(q), &huge);
            let got = num(&acc).unwrap();
            assert!(
                (got - want).abs() <= 0.01 * want.abs(),
                "q={q}: {got} vs {want}"
            );
            assert_eq!(text(&roundtrip(&acc)), text(&acc));
        }
    }

    #[test]
    fn non_finite_and_mismatched_inputs_are_ignored() {
        for f in NUMERIC {
            let mut acc = feed(f, None, &numbers(&[1.0, 2.0, 4.0]));
            let before = text(&acc);
            if f == AggregationFn::Count {
                continue;
            }
            for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                acc.update(Input::Number(x), ord(0, 0));
            }
            acc.update(Input::Json("12"), ord(0, 0));
            acc.update(Input::Unit, ord(0, 0));
            acc.merge(&feed(AggregationFn::Count, None, &numbers(&[1.0])));
            assert_eq!(text(&acc), before, "{f:?}");
        }
        let mut count = Acc::new(AggregationFn::Count, None);
        count.update(Input::Unit, ord(0, 0));
        count.update(Input::Number(f64::NAN), ord(0, 0));
        count.update(Input::Json("1"), ord(0, 0));
        assert_eq!(count.result().to_value(), Value::from(3));
        let mut distinct = Acc::new(AggregationFn::CountDistinct, None);
        distinct.update(Input::Number(1.0), ord(0, 0));
        assert_eq!(distinct.result().to_value(), Value::from(0));
    }

    /// `-0` is written `0`, as a group value and `first`/`last` are: whichever zero a min (by
    /// `total_cmp`, `-0 < 0`) or a sum ends on.
    #[test]
    fn min_max_zero_signs_are_deterministic() {
        for values in [[0.0, -0.0], [-0.0, 0.0]] {
            assert_eq!(
                text(&feed(AggregationFn::Min, None, &numbers(&values))),
                "0.0"
            );
            assert_eq!(
                text(&feed(AggregationFn::Max, None, &numbers(&values))),
                "0.0"
            );
            assert_eq!(
                text(&feed(
                    AggregationFn::Percentile,
                    Some(0.0),
                    &numbers(&values)
                )),
                "0.0"
            );
            assert_eq!(
                text(&feed(AggregationFn::Sum, None, &numbers(&values))),
                "0.0"
            );
        }
    }

    #[test]
    fn serde_round_trip_of_every_variant() {
        let mut rng = Rng(42);
        let values: Vec<f64> = (0..3000).map(|_| (rng.unit() - 0.3) * 1e4).collect();
        let texts: Vec<String> = (0..3000).map(|i| format!("\"k{}\"", i % 2000)).collect();
        for f in ALL {
            let items: Vec<(Input<'_>, Order)> = match f {
                AggregationFn::CountDistinct | AggregationFn::First | AggregationFn::Last => texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (Input::Json(t.as_str()), ord(i as i64 % 17, i as u64)))
                    .collect(),
                _ => numbers(&values),
            };
            // Empty, small and large states.
            for len in [0, 1, 50, items.len()] {
                let acc = feed(f, Some(0.9), &items[..len]);
                let json = serde_json::to_string(&acc).unwrap();
                let back: Acc = serde_json::from_str(&json).unwrap();
                assert_eq!(text(&back), text(&acc), "{f:?} {len}");
                assert_eq!(back.function(), f);
                // The restored state keeps working like the original.
                let (mut a, mut b) = (acc.clone(), back);
                for &(input, order) in &items[len / 2..] {
                    a.update(input, order);
                    b.update(input, order);
                }
                assert_eq!(text(&a), text(&b), "{f:?} {len}");
                let mut c = feed(f, Some(0.9), &items[..len / 3]);
                c.merge(&roundtrip(&a));
                a.merge(&feed(f, Some(0.9), &items[..len / 3]));
                assert_eq!(text(&a), text(&c), "{f:?} {len}");
                // And serialises to the same text again.
                assert_eq!(
                    serde_json::to_string(&roundtrip(&acc)).unwrap().len(),
                    json.len()
                );
            }
        }
    }
}
