//! The observe step: reads only. For one StreamJob it reads, in this order, the job's children
//! and Secrets ([`children`]: the source credentials, the job ConfigMap's previous assignment),
//! Kafka ([`topics`]: the source topic, the repartition topics the job may use), the
//! checkpoints ([`checkpoints`]: ConfigMaps, or records in object storage), then Kafka's high
//! watermarks for lag and the StatefulSet. It writes nothing, anywhere. A job ConfigMap or
//! StatefulSet of the job's name that is not the job's own is not used: it is a
//! [`NameConflict`](crate::observation::NameConflict) in the observation.
//!
//! The repartition topic is read before the checkpoints because its partition count is how many
//! merge-stage records there are to read (see [`existing_merge_partitions`]); which topic the
//! job uses, and whether it is the job's, is decided after them
//! ([`weir_crds::topics::repartition_topic_in_use`]): its own assignment names it, or its
//! merge-stage checkpoints do, or nothing does.

pub mod checkpoints;
pub mod children;
pub mod topics;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weir_crds::plan::merge_partitions;
use weir_crds::topics::{repartition_topic_in_use, RepartitionTopic};
use weir_crds::StreamJob;

use crate::config::OperatorConfig;
use crate::error::Error;
use crate::kafka::KafkaClient;
use crate::memory::Memory;
use crate::observation::{
    existing_merge_partitions, KafkaConnection, Observation, StateFullReport, TopicObservation,
};

/// Reads everything the later steps need for `job`. Only reads (`memory`: what the operator
/// applied and nobody changed since, read back instead of asking the API server again).
pub async fn observe(
    client: &kube::Client,
    kafka: &dyn KafkaClient,
    memory: &Memory,
    job: &StreamJob,
    config: &OperatorConfig,
) -> Result<Observation, Error> {
    let (connection, refused_secret_keys) = children::source_access(client, job).await?;
    let (connection, topic) = topics::source(kafka, connection, job).await;
    let mut name_conflicts = Vec::new();
    let (previous_assignment, assigned) = children::previous_assignment(client, memory, job)
        .await?
        .unwrap_or_else(|conflict| {
            name_conflicts.push(conflict);
            (None, None)
        });
    let sources = topic.partitions().unwrap_or(0);
    let two_stage = !job.spec.co_partitioned();
    // Only asked when the source could be read: a broker that is down already blocks the job.
    let candidates = match &topic {
        TopicObservation::Found { .. } if two_stage => {
            topics::repartition_candidates(job, assigned.as_deref())
        }
        _ => Vec::new(),
    };
    let described = topics::repartition(kafka, connection.as_ref(), &candidates).await;
    // Merge-stage records to read: as many as the first candidate that has a count.
    let existing = described.iter().find_map(|(name, t)| {
        existing_merge_partitions(Some(t), previous_assignment.as_ref(), name)
    });
    let read = checkpoints::read(
        client,
        job,
        topic.partitions(),
        two_stage.then(|| merge_partitions(&job.spec, existing, sources)),
        previous_assignment.is_some(),
        config,
    )
    .await?;

    // Two-stage jobs: the topic the merge stage uses, what claims it, how many partitions it
    // has (or will have).
    let repartition_topic = two_stage.then(|| {
        let ns = job.metadata.namespace.as_deref();
        let name = job.metadata.name.as_deref().unwrap_or_default();
        repartition_topic_in_use(ns, name, assigned.as_deref(), read.topics())
    });
    let repartition = repartition_topic.as_ref().and_then(|t| {
        described
            .iter()
            .find(|(name, _)| *name == t.name)
            .map(|(_, found)| found.clone())
    });
    let merge = repartition_topic.as_ref().map(|t| {
        let existing =
            existing_merge_partitions(repartition.as_ref(), previous_assignment.as_ref(), &t.name);
        (
            t.name.clone(),
            merge_partitions(&job.spec, existing, sources),
        )
    });
    let source = read.summary(&job.spec.source.kafka.topic.0);
    let merge_read = merge.as_ref().map(|(name, _)| read.summary(name));

    let lag = topics::source_lag(kafka, connection.as_ref(), job, &topic, &source).await;
    let repartition_lag = match (&merge, &merge_read) {
        (Some((name, _)), Some(read)) => {
            topics::merge_lag(kafka, connection.as_ref(), name, read).await
        }
        _ => None,
    };
    let stateful_set = children::stateful_set(client, job)
        .await?
        .unwrap_or_else(|conflict| {
            name_conflicts.push(conflict);
            None
        });
    let worker_pods = children::suspended_worker_pods(client, job).await?;
    Ok(Observation {
        topic,
        previous_assignment,
        max_checkpoint_epoch: source.max_epoch,
        stateful_set,
        name_conflicts,
        lag,
        processed: (!source.next_offsets.is_empty()).then(|| source.next_offsets.values().sum()),
        autoscale: None,
        repartition_lag,
        repartition_topic,
        repartition,
        last_checkpoint_time: source.oldest_written_at_ms.and_then(time_from_ms),
        state_full: state_full(&source, merge_read.as_ref()),
        checkpoint_marks: source.marks,
        worker_pods,
        existing_checkpoints: read.existing,
        connection,
        refused_secret_keys,
    })
}

/// The repartition topic of a job being deleted, and what claims it, as [`observe`] finds it
/// (its own job ConfigMap's assignment, its merge-stage checkpoints); and whether it exists
/// (`None`: the brokers could not be asked). Read before its checkpoints are deleted: they may
/// be the only claim. Only reads.
pub async fn repartition_of_deleted(
    client: &kube::Client,
    kafka: &dyn KafkaClient,
    conn: Option<&KafkaConnection>,
    job: &StreamJob,
    config: &OperatorConfig,
) -> Result<(RepartitionTopic, Option<TopicObservation>), Error> {
    // Read from the API server, never from memory: what is deleted next depends on it.
    let (previous_assignment, assigned) =
        children::previous_assignment(client, &Memory::default(), job)
            .await?
            .unwrap_or((None, None));
    let candidates = topics::repartition_candidates(job, assigned.as_deref());
    let described = topics::repartition(kafka, conn, &candidates).await;
    let existing = described.iter().find_map(|(name, t)| {
        existing_merge_partitions(Some(t), previous_assignment.as_ref(), name)
    });
    let read = checkpoints::read(
        client,
        job,
        Some(0),
        Some(merge_partitions(&job.spec, existing, 1)),
        true,
        config,
    )
    .await?;
    let ns = job.metadata.namespace.as_deref();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let t = repartition_topic_in_use(ns, name, assigned.as_deref(), read.topics());
    let state = described
        .into_iter()
        .find(|(n, _)| *n == t.name)
        .map(|(_, s)| s);
    Ok((t, state))
}

/// The partitions of both stages whose checkpoints report records refused as `state_full`.
fn state_full(
    source: &checkpoints::CheckpointSummary,
    merge: Option<&checkpoints::CheckpointSummary>,
) -> Vec<StateFullReport> {
    let stage = |s: &checkpoints::CheckpointSummary, merge: bool| {
        s.state_full
            .iter()
            .map(move |(p, state_full)| StateFullReport {
                merge,
                partition: *p,
                state_full: *state_full,
            })
            .collect::<Vec<_>>()
    };
    let mut out = stage(source, false);
    out.extend(merge.map(|m| stage(m, true)).unwrap_or_default());
    out
}

fn time_from_ms(ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(Time)
}
