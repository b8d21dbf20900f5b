//! The operator with 1,000 StreamJobs: wall time of each reconcile and the process's memory.
//!
//! `cargo bench -p weir-operator --bench reconcile` reconciles 1,000 distinct jobs (10
//! namespaces; tumbling, hopping and session windows; 1 to 5 aggregations; topics of 1 to 64
//! partitions; parallelism 1 to 12; a credentials Secret on every fourth) against a fake API
//! server (the one of `tests/controller.rs`, here with a store so that it answers reads with
//! what was written) and a fake Kafka. Each job is reconciled three times, sequentially: the
//! first creates its children, the next two are the steady state (everything exists, status
//! unchanged). Without `--bench` (as `cargo test --all-targets` runs it) it does a 20-job smoke
//! run.
//!
//! Memory is the process's VmRSS/VmHWM from `/proc/self/status`, read before the first
//! reconcile and at the end while the benchmark holds what the controller's reflector caches
//! would: every StreamJob (with its status) and every child the controller watches through
//! `.owns(...)` (ServiceAccount, Role, RoleBinding, job ConfigMap, Service, StatefulSet,
//! PodDisruptionBudget), as typed objects decoded from what the API server stored. The fake
//! API server lives in the same process and keeps its own copy of everything as serialised
//! JSON (its size is printed): the RSS is an over-estimate of the operator's by that much.

#[path = "../tests/support/api.rs"]
mod api;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::StatusCode;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::DeserializeGuard;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use weir_crds::StreamJob;
use weir_operator::controller::{reconcile, Context};
use weir_operator::desired::OperatorConfig;
use weir_operator::metrics::Metrics;
use weir_operator::names;
use weir_operator::observe::{KafkaConnection, KafkaObserver};
use weir_operator::observed::TopicObservation;

use api::{mock_client, serve, status_body, Call};

const NAMESPACES: usize = 10;
const PARTITIONS: [i32; 7] = [1, 3, 6, 12, 24, 48, 64];

/// A Kafka where topic `t-<i>` has `PARTITIONS[i % 7]` partitions.
struct FakeKafka;

fn partitions_of(topic: &str) -> i32 {
    let i: usize = topic
        .trim_start_matches("t-")
        .parse()
        .expect("bench topic name");
    PARTITIONS[i % PARTITIONS.len()]
}

#[async_trait]
impl KafkaObserver for FakeKafka {
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
        Ok(vec![1_000; partitions as usize])
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
    let mut job = weir_crds::parse_stream_job(&text)
        .unwrap_or_else(|e| panic!("job {i}: {e:?}"))
        .job;
    job.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
    job.metadata.generation = Some(1);
    job
}

/// The fake API server's objects, by API path, as serialised JSON.
#[derive(Default)]
struct Store {
    objects: HashMap<String, Vec<u8>>,
    /// Checkpoint ConfigMap paths per (namespace, job), for the labelled list.
    checkpoints: HashMap<(String, String), Vec<String>>,
    /// Requests since the last [`Store::take_counts`], by kind.
    counts: std::collections::BTreeMap<&'static str, usize>,
}

impl Store {
    fn get(&self, path: &str) -> Option<Value> {
        self.objects
            .get(path)
            .map(|b| serde_json::from_slice(b).expect("stored JSON"))
    }

    fn put(&mut self, path: String, v: &Value) {
        self.objects
            .insert(path, serde_json::to_vec(v).expect("JSON"));
    }

