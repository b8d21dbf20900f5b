//! Reconcile wiring against a mocked API server (kube-rs controller-rs `fixtures.rs` pattern):
//! a `tower_test` mock service behind a real `kube::Client`, and an [`ApiServer`] task that
//! answers every request like a small fake API server and records it. Each test then asserts
//! the exact calls, in order. Everything runs under a timeout, so a call the reconcile waits
//! for but never gets answered (or an expected call never made) fails the test instead of
//! hanging it; an unexpected call shows up in the recorded sequence.

#[path = "support/api.rs"]
mod api;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::StatusCode;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use weir_crds::plan::NewTopic;
use weir_crds::{StreamJob, StreamJobStatus};
use weir_operator::controller::{error_policy, reconcile, Context};
use weir_operator::kafka::{KafkaClient, KafkaFailure};
use weir_operator::metrics::Metrics;
use weir_operator::observation::KafkaConnection;
use weir_operator::observation::TopicObservation;

use api::{assert_allowed, mock_client, serve, status_body, Call, Handle};
use support::{cfg, job, job_with};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The job's repartition topic ([`weir_crds::topics`]).
const REPARTITION: &str = "weir.shop.payments.repartition";
/// The name earlier versions gave it.
const LEGACY: &str = "weir-shop-payments-repartition";

/// A Kafka that has the source topic (`topic`) and answers `repartition` for the repartition
/// topic (`legacy` for the legacy name, which does not exist unless given); it records the
/// topics created and deleted, and refuses to create one when `refuse_create` says why.
#[derive(Default)]
struct FakeKafka {
    topic: Option<TopicObservation>,
    repartition: Option<TopicObservation>,
    legacy: Option<TopicObservation>,
    refuse_create: Option<KafkaFailure>,
    created: Mutex<Vec<NewTopic>>,
    deleted: Mutex<Vec<String>>,
}

#[async_trait]
impl KafkaClient for FakeKafka {
    async fn topic(&self, conn: &KafkaConnection, topic: &str) -> TopicObservation {
        // The credentials Secret's keys arrive as librdkafka properties, only those the operator's
        // own clients may use: a path would read the operator's files.
        assert_eq!(
            conn.properties.get("sasl.password").map(String::as_str),
            Some("s3cret")
        );
        assert_eq!(conn.properties.get("ssl.key.location"), None);
        let answer = match topic {
            REPARTITION => &self.repartition,
            LEGACY => return self.legacy.clone().unwrap_or(TopicObservation::NotFound),
            _ => &self.topic,
        };
        answer.clone().expect("a topic this test does not expect")
    }

    async fn high_watermarks(
        &self,
        _conn: &KafkaConnection,
        _topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String> {
        Ok(vec![100; partitions as usize])
    }

    async fn create_topic(
        &self,
        conn: &KafkaConnection,
        topic: &NewTopic,
    ) -> Result<(), KafkaFailure> {
        assert_eq!(
            conn.properties.get("sasl.password").map(String::as_str),
            Some("s3cret")
        );
        if let Some(why) = &self.refuse_create {
            return Err(why.clone());
        }
        self.created.lock().expect("lock").push(topic.clone());
        Ok(())
    }

    async fn delete_topic(&self, _conn: &KafkaConnection, topic: &str) -> Result<(), KafkaFailure> {
        self.deleted.lock().expect("lock").push(topic.to_string());
        Ok(())
    }
}

/// What the fake API server answers, per test.
#[derive(Clone, Default)]
struct Script {
    /// Answer 409 Conflict to the apply of this path (once).
    conflict_on: Option<String>,
    /// The job ConfigMap `payments-config`, when it exists.
    job_config: Option<Value>,
    /// The `data` of the credentials Secret `kafka-creds`, when not the default one.
    secret_data: Option<Value>,
}

/// The job ConfigMap `payments-config` as an earlier reconcile applied it (owned by the job)
/// with a two-stage assignment through `topic`.
fn job_config(topic: &str) -> Value {
    let assignment =
        weir_crds::assignment::Assignment::round_robin(3, 3, 1).with_merge(topic, 2, 3);
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "payments-config", "namespace": "shop",
                        "ownerReferences": [{"apiVersion": "weir.dev/v1alpha1",
                                             "kind": "StreamJob", "name": "payments",
                                             "uid": job().metadata.uid, "controller": true}]},
           "data": {"assignment.json": serde_json::to_string(&assignment).expect("assignment")}})
}

