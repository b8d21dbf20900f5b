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
//!   commutative. Text that does not parse as JSON yields `null`.
//!
//! Non-finite numbers (which the decoder should never produce) and inputs of the wrong kind
//! (e.g. [`Input::Json`] for `sum`) are ignored; `count` counts every update. Merging accumulators
//! of different functions is a no-op. Nothing here panics on the record path.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sketches_ddsketch::{Config as DdConfig, DDSketch};
use weir_crds::AggregationFn;

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
            (Acc::Mean(a), Acc::Mean(b)) => {
                a.n = a.n.saturating_add(b.n);
                a.sum.merge(&b.sum);
            }
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
    pub fn result(&self) -> Value {
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum(s) => number(s.0.value()),
            Acc::Mean(m) => number(m.mean()),
            Acc::Min(m) | Acc::Max(m) => number(*m),
            Acc::Variance(m) => number(m.variance()),
            Acc::Stddev(m) => number(m.variance().map(f64::sqrt)),
            Acc::CountDistinct(d) => Value::from(d.estimate()),
            Acc::Percentile(p) => number(p.value()),
            Acc::First(slot) | Acc::Last(slot) => match slot {
                Some(pick) => json_value(&pick.json),
                None => Value::Null,
            },
        }
    }
}

/// The accumulators of one aggregation for many rows (one row per group in a pane), stored
/// compactly and without a box per row: a row costs 8 bytes for count, 16 for sum, 24 for mean,
/// 8 for min or max (an empty min/max is NaN, which no input can be), 56 for stddev or variance,
/// and for percentile, countDistinct, first and last the state of [`Quantile`], [`Distinct`] or
/// a [`PickSlot`] (whose variable-size part is on the heap). Rows that will not change any more
/// can be packed with [`Column::seal`].
///
/// Rows behave exactly like the `Acc` of the same function: same update, merge and result.
#[derive(Clone, Debug)]
pub enum Column {
    /// `count`.
    Count(Vec<u64>),
    /// `sum`.
    Sum(Vec<SumAcc>),
    /// `mean`.
    Mean(Vec<MeanAcc>),
    /// `min`, NaN when empty.
    Min(Vec<f64>),
    /// `max`, NaN when empty.
    Max(Vec<f64>),
    /// `stddev`.
    Stddev(Vec<Moments>),
    /// `variance`.
    Variance(Vec<Moments>),
    /// `percentile`.
    Percentile {
        /// The quantile, as given to [`Column::new`].
        quantile: Option<f64>,
        /// One accumulator per row.
        rows: Vec<Quantile>,
    },
    /// `countDistinct`.
    CountDistinct(Vec<Distinct>),
    /// `first`.
    First(Vec<PickSlot>),
    /// `last`.
    Last(Vec<PickSlot>),
    /// Percentile, countDistinct, first or last rows packed by [`Column::seal`].
    Sealed(Sealed),
}

/// A `first` or `last` row of a [`Column`]: an `Option<Pick>` whose text buffer outlives it being
/// emptied, so that a reused row does not allocate again.
#[derive(Clone, Debug, Default)]
pub struct PickSlot {
    order: Option<Order>,
    json: String,
}

impl PickSlot {
    /// [`offer`] for a slot.
    #[inline]
    fn offer(&mut self, order: Order, text: &str, want: Ordering) {
        let better = match self.order {
            None => true,
            Some(cur) => order.cmp(&cur).then_with(|| text.cmp(&self.json)) == want,
        };
        if better {
            self.order = Some(order);
            self.json.clear();
            self.json.push_str(text);
        }
    }

    fn clear(&mut self) {
        self.order = None;
        self.json.clear();
    }

    fn pick(&self) -> Option<Pick> {
        self.order.map(|order| Pick {
            order,
            json: self.json.clone(),
        })
    }

    fn result(&self) -> Value {
        match self.order {
            Some(_) => json_value(&self.json),
            None => Value::Null,
        }
    }
}

/// Rows packed by [`Column::seal`]: read-only, with every row's variable-size state in one buffer
/// shared by the column, in row order, so that merging from many rows in order reads memory
/// sequentially instead of chasing a heap pointer per row. Changing a row unpacks the column.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// Row `r`'s entries are `bounds[r]..bounds[r + 1]` of the buffer (`rows + 1` bounds).
    bounds: Vec<u32>,
    packed: Packed,
}

#[derive(Clone, Debug)]
enum Packed {
    /// countDistinct rows, all exact: their hashes.
    Distinct(Vec<u64>),
    /// percentile rows, all exact: their values. `q` is the rows' quantile.
    Percentile {
        quantile: Option<f64>,
        q: f64,
        values: Vec<f64>,
    },
    /// first (`want == Less`) or last (`Greater`) rows: their orders and JSON texts.
    Picks {
        want: Ordering,
        orders: Vec<Option<Order>>,
        text: String,
    },
}

impl Sealed {
    /// The buffer range of row `row`.
    #[inline]
    fn span(&self, row: usize) -> Option<std::ops::Range<usize>> {
        let a = *self.bounds.get(row)? as usize;
        let b = *self.bounds.get(row + 1)? as usize;
        Some(a..b)
    }

