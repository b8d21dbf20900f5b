//! The worker pipeline against a bare Kafka consumer, on a real broker (issue 4).
//!
//! `cargo bench -p weir-worker --bench pipeline` starts nisshi (in-memory storage) on a free
//! loopback port, loads `WEIR_BENCH_RECORDS` (default 2,000,000) payment records into a
//! 4-partition topic, then measures in the same process, `WEIR_BENCH_ROUNDS` times (default 3),
//! alternating:
//!
//! - (a) a bare rdkafka `BaseConsumer` assigned all 4 partitions from the beginning, reading
//!   every record (and touching its payload);
//! - (a4) the same with one bare consumer per partition, one thread each (the worker's layout);
//! - (b) the worker: `partition::spawn_partition` for each partition (consumer, engine, idempotent sink
//!   producer, checkpoints in a directory), tumbling 1m windows grouped by merchant with count,
//!   sum and mean, timed until it has read every record; with checkpoints effectively off
//!   (every hour), every 10 s and every 1 s;
//! - (c) the same job in two stages (issue 6): declared not co-partitioned, so each partition
//!   sends partial aggregates and watermark markers through a 4-partition repartition topic to
//!   a second stage (4 more threads) that merges them and writes the results; checkpoints
//!   every 10 s; timed until the second stage has merged every message the first sent.
//!
//! It prints every run and a summary (medians, ratios to (a) of the same round, checkpoint
//! cost, two stages against one). `cargo test --all-targets` runs this binary without `--bench`: it then does one small
//! round (20,000 records) so the code keeps working without taking minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/broker.rs"]
mod broker;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_crds::StreamJobSpec;
use weir_engine::JobPlan;
use weir_worker::checkpoint::{CheckpointStore, DirStore, PartitionLease, Progress};
use weir_worker::kafka::{self, ClientSettings};
use weir_worker::merge::MergeSettings;
use weir_worker::metrics::Metrics;
use weir_worker::partition::{spawn_partition, Stage};
use weir_worker::runtime::{JobContext, PartitionEnd, Totals};

const TOPIC: &str = "payments";
const SINK: &str = "results";
const PARTITIONS: i32 = 4;
const MERCHANTS: u64 = 10_000;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
/// Records per minute of event time: 2M records span 10 minutes, so ~10 tumbling windows of
/// 10,000 groups close during a run (about one result per 20 records).
const PER_MINUTE: u64 = 200_000;
/// Give up on a run after this long (a stall is a bug, not a slow run).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const TEN_S: Duration = Duration::from_secs(10);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The benchmark's job: tumbling 1m grouped by merchant, count + sum + mean. The records are
/// keyed by merchant, so its groups are co-partitioned and one stage is exact; `two_stage`
/// declares them not co-partitioned, so the same job runs in two stages (partials through a
/// repartition topic, merged by a second stage), with the same results.
fn job_spec(bootstrap: &str, two_stage: bool) -> (StreamJobSpec, JobPlan) {
    let co_partitioned = !two_stage;
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: bench}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {TOPIC}, startFrom: earliest}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: [merchant]
  repartition: {{coPartitioned: {co_partitioned}}}
  window: {{type: tumbling, size: 1m, allowedLateness: 1s}}
  aggregations:
    - {{name: n, fn: count}}
    - {{name: total, fn: sum, field: amount}}
    - {{name: avg, fn: mean, field: amount}}
  sink: {{kafka: {{topic: {SINK}}}}}
"#
    );
    let job = weir_crds::parse_stream_job(&yaml)
        .expect("bench job parses")
        .job;
    let plan = JobPlan::new(&job.spec).expect("bench job is valid");
    (job.spec, plan)
}

