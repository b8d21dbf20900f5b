//! The worker pipeline against a bare Kafka consumer, on a real broker (issues 4 and 20).
//!
//! `cargo bench -p weir-worker --bench pipeline` starts nisshi (in-memory storage) on a free
//! loopback port and, for each shape of `WEIR_BENCH_SHAPES` (default `dense,sparse`), loads
//! `WEIR_BENCH_RECORDS` (default 2,000,000) payment records into a 4-partition topic of its
//! own, then measures `WEIR_BENCH_ROUNDS` times (default 3), alternating:
//!
//! - (a) a bare rdkafka `BaseConsumer` assigned all 4 partitions from the beginning, reading
//!   every record (and touching its payload);
//! - (a4) the same with one bare consumer per partition, one thread each (the worker's layout);
//! - (r) a bare relay: per partition a consumer and a producer with the worker's own client
//!   settings, reading every record and writing as many result-shaped messages as the job has
//!   results (counted while loading), no engine (`pipeline/relay.rs`): the floor of the
//!   worker's Kafka I/O on this broker;
//! - (r2) a bare two-hop relay: the same, but each result-shaped message is first a
//!   partial-shaped one through a 4-partition repartition topic (one producer shared by the
//!   four reading threads, as the worker's first stage has), read by four more threads that
//!   write a result per partial (`pipeline/relay.rs`): the floor of two stages' Kafka I/O;
//!   and the same with partials packed 256 to a message (what packing could at most buy);
//! - (b) the worker: `partition::spawn_partition` for each partition (consumer, engine, idempotent sink
//!   producer, checkpoints in a directory), tumbling 1m windows grouped by merchant with count,
//!   sum and mean, timed until it has read every record; in the dense shape with checkpoints
//!   effectively off (every hour), every 10 s and every 1 s, in the sparse shape every 10 s;
//! - (c) the same job in two stages (issue 6): declared not co-partitioned, so each partition
//!   sends partial aggregates and watermark markers through a 4-partition repartition topic to
//!   a second stage (4 more threads) that merges them and writes the results; checkpoints
//!   every 10 s; timed until the second stage has written its last result (it also reports
//!   when it had merged every message the first sent, the last marker included).
//!
//! `WEIR_BENCH_VARIANTS` (e.g. `relay,worker:0:10`) runs only those variants besides (a).
//! `WEIR_BENCH_SOURCE_PROPS` and `WEIR_BENCH_SINK_PROPS` (`k=v,k=v`) add librdkafka
//! properties to the job's source (which the bare consumers use too, except their prefetch
//! settings, fixed at librdkafka's defaults) and sink.
//!
//! The shapes (issue 20): *dense*, 10,000 merchants and 200,000 records per minute of event
//! time (~20 records per merchant and minute, one result per ~22 records); *sparse*, 10,000
//! merchants and 6,000 records per minute (~1.3 records per result: most of the work is
//! building and writing results); *keys* (not run unless named), 1,000,000 merchants and
//! 2,000,000 records per minute over twice `WEIR_BENCH_RECORDS`, ~865,000 groups in a window:
//! the open rows at scale, against the memory model.
//!
//! Every run is a child process (this binary again, told what to run by `WEIR_BENCH_CHILD`),
//! so each variant's peak RSS (`VmHWM`) is its own: the worker's memory, as `weir run` would
//! have it, with nothing left over from loading or from another variant. Children run with
//! glibc's malloc arenas limited as the worker's image limits them (`MALLOC_ARENA_MAX`, unless
//! set for the run). The child's timing
//! starts when its threads are spawned (process start and connecting the clients are not
//! timed, as before).
//!
//! It prints every run and a summary per shape (medians, ratios to (a) of the same round,
//! peak RSS, checkpoint cost, two stages against one), with the load average of the machine
//! around each round. `cargo test --all-targets` runs this binary without `--bench`: it then
//! does one small round (20,000 records per shape) so the code keeps working without taking
//! minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/broker.rs"]
mod broker;
#[path = "pipeline/relay.rs"]
mod relay;

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_crds::StreamJobSpec;
use weir_engine::JobPlan;
use weir_worker::checkpoint::{CheckpointStore, DirStore, PartitionLease, Progress};
use weir_worker::kafka::{self, ClientSettings};
use weir_worker::merge::MergeSettings;
use weir_worker::metrics::Metrics;
use weir_worker::partition::{spawn_partition, Stage};
use weir_worker::runtime::{JobContext, PartitionEnd, Totals};

