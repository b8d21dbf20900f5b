//! The operator with 1,000 StreamJobs: reconcile times, and the memory of the operator's
//! process alone.
//!
//! `cargo bench -p weir-operator --bench reconcile` starts the fake API server
//! (`tests/support/apiserver.rs`, served over HTTP) as a separate process — this binary run
//! again with `--api-server N` — so that its memory is not counted. It holds 1,000 distinct
//! StreamJobs (10 namespaces; tumbling, hopping and session windows; 1 to 5 aggregations;
//! topics of 1 to 64 partitions; parallelism 1 to 12; a credentials Secret on every fourth),
//! created as `kubectl apply` creates them. This process is then the operator: a `kube::Client`
//! over HTTP to that server and [`controller::controller`] — the controller `weir-operator`
//! runs, with its StreamJob reflector and the metadata watches of the seven owned kinds — run
//! with the operator's `reconcile` and `error_policy`, against a fake Kafka. Each reconcile is
//! timed. Phases:
//! 1. startup: from an empty cache until every job has been reconciled and nothing has run for
//!    a second (the first reconciles create every child; the watch events of those children
//!    trigger the reconciles that follow, as in a cluster; the status patches do not);
//! 2. two steady rounds: every job reconciled again (`reconcile_all_on`), everything exists;
//! 3. checkpoints written: every checkpoint ConfigMap gets a worker's record (offset 500 of
//!    1,000; written in the API server's process, as workers would write them, so that they
//!    cost the operator's process nothing), then every job is reconciled once more: each now
//!    reports lag, so it is requeued every 30 s;
//! 4. quiet, 60 s: nothing changes (requeues only); API writes counted, per job per minute;
//! 5. lag changing, 60 s: the fake Kafka's high watermarks grow every millisecond, so every
//!    reconcile sees another lag; API writes counted, per job per minute (target ≤ 2).
//!
//! Memory is this process's VmRSS/VmHWM from `/proc/self/status`: before the controller
//! starts, after startup, at the end, and the peak. Without `--bench` (as `cargo test
//! --all-targets` runs it) it does the same with 20 jobs and 3-second timed phases, and checks
//! that every job became Ready, that no reconcile failed, and that the timed phases wrote
//! nothing while nothing changed and at most once per job while lag changed.

#[path = "../tests/support/api.rs"]
mod api;
#[path = "../tests/support/apiserver.rs"]
mod apiserver;
#[path = "../tests/support/http.rs"]
mod http_server;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::{CustomResourceExt, Resource};
use serde_json::{json, Value};
use weir_crds::plan::NewTopic;
use weir_crds::StreamJob;
use weir_operator::controller::{self, error_policy, reconcile, Context};
use weir_operator::desired::OperatorConfig;
use weir_operator::kafka::{KafkaClient, KafkaFailure};
use weir_operator::metrics::Metrics;
use weir_operator::observation::KafkaConnection;
use weir_operator::observation::TopicObservation;

