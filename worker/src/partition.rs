//! The one I/O loop that drives the partition protocol (`weir_engine::protocol`) for a
//! partition of either stage: a source partition (stage 1) or a partition of the repartition
//! topic (the merge stage). One thread per owned partition, each with its own consumer,
//! protocol (engine), producers and checkpoint lease.
//!
//! This loop only does I/O: take the lease (fencing out older owners), resolve the start
//! offset, read with `assign()` through the hole check ([`crate::contiguous`]), hand each
//! message and the time to the protocol, and carry out the [`Action`]s it returns in order
//! (send results, dead letters, partials and markers; flush every producer before writing a
//! checkpoint; stop when a checkpoint write is fenced). Every decision — what to suppress
//! after a restart, when to go idle, when a marker or a checkpoint is due and what it records —
//! is the protocol's, where it is tested with injected time.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};
use weir_crds::StartFrom;
use weir_engine::protocol::{Action, PartitionProtocol, Role, StartPoint, Timing};
use weir_engine::start::{self, Begin};
use weir_engine::{Record, RejectReason, Rejection, WindowResult, RESULTS_CHUNK};

use crate::budget::RowShare;
use crate::checkpoint::{CheckpointStore, Handoff, HandoffWait, PartitionLease, Progress, Run};
use crate::contiguous::{continues, Contiguous};
use crate::metrics::PartitionMetrics;
use crate::outbox::{Origin, Outbox};
use crate::producer::{DeliveryCountingProducer, ProducerError, Sent};
pub use crate::runtime::Stage;
use crate::runtime::{JobContext, PartitionEnd, RuntimeError};

/// How often (ms) watermark, open-state gauges and lag are refreshed.
const GAUGE_EVERY_MS: i64 = 2_000;
/// Reading the clock per record cost a sixth of the record path (perf, docs/benchmarks.md):
/// timers are looked at every this many messages, and after every wait for a message (a
/// partition read slowly may never be quiet for a whole wait, nor read this many in seconds).
const TIMER_EVERY: u32 = 256;

/// What one partition thread owns its partition under.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The assignment epoch it claims the partition with (fencing). Raised when a newer
    /// assignment keeps the partition here: the next checkpoint is written at it, which fences
    /// out any older owner still running and shows the handoff done.
    pub epoch: Arc<AtomicI64>,
    /// Set to stop this partition alone (an assignment took it away): it writes its final
    /// checkpoint, released, and ends with [`PartitionEnd::Stopped`].
    pub stop: Arc<AtomicBool>,
    /// How long to wait for the previous owner to release the partition before claiming it
    /// anyway ([`PartitionLease::acquire_after_release`]); zero: claim at once.
    pub handoff_timeout: Duration,
}

impl Claim {
    /// A claim at `epoch` with its own stop flag.
    pub fn new(epoch: i64, handoff_timeout: Duration) -> Claim {
        Claim {
            epoch: Arc::new(AtomicI64::new(epoch)),
            stop: Arc::new(AtomicBool::new(false)),
            handoff_timeout,
        }
    }

    /// The epoch to claim and write at now.
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::Relaxed)
    }

    fn stopped(&self, ctx: &JobContext) -> bool {
        self.stop.load(Ordering::Relaxed) || ctx.stop.load(Ordering::Relaxed)
    }
}

/// Start a thread for `partition` of `stage`'s topic, at the job's epoch, stopped only with the
/// whole job. Its result says how it ended.
pub fn spawn_partition(
    ctx: Arc<JobContext>,
    rt: Handle,
    stage: Stage,
    partition: i32,
) -> std::io::Result<JoinHandle<Result<PartitionEnd, RuntimeError>>> {
    let claim = Claim::new(ctx.epoch, Duration::ZERO);
    spawn_claimed(ctx, rt, stage, partition, claim)
}

