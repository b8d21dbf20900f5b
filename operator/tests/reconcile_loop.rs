//! The operator against the stateful fake API server, where the real one (issue 16) showed what a
//! scripted one could not: the RBAC escalation check (a RoleBinding to a missing Role is a 404),
//! and watch events for the operator's own status writes. The first test reconciles once at a
//! time (`world.rs`); the second runs the operator's whole controller — its StreamJob watch, the
//! owned-object watches, requeues — over HTTP (`http.rs`) and counts what it writes.

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/http.rs"]
mod http_server;
mod support;
#[path = "support/world.rs"]
mod world;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kube::core::DeserializeGuard;
use serde_json::{json, Value};
use weir_crds::plan::NewTopic;
use weir_crds::StreamJob;
use weir_operator::controller::{self, error_policy, reconcile, Context};
use weir_operator::kafka::{KafkaClient, KafkaFailure};
use weir_operator::metrics::Metrics;
use weir_operator::observation::{KafkaConnection, TopicObservation};

use api::Call;
use apiserver::FakeApiServer;
use http_server::Shared;
use support::{cfg, job};
use world::World;

const TIMEOUT: Duration = Duration::from_secs(20);
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

/// A Kafka whose source topic is missing until [`TopicLater::create`], and whose high watermarks
/// grow by one on every look: every reconcile sees another lag, as with input flowing.
#[derive(Default)]
struct TopicLater {
    partitions: Mutex<Option<i32>>,
    high_watermark: AtomicI64,
}

impl TopicLater {
    fn with(partitions: i32) -> Self {
        let k = TopicLater::default();
        k.create(partitions);
        k
    }

    fn create(&self, partitions: i32) {
        *self.partitions.lock().expect("kafka") = Some(partitions);
    }
}

#[async_trait]
impl KafkaClient for TopicLater {
    async fn topic(&self, _conn: &KafkaConnection, _topic: &str) -> TopicObservation {
        match *self.partitions.lock().expect("kafka") {
            Some(partitions) => TopicObservation::Found {
                partitions,
                retention_ms: None,
            },
            None => TopicObservation::NotFound,
        }
    }

    async fn high_watermarks(
        &self,
        _conn: &KafkaConnection,
        _topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String> {
        let hw = 1_000 + self.high_watermark.fetch_add(1, Ordering::SeqCst);
        Ok(vec![hw; partitions as usize])
    }

    async fn create_topic(
        &self,
        _conn: &KafkaConnection,
        t: &NewTopic,
    ) -> Result<(), KafkaFailure> {
        Err(KafkaFailure::Refused(format!(
            "a one-stage job creates no topic; asked for {}",
            t.name
        )))
    }

    async fn delete_topic(
        &self,
        _conn: &KafkaConnection,
        _topic: &str,
    ) -> Result<(), KafkaFailure> {
        Ok(())
    }
}

/// An API server holding the job (as `kubectl apply` creates it) and its credentials Secret.
fn server() -> FakeApiServer {
    world::shop_server(&job())
}

/// (status, reason) of condition `t` of a stored job.
fn condition(job: &Value, t: &str) -> (String, String) {
    let c = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t} condition in {}", job["status"]));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"))
}

