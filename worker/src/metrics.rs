//! The worker's Prometheus metrics: one [`Registry`] owned by [`Metrics`], passed explicitly
//! (no global statics), and per-partition handles resolved once so the record path only does
//! atomic adds.
//!
//! Every family is named `weir_*`. Per-partition families carry `topic` and `partition`
//! labels; `weir_records_rejected_total` adds `reason`. Counters keep their series when a
//! partition is released (they stay true, and continue if it comes back); gauges of a released
//! partition are removed so a dashboard does not show a stale lag or watermark.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use weir_engine::RejectReason;

/// Prefix of every metric name.
pub const PREFIX: &str = "weir";

/// Content type of [`Metrics::encode`]'s output, and of [`Metrics::encode_prometheus_text`]'s
/// (one definition for the operator's `/metrics` and the workers').
pub use weir_crds::exposition::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};

/// Buckets of `weir_handoff_wait_seconds`: from an immediate take to the longest timeouts.
pub const HANDOFF_WAIT_BUCKETS: [f64; 10] =
    [0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Upper bounds (seconds) of the checkpoint duration buckets: 1 ms to 30 s, about 2.5x apart,
/// so both a local file write and a slow object-store PUT land in a bucket that tells them apart.
pub const CHECKPOINT_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of every per-partition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The Kafka topic.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
}

/// Why a record was rejected, as a label value (the engine's stable snake_case names).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Reason(pub RejectReason);

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

/// Labels of `weir_records_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// The Kafka topic.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
    /// Why the record was rejected.
    pub reason: Reason,
}

/// Labels of `weir_output_topic_missing`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputTopicLabels {
    /// The topic.
    pub topic: String,
    /// What the worker writes there: `sink`, `dead_letter` or `repartition`.
    pub role: String,
}

/// Labels of `weir_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<PartitionLabels, Histogram, fn() -> Histogram>;

fn checkpoint_histogram() -> Histogram {
    Histogram::new(CHECKPOINT_DURATION_BUCKETS)
}

/// The metric families; cloning one clones a handle to the same series.
#[derive(Clone)]
struct Families {
    records_in: Family<PartitionLabels, Counter>,
    bytes_in: Family<PartitionLabels, Counter>,
    records_rejected: Family<RejectLabels, Counter>,
    dead_letters: Family<PartitionLabels, Counter>,
    dead_letter_errors: Family<PartitionLabels, Counter>,
    messages_truncated: Family<PartitionLabels, Counter>,
    results_too_large: Family<PartitionLabels, Counter>,
    results_emitted: Family<PartitionLabels, Counter>,
    offsets_skipped: Family<PartitionLabels, Counter>,
    offset_rereads: Family<PartitionLabels, Counter>,
    partials_sent: Family<PartitionLabels, Counter>,
    result_bytes: Family<PartitionLabels, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    watermark: Family<PartitionLabels, FloatGauge>,
    results_from: Family<PartitionLabels, FloatGauge>,
    checkpoint_duration: HistogramFamily,
    checkpoint_size: Family<PartitionLabels, Gauge>,
    checkpoint_failures: Family<PartitionLabels, Counter>,
    last_checkpoint: Family<PartitionLabels, FloatGauge>,
    open_windows: Family<PartitionLabels, Gauge>,
    open_groups: Family<PartitionLabels, Gauge>,
}

