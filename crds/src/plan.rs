//! The planning of a job into stages and an assignment: which worker ordinal reads which source
//! partition, whether the merge stage runs and over how many partitions of the repartition
//! topic, and the topic the operator creates for it. Pure (no I/O, no clock): the operator
//! plans a job with it from what it observed, and local mode (`weir run`) can plan with it from
//! the partition counts it reads, so both run a job the same way.

use std::collections::BTreeMap;

use crate::assignment::Assignment;
use crate::StreamJobSpec;

/// A topic to create: the repartition topic of a two-stage job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Its replication factor; `None`: the brokers' `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Topic configs (`retention.ms`, `cleanup.policy`, ...).
    pub configs: BTreeMap<String, String>,
}

/// Number of workers for `partitions`: `spec.parallelism` (what `/scale` sets), kept within
/// `spec.autoscaling`'s bounds when present, and never more than the partitions (an extra
/// worker would own nothing) nor fewer than one.
pub fn worker_count(spec: &StreamJobSpec, partitions: i32) -> i32 {
    let mut n = spec.parallelism;
    if let Some(a) = &spec.autoscaling {
        n = n.max(a.min_replicas).min(a.max_replicas);
    }
    n.min(partitions).max(1)
}

/// Partitions of the merge stage (of the repartition topic) of a job whose source has `sources`
/// partitions. `existing`: the count the repartition topic already has, when known; it wins,
/// because routing is by hash of the group modulo the count, so a change would send a group's
/// partials of one window to two merges, each closing a partial result. Otherwise (the topic is
/// to be created) `spec.repartition.partitions`, by default the source's count.
pub fn merge_partitions(spec: &StreamJobSpec, existing: Option<i32>, sources: i32) -> i32 {
    existing.unwrap_or_else(|| spec.repartition.partitions.unwrap_or(sources))
}

/// The assignment of a job whose source has `sources` partitions, over `workers` ordinals,
/// under `epoch`: the source partitions round-robin (balanced, deterministic), and for a job
/// whose groups span partitions ([`StreamJobSpec::co_partitioned`] false) the merge stage's
/// `merge_partitions` partitions of `repartition_topic` (the job's, see
/// [`crate::topics::repartition_topic_in_use`]), spread over the same workers.
pub fn assignment(
    spec: &StreamJobSpec,
    repartition_topic: &str,
    sources: i32,
    workers: i32,
    merge_partitions: i32,
    epoch: i64,
) -> Assignment {
    let a = Assignment::round_robin(sources, workers.max(1) as usize, epoch);
    if spec.co_partitioned() {
        return a;
    }
    a.with_merge(repartition_topic, merge_partitions, sources)
}

/// Configs of a new repartition topic. Partials are needed until the merge stage has
/// checkpointed past them, like the source records until the first stage has: the source's
/// `retention.ms` when known, otherwise the brokers' default. Deleted by time, never compacted:
/// every partial counts, not only the last per key.
pub fn repartition_topic_configs(source_retention_ms: Option<i64>) -> BTreeMap<String, String> {
    let mut c = BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]);
    if let Some(ms) = source_retention_ms {
        c.insert("retention.ms".to_string(), ms.to_string());
    }
    c
}

/// The repartition topic `name` as it is created: `partitions` partitions, the spec's
/// replication factor, [`repartition_topic_configs`].
pub fn new_repartition_topic(
    spec: &StreamJobSpec,
    name: &str,
    partitions: i32,
    source_retention_ms: Option<i64>,
) -> NewTopic {
    NewTopic {
        name: name.to_string(),
        partitions,
        replication_factor: spec.repartition.replication_factor,
        configs: repartition_topic_configs(source_retention_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> StreamJobSpec {
        let text = format!(
            "apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: payments, namespace: shop}}
spec:
  source: {{kafka: {{bootstrapServers: 'kafka:9092', topic: payments}}}}
  window: {{type: tumbling, size: 1m}}
  aggregations: [{{name: n, fn: count}}]
  sink: {{kafka: {{topic: out}}}}
  parallelism: 2
{extra}"
        );
        match crate::parse_stream_job(&text) {
            Ok(parsed) => parsed.job.spec,
            Err(e) => panic!("fixture: {e}"),
        }
    }

    #[test]
    fn a_two_stage_job_spreads_the_merge_stage_over_the_same_workers() {
        let s = spec("  groupBy: [merchant]\n  repartition: {partitions: 4}");
        let a = assignment(&s, "weir.shop.payments.repartition", 3, 2, 4, 7);
        assert_eq!(a.workers, [vec![0, 2], vec![1]]);
        assert_eq!(a.epoch, 7);
        let m = a.merge.expect("merge stage");
        assert_eq!(m.topic, "weir.shop.payments.repartition");
        assert_eq!(m.sources, 3);
        assert_eq!(m.workers, [vec![0, 2], vec![1, 3]]);
        // The existing topic's count wins over the spec's.
        assert_eq!(merge_partitions(&s, Some(6), 3), 6);
        assert_eq!(merge_partitions(&s, None, 3), 4);
        assert_eq!(merge_partitions(&spec("  groupBy: [merchant]"), None, 3), 3);
    }

    #[test]
    fn a_co_partitioned_job_has_one_stage() {
        let s = spec("  groupByKey: true");
        assert_eq!(assignment(&s, "t", 3, 5, 3, 1).merge, None);
        assert_eq!(worker_count(&s, 1), 1);
        assert_eq!(worker_count(&s, 3), 2);
    }

    #[test]
    fn the_repartition_topic_keeps_partials_as_long_as_the_source_keeps_records() {
        let s = spec("  groupBy: [merchant]\n  repartition: {replicationFactor: 3}");
        let t = new_repartition_topic(&s, "weir.default.payments.repartition", 5, Some(86_400_000));
        assert_eq!(t.name, "weir.default.payments.repartition");
        assert_eq!((t.partitions, t.replication_factor), (5, Some(3)));
        assert_eq!(t.configs["cleanup.policy"], "delete");
        assert_eq!(t.configs["retention.ms"], "86400000");
        assert!(!repartition_topic_configs(None).contains_key("retention.ms"));
    }
}
