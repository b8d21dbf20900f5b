//! The two stages of a job whose groups span source partitions (DESIGN.md invariant 5).
//!
//! **Stage 1** runs one engine per source partition, in *partial* mode
//! ([`Engine::emit_partials`]): instead of window results it emits, per group, the accumulators
//! of each pane (a slice of `gcd(size, slide)` of event time) as soon as its partition's
//! watermark shows that no record can reach that pane row any more. A pane row is identified
//! by its pane start and the first window its records count toward (records late for some of
//! their windows form rows of their own, see the `Aligned` state), so a stage-1 [`PartialAggregate`] is
//! `(group, pane, first window, source partition)` plus accumulators.
//!
//! **The merge stage** (stage 2) is an engine fed with partials instead of records
//! ([`Engine::merge_partial`]) and with each source partition's watermark
//! ([`Engine::source_watermark`]); its partitions are the source partitions. It merges a
//! partial into the pane row it names and closes a window, with the same code as a one-stage
//! engine, when the minimum watermark over the source partitions that are not idle passes its
//! end. A window's result therefore merges exactly the records a single engine reading every
//! partition would have counted: each record is judged late or not by its own partition's
//! watermark in stage 1, as a single engine does (see the module documentation of `engine`).
//!
//! Duplicates: after a crash, stage 1 replays and sends some partials again, with the same
//! identity and the same accumulators. The merge stage remembers, per pane row still open, which
//! source partitions it merged, and skips a partial it has merged already. A partial whose
//! windows have all closed is dropped: it is a duplicate of one merged before (when its
//! source's watermark shows it was sent before), or late because the merge stage's watermark moved
//! on while its source was idle.

mod wire;

use serde::{Deserialize, Serialize};

use super::{align_up, Engine, Mark, Pane, State};
use crate::agg::Acc;
use crate::Rejection;

/// One stage-1 partial aggregate: a group's accumulators in one pane row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialAggregate {
    /// The source partition it comes from.
    pub source: i32,
    /// Pane start, ms.
    pub pane: i64,
    /// Start of the first window its records count toward, ms.
    pub first: i64,
    /// The group (as [`crate::WindowResult::group`]: JSON texts joined by NUL bytes).
    pub group: String,
    /// One accumulator per aggregation, in the job's order.
    pub accs: Vec<Acc>,
    /// Set when the pane row was emitted early, because its partition went idle
    /// ([`Engine::flush_partials`]): the source offset at which it was flushed. Records of the
    /// same pane row that arrive later form another partial, with another segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<i64>,
    /// The run tag of the definition and reset it was computed for
    /// ([`weir_crds::definition::run_tag`]): the merge stage skips another run's partials.
    /// `None`: written by a version before tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A partial: a message of the repartition topic, which the merge stage reads. Either a
/// partial aggregate, or a source partition's watermark marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Partial {
    /// A stage-1 partial aggregate.
    // Its wire name from before this variant was renamed (`rename_all` made it "partial"),
    // kept so that partials already in a repartition topic are read after an upgrade.
    #[serde(rename = "partial")]
    Aggregate(PartialAggregate),
    /// Source partition `source` has emitted every partial its watermark closed: the merge stage may
    /// count it at `watermark` (`None`: no record yet). `idle`: it has had no record for the
    /// idle timeout and stops holding the others back.
    Watermark {
        /// The source partition.
        source: i32,
        /// Its watermark, ms.
        watermark: Option<i64>,
        /// Whether it is idle.
        idle: bool,
        /// The run tag, as [`PartialAggregate::tag`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// The first window start (ms) the source partition's run emits: the merge stage emits
        /// only windows starting at or after every source's (`None`: every window).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        results_from: Option<i64>,
    },
}