/// The families of assignment changes and partition handoffs, registered in `r`.
fn register_handoff(
    r: &mut Registry,
) -> (
    Family<PartitionLabels, Counter>,
    Gauge,
    Counter,
    Histogram,
    Counter,
) {
    let partition_starts = Family::<PartitionLabels, Counter>::default();
    r.register(
        "partition_starts",
        "Times this worker started reading a partition (from its checkpoint, replaying the \
             open windows): when it takes the partition, after a failure, when an assignment \
             gives it back. A partition kept across assignment changes is not started again",
        partition_starts.clone(),
    );
    let assignment_epoch = Gauge::default();
    r.register(
        "assignment_epoch",
        "Epoch of the newest partition assignment this worker follows",
        assignment_epoch.clone(),
    );
    let assignment_changes = Counter::default();
    r.register(
        "assignment_changes",
        "New assignments this worker took while running: partitions it lost were released \
             to their new owners, partitions it gained were started, the others went on",
        assignment_changes.clone(),
    );
    let handoff_wait = Histogram::new(HANDOFF_WAIT_BUCKETS);
    r.register(
        "handoff_wait_seconds",
        "How long a newly assigned partition waited for its previous owner to write its \
             final checkpoint and release it (0 when nobody held it)",
        handoff_wait.clone(),
    );
    let handoff_timeouts = Counter::default();
    r.register(
        "handoff_timeouts",
        "Partitions taken after the handoff timeout without their previous owner's release \
             (it was gone, or had not seen the new assignment): resumed from the last \
             checkpoint, as after a crash",
        handoff_timeouts.clone(),
    );
    (
        partition_starts,
        assignment_epoch,
        assignment_changes,
        handoff_wait,
        handoff_timeouts,
    )
}

