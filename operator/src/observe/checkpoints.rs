//! The observe step's reads of the checkpoints: the job's checkpoint ConfigMaps (one list), or
//! its records in object storage ([`crate::object_checkpoints`]), summarised per stage: the
//! largest epoch, the oldest latest write, the next offset per partition. Reads only.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::warn;
use weir_crds::checkpoint::{self, PartitionCheckpoint, StateFull};
use weir_crds::{names, ObjectStore, StreamJob};

use crate::config::OperatorConfig;
use crate::error::Error;
use crate::object_checkpoints;
use crate::observation::CheckpointMarks;
use crate::secrets::Resolved;

/// The key of a checkpoint ConfigMap holding the JSON checkpoint (the workers write it).
pub const CHECKPOINT_KEY: &str = checkpoint::CONFIG_MAP_KEY;

/// The checkpoints of one stage of a job, summarised.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointSummary {
    /// Largest epoch of any checkpoint (whatever its topic).
    pub max_epoch: Option<i64>,
    /// Oldest of the partitions' latest writes (ms): one partition that stopped checkpointing
    /// shows here, which the newest would hide.
    pub oldest_written_at_ms: Option<i64>,
    /// Next offset to read, per partition of `topic` that has progress.
    pub next_offsets: BTreeMap<i32, i64>,
    /// The definition, first result window and reset of each partition of `topic` that has a
    /// checkpoint.
    pub marks: BTreeMap<i32, CheckpointMarks>,
    /// What each partition of `topic` reports of records refused as `state_full`, if any.
    pub state_full: BTreeMap<i32, StateFull>,
}

impl CheckpointSummary {
    /// Counts one checkpoint of a job reading `topic` (a record of another topic, the one the
    /// job read before, counts for the epoch only).
    pub fn add(&mut self, cp: &PartitionCheckpoint, topic: &str) {
        self.max_epoch = Some(self.max_epoch.map_or(cp.epoch, |m| m.max(cp.epoch)));
        if cp.topic != topic {
            return;
        }
        self.oldest_written_at_ms = Some(
            self.oldest_written_at_ms
                .map_or(cp.written_at_ms, |m| m.min(cp.written_at_ms)),
        );
        if let Some(p) = &cp.progress {
            self.next_offsets.insert(cp.partition, p.next_offset);
        }
        if let Some(s) = cp.state_full {
            self.state_full.insert(cp.partition, s);
        }
        self.marks.insert(
            cp.partition,
            CheckpointMarks {
                definition: cp.definition.clone(),
                results_from_ms: cp.results_from,
                reset: cp.reset.clone(),
                epoch: cp.epoch,
            },
        );
    }
}

/// The checkpoints of a job, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoints {
    /// The records of both stages.
    pub records: Vec<PartitionCheckpoint>,
    /// Names of the checkpoint ConfigMaps that exist (`configMap` store).
    pub existing: BTreeSet<String>,
}

impl Checkpoints {
    /// The topics the records name: the source topic (stage 1) and the repartition topic
    /// (merge stage), or topics the job read before.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.records.iter().map(|cp| cp.topic.as_str())
    }

    /// The stage reading `topic`, summarised; its largest epoch counts every record.
    pub fn summary(&self, topic: &str) -> CheckpointSummary {
        summarize(&self.records, topic)
    }
}

/// Parses the checkpoint ConfigMaps of a job. ConfigMaps without a checkpoint yet (created
/// empty by the operator) or that do not parse are skipped.
pub fn parse_config_maps(config_maps: &[ConfigMap]) -> Vec<PartitionCheckpoint> {
    let mut out = Vec::new();
    for cm in config_maps {
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(CHECKPOINT_KEY)) else {
            continue;
        };
        match serde_json::from_str::<PartitionCheckpoint>(text) {
            Ok(cp) if cp.format == checkpoint::FORMAT => out.push(cp),
            Ok(cp) => {
                warn!(configmap = ?cm.metadata.name, format = cp.format,
                    "checkpoint of a format this operator does not know");
            }
            Err(e) => {
                warn!(configmap = ?cm.metadata.name, error = %e, "unreadable checkpoint");
            }
        }
    }
    out
}

