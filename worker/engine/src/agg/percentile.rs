//! The `percentile` state [`Quantile`]: the values themselves up to
//! [`PERCENTILE_EXACT_LIMIT`], then a DDSketch of relative accuracy [`PERCENTILE_ALPHA`], with
//! its serialised form checked on the way in so that a corrupt checkpoint is an error, never a
//! panic.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sketches_ddsketch::{Config as DdConfig, DDSketch};

use super::rank::{exact_rank, nearest_rank};

/// DDSketch relative accuracy of `percentile`: results are within this relative error of the
/// nearest-rank value (plus ~1e-12 of floating-point slack), i.e. within 1%.
pub const PERCENTILE_ALPHA: f64 = 0.0099;
/// Magnitudes at or below this count as zero in the sketch.
const PERCENTILE_MIN_VALUE: f64 = f64::MIN_POSITIVE;
/// Bin limit per sign: more than the whole `f64` range needs (~71,700 bins), so no collapsing.
const PERCENTILE_MAX_BINS: u32 = 1 << 17;

fn dd_config() -> DdConfig {
    DdConfig::new(PERCENTILE_ALPHA, PERCENTILE_MAX_BINS, PERCENTILE_MIN_VALUE)
}

/// Up to this many values, `percentile` keeps them exactly (8 bytes each, at most 4 KiB: about
/// the size of a DDSketch spanning four decades) and its result is the exact nearest-rank value;
/// one more value moves them all into the DDSketch.
pub const PERCENTILE_EXACT_LIMIT: usize = 512;

/// Accumulator for `percentile`: the quantile, and either the values themselves (at most
/// [`PERCENTILE_EXACT_LIMIT`], in no particular order) or a DDSketch of them.
#[derive(Clone)]
pub struct Quantile {
    pub(super) q: f64,
    /// The values (finite, `-0.0` stored as `0.0`) while there are at most
    /// [`PERCENTILE_EXACT_LIMIT`]; empty once `sketch` is in use.
    pub(super) exact: Vec<f64>,
    pub(super) sketch: Option<Box<DDSketch>>,
}

impl Quantile {
    pub(super) fn new(q: Option<f64>) -> Quantile {
        let q = match q {
            Some(q) if !q.is_nan() => q.clamp(0.0, 1.0),
            _ => 0.5,
        };
        Quantile {
            q,
            exact: Vec::new(),
            sketch: None,
        }
    }

    /// The quantile this accumulator reports.
    pub fn quantile(&self) -> f64 {
        self.q
    }

    /// Number of values.
    fn count(&self) -> usize {
        match &self.sketch {
            Some(sketch) => sketch.count(),
            None => self.exact.len(),
        }
    }

    /// Adds a finite value, with `-0.0` already turned into `0.0`.
    #[inline]
    pub(super) fn add(&mut self, x: f64) {
        match &mut self.sketch {
            Some(sketch) => sketch.add(x),
            None if self.exact.len() < PERCENTILE_EXACT_LIMIT => self.exact.push(x),
            None => self.promote().add(x),
        }
    }

    /// Moves the exact values into the sketch (a new one if there is none).
    fn promote(&mut self) -> &mut DDSketch {
        let exact = std::mem::take(&mut self.exact);
        let sketch = self
            .sketch
            .get_or_insert_with(|| Box::new(DDSketch::new(dd_config())));
        for &x in &exact {
            sketch.add(x);
        }
        sketch
    }

    pub(super) fn merge(&mut self, other: &Quantile) {
        if let Some(theirs) = &other.sketch {
            // Same config by construction (and checked on deserialisation), so this cannot fail.
            let _ = self.promote().merge(theirs);
        }
        self.merge_exact(&other.exact);
    }

    /// Adds values (finite, no `-0.0`).
    #[inline]
    pub(super) fn merge_exact(&mut self, values: &[f64]) {
        if values.is_empty() {
            return;
        }
        match &mut self.sketch {
            None if self.exact.len() + values.len() <= PERCENTILE_EXACT_LIMIT => {
                self.exact.extend_from_slice(values);
            }
            Some(sketch) => values.iter().for_each(|&x| sketch.add(x)),
            None => {
                let sketch = self.promote();
                values.iter().for_each(|&x| sketch.add(x));
            }
        }
    }

    /// Back to the empty state, keeping the exact values' memory.
    pub(super) fn clear(&mut self) {
        self.exact.clear();
        self.sketch = None;
    }

    pub(super) fn value(&self) -> Option<f64> {
        match &self.sketch {
            Some(sketch) => nearest_rank(sketch, self.q),
            None => exact_rank(&self.exact, self.q),
        }
    }
}