const PARTITIONS: i32 = 4;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
/// Give up on a run after this long (a stall is a bug, not a slow run).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const TEN_S: u64 = 10;
const OFF_S: u64 = 3600;
/// Partials a message in (r2)'s packed variant (as session 16's packing prototype).
const PACK: u32 = 256;
/// The line a child run prints its measurement on.
const RUN_LINE: &str = "BENCH-RUN ";

/// The records of one benchmark input.
#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    merchants: u64,
    /// Records per minute of event time.
    per_minute: u64,
    /// Records loaded: this many times `WEIR_BENCH_RECORDS`.
    records_scale: u64,
}

/// 2M records span 10 minutes, so ~10 tumbling windows of 10,000 groups close during a run
/// (about one result per 22 records).
const DENSE: Shape = Shape {
    name: "dense",
    merchants: 10_000,
    per_minute: 200_000,
    records_scale: 1,
};

/// 0.6 records per merchant and minute: ~4,500 of the 10,000 merchants appear in a minute,
/// with ~1.33 records each; 2M records span 333 minutes and give ~1.5 M results.
const SPARSE: Shape = Shape {
    name: "sparse",
    merchants: 10_000,
    per_minute: 6_000,
    records_scale: 1,
};

/// 1,000,000 merchants and 2,000,000 records per minute: ~865,000 merchants in each window
/// with ~2.3 records each. Twice `WEIR_BENCH_RECORDS` (4M by default: two windows, the first
/// closing during the run), so a worker holds about a million open rows at once: the memory
/// model's rows term at scale.
const KEYS: Shape = Shape {
    name: "keys",
    merchants: 1_000_000,
    per_minute: 2_000_000,
    records_scale: 2,
};

impl Shape {
    fn topic(&self) -> String {
        format!("payments-{}", self.name)
    }

    fn by_name(name: &str) -> Shape {
        match name {
            "dense" => DENSE,
            "sparse" => SPARSE,
            "keys" => KEYS,
            other => panic!("unknown WEIR_BENCH_SHAPES entry {other:?} (dense, sparse, keys)"),
        }
    }
}

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// (a)
    Bare,
    /// (a4)
    BarePerPartition,
    /// (r)
    Relay,
    /// (r2), with partials packed this many to a message (1: not packed).
    RelayTwoHops { pack: u32 },
    /// (b) one stage, or (c) two, with a checkpoint interval in seconds.
    Worker { two_stage: bool, interval_s: u64 },
}

impl Variant {
    fn label(self) -> String {
        match self {
            Variant::Bare => "(a) bare consumer, 1 thread".to_string(),
            Variant::BarePerPartition => "(a4) bare consumers, 1 thread/partition".to_string(),
            Variant::Relay => "(r) bare relay: consume + produce a message per result".to_string(),
            Variant::RelayTwoHops { pack: 1 } => {
                "(r2) bare two-hop relay: a partial per result through a repartition topic, then a result per partial".to_string()
            }
            Variant::RelayTwoHops { pack } => {
                format!("(r2) the same, partials packed {pack} to a message")
            }
            Variant::Worker {
                two_stage: false,
                interval_s: OFF_S,
            } => "(b) worker, checkpoints off (1 h)".to_string(),
            Variant::Worker {
                two_stage: false,
                interval_s,
            } => format!("(b) worker, checkpoint every {interval_s} s"),
            Variant::Worker {
                two_stage: true,
                interval_s,
            } => format!("(c) worker, two stages, checkpoint every {interval_s} s"),
        }
    }

    /// The code a child is given in `WEIR_BENCH_CHILD`.
    fn code(self) -> String {
        match self {
            Variant::Bare => "bare".to_string(),
            Variant::BarePerPartition => "bare4".to_string(),
            Variant::Relay => "relay".to_string(),
            Variant::RelayTwoHops { pack: 1 } => "relay2".to_string(),
            Variant::RelayTwoHops { pack } => format!("relay2:{pack}"),
            Variant::Worker {
                two_stage,
                interval_s,
            } => format!("worker:{}:{interval_s}", u8::from(two_stage)),
        }
    }

    fn from_code(code: &str) -> Variant {
        match code.split(':').collect::<Vec<_>>()[..] {
            ["bare"] => Variant::Bare,
            ["bare4"] => Variant::BarePerPartition,
            ["relay"] => Variant::Relay,
            ["relay2"] => Variant::RelayTwoHops { pack: 1 },
            ["relay2", pack] => Variant::RelayTwoHops {
                pack: pack.parse().expect("pack"),
            },
            ["worker", two, interval] => Variant::Worker {
                two_stage: two == "1",
                interval_s: interval.parse().expect("interval"),
            },
            _ => panic!("unknown variant code {code:?}"),
        }
    }