/// Answers like an API server holding the credentials Secret and nothing else of the job:
/// reads of children are 404, lists are empty, writes echo the object.
fn answer(call: &Call, script: &mut Script) -> (StatusCode, Value) {
    let p = call.path.as_str();
    match call.method.as_str() {
        "GET" if p.ends_with("/secrets/kafka-creds") => (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "kafka-creds", "namespace": "shop"},
                   "data": script.secret_data.clone().unwrap_or_else(|| json!(
                       {"sasl.password": "czNjcmV0",
                        "ssl.key.location": "L3Zhci9ydW4vc2VjcmV0cy9rdWJlcm5ldGVzLmlvL3NlcnZpY2VhY2NvdW50L3Rva2Vu"}))}),
        ),
        "GET" if p.ends_with("/configmaps/payments-config") && script.job_config.is_some() => (
            StatusCode::OK,
            script.job_config.clone().unwrap_or_default(),
        ),
        "GET" if p.ends_with("/pods") => (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        ),
        "GET" if p.ends_with("/configmaps") => (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": []}),
        ),
        "GET" => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
        "PATCH" if script.conflict_on.as_deref() == Some(p) => {
            script.conflict_on = None;
            (StatusCode::CONFLICT, status_body(409, "Conflict"))
        }
        "PATCH" if p.ends_with("/status") => {
            let mut j = serde_json::to_value(job()).expect("job");
            j["status"] = call.body["status"].clone();
            (StatusCode::OK, j)
        }
        "PATCH" if p.starts_with(JOBS) => {
            (StatusCode::OK, serde_json::to_value(job()).expect("job"))
        }
        "DELETE" if p.ends_with("/configmaps") => (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": []}),
        ),
        "PATCH" | "POST" => {
            let mut b = call.body.clone();
            if b["metadata"]["namespace"].is_null() {
                b["metadata"]["namespace"] = json!("shop");
            }
            let code = if call.method == "POST" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, b)
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            status_body(405, "MethodNotAllowed"),
        ),
    }
}

/// The fake API server: answers until the client is dropped, then returns every call.
async fn api_server(handle: Handle, mut script: Script) -> Vec<Call> {
    let mut calls = Vec::new();
    serve(handle, |call| {
        calls.push(call.clone());
        answer(call, &mut script)
    })
    .await;
    calls
}

struct Harness {
    ctx: Arc<Context>,
    server: tokio::task::JoinHandle<Vec<Call>>,
}

fn harness(partitions: i32, script: Script) -> Harness {
    harness_topic(
        TopicObservation::Found {
            partitions,
            retention_ms: None,
        },
        script,
    )
}

fn harness_topic(topic: TopicObservation, script: Script) -> Harness {
    harness_kafka(
        FakeKafka {
            topic: Some(topic),
            ..FakeKafka::default()
        },
        script,
    )
    .0
}

fn harness_kafka(kafka: FakeKafka, script: Script) -> (Harness, Arc<FakeKafka>) {
    let (client, handle) = mock_client();
    let kafka = Arc::new(kafka);
    let ctx = Arc::new(Context::new(
        client,
        kafka.clone(),
        cfg(),
        Metrics::default(),
        None,
    ));
    let h = Harness {
        ctx,
        server: tokio::spawn(api_server(handle, script)),
    };
    (h, kafka)
}

impl Harness {
    /// Drops the client and returns every call the API server saw, each checked against
    /// `API_CALLS` (the operator's RBAC must allow every call it makes).
    async fn calls(self) -> Vec<Call> {
        drop(self.ctx);
        let calls = tokio::time::timeout(TIMEOUT, self.server)
            .await
            .expect("the API server is still being called")
            .expect("API server task");
        calls.iter().for_each(assert_allowed);
        calls
    }
}

async fn run(ctx: &Arc<Context>, job: StreamJob) -> Result<Action, weir_operator::error::Error> {
    let guard = Arc::new(DeserializeGuard(Ok(job)));
    tokio::time::timeout(TIMEOUT, reconcile(guard, ctx.clone()))
        .await
        .expect("reconcile waited for an API call that was never answered")
}

const NS: &str = "/api/v1/namespaces/shop";
const APPS: &str = "/apis/apps/v1/namespaces/shop";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop";
const POLICY: &str = "/apis/policy/v1/namespaces/shop";
const JOBS: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs";

/// The reads of observe, in order.
/// The requeue of job shop/payments while it is not Ready or lags.
fn waiting() -> Duration {
    weir_operator::controller::spread(
        weir_operator::controller::REQUEUE_WAITING,
        "shop",
        "payments",
    )
}

