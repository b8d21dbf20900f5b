//! The states of `sum`, `mean`, `variance` and `stddev`: double-double sums of the values and
//! of their squares, exact under the conditions of the `agg` module documentation, so their
//! results do not depend on how the inputs were split and merged.

use serde::{Deserialize, Serialize};

use super::numeric::{sum_expansion, two_prod, Dd};

/// Accumulator for `sum`: a double-double sum (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SumAcc(pub(super) Dd);

/// Accumulator for `mean`: count and double-double sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanAcc {
    pub(super) n: u64,
    pub(super) sum: Dd,
}

impl MeanAcc {
    /// Add another mean's count and sum to this one.
    #[inline]
    pub(super) fn merge(&mut self, other: &MeanAcc) {
        self.n = self.n.saturating_add(other.n);
        self.sum.merge(&other.sum);
    }

    /// `(hi + lo) / n`, with the remainder of `hi / n` folded back in (double-double division).
    pub(super) fn mean(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let hi = self.sum.value()?;
        let n = self.n as f64;
        let q = hi / n;
        let (p, e) = two_prod(q, n);
        let r = ((hi - p) - e) + self.sum.lo;
        let mean = q + r / n;
        mean.is_finite().then_some(mean)
    }
}

/// Accumulator for `variance` and `stddev`: count and double-double sums of `x`, of the rounded
/// squares `fl(x²)` and of their rounding errors `x² − fl(x²)` (kept apart, so that the errors
/// keep their low bits even when the squares are huge, as with a large mean).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    n: u64,
    s1: Dd,
    sq: Dd,
    sq_err: Dd,
}

impl Moments {
    #[inline]
    pub(super) fn add(&mut self, x: f64) {
        self.n = self.n.saturating_add(1);
        self.s1.add(x);
        let (p, e) = two_prod(x, x);
        self.sq.add(p);
        self.sq_err.add(e);
    }

    pub(super) fn merge(&mut self, other: &Moments) {
        self.n = self.n.saturating_add(other.n);
        self.s1.merge(&other.s1);
        self.sq.merge(&other.sq);
        self.sq_err.merge(&other.sq_err);
    }

    /// Sample variance, `None` for `n < 2` or after overflow.
    pub(super) fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let (h1, l1) = (self.s1.value()?, self.s1.lo);
        let (h2, l2) = (self.sq.value()?, self.sq.lo);
        let (h3, l3) = (self.sq_err.value()?, self.sq_err.lo);
        let n = self.n as f64;
        // D = n·Σx² − (Σx)² as an exact expansion of fourteen doubles.
        let (a1, a2) = two_prod(n, h2);
        let (a3, a4) = two_prod(n, l2);
        let (a5, a6) = two_prod(n, h3);
        let (a7, a8) = two_prod(n, l3);
        let (b1, b2) = two_prod(h1, h1);
        let (b3, b4) = two_prod(2.0 * h1, l1);
        let (b5, b6) = two_prod(l1, l1);
        let mut terms = [a1, a2, a3, a4, a5, a6, a7, a8, -b1, -b2, -b3, -b4, -b5, -b6];
        let d = sum_expansion(&mut terms);
        let variance = d.max(0.0) / (n * (n - 1.0));
        variance.is_finite().then_some(variance)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;
    use weir_crds::AggregationFn;

    use crate::agg::testkit::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Large mean, small spread, non-dyadic values: the variance is exact (bit-identical
        /// across splits) and matches a careful two-pass computation.
        #[test]
        fn variance_similar_magnitudes_exact_across_splits(
            log_mean in 0.0..12.0f64,
            log_spread in -9.0..-1.0f64,
            noise in prop::collection::vec(-3.0..3.0f64, 2..300),
            assign in assignment(),
            parts in 1..9usize,
            picks in merge_picks(),
        ) {
            let mean = 10f64.powf(log_mean);
            let values: Vec<f64> = noise.iter().map(|z| mean * (1.0 + z * 10f64.powf(log_spread))).collect();
            let items = numbers(&values);
            for f in [AggregationFn::Variance, AggregationFn::Stddev, AggregationFn::Sum, AggregationFn::Mean] {
                let whole = feed(f, None, &items);
                let split = split_merge(f, None, &items, &assign, parts, &picks);
                prop_assert_eq!(text(&whole), text(&split), "{:?}", f);
            }
            let got = num(&feed(AggregationFn::Variance, None, &items)).unwrap();
            let want = two_pass_variance(&values);
            prop_assert!(rel_err(got, want) <= 1e-9 || (got - want).abs() <= 1e-300, "{} vs {}", got, want);
        }
    }

