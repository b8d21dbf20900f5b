//! The engine: records in, windowed results out, per the job's plan.
//!
//! Semantics (the contract the property tests check against a naive reference):
//! - Each input partition has a watermark: the largest event time it has delivered minus
//!   `allowedLateness` (`i64::MIN` before its first record). The engine's watermark is the
//!   minimum over partitions that are not idle (the maximum when all are idle), and it never moves
//!   back. A window `[start, end)` closes, and its results are emitted, when the engine watermark
//!   reaches `end`.
//! - Tumbling and hopping windows: a record is late for a window whose end is at or before its own
//!   partition's watermark (computed from the records before it) or the engine watermark. It
//!   counts toward its other windows; a record all of whose windows are late is rejected as `late`.
//! - Session windows: a record is late when its event time is behind its partition's watermark or
//!   the engine watermark. (A looser rule, such as "its own window `[t, t+gap)` has not ended",
//!   would let a record join or overlap a session that another partition's progress had already
//!   closed, and the results would depend on how partitions interleave.)
//! - Judging lateness by the record's own partition makes results independent of how partitions
//!   interleave, which is what lets any number of workers agree. Only idleness, a wall-clock
//!   notion the runtime reports with [`Engine::set_idle`], can make a record late that would not
//!   otherwise be.
//! - Rejected records change nothing: a record is fully decoded and checked before any state is
//!   touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use std::fmt;

use crate::agg::{Acc, Column, Input, Order, ResultScratch};
use crate::decode::{Fields, Scalar};
use crate::plan::{AggPlan, GroupPart, JobPlan, TimeSource, WindowKind};
use crate::time;
use weir_crds::AggregationFn;

mod stages;
pub use stages::{Exchange, MergeOutcome, Partial};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A watermark larger than any event time plus any window, used to close everything at the end.
const END_OF_TIME: i64 = i64::MAX / 4;

/// One input record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition (line number for a file).
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Kafka timestamp in ms.
    pub timestamp: Option<i64>,
    /// Message value.
    pub value: &'a [u8],
}

/// Why a record was not counted. The names are stable: they label metrics and dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not a JSON object.
    InvalidJson,
    /// A field the job reads is absent or null.
    MissingField,
    /// A field has a type the job cannot use (text where a number is needed, an object as a group).
    WrongType,
    /// The event time is absent in the wrong format, or out of range.
    InvalidEventTime,
    /// Every window the record belongs to has already closed.
    Late,
}

impl RejectReason {
    /// All reasons, in a stable order.
    pub const ALL: [RejectReason; 5] = [
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::InvalidEventTime,
        RejectReason::Late,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::InvalidEventTime => "invalid_event_time",
            RejectReason::Late => "late",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the reason, and details for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The result of one (group, window).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Window start (inclusive), ms.
    pub start: i64,
    /// Window end (exclusive), ms.
    pub end: i64,
    /// The group's values as canonical JSON texts joined by NUL bytes (which JSON text never
    /// contains); empty for the global group.
    pub group: Box<[u8]>,
    /// One value per aggregation, in the job's order.
    pub values: Vec<serde_json::Value>,
}

impl WindowResult {
    /// The group values' JSON texts, one per group-by component.
    pub fn group_texts(&self) -> impl Iterator<Item = &str> {
        let parts = if self.group.is_empty() {
            None
        } else {
            Some(self.group.split(|b| *b == 0))
        };
        parts
            .into_iter()
            .flatten()
            .map(|p| std::str::from_utf8(p).unwrap_or("null"))
    }

    /// The result record, one line of JSON:
    /// `{"window":{"start":..,"end":..},"group":{..},"values":{..}}`.
    pub fn to_json(&self, plan: &JobPlan) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"window\":{\"start\":\"");
        out.push_str(&time::format(self.start));
        out.push_str("\",\"end\":\"");
        out.push_str(&time::format(self.end));
        out.push_str("\"},\"group\":");
        self.push_group(plan, &mut out);
        out.push_str(",\"values\":{");
        for (i, (agg, v)) in plan.aggs.iter().zip(&self.values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, &agg.name);
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push_str("}}");
        out
    }
}