    /// The variants run for `shape`, in order; (a) first (the ratios' base). With
    /// `WEIR_BENCH_VARIANTS` (codes: `bare`, `bare4`, `relay`, `relay2`, `relay2:256` (its
    /// packed variant), `worker:<0|1 two stages>:<checkpoint seconds>`, comma-separated) only
    /// those, after (a).
    fn for_shape(shape: &Shape) -> Vec<Variant> {
        let all = Variant::all_for_shape(shape);
        match std::env::var("WEIR_BENCH_VARIANTS") {
            Ok(only) if !only.trim().is_empty() => {
                let only: Vec<&str> = only.split(',').map(str::trim).collect();
                all.into_iter()
                    .filter(|v| *v == Variant::Bare || only.contains(&v.code().as_str()))
                    .collect()
            }
            _ => all,
        }
    }

    fn all_for_shape(shape: &Shape) -> Vec<Variant> {
        let worker = |two_stage, interval_s| Variant::Worker {
            two_stage,
            interval_s,
        };
        if shape.name == DENSE.name {
            vec![
                Variant::Bare,
                Variant::BarePerPartition,
                Variant::Relay,
                Variant::RelayTwoHops { pack: 1 },
                Variant::RelayTwoHops { pack: PACK },
                worker(false, OFF_S),
                worker(false, TEN_S),
                worker(false, 1),
                worker(true, TEN_S),
            ]
        } else {
            vec![
                Variant::Bare,
                Variant::BarePerPartition,
                Variant::Relay,
                Variant::RelayTwoHops { pack: 1 },
                Variant::RelayTwoHops { pack: PACK },
                worker(false, TEN_S),
                worker(true, TEN_S),
            ]
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn env_str(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for a child run"))
}

/// `k=v,k=v` from the environment variable `name` as the inside of a YAML flow map of
/// librdkafka properties (to measure a client setting without rebuilding: the bare
/// consumers read with the source properties too).
fn props_from_env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            format!("{}: \"{}\"", k.trim(), v.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The benchmark's job: tumbling 1m grouped by merchant, count + sum + mean. The records are
/// keyed by merchant, so its groups are co-partitioned and one stage is exact; `two_stage`
/// declares them not co-partitioned, so the same job runs in two stages (partials through a
/// repartition topic, merged by a second stage), with the same results.
fn job_spec(bootstrap: &str, topic: &str, sink: &str, two_stage: bool) -> (StreamJobSpec, JobPlan) {
    let co_partitioned = !two_stage;
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: bench}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {topic}, startFrom: earliest, properties: {{{source_props}}}}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: [merchant]
  repartition: {{coPartitioned: {co_partitioned}}}
  window: {{type: tumbling, size: 1m, allowedLateness: 1s}}
  aggregations:
    - {{name: n, fn: count}}
    - {{name: total, fn: sum, field: amount}}
    - {{name: avg, fn: mean, field: amount}}
  sink: {{kafka: {{topic: {sink}, properties: {{{sink_props}}}}}}}
"#,
        source_props = props_from_env("WEIR_BENCH_SOURCE_PROPS"),
        sink_props = props_from_env("WEIR_BENCH_SINK_PROPS"),
    );
    let job = weir_crds::parse_stream_job(&yaml)
        .expect("bench job parses")
        .job;
    let plan = JobPlan::new(&job.spec).expect("bench job is valid");
    (job.spec, plan)
}

/// Record `i`: ~90 bytes of JSON, keyed by merchant; event time advances `per_minute` records
/// per minute with up to 500 ms of disorder (within the allowed lateness: nothing is refused).
fn record(shape: &Shape, i: u64, rnd: &mut impl FnMut() -> u64) -> (String, String, i64) {
    let t = T0 + 1000 + (i * 60_000 / shape.per_minute) as i64 - (rnd() % 500) as i64;
    let merchant = format!("m{:04}", rnd() % shape.merchants);
    let cents = rnd() % 100_000;
    let value = format!(
        r#"{{"ts":"{}","merchant":"{merchant}","amount":{}.{:02},"customer":"c{}"}}"#,
        weir_engine::time::format(t),
        cents / 100,
        cents % 100,
        rnd() % 100_000
    );
    (merchant, value, t)
}

/// What loading a shape's records found.
struct Loaded {
    /// Payload bytes.
    bytes: u64,
    /// (merchant, minute) pairs: the job's results.
    results: u64,
    /// The most merchants in one minute: the rows of the largest window.
    window_rows: u64,
}

/// Produce `n` records of `shape` into its topic.
fn load(bootstrap: &str, shape: &Shape, n: u64) -> Loaded {
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
    let topic = shape.topic();
    let mut bytes = 0u64;
    let mut groups = std::collections::HashSet::new();
    for i in 0..n {
        let (key, value, t) = record(shape, i, &mut rnd);
        bytes += value.len() as u64;
        groups.insert((key.clone(), t.div_euclid(60_000)));
        let rec = BaseRecord::to(&topic)
            .key(key.as_bytes())
            .payload(value.as_bytes());
        weir_worker::kafka::send_when_room(&p, rec).expect("producing");
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let mut per_window = std::collections::HashMap::<i64, u64>::new();
    for (_, minute) in &groups {
        *per_window.entry(*minute).or_default() += 1;
    }
    Loaded {
        bytes,
        results: groups.len() as u64,
        window_rows: per_window.values().copied().max().unwrap_or(0),
    }
}

/// Records in each partition of `topic` (low to high watermark).
fn partition_sizes(settings: &ClientSettings, topic: &str) -> Vec<u64> {
    let c: BaseConsumer = settings.config().create().expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .expect("watermarks");
            (high - low) as u64
        })
        .collect()
}

