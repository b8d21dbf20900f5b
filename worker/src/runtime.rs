//! The worker runtime: one thread per owned partition, each with its own consumer, engine,
//! producers and checkpoint lease.
//!
//! A partition's life: take its lease (fencing out older owners), seek to the checkpoint's
//! replay point (or resolve `startFrom` to an offset and record it at once), feed the engine,
//! send results and dead letters, and every checkpoint interval flush the producers and then
//! write the checkpoint. The order matters: a checkpoint only ever claims results the sink has
//! acknowledged, so a crash at any moment loses nothing; what is replayed after it is either
//! suppressed (windows already emitted, records already dead-lettered) or re-sent with the
//! same key and value (DESIGN.md invariants 2, 3 and 6).
//!
//! One engine per partition keeps every checkpoint self-contained, and lets a partition move
//! to another worker alone. Results are exact when a group's records share a partition (for
//! example, group by the message key); merging across partitions is the second stage's job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};
use weir_crds::{StartFrom, StreamJobSpec};
use weir_engine::{Engine, JobPlan, Record, Rejection};

use crate::checkpoint::{CheckpointError, CheckpointStore, PartitionLease, Progress};
use crate::contiguous::{Contiguous, Step};
use crate::kafka::ClientSettings;
use crate::metrics::{Metrics, PartitionMetrics};

/// How long a flush before a checkpoint may take before the partition gives up (and its
/// process exits, to be restarted and replay).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How often watermark, open-state gauges and lag are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(2);

/// Failures that stop a partition.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client could not be created or configured.
    #[error("partition {partition}: creating the Kafka {role}: {source}")]
    CreateClient {
        /// Partition.
        partition: i32,
        /// consumer, sink producer, dead-letter producer.
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
    /// A result or dead letter could not be delivered; the checkpoint did not advance.
    #[error("partition {partition}: delivering to {topic} failed: {message}")]
    Delivery {
        /// Partition.
        partition: i32,
        /// Target topic.
        topic: String,
        /// librdkafka's error.
        message: String,
    },
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
    /// Two-stage jobs: the repartition topic and the second stage's checkpoints.
    pub merge: Option<MergeContext>,
    /// A partition with no record for this long is idle (two-stage jobs: it flushes its open
    /// pane rows and stops holding back the second stage).
    pub idle_timeout: Duration,
}

/// The second stage of a two-stage job (DESIGN.md invariant 5), as the partition threads see it.
pub struct MergeContext {
    /// The repartition topic.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Partitions of the source topic, each of which reports to every stage-2 partition.
    pub sources: i32,
    /// Producer settings for the repartition topic.
    pub producer: ClientSettings,
    /// Where stage-2 checkpoints go (one per repartition partition).
    pub store: Arc<dyn CheckpointStore>,
}

