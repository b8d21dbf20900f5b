//! What one record may hold and how much open state the engine may keep: a record whose group
//! values and kept values (`first`, `last`) take more than [`MAX_KEPT_BYTES`] is `too_large`
//! (so that no result grows past what a Kafka producer takes); with a row limit set
//! ([`Engine::set_row_limit`]), a record that would open a (group, pane) row or a session
//! beyond it is `state_full`, while records of rows already open still count; in the merge
//! stage, a partial that would open a pane row beyond it is refused the same way
//! ([`Engine::merge_partial`]). Checks only: a rejected record changes no state, except that a
//! record refused as `state_full` still moves its partition's event time (`Engine::admit`), so
//! that windows keep closing and free rows.

use weir_crds::AggregationFn;

use super::aligned::align_down;
use super::extract::Contribution;
use super::record::{RejectReason, Rejection, MAX_KEPT_BYTES};
use super::{Engine, State};

impl Engine {
    /// Bound the open rows ([`Engine::open_rows`]) that new records may fill; `None` lifts the
    /// bound. Records of rows already open are always counted, so the rows may exceed a bound
    /// lowered below them, and never grow past it through new rows.
    pub fn set_row_limit(&mut self, limit: Option<usize>) {
        self.row_limit = limit;
    }

    /// The bound set by [`Engine::set_row_limit`].
    pub fn row_limit(&self) -> Option<usize> {
        self.row_limit
    }

