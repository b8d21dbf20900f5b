//! Tumbling and hopping windows ([`Aligned`]): records counted into panes of
//! `gcd(size, slide)`, keyed by pane start and first window; a window is emitted by merging its
//! panes (through blocks of panes merged once for many hopping windows) when the watermark
//! passes its end, and panes no open window reads are dropped.

use std::collections::BTreeMap;

use super::closing::{Closing, Closings};
use super::groups::Groups;
use super::marks::Mark;
use super::merge::{MergeScratch, Merged};
use super::pane::Pane;
use super::record::WindowResult;
use crate::agg::{Column, Input, Order};
use crate::plan::AggPlan;

/// `t` rounded down to a multiple of `step`.
pub(super) fn align_down(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

/// `t` rounded up to a multiple of `step`.
pub(super) fn align_up(t: i64, step: i64) -> i64 {
    let r = t.rem_euclid(step);
    if r == 0 {
        t
    } else {
        t + (step - r)
    }
}

/// Tumbling and hopping windows, stored as panes of gcd(size, slide).
///
/// A pane is keyed by its start and by the first window its records count toward. Normally that
/// is the first window containing the pane; a record that is late for some of its windows (by its
/// own partition's watermark) but not all lands in a separate pane keyed by the first window it
/// may count toward, so the windows it was late for never see it, however far the other
/// partitions have got.
pub(super) struct Aligned {
    pub(super) size: i64,
    pub(super) slide: i64,
    pub(super) pane: i64,
    pub(super) panes: BTreeMap<(i64, i64), Pane>,
    scratch: MergeScratch,
    /// Rows of the last untagged pane dropped, a size hint for new panes.
    pub(super) rows_hint: usize,
    /// Length of a block of panes merged once for many hopping windows (0: no blocks).
    block_len: i64,
    /// Merged untagged panes of `[start, start + block_len)`, by start.
    blocks: BTreeMap<i64, Pane>,
}

/// Seal the panes with these keys (see [`Pane::seal`]).
fn seal_panes(panes: &mut BTreeMap<(i64, i64), Pane>, keys: &[(i64, i64)]) {
    for k in keys {
        if let Some(p) = panes.get_mut(k) {
            p.seal();
        }
    }
}

/// Panes per block: about the square root of the panes per window, which minimises the merges
/// per window (blocks inside it plus loose panes at its edges); none for short windows.
fn block_len(size: i64, pane: i64) -> i64 {
    let n = size / pane;
    if size == pane || n < 16 {
        return 0;
    }
    ((n as f64).sqrt().round() as i64).max(2) * pane
}

impl Aligned {
    /// Windows of `size` every `slide`, over panes of `pane` (their gcd); nothing open yet.
    pub(super) fn new(size: i64, slide: i64, pane: i64) -> Aligned {
        Aligned {
            size,
            slide,
            pane,
            panes: BTreeMap::new(),
            scratch: MergeScratch::default(),
            rows_hint: 0,
            block_len: block_len(size, pane),
            blocks: BTreeMap::new(),
        }
    }

    /// Counts a record of group `gid` in pane row `key` (pane start, first window it counts
    /// toward), sizing a new pane like the last one dropped. `true` when the pane had no row
    /// for the group (the caller then retains its key).
    #[inline]
    pub(super) fn add<'a>(
        &mut self,
        aggs: &[AggPlan],
        key: (i64, i64),
        gid: u32,
        mark: Mark,
        inputs: impl IntoIterator<Item = Input<'a>>,
        order: Order,
    ) -> bool {
        let hint = self.rows_hint;
        let pane = self
            .panes
            .entry(key)
            .or_insert_with(|| Pane::with_capacity(aggs, hint));
        let (row, added) = pane.row(gid);
        pane.marks.note(mark);
        for (col, input) in pane.cols.iter_mut().zip(inputs) {
            col.update(row, input, order);
        }
        added
    }

    /// Start of the first window containing the pane starting at `p`.
    pub(super) fn first_window(&self, p: i64) -> i64 {
        align_up(p + self.pane - self.size, self.slide)
    }

    /// Emit the windows with end in `(old, wm]` that hold data, and drop panes no open window
    /// needs. A tumbling window's pane moves to `closing`, which builds its results as they are
    /// taken; a hopping window's results are built into `out` at once (they merge several panes).
    pub(super) fn close(
        &mut self,
        old: i64,
        wm: i64,
        groups: &mut Groups,
        out: &mut Vec<WindowResult>,
        closing: &mut Closings,
    ) -> usize {
        let mut queued = 0;
        let Some((&(first_pane, _), _)) = self.panes.first_key_value() else {
            return 0;
        };
        // The first window that may still be open and contains the first pane.
        let mut s = self.first_window(first_pane);
        if old > i64::MIN {
            s = s.max(align_up(old.saturating_sub(self.size) + 1, self.slide));
        }
        while s.saturating_add(self.size) <= wm {
            let end = s + self.size;
            // Skip ahead over windows that hold no pane.
            if self
                .panes
                .range((s, i64::MIN)..(end, i64::MIN))
                .next()
                .is_none()
            {
                match self.panes.range((end, i64::MIN)..).next() {
                    Some((&(next, _), _)) => {
                        s = (s + self.slide).max(self.first_window(next));
                        continue;
                    }
                    None => break,
                }
            }
            if self.pane == self.size {
                // Tumbling: the pane is the window (a record late for it is refused, so no
                // pane is tagged with another first window).
                if let Some(pane) = self.panes.remove(&(s, s)) {
                    self.rows_hint = pane.len() + pane.len() / 16;
                    queued += closing.push(Closing::new(s, end, pane, groups));
                }
            } else {
                let first = out.len();
                self.emit_hopping(s, groups, out);
                // Each group has one result per window, so an unstable sort gives the same order.
                out[first..].sort_unstable_by(|x, y| x.group.cmp(&y.group));
            }
            s += self.slide;
            self.drop_panes_before(s, groups);
        }
        // Panes before the first window still open belong only to closed windows.
        let open_from = align_up(wm.saturating_sub(self.size) + 1, self.slide);
        self.drop_panes_before(open_from, groups);
        queued
    }

    /// Hopping: merge the window's panes group by group, in pane order. Runs of untagged panes
    /// that fill a block are merged once into the block, which later windows reuse: every
    /// untagged pane of a window being emitted is final (its first window closed), and so is
    /// every pane a window being emitted reads, which lets them be sorted.
    fn emit_hopping(&mut self, s: i64, groups: &Groups, out: &mut Vec<WindowResult>) {
        let end = s + self.size;
        // Empty columns of the job's aggregations (every pane has them).
        let shape: Vec<Column> = self
            .panes
            .values()
            .next()
            .map(|p| p.cols.iter().map(Column::empty_like).collect())
            .unwrap_or_default();
        let (b0, b1) = if self.block_len > 0 {
            (align_up(s, self.block_len), align_down(end, self.block_len))
        } else {
            (0, 0)
        };
        self.fill_blocks(b0, b1, &shape);
        let Aligned {
            size,
            slide,
            pane,
            panes,
            blocks,
            scratch,
            ..
        } = self;
        let (size, slide, pane) = (*size, *slide, *pane);
        let untagged = |p: i64, first: i64| first == align_up(p + pane - size, slide);
        // Blocks first, then the panes they do not cover, both in time order.
        let loose: Vec<(i64, i64)> = panes
            .range((s, i64::MIN)..(end, i64::MIN))
            .map(|(k, _)| *k)
            .filter(|(p, first)| *first <= s && !(untagged(*p, *first) && (b0..b1).contains(p)))
            .collect();
        seal_panes(panes, &loose);
        let items: Vec<&Pane> = blocks
            .range(b0..b1)
            .map(|(_, block)| block)
            .chain(loose.iter().filter_map(|k| panes.get(k)))
            .collect();
        let m = scratch;
        m.align(&items);
        let results = out.len();
        out.extend(m.gids.iter().map(|gid| WindowResult {
            start: s,
            end,
            group: groups.key(*gid).into(),
            values: Vec::with_capacity(shape.len()),
        }));
        let emitted = &mut out[results..];
        m.merge(&items, &shape, true, |_, merged, g0, rows| {
            let results = emitted.iter_mut().skip(g0).take(rows);
            match merged {
                Merged::Rows(merged) => {
                    for (r, result) in results.enumerate() {
                        result.values.push(merged.result(r));
                    }
                }
                Merged::Values(values) => {
                    for (result, value) in results.zip(values.drain(..)) {
                        result.values.push(value);
                    }
                }
            }
        });
        // Blocks that start before the next window are not wholly inside any later window.
        while let Some(entry) = blocks.first_entry() {
            if *entry.key() > s {
                break;
            }
            entry.remove();
        }
    }

    /// Merges each block `[b, b + block_len)` of `[b0, b1)` that is not merged yet from its
    /// untagged panes (sealing them), with the columns of `shape`.
    fn fill_blocks(&mut self, b0: i64, b1: i64, shape: &[Column]) {
        let Aligned {
            size,
            slide,
            pane,
            block_len,
            panes,
            blocks,
            scratch,
            ..
        } = self;
        let (size, slide, pane, block_len) = (*size, *slide, *pane, *block_len);
        let untagged = |p: i64, first: i64| first == align_up(p + pane - size, slide);
        let mut b = b0;
        while b < b1 {
            if let std::collections::btree_map::Entry::Vacant(slot) = blocks.entry(b) {
                let keys: Vec<(i64, i64)> = panes
                    .range((b, i64::MIN)..(b + block_len, i64::MIN))
                    .map(|(k, _)| *k)
                    .filter(|(p, first)| untagged(*p, *first))
                    .collect();
                seal_panes(panes, &keys);
                let items: Vec<&Pane> = keys.iter().filter_map(|k| panes.get(k)).collect();
                scratch.align(&items);
                let mut block = Pane::with_capacity(&[], scratch.gids.len());
                for (r, gid) in scratch.gids.iter().enumerate() {
                    block.row(*gid);
                    debug_assert_eq!(block.gids.get(r), Some(gid));
                }
                // Packed from the start (see `Column::seal`), so that the rows are copied once.
                block.cols = shape
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        c.seal();
                        c
                    })
                    .collect();
                let cols = &mut block.cols;
                scratch.merge(&items, shape, false, |c, merged, _, rows| {
                    if let (Some(dst), Merged::Rows(merged)) = (cols.get_mut(c), merged) {
                        (0..rows).for_each(|r| dst.push_row(merged, r));
                    }
                });
                slot.insert(block);
            }
            b += block_len;
        }
    }

    fn drop_panes_before(&mut self, s: i64, groups: &mut Groups) {
        while let Some(entry) = self.panes.first_entry() {
            if entry.key().0 >= s {
                break;
            }
            let ((start, first), pane) = entry.remove_entry();
            if first == self.first_window(start) {
                self.rows_hint = pane.len() + pane.len() / 16;
            }
            for gid in pane.gids {
                groups.release(gid);
            }
        }
    }
}
