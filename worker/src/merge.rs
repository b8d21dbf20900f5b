//! Stage 2 of a two-stage job (DESIGN.md invariant 5): one thread per repartition partition,
//! merging the partial aggregates the source partitions send there, and writing a window's
//! final result when every source partition's watermark has passed its end.
//!
//! It checkpoints like stage 1, in its own store: the next offset in the repartition
//! partition, the earliest offset still needed by an open window (replay point), how far
//! results were emitted, and each source partition's last reported watermark. A restart seeks to
//! the replay point with the sources' watermarks restored: partials of windows already emitted
//! are dropped, the others are merged again, and a partial seen twice (stage 1 re-sends after
//! its own restarts) is merged once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tokio::runtime::Handle;
use tracing::{info, warn};
use weir_engine::engine::{Exchange, MergeOutcome};
use weir_engine::Engine;

use crate::checkpoint::{PartitionLease, Progress, SourceProgress};
use crate::contiguous::Contiguous;
use crate::metrics::PartitionMetrics;
use crate::runtime::{
    assign_at, commit_progress, continues, finish_partition, new_consumer, take_lease, JobContext,
    Out, PartitionEnd, RuntimeError,
};

/// Run repartition partition `partition` until stopped or fenced.
pub fn run_merge_partition(
    ctx: &JobContext,
    rt: &Handle,
    partition: i32,
) -> Result<PartitionEnd, RuntimeError> {
    let Some(merge) = &ctx.merge else {
        return Ok(PartitionEnd::Stopped);
    };
    let topic = merge.topic.as_str();
    let (mut lease, resume) = match take_lease(ctx, rt, &merge.store, topic, partition)? {
        Ok(x) => x,
        Err(fenced) => return Ok(fenced),
    };
    let consumer = new_consumer(ctx, partition, "repartition consumer")?;
    let mut engine = Engine::new(ctx.plan.clone(), 0..merge.sources);
    let (from, seen_through, emitted_through) = match &resume {
        Some(p) => {
            for (source, s) in &p.sources {
                engine.source_watermark(*source, s.watermark, s.idle);
            }
            (
                p.replay_from,
                p.next_offset,
                p.emitted_through.unwrap_or(i64::MIN),
            )
        }
        None => {
            // Everything in the repartition topic is for this job: start at its beginning.
            let (low, _) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(30))
                .map_err(|source| RuntimeError::Kafka {
                    partition,
                    action: "reading the repartition partition's offsets",
                    source,
                })?;
            (low, low, i64::MIN)
        }
    };
    assign_at(&consumer, topic, partition, from)?;
    let sink = Out::new(
        &ctx.sink,
        &ctx.spec.sink.kafka.topic.0,
        partition,
        "sink producer",
    )?;
    info!(
        stage = 2,
        partition,
        epoch = ctx.epoch,
        from,
        replay_until = seen_through,
        "repartition partition started"
    );
    let mut run = MergeRun {
        ctx,
        partition,
        pm: ctx.metrics.partition(topic, partition),
        engine,
        sink,
        next: from,
        seen_through,
        emitted_through,
        caught_up: false,
        late: 0,
    };
    run.note_caught_up();
    let mut last_checkpoint = Instant::now();
    // weir writes this topic without transactions or compaction: a hole is a broker's answer
    // that jumped ahead, read again before it is believed (crate::contiguous).
    let mut holes = Contiguous::rereading();
    let end = loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break PartitionEnd::Stopped;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => warn!(stage = 2, partition, error = %e, "consumer error"),
            Some(Ok(m)) => {
                let offset = m.offset();
                if continues(&consumer, &mut holes, &run.pm, run.next, offset)? {
                    run.process(offset, m.payload().unwrap_or_default())?;
                }
            }
        }
        if last_checkpoint.elapsed() >= ctx.checkpoint_interval {
            last_checkpoint = Instant::now();
            if let Some(fenced) = run.checkpoint(rt, &mut lease)? {
                break fenced;
            }
            run.pm.set_watermark_ms(run.engine.watermark());
            run.pm
                .set_open(run.engine.open_rows(), run.engine.open_groups());
            if let Ok((_, high)) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(2))
            {
                run.pm.set_lag(high, run.next);
            }
        }
    };
    let next = run.next;
    finish_partition(ctx, topic, partition, next, end, || {
        run.checkpoint(rt, &mut lease)
    })
}