/// The worker's metrics and the registry they are encoded from. Share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// Partitions this worker owns now (set by the runtime on each assignment change).
    pub partitions_owned: Gauge,
    /// Times this worker found a partition fenced by a newer owner and stopped it.
    pub partitions_fenced: Counter,
    /// Times this worker started reading each partition: once when it first takes it, again
    /// after a failure or when an assignment gives it back; never for a partition it keeps
    /// across assignment changes (no replay).
    pub partition_starts: Family<PartitionLabels, Counter>,
    /// The epoch of the newest assignment this worker follows.
    pub assignment_epoch: Gauge,
    /// Assignments this worker took while running (partitions handed off without a restart).
    pub assignment_changes: Counter,
    /// How long a newly assigned partition waited for its previous owner's release.
    pub handoff_wait: Histogram,
    /// Partitions taken without a release after the handoff timeout.
    pub handoff_timeouts: Counter,
    /// Commits of progress to the job's consumer group that failed (`crate::group`).
    pub group_commit_failures: Counter,
    /// 1 while an output topic does not exist and the worker waits for it (it never creates
    /// one), else 0.
    pub output_topic_missing: Family<OutputTopicLabels, Gauge>,
    /// Times a partition of this worker failed (it is retried from its last checkpoint).
    pub partition_failures: Counter,
    /// Partitions failed and not yet caught up again since.
    pub partitions_failing: Gauge,
    /// The worker's bound on open (group, window) rows (0: none).
    pub open_rows_limit: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Families {
    fn new() -> Families {
        Families {
            records_in: Family::default(),
            bytes_in: Family::default(),
            records_rejected: Family::default(),
            dead_letters: Family::default(),
            dead_letter_errors: Family::default(),
            messages_truncated: Family::default(),
            results_too_large: Family::default(),
            results_emitted: Family::default(),
            offsets_skipped: Family::default(),
            offset_rereads: Family::default(),
            partials_sent: Family::default(),
            result_bytes: Family::default(),
            consumer_lag: Family::default(),
            watermark: Family::default(),
            results_from: Family::default(),
            checkpoint_duration: Family::new_with_constructor(checkpoint_histogram),
            checkpoint_size: Family::default(),
            checkpoint_failures: Family::default(),
            last_checkpoint: Family::default(),
            open_windows: Family::default(),
            open_groups: Family::default(),
        }
    }

    /// The per-partition counters of the record path (read, rejected, sent).
    fn register_record_path(&self, r: &mut Registry) {
        // Counter names get `_total` from the encoder, and unit names get `_<unit>`: the names
        // below are the exposed ones without those suffixes.
        r.register(
            "records_in",
            "Records read from Kafka, valid or not",
            self.records_in.clone(),
        );
        r.register(
            "bytes_in",
            "Bytes of record values read from Kafka",
            self.bytes_in.clone(),
        );
        r.register(
            "records_rejected",
            "Records the job could not use, by reason: invalid_json, missing_field, wrong_type, \
                 invalid_event_time, duplicate_field, late (every window it belongs to had \
                 already closed), future (event time too far ahead of the clock), too_large \
                 (more than a result can hold) or state_full (the worker's bound on open \
                 (group, window) rows was reached; in the merge stage, partials)",
            self.records_rejected.clone(),
        );
        r.register(
            "dead_letters",
            "Rejected records written to the dead-letter topic",
            self.dead_letters.clone(),
        );
        r.register(
            "dead_letter_errors",
            "Rejected records that could not be written to the dead-letter topic",
            self.dead_letter_errors.clone(),
        );
        r.register(
            "messages_truncated",
            "Dead letters written with their key or value cut to fit the producer's \
                 message.max.bytes (header weir.truncated)",
            self.messages_truncated.clone(),
        );
        r.register(
            "results_too_large",
            "Results over the sink producer's message.max.bytes, written to the dead-letter \
                 topic with reason too_large instead of the sink",
            self.results_too_large.clone(),
        );
        r.register(
            "partials_sent",
            "Partial aggregates and watermark markers a source partition of a two-stage job sent \
                 to the repartition topic (its results are written by the merge stage)",
            self.partials_sent.clone(),
        );
        r.register(
            "offsets_skipped",
            "Offsets the partition's reads jumped over and never delivered: on a source topic \
                 transaction markers and aborted, compacted or expired records; on the repartition \
                 topic records expired before the merge stage read them, or a broker fault",
            self.offsets_skipped.clone(),
        );
        r.register(
            "offset_rereads",
            "Times a read of a repartition partition jumped past the next offset and was \
                 repeated from it (a broker answering before it had stored earlier records)",
            self.offset_rereads.clone(),
        );
        r.register(
            "results_emitted",
            "Window results written to the output topic",
            self.results_emitted.clone(),
        );
        r.register(
            "result_bytes",
            "Bytes of window results written to the output topic",
            self.result_bytes.clone(),
        );
    }

    /// The per-partition gauges and checkpoint metrics (lag, watermark, checkpoints, open state).
    fn register_partition_state(&self, r: &mut Registry) {
        r.register_with_unit(
            "consumer_lag",
            "Records in the partition not read yet: high watermark minus the next offset to read",
            Unit::Other("records".to_owned()),
            self.consumer_lag.clone(),
        );
        r.register_with_unit(
            "watermark",
            "Event-time watermark of the partition, in seconds since the Unix epoch; absent until \
                 the partition's first record",
            Unit::Seconds,
            self.watermark.clone(),
        );
        r.register_with_unit(
            "results_from",
            "The first window start the partition's run emits, in seconds since the Unix epoch \
                 (after an edit, a reset or a start time; docs/semantics.md); absent: every window",
            Unit::Seconds,
            self.results_from.clone(),
        );
        r.register_with_unit(
            "checkpoint_duration",
            "Time taken to write a partition checkpoint",
            Unit::Seconds,
            self.checkpoint_duration.clone(),
        );
        r.register_with_unit(
            "checkpoint_size",
            "Size of the partition's last written checkpoint",
            Unit::Bytes,
            self.checkpoint_size.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoint writes that failed (they are retried; a fenced write is counted in \
                 weir_partitions_fenced_total instead)",
            self.checkpoint_failures.clone(),
        );
        r.register_with_unit(
            "last_checkpoint_timestamp",
            "When the partition's last checkpoint was written, in seconds since the Unix epoch",
            Unit::Seconds,
            self.last_checkpoint.clone(),
        );
        r.register(
            "open_windows",
            "Open state rows of the partition, what weir_open_rows_limit bounds: a (group, \
                 pane) row of a tumbling or hopping window, a session of a session window; in \
                 a two-stage job, rows not yet sent (source) or not yet closed (merge)",
            self.open_windows.clone(),
        );
        r.register(
            "open_groups",
            "Groups (distinct group-by keys) held in the partition's open windows",
            self.open_groups.clone(),
        );
    }
}

