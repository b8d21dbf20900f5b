//! Where a partition's run starts, decided purely from what its checkpoint recorded and what the
//! spec asks (DESIGN.md invariant 8; docs/semantics.md, "Edits, resets and start times"): resume
//! the recorded windows, start a new definition from the recorded replay point, or start afresh
//! from a place in the log; and the first window start the run emits (`resultsFrom`). The worker
//! resolves the place to an offset (ListOffsets) and records the [`Run`] in every checkpoint.
//!
//! The rules, in order:
//! 1. `spec.reset` is set and the checkpoint has not applied it (another identity, or no
//!    checkpoint): start afresh from `reset.to`.
//! 2. No progress recorded: start afresh from `startFrom`.
//! 3. The checkpoint's definition is the spec's (or not recorded: an older version wrote it):
//!    resume it, with the `resultsFrom` it recorded.
//! 4. Another definition: replay from the checkpoint's replay point with an empty state whose
//!    watermark is the one recorded there, and emit only windows that are complete and that the
//!    old definition cannot have emitted ([`results_from_after_edit`]).
//!
//! A spec without `reset` keeps the reset the checkpoint recorded, so removing and re-adding the
//! same reset does not reset twice.

use weir_crds::checkpoint::{Progress, Run};
use weir_crds::{definition, StartFrom, StreamJobSpec};

use crate::plan::{JobPlan, WindowKind};

/// How a partition begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Resume the checkpoint's windows.
    Resume(Progress),
    /// A new definition: read from the progress's replay point, with an empty state whose
    /// watermark is the one recorded there (`emittedThrough` and flushes cleared: nothing of the
    /// new definition was sent yet). The merge stage starts afresh instead.
    NewDefinition {
        /// The progress to replay from.
        progress: Progress,
        /// The fingerprint of the definition the checkpoint was written for.
        previous: String,
    },
    /// An empty state, reading from this place (a repartition partition: its log start).
    Fresh {
        /// Where.
        from: StartFrom,
        /// Why: a reset (its identity), or `None` for a first start.
        reset: Option<String>,
    },
}

/// The decision: how to begin, and the run every checkpoint records from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// How to begin.
    pub begin: Begin,
    /// What checkpoints record (definition, resultsFrom, reset).
    pub run: Run,
    /// Whether a repartition partition accepts partials and markers written without a run tag
    /// (by a version before tags): only when it continues a run it may share with them.
    pub accept_untagged: bool,
}

impl Decision {
    /// The run tag this partition's partials and markers carry, or accepts (merge stage).
    pub fn run_tag(&self) -> String {
        definition::run_tag_of(
            self.run.definition.as_deref().unwrap_or_default(),
            self.run.reset.as_deref(),
        )
    }
}

/// Decide how a partition of `spec` begins, given its checkpoint's run and progress (`None`: no
/// checkpoint). `merge`: a partition of the repartition topic, which never replays a new
/// definition (it starts afresh from its log start and ignores other runs' messages) and whose
/// own `resultsFrom` is unused (it takes its sources').
pub fn decide(
    plan: &JobPlan,
    spec: &StreamJobSpec,
    stored: Option<(&Run, Option<&Progress>)>,
    merge: bool,
) -> Decision {
    let fingerprint = definition::fingerprint(spec);
    let stored_reset = stored.and_then(|(run, _)| run.reset.clone());
    let from_of = |from: StartFrom| if merge { StartFrom::Earliest } else { from };
    let first_of = |from: StartFrom| if merge { None } else { first_start(plan, from) };
    if let Some(reset) = &spec.reset {
        let identity = reset.identity();
        if stored_reset.as_deref() != Some(identity.as_str()) {
            return Decision {
                begin: Begin::Fresh {
                    from: from_of(reset.to),
                    reset: Some(identity.clone()),
                },
                run: Run {
                    definition: Some(fingerprint),
                    results_from: first_of(reset.to),
                    reset: Some(identity),
                },
                accept_untagged: false,
            };
        }
    }
    let start_from = spec.source.kafka.start_from;
    let Some((run, Some(progress))) = stored else {
        return Decision {
            begin: Begin::Fresh {
                from: from_of(start_from),
                reset: None,
            },
            run: Run {
                definition: Some(fingerprint),
                results_from: first_of(start_from),
                reset: stored_reset,
            },
            accept_untagged: spec.reset.is_none(),
        };
    };
    match &run.definition {
        Some(previous) if *previous != fingerprint => {
            let run = Run {
                definition: Some(fingerprint),
                results_from: if merge {
                    None
                } else {
                    results_from_after_edit(plan, progress)
                },
                reset: stored_reset,
            };
            let begin = if merge {
                Begin::Fresh {
                    from: StartFrom::Earliest,
                    reset: None,
                }
            } else {
                Begin::NewDefinition {
                    progress: Progress {
                        emitted_through: None,
                        flushes: Vec::new(),
                        ..progress.clone()
                    },
                    previous: previous.clone(),
                }
            };
            Decision {
                begin,
                run,
                accept_untagged: false,
            }
        }
        _ => Decision {
            begin: Begin::Resume(progress.clone()),
            run: Run {
                definition: Some(fingerprint),
                results_from: run.results_from,
                reset: stored_reset,
            },
            accept_untagged: true,
        },
    }
}