/// One repartition partition's moving parts.
struct MergeRun<'a> {
    ctx: &'a JobContext,
    partition: i32,
    pm: PartitionMetrics,
    engine: Engine,
    sink: Out,
    /// Next offset to read.
    next: i64,
    /// Offsets before this were read before the restart (replayed now).
    seen_through: i64,
    /// Results ending at or before this were written before the restart.
    emitted_through: i64,
    caught_up: bool,
    /// Partials dropped as late so far.
    late: u64,
}

impl MergeRun<'_> {
    fn note_caught_up(&mut self) {
        if !self.caught_up && self.next >= self.seen_through {
            self.caught_up = true;
            self.ctx.totals.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Merge one message of the repartition partition and write the results it closes.
    fn process(&mut self, offset: i64, payload: &[u8]) -> Result<(), RuntimeError> {
        let partition = self.partition;
        match Exchange::from_bytes(payload) {
            Ok(Exchange::Partial(p)) => {
                let outcome = self.engine.merge_partial(partition, offset, &p);
                if outcome == MergeOutcome::Late {
                    self.late += 1;
                    // Lost for the windows it was for: say so (the first few, then sparsely).
                    if self.late <= 10 || self.late.is_multiple_of(1000) {
                        warn!(stage = 2, partition, offset, source = p.source,
                            window_start = %weir_engine::time::format(p.first),
                            watermark = %weir_engine::time::format(self.engine.watermark()),
                            late_partials = self.late,
                            "a partial arrived after every window it counts toward had closed (its \
                             source partition was idle, or behind the others by more than the \
                             allowed lateness); dropped");
                    }
                }
            }
            Ok(Exchange::Watermark {
                source,
                watermark,
                idle,
            }) => self.engine.source_watermark(source, watermark, idle),
            Err(e) => {
                // Not written by weir (someone else produced to the topic).
                warn!(stage = 2, partition, offset, error = %e, "skipping a message that is not a partial aggregate");
            }
        }
        self.next = offset + 1;
        self.ctx.totals.merged.fetch_add(1, Ordering::Relaxed);
        self.note_caught_up();
        let plan = &self.ctx.plan;
        for r in self.engine.take_results() {
            if r.end <= self.emitted_through {
                continue;
            }
            let value = r.to_json(plan);
            let key = r.key_json(plan);
            self.sink
                .send(partition, key.as_bytes(), value.as_bytes(), None)?;
            self.pm.result_emitted(value.len());
            self.ctx.totals.results.fetch_add(1, Ordering::Relaxed);
            if self.ctx.echo {
                println!("{value}");
            }
        }
        Ok(())
    }

    /// Flush the sink, then record stage-2 progress. `Some` when fenced out.
    fn checkpoint(
        &mut self,
        rt: &Handle,
        lease: &mut PartitionLease,
    ) -> Result<Option<PartitionEnd>, RuntimeError> {
        let t0 = Instant::now();
        self.sink.flush(self.partition)?;
        // During a replay the position is behind what was already seen.
        let next = self.next.max(self.seen_through);
        let known = |t: i64| (t != i64::MIN).then_some(t);
        let engine = &self.engine;
        let progress = Progress {
            next_offset: next,
            replay_from: engine
                .replay_point(self.partition)
                .map(|(o, _)| o)
                .unwrap_or(next),
            watermark: known(engine.watermark()),
            emitted_through: known(engine.watermark().max(self.emitted_through)),
            sources: engine
                .partitions()
                .iter()
                .map(|(p, s)| {
                    (
                        *p,
                        SourceProgress {
                            watermark: known(s.watermark),
                            idle: s.idle,
                        },
                    )
                })
                .collect(),
            ..Progress::default()
        };
        Ok(commit_progress(rt, lease, &self.pm, progress, t0))
    }
}
