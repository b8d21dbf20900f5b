//! A lag spike on the real broker, the operator's autoscaler deciding, and worker processes
//! scaled two ways (issue 19; docs/benchmarks.md, "Scaling"):
//!
//! - **live**: the new assignment is written where the running workers read it; workers are
//!   added or removed (SIGTERM), nobody else restarts (DESIGN.md invariant 9);
//! - **restart**: what scaling did before: every worker stops (SIGTERM, final checkpoints) and
//!   starts again with the new assignment (a rolling update restarts every pod too, one at a
//!   time, so this is its best case).
//!
//! ```sh
//! cargo build --release -p weir-worker --bin weir
//! cargo bench -p weir-operator --bench scaling
//! ```
//!
//! Each variant (`cargo bench`; `cargo test` runs a seconds-long smoke version): a 6-partition
//! topic, 20,000 merchants, tumbling 1-minute windows; 4,000
//! records/s for 40 s, 40,000 records/s (10×) for 60 s, 4,000 records/s again for 60 s. Every
//! 30 s (the operator's period for an autoscaled job) the lag (high watermarks minus the
//! checkpointed offsets) and the offsets go to `weir_operator::autoscale` with
//! `targetLagPerReplica: 20000`, `minReplicas: 1`, `maxReplicas: 6`; its count is applied at
//! once. Printed per variant: when it scaled, how long each change took until every partition
//! was checkpointed by its new owner, the peak lag, when the lag was back under target, and
//! the records read again (read by the workers minus records in the topic).
//!
//! The broker, the producer and every worker share this machine's cores, so more workers do
//! not read faster here; what the numbers compare is the cost of a change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use weir_crds::assignment::Assignment;
use weir_operator::autoscale::{Autoscaler, Policy, Sample};

#[path = "../../worker/tests/support/broker.rs"]
mod broker;

const PARTITIONS: i32 = 6;
const MERCHANTS: usize = 20_000;
const TARGET: i64 = 20_000;
const BASE_RATE: usize = 4_000;
const SPIKE_RATE: usize = 40_000;

/// The phases and the sampling period. `cargo bench` runs [`Timing::FULL`]; `cargo test
/// --all-targets` (CI) runs [`Timing::SMOKE`], seconds long, with the autoscaler's timings
/// shortened alike, and checks that every change completes.
#[derive(Clone, Copy)]
struct Timing {
    warm: Duration,
    spike: Duration,
    after: Duration,
    sample_every: Duration,
    /// Divides the autoscaler's own timings (trend, drain, cooldown, stabilisation).
    speedup: i64,
}

impl Timing {
    const FULL: Timing = Timing {
        warm: Duration::from_secs(40),
        spike: Duration::from_secs(60),
        after: Duration::from_secs(60),
        sample_every: Duration::from_secs(30),
        speedup: 1,
    };
    // The spike sampled at least 8 times: with 3 samples (every 2 s over 6 s) a sample could
    // land when the worker had just caught up, and the smoke run once scaled nothing.
    const SMOKE: Timing = Timing {
        warm: Duration::from_secs(3),
        spike: Duration::from_secs(8),
        after: Duration::from_secs(3),
        sample_every: Duration::from_secs(1),
        speedup: 15,
    };
}

/// The `weir` binary beside this benchmark's build (`target/release/weir`).
fn weir_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let weir = dir.join("weir");
    assert!(
        weir.is_file(),
        "{} not found: run `cargo build --release -p weir-worker --bin weir` first",
        weir.display()
    );
    weir
}

fn job_yaml(bootstrap: &str, name: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {name}-in, properties: {{fetch.queue.backoff.ms: "10"}}}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: [merchant]
  repartition: {{coPartitioned: true}}
  window: {{type: tumbling, size: 1m, allowedLateness: 2s}}
  aggregations: [{{name: n, fn: count}}, {{name: total, fn: sum, field: amount}}, {{name: avg, fn: mean, field: amount}}]
  sink: {{kafka: {{topic: {name}-out}}}}
  checkpoint: {{interval: 1s, store: {{configMap: {{}}}}}}
"#
    )
}