/// The repartition partition of a group: a stable hash (FNV-1a) of its bytes, so that every
/// stage-1 partition sends a group's partials to the same stage-2 partition.
pub fn route(group: &[u8], partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// Counters summed over partitions, for progress lines and readiness.
#[derive(Default)]
pub struct Totals {
    /// Records read (including replayed ones).
    pub records: AtomicU64,
    /// Results sent to the sink (by stage 2 in a two-stage job; partials are `exchanged`).
    pub results: AtomicU64,
    /// Records rejected (not counting replays).
    pub rejected: AtomicU64,
    /// Partitions that have caught up with their checkpoint (replay done).
    pub caught_up: AtomicU64,
    /// Sum of the partitions' last known lag.
    pub lag: Mutex<std::collections::BTreeMap<i32, i64>>,
    /// Two-stage jobs: messages stage 1 sent to the repartition topic (partials and watermark
    /// markers, including re-sends after a restart).
    pub exchanged: AtomicU64,
    /// Two-stage jobs: messages stage 2 read from the repartition topic (including replays).
    pub merged: AtomicU64,
}

impl Totals {
    /// Sum of the last known lag of each partition.
    pub fn lag(&self) -> i64 {
        self.lag.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

impl JobContext {
    /// The job's idle timeout, from the spec (default 30 s).
    pub fn idle_timeout_of(spec: &StreamJobSpec) -> Duration {
        spec.window
            .idle_timeout
            .as_ref()
            .and_then(|d| d.as_millis().ok())
            .map(|ms| Duration::from_millis(ms.max(1) as u64))
            .unwrap_or(Duration::from_secs(30))
    }

    /// The job's checkpoint interval, from the spec (default 10 s).
    pub fn interval_of(spec: &StreamJobSpec) -> Duration {
        spec.checkpoint
            .interval
            .as_ref()
            .and_then(|d| d.as_millis().ok())
            .map(|ms| Duration::from_millis(ms.max(1) as u64))
            .unwrap_or(Duration::from_secs(10))
    }
}

/// Start a thread for `partition`. Its result says how it ended.
pub fn spawn_partition(
    ctx: Arc<JobContext>,
    rt: Handle,
    partition: i32,
) -> std::io::Result<JoinHandle<Result<PartitionEnd, RuntimeError>>> {
    std::thread::Builder::new()
        .name(format!("partition-{partition}"))
        .spawn(move || run_partition(&ctx, &rt, partition))
}

/// Start a thread for partition `partition` of the repartition topic (stage 2).
pub fn spawn_merge_partition(
    ctx: Arc<JobContext>,
    rt: Handle,
    partition: i32,
) -> std::io::Result<JoinHandle<Result<PartitionEnd, RuntimeError>>> {
    std::thread::Builder::new()
        .name(format!("merge-{partition}"))
        .spawn(move || crate::merge::run_merge_partition(&ctx, &rt, partition))
}

/// Counts failed deliveries of one producer; the checkpoint does not advance past one.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: Mutex<String>,
}

/// The producer's context: librdkafka reports each delivery to it.
#[derive(Clone)]
struct DeliveryCounter(Arc<Deliveries>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.0.last_error.lock() {
                *last = e.to_string();
            }
        }
    }
}

/// A producer with its delivery counter.
pub(crate) struct Out {
    topic: String,
    producer: ThreadedProducer<DeliveryCounter>,
    deliveries: Arc<Deliveries>,
}

impl Out {
    pub(crate) fn new(
        settings: &ClientSettings,
        topic: &str,
        partition: i32,
        role: &'static str,
    ) -> Result<Out, RuntimeError> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = settings
            .config()
            .create_with_context(DeliveryCounter(deliveries.clone()))
            .map_err(|source| RuntimeError::CreateClient {
                partition,
                role,
                source,
            })?;
        Ok(Out {
            topic: topic.to_string(),
            producer,
            deliveries,
        })
    }

    /// Queue a message, waiting while librdkafka's queue is full (backpressure: the partition
    /// stops reading until the sink keeps up).
    pub(crate) fn send(
        &self,
        partition: i32,
        key: &[u8],
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), RuntimeError> {
        self.send_to(partition, None, key, value, headers)
    }

    /// [`Out::send`] to partition `to` of the topic (`None`: the partitioner's choice).
    pub(crate) fn send_to(
        &self,
        partition: i32,
        to: Option<i32>,
        key: &[u8],
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), RuntimeError> {
        let mut rec = BaseRecord::to(&self.topic).key(key).payload(value);
        if let Some(to) = to {
            rec = rec.partition(to);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        crate::kafka::send_when_room(&self.producer, rec).map_err(|e| RuntimeError::Delivery {
            partition,
            topic: self.topic.clone(),
            message: e.to_string(),
        })
    }

    /// Wait until every queued message is acknowledged; fail if any delivery failed.
    pub(crate) fn flush(&self, partition: i32) -> Result<(), RuntimeError> {
        let failed = |message: String| RuntimeError::Delivery {
            partition,
            topic: self.topic.clone(),
            message,
        };
        // Not `flush(FLUSH_TIMEOUT)`: rust-rdkafka's flush then polls in steps of 100 ms that
        // only end at their deadline, so each checkpoint with results in flight stalled the
        // partition for 100 ms. `flush(0)` asks librdkafka to send now and reports whether
        // everything is acknowledged (the producer's own thread serves the delivery reports).
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(failed(format!("flush: {e}"))),
            }
        }
        if self.deliveries.failed.load(Ordering::Relaxed) > 0 {
            let last = self
                .deliveries
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            return Err(failed(last));
        }
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a partition resumes from.
struct Start {
    /// First offset to read.
    offset: i64,
    /// Results ending at or before this were emitted before.
    emitted_through: i64,
    /// Records before this offset were already counted and dead-lettered.
    seen_through: i64,
    /// Offsets at which to flush partials again, as the run before the restart did.
    flushes: Vec<i64>,
}