    fn len(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    fn function(&self) -> AggregationFn {
        match &self.packed {
            Packed::Distinct(_) => AggregationFn::CountDistinct,
            Packed::Percentile { .. } => AggregationFn::Percentile,
            Packed::Picks {
                want: Ordering::Less,
                ..
            } => AggregationFn::First,
            Packed::Picks { .. } => AggregationFn::Last,
        }
    }

    fn quantile(&self) -> Option<f64> {
        match &self.packed {
            Packed::Percentile { quantile, .. } => *quantile,
            _ => None,
        }
    }

    /// Packs `rows` into `buf` (`entries` appends one row's entries and returns the buffer's new
    /// length); `None` when the buffer would not be addressable by `u32` bounds.
    fn pack<T, B>(
        rows: &[T],
        mut buf: B,
        mut entries: impl FnMut(&T, &mut B) -> usize,
    ) -> Option<(Vec<u32>, B)> {
        let mut bounds = Vec::with_capacity(rows.len() + 1);
        bounds.push(0);
        for row in rows {
            let end = entries(row, &mut buf);
            bounds.push(u32::try_from(end).ok()?);
        }
        Some((bounds, buf))
    }

    /// Appends a copy of `src`'s row `row` if it can be packed here (same function and
    /// quantile, exact state); `false` (and no change) otherwise.
    fn push_from(&mut self, src: &Column, row: usize) -> bool {
        let Some(&start) = self.bounds.last() else {
            return false;
        };
        let end = match (&mut self.packed, src) {
            (Packed::Distinct(hashes), Column::CountDistinct(rows)) => match rows.get(row) {
                Some(d) if d.sketch.is_none() => {
                    let Ok(end) = u32::try_from(hashes.len() + d.exact.len()) else {
                        return false;
                    };
                    hashes.extend(d.exact.iter());
                    end
                }
                _ => return false,
            },
            (Packed::Percentile { q, values, .. }, Column::Percentile { rows, .. }) => {
                match rows.get(row) {
                    Some(p) if p.sketch.is_none() && p.q.to_bits() == q.to_bits() => {
                        let Ok(end) = u32::try_from(values.len() + p.exact.len()) else {
                            return false;
                        };
                        values.extend_from_slice(&p.exact);
                        end
                    }
                    _ => return false,
                }
            }
            (Packed::Picks { want, orders, text }, Column::First(rows) | Column::Last(rows)) => {
                let first = matches!(src, Column::First(_));
                match rows.get(row) {
                    Some(p) if first == (*want == Ordering::Less) => {
                        let len = if p.order.is_some() { p.json.len() } else { 0 };
                        let Ok(end) = u32::try_from(text.len() + len) else {
                            return false;
                        };
                        if p.order.is_some() {
                            text.push_str(&p.json);
                        }
                        orders.push(p.order);
                        end
                    }
                    _ => return false,
                }
            }
            _ => return false,
        };
        debug_assert!(end >= start);
        self.bounds.push(end);
        true
    }

    /// The rows unpacked into their ordinary column.
    fn unpack(&self) -> Column {
        let n = self.len();
        let spans = (0..n).map(|r| self.span(r).unwrap_or(0..0));
        match &self.packed {
            Packed::Distinct(hashes) => Column::CountDistinct(
                spans
                    .map(|s| {
                        let mut d = Distinct::default();
                        let h = hashes.get(s).unwrap_or_default();
                        d.union(h.iter().copied(), h.len());
                        d
                    })
                    .collect(),
            ),
            Packed::Percentile {
                quantile,
                q,
                values,
            } => Column::Percentile {
                quantile: *quantile,
                rows: spans
                    .map(|s| Quantile {
                        q: *q,
                        exact: values.get(s).unwrap_or_default().to_vec(),
                        sketch: None,
                    })
                    .collect(),
            },
            Packed::Picks { want, orders, text } => {
                let rows = spans
                    .zip(orders)
                    .map(|(s, order)| PickSlot {
                        order: *order,
                        json: text.get(s).unwrap_or_default().to_owned(),
                    })
                    .collect();
                if *want == Ordering::Less {
                    Column::First(rows)
                } else {
                    Column::Last(rows)
                }
            }
        }
    }

    /// Row `row` as an [`Acc`].
    fn acc(&self, row: usize) -> Option<Acc> {
        let s = self.span(row)?;
        Some(match &self.packed {
            Packed::Distinct(hashes) => {
                let mut d = Distinct::default();
                let h = hashes.get(s)?;
                d.union(h.iter().copied(), h.len());
                Acc::CountDistinct(d)
            }
            Packed::Percentile { q, values, .. } => Acc::Percentile(Box::new(Quantile {
                q: *q,
                exact: values.get(s)?.to_vec(),
                sketch: None,
            })),
            Packed::Picks { want, orders, text } => {
                let pick = match orders.get(row)? {
                    Some(order) => Some(Pick {
                        order: *order,
                        json: text.get(s)?.to_owned(),
                    }),
                    None => None,
                };
                if *want == Ordering::Less {
                    Acc::First(pick)
                } else {
                    Acc::Last(pick)
                }
            }
        })
    }

    /// [`Acc::result`] of row `row`.
    fn result(&self, row: usize) -> Option<Value> {
        let s = self.span(row)?;
        Some(match &self.packed {
            // The hashes of an exact set are distinct.
            Packed::Distinct(_) => Value::from(s.len()),
            Packed::Percentile { q, values, .. } => number(exact_rank(values.get(s)?, *q)),
            Packed::Picks { orders, text, .. } => match orders.get(row)? {
                Some(_) => json_value(text.get(s)?),
                None => Value::Null,
            },
        })
    }
}

/// Applies `$body` to the column's row vector, whatever its type (not for sealed columns).
macro_rules! with_rows {
    ($col:expr, $v:ident => $body:expr, $sealed:pat => $other:expr) => {
        match $col {
            Column::Count($v) => $body,
            Column::Sum($v) => $body,
            Column::Mean($v) => $body,
            Column::Min($v) | Column::Max($v) => $body,
            Column::Stddev($v) | Column::Variance($v) => $body,
            Column::Percentile { rows: $v, .. } => $body,
            Column::CountDistinct($v) => $body,
            Column::First($v) | Column::Last($v) => $body,
            $sealed => $other,
        }
    };
}

/// Calls `f(dst[into[k]], src[k])` for every `k` (targets out of range skipped).
#[inline]
fn merge_each<T, U>(dst: &mut [T], src: &[U], into: &[u32], mut f: impl FnMut(&mut T, &U)) {
    for (from, to) in src.iter().zip(into) {
        if let Some(d) = dst.get_mut(*to as usize) {
            f(d, from);
        }
    }
}

impl Column {
    /// An empty column for `function`.
    pub fn new(function: AggregationFn, quantile: Option<f64>) -> Column {
        match function {
            AggregationFn::Count => Column::Count(Vec::new()),
            AggregationFn::Sum => Column::Sum(Vec::new()),
            AggregationFn::Mean => Column::Mean(Vec::new()),
            AggregationFn::Min => Column::Min(Vec::new()),
            AggregationFn::Max => Column::Max(Vec::new()),
            AggregationFn::Stddev => Column::Stddev(Vec::new()),
            AggregationFn::Variance => Column::Variance(Vec::new()),
            AggregationFn::Percentile => Column::Percentile {
                quantile,
                rows: Vec::new(),
            },
            AggregationFn::CountDistinct => Column::CountDistinct(Vec::new()),
            AggregationFn::First => Column::First(Vec::new()),
            AggregationFn::Last => Column::Last(Vec::new()),
        }
    }

    /// The aggregation function of this column.
    pub fn function(&self) -> AggregationFn {
        match self {
            Column::Count(_) => AggregationFn::Count,
            Column::Sum(_) => AggregationFn::Sum,
            Column::Mean(_) => AggregationFn::Mean,
            Column::Min(_) => AggregationFn::Min,
            Column::Max(_) => AggregationFn::Max,
            Column::Stddev(_) => AggregationFn::Stddev,
            Column::Variance(_) => AggregationFn::Variance,
            Column::Percentile { .. } => AggregationFn::Percentile,
            Column::CountDistinct(_) => AggregationFn::CountDistinct,
            Column::First(_) => AggregationFn::First,
            Column::Last(_) => AggregationFn::Last,
            Column::Sealed(s) => s.function(),
        }
    }

