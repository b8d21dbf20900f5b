//! Session windows: per group, the open sessions sorted by start, and an index by end that
//! closes them in order. A record opens `[t, t + gap)` and merges every session it overlaps, so
//! a session's state is the same whatever order its records arrived in.

use std::collections::{BTreeSet, HashMap};

use super::groups::Groups;
use super::marks::{Mark, Marks};
use super::record::WindowResult;
use crate::agg::{Acc, Input, Order};
use crate::plan::AggPlan;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A group's accumulators in one pane or session.
type Row = Box<[Acc]>;

#[derive(Debug)]
pub(super) struct Session {
    start: i64,
    end: i64,
    row: Row,
    pub(super) marks: Marks,
}

/// Session windows, per group, plus an index by end to close them in order.
pub(super) struct Sessions {
    gap: i64,
    pub(super) by_group: FastMap<u32, Vec<Session>>,
    pub(super) by_end: BTreeSet<(i64, u32, i64)>,
}

impl Sessions {
    /// No session open yet; a record opens `[t, t + gap)`.
    pub(super) fn new(gap: i64) -> Sessions {
        Sessions {
            gap,
            by_group: FastMap::default(),
            by_end: BTreeSet::new(),
        }
    }

    /// Whether a record of group `gid` at event time `t` would merge into an open session
    /// (rather than open one).
    pub(super) fn overlaps(&self, gid: u32, t: i64) -> bool {
        let end = t.saturating_add(self.gap);
        self.by_group
            .get(&gid)
            .is_some_and(|list| list.iter().any(|s| s.start < end && s.end > t))
    }

    /// Counts a record of group `gid` at event time `t` (not late): a new session `[t, t + gap)`
    /// merged with every session of the group it overlaps. `true` when the group had no session
    /// open before (the caller then retains its key).
    #[inline]
    pub(super) fn add<'a>(
        &mut self,
        aggs: &[AggPlan],
        t: i64,
        gid: u32,
        mark: Mark,
        inputs: impl IntoIterator<Item = Input<'a>>,
        order: Order,
    ) -> bool {
        let list = self.by_group.entry(gid).or_default();
        let opened = list.is_empty();
        let (mut start, mut end) = (t, t.saturating_add(self.gap));
        let mut row: Row = aggs
            .iter()
            .map(|a| Acc::new(a.function, a.quantile))
            .collect();
        for (acc, input) in row.iter_mut().zip(inputs) {
            acc.update(input, order);
        }
        let mut marks = Marks::one(mark);
        // Merge every session the new one overlaps, keeping the list sorted by start.
        let mut kept = Vec::with_capacity(list.len() + 1);
        for old in list.drain(..) {
            if old.start < end && old.end > start {
                self.by_end.remove(&(old.end, gid, old.start));
                start = start.min(old.start);
                end = end.max(old.end);
                for (acc, o) in row.iter_mut().zip(old.row.iter()) {
                    acc.merge(o);
                }
                marks.merge(&old.marks);
            } else {
                kept.push(old);
            }
        }
        let at = kept.partition_point(|x| x.start < start);
        kept.insert(
            at,
            Session {
                start,
                end,
                row,
                marks,
            },
        );
        self.by_end.insert((end, gid, start));
        *list = kept;
        opened
    }

    /// Emits every session ending at or before `wm` into `out`, releasing the keys of groups
    /// left without a session.
    pub(super) fn close(&mut self, wm: i64, groups: &mut Groups, out: &mut Vec<WindowResult>) {
        while let Some(&(end, gid, start)) = self.by_end.first() {
            if end > wm {
                break;
            }
            self.by_end.pop_first();
            let Some(list) = self.by_group.get_mut(&gid) else {
                continue;
            };
            let Some(i) = list.iter().position(|x| x.start == start) else {
                continue;
            };
            let session = list.remove(i);
            if list.is_empty() {
                self.by_group.remove(&gid);
            }
            out.push(WindowResult {
                start: session.start,
                end: session.end,
                group: groups.key(gid).into(),
                values: session.row.iter().map(Acc::result).collect(),
            });
            if !self.by_group.contains_key(&gid) {
                groups.release(gid);
            }
        }
    }
}