    fn take_counts(&mut self) -> String {
        let c = std::mem::take(&mut self.counts);
        c.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn bytes(&self) -> usize {
        self.objects.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// `/api/v1/namespaces/NS/...` → NS.
fn namespace_of(path: &str) -> String {
    let mut it = path.split('/');
    it.find(|p| *p == "namespaces");
    it.next().unwrap_or_default().to_string()
}

/// Answers like an API server: reads return what was written, server-side applies store the
/// applied object, creates of checkpoint ConfigMaps are listed by their job label.
fn answer(store: &mut Store, call: &Call) -> (StatusCode, Value) {
    let p = call.path.as_str();
    let kind = match call.method.as_str() {
        "GET" => "GET",
        "PATCH" if p.ends_with("/status") => "status PATCH",
        "PATCH" => "apply PATCH",
        "POST" if p.ends_with("/configmaps") => "checkpoint POST",
        "POST" => "event POST",
        _ => "other",
    };
    *store.counts.entry(kind).or_default() += 1;
    match call.method.as_str() {
        "GET" if p.ends_with("/configmaps") => {
            let job = call
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("labelSelector=weir.dev%2Fjob%3D"))
                .and_then(|v| v.split("%2C").next())
                .expect("checkpoint list by job label")
                .to_string();
            let items: Vec<Value> = store
                .checkpoints
                .get(&(namespace_of(p), job))
                .into_iter()
                .flatten()
                .filter_map(|path| store.get(path))
                .collect();
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": items}),
            )
        }
        "GET" => match store.get(p) {
            Some(v) => (StatusCode::OK, v),
            None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
        },
        "PATCH" if p.ends_with("/status") => {
            let job_path = p.trim_end_matches("/status");
            let mut j = store.get(job_path).expect("the job is stored");
            j["status"] = call.body["status"].clone();
            store.put(job_path.to_string(), &j);
            (StatusCode::OK, j)
        }
        "PATCH" => {
            let mut b = call.body.clone();
            b["metadata"]["namespace"] = json!(namespace_of(p));
            store.put(p.to_string(), &b);
            (StatusCode::OK, b)
        }
        "POST" if p.ends_with("/configmaps") => {
            let mut b = call.body.clone();
            b["metadata"]["namespace"] = json!(namespace_of(p));
            let name = b["metadata"]["name"].as_str().unwrap_or_default();
            let path = format!("{p}/{name}");
            if store.objects.contains_key(&path) {
                return (StatusCode::CONFLICT, status_body(409, "AlreadyExists"));
            }
            let job = b["metadata"]["labels"]["weir.dev/job"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            store
                .checkpoints
                .entry((namespace_of(p), job))
                .or_default()
                .push(path.clone());
            store.put(path, &b);
            (StatusCode::CREATED, b)
        }
        // Events.
        "POST" => (StatusCode::CREATED, call.body.clone()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            status_body(405, "MethodNotAllowed"),
        ),
    }
}

/// What the controller's reflectors hold: the jobs and the children it `.owns(...)`.
#[derive(Default)]
struct Cache {
    jobs: Vec<Arc<DeserializeGuard<StreamJob>>>,
    service_accounts: Vec<Arc<ServiceAccount>>,
    roles: Vec<Arc<Role>>,
    role_bindings: Vec<Arc<RoleBinding>>,
    config_maps: Vec<Arc<ConfigMap>>,
    services: Vec<Arc<Service>>,
    stateful_sets: Vec<Arc<StatefulSet>>,
    pdbs: Vec<Arc<PodDisruptionBudget>>,
}

/// Sets `v[i]` (the items arrive in index order).
fn put<T>(v: &mut Vec<T>, i: usize, x: Option<T>) {
    if let Some(x) = x {
        if v.len() > i {
            v[i] = x;
        } else {
            v.push(x);
        }
    }
}

fn typed<K: DeserializeOwned>(store: &Store, path: &str) -> Option<Arc<K>> {
    store
        .get(path)
        .map(|v| Arc::new(serde_json::from_value(v).expect("typed object")))
}

impl Cache {
    /// Refreshes job `i` and its children from the store, as watch events would.
    fn load(&mut self, store: &Store, i: usize) {
        let ns = format!("ns-{}", i % NAMESPACES);
        let core = format!("/api/v1/namespaces/{ns}");
        let apps = format!("/apis/apps/v1/namespaces/{ns}");
        let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}");
        let policy = format!("/apis/policy/v1/namespaces/{ns}");
        let job: Arc<StreamJob> = typed(
            store,
            &format!("/apis/weir.dev/v1alpha1/namespaces/{ns}/streamjobs/job-{i}"),
        )
        .expect("job");
        let job = Arc::new(DeserializeGuard(Ok((*job).clone())));
        let name = format!("job-{i}");
        let w = names::worker_name(&name);
        let config = names::config_map_name(&name);
        put(&mut self.jobs, i, Some(job));
        put(
            &mut self.service_accounts,
            i,
            typed(store, &format!("{core}/serviceaccounts/{w}")),
        );
        put(
            &mut self.roles,
            i,
            typed(store, &format!("{rbac}/roles/{w}")),
        );
        put(
            &mut self.role_bindings,
            i,
            typed(store, &format!("{rbac}/rolebindings/{w}")),
        );
        put(
            &mut self.config_maps,
            i,
            typed(store, &format!("{core}/configmaps/{config}")),
        );
        put(
            &mut self.services,
            i,
            typed(store, &format!("{core}/services/{w}")),
        );
        put(
            &mut self.stateful_sets,
            i,
            typed(store, &format!("{apps}/statefulsets/{w}")),
        );
        put(
            &mut self.pdbs,
            i,
            typed(store, &format!("{policy}/poddisruptionbudgets/{w}")),
        );
    }

    fn objects(&self) -> usize {
        self.jobs.len()
            + self.service_accounts.len()
            + self.roles.len()
            + self.role_bindings.len()
            + self.config_maps.len()
            + self.services.len()
            + self.stateful_sets.len()
            + self.pdbs.len()
    }
}

/// (VmRSS, VmHWM) in kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 1_000 } else { 20 };
    // The operator binary's runtime: multi-threaded, one worker per core (2 here).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(n));
}

