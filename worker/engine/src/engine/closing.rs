//! Closed tumbling windows whose results are built as they are taken ([`Closing`]), not all at
//! once when the window closes: a window of a million groups would otherwise hold a million
//! [`WindowResult`]s (~200 bytes each, more than its rows) until the partition had written the
//! first (issue 20; docs/running.md, "Memory").

use std::collections::VecDeque;

use super::groups::Groups;
use super::pane::Pane;
use super::record::WindowResult;
use super::RESULTS_CHUNK;

/// One closed window: its pane, moved out of the open ones, and its rows in group order.
pub(super) struct Closing {
    start: i64,
    end: i64,
    pane: Pane,
    /// Row numbers in increasing group key order (the order results are emitted in).
    order: Vec<u32>,
    /// The next entry of `order` to build.
    next: usize,
}

impl Closing {
    /// Window `[start, end)` with the rows of `pane`, whose group ids stay retained in `groups`
    /// until [`Closings::take`] has built their last result.
    pub(super) fn new(start: i64, end: i64, pane: Pane, groups: &Groups) -> Closing {
        let mut order: Vec<u32> = (0..pane.gids.len() as u32).collect();
        order.sort_unstable_by(|a, b| {
            groups
                .key(pane.gids[*a as usize])
                .cmp(groups.key(pane.gids[*b as usize]))
        });
        Closing {
            start,
            end,
            pane,
            order,
            next: 0,
        }
    }

    /// Results not built yet.
    fn remaining(&self) -> usize {
        self.order.len() - self.next
    }
}

/// The closed windows not fully taken yet, oldest first.
#[derive(Default)]
pub(super) struct Closings {
    windows: VecDeque<Closing>,
    /// Results written out and given back ([`Closings::recycle`]): [`Closings::take`] builds
    /// the next ones in their group key and value buffers instead of allocating both.
    spare: Vec<WindowResult>,
}

impl Closings {
    /// Queue a closed window (one with no rows is dropped); returns its results.
    pub(super) fn push(&mut self, closing: Closing) -> usize {
        let n = closing.remaining();
        if n > 0 {
            self.windows.push_back(closing);
        }
        n
    }

    /// Build up to `max` results into `out`, in order. A window fully taken releases its group
    /// ids. Returns how many it built.
    pub(super) fn take(
        &mut self,
        max: usize,
        groups: &mut Groups,
        out: &mut Vec<WindowResult>,
    ) -> usize {
        let mut built = 0;
        while built < max {
            let Some(w) = self.windows.front_mut() else {
                break;
            };
            let n = w.remaining().min(max - built);
            for &row in &w.order[w.next..w.next + n] {
                let row = row as usize;
                let mut r = self.spare.pop().unwrap_or_default();
                r.start = w.start;
                r.end = w.end;
                r.group.clear();
                r.group.extend_from_slice(groups.key(w.pane.gids[row]));
                r.values.clear();
                r.values.extend(w.pane.cols.iter().map(|c| c.result(row)));
                out.push(r);
            }
            w.next += n;
            built += n;
            if w.remaining() == 0 {
                if let Some(done) = self.windows.pop_front() {
                    for gid in done.pane.gids {
                        groups.release(gid);
                    }
                }
            }
        }
        built
    }

    /// Keep the results in `used` (leaving it empty) for the next [`Closings::take`] to build in,
    /// up to [`RESULTS_CHUNK`] (a chunk's buffers, ~200 KB for three aggregations); the rest
    /// are dropped.
    pub(super) fn recycle(&mut self, used: &mut Vec<WindowResult>) {
        let room = RESULTS_CHUNK.saturating_sub(self.spare.len());
        used.truncate(room);
        self.spare.append(used);
    }
}

#[cfg(test)]
mod tests {
    use crate::{Engine, JobPlan, Record, WindowResult};