/// Take the lease of `partition` of `topic` in `store`: the lease and the progress to resume
/// from, or `Err(end)` when a newer owner holds it (counted and logged).
pub(crate) fn take_lease(
    ctx: &JobContext,
    rt: &Handle,
    store: &Arc<dyn CheckpointStore>,
    topic: &str,
    partition: i32,
) -> Result<Result<(PartitionLease, Option<Progress>), PartitionEnd>, RuntimeError> {
    match rt.block_on(PartitionLease::acquire(
        store.clone(),
        topic,
        partition,
        ctx.epoch,
        &ctx.owner,
    )) {
        Ok(x) => Ok(Ok(x)),
        Err(e) if e.is_fenced() => {
            ctx.metrics.partitions_fenced.inc();
            warn!(topic, partition, error = %e, "not taking the partition: a newer owner holds it");
            Ok(Err(PartitionEnd::Fenced(e)))
        }
        Err(source) => Err(RuntimeError::Checkpoint { partition, source }),
    }
}

/// A consumer of the source cluster, for `role` ("consumer", "repartition consumer").
pub(crate) fn new_consumer(
    ctx: &JobContext,
    partition: i32,
    role: &'static str,
) -> Result<BaseConsumer, RuntimeError> {
    ctx.source
        .config()
        .create()
        .map_err(|source| RuntimeError::CreateClient {
            partition,
            role,
            source,
        })
}