fn reads() -> Vec<String> {
    vec![
        format!("GET {NS}/secrets/kafka-creds"),
        format!("GET {NS}/configmaps/payments-config"),
        format!("GET {NS}/configmaps"),
        format!("GET {APPS}/statefulsets/payments-worker"),
    ]
}

/// The writes of a good job with 3 partitions, in order, without the status patch.
fn child_writes() -> Vec<String> {
    vec![
        format!("PATCH {NS}/serviceaccounts/payments-worker"),
        format!("PATCH {RBAC}/roles/payments-worker"),
        format!("PATCH {RBAC}/rolebindings/payments-worker"),
        format!("PATCH {NS}/configmaps/payments-config"),
        format!("PATCH {NS}/services/payments-worker"),
        format!("POST {NS}/configmaps"),
        format!("POST {NS}/configmaps"),
        format!("POST {NS}/configmaps"),
        format!("PATCH {APPS}/statefulsets/payments-worker"),
        format!("PATCH {POLICY}/poddisruptionbudgets/payments-worker"),
    ]
}

/// The reads of who owns the children observe does not read (metadata only), before their first
/// apply: made at once, so compared sorted (see [`lines`]).
fn owner_reads() -> Vec<String> {
    let mut r = vec![
        format!("GET {NS}/serviceaccounts/payments-worker"),
        format!("GET {RBAC}/roles/payments-worker"),
        format!("GET {RBAC}/rolebindings/payments-worker"),
        format!("GET {NS}/services/payments-worker"),
        format!("GET {POLICY}/poddisruptionbudgets/payments-worker"),
    ];
    r.sort();
    r
}

/// The reads of a job's first reconcile: observe's, then the owners'.
fn first_reads() -> Vec<String> {
    let mut r = reads();
    r.extend(owner_reads());
    r
}

/// `METHOD path` of every call, in order; a run of owner reads (made at once, in any order) is
/// sorted.
fn lines(calls: &[Call]) -> Vec<String> {
    let mut out = Vec::new();
    let mut owner_reads = Vec::new();
    for c in calls {
        if c.method == "GET" && c.accept.contains("as=PartialObjectMetadata;") {
            owner_reads.push(c.line());
            continue;
        }
        owner_reads.sort();
        out.append(&mut owner_reads);
        out.push(c.line());
    }
    owner_reads.sort();
    out.append(&mut owner_reads);
    out
}

/// Every PATCH is a forced server-side apply by `weir-operator`; every POST names it too.
fn assert_ssa(calls: &[Call]) {
    for c in calls.iter().filter(|c| c.method == "PATCH") {
        assert!(
            c.query.contains("fieldManager=weir-operator"),
            "{}: {}",
            c.line(),
            c.query
        );
        assert!(c.query.contains("force=true"), "{}: {}", c.line(), c.query);
        assert_eq!(
            c.content_type,
            "application/apply-patch+yaml",
            "{}",
            c.line()
        );
    }
}

fn patched_status(calls: &[Call]) -> StreamJobStatus {
    let c = calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .expect("a status patch");
    serde_json::from_value(c.body["status"].clone()).expect("status body")
}

fn condition<'a>(s: &'a StreamJobStatus, t: &str) -> (&'a str, &'a str) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"));
    (c.status.as_str(), c.reason.as_str())
}

#[tokio::test]
async fn good_job_applies_children_in_order_creates_checkpoints_and_patches_status_once() {
    let h = harness(3, Script::default());
    let action = run(&h.ctx, job()).await.expect("reconcile succeeds");
    // Workers are not ready yet: come back soon.
    assert_eq!(action, Action::requeue(waiting()));
    let calls = h.calls().await;

    let mut want = first_reads();
    want.extend(child_writes());
    want.push(format!("PATCH {JOBS}/payments/status"));
    assert_eq!(lines(&calls), want);
    assert_ssa(&calls);

    // Created several at a time: in any order.
    let mut created: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.body["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    created.sort_unstable();
    assert_eq!(
        created,
        [
            "payments-checkpoint-0",
            "payments-checkpoint-1",
            "payments-checkpoint-2"
        ]
    );
    for c in calls.iter().filter(|c| c.method == "POST") {
        assert!(
            c.query.contains("fieldManager=weir-operator"),
            "{}",
            c.query
        );
    }
    let sts = calls
        .iter()
        .find(|c| c.path.ends_with("/statefulsets/payments-worker") && c.method == "PATCH")
        .expect("sts apply");
    assert_eq!(sts.body["spec"]["replicas"], json!(3));

    let status = patched_status(&calls);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.partitions, Some(3));
    assert_eq!(status.assignment_epoch, Some(1));
    assert_eq!(condition(&status, "Ready"), ("False", "WorkersNotReady"));
}