/// Read `n` records from `partitions` of `topic` with one consumer; returns the payload bytes.
fn read(settings: &ClientSettings, topic: &str, partitions: &[i32], n: u64) -> u64 {
    let c: BaseConsumer = settings.config().create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
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

/// Bytes per open row of the benchmark's job (tumbling, count + sum + mean), as the engine's
/// memory benchmark measured (docs/running.md, "A bound on open state").
const ROW_BYTES: f64 = 111.0;
/// Bytes per partial of a closing window in a two-stage job's first stage: a window's partials
/// are all built when it closes (measured with the keys shape: docs/benchmarks.md). A one-stage
/// job's results, and the merge stage's, are built 1,024 at a time as they are written.
const PARTIAL_BYTES: f64 = 350.0;

/// The memory model of docs/running.md ("Memory"), MB: 30 fixed, 16 per partition thread
/// (its consumer and engine), 4 per result producer and 10 for a two-stage worker's one
/// repartition producer (bounded queues), the open rows at [`ROW_BYTES`] (the largest
/// window's `window_rows` plus a second of the next window's records, the allowed lateness);
/// in two stages the merge stage holds the rows again and the first stage builds the largest
/// window's partials at [`PARTIAL_BYTES`].
fn memory_model_mb(variant: Variant, shape: &Shape, window_rows: u64) -> Option<f64> {
    let rows = (window_rows + shape.per_minute / 60) as f64;
    let (threads, producers_mb, state) = match variant {
        Variant::Worker {
            two_stage: false, ..
        } => (4.0, 4.0 * 4.0, rows * ROW_BYTES),
        // A sink producer per source and per merge partition, and the worker's one
        // repartition producer.
        Variant::Worker {
            two_stage: true, ..
        } => (
            8.0,
            8.0 * 4.0 + 10.0,
            2.0 * rows * ROW_BYTES + window_rows as f64 * PARTIAL_BYTES,
        ),
        Variant::Bare
        | Variant::BarePerPartition
        | Variant::Relay
        | Variant::RelayTwoHops { .. } => return None,
    };
    Some(30.0 + 16.0 * threads + producers_mb + state / 1e6)
}

/// What a child measured (printed as one JSON line after [`RUN_LINE`]).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Measured {
    seconds: f64,
    /// Until the (first stage of the) worker had read every record.
    first_stage_seconds: f64,
    /// Two stages: until the second stage had merged every message the first sent.
    drained_seconds: f64,
    /// Results written to the sink.
    results: u64,
    /// Messages sent to the repartition topic (two-stage jobs).
    exchanged: u64,
    /// Checkpoints written while timed (all partitions), and their summed duration.
    checkpoints: u64,
    checkpoint_seconds: f64,
    /// Stopping after the last record: final flush and checkpoint.
    stop_seconds: f64,
    /// The child's peak RSS (`VmHWM`), MB.
    peak_rss_mb: f64,
    /// The child's CPU time (user + system, every thread, from start to exit), s: steadier
    /// than wall-clock time on a loaded machine.
    cpu_seconds: f64,
}

