//! What the observe step read for one StreamJob, as plain data: the input of the pure steps
//! (`validate`, `desired`, `status`) and of `apply`. No client, no I/O: the observe step
//! ([`crate::observe`]) fills it, and tests build it by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use weir_crds::assignment::Assignment;
use weir_crds::checkpoint::StateFull;
use weir_crds::topics::RepartitionTopic;

/// A topic, as Kafka metadata showed it.
#[derive(Clone, Debug, PartialEq)]
pub enum TopicObservation {
    /// The topic exists.
    Found {
        /// Its partition count (at least 1; a count below 1 is treated as unknown).
        partitions: i32,
        /// Its `retention.ms`; `None` when unknown or infinite (`-1`).
        retention_ms: Option<i64>,
    },
    /// The brokers answered, and have no such topic.
    NotFound,
    /// The brokers could not be asked (connection, TLS, authentication, timeout), or their
    /// metadata of the topic carried an error.
    BrokerUnreachable {
        /// librdkafka's error (never contains credentials), for the operator's log only: the
        /// status and Events say the same thing whatever it is, since it would tell the job's
        /// owner which ports answer on an address of their choosing
        /// ([`crate::kafka::KafkaFailure`]).
        detail: String,
    },
    /// The source's credentials Secret does not exist, so the brokers were not asked.
    CredentialsMissing {
        /// For a person: names the Secret and the spec field that references it.
        message: String,
    },
}

impl TopicObservation {
    /// The partition count, when known.
    pub fn partitions(&self) -> Option<i32> {
        match self {
            TopicObservation::Found { partitions, .. } if *partitions >= 1 => Some(*partitions),
            _ => None,
        }
    }
}

/// How to reach the source brokers: bootstrap servers and librdkafka properties (the spec's
/// `properties` overlaid with the credentials Secret's keys). Its `Debug` never shows values.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KafkaConnection {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Further librdkafka properties, some of them secret.
    pub properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An object that has the name of one of the job's children and is not the job's own: none of
/// its owner references is the job's (its uid, `controller: true`). The operator neither takes
/// it over nor changes anything else for the job while it exists: created by someone else, it
/// may be another team's workload, identity or permissions (a confused deputy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict {
    /// Its kind: `StatefulSet`, `ConfigMap`, ...
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its controller as `Kind/name`, when it has one (a Deployment, a StreamJob of the same
    /// name deleted before this one was created, ...).
    pub controller: Option<String>,
}

impl NameConflict {
    /// The conflict `existing`, an object of `kind` named like a child of the job whose uid is
    /// `job_uid`, makes: `None` when it is the job's own (so it is adopted, or simply applied).
    pub fn of(kind: &'static str, existing: &ObjectMeta, job_uid: Option<&str>) -> Option<Self> {
        let controller = existing
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        if controller.is_some_and(|o| job_uid == Some(o.uid.as_str())) {
            return None;
        }
        Some(NameConflict {
            kind,
            name: existing.name.clone().unwrap_or_default(),
            controller: controller.map(|o| format!("{}/{}", o.kind, o.name)),
        })
    }
}

impl fmt::Display for NameConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)?;
        match &self.controller {
            Some(c) => write!(f, " (controlled by {c})"),
            None => write!(f, " (no controller owner reference)"),
        }
    }
}

/// What a source partition's checkpoint says of the results it computes (DESIGN.md invariant 8):
/// the fields the workers record for edits, resets and start times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointMarks {
    /// [`weir_crds::definition::fingerprint`] of the spec the partition computes; `None`:
    /// written before fingerprints were recorded, read as the current definition.
    pub definition: Option<String>,
    /// The first window start (ms) that definition emits, when not every window.
    pub results_from_ms: Option<i64>,
    /// [`weir_crds::Reset::identity`] of the last reset the partition applied.
    pub reset: Option<String>,
    /// The assignment epoch the partition's owner last wrote at: below the assignment's while
    /// the partition is being handed off to its new worker (a worker that keeps a partition
    /// writes its next checkpoint at the new epoch).
    pub epoch: i64,
}

/// A partition whose checkpoint reports records refused as `state_full`: the workers' bound on
/// open (group, window) rows was reached ([`weir_crds::checkpoint::PartitionCheckpoint::state_full`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateFullReport {
    /// A partition of the merge stage (the repartition topic); else a source partition.
    pub merge: bool,
    /// The partition.
    pub partition: i32,
    /// What its checkpoint reports: how many were refused in its run, and when last.
    pub state_full: StateFull,
}