fn events(calls: &[Call]) -> Vec<(String, String, String)> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == EVENTS)
        .map(|c| {
            let s = |k: &str| c.body[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

/// What starts a reconcile: not a status change; a spec change (generation), deletion,
/// finalizers and annotations do.
#[test]
fn only_what_the_operator_acts_on_starts_a_reconcile() {
    let guard = |j: StreamJob| DeserializeGuard(Ok(j));
    let base = job();
    let hash = |j: StreamJob| controller::reconcile_worthy(&guard(j));
    let mut with_status = base.clone();
    with_status.status = Some(weir_crds::StreamJobStatus {
        lag: Some(42),
        ..Default::default()
    });
    assert_eq!(hash(with_status), hash(base.clone()));
    let mut rv = base.clone();
    rv.metadata.resource_version = Some("99".to_string());
    assert_eq!(hash(rv), hash(base.clone()), "a new resourceVersion alone");
    let mut changes: Vec<StreamJob> = vec![base.clone(); 4];
    changes[0].metadata.generation = Some(2);
    changes[1].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    changes[2].metadata.finalizers = Some(vec!["weir.dev/checkpoints".to_string()]);
    changes[3].metadata.annotations = Some([("team".to_string(), "pay".to_string())].into());
    for c in changes {
        assert_ne!(hash(c.clone()), hash(base.clone()), "{:?}", c.metadata);
    }
}

#[test]
fn the_fake_refuses_a_role_binding_to_a_missing_role_like_the_api_server() {
    let mut server = server();
    let binding = |body: Value| Call {
        method: "PATCH".to_string(),
        path: format!("{RBAC}/rolebindings/payments-worker"),
        query: "fieldManager=weir-operator&force=true".to_string(),
        content_type: "application/apply-patch+yaml".to_string(),
        accept: String::new(),
        body,
    };
    let body = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "payments-worker", "namespace": "shop"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "payments-worker"},
        "subjects": [{"kind": "ServiceAccount", "name": "payments-worker", "namespace": "shop"}]});
    let (code, answer) = server.handle(&binding(body.clone()));
    assert_eq!(code, http::StatusCode::NOT_FOUND);
    assert_eq!(
        answer["message"],
        json!("rolebindings.rbac.authorization.k8s.io \"payments-worker\" not found")
    );
    assert!(server
        .get(&format!("{RBAC}/rolebindings/payments-worker"))
        .is_none());
    server.insert(
        &format!("{RBAC}/roles/payments-worker"),
        json!({"rules": []}),
    );
    let (code, _) = server.handle(&binding(body));
    assert_eq!(code, http::StatusCode::CREATED);
}

/// B1: a new job applied before its topic exists gets `Ready=False TopicNotFound` and a Warning
/// Event on its first reconcile (the Role goes before its binding), and Ready once the topic
/// exists.
#[tokio::test]
async fn a_new_job_whose_topic_is_missing_gets_a_status_and_an_event_then_runs() {
    let kafka = Arc::new(TopicLater::default());
    let w = World::with_kafka(server(), kafka.clone());
    let once = || reconcile_once(&w);
    once()
        .await
        .expect("a missing topic is a status, not an error");
    let stored = w.server.lock().expect("server").get(JOB).cloned();
    let stored = stored.expect("the job");
    assert_eq!(
        condition(&stored, "Ready"),
        ("False".to_string(), "TopicNotFound".to_string())
    );
    let calls = w.calls.lock().expect("calls").clone();
    let events = events(&calls);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "TopicNotFound")
    );
    assert!(
        events[0].2.contains("topic payments does not exist"),
        "{events:?}"
    );
    for kind in ["roles", "rolebindings"] {
        let path = format!("{RBAC}/{kind}/payments-worker");
        assert!(
            w.server.lock().expect("server").get(&path).is_some(),
            "{path}"
        );
    }

    kafka.create(3);
    once().await.expect("the topic exists now");
    let stored = w.server.lock().expect("server").get(JOB).cloned();
    let stored = stored.expect("the job");
    assert_eq!(
        condition(&stored, "Ready"),
        ("True".to_string(), "Running".to_string())
    );
    assert_eq!(stored["status"]["partitions"], json!(3));
}

/// One reconcile of the stored job `payments`, as the controller would run it.
async fn reconcile_once(
    w: &World,
) -> Result<kube::runtime::controller::Action, weir_operator::error::Error> {
    let j = w.jobs.get("payments").await.expect("the job");
    let guard = Arc::new(DeserializeGuard(Ok(j)));
    tokio::time::timeout(TIMEOUT, reconcile(guard, w.ctx.clone()))
        .await
        .expect("reconcile finished")
}