/// The first window start of `plan` at or after `t`: for a start at time `t`, the first window
/// every record of which is read. Sessions: `t` (sessions starting at or after it).
pub fn first_window_at_or_after(plan: &JobPlan, t: i64) -> i64 {
    match plan.window {
        WindowKind::Aligned { slide, .. } => align_up(t, slide),
        WindowKind::Session { .. } => t,
    }
}

/// `resultsFrom` of a start from `from`: a time's first window; `None` (every window) for
/// `earliest` and `latest`.
fn first_start(plan: &JobPlan, from: StartFrom) -> Option<i64> {
    match from {
        StartFrom::Time(t) => Some(first_window_at_or_after(plan, t)),
        StartFrom::Earliest | StartFrom::Latest => None,
    }
}

/// `resultsFrom` of a new definition replaying from `progress` (written for another
/// definition): the later of
/// - the first window that holds no record before the replay point: records before it have
///   event times at most `M` (`replayMaxEventTime`), so an aligned window starting after `M` is
///   complete; a session starting at or after `M + gap` cannot have been joined by one of them
///   (records exactly `gap` apart are in different sessions);
/// - the first window starting at or after the old definition's `emittedThrough`, whose key no
///   result of the old definition can have (every one of those ended at or before it).
///
/// `None` when neither bounds anything (nothing read and nothing emitted).
pub fn results_from_after_edit(plan: &JobPlan, progress: &Progress) -> Option<i64> {
    let complete = progress.replay_max_event_time.map(|m| match plan.window {
        WindowKind::Aligned { slide, .. } => align_up(m.saturating_add(1), slide),
        WindowKind::Session { gap } => m.saturating_add(gap),
    });
    let unused = progress
        .emitted_through
        .map(|e| first_window_at_or_after(plan, e));
    complete.max(unused)
}

/// The start of the last window containing event time `t`: a stage-1 partial of pane `t` counts
/// toward no window starting after it.
pub fn last_window_containing(plan: &JobPlan, t: i64) -> i64 {
    match plan.window {
        WindowKind::Aligned { slide, .. } => t - t.rem_euclid(slide),
        WindowKind::Session { .. } => t,
    }
}