/// Summarises the checkpoints of a job reading `topic`. Of two records of one partition (a
/// two-stage job's merge stage moved from its ConfigMap names of the previous version to the
/// current ones, and the legacy record stays: docs/checkpoints.md, "Migration") the newer,
/// by epoch then write time, is the partition's; every record's epoch counts.
pub fn summarize(records: &[PartitionCheckpoint], topic: &str) -> CheckpointSummary {
    let mut newest: BTreeMap<(&str, i32), &PartitionCheckpoint> = BTreeMap::new();
    let mut max_epoch = None;
    for cp in records {
        max_epoch = max_epoch.max(Some(cp.epoch));
        let slot = newest
            .entry((cp.topic.as_str(), cp.partition))
            .or_insert(cp);
        if (cp.epoch, cp.written_at_ms) > (slot.epoch, slot.written_at_ms) {
            *slot = cp;
        }
    }
    let mut s = CheckpointSummary::default();
    for cp in newest.values() {
        s.add(cp, topic);
    }
    s.max_epoch = max_epoch;
    s
}

/// Summarises the checkpoint ConfigMaps of a job reading `topic`.
pub fn summarize_checkpoints(config_maps: &[ConfigMap], topic: &str) -> CheckpointSummary {
    summarize(&parse_config_maps(config_maps), topic)
}

/// The checkpoints of `job`. `partitions`: the source's partition count, when known;
/// `merge`: a two-stage job's merge-stage partition count (the one the assignment uses, so
/// that every merge-stage record is read; both only matter to an object store, where each
/// record is read by partition). An object store the job names no credentials for is read only
/// when `config` allows ([`OperatorConfig::may_reach`]); otherwise nothing is read and
/// validation refuses the job.
pub async fn read(
    client: &Client,
    job: &StreamJob,
    partitions: Option<i32>,
    merge: Option<i32>,
    has_previous_assignment: bool,
    config: &OperatorConfig,
) -> Result<Checkpoints, Error> {
    let store = &job.spec.checkpoint.store;
    let (records, existing) = if store.config_map.is_some() {
        let (records, existing) = from_config_maps(client, job).await?;
        (records, existing)
    } else if let Some(store) = store.object_store.as_ref().filter(|s| config.may_reach(s)) {
        let records = from_object_store(
            client,
            job,
            store,
            partitions,
            merge,
            has_previous_assignment,
        )
        .await?;
        (records, BTreeSet::new())
    } else {
        (Vec::new(), BTreeSet::new())
    };
    Ok(Checkpoints { records, existing })
}

/// Both stages' checkpoint ConfigMaps, listed together by the job's checkpoint label.
async fn from_config_maps(
    client: &Client,
    job: &StreamJob,
) -> Result<(Vec<PartitionCheckpoint>, BTreeSet<String>), Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let selector = names::checkpoint_selector(&name);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ReadCheckpoints { job: name, source })?;
    let existing = list
        .items
        .iter()
        .filter_map(|cm| cm.metadata.name.clone())
        .collect();
    Ok((parse_config_maps(&list.items), existing))
}