    /// `too_large` when the record's group key and the JSON values `first`/`last` would keep of
    /// it exceed [`MAX_KEPT_BYTES`] (numbers and `countDistinct`'s hashed values do not count).
    pub(super) fn check_kept_size(&self) -> Result<(), Rejection> {
        let picked: usize = self
            .plan
            .aggs
            .iter()
            .zip(&self.contributions)
            .map(|(agg, c)| match (agg.function, c) {
                (AggregationFn::First | AggregationFn::Last, Contribution::Json(a, b)) => b - a,
                _ => 0,
            })
            .sum();
        let kept = self.key_buf.len() + picked;
        if kept <= MAX_KEPT_BYTES {
            return Ok(());
        }
        Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "the record's group values ({} bytes) and the values first/last keep of it \
                 ({picked} bytes) take {kept} bytes; a result holds at most {MAX_KEPT_BYTES} \
                 bytes of one record",
                self.key_buf.len()
            ),
        ))
    }

    /// The open rows and the row limit, when a limit is set and the open rows have reached it
    /// (the stages' checks below share it). Counted only near the limit: `rows_bound` is an
    /// upper bound kept on the record path.
    fn at_row_limit(&mut self) -> Option<(usize, usize)> {
        let limit = self.row_limit?;
        if self.rows_bound < limit {
            return None;
        }
        let rows = self.open_rows();
        self.rows_bound = rows;
        (rows >= limit).then_some((rows, limit))
    }

    /// `state_full` when a row limit is set, the open rows have reached it, and the record (of
    /// the group in `key_buf`, at event time `t`, first window `first`) would open a new row.
    pub(super) fn check_room(&mut self, t: i64, first: i64) -> Result<(), Rejection> {
        let Some((rows, limit)) = self.at_row_limit() else {
            return Ok(());
        };
        if self.holds_row(t, first) {
            return Ok(());
        }
        Err(Rejection::new(
            RejectReason::StateFull,
            format!(
                "the partition holds {rows} open (group, window) rows, all the worker's bound \
                 on open state (--max-open-rows) leaves it ({limit}); the record would open \
                 another"
            ),
        ))
    }

    /// The merge stage: `state_full` when a row limit is set, the open rows have reached it, and
    /// the partial (of group `gid`, into pane row `key`) would open a new row.
    pub(super) fn check_merge_room(
        &mut self,
        key: (i64, i64),
        gid: u32,
        source: i32,
    ) -> Result<(), Rejection> {
        let Some((rows, limit)) = self.at_row_limit() else {
            return Ok(());
        };
        let held = match &self.state {
            State::Aligned(a) => a.panes.get(&key).is_some_and(|p| p.has(gid)),
            State::Sessions(_) => false,
        };
        if held {
            return Ok(());
        }
        Err(Rejection::new(
            RejectReason::StateFull,
            format!(
                "the merge stage partition holds {rows} open (group, window) rows, all the \
                 worker's bound on open state (--max-open-rows) leaves it ({limit}); this \
                 partial of source partition {source} (pane {}) would open another, so its \
                 records are missing from the results of its windows",
                crate::time::format(key.0)
            ),
        ))
    }

    /// Whether the record would be counted into a row that is open already.
    fn holds_row(&self, t: i64, first: i64) -> bool {
        let Some(gid) = self.groups.find(&self.key_buf) else {
            return false;
        };
        match &self.state {
            State::Aligned(a) => a
                .panes
                .get(&(align_down(t, a.pane), first))
                .is_some_and(|p| p.has(gid)),
            State::Sessions(s) => s.overlaps(gid, t),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::record::{RejectReason, MAX_KEPT_BYTES};
    use crate::{Engine, JobPlan, Record};

    fn engine(window: &str, aggs: &str) -> Engine {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: t}}\nspec:\n  \
             source: {{kafka: {{bootstrapServers: b, topic: t}}, eventTime: {{field: ts, format: \
             epochMillis}}}}\n  groupBy: [g]\n  repartition: {{coPartitioned: true}}\n  window: {window}\n  aggregations: {aggs}\n  \
             sink: {{kafka: {{topic: o}}}}\n"
        );
        let job = weir_crds::parse_stream_job(&yaml).expect("job").job;
        Engine::new(JobPlan::new(&job.spec).expect("plan"), [0])
    }

    fn feed(e: &mut Engine, offset: i64, value: &str) -> Result<(), RejectReason> {
        let rec = Record {
            partition: 0,
            offset,
            key: None,
            timestamp: None,
            value: value.as_bytes(),
        };
        e.process(&rec).map_err(|r| r.reason)
    }

    #[test]
    fn a_full_engine_refuses_new_rows_and_counts_into_open_ones() {
        for window in [
            "{type: tumbling, size: 1m}",
            "{type: hopping, size: 1m, slide: 20s}",
            "{type: session, gap: 10s}",
        ] {
            let mut e = engine(window, "[{name: n, fn: count}]");
            e.set_row_limit(Some(2));
            assert_eq!(feed(&mut e, 0, r#"{"ts":1000,"g":"a"}"#), Ok(()));
            assert_eq!(feed(&mut e, 1, r#"{"ts":1001,"g":"b"}"#), Ok(()));
            assert_eq!(
                feed(&mut e, 2, r#"{"ts":1002,"g":"c"}"#),
                Err(RejectReason::StateFull),
                "{window}"
            );
            assert_eq!(
                feed(&mut e, 3, r#"{"ts":1003,"g":"a"}"#),
                Ok(()),
                "{window}"
            );
            assert_eq!(e.open_rows(), 2, "{window}");
            e.set_row_limit(None);
            assert_eq!(
                feed(&mut e, 4, r#"{"ts":1004,"g":"c"}"#),
                Ok(()),
                "{window}"
            );
        }
    }

    #[test]
    fn a_record_refused_for_room_still_moves_time_so_windows_close_and_free_rows() {
        let mut e = engine(
            "{type: tumbling, size: 1m, allowedLateness: 30s}",
            "[{name: n, fn: count}]",
        );
        e.set_row_limit(Some(2));
        assert_eq!(feed(&mut e, 0, r#"{"ts":1000,"g":"a"}"#), Ok(()));
        assert_eq!(feed(&mut e, 1, r#"{"ts":2000,"g":"b"}"#), Ok(()));
        // A minute later, a new group: the watermark it brings (31 s) closes nothing yet.
        assert_eq!(
            feed(&mut e, 2, r#"{"ts":61000,"g":"c"}"#),
            Err(RejectReason::StateFull)
        );
        assert_eq!(e.partitions()[&0].max_time, 61_000, "its time is taken");
        assert!(e.take_results().is_empty());
        // Every later record opens a new row; without taking the refused records' time the
        // partition would stay full for ever. This one closes the first minute and fits.
        assert_eq!(feed(&mut e, 3, r#"{"ts":91000,"g":"d"}"#), Ok(()));
        assert_eq!(e.take_results().len(), 2);
        assert_eq!(e.open_rows(), 1);
    }

    #[test]
    fn a_record_keeping_more_than_the_bound_is_too_large() {
        let mut e = engine(
            "{type: tumbling, size: 1m}",
            "[{name: n, fn: count}, {name: f, fn: first, field: s}, {name: d, fn: countDistinct, field: s}]",
        );
        let big = "x".repeat(MAX_KEPT_BYTES);
        let group = format!(r#"{{"ts":1000,"g":"{big}","s":"y"}}"#);
        assert_eq!(feed(&mut e, 0, &group), Err(RejectReason::TooLarge));
        let kept = format!(r#"{{"ts":1000,"g":"a","s":"{big}"}}"#);
        assert_eq!(feed(&mut e, 1, &kept), Err(RejectReason::TooLarge));
        let small = format!(r#"{{"ts":1000,"g":"a","s":"{}"}}"#, &big[..1000]);
        assert_eq!(feed(&mut e, 2, &small), Ok(()));
        assert_eq!(e.open_rows(), 1);
    }
}