use apiserver::FakeApiServer;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts heap bytes, so that the report can tell live heap from the rest of the RSS.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed (stats_alloc counts reallocation growth in
/// `bytes_allocated` and shrinking in `bytes_deallocated`).
fn live_heap() -> usize {
    let s = GLOBAL.stats();
    s.bytes_allocated.saturating_sub(s.bytes_deallocated)
}

const NAMESPACES: usize = 10;
const PARTITIONS: [i32; 7] = [1, 3, 6, 12, 24, 48, 64];
/// A phase ends when nothing has been reconciled for this long.
const QUIET: Duration = Duration::from_secs(1);
/// A phase that has not ended after this long fails the benchmark.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

/// A Kafka where topic `t-<i>` has `PARTITIONS[i % 7]` partitions, whose high watermarks are
/// 1,000 until it is told that input flows ([`FakeKafka::flow`]): then they grow by one every
/// millisecond, so that every reconcile sees another lag.
#[derive(Default)]
struct FakeKafka {
    flowing_since: Mutex<Option<Instant>>,
}

impl FakeKafka {
    fn flow(&self) {
        *self.flowing_since.lock().expect("kafka") = Some(Instant::now());
    }

    fn high_watermark(&self) -> i64 {
        let since = *self.flowing_since.lock().expect("kafka");
        1_000 + since.map_or(0, |t| t.elapsed().as_millis() as i64)
    }
}

fn partitions_of(topic: &str) -> i32 {
    let i: usize = topic
        .trim_start_matches("t-")
        .parse()
        .expect("bench topic name");
    PARTITIONS[i % PARTITIONS.len()]
}

#[async_trait]
impl KafkaClient for FakeKafka {
    async fn topic(&self, _conn: &KafkaConnection, topic: &str) -> TopicObservation {
        TopicObservation::Found {
            partitions: partitions_of(topic),
            retention_ms: Some(7 * 24 * 3600 * 1000),
        }
    }

    async fn high_watermarks(
        &self,
        _conn: &KafkaConnection,
        _topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String> {
        Ok(vec![self.high_watermark(); partitions as usize])
    }

    async fn create_topic(
        &self,
        _conn: &KafkaConnection,
        _topic: &NewTopic,
    ) -> Result<(), KafkaFailure> {
        Ok(())
    }

    async fn delete_topic(
        &self,
        _conn: &KafkaConnection,
        _topic: &str,
    ) -> Result<(), KafkaFailure> {
        Ok(())
    }
}

/// Job `i`: every spec field that changes the children varies with `i`.
fn job(i: usize) -> StreamJob {
    let window = match i % 3 {
        0 => "{type: tumbling, size: 1m, allowedLateness: 10s}",
        1 => "{type: hopping, size: 5m, slide: 30s, allowedLateness: 5s}",
        _ => "{type: session, gap: 30s, allowedLateness: 5s}",
    };
    let all = [
        "{name: n, fn: count}",
        "{name: total, fn: sum, field: amount}",
        "{name: avg, fn: mean, field: amount}",
        "{name: p99, fn: percentile, field: amount, quantile: 0.99}",
        "{name: customers, fn: countDistinct, field: customer}",
    ];
    let aggregations = all[..1 + i % all.len()].join(", ");
    let credentials = if i.is_multiple_of(4) {
        ", credentials: {secretName: kafka-creds}"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: job-{i}, namespace: ns-{ns}}}
spec:
  source: {{kafka: {{bootstrapServers: 'kafka-{ns}:9092', topic: t-{i}{credentials}}}, eventTime: {{field: ts, format: rfc3339}}}}
  groupBy: [merchant]
  repartition: {{coPartitioned: true}}
  window: {window}
  aggregations: [{aggregations}]
  sink: {{kafka: {{topic: out-{i}}}}}
  parallelism: {parallelism}
  checkpoint: {{interval: 10s, store: {{configMap: {{}}}}}}
",
        ns = i % NAMESPACES,
        parallelism = 1 + i % 12,
    );
    weir_crds::parse_stream_job(&text)
        .unwrap_or_else(|e| panic!("job {i}: {e:?}"))
        .job
}

// ---------------------------------------------------------------------------------------
// The API server process.

/// `--api-server N`: serves the fake API server with N jobs on a free port, prints
/// `listening ADDR`, and exits when its stdin closes (the benchmark ended or died).
fn api_server_process(n: usize) {
    let mut server = FakeApiServer::new(&[StreamJob::crd()]);
    for i in 0..n {
        let j = job(i);
        let ns = j.metadata.namespace.clone().unwrap_or_default();
        let path = format!("/apis/weir.dev/v1alpha1/namespaces/{ns}/streamjobs/job-{i}");
        server.create_as_kubectl(&path, &serde_json::to_value(&j).expect("job JSON"));
    }
    for ns in 0..NAMESPACES {
        server.insert(
            &format!("/api/v1/namespaces/ns-{ns}/secrets/kafka-creds"),
            json!({"data": {"sasl.password": "czNjcmV0"}}),
        );
    }
    let shared = http_server::Shared::new(server);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(http_server::listen(shared.clone()));
    println!("listening {addr}");
    // Commands on stdin, one per line, each acknowledged on stdout; its end ends the process.
    for line in std::io::stdin().lines() {
        match line.as_deref() {
            Ok(CHECKPOINTS) => {
                shared.with(write_checkpoints);
                println!("{CHECKPOINTS}");
            }
            _ => break,
        }
    }
    std::process::exit(0);
}

