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

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{info, warn};
use weir_engine::engine::Exchange;
use weir_engine::Engine;

use crate::checkpoint::{PartitionLease, Progress, SourceProgress};
use crate::runtime::{JobContext, Out, PartitionEnd, RuntimeError};

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
    let pm = ctx.metrics.partition(topic, partition);
    let ckpt_err = |source| RuntimeError::Checkpoint { partition, source };
    let kafka_err = |action| {
        move |source| RuntimeError::Kafka {
            partition,
            action,
            source,
        }
    };
    let (mut lease, resume) = match rt.block_on(PartitionLease::acquire(
        merge.store.clone(),
        topic,
        partition,
        ctx.epoch,
        &ctx.owner,
    )) {
        Ok(x) => x,
        Err(e) if e.is_fenced() => {
            ctx.metrics.partitions_fenced.inc();
            return Ok(PartitionEnd::Fenced(e));
        }
        Err(e) => return Err(ckpt_err(e)),
    };
    let consumer: BaseConsumer =
        ctx.source
            .config()
            .create()
            .map_err(|source| RuntimeError::CreateClient {
                partition,
                role: "repartition consumer",
                source,
            })?;
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
                .map_err(kafka_err("reading the repartition partition's offsets"))?;
            (low, low, i64::MIN)
        }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(kafka_err("choosing the start offset"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka_err("assigning the repartition partition"))?;
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
    let mut next = from;
    let mut caught_up = false;
    let mut note_caught_up = |next: i64| {
        if !caught_up && next >= seen_through {
            caught_up = true;
            ctx.totals.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    };
    note_caught_up(next);
    let mut last_checkpoint = Instant::now();
    let end = loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break PartitionEnd::Stopped;
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            match m {
                Err(e) => warn!(stage = 2, partition, error = %e, "consumer error"),
                Ok(m) => {
                    let offset = m.offset();
                    match Exchange::from_bytes(m.payload().unwrap_or_default()) {
                        Ok(Exchange::Partial(p)) => {
                            engine.merge_partial(partition, offset, &p);
                        }
                        Ok(Exchange::Watermark {
                            source,
                            watermark,
                            idle,
                        }) => engine.source_watermark(source, watermark, idle),
                        Err(e) => {
                            // Not written by weir (someone else produced to the topic).
                            warn!(stage = 2, partition, offset, error = %e, "skipping a message that is not a partial aggregate");
                        }
                    }
                    next = offset + 1;
                    note_caught_up(next);
                    for r in engine.take_results() {
                        if r.end <= emitted_through {
                            continue;
                        }
                        let value = r.to_json(&ctx.plan);
                        let key = r.key_json(&ctx.plan);
                        sink.send(partition, key.as_bytes(), value.as_bytes(), None)?;
                        pm.result_emitted(value.len());
                        ctx.totals.results.fetch_add(1, Ordering::Relaxed);
                        if ctx.echo {
                            println!("{value}");
                        }
                    }
                }
            }
        }
        if last_checkpoint.elapsed() >= ctx.checkpoint_interval {
            last_checkpoint = Instant::now();
            if let Some(fenced) = checkpoint(
                rt,
                &mut lease,
                &engine,
                &sink,
                &pm,
                partition,
                next.max(seen_through),
                emitted_through,
            )? {
                break fenced;
            }
            pm.set_watermark_ms(engine.watermark());
            pm.set_open(engine.open_rows(), engine.open_groups());
            if let Ok((_, high)) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(2))
            {
                pm.set_lag(high, next);
            }
        }
    };
    let end = match end {
        PartitionEnd::Stopped => match checkpoint(
            rt,
            &mut lease,
            &engine,
            &sink,
            &pm,
            partition,
            next.max(seen_through),
            emitted_through,
        )? {
            Some(fenced) => fenced,
            None => PartitionEnd::Stopped,
        },
        fenced => fenced,
    };
    if let PartitionEnd::Fenced(e) = &end {
        ctx.metrics.partitions_fenced.inc();
        warn!(stage = 2, partition, error = %e, "repartition partition stopped: a newer owner took it");
    } else {
        info!(
            stage = 2,
            partition,
            next_offset = next,
            "repartition partition stopped"
        );
    }
    ctx.metrics.release_partition(topic, partition);
    Ok(end)
}

/// Flush the sink, then record stage-2 progress. `Some` when fenced out.
#[allow(clippy::too_many_arguments)]
fn checkpoint(
    rt: &Handle,
    lease: &mut PartitionLease,
    engine: &Engine,
    sink: &Out,
    pm: &crate::metrics::PartitionMetrics,
    partition: i32,
    next: i64,
    emitted_before: i64,
) -> Result<Option<PartitionEnd>, RuntimeError> {
    let t0 = Instant::now();
    sink.flush(partition)?;
    let known = |t: i64| (t != i64::MIN).then_some(t);
    let replay_from = engine
        .replay_point(partition)
        .map(|(o, _)| o)
        .unwrap_or(next);
    let progress = Progress {
        next_offset: next,
        replay_from,
        watermark: known(engine.watermark()),
        emitted_through: known(engine.watermark().max(emitted_before)),
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
    match rt.block_on(lease.commit(progress)) {
        Ok(bytes) => {
            pm.checkpoint_written(t0.elapsed(), bytes);
            Ok(None)
        }
        Err(e) if e.is_fenced() => Ok(Some(PartitionEnd::Fenced(e))),
        Err(e) => {
            pm.checkpoint_failed(t0.elapsed());
            warn!(stage = 2, partition, error = %e, "checkpoint failed; will retry");
            Ok(None)
        }
    }
}