impl fmt::Debug for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Quantile");
        d.field("q", &self.q).field("count", &self.count());
        match &self.sketch {
            Some(sketch) => d
                .field("min", &sketch.min())
                .field("max", &sketch.max())
                .field("sketch", &true),
            None => d
                .field("min", &exact_rank(&self.exact, 0.0))
                .field("max", &exact_rank(&self.exact, 1.0))
                .field("sketch", &false),
        };
        d.finish()
    }
}

/// Serialised form of a [`Quantile`]: the exact values (sorted), or the sketch's bucket counts
/// and exact min/max, without the sketch's configuration (always [`dd_config`]) or its running
/// sum (unused, and possibly infinite, which JSON cannot hold). `values` may be absent (states
/// written before the exact values existed).
#[derive(Serialize, Deserialize)]
struct QuantileRepr {
    q: f64,
    sketch: Option<SketchRepr>,
    #[serde(default)]
    values: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct SketchRepr {
    store: StoreRepr,
    negative_store: StoreRepr,
    min: f64,
    max: f64,
    zero_count: u64,
}

#[derive(Serialize, Deserialize)]
struct StoreRepr {
    bins: Vec<u64>,
    count: u64,
    min_key: i32,
    max_key: i32,
    offset: i32,
}

// `sketches-ddsketch` keeps its fields private but derives serde for them; we go through
// `serde_json::Value` in memory (f64 and u64 are kept exactly) to read and rebuild them. The
// round-trip tests below pin this to the crate's field layout.
impl Serialize for Quantile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sketch = match &self.sketch {
            Some(sketch) if sketch.count() > 0 => {
                let tree = serde_json::to_value(sketch).map_err(serde::ser::Error::custom)?;
                Some(
                    serde_json::from_value::<SketchRepr>(tree)
                        .map_err(serde::ser::Error::custom)?,
                )
            }
            _ => None,
        };
        let mut values = self.exact.clone();
        values.sort_unstable_by(f64::total_cmp);
        QuantileRepr {
            q: self.q,
            sketch,
            values,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Quantile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = QuantileRepr::deserialize(deserializer)?;
        let mut quantile = Quantile::new(Some(repr.q));
        if let Some(sketch) = repr.sketch {
            let sketch = rebuild_sketch(sketch).map_err(serde::de::Error::custom)?;
            quantile.sketch = Some(Box::new(sketch));
        }
        if repr.values.iter().any(|x| !x.is_finite()) {
            return Err(serde::de::Error::custom(
                "percentile: a value is not finite",
            ));
        }
        for x in repr.values {
            quantile.add(x + 0.0);
        }
        Ok(quantile)
    }
}

/// Checks a deserialised store so that the sketch's own code cannot index out of bounds or
/// overflow on it, and turns it back into the crate's serde form.
fn store_tree(s: StoreRepr, keys: (i32, i32)) -> Result<Value, String> {
    let total = s
        .bins
        .iter()
        .try_fold(0u64, |acc, &b| acc.checked_add(b))
        .ok_or("percentile: bin counts overflow")?;
    if total != s.count {
        return Err("percentile: bin counts do not add up".into());
    }
    let (bins, min_key, max_key, offset) = if s.count == 0 {
        (Vec::new(), i32::MAX, i32::MIN, 0)
    } else {
        let len = s.bins.len() as i64;
        let ok = len <= i64::from(PERCENTILE_MAX_BINS)
            && keys.0 <= s.min_key
            && s.min_key <= s.max_key
            && s.max_key <= keys.1
            && s.offset <= s.min_key
            && i64::from(s.max_key) - i64::from(s.offset) < len;
        if !ok {
            return Err("percentile: inconsistent store".into());
        }
        (s.bins, s.min_key, s.max_key, s.offset)
    };
    Ok(serde_json::json!({
        "bins": bins,
        "count": s.count,
        "min_key": min_key,
        "max_key": max_key,
        "offset": offset,
        "bin_limit": PERCENTILE_MAX_BINS,
        "is_collapsed": false,
    }))
}