/// Start a thread for `partition` of `stage`'s topic under `claim`. Its result says how it
/// ended.
pub fn spawn_claimed(
    ctx: Arc<JobContext>,
    rt: Handle,
    stage: Stage,
    partition: i32,
    claim: Claim,
) -> std::io::Result<JoinHandle<Result<PartitionEnd, RuntimeError>>> {
    let name = match stage {
        Stage::Source => format!("partition-{partition}"),
        Stage::Merge => format!("merge-{partition}"),
    };
    std::thread::Builder::new()
        .name(name)
        .spawn(move || drive_partition(&ctx, &rt, stage, partition, &claim))
}

/// Own `partition` of `stage`'s topic until stopped or fenced.
fn drive_partition(
    ctx: &JobContext,
    rt: &Handle,
    stage: Stage,
    partition: i32,
    claim: &Claim,
) -> Result<PartitionEnd, RuntimeError> {
    let (consumer, mut part) = match open_partition(ctx, rt, stage, partition, claim)? {
        Opened::Ready(consumer, part) => (consumer, *part),
        Opened::Ended(end) => return Ok(end),
    };
    let end = part.read(&consumer)?;
    part.close(end)
}

/// What taking a partition's lease gave.
pub(crate) enum LeaseTaken {
    /// The lease, and the progress to resume from (none: the partition was never started).
    Taken(Box<PartitionLease>, Option<Progress>),
    /// A newer owner holds the partition (counted and logged).
    Fenced(PartitionEnd),
    /// Stopped while waiting for the previous owner's release.
    Cancelled,
}

/// Take the lease of `partition` of `topic` in `store` under `claim`, after the previous
/// owner released it (or the claim's handoff timeout passed).
fn take_lease(
    ctx: &JobContext,
    rt: &Handle,
    store: &Arc<dyn CheckpointStore>,
    topic: &str,
    partition: i32,
    claim: &Claim,
) -> Result<LeaseTaken, RuntimeError> {
    let cancelled = || claim.stopped(ctx);
    let wait = HandoffWait {
        timeout: claim.handoff_timeout,
        cancelled: &cancelled,
    };
    match rt.block_on(PartitionLease::acquire_after_release(
        store.clone(),
        topic,
        partition,
        claim.epoch(),
        &ctx.owner,
        &wait,
    )) {
        Ok(Handoff::Cancelled) => Ok(LeaseTaken::Cancelled),
        Ok(Handoff::Taken {
            lease,
            progress,
            waited,
            timed_out,
        }) => {
            ctx.metrics.handoff_waited(waited, timed_out);
            if timed_out {
                warn!(topic, partition, waited = ?waited,
                    "the previous owner did not release the partition within the handoff \
                     timeout; taking it from its last checkpoint (it is fenced out at its next \
                     write)");
            } else if !waited.is_zero() {
                info!(topic, partition, waited = ?waited, "the previous owner released the partition");
            }
            Ok(LeaseTaken::Taken(lease, progress))
        }
        Err(e) if e.is_fenced() => {
            ctx.metrics.partitions_fenced.inc();
            warn!(topic, partition, error = %e, "not taking the partition: a newer owner holds it");
            Ok(LeaseTaken::Fenced(PartitionEnd::Fenced(e)))
        }
        Err(source) => Err(RuntimeError::Checkpoint { partition, source }),
    }
}

/// What opening a partition gave.
enum Opened<'a> {
    /// Reading can begin.
    Ready(BaseConsumer, Box<PartitionIo<'a>>),
    /// Ended before reading: a newer owner holds it (or there is no merge stage to run).
    Ended(PartitionEnd),
}