/// Everything observe read for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The source topic.
    pub topic: TopicObservation,
    /// The assignment in the existing job ConfigMap (`assignment.json`), if it exists, is the
    /// job's own and parses. Its epoch is the base of the next one.
    pub previous_assignment: Option<Assignment>,
    /// The largest epoch found in the job's checkpoints, if read. A job deleted and recreated
    /// under the same name loses its job ConfigMap (owned, so garbage-collected) but keeps its
    /// checkpoints (retained by default); without this, its new epoch 1 would be fenced out by
    /// the checkpoints' older-but-larger epoch forever.
    pub max_checkpoint_epoch: Option<i64>,
    /// The job's StatefulSet as it was read (before this reconcile applied anything); `None`
    /// when there is none or when the one of that name is not the job's own.
    pub stateful_set: Option<StatefulSet>,
    /// The job ConfigMap and the StatefulSet, when observe read one of that name that is not
    /// the job's own. (Apply reads the other children's owners before their first apply.)
    pub name_conflicts: Vec<NameConflict>,
    /// Records not yet checkpointed, summed over partitions, if computed.
    pub lag: Option<i64>,
    /// The source partitions' checkpointed next offsets, summed: how far the workers got (the
    /// autoscaler's read rate), when any checkpoint was read.
    pub processed: Option<i64>,
    /// Jobs with `spec.autoscaling`: the autoscaler's decision for this reconcile (made by the
    /// controller from this observation, before desired). The worker count follows it.
    pub autoscale: Option<crate::autoscale::Decision>,
    /// Two-stage jobs: partials in the repartition topic not yet checkpointed by the merge
    /// stage.
    pub repartition_lag: Option<i64>,
    /// Two-stage jobs: the repartition topic the job uses and what shows it is the job's
    /// ([`weir_crds::topics::repartition_topic_in_use`]); `None` for a one-stage job. Read
    /// from the job ConfigMap (when the job owns it) and the checkpoints.
    pub repartition_topic: Option<RepartitionTopic>,
    /// Two-stage jobs: that topic, as Kafka metadata showed it (`None` for a one-stage job, or
    /// when the brokers could not be asked about the source either). Apply creates it when
    /// `NotFound`; once it exists, its partition count is the one the assignment uses, whatever
    /// the spec says now ([`existing_merge_partitions`]); if nothing claims it, it is another's
    /// ([`Observation::repartition_conflict`]).
    pub repartition: Option<TopicObservation>,
    /// Time of the oldest of the partitions' latest checkpoints, if read.
    pub last_checkpoint_time: Option<Time>,
    /// Per source partition that has a checkpoint (of the source topic): its definition, first
    /// result window and reset. Empty when none was read.
    pub checkpoint_marks: BTreeMap<i32, CheckpointMarks>,
    /// The partitions (source partitions first, then the merge stage's) whose latest checkpoint
    /// reports records refused as `state_full`, whenever that was.
    pub state_full: Vec<StateFullReport>,
    /// Suspended jobs: the worker pods that still exist (terminating ones included), if listed.
    pub worker_pods: Option<usize>,
    /// Names of the checkpoint ConfigMaps that exist (`configMap` store), so that apply creates
    /// only the missing ones.
    pub existing_checkpoints: BTreeSet<String>,
    /// How to reach the source brokers, when the credentials could be read (the repartition
    /// topic is created on the source's cluster).
    pub connection: Option<KafkaConnection>,
    /// Keys of the source's credentials Secret that weir refuses (they load code or run a
    /// command, or override what weir sets itself), each naming the Secret and the key. The
    /// workers would refuse the Secret at startup; validate refuses the job first, as
    /// `InvalidSpec` ([`weir_crds::properties::refused_secret_keys`]).
    pub refused_secret_keys: Vec<weir_crds::FieldError>,
}

impl Observation {
    /// An observation that knows only the topic: no children, no checkpoints yet.
    pub fn new(topic: TopicObservation) -> Self {
        Observation {
            topic,
            previous_assignment: None,
            max_checkpoint_epoch: None,
            stateful_set: None,
            name_conflicts: Vec::new(),
            lag: None,
            processed: None,
            autoscale: None,
            repartition_lag: None,
            repartition_topic: None,
            repartition: None,
            last_checkpoint_time: None,
            checkpoint_marks: BTreeMap::new(),
            state_full: Vec::new(),
            worker_pods: None,
            existing_checkpoints: BTreeSet::new(),
            connection: None,
            refused_secret_keys: Vec::new(),
        }
    }
}

