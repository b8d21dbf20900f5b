//! [`Sealed`] columns: rows that will not change any more, packed into one buffer per column
//! for reading in order; sealing and unsealing never change what the rows hold.

use std::cmp::Ordering;

use serde_json::Value;
use weir_crds::AggregationFn;

use super::Column;
use crate::agg::acc::Acc;
use crate::agg::distinct::Distinct;
use crate::agg::numeric::number;
use crate::agg::percentile::Quantile;
use crate::agg::pick::{json_output, Pick, PickSlot};
use crate::agg::rank::exact_rank;
use crate::agg::{Order, Output};

/// Rows packed by [`Column::seal`]: read-only, with every row's variable-size state in one buffer
/// shared by the column, in row order, so that merging from many rows in order reads memory
/// sequentially instead of chasing a heap pointer per row. Changing a row unpacks the column.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// Row `r`'s entries are `bounds[r]..bounds[r + 1]` of the buffer (`rows + 1` bounds).
    bounds: Vec<u32>,
    pub(super) packed: Packed,
}

#[derive(Clone, Debug)]
pub(super) enum Packed {
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
    pub(super) fn span(&self, row: usize) -> Option<std::ops::Range<usize>> {
        let a = *self.bounds.get(row)? as usize;
        let b = *self.bounds.get(row + 1)? as usize;
        Some(a..b)
    }

    pub(super) fn len(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    pub(super) fn function(&self) -> AggregationFn {
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

    pub(super) fn quantile(&self) -> Option<f64> {
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
    pub(super) fn push_from(&mut self, src: &Column, row: usize) -> bool {
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
    pub(super) fn unpack(&self) -> Column {
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
    pub(super) fn acc(&self, row: usize) -> Option<Acc> {
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
    pub(super) fn result(&self, row: usize) -> Option<Output> {
        let s = self.span(row)?;
        Some(match &self.packed {
            // The hashes of an exact set are distinct.
            Packed::Distinct(_) => Value::from(s.len()).into(),
            Packed::Percentile { q, values, .. } => number(exact_rank(values.get(s)?, *q)),
            Packed::Picks { orders, text, .. } => match orders.get(row)? {
                Some(_) => json_output(text.get(s)?),
                None => Output::NULL,
            },
        })
    }
}

impl Column {
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

    /// [`Column::merge_rows_from`] with a sealed source.
    pub(super) fn merge_sealed(&mut self, s: &Sealed, first: usize, into: &[u32]) {
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
}
