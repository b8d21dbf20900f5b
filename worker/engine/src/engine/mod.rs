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
//!   touched. (The one exception: the future-skew guard counts a partition's records in a row
//!   that were far ahead of it, see [`guard`].)

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::agg::Order;
use crate::decode::{Fields, Scalar};
use crate::plan::{JobPlan, WindowKind};
use crate::time;

mod aligned;
mod bounds;
mod closing;
mod extract;
mod groups;
mod guard;
mod marks;
mod merge;
mod pane;
mod record;
mod sessions;
mod stages;

use aligned::{align_down, align_up, Aligned};
use closing::Closings;
use extract::Contribution;
use groups::Groups;
use guard::WallClock;
pub use guard::AHEAD_IN_A_ROW;
use marks::Mark;
use pane::Pane;
pub use record::{
    PartitionState, Record, RejectReason, Rejection, ResultText, Stats, WindowResult,
    MAX_DETAIL_BYTES, MAX_KEPT_BYTES,
};
use sessions::Sessions;
pub use stages::{MergeOutcome, Partial, PartialAggregate};

/// A watermark larger than any event time plus any window, used to close everything at the end.
const END_OF_TIME: i64 = i64::MAX / 4;

/// The open windows, by kind.
enum State {
    Aligned(Aligned),
    Sessions(Sessions),
}

/// What identifies a partial within its pane row: (group id, source partition, segment).
type PartialId = (u32, i32, Option<i64>);

/// Results a partition takes and writes at a time ([`Engine::take_results_upto`]), and so the
/// most [`Engine::recycle_results`] keeps: few enough that a window of a million groups never
/// holds more than this many built results (docs/running.md, "Memory").
pub const RESULTS_CHUNK: usize = 1024;

/// The partials merged into one pane, by [`PartialId`]. Hashed with foldhash, as [`Groups`] is:
/// SipHash showed in a sparse merge stage's profile, and these ids are the engine's own numbers.
type MergedIds = std::collections::HashSet<PartialId, foldhash::fast::RandomState>;