/// Take the lease, resolve where to start, create the clients, and record a fresh start.
fn open_partition<'a>(
    ctx: &'a JobContext,
    rt: &'a Handle,
    stage: Stage,
    partition: i32,
    claim: &'a Claim,
) -> Result<Opened<'a>, RuntimeError> {
    let (topic, store, role) = match (stage, &ctx.merge) {
        (Stage::Merge, Some(m)) => (
            m.topic.as_str(),
            &m.store,
            Role::Merge { sources: m.sources },
        ),
        (Stage::Merge, None) => return Ok(Opened::Ended(PartitionEnd::Stopped)),
        (Stage::Source, Some(m)) => (
            ctx.spec.source.kafka.topic.0.as_str(),
            &ctx.store,
            Role::Partials {
                partitions: m.partitions,
            },
        ),
        (Stage::Source, None) => (
            ctx.spec.source.kafka.topic.0.as_str(),
            &ctx.store,
            Role::Results,
        ),
    };
    let (mut lease, resume) = match take_lease(ctx, rt, store, topic, partition, claim)? {
        LeaseTaken::Taken(lease, resume) => (*lease, resume),
        LeaseTaken::Fenced(end) => return Ok(Opened::Ended(end)),
        LeaseTaken::Cancelled => return Ok(Opened::Ended(PartitionEnd::Stopped)),
    };
    let consumer = new_consumer(ctx, stage, partition)?;
    // Resume, start the spec's new definition, or start afresh (a reset, a first start): the
    // decision is the engine's (weir_engine::start), from what the checkpoint recorded.
    let stored = lease.run().clone();
    let decision = start::decide(
        &ctx.plan,
        &ctx.spec,
        Some((&stored, resume.as_ref())),
        stage == Stage::Merge,
    );
    let (start, first_write) = start_point(&decision.begin, &consumer, stage, topic, partition)?;
    lease.set_run(decision.run.clone());
    let interval = i64::try_from(ctx.checkpoint_interval.as_millis()).unwrap_or(i64::MAX);
    let timing = Timing::new(&ctx.plan, interval);
    let mut protocol = PartitionProtocol::new(ctx.plan.clone(), role, partition, timing, start, 0);
    protocol.set_run(
        decision.run.results_from,
        decision.run_tag(),
        decision.accept_untagged,
    );
    // The future-skew guard reads the wall clock at ticks and for a record ahead of its last
    // reading, not for every record (weir_engine::Engine::read_wall_clock_with).
    protocol.read_wall_clock_with(crate::runtime::now_ms);
    let mut rows = ctx.rows.share();
    protocol.set_row_limit(rows.publish(0));
    log_run(stage, partition, &stored, &decision, &protocol);
    if let Some(first) = first_write.as_ref().or(protocol.first_checkpoint()) {
        // Record the resolved start (and the run) before reading, so a crash before the first
        // checkpoint restarts from the same place (not from a newer "latest").
        match rt.block_on(lease.commit(first.clone())) {
            Ok(_) => {}
            Err(e) if e.is_fenced() => {
                ctx.metrics.partitions_fenced.inc();
                return Ok(Opened::Ended(PartitionEnd::Fenced(e)));
            }
            Err(source) => return Err(RuntimeError::Checkpoint { partition, source }),
        }
    }
    assign_at(&consumer, topic, partition, protocol.start_offset())?;
    let producers = outbox(ctx, stage, partition)?;
    log_start(stage, partition, claim.epoch(), &protocol, &producers);
    let pm = ctx.metrics.partition(topic, partition);
    ctx.metrics
        .partition_starts
        .get_or_create(pm.labels())
        .inc();
    pm.set_results_from_ms(protocol.results_from());
    let part = PartitionIo {
        ctx,
        rt,
        stage,
        partition,
        topic,
        pm,
        lease,
        protocol,
        producers,
        actions: Vec::new(),
        results: Vec::new(),
        clock: Instant::now(),
        now: 0,
        timing,
        claim,
        releasing: false,
        rows,
    };
    Ok(Opened::Ready(consumer, Box::new(part)))
}

/// The protocol's start for `begin`, and a progress to record before reading (a new
/// definition's: recorded at once, so the operator sees the new definition taken up; a crash
/// before the write decides the same again from the old record).
fn start_point(
    begin: &Begin,
    consumer: &BaseConsumer,
    stage: Stage,
    topic: &str,
    partition: i32,
) -> Result<(StartPoint, Option<Progress>), RuntimeError> {
    Ok(match begin {
        Begin::Resume(p) => (StartPoint::Checkpoint(p.clone()), None),
        Begin::NewDefinition { progress, .. } => (
            StartPoint::Checkpoint(progress.clone()),
            Some(progress.clone()),
        ),
        Begin::Fresh { from, .. } => (
            StartPoint::Fresh {
                offset: fresh_offset(consumer, stage, topic, partition, *from)?,
            },
            None,
        ),
    })
}