fn align_up(t: i64, step: i64) -> i64 {
    let r = t.rem_euclid(step.max(1));
    if r == 0 {
        t
    } else {
        t.saturating_add(step - r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_crds::Reset;

    const MIN: i64 = 60_000;

    fn spec(window: &str) -> StreamJobSpec {
        let yaml = format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: t}}
spec:
  source:
    kafka: {{bootstrapServers: "k:9092", topic: in}}
    eventTime: {{field: t, format: epochMillis}}
  groupBy: [g]
  window: {window}
  aggregations:
    - {{name: n, fn: count}}
  sink:
    kafka: {{topic: out}}
  repartition: {{coPartitioned: true}}
"#
        );
        weir_crds::parse_stream_job(&yaml).expect("yaml").job.spec
    }

    fn plan(spec: &StreamJobSpec) -> JobPlan {
        JobPlan::new(spec).expect("plan")
    }

    fn progress(max: Option<i64>, emitted: Option<i64>) -> Progress {
        Progress {
            next_offset: 100,
            replay_from: 40,
            replay_max_event_time: max,
            emitted_through: emitted,
            flushes: vec![50],
            ..Progress::default()
        }
    }

    fn run(definition: Option<&str>, results_from: Option<i64>, reset: Option<&str>) -> Run {
        Run {
            definition: definition.map(str::to_owned),
            results_from,
            reset: reset.map(str::to_owned),
        }
    }

    #[test]
    fn the_same_definition_resumes_and_keeps_its_results_from() {
        let s = spec("{type: tumbling, size: 1m}");
        let fp = definition::fingerprint(&s);
        let p = progress(Some(5 * MIN + 10), Some(5 * MIN));
        for recorded in [Some(fp.as_str()), None] {
            let r = run(recorded, Some(3 * MIN), None);
            let d = decide(&plan(&s), &s, Some((&r, Some(&p))), false);
            assert_eq!(d.begin, Begin::Resume(p.clone()), "{recorded:?}");
            assert_eq!(d.run, run(Some(&fp), Some(3 * MIN), None));
            assert!(d.accept_untagged);
        }
    }

    #[test]
    fn a_new_definition_replays_from_the_replay_point_and_emits_complete_unused_windows() {
        // 1m → 2m. Records before the replay point reach 5:10; the old definition emitted
        // through 5:00. The first 2m window after 5:10 starts at 6:00.
        let s = spec("{type: tumbling, size: 2m}");
        let old = run(Some("0123456789abcdef"), None, None);
        let p = progress(Some(5 * MIN + 10_000), Some(5 * MIN));
        let d = decide(&plan(&s), &s, Some((&old, Some(&p))), false);
        match &d.begin {
            Begin::NewDefinition { progress, previous } => {
                assert_eq!(previous, "0123456789abcdef");
                assert_eq!((progress.replay_from, progress.next_offset), (40, 100));
                assert_eq!(progress.replay_max_event_time, Some(5 * MIN + 10_000));
                assert_eq!(progress.emitted_through, None);
                assert!(progress.flushes.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.run.results_from, Some(6 * MIN));
        assert_eq!(d.run.definition, Some(definition::fingerprint(&s)));
        assert!(!d.accept_untagged);
    }

    #[test]
    fn results_from_is_the_later_of_complete_and_unused() {
        let s = spec("{type: tumbling, size: 2m}");
        let p = plan(&s);
        // Completeness: strictly after M.
        assert_eq!(
            results_from_after_edit(&p, &progress(Some(4 * MIN), None)),
            Some(6 * MIN)
        );
        assert_eq!(
            results_from_after_edit(&p, &progress(Some(4 * MIN - 1), None)),
            Some(4 * MIN)
        );
        // The old definition emitted through 7:00: the first 2m window at or after it is 8:00.
        assert_eq!(
            results_from_after_edit(&p, &progress(Some(4 * MIN), Some(7 * MIN))),
            Some(8 * MIN)
        );
        assert_eq!(results_from_after_edit(&p, &progress(None, None)), None);
        let hopping = spec("{type: hopping, size: 2m, slide: 30s}");
        assert_eq!(
            results_from_after_edit(&plan(&hopping), &progress(Some(4 * MIN), None)),
            Some(4 * MIN + 30_000)
        );
        let sessions = spec("{type: session, gap: 30s}");
        assert_eq!(
            results_from_after_edit(&plan(&sessions), &progress(Some(4 * MIN), Some(MIN))),
            Some(4 * MIN + 30_000)
        );
    }

    #[test]
    fn a_reset_not_applied_yet_starts_afresh_once() {
        let mut s = spec("{type: tumbling, size: 1m}");
        let t = 10 * MIN + 1;
        s.reset = Some(Reset {
            to: StartFrom::Time(t),
            id: None,
        });
        let identity = s.reset.as_ref().map(Reset::identity);
        let fp = definition::fingerprint(&s);
        let p = progress(Some(20 * MIN), Some(20 * MIN));
        let before = run(Some(&fp), None, None);
        let d = decide(&plan(&s), &s, Some((&before, Some(&p))), false);
        assert_eq!(
            d.begin,
            Begin::Fresh {
                from: StartFrom::Time(t),
                reset: identity.clone()
            }
        );
        assert_eq!(d.run, run(Some(&fp), Some(11 * MIN), identity.as_deref()));
        // Applied: the next start resumes.
        let d2 = decide(&plan(&s), &s, Some((&d.run, Some(&p))), false);
        assert_eq!(d2.begin, Begin::Resume(p.clone()));
        assert_eq!(d2.run, d.run);
        // The reset removed from the spec: still resumes, and keeps the reset it applied.
        let mut without = s.clone();
        without.reset = None;
        let d3 = decide(&plan(&without), &without, Some((&d.run, Some(&p))), false);
        assert_eq!(d3.begin, Begin::Resume(p.clone()));
        assert_eq!(d3.run.reset, identity);
        assert_eq!(d3.run_tag(), definition::run_tag(&s));
        // No checkpoint at all: the reset applies too.
        let d4 = decide(&plan(&s), &s, None, false);
        assert!(matches!(d4.begin, Begin::Fresh { .. }));
        assert_eq!(d4.run.results_from, Some(11 * MIN));
    }

    #[test]
    fn a_start_time_gives_the_first_window_at_or_after_it() {
        let mut s = spec("{type: tumbling, size: 1m}");
        s.source.kafka.start_from = StartFrom::Time(3 * MIN);
        let d = decide(&plan(&s), &s, None, false);
        assert_eq!(d.run.results_from, Some(3 * MIN));
        s.source.kafka.start_from = StartFrom::Time(3 * MIN + 1);
        assert_eq!(
            decide(&plan(&s), &s, None, false).run.results_from,
            Some(4 * MIN)
        );
        s.source.kafka.start_from = StartFrom::Earliest;
        assert_eq!(decide(&plan(&s), &s, None, false).run.results_from, None);
    }

    #[test]
    fn the_merge_stage_starts_afresh_from_its_log_start_on_another_run() {
        let s = spec("{type: tumbling, size: 2m}");
        let old = run(Some("0123456789abcdef"), None, None);
        let p = progress(Some(5 * MIN), Some(5 * MIN));
        let d = decide(&plan(&s), &s, Some((&old, Some(&p))), true);
        assert_eq!(
            d.begin,
            Begin::Fresh {
                from: StartFrom::Earliest,
                reset: None
            }
        );
        assert_eq!(d.run.results_from, None);
        assert!(!d.accept_untagged);
        assert_eq!(d.run_tag(), definition::run_tag(&s));
    }

    #[test]
    fn the_merge_stage_resets_through_the_run_tag() {
        let mut s = spec("{type: tumbling, size: 1m}");
        let fp = definition::fingerprint(&s);
        let before = run(Some(&fp), None, None);
        let p = progress(None, Some(5 * MIN));
        let resumed = decide(&plan(&s), &s, Some((&before, Some(&p))), true);
        assert_eq!(resumed.begin, Begin::Resume(p.clone()));
        s.reset = Some(Reset {
            to: StartFrom::Time(3 * MIN),
            id: Some("again".into()),
        });
        let d = decide(&plan(&s), &s, Some((&before, Some(&p))), true);
        assert_eq!(
            d.begin,
            Begin::Fresh {
                from: StartFrom::Earliest,
                reset: s.reset.as_ref().map(Reset::identity)
            }
        );
        assert_eq!(d.run.results_from, None, "the sources' resultsFrom count");
        assert_eq!(d.run_tag(), definition::run_tag(&s));
        assert_ne!(d.run_tag(), resumed.run_tag());
        assert!(!d.accept_untagged);
    }
}