impl WindowResult {
    /// The sink message key: `{"group":{..},"start":".."}`. Unique per (group, window), since
    /// windows of one group that share a start are the same window (sessions never overlap).
    pub fn key_json(&self, plan: &JobPlan) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("{\"group\":");
        self.push_group(plan, &mut out);
        out.push_str(",\"start\":\"");
        out.push_str(&time::format(self.start));
        out.push_str("\"}");
        out
    }

    fn push_group(&self, plan: &JobPlan, out: &mut String) {
        out.push('{');
        for (i, ((name, _), text)) in plan.group.iter().zip(self.group_texts()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(out, name);
            out.push(':');
            out.push_str(text);
        }
        out.push('}');
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

/// Per-partition progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Largest event time accepted.
    pub max_time: i64,
    /// `max_time - allowedLateness`.
    pub watermark: i64,
    /// Reported idle by the runtime, and no record since.
    pub idle: bool,
}

/// Counters the runtime exports as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records accepted.
    pub accepted: u64,
    /// Records rejected, by reason (indexed like [`RejectReason::ALL`]).
    pub rejected: [u64; 5],
    /// Results emitted (partials, in stage 1 of a two-stage job).
    pub results: u64,
    /// Stage 2: partials skipped because they were merged before (a replay of stage 1).
    pub duplicate_partials: u64,
    /// Stage 2: partials dropped because their windows had closed (their source was idle).
    pub late_partials: u64,
}

/// Interned group keys with a count of the state entries holding each, so a group's key is
/// stored once however many windows it has open, and freed with its last window.
///
/// Keys live back to back in one arena (no allocation per group); the table holds only ids. The
/// arena is compacted when more than half of it belongs to freed groups.
struct Groups {
    table: HashTable<u32>,
    spans: Vec<(u32, u32)>,
    refs: Vec<u32>,
    arena: Vec<u8>,
    free: Vec<u32>,
    garbage: usize,
    hasher: foldhash::fast::RandomState,
}

impl Groups {
    fn new() -> Groups {
        Groups {
            table: HashTable::new(),
            spans: Vec::new(),
            refs: Vec::new(),
            arena: Vec::new(),
            free: Vec::new(),
            garbage: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn span_of<'a>(spans: &[(u32, u32)], arena: &'a [u8], id: u32) -> &'a [u8] {
        let (at, len) = spans[id as usize];
        &arena[at as usize..(at + len) as usize]
    }

    fn key(&self, id: u32) -> &[u8] {
        Self::span_of(&self.spans, &self.arena, id)
    }

    fn intern(&mut self, key: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(key);
        let Groups {
            table,
            spans,
            refs,
            arena,
            free,
            hasher,
            ..
        } = self;
        if let Some(id) = table.find(hash, |id| Self::span_of(spans, arena, *id) == key) {
            return *id;
        }
        let span = (arena.len() as u32, key.len() as u32);
        arena.extend_from_slice(key);
        let id = match free.pop() {
            Some(id) => {
                spans[id as usize] = span;
                refs[id as usize] = 0;
                id
            }
            None => {
                spans.push(span);
                refs.push(0);
                (spans.len() - 1) as u32
            }
        };
        table.insert_unique(hash, id, |id| {
            hasher.hash_one(Self::span_of(spans, arena, *id))
        });
        id
    }

    fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        let hash = self.hasher.hash_one(self.key(id));
        if let Ok(entry) = self.table.find_entry(hash, |x| *x == id) {
            entry.remove();
        }
        self.garbage += self.spans[id as usize].1 as usize;
        self.spans[id as usize] = (0, 0);
        self.free.push(id);
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Rewrite the arena with live keys only.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for (span, refs) in self.spans.iter_mut().zip(&self.refs) {
            if *refs > 0 {
                let (at, len) = *span;
                *span = (arena.len() as u32, len);
                arena.extend_from_slice(&self.arena[at as usize..(at + len) as usize]);
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// Drop `id` if nothing holds it (it was interned only to be looked at).
    fn forget_if_unused(&mut self, id: u32) {
        if self.refs[id as usize] == 0 {
            self.release(id);
        }
    }
}

/// A group's accumulators in one pane or session.
type Row = Box<[Acc]>;

/// Where a replay must start to rebuild a piece of state: per input partition, the smallest
/// offset of a record in it, and the partition's largest event time before that record.
///
/// Offsets of one partition arrive in increasing order, so the first record of a partition in a
/// pane or session is normally its smallest; the minimum is kept anyway.
#[derive(Debug, Default, Clone)]
struct Marks {
    /// The first partition's mark, inline: with one engine per partition (the runtime) there is
    /// no other, and a session then costs no allocation for its marks.
    first: Option<Mark>,
    more: Vec<Mark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    partition: i32,
    offset: i64,
    max_before: i64,
}

impl Marks {
    fn one(m: Mark) -> Marks {
        Marks {
            first: Some(m),
            more: Vec::new(),
        }
    }

    #[inline]
    fn note(&mut self, m: Mark) {
        let keep_lowest = |x: &mut Mark| {
            if m.offset < x.offset {
                *x = m;
            }
        };
        match &mut self.first {
            None => self.first = Some(m),
            Some(x) if x.partition == m.partition => keep_lowest(x),
            Some(_) => match self.more.iter_mut().find(|x| x.partition == m.partition) {
                Some(x) => keep_lowest(x),
                None => self.more.push(m),
            },
        }
    }

    fn merge(&mut self, other: &Marks) {
        for m in other.first.iter().chain(&other.more) {
            self.note(*m);
        }
    }

    fn get(&self, partition: i32) -> Option<Mark> {
        self.first
            .iter()
            .chain(&self.more)
            .find(|m| m.partition == partition)
            .copied()
    }
}

/// One pane's rows, column by column (see [`Column`]): no allocation per row.
struct Pane {
    /// Row numbers, hashed by group id.
    index: HashTable<u32>,
    /// Group id of each row.
    gids: Vec<u32>,
    /// One column per aggregation.
    cols: Vec<Column>,
    /// Where a replay must start to rebuild this pane.
    marks: Marks,
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
    fn with_capacity(aggs: &[AggPlan], rows: usize) -> Pane {
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
    fn row(&mut self, gid: u32) -> (usize, bool) {
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

    fn len(&self) -> usize {
        self.gids.len()
    }

    /// Put the rows in increasing group id order and pack the columns for reading (see
    /// [`Column::seal`]); cheap when already done. Only for panes that no record can reach any
    /// more (which would undo it).
    fn seal(&mut self) {
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

/// Reused buffers for merging the panes of a hopping window.
#[derive(Default)]
struct MergeScratch {
    /// The merged rows, reset in place for the next window or group so that their memory is
    /// reused: one per group for fixed-size states, one for the group being merged otherwise.
    cols: Vec<Column>,
    /// The window's groups, by increasing id.
    gids: Vec<u32>,
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
    values: Vec<serde_json::Value>,
}

/// What [`MergeScratch::merge`] hands on for a column and a run of groups.
enum Merged<'a> {
    /// The merged rows, one per group.
    Rows(&'a Column),
    /// Only the results, one per group, to take.
    Values(&'a mut Vec<serde_json::Value>),
}

/// Groups merged together for the variable-size states of a hopping window (see `emit_window`).
const MERGE_CHUNK: usize = 64;

/// Tumbling and hopping windows, stored as panes of gcd(size, slide).
///
/// A pane is keyed by its start and by the first window its records count toward. Normally that
/// is the first window containing the pane; a record that is late for some of its windows (by its
/// own partition's watermark) but not all lands in a separate pane keyed by the first window it
/// may count toward, so the windows it was late for never see it, however far the other
/// partitions have got.
struct Aligned {
    size: i64,
    slide: i64,
    pane: i64,
    panes: BTreeMap<(i64, i64), Pane>,
    scratch: MergeScratch,
    /// Rows of the last untagged pane dropped, a size hint for new panes.
    rows_hint: usize,
    /// Length of a block of panes merged once for many hopping windows (0: no blocks).
    block_len: i64,
    /// Merged untagged panes of `[start, start + block_len)`, by start.
    blocks: BTreeMap<i64, Pane>,
}

impl MergeScratch {
    /// Lines up the rows of `items`, each sorted by group id: `gids` becomes the groups of all
    /// of them in increasing id order, and `into[i]` the position in `gids` of each row of
    /// `items[i]`.
    fn align(&mut self, items: &[&Pane]) {
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
    fn merge(
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

#[derive(Debug)]
struct Session {
    start: i64,
    end: i64,
    row: Row,
    marks: Marks,
}

/// Session windows, per group, plus an index by end to close them in order.
struct Sessions {
    gap: i64,
    by_group: FastMap<u32, Vec<Session>>,
    by_end: BTreeSet<(i64, u32, i64)>,
}

enum State {
    Aligned(Aligned),
    Sessions(Sessions),
}

/// What one record contributes, decoded; the JSON texts live in a shared buffer.
#[derive(Clone, Copy)]
enum Contribution {
    Unit,
    Number(f64),
    Json(usize, usize),
}

fn align_down(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

fn align_up(t: i64, step: i64) -> i64 {
    let r = t.rem_euclid(step);
    if r == 0 {
        t
    } else {
        t + (step - r)
    }
}

/// What identifies a partial within its pane row: (group id, source partition, segment).
type PartialId = (u32, i32, Option<i64>);

/// The streaming engine for one job and a set of input partitions.
pub struct Engine {
    plan: JobPlan,
    partitions: BTreeMap<i32, PartitionState>,
    watermark: i64,
    groups: Groups,
    state: State,
    results: Vec<WindowResult>,
    stats: Stats,
    // Buffers reused between records so the record path does not allocate.
    slot_buf: Vec<Option<Scalar<'static>>>,
    key_buf: Vec<u8>,
    json_buf: Vec<u8>,
    contributions: Vec<Contribution>,
    /// Stage 1 of a two-stage job: emit partials, not results (see [`stages`]).
    partial_mode: bool,
    partials: Vec<Partial>,
    /// Stage 2: per pane row (pane, first window) still open, the (group, source partition,
    /// segment) of each partial merged into it.
    merged: BTreeMap<(i64, i64), std::collections::HashSet<PartialId>>,
}

/// Reuse a vector's allocation for another lifetime (the standard library collects in place).
fn recycle<'a, 'b>(mut v: Vec<Option<Scalar<'a>>>) -> Vec<Option<Scalar<'b>>> {
    v.clear();
    v.into_iter().map(|_| None).collect()
}

impl Engine {
    /// An engine for `plan` reading `partitions` (more are added on their first record).
    pub fn new(plan: JobPlan, partitions: impl IntoIterator<Item = i32>) -> Engine {
        let state = match plan.window {
            WindowKind::Aligned { size, slide, pane } => State::Aligned(Aligned {
                size,
                slide,
                pane,
                panes: BTreeMap::new(),
                scratch: MergeScratch::default(),
                rows_hint: 0,
                block_len: block_len(size, pane),
                blocks: BTreeMap::new(),
            }),
            WindowKind::Session { gap } => State::Sessions(Sessions {
                gap,
                by_group: FastMap::default(),
                by_end: BTreeSet::new(),
            }),
        };
        let partitions = partitions
            .into_iter()
            .map(|p| (p, PartitionState::new()))
            .collect();
        Engine {
            plan,
            partitions,
            watermark: i64::MIN,
            groups: Groups::new(),
            state,
            results: Vec::new(),
            stats: Stats::default(),
            slot_buf: Vec::new(),
            key_buf: Vec::new(),
            json_buf: Vec::new(),
            contributions: Vec::new(),
            partial_mode: false,
            partials: Vec::new(),
            merged: BTreeMap::new(),
        }
    }

    /// The job's plan.
    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }

    /// The engine watermark: every window ending at or before it has been emitted.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Progress of each partition.
    pub fn partitions(&self) -> &BTreeMap<i32, PartitionState> {
        &self.partitions
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of groups with at least one open window.
    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }

    /// Number of open (group, pane) rows or sessions: the unit of state memory.
    pub fn open_rows(&self) -> usize {
        match &self.state {
            State::Aligned(a) => a.panes.values().map(Pane::len).sum(),
            State::Sessions(s) => s.by_end.len(),
        }
    }

    /// Number of open (group, window) pairs: windows not yet emitted that hold at least one
    /// record of the group. A diagnostic for benchmarks: it walks the whole state.
    pub fn open_windows(&self) -> usize {
        match &self.state {
            State::Aligned(a) => {
                let mut windows: BTreeSet<(u32, i64)> = BTreeSet::new();
                for ((p, first), pane) in &a.panes {
                    let mut s =
                        (*first).max(align_up(self.watermark.saturating_sub(a.size) + 1, a.slide));
                    while s <= *p {
                        for gid in &pane.gids {
                            windows.insert((*gid, s));
                        }
                        s += a.slide;
                    }
                }
                windows.len()
            }
            State::Sessions(s) => s.by_end.len(),
        }
    }

    /// Results emitted since the last call, in order of window end, window start, then group.
    pub fn take_results(&mut self) -> Vec<WindowResult> {
        std::mem::take(&mut self.results)
    }

    /// Process one record: count it, or say why not. May close windows.
    pub fn process(&mut self, rec: &Record<'_>) -> Result<(), Rejection> {
        let mut fields = Fields {
            values: recycle(std::mem::take(&mut self.slot_buf)),
        };
        let outcome = self.process_decoded(rec, &mut fields);
        self.slot_buf = recycle(fields.values);
        match &outcome {
            Ok(()) => self.stats.accepted += 1,
            Err(r) => {
                let i = RejectReason::ALL
                    .iter()
                    .position(|x| *x == r.reason)
                    .unwrap_or(0);
                self.stats.rejected[i] += 1;
            }
        }
        outcome
    }

    fn process_decoded<'de>(
        &mut self,
        rec: &Record<'de>,
        fields: &mut Fields<'de>,
    ) -> Result<(), Rejection> {
        self.plan
            .fields
            .decode(rec.value, fields)
            .map_err(|e| Rejection::new(RejectReason::InvalidJson, e.0))?;
        let t = self.event_time(rec, fields)?;
        self.group_key(rec, fields)?;
        self.contributions(fields)?;

        let part = self
            .partitions
            .entry(rec.partition)
            .or_insert_with(PartitionState::new);
        let bar = part.watermark.max(self.watermark);
        // Aligned windows: the record counts toward the windows containing it that end after
        // `bar`, which are those starting at `first` or later.
        let mut first = 0;
        let late = match &self.state {
            State::Aligned(a) => {
                let p = align_down(t, a.pane);
                first = a
                    .first_window(p)
                    .max(align_up(bar.saturating_sub(a.size) + 1, a.slide));
                first > p
            }
            State::Sessions(_) => t < bar,
        };
        if late {
            return Err(Rejection::new(
                RejectReason::Late,
                format!(
                    "event time {} is too late: its windows closed at watermark {}",
                    time::format(t),
                    time::format(bar)
                ),
            ));
        }
        let mark = Mark {
            partition: rec.partition,
            offset: rec.offset,
            max_before: part.max_time,
        };
        part.max_time = part.max_time.max(t);
        part.watermark = part
            .watermark
            .max(part.max_time.saturating_sub(self.plan.lateness));
        part.idle = false;

        let order = Order {
            event_time: t,
            seq: ((rec.partition as u64) << 40) | (rec.offset as u64 & ((1 << 40) - 1)),
        };
        let gid = self.groups.intern(&self.key_buf);
        let inputs = &self.contributions;
        let json = &self.json_buf;
        let input = |c: &Contribution| match *c {
            Contribution::Unit => Input::Unit,
            Contribution::Number(n) => Input::Number(n),
            Contribution::Json(a, b) => {
                Input::Json(std::str::from_utf8(&json[a..b]).unwrap_or("null"))
            }
        };
        let new_row = |aggs: &[AggPlan]| -> Row {
            aggs.iter()
                .map(|a| Acc::new(a.function, a.quantile))
                .collect()
        };
        match &mut self.state {
            State::Aligned(a) => {
                let aggs = &self.plan.aggs;
                let hint = a.rows_hint;
                let pane = a
                    .panes
                    .entry((align_down(t, a.pane), first))
                    .or_insert_with(|| Pane::with_capacity(aggs, hint));
                let (row, added) = pane.row(gid);
                if added {
                    self.groups.retain(gid);
                }
                pane.marks.note(mark);
                for (col, c) in pane.cols.iter_mut().zip(inputs) {
                    col.update(row, input(c), order);
                }
            }
            State::Sessions(s) => {
                let list = s.by_group.entry(gid).or_default();
                if list.is_empty() {
                    self.groups.retain(gid);
                }
                let (mut start, mut end) = (t, t.saturating_add(s.gap));
                let mut row = new_row(&self.plan.aggs);
                for (acc, c) in row.iter_mut().zip(inputs) {
                    acc.update(input(c), order);
                }
                let mut marks = Marks::one(mark);
                // Merge every session the new one overlaps, keeping the list sorted by start.
                let mut kept = Vec::with_capacity(list.len() + 1);
                for old in list.drain(..) {
                    if old.start < end && old.end > start {
                        s.by_end.remove(&(old.end, gid, old.start));
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
                s.by_end.insert((end, gid, start));
                *list = kept;
            }
        }
        self.advance();
        Ok(())
    }

    fn event_time(&self, rec: &Record<'_>, fields: &Fields<'_>) -> Result<i64, Rejection> {
        let bad = |d: String| Rejection::new(RejectReason::InvalidEventTime, d);
        match self.plan.time {
            TimeSource::Kafka => match rec.timestamp {
                Some(ms) => time::check_range(ms).map_err(bad),
                None => Err(bad("the record has no Kafka timestamp".into())),
            },
            TimeSource::Field { slot, format } => match fields.values.get(slot) {
                Some(Some(v)) if *v != Scalar::Null => time::parse(v, format)
                    .map_err(|e| bad(format!("field {}: {e}", self.plan.slot_names[slot]))),
                _ => Err(Rejection::new(
                    RejectReason::MissingField,
                    format!("missing event time field {}", self.plan.slot_names[slot]),
                )),
            },
        }
    }

    /// Build the group key into `key_buf`.
    fn group_key(&mut self, rec: &Record<'_>, fields: &Fields<'_>) -> Result<(), Rejection> {
        self.key_buf.clear();
        for (i, (name, part)) in self.plan.group.iter().enumerate() {
            if i > 0 {
                self.key_buf.push(0);
            }
            match part {
                GroupPart::Key => {
                    let key = rec.key.ok_or_else(|| {
                        Rejection::new(RejectReason::MissingField, "the record has no message key")
                    })?;
                    let key = std::str::from_utf8(key).map_err(|_| {
                        Rejection::new(RejectReason::WrongType, "the message key is not UTF-8 text")
                    })?;
                    Scalar::Str(key.into()).write_json(&mut self.key_buf);
                }
                GroupPart::Field { slot } => match fields.values.get(*slot) {
                    Some(Some(Scalar::Null)) | Some(None) | None => {
                        return Err(Rejection::new(
                            RejectReason::MissingField,
                            format!("missing group field {name}"),
                        ))
                    }
                    Some(Some(v)) => {
                        if !v.write_json(&mut self.key_buf) {
                            return Err(Rejection::new(
                                RejectReason::WrongType,
                                format!(
                                    "group field {name} must be a string, number or boolean, found {}",
                                    v.type_name()
                                ),
                            ));
                        }
                    }
                },
            }
        }
        Ok(())
    }

    /// Read each aggregation's input into `contributions` (JSON texts into `json_buf`).
    fn contributions(&mut self, fields: &Fields<'_>) -> Result<(), Rejection> {
        self.contributions.clear();
        self.json_buf.clear();
        for agg in &self.plan.aggs {
            let Some(slot) = agg.slot else {
                self.contributions.push(Contribution::Unit);
                continue;
            };
            let name = &self.plan.slot_names[slot];
            let value = match fields.values.get(slot) {
                Some(Some(v)) if *v != Scalar::Null => v,
                _ => {
                    return Err(Rejection::new(
                        RejectReason::MissingField,
                        format!("missing field {name}"),
                    ))
                }
            };
            if agg.function.is_numeric() {
                let n = value.as_number().ok_or_else(|| {
                    let shown = match value {
                        Scalar::Str(s) => format!("the string {s:?}"),
                        other => other.type_name().to_string(),
                    };
                    Rejection::new(
                        RejectReason::WrongType,
                        format!("field {name} must be a number, found {shown}"),
                    )
                })?;
                self.contributions.push(Contribution::Number(n));
            } else {
                let a = self.json_buf.len();
                if !value.write_json(&mut self.json_buf) {
                    return Err(Rejection::new(
                        RejectReason::WrongType,
                        format!(
                            "field {name} must be a string, number or boolean, found {}",
                            value.type_name()
                        ),
                    ));
                }
                self.contributions
                    .push(Contribution::Json(a, self.json_buf.len()));
            }
        }
        Ok(())
    }

    /// Where a replay of `partition` must start to rebuild the open windows: the smallest offset
    /// of its records still held in open state, and the partition's largest event time before
    /// that record (`i64::MIN` if none). `None` when no open window holds a record of it: then
    /// replay starts at the next offset, with the partition's current largest event time.
    ///
    /// Together with the watermark at the time of the checkpoint this is a complete checkpoint:
    /// a new engine [`resume`](Engine::resume)d at this point and fed the partition's records
    /// from the offset on produces every result the first would have produced after the
    /// checkpoint; results ending at or before the checkpoint's watermark were emitted before,
    /// and the runtime drops them (the replay rebuilds only part of those windows).
    pub fn replay_point(&self, partition: i32) -> Option<(i64, i64)> {
        let lowest = |a: Option<Mark>, b: Option<Mark>| match (a, b) {
            (Some(x), Some(y)) => Some(if y.offset < x.offset { y } else { x }),
            (x, y) => x.or(y),
        };
        let mut best = None;
        match &self.state {
            State::Aligned(a) => {
                for pane in a.panes.values() {
                    best = lowest(best, pane.marks.get(partition));
                }
            }
            State::Sessions(s) => {
                for list in s.by_group.values() {
                    for session in list {
                        best = lowest(best, session.marks.get(partition));
                    }
                }
            }
        }
        best.map(|m| (m.offset, m.max_before))
    }

    /// Start `partition` from a checkpoint: its largest event time before the replay point
    /// (see [`replay_point`](Engine::replay_point)). Call before its first record; later
    /// records are judged late exactly as they were the first time.
    pub fn resume(&mut self, partition: i32, max_time_before: i64) {
        let lateness = self.plan.lateness;
        let part = self
            .partitions
            .entry(partition)
            .or_insert_with(PartitionState::new);
        part.max_time = part.max_time.max(max_time_before);
        part.watermark = part.watermark.max(part.max_time.saturating_sub(lateness));
        // Nothing is open yet, so moving the watermark emits nothing; it only restores the
        // lateness bar the original run had at this point.
        self.advance();
    }

    /// The runtime saw no record from `partition` for the idle timeout: stop waiting for it.
    /// Its next record makes it active again.
    pub fn set_idle(&mut self, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            if !p.idle {
                p.idle = true;
                self.advance();
            }
        }
    }

    /// Stop tracking a partition (it was assigned elsewhere); its watermark no longer counts.
    pub fn remove_partition(&mut self, partition: i32) {
        if self.partitions.remove(&partition).is_some() {
            self.advance();
        }
    }

    /// End of input: close every open window, in order.
    pub fn finish(&mut self) {
        self.close_until(END_OF_TIME);
    }

    fn advance(&mut self) {
        let active = self.partitions.values().filter(|p| !p.idle);
        let wm = match active.map(|p| p.watermark).min() {
            Some(m) => m,
            None => self
                .partitions
                .values()
                .map(|p| p.watermark)
                .max()
                .unwrap_or(i64::MIN),
        };
        if wm > self.watermark {
            self.close_until(wm);
        }
    }

    /// Move the engine watermark to `wm` and emit every window ending at or before it.
    fn close_until(&mut self, wm: i64) {
        let old = self.watermark;
        self.watermark = self.watermark.max(wm);
        let wm = self.watermark;
        let first = self.results.len();
        match &mut self.state {
            State::Aligned(_) if self.partial_mode => self.close_partials(wm),
            State::Aligned(a) => {
                a.close(old, wm, &mut self.groups, &mut self.results);
            }
            State::Sessions(s) => {
                while let Some(&(end, gid, start)) = s.by_end.first() {
                    if end > wm {
                        break;
                    }
                    s.by_end.pop_first();
                    let Some(list) = s.by_group.get_mut(&gid) else {
                        continue;
                    };
                    let Some(i) = list.iter().position(|x| x.start == start) else {
                        continue;
                    };
                    let session = list.remove(i);
                    if list.is_empty() {
                        s.by_group.remove(&gid);
                    }
                    self.results.push(WindowResult {
                        start: session.start,
                        end: session.end,
                        group: self.groups.key(gid).into(),
                        values: session.row.iter().map(Acc::result).collect(),
                    });
                    if !s.by_group.contains_key(&gid) {
                        self.groups.release(gid);
                    }
                }
            }
        }
        let emitted = &mut self.results[first..];
        emitted.sort_by(|x, y| (x.end, x.start, &x.group).cmp(&(y.end, y.start, &y.group)));
        self.stats.results += emitted.len() as u64;
    }
}

impl PartitionState {
    fn new() -> Self {
        PartitionState {
            max_time: i64::MIN,
            watermark: i64::MIN,
            idle: false,
        }
    }
}

impl Aligned {
    /// Start of the first window containing the pane starting at `p`.
    fn first_window(&self, p: i64) -> i64 {
        align_up(p + self.pane - self.size, self.slide)
    }

    /// Emit the windows with end in `(old, wm]` that hold data, and drop panes no open window
    /// needs.
    fn close(&mut self, old: i64, wm: i64, groups: &mut Groups, out: &mut Vec<WindowResult>) {
        let Some((&(first_pane, _), _)) = self.panes.first_key_value() else {
            return;
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
            self.emit_window(s, groups, out);
            s += self.slide;
            self.drop_panes_before(s, groups);
        }
        // Panes before the first window still open belong only to closed windows.
        let open_from = align_up(wm.saturating_sub(self.size) + 1, self.slide);
        self.drop_panes_before(open_from, groups);
    }

    fn emit_window(&mut self, s: i64, groups: &Groups, out: &mut Vec<WindowResult>) {
        let end = s + self.size;
        let first = out.len();
        let result = |gid: u32, cols: &[Column], row: usize| WindowResult {
            start: s,
            end,
            group: groups.key(gid).into(),
            values: cols.iter().map(|c| c.result(row)).collect(),
        };
        if self.pane == self.size {
            // Tumbling: the pane is the window, and every record in it counts.
            if let Some(p) = self.panes.get(&(s, s)) {
                for (row, gid) in p.gids.iter().enumerate() {
                    out.push(result(*gid, &p.cols, row));
                }
            }
        } else {
            // Hopping: merge the window's panes group by group, in pane order. Runs of untagged
            // panes that fill a block are merged once into the block, which later windows reuse:
            // every untagged pane of a window being emitted is final (its first window closed),
            // and so is every pane a window being emitted reads, which lets them be sorted.
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
            // Empty columns of the job's aggregations (every pane has them).
            let shape: Vec<Column> = panes
                .values()
                .next()
                .map(|p| p.cols.iter().map(Column::empty_like).collect())
                .unwrap_or_default();
            let untagged = |p: i64, first: i64| first == align_up(p + pane - size, slide);
            let (b0, b1) = if block_len > 0 {
                (align_up(s, block_len), align_down(end, block_len))
            } else {
                (0, 0)
            };
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
                    scratch.merge(&items, &shape, false, |c, merged, _, rows| {
                        if let (Some(dst), Merged::Rows(merged)) = (cols.get_mut(c), merged) {
                            (0..rows).for_each(|r| dst.push_row(merged, r));
                        }
                    });
                    slot.insert(block);
                }
                b += block_len;
            }
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
        // Each group has one result per window, so an unstable sort gives the same order.
        out[first..].sort_unstable_by(|x, y| x.group.cmp(&y.group));
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