impl Metrics {
    /// A fresh registry with every family registered, and `weir_build_info` for this build.
    pub fn new() -> Metrics {
        Metrics::with_version(env!("CARGO_PKG_VERSION"))
    }

    /// As [`Metrics::new`] with the given version in `weir_build_info`.
    pub fn with_version(version: &str) -> Metrics {
        let mut r = Registry::with_prefix(PREFIX);
        let f = Families::new();
        f.register_record_path(&mut r);
        f.register_partition_state(&mut r);
        let partitions_owned = Gauge::default();
        r.register(
            "partitions_owned",
            "Partitions this worker owns now",
            partitions_owned.clone(),
        );
        let partitions_fenced = Counter::default();
        r.register(
            "partitions_fenced",
            "Times this worker lost a partition to a newer owner (assignment epoch fence) and \
             stopped it",
            partitions_fenced.clone(),
        );
        let (
            partition_starts,
            assignment_epoch,
            assignment_changes,
            handoff_wait,
            handoff_timeouts,
        ) = register_handoff(&mut r);
        let group_commit_failures = Counter::default();
        r.register(
            "group_commit_failures",
            "Commits of checkpointed offsets to the job's consumer group (for Kafka tools' view \
             of the lag) that failed; the checkpoints are not affected",
            group_commit_failures.clone(),
        );
        let output_topic_missing = Family::<OutputTopicLabels, Gauge>::default();
        r.register(
            "output_topic_missing",
            "1 while a topic the worker writes (role: sink, dead_letter, repartition) does not \
             exist; the worker waits for it and never creates it",
            output_topic_missing.clone(),
        );
        let partition_failures = Counter::default();
        r.register(
            "partition_failures",
            "Times a partition of this worker failed (a write that would lose data, a checkpoint \
             store error); it stops alone and is retried from its last checkpoint with backoff",
            partition_failures.clone(),
        );
        let partitions_failing = Gauge::default();
        r.register(
            "partitions_failing",
            "Partitions of this worker that failed and have not caught up again since; the \
             worker is not ready while this is above 0",
            partitions_failing.clone(),
        );
        let open_rows_limit = Gauge::default();
        r.register(
            "open_rows_limit",
            "The worker's bound on open (group, window) rows, shared by its partitions of both \
             stages (0: no bound); records (merge stage: partials) that would open more are \
             dead-lettered as state_full",
            open_rows_limit.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
            })
            .set(1);
        r.register(
            "build_info",
            "Always 1; the label version is the weir version of this worker",
            build_info,
        );
        Metrics {
            registry: r,
            families: f,
            partitions_owned,
            partitions_fenced,
            partition_starts,
            assignment_epoch,
            assignment_changes,
            handoff_wait,
            handoff_timeouts,
            group_commit_failures,
            output_topic_missing,
            partition_failures,
            partitions_failing,
            open_rows_limit,
        }
    }

    /// A partition's previous owner released it after `waited` (zero: nobody held it).
    pub fn handoff_waited(&self, waited: Duration, timed_out: bool) {
        self.handoff_wait.observe(waited.as_secs_f64());
        if timed_out {
            self.handoff_timeouts.inc();
        }
    }

    /// The registry, to register more metrics or collectors into.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Handles for one partition's series, created (at zero) if new. Call once when taking the
    /// partition, and keep the result on its thread.
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionMetrics {
        let f = &self.families;
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition,
        };
        let rejected = RejectReason::ALL.map(|reason| {
            f.records_rejected.get_or_create_owned(&RejectLabels {
                topic: topic.to_owned(),
                partition,
                reason: Reason(reason),
            })
        });
        PartitionMetrics {
            records_in: f.records_in.get_or_create_owned(&labels),
            bytes_in: f.bytes_in.get_or_create_owned(&labels),
            rejected,
            dead_letters: f.dead_letters.get_or_create_owned(&labels),
            dead_letter_errors: f.dead_letter_errors.get_or_create_owned(&labels),
            messages_truncated: f.messages_truncated.get_or_create_owned(&labels),
            results_too_large: f.results_too_large.get_or_create_owned(&labels),
            results_emitted: f.results_emitted.get_or_create_owned(&labels),
            offsets_skipped: f.offsets_skipped.get_or_create_owned(&labels),
            offset_rereads: f.offset_rereads.get_or_create_owned(&labels),
            partials_sent: f.partials_sent.get_or_create_owned(&labels),
            result_bytes: f.result_bytes.get_or_create_owned(&labels),
            consumer_lag: f.consumer_lag.get_or_create_owned(&labels),
            watermark: OnceLock::new(),
            watermark_family: f.watermark.clone(),
            results_from_family: f.results_from.clone(),
            checkpoint_duration: f.checkpoint_duration.get_or_create_owned(&labels),
            checkpoint_size: f.checkpoint_size.get_or_create_owned(&labels),
            checkpoint_failures: f.checkpoint_failures.get_or_create_owned(&labels),
            last_checkpoint: OnceLock::new(),
            last_checkpoint_family: f.last_checkpoint.clone(),
            open_windows: f.open_windows.get_or_create_owned(&labels),
            open_groups: f.open_groups.get_or_create_owned(&labels),
            labels,
        }
    }

    /// Remove a released partition's gauges (lag, watermark, checkpoint size and time, open
    /// windows and groups), so they do not linger with a stale value. Counters and the
    /// checkpoint histogram stay. Handles from [`Metrics::partition`] for it are detached from
    /// the removed gauges: take new ones if the partition comes back.
    pub fn release_partition(&self, topic: &str, partition: i32) {
        let f = &self.families;
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition,
        };
        f.consumer_lag.remove(&labels);
        f.watermark.remove(&labels);
        f.results_from.remove(&labels);
        f.checkpoint_size.remove(&labels);
        f.last_checkpoint.remove(&labels);
        f.open_windows.remove(&labels);
        f.open_groups.remove(&labels);
    }

    /// Every metric in the OpenMetrics text format, ending with `# EOF`
    /// (content type [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out.clear();
            let _ = writeln!(out, "# encoding the metrics failed: {e}\n# EOF");
        }
        out
    }

    /// Every metric in the Prometheus text format 0.0.4 (content type
    /// [`PROMETHEUS_TEXT_CONTENT_TYPE`]), for clients that do not ask for OpenMetrics, such as
    /// `curl` and `promtool check metrics`.
    pub fn encode_prometheus_text(&self) -> String {
        weir_crds::exposition::openmetrics_to_prometheus_text(&self.encode())
    }
}