    fn engine(window: &str) -> Engine {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: t}}\nspec:\n  \
             source: {{kafka: {{bootstrapServers: b, topic: t}}, eventTime: {{field: ts, format: \
             epochMillis}}}}\n  groupBy: [g]\n  repartition: {{coPartitioned: true}}\n  window: {window}\n  \
             aggregations: [{{name: n, fn: count}}, {{name: s, fn: sum, field: v}}]\n  \
             sink: {{kafka: {{topic: o}}}}\n"
        );
        let job = weir_crds::parse_stream_job(&yaml).expect("job").job;
        Engine::new(JobPlan::new(&job.spec).expect("plan"), [0])
    }

    /// 40 groups over three 10 s windows (not in group order), then a record that closes them.
    fn fed(window: &str) -> Engine {
        let mut e = engine(window);
        let mut offset = 0;
        for t in [1_000, 12_000, 23_000] {
            for g in (0..40).rev() {
                let v = format!(r#"{{"ts":{},"g":"g{g:02}","v":{g}}}"#, t + 39 - g);
                let rec = Record {
                    partition: 0,
                    offset,
                    key: None,
                    timestamp: None,
                    value: v.as_bytes(),
                };
                e.process(&rec).expect("accepted");
                offset += 1;
            }
        }
        let last = br#"{"ts":95000,"g":"z","v":0}"#;
        let rec = Record {
            partition: 0,
            offset,
            key: None,
            timestamp: None,
            value: last,
        };
        e.process(&rec).expect("accepted");
        e
    }

    /// A window of each kind, over the data of [`fed`].
    const WINDOWS: [&str; 3] = [
        "{type: tumbling, size: 10s}",
        "{type: hopping, size: 20s, slide: 10s}",
        "{type: session, gap: 5s}",
    ];

    fn texts(results: &[WindowResult]) -> Vec<String> {
        results.iter().map(|r| format!("{r:?}")).collect()
    }

    #[test]
    fn results_taken_in_chunks_are_those_taken_at_once_in_the_same_order() {
        for window in WINDOWS {
            let all = fed(window).take_results();
            assert!(all.len() >= 120, "{window}: {} results", all.len());
            let order = |r: &WindowResult| (r.end, r.start, r.group.clone());
            assert!(
                all.windows(2).all(|w| order(&w[0]) < order(&w[1])),
                "{window}: in order of window end, start, then group"
            );
            for chunk in [1, 7, 40, 1000] {
                let mut e = fed(window);
                assert_eq!(e.results_pending(), all.len() as u64, "{window}");
                let through = e.results_emitted();
                let mut got = Vec::new();
                loop {
                    let before = got.len();
                    let n = e.take_results_upto(through, chunk, &mut got);
                    assert_eq!(n, got.len() - before);
                    assert!(n <= chunk);
                    if n < chunk {
                        break;
                    }
                }
                assert_eq!(texts(&got), texts(&all), "{window}, chunks of {chunk}");
                assert_eq!(e.results_pending(), 0);
            }
        }
    }

    /// As a partition takes them: a chunk, written out, given back, the next chunk built in
    /// the given-back results' buffers. The results are those taken at once.
    #[test]
    fn results_built_in_recycled_buffers_are_those_taken_at_once() {
        for window in WINDOWS {
            let all = fed(window).take_results();
            for chunk in [1, 7, 40, 1000] {
                let mut e = fed(window);
                let through = e.results_emitted();
                let (mut got, mut taken) = (Vec::new(), Vec::new());
                let mut reused = 0;
                loop {
                    let given: Vec<*const u8> = taken
                        .iter()
                        .map(|r: &WindowResult| r.group.as_ptr())
                        .collect();
                    e.recycle_results(&mut taken);
                    assert!(taken.is_empty());
                    let n = e.take_results_upto(through, chunk, &mut taken);
                    reused += taken
                        .iter()
                        .filter(|r| given.contains(&r.group.as_ptr()))
                        .count();
                    got.extend(taken.iter().cloned());
                    if n < chunk {
                        break;
                    }
                }
                assert_eq!(texts(&got), texts(&all), "{window}, chunks of {chunk}");
                if window.contains("tumbling") {
                    // Built as taken: every result after the first chunk in a given-back buffer.
                    assert_eq!(
                        reused,
                        all.len() - chunk.min(all.len()),
                        "{window}, {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_closed_window_holds_its_groups_until_its_last_result_is_taken() {
        let mut e = fed("{type: tumbling, size: 10s}");
        // The three windows' 40 groups are still held, and "z" of the open one.
        assert_eq!(e.groups.len(), 41);
        assert_eq!(e.open_rows(), 1, "closed windows are not open rows");
        let through = e.results_emitted();
        let mut got = Vec::new();
        e.take_results_upto(through, 100, &mut got);
        // Two windows fully taken: their groups are still held by the third.
        assert_eq!(e.groups.len(), 41);
        e.take_results_upto(through, 100, &mut got);
        assert_eq!(got.len(), 120);
        assert_eq!(e.groups.len(), 1);
    }

    #[test]
    fn take_stops_at_the_results_emitted_when_asked() {
        let mut e = fed("{type: tumbling, size: 10s}");
        let through = e.results_emitted();
        let rec = Record {
            partition: 0,
            offset: 1_000,
            key: None,
            timestamp: None,
            value: br#"{"ts":200000,"g":"y","v":0}"#,
        };
        e.process(&rec).expect("accepted");
        assert_eq!(e.results_emitted(), through + 1, "the window of z closed");
        let mut got = Vec::new();
        assert_eq!(e.take_results_upto(through, usize::MAX, &mut got), 120);
        assert_eq!(e.take_results_upto(through, usize::MAX, &mut got), 0);
        assert_eq!(e.take_results().len(), 1);
    }
}