/// Waits until `check` holds for the stored job.
async fn until(shared: &Shared, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let job = shared.with(|s| s.get(JOB).cloned()).unwrap_or_default();
        if check(&job) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", job["status"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// B2: with lag changing on every look, the operator's own status writes do not start the next
/// reconcile (a storm wrote 54 statuses in 30 s for one job on a real cluster): once the job is
/// Ready nothing is reconciled or written until something changes. A scale then is one
/// reconcile, announced by a Normal Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_changing_on_every_reconcile_starts_no_reconcile_chain() {
    let shared = Shared::recording(server());
    let addr = http_server::listen(shared.clone()).await;
    let client = http_server::client(&addr.to_string());
    let kafka = Arc::new(TopicLater::with(3));
    let ctx = Arc::new(Context::new(client, kafka, cfg(), Metrics::default(), None));
    let reconciles = Arc::new(AtomicUsize::new(0));
    let counted = {
        let reconciles = reconciles.clone();
        move |job: Arc<DeserializeGuard<StreamJob>>, ctx: Arc<Context>| {
            reconciles.fetch_add(1, Ordering::SeqCst);
            reconcile(job, ctx)
        }
    };
    let controller = controller::controller(&ctx, Some("shop"), 16)
        .run(counted, error_policy, ctx.clone())
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    until(&shared, "Ready", |j| {
        j["status"].is_object() && condition(j, "Ready").0 == "True"
    })
    .await;
    // Settle: the watch events of the children just created start a few reconciles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes_to_ready = http_server::writes(&shared.with(http_server::stats));
    let reconciles_to_ready = reconciles.load(Ordering::SeqCst);
    // Each of the 7 children once, 3 checkpoint ConfigMaps, and the status: first
    // WorkersNotReady or Running, at most once more when the workers are seen ready.
    assert!(
        (11..=13).contains(&writes_to_ready),
        "writes until Ready: {writes_to_ready}"
    );
    assert!(
        reconciles_to_ready <= 6,
        "reconciles: {reconciles_to_ready}"
    );

    // A status write (here a lag, as the operator writes it) is a watch event of the job, and
    // starts no reconcile. Otherwise nothing changes but the lag Kafka shows: nothing happens
    // until the requeue (30 s).
    shared.with(|s| {
        let mut j = s.get(JOB).cloned().expect("the job");
        j["status"]["lag"] = json!(12_345);
        s.insert(JOB, j);
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = shared.with(http_server::stats);
    assert_eq!(http_server::writes(&quiet), 0, "{quiet}");
    assert_eq!(reconciles.load(Ordering::SeqCst), reconciles_to_ready);

    // A scale: one spec change, one reconcile's writes, and a Normal Event.
    let jobs: kube::Api<StreamJob> = kube::Api::namespaced(ctx.client.clone(), "shop");
    let patch = json!({"spec": {"parallelism": 2}});
    jobs.patch(
        "payments",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("scale");
    until(&shared, "2 workers", |j| {
        j["status"]["replicas"] == json!(2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let scaled = events(&shared.calls());
    assert!(
        scaled.iter().any(|(t, reason, note)| t == "Normal"
            && reason == "Scaled"
            && note == "scaled from 3 to 2 workers"),
        "{scaled:?}"
    );
    running.abort();
}

/// A reconcile reads the job ConfigMap's assignment back from memory while the operator's last
/// apply of it is remembered (one GET fewer per reconcile, issue 16's benchmark), and from the
/// API server again once someone else changed it: the next assignment is then computed from what
/// the ConfigMap really holds.
#[tokio::test]
async fn the_assignment_is_read_back_from_memory_until_someone_else_writes_the_config_map() {
    const CONFIG_MAP: &str = "/api/v1/namespaces/shop/configmaps/payments-config";
    let w = World::with_kafka(server(), Arc::new(TopicLater::with(3)));
    let once = || async {
        reconcile_once(&w).await.expect("reconciled");
    };
    let gets = || {
        w.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.method == "GET" && c.path == CONFIG_MAP)
            .count()
    };
    once().await;
    assert_eq!(gets(), 1, "a new job: the ConfigMap is read (and missing)");
    let stored = |w: &World| {
        w.server
            .lock()
            .expect("server")
            .get(CONFIG_MAP)
            .cloned()
            .expect("the job ConfigMap")
    };
    let first = stored(&w);
    once().await;
    once().await;
    assert_eq!(
        gets(),
        1,
        "applied by this operator and unchanged: not read again"
    );

    // Someone else writes it; the owned-object watch reports it to the memory (here by hand,
    // with what the watch would carry).
    let mut edited = first.clone();
    let rv = edited["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .expect("a resourceVersion");
    edited["metadata"]["resourceVersion"] = json!((rv + 1000).to_string());
    let meta: kube::api::ObjectMeta =
        serde_json::from_value(edited["metadata"].clone()).expect("metadata");
    w.ctx.memory.seen("ConfigMap", &meta, false);
    once().await;
    assert_eq!(
        gets(),
        2,
        "changed by someone else: read from the API server"
    );
    assert_eq!(
        stored(&w)["data"]["assignment.json"],
        first["data"]["assignment.json"],
        "the same assignment as before"
    );
}
