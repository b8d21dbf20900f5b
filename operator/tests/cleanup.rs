//! The cleanup of a job deleted with `deleteOnJobDeletion`, against the stateful fake API
//! server (`support/apiserver.rs`), which deletes as the real one does: pods terminate for a
//! grace period, and the garbage collector deletes a child only once its owner is gone.
//!
//! What the real cluster showed (issue 16, B3): the finalizer deleted the repartition topic
//! while the worker pods were still terminating; they kept sending watermark markers and the
//! broker created the topic again. So the workers stop first — the StatefulSet deleted, its
//! pods gone — and only then go the checkpoints and the topic; until then the finalizer
//! requeues and the status and an Event say what it waits for.

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/world.rs"]
mod world;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kube::api::DeleteParams;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use weir_crds::plan::NewTopic;
use weir_crds::StreamJob;
use weir_operator::controller::{reconcile, REQUEUE_STOPPING, STOPPING_WORKERS};
use weir_operator::kafka::{KafkaClient, KafkaFailure};
use weir_operator::observation::{KafkaConnection, TopicObservation};

use api::{assert_allowed, Call};
use apiserver::FakeApiServer;
use support::job_with;
use world::World;

const TIMEOUT: Duration = Duration::from_secs(10);
const NS: &str = "/api/v1/namespaces/shop";
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const STATEFULSET: &str = "/apis/apps/v1/namespaces/shop/statefulsets/payments-worker";
const TOPIC: &str = "weir.shop.payments.repartition";

/// A broker with the 3-partition source topic, which creates and deletes the repartition
/// topic, and notes how many worker pods the API server still held when the topic was deleted.
struct Broker {
    server: Arc<Mutex<FakeApiServer>>,
    topics: Mutex<BTreeSet<String>>,
    /// (topic, worker pods that existed then), per deletion.
    deleted: Mutex<Vec<(String, usize)>>,
}

#[async_trait]
impl KafkaClient for Broker {
    async fn topic(&self, _conn: &KafkaConnection, topic: &str) -> TopicObservation {
        let partitions = if topic == "payments" { 3 } else { 2 };
        if topic == "payments" || self.topics.lock().expect("topics").contains(topic) {
            TopicObservation::Found {
                partitions,
                retention_ms: None,
            }
        } else {
            TopicObservation::NotFound
        }
    }