async fn bench(n: usize) {
    let store = Arc::new(Mutex::new(Store::default()));
    let jobs: Vec<StreamJob> = (0..n).map(job).collect();
    {
        let mut s = store.lock().expect("store");
        for j in &jobs {
            let ns = j.metadata.namespace.clone().unwrap_or_default();
            let name = j.metadata.name.clone().unwrap_or_default();
            let path = format!("/apis/weir.dev/v1alpha1/namespaces/{ns}/streamjobs/{name}");
            s.put(path, &serde_json::to_value(j).expect("job JSON"));
        }
        for ns in 0..NAMESPACES {
            s.put(
                format!("/api/v1/namespaces/ns-{ns}/secrets/kafka-creds"),
                &json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "kafka-creds", "namespace": format!("ns-{ns}")},
                        "data": {"sasl.password": "czNjcmV0"}}),
            );
        }
    }
    let (client, handle) = mock_client();
    let server_store = store.clone();
    let server = tokio::spawn(serve(handle, move |call| {
        answer(&mut server_store.lock().expect("store"), call)
    }));
    let config = OperatorConfig {
        worker_image: "ghcr.io/weir/weir:bench".to_string(),
        ..OperatorConfig::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(FakeKafka),
        config,
        Metrics::default(),
        None,
    ));
    let mut cache = Cache::default();
    let before = memory_kb();

    let rounds = ["create", "steady 1", "steady 2"];
    let mut times: Vec<Vec<Duration>> = Vec::new();
    let mut round_wall = Vec::new();
    let mut round_calls = Vec::new();
    for round in 0..rounds.len() {
        let mut t = Vec::with_capacity(n);
        let start = Instant::now();
        for (i, j) in jobs.iter().enumerate() {
            // The reconcile receives the job as the cache holds it (with the status of the
            // previous round, so a steady reconcile patches no status).
            let guard = match cache.jobs.get(i) {
                Some(g) => g.clone(),
                None => Arc::new(DeserializeGuard(Ok(j.clone()))),
            };
            let t0 = Instant::now();
            reconcile(guard, ctx.clone())
                .await
                .unwrap_or_else(|e| panic!("round {round} job {i}: {e}"));
            t.push(t0.elapsed());
            cache.load(&store.lock().expect("store"), i);
        }
        round_wall.push(start.elapsed());
        round_calls.push(store.lock().expect("store").take_counts());
        t.sort();
        times.push(t);
    }
    let after = memory_kb();
    let store_bytes = store.lock().expect("store").bytes();
    let stored = store.lock().expect("store").objects.len();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{n} StreamJobs, each reconciled {} times in sequence (fake API server + fake Kafka)\n",
        rounds.len()
    );
    let _ = writeln!(
        out,
        "| round | reconciles | p50 ms | p99 ms | max ms | wall s |\n|---|---|---|---|---|---|"
    );
    for ((r, t), wall) in rounds.iter().zip(&times).zip(&round_wall) {
        let _ = writeln!(
            out,
            "| {r} | {} | {} | {} | {} | {:.2} |",
            t.len(),
            ms(percentile(t, 0.50)),
            ms(percentile(t, 0.99)),
            ms(*t.last().expect("times")),
            wall.as_secs_f64()
        );
    }
    let mut all: Vec<Duration> = times.concat();
    all.sort();
    let _ = writeln!(
        out,
        "| all | {} | {} | {} | {} | {:.2} |",
        all.len(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().expect("times")),
        round_wall.iter().map(Duration::as_secs_f64).sum::<f64>()
    );
    out.push('\n');
    for (r, c) in rounds.iter().zip(&round_calls) {
        let _ = writeln!(out, "API requests, {r}: {c}");
    }
    let _ = writeln!(
        out,
        "\n| memory | MB |\n|---|---|\n\
         | VmRSS before the first reconcile | {} |\n\
         | VmRSS after, holding the cache | {} |\n\
         | VmHWM (peak RSS) | {} |\n\
         | of which the fake API server's JSON store (not the operator's) | {:.1} |",
        mb(before.0),
        mb(after.0),
        mb(after.1),
        store_bytes as f64 / (1024.0 * 1024.0),
    );
    let _ = writeln!(
        out,
        "\ncache held: {} objects ({} jobs and their owned children); API objects stored: {stored}",
        cache.objects(),
        cache.jobs.len()
    );
    print!("{out}");
    let p99 = percentile(&all, 0.99);
    let peak_mb = after.1 as f64 / 1024.0;
    println!(
        "targets: p99 reconcile <= 100 ms: {} ({} ms); RSS <= 50 MB: {} (peak {peak_mb:.1} MB)",
        if p99 <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
        ms(p99),
        if peak_mb <= 50.0 { "met" } else { "NOT met" },
    );

    drop(cache);
    drop(ctx);
    server.await.expect("API server task");
}
