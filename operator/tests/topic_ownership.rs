//! Which repartition topic a two-stage job uses, and when it is the job's own, against the
//! stateful fake API server (`support/apiserver.rs`) and a fake broker that keeps its topics.
//!
//! A job's topic is `weir.<namespace>.<job>.repartition`; jobs of earlier versions used the
//! ambiguous `weir-<namespace>-<job>-repartition` and keep it while their own assignment or
//! merge-stage checkpoints name it. A topic is the job's when its own job ConfigMap (owned by
//! its UID) names it, its merge-stage checkpoints name it, or the operator is about to create it
//! for the job, having applied that ConfigMap first. Any other topic of that name is another's:
//! nothing that names it is applied, the status says `NameConflict`, cleanup leaves it.

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kube::api::DeleteParams;
use kube::core::DeserializeGuard;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use weir_crds::assignment::Assignment;
use weir_crds::names;
use weir_crds::plan::NewTopic;
use weir_crds::StreamJob;
use weir_operator::controller::reconcile;
use weir_operator::kafka::{KafkaClient, KafkaFailure};
use weir_operator::observation::{KafkaConnection, TopicObservation};

use api::{assert_allowed, Call};
use apiserver::FakeApiServer;
use support::job_with;
use world::World;

const TIMEOUT: Duration = Duration::from_secs(10);
const NS: &str = "/api/v1/namespaces/shop";
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const CONFIG: &str = "/api/v1/namespaces/shop/configmaps/payments-config";
const STATEFULSET: &str = "/apis/apps/v1/namespaces/shop/statefulsets/payments-worker";
const TOPIC: &str = "weir.shop.payments.repartition";
const LEGACY: &str = "weir-shop-payments-repartition";

/// A broker with the 3-partition source topic `payments` and the topics in `topics` (name →
/// partitions). It notes, for each topic it creates, the repartition topic the job ConfigMap
/// stored on the API server named at that moment (the claim).
struct Broker {
    server: Arc<Mutex<FakeApiServer>>,
    topics: Mutex<BTreeMap<String, i32>>,
    /// (topic created, the topic the stored job ConfigMap's assignment named then).
    created: Mutex<Vec<(String, Option<String>)>>,
    deleted: Mutex<Vec<String>>,
}

#[async_trait]
impl KafkaClient for Broker {
    async fn topic(&self, _conn: &KafkaConnection, topic: &str) -> TopicObservation {
        if topic == "payments" {
            return TopicObservation::Found {
                partitions: 3,
                retention_ms: None,
            };
        }
        match self.topics.lock().expect("topics").get(topic) {
            Some(p) => TopicObservation::Found {
                partitions: *p,
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
        Ok(vec![0; partitions as usize])
    }

    async fn create_topic(
        &self,
        _conn: &KafkaConnection,
        topic: &NewTopic,
    ) -> Result<(), KafkaFailure> {
        let claim = stored_assignment(&self.server.lock().expect("server"))
            .and_then(|a| a.merge)
            .map(|m| m.topic);
        self.created
            .lock()
            .expect("created")
            .push((topic.name.clone(), claim));
        self.topics
            .lock()
            .expect("topics")
            .insert(topic.name.clone(), topic.partitions);
        Ok(())
    }

    async fn delete_topic(&self, _conn: &KafkaConnection, topic: &str) -> Result<(), KafkaFailure> {
        self.deleted
            .lock()
            .expect("deleted")
            .push(topic.to_string());
        self.topics.lock().expect("topics").remove(topic);
        Ok(())
    }
}

/// The assignment in the job ConfigMap the API server holds, if any.
fn stored_assignment(server: &FakeApiServer) -> Option<Assignment> {
    let text = server.get(CONFIG)?["data"]["assignment.json"].as_str()?;
    serde_json::from_str(text).ok()
}

struct Cluster {
    world: World,
    broker: Arc<Broker>,
}

impl Cluster {
    /// A two-stage job with `deleteOnJobDeletion` stored on the API server (not reconciled
    /// yet), and a broker holding `topics`.
    fn new(topics: &[(&str, i32)]) -> Cluster {
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
            topics: Mutex::new(topics.iter().map(|(t, p)| (t.to_string(), *p)).collect()),
            created: Mutex::default(),
            deleted: Mutex::default(),
        });
        let world = World::over(server, broker.clone());
        Cluster { world, broker }
    }

