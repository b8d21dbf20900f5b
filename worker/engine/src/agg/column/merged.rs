//! [`Column::merged_result`]: the result of merging sealed countDistinct or percentile rows,
//! computed without building the merged state, equal to the result of the merged row.

use serde_json::Value;

use super::sealed::Packed;
use super::Column;
use crate::agg::distinct::DISTINCT_EXACT_LIMIT;
use crate::agg::numeric::number;
use crate::agg::percentile::PERCENTILE_EXACT_LIMIT;
use crate::agg::rank::{near_end_rank, rank_from_end, rank_index, NEAR_END};
use crate::agg::Output;

/// Rows to merge: a column and a row of it, each.
pub type Parts<'a> = [(&'a Column, usize)];

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
    pub fn merged_result(parts: &Parts<'_>, scratch: &mut ResultScratch) -> Option<Output> {
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
                (count <= DISTINCT_EXACT_LIMIT).then(|| Value::from(count).into())
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
                    return Some(Output::NULL);
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use weir_crds::AggregationFn;

    use crate::agg::testkit::*;
    use crate::agg::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

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
    }
}
