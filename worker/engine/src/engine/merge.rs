//! Merging the panes of a hopping window: [`MergeScratch`] lines up the rows of several panes by
//! group and merges them column by column into reused rows, or straight into results where that
//! is cheaper; the result is the same as merging each group's rows in pane order.

use weir_crds::AggregationFn;

use super::pane::Pane;
use crate::agg::{Column, Output, ResultScratch};

/// Reused buffers for merging the panes of a hopping window.
#[derive(Default)]
pub(super) struct MergeScratch {
    /// The merged rows, reset in place for the next window or group so that their memory is
    /// reused: one per group for fixed-size states, one for the group being merged otherwise.
    cols: Vec<Column>,
    /// The window's groups, by increasing id.
    pub(super) gids: Vec<u32>,
    /// For each merged pane, the position in `gids` of each of its rows.
    into: Vec<Vec<u32>>,
    /// Position in each merged pane.
    cursors: Vec<usize>,
    /// Targets of a run of rows, relative to the first group merged.
    rel: Vec<u32>,
    /// Results computed without merging (see [`Column::merged_result`]); boxed, as the engine
    /// state holds this scratch inline.
    direct: Box<Direct>,
}

/// Buffers for results computed without merging.
#[derive(Default)]
struct Direct {
    scratch: ResultScratch,
    /// The results, for the groups in order.
    values: Vec<Output>,
}

/// What [`MergeScratch::merge`] hands on for a column and a run of groups.
pub(super) enum Merged<'a> {
    /// The merged rows, one per group.
    Rows(&'a Column),
    /// Only the results, one per group, to take.
    Values(&'a mut Vec<Output>),
}

/// Groups merged together for the variable-size states of a hopping window (see `Aligned::emit_hopping`).
const MERGE_CHUNK: usize = 64;

impl MergeScratch {
    /// Lines up the rows of `items`, each sorted by group id: `gids` becomes the groups of all
    /// of them in increasing id order, and `into[i]` the position in `gids` of each row of
    /// `items[i]`.
    pub(super) fn align(&mut self, items: &[&Pane]) {
        let MergeScratch {
            gids,
            into,
            cursors,
            ..
        } = self;
        gids.clear();
        into.resize_with(items.len(), Vec::new);
        into.iter_mut().for_each(Vec::clear);
        cursors.clear();
        cursors.resize(items.len(), 0);
        loop {
            let next = items
                .iter()
                .zip(cursors.iter())
                .filter_map(|(item, c)| item.gids.get(*c))
                .min();
            let Some(&gid) = next else {
                break;
            };
            let g = gids.len() as u32;
            gids.push(gid);
            for ((item, c), into) in items.iter().zip(cursors.iter_mut()).zip(into.iter_mut()) {
                if item.gids.get(*c) == Some(&gid) {
                    into.push(g);
                    *c += 1;
                }
            }
        }
    }

    /// Merges the rows of `items` lined up by [`MergeScratch::align`], group by group, each
    /// group's rows in the order of `items`. `sink(c, merged, g, n)` receives column `c` merged
    /// for groups `g..g + n` of `gids`, as rows `0..n` of `merged`; or, when only `results` are
    /// wanted, their results where they are cheaper to compute without merging (countDistinct
    /// and percentile, see [`Column::merged_result`]): one group at a time from the items' rows,
    /// in a few kilobytes of scratch memory that stay in the L1 cache.
    ///
    /// Fixed-size states (count, sum, ...: a few bytes a group) are merged item by item into one
    /// row per group, reading the items and writing the rows in order, with the groups
    /// independent of each other. The others (sets, values, picks) are merged a few groups at a
    /// time, whose rows stay in cache (and are reused) while each item's rows for them, which are
    /// consecutive, are read in one sweep. Either way one column at a time, so that few memory
    /// streams are read at once.
    pub(super) fn merge(
        &mut self,
        items: &[&Pane],
        shape: &[Column],
        results: bool,
        mut sink: impl FnMut(usize, Merged<'_>, usize, usize),
    ) {
        let MergeScratch {
            cols,
            gids,
            into,
            cursors,
            rel,
            direct,
        } = self;
        let Direct { scratch, values } = &mut **direct;
        if cols.len() != shape.len() {
            *cols = shape.to_vec();
        }
        let n = gids.len();
        for (c, dst) in cols.iter_mut().enumerate() {
            // Every item has every column; `None` only keeps the items and `into` aligned.
            let srcs: Vec<Option<&Column>> = items.iter().map(|item| item.cols.get(c)).collect();
            if dst.has_fixed_size() {
                dst.reset_rows(n);
                for (src, into) in srcs.iter().zip(into.iter()) {
                    if let Some(src) = src {
                        dst.merge_rows(src, into);
                    }
                }
                sink(c, Merged::Rows(dst), 0, n);
                continue;
            }
            let function = dst.function();
            if results
                && matches!(
                    function,
                    AggregationFn::CountDistinct | AggregationFn::Percentile
                )
            {
                cursors.iter_mut().for_each(|c| *c = 0);
                values.clear();
                let mut parts: Vec<(&Column, usize)> = Vec::with_capacity(items.len());
                for g in 0..n as u32 {
                    parts.clear();
                    for ((src, into), cur) in srcs.iter().zip(into.iter()).zip(cursors.iter_mut()) {
                        if into.get(*cur) == Some(&g) {
                            if let Some(src) = src {
                                parts.push((src, *cur));
                            }
                            *cur += 1;
                        }
                    }
                    let value = Column::merged_result(&parts, scratch).unwrap_or_else(|| {
                        // A sketch, or a merge that needs one: merge the rows.
                        if dst.is_empty() {
                            dst.push_empty();
                        }
                        dst.reset_row(0);
                        for (src, row) in &parts {
                            dst.merge_row(0, src, *row);
                        }
                        dst.result(0)
                    });
                    values.push(value);
                }
                sink(c, Merged::Values(values), 0, n);
                continue;
            }
            while dst.len() < MERGE_CHUNK.min(n) {
                dst.push_empty();
            }
            cursors.iter_mut().for_each(|c| *c = 0);
            for g0 in (0..n).step_by(MERGE_CHUNK) {
                let rows = MERGE_CHUNK.min(n - g0);
                let g1 = (g0 + rows) as u32;
                (0..rows).for_each(|r| dst.reset_row(r));
                for ((src, into), cur) in srcs.iter().zip(into.iter()).zip(cursors.iter_mut()) {
                    let start = *cur;
                    while into.get(*cur).is_some_and(|g| *g < g1) {
                        *cur += 1;
                    }
                    let from = into.get(start..*cur).unwrap_or_default();
                    if let (Some(src), false) = (src, from.is_empty()) {
                        rel.clear();
                        rel.extend(from.iter().map(|g| g - g0 as u32));
                        dst.merge_range(src, start, rel);
                    }
                }
                sink(c, Merged::Rows(dst), g0, rows);
            }
        }
    }
}