    /// An empty column of the same function (and quantile).
    pub fn empty_like(&self) -> Column {
        let quantile = match self {
            Column::Percentile { quantile, .. } => *quantile,
            Column::Sealed(s) => s.quantile(),
            _ => None,
        };
        Column::new(self.function(), quantile)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        with_rows!(self, v => v.len(), Column::Sealed(s) => s.len())
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pack the rows for reading: the variable-size states of percentile, countDistinct, first
    /// and last rows move into one buffer per column (see [`Sealed`]), which makes merging from
    /// the rows in order much cheaper and frees their separate allocations. A no-op for the other
    /// functions, and for percentile and countDistinct columns holding a sketch. Any later change
    /// unpacks the column again, so this never changes what the rows hold.
    pub fn seal(&mut self) {
        let function = self.function();
        let sealed = match &*self {
            Column::CountDistinct(rows) => {
                if rows.iter().any(|d| d.sketch.is_some()) {
                    return;
                }
                let total = rows.iter().map(|d| d.exact.len()).sum();
                Sealed::pack(rows, Vec::with_capacity(total), |d, buf| {
                    buf.extend(d.exact.iter());
                    buf.len()
                })
                .map(|(bounds, hashes)| Sealed {
                    bounds,
                    packed: Packed::Distinct(hashes),
                })
            }
            Column::Percentile { quantile, rows } => {
                let q = Quantile::new(*quantile).q;
                if rows
                    .iter()
                    .any(|p| p.sketch.is_some() || p.q.to_bits() != q.to_bits())
                {
                    return;
                }
                let total = rows.iter().map(|p| p.exact.len()).sum();
                Sealed::pack(rows, Vec::with_capacity(total), |p, buf| {
                    buf.extend_from_slice(&p.exact);
                    buf.len()
                })
                .map(|(bounds, values)| Sealed {
                    bounds,
                    packed: Packed::Percentile {
                        quantile: *quantile,
                        q,
                        values,
                    },
                })
            }
            Column::First(rows) | Column::Last(rows) => {
                let want = if function == AggregationFn::First {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                let total = rows.iter().map(|p| p.json.len()).sum();
                Sealed::pack(rows, String::with_capacity(total), |p, buf| {
                    if p.order.is_some() {
                        buf.push_str(&p.json);
                    }
                    buf.len()
                })
                .map(|(bounds, text)| Sealed {
                    bounds,
                    packed: Packed::Picks {
                        want,
                        orders: rows.iter().map(|p| p.order).collect(),
                        text,
                    },
                })
            }
            _ => return,
        };
        if let Some(sealed) = sealed {
            *self = Column::Sealed(sealed);
        }
    }

    /// Append a copy of `src`'s row `row` (a row of the same function; otherwise an empty row
    /// is appended). A sealed column stays sealed when it can.
    pub fn push_row(&mut self, src: &Column, row: usize) {
        if let Column::Sealed(s) = self {
            if s.push_from(src, row) {
                return;
            }
        }
        self.push_empty();
        let last = self.len().saturating_sub(1);
        self.merge_row(last, src, row);
    }

    /// Undo [`Column::seal`] (a no-op unless sealed).
    #[inline]
    fn unseal(&mut self) {
        if let Column::Sealed(s) = self {
            *self = s.unpack();
        }
    }

    /// Append an empty row.
    pub fn push_empty(&mut self) {
        self.unseal();
        match self {
            Column::Count(v) => v.push(0),
            Column::Sum(v) => v.push(SumAcc::default()),
            Column::Mean(v) => v.push(MeanAcc::default()),
            Column::Min(v) | Column::Max(v) => v.push(f64::NAN),
            Column::Stddev(v) | Column::Variance(v) => v.push(Moments::default()),
            Column::Percentile { quantile, rows } => rows.push(Quantile::new(*quantile)),
            Column::CountDistinct(v) => v.push(Distinct::default()),
            Column::First(v) | Column::Last(v) => v.push(PickSlot::default()),
            Column::Sealed(_) => {}
        }
    }

    /// Empty row `row` in place (an index out of range is ignored): afterwards it behaves like a
    /// row added by [`Column::push_empty`], but keeps its memory (see [`Acc::reset`]).
    pub fn reset_row(&mut self, row: usize) {
        self.unseal();
        fn reset<T>(v: &mut [T], row: usize, f: impl FnOnce(&mut T)) {
            if let Some(x) = v.get_mut(row) {
                f(x);
            }
        }
        match self {
            Column::Count(v) => reset(v, row, |x| *x = 0),
            Column::Sum(v) => reset(v, row, |x| *x = SumAcc::default()),
            Column::Mean(v) => reset(v, row, |x| *x = MeanAcc::default()),
            Column::Min(v) | Column::Max(v) => reset(v, row, |x| *x = f64::NAN),
            Column::Stddev(v) | Column::Variance(v) => reset(v, row, |x| *x = Moments::default()),
            Column::Percentile { rows, .. } => reset(rows, row, Quantile::clear),
            Column::CountDistinct(v) => reset(v, row, Distinct::clear),
            Column::First(v) | Column::Last(v) => reset(v, row, PickSlot::clear),
            Column::Sealed(_) => {}
        }
    }

    /// Whether a row is a fixed-size state with nothing on the heap (count, sum, mean, min,
    /// max, stddev, variance).
    pub fn has_fixed_size(&self) -> bool {
        matches!(
            self,
            Column::Count(_)
                | Column::Sum(_)
                | Column::Mean(_)
                | Column::Min(_)
                | Column::Max(_)
                | Column::Stddev(_)
                | Column::Variance(_)
        )
    }

    /// Make the column `len` empty rows, reusing the memory of the rows it has.
    pub fn reset_rows(&mut self, len: usize) {
        fn fill<T: Clone>(v: &mut Vec<T>, len: usize, empty: T) {
            v.clear();
            v.resize(len, empty);
        }
        self.unseal();
        match self {
            Column::Count(v) => fill(v, len, 0),
            Column::Sum(v) => fill(v, len, SumAcc::default()),
            Column::Mean(v) => fill(v, len, MeanAcc::default()),
            Column::Min(v) | Column::Max(v) => fill(v, len, f64::NAN),
            Column::Stddev(v) | Column::Variance(v) => fill(v, len, Moments::default()),
            _ => {
                self.truncate(len);
                (0..self.len()).for_each(|r| self.reset_row(r));
                (self.len()..len).for_each(|_| self.push_empty());
            }
        }
    }

    /// Keep only the first `len` rows.
    pub fn truncate(&mut self, len: usize) {
        self.unseal();
        with_rows!(self, v => v.truncate(len), Column::Sealed(_) => {})
    }

    /// Reorder the rows: row `k` becomes the former row `order[k]`. `order` should be a
    /// permutation of the rows; rows it does not name are dropped, indexes out of range skipped.
    pub fn permute(&mut self, order: &[u32]) {
        fn apply<T>(v: &mut Vec<T>, order: &[u32]) {
            let mut old: Vec<Option<T>> = std::mem::take(v).into_iter().map(Some).collect();
            v.reserve_exact(order.len());
            v.extend(
                order
                    .iter()
                    .filter_map(|&i| old.get_mut(i as usize).and_then(Option::take)),
            );
        }
        self.unseal();
        with_rows!(self, v => apply(v, order), Column::Sealed(_) => {})
    }

    /// Make room for `rows` more rows.
    pub fn reserve(&mut self, rows: usize) {
        self.unseal();
        with_rows!(self, v => v.reserve(rows), Column::Sealed(_) => {})
    }

    /// Remove every row.
    pub fn clear(&mut self) {
        if let Column::Sealed(_) = self {
            *self = self.empty_like();
        }
        with_rows!(self, v => v.clear(), Column::Sealed(_) => {})
    }

    /// [`Acc::update`] on row `row` (an index out of range is ignored).
    #[inline]
    pub fn update(&mut self, row: usize, input: Input<'_>, order: Order) {
        match self {
            Column::Count(v) => {
                if let Some(n) = v.get_mut(row) {
                    *n = n.saturating_add(1);
                }
            }
            Column::Sum(v) => {
                if let (Some(s), Input::Number(x)) = (v.get_mut(row), input) {
                    if x.is_finite() {
                        s.0.add(x);
                    }
                }
            }
            Column::Mean(v) => {
                if let (Some(m), Input::Number(x)) = (v.get_mut(row), input) {
                    if x.is_finite() {
                        m.n = m.n.saturating_add(1);
                        m.sum.add(x);
                    }
                }
            }
            Column::Min(v) => {
                if let (Some(m), Input::Number(x)) = (v.get_mut(row), input) {
                    keep_extreme_nan(m, x, Ordering::Less);
                }
            }
            Column::Max(v) => {
                if let (Some(m), Input::Number(x)) = (v.get_mut(row), input) {
                    keep_extreme_nan(m, x, Ordering::Greater);
                }
            }
            Column::Stddev(v) | Column::Variance(v) => {
                if let (Some(m), Input::Number(x)) = (v.get_mut(row), input) {
                    if x.is_finite() {
                        m.add(x);
                    }
                }
            }
            Column::Percentile { rows, .. } => {
                if let (Some(p), Input::Number(x)) = (rows.get_mut(row), input) {
                    if x.is_finite() {
                        p.add(x + 0.0);
                    }
                }
            }
            Column::CountDistinct(v) => {
                if let (Some(d), Input::Json(text)) = (v.get_mut(row), input) {
                    d.insert(hash_value(text));
                }
            }
            Column::First(v) => {
                if let (Some(p), Input::Json(text)) = (v.get_mut(row), input) {
                    p.offer(order, text, Ordering::Less);
                }
            }
            Column::Last(v) => {
                if let (Some(p), Input::Json(text)) = (v.get_mut(row), input) {
                    p.offer(order, text, Ordering::Greater);
                }
            }
            Column::Sealed(_) => {
                self.unseal();
                if !matches!(self, Column::Sealed(_)) {
                    self.update(row, input, order);
                }
            }
        }
    }

    /// [`Acc::merge`] of `other`'s row `from` into this column's row `row`.
    #[inline]
    pub fn merge_row(&mut self, row: usize, other: &Column, from: usize) {
        self.merge_rows_from(other, from, &[row as u32]);
    }

    /// Merge every row `r` of `other` into row `into[r]` of this column: the bulk form of
    /// [`Column::merge_row`], one dispatch per column instead of per row (hopping windows merge
    /// dozens of panes per result). Rows out of range are skipped.
    pub fn merge_rows(&mut self, other: &Column, into: &[u32]) {
        self.merge_rows_from(other, 0, into);
    }

    /// Merge row `from + k` of `other` into row `into[k]` of this column, for every `k` (rows
    /// out of range skipped): [`Column::merge_rows`] for a range of `other`'s rows.
    pub fn merge_range(&mut self, other: &Column, from: usize, into: &[u32]) {
        self.merge_rows_from(other, from, into);
    }

    /// Merge row `first + k` of `other` into row `into[k]` of this column, for every `k`.
    #[inline]
    fn merge_rows_from(&mut self, other: &Column, first: usize, into: &[u32]) {
        self.unseal();
        if let Column::Sealed(s) = other {
            self.merge_sealed(s, first, into);
            return;
        }
        macro_rules! src {
            ($b:expr) => {
                $b.get(first..).unwrap_or_default()
            };
        }
        match (self, other) {
            (Column::Count(a), Column::Count(b)) => {
                merge_each(a, src!(b), into, |a, b| *a = a.saturating_add(*b))
            }
            (Column::Sum(a), Column::Sum(b)) => {
                merge_each(a, src!(b), into, |a, b| a.0.merge(&b.0))
            }
            (Column::Mean(a), Column::Mean(b)) => merge_each(a, src!(b), into, |a, b| {
                a.n = a.n.saturating_add(b.n);
                a.sum.merge(&b.sum);
            }),
            (Column::Min(a), Column::Min(b)) => merge_each(a, src!(b), into, |a, b| {
                keep_extreme_nan(a, *b, Ordering::Less)
            }),
            (Column::Max(a), Column::Max(b)) => merge_each(a, src!(b), into, |a, b| {
                keep_extreme_nan(a, *b, Ordering::Greater)
            }),
            (Column::Stddev(a), Column::Stddev(b)) | (Column::Variance(a), Column::Variance(b)) => {
                merge_each(a, src!(b), into, |a, b| a.merge(b))
            }
            (Column::Percentile { rows: a, .. }, Column::Percentile { rows: b, .. }) => {
                merge_each(a, src!(b), into, |a, b| a.merge(b))
            }
            (Column::CountDistinct(a), Column::CountDistinct(b)) => {
                merge_each(a, src!(b), into, |a, b| a.merge(b))
            }
            (Column::First(a), Column::First(b)) => merge_each(a, src!(b), into, |a, b| {
                if let Some(order) = b.order {
                    a.offer(order, &b.json, Ordering::Less);
                }
            }),
            (Column::Last(a), Column::Last(b)) => merge_each(a, src!(b), into, |a, b| {
                if let Some(order) = b.order {
                    a.offer(order, &b.json, Ordering::Greater);
                }
            }),
            _ => {}
        }
    }

    /// [`Column::merge_rows_from`] with a sealed source.
    fn merge_sealed(&mut self, s: &Sealed, first: usize, into: &[u32]) {
        // Rows `first + k` of `s` with their spans, paired with their targets.
        let rows = into
            .iter()
            .enumerate()
            .map_while(|(k, to)| Some((first + k, s.span(first + k)?, *to as usize)));
        match (&mut *self, &s.packed) {
            (Column::CountDistinct(d), Packed::Distinct(hashes)) => {
                for (_, span, to) in rows {
                    if let (Some(d), Some(h)) = (d.get_mut(to), hashes.get(span)) {
                        d.union(h.iter().copied(), h.len());
                    }
                }
            }
            (Column::Percentile { rows: p, .. }, Packed::Percentile { values, .. }) => {
                for (_, span, to) in rows {
                    if let (Some(p), Some(v)) = (p.get_mut(to), values.get(span)) {
                        p.merge_exact(v);
                    }
                }
            }
            (
                Column::First(p),
                Packed::Picks {
                    want: want @ Ordering::Less,
                    orders,
                    text,
                },
            )
            | (
                Column::Last(p),
                Packed::Picks {
                    want: want @ Ordering::Greater,
                    orders,
                    text,
                },
            ) => {
                for (from, span, to) in rows {
                    if let (Some(p), Some(Some(order)), Some(t)) =
                        (p.get_mut(to), orders.get(from), text.get(span))
                    {
                        p.offer(*order, t, *want);
                    }
                }
            }
            _ => {}
        }
    }

    /// The row as an [`Acc`] (for checkpoints and partial aggregates).
    pub fn acc(&self, row: usize) -> Option<Acc> {
        let opt = |x: f64| (!x.is_nan()).then_some(x);
        Some(match self {
            Column::Count(v) => Acc::Count(*v.get(row)?),
            Column::Sum(v) => Acc::Sum(*v.get(row)?),
            Column::Mean(v) => Acc::Mean(*v.get(row)?),
            Column::Min(v) => Acc::Min(opt(*v.get(row)?)),
            Column::Max(v) => Acc::Max(opt(*v.get(row)?)),
            Column::Stddev(v) => Acc::Stddev(Box::new(*v.get(row)?)),
            Column::Variance(v) => Acc::Variance(Box::new(*v.get(row)?)),
            Column::Percentile { rows, .. } => Acc::Percentile(Box::new(rows.get(row)?.clone())),
            Column::CountDistinct(v) => Acc::CountDistinct(v.get(row)?.clone()),
            Column::First(v) => Acc::First(v.get(row)?.pick()),
            Column::Last(v) => Acc::Last(v.get(row)?.pick()),
            Column::Sealed(s) => s.acc(row)?,
        })
    }

    /// [`Acc::result`] of row `row` (`null` when out of range).
    pub fn result(&self, row: usize) -> Value {
        let opt = |x: f64| (!x.is_nan()).then_some(x);
        let get = |v: Option<Value>| v.unwrap_or(Value::Null);
        match self {
            Column::Count(v) => get(v.get(row).map(|n| Value::from(*n))),
            Column::Sum(v) => get(v.get(row).map(|s| number(s.0.value()))),
            Column::Mean(v) => get(v.get(row).map(|m| number(m.mean()))),
            Column::Min(v) | Column::Max(v) => get(v.get(row).map(|x| number(opt(*x)))),
            Column::Stddev(v) => get(v.get(row).map(|m| number(m.variance().map(f64::sqrt)))),
            Column::Variance(v) => get(v.get(row).map(|m| number(m.variance()))),
            Column::Percentile { rows, .. } => get(rows.get(row).map(|p| number(p.value()))),
            Column::CountDistinct(v) => get(v.get(row).map(|d| Value::from(d.estimate()))),
            Column::First(v) | Column::Last(v) => get(v.get(row).map(PickSlot::result)),
            Column::Sealed(s) => get(s.result(row)),
        }
    }
}

/// Reused buffers for [`Column::merged_result`].
#[derive(Default)]
pub struct ResultScratch {
    /// An open-addressing table of hashes (`0`: empty), all empty between calls: small enough to
    /// stay in the L1 cache, where merging into a row per group, for many groups, would not.
    slots: Vec<u64>,
    /// Values of a percentile rank that is not near an end.
    values: Vec<f64>,
}

impl Column {
    /// The result of merging rows `parts` (a column of this function and a row of it, each), in
    /// any order, without building the merged state, where that is much cheaper: countDistinct
    /// and percentile rows that are all packed by [`Column::seal`] (so exact) and whose merge is
    /// exact too (a union of at most [`DISTINCT_EXACT_LIMIT`] hashes, at most
    /// [`PERCENTILE_EXACT_LIMIT`] values). Equal to [`Column::result`] of the merged row. `None`
    /// when it does not apply: then merge the rows.
    ///
    /// This is what a hopping window result needs: the count of a union of a few hundred hashes,
    /// or one rank of a few hundred values, from a dozen panes and blocks.
    pub fn merged_result(parts: &[(&Column, usize)], scratch: &mut ResultScratch) -> Option<Value> {
        fn sealed<'a>(
            &(col, row): &(&'a Column, usize),
        ) -> Option<(&'a Packed, std::ops::Range<usize>)> {
            match col {
                Column::Sealed(s) => Some((&s.packed, s.span(row)?)),
                _ => None,
            }
        }
        match sealed(parts.first()?)?.0 {
            Packed::Distinct(_) => {
                let mut total = 0;
                for part in parts {
                    match sealed(part)? {
                        (Packed::Distinct(_), span) => total += span.len(),
                        _ => return None,
                    }
                }
                let size = (total.min(DISTINCT_EXACT_LIMIT + 1) * 2)
                    .next_power_of_two()
                    .max(16);
                if scratch.slots.len() < size {
                    scratch.slots.resize(size, 0);
                }
                let table = scratch.slots.get_mut(..size)?;
                let mask = size - 1;
                // At most `DISTINCT_EXACT_LIMIT + 1` of the `size / 2` or more slots are ever
                // filled, so every probe ends at an empty slot.
                let (mut count, mut zero) = (0usize, false);
                'parts: for part in parts {
                    let Some((Packed::Distinct(hashes), span)) = sealed(part) else {
                        continue;
                    };
                    for &h in hashes.get(span).unwrap_or_default() {
                        if h == 0 {
                            zero = true;
                            continue;
                        }
                        let mut i = h as usize & mask;
                        while let Some(slot) = table.get_mut(i) {
                            if *slot == 0 {
                                *slot = h;
                                count += 1;
                                break;
                            }
                            if *slot == h {
                                break;
                            }
                            i = (i + 1) & mask;
                        }
                        if count > DISTINCT_EXACT_LIMIT {
                            break 'parts;
                        }
                    }
                }
                table.fill(0);
                let count = count + usize::from(zero);
                (count <= DISTINCT_EXACT_LIMIT).then(|| Value::from(count))
            }
            Packed::Percentile { q, .. } => {
                let q = *q;
                let mut n = 0;
                for part in parts {
                    match sealed(part)? {
                        (Packed::Percentile { q: other, .. }, span)
                            if other.to_bits() == q.to_bits() =>
                        {
                            n += span.len()
                        }
                        _ => return None,
                    }
                }
                if n > PERCENTILE_EXACT_LIMIT {
                    return None;
                }
                if n == 0 {
                    return Some(Value::Null);
                }
                let spans = parts.iter().filter_map(|part| match sealed(part) {
                    Some((Packed::Percentile { values, .. }, span)) => values.get(span),
                    _ => None,
                });
                let r0 = rank_index(q, n as u64) as usize;
                let (k, want) = rank_from_end(r0, n);
                let value = if k < NEAR_END {
                    near_end_rank(spans, k, want)
                } else {
                    let buf = &mut scratch.values;
                    buf.clear();
                    spans.for_each(|v| buf.extend_from_slice(v));
                    buf.select_nth_unstable_by(r0, f64::total_cmp);
                    buf.get(r0).copied()
                };
                Some(number(value))
            }
            Packed::Picks { .. } => None,
        }
    }
}

/// [`keep_extreme`] for a slot where NaN means empty; non-finite inputs are ignored.
#[inline]
fn keep_extreme_nan(slot: &mut f64, x: f64, want: Ordering) {
    if x.is_finite() && (slot.is_nan() || x.total_cmp(slot) == want) {
        *slot = x;
    }
}

/// The JSON value of `text`, `null` if it is not JSON. A string without escapes (the common case
/// for first/last) is taken as it is, without running the parser.
fn json_value(text: &str) -> Value {
    if let Some(inner) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| t.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'))
    {
        return Value::String(inner.to_owned());
    }
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A finite number as JSON, anything else as `null`.
fn number(x: Option<f64>) -> Value {
    x.and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Keeps the smaller (`want == Less`) or larger (`Greater`) of `slot` and `x` by `total_cmp`.
#[inline]
fn keep_extreme(slot: &mut Option<f64>, x: f64, want: Ordering) {
    match slot {
        Some(cur) if x.total_cmp(cur) != want => {}
        _ => *slot = Some(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Error-free transformations and the double-double accumulator.

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
fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    let (ah, al) = split(a);
    let (bh, bl) = split(b);
    let e = ((ah * bh - p) + ah * bl + al * bh) + al * bl;
    (p, e)
}

/// A double-double sum `hi + lo`, always normalised (`hi = fl(hi + lo)`); non-finite once any
/// partial sum overflowed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Dd {
    hi: f64,
    lo: f64,
}

impl Dd {
    #[inline(always)]
    fn add(&mut self, x: f64) {
        let (s, e) = two_sum(self.hi, x);
        let (hi, lo) = two_sum(s, self.lo + e);
        self.hi = hi;
        self.lo = lo;
    }

    #[inline]
    fn merge(&mut self, other: &Dd) {
        self.add(other.hi);
        self.add(other.lo);
    }

    /// The sum rounded to `f64`, `None` after overflow.
    fn value(&self) -> Option<f64> {
        (self.hi.is_finite() && self.lo.is_finite()).then_some(self.hi)
    }
}

/// Serialised as `[hi, lo]`, or `null` once overflowed (JSON has no infinities).
impl Serialize for Dd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().map(|hi| [hi, self.lo]).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Dd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<[f64; 2]>::deserialize(deserializer)? {
            // Renormalising is a no-op for what we wrote, and restores the invariant otherwise.
            Some([hi, lo]) => {
                let (hi, lo) = two_sum(hi, lo);
                Dd { hi, lo }
            }
            None => Dd {
                hi: f64::NAN,
                lo: f64::NAN,
            },
        })
    }
}

/// Accumulator for `sum`: a double-double sum (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SumAcc(Dd);

/// Accumulator for `mean`: count and double-double sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanAcc {
    n: u64,
    sum: Dd,
}

impl MeanAcc {
    /// `(hi + lo) / n`, with the remainder of `hi / n` folded back in (double-double division).
    fn mean(&self) -> Option<f64> {
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
    fn add(&mut self, x: f64) {
        self.n = self.n.saturating_add(1);
        self.s1.add(x);
        let (p, e) = two_prod(x, x);
        self.sq.add(p);
        self.sq_err.add(e);
    }

    fn merge(&mut self, other: &Moments) {
        self.n = self.n.saturating_add(other.n);
        self.s1.merge(&other.s1);
        self.sq.merge(&other.sq);
        self.sq_err.merge(&other.sq_err);
    }

    /// Sample variance, `None` for `n < 2` or after overflow.
    fn variance(&self) -> Option<f64> {
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

/// Sums an expansion accurately: repeated error-free two-sum sweeps (distillation) until the
/// components no longer overlap, then adds them from the smallest up. The result is faithfully
/// rounded, exactly zero when the exact sum is zero, and a deterministic function of the input.
fn sum_expansion(v: &mut [f64]) -> f64 {
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

// ---------------------------------------------------------------------------------------------
// countDistinct.

/// Up to this many distinct values, `countDistinct` keeps their 64-bit hashes and is exact.
pub const DISTINCT_EXACT_LIMIT: usize = 1024;
/// HyperLogLog++ precision: `2^14` registers, standard error `1.04/√16384 ≈ 0.81%`.
pub const DISTINCT_PRECISION: u8 = 14;
/// Seed of the XXH3-64 hash of a value's canonical JSON text. Changing it changes every sketch.
const DISTINCT_SEED: u64 = 0x7765_6972_2d64_7374; // "weir-dst"

/// The stable hash of a value for `countDistinct`.
#[inline]
fn hash_value(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), DISTINCT_SEED)
}

/// Feeds our precomputed stable hash to the HyperLogLog++ sketch unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StableHash;

/// The hasher of [`StableHash`]: returns the `u64` written into it.
#[derive(Default)]
struct PassThrough(u64);

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

type Hll = HyperLogLogPlus<u64, StableHash>;

fn new_hll() -> Hll {
    HyperLogLogPlus::new(DISTINCT_PRECISION, StableHash).expect("precision 14 is in 4..=18")
}

/// A set of 64-bit hashes: open addressing with linear probing, indexed by the hashes
/// themselves (they are uniformly distributed already), at most 3/4 full. `0` marks an empty
/// slot; the hash `0` itself is kept in a flag.
#[derive(Clone, Default)]
struct HashSet64 {
    /// A power of two slots, or none.
    slots: Vec<u64>,
    len: usize,
    zero: bool,
}

impl HashSet64 {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let zero = self.zero.then_some(0);
        zero.into_iter()
            .chain(self.slots.iter().copied().filter(|h| *h != 0))
    }

    /// Where `h` (nonzero) is, or the empty slot where it would go; `None` without slots.
    #[inline]
    fn probe(&self, h: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = h as usize & mask;
        // At most 3/4 full, so there is always an empty slot and this ends.
        loop {
            match self.slots.get(i) {
                Some(&x) if x != h && x != 0 => i = (i + 1) & mask,
                _ => return Some(i),
            }
        }
    }

    fn contains(&self, h: u64) -> bool {
        if h == 0 {
            return self.zero;
        }
        self.probe(h)
            .and_then(|i| self.slots.get(i))
            .is_some_and(|x| *x == h)
    }

    /// Adds `h`; `true` if it was not there.
    #[inline]
    fn insert(&mut self, h: u64) -> bool {
        if h == 0 {
            let new = !self.zero;
            self.zero = true;
            self.len += usize::from(new);
            return new;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(self.len + 1);
        }
        let Some(slot) = self.probe(h).and_then(|i| self.slots.get_mut(i)) else {
            return false;
        };
        if *slot == h {
            return false;
        }
        *slot = h;
        self.len += 1;
        true
    }

    /// Makes room for `n` more hashes, at most half full: bulk inserts (merges) are then cheap
    /// because most land in an empty slot at once.
    fn reserve(&mut self, n: usize) {
        if (self.len + n) * 2 > self.slots.len() {
            self.grow((self.len + n) * 3 / 2);
        }
    }

    /// Rebuilds with room for `len` hashes.
    fn grow(&mut self, len: usize) {
        let size = (len * 4).div_ceil(3).next_power_of_two().max(8);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for h in old.into_iter().filter(|h| *h != 0) {
            if let Some(slot) = self.probe(h).and_then(|i| self.slots.get_mut(i)) {
                *slot = h;
            }
        }
    }

    /// Removes every hash, keeping the slots.
    fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill(0);
        }
        self.len = 0;
        self.zero = false;
    }
}