    #[test]
    fn variance_needs_two_values() {
        for f in [AggregationFn::Variance, AggregationFn::Stddev] {
            let one = feed(f, None, &numbers(&[5.0]));
            assert_eq!(one.result().to_value(), Value::Null);
            let two = feed(f, None, &numbers(&[5.0, 7.0]));
            let want = if f == AggregationFn::Variance {
                2.0
            } else {
                2f64.sqrt()
            };
            assert_eq!(num(&two), Some(want));
        }
        // Merging two singletons gives the two-value result.
        let mut a = feed(AggregationFn::Variance, None, &numbers(&[5.0]));
        a.merge(&feed(AggregationFn::Variance, None, &numbers(&[7.0])));
        assert_eq!(num(&a), Some(2.0));
    }

    /// Values around 1e9 with standard deviation 1: relative error vs two-pass ≤ 1e-9 (in
    /// practice ~1e-12), and split/merge agreement at that level.
    #[test]
    fn variance_large_mean_small_spread() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for (mean, n) in [(1e9, 10_000), (1e9, 100), (-3e9, 2_000), (1e12, 1_000)] {
            let values: Vec<f64> = (0..n).map(|_| mean + rng.normal()).collect();
            let items = numbers(&values);
            let want = two_pass_variance(&values);
            let acc = feed(AggregationFn::Variance, None, &items);
            let got = num(&acc).unwrap();
            let err = rel_err(got, want);
            println!("mean {mean:e} n {n}: variance {got} two-pass {want} rel err {err:e}");
            assert!(err <= 1e-9, "mean {mean}: {got} vs {want}");
            let sd = num(&feed(AggregationFn::Stddev, None, &items)).unwrap();
            assert!(rel_err(sd, want.sqrt()) <= 1e-9);
            let assign: Vec<usize> = (0..n).map(|_| rng.below(7)).collect();
            let picks: Vec<(usize, usize, bool)> = (0..7)
                .map(|_| (rng.below(64), rng.below(64), rng.below(2) == 0))
                .collect();
            let split = split_merge(AggregationFn::Variance, None, &items, &assign, 7, &picks);
            // Similar magnitudes: Σx, Σfl(x²) and Σ(x² − fl(x²)) are all exact, so the split
            // result is bit-identical.
            assert_eq!(text(&split), text(&acc), "mean {mean}");
        }
        // Dyadic data around 1e9 (multiples of 1/8): the sums are exact, so the result is exact
        // to rounding and bit-identical across splits.
        let values: Vec<f64> = (0..5000)
            .map(|_| 1e9 + (rng.normal() * 8.0).round() / 8.0)
            .collect();
        let items = numbers(&values);
        let acc = feed(AggregationFn::Variance, None, &items);
        let assign: Vec<usize> = (0..values.len()).map(|_| rng.below(5)).collect();
        let split = split_merge(AggregationFn::Variance, None, &items, &assign, 5, &[]);
        assert_eq!(text(&acc), text(&split));
        assert!(rel_err(num(&acc).unwrap(), two_pass_variance(&values)) <= 1e-12);
        // Constant data: exactly zero.
        for c in [1e9 + 0.5, 1e9 + 0.1, 1.7e12 + 0.3, 123.0, -7.25, 0.1] {
            let items = numbers(&vec![c; 1000]);
            assert_eq!(
                text(&feed(AggregationFn::Variance, None, &items)),
                "0.0",
                "{c}"
            );
            assert_eq!(
                text(&feed(AggregationFn::Stddev, None, &items)),
                "0.0",
                "{c}"
            );
        }
    }
}