impl Partial {
    /// The message's JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these types cannot fail (no maps with non-string keys, no foreign types).
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read a message. Its UTF-8 is checked once, not string by string; a message that is not
    /// UTF-8 is read as bytes, for serde_json's error. A partial aggregate as
    /// [`PartialAggregate::write_message`] writes it is read by hand (`wire`), anything
    /// else by serde_json.
    pub fn from_bytes(bytes: &[u8]) -> Result<Partial, serde_json::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => match wire::read_aggregate(text) {
                Some(p) => Ok(Partial::Aggregate(p)),
                None => serde_json::from_str(text),
            },
            Err(_) => serde_json::from_slice(bytes),
        }
    }
}

impl PartialAggregate {
    /// Write this partial's message, the bytes of `Partial::Aggregate(self).to_bytes()`, into
    /// `buf` (replacing its contents): no copy of the partial, and `buf` keeps its capacity
    /// from one partial to the next. Written by hand (`wire`), not by serde's derived
    /// code.
    pub fn write_message(&self, buf: &mut Vec<u8>) {
        buf.clear();
        // Serialising these types cannot fail (as in `Partial::to_bytes`).
        if wire::write_aggregate(self, buf).is_err() {
            buf.clear();
        }
    }
}

/// What [`Engine::merge_partial`] did with a partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Merged into its pane row.
    Merged,
    /// Merged before (a replay of stage 1): skipped.
    Duplicate,
    /// Every window it counts toward had closed: dropped.
    Late,
}

impl PartialAggregate {
    /// End of the first window it counts toward: stage 1 emits it once its partition's
    /// watermark reaches this, and a restarted stage 1 does not emit it again when its
    /// checkpoint's `emittedThrough` is at or after it.
    pub fn first_end(&self, size: i64) -> i64 {
        self.first.saturating_add(size)
    }
}

impl Engine {
    /// Stage 1: emit [`PartialAggregate`]s (taken with [`Engine::take_partials`]) instead of window
    /// results. Aligned windows only; session windows keep emitting results (the job must then
    /// be co-partitioned, which the StreamJob validation requires).
    pub fn emit_partials(&mut self) {
        self.partial_mode = true;
    }

    /// Partials emitted since the last call, in order of first window end, pane, then group.
    pub fn take_partials(&mut self) -> Vec<PartialAggregate> {
        std::mem::take(&mut self.partials)
    }

    /// Window size, ms (0 for sessions).
    pub fn window_size(&self) -> i64 {
        match &self.state {
            State::Aligned(a) => a.size,
            State::Sessions(_) => 0,
        }
    }

    /// Stage 1: move every pane row that no record can reach any more (its first window has
    /// ended at or before `wm`) to the partials.
    pub(super) fn close_partials(&mut self, wm: i64) {
        self.emit_pane_rows(Some(wm), None);
    }

    /// Stage 1, when the partition goes idle: emit every open pane row now, as partials of
    /// segment `at` (the partition's next offset), so that the merge stage, which stops waiting for an
    /// idle partition, has its records. Records arriving later start new pane rows.
    ///
    /// A replay must flush at the same offsets to send the same partials again: the runtime
    /// records `at` in the checkpoint before sending them.
    pub fn flush_partials(&mut self, at: i64) {
        self.emit_pane_rows(None, Some(at));
    }

    fn emit_pane_rows(&mut self, wm: Option<i64>, segment: Option<i64>) {
        let State::Aligned(a) = &mut self.state else {
            return;
        };
        let size = a.size;
        let done: Vec<(i64, i64)> = match wm {
            Some(wm) => a
                .panes
                .range(..(wm, i64::MIN))
                .map(|(k, _)| *k)
                .filter(|(_, first)| first.saturating_add(size) <= wm)
                .collect(),
            None => a.panes.keys().copied().collect(),
        };
        let from = self.partials.len();
        let source = self.partitions.keys().next().copied().unwrap_or(0);
        for key in done {
            let Some(pane) = a.panes.remove(&key) else {
                continue;
            };
            for (row, gid) in pane.gids.iter().enumerate() {
                let accs: Vec<Acc> = pane.cols.iter().filter_map(|c| c.acc(row)).collect();
                let group = String::from_utf8_lossy(self.groups.key(*gid)).into_owned();
                self.partials.push(PartialAggregate {
                    source,
                    pane: key.0,
                    first: key.1,
                    group,
                    accs,
                    segment,
                    tag: None,
                });
            }
            for gid in pane.gids {
                self.groups.release(gid);
            }
        }
        self.partials[from..].sort_by(|x, y| {
            (x.first_end(size), x.pane, x.first, &x.group).cmp(&(
                y.first_end(size),
                y.pane,
                y.first,
                &y.group,
            ))
        });
        self.stats.results += (self.partials.len() - from) as u64;
    }