/// Read `partition` of `topic` from `offset` on (`assign()`, never a group).
pub(crate) fn assign_at(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), RuntimeError> {
    let kafka_err = |action| {
        move |source| RuntimeError::Kafka {
            partition,
            action,
            source,
        }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(kafka_err("choosing the start offset"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka_err("assigning the partition"))
}

/// Whether a message of `topic`/`partition` at `got` is to be used, `expected` being the next
/// offset (see [`crate::contiguous`]): on a hole the policy re-reads, the consumer is sent back
/// to `expected` and the message dropped; a hole believed is counted in
/// `weir_offsets_skipped_total` and the message used.
pub(crate) fn continues(
    consumer: &BaseConsumer,
    guard: &mut Contiguous,
    pm: &PartitionMetrics,
    expected: i64,
    got: i64,
) -> Result<bool, RuntimeError> {
    let labels = pm.labels();
    let (topic, partition) = (labels.topic.as_str(), labels.partition);
    let step = crate::contiguous::step(consumer, guard, topic, partition, expected, got).map_err(
        |source| RuntimeError::Kafka {
            partition,
            action: "seeking back to re-read a hole",
            source,
        },
    )?;
    match step {
        Step::Take => Ok(true),
        Step::Duplicate => {
            debug!(
                topic,
                partition, expected, got, "dropping a message read before"
            );
            Ok(false)
        }
        Step::Reread { .. } => {
            pm.offset_rereads.inc();
            debug!(
                topic,
                partition, expected, got, "the broker's answer jumped ahead; read again"
            );
            Ok(false)
        }
        Step::Skip { from, to } => {
            pm.offsets_skipped
                .inc_by(u64::try_from(to - from).unwrap_or(0));
            if guard.rereads() > 0 {
                // A topic weir wrote without transactions: records were lost to retention, or
                // to a broker that does not hold what it acknowledged.
                warn!(
                    topic,
                    partition,
                    from,
                    to,
                    rereads = guard.rereads(),
                    "offsets missing from the partition after re-reading; skipped"
                );
            } else {
                // Transaction markers, aborted or compacted records, retention: usually fine.
                debug!(
                    topic,
                    partition, from, to, "offsets skipped by the broker's answer"
                );
            }
            Ok(true)
        }
    }
}

/// Write `progress` (begun at `t0`, after the producers were flushed). `Some` when a newer
/// owner fenced us out; any other failure is transient: keep going, the next interval tries
/// again, and a crash meanwhile only means a longer replay.
pub(crate) fn commit_progress(
    rt: &Handle,
    lease: &mut PartitionLease,
    pm: &PartitionMetrics,
    progress: Progress,
    t0: Instant,
) -> Option<PartitionEnd> {
    match rt.block_on(lease.commit(progress)) {
        Ok(bytes) => {
            pm.checkpoint_written(t0.elapsed(), bytes);
            None
        }
        Err(e) if e.is_fenced() => Some(PartitionEnd::Fenced(e)),
        Err(e) => {
            pm.checkpoint_failed(t0.elapsed());
            warn!(partition = lease.partition(), error = %e, "checkpoint failed; will retry");
            None
        }
    }
}

/// The end of a partition's loop: a stopped partition writes its final checkpoint
/// (`final_checkpoint`); either way the outcome is counted, logged and the partition's gauges
/// released.
pub(crate) fn finish_partition(
    ctx: &JobContext,
    topic: &str,
    partition: i32,
    next: i64,
    end: PartitionEnd,
    final_checkpoint: impl FnOnce() -> Result<Option<PartitionEnd>, RuntimeError>,
) -> Result<PartitionEnd, RuntimeError> {
    let end = match end {
        PartitionEnd::Stopped => final_checkpoint()?.unwrap_or(PartitionEnd::Stopped),
        fenced => fenced,
    };
    if let PartitionEnd::Fenced(e) = &end {
        ctx.metrics.partitions_fenced.inc();
        warn!(topic, partition, error = %e, "partition stopped: a newer owner took it");
    } else {
        info!(topic, partition, next_offset = next, "partition stopped");
    }
    ctx.metrics.release_partition(topic, partition);
    Ok(end)
}

fn run_partition(
    ctx: &JobContext,
    rt: &Handle,
    partition: i32,
) -> Result<PartitionEnd, RuntimeError> {
    let topic = ctx.spec.source.kafka.topic.0.as_str();
    let pm = ctx.metrics.partition(topic, partition);
    let (mut lease, resume) = match take_lease(ctx, rt, &ctx.store, topic, partition)? {
        Ok(x) => x,
        Err(fenced) => return Ok(fenced),
    };
    let consumer = new_consumer(ctx, partition, "consumer")?;
    let mut engine = Engine::new(ctx.plan.clone(), [partition]);
    if ctx.merge.is_some() {
        engine.emit_partials();
    }
    let start = match &resume {
        Some(p) => {
            if let Some(max) = p.replay_max_event_time {
                engine.resume(partition, max);
            }
            Start {
                offset: p.replay_from,
                emitted_through: p.emitted_through.unwrap_or(i64::MIN),
                seen_through: p.next_offset,
                flushes: p.flushes.clone(),
            }
        }
        None => {
            // Resolve startFrom to an offset and record it before reading, so a crash before the
            // first checkpoint restarts from the same place (not from a newer "latest").
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(30))
                .map_err(|source| RuntimeError::Kafka {
                    partition,
                    action: "reading the partition's offsets",
                    source,
                })?;
            let offset = match ctx.spec.source.kafka.start_from {
                StartFrom::Earliest => low,
                StartFrom::Latest => high,
            };
            let first = Progress {
                next_offset: offset,
                replay_from: offset,
                ..Progress::default()
            };
            match rt.block_on(lease.commit(first)) {
                Ok(_) => {}
                Err(e) if e.is_fenced() => {
                    ctx.metrics.partitions_fenced.inc();
                    return Ok(PartitionEnd::Fenced(e));
                }
                Err(source) => return Err(RuntimeError::Checkpoint { partition, source }),
            }
            Start {
                offset,
                emitted_through: i64::MIN,
                seen_through: offset,
                flushes: Vec::new(),
            }
        }
    };
    assign_at(&consumer, topic, partition, start.offset)?;

    let sink = Out::new(
        &ctx.sink,
        &ctx.spec.sink.kafka.topic.0,
        partition,
        "sink producer",
    )?;
    let dlq = match (&ctx.dead_letter, &ctx.spec.dead_letter) {
        (Some(s), Some(d)) => Some(Out::new(
            s,
            &d.kafka.topic.0,
            partition,
            "dead-letter producer",
        )?),
        _ => None,
    };
    let exchange = match &ctx.merge {
        Some(m) => Some(Out::new(
            &m.producer,
            &m.topic,
            partition,
            "repartition producer",
        )?),
        None => None,
    };
    info!(
        partition,
        epoch = ctx.epoch,
        from = start.offset,
        replay_until = start.seen_through,
        two_stage = exchange.is_some(),
        "partition started"
    );

    let mut part = PartitionRun {
        ctx,
        partition,
        topic,
        pm,
        engine,
        sink,
        dlq,
        exchange,
        next: start.offset,
        flushed: start.flushes.clone(),
        start,
        caught_up: false,
        idle: false,
        last_record: Instant::now(),
        marker: None,
        marker_at: Instant::now(),
    };
    part.note_caught_up();
    let mut last_checkpoint = Instant::now();
    let mut last_gauges = Instant::now() - GAUGE_EVERY;
    // Reading the clock per record cost a sixth of the record path (perf, docs/benchmarks.md):
    // timers are looked at every TIMER_EVERY records, and whenever the partition is quiet.
    const TIMER_EVERY: u32 = 256;
    let mut since_timers = 0u32;
    // A source topic's holes are believed (transaction markers, compaction, retention).
    let mut holes = Contiguous::trusting();
    let end = loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break PartitionEnd::Stopped;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => since_timers = TIMER_EVERY,
            Some(Err(e)) => warn!(partition, error = %e, "consumer error"),
            Some(Ok(m)) => {
                if part.next == part.start.offset && m.offset() > part.next {
                    // The first record is past the start or replay point.
                    warn!(
                        partition,
                        from = part.next,
                        to = m.offset(),
                        "the first offsets to read are not in the partition (records deleted \
                         by retention before this job read them, or transaction markers); going \
                         on from the first record there"
                    );
                }
                if continues(&consumer, &mut holes, &part.pm, part.next, m.offset())? {
                    part.process(&Record {
                        partition,
                        offset: m.offset(),
                        key: m.key(),
                        timestamp: m.timestamp().to_millis(),
                        value: m.payload().unwrap_or(&[]),
                    })?;
                }
            }
        }
        since_timers += 1;
        if since_timers < TIMER_EVERY {
            continue;
        }
        since_timers = 0;
        if last_gauges.elapsed() >= GAUGE_EVERY {
            last_gauges = Instant::now();
            part.gauges();
            if let Ok((_, high)) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(2))
            {
                part.pm.set_lag(high, part.next);
                if let Ok(mut lag) = ctx.totals.lag.lock() {
                    lag.insert(partition, (high - part.next).max(0));
                }
            }
        }
        if part.exchange.is_some() {
            if !part.idle && part.caught_up && part.last_record.elapsed() >= ctx.idle_timeout {
                // Idle: stage 2 stops waiting for this partition, so it must have its records
                // now. Record the flush first (write-ahead), so a replay flushes at the same
                // offset and sends the same partials again.
                if let Some(fenced) = part.checkpoint(rt, &mut lease, Some(part.next))? {
                    break fenced;
                }
                last_checkpoint = Instant::now();
                part.flush_partials(part.next)?;
                part.idle = true;
                part.send_marker()?;
                info!(partition, offset = part.next, idle_timeout = ?ctx.idle_timeout,
                    "idle: no record for the idle timeout; sent the open windows' partials and \
                     told stage 2 not to wait for this partition");
            } else if part.marker_at.elapsed() >= MARKER_EVERY {
                part.send_marker()?;
            }
        }
        if last_checkpoint.elapsed() >= ctx.checkpoint_interval {
            last_checkpoint = Instant::now();
            if let Some(fenced) = part.checkpoint(rt, &mut lease, None)? {
                break fenced;
            }
        }
    };
    if part.exchange.is_some() {
        part.send_marker()?;
    }
    let next = part.next;
    finish_partition(ctx, topic, partition, next, end, || {
        part.checkpoint(rt, &mut lease, None)
    })
}