/// Record `i`: ~90 bytes of JSON, keyed by merchant; event time advances `PER_MINUTE` records
/// per minute with up to 500 ms of disorder (within the allowed lateness: nothing is refused).
fn record(i: u64, rnd: &mut impl FnMut() -> u64) -> (String, String) {
    let t = T0 + 1000 + (i * 60_000 / PER_MINUTE) as i64 - (rnd() % 500) as i64;
    let merchant = format!("m{:04}", rnd() % MERCHANTS);
    let cents = rnd() % 100_000;
    let value = format!(
        r#"{{"ts":"{}","merchant":"{merchant}","amount":{}.{:02},"customer":"c{}"}}"#,
        weir_engine::time::format(t),
        cents / 100,
        cents % 100,
        rnd() % 100_000
    );
    (merchant, value)
}

/// Produce `n` records into `TOPIC`; returns the payload bytes.
fn load(bootstrap: &str, n: u64) -> u64 {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = 0u64;
    for i in 0..n {
        let (key, value) = record(i, &mut rnd);
        bytes += value.len() as u64;
        let rec = BaseRecord::to(TOPIC)
            .key(key.as_bytes())
            .payload(value.as_bytes());
        weir_worker::kafka::send_when_room(&p, rec).expect("producing");
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    bytes
}

/// Records in each partition of `TOPIC` (low to high watermark).
fn partition_sizes(settings: &ClientSettings) -> Vec<u64> {
    let c: BaseConsumer = settings.config().create().expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(TOPIC, p, Duration::from_secs(30))
                .expect("watermarks");
            (high - low) as u64
        })
        .collect()
}

/// Read `n` records from `partitions` with one consumer; returns the payload bytes.
fn read(settings: &ClientSettings, partitions: &[i32], n: u64) -> u64 {
    let c: BaseConsumer = settings.config().create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(TOPIC, *p, Offset::Beginning)
            .expect("offset");
    }
    c.assign(&tpl).expect("assign");
    let started = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    while count < n {
        match c.poll(Duration::from_millis(100)) {
            None => assert!(started.elapsed() < RUN_TIMEOUT, "bare consumer stalled"),
            Some(Err(e)) => panic!("consuming: {e}"),
            Some(Ok(m)) => {
                count += 1;
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
            }
        }
    }
    black_box(bytes)
}

/// One measured run.
struct Run {
    round: usize,
    variant: &'static str,
    records: u64,
    seconds: f64,
    /// Until the (first stage of the) worker had read every record.
    first_stage_seconds: f64,
    /// Results written to the sink.
    results: u64,
    /// Messages sent to the repartition topic (two-stage jobs).
    exchanged: u64,
    /// Checkpoints written while timed (all partitions), and their summed duration.
    checkpoints: u64,
    checkpoint_seconds: f64,
    /// Stopping after the last record: final flush and checkpoint.
    stop_seconds: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// (a): one consumer, every partition.
fn bare(settings: &ClientSettings, n: u64, round: usize) -> Run {
    let t0 = Instant::now();
    let all: Vec<i32> = (0..PARTITIONS).collect();
    read(settings, &all, n);
    Run {
        round,
        variant: "(a) bare consumer, 1 thread",
        records: n,
        seconds: t0.elapsed().as_secs_f64(),
        first_stage_seconds: 0.0,
        results: 0,
        exchanged: 0,
        checkpoints: 0,
        checkpoint_seconds: 0.0,
        stop_seconds: 0.0,
    }
}

/// (a4): one consumer and thread per partition.
fn bare_per_partition(settings: &ClientSettings, sizes: &[u64], round: usize) -> Run {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (p, n) in sizes.iter().enumerate() {
            s.spawn(move || read(settings, &[p as i32], *n));
        }
    });
    Run {
        round,
        variant: "(a4) bare consumers, 1 thread/partition",
        records: sizes.iter().sum(),
        seconds: t0.elapsed().as_secs_f64(),
        first_stage_seconds: 0.0,
        results: 0,
        exchanged: 0,
        checkpoints: 0,
        checkpoint_seconds: 0.0,
        stop_seconds: 0.0,
    }
}