/// One measured run.
struct Run {
    shape: &'static str,
    round: usize,
    variant: Variant,
    records: u64,
    m: Measured,
}

impl Run {
    fn rate(&self) -> f64 {
        self.records as f64 / self.m.seconds
    }
}

/// This process's peak RSS in MB (`VmHWM` of /proc/self/status).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// This process's CPU time so far (user + system of every thread), s.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// Sum of the values of the metric lines starting with `prefix` (every partition).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a child run is given.
struct ChildSetup {
    bootstrap: String,
    topic: String,
    /// A fresh sink topic for this run (created by the parent).
    sink: String,
    /// A name unique to the run (client ids, the repartition topic).
    name: String,
    n: u64,
    sizes: Vec<u64>,
    /// The job's results over the `n` records (for (r)).
    results: u64,
}

/// The child process: run one variant, print its measurement.
fn child(code: &str) {
    let setup = ChildSetup {
        bootstrap: env_str("WEIR_BENCH_BOOTSTRAP"),
        topic: env_str("WEIR_BENCH_TOPIC"),
        sink: env_str("WEIR_BENCH_SINK"),
        name: env_str("WEIR_BENCH_NAME"),
        n: env_u64("WEIR_BENCH_N", 0),
        results: env_u64("WEIR_BENCH_RESULTS", 0),
        sizes: env_str("WEIR_BENCH_SIZES")
            .split(',')
            .map(|s| s.parse().expect("size"))
            .collect(),
    };
    let (spec, _) = job_spec(&setup.bootstrap, &setup.topic, &setup.sink, false);
    let mut settings = kafka::source_settings(&spec, &setup.name).expect("settings");
    // The reference reads with librdkafka's prefetch (the worker's settings before issue 20),
    // not the worker's bounded queues, which read a little slower on one thread: a change to
    // the worker's client settings must not move the reference it is compared with.
    settings
        .set("queued.min.messages", "100000")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.message.max.bytes", "1048576");
    let mut m = match Variant::from_code(code) {
        Variant::Bare => {
            let t0 = Instant::now();
            let all: Vec<i32> = (0..PARTITIONS).collect();
            read(&settings, &setup.topic, &all, setup.n);
            Measured {
                seconds: t0.elapsed().as_secs_f64(),
                ..Measured::default()
            }
        }
        Variant::Relay => relay::relay(&setup, &spec, setup.results),
        Variant::RelayTwoHops { pack } => {
            relay::relay_two_hops(&setup, &spec, setup.results, (PARTITIONS, pack as usize))
        }
        Variant::BarePerPartition => {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for (p, n) in setup.sizes.iter().enumerate() {
                    let (settings, topic) = (&settings, setup.topic.as_str());
                    s.spawn(move || read(settings, topic, &[p as i32], *n));
                }
            });
            Measured {
                seconds: t0.elapsed().as_secs_f64(),
                ..Measured::default()
            }
        }
        Variant::Worker {
            two_stage,
            interval_s,
        } => worker(&setup, two_stage, Duration::from_secs(interval_s)),
    };
    m.peak_rss_mb = peak_rss_mb();
    m.cpu_seconds = cpu_seconds();
    println!("{RUN_LINE}{}", serde_json::to_string(&m).expect("json"));
}

