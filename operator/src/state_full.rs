//! What the checkpoints say of the workers' bound on open (group, window) state (docs/running.md,
//! "A bound on open state"): which partitions refused records as `state_full` recently, and the
//! `Degraded=True, reason StateFull` message that names them and what to do. Pure: the time is
//! given.
//!
//! "Recently": the last refusal a partition's checkpoint reports is at most [`RECENT`] old, or
//! two checkpoint intervals when that is longer (a worker reports a refusal with its next
//! checkpoint, up to one interval later). The condition clears once no partition has refused a
//! record for that long.

use std::time::Duration;

use weir_crds::human_ms;
use weir_crds::StreamJob;

use crate::observation::StateFullReport;

/// A partition that refused a record as `state_full` within this long (at least) is refusing.
pub const RECENT: Duration = Duration::from_secs(300);

/// Partitions named in the message at most; the others are counted.
const NAMED: usize = 8;

/// How long after its last refusal a partition still counts as refusing, for `job`: [`RECENT`],
/// or two checkpoint intervals when longer.
pub fn recent_ms(job: &StreamJob) -> i64 {
    let interval = job.spec.checkpoint.interval_ms();
    let recent = i64::try_from(RECENT.as_millis()).unwrap_or(i64::MAX);
    recent.max(interval.saturating_mul(2))
}

/// The partitions of `reports` that refused a record within [`recent_ms`] of `now_ms`.
pub fn refusing<'a>(
    job: &StreamJob,
    reports: &'a [StateFullReport],
    now_ms: i64,
) -> Vec<&'a StateFullReport> {
    let recent = recent_ms(job);
    reports
        .iter()
        .filter(|r| now_ms.saturating_sub(r.state_full.last_refused_at_ms) <= recent)
        .collect()
}

/// The `Degraded` message while partitions of `job` refuse records as `state_full` (`None`:
/// none did within [`recent_ms`] of `now_ms`).
pub fn warning(job: &StreamJob, reports: &[StateFullReport], now_ms: i64) -> Option<String> {
    let refusing = refusing(job, reports, now_ms);
    if refusing.is_empty() {
        return None;
    }
    let mut named: Vec<String> = refusing
        .iter()
        .take(NAMED)
        .map(|r| {
            let (stage, what) = if r.merge {
                ("merge partition", "partials")
            } else {
                ("source partition", "records")
            };
            format!(
                "{stage} {} ({} {what} refused)",
                r.partition, r.state_full.refused
            )
        })
        .collect();
    if refusing.len() > NAMED {
        named.push(format!("{} more partitions", refusing.len() - NAMED));
    }
    let dead_letters = if job.spec.dead_letter.is_some() {
        "are in the dead-letter topic with reason state_full"
    } else {
        "are counted in weir_records_rejected_total{reason=\"state_full\"} (the job has no \
         dead-letter topic)"
    };
    Some(format!(
        "the workers' bound on open (group, window) state is full: {} refused records within \
         the last {} (counts since the partition's run began). They {dead_letters} and are \
         missing from their windows' results. Give the workers more memory \
         (spec.worker.resources.limits.memory: a worker's bound is half its memory limit at \
         1,200 bytes a row), or more workers (spec.parallelism; the bound is per worker); \
         running weir yourself, raise --max-open-rows. See docs/running.md, \"A bound on open \
         state\"",
        named.join(", "),
        human_ms(recent_ms(job)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_crds::checkpoint::StateFull;

    fn job(interval: &str, dead_letter: bool) -> StreamJob {
        let dlq = if dead_letter {
            "\n  deadLetter: {kafka: {topic: dlq}}"
        } else {
            ""
        };
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: \
             n}}\nspec:\n  source: {{kafka: {{bootstrapServers: b, topic: t}}}}\n  groupBy: \
             [g]\n  window: {{type: tumbling, size: 1m}}\n  aggregations: [{{name: n, fn: \
             count}}]\n  sink: {{kafka: {{topic: o}}}}{dlq}\n  checkpoint: {{interval: \
             {interval}}}\n"
        );
        weir_crds::parse_stream_job(&yaml).expect("job").job
    }

    fn report(merge: bool, partition: i32, refused: u64, at: i64) -> StateFullReport {
        StateFullReport {
            merge,
            partition,
            state_full: StateFull {
                refused,
                last_refused_at_ms: at,
            },
        }
    }

    #[test]
    fn recently_is_five_minutes_or_two_checkpoint_intervals() {
        assert_eq!(recent_ms(&job("10s", true)), 300_000);
        assert_eq!(recent_ms(&job("10m", true)), 1_200_000);
        let j = job("10s", true);
        let reports = [report(false, 0, 5, 1_000), report(true, 2, 7, 200_000)];
        let now = 1_000 + 300_000;
        assert_eq!(refusing_at(&j, &reports, now), [0, 2]);
        assert_eq!(refusing_at(&j, &reports, now + 1), [2]);
        assert!(warning(&j, &reports, 200_000 + 300_001).is_none());
    }

    fn refusing_at(j: &StreamJob, reports: &[StateFullReport], now: i64) -> Vec<i32> {
        refusing(j, reports, now)
            .iter()
            .map(|r| r.partition)
            .collect()
    }

    #[test]
    fn the_message_names_partitions_counts_and_what_to_do() {
        let reports = [report(false, 3, 1234, 0), report(true, 0, 56, 0)];
        let m = warning(&job("10s", true), &reports, 60_000).expect("a warning");
        for part in [
            "source partition 3 (1234 records refused)",
            "merge partition 0 (56 partials refused)",
            "within the last 5m",
            "dead-letter topic with reason state_full",
            "spec.worker.resources.limits.memory",
            "--max-open-rows",
            "docs/running.md",
        ] {
            assert!(m.contains(part), "{part:?} not in {m}");
        }
        let m = warning(&job("10m", false), &reports, 60_000).expect("a warning");
        assert!(m.contains("within the last 20m"), "{m}");
        assert!(m.contains("no dead-letter topic"), "{m}");
        let many: Vec<StateFullReport> = (0..11).map(|p| report(false, p, 1, 0)).collect();
        let m = warning(&job("10s", true), &many, 0).expect("a warning");
        assert!(
            m.contains("source partition 7 (1 records refused), 3 more partitions"),
            "{m}"
        );
    }
}