/// Accumulator for `countDistinct`: an exact set of hashes, then a HyperLogLog++ sketch.
///
/// The exact set is a hash set indexed by the (already uniformly distributed) hashes
/// themselves, so an insert or a merge costs O(1) per hash. It is serialised as a sorted list,
/// so the serialised form is a function of the set only.
#[derive(Clone, Default)]
pub struct Distinct {
    /// The distinct hashes; empty once `sketch` is in use.
    exact: HashSet64,
    sketch: Option<Box<Hll>>,
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
    fn insert(&mut self, hash: u64) {
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

    fn merge(&mut self, other: &Distinct) {
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
    fn union(&mut self, hashes: impl Iterator<Item = u64>, n: usize) {
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
    fn clear(&mut self) {
        self.exact.clear();
        self.sketch = None;
    }

    fn estimate(&self) -> u64 {
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

// ---------------------------------------------------------------------------------------------
// percentile.

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
    q: f64,
    /// The values (finite, `-0.0` stored as `0.0`) while there are at most
    /// [`PERCENTILE_EXACT_LIMIT`]; empty once `sketch` is in use.
    exact: Vec<f64>,
    sketch: Option<Box<DDSketch>>,
}

impl Quantile {
    fn new(q: Option<f64>) -> Quantile {
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
    fn add(&mut self, x: f64) {
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

    fn merge(&mut self, other: &Quantile) {
        if let Some(theirs) = &other.sketch {
            // Same config by construction (and checked on deserialisation), so this cannot fail.
            let _ = self.promote().merge(theirs);
        }
        self.merge_exact(&other.exact);
    }

    /// Adds values (finite, no `-0.0`).
    #[inline]
    fn merge_exact(&mut self, values: &[f64]) {
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
    fn clear(&mut self) {
        self.exact.clear();
        self.sketch = None;
    }

    fn value(&self) -> Option<f64> {
        match &self.sketch {
            Some(sketch) => nearest_rank(sketch, self.q),
            None => exact_rank(&self.exact, self.q),
        }
    }
}

/// 0-based index of the nearest-rank value, `⌈q·n⌉ − 1` clamped to `[0, n − 1]`, for `n > 0`.
fn rank_index(q: f64, n: u64) -> u64 {
    let rank = (q * n as f64).ceil();
    let rank = if rank >= 1.0 { (rank as u64).min(n) } else { 1 };
    rank - 1
}

thread_local! {
    /// Reused buffer for selecting the nearest-rank value among exact values.
    static SELECT: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Ranks within this distance of either end are found in one pass (see [`near_end_rank`]).
const NEAR_END: usize = 8;

/// Which rank to look for, as a distance from an end: `(k, Less)` for the `k + 1`-th smallest,
/// `(k, Greater)` for the `k + 1`-th largest, whichever is nearer, for the 0-based rank `r0` of
/// `n` values.
fn rank_from_end(r0: usize, n: usize) -> (usize, Ordering) {
    if r0 <= n - 1 - r0 {
        (r0, Ordering::Less)
    } else {
        (n - 1 - r0, Ordering::Greater)
    }
}

/// The `k + 1`-th smallest (`want == Less`) or largest (`Greater`) of the values of `parts`, for
/// `k < NEAR_END`, in one pass keeping the `k + 1` most extreme values, sorted, most extreme first.
/// The values are finite and `-0.0` is not among them (as [`Quantile`] keeps them); `None` when
/// there are at most `k` of them.
fn near_end_rank<'a>(
    parts: impl IntoIterator<Item = &'a [f64]>,
    k: usize,
    want: Ordering,
) -> Option<f64> {
    if k >= NEAR_END {
        return None;
    }
    // `>` orders the values like `total_cmp`; the smallest are the largest of the negated values.
    let sign = if want == Ordering::Greater { 1.0 } else { -1.0 };
    // The k + 1 largest keys so far with their values, largest first.
    let mut best = [(f64::NEG_INFINITY, 0.0f64); NEAR_END];
    let mut len = 0;
    let mut offer = |x: f64, kx: f64| {
        let mut i = len.min(k);
        while i > 0 && kx > best[i - 1].0 {
            best[i] = best[i - 1];
            i -= 1;
        }
        best[i] = (kx, x);
        len = (len + 1).min(k + 1);
        best[k].0
    };
    // The (k + 1)-th largest key so far, `-inf` until there are k + 1 (the values are finite).
    // Almost every value fails the test against it, a branch that is then well predicted.
    let mut bar = f64::NEG_INFINITY;
    for part in parts {
        for &x in part {
            let kx = sign * x;
            if kx > bar {
                bar = offer(x, kx);
            }
        }
    }
    (len > k).then_some(best[k].1)
}

/// The exact nearest-rank value of `values` (in any order; finite, without `-0.0`, as
/// [`Quantile`] keeps them): a function of their multiset.
fn exact_rank(values: &[f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let r0 = rank_index(q, n as u64) as usize;
    // Ranks near either end (p99 of a few hundred values): one pass.
    let (k, want) = rank_from_end(r0, n);
    if k < NEAR_END {
        return near_end_rank([values], k, want);
    }
    SELECT.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(values);
        buf.select_nth_unstable_by(r0, f64::total_cmp);
        buf.get(r0).copied()
    })
}

/// The sketch's estimate of the nearest-rank value: the `⌈q·n⌉`-th smallest input (1-based).
fn nearest_rank(sketch: &DDSketch, q: f64) -> Option<f64> {
    let n = sketch.count() as u64;
    if n == 0 {
        return None;
    }
    let (min, max) = (sketch.min()?, sketch.max()?);
    let r0 = rank_index(q, n); // 0-based
    if r0 == 0 {
        return Some(min);
    }
    if r0 == n - 1 {
        return Some(max);
    }
    // `DDSketch::quantile(p)` returns the bucket holding the value of 0-based rank
    // `(p * (n - 1.0)) as u64`; aim `p` at the middle of `r0`'s unit interval and make sure.
    let denom = n as f64 - 1.0;
    let mut p = (r0 as f64 + 0.5) / denom;
    for _ in 0..8 {
        match ((p * denom) as u64).cmp(&r0) {
            Ordering::Equal => break,
            Ordering::Less => p = p.next_up(),
            Ordering::Greater => p = p.next_down(),
        }
    }
    let value = sketch.quantile(p.clamp(0.0, 1.0)).ok().flatten()?;
    Some(value.clamp(min, max))
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

// ---------------------------------------------------------------------------------------------
// first / last.

/// The record picked by `first` or `last`: its order and the value's canonical JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    order: Order,
    json: String,
}

impl Pick {
    /// The picked record's order.
    pub fn order(&self) -> Order {
        self.order
    }

    /// The picked value's canonical JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Replaces the pick when `(order, text)` compares `want` (Less for first, Greater for last)
/// to the current one, reusing the string's buffer.
#[inline]
fn offer(slot: &mut Option<Pick>, order: Order, text: &str, want: Ordering) {
    match slot {
        None => {
            *slot = Some(Pick {
                order,
                json: text.to_owned(),
            })
        }
        Some(pick) => {
            if order.cmp(&pick.order).then_with(|| text.cmp(&pick.json)) == want {
                pick.order = order;
                pick.json.clear();
                pick.json.push_str(text);
            }
        }
    }
}

impl Column {
    /// A column of one row holding `acc` (to merge a partial aggregate into a pane row).
    pub fn from_acc(acc: &Acc) -> Column {
        let or_nan = |x: &Option<f64>| x.unwrap_or(f64::NAN);
        let slot = |p: &Option<Pick>| match p {
            Some(p) => PickSlot {
                order: Some(p.order),
                json: p.json.clone(),
            },
            None => PickSlot::default(),
        };
        match acc {
            Acc::Count(n) => Column::Count(vec![*n]),
            Acc::Sum(s) => Column::Sum(vec![*s]),
            Acc::Mean(m) => Column::Mean(vec![*m]),
            Acc::Min(m) => Column::Min(vec![or_nan(m)]),
            Acc::Max(m) => Column::Max(vec![or_nan(m)]),
            Acc::Stddev(m) => Column::Stddev(vec![**m]),
            Acc::Variance(m) => Column::Variance(vec![**m]),
            Acc::CountDistinct(d) => Column::CountDistinct(vec![d.clone()]),
            Acc::Percentile(q) => Column::Percentile {
                quantile: Some(q.quantile()),
                rows: vec![(**q).clone()],
            },
            Acc::First(p) => Column::First(vec![slot(p)]),
            Acc::Last(p) => Column::Last(vec![slot(p)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const ALL: [AggregationFn; 11] = [
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

    const NUMERIC: [AggregationFn; 8] = [
        AggregationFn::Count,
        AggregationFn::Sum,
        AggregationFn::Min,
        AggregationFn::Max,
        AggregationFn::Mean,
        AggregationFn::Stddev,
        AggregationFn::Variance,
        AggregationFn::Percentile,
    ];

    fn ord(event_time: i64, seq: u64) -> Order {
        Order { event_time, seq }
    }

    /// Small deterministic PRNG (xorshift64*), so the non-proptest tests are reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Roughly normal, mean 0, standard deviation 1 (Irwin–Hall of 12 uniforms).
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
        }
    }

    fn feed(f: AggregationFn, q: Option<f64>, items: &[(Input<'_>, Order)]) -> Acc {
        let mut acc = Acc::new(f, q);
        for &(input, order) in items {
            acc.update(input, order);
        }
        acc
    }

    fn roundtrip(acc: &Acc) -> Acc {
        let json = serde_json::to_string(acc).unwrap();
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    /// Feeds item `i` to part `assign[i] % parts`, then merges the parts in an order driven by
    /// `picks` (which part merges into which, and whether it goes through serde first).
    fn split_merge(
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
    fn text(acc: &Acc) -> String {
        serde_json::to_string(&acc.result()).unwrap()
    }

    fn num(acc: &Acc) -> Option<f64> {
        acc.result().as_f64()
    }

    fn rel_err(got: f64, want: f64) -> f64 {
        if got == want {
            0.0
        } else {
            ((got - want) / want).abs()
        }
    }

    fn numbers(values: &[f64]) -> Vec<(Input<'static>, Order)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| (Input::Number(x), ord(0, i as u64)))
            .collect()
    }

    /// Nearest-rank reference: the ⌈q·n⌉-th smallest (1-based; the smallest when q·n < 1).
    fn nearest_rank_ref(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        sorted[rank - 1]
    }

    /// Corrected two-pass variance, with the mean taken relative to the first value (so that
    /// a large mean does not cost precision).
    fn two_pass_variance(values: &[f64]) -> f64 {
        let n = values.len() as f64;
        let x0 = values[0];
        let mean = x0 + values.iter().map(|x| x - x0).sum::<f64>() / n;
        let (sq, dev) = values.iter().fold((0.0, 0.0), |(sq, dev), x| {
            let d = x - mean;
            (sq + d * d, dev + d)
        });
        (sq - dev * dev / n) / (n - 1.0)
    }

    fn int_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-(1i64 << 40)..(1i64 << 40)).prop_map(|v| v as f64),
            (-1000i64..1000).prop_map(|v| v as f64),
            Just(0.0),
        ]
    }

    fn real_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6..1e6f64,
            -10.0..10.0f64,
            (-(1i64 << 50)..(1i64 << 50)).prop_map(|v| v as f64 / 1024.0),
            Just(0.0),
            Just(-0.0),
        ]
    }

    /// Signed values whose magnitudes are log-uniform over 1e-9..1e12, plus zeros.
    fn wide_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (any::<bool>(), -9.0..12.0f64)
                .prop_map(|(neg, e)| if neg { -(10f64.powf(e)) } else { 10f64.powf(e) }),
            1 => Just(0.0),
        ]
    }

    fn merge_picks() -> impl Strategy<Value = Vec<(usize, usize, bool)>> {
        prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 0..16)
    }

    fn assignment() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0..64usize, 400)
    }

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
            prop_assert_eq!(feed(AggregationFn::Count, None, &items).result(), Value::from(n));
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

        /// A `Column` row is the same accumulator as an `Acc`: same results after the same
        /// updates, the same merges, and the same `Acc` when converted back.
        #[test]
        fn column_rows_behave_like_accs(
            values in prop::collection::vec(wide_value(), 0..60),
            assign in assignment(),
            q in 0.0..=1.0f64,
        ) {
            for f in ALL {
                let mut col = Column::new(f, Some(q));
                let mut accs = [Acc::new(f, Some(q)), Acc::new(f, Some(q))];
                col.push_empty();
                col.push_empty();
                for (i, x) in values.iter().enumerate() {
                    let text = format!("{x}");
                    let input = match f {
                        AggregationFn::CountDistinct | AggregationFn::First | AggregationFn::Last => {
                            Input::Json(&text)
                        }
                        _ => Input::Number(*x),
                    };
                    let row = assign[i % assign.len()] % 2;
                    col.update(row, input, ord(i as i64 % 7, i as u64));
                    accs[row].update(input, ord(i as i64 % 7, i as u64));
                }
                for (row, acc) in accs.iter().enumerate() {
                    prop_assert_eq!(col.result(row), acc.result(), "{:?}", f);
                    let back = col.acc(row).map(|a| text(&a));
                    prop_assert_eq!(back, Some(text(acc)), "{:?}", f);
                }
                let other = col.clone();
                col.merge_row(0, &other, 1);
                let second = accs[1].clone();
                accs[0].merge(&second);
                prop_assert_eq!(col.result(0), accs[0].result(), "{:?} merged", f);
                let mut bulk = other.clone();
                bulk.merge_rows(&other, &[1, 0]);
                let mut by_row = other.clone();
                by_row.merge_row(1, &other, 0);
                by_row.merge_row(0, &other, 1);
                prop_assert_eq!(bulk.result(0), by_row.result(0), "{:?} bulk", f);
                prop_assert_eq!(bulk.result(1), by_row.result(1), "{:?} bulk", f);
                prop_assert_eq!(col.result(5), Value::Null);
            }
        }

        /// `Column::merged_result` equals the result of merging the rows, for every function (it
        /// declines the ones it does not compute), with and without sealed rows, across the exact
        /// limits (unions above 1,024 hashes, more than 512 values, rows holding a sketch).
        #[test]
        fn merged_result_equals_merging_the_rows(
            parts in prop::collection::vec((0usize..700, 1u64..3000, any::<bool>(), any::<u64>()), 1..6),
            q in prop_oneof![Just(0.5), Just(0.99), Just(0.0), Just(1.0), 0.0..=1.0f64],
        ) {
            let mut scratch = ResultScratch::default();
            for f in ALL {
                // One column per part, each with an empty row 0 and the part's values in row 1.
                let cols: Vec<Column> = parts
                    .iter()
                    .map(|&(len, range, seal, seed)| {
                        let mut rng = Rng(seed | 1);
                        let mut col = Column::new(f, Some(q));
                        col.push_empty();
                        col.push_empty();
                        for i in 0..len {
                            let v = rng.below(range as usize) as f64 - 100.0;
                            let text = format!("{v}");
                            let input = match f {
                                AggregationFn::CountDistinct
                                | AggregationFn::First
                                | AggregationFn::Last => Input::Json(&text),
                                _ => Input::Number(v),
                            };
                            col.update(1, input, ord(i as i64 % 5, i as u64));
                        }
                        if seal {
                            col.seal();
                        }
                        col
                    })
                    .collect();
                for row in [0, 1] {
                    let refs: Vec<(&Column, usize)> = cols.iter().map(|c| (c, row)).collect();
                    let mut merged = Column::new(f, Some(q));
                    merged.push_empty();
                    for (c, r) in &refs {
                        merged.merge_row(0, c, *r);
                    }
                    let direct = Column::merged_result(&refs, &mut scratch);
                    if let Some(direct) = &direct {
                        prop_assert_eq!(direct, &merged.result(0), "{:?} row {}", f, row);
                    }
                    // It must apply where it is meant to: all rows packed, and an exact merge.
                    let packed = cols.iter().all(|c| matches!(c, Column::Sealed(_)));
                    let exact = match merged.acc(0) {
                        Some(Acc::CountDistinct(d)) => d.sketch.is_none(),
                        Some(Acc::Percentile(p)) => p.sketch.is_none(),
                        _ => false,
                    };
                    prop_assert_eq!(direct.is_some(), packed && exact, "{:?} row {}", f, row);
                }
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
                feed(AggregationFn::CountDistinct, None, &items).result(),
                Value::from(distinct.len())
            );
            let keyed = items.iter().map(|&(input, order)| match input {
                Input::Json(t) => (order, t),
                _ => unreachable!(),
            });
            let first = keyed.clone().min().map(|(_, t)| serde_json::from_str::<Value>(t).unwrap());
            let last = keyed.max().map(|(_, t)| serde_json::from_str::<Value>(t).unwrap());
            prop_assert_eq!(feed(AggregationFn::First, None, &items).result(), first.unwrap_or(Value::Null));
            prop_assert_eq!(feed(AggregationFn::Last, None, &items).result(), last.unwrap_or(Value::Null));
        }

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
                let _ = a.result();
                let _ = roundtrip(&a).result();
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
            assert_eq!(acc.result(), want, "{f:?}");
            assert_eq!(roundtrip(&acc).result(), want, "{f:?}");
            assert_eq!(acc.function(), f);
            // Merging empties into empties stays empty.
            let mut merged = Acc::new(f, Some(0.5));
            merged.merge(&acc);
            assert_eq!(merged.result(), want, "{f:?}");
        }
    }

    #[test]
    fn variance_needs_two_values() {
        for f in [AggregationFn::Variance, AggregationFn::Stddev] {
            let one = feed(f, None, &numbers(&[5.0]));
            assert_eq!(one.result(), Value::Null);
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

    #[test]
    fn overflow_gives_null_and_stays_null() {
        let big = numbers(&[1e308, 1e308]);
        for f in [AggregationFn::Sum, AggregationFn::Mean] {
            let acc = feed(f, None, &big);
            assert_eq!(acc.result(), Value::Null, "{f:?}");
            let rt = roundtrip(&acc);
            assert_eq!(rt.result(), Value::Null, "{f:?}");
            // Overflow is sticky: later values and merges keep it null.
            let mut later = rt;
            later.update(Input::Number(-1e308), ord(0, 0));
            later.merge(&feed(f, None, &numbers(&[1.0])));
            assert_eq!(later.result(), Value::Null, "{f:?}");
            let mut fine = feed(f, None, &numbers(&[1.0]));
            fine.merge(&acc);
            assert_eq!(fine.result(), Value::Null, "{f:?}");
        }
        // Large but finite sums are fine; the double-double keeps the small part.
        let acc = feed(AggregationFn::Sum, None, &numbers(&[1e308, 1.0, -1e308]));
        assert_eq!(num(&acc), Some(1.0));
        for f in [AggregationFn::Variance, AggregationFn::Stddev] {
            let acc = feed(f, None, &numbers(&[1e200, -1e200, 3.0]));
            assert_eq!(acc.result(), Value::Null, "{f:?}");
            assert_eq!(roundtrip(&acc).result(), Value::Null, "{f:?}");
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
        assert_eq!(count.result(), Value::from(3));
        let mut distinct = Acc::new(AggregationFn::CountDistinct, None);
        distinct.update(Input::Number(1.0), ord(0, 0));
        assert_eq!(distinct.result(), Value::from(0));
    }

    #[test]
    fn min_max_zero_signs_are_deterministic() {
        for values in [[0.0, -0.0], [-0.0, 0.0]] {
            assert_eq!(
                text(&feed(AggregationFn::Min, None, &numbers(&values))),
                "-0.0"
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

    #[test]
    fn first_last_ties_broken_by_seq() {
        let items = [
            (Input::Json("\"b\""), ord(10, 5)),
            (Input::Json("\"a\""), ord(10, 2)),
            (Input::Json("\"late\""), ord(11, 0)),
            (Input::Json("\"early\""), ord(9, 9)),
            (Input::Json("\"c\""), ord(11, 1)),
        ];
        for perm in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]] {
            let mut first = Acc::new(AggregationFn::First, None);
            let mut last = Acc::new(AggregationFn::Last, None);
            for i in perm {
                first.update(items[i].0, items[i].1);
                last.update(items[i].0, items[i].1);
            }
            assert_eq!(first.result(), Value::from("early"));
            assert_eq!(last.result(), Value::from("c"));
        }
        // Same event time, seq decides.
        let same_time = [(Input::Json("1"), ord(5, 7)), (Input::Json("2"), ord(5, 3))];
        assert_eq!(
            feed(AggregationFn::First, None, &same_time).result(),
            Value::from(2)
        );
        assert_eq!(
            feed(AggregationFn::Last, None, &same_time).result(),
            Value::from(1)
        );
        // Identical orders: the JSON text decides, whatever the arrival or merge order.
        let same = [
            (Input::Json("{\"x\":1}"), ord(5, 3)),
            (Input::Json("[1]"), ord(5, 3)),
        ];
        let rev = [same[1], same[0]];
        for items in [&same, &rev] {
            assert_eq!(
                feed(AggregationFn::First, None, items).result(),
                serde_json::json!([1])
            );
            assert_eq!(
                feed(AggregationFn::Last, None, items).result(),
                serde_json::json!({"x": 1})
            );
        }
        // Structured values and invalid JSON text.
        let obj = feed(
            AggregationFn::Last,
            None,
            &[(Input::Json("{\"a\":[1,true,null]}"), ord(0, 0))],
        );
        assert_eq!(obj.result(), serde_json::json!({"a": [1, true, null]}));
        let bad = feed(
            AggregationFn::First,
            None,
            &[(Input::Json("{oops"), ord(0, 0))],
        );
        assert_eq!(bad.result(), Value::Null);
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
            let got = acc.result().as_u64().unwrap() as f64;
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
            assert_eq!(split.result(), whole.result(), "{parts} parts");
        }
        // Skewed parts: a big sketch merged into many small exact sets and vice versa.
        let mut small_first = feed(AggregationFn::CountDistinct, None, &items[..10]);
        small_first.merge(&whole);
        let mut big_first = whole.clone();
        big_first.merge(&feed(AggregationFn::CountDistinct, None, &items[..10]));
        assert_eq!(small_first.result(), whole.result());
        assert_eq!(big_first.result(), whole.result());
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