fn create_topic(weir: &Path, bootstrap: &str, topic: &str, partitions: i32) {
    let ok = Command::new(weir)
        .args(["kafka", "create-topic", "--bootstrap", bootstrap, topic])
        .args(["--partitions", &partitions.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("weir kafka create-topic");
    assert!(ok.success(), "creating {topic}");
}

/// Produce at [`BASE_RATE`], then [`SPIKE_RATE`] during the spike, until `stop`; event time
/// follows the wall clock.
fn produce(
    bootstrap: String,
    topic: String,
    start: Instant,
    stop: Arc<AtomicBool>,
    timing: Timing,
) -> usize {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut sent = 0usize;
    let mut due = 0f64;
    while !stop.load(Ordering::Relaxed) {
        let t = start.elapsed();
        let rate = if t >= timing.warm && t < timing.warm + timing.spike {
            SPIKE_RATE
        } else {
            BASE_RATE
        };
        // Batches of 10 ms.
        due += rate as f64 / 100.0;
        while (sent as f64) < due {
            let m = (sent * 7919) % MERCHANTS;
            let value = format!(
                r#"{{"ts":"{}","merchant":"m{m}","amount":{}.5}}"#,
                k8s_openapi::jiff::Timestamp::now(),
                sent % 100
            );
            let key = format!("m{m}");
            let partition = (m % PARTITIONS as usize) as i32;
            let rec = BaseRecord::to(&topic)
                .key(key.as_bytes())
                .payload(value.as_bytes())
                .partition(partition);
            // Waits while the queue is full; any other error (a fatal error of the idempotent
            // producer fails every later send) fails the test instead of hanging it.
            weir_worker::kafka::send_when_room(&p, rec)
                .unwrap_or_else(|e| panic!("producing the test's records: {e}"));
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = p.flush(Duration::from_secs(30));
    sent
}

/// A worker process of one variant.
struct Proc {
    child: Child,
    port: u16,
}

struct Run<'a> {
    weir: &'a Path,
    dir: PathBuf,
    name: String,
    workers: BTreeMap<usize, Proc>,
    /// Records read by worker processes that have stopped.
    read_by_stopped: f64,
    starts: usize,
}

impl Run<'_> {
    fn start(&mut self, ordinal: usize) {
        let port = broker::free_port();
        self.starts += 1;
        let log = std::fs::File::create(
            self.dir
                .join(format!("worker-{ordinal}-{}.log", self.starts)),
        )
        .expect("log");
        let child = Command::new(self.weir)
            .args(["worker", "--job"])
            .arg(self.dir.join("job.yaml"))
            .arg("--assignment")
            .arg(self.dir.join("assignment.json"))
            .args(["--ordinal", &ordinal.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--checkpoint-dir")
            .arg(self.dir.join("checkpoints"))
            .env("HOSTNAME", format!("{}-worker-{ordinal}", self.name))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weir worker");
        self.workers.insert(ordinal, Proc { child, port });
    }

    /// SIGTERM the worker of `ordinal` and wait for it (its final checkpoints), counting the
    /// records it read.
    fn stop(&mut self, ordinal: usize) {
        let Some(mut p) = self.workers.remove(&ordinal) else {
            return;
        };
        self.read_by_stopped += records_read(p.port);
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    fn publish(&self, a: &Assignment) {
        let tmp = self.dir.join("assignment.tmp");
        std::fs::write(&tmp, serde_json::to_string(a).expect("json")).expect("write");
        std::fs::rename(&tmp, self.dir.join("assignment.json")).expect("rename");
    }

    /// (epoch, owner, next offset) of each partition's checkpoint.
    fn checkpoints(&self) -> Vec<(i64, String, i64)> {
        let dir = self.dir.join("checkpoints").join(&self.name);
        (0..PARTITIONS)
            .map(|p| {
                let v: serde_json::Value = std::fs::read(dir.join(format!("partition-{p}.json")))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                let cp = &v["checkpoint"];
                (
                    cp["epoch"].as_i64().unwrap_or(-1),
                    cp["owner"].as_str().unwrap_or_default().to_string(),
                    cp["progress"]["nextOffset"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Start again, as Kubernetes restarts a pod, each worker that exited without being
    /// stopped (a start-up error on this loaded machine, or its port taken between
    /// [`broker::free_port`] and its bind), printing the end of its log. Returns how many.
    fn revive(&mut self) -> usize {
        let exited: Vec<(usize, String)> = self
            .workers
            .iter_mut()
            .filter_map(|(o, w)| match w.child.try_wait() {
                Ok(Some(status)) => Some((*o, status.to_string())),
                _ => None,
            })
            .collect();
        for (ordinal, status) in &exited {
            eprintln!("worker {ordinal} exited ({status}); starting it again. Its log ended:");
            self.print_log_tail(*ordinal);
            self.workers.remove(ordinal);
            self.start(*ordinal);
        }
        exited.len()
    }

    /// The last lines of the newest log of the worker of `ordinal`, to stderr.
    fn print_log_tail(&self, ordinal: usize) {
        let log = (1..=self.starts)
            .rev()
            .map(|n| self.dir.join(format!("worker-{ordinal}-{n}.log")))
            .find(|f| f.is_file());
        if let Some(text) = log.and_then(|f| std::fs::read_to_string(f).ok()) {
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("    {line}");
            }
        }
    }

    /// Print what a change that did not complete left behind: each unfinished partition's
    /// checkpoint, and the end of each worker's log (CI keeps no temporary files).
    fn explain_incomplete(&self, epoch: i64, owner_of: &dyn Fn(i32) -> String) {
        for (p, (e, owner, next)) in self.checkpoints().into_iter().enumerate() {
            let want = owner_of(p as i32);
            if e != epoch || owner != want {
                eprintln!(
                    "partition {p}: checkpoint epoch {e} owner {owner:?} next offset {next}; \
                     wanted epoch {epoch} owner {want:?}"
                );
            }
        }
        for &ordinal in self.workers.keys() {
            eprintln!("worker {ordinal}: its log ended:");
            self.print_log_tail(ordinal);
        }
    }
}

/// `weir_records_in_total` summed over the partitions of the worker serving on `port`.
fn records_read(port: u16) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("weir_records_in_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn high_watermarks(c: &BaseConsumer, topic: &str) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, h)| h)
        })
        .collect()
}

/// What one variant measured.
struct Report {
    changes: Vec<String>,
    /// Changes whose partitions were not all with their new owner within 120 s.
    incomplete: usize,
    /// Workers that exited on their own and were started again ([`Run::revive`]).
    restarted: usize,
    peak_lag: i64,
    under_target_after_spike: Option<f64>,
    reread: f64,
    produced: usize,
}

fn run(weir: &Path, bootstrap: &str, live: bool, timing: Timing) -> Report {
    let name = if live { "live" } else { "restart" }.to_string();
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().to_path_buf();
    create_topic(weir, bootstrap, &format!("{name}-in"), PARTITIONS);
    create_topic(weir, bootstrap, &format!("{name}-out"), PARTITIONS);
    std::fs::write(dir.join("job.yaml"), job_yaml(bootstrap, &name)).expect("job");
    let mut r = Run {
        weir,
        dir,
        name: name.clone(),
        workers: BTreeMap::new(),
        read_by_stopped: 0.0,
        starts: 0,
    };
    let mut epoch = 1;
    let mut current = 1;
    r.publish(&Assignment::round_robin(
        PARTITIONS,
        current as usize,
        epoch,
    ));
    r.start(0);
    let topic = format!("{name}-in");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let mut policy = Policy::new(
        &weir_crds::Autoscaling {
            min_replicas: 1,
            max_replicas: PARTITIONS,
            target_lag_per_replica: Some(TARGET),
        },
        PARTITIONS,
    );
    policy.trend_ms /= timing.speedup;
    policy.drain_within_ms /= timing.speedup;
    policy.up_cooldown_ms /= timing.speedup;
    policy.stabilization_ms /= timing.speedup;
    let mut scaler = Autoscaler::default();
    // Start at a minute boundary, so that both variants change at the same point of the open
    // 1-minute windows (what a moved partition replays depends on it).
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 60_000) as u64;
    if timing.speedup == 1 {
        std::thread::sleep(Duration::from_millis(60_000 - past));
    }
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (b, t, s) = (bootstrap.to_string(), topic.clone(), stop.clone());
        std::thread::spawn(move || produce(b, t, start, s, timing))
    };
    let mut report = Report {
        changes: Vec::new(),
        incomplete: 0,
        restarted: 0,
        peak_lag: 0,
        under_target_after_spike: None,
        reread: 0.0,
        produced: 0,
    };
    let mut next_sample = start + timing.sample_every / 3;
    let spike_end = timing.warm + timing.spike;
    let end = spike_end + timing.after;
    while start.elapsed() < end {
        std::thread::sleep(Duration::from_millis(250));
        report.restarted += r.revive();
        let cps = r.checkpoints();
        let high = high_watermarks(&consumer, &topic);
        let lag: i64 = high.iter().zip(&cps).map(|(h, c)| (h - c.2).max(0)).sum();
        let processed: i64 = cps.iter().map(|c| c.2).sum();
        report.peak_lag = report.peak_lag.max(lag);
        let t = start.elapsed();
        if t >= spike_end
            && report.under_target_after_spike.is_none()
            && lag <= TARGET * i64::from(current)
        {
            report.under_target_after_spike = Some((t - spike_end).as_secs_f64());
        }
        if Instant::now() < next_sample {
            continue;
        }
        next_sample += timing.sample_every;
        let now_ms = t.as_millis() as i64;
        scaler.observe(
            Sample {
                at_ms: now_ms,
                lag,
                processed,
            },
            &policy,
        );
        let d = scaler.decide(&policy, current, now_ms);
        if d.replicas == current {
            continue;
        }
        epoch += 1;
        let next = d.replicas;
        let a = Assignment::round_robin(PARTITIONS, next as usize, epoch);
        let changed = Instant::now();
        if live {
            r.publish(&a);
            for o in current..next {
                r.start(o as usize);
            }
            for o in (next..current).rev() {
                r.stop(o as usize);
            }
        } else {
            for o in (0..current).rev() {
                r.stop(o as usize);
            }
            r.publish(&a);
            for o in 0..next {
                r.start(o as usize);
            }
        }
        // Until every partition is checkpointed at the new epoch by its owner.
        let owner_of = |p: i32| {
            let o = a.workers.iter().position(|w| w.contains(&p)).unwrap_or(0);
            format!("{name}-worker-{o}")
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            report.restarted += r.revive();
            let cps = r.checkpoints();
            if (0..PARTITIONS)
                .all(|p| cps[p as usize].0 == epoch && cps[p as usize].1 == owner_of(p))
            {
                break;
            }
            if Instant::now() > deadline {
                report.incomplete += 1;
                r.explain_incomplete(epoch, &owner_of);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        report.changes.push(format!(
            "{current} → {next} at {:.0} s ({}, lag {lag}): every partition with its new owner {:.2} s later",
            t.as_secs_f64(),
            d.reason.as_str(),
            changed.elapsed().as_secs_f64()
        ));
        current = next;
    }
    stop.store(true, Ordering::Relaxed);
    report.produced = producer.join().expect("producer");
    // Let the workers read the last records, then count what they read.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let read: f64 = r.workers.values().map(|p| records_read(p.port)).sum();
        if read + r.read_by_stopped >= report.produced as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let read: f64 = r
        .workers
        .values()
        .map(|p| records_read(p.port))
        .sum::<f64>()
        + r.read_by_stopped;
    report.reread = read - report.produced as f64;
    let ordinals: Vec<usize> = r.workers.keys().copied().collect();
    for o in ordinals {
        r.stop(o);
    }
    report
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
    let full = std::env::args().any(|a| a == "--bench");
    let timing = if full { Timing::FULL } else { Timing::SMOKE };
    let weir = weir_binary();
    let broker = broker::Broker::start();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    for live in [true, false] {
        let r = run(&weir, &broker.bootstrap, live, timing);
        println!(
            "\n## {}",
            if live {
                "live handoff"
            } else {
                "restart every worker"
            }
        );
        for c in &r.changes {
            println!("- {c}");
        }
        println!(
            "- peak lag {}; lag under target {} after the spike ended; {} records produced, {:.0} read again",
            r.peak_lag,
            r.under_target_after_spike
                .map_or("never".to_string(), |s| format!("{s:.1} s")),
            r.produced,
            r.reread
        );
        if r.restarted > 0 {
            println!(
                "- {} worker(s) exited on their own and were started again (their logs are above)",
                r.restarted
            );
        }
        assert_eq!(r.incomplete, 0, "changes not complete within 120 s");
        assert!(!r.changes.is_empty(), "the spike scaled nothing");
        assert!(
            r.reread >= 0.0,
            "fewer records read than produced: {}",
            r.reread
        );
    }
}