#[tokio::test]
async fn conflict_on_an_apply_fails_the_reconcile_then_the_retry_succeeds() {
    let h = harness(
        3,
        Script {
            conflict_on: Some(format!("{APPS}/statefulsets/payments-worker")),
            ..Script::default()
        },
    );
    let guard = Arc::new(DeserializeGuard(Ok(job())));
    let err = run(&h.ctx, job())
        .await
        .expect_err("409 fails the reconcile");
    assert_eq!(err.category(), "ApplyStatefulSet");
    let key = ("shop".to_string(), "payments".to_string());
    // The controller's error policy retries with backoff (first delay in [0.5 s, 1 s]).
    let action = error_policy(guard.clone(), &err, h.ctx.clone());
    assert_ne!(action, Action::await_change());
    assert_eq!(h.ctx.backoff.attempts(&key), 1);
    assert_eq!(
        h.ctx
            .metrics
            .failures
            .get_or_create(&weir_operator::metrics::CategoryLabel {
                category: "ApplyStatefulSet".to_string()
            })
            .get(),
        1
    );

    // The retry: the API server no longer conflicts.
    run(&h.ctx, job()).await.expect("the retry succeeds");
    assert_eq!(
        h.ctx.backoff.attempts(&key),
        0,
        "success resets the backoff"
    );
    let calls = h.calls().await;

    // First attempt: stops at the refused StatefulSet (no PDB), and says so in the status and a
    // Warning Event. Second: only what was not applied yet (the children applied by the first
    // attempt are unchanged, and known as the job's own: only the PDB's owner is read again),
    // then the status.
    let status = format!("PATCH {JOBS}/payments/status");
    let event = "POST /apis/events.k8s.io/v1/namespaces/shop/events".to_string();
    let mut want = first_reads();
    want.extend(child_writes().into_iter().take(9));
    want.extend([status.clone(), event]);
    // The retry reads the job ConfigMap's assignment back from memory: the first attempt
    // applied it and nobody changed it since.
    want.extend(
        reads()
            .into_iter()
            .filter(|r| !r.ends_with("/configmaps/payments-config")),
    );
    want.push(format!("GET {POLICY}/poddisruptionbudgets/payments-worker"));
    want.extend(child_writes().into_iter().skip(5));
    want.push(status);
    assert_eq!(lines(&calls), want);
    assert_ssa(&calls);
    let failed = patched_status(&calls);
    assert_eq!(condition(&failed, "Ready"), ("False", "ApplyStatefulSet"));
    assert_eq!(condition(&failed, "Degraded"), ("True", "ApplyStatefulSet"));
    let event = calls
        .iter()
        .find(|c| c.path.ends_with("/events"))
        .expect("event");
    assert_eq!(event.body["type"], json!("Warning"));
    assert_eq!(event.body["reason"], json!("ApplyStatefulSet"));
    let note = event.body["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("applying StatefulSet payments-worker: Conflict (Conflict, HTTP 409)"),
        "{note}"
    );
}

#[tokio::test]
async fn invalid_spec_patches_only_the_status_and_waits_for_a_change() {
    let h = harness(3, Script::default());
    let bad = job_with("worker: {env: [{name: WEIR_JOB, value: /tmp/x}]}");
    let action = run(&h.ctx, bad)
        .await
        .expect("an invalid spec is not an error");
    assert_eq!(action, Action::await_change());
    let calls = h.calls().await;

    // One status patch, and the Warning Event a user must act on; no child write.
    assert_eq!(
        api::writes(&calls),
        [
            format!("PATCH {JOBS}/payments/status"),
            "POST /apis/events.k8s.io/v1/namespaces/shop/events".to_string(),
        ]
    );
    assert_ssa(&calls);
    let status = patched_status(&calls);
    assert_eq!(condition(&status, "Ready"), ("False", "InvalidSpec"));
    let event = calls.last().expect("event");
    assert_eq!(event.body["reason"], json!("InvalidSpec"));
    assert_eq!(event.body["type"], json!("Warning"));
    assert!(
        event.body["note"]
            .as_str()
            .is_some_and(|n| n.contains("spec.worker.env")),
        "{}",
        event.body["note"]
    );
}

