//! The observe step's reads of Kafka: the source topic (partitions, `retention.ms`), the
//! repartition topics a two-stage job may use, and the high watermarks that turn checkpointed
//! offsets into lag. Reads only, through [`KafkaClient`].

use std::collections::BTreeMap;

use weir_crds::topics::{repartition_topic_in_use, Claim};
use weir_crds::StreamJob;

use crate::kafka::KafkaClient;
use crate::observation::{KafkaConnection, TopicObservation};
use crate::observe::checkpoints::CheckpointSummary;
use crate::secrets::Resolved;

/// Two-stage jobs: the repartition topics worth asking Kafka about before the checkpoints are
/// read: the one the job's own assignment names (`assigned`) when it is one of the job's names,
/// otherwise both names the job may use (the new one, and the legacy one its checkpoints may
/// still name; see [`weir_crds::topics`]).
pub fn repartition_candidates(job: &StreamJob, assigned: Option<&str>) -> Vec<String> {
    let ns = job.metadata.namespace.as_deref();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let by_assignment = repartition_topic_in_use(ns, name, assigned, []);
    if by_assignment.claim == Claim::Assignment {
        return vec![by_assignment.name];
    }
    weir_crds::topics::repartition_topic_names(ns, name).into()
}

/// The source topic, and the connection when there is one (a missing credentials Secret is
/// [`TopicObservation::CredentialsMissing`], with the Secret named). When the brokers cannot
/// be asked, librdkafka's error is logged here, as a warning for the operator's administrator:
/// the status does not show it ([`crate::kafka::KafkaFailure`]).
pub async fn source(
    kafka: &dyn KafkaClient,
    connection: Resolved<KafkaConnection>,
    job: &StreamJob,
) -> (Option<KafkaConnection>, TopicObservation) {
    match connection {
        Resolved::Ready(conn) => {
            let topic = &job.spec.source.kafka.topic.0;
            let observed = kafka.topic(&conn, topic).await;
            if let TopicObservation::BrokerUnreachable { detail } = &observed {
                tracing::warn!(%topic, bootstrap_servers = %conn.bootstrap_servers,
                    error = %detail, "cannot read the source topic's metadata (BrokerUnreachable)");
            }
            (Some(conn), observed)
        }
        Resolved::MissingSecret { message } => {
            (None, TopicObservation::CredentialsMissing { message })
        }
    }
}

/// Two-stage jobs: whether each of `candidates` exists, and its partitions (nothing without a
/// connection). librdkafka's error, when the brokers cannot be asked, is logged here.
pub async fn repartition(
    kafka: &dyn KafkaClient,
    conn: Option<&KafkaConnection>,
    candidates: &[String],
) -> Vec<(String, TopicObservation)> {
    let mut out = Vec::new();
    if let Some(conn) = conn {
        for name in candidates {
            let observed = kafka.topic_partitions(conn, name).await;
            if let TopicObservation::BrokerUnreachable { detail } = &observed {
                tracing::warn!(topic = %name, bootstrap_servers = %conn.bootstrap_servers,
                    error = %detail, "cannot read the repartition topic's metadata");
            }
            out.push((name.clone(), observed));
        }
    }
    out
}

/// Records of the source not yet checkpointed, when the partition count and some progress are
/// known and the watermarks can be read.
pub async fn source_lag(
    kafka: &dyn KafkaClient,
    conn: Option<&KafkaConnection>,
    job: &StreamJob,
    topic: &TopicObservation,
    checkpoints: &CheckpointSummary,
) -> Option<i64> {
    let name = &job.spec.source.kafka.topic.0;
    match (conn, topic.partitions()) {
        (Some(conn), Some(p)) if !checkpoints.next_offsets.is_empty() => {
            topic_lag(kafka, conn, name, p, &checkpoints.next_offsets).await
        }
        _ => None,
    }
}

/// Partials in the repartition topic `name` not yet checkpointed by the merge stage, over the
/// partitions that have a checkpoint.
pub async fn merge_lag(
    kafka: &dyn KafkaClient,
    conn: Option<&KafkaConnection>,
    name: &str,
    checkpoints: &CheckpointSummary,
) -> Option<i64> {
    let conn = conn?;
    let count = checkpoints.next_offsets.keys().max().map(|p| p + 1)?;
    topic_lag(kafka, conn, name, count, &checkpoints.next_offsets).await
}

async fn topic_lag(
    kafka: &dyn KafkaClient,
    conn: &KafkaConnection,
    topic: &str,
    partitions: i32,
    next_offsets: &BTreeMap<i32, i64>,
) -> Option<i64> {
    match kafka.high_watermarks(conn, topic, partitions).await {
        Ok(high) => Some(lag(next_offsets, &high)),
        Err(e) => {
            tracing::warn!(%topic, error = %e, "cannot read high watermarks");
            None
        }
    }
}

/// Records not yet checkpointed: Σ (high watermark − next offset) over the partitions that have
/// progress, never negative per partition.
pub fn lag(next_offsets: &BTreeMap<i32, i64>, high_watermarks: &[i64]) -> i64 {
    next_offsets
        .iter()
        .filter_map(|(p, next)| {
            let high = high_watermarks.get(usize::try_from(*p).ok()?)?;
            Some((high - next).max(0))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_sums_high_watermark_minus_next_offset_never_negative() {
        let next = BTreeMap::from([(0, 40), (1, 100), (2, 7), (9, 1)]);
        // Partition 1 is ahead of a stale watermark; partition 9 no longer exists.
        assert_eq!(lag(&next, &[100, 90, 10]), 60 + 3);
        assert_eq!(lag(&BTreeMap::new(), &[5]), 0);
    }
}