    fn server(&self) -> std::sync::MutexGuard<'_, FakeApiServer> {
        self.world.server.lock().expect("server")
    }

    fn job(&self) -> Option<Value> {
        self.server().get(JOB).cloned()
    }

    /// The owner reference the job's children carry (the UID the API server gave the job).
    fn owner(&self) -> Value {
        let job = self.job().expect("the job is stored");
        json!([{"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "name": "payments",
                "uid": job["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}])
    }

    /// One reconcile of the job as stored: the calls it made (each allowed by the operator's
    /// RBAC).
    async fn reconcile(&self) -> Vec<Call> {
        let job: StreamJob =
            serde_json::from_value(self.job().expect("the job is stored")).expect("a StreamJob");
        let before = self.world.calls.lock().expect("calls").len();
        let guard = Arc::new(DeserializeGuard(Ok(job)));
        tokio::time::timeout(TIMEOUT, reconcile(guard, self.world.ctx.clone()))
            .await
            .expect("reconcile finished")
            .expect("reconcile succeeded");
        let calls = self.world.calls.lock().expect("calls")[before..].to_vec();
        calls.iter().for_each(assert_allowed);
        calls
    }

    /// The finalizer, then the children.
    async fn start(&self) -> Vec<Call> {
        self.reconcile().await;
        self.reconcile().await
    }

    /// `kubectl delete streamjob payments`, then the cleanup reconcile (no worker pod runs in
    /// the fake, so it goes straight to the checkpoints and the topic).
    async fn delete(&self) -> Vec<Call> {
        tokio::time::timeout(
            TIMEOUT,
            self.world.jobs.delete("payments", &DeleteParams::default()),
        )
        .await
        .expect("DELETE answered")
        .expect("deleted");
        let calls = self.reconcile().await;
        assert!(self.job().is_none(), "the finalizer let the job go");
        calls
    }

    fn ready(&self) -> Value {
        let job = self.job().expect("the job is stored");
        job["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .expect("a Ready condition")
    }
}

/// The Events published among `calls`: (type, reason, note).
fn events(calls: &[Call]) -> Vec<(String, String, String)> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/events"))
        .map(|c| {
            let s = |k: &str| c.body[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

#[tokio::test]
async fn a_new_job_claims_the_new_name_in_its_config_map_before_it_creates_the_topic() {
    let c = Cluster::new(&[]);
    c.start().await;
    // Created once, and when it was, the job's own ConfigMap already named it.
    assert_eq!(
        *c.broker.created.lock().expect("created"),
        [(TOPIC.to_string(), Some(TOPIC.to_string()))]
    );
    let config = c.server().get(CONFIG).cloned().expect("job ConfigMap");
    assert_eq!(
        config["metadata"]["ownerReferences"][0]["uid"],
        c.owner()[0]["uid"]
    );
    assert!(c.server().get(STATEFULSET).is_some(), "the workers run");
    assert_eq!(c.ready()["reason"], json!("Running"));

    // Its own topic from then on: no conflict, nothing created again.
    c.reconcile().await;
    assert_eq!(c.broker.created.lock().expect("created").len(), 1);
    assert_ne!(c.ready()["reason"], json!("NameConflict"));

    // Deleted with deleteOnJobDeletion: the topic it claims goes with it.
    c.delete().await;
    assert_eq!(*c.broker.deleted.lock().expect("deleted"), [TOPIC]);
}

#[tokio::test]
async fn a_topic_of_the_jobs_name_that_nothing_claims_is_a_name_conflict_and_left_alone() {
    // Someone else's topic under the job's name (or a leftover nothing of the job's names).
    let c = Cluster::new(&[(TOPIC, 5)]);
    let calls = c.start().await;

    let ready = c.ready();
    assert_eq!(ready["status"], json!("False"));
    assert_eq!(ready["reason"], json!("NameConflict"));
    let message = ready["message"].as_str().expect("message");
    assert!(message.contains(TOPIC), "{message}");
    assert!(
        message.contains("delete it"),
        "how to resolve it: {message}"
    );
    // Nothing that would name it, write into it or read it.
    assert!(
        c.server().get(CONFIG).is_none(),
        "no job ConfigMap names it"
    );
    assert!(c.server().get(STATEFULSET).is_none(), "no worker reads it");
    assert!(
        !calls.iter().any(|call| call.method != "GET"
            && call.body.to_string().contains(TOPIC)
            && !call.path.ends_with("/status")
            && !call.path.ends_with("/events")),
        "nothing applied names the topic"
    );
    assert!(c.broker.created.lock().expect("created").is_empty());
    let warnings = events(&calls);
    assert!(
        warnings
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "NameConflict" && n.contains(TOPIC)),
        "{warnings:?}"
    );

    // Cleanup does not delete it: a Warning Event says so, and the job is released.
    let calls = c.delete().await;
    assert!(c.broker.deleted.lock().expect("deleted").is_empty());
    assert!(c.broker.topics.lock().expect("topics").contains_key(TOPIC));
    let warnings = events(&calls);
    assert!(
        warnings.iter().any(|(t, r, n)| t == "Warning"
            && r == "NameConflict"
            && n.contains(TOPIC)
            && n.contains("not deleted")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_job_of_an_earlier_version_keeps_the_legacy_topic_its_assignment_names() {
    let c = Cluster::new(&[(LEGACY, 4)]);
    // The job ConfigMap an earlier version applied: owned by the job, two stages through the
    // legacy topic's 4 partitions.
    let previous = Assignment::round_robin(3, 3, 7).with_merge(LEGACY, 4, 3);
    let config = json!({"metadata": {"ownerReferences": c.owner(),
                                     "labels": names::labels("payments")},
                        "data": {"assignment.json": serde_json::to_string(&previous).expect("json")}});
    c.server().insert(CONFIG, config);
    c.start().await;

    let a = stored_assignment(&c.server()).expect("assignment");
    let merge = a.merge.expect("two stages");
    assert_eq!(merge.topic, LEGACY, "no re-partitioning, no partials lost");
    assert_eq!(merge.workers.iter().map(Vec::len).sum::<usize>(), 4);
    assert!(c.broker.created.lock().expect("created").is_empty());
    assert!(c.server().get(STATEFULSET).is_some());
    assert_ne!(c.ready()["reason"], json!("NameConflict"));

    // Its own topic: deleted with it.
    c.delete().await;
    assert_eq!(*c.broker.deleted.lock().expect("deleted"), [LEGACY]);
}

#[tokio::test]
async fn a_job_created_again_keeps_the_legacy_topic_its_merge_checkpoints_name() {
    // Deleted without deleteOnJobDeletion by an earlier version, created again: the job
    // ConfigMap went with the old job, the checkpoints stayed, and they name the legacy topic.
    let c = Cluster::new(&[(LEGACY, 2)]);
    let record = json!({"format": 1, "topic": LEGACY, "partition": 0, "epoch": 3,
                        "owner": "payments-worker-0", "writtenAtMs": 1_000, "progress": null});
    let checkpoint = json!({"metadata": {"labels": names::checkpoint_labels("payments")},
                            "data": {"checkpoint.json": record.to_string()}});
    c.server().insert(
        &format!("{NS}/configmaps/payments-merge-checkpoint-0"),
        checkpoint,
    );
    c.start().await;

    let merge = stored_assignment(&c.server())
        .and_then(|a| a.merge)
        .expect("two stages");
    assert_eq!(merge.topic, LEGACY);
    assert!(c.broker.created.lock().expect("created").is_empty());
    assert_ne!(c.ready()["reason"], json!("NameConflict"));
}