impl Observation {
    /// The repartition topic, when it exists and nothing of the job's names it (neither its
    /// assignment nor its checkpoints): a topic of this name that the job did not create. The
    /// job must not write into it, read it nor delete it; its status says `NameConflict`.
    pub fn repartition_conflict(&self) -> Option<&str> {
        match (&self.repartition_topic, &self.repartition) {
            (Some(t), Some(TopicObservation::Found { .. })) if !t.is_claimed() => Some(&t.name),
            _ => None,
        }
    }
}

/// The partition count the merge stage of a job already has, if any: the repartition topic's
/// when Kafka showed it; when the brokers could not be asked, the previous assignment's for the
/// same `topic` (the running workers' view); `None` when the topic is missing or unknown (it is
/// to be created with [`weir_crds::plan::merge_partitions`]'s count). One rule for both steps
/// that need it: observe, to read the merge stage's checkpoints, and desired, to assign them.
pub fn existing_merge_partitions(
    repartition: Option<&TopicObservation>,
    previous: Option<&Assignment>,
    topic: &str,
) -> Option<i32> {
    match repartition {
        Some(found @ TopicObservation::Found { .. }) => found.partitions(),
        Some(TopicObservation::BrokerUnreachable { .. })
        | Some(TopicObservation::CredentialsMissing { .. }) => previous
            .and_then(|a| a.merge.as_ref())
            .filter(|m| m.topic == topic)
            .map(|m| m.workers.iter().map(Vec::len).sum::<usize>() as i32)
            .filter(|p| *p > 0),
        Some(TopicObservation::NotFound) | None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_debug_hides_secret_values() {
        let c = KafkaConnection {
            bootstrap_servers: "kafka:9092".to_string(),
            properties: BTreeMap::from([("sasl.password".to_string(), "s3cret".to_string())]),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("sasl.password"));
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn only_an_object_the_job_controls_is_its_own() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let reference = |kind: &str, name: &str, uid: &str, controller| OwnerReference {
            api_version: "v1".to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            controller,
            block_owner_deletion: None,
        };
        let meta = |refs: Vec<OwnerReference>| ObjectMeta {
            name: Some("payments-worker".to_string()),
            owner_references: Some(refs),
            ..ObjectMeta::default()
        };
        let job = Some("uid-1");
        let ours = reference("StreamJob", "payments", "uid-1", Some(true));
        assert_eq!(
            NameConflict::of("Role", &meta(vec![ours.clone()]), job),
            None
        );
        let none = NameConflict::of("Role", &meta(vec![]), job).expect("a conflict");
        assert_eq!(
            none.to_string(),
            "Role payments-worker (no controller owner reference)"
        );
        // The job named, but not as controller: not enough.
        let weak = reference("StreamJob", "payments", "uid-1", None);
        assert!(NameConflict::of("Role", &meta(vec![weak]), job).is_some());
        // A StreamJob of the same name, deleted and created again: another uid.
        let old = reference("StreamJob", "payments", "uid-0", Some(true));
        let c = NameConflict::of("StatefulSet", &meta(vec![old]), job).expect("a conflict");
        assert_eq!(c.controller.as_deref(), Some("StreamJob/payments"));
        let other = reference("Deployment", "shop-api", "uid-9", Some(true));
        assert!(NameConflict::of("Service", &meta(vec![other, ours.clone()]), job).is_some());
        assert!(NameConflict::of("Role", &meta(vec![ours]), None).is_some());
    }

    #[test]
    fn the_merge_stage_keeps_the_partitions_it_has() {
        let found = |partitions| TopicObservation::Found {
            partitions,
            retention_ms: None,
        };
        let topic = "weir-shop-payments-repartition";
        let previous = Assignment::round_robin(3, 2, 1).with_merge(topic, 5, 3);
        let unreachable = TopicObservation::BrokerUnreachable {
            detail: "timeout".to_string(),
        };
        let existing = |r: Option<&TopicObservation>, t: &str| {
            existing_merge_partitions(r, Some(&previous), t)
        };
        assert_eq!(existing(Some(&found(4)), topic), Some(4));
        assert_eq!(existing(Some(&found(0)), topic), None);
        assert_eq!(existing(Some(&unreachable), topic), Some(5));
        assert_eq!(existing(Some(&unreachable), "another-topic"), None);
        assert_eq!(existing(Some(&TopicObservation::NotFound), topic), None);
        assert_eq!(existing(None, topic), None);
    }
}