/// One partition's series, resolved once: every update is an atomic operation on a shared
/// handle, with no label lookup. Cheap to clone; clones update the same series.
#[derive(Clone)]
pub struct PartitionMetrics {
    labels: PartitionLabels,
    /// Records read (count every record, valid or not).
    pub records_in: Counter,
    /// Bytes of record values read.
    pub bytes_in: Counter,
    rejected: [Counter; RejectReason::ALL.len()],
    /// Rejected records written to the dead-letter topic.
    pub dead_letters: Counter,
    /// Rejected records the dead-letter write failed for.
    pub dead_letter_errors: Counter,
    /// Dead letters written with their key or value cut to fit `message.max.bytes`.
    pub messages_truncated: Counter,
    /// Results over the sink's `message.max.bytes`, dead-lettered as `too_large` instead.
    pub results_too_large: Counter,
    /// Window results written.
    pub results_emitted: Counter,
    /// Offsets skipped by reads (holes believed).
    pub offsets_skipped: Counter,
    /// Reads repeated because the broker's answer jumped ahead.
    pub offset_rereads: Counter,
    /// Partials and watermark markers sent to the merge stage.
    pub partials_sent: Counter,
    /// Bytes of window results written.
    pub result_bytes: Counter,
    consumer_lag: Gauge,
    // The watermark series only exists once a watermark is known, so it is created on first use.
    watermark: OnceLock<FloatGauge>,
    watermark_family: Family<PartitionLabels, FloatGauge>,
    results_from_family: Family<PartitionLabels, FloatGauge>,
    checkpoint_duration: Histogram,
    checkpoint_size: Gauge,
    /// Checkpoint writes that failed.
    pub checkpoint_failures: Counter,
    last_checkpoint: OnceLock<FloatGauge>,
    last_checkpoint_family: Family<PartitionLabels, FloatGauge>,
    /// Open state rows now (`weir_open_windows`: named before rows were the unit).
    pub open_windows: Gauge,
    /// Groups held in open windows now.
    pub open_groups: Gauge,
}