    /// The merge stage: merge a partial read at `offset` of input log `log` (a repartition partition;
    /// [`Engine::replay_point`]`(log)` then says where a replay must start). May not close
    /// windows: only watermarks do. With a row limit set ([`Engine::set_row_limit`]), a partial
    /// that would open a pane row beyond it is refused (`state_full`) and changes nothing: not
    /// even the memory of what was merged, so the same partial sent again after a restart of
    /// its source is judged again.
    pub fn merge_partial(
        &mut self,
        log: i32,
        offset: i64,
        partial: &PartialAggregate,
    ) -> Result<MergeOutcome, Rejection> {
        let (size, slide) = match &self.state {
            State::Aligned(a) => (a.size, a.slide),
            State::Sessions(_) => return Ok(MergeOutcome::Late),
        };
        let (p, first) = (partial.pane, partial.first);
        // Windows ending at or before the merge stage's watermark are closed: the partial counts
        // toward the later ones only, in a pane row of its own (as a partly late record does).
        let open_from = if self.watermark == i64::MIN {
            i64::MIN
        } else {
            align_up(self.watermark.saturating_sub(size) + 1, slide)
        };
        let first_open = first.max(open_from);
        if first_open > p {
            let seen_past = self
                .partitions
                .get(&partial.source)
                .is_some_and(|s| s.watermark >= partial.first_end(size));
            let outcome = if seen_past {
                MergeOutcome::Duplicate
            } else {
                MergeOutcome::Late
            };
            self.note_outcome(outcome);
            return Ok(outcome);
        }
        let gid = self.groups.intern(partial.group.as_bytes());
        let id = (gid, partial.source, partial.segment);
        if self
            .merged
            .get(&(p, first))
            .is_some_and(|s| s.contains(&id))
        {
            self.groups.forget_if_unused(gid);
            self.note_outcome(MergeOutcome::Duplicate);
            return Ok(MergeOutcome::Duplicate);
        }
        if let Err(full) = self.check_merge_room((p, first_open), gid, partial.source) {
            self.groups.forget_if_unused(gid);
            return Err(full);
        }
        self.merged.entry((p, first)).or_default().insert(id);
        let State::Aligned(a) = &mut self.state else {
            return Ok(MergeOutcome::Late);
        };
        let aggs = &self.plan.aggs;
        let hint = a.rows_hint;
        let pane = a
            .panes
            .entry((p, first_open))
            .or_insert_with(|| Pane::with_capacity(aggs, hint));
        let (row, added) = pane.row(gid);
        if added {
            self.groups.retain(gid);
            self.rows_bound = self.rows_bound.saturating_add(1);
        }
        pane.marks.note(Mark {
            partition: log,
            offset,
            max_before: i64::MIN,
        });
        for (col, acc) in pane.cols.iter_mut().zip(&partial.accs) {
            col.merge_acc(row, acc);
        }
        Ok(MergeOutcome::Merged)
    }