/// Sum of the values of the metric lines starting with `prefix` (every partition).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What (b) and (c) share.
struct Setup {
    bootstrap: String,
    rt: tokio::runtime::Runtime,
    n: u64,
}

/// (b): the worker's partition threads until they have read `n` records. (c), with
/// `two_stage`: the same job in two stages, with one more thread per partition of the
/// repartition topic (4; a fresh topic per run) for the second stage, until the first stage has read `n` records and the second has merged every message the
/// first sent (partials and watermark markers).
fn worker(
    setup: &Setup,
    two_stage: bool,
    interval: Duration,
    variant: &'static str,
    round: usize,
) -> Run {
    let (rt, n) = (&setup.rt, setup.n);
    let (spec, plan) = &job_spec(&setup.bootstrap, two_stage);
    let name = format!("bench-{round}-{}-{two_stage}", interval.as_secs());
    let dir = tempfile::tempdir().expect("checkpoint dir");
    let merge = two_stage.then(|| {
        let topic = format!("{name}-repartition");
        weir_worker::tools::create_topic(&setup.bootstrap, &topic, PARTITIONS)
            .expect("create the repartition topic");
        MergeSettings {
            producer: kafka::repartition_settings(spec, &name, &topic).expect("settings"),
            topic,
            partitions: PARTITIONS,
            sources: PARTITIONS,
            mine: (0..PARTITIONS).collect(),
            store: Arc::new(DirStore::new(dir.path().join("merge"))),
        }
    });
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals::default());
    let ctx = Arc::new(JobContext {
        name: name.clone(),
        spec: spec.clone(),
        plan: plan.clone(),
        source: kafka::source_settings(spec, &name).expect("source settings"),
        sink: kafka::sink_settings(spec, &name).expect("sink settings"),
        dead_letter: None,
        store: Arc::new(DirStore::new(dir.path())),
        checkpoint_interval: interval,
        epoch: 1,
        owner: "bench".to_string(),
        metrics: metrics.clone(),
        echo: false,
        stop: stop.clone(),
        totals: totals.clone(),
        merge,
        row_limit: None,
        // Consumer-group commits run on their own thread every 5 s, off the record path.
        progress_group: None,
    });
    let t0 = Instant::now();
    let mut threads: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            spawn_partition(ctx.clone(), rt.handle().clone(), Stage::Source, p).expect("thread")
        })
        .collect();
    if two_stage {
        threads.extend((0..PARTITIONS).map(|p| {
            spawn_partition(ctx.clone(), rt.handle().clone(), Stage::Merge, p).expect("thread")
        }));
    }
    let wait = |done: &dyn Fn() -> bool| {
        while !done() {
            assert!(
                !threads.iter().any(|t| t.is_finished()),
                "a partition thread ended early"
            );
            assert!(t0.elapsed() < RUN_TIMEOUT, "worker stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait(&|| totals.records.load(Ordering::Relaxed) >= n);
    let first_stage_seconds = t0.elapsed().as_secs_f64();
    if two_stage {
        // The partials a record closes are counted just after the record: let the last
        // record's be, then wait for the second stage to have merged every message.
        std::thread::sleep(Duration::from_millis(1));
        wait(&|| {
            let sent = totals.partials_sent.load(Ordering::Relaxed);
            sent > 0 && totals.partials_merged.load(Ordering::Relaxed) >= sent
        });
    }
    let seconds = t0.elapsed().as_secs_f64();
    let text = metrics.encode();
    let checkpoints = metric_sum(&text, "weir_checkpoint_duration_seconds_count{") as u64;
    let checkpoint_seconds = metric_sum(&text, "weir_checkpoint_duration_seconds_sum{");
    let t1 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join().expect("partition thread panicked") {
            Ok(PartitionEnd::Stopped) => {}
            other => panic!("partition ended with {other:?}"),
        }
    }
    assert_eq!(
        totals.rejected.load(Ordering::Relaxed),
        0,
        "bench records were rejected"
    );
    Run {
        round,
        variant,
        records: n,
        seconds,
        first_stage_seconds,
        results: totals.results.load(Ordering::Relaxed),
        exchanged: totals.partials_sent.load(Ordering::Relaxed),
        checkpoints,
        checkpoint_seconds,
        stop_seconds: t1.elapsed().as_secs_f64(),
    }
}

/// Median time of one checkpoint write to a `DirStore` alone (no producer flush): the store's
/// share of a checkpoint.
fn dir_store_write(rt: &tokio::runtime::Runtime) -> f64 {
    let dir = tempfile::tempdir().expect("checkpoint dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(DirStore::new(dir.path()));
    let (mut lease, _) = rt
        .block_on(PartitionLease::acquire(store, TOPIC, 0, 1, "bench"))
        .expect("lease");
    let times = (0..20)
        .map(|i| {
            let progress = Progress {
                next_offset: i,
                replay_from: i,
                replay_max_event_time: Some(T0),
                watermark: Some(T0),
                emitted_through: Some(T0),
                ..Default::default()
            };
            let t = Instant::now();
            rt.block_on(lease.commit(progress)).expect("commit");
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_u64("WEIR_BENCH_RECORDS", if full { 2_000_000 } else { 20_000 });
    let rounds = env_u64("WEIR_BENCH_ROUNDS", if full { 3 } else { 1 }).max(1) as usize;

    let broker = broker::Broker::start();
    let bootstrap = broker.bootstrap.clone();
    weir_worker::tools::create_topic(&bootstrap, TOPIC, PARTITIONS).expect("create topic");
    weir_worker::tools::create_topic(&bootstrap, SINK, PARTITIONS).expect("create topic");
    let (spec, _) = job_spec(&bootstrap, false);
    let bare_settings = kafka::source_settings(&spec, "bench-bare").expect("settings");

    println!("nisshi (memory storage) at {bootstrap}; loading {n} records into {TOPIC} ({PARTITIONS} partitions, {MERCHANTS} merchants)");
    let t0 = Instant::now();
    let bytes = load(&bootstrap, n);
    let load_s = t0.elapsed().as_secs_f64();
    println!(
        "loaded {n} records ({:.1} MB of payload, {:.0} bytes/record) in {load_s:.1} s: {:.0} records/s",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64,
        n as f64 / load_s
    );
    let sizes = partition_sizes(&bare_settings);
    assert_eq!(sizes.iter().sum::<u64>(), n, "partition sizes {sizes:?}");
    println!("records per partition: {sizes:?}\n");

    let setup = Setup {
        bootstrap: bootstrap.clone(),
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
        n,
    };
    let off = Duration::from_secs(3600);
    let mut runs: Vec<Run> = Vec::new();
    println!("| round | variant | records | seconds | records/s | ratio to (a) | results | to repartition | checkpoints (timed) | mean checkpoint ms | stop s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for round in 1..=rounds {
        let first = runs.len();
        runs.push(bare(&bare_settings, n, round));
        runs.push(bare_per_partition(&bare_settings, &sizes, round));
        for (two_stage, interval, variant) in [
            (false, off, "(b) worker, checkpoints off (1 h)"),
            (false, TEN_S, "(b) worker, checkpoint every 10 s"),
            (
                false,
                Duration::from_secs(1),
                "(b) worker, checkpoint every 1 s",
            ),
            (true, TEN_S, "(c) worker, two stages, checkpoint every 10 s"),
        ] {
            runs.push(worker(&setup, two_stage, interval, variant, round));
        }
        let base = runs[first].rate();
        for r in &runs[first..] {
            let mean_ms = if r.checkpoints > 0 {
                format!("{:.1}", r.checkpoint_seconds * 1e3 / r.checkpoints as f64)
            } else {
                "—".to_string()
            };
            let seconds = if r.exchanged > 0 {
                format!(
                    "{:.2} (first stage {:.2})",
                    r.seconds, r.first_stage_seconds
                )
            } else {
                format!("{:.2}", r.seconds)
            };
            println!(
                "| {} | {} | {} | {seconds} | {:.0} | {:.2} | {} | {} | {} | {} | {:.2} |",
                r.round,
                r.variant,
                r.records,
                r.rate(),
                r.rate() / base,
                r.results,
                r.exchanged,
                r.checkpoints,
                mean_ms,
                r.stop_seconds
            );
        }
    }

    // Summary: medians over rounds; ratios are per round (against that round's (a)).
    println!("\n| variant | median records/s | min – max records/s | median ratio to (a) |");
    println!("|---|---|---|---|");
    let variants: Vec<&str> = runs
        .iter()
        .filter(|r| r.round == 1)
        .map(|r| r.variant)
        .collect();
    let per_round_rate = |variant: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.variant == variant)
            .map(Run::rate)
            .collect()
    };
    let base_rates = per_round_rate(variants[0]);
    let mut medians = Vec::new();
    for v in &variants {
        let rates = per_round_rate(v);
        let ratios: Vec<f64> = rates.iter().zip(&base_rates).map(|(r, b)| r / b).collect();
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let m = median(rates.clone());
        medians.push(m);
        println!(
            "| {v} | {m:.0} | {lo:.0} – {hi:.0} | {:.2} |",
            median(ratios)
        );
    }
    // Checkpoint cost against "off", per round, then the median.
    let cost = |variant: &str| -> f64 {
        let off = per_round_rate(variants[2]);
        median(
            per_round_rate(variant)
                .iter()
                .zip(&off)
                .map(|(r, o)| 1.0 - r / o)
                .collect(),
        )
    };
    let c10 = cost(variants[3]);
    let c1 = cost(variants[4]);
    let count_of = |variant: &str| -> u64 {
        runs.iter()
            .filter(|r| r.variant == variant)
            .map(|r| r.checkpoints)
            .sum()
    };
    let stalls: Vec<&Run> = runs.iter().filter(|r| r.variant == variants[4]).collect();
    let ck: u64 = stalls.iter().map(|r| r.checkpoints).sum();
    let ck_s: f64 = stalls.iter().map(|r| r.checkpoint_seconds).sum();
    let mean_stall = if ck > 0 { ck_s / ck as f64 } else { 0.0 };
    println!(
        "\ncheckpoint cost (throughput lost against checkpoints off, median over rounds):\n\
         - every 10 s, measured directly: {:.1}% ({} checkpoints in {} timed runs: none if a run is under 10 s)\n\
         - every 1 s, measured: {:.1}%; scaled to every 10 s (/10): {:.2}%\n\
         - mean checkpoint (flush results + write the file) at 1 s: {:.1} ms per partition; \
         one per partition per 10 s stalls each partition thread {:.2}% of the time",
        c10 * 100.0,
        count_of(variants[3]),
        rounds,
        c1 * 100.0,
        c1 * 10.0,
        mean_stall * 1e3,
        mean_stall / 10.0 * 100.0
    );
    println!(
        "- of which the DirStore write alone (median of 20): {:.1} ms",
        dir_store_write(&setup.rt) * 1e3
    );
    // Two stages against one, same job and records, checkpoints every 10 s, per round.
    let two = median(
        per_round_rate(variants[5])
            .iter()
            .zip(&per_round_rate(variants[3]))
            .map(|(c, b)| c / b)
            .collect(),
    );
    println!(
        "\ntwo stages vs one (same job and records, checkpoint every 10 s; end = every partial \
         merged): median ratio {two:.2} over {rounds} rounds (issue 6 target: at least 0.60)"
    );
    if !full {
        println!(
            "(a smoke run of {n} records under `cargo test`, which checks that the code works: \
             connecting and starting the threads dominate it, so these are not measurements; \
             run `cargo bench -p weir-worker --bench pipeline` for them)"
        );
    }
    drop(broker);
}