/// How often a two-stage partition tells stage 2 its watermark, when it moved.
const MARKER_EVERY: Duration = Duration::from_millis(200);

/// One partition's moving parts.
struct PartitionRun<'a> {
    ctx: &'a JobContext,
    partition: i32,
    topic: &'a str,
    pm: PartitionMetrics,
    engine: Engine,
    sink: Out,
    dlq: Option<Out>,
    /// Two-stage jobs: the repartition topic's producer (partials and watermarks).
    exchange: Option<Out>,
    /// Next offset to read.
    next: i64,
    /// Offsets at which open pane rows were flushed (idle), since the replay point.
    flushed: Vec<i64>,
    start: Start,
    caught_up: bool,
    /// Two-stage jobs: idle (flushed, and told stage 2).
    idle: bool,
    last_record: Instant,
    /// The last watermark marker sent: (watermark, idle).
    marker: Option<(i64, bool)>,
    marker_at: Instant,
}

impl PartitionRun<'_> {
    fn process(&mut self, rec: &Record<'_>) -> Result<(), RuntimeError> {
        self.pm.record_in(rec.value.len());
        self.ctx.totals.records.fetch_add(1, Ordering::Relaxed);
        let replayed = rec.offset < self.start.seen_through;
        if let Err(rejection) = self.engine.process(rec) {
            // A replayed record was counted and dead-lettered the first time.
            if !replayed {
                self.reject(rec, &rejection)?;
            }
        }
        self.send_partials()?;
        for r in self.engine.take_results() {
            // Emitted before the restart; the replay rebuilt only part of it.
            if r.end <= self.start.emitted_through {
                continue;
            }
            let value = r.to_json(&self.ctx.plan);
            let key = r.key_json(&self.ctx.plan);
            self.sink
                .send(self.partition, key.as_bytes(), value.as_bytes(), None)?;
            self.pm.result_emitted(value.len());
            self.ctx.totals.results.fetch_add(1, Ordering::Relaxed);
            if self.ctx.echo {
                println!("{value}");
            }
        }
        self.next = rec.offset + 1;
        self.last_record = Instant::now();
        if replayed && self.start.flushes.contains(&self.next) {
            // The run before the restart flushed here (idle): do it again, identically.
            self.flush_partials(self.next)?;
        }
        self.note_caught_up();
        if self.idle && self.exchange.is_some() {
            self.idle = false;
            self.send_marker()?;
            info!(
                partition = self.partition,
                offset = rec.offset,
                "active again after being idle"
            );
        }
        Ok(())
    }

    /// Two-stage jobs: send the partials the engine emitted to their stage-2 partitions.
    fn send_partials(&mut self) -> Result<(), RuntimeError> {
        let (Some(out), Some(merge)) = (&self.exchange, &self.ctx.merge) else {
            return Ok(());
        };
        let size = self.engine.window_size();
        for p in self.engine.take_partials() {
            // Sent before the restart (its first window had closed by the checkpoint).
            if p.segment.is_none() && p.first_end(size) <= self.start.emitted_through {
                continue;
            }
            let to = route(p.group.as_bytes(), merge.partitions);
            let key = p.group.clone();
            let value = weir_engine::engine::Exchange::Partial(p).to_bytes();
            out.send_to(self.partition, Some(to), key.as_bytes(), &value, None)?;
            // A partial, not a result: counted as sent to stage 2.
            self.pm.partials_sent.inc();
            self.ctx.totals.exchanged.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Emit every open pane row now (the partition went idle), as segment `at`.
    fn flush_partials(&mut self, at: i64) -> Result<(), RuntimeError> {
        self.engine.flush_partials(at);
        if !self.flushed.contains(&at) {
            self.flushed.push(at);
        }
        self.send_partials()
    }

    /// Tell every stage-2 partition this partition's watermark (after the partials it closed,
    /// which the same producer sent before). Only when it changed.
    fn send_marker(&mut self) -> Result<(), RuntimeError> {
        let (Some(out), Some(merge)) = (&self.exchange, &self.ctx.merge) else {
            return Ok(());
        };
        self.marker_at = Instant::now();
        let wm = self.engine.watermark();
        if self.marker == Some((wm, self.idle)) || self.next < self.start.seen_through {
            // Unchanged, or replaying (what the replay reaches was reported before).
            return Ok(());
        }
        let msg = weir_engine::engine::Exchange::Watermark {
            source: self.partition,
            watermark: (wm != i64::MIN).then_some(wm),
            idle: self.idle,
        }
        .to_bytes();
        for to in 0..merge.partitions {
            out.send_to(self.partition, Some(to), b"", &msg, None)?;
            self.pm.partials_sent.inc();
            self.ctx.totals.exchanged.fetch_add(1, Ordering::Relaxed);
        }
        self.marker = Some((wm, self.idle));
        Ok(())
    }

    fn note_caught_up(&mut self) {
        if !self.caught_up && self.next >= self.start.seen_through {
            self.caught_up = true;
            self.ctx.totals.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reject(&mut self, rec: &Record<'_>, rejection: &Rejection) -> Result<(), RuntimeError> {
        self.pm.rejected(rejection.reason);
        self.ctx.totals.rejected.fetch_add(1, Ordering::Relaxed);
        let Some(dlq) = &self.dlq else {
            return Ok(());
        };
        let partition = self.partition.to_string();
        let offset = rec.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "weir.reason",
                value: Some(rejection.reason.as_str()),
            })
            .insert(Header {
                key: "weir.error",
                value: Some(rejection.detail.as_str()),
            })
            .insert(Header {
                key: "weir.source.topic",
                value: Some(self.topic),
            })
            .insert(Header {
                key: "weir.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "weir.source.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "weir.job",
                value: Some(self.ctx.name.as_str()),
            });
        dlq.send(
            self.partition,
            rec.key.unwrap_or_default(),
            rec.value,
            Some(headers),
        )?;
        self.pm.dead_letters.inc();
        Ok(())
    }

    fn gauges(&self) {
        if let Some(p) = self.engine.partitions().get(&self.partition) {
            self.pm.set_watermark_ms(p.watermark);
        }
        self.pm
            .set_open(self.engine.open_rows(), self.engine.open_groups());
    }

    /// Flush the producers, then record progress (and `flush_at`, a flush about to happen).
    /// `Some` when a newer owner fenced us out.
    fn checkpoint(
        &mut self,
        rt: &Handle,
        lease: &mut PartitionLease,
        flush_at: Option<i64>,
    ) -> Result<Option<PartitionEnd>, RuntimeError> {
        let t0 = Instant::now();
        self.sink.flush(self.partition)?;
        if let Some(d) = &self.dlq {
            d.flush(self.partition)?;
        }
        if let Some(x) = &self.exchange {
            x.flush(self.partition)?;
        }
        let state = self.engine.partitions().get(&self.partition);
        let max_time = state.map(|s| s.max_time).unwrap_or(i64::MIN);
        let (replay_from, replay_max) = self
            .engine
            .replay_point(self.partition)
            .unwrap_or((self.next, max_time));
        let known = |t: i64| (t != i64::MIN).then_some(t);
        let progress = Progress {
            // During a replay the position is behind what was already seen.
            next_offset: self.next.max(self.start.seen_through),
            replay_from,
            replay_max_event_time: known(replay_max),
            watermark: state.and_then(|s| known(s.watermark)),
            emitted_through: known(self.engine.watermark().max(self.start.emitted_through)),
            flushes: self
                .flushed
                .iter()
                .copied()
                .chain(flush_at)
                .filter(|x| *x >= replay_from)
                .collect(),
            sources: Default::default(),
        };
        Ok(commit_progress(rt, lease, &self.pm, progress, t0))
    }
}

/// A last-resort epoch for local runs: wall-clock milliseconds, so a later run outranks an
/// earlier one that may still be alive.
pub fn local_epoch() -> i64 {
    now_ms()
}