#[tokio::test]
async fn a_credentials_secret_with_a_refused_key_is_invalid_and_starts_no_worker() {
    // `plugin.library.paths` loads code; `enable.idempotence` is weir's to set on the sink's
    // producer, which uses the source's Secret (same cluster, no credentials of its own).
    let script = Script {
        secret_data: Some(json!({"sasl.password": "czNjcmV0",
                                 "plugin.library.paths": "L3RtcC9ldmlsLnNv",
                                 "enable.idempotence": "ZmFsc2U="})),
        ..Script::default()
    };
    let h = harness(3, script);
    let action = run(&h.ctx, job())
        .await
        .expect("an invalid Secret is not an error");
    // The fix comes with an edit of the Secret, which no watch reports: looked at again soon.
    assert_eq!(action, Action::requeue(waiting()));
    let calls = h.calls().await;
    assert_eq!(
        api::writes(&calls),
        [
            format!("PATCH {JOBS}/payments/status"),
            "POST /apis/events.k8s.io/v1/namespaces/shop/events".to_string(),
        ],
        "no child is applied: no worker starts with the Secret"
    );
    let status = patched_status(&calls);
    assert_eq!(condition(&status, "Ready"), ("False", "InvalidSpec"));
    let message = &status.conditions[0].message;
    for said in [
        "spec.source.kafka.credentials",
        "Secret kafka-creds",
        "plugin.library.paths",
        "enable.idempotence",
    ] {
        assert!(message.contains(said), "{said} not in {message}");
    }
    assert!(!message.contains("sasl.password"), "{message}");
    let event = calls.last().expect("event");
    assert_eq!(event.body["type"], json!("Warning"));
    assert_eq!(event.body["reason"], json!("InvalidSpec"));
    assert_eq!(event.body["note"], json!(message));
}

/// The status patch and the Events of one reconcile of `job()` whose source brokers cannot be
/// asked, librdkafka saying `detail`.
async fn unreachable_status_and_events(detail: &str) -> (Value, Vec<Value>) {
    let h = harness_topic(
        TopicObservation::BrokerUnreachable {
            detail: detail.to_string(),
        },
        Script::default(),
    );
    run(&h.ctx, job()).await.expect("a status, not an error");
    let calls = h.calls().await;
    let mut status = calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .map(|c| c.body["status"].clone())
        .expect("a status patch");
    // The wall-clock time of each condition differs between two reconciles a second apart:
    // compared without it.
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for c in conditions {
            c["lastTransitionTime"] = json!("1970-01-01T00:00:00Z");
        }
    }
    let events = calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .map(|c| c.body["note"].clone())
        .collect();
    (status, events)
}