    /// The merge stage: source partition `source` reached `watermark` (`None`: no record yet), or is
    /// idle. Closes the windows the minimum over the partitions that are not idle has passed.
    pub fn source_watermark(&mut self, source: i32, watermark: Option<i64>, idle: bool) {
        let part = self
            .partitions
            .entry(source)
            .or_insert_with(super::PartitionState::new);
        if let Some(wm) = watermark {
            part.watermark = part.watermark.max(wm);
            part.max_time = part.max_time.max(wm);
        }
        part.idle = idle;
        self.advance();
        // Forget which partials were merged into pane rows no open window reads any more.
        if let State::Aligned(a) = &self.state {
            if self.watermark > i64::MIN {
                let open_from = align_up(self.watermark.saturating_sub(a.size) + 1, a.slide);
                self.merged = self.merged.split_off(&(open_from, i64::MIN));
            }
        }
    }

    fn note_outcome(&mut self, outcome: MergeOutcome) {
        match outcome {
            MergeOutcome::Merged => {}
            MergeOutcome::Duplicate => self.stats.duplicate_partials += 1,
            MergeOutcome::Late => self.stats.late_partials += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repartition topic's bytes are a format between versions: a partial written before
    /// the types were renamed is read after, and one written now reads the same.
    #[test]
    fn partials_keep_their_wire_format() {
        let aggregate =
            br#"{"partial":{"source":2,"pane":60000,"first":0,"group":"\"m1\"","accs":[]}}"#;
        match Partial::from_bytes(aggregate) {
            Ok(Partial::Aggregate(p)) => {
                assert_eq!(
                    (p.source, p.pane, p.first, p.group.as_str()),
                    (2, 60_000, 0, "\"m1\"")
                );
                let mut buf = b"left over".to_vec();
                p.write_message(&mut buf);
                assert_eq!(buf, aggregate.to_vec());
                assert_eq!(Partial::Aggregate(p).to_bytes(), aggregate.to_vec());
            }
            other => panic!("not read as a partial aggregate: {other:?}"),
        }
        let marker = br#"{"watermark":{"source":1,"watermark":5,"idle":false}}"#;
        match Partial::from_bytes(marker) {
            Ok(m @ Partial::Watermark { .. }) => assert_eq!(m.to_bytes(), marker.to_vec()),
            other => panic!("not read as a watermark marker: {other:?}"),
        }
    }

    /// A partial with every optional field, escapes in its group and accumulators of several
    /// kinds is written the same by both writers and read back the same, and a message that is
    /// not UTF-8 is refused as serde_json refuses it.
    #[test]
    fn partial_messages_round_trip() {
        let text = r#"{"partial":{"source":3,"pane":-60000,"first":-120000,"group":"\"\u00e9\"\u0000[1,2]","accs":[{"count":7},{"sum":[1.5,-0.0]},{"min":null},{"max":2.5}],"segment":41,"tag":"r-1"}}"#;
        let Ok(Partial::Aggregate(p)) = Partial::from_bytes(text.as_bytes()) else {
            panic!("not read as a partial aggregate");
        };
        assert_eq!(p.group, "\"\u{e9}\"\u{0}[1,2]");
        assert_eq!((p.segment, p.tag.as_deref()), (Some(41), Some("r-1")));
        let mut buf = Vec::new();
        p.write_message(&mut buf);
        assert_eq!(buf, Partial::Aggregate(p.clone()).to_bytes());
        let Ok(Partial::Aggregate(again)) = Partial::from_bytes(&buf) else {
            panic!("its own message not read back");
        };
        assert_eq!(format!("{again:?}"), format!("{p:?}"));

        let mut bad = br#"{"partial":{"source":1,"pane":0,"first":0,"group":"x"#.to_vec();
        bad.extend_from_slice(&[0xff, b'"', b',', b'"', b'a', b'c', b'c', b's', b'"', b':']);
        bad.extend_from_slice(b"[]}}");
        let via_slice = serde_json::from_slice::<Partial>(&bad).map(|_| ());
        let err = Partial::from_bytes(&bad).map(|_| ());
        assert!(err.is_err());
        assert_eq!(
            err.map_err(|e| e.to_string()),
            via_slice.map_err(|e| e.to_string())
        );
    }
}
