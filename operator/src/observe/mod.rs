//! The observe step: reads only. For one StreamJob it reads, in this order, the job's children
//! and Secrets ([`children`]: the source credentials, the job ConfigMap's previous assignment),
//! Kafka ([`topics`]: the source topic, the repartition topic), the checkpoints
//! ([`checkpoints`]: ConfigMaps, or records in object storage), then Kafka's high watermarks
//! for lag and the StatefulSet. It writes nothing, anywhere. A job ConfigMap or StatefulSet of
//! the job's name that is not the job's own is not used: it is a
//! [`NameConflict`](crate::observation::NameConflict) in the observation.
//!
//! The repartition topic is read before the checkpoints because its partition count is how many
//! merge-stage records there are to read (see [`existing_merge_partitions`]).

pub mod checkpoints;
pub mod children;
pub mod topics;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weir_crds::plan::merge_partitions;
use weir_crds::StreamJob;

use crate::config::OperatorConfig;
use crate::error::Error;
use crate::kafka::KafkaClient;
use crate::observation::{existing_merge_partitions, Observation};

/// Reads everything the later steps need for `job`. Only reads.
pub async fn observe(
    client: &kube::Client,
    kafka: &dyn KafkaClient,
    job: &StreamJob,
    config: &OperatorConfig,
) -> Result<Observation, Error> {
    let connection = children::connection(client, job).await?;
    let (connection, topic) = topics::source(kafka, connection, job).await;
    let mut name_conflicts = Vec::new();
    let previous_assignment = children::previous_assignment(client, job)
        .await?
        .unwrap_or_else(|conflict| {
            name_conflicts.push(conflict);
            None
        });
    let repartition = topics::repartition(kafka, connection.as_ref(), job, &topic).await;

    // Two-stage jobs: the merge stage's topic, and how many partitions it has (or will have).
    let merge = (!job.spec.co_partitioned()).then(|| {
        let name = topics::repartition_name(job);
        let existing =
            existing_merge_partitions(repartition.as_ref(), previous_assignment.as_ref(), &name);
        let sources = topic.partitions().unwrap_or(0);
        let count = merge_partitions(&job.spec, existing, sources);
        (name, count)
    });
    let read = checkpoints::read(
        client,
        job,
        topic.partitions(),
        merge.as_ref().map(|(name, count)| (name.as_str(), *count)),
        previous_assignment.is_some(),
        config,
    )
    .await?;

    let lag = topics::source_lag(kafka, connection.as_ref(), job, &topic, &read.source).await;
    let repartition_lag = match &merge {
        Some((name, _)) => topics::merge_lag(kafka, connection.as_ref(), name, &read.merge).await,
        None => None,
    };
    let stateful_set = children::stateful_set(client, job)
        .await?
        .unwrap_or_else(|conflict| {
            name_conflicts.push(conflict);
            None
        });

    Ok(Observation {
        topic,
        previous_assignment,
        max_checkpoint_epoch: read.source.max_epoch,
        stateful_set,
        name_conflicts,
        lag,
        repartition_lag,
        repartition,
        last_checkpoint_time: read.source.oldest_written_at_ms.and_then(time_from_ms),
        existing_checkpoints: read.existing,
        connection,
    })
}

fn time_from_ms(ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(Time)
}
