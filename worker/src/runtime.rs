//! What the partition threads of one job share: the job, its clients' settings, its
//! checkpoint stores, its metrics and stop flag ([`JobContext`]), the counters for progress
//! lines and readiness ([`Totals`]), and how a partition ends ([`PartitionEnd`],
//! [`RuntimeError`]).
//!
//! The partition protocol (what to emit, suppress and checkpoint, and when) is
//! `weir_engine::protocol`; the one I/O loop that drives it for both stages is
//! [`crate::partition`].

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::error::KafkaError;
use weir_crds::StreamJobSpec;
use weir_engine::JobPlan;

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::kafka::ClientSettings;
use crate::merge::MergeSettings;
use crate::metrics::Metrics;

/// Which topic a partition thread reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// A partition of the source topic (stage 1).
    Source,
    /// A partition of the repartition topic (the merge stage of a two-stage job).
    Merge,
}

/// Failures that stop a partition.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka consumer could not be created or configured (producers:
    /// [`RuntimeError::Producer`]).
    #[error("partition {partition}: creating the Kafka {role}: {source}")]
    CreateClient {
        /// Partition.
        partition: i32,
        /// consumer, repartition consumer.
        role: &'static str,
        /// Cause.
        source: KafkaError,
    },
    /// Assigning or resolving the start offset failed.
    #[error("partition {partition}: {action}: {source}")]
    Kafka {
        /// Partition.
        partition: i32,
        /// What was being done.
        action: &'static str,
        /// Cause.
        source: KafkaError,
    },
    /// A producer could not be created, or a result, dead letter or partial could not be
    /// delivered (the checkpoint did not advance).
    #[error(transparent)]
    Producer(#[from] crate::producer::ProducerError),
    /// The checkpoint store failed other than by fencing.
    #[error("partition {partition}: {source}")]
    Checkpoint {
        /// Partition.
        partition: i32,
        /// Cause.
        source: CheckpointError,
    },
    /// The partition thread panicked (a bug).
    #[error("partition {partition}: the worker thread panicked")]
    Panicked {
        /// Partition.
        partition: i32,
    },
}

/// How a partition's thread ended without an error.
#[derive(Debug)]
pub enum PartitionEnd {
    /// Asked to stop; the final checkpoint is written.
    Stopped,
    /// A newer owner holds the partition; this worker stopped it.
    Fenced(CheckpointError),
}

/// Everything the partition threads of one job share.
pub struct JobContext {
    /// The StreamJob's name (client ids, logs).
    pub name: String,
    /// Its spec.
    pub spec: StreamJobSpec,
    /// The engine plan built from it.
    pub plan: JobPlan,
    /// Consumer settings.
    pub source: ClientSettings,
    /// Result producer settings.
    pub sink: ClientSettings,
    /// Dead-letter producer settings, if the job has a dead-letter topic.
    pub dead_letter: Option<ClientSettings>,
    /// Where checkpoints go.
    pub store: Arc<dyn CheckpointStore>,
    /// Checkpoint interval.
    pub checkpoint_interval: Duration,
    /// Assignment epoch this worker runs under.
    pub epoch: i64,
    /// Who this worker is (pod name or local task).
    pub owner: String,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Print each result line to stdout too (local mode).
    pub echo: bool,
    /// Set to stop every partition (SIGTERM, Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Totals for progress lines.
    pub totals: Arc<Totals>,
    /// Two-stage jobs: the merge stage (the repartition topic and its checkpoints).
    pub merge: Option<MergeSettings>,
    /// The worker's bound on open (group, window) rows, shared by its partitions of both
    /// stages ([`crate::budget`]).
    pub rows: Arc<crate::budget::RowBudget>,
    /// Commits each source partition's checkpointed offset to the job's consumer group, for
    /// Kafka tools (`None`: its client could not be created; logged).
    pub progress_group: Option<crate::group::GroupCommitter>,
}

/// Counters summed over partitions, for progress lines and readiness.
#[derive(Default)]
pub struct Totals {
    /// Records read (including replayed ones).
    pub records: AtomicU64,
    /// Results sent to the sink (by the merge stage in a two-stage job; partials are
    /// `partials_sent`).
    pub results: AtomicU64,
    /// Records rejected (not counting replays).
    pub rejected: AtomicU64,
    /// Partitions that have caught up with their checkpoint (replay done) since they last
    /// started.
    pub caught_up: Mutex<std::collections::BTreeSet<(Stage, i32)>>,
    /// Sum of the partitions' last known lag.
    pub lag: Mutex<std::collections::BTreeMap<i32, i64>>,
    /// Two-stage jobs: partials (partial aggregates and watermark markers) the source
    /// partitions sent to the repartition topic, including re-sends after a restart.
    pub partials_sent: AtomicU64,
    /// Two-stage jobs: partials the merge stage read from the repartition topic (including
    /// replays).
    pub partials_merged: AtomicU64,
}

impl Totals {
    /// Sum of the last known lag of each partition.
    pub fn lag(&self) -> i64 {
        self.lag.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

impl JobContext {
    /// The job's checkpoint interval, from the spec (default 10 s).
    pub fn interval_of(spec: &StreamJobSpec) -> Duration {
        Duration::from_millis(spec.checkpoint.interval_ms().unsigned_abs())
    }
}

/// The wall clock: milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A last-resort epoch for local runs: wall-clock milliseconds, so a later run outranks an
/// earlier one that may still be alive.
pub fn local_epoch() -> i64 {
    now_ms()
}