    async fn high_watermarks(
        &self,
        _conn: &KafkaConnection,
        _topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String> {
        Ok(vec![0; partitions as usize])
    }

    async fn create_topic(
        &self,
        _conn: &KafkaConnection,
        topic: &NewTopic,
    ) -> Result<(), KafkaFailure> {
        self.topics
            .lock()
            .expect("topics")
            .insert(topic.name.clone());
        Ok(())
    }

    async fn delete_topic(&self, _conn: &KafkaConnection, topic: &str) -> Result<(), KafkaFailure> {
        let pods = pods(&self.server.lock().expect("server")).len();
        self.deleted
            .lock()
            .expect("deleted")
            .push((topic.to_string(), pods));
        self.topics.lock().expect("topics").remove(topic);
        Ok(())
    }
}

/// The worker pods the API server holds (terminating ones included), by name.
fn pods(server: &FakeApiServer) -> Vec<String> {
    server
        .all("/api/v1/pods")
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Names of the checkpoint ConfigMaps the API server holds.
fn checkpoints(server: &FakeApiServer) -> Vec<String> {
    server
        .all("/api/v1/configmaps")
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .filter(|n| n.contains("checkpoint"))
        .map(str::to_string)
        .collect()
}

struct Cluster {
    world: World,
    broker: Arc<Broker>,
}

impl Cluster {
    /// A two-stage job with `deleteOnJobDeletion`, reconciled until its workers run.
    async fn running() -> Cluster {
        let mut server = FakeApiServer::new(&[StreamJob::crd()]);
        server.insert(
            &format!("{NS}/secrets/kafka-creds"),
            json!({"data": {"sasl.password": "czNjcmV0"}}),
        );
        let job = job_with(
            "repartition: {coPartitioned: false, partitions: 2}\n\
             checkpoint: {deleteOnJobDeletion: true}",
        );
        server.insert(JOB, serde_json::to_value(&job).expect("job"));
        let server = Arc::new(Mutex::new(server));
        let broker = Arc::new(Broker {
            server: server.clone(),
            topics: Mutex::default(),
            deleted: Mutex::default(),
        });
        let world = World::over(server, broker.clone());
        let c = Cluster { world, broker };
        // The finalizer first, then the children.
        assert_eq!(c.reconcile().await.0, Action::await_change());
        c.reconcile().await;
        c.server().run_statefulset_controller();
        assert_eq!(pods(&c.server()).len(), 3, "the StatefulSet's pods run");
        assert!(c.broker.topics.lock().expect("topics").contains(TOPIC));
        assert_eq!(checkpoints(&c.server()).len(), 3 + 2);
        c
    }

    fn server(&self) -> std::sync::MutexGuard<'_, FakeApiServer> {
        self.world.server.lock().expect("server")
    }

    fn job(&self) -> Option<Value> {
        self.server().get(JOB).cloned()
    }

    /// One reconcile of the job as stored: its action and the calls it made (each allowed by
    /// the operator's RBAC).
    async fn reconcile(&self) -> (Action, Vec<Call>) {
        let job: StreamJob =
            serde_json::from_value(self.job().expect("the job is stored")).expect("a StreamJob");
        let before = self.world.calls.lock().expect("calls").len();
        let guard = Arc::new(DeserializeGuard(Ok(job)));
        let action = tokio::time::timeout(TIMEOUT, reconcile(guard, self.world.ctx.clone()))
            .await
            .expect("reconcile finished")
            .expect("reconcile succeeded");
        let calls = self.world.calls.lock().expect("calls")[before..].to_vec();
        calls.iter().for_each(assert_allowed);
        (action, calls)
    }

    /// `kubectl delete streamjob payments`: the finalizer holds the job, marked.
    async fn delete_job(&self) {
        tokio::time::timeout(
            TIMEOUT,
            self.world.jobs.delete("payments", &DeleteParams::default()),
        )
        .await
        .expect("DELETE answered")
        .expect("deleted");
        let job = self.job().expect("held by its finalizer");
        assert!(!job["metadata"]["deletionTimestamp"].is_null());
    }
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

#[tokio::test]
async fn deleting_stops_the_workers_before_it_deletes_checkpoints_and_the_topic() {
    let c = Cluster::running().await;
    c.delete_job().await;
    // While the job exists, even marked for deletion, the garbage collector leaves its
    // children alone: the workers would run on.
    assert!(c.server().get(STATEFULSET).is_some());

    // First cleanup reconcile: the StatefulSet goes, its pods start terminating (30 s grace
    // period), and nothing else is touched yet.
    let (action, calls) = c.reconcile().await;
    assert_eq!(action, Action::requeue(REQUEUE_STOPPING));
    assert!(c.server().get(STATEFULSET).is_none(), "StatefulSet deleted");
    let delete = calls
        .iter()
        .find(|call| call.method == "DELETE")
        .expect("a DELETE");
    assert_eq!(delete.path, STATEFULSET);
    assert_eq!(delete.body["propagationPolicy"], json!("Background"));
    assert!(
        delete.body["preconditions"]["uid"].is_string(),
        "only the StatefulSet this job owns: {}",
        delete.body
    );
    let left = pods(&c.server());
    assert_eq!(left.len(), 3, "pods terminate for their grace period");
    assert_eq!(checkpoints(&c.server()).len(), 3 + 2, "checkpoints kept");
    assert!(c.broker.deleted.lock().expect("deleted").is_empty());
    assert!(c.broker.topics.lock().expect("topics").contains(TOPIC));
    let job = c.job().expect("the finalizer still holds the job");
    assert_eq!(
        job["metadata"]["finalizers"],
        json!(["weir.dev/checkpoints"])
    );

    // The status and a Normal Event say what the deletion waits for.
    let ready = job["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition")
        .clone();
    assert_eq!(ready["status"], json!("False"));
    assert_eq!(ready["reason"], json!(STOPPING_WORKERS));
    let message = ready["message"].as_str().expect("message");
    for pod in [
        "payments-worker-0",
        "payments-worker-1",
        "payments-worker-2",
        "the repartition topic",
    ] {
        assert!(message.contains(pod), "{message}");
    }
    let events: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .collect();
    assert_eq!(events.len(), 1, "{:?}", lines(&calls));
    assert_eq!(events[0].body["type"], json!("Normal"));
    assert_eq!(events[0].body["reason"], json!(STOPPING_WORKERS));

    // Requeued while the pods terminate: no second Event, no status write, nothing deleted.
    let (action, calls) = c.reconcile().await;
    assert_eq!(action, Action::requeue(REQUEUE_STOPPING));
    assert!(
        calls.iter().all(|c| c.method == "GET"),
        "only reads while waiting: {:?}",
        lines(&calls)
    );
    assert_eq!(checkpoints(&c.server()).len(), 3 + 2);

    // The pods are gone: now the checkpoints and the topic go, then the finalizer, then the
    // job, and the garbage collector takes the rest.
    assert_eq!(c.server().end_grace_periods(), 3);
    let (action, calls) = c.reconcile().await;
    assert_eq!(action, Action::await_change());
    assert_eq!(
        *c.broker.deleted.lock().expect("deleted"),
        [(TOPIC.to_string(), 0)],
        "the topic is deleted once, with no worker pod left"
    );
    assert!(checkpoints(&c.server()).is_empty());
    let order = lines(&calls);
    let checkpoints_deleted = order
        .iter()
        .position(|l| *l == format!("DELETE {NS}/configmaps"))
        .expect("checkpoints deleted");
    let finalizer_removed = order
        .iter()
        .position(|l| *l == format!("PATCH {JOB}"))
        .expect("finalizer removed");
    assert!(checkpoints_deleted < finalizer_removed, "{order:?}");
    assert!(c.job().is_none(), "the job is gone");
    let server = c.server();
    let left: Vec<String> = [
        "/api/v1/configmaps",
        "/api/v1/services",
        "/api/v1/serviceaccounts",
        "/apis/apps/v1/statefulsets",
        "/apis/policy/v1/poddisruptionbudgets",
        "/apis/rbac.authorization.k8s.io/v1/roles",
        "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        "/api/v1/pods",
    ]
    .iter()
    .flat_map(|c| server.all(c))
    .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
    .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(c.broker.topics.lock().expect("topics").is_empty());
}

#[tokio::test]
async fn a_statefulset_the_job_does_not_own_is_not_deleted() {
    let c = Cluster::running().await;
    // The StatefulSet of that name is not the job's (someone took its owner reference away).
    {
        let mut server = c.server();
        let mut set = server.get(STATEFULSET).cloned().expect("StatefulSet");
        set["metadata"]["ownerReferences"] = json!([]);
        server.insert(STATEFULSET, set);
    }
    c.delete_job().await;
    let (action, calls) = c.reconcile().await;
    assert_eq!(action, Action::requeue(REQUEUE_STOPPING));
    assert!(
        !calls.iter().any(|c| c.method == "DELETE"),
        "{:?}",
        lines(&calls)
    );
    assert!(c.server().get(STATEFULSET).is_some());
    assert_eq!(checkpoints(&c.server()).len(), 3 + 2, "checkpoints kept");
    let job = c.job().expect("held");
    assert_eq!(
        job["metadata"]["finalizers"],
        json!(["weir.dev/checkpoints"])
    );
}

/// The merge stage's ConfigMap names before this version (`payments-merge-checkpoint-<p>`) are
/// deleted with the job — unless one holds a record of another topic than the job's
/// repartition topic: that is the stage-1 checkpoint of the job `payments-merge` (the names
/// were equal), which is left, labelled for that job (docs/checkpoints.md, "Migration").
#[tokio::test]
async fn cleanup_deletes_the_legacy_merge_names_but_not_another_jobs_record() {
    let c = Cluster::running().await;
    let legacy = |p: i32, topic: &str| {
        let record = json!({"format": 1, "topic": topic, "partition": p, "epoch": 1,
            "owner": "payments-worker-0", "writtenAtMs": 1, "progress": null});
        json!({"metadata": {"labels": {"weir.dev/job": "payments",
                "app.kubernetes.io/component": "checkpoint",
                "app.kubernetes.io/managed-by": "weir"}},
               "data": {"checkpoint.json": record.to_string()}})
    };
    {
        let mut server = c.server();
        server.insert(
            &format!("{NS}/configmaps/payments-merge-checkpoint-0"),
            legacy(0, TOPIC),
        );
        server.insert(
            &format!("{NS}/configmaps/payments-merge-checkpoint-1"),
            legacy(1, "orders"),
        );
    }
    c.delete_job().await;
    c.reconcile().await;
    assert_eq!(c.server().end_grace_periods(), 3);
    let (action, _) = c.reconcile().await;
    assert_eq!(action, Action::await_change());
    assert_eq!(checkpoints(&c.server()), ["payments-merge-checkpoint-1"]);
    let kept = c
        .server()
        .get(&format!("{NS}/configmaps/payments-merge-checkpoint-1"))
        .cloned()
        .expect("kept");
    assert_eq!(kept["metadata"]["labels"]["weir.dev/job"], "payments-merge");
    assert!(kept["data"]["checkpoint.json"]
        .as_str()
        .is_some_and(|r| r.contains("orders")));
}