/// Where a partition starts afresh: `from` (the source topic's `startFrom`, or a reset's `to`),
/// or the beginning of the repartition partition (everything in it is for this job; the merge
/// stage skips other runs' messages).
fn fresh_offset(
    consumer: &BaseConsumer,
    stage: Stage,
    topic: &str,
    partition: i32,
    from: StartFrom,
) -> Result<i64, RuntimeError> {
    let action = match stage {
        Stage::Source => "reading the partition's offsets",
        Stage::Merge => "reading the repartition partition's offsets",
    };
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(|source| RuntimeError::Kafka {
            partition,
            action,
            source,
        })?;
    Ok(match (stage, from) {
        (Stage::Merge, _) | (Stage::Source, StartFrom::Earliest) => low,
        (Stage::Source, StartFrom::Latest) => high,
        (Stage::Source, StartFrom::Time(ms)) => {
            offset_for_time(consumer, topic, partition, ms)?.unwrap_or(high)
        }
    })
}

/// One line when a partition starts a new run: another definition than its checkpoint's, or a
/// reset (docs/semantics.md, "Edits, resets and start times").
fn log_run(
    stage: Stage,
    partition: i32,
    stored: &Run,
    decision: &start::Decision,
    protocol: &PartitionProtocol,
) {
    let results_from = decision
        .run
        .results_from
        .map_or_else(|| "every window".to_string(), weir_engine::time::format);
    let definition = decision.run.definition.as_deref().unwrap_or_default();
    let from = protocol.start_offset();
    match (&decision.begin, stage) {
        (Begin::NewDefinition { previous, .. }, _) => info!(
            partition,
            previous,
            definition,
            replay_from = from,
            results_from,
            "the job's definition changed: replaying from the checkpoint's replay point for the \
             new definition, whose results start at results_from"
        ),
        (
            Begin::Fresh {
                reset: Some(reset), ..
            },
            Stage::Source,
        ) => info!(
            partition,
            reset,
            definition,
            from,
            results_from,
            "reset: starting the partition again from reset.to"
        ),
        (Begin::Fresh { .. }, Stage::Merge) if stored.definition.is_some() => info!(
            stage = 2,
            partition,
            previous = stored.definition.as_deref().unwrap_or_default(),
            previous_reset = stored.reset.as_deref().unwrap_or_default(),
            definition,
            run_tag = %decision.run_tag(),
            from,
            "a new run of the job (edited or reset): merging it afresh from the repartition \
             partition's log start, skipping other runs' partials"
        ),
        _ => {}
    }
}