impl PartitionMetrics {
    /// The topic and partition these handles are for.
    pub fn labels(&self) -> &PartitionLabels {
        &self.labels
    }

    /// One record read, of `value_bytes` bytes.
    pub fn record_in(&self, value_bytes: usize) {
        self.records_in.inc();
        self.bytes_in.inc_by(value_bytes as u64);
    }

    /// One record rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reject_index(reason)].inc();
    }

    /// One result written, of `bytes` bytes.
    pub fn result_emitted(&self, bytes: usize) {
        self.results_emitted.inc();
        self.result_bytes.inc_by(bytes as u64);
    }

    /// Lag from the partition's high watermark and the next offset to read (never negative:
    /// a high watermark fetched before the last read can be behind).
    pub fn set_lag(&self, high_watermark: i64, next_offset: i64) {
        self.consumer_lag
            .set(high_watermark.saturating_sub(next_offset).max(0));
    }

    /// The partition's event-time watermark, in ms since the epoch as the engine keeps it.
    /// `i64::MIN` (the engine's "no record yet") leaves the series absent.
    pub fn set_watermark_ms(&self, watermark_ms: i64) {
        if watermark_ms == i64::MIN {
            return;
        }
        self.watermark
            .get_or_init(|| self.watermark_family.get_or_create_owned(&self.labels))
            .set(watermark_ms as f64 / 1000.0);
    }

    /// The first window start (ms since the epoch) the partition's run emits; `None` (every
    /// window) leaves the series absent.
    pub fn set_results_from_ms(&self, results_from_ms: Option<i64>) {
        match results_from_ms {
            Some(ms) => {
                self.results_from_family
                    .get_or_create_owned(&self.labels)
                    .set(ms as f64 / 1000.0);
            }
            None => {
                self.results_from_family.remove(&self.labels);
            }
        }
    }

    /// Rows and groups open now (the engine's `open_rows()` and `open_groups()`).
    pub fn set_open(&self, rows: usize, groups: usize) {
        self.open_windows.set(saturating_i64(rows));
        self.open_groups.set(saturating_i64(groups));
    }

    /// A checkpoint was written: how long it took, its size, and now as its time.
    pub fn checkpoint_written(&self, took: Duration, size_bytes: usize) {
        self.checkpoint_duration.observe(took.as_secs_f64());
        self.checkpoint_size.set(saturating_i64(size_bytes));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_checkpoint
            .get_or_init(|| {
                self.last_checkpoint_family
                    .get_or_create_owned(&self.labels)
            })
            .set(now);
    }

    /// A checkpoint write failed after `took`.
    pub fn checkpoint_failed(&self, took: Duration) {
        self.checkpoint_duration.observe(took.as_secs_f64());
        self.checkpoint_failures.inc();
    }
}

