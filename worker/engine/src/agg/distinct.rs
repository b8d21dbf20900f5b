//! The `countDistinct` state [`Distinct`]: the stable XXH3 hashes of the values, exact up to
//! [`DISTINCT_EXACT_LIMIT`], then a HyperLogLog++ sketch; a function of the set of hashes, so
//! merges are independent of order.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::hashset::HashSet64;

/// Up to this many distinct values, `countDistinct` keeps their 64-bit hashes and is exact.
pub const DISTINCT_EXACT_LIMIT: usize = 1024;
/// HyperLogLog++ precision: `2^14` registers, standard error `1.04/√16384 ≈ 0.81%`.
pub const DISTINCT_PRECISION: u8 = 14;
/// Seed of the XXH3-64 hash of a value's canonical JSON text. Changing it changes every sketch.
const DISTINCT_SEED: u64 = 0x7765_6972_2d64_7374; // "weir-dst"

/// The stable hash of a value for `countDistinct`.
#[inline]
pub(super) fn hash_value(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), DISTINCT_SEED)
}

/// Feeds our precomputed stable hash to the HyperLogLog++ sketch unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StableHash;

/// The hasher of [`StableHash`]: returns the `u64` written into it.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else deterministically all the same.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0 ^ DISTINCT_SEED);
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

impl BuildHasher for StableHash {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

pub(super) type Hll = HyperLogLogPlus<u64, StableHash>;

fn new_hll() -> Hll {
    HyperLogLogPlus::new(DISTINCT_PRECISION, StableHash).expect("precision 14 is in 4..=18")
}

/// Accumulator for `countDistinct`: an exact set of hashes, then a HyperLogLog++ sketch.
///
/// The exact set is a hash set indexed by the (already uniformly distributed) hashes
/// themselves, so an insert or a merge costs O(1) per hash. It is serialised as a sorted list,
/// so the serialised form is a function of the set only.
#[derive(Clone, Default)]
pub struct Distinct {
    /// The distinct hashes; empty once `sketch` is in use.
    pub(super) exact: HashSet64,
    pub(super) sketch: Option<Box<Hll>>,
}

#[derive(Deserialize)]
struct DistinctRepr {
    exact: Vec<u64>,
    sketch: Option<Box<Hll>>,
}

#[derive(Serialize)]
struct DistinctOut<'a> {
    exact: Vec<u64>,
    sketch: &'a Option<Box<Hll>>,
}

impl Serialize for Distinct {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut exact: Vec<u64> = self.exact.iter().collect();
        exact.sort_unstable();
        DistinctOut {
            exact,
            sketch: &self.sketch,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Distinct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = DistinctRepr::deserialize(deserializer)?;
        let mut d = Distinct {
            exact: HashSet64::default(),
            sketch: repr.sketch,
        };
        for h in repr.exact {
            d.insert(h);
        }
        Ok(d)
    }
}

impl Distinct {
    #[inline]
    pub(super) fn insert(&mut self, hash: u64) {
        if let Some(sketch) = &mut self.sketch {
            sketch.insert_any(&hash);
            return;
        }
        if self.exact.len() < DISTINCT_EXACT_LIMIT {
            self.exact.insert(hash);
        } else if !self.exact.contains(hash) {
            self.promote().insert_any(&hash);
        }
    }

    /// Moves the exact hashes into a new sketch.
    fn promote(&mut self) -> &mut Hll {
        let exact = std::mem::take(&mut self.exact);
        let sketch = self.sketch.get_or_insert_with(|| Box::new(new_hll()));
        for h in exact.iter() {
            sketch.insert_any(&h);
        }
        sketch
    }

    pub(super) fn merge(&mut self, other: &Distinct) {
        if let Some(theirs) = &other.sketch {
            let ours = self.promote();
            // Same precision by construction, so this cannot fail.
            let _ = ours.merge(theirs.as_ref());
        }
        if !other.exact.is_empty() {
            self.union(other.exact.iter(), other.exact.len());
        }
    }

    /// Adds `n` hashes.
    pub(super) fn union(&mut self, hashes: impl Iterator<Item = u64>, n: usize) {
        if self.sketch.is_none() {
            let room = DISTINCT_EXACT_LIMIT.saturating_sub(self.exact.len());
            self.exact.reserve(n.min(room));
            if n <= room {
                // The set cannot outgrow the limit.
                for h in hashes {
                    self.exact.insert(h);
                }
                return;
            }
        }
        for h in hashes {
            self.insert(h);
        }
    }