/// The first offset of `partition` whose Kafka timestamp is at or after `ms` (ListOffsets by
/// time), or `None` when every record is older.
pub(crate) fn offset_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    ms: i64,
) -> Result<Option<i64>, RuntimeError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(ms))
        .map_err(|source| RuntimeError::Kafka {
            partition,
            action: "looking up the offset of the start time",
            source,
        })?;
    let found = consumer
        .offsets_for_times(tpl, Duration::from_secs(30))
        .map_err(|source| RuntimeError::Kafka {
            partition,
            action: "looking up the offset of the start time",
            source,
        })?;
    Ok(found
        .find_partition(topic, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
}

fn log_start(
    stage: Stage,
    partition: i32,
    epoch: i64,
    protocol: &PartitionProtocol,
    producers: &Outbox,
) {
    let (from, replay_until) = (protocol.start_offset(), protocol.replay_until());
    match stage {
        Stage::Source => info!(
            partition,
            epoch,
            from,
            replay_until,
            two_stage = producers.repartition.is_some(),
            "partition started"
        ),
        Stage::Merge => info!(
            stage = 2,
            partition, epoch, from, replay_until, "repartition partition started"
        ),
    }
}

/// A consumer of the source cluster, for `stage`'s topic.
fn new_consumer(
    ctx: &JobContext,
    stage: Stage,
    partition: i32,
) -> Result<BaseConsumer, RuntimeError> {
    let role = match stage {
        Stage::Source => "consumer",
        Stage::Merge => "repartition consumer",
    };
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
fn assign_at(
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

/// A partition's producers: the sink, and for a source partition the dead-letter topic and
/// (two-stage jobs) the repartition topic. The merge stage has a dead-letter producer too, for
/// results too large for the sink.
fn outbox(ctx: &JobContext, stage: Stage, partition: i32) -> Result<Outbox, RuntimeError> {
    let sink = DeliveryCountingProducer::new(
        &ctx.sink,
        &ctx.spec.sink.kafka.topic.0,
        partition,
        "sink producer",
    )?;
    let dead_letter = match (&ctx.dead_letter, &ctx.spec.dead_letter) {
        (Some(s), Some(d)) => Some(DeliveryCountingProducer::new(
            s,
            &d.kafka.topic.0,
            partition,
            "dead-letter producer",
        )?),
        _ => None,
    };
    let repartition = match (stage, &ctx.merge) {
        (Stage::Source, Some(m)) => Some(m.partials.sender(&m.producer, &m.topic, partition)?),
        _ => None,
    };
    Ok(Outbox {
        sink,
        dead_letter,
        repartition,
        text: Default::default(),
        partial: Vec::new(),
    })
}

/// One partition's moving parts around its protocol.
struct PartitionIo<'a> {
    ctx: &'a JobContext,
    rt: &'a Handle,
    stage: Stage,
    partition: i32,
    topic: &'a str,
    pm: PartitionMetrics,
    lease: PartitionLease,
    protocol: PartitionProtocol,
    producers: Outbox,
    /// The protocol's outbox, reused (its capacity stays).
    actions: Vec<Action>,
    /// Results taken from the protocol a chunk at a time ([`Action::Results`]), reused.
    results: Vec<WindowResult>,
    /// The protocol's time origin (monotonic).
    clock: Instant,
    /// The protocol's time (ms since `clock`) as last read: after a wait for a message, after
    /// a message whose actions were carried out (sending may wait for room), and at the timers,
    /// every [`TIMER_EVERY`] messages. Not for every message: a clock read costs 50–90 ns, a
    /// tenth of a dense job's record (docs/benchmarks.md). Between readings the partition only
    /// reads messages that were already queued, so it lags the clock by their decoding.
    now: i64,
    timing: Timing,
    /// The epoch and stop flag this partition runs under.
    claim: &'a Claim,
    /// The next checkpoint is the last, written released (a graceful stop).
    releasing: bool,
    /// Its part of the worker's bound on open rows ([`crate::budget`]).
    rows: RowShare,
}

impl PartitionIo<'_> {
    fn now_ms(&self) -> i64 {
        i64::try_from(self.clock.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Read until stopped or fenced.
    fn read(&mut self, consumer: &BaseConsumer) -> Result<PartitionEnd, RuntimeError> {
        self.protocol.begin(&mut self.actions);
        if let Some(end) = self.act(None)? {
            return Ok(end);
        }
        let mut holes = match self.stage {
            // A source topic's holes are believed (transaction markers, compaction, retention).
            Stage::Source => Contiguous::trusting(),
            // weir writes the repartition topic without transactions or compaction: a hole is
            // a broker's answer that jumped ahead, read again before it is believed.
            Stage::Merge => Contiguous::rereading(),
        };
        let mut last_gauges: Option<i64> = None;
        let mut since_timers = 0u32;
        loop {
            if self.claim.stopped(self.ctx) {
                return Ok(PartitionEnd::Stopped);
            }
            let polled = match consumer.poll(Duration::ZERO) {
                Some(polled) => Some(polled),
                None => {
                    // Caught up: wait for the next message, then read the clock and look at the
                    // timers, so that a slow partition's markers and checkpoints do not wait
                    // for TIMER_EVERY messages.
                    let polled = consumer.poll(Duration::from_millis(100));
                    self.now = self.now_ms();
                    since_timers = TIMER_EVERY;
                    polled
                }
            };
            match polled {
                None => {}
                Some(Err(e)) => match self.stage {
                    Stage::Source => {
                        warn!(partition = self.partition, error = %e, "consumer error")
                    }
                    Stage::Merge => {
                        warn!(stage = 2, partition = self.partition, error = %e, "consumer error")
                    }
                },
                Some(Ok(m)) => {
                    if let Some(end) = self.message(consumer, &mut holes, &m)? {
                        return Ok(end);
                    }
                }
            }
            since_timers += 1;
            if since_timers < TIMER_EVERY {
                continue;
            }
            since_timers = 0;
            self.now = self.now_ms();
            if last_gauges.is_none_or(|t| self.now - t >= GAUGE_EVERY_MS) {
                last_gauges = Some(self.now);
                self.gauges(consumer);
                // Reading the lag waited for the broker.
                self.now = self.now_ms();
            }
            let limit = self.rows.publish(self.protocol.engine().open_rows());
            self.protocol.set_row_limit(limit);
            self.protocol.tick(self.now, &mut self.actions);
            if let Some(end) = self.act(None)? {
                return Ok(end);
            }
        }
    }

    /// One message read: through the hole check, to the protocol, and its actions carried out.
    fn message(
        &mut self,
        consumer: &BaseConsumer,
        holes: &mut Contiguous,
        m: &BorrowedMessage<'_>,
    ) -> Result<Option<PartitionEnd>, RuntimeError> {
        let next = self.protocol.next_offset();
        if self.stage == Stage::Source && next == self.protocol.start_offset() && m.offset() > next
        {
            // The first record is past the start or replay point.
            warn!(
                partition = self.partition,
                from = next,
                to = m.offset(),
                "the first offsets to read are not in the partition (records deleted \
                 by retention before this job read them, or transaction markers); going \
                 on from the first record there"
            );
        }
        if !continues(consumer, holes, &self.pm, next, m.offset())? {
            return Ok(None);
        }
        // The merge stage's message is a record too: a partial it refuses is dead-lettered whole.
        let rec = Record {
            partition: self.partition,
            offset: m.offset(),
            key: m.key(),
            timestamp: m.timestamp().to_millis(),
            value: m.payload().unwrap_or(&[]),
        };
        match self.stage {
            Stage::Source => {
                self.pm.record_in(rec.value.len());
                self.ctx.totals.records.fetch_add(1, Ordering::Relaxed);
                // The verdict is in the actions too (a dead letter unless replayed).
                let _ = self.protocol.record(&rec, self.now, &mut self.actions);
                self.act(Some(&rec))
            }
            Stage::Merge => {
                self.protocol
                    .partial(rec.offset, rec.value, &mut self.actions);
                self.ctx
                    .totals
                    .partials_merged
                    .fetch_add(1, Ordering::Relaxed);
                self.act(Some(&rec))
            }
        }
    }

    /// Carry out the protocol's actions in order; `Some` when a checkpoint write was fenced
    /// (the actions after it are dropped). `rec`: the record just given to the protocol.
    fn act(&mut self, rec: Option<&Record<'_>>) -> Result<Option<PartitionEnd>, RuntimeError> {
        if self.actions.is_empty() {
            return Ok(None);
        }
        let mut actions = std::mem::take(&mut self.actions);
        let mut fenced = None;
        for action in actions.drain(..) {
            if let Some(end) = self.act_on(action, rec)? {
                fenced = Some(end);
                break;
            }
        }
        // Dropped actions go with `drain`; the buffer keeps its capacity.
        self.actions = actions;
        self.actions.clear();
        // Sending may have waited for room in a producer's queue, a checkpoint for its write.
        self.now = self.now_ms();
        Ok(fenced)
    }

    fn act_on(
        &mut self,
        action: Action,
        rec: Option<&Record<'_>>,
    ) -> Result<Option<PartitionEnd>, RuntimeError> {
        let partition = self.partition;
        match action {
            Action::Result(r) => self.send_result(&r)?,
            Action::Results { through } => self.send_results(through)?,
            Action::DeadLetter(rejection) => {
                if rejection.reason == RejectReason::StateFull {
                    // Reported in the checkpoints, for the job's status (docs/operator.md).
                    self.lease.note_state_full(crate::runtime::now_ms());
                }
                if let Some(rec) = rec {
                    self.dead_letter(rec, &rejection)?;
                }
            }
            Action::Partial { to, partial } => {
                partial.write_message(&mut self.producers.partial);
                self.send_partial(to, partial.group.as_bytes(), &self.producers.partial)?;
            }
            Action::Marker(marker) => {
                let value = marker.to_bytes();
                let partitions = self.ctx.merge.as_ref().map_or(0, |m| m.partitions);
                for to in 0..partitions {
                    self.send_partial(to, b"", &value)?;
                }
            }
            Action::Checkpoint(progress) => return self.checkpoint(progress),
            Action::CaughtUp => {
                if let Ok(mut done) = self.ctx.totals.caught_up.lock() {
                    done.insert((self.stage, partition));
                }
            }
            Action::Idle { offset } => {
                let idle_timeout =
                    Duration::from_millis(u64::try_from(self.timing.idle_timeout_ms).unwrap_or(0));
                info!(partition, offset, idle_timeout = ?idle_timeout,
                    "idle: no record for the idle timeout; sent the open windows' partials and \
                     told the merge stage not to wait for this partition");
            }
            Action::Active { offset } => info!(partition, offset, "active again after being idle"),
            Action::LatePartial {
                offset,
                source,
                window_start,
                watermark,
                late,
            } => {
                // Lost for the windows it was for: say so (the first few, then sparsely).
                if late <= 10 || late.is_multiple_of(1000) {
                    warn!(stage = 2, partition, offset, source,
                        window_start = %weir_engine::time::format(window_start),
                        watermark = %weir_engine::time::format(watermark),
                        late_partials = late,
                        "a partial arrived after every window it counts toward had closed (its \
                         source partition was idle, or behind the others by more than the \
                         allowed lateness); dropped");
                }
            }
            Action::OtherRun {
                offset,
                tag,
                skipped,
            } => {
                // Expected around an edit or a reset (a rolling update runs both definitions).
                debug!(
                    stage = 2,
                    partition,
                    offset,
                    tag = tag.as_deref().unwrap_or("none"),
                    skipped,
                    "skipping a partial or marker of another run of the job"
                );
            }
            Action::Unreadable { offset, error } => {
                // Not written by weir (someone else produced to the topic).
                warn!(stage = 2, partition, offset, error = %error,
                    "skipping a message that is not a partial aggregate");
            }
        }
        Ok(None)
    }

    fn origin(&self) -> Origin<'_> {
        Origin {
            job: &self.ctx.name,
            topic: self.topic,
            partition: self.partition,
        }
    }

    /// The results of an [`Action::Results`], built and written [`RESULTS_CHUNK`] at a time.
    fn send_results(&mut self, through: u64) -> Result<(), RuntimeError> {
        let mut chunk = std::mem::take(&mut self.results);
        let sent = loop {
            // Written out: their buffers build the next chunk.
            self.protocol.recycle_results(&mut chunk);
            self.protocol
                .next_results(through, RESULTS_CHUNK, &mut chunk);
            if chunk.is_empty() {
                break Ok(());
            }
            if let Err(e) = chunk.iter().try_for_each(|r| self.send_result(r)) {
                break Err(e);
            }
        };
        self.protocol.recycle_results(&mut chunk);
        self.results = chunk;
        sent
    }

    fn send_result(&mut self, r: &WindowResult) -> Result<(), RuntimeError> {
        // Not `self.origin()`: the producers are borrowed mutably (their reused text buffers).
        let origin = Origin {
            job: &self.ctx.name,
            topic: self.topic,
            partition: self.partition,
        };
        let Some(value) = self
            .producers
            .result(&origin, &self.ctx.plan, r, &self.pm)?
        else {
            return Ok(());
        };
        self.pm.result_emitted(value.len());
        self.ctx.totals.results.fetch_add(1, Ordering::Relaxed);
        if self.ctx.echo {
            println!("{value}");
        }
        Ok(())
    }

    /// A partial or marker to partition `to` of the repartition topic. One too large for the
    /// producer cannot be dropped without changing results: the partition stops.
    fn send_partial(&self, to: i32, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        let Some(out) = &self.producers.repartition else {
            return Ok(());
        };
        if out.send_to(self.partition, to, key, value)? == Sent::TooLarge {
            return Err(ProducerError::Delivery {
                partition: self.partition,
                topic: out.topic().to_string(),
                message: format!(
                    "a partial aggregate of {} bytes is over the repartition producer's \
                     message.max.bytes ({})",
                    key.len() + value.len(),
                    out.max_message_bytes()
                ),
            }
            .into());
        }
        // A partial, not a result: counted as sent to the merge stage.
        self.pm.partials_sent.inc();
        self.ctx
            .totals
            .partials_sent
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn dead_letter(&self, rec: &Record<'_>, rejection: &Rejection) -> Result<(), RuntimeError> {
        self.ctx.totals.rejected.fetch_add(1, Ordering::Relaxed);
        self.producers
            .dead_letter(&self.origin(), rec, rejection, &self.pm)
    }

    fn gauges(&self, consumer: &BaseConsumer) {
        if let Some(wm) = self.protocol.watermark() {
            self.pm.set_watermark_ms(wm);
        }
        // The merge stage's moves as its sources' markers arrive.
        self.pm.set_results_from_ms(self.protocol.results_from());
        let engine = self.protocol.engine();
        self.pm.set_open(engine.open_rows(), engine.open_groups());
        let next = self.protocol.next_offset();
        if let Ok((_, high)) =
            consumer.fetch_watermarks(self.topic, self.partition, Duration::from_secs(2))
        {
            self.pm.set_lag(high, next);
            if self.stage == Stage::Source {
                if let Ok(mut lag) = self.ctx.totals.lag.lock() {
                    lag.insert(self.partition, (high - next).max(0));
                }
            }
        }
    }

    /// Flush the producers, then write `progress`. `Some` when a newer owner fenced us out; any
    /// other failure of the write is transient: keep going, the next interval tries again, and
    /// a crash meanwhile only means a longer replay.
    fn checkpoint(&mut self, progress: Progress) -> Result<Option<PartitionEnd>, RuntimeError> {
        let t0 = Instant::now();
        self.producers.flush(self.partition)?;
        let next_offset = progress.next_offset;
        self.lease.raise_epoch(self.claim.epoch());
        let written = if self.releasing {
            self.rt.block_on(self.lease.release(progress))
        } else {
            self.rt.block_on(self.lease.commit(progress))
        };
        match written {
            Ok(bytes) => {
                self.pm.checkpoint_written(t0.elapsed(), bytes);
                if let (Stage::Source, Some(g)) = (self.stage, &self.ctx.progress_group) {
                    g.record(self.topic, self.partition, next_offset);
                }
                Ok(None)
            }
            Err(e) if e.is_fenced() => Ok(Some(PartitionEnd::Fenced(e))),
            Err(e) => {
                self.pm.checkpoint_failed(t0.elapsed());
                warn!(partition = self.lease.partition(), error = %e, "checkpoint failed; will retry");
                Ok(None)
            }
        }
    }

    /// The end of a partition: the last marker and (when stopped) the final checkpoint; either
    /// way the outcome is counted, logged and the partition's gauges released.
    fn close(mut self, end: PartitionEnd) -> Result<PartitionEnd, RuntimeError> {
        let stopped = matches!(end, PartitionEnd::Stopped);
        // A graceful stop's final checkpoint releases the partition to its next owner.
        self.releasing = stopped;
        let now = self.now_ms();
        self.protocol.finish(stopped, now, &mut self.actions);
        let end = match self.act(None)? {
            Some(fenced) => fenced,
            None => end,
        };
        let (ctx, topic, partition) = (self.ctx, self.topic, self.partition);
        if let PartitionEnd::Fenced(e) = &end {
            ctx.metrics.partitions_fenced.inc();
            warn!(topic, partition, error = %e, "partition stopped: a newer owner took it");
        } else {
            let next_offset = self.protocol.next_offset();
            info!(topic, partition, next_offset, "partition stopped");
        }
        ctx.metrics.release_partition(topic, partition);
        Ok(end)
    }
}
