//! What the observe step reads for one StreamJob, as plain data. Observe only reads (the job's
//! children, Kafka metadata, checkpoints); `desired` and `status` are pure functions of this.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weir_crds::assignment::Assignment;

/// The source topic, as Kafka metadata showed it.
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
    /// The brokers could not be asked (connection, authentication, timeout).
    BrokerUnreachable {
        /// What failed, for a person (never contains credentials).
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

/// Everything observe read for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The source topic.
    pub topic: TopicObservation,
    /// The assignment in the existing job ConfigMap (`assignment.json`), if it exists and
    /// parses. Its epoch is the base of the next one.
    pub previous_assignment: Option<Assignment>,
    /// The largest epoch found in the job's checkpoints, if read. A job deleted and recreated
    /// under the same name loses its job ConfigMap (owned, so garbage-collected) but keeps its
    /// checkpoints (retained by default); without this, its new epoch 1 would be fenced out by
    /// the checkpoints' older-but-larger epoch forever.
    pub max_checkpoint_epoch: Option<i64>,
    /// The job's StatefulSet as it is now (after apply, if the controller applied).
    pub stateful_set: Option<StatefulSet>,
    /// Records not yet checkpointed, summed over partitions, if computed.
    pub lag: Option<i64>,
    /// Two-stage jobs: partials in the repartition topic not yet checkpointed by stage 2.
    pub repartition_lag: Option<i64>,
    /// Two-stage jobs: the repartition topic, as Kafka metadata showed it (`None` for a
    /// one-stage job, or when the brokers could not be asked about the source either). The
    /// operator creates it when `NotFound`; once it exists, its partition count is the one the
    /// assignment uses, whatever the spec says now (see `desired`).
    pub repartition: Option<TopicObservation>,
    /// Time of the oldest of the partitions' latest checkpoints, if read.
    pub last_checkpoint_time: Option<Time>,
}

impl Observed {
    /// An observation that knows only the topic: no children, no checkpoints yet.
    pub fn new(topic: TopicObservation) -> Self {
        Observed {
            topic,
            previous_assignment: None,
            max_checkpoint_epoch: None,
            stateful_set: None,
            lag: None,
            repartition_lag: None,
            repartition: None,
            last_checkpoint_time: None,
        }
    }
}