    /// Back to the empty state, keeping the exact set's memory.
    pub(super) fn clear(&mut self) {
        self.exact.clear();
        self.sketch = None;
    }

    pub(super) fn estimate(&self) -> u64 {
        match &self.sketch {
            // `count` needs `&mut` (it folds the sparse buffer in), hence the clone.
            Some(sketch) => {
                let estimate = sketch.as_ref().clone().count().round();
                if estimate > 0.0 {
                    estimate as u64
                } else {
                    0
                }
            }
            None => self.exact.len() as u64,
        }
    }
}

impl fmt::Debug for Distinct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Distinct");
        match &self.sketch {
            Some(_) => s.field("sketch", &"HyperLogLog++(14)"),
            None => s.field("exact", &self.exact.len()),
        };
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use weir_crds::AggregationFn;

    use super::*;
    use crate::agg::testkit::*;
    use crate::agg::*;

    #[test]
    fn count_distinct_accuracy_and_order_independence() {
        let mut worst: f64 = 0.0;
        let mut sq = 0.0;
        let mut runs = 0.0;
        for (seed, n) in [
            (1u64, 1),
            (2, 10),
            (3, 1000),
            (4, 1024),
            (5, 1025),
            (6, 3000),
            (7, 6000),
        ]
        .into_iter()
        .chain((10..40).map(|s| (s, 20_000)))
        .chain([(50, 200_000)])
        {
            let mut acc = Acc::new(AggregationFn::CountDistinct, None);
            for i in 0..n {
                let t = format!("\"user-{seed}-{i}\"");
                acc.update(Input::Json(&t), ord(0, 0));
                acc.update(Input::Json(&t), ord(0, 0)); // duplicates do not count
            }
            let got = acc.result().to_value().as_u64().unwrap() as f64;
            let err = (got - n as f64) / n as f64;
            if n <= DISTINCT_EXACT_LIMIT {
                assert_eq!(got, n as f64);
            }
            // 4 standard errors of 0.81%.
            assert!(err.abs() <= 0.033, "n={n}: {got}");
            if n == 20_000 {
                sq += err * err;
                runs += 1.0;
            }
            worst = worst.max(err.abs());
        }
        let rms = (sq / runs).sqrt();
        println!("countDistinct: worst rel err {worst:e}, rms at 20k {rms:e}");
        assert!(rms <= 0.0125, "rms {rms}");

        // Large sets crossing the exact limit and the sparse/dense switch, split and merged in
        // different orders: identical results.
        let texts: Vec<String> = (0..60_000).map(|i| format!("{}", i % 23_000)).collect();
        let items: Vec<(Input<'_>, Order)> = texts
            .iter()
            .map(|t| (Input::Json(t.as_str()), ord(0, 0)))
            .collect();
        let whole = feed(AggregationFn::CountDistinct, None, &items);
        let mut rng = Rng(99);
        for parts in [2, 3, 16, 200] {
            let assign: Vec<usize> = (0..items.len()).map(|_| rng.below(parts)).collect();
            let picks: Vec<(usize, usize, bool)> = (0..parts)
                .map(|_| (rng.below(1000), rng.below(1000), rng.below(4) == 0))
                .collect();
            let split = split_merge(
                AggregationFn::CountDistinct,
                None,
                &items,
                &assign,
                parts,
                &picks,
            );
            assert_eq!(
                split.result().to_value(),
                whole.result().to_value(),
                "{parts} parts"
            );
        }
        // Skewed parts: a big sketch merged into many small exact sets and vice versa.
        let mut small_first = feed(AggregationFn::CountDistinct, None, &items[..10]);
        small_first.merge(&whole);
        let mut big_first = whole.clone();
        big_first.merge(&feed(AggregationFn::CountDistinct, None, &items[..10]));
        assert_eq!(small_first.result().to_value(), whole.result().to_value());
        assert_eq!(big_first.result().to_value(), whole.result().to_value());
    }

    #[test]
    fn distinct_hash_is_stable() {
        // Pinned: the hash must not change across builds, processes or platforms (it would
        // make checkpointed and remote sketches incompatible).
        const PINNED: u64 = 0x990b_c018_a0ee_c982;
        assert_eq!(hash_value("\"m1\""), hash_value("\"m1\""));
        assert_eq!(
            hash_value(""),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"", DISTINCT_SEED)
        );
        assert_eq!(hash_value("\"m1\""), PINNED);
        assert_ne!(hash_value("\"12\""), hash_value("12"));
    }
}