/// (b): the worker's partition threads until they have read `n` records. (c), with
/// `two_stage`: the same job in two stages, with one more thread per partition of the
/// repartition topic (4; a fresh topic per run) for the second stage, until the first stage
/// has read `n` records and the second has written its last result (known once it has merged
/// every message the first sent, partials and watermark markers, and the pipeline is quiet).
fn worker(setup: &ChildSetup, two_stage: bool, interval: Duration) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let n = setup.n;
    let (spec, plan) = &job_spec(&setup.bootstrap, &setup.topic, &setup.sink, two_stage);
    let name = setup.name.clone();
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
            partials: Default::default(),
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
        rows: weir_worker::budget::RowBudget::new(None),
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
    let alive = || {
        assert!(
            !threads.iter().any(|t| t.is_finished()),
            "a partition thread ended early"
        );
        assert!(t0.elapsed() < RUN_TIMEOUT, "worker stalled");
    };
    let wait = |done: &dyn Fn() -> bool| {
        while !done() {
            alive();
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait(&|| totals.records.load(Ordering::Relaxed) >= n);
    let first_stage_seconds = t0.elapsed().as_secs_f64();
    let mut seconds = first_stage_seconds;
    let mut drained_seconds = 0.0;
    if two_stage {
        // The run's time is when the last result went to the sink producer (as for one stage,
        // whose last result goes out before its last record is counted), or when the first
        // stage had read every record if that was later. It is known only once the pipeline
        // is quiet: the second stage has merged every message the first sent, and nothing more
        // was sent or written for two marker intervals (the first stage sends the marker that
        // closes its last windows up to a marker interval after its last record). When the
        // second stage had merged everything is reported too (`drained_seconds`): it includes
        // the last marker, which closes no window here.
        std::thread::sleep(Duration::from_millis(1));
        let quiet =
            Duration::from_millis(2 * weir_engine::protocol::MARKER_EVERY_MS.unsigned_abs());
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let mut results = (load(&totals.results), t0.elapsed());
        let mut sent = (load(&totals.partials_sent), t0.elapsed());
        let mut drained: Option<Duration> = None;
        loop {
            alive();
            let now = t0.elapsed();
            let r = load(&totals.results);
            if r != results.0 {
                results = (r, now);
            }
            let s = load(&totals.partials_sent);
            if s != sent.0 {
                sent = (s, now);
            }
            if s == 0 || load(&totals.partials_merged) < s {
                drained = None;
            } else {
                let at = *drained.get_or_insert(now);
                if now.saturating_sub(sent.1.max(results.1)) >= quiet {
                    drained_seconds = at.as_secs_f64();
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seconds = results.1.as_secs_f64().max(first_stage_seconds);
    }
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
    Measured {
        seconds,
        first_stage_seconds,
        drained_seconds,
        results: totals.results.load(Ordering::Relaxed),
        exchanged: totals.partials_sent.load(Ordering::Relaxed),
        checkpoints,
        checkpoint_seconds,
        stop_seconds: t1.elapsed().as_secs_f64(),
        peak_rss_mb: 0.0,
        cpu_seconds: 0.0,
    }
}

/// Run `variant` in a child process (this binary again) and read its measurement.
fn run_child(
    bootstrap: &str,
    shape: &Shape,
    (sizes, results): (&[u64], u64),
    variant: Variant,
    round: usize,
) -> Measured {
    let n: u64 = sizes.iter().sum();
    let name = format!(
        "bench-{}-{round}-{}",
        shape.name,
        variant.code().replace(':', "-")
    );
    let sink = format!("{name}-results");
    weir_worker::tools::create_topic(bootstrap, &sink, PARTITIONS).expect("create the sink");
    let exe = std::env::current_exe().expect("this binary");
    let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
    let mut child = Command::new(exe);
    // The worker's image limits glibc's malloc arenas; so are the children, unless this run
    // sets `MALLOC_ARENA_MAX` itself (to measure another value).
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        child.env("MALLOC_ARENA_MAX", weir_worker::MALLOC_ARENA_MAX);
    }
    let out = child
        .env("WEIR_BENCH_CHILD", variant.code())
        .env("WEIR_BENCH_BOOTSTRAP", bootstrap)
        .env("WEIR_BENCH_TOPIC", shape.topic())
        .env("WEIR_BENCH_SINK", &sink)
        .env("WEIR_BENCH_NAME", &name)
        .env("WEIR_BENCH_N", n.to_string())
        .env("WEIR_BENCH_RESULTS", results.to_string())
        .env("WEIR_BENCH_SIZES", sizes.join(","))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start a child run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RUN_LINE))
        .unwrap_or_else(|| panic!("{name} printed no measurement:\n{stdout}"));
    serde_json::from_str(line).expect("a child's measurement")
}

/// Median time of one checkpoint write to a `DirStore` alone (no producer flush): the store's
/// share of a checkpoint.
fn dir_store_write() -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("checkpoint dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(DirStore::new(dir.path()));
    let (mut lease, _) = rt
        .block_on(PartitionLease::acquire(store, "payments", 0, 1, "bench"))
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
    if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)))
}

fn print_run(r: &Run, base: f64) {
    let m = &r.m;
    let mean_ms = if m.checkpoints > 0 {
        format!("{:.1}", m.checkpoint_seconds * 1e3 / m.checkpoints as f64)
    } else {
        "—".to_string()
    };
    let seconds = if m.exchanged > 0 {
        format!(
            "{:.2} (first stage {:.2}, all merged {:.2})",
            m.seconds, m.first_stage_seconds, m.drained_seconds
        )
    } else {
        format!("{:.2}", m.seconds)
    };
    println!(
        "| {} | {} | {} | {} | {seconds} | {:.0} | {:.2} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} |",
        r.shape,
        r.round,
        r.variant.label(),
        r.records,
        r.rate(),
        r.rate() / base,
        m.results,
        m.exchanged,
        m.checkpoints,
        mean_ms,
        m.stop_seconds,
        m.peak_rss_mb,
        m.cpu_seconds * 1e6 / r.records as f64
    );
}