#[tokio::test]
async fn unreachable_brokers_give_the_same_status_and_events_whatever_failed() {
    let refused = "Meta data fetch error: BrokerTransportFailure (Local: Broker transport \
                   failure): Connect to ipv4#10.0.0.7:22 failed: Connection refused";
    let (status, events) = unreachable_status_and_events(refused).await;
    for detail in [
        "Meta data fetch error: OperationTimedOut (Local: Timed out)",
        "Meta data fetch error: Resolve (Local: Host resolution failure)",
        "Meta data fetch error: SSL (Local: SSL error): SSL handshake failed",
    ] {
        assert_eq!(
            unreachable_status_and_events(detail).await,
            (status.clone(), events.clone()),
            "{detail}"
        );
    }
    let status: StreamJobStatus = serde_json::from_value(status).expect("status");
    assert_eq!(condition(&status, "Ready"), ("False", "BrokerUnreachable"));
    assert_eq!(events.len(), 1, "{events:?}");
    for shown in std::iter::once(&status.conditions[0].message).chain(
        events
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(
            !shown.contains("Connection refused") && !shown.contains("10.0.0.7"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn a_repartition_topic_the_brokers_cannot_be_asked_to_create_shows_no_detail() {
    let detail = "creating topic weir.shop.payments.repartition: OperationTimedOut (Local: Timed \
                  out): Connect to ipv4#10.0.0.7:22 failed: Connection refused";
    let (h, _kafka) = harness_kafka(
        two_stage(
            TopicObservation::NotFound,
            Some(KafkaFailure::Unreachable(detail.to_string())),
        ),
        Script::default(),
    );
    let err = run(&h.ctx, job_with(TWO_STAGE))
        .await
        .expect_err("retried with backoff");
    assert_eq!(err.category(), "CreateRepartitionTopic");
    assert!(!err.to_string().contains("Connection refused"), "{err}");
    let calls = h.calls().await;
    let status = patched_status(&calls);
    assert_eq!(
        condition(&status, "Ready"),
        ("False", "RepartitionTopicUnavailable")
    );
    let shown: Vec<String> = status
        .conditions
        .iter()
        .map(|c| c.message.clone())
        .chain(
            calls
                .iter()
                .filter(|c| c.path.ends_with("/events"))
                .map(|c| c.body["note"].to_string()),
        )
        .collect();
    for s in &shown {
        assert!(
            !s.contains("Connection refused") && !s.contains("Timed out"),
            "{s}"
        );
    }
    assert!(
        shown[0].contains(weir_operator::kafka::UNREACHABLE),
        "{}",
        shown[0]
    );
}

#[tokio::test]
async fn unchanged_status_is_not_patched_again() {
    let h = harness(3, Script::default());
    run(&h.ctx, job()).await.expect("first reconcile");
    let first = h.calls().await;
    let status = patched_status(&first);

    // The job now carries that status; the world has not changed.
    let mut again = job();
    again.status = Some(status);
    let h = harness(3, Script::default());
    run(&h.ctx, again).await.expect("second reconcile");
    let calls = h.calls().await;
    let mut want = first_reads();
    want.extend(child_writes());
    assert_eq!(lines(&calls), want, "no status patch");
}

#[tokio::test]
async fn delete_on_job_deletion_adds_the_finalizer_first() {
    let h = harness(3, Script::default());
    let j = job_with("checkpoint: {deleteOnJobDeletion: true}");
    let action = run(&h.ctx, j).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
    let calls = h.calls().await;
    assert_eq!(lines(&calls), [format!("PATCH {JOBS}/payments")]);
    let c = &calls[0];
    assert_eq!(c.content_type, "application/json-patch+json");
    assert!(
        c.body.to_string().contains("weir.dev/checkpoints"),
        "{}",
        c.body
    );
}

/// A job with `deleteOnJobDeletion` (and `extra` spec lines), being deleted: it has the
/// finalizer and a deletion timestamp.
fn deleted(extra: &str) -> StreamJob {
    let mut j = job_with(&format!(
        "{extra}\ncheckpoint: {{deleteOnJobDeletion: true}}"
    ));
    j.metadata.finalizers = Some(vec!["weir.dev/checkpoints".to_string()]);
    j.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    j
}

#[tokio::test]
async fn deleted_job_with_finalizer_deletes_its_checkpoints() {
    let h = harness(3, Script::default());
    run(&h.ctx, deleted("")).await.expect("cleanup");
    let calls = h.calls().await;
    assert_eq!(
        lines(&calls),
        [
            // No StatefulSet and no worker pod left (tests/cleanup.rs has the waiting).
            format!("GET {APPS}/statefulsets/payments-worker"),
            format!("GET {NS}/pods"),
            // Listed first: a legacy merge name may hold another job's record (none here).
            format!("GET {NS}/configmaps"),
            format!("DELETE {NS}/configmaps"),
            format!("PATCH {JOBS}/payments"),
        ]
    );
    for call in &calls[2..4] {
        assert!(
            call.query.contains(
                "labelSelector=weir.dev%2Fjob%3Dpayments%2Capp.kubernetes.io%2Fcomponent%3Dcheckpoint"
            ),
            "{}",
            call.query
        );
    }
}

#[tokio::test]
async fn missing_topic_keeps_partition_dependent_children_and_warns() {
    let h = harness_topic(TopicObservation::NotFound, Script::default());
    let action = run(&h.ctx, job()).await.expect("reconcile");
    assert_eq!(action, Action::requeue(waiting()));
    let calls = h.calls().await;
    let mut want = first_reads();
    // No job ConfigMap, checkpoints or StatefulSet: running workers keep their assignment
    // while the topic cannot be seen. The Role (with the rules known so far) before its binding.
    want.extend([
        format!("PATCH {NS}/serviceaccounts/payments-worker"),
        format!("PATCH {RBAC}/roles/payments-worker"),
        format!("PATCH {RBAC}/rolebindings/payments-worker"),
        format!("PATCH {NS}/services/payments-worker"),
        format!("PATCH {POLICY}/poddisruptionbudgets/payments-worker"),
        format!("PATCH {JOBS}/payments/status"),
        "POST /apis/events.k8s.io/v1/namespaces/shop/events".to_string(),
    ]);
    assert_eq!(lines(&calls), want);
    let status = patched_status(&calls);
    assert_eq!(condition(&status, "Ready"), ("False", "TopicNotFound"));
    assert_eq!(
        calls.last().expect("event").body["reason"],
        json!("TopicNotFound")
    );
}

#[tokio::test]
async fn finalizer_is_removed_when_delete_on_job_deletion_is_turned_off() {
    let h = harness(3, Script::default());
    let mut j = job();
    j.metadata.finalizers = Some(vec![
        "other.example/keep".to_string(),
        "weir.dev/checkpoints".to_string(),
    ]);
    j.metadata.resource_version = Some("42".to_string());
    let action = run(&h.ctx, j).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
    let calls = h.calls().await;
    assert_eq!(lines(&calls), [format!("PATCH {JOBS}/payments")]);
    assert_eq!(calls[0].content_type, "application/merge-patch+json");
    assert_eq!(
        calls[0].body,
        json!({"metadata": {"finalizers": ["other.example/keep"], "resourceVersion": "42"}})
    );
}

#[tokio::test]
async fn malformed_job_gets_an_event_and_nothing_else() {
    let h = harness(3, Script::default());
    let invalid = kube::core::error_boundary::InvalidObject {
        error: "spec.window: missing field `type`".to_string(),
        metadata: job().metadata,
    };
    let guard = Arc::new(DeserializeGuard::<StreamJob>(Err(invalid)));
    let action = tokio::time::timeout(TIMEOUT, reconcile(guard, h.ctx.clone()))
        .await
        .expect("reconcile finishes")
        .expect("a malformed object is not an error");
    assert_eq!(action, Action::await_change());
    let calls = h.calls().await;
    assert_eq!(
        lines(&calls),
        ["POST /apis/events.k8s.io/v1/namespaces/shop/events"]
    );
    assert!(calls[0].body["note"]
        .as_str()
        .is_some_and(|n| n.contains("missing field `type`")));
}

/// A two-stage job (its groups span partitions) on a 3-partition topic, with the repartition
/// topic as Kafka shows it.
fn two_stage(repartition: TopicObservation, refuse_create: Option<KafkaFailure>) -> FakeKafka {
    FakeKafka {
        topic: Some(TopicObservation::Found {
            partitions: 3,
            retention_ms: Some(86_400_000),
        }),
        repartition: Some(repartition),
        refuse_create,
        ..FakeKafka::default()
    }
}

const TWO_STAGE: &str = "repartition: {coPartitioned: false, partitions: 2}";

/// The checkpoint ConfigMaps created (POST), by name, sorted (they are created several at a
/// time).
fn created_config_maps(calls: &[Call]) -> Vec<String> {
    let mut names: Vec<String> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/configmaps"))
        .map(|c| {
            c.body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort_unstable();
    names
}

#[tokio::test]
async fn a_missing_repartition_topic_is_created_before_the_workers() {
    let (h, kafka) = harness_kafka(
        two_stage(TopicObservation::NotFound, None),
        Script::default(),
    );
    run(&h.ctx, job_with(TWO_STAGE)).await.expect("reconcile");
    let calls = h.calls().await;
    let created = kafka.created.lock().expect("lock").clone();
    assert_eq!(
        created,
        [NewTopic {
            name: REPARTITION.to_string(),
            partitions: 2,
            replication_factor: None,
            configs: [
                ("cleanup.policy".to_string(), "delete".to_string()),
                ("retention.ms".to_string(), "86400000".to_string()),
            ]
            .into(),
        }]
    );
    // Both stages' checkpoints, then the workers.
    assert_eq!(
        created_config_maps(&calls),
        [
            "payments-checkpoint-0",
            "payments-checkpoint-1",
            "payments-checkpoint-2",
            "payments-checkpoint-merge-0",
            "payments-checkpoint-merge-1",
        ]
    );
    assert!(lines(&calls).contains(&format!("PATCH {APPS}/statefulsets/payments-worker")));
    let assignment = calls
        .iter()
        .find(|c| c.path.ends_with("/configmaps/payments-config") && c.method == "PATCH")
        .and_then(|c| c.body["data"]["assignment.json"].as_str())
        .expect("job ConfigMap with an assignment");
    let assignment: weir_crds::assignment::Assignment =
        serde_json::from_str(assignment).expect("assignment");
    let merge = assignment.merge.expect("a second stage");
    assert_eq!(merge.topic, REPARTITION);
    assert_eq!(merge.workers.iter().map(Vec::len).sum::<usize>(), 2);
    // Both names were looked up (a job of an earlier version may use the legacy one); only
    // the new one is created.
    assert!(!lines(&calls).iter().any(|l| l.contains(LEGACY)));
}

#[tokio::test]
async fn an_existing_repartition_topic_keeps_its_partitions_and_is_not_created() {
    let existing = TopicObservation::Found {
        partitions: 4,
        retention_ms: None,
    };
    // The job's own ConfigMap names it: it is the job's.
    let script = Script {
        job_config: Some(job_config(REPARTITION)),
        ..Script::default()
    };
    let (h, kafka) = harness_kafka(two_stage(existing, None), script);
    run(&h.ctx, job_with(TWO_STAGE)).await.expect("reconcile");
    let calls = h.calls().await;
    assert!(kafka.created.lock().expect("lock").is_empty());
    // The topic's 4 partitions, not the spec's 2: a group's partials keep one merge.
    assert_eq!(created_config_maps(&calls).len(), 3 + 4);
    let status = patched_status(&calls);
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "RepartitionPartitionsFixed")
    );
}

#[tokio::test]
async fn a_repartition_topic_that_cannot_be_created_stops_before_the_workers() {
    let (h, _kafka) = harness_kafka(
        two_stage(
            TopicObservation::NotFound,
            Some(KafkaFailure::Refused(
                "creating topic weir.shop.payments.repartition: TopicAuthorizationFailed \
                 (Broker: Topic authorization failed)"
                    .to_string(),
            )),
        ),
        Script::default(),
    );
    let err = run(&h.ctx, job_with(TWO_STAGE))
        .await
        .expect_err("retried with backoff");
    assert_eq!(err.category(), "CreateRepartitionTopic");
    let calls = h.calls().await;
    let writes = api::writes(&calls);
    assert!(
        !writes
            .iter()
            .any(|l| (l.starts_with("PATCH") && l.contains("/statefulsets/"))
                || l.contains("poddisruptionbudgets")),
        "no workers without their topic: {writes:?}"
    );
    // The claim went first: the job ConfigMap names the topic it was about to create.
    let claim = calls
        .iter()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/configmaps/payments-config"))
        .and_then(|c| c.body["data"]["assignment.json"].as_str())
        .expect("the job ConfigMap, applied before the topic");
    assert!(claim.contains(REPARTITION), "{claim}");
    let status = patched_status(&calls);
    assert_eq!(
        condition(&status, "Ready"),
        ("False", "RepartitionTopicUnavailable")
    );
    let event = calls.last().expect("event");
    assert_eq!(event.body["reason"], json!("RepartitionTopicUnavailable"));
    assert!(
        event.body["note"]
            .as_str()
            .is_some_and(|n| n.contains("Topic authorization failed")),
        "{}",
        event.body["note"]
    );
}

#[tokio::test]
async fn deleted_two_stage_job_with_finalizer_deletes_its_repartition_topic() {
    let found = TopicObservation::Found {
        partitions: 2,
        retention_ms: None,
    };
    let script = Script {
        job_config: Some(job_config(REPARTITION)),
        ..Script::default()
    };
    let (h, kafka) = harness_kafka(two_stage(found, None), script);
    run(&h.ctx, deleted(TWO_STAGE)).await.expect("cleanup");
    let calls = h.calls().await;
    // What claims the topic is read before the checkpoints go.
    assert_eq!(
        lines(&calls),
        [
            format!("GET {APPS}/statefulsets/payments-worker"),
            format!("GET {NS}/pods"),
            format!("GET {NS}/secrets/kafka-creds"),
            format!("GET {NS}/configmaps/payments-config"),
            format!("GET {NS}/configmaps"),
            // The checkpoints listed again by the cleanup, which leaves another job's record.
            format!("GET {NS}/configmaps"),
            format!("DELETE {NS}/configmaps"),
            format!("PATCH {JOBS}/payments"),
        ]
    );
    assert_eq!(*kafka.deleted.lock().expect("lock"), [REPARTITION]);
}

#[tokio::test]
async fn deleted_two_stage_job_leaves_a_repartition_topic_nothing_of_its_claims() {
    let found = TopicObservation::Found {
        partitions: 2,
        retention_ms: None,
    };
    let (h, kafka) = harness_kafka(two_stage(found, None), Script::default());
    run(&h.ctx, deleted(TWO_STAGE)).await.expect("cleanup");
    let calls = h.calls().await;
    assert!(kafka.deleted.lock().expect("lock").is_empty());
    let event = calls
        .iter()
        .find(|c| c.path.ends_with("/events"))
        .expect("a Warning Event");
    assert_eq!(event.body["type"], json!("Warning"));
    assert_eq!(event.body["reason"], json!("NameConflict"));
    assert!(
        event.body["note"]
            .as_str()
            .is_some_and(|n| n.contains(REPARTITION) && n.contains("not deleted")),
        "{}",
        event.body["note"]
    );
    // The job is released all the same: the topic is not its to wait for.
    assert!(lines(&calls).contains(&format!("PATCH {JOBS}/payments")));
}
