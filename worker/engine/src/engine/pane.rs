//! [`Pane`]: one pane's rows (a slice of `gcd(size, slide)` of event time), one row per group,
//! column by column, with the replay marks of its records; sealed for reading once no record
//! can reach it.

use hashbrown::HashTable;

use super::marks::Marks;
use crate::agg::Column;
use crate::plan::AggPlan;

/// One pane's rows, column by column (see [`Column`]): no allocation per row.
pub(super) struct Pane {
    /// Row numbers, hashed by group id.
    index: HashTable<u32>,
    /// Group id of each row.
    pub(super) gids: Vec<u32>,
    /// One column per aggregation.
    pub(super) cols: Vec<Column>,
    /// Where a replay must start to rebuild this pane.
    pub(super) marks: Marks,
    /// Whether the rows are in increasing group id order (hopping windows merge panes by a
    /// sorted walk, see [`merge_by_group`]).
    sorted: bool,
}

fn hash_gid(gid: u32) -> u64 {
    // Group ids are dense small integers; a multiplicative hash spreads them over the table.
    u64::from(gid).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Pane {
    /// A pane with room for `rows` rows: consecutive panes hold about as many groups, so sizing
    /// a new pane like the last one saves rehashing and regrowth on the record path.
    pub(super) fn with_capacity(aggs: &[AggPlan], rows: usize) -> Pane {
        let mut cols: Vec<Column> = aggs
            .iter()
            .map(|a| Column::new(a.function, a.quantile))
            .collect();
        for c in cols.iter_mut() {
            c.reserve(rows);
        }
        Pane {
            index: HashTable::with_capacity(rows),
            gids: Vec::with_capacity(rows),
            cols,
            marks: Marks::default(),
            sorted: true,
        }
    }

    /// The row of `gid`, added if new (`true` when added).
    #[inline]
    pub(super) fn row(&mut self, gid: u32) -> (usize, bool) {
        let Pane {
            index,
            gids,
            cols,
            sorted,
            ..
        } = self;
        let hash = hash_gid(gid);
        if let Some(r) = index.find(hash, |r| gids[*r as usize] == gid) {
            return (*r as usize, false);
        }
        *sorted &= gids.last().is_none_or(|last| *last < gid);
        let r = gids.len();
        gids.push(gid);
        for c in cols.iter_mut() {
            c.push_empty();
        }
        index.insert_unique(hash, r as u32, |r| hash_gid(gids[*r as usize]));
        (r, true)
    }

    /// Whether `gid` has a row here.
    pub(super) fn has(&self, gid: u32) -> bool {
        let gids = &self.gids;
        self.index
            .find(hash_gid(gid), |r| gids[*r as usize] == gid)
            .is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.gids.len()
    }

    /// Put the rows in increasing group id order and pack the columns for reading (see
    /// [`Column::seal`]); cheap when already done. Only for panes that no record can reach any
    /// more (which would undo it).
    pub(super) fn seal(&mut self) {
        if !self.sorted {
            self.sort_by_gid();
        }
        self.cols.iter_mut().for_each(Column::seal);
    }

    fn sort_by_gid(&mut self) {
        let Pane {
            index,
            gids,
            cols,
            sorted,
            ..
        } = self;
        let mut order: Vec<u32> = (0..gids.len() as u32).collect();
        order.sort_unstable_by_key(|r| gids[*r as usize]);
        for c in cols.iter_mut() {
            c.permute(&order);
        }
        *gids = order.iter().map(|r| gids[*r as usize]).collect();
        index.clear();
        for (r, gid) in gids.iter().enumerate() {
            index.insert_unique(hash_gid(*gid), r as u32, |r| hash_gid(gids[*r as usize]));
        }
        *sorted = true;
    }
}