/// The records of the source's `partitions` and, for a two-stage job, of the merge stage's
/// partitions (kept under [`weir_crds::checkpoint::MERGE_LOCATION`]).
///
/// Reading them may fail (the Secret missing, the store unreachable, credentials refused). If
/// the job ConfigMap holds a previous assignment, its epoch is at least every checkpoint's
/// (workers write only epochs the operator assigned), so the reconcile goes on without lag or
/// checkpoint time. Without one (a new job, or one recreated under the same name) the epoch of
/// a new assignment could fall below the checkpoints' and every worker would be fenced out: the
/// reconcile fails and is retried.
async fn from_object_store(
    client: &Client,
    job: &StreamJob,
    store: &ObjectStore,
    partitions: Option<i32>,
    merge: Option<i32>,
    has_previous_assignment: bool,
) -> Result<Vec<PartitionCheckpoint>, Error> {
    // Without a partition count there is no new assignment to compute, nor lag.
    let Some(partitions) = partitions else {
        return Ok(Vec::new());
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    let topic = &job.spec.source.kafka.topic.0;
    let records = match object_checkpoints::config(client, job, store).await? {
        Resolved::Ready(locations) => {
            let ns = job.metadata.namespace.as_deref();
            let repartition = weir_crds::topics::repartition_topic_names(ns, &name);
            read_both(&locations, topic, &repartition, partitions, merge).await
        }
        Resolved::MissingSecret { message } => Err(message),
    };
    match records {
        Ok(records) => Ok(records),
        Err(message) if has_previous_assignment => {
            warn!(job = %name, %message,
                "cannot read the object-store checkpoints; lag and last checkpoint time unknown");
            Ok(Vec::new())
        }
        Err(message) => Err(Error::ReadObjectStoreCheckpoints { job: name, message }),
    }
}

async fn read_both(
    locations: &object_checkpoints::Locations,
    topic: &str,
    repartition: &[String; 2],
    partitions: i32,
    merge: Option<i32>,
) -> Result<Vec<PartitionCheckpoint>, String> {
    let mut records = object_checkpoints::read(locations, &[topic], partitions).await?;
    if let Some(merge_partitions) = merge {
        // A legacy merge record counts if it is of either of the job's repartition topics (the
        // name it had before `weir_crds::topics`, or the current one).
        let merge = locations.merge();
        let topics = repartition.each_ref().map(String::as_str);
        records.extend(object_checkpoints::read(&merge, &topics, merge_partitions).await?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn cm(name: &str, checkpoint: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            data: checkpoint.map(|c| BTreeMap::from([(CHECKPOINT_KEY.to_string(), c.to_string())])),
            ..ConfigMap::default()
        }
    }

    /// A checkpoint exactly as the worker serialises `PartitionCheckpoint`.
    fn checkpoint(topic: &str, partition: i32, epoch: i64, at: i64, next: Option<i64>) -> String {
        let progress = next.map(|n| {
            serde_json::json!({"nextOffset": n, "replayFrom": n, "replayMaxEventTime": null,
                               "watermark": null, "emittedThrough": null})
        });
        serde_json::json!({"format": 1, "topic": topic, "partition": partition, "epoch": epoch,
                           "owner": "payments-worker-0", "writtenAtMs": at, "progress": progress})
        .to_string()
    }

    #[test]
    fn checkpoints_give_max_epoch_oldest_write_and_next_offsets() {
        let cms = [
            cm("payments-config", None),
            cm(
                "payments-checkpoint-0",
                Some(&checkpoint("payments", 0, 3, 2_000, Some(40))),
            ),
            cm(
                "payments-checkpoint-1",
                Some(&checkpoint("payments", 1, 2, 1_000, None)),
            ),
            cm("payments-checkpoint-2", Some("{not json")),
            // A checkpoint of the topic the job read before: its epoch counts, nothing else.
            cm(
                "payments-checkpoint-3",
                Some(&checkpoint("old", 3, 7, 10, Some(5))),
            ),
        ];
        let s = summarize_checkpoints(&cms, "payments");
        assert_eq!(s.max_epoch, Some(7));
        assert_eq!(s.oldest_written_at_ms, Some(1_000));
        assert_eq!(s.next_offsets, BTreeMap::from([(0, 40)]));
    }

    #[test]
    fn a_moved_merge_checkpoint_counts_once_at_its_newer_record() {
        let rep = "weir-shop-payments-repartition";
        let cms = [
            // The previous version's name, left read-only after the move.
            cm(
                "payments-merge-checkpoint-0",
                Some(&checkpoint(rep, 0, 3, 1_000, Some(10))),
            ),
            cm(
                "payments-checkpoint-merge-0",
                Some(&checkpoint(rep, 0, 3, 5_000, Some(25))),
            ),
        ];
        let s = summarize_checkpoints(&cms, rep);
        assert_eq!(s.max_epoch, Some(3));
        assert_eq!(
            s.oldest_written_at_ms,
            Some(5_000),
            "not the stale legacy write"
        );
        assert_eq!(s.next_offsets, BTreeMap::from([(0, 25)]));
    }
}
