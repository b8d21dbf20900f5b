//! The partition protocol: what one partition of either stage emits, suppresses, records and
//! when — a pure state machine around an [`Engine`], with no I/O and no clock (time is a
//! monotonic millisecond count the caller passes in). The worker's one I/O loop feeds it
//! records (the source stage) or messages of the repartition topic (the merge stage) and ticks,
//! and carries out the [`Action`]s it returns, in order.
//!
//! A partition's life: the worker takes its lease (fencing out older owners) and starts the
//! protocol from the checkpoint's [`Progress`] or, with none, from an offset it resolved
//! (`startFrom` for a source partition, the log start for a repartition partition); a source
//! partition records that offset at once ([`PartitionProtocol::first_checkpoint`]), so a crash
//! before the first checkpoint restarts from the same place, not from a newer "latest". Every
//! checkpoint interval the protocol asks for a checkpoint ([`Action::Checkpoint`]): the worker
//! flushes every producer, then writes it. The order matters: a checkpoint only ever claims
//! output the sink has acknowledged, so a crash at any moment loses nothing; what is replayed
//! after it is either suppressed (windows already emitted, records already dead-lettered) or
//! re-sent with the same key and value (DESIGN.md invariants 2, 3 and 6).
//!
//! Recovery: a checkpoint records the next offset (`nextOffset`, the replay's end: records
//! before it were seen), the earliest offset an open window still needs (`replayFrom`, where
//! reading resumes) with the largest event time before it (the watermark there), and how far
//! results were emitted (`emittedThrough`). During the replay a rejected record is not
//! dead-lettered again, a result or partial whose window ended at or before `emittedThrough` is
//! not sent again, and no watermark marker is sent (what the replay reaches was reported
//! before).
//!
//! Two-stage jobs (DESIGN.md invariant 5): a source partition sends partials, routed by group
//! to a repartition partition, and, every [`MARKER_EVERY_MS`] when it changed and right after a
//! record that closed panes (at most every [`MARKER_AFTER_CLOSE_GAP_MS`]), a watermark marker
//! to every repartition partition, after the partials it closed. A source partition with
//! no record for the idle timeout goes idle: the merge stage stops waiting for it, so it must
//! have the partition's records now, and the partition flushes its open pane rows as partials.
//! The flush is written ahead: the checkpoint that records its offset (`flushes`) comes before
//! the partials, so a replay flushes at the same offsets and sends the same partials again,
//! which the merge stage recognises. A repartition partition's checkpoint also records each
//! source partition's last marker (`sources`), restored on restart.
//!
//! Stopping: the final marker, then (when asked to stop, not when fenced) the final checkpoint.
//!
//! One engine per partition keeps every checkpoint self-contained, and lets a partition move
//! to another worker alone. Results are exact when a group's records share a partition (for
//! example, group by the message key); merging across partitions is the merge stage's job.

use weir_crds::checkpoint::{Progress, SourceProgress};

use crate::engine::{MergeOutcome, Partial, PartialAggregate};
use crate::{Engine, JobPlan, Record, RejectReason, Rejection, WindowResult};

/// How often a source partition of a two-stage job tells the merge stage its watermark, when
/// it moved.
pub const MARKER_EVERY_MS: i64 = 200;

/// A record that closes panes sends a marker right after their partials (the merge stage can
/// close those windows only once it has every source's marker past them), unless one went out
/// this recently: at most one such marker per 20 ms, however often panes close (a hopping
/// window with a short slide, a backlog read at full speed).
pub const MARKER_AFTER_CLOSE_GAP_MS: i64 = 20;

/// What a partition does with what it reads, and where its output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A source partition of a one-stage job: window results to the sink.
    Results,
    /// A source partition of a two-stage job: partials and watermark markers to the
    /// repartition topic, which has `partitions` partitions.
    Partials {
        /// The repartition topic's partition count.
        partitions: i32,
    },
    /// A partition of the repartition topic (the merge stage): merges the partials of
    /// `sources` source partitions, window results to the sink.
    Merge {
        /// The source topic's partition count.
        sources: i32,
    },
}

/// The protocol's clocks, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A checkpoint is due this long after the last one.
    pub checkpoint_interval_ms: i64,
    /// A source partition of a two-stage job with no record for this long goes idle.
    pub idle_timeout_ms: i64,
}

impl Timing {
    /// The job's timing: the idle timeout is the plan's (the one place it is computed).
    pub fn new(plan: &JobPlan, checkpoint_interval_ms: i64) -> Timing {
        Timing {
            checkpoint_interval_ms: checkpoint_interval_ms.max(1),
            idle_timeout_ms: plan.idle_timeout.max(1),
        }
    }
}

/// Where a partition starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPoint {
    /// From its last checkpoint.
    Checkpoint(Progress),
    /// Nothing recorded: read from `offset` (resolved by the caller from `startFrom`, or the
    /// repartition partition's first offset).
    Fresh {
        /// First offset to read.
        offset: i64,
    },
}

/// What the worker must do, in the order given. When a [`Action::Checkpoint`] is refused
/// because a newer owner holds the partition, the partition stops and the actions after it
/// are dropped.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send a window result to the sink.
    Result(WindowResult),
    /// Send the window results that are ready to the sink: take them with
    /// [`PartitionProtocol::next_results`] given `through`, until it gives none, before the
    /// actions after this one. (They are built as they are taken: a window of a million groups
    /// would otherwise hold a million results at once. [`PartitionProtocol::expand_results`]
    /// turns these into [`Action::Result`]s, for tests and tools.)
    Results {
        /// What to pass to [`PartitionProtocol::next_results`].
        through: u64,
    },
    /// Count the record just given to [`PartitionProtocol::record`] (the merge stage: the
    /// message just given to [`PartitionProtocol::partial`], a partial refused as `state_full`)
    /// as rejected and send it to the dead-letter topic (if any). Not asked for records seen
    /// before the restart.
    DeadLetter(Rejection),
    /// Send a partial to partition `to` of the repartition topic.
    Partial {
        /// Its repartition partition ([`route`]).
        to: i32,
        /// The partial.
        partial: PartialAggregate,
    },
    /// Send a watermark marker ([`Partial::Watermark`]) to every repartition partition.
    Marker(Partial),
    /// Flush every producer, then write this progress (fenced: stop the partition).
    Checkpoint(Progress),
    /// The partition has read everything it had seen before its restart (once).
    CaughtUp,
    /// The partition went idle at `offset` (its open windows' partials were sent, and the
    /// merge stage told not to wait for it).
    Idle {
        /// The partition's next offset.
        offset: i64,
    },
    /// A record arrived at `offset` after the partition had been idle.
    Active {
        /// The record's offset.
        offset: i64,
    },
    /// The merge stage dropped a partial read at `offset`: every window it counts toward had
    /// closed.
    LatePartial {
        /// Its offset in the repartition partition.
        offset: i64,
        /// Its source partition.
        source: i32,
        /// Start of the first window it counts toward, ms.
        window_start: i64,
        /// The merge stage's watermark, ms.
        watermark: i64,
        /// Partials dropped as late so far by this partition.
        late: u64,
    },
    /// The merge stage skipped a partial or marker of another run (another definition or reset,
    /// [`PartitionProtocol::set_run`]): written by a worker of the definition before an edit, or
    /// after one, while both run during a rolling update.
    OtherRun {
        /// Its offset.
        offset: i64,
        /// Its tag (`None`: written before tags, by an older version).
        tag: Option<String>,
        /// Messages of other runs skipped so far by this partition.
        skipped: u64,
    },
    /// A message of the repartition topic that is not a partial or marker (not written by
    /// weir) was skipped.
    Unreadable {
        /// Its offset.
        offset: i64,
        /// Why it could not be read.
        error: String,
    },
}