fn rebuild_sketch(s: SketchRepr) -> Result<DDSketch, String> {
    let config = dd_config();
    let keys = (config.key(PERCENTILE_MIN_VALUE), config.key(f64::MAX));
    let total = s
        .store
        .count
        .checked_add(s.negative_store.count)
        .and_then(|t| t.checked_add(s.zero_count));
    if total.is_none_or(|t| t == 0) || !(s.min.is_finite() && s.max.is_finite() && s.min <= s.max) {
        return Err("percentile: inconsistent sketch".into());
    }
    let tree = serde_json::json!({
        "config": serde_json::to_value(config).map_err(|e| e.to_string())?,
        "store": store_tree(s.store, keys)?,
        "negative_store": store_tree(s.negative_store, keys)?,
        "min": s.min,
        "max": s.max,
        "sum": 0.0,
        "zero_count": s.zero_count,
    });
    serde_json::from_value(tree).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;
    use weir_crds::AggregationFn;

    use crate::agg::testkit::*;
    use crate::agg::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Percentile on signed data spanning 1e-9..1e12 with zeros: within 1% of the nearest-rank
        /// value; split/merge exact.
        #[test]
        fn percentile_within_one_percent_of_nearest_rank(
            values in prop::collection::vec(wide_value(), 1..400),
            assign in assignment(),
            parts in 1..9usize,
            picks in merge_picks(),
            q in prop_oneof![0.0..=1.0f64, Just(0.5), Just(0.9), Just(0.99), Just(0.01)],
        ) {
            let items = numbers(&values);
            let f = AggregationFn::Percentile;
            let whole = feed(f, Some(q), &items);
            let got = num(&whole).unwrap();
            let want = nearest_rank_ref(&values, q);
            prop_assert!((got - want).abs() <= 0.01 * want.abs(), "q={} got {} want {}", q, got, want);
            let split = split_merge(f, Some(q), &items, &assign, parts, &picks);
            prop_assert_eq!(text(&whole), text(&split));
            // Sum and mean on such data: not exact in double-double, but within rounding.
            let sum = num(&feed(AggregationFn::Sum, None, &items)).unwrap();
            let naive: f64 = values.iter().sum();
            let scale: f64 = values.iter().map(|x| x.abs()).sum();
            prop_assert!((sum - naive).abs() <= scale * 1e-13);
        }
    }

    #[test]
    fn corrupt_percentile_state_is_rejected_not_a_panic() {
        let acc = feed(
            AggregationFn::Percentile,
            Some(0.5),
            &numbers(&[1.0, 2.0, 3.0]),
        );
        let mut tree = serde_json::to_value(&acc).unwrap();
        tree["percentile"]["sketch"]["store"]["max_key"] = Value::from(i32::MAX);
        assert!(serde_json::from_value::<Acc>(tree.clone()).is_err());
        tree["percentile"]["sketch"]["store"]["max_key"] = Value::from(0);
        tree["percentile"]["sketch"]["store"]["count"] = Value::from(99);
        assert!(serde_json::from_value::<Acc>(tree).is_err());
    }

    #[test]
    fn percentile_quantile_defaults_and_clamping() {
        let items = numbers(&(1..=100).map(f64::from).collect::<Vec<_>>());
        let median = num(&feed(AggregationFn::Percentile, None, &items)).unwrap();
        assert!((median - 50.0).abs() <= 0.5, "{median}");
        assert_eq!(
            num(&feed(AggregationFn::Percentile, Some(-1.0), &items)),
            Some(1.0)
        );
        assert_eq!(
            num(&feed(AggregationFn::Percentile, Some(7.0), &items)),
            Some(100.0)
        );
        assert_eq!(
            num(&feed(AggregationFn::Percentile, Some(f64::NAN), &items)),
            Some(median)
        );
        // Nearest rank, not interpolation: p90 of 1..=10 is 9, p91 is 10.
        let ten = numbers(&(1..=10).map(f64::from).collect::<Vec<_>>());
        let p90 = num(&feed(AggregationFn::Percentile, Some(0.9), &ten)).unwrap();
        assert!((p90 - 9.0).abs() <= 0.09, "{p90}");
        assert_eq!(
            num(&feed(AggregationFn::Percentile, Some(0.91), &ten)),
            Some(10.0)
        );
        // Every rank of a small set with a wide range.
        let mut rng = Rng(7);
        let values: Vec<f64> = (0..257)
            .map(|i| match i % 5 {
                0 => 0.0,
                1 => -(10f64.powf(rng.unit() * 21.0 - 9.0)),
                _ => 10f64.powf(rng.unit() * 21.0 - 9.0),
            })
            .collect();
        let items = numbers(&values);
        for r in 0..=values.len() {
            let q = r as f64 / values.len() as f64;
            let got = num(&feed(AggregationFn::Percentile, Some(q), &items)).unwrap();
            let want = nearest_rank_ref(&values, q);
            assert!(
                (got - want).abs() <= 0.01 * want.abs(),
                "q={q}: {got} vs {want}"
            );
        }
    }
}