/// The streaming engine for one job and a set of input partitions.
pub struct Engine {
    plan: JobPlan,
    partitions: BTreeMap<i32, PartitionState>,
    watermark: i64,
    groups: Groups,
    state: State,
    /// Results of the windows a [`Engine::close_until`] is closing (hopping, sessions), sorted
    /// there, then moved to `ready`.
    results: Vec<WindowResult>,
    /// Results built and not taken yet, in order.
    ready: VecDeque<WindowResult>,
    /// Closed tumbling windows whose results are built as they are taken.
    closing: Closings,
    /// Results emitted ever (built or not) and taken ever: see [`Engine::results_emitted`].
    results_emitted: u64,
    results_taken: u64,
    stats: Stats,
    // Buffers reused between records so the record path does not allocate.
    slot_buf: Vec<Option<Scalar<'static>>>,
    key_buf: Vec<u8>,
    json_buf: Vec<u8>,
    contributions: Vec<Contribution>,
    /// Stage 1 of a two-stage job: emit partials, not results (see [`stages`]).
    partial_mode: bool,
    partials: Vec<PartialAggregate>,
    /// The merge stage: per pane row (pane, first window) still open, the (group, source partition,
    /// segment) of each partial merged into it.
    merged: BTreeMap<(i64, i64), MergedIds>,
    /// The wall clock for the future-skew guard (see [`guard`]).
    wall_clock: WallClock,
    /// The most open rows (see [`Engine::open_rows`]) new records may fill (`None`: no bound;
    /// see [`bounds`]).
    row_limit: Option<usize>,
    /// An upper bound on [`Engine::open_rows`]: its value when last counted plus the records
    /// accepted since (each opens at most one row).
    rows_bound: usize,
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
            WindowKind::Aligned { size, slide, pane } => {
                State::Aligned(Aligned::new(size, slide, pane))
            }
            WindowKind::Session { gap } => State::Sessions(Sessions::new(gap)),
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
            ready: VecDeque::new(),
            closing: Closings::default(),
            results_emitted: 0,
            results_taken: 0,
            stats: Stats::default(),
            slot_buf: Vec::new(),
            key_buf: Vec::new(),
            json_buf: Vec::new(),
            contributions: Vec::new(),
            partial_mode: false,
            partials: Vec::new(),
            merged: BTreeMap::new(),
            wall_clock: WallClock::default(),
            row_limit: None,
            rows_bound: 0,
        }
    }

    /// The wall clock now, in ms since the Unix epoch: records further ahead of it than the
    /// plan's `max_ahead_of_clock` are refused as `future` (see [`guard`]). Kept until set
    /// again, or read again with the function [`Engine::read_wall_clock_with`] gave.
    pub fn set_wall_clock(&mut self, now_ms: i64) {
        self.wall_clock.last = Some(now_ms);
    }

    /// Read the wall clock (ms since the Unix epoch) with `read`: now, at every
    /// [`Engine::refresh_wall_clock`], and whenever a record would be refused as too far ahead
    /// of the last reading. A clock only moves forward, so a record within the bound of an
    /// earlier reading is within the bound of a reading now: the verdicts are those of reading
    /// the clock for every record, for one reading per refresh (a clock read costs 50–90 ns, a
    /// tenth of a dense job's record). The engine reads no clock but the one it is given.
    pub fn read_wall_clock_with(&mut self, read: fn() -> i64) {
        self.wall_clock.read = Some(read);
        self.refresh_wall_clock();
    }

    /// Read the wall clock again, if [`Engine::read_wall_clock_with`] gave the function to. A
    /// clock set back (by NTP, say) is then taken as it is.
    pub fn refresh_wall_clock(&mut self) {
        if let Some(read) = self.wall_clock.read {
            self.wall_clock.last = Some(read());
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
    /// Builds them all at once: [`Engine::take_results_upto`] builds a closed tumbling window's
    /// results a few at a time.
    pub fn take_results(&mut self) -> Vec<WindowResult> {
        let mut out = Vec::new();
        self.take_results_upto(self.results_emitted, usize::MAX, &mut out);
        out
    }

    /// How many results the engine has emitted since it started (taken or not): a later
    /// [`Engine::take_results_upto`] given this number takes the results emitted until now and
    /// none emitted after.
    pub fn results_emitted(&self) -> u64 {
        self.results_emitted
    }

    /// Results emitted and not taken yet.
    pub fn results_pending(&self) -> u64 {
        self.results_emitted - self.results_taken
    }

    /// Give back results taken and written out: the next ones taken are built in their
    /// buffers (at most [`RESULTS_CHUNK`] are kept). Leaves `used` empty.
    pub fn recycle_results(&mut self, used: &mut Vec<WindowResult>) {
        self.closing.recycle(used);
    }

    /// Append to `out` up to `max` of the results not taken yet, in the order of
    /// [`Engine::take_results`], stopping after the `through`-th result ever emitted (see
    /// [`Engine::results_emitted`]). Returns how many it appended; fewer than `max` when none
    /// are left up to `through`. A closed tumbling window's results are built here, so taking
    /// them in chunks bounds the memory they hold (docs/running.md, "Memory").
    pub fn take_results_upto(
        &mut self,
        through: u64,
        max: usize,
        out: &mut Vec<WindowResult>,
    ) -> usize {
        let mut n = 0;
        while n < max && self.results_taken < through {
            let room = (max - n).min(usize::try_from(through - self.results_taken).unwrap_or(max));
            // Built results come first: an engine of tumbling windows builds none, the others
            // build them all.
            let got = if self.ready.is_empty() {
                self.closing.take(room, &mut self.groups, out)
            } else {
                let k = room.min(self.ready.len());
                out.extend(self.ready.drain(..k));
                k
            };
            if got == 0 {
                break;
            }
            n += got;
            self.results_taken += got as u64;
        }
        n
    }

    /// Process one record: count it, or say why not. May close windows.
    pub fn process(&mut self, rec: &Record<'_>) -> Result<(), Rejection> {
        let mut fields = Fields {
            values: recycle(std::mem::take(&mut self.slot_buf)),
            duplicate: None,
            reread: false,
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

    /// Decodes, checks and counts one record; every check comes before any state changes.
    fn process_decoded<'de>(
        &mut self,
        rec: &Record<'de>,
        fields: &mut Fields<'de>,
    ) -> Result<(), Rejection> {
        self.plan
            .fields
            .decode(rec.value, fields)
            .map_err(|e| Rejection::new(RejectReason::InvalidJson, e.0))?;
        if let Some(key) = &fields.duplicate {
            return Err(Rejection::new(
                RejectReason::DuplicateField,
                format!(
                    "the key {key} appears more than once: which value counts is ambiguous, \
                     so the record is not counted"
                ),
            ));
        }
        let t = self.event_time(rec, fields)?;
        self.group_key(rec, fields)?;
        self.contributions(fields)?;
        self.guard_future(rec, t)?;
        self.check_kept_size()?;
        let (first, mark) = self.admit(rec, t)?;

        let order = Order {
            event_time: t,
            seq: ((rec.partition as u64) << 40) | (rec.offset as u64 & ((1 << 40) - 1)),
        };
        let gid = self.groups.intern(&self.key_buf);
        let json = &self.json_buf;
        let inputs = self.contributions.iter().map(|c| c.input(json));
        let aggs = &self.plan.aggs;
        let newly_held = match &mut self.state {
            State::Aligned(a) => {
                let key = (align_down(t, a.pane), first);
                a.add(aggs, key, gid, mark, inputs, order)
            }
            State::Sessions(s) => s.add(aggs, t, gid, mark, inputs, order),
        };
        if newly_held {
            self.groups.retain(gid);
        }
        self.rows_bound = self.rows_bound.saturating_add(1);
        self.advance();
        Ok(())
    }

    /// Judges a record at event time `t` late or not, by its own partition's watermark and the
    /// engine's (see the module documentation); if not, takes its event time into the
    /// partition's progress and returns the first aligned window it counts toward (0 for
    /// sessions) and its replay mark.
    #[inline]
    fn admit(&mut self, rec: &Record<'_>, t: i64) -> Result<(i64, Mark), Rejection> {
        let own = self.partitions.get(&rec.partition).map(|p| p.watermark);
        let bar = own.unwrap_or(i64::MIN).max(self.watermark);
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
        let max_before = match self.check_room(t, first) {
            Ok(()) => self.take_time(rec.partition, t),
            Err(full) => {
                // Refused for room, the record still moves its partition's time: otherwise a
                // full partition whose every later record opens a new row would never close a
                // window again. Windows it closes free rows, and it may fit then.
                let max_before = self.take_time(rec.partition, t);
                self.advance();
                if self.check_room(t, first).is_err() {
                    return Err(full);
                }
                max_before
            }
        };
        let mark = Mark {
            partition: rec.partition,
            offset: rec.offset,
            max_before,
        };
        Ok((first, mark))
    }

    /// Take event time `t` of a record of `partition` into its progress; returns the
    /// partition's largest event time before it.
    fn take_time(&mut self, partition: i32, t: i64) -> i64 {
        let part = self
            .partitions
            .entry(partition)
            .or_insert_with(PartitionState::new);
        let before = part.max_time;
        part.max_time = part.max_time.max(t);
        part.watermark = part
            .watermark
            .max(part.max_time.saturating_sub(self.plan.lateness));
        part.idle = false;
        before
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
                let queued = a.close(
                    old,
                    wm,
                    &mut self.groups,
                    &mut self.results,
                    &mut self.closing,
                );
                self.stats.results += queued as u64;
                self.results_emitted += queued as u64;
            }
            State::Sessions(s) => s.close(wm, &mut self.groups, &mut self.results),
        }
        let emitted = &mut self.results[first..];
        emitted.sort_by(|x, y| (x.end, x.start, &x.group).cmp(&(y.end, y.start, &y.group)));
        self.stats.results += emitted.len() as u64;
        self.results_emitted += emitted.len() as u64;
        self.ready.extend(self.results.drain(..));
    }
}
