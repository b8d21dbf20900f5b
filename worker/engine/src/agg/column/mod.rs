//! [`Column`]: the accumulators of one aggregation for many rows (a pane's groups), stored
//! compactly per function; every row updates, merges and results exactly like the [`Acc`] of
//! the same function.

use std::cmp::Ordering;

use serde_json::Value;
use weir_crds::AggregationFn;

use crate::agg::acc::Acc;
use crate::agg::distinct::{hash_value, Distinct};
use crate::agg::moments::{MeanAcc, Moments, SumAcc};
use crate::agg::numeric::{keep_extreme_nan, number};
use crate::agg::percentile::Quantile;
use crate::agg::pick::{Pick, PickSlot};
use crate::agg::{Input, Order, Output};

mod merged;
mod sealed;

pub use merged::ResultScratch;
pub use sealed::Sealed;

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

    /// Merge `acc` into row `row`: [`Column::merge_row`] of `Column::from_acc(acc)`, without
    /// building that one-row column for count, sum, mean, min and max (the merge stage merges
    /// about one partial per record of a sparse job).
    pub fn merge_acc(&mut self, row: usize, acc: &Acc) {
        self.unseal();
        match (&mut *self, acc) {
            (Column::Count(a), Acc::Count(b)) => {
                merge_each(a, &[*b], &[row as u32], |a, b| *a = a.saturating_add(*b))
            }
            (Column::Sum(a), Acc::Sum(b)) => {
                merge_each(a, &[*b], &[row as u32], |a, b| a.0.merge(&b.0))
            }
            (Column::Mean(a), Acc::Mean(b)) => merge_each(a, &[*b], &[row as u32], MeanAcc::merge),
            (Column::Min(a), Acc::Min(b)) => merge_each(a, &[*b], &[row as u32], |a, b| {
                keep_extreme_nan(a, b.unwrap_or(f64::NAN), Ordering::Less)
            }),
            (Column::Max(a), Acc::Max(b)) => merge_each(a, &[*b], &[row as u32], |a, b| {
                keep_extreme_nan(a, b.unwrap_or(f64::NAN), Ordering::Greater)
            }),
            _ => self.merge_row(row, &Column::from_acc(acc), 0),
        }
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
            (Column::Mean(a), Column::Mean(b)) => merge_each(a, src!(b), into, MeanAcc::merge),
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
    pub fn result(&self, row: usize) -> Output {
        let opt = |x: f64| (!x.is_nan()).then_some(x);
        let get = |v: Option<Output>| v.unwrap_or(Output::NULL);
        match self {
            Column::Count(v) => get(v.get(row).map(|n| Value::from(*n).into())),
            Column::Sum(v) => get(v.get(row).map(|s| number(s.0.value()))),
            Column::Mean(v) => get(v.get(row).map(|m| number(m.mean()))),
            Column::Min(v) | Column::Max(v) => get(v.get(row).map(|x| number(opt(*x)))),
            Column::Stddev(v) => get(v.get(row).map(|m| number(m.variance().map(f64::sqrt)))),
            Column::Variance(v) => get(v.get(row).map(|m| number(m.variance()))),
            Column::Percentile { rows, .. } => get(rows.get(row).map(|p| number(p.value()))),
            Column::CountDistinct(v) => get(v.get(row).map(|d| Value::from(d.estimate()).into())),
            Column::First(v) | Column::Last(v) => get(v.get(row).map(PickSlot::result)),
            Column::Sealed(s) => get(s.result(row)),
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
    use proptest::prelude::*;
    use weir_crds::AggregationFn;

    use crate::agg::testkit::*;
    use crate::agg::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

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
                // The same merge from the accumulator itself; nothing for a row out of range
                // or an accumulator of another function.
                let mut by_acc = other.clone();
                by_acc.merge_acc(0, &second);
                by_acc.merge_acc(5, &second);
                let another = if f == AggregationFn::Count {
                    Acc::Max(Some(3.0))
                } else {
                    Acc::Count(7)
                };
                by_acc.merge_acc(1, &another);
                prop_assert_eq!(by_acc.acc(0).map(|a| text(&a)), col.acc(0).map(|a| text(&a)), "{:?} by acc", f);
                prop_assert_eq!(by_acc.acc(1).map(|a| text(&a)), other.acc(1).map(|a| text(&a)), "{:?} another", f);
                let mut bulk = other.clone();
                bulk.merge_rows(&other, &[1, 0]);
                let mut by_row = other.clone();
                by_row.merge_row(1, &other, 0);
                by_row.merge_row(0, &other, 1);
                prop_assert_eq!(bulk.result(0), by_row.result(0), "{:?} bulk", f);
                prop_assert_eq!(bulk.result(1), by_row.result(1), "{:?} bulk", f);
                prop_assert_eq!(col.result(5), Output::NULL);
            }
        }
    }
}