/// The summary of one shape: medians over rounds; ratios per round (against that round's (a)).
fn summarize(shape: &Shape, window_rows: u64, runs: &[Run], rounds: usize) {
    let runs: Vec<&Run> = runs.iter().filter(|r| r.shape == shape.name).collect();
    let variants = Variant::for_shape(shape);
    let rates = |v: Variant| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.variant == v)
            .map(|r| r.rate())
            .collect()
    };
    let base = rates(Variant::Bare);
    println!("\n{} shape, {rounds} rounds:\n", shape.name);
    println!("| variant | median records/s | min – max records/s | median ratio to (a) | min – max ratio | results | peak RSS MB, median (min – max) | memory model MB | CPU µs/record, median |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for v in &variants {
        let r = rates(*v);
        let ratios: Vec<f64> = r.iter().zip(&base).map(|(r, b)| r / b).collect();
        let (lo, hi) = min_max(&r);
        let (rlo, rhi) = min_max(&ratios);
        let rss: Vec<f64> = runs
            .iter()
            .filter(|x| x.variant == *v)
            .map(|x| x.m.peak_rss_mb)
            .collect();
        let (slo, shi) = min_max(&rss);
        let cpu: Vec<f64> = runs
            .iter()
            .filter(|x| x.variant == *v)
            .map(|x| x.m.cpu_seconds * 1e6 / x.records as f64)
            .collect();
        let results = runs
            .iter()
            .find(|x| x.variant == *v)
            .map_or(0, |x| x.m.results);
        let model = memory_model_mb(*v, shape, window_rows)
            .map_or("—".to_string(), |m| format!("{m:.0}"));
        println!(
            "| {} | {:.0} | {lo:.0} – {hi:.0} | {:.2} | {rlo:.2} – {rhi:.2} | {results} | {:.0} ({slo:.0} – {shi:.0}) | {model} | {:.2} |",
            v.label(),
            median(r.clone()),
            median(ratios),
            median(rss.clone()),
            median(cpu),
        );
        if let Some(m) = memory_model_mb(*v, shape, window_rows) {
            if shi > m {
                println!(
                    "  ^ over the memory model: {} peaked at {shi:.0} MB, the model says {m:.0} MB",
                    v.label()
                );
            }
        }
    }
    let one = Variant::Worker {
        two_stage: false,
        interval_s: TEN_S,
    };
    let two = Variant::Worker {
        two_stage: true,
        interval_s: TEN_S,
    };
    let (two_rates, one_rates) = (rates(two), rates(one));
    if !two_rates.is_empty() && !one_rates.is_empty() {
        let two_vs_one = median(
            two_rates
                .iter()
                .zip(&one_rates)
                .map(|(c, b)| c / b)
                .collect(),
        );
        println!(
            "\ntwo stages vs one ({}; same job and records, checkpoint every 10 s; end = the last \
             result out): median ratio {two_vs_one:.2} over {rounds} rounds",
            shape.name
        );
    }
    let off = rates(Variant::Worker {
        two_stage: false,
        interval_s: OFF_S,
    });
    if shape.name != DENSE.name || off.is_empty() {
        return;
    }
    // Checkpoint cost against "off", per round, then the median.
    let cost = |v: Variant| -> f64 {
        median(
            rates(v)
                .iter()
                .zip(&off)
                .map(|(r, o)| 1.0 - r / o)
                .collect(),
        )
    };
    let every_1s = Variant::Worker {
        two_stage: false,
        interval_s: 1,
    };
    let c10 = cost(one);
    let c1 = cost(every_1s);
    let of = |v: Variant| runs.iter().filter(move |r| r.variant == v);
    let ck: u64 = of(every_1s).map(|r| r.m.checkpoints).sum();
    let ck_s: f64 = of(every_1s).map(|r| r.m.checkpoint_seconds).sum();
    let mean_stall = if ck > 0 { ck_s / ck as f64 } else { 0.0 };
    println!(
        "\ncheckpoint cost (dense; throughput lost against checkpoints off, median over rounds):\n\
         - every 10 s, measured directly: {:.1}% ({} checkpoints in {} timed runs: none if a run is under 10 s)\n\
         - every 1 s, measured: {:.1}%; scaled to every 10 s (/10): {:.2}%\n\
         - mean checkpoint (flush results + write the file) at 1 s: {:.1} ms per partition; \
         one per partition per 10 s stalls each partition thread {:.2}% of the time",
        c10 * 100.0,
        of(one).map(|r| r.m.checkpoints).sum::<u64>(),
        rounds,
        c1 * 100.0,
        c1 * 10.0,
        mean_stall * 1e3,
        mean_stall / 10.0 * 100.0
    );
    println!(
        "- of which the DirStore write alone (median of 20): {:.1} ms",
        dir_store_write() * 1e3
    );
}