/// Position of `reason` in [`RejectReason::ALL`], the order `rejected` is built in. A match,
/// so a new reason fails to compile here instead of being counted as another.
fn reject_index(reason: RejectReason) -> usize {
    match reason {
        RejectReason::InvalidJson => 0,
        RejectReason::MissingField => 1,
        RejectReason::WrongType => 2,
        RejectReason::InvalidEventTime => 3,
        RejectReason::Late => 4,
        RejectReason::Future => 5,
        RejectReason::DuplicateField => 6,
        RejectReason::TooLarge => 7,
        RejectReason::StateFull => 8,
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn partition_updates_show_with_their_labels() {
        let m = Metrics::with_version("1.2.3");
        let p = m.partition("orders", 3);
        p.record_in(100);
        p.record_in(20);
        p.rejected(RejectReason::Late);
        p.rejected(RejectReason::Late);
        p.rejected(RejectReason::InvalidJson);
        p.result_emitted(64);
        p.set_lag(1_000, 990);
        p.set_open(4, 17);
        p.dead_letters.inc();
        p.offsets_skipped.inc_by(3);
        m.partitions_owned.set(2);
        m.partitions_fenced.inc();

        let text = m.encode();
        let l = r#"{topic="orders",partition="3"}"#;
        for want in [
            format!("weir_records_in_total{l} 2"),
            format!("weir_bytes_in_total{l} 120"),
            r#"weir_records_rejected_total{topic="orders",partition="3",reason="late"} 2"#
                .to_owned(),
            r#"weir_records_rejected_total{topic="orders",partition="3",reason="invalid_json"} 1"#
                .to_owned(),
            r#"weir_records_rejected_total{topic="orders",partition="3",reason="wrong_type"} 0"#
                .to_owned(),
            format!("weir_results_emitted_total{l} 1"),
            format!("weir_result_bytes_total{l} 64"),
            format!("weir_dead_letters_total{l} 1"),
            format!("weir_dead_letter_errors_total{l} 0"),
            format!("weir_offsets_skipped_total{l} 3"),
            format!("weir_offset_rereads_total{l} 0"),
            format!("weir_consumer_lag_records{l} 10"),
            format!("weir_open_windows{l} 4"),
            format!("weir_open_groups{l} 17"),
            "weir_partitions_owned 2".to_owned(),
            "weir_partitions_fenced_total 1".to_owned(),
            r#"weir_build_info{version="1.2.3"} 1"#.to_owned(),
        ] {
            assert!(
                text.lines().any(|line| line == want),
                "missing {want:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn each_reason_counts_in_its_own_series() {
        for (i, reason) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(reject_index(reason), i, "{reason:?}");
        }
        let m = Metrics::new();
        let p = m.partition("t", 0);
        for (n, reason) in RejectReason::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                p.rejected(reason);
            }
        }
        let text = m.encode();
        for (n, reason) in RejectReason::ALL.into_iter().enumerate() {
            let want = format!(
                r#"weir_records_rejected_total{{topic="t",partition="0",reason="{}"}} {}"#,
                reason.as_str(),
                n + 1
            );
            assert!(
                text.lines().any(|l| l == want),
                "missing {want} in:\n{text}"
            );
        }
    }

    #[test]
    fn results_from_is_shown_only_while_a_run_starts_later_than_every_window() {
        let m = Metrics::new();
        let p = m.partition("t", 0);
        p.set_results_from_ms(None);
        assert!(lines_with(&m.encode(), "weir_results_from_seconds{").is_empty());
        p.set_results_from_ms(Some(1_796_112_000_000));
        let text = m.encode();
        let lines = lines_with(&text, "weir_results_from_seconds{");
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].ends_with(" 1796112000.0"), "{}", lines[0]);
        m.release_partition("t", 0);
        assert!(lines_with(&m.encode(), "weir_results_from_seconds{").is_empty());
    }

    #[test]
    fn lag_is_never_negative() {
        let m = Metrics::new();
        let p = m.partition("t", 0);
        p.set_lag(5, 9);
        assert!(m
            .encode()
            .contains(r#"weir_consumer_lag_records{topic="t",partition="0"} 0"#));
    }

    #[test]
    fn watermark_is_absent_until_known_then_in_seconds() {
        let m = Metrics::new();
        let p = m.partition("t", 1);
        p.set_watermark_ms(i64::MIN);
        assert!(
            lines_with(&m.encode(), "weir_watermark_seconds{").is_empty(),
            "{}",
            m.encode()
        );
        p.set_watermark_ms(1_700_000_000_500);
        let text = m.encode();
        let lines = lines_with(&text, "weir_watermark_seconds{");
        assert_eq!(lines.len(), 1, "{text}");
        let value: f64 = lines[0]
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert_eq!(value, 1_700_000_000.5);
    }

    #[test]
    fn checkpoint_histogram_has_every_bucket_and_counts_observations() {
        let m = Metrics::new();
        let p = m.partition("t", 2);
        p.checkpoint_written(Duration::from_millis(3), 512);
        p.checkpoint_failed(Duration::from_secs(20));
        let text = m.encode();
        let buckets = lines_with(&text, "weir_checkpoint_duration_seconds_bucket{");
        // Every configured bound plus +Inf.
        assert_eq!(
            buckets.len(),
            CHECKPOINT_DURATION_BUCKETS.len() + 1,
            "{text}"
        );
        for (want, got) in [
            ("0.0025", "0"),
            ("0.005", "1"),
            ("10.0", "1"),
            ("30.0", "2"),
            ("+Inf", "2"),
        ] {
            let needle = format!(
                r#"weir_checkpoint_duration_seconds_bucket{{le="{want}",topic="t",partition="2"}} {got}"#
            );
            assert!(
                text.lines().any(|l| l == needle),
                "missing {needle} in:\n{text}"
            );
        }
        assert!(
            text.contains(r#"weir_checkpoint_duration_seconds_count{topic="t",partition="2"} 2"#)
        );
        assert!(text.contains(r#"weir_checkpoint_size_bytes{topic="t",partition="2"} 512"#));
        assert!(text.contains(r#"weir_checkpoint_failures_total{topic="t",partition="2"} 1"#));
        assert_eq!(
            lines_with(&text, "weir_last_checkpoint_timestamp_seconds{").len(),
            1,
            "{text}"
        );
    }

    #[test]
    fn release_removes_gauges_and_keeps_counters() {
        let m = Metrics::new();
        let p = m.partition("t", 7);
        p.record_in(1);
        p.set_lag(10, 1);
        p.set_watermark_ms(1_000);
        m.release_partition("t", 7);
        let text = m.encode();
        assert!(
            lines_with(&text, "weir_consumer_lag_records{").is_empty(),
            "{text}"
        );
        assert!(
            lines_with(&text, "weir_watermark_seconds{").is_empty(),
            "{text}"
        );
        assert!(text.contains(r#"weir_records_in_total{topic="t",partition="7"} 1"#));
        // Taking the partition again continues its counters.
        m.partition("t", 7).record_in(1);
        assert!(m
            .encode()
            .contains(r#"weir_records_in_total{topic="t",partition="7"} 2"#));
    }

    #[test]
    fn every_family_has_help_and_type() {
        let m = Metrics::new();
        // A family without a series is not written at all, so give each one a series.
        let p = m.partition("t", 0);
        p.set_watermark_ms(0);
        p.checkpoint_written(Duration::from_millis(1), 1);
        m.partition_starts.get_or_create(p.labels()).inc();
        let text = m.encode();
        let helps = lines_with(&text, "# HELP ").len();
        let types = lines_with(&text, "# TYPE ").len();
        assert_eq!(helps, types);
        assert_eq!(helps, 32, "{text}");
        for help in lines_with(&text, "# HELP ") {
            // The encoder writes help verbatim; these would need escaping.
            assert!(!help.contains('\\') && !help.contains('"'), "{help}");
            // The encoder ends help with a period of its own.
            assert!(!help.ends_with(".."), "{help}");
        }
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.partition("t", 0).record_in(1);
        let text = m.encode_prometheus_text();
        assert!(
            text.contains("# HELP weir_records_in_total Records read"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weir_records_in_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE weir_open_windows gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
    }
}