/// The repartition partition of a group: a stable hash (FNV-1a) of its bytes, so that every
/// source partition sends a group's partials to the same repartition partition.
pub fn route(group: &[u8], partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// One partition's protocol state: its engine, its position, and what it must not repeat.
pub struct PartitionProtocol {
    engine: Engine,
    role: Role,
    partition: i32,
    timing: Timing,
    /// First offset read after the start.
    start_offset: i64,
    /// Offsets before this were read before the restart (being replayed now).
    seen_through: i64,
    /// Results (and partials) whose window ended at or before this were sent before the restart.
    emitted_through: i64,
    /// Offsets at which the run before the restart flushed partials (a replay flushes again).
    replay_flushes: Vec<i64>,
    /// Offsets at which open pane rows were flushed (idle), since the replay point.
    flushed: Vec<i64>,
    /// Set when a fresh source partition must record its start before reading.
    first_checkpoint: Option<Progress>,
    /// Next offset to read.
    next: i64,
    caught_up: bool,
    /// Two-stage source partitions: idle (flushed, and told the merge stage).
    idle: bool,
    last_record_ms: i64,
    /// The last watermark marker sent: (watermark, idle).
    marker: Option<(i64, bool)>,
    marker_at_ms: i64,
    last_checkpoint_ms: i64,
    /// Merge stage: partials dropped as late so far.
    late: u64,
    /// The bound on open rows for records read for the first time (see
    /// [`PartitionProtocol::set_row_limit`]).
    row_limit: Option<usize>,
    /// The first window start this partition's run emits (`i64::MIN`: every window); see
    /// [`PartitionProtocol::set_run`].
    results_from: i64,
    /// The run tag its partials and markers carry (stage 1), or that it merges (merge stage).
    tag: Option<String>,
    /// Merge stage: whether messages without a tag are merged.
    accept_untagged: bool,
    /// Merge stage: messages of other runs skipped so far.
    other_runs: u64,
    /// Merge stage: each source partition's `resultsFrom`, from its last marker.
    source_results_from: std::collections::BTreeMap<i32, i64>,
}

fn known(t: i64) -> Option<i64> {
    (t != i64::MIN).then_some(t)
}

impl PartitionProtocol {
    /// A partition of `role` starting at `start`, at time `now_ms`.
    pub fn new(
        plan: JobPlan,
        role: Role,
        partition: i32,
        timing: Timing,
        start: StartPoint,
        now_ms: i64,
    ) -> PartitionProtocol {
        let mut engine = match role {
            Role::Merge { sources } => Engine::new(plan, 0..sources),
            Role::Results | Role::Partials { .. } => Engine::new(plan, [partition]),
        };
        if let Role::Partials { .. } = role {
            engine.emit_partials();
        }
        let mut first_checkpoint = None;
        let mut source_results_from = std::collections::BTreeMap::new();
        let (start_offset, seen_through, emitted_through, replay_flushes) = match start {
            StartPoint::Checkpoint(p) => {
                match role {
                    Role::Merge { .. } => {
                        // The sources' markers as last heard: the windows they had let close
                        // stay closed.
                        for (source, s) in &p.sources {
                            engine.source_watermark(*source, s.watermark, s.idle);
                            if let Some(from) = s.results_from {
                                source_results_from.insert(*source, from);
                            }
                        }
                    }
                    Role::Results | Role::Partials { .. } => {
                        if let Some(max) = p.replay_max_event_time {
                            engine.resume(partition, max);
                        }
                    }
                }
                let emitted = p.emitted_through.unwrap_or(i64::MIN);
                (p.replay_from, p.next_offset, emitted, p.flushes)
            }
            StartPoint::Fresh { offset } => {
                if !matches!(role, Role::Merge { .. }) {
                    first_checkpoint = Some(Progress {
                        next_offset: offset,
                        replay_from: offset,
                        ..Progress::default()
                    });
                }
                (offset, offset, i64::MIN, Vec::new())
            }
        };
        PartitionProtocol {
            engine,
            role,
            partition,
            timing,
            start_offset,
            seen_through,
            emitted_through,
            flushed: replay_flushes.clone(),
            replay_flushes,
            first_checkpoint,
            next: start_offset,
            caught_up: false,
            idle: false,
            last_record_ms: now_ms,
            marker: None,
            marker_at_ms: now_ms,
            last_checkpoint_ms: now_ms,
            late: 0,
            row_limit: None,
            results_from: i64::MIN,
            tag: None,
            accept_untagged: true,
            other_runs: 0,
            source_results_from,
        }
    }

    /// The run this partition computes (docs/semantics.md, "Edits, resets and start times";
    /// [`crate::start::decide`]): results (a source partition's, or stage-1 partials) of windows
    /// starting before `results_from` are not emitted; stage-1 partials and markers carry `tag`
    /// and each marker `results_from`; the merge stage merges only messages tagged `tag` (and
    /// untagged ones if `accept_untagged`), and emits a window only when it starts at or after
    /// every source partition's `results_from`.
    pub fn set_run(&mut self, results_from: Option<i64>, tag: String, accept_untagged: bool) {
        self.results_from = results_from.unwrap_or(i64::MIN);
        self.tag = Some(tag);
        self.accept_untagged = accept_untagged;
    }

    /// The first window start results are emitted for: a source partition's own `resultsFrom`;
    /// for the merge stage the largest of its sources'.
    pub fn results_from(&self) -> Option<i64> {
        let from = match self.role {
            Role::Merge { .. } => self
                .source_results_from
                .values()
                .copied()
                .max()
                .unwrap_or(i64::MIN),
            Role::Results | Role::Partials { .. } => self.results_from,
        };
        known(from)
    }

    /// Whether a message tagged `tag` belongs to this partition's run.
    fn same_run(&self, tag: Option<&str>) -> bool {
        match (tag, &self.tag) {
            (None, _) => self.accept_untagged,
            (Some(t), Some(mine)) => t == mine,
            // No run set (tests of the protocol alone): every message.
            (Some(_), None) => true,
        }
    }

    fn other_run(&mut self, offset: i64, tag: Option<String>, out: &mut Vec<Action>) {
        self.other_runs += 1;
        out.push(Action::OtherRun {
            offset,
            tag,
            skipped: self.other_runs,
        });
    }

    /// A fresh source partition's start, to record before reading anything (fenced: do not
    /// start). `None` for a resumed partition and for the merge stage (whose start, the log's
    /// beginning, does not move).
    pub fn first_checkpoint(&self) -> Option<&Progress> {
        self.first_checkpoint.as_ref()
    }

    /// Call once before reading: says [`Action::CaughtUp`] when there is nothing to replay.
    pub fn begin(&mut self, out: &mut Vec<Action>) {
        self.note_caught_up(out);
    }

    /// The first offset to read.
    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// Offsets before this are a replay of what was read before the restart.
    pub fn replay_until(&self) -> i64 {
        self.seen_through
    }

    /// The next offset to read.
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// The partition's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bound the open rows new records (the merge stage: new partials) may open: what the
    /// worker's bound leaves this partition (see `Engine::set_row_limit`); the worker sets it
    /// again as its partitions' rows change. Replayed records and partials are never refused by
    /// it.
    pub fn set_row_limit(&mut self, limit: Option<usize>) {
        self.row_limit = limit;
    }

    /// The engine (for gauges).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The watermark to show for this partition: a source partition's own, the merge stage's.
    pub fn watermark(&self) -> Option<i64> {
        match self.role {
            Role::Merge { .. } => Some(self.engine.watermark()),
            Role::Results | Role::Partials { .. } => self
                .engine
                .partitions()
                .get(&self.partition)
                .map(|p| p.watermark),
        }
    }

    /// The wall clock (ms since the Unix epoch) for the engine's future-skew guard
    /// ([`Engine::set_wall_clock`]); the protocol's own `now_ms` is monotonic and unrelated.
    pub fn set_wall_clock(&mut self, wall_ms: i64) {
        self.engine.set_wall_clock(wall_ms);
    }

    /// Read the wall clock for the future-skew guard with `read`, as
    /// [`Engine::read_wall_clock_with`] says; [`PartitionProtocol::tick`] reads it again.
    pub fn read_wall_clock_with(&mut self, read: fn() -> i64) {
        self.engine.read_wall_clock_with(read);
    }

    /// A source record at time `now_ms`: the engine's verdict (also for a replayed record,
    /// whose rejection is not dead-lettered again).
    pub fn record(
        &mut self,
        rec: &Record<'_>,
        now_ms: i64,
        out: &mut Vec<Action>,
    ) -> Result<(), RejectReason> {
        let replayed = rec.offset < self.seen_through;
        // A replayed record was admitted before the restart: the bound on open state must not
        // refuse it now (its first verdict stands, and it is not dead-lettered again).
        self.engine
            .set_row_limit(if replayed { None } else { self.row_limit });
        let verdict = match self.engine.process(rec) {
            Ok(()) => Ok(()),
            Err(rejection) => {
                let reason = rejection.reason;
                // A replayed record was counted and dead-lettered the first time.
                if !replayed {
                    out.push(Action::DeadLetter(rejection));
                }
                Err(reason)
            }
        };
        let closed = self.take_partials(out);
        self.take_results(out);
        self.next = rec.offset + 1;
        self.last_record_ms = now_ms;
        if replayed && self.replay_flushes.contains(&self.next) {
            // The run before the restart flushed here (idle): do it again, identically.
            self.flush_partials(self.next, out);
        }
        self.note_caught_up(out);
        if self.idle {
            self.idle = false;
            self.marker(now_ms, out);
            out.push(Action::Active { offset: rec.offset });
        } else if closed && now_ms - self.marker_at_ms >= MARKER_AFTER_CLOSE_GAP_MS {
            // Panes closed: tell the merge stage now rather than at the next periodic marker,
            // so the windows they close do not wait up to MARKER_EVERY_MS for it.
            self.marker(now_ms, out);
        }
        verdict
    }

    /// The merge stage: the message of the repartition partition at `offset`.
    pub fn partial(&mut self, offset: i64, payload: &[u8], out: &mut Vec<Action>) {
        match Partial::from_bytes(payload) {
            Ok(Partial::Aggregate(p)) if !self.same_run(p.tag.as_deref()) => {
                self.other_run(offset, p.tag, out)
            }
            Ok(Partial::Watermark { tag, .. }) if !self.same_run(tag.as_deref()) => {
                self.other_run(offset, tag, out)
            }
            Ok(Partial::Aggregate(p)) => {
                // As for a source record: a partial read before the restart was merged then (or
                // dead-lettered); the bound must not refuse it now.
                let replayed = offset < self.seen_through;
                self.engine
                    .set_row_limit(if replayed { None } else { self.row_limit });
                match self.engine.merge_partial(self.partition, offset, &p) {
                    Ok(MergeOutcome::Late) => {
                        self.late += 1;
                        out.push(Action::LatePartial {
                            offset,
                            source: p.source,
                            window_start: p.first,
                            watermark: self.engine.watermark(),
                            late: self.late,
                        });
                    }
                    Ok(MergeOutcome::Merged | MergeOutcome::Duplicate) => {}
                    Err(rejection) => {
                        if !replayed {
                            out.push(Action::DeadLetter(rejection));
                        }
                    }
                }
            }
            Ok(Partial::Watermark {
                source,
                watermark,
                idle,
                results_from,
                ..
            }) => {
                // Before the watermark moves, so that the windows it closes are judged by it.
                match results_from {
                    Some(from) => self.source_results_from.insert(source, from),
                    None => self.source_results_from.remove(&source),
                };
                self.engine.source_watermark(source, watermark, idle);
            }
            Err(e) => out.push(Action::Unreadable {
                offset,
                error: e.to_string(),
            }),
        }
        self.next = offset + 1;
        self.note_caught_up(out);
        self.take_results(out);
    }

    /// Time passed (`now_ms`): go idle, send a marker, checkpoint, when due.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Action>) {
        self.engine.refresh_wall_clock();
        if let Role::Partials { .. } = self.role {
            if !self.idle
                && self.caught_up
                && now_ms - self.last_record_ms >= self.timing.idle_timeout_ms
            {
                // Idle: the merge stage stops waiting for this partition, so it must have its
                // records now. Record the flush first (write-ahead), so a replay flushes at
                // the same offset and sends the same partials again.
                out.push(Action::Checkpoint(self.progress(Some(self.next))));
                self.last_checkpoint_ms = now_ms;
                self.flush_partials(self.next, out);
                self.idle = true;
                self.marker(now_ms, out);
                out.push(Action::Idle { offset: self.next });
            } else if now_ms - self.marker_at_ms >= MARKER_EVERY_MS {
                self.marker(now_ms, out);
            }
        }
        if now_ms - self.last_checkpoint_ms >= self.timing.checkpoint_interval_ms {
            self.last_checkpoint_ms = now_ms;
            out.push(Action::Checkpoint(self.progress(None)));
        }
    }

    /// The partition stops at `now_ms`: the last marker, then, when it was asked to stop
    /// (`stopped`; not when a newer owner fenced it out), the final checkpoint.
    pub fn finish(&mut self, stopped: bool, now_ms: i64, out: &mut Vec<Action>) {
        self.marker(now_ms, out);
        if stopped {
            self.last_checkpoint_ms = now_ms;
            out.push(Action::Checkpoint(self.progress(None)));
        }
    }

    /// The end of a bounded input (tests): close every window, with the same suppression.
    pub fn end_of_input(&mut self, out: &mut Vec<Action>) {
        self.engine.finish();
        self.take_partials(out);
        self.take_results(out);
    }

    fn note_caught_up(&mut self, out: &mut Vec<Action>) {
        if !self.caught_up && self.next >= self.seen_through {
            self.caught_up = true;
            out.push(Action::CaughtUp);
        }
    }

    fn take_results(&mut self, out: &mut Vec<Action>) {
        if self.engine.results_pending() > 0 {
            out.push(Action::Results {
                through: self.engine.results_emitted(),
            });
        }
    }

    /// For an [`Action::Results`] given `through`: append up to `max` of its results to `out`
    /// (built now); none when all were taken. Results emitted before the restart (the replay
    /// rebuilt only part of them), or before the first window this run can compute completely,
    /// are skipped.
    pub fn next_results(&mut self, through: u64, max: usize, out: &mut Vec<WindowResult>) {
        let results_from = self.results_from().unwrap_or(i64::MIN);
        let emitted_through = self.emitted_through;
        loop {
            let first = out.len();
            if self.engine.take_results_upto(through, max, out) == 0 {
                return;
            }
            let mut i = 0;
            out.retain(|r| {
                let keep = i < first || (r.end > emitted_through && r.start >= results_from);
                i += 1;
                keep
            });
            if out.len() > first {
                return;
            }
        }
    }

    /// Give back results taken with [`Self::next_results`] and written out
    /// ([`Engine::recycle_results`]). Leaves `used` empty.
    pub fn recycle_results(&mut self, used: &mut Vec<WindowResult>) {
        self.engine.recycle_results(used);
    }

    /// Replace every [`Action::Results`] in `out` with its results as [`Action::Result`]s, built
    /// all at once (tests and tools; a worker takes them with [`Self::next_results`]).
    pub fn expand_results(&mut self, out: &mut Vec<Action>) {
        if !out.iter().any(|a| matches!(a, Action::Results { .. })) {
            return;
        }
        let mut results = Vec::new();
        for a in std::mem::take(out) {
            match a {
                Action::Results { through } => {
                    self.next_results(through, usize::MAX, &mut results);
                    out.extend(results.drain(..).map(Action::Result));
                }
                other => out.push(other),
            }
        }
    }

    /// Two-stage source partitions: route the partials the engine emitted; whether there were
    /// any.
    fn take_partials(&mut self, out: &mut Vec<Action>) -> bool {
        let Role::Partials { partitions } = self.role else {
            return false;
        };
        let before = out.len();
        let size = self.engine.window_size();
        for mut p in self.engine.take_partials() {
            // Sent before the restart (its first window had closed by the checkpoint).
            if p.segment.is_none() && p.first_end(size) <= self.emitted_through {
                continue;
            }
            // Every window it counts toward starts before this run's first.
            if crate::start::last_window_containing(self.engine.plan(), p.pane) < self.results_from
            {
                continue;
            }
            p.tag.clone_from(&self.tag);
            let to = route(p.group.as_bytes(), partitions);
            out.push(Action::Partial { to, partial: p });
        }
        out.len() > before
    }

    /// Emit every open pane row now (the partition went idle), as segment `at`.
    fn flush_partials(&mut self, at: i64, out: &mut Vec<Action>) {
        self.engine.flush_partials(at);
        if !self.flushed.contains(&at) {
            self.flushed.push(at);
        }
        self.take_partials(out);
    }

    /// Two-stage source partitions: tell every repartition partition this partition's
    /// watermark (after the partials it closed, which come before it in `out`). Only when it
    /// changed, and not while replaying.
    fn marker(&mut self, now_ms: i64, out: &mut Vec<Action>) {
        if !matches!(self.role, Role::Partials { .. }) {
            return;
        }
        self.marker_at_ms = now_ms;
        let wm = self.engine.watermark();
        if self.marker == Some((wm, self.idle)) || self.next < self.seen_through {
            // Unchanged, or replaying (what the replay reaches was reported before).
            return;
        }
        out.push(Action::Marker(Partial::Watermark {
            source: self.partition,
            watermark: known(wm),
            idle: self.idle,
            tag: self.tag.clone(),
            results_from: known(self.results_from),
        }));
        self.marker = Some((wm, self.idle));
    }

    /// What a checkpoint taken now records (and `flush_at`, a flush about to happen).
    fn progress(&self, flush_at: Option<i64>) -> Progress {
        match self.role {
            Role::Merge { .. } => self.merge_progress(),
            Role::Results | Role::Partials { .. } => self.source_progress(flush_at),
        }
    }

    fn source_progress(&self, flush_at: Option<i64>) -> Progress {
        let state = self.engine.partitions().get(&self.partition);
        let max_time = state.map(|s| s.max_time).unwrap_or(i64::MIN);
        let (replay_from, replay_max) = self
            .engine
            .replay_point(self.partition)
            .unwrap_or((self.next, max_time));
        Progress {
            // During a replay the position is behind what was already seen.
            next_offset: self.next.max(self.seen_through),
            replay_from,
            replay_max_event_time: known(replay_max),
            watermark: state.and_then(|s| known(s.watermark)),
            emitted_through: known(self.engine.watermark().max(self.emitted_through)),
            flushes: self
                .flushed
                .iter()
                .copied()
                .chain(flush_at)
                .filter(|x| *x >= replay_from)
                .collect(),
            sources: Default::default(),
        }
    }

    fn merge_progress(&self) -> Progress {
        // During a replay the position is behind what was already seen.
        let next = self.next.max(self.seen_through);
        let engine = &self.engine;
        Progress {
            next_offset: next,
            replay_from: engine
                .replay_point(self.partition)
                .map(|(o, _)| o)
                .unwrap_or(next),
            watermark: known(engine.watermark()),
            emitted_through: known(engine.watermark().max(self.emitted_through)),
            sources: engine
                .partitions()
                .iter()
                .map(|(p, s)| {
                    (
                        *p,
                        SourceProgress {
                            watermark: known(s.watermark),
                            idle: s.idle,
                            results_from: self.source_results_from.get(p).copied(),
                        },
                    )
                })
                .collect(),
            ..Progress::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: i64 = 1_000;
    const IDLE: i64 = 5_000;

    /// Tumbling 10 s windows, no lateness, count per group `g`, idle after 5 s.
    fn plan() -> JobPlan {
        let yaml = r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: t}
spec:
  source:
    kafka: {bootstrapServers: "k:9092", topic: in}
    eventTime: {field: t, format: epochMillis}
  groupBy: [g]
  window: {type: tumbling, size: 10s, allowedLateness: 0s, idleTimeout: 5s}
  aggregations:
    - {name: n, fn: count}
  sink:
    kafka: {topic: out}
"#;
        let job = weir_crds::parse_stream_job(yaml).expect("yaml").job;
        JobPlan::new(&job.spec).expect("plan")
    }

    fn protocol(role: Role, start: StartPoint) -> PartitionProtocol {
        let plan = plan();
        let timing = Timing::new(&plan, INTERVAL);
        PartitionProtocol::new(plan, role, 0, timing, start, 0)
    }

    /// Record `offset` with event time `t` (ms) in group `g`; `None` for a record with no time.
    fn value(t: Option<i64>, g: &str) -> String {
        match t {
            Some(t) => format!(r#"{{"t":{t},"g":"{g}"}}"#),
            None => format!(r#"{{"g":"{g}"}}"#),
        }
    }

    fn feed(
        p: &mut PartitionProtocol,
        offset: i64,
        t: Option<i64>,
        now: i64,
    ) -> (Result<(), RejectReason>, Vec<Action>) {
        let v = value(t, "a");
        let rec = Record {
            partition: 0,
            offset,
            key: None,
            timestamp: None,
            value: v.as_bytes(),
        };
        let mut out = Vec::new();
        let verdict = p.record(&rec, now, &mut out);
        p.expand_results(&mut out);
        (verdict, out)
    }

    fn ticked(p: &mut PartitionProtocol, now: i64) -> Vec<Action> {
        let mut out = Vec::new();
        p.tick(now, &mut out);
        p.expand_results(&mut out);
        out
    }

    /// The kind of each action, in order.
    fn kinds(out: &[Action]) -> Vec<&'static str> {
        out.iter()
            .map(|a| match a {
                Action::Checkpoint(_) => "checkpoint",
                Action::Partial { .. } => "partial",
                Action::Marker(_) => "marker",
                Action::Idle { .. } => "idle",
                _ => "other",
            })
            .collect()
    }

    fn checkpoints(out: &[Action]) -> Vec<Progress> {
        out.iter()
            .filter_map(|a| match a {
                Action::Checkpoint(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn results(out: &[Action]) -> Vec<(i64, i64)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Result(r) => Some((r.start, r.end)),
                _ => None,
            })
            .collect()
    }

    fn markers(out: &[Action]) -> Vec<(Option<i64>, bool)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Marker(Partial::Watermark {
                    watermark, idle, ..
                }) => Some((*watermark, *idle)),
                _ => None,
            })
            .collect()
    }

    fn partials(out: &[Action]) -> Vec<PartialAggregate> {
        out.iter()
            .filter_map(|a| match a {
                Action::Partial { partial, .. } => Some(partial.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_fresh_source_partition_records_its_start_first_and_is_caught_up() {
        let mut p = protocol(Role::Results, StartPoint::Fresh { offset: 7 });
        let first = p.first_checkpoint().cloned().expect("a first checkpoint");
        assert_eq!((first.next_offset, first.replay_from), (7, 7));
        assert_eq!(first.emitted_through, None);
        assert_eq!(
            (p.start_offset(), p.next_offset(), p.replay_until()),
            (7, 7, 7)
        );
        let mut out = Vec::new();
        p.begin(&mut out);
        assert!(matches!(out[..], [Action::CaughtUp]));
    }

    #[test]
    fn a_fresh_merge_partition_records_nothing_before_reading() {
        let p = protocol(Role::Merge { sources: 2 }, StartPoint::Fresh { offset: 3 });
        assert!(p.first_checkpoint().is_none());
        assert_eq!(p.start_offset(), 3);
    }

    #[test]
    fn a_resumed_partition_reads_from_the_replay_point_and_catches_up_at_the_next_offset() {
        let progress = Progress {
            next_offset: 5,
            replay_from: 2,
            replay_max_event_time: Some(1_000),
            ..Progress::default()
        };
        let mut p = protocol(Role::Results, StartPoint::Checkpoint(progress));
        assert!(p.first_checkpoint().is_none());
        assert_eq!((p.start_offset(), p.replay_until()), (2, 5));
        let mut out = Vec::new();
        p.begin(&mut out);
        assert!(out.is_empty(), "replaying: not caught up yet");
        // The watermark at the replay point is restored from the checkpoint.
        assert_eq!(p.watermark(), Some(1_000));
        for offset in 2..4 {
            let (_, out) = feed(&mut p, offset, Some(2_000), 10);
            assert!(!out.iter().any(|a| matches!(a, Action::CaughtUp)));
        }
        let (_, out) = feed(&mut p, 4, Some(2_000), 10);
        assert!(out.iter().any(|a| matches!(a, Action::CaughtUp)));
    }

    #[test]
    fn a_replayed_rejection_is_reported_but_not_dead_lettered_again() {
        let progress = Progress {
            next_offset: 2,
            replay_from: 0,
            ..Progress::default()
        };
        let mut p = protocol(Role::Results, StartPoint::Checkpoint(progress));
        let (verdict, out) = feed(&mut p, 0, None, 0);
        assert_eq!(verdict, Err(RejectReason::MissingField));
        assert!(!out.iter().any(|a| matches!(a, Action::DeadLetter(_))));
        let _ = feed(&mut p, 1, Some(1), 0);
        let (verdict, out) = feed(&mut p, 2, None, 0);
        assert_eq!(verdict, Err(RejectReason::MissingField));
        assert!(
            matches!(&out[..], [Action::DeadLetter(r)] if r.reason == RejectReason::MissingField)
        );
    }

    #[test]
    fn the_wall_clock_given_refuses_a_far_future_record_without_moving_the_watermark() {
        let mut p = protocol(Role::Results, StartPoint::Fresh { offset: 0 });
        let day = 86_400_000;
        p.set_wall_clock(1_000);
        let _ = feed(&mut p, 0, Some(500), 0);
        let before = p.watermark();
        let (verdict, out) = feed(&mut p, 1, Some(1_000 + day + 1), 0);
        assert_eq!(verdict, Err(RejectReason::Future));
        assert!(matches!(&out[..], [Action::DeadLetter(r)] if r.reason == RejectReason::Future));
        assert_eq!(p.watermark(), before);
        // A day later by the clock, the same time is within the bound.
        p.set_wall_clock(1_001 + day);
        let (verdict, _) = feed(&mut p, 2, Some(1_000 + day + 1), 0);
        assert_eq!(verdict, Ok(()));
    }

    /// The wall clock of `the_wall_clock_read_*`, moved by the test.
    static WALL: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

    fn wall() -> i64 {
        WALL.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn the_wall_clock_read_is_read_again_for_a_record_ahead_of_it_and_at_ticks() {
        use std::sync::atomic::Ordering::SeqCst;
        let day = 86_400_000;
        WALL.store(1_000, SeqCst);
        let mut p = protocol(Role::Results, StartPoint::Fresh { offset: 0 });
        p.read_wall_clock_with(wall);
        let (verdict, _) = feed(&mut p, 0, Some(1_000 + day), 0);
        assert_eq!(verdict, Ok(()));
        // Beyond the first reading's bound, within the clock's now: read again, and counted.
        WALL.store(2_000, SeqCst);
        let (verdict, _) = feed(&mut p, 1, Some(2_000 + day), 0);
        assert_eq!(verdict, Ok(()));
        // Beyond the clock's now too: refused, naming the clock as read now.
        WALL.store(2_500, SeqCst);
        let (verdict, out) = feed(&mut p, 2, Some(2_501 + day), 0);
        assert_eq!(verdict, Err(RejectReason::Future));
        assert!(matches!(&out[..], [Action::DeadLetter(r)]
            if r.detail.ends_with(&format!("({})", crate::time::format(2_500)))));
        // A clock set back is taken at the next tick: a record within the bound of the last
        // reading but not of the clock now is refused after it.
        WALL.store(1_500, SeqCst);
        let mut out = Vec::new();
        p.tick(0, &mut out);
        let (verdict, _) = feed(&mut p, 3, Some(2_000 + day), 0);
        assert_eq!(verdict, Err(RejectReason::Future));
    }

    #[test]
    fn results_emitted_before_the_restart_are_not_sent_again() {
        let progress = Progress {
            next_offset: 3,
            replay_from: 0,
            emitted_through: Some(10_000),
            ..Progress::default()
        };
        let mut p = protocol(Role::Results, StartPoint::Checkpoint(progress));
        let mut sent = Vec::new();
        // Closes [0, 10 s) (emitted before), then [10 s, 20 s) (not).
        for (offset, t) in [(0, 1_000), (1, 11_000), (2, 25_000)] {
            let (_, out) = feed(&mut p, offset, Some(t), 0);
            sent.extend(results(&out));
        }
        assert_eq!(sent, vec![(10_000, 20_000)]);
    }

    #[test]
    fn a_checkpoint_is_due_every_interval_and_records_the_position() {
        let mut p = protocol(Role::Results, StartPoint::Fresh { offset: 0 });
        let _ = feed(&mut p, 0, Some(1_000), 0);
        let _ = feed(&mut p, 1, Some(12_000), 0);
        assert!(checkpoints(&ticked(&mut p, INTERVAL - 1)).is_empty());
        let due = checkpoints(&ticked(&mut p, INTERVAL));
        assert_eq!(due.len(), 1);
        let c = &due[0];
        assert_eq!(c.next_offset, 2);
        // [10 s, 20 s) is open: its first record is where a replay starts.
        assert_eq!(c.replay_from, 1);
        assert_eq!(c.replay_max_event_time, Some(1_000));
        assert_eq!(c.watermark, Some(12_000));
        assert_eq!(c.emitted_through, Some(12_000));
        // Not again until another interval has passed.
        assert!(checkpoints(&ticked(&mut p, INTERVAL + 1)).is_empty());
        assert_eq!(checkpoints(&ticked(&mut p, 2 * INTERVAL)).len(), 1);
    }

    #[test]
    fn a_checkpoint_during_a_replay_keeps_the_position_already_seen() {
        let progress = Progress {
            next_offset: 10,
            replay_from: 0,
            emitted_through: Some(10_000),
            ..Progress::default()
        };
        let mut p = protocol(Role::Results, StartPoint::Checkpoint(progress));
        let _ = feed(&mut p, 0, Some(1_000), 0);
        let c = checkpoints(&ticked(&mut p, INTERVAL));
        assert_eq!(c[0].next_offset, 10);
        assert_eq!(c[0].emitted_through, Some(10_000));
    }

    #[test]
    fn the_final_checkpoint_comes_only_when_stopped_not_when_fenced() {
        let mut p = protocol(Role::Results, StartPoint::Fresh { offset: 0 });
        let _ = feed(&mut p, 0, Some(1_000), 0);
        let mut out = Vec::new();
        p.finish(false, 10, &mut out);
        assert!(out.is_empty());
        p.finish(true, 10, &mut out);
        let c = checkpoints(&out);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].next_offset, 1);
    }

    #[test]
    fn partials_go_to_their_groups_repartition_partition_and_results_are_not_emitted() {
        let mut p = protocol(
            Role::Partials { partitions: 3 },
            StartPoint::Fresh { offset: 0 },
        );
        let _ = feed(&mut p, 0, Some(1_000), 0);
        let (_, out) = feed(&mut p, 1, Some(11_000), 0);
        assert!(results(&out).is_empty());
        let sent: Vec<(i32, String)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Partial { to, partial } => Some((*to, partial.group.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, route(sent[0].1.as_bytes(), 3));
    }

    #[test]
    fn markers_go_out_every_200_ms_when_the_watermark_moved() {
        let mut p = protocol(
            Role::Partials { partitions: 2 },
            StartPoint::Fresh { offset: 0 },
        );
        let _ = feed(&mut p, 0, Some(1_000), 0);
        assert!(markers(&ticked(&mut p, MARKER_EVERY_MS - 1)).is_empty());
        assert_eq!(
            markers(&ticked(&mut p, MARKER_EVERY_MS)),
            vec![(Some(1_000), false)]
        );
        // Unchanged: nothing.
        assert!(markers(&ticked(&mut p, 2 * MARKER_EVERY_MS)).is_empty());
        let _ = feed(&mut p, 1, Some(2_000), 2 * MARKER_EVERY_MS);
        // Not before 200 ms after the last look.
        assert!(markers(&ticked(&mut p, 3 * MARKER_EVERY_MS - 1)).is_empty());
        assert_eq!(
            markers(&ticked(&mut p, 3 * MARKER_EVERY_MS)),
            vec![(Some(2_000), false)]
        );
    }

    /// A record that closes a pane is followed by a marker right after its partials (the
    /// merge stage needs it to close the window), unless one went out less than
    /// MARKER_AFTER_CLOSE_GAP_MS before.
    #[test]
    fn a_record_that_closes_panes_sends_a_marker_after_their_partials() {
        let mut p = protocol(
            Role::Partials { partitions: 2 },
            StartPoint::Fresh { offset: 0 },
        );
        let _ = feed(&mut p, 0, Some(1_000), 0);
        // A record that closes nothing: no marker before MARKER_EVERY_MS.
        let (_, out) = feed(&mut p, 1, Some(5_000), 100);
        assert!(kinds(&out).is_empty());
        // The next window's record closes [0, 10 s): its partial, then at once the marker.
        let (_, out) = feed(&mut p, 2, Some(10_000), 120);
        assert_eq!(kinds(&out), vec!["partial", "marker"]);
        assert_eq!(markers(&out), vec![(Some(10_000), false)]);
        // Another close less than the gap later: its partial now, its marker with the next tick.
        let (_, out) = feed(&mut p, 3, Some(20_000), 120 + MARKER_AFTER_CLOSE_GAP_MS - 1);
        assert_eq!(kinds(&out), vec!["partial"]);
        assert!(markers(&ticked(&mut p, 120 + MARKER_EVERY_MS - 1)).is_empty());
        assert_eq!(
            markers(&ticked(&mut p, 120 + MARKER_EVERY_MS)),
            vec![(Some(20_000), false)]
        );
        // A close after the gap: at once again.
        let (_, out) = feed(
            &mut p,
            4,
            Some(30_000),
            120 + MARKER_EVERY_MS + MARKER_AFTER_CLOSE_GAP_MS,
        );
        assert_eq!(kinds(&out), vec!["partial", "marker"]);
    }

    #[test]
    fn no_marker_is_sent_while_replaying() {
        let progress = Progress {
            next_offset: 2,
            replay_from: 0,
            ..Progress::default()
        };
        let mut p = protocol(
            Role::Partials { partitions: 2 },
            StartPoint::Checkpoint(progress),
        );
        let _ = feed(&mut p, 0, Some(1_000), 0);
        assert!(markers(&ticked(&mut p, MARKER_EVERY_MS)).is_empty());
        let _ = feed(&mut p, 1, Some(2_000), 0);
        assert_eq!(
            markers(&ticked(&mut p, 2 * MARKER_EVERY_MS)),
            vec![(Some(2_000), false)]
        );
    }

    #[test]
    fn an_idle_partition_checkpoints_its_flush_before_sending_the_partials() {
        let mut p = protocol(
            Role::Partials { partitions: 1 },
            StartPoint::Fresh { offset: 0 },
        );
        let _ = feed(&mut p, 0, Some(1_000), 0);
        let _ = feed(&mut p, 1, Some(2_000), 100);
        assert!(!ticked(&mut p, 100 + IDLE - 1)
            .iter()
            .any(|a| matches!(a, Action::Idle { .. })));
        let out = ticked(&mut p, 100 + IDLE);
        // Write-ahead: the checkpoint naming the flush, then the partials, then the marker.
        assert_eq!(kinds(&out), vec!["checkpoint", "partial", "marker", "idle"]);
        let c = checkpoints(&out);
        assert_eq!(c[0].flushes, vec![2]);
        assert_eq!(partials(&out)[0].segment, Some(2));
        assert_eq!(markers(&out), vec![(Some(2_000), true)]);
        // Idle once; a record makes it active again, with a marker saying so.
        assert!(ticked(&mut p, 100 + 2 * IDLE)
            .iter()
            .all(|a| !matches!(a, Action::Idle { .. })));
        let (_, out) = feed(&mut p, 2, Some(3_000), 100 + 2 * IDLE);
        assert_eq!(markers(&out), vec![(Some(3_000), false)]);
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Active { offset: 2 })));
    }

    #[test]
    fn a_replay_flushes_again_where_the_run_before_flushed() {
        let progress = Progress {
            next_offset: 3,
            replay_from: 0,
            flushes: vec![2],
            ..Progress::default()
        };
        let mut p = protocol(
            Role::Partials { partitions: 1 },
            StartPoint::Checkpoint(progress),
        );
        let _ = feed(&mut p, 0, Some(1_000), 0);
        let (_, out) = feed(&mut p, 1, Some(2_000), 0);
        let flushed = partials(&out);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].segment, Some(2));
        // Still recorded by the next checkpoint (it is after the replay point).
        let _ = feed(&mut p, 2, Some(3_000), 0);
        let c = checkpoints(&ticked(&mut p, INTERVAL));
        assert_eq!(c[0].flushes, vec![2]);
    }

    #[test]
    fn the_merge_stage_restores_its_sources_watermarks() {
        // Source 0 at 20 s; source 1 idle at 5 s, so it does not hold the merge stage back.
        let mut sources = std::collections::BTreeMap::new();
        let busy = SourceProgress {
            watermark: Some(20_000),
            idle: false,
            results_from: None,
        };
        let idle = SourceProgress {
            watermark: Some(5_000),
            idle: true,
            results_from: None,
        };
        sources.insert(0, busy);
        sources.insert(1, idle.clone());
        let progress = Progress {
            next_offset: 4,
            replay_from: 4,
            emitted_through: Some(20_000),
            sources,
            ..Progress::default()
        };
        let mut p = protocol(Role::Merge { sources: 2 }, StartPoint::Checkpoint(progress));
        assert_eq!(p.watermark(), Some(20_000));
        let partial = |source| {
            Partial::Aggregate(PartialAggregate {
                source,
                pane: 0,
                first: 0,
                group: "\"a\"".into(),
                accs: Vec::new(),
                segment: None,
                tag: None,
            })
            .to_bytes()
        };
        let mut out = Vec::new();
        p.begin(&mut out);
        assert!(matches!(out[..], [Action::CaughtUp]));
        out.clear();
        // Source 0 had passed [0, 10 s) when the window closed: a re-send, dropped quietly.
        p.partial(4, &partial(0), &mut out);
        assert!(out.is_empty());
        // Source 1 had not: its partial came too late for the window, and is said to be.
        p.partial(5, &partial(1), &mut out);
        assert!(matches!(
            out[..],
            [Action::LatePartial {
                offset: 5,
                source: 1,
                window_start: 0,
                watermark: 20_000,
                late: 1
            }]
        ));
        let c = checkpoints(&ticked(&mut p, INTERVAL));
        assert_eq!(c[0].next_offset, 6);
        assert_eq!(c[0].sources.len(), 2);
        assert_eq!(c[0].sources[&1], idle);
    }

    /// A partial of `group` from `source` into pane row (0, 0) of the 10 s windows.
    fn partial_of(source: i32, group: &str) -> Vec<u8> {
        Partial::Aggregate(PartialAggregate {
            source,
            pane: 0,
            first: 0,
            group: format!("\"{group}\""),
            accs: Vec::new(),
            segment: None,
            tag: None,
        })
        .to_bytes()
    }

    fn refused(out: &[Action]) -> Vec<RejectReason> {
        out.iter()
            .filter_map(|a| match a {
                Action::DeadLetter(r) => Some(r.reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_merge_stage_dead_letters_partials_that_would_open_a_row() {
        let mut p = protocol(Role::Merge { sources: 2 }, StartPoint::Fresh { offset: 0 });
        p.set_row_limit(Some(2));
        let mut out = Vec::new();
        p.begin(&mut out);
        out.clear();
        for (offset, (source, group)) in [(0, "a"), (0, "b"), (0, "c")].into_iter().enumerate() {
            p.partial(offset as i64, &partial_of(source, group), &mut out);
        }
        assert_eq!(refused(&out), [RejectReason::StateFull]);
        let Some(Action::DeadLetter(r)) = out.last() else {
            panic!("{out:?}")
        };
        assert!(r.detail.contains("source partition 0"), "{}", r.detail);
        out.clear();
        // Into a row already open (another source's partial of group a): merged. The refused
        // partial was not remembered as merged: sent again, it is judged again (refused).
        p.partial(3, &partial_of(1, "a"), &mut out);
        p.partial(4, &partial_of(0, "c"), &mut out);
        assert_eq!(refused(&out), [RejectReason::StateFull]);
        assert_eq!(p.engine().open_rows(), 2);
        // Without the bound, it opens its row.
        out.clear();
        p.set_row_limit(None);
        p.partial(5, &partial_of(0, "c"), &mut out);
        assert!(refused(&out).is_empty(), "{out:?}");
        assert_eq!(p.engine().open_rows(), 3);
    }

    #[test]
    fn a_merge_stage_replay_is_never_refused_by_the_bound() {
        // Read up to offset 3 before the restart; the replay starts at 0.
        let progress = Progress {
            next_offset: 3,
            replay_from: 0,
            ..Progress::default()
        };
        let mut p = protocol(Role::Merge { sources: 1 }, StartPoint::Checkpoint(progress));
        p.set_row_limit(Some(1));
        let mut out = Vec::new();
        p.begin(&mut out);
        for (offset, group) in ["a", "b", "c", "d"].into_iter().enumerate() {
            p.partial(offset as i64, &partial_of(0, group), &mut out);
        }
        // a, b, c replayed (over the bound, all kept); d read for the first time: refused.
        assert_eq!(refused(&out), [RejectReason::StateFull]);
        assert_eq!(p.engine().open_rows(), 3);
    }

    #[test]
    fn the_merge_stage_skips_what_is_not_a_partial_and_merges_markers() {
        let mut p = protocol(Role::Merge { sources: 1 }, StartPoint::Fresh { offset: 0 });
        let mut out = Vec::new();
        p.begin(&mut out);
        out.clear();
        p.partial(0, b"not json", &mut out);
        assert!(matches!(out[..], [Action::Unreadable { offset: 0, .. }]));
        out.clear();
        let marker = Partial::Watermark {
            source: 0,
            watermark: Some(5_000),
            idle: false,
            tag: None,
            results_from: None,
        };
        p.partial(1, &marker.to_bytes(), &mut out);
        assert_eq!(p.watermark(), Some(5_000));
        assert_eq!(p.next_offset(), 2);
        // The merge stage sends no markers of its own.
        let mut out = Vec::new();
        p.finish(true, 10, &mut out);
        assert!(markers(&out).is_empty());
        assert_eq!(checkpoints(&out)[0].watermark, Some(5_000));
    }

    #[test]
    fn windows_starting_before_results_from_are_not_emitted_and_the_rest_are() {
        let mut p = protocol(Role::Results, StartPoint::Fresh { offset: 0 });
        p.set_run(Some(20_000), "run".into(), true);
        assert_eq!(p.results_from(), Some(20_000));
        let mut emitted = Vec::new();
        for (offset, t) in [1_000, 12_000, 25_000, 35_000, 41_000]
            .into_iter()
            .enumerate()
        {
            let (_, out) = feed(&mut p, offset as i64, Some(t), 0);
            emitted.extend(results(&out));
        }
        assert_eq!(emitted, vec![(20_000, 30_000), (30_000, 40_000)]);
    }

    /// Stage 1 of partition `source` with `results_from`, fed `times`, ticked once: its
    /// repartition messages in order.
    fn stage1(source: i32, results_from: Option<i64>, tag: &str, times: &[i64]) -> Vec<Vec<u8>> {
        let plan = plan();
        let timing = Timing::new(&plan, INTERVAL);
        let mut p = PartitionProtocol::new(
            plan,
            Role::Partials { partitions: 1 },
            source,
            timing,
            StartPoint::Fresh { offset: 0 },
            0,
        );
        p.set_run(results_from, tag.into(), false);
        let mut out = Vec::new();
        for (offset, t) in times.iter().enumerate() {
            let v = value(Some(*t), "a");
            let rec = Record {
                partition: source,
                offset: offset as i64,
                key: None,
                timestamp: None,
                value: v.as_bytes(),
            };
            let _ = p.record(&rec, 0, &mut out);
        }
        p.tick(MARKER_EVERY_MS, &mut out);
        out.iter()
            .filter_map(|a| match a {
                Action::Partial { partial, .. } => {
                    Some(Partial::Aggregate(partial.clone()).to_bytes())
                }
                Action::Marker(m) => Some(m.to_bytes()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stage_one_tags_its_output_and_drops_partials_of_windows_before_results_from() {
        let msgs = stage1(1, Some(20_000), "new", &[1_000, 11_000, 21_000, 31_000]);
        let mut panes = Vec::new();
        for m in &msgs {
            match Partial::from_bytes(m).expect("readable") {
                Partial::Aggregate(a) => {
                    assert_eq!(a.tag.as_deref(), Some("new"));
                    panes.push(a.pane);
                }
                Partial::Watermark {
                    tag, results_from, ..
                } => {
                    assert_eq!(tag.as_deref(), Some("new"));
                    assert_eq!(results_from, Some(20_000));
                }
            }
        }
        assert_eq!(panes, vec![20_000]);
    }

    #[test]
    fn the_merge_stage_emits_from_the_largest_results_from_and_skips_other_runs() {
        let mut m = protocol(Role::Merge { sources: 2 }, StartPoint::Fresh { offset: 0 });
        m.set_run(None, "new".into(), false);
        let times = [1_000, 11_000, 21_000, 31_000];
        let mut log = stage1(0, Some(10_000), "new", &times);
        log.extend(stage1(1, Some(20_000), "new", &times));
        // Another run's partials and markers (the old definition, or a version before tags).
        let old = stage1(0, None, "old", &times);
        let untagged: Vec<Vec<u8>> = old
            .iter()
            .map(|b| match Partial::from_bytes(b).expect("readable") {
                Partial::Aggregate(mut a) => {
                    a.tag = None;
                    Partial::Aggregate(a).to_bytes()
                }
                Partial::Watermark {
                    source,
                    watermark,
                    idle,
                    ..
                } => Partial::Watermark {
                    source,
                    watermark: watermark.map(|w| w + 100_000),
                    idle,
                    tag: None,
                    results_from: None,
                }
                .to_bytes(),
            })
            .collect();
        let foreign = old.len() + untagged.len();
        let mut out = Vec::new();
        for (offset, msg) in old.iter().chain(&untagged).chain(&log).enumerate() {
            m.partial(offset as i64, msg, &mut out);
            m.expand_results(&mut out);
        }
        let skipped = out
            .iter()
            .filter(|a| matches!(a, Action::OtherRun { .. }))
            .count();
        assert_eq!(skipped, foreign);
        assert_eq!(m.results_from(), Some(20_000));
        let got: Vec<(i64, i64, serde_json::Value)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Result(r) => Some((r.start, r.end, r.values[0].to_value())),
                _ => None,
            })
            .collect();
        // [0, 10 s) and [10 s, 20 s) closed too, but source 1's run starts at 20 s.
        assert_eq!(got, vec![(20_000, 30_000, serde_json::json!(2))]);
        let c = checkpoints(&ticked(&mut m, INTERVAL));
        assert_eq!(c[0].sources[&0].results_from, Some(10_000));
        assert_eq!(c[0].sources[&1].results_from, Some(20_000));
    }

    #[test]
    fn a_restarted_merge_stage_keeps_its_sources_results_from() {
        let mut sources = std::collections::BTreeMap::new();
        for (source, from) in [(0, 10_000), (1, 30_000)] {
            sources.insert(
                source,
                SourceProgress {
                    watermark: Some(5_000),
                    idle: false,
                    results_from: Some(from),
                },
            );
        }
        let progress = Progress {
            next_offset: 4,
            replay_from: 4,
            sources,
            ..Progress::default()
        };
        let m = protocol(Role::Merge { sources: 2 }, StartPoint::Checkpoint(progress));
        assert_eq!(m.results_from(), Some(30_000));
    }

    #[test]
    fn routing_is_stable_and_in_range() {
        assert_eq!(route(b"abc", 7), route(b"abc", 7));
        assert!((0..7).contains(&route(b"xyz", 7)));
        assert_eq!(route(b"abc", 0), 0);
    }
}