fn main() {
    if let Ok(code) = std::env::var("WEIR_BENCH_CHILD") {
        child(&code);
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_u64("WEIR_BENCH_RECORDS", if full { 2_000_000 } else { 20_000 });
    let rounds = env_u64("WEIR_BENCH_ROUNDS", if full { 3 } else { 1 }).max(1) as usize;
    let shapes: Vec<Shape> = std::env::var("WEIR_BENCH_SHAPES")
        .unwrap_or_else(|_| "dense,sparse".to_string())
        .split(',')
        .map(|s| Shape::by_name(s.trim()))
        .collect();

    for var in ["WEIR_BENCH_SOURCE_PROPS", "WEIR_BENCH_SINK_PROPS"] {
        if let Ok(v) = std::env::var(var) {
            println!("{var}={v}");
        }
    }
    let broker = broker::Broker::start();
    let bootstrap = broker.bootstrap.clone();
    let mut sizes = Vec::new();
    for shape in &shapes {
        let topic = shape.topic();
        let n = n * shape.records_scale;
        weir_worker::tools::create_topic(&bootstrap, &topic, PARTITIONS).expect("create topic");
        println!(
            "nisshi (memory storage) at {bootstrap}; loading {n} {} records into {topic} \
             ({PARTITIONS} partitions, {} merchants, {} records per minute of event time)",
            shape.name, shape.merchants, shape.per_minute
        );
        let t0 = Instant::now();
        let Loaded {
            bytes,
            results,
            window_rows,
        } = load(&bootstrap, shape, n);
        let load_s = t0.elapsed().as_secs_f64();
        println!(
            "loaded {n} records ({:.1} MB of payload, {:.0} bytes/record) in {load_s:.1} s: {:.0} records/s",
            bytes as f64 / 1e6,
            bytes as f64 / n as f64,
            n as f64 / load_s
        );
        println!(
            "the job's results over them: {results} (merchant, minute) pairs; the largest \
             window has {window_rows}"
        );
        let (spec, _) = job_spec(&bootstrap, &topic, "unused", false);
        let settings = kafka::source_settings(&spec, "bench-sizes").expect("settings");
        let s = partition_sizes(&settings, &topic);
        assert_eq!(s.iter().sum::<u64>(), n, "partition sizes {s:?}");
        println!("records per partition: {s:?}");
        sizes.push((s, results, window_rows));
    }

    println!("\nEach run is a child process; peak RSS is the child's VmHWM.\n");
    println!("| shape | round | variant | records | seconds | records/s | ratio to (a) | results | to repartition | checkpoints (timed) | mean checkpoint ms | stop s | peak RSS MB | CPU µs/record |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut runs: Vec<Run> = Vec::new();
    let mut loads = Vec::new();
    for round in 1..=rounds {
        for (shape, sizes) in shapes.iter().zip(&sizes) {
            let before = load_average();
            let first = runs.len();
            for variant in Variant::for_shape(shape) {
                let m = run_child(&bootstrap, shape, (&sizes.0, sizes.1), variant, round);
                runs.push(Run {
                    shape: shape.name,
                    round,
                    variant,
                    records: sizes.0.iter().sum(),
                    m,
                });
                let base = runs[first].rate();
                print_run(&runs[runs.len() - 1], base);
            }
            loads.push(format!(
                "{} round {round}: {before} → {}",
                shape.name,
                load_average()
            ));
        }
    }
    println!(
        "\nload average (1 min) before → after each round: {}",
        loads.join("; ")
    );
    for (shape, sizes) in shapes.iter().zip(&sizes) {
        summarize(shape, sizes.2, &runs, rounds);
    }
    if !full {
        println!(
            "(a smoke run of {n} records under `cargo test`, which checks that the code works: \
             connecting and starting the threads dominate it, so these are not measurements; \
             run `cargo bench -p weir-worker --bench pipeline` for them)"
        );
    }
    drop(broker);
}