/// The command that makes the API server process [`write_checkpoints`].
const CHECKPOINTS: &str = "checkpoints";

/// Writes into every checkpoint ConfigMap what a worker writes there: its partition read up
/// to offset 500, under epoch 1 (the first assignment's, so that no new epoch follows). Done in
/// the API server's process: the workers write them, not the operator.
fn write_checkpoints(server: &mut FakeApiServer) {
    use weir_crds::checkpoint::{PartitionCheckpoint, Progress, CONFIG_MAP_KEY, FORMAT};
    let selector = "app.kubernetes.io/component=checkpoint";
    let config_maps: Vec<Value> = server
        .all("/api/v1/configmaps")
        .into_iter()
        .filter(|cm| apiserver::selects(selector, &cm["metadata"]["labels"]))
        .cloned()
        .collect();
    for mut cm in config_maps {
        let name = cm["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = cm["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // job-<i>-checkpoint-<p> holds partition p of topic t-<i>.
        let (job, partition) = name.rsplit_once("-checkpoint-").expect("checkpoint name");
        let record = PartitionCheckpoint {
            format: FORMAT,
            topic: format!("t-{}", job.trim_start_matches("job-")),
            partition: partition.parse().expect("partition"),
            epoch: 1,
            owner: "bench".to_string(),
            written_at_ms: 1_700_000_000_000,
            progress: Some(Progress {
                next_offset: 500,
                replay_from: 500,
                ..Progress::default()
            }),
            definition: None,
            results_from: None,
            reset: None,
            released: false,
            state_full: None,
        };
        cm["data"] = json!({CONFIG_MAP_KEY: serde_json::to_string(&record).expect("record")});
        server.insert(&format!("/api/v1/namespaces/{ns}/configmaps/{name}"), cm);
    }
}

// ---------------------------------------------------------------------------------------
// The operator process.

/// Reconciles of the current phase.
#[derive(Default)]
struct Phase {
    /// Largest live heap seen while waiting for the phase to end (sampled every 50 ms).
    peak_heap: usize,
    running: usize,
    times: Vec<Duration>,
    failures: Vec<String>,
    jobs: HashSet<String>,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Phase>>);

impl Probe {
    fn start(&self) {
        let mut p = self.0.lock().expect("probe");
        p.running += 1;
        p.first_start.get_or_insert_with(Instant::now);
    }

    fn end(&self, job: String, took: Duration, failure: Option<String>) {
        let mut p = self.0.lock().expect("probe");
        p.running -= 1;
        p.times.push(took);
        p.failures.extend(failure.map(|f| format!("{job}: {f}")));
        p.jobs.insert(job);
        p.last_end = Some(Instant::now());
    }

    /// Waits until every one of `n` jobs was reconciled in this phase and nothing ran for
    /// [`QUIET`]; returns the phase and starts the next.
    /// The reconciles so far, as a phase; starts the next.
    fn take(&self) -> Phase {
        std::mem::take(&mut *self.0.lock().expect("probe"))
    }

    /// Waits `span`, sampling the live heap every 50 ms; returns the phase and starts the next.
    async fn phase_after(&self, span: Duration) -> Phase {
        let end = Instant::now() + span;
        while Instant::now() < end {
            let heap = live_heap();
            {
                let mut p = self.0.lock().expect("probe");
                p.peak_heap = p.peak_heap.max(heap);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.take()
    }

    async fn phase_done(&self, n: usize) -> Phase {
        let deadline = Instant::now() + PHASE_LIMIT;
        loop {
            {
                let heap = live_heap();
                let mut p = self.0.lock().expect("probe");
                p.peak_heap = p.peak_heap.max(heap);
                let quiet = p.last_end.is_some_and(|t| t.elapsed() >= QUIET);
                if p.running == 0 && p.jobs.len() >= n && quiet {
                    return std::mem::take(&mut *p);
                }
                assert!(
                    Instant::now() < deadline,
                    "phase not done after {PHASE_LIMIT:?}: {} jobs reconciled, {} running",
                    p.jobs.len(),
                    p.running
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The operator's concurrency: its default, or `WEIR_MAX_CONCURRENT_RECONCILES` as the operator
/// reads it.
fn concurrency() -> u16 {
    std::env::var("WEIR_MAX_CONCURRENT_RECONCILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(controller::DEFAULT_CONCURRENCY)
}

/// CPU time (user + system) of process `pid` (`self` for this one) from `/proc/PID/stat`, in
/// clock ticks of 10 ms (`CLK_TCK` is 100 on Linux).
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Memory of this process from `/proc/self/status`, in kB.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
    /// Heap, stacks and other anonymous memory.
    anon: u64,
    /// Pages of mapped files: the binary's code and data.
    file: u64,
}

fn memory_kb() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The fake server's counters (and a reset of its request counts).
async fn server_stats(client: &kube::Client) -> Value {
    let req = http::Request::get(http_server::STATS_PATH)
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("stats");
    serde_json::from_str(&text).expect("stats JSON")
}

fn requests_line(stats: &Value) -> String {
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(stats["requests"].clone()).unwrap_or_default();
    counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes of JSON of the cached StreamJobs: all, and their `managedFields` and
/// `last-applied-configuration` annotation.
fn cache_bytes(cache: &[Arc<DeserializeGuard<StreamJob>>]) -> (usize, usize, usize) {
    let mut all = 0;
    let mut managed = 0;
    let mut last_applied = 0;
    for g in cache {
        if let Ok(j) = &g.0 {
            all += serde_json::to_vec(j).map_or(0, |v| v.len());
            managed += serde_json::to_vec(&j.meta().managed_fields).map_or(0, |v| v.len());
            last_applied += j
                .meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubectl.kubernetes.io/last-applied-configuration"))
                .map_or(0, String::len);
        }
    }
    (all, managed, last_applied)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--api-server") {
        let n = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--api-server N");
        api_server_process(n);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let n = if full { 1_000 } else { 20 };

    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .args(["--api-server", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake API server process");
    let mut server = ApiServerProcess {
        pid: child.id().to_string(),
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
    };
    let line = server.line();
    let addr = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line from the API server: {line:?}"))
        .to_string();

    // The operator binary's runtime (`#[tokio::main]`: one worker per core).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Long enough for every job's requeue (30 s) to come round twice.
    let timed_phase = Duration::from_secs(if full { 60 } else { 3 });
    let report = rt.block_on(operator(&addr, n, &mut server, timed_phase));
    drop(rt);
    // Our own child: closing its stdin ends it; kill in case it is stuck.
    drop(server);
    let _ = child.kill();
    let _ = child.wait();
    print!("{report}");
}

/// The API server process: its pid, and the lines of its commands and answers.
struct ApiServerProcess {
    pid: String,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl ApiServerProcess {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("a line from the API server");
        line.trim().to_string()
    }

    /// Runs `command` in the API server process and waits for its answer.
    fn command(&mut self, command: &str) {
        use std::io::Write as _;
        writeln!(self.stdin, "{command}").expect("a command to the API server");
        assert_eq!(self.line(), command);
    }
}

async fn operator(
    addr: &str,
    n: usize,
    server: &mut ApiServerProcess,
    timed_phase: Duration,
) -> String {
    let server_pid = server.pid.clone();
    let server_pid = server_pid.as_str();
    let client = http_server::client(addr);
    let config = OperatorConfig {
        worker_image: "ghcr.io/weir/weir:bench".to_string(),
        ..OperatorConfig::default()
    };
    let kafka = Arc::new(FakeKafka::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        kafka.clone(),
        config,
        Metrics::default(),
        None,
    ));
    let before = memory_kb();

    let probe = Probe::default();
    let timed = {
        let probe = probe.clone();
        move |obj: Arc<DeserializeGuard<StreamJob>>, ctx: Arc<Context>| {
            let probe = probe.clone();
            async move {
                let name = obj.meta().name.clone().unwrap_or_default();
                probe.start();
                let t0 = Instant::now();
                let r = reconcile(obj, ctx).await;
                probe.end(name, t0.elapsed(), r.as_ref().err().map(|e| e.to_string()));
                r
            }
        }
    };
    let (trigger, rounds) = futures::channel::mpsc::unbounded::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = controller::controller(&ctx, None, concurrency());
    let cache = controller.store();
    let running = tokio::spawn(
        controller
            .reconcile_all_on(rounds)
            .graceful_shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(timed, error_policy, ctx)
            .for_each(|_| async {}),
    );

    // CPU time of (this process, the API server) at the start of each phase and at the end.
    let mut cpu_marks = vec![(cpu("self"), cpu(server_pid))];
    let mut phases = vec![("startup", probe.phase_done(n).await)];
    cpu_marks.push((cpu("self"), cpu(server_pid)));
    let after_startup = memory_kb();
    let mut requests = vec![server_stats(&client).await];
    for name in ["steady 1", "steady 2"] {
        cpu_marks.push((cpu("self"), cpu(server_pid)));
        trigger.unbounded_send(()).expect("trigger a round");
        phases.push((name, probe.phase_done(n).await));
        cpu_marks.push((cpu("self"), cpu(server_pid)));
        requests.push(server_stats(&client).await);
    }
    // The workers' first checkpoints (offset 500 of 1,000 everywhere), then a round that reads
    // them: every job now reports lag, so it is requeued every 30 s.
    tokio::task::block_in_place(|| server.command(CHECKPOINTS));
    let _ = server_stats(&client).await;
    cpu_marks.push((cpu("self"), cpu(server_pid)));
    trigger.unbounded_send(()).expect("trigger a round");
    phases.push(("checkpoints written", probe.phase_done(n).await));
    cpu_marks.push((cpu("self"), cpu(server_pid)));
    requests.push(server_stats(&client).await);
    // Timed phases: nothing changes, then input flows (lag changes on every look).
    let mut writes = Vec::new();
    for (name, flowing) in [("quiet", false), ("lag changing", true)] {
        if flowing {
            kafka.flow();
        }
        cpu_marks.push((cpu("self"), cpu(server_pid)));
        phases.push((name, probe.phase_after(timed_phase).await));
        cpu_marks.push((cpu("self"), cpu(server_pid)));
        let stats = server_stats(&client).await;
        let per_job_minute =
            http_server::writes(&stats) as f64 / n as f64 / timed_phase.as_secs_f64() * 60.0;
        writes.push((name, http_server::writes(&stats), per_job_minute));
        requests.push(stats);
    }
    let end = memory_kb();
    let heap_end = live_heap();
    let cached = cache.state();
    let (cache_json, cache_managed, cache_last_applied) = cache_bytes(&cached);
    let cached_jobs = cached.len();
    drop(cached);
    let _ = stop.send(());
    running.await.expect("controller task");
    // The controller is gone (its watches, queues, connections); the cache is still held here.
    let heap_cache_only = live_heap();
    drop(cache);
    let heap_nothing = live_heap();

    let last = requests.last().cloned().unwrap_or_default();
    let failures: Vec<&String> = phases.iter().flat_map(|(_, p)| &p.failures).collect();
    assert!(failures.is_empty(), "reconciles failed: {failures:?}");
    assert_eq!(last["jobs"], json!(n), "{last}");
    assert_eq!(last["ready"], json!(n), "every job should be Ready: {last}");
    assert_eq!(last["statefulsets"], json!(n), "{last}");
    assert_eq!(cached_jobs, n, "the controller's cache holds every job");

    let mib = |b: usize| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{n} StreamJobs; the operator's controller ({} reconciles at once) against a fake API \
         server in another process (HTTP) and a fake Kafka\n",
        concurrency()
    );
    let _ = writeln!(
        out,
        "| phase | reconciles | p50 ms | p99 ms | max ms | wall s | operator CPU s | ms CPU per \
         reconcile | API server CPU s |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut all = Vec::new();
    for (i, (name, p)) in phases.iter().enumerate() {
        let (start, end) = (cpu_marks[2 * i], cpu_marks[2 * i + 1]);
        let ours = end.0.saturating_sub(start.0);
        let server_cpu = end.1.saturating_sub(start.1);
        let mut t = p.times.clone();
        t.sort();
        let wall = match (p.first_start, p.last_end) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {wall:.2} | {:.2} | {:.2} | {:.2} |",
            t.len(),
            ms(percentile(&t, 0.50)),
            ms(percentile(&t, 0.99)),
            ms(t.last().copied().unwrap_or_default()),
            ours.as_secs_f64(),
            ours.as_secs_f64() * 1e3 / t.len().max(1) as f64,
            server_cpu.as_secs_f64(),
        );
        all.extend(t);
    }
    all.sort();
    let _ = writeln!(
        out,
        "| all | {} | {} | {} | {} | | | | |",
        all.len(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().expect("times")),
    );
    out.push('\n');
    for ((name, _), r) in phases.iter().zip(&requests) {
        let _ = writeln!(out, "API requests, {name}: {}", requests_line(r));
    }
    let _ = writeln!(
        out,
        "API server at the end: {} objects, {} jobs of which {} Ready",
        last["objects"], last["jobs"], last["ready"]
    );
    let _ = writeln!(
        out,
        "\n| operator process memory | MB |\n|---|---|\n\
         | VmRSS before the controller starts | {} |\n\
         | VmRSS after startup | {} |\n\
         | VmRSS at the end | {} |\n\
         | VmHWM (peak RSS) | {} |\n\
         | at the end: RssAnon (heap, stacks) / RssFile (code) | {} / {} |\n\
         | live heap, peak (sampled every 50 ms) | {} |\n\
         | live heap at the end | {} |\n\
         | of which the StreamJob cache (freed when it is dropped) | {} |\n\
         | of which the rest of the running controller (freed when it stops) | {} |",
        mb(before.rss),
        mb(after_startup.rss),
        mb(end.rss),
        mb(end.hwm),
        mb(end.anon),
        mb(end.file),
        mib(phases.iter().map(|(_, p)| p.peak_heap).max().unwrap_or(0)),
        mib(heap_end),
        mib(heap_cache_only.saturating_sub(heap_nothing)),
        mib(heap_end.saturating_sub(heap_cache_only)),
    );
    let _ = writeln!(
        out,
        "\nStreamJob cache: {cached_jobs} objects, {} MB as JSON, of which managedFields {} MB \
         and the last-applied-configuration annotation {} MB",
        mib(cache_json),
        mib(cache_managed),
        mib(cache_last_applied),
    );
    let _ = writeln!(
        out,
        "\n| phase ({} s) | API writes | writes per job per minute |\n|---|---|---|",
        timed_phase.as_secs()
    );
    for (name, total, per) in &writes {
        let _ = writeln!(out, "| {name} | {total} | {per:.2} |");
    }
    let quiet = writes[0].1;
    let lagging = writes[1].2;
    // Nothing changes: nothing is written. Lag changing: no chain of reconciles (a storm
    // writes on every reconcile, hundreds of times per job and minute).
    assert_eq!(quiet, 0, "writes while nothing changes");
    assert!(
        writes[1].1 <= n as u64 * timed_phase.as_secs().div_ceil(30),
        "writes while lag changes: {writes:?}"
    );
    let _ = writeln!(
        out,
        "target: <= 2 API writes per job per minute with lag changing: {} ({lagging:.2}); 0 when \
         nothing changes: {} ({quiet})",
        if lagging <= 2.0 { "met" } else { "NOT met" },
        if quiet == 0 { "met" } else { "NOT met" },
    );
    let p99 = percentile(&all, 0.99);
    let peak_mb = end.hwm as f64 / 1024.0;
    let _ = writeln!(
        out,
        "targets: p99 reconcile <= 100 ms: {} ({} ms); RSS <= 50 MB: {} (peak {peak_mb:.1} MB)",
        if p99 <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
        ms(p99),
        if peak_mb <= 50.0 { "met" } else { "NOT met" },
    );
    out
}
