//! Checkpoints in object storage, from the operator's side, against a real S3 (SeaweedFS, started
//! by the test with the worker's harness) and the stateful fake API server: the records are
//! written where and as the workers write them (`weir_objstore`, `weir_crds::checkpoint`), with
//! the credentials of the Secret the job names. A reconcile starts the new assignment's epoch
//! above the records' largest and reports lag and the oldest write; a job deleted with
//! `deleteOnJobDeletion` loses its records, and nothing else. Records where the previous
//! version kept them (`<url>/<job>`, no namespace) count where the current location has none,
//! and go with the job, only when they are of the job's topic (docs/checkpoints.md, "Migration").

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
// The worker's harnesses: one way to find, start and stop SeaweedFS (it stops its process
// group with the broker harness's helper).
#[path = "../../worker/tests/support/broker.rs"]
mod broker;
#[path = "../../worker/tests/support/seaweedfs.rs"]
mod seaweedfs;
mod support;
#[path = "support/world.rs"]
mod world;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::ByteString;
use kube::core::DeserializeGuard;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use weir_crds::assignment::Assignment;
use weir_crds::checkpoint::{PartitionCheckpoint, Progress, FORMAT};
use weir_crds::StreamJob;
use weir_objstore::object_store::path::Path;
use weir_objstore::object_store::{ObjectStoreExt, PutPayload};
use weir_objstore::{Location, ObjectStoreConfig};
use weir_operator::controller::{reconcile, CHECKPOINT_CLEANUP_FAILED};
use weir_operator::object_checkpoints;

use api::{assert_allowed, Call};
use apiserver::FakeApiServer;
use seaweedfs::{SeaweedFs, ACCESS_KEY, BUCKET, SECRET_KEY};
use support::job_with;
use world::World;

const TIMEOUT: Duration = Duration::from_secs(20);
const PARTITIONS: i32 = 4;
const HIGH_WATERMARK: i64 = 100;
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const CONFIG: &str = "/api/v1/namespaces/shop/configmaps/payments-config";
const S3_SECRET: &str = "/api/v1/namespaces/shop/secrets/s3-creds";

/// The bucket, as the test (not the operator) reaches it.
fn bucket(weed: &SeaweedFs) -> Location {
    weir_objstore::open(&ObjectStoreConfig {
        url: format!("s3://{BUCKET}"),
        endpoint: Some(weed.endpoint.clone()),
        region: Some("us-east-1".to_string()),
        access_key_id: Some(ACCESS_KEY.to_string()),
        secret_access_key: Some(SECRET_KEY.to_string()),
        ..ObjectStoreConfig::default()
    })
    .expect("open the bucket")
}

async fn start_seaweedfs() -> SeaweedFs {
    SeaweedFs::start(|endpoint| async move {
        let loc = weir_objstore::open(&ObjectStoreConfig {
            url: format!("s3://{BUCKET}/ready"),
            endpoint: Some(endpoint),
            region: Some("us-east-1".to_string()),
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(SECRET_KEY.to_string()),
            ..ObjectStoreConfig::default()
        })
        .map_err(|e| e.to_string())?;
        // Ready when the bucket answers an authenticated read.
        match loc.store.get(&loc.checkpoint(0)).await {
            Ok(_) | Err(weir_objstore::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

fn record(partition: i32, epoch: i64, written_at_ms: i64, next: Option<i64>) -> Vec<u8> {
    record_of("payments", partition, epoch, written_at_ms, next)
}

/// A record of `topic`.
fn record_of(
    topic: &str,
    partition: i32,
    epoch: i64,
    written_at_ms: i64,
    next: Option<i64>,
) -> Vec<u8> {
    let cp = PartitionCheckpoint {
        format: FORMAT,
        topic: topic.to_string(),
        partition,
        epoch,
        owner: format!("payments-worker-{partition}"),
        written_at_ms,
        progress: next.map(|n| Progress {
            next_offset: n,
            replay_from: n,
            replay_max_event_time: None,
            watermark: None,
            emitted_through: None,
            ..Progress::default()
        }),
        definition: None,
        results_from: None,
        reset: None,
        released: false,
        state_full: None,
    };
    serde_json::to_vec(&cp).expect("record JSON")
}

async fn put(loc: &Location, key: &str, bytes: Vec<u8>) {
    loc.store
        .put(&Path::from(key), PutPayload::from(bytes))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

async fn keys(loc: &Location) -> BTreeSet<String> {
    let listed: Vec<_> = loc
        .store
        .list(None)
        .try_collect()
        .await
        .expect("list the bucket");
    listed.into_iter().map(|o| o.location.to_string()).collect()
}

fn secret(access_key: &str, secret_key: &str) -> Value {
    let b64 = |s: &str| serde_json::to_value(ByteString(s.as_bytes().to_vec())).expect("base64");
    json!({"data": {"AWS_ACCESS_KEY_ID": b64(access_key), "AWS_SECRET_ACCESS_KEY": b64(secret_key)}})
}

/// A job (`shop/payments`) keeping its checkpoints under `s3://<bucket>/jobs/shop/payments` on
/// `weed`.
fn job(weed: &SeaweedFs, extra: &str) -> StreamJob {
    job_with(&format!(
        "checkpoint:\n  store: {{objectStore: {{url: 's3://{BUCKET}/jobs', endpoint: '{}', \
         region: us-east-1, credentials: {{secretName: s3-creds}}}}}}\n{extra}",
        weed.endpoint
    ))
}

impl World {
    fn new(job: &Value, s3_secret: Option<Value>) -> World {
        let mut server = FakeApiServer::new(&[StreamJob::crd()]);
        server.insert(
            "/api/v1/namespaces/shop/secrets/kafka-creds",
            json!({"data": {"sasl.password": "czNjcmV0"}}),
        );
        if let Some(s) = s3_secret {
            server.insert(S3_SECRET, s);
        }
        server.insert(JOB, job.clone());
        World::serving(server, PARTITIONS, HIGH_WATERMARK)
    }

    fn object(&self, path: &str) -> Option<Value> {
        self.server.lock().expect("server").get(path).cloned()
    }

    fn set_secret(&self, s: Value) {
        self.server.lock().expect("server").insert(S3_SECRET, s);
    }

    fn assignment(&self) -> Assignment {
        let cm = self.object(CONFIG).expect("the job ConfigMap");
        serde_json::from_str(cm["data"]["assignment.json"].as_str().expect("assignment"))
            .expect("assignment JSON")
    }

    /// One reconcile of the job as stored; its result and the calls it made (each allowed by
    /// the operator's RBAC).
    async fn reconcile(
        &self,
    ) -> (
        Result<kube::runtime::controller::Action, weir_operator::error::Error>,
        Vec<Call>,
    ) {
        let job = tokio::time::timeout(TIMEOUT, self.jobs.get("payments"))
            .await
            .expect("GET answered")
            .expect("the job");
        let before = self.calls.lock().expect("calls").len();
        let guard = Arc::new(DeserializeGuard(Ok(job)));
        let result = tokio::time::timeout(TIMEOUT, reconcile(guard, self.ctx.clone()))
            .await
            .expect("reconcile finished");
        let calls = self.calls.lock().expect("calls")[before..].to_vec();
        calls.iter().for_each(assert_allowed);
        (result, calls)
    }
}

/// The only writes of `calls` are the status, `Ready=False` and `Degraded=True` with reason
/// `step`, and a Warning Event with that reason; neither shows `secret`. Returns the message.
fn assert_failure_reported(calls: &[Call], step: &str, secret: &str) -> String {
    assert_eq!(
        api::writes(calls),
        [
            format!("PATCH {JOB}/status"),
            "POST /apis/events.k8s.io/v1/namespaces/shop/events".to_string()
        ]
    );
    let status = status_of(calls);
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {status}"))
    };
    assert_eq!(condition("Ready")["status"], "False");
    assert_eq!(condition("Ready")["reason"], step);
    assert_eq!(condition("Degraded")["reason"], step);
    let message = condition("Ready")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("Check spec.checkpoint.store.objectStore"),
        "{message}"
    );
    let event = &calls.last().expect("event").body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], step);
    for text in [&message, &event.to_string()] {
        assert!(!text.contains(secret), "{text}");
    }
    message
}

fn status_of(calls: &[Call]) -> &Value {
    &calls
        .iter()
        .find(|c| c.path == format!("{JOB}/status"))
        .expect("a status patch")
        .body["status"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reads_epoch_lag_and_last_write_from_object_store_checkpoints() {
    let weed = start_seaweedfs().await;
    let b = bucket(&weed);
    // Partitions 0 and 1 have records (epochs 4 and 7), 1 only where the previous version kept
    // it (`jobs/payments`, no namespace: the workers resume from it); 2 holds garbage (skipped,
    // as the workers would refuse it); 3 has none. An older legacy record of 0 (the current
    // one wins), a legacy record of another topic (another namespace's job of this name), the
    // same job name in another namespace, another job's record under a longer prefix and a
    // record beyond the partition count must not count.
    put(
        &b,
        "jobs/shop/payments/partition-0.json",
        record(0, 4, 3_000, Some(40)),
    )
    .await;
    put(
        &b,
        "jobs/payments/partition-0.json",
        record(0, 2, 500, Some(5)),
    )
    .await;
    put(
        &b,
        "jobs/payments/partition-1.json",
        record(1, 7, 1_000, Some(60)),
    )
    .await;
    put(
        &b,
        "jobs/shop/payments/partition-2.json",
        b"{not json".to_vec(),
    )
    .await;
    put(
        &b,
        "jobs/payments/partition-3.json",
        record_of("refunds", 3, 98, 5, Some(1)),
    )
    .await;
    put(
        &b,
        "jobs/staging/payments/partition-3.json",
        record(3, 97, 5, Some(1)),
    )
    .await;
    put(
        &b,
        "jobs/shop/payments-2/partition-0.json",
        record(0, 99, 5, Some(1)),
    )
    .await;
    put(
        &b,
        "jobs/shop/payments/partition-9.json",
        record(9, 50, 5, Some(1)),
    )
    .await;

    let j = serde_json::to_value(job(&weed, "")).expect("job JSON");

    // Without a previous assignment, checkpoints that cannot be read stop the reconcile
    // before any child is written (the epoch to start above is unknown); the status and a
    // Warning Event say which step failed and why.
    let w = World::new(&j, Some(secret(ACCESS_KEY, "not-the-secret-key")));
    let (result, calls) = w.reconcile().await;
    let err = result.expect_err("refused credentials without a previous assignment");
    assert_eq!(err.category(), "ReadObjectStoreCheckpoints", "{err}");
    assert!(!err.to_string().contains("not-the-secret-key"), "{err}");
    assert_failure_reported(&calls, "ReadObjectStoreCheckpoints", "not-the-secret-key");
    let w = World::new(&j, None);
    let (result, calls) = w.reconcile().await;
    let err = result.expect_err("no Secret");
    assert!(err.to_string().contains("s3-creds"), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let message = assert_failure_reported(&calls, "ReadObjectStoreCheckpoints", SECRET_KEY);
    assert!(message.contains("s3-creds"), "{message}");

    // With the credentials: epoch 8, above the records' 7.
    let w = World::new(&j, Some(secret(ACCESS_KEY, SECRET_KEY)));
    let (result, calls) = w.reconcile().await;
    result.expect("reconcile");
    let a = w.assignment();
    assert_eq!(a.epoch, 8);
    let status = status_of(&calls);
    assert_eq!(status["assignmentEpoch"], json!(8));
    // (100 − 40) + (100 − 60); partition 2 unreadable, 3 without a record of the job's.
    assert_eq!(status["lag"], json!(2 * HIGH_WATERMARK - 40 - 60));
    // The oldest of the partitions' latest writes: 1 s after the Unix epoch.
    assert_eq!(status["lastCheckpointTime"], json!("1970-01-01T00:00:01Z"));
    // The object store has no checkpoint ConfigMaps to list or create.
    assert!(
        !calls
            .iter()
            .any(|c| c.path == "/api/v1/namespaces/shop/configmaps"),
        "{:?}",
        calls.iter().map(Call::line).collect::<Vec<_>>()
    );

    // A second reconcile keeps the assignment and its epoch.
    w.reconcile().await.0.expect("steady reconcile");
    assert_eq!(w.assignment(), a);

    // Credentials refused now: the previous assignment's epoch is at least every record's, so
    // the job goes on, without lag or checkpoint time.
    w.set_secret(secret(ACCESS_KEY, "rotated-wrongly"));
    let (result, calls) = w.reconcile().await;
    result.expect("a previous assignment lets the reconcile go on");
    assert_eq!(w.assignment(), a);
    let status = status_of(&calls);
    assert_eq!(status["assignmentEpoch"], json!(8));
    assert!(status.get("lag").is_none_or(Value::is_null), "{status}");
    assert!(
        status.get("lastCheckpointTime").is_none_or(Value::is_null),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_job_deletes_its_records_and_nothing_else() {
    let weed = start_seaweedfs().await;
    let b = bucket(&weed);
    for p in 0..3 {
        put(
            &b,
            &format!("jobs/shop/payments/partition-{p}.json"),
            record(p, 3, 1, Some(5)),
        )
        .await;
    }
    let untouched = [
        // Named like a record but not one: kept, with a warning.
        "jobs/shop/payments/partition-9.json",
        // Not named like a record.
        "jobs/shop/payments/notes.txt",
        // Not directly under the job's location.
        "jobs/shop/payments/old/partition-0.json",
        // Another job, whose name starts with this one's.
        "jobs/shop/payments-2/partition-0.json",
        // The same job name in another namespace.
        "jobs/staging/payments/partition-0.json",
        // At the legacy location, a record of another topic: another namespace's job.
        "jobs/payments/partition-1.json",
    ];
    put(&b, untouched[0], b"my own data".to_vec()).await;
    put(&b, untouched[1], b"notes".to_vec()).await;
    put(&b, untouched[2], record(0, 1, 1, None)).await;
    put(&b, untouched[3], record(0, 1, 1, None)).await;
    put(&b, untouched[4], record(0, 1, 1, None)).await;
    put(&b, untouched[5], record_of("refunds", 1, 1, 1, None)).await;
    // The merge stage of a two-stage job keeps its records under merge/: they go too, and so
    // do the records of the job's topics at the legacy location.
    put(
        &b,
        "jobs/shop/payments/merge/partition-0.json",
        record(0, 3, 1, None),
    )
    .await;
    put(&b, "jobs/payments/partition-0.json", record(0, 2, 1, None)).await;
    put(
        &b,
        "jobs/payments/merge/partition-0.json",
        record_of("weir-shop-payments-repartition", 0, 2, 1, None),
    )
    .await;

    let mut j = serde_json::to_value(job(&weed, "  deleteOnJobDeletion: true")).expect("job");
    j["metadata"]["finalizers"] = json!(["weir.dev/checkpoints"]);
    j["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");

    // Credentials refused: the records stay, so does the job (its finalizer), and a Warning
    // Event says why.
    let w = World::new(&j, Some(secret(ACCESS_KEY, "wrong")));
    let (result, calls) = w.reconcile().await;
    let err = result.expect_err("cannot delete");
    assert_eq!(err.category(), "DeleteObjectStoreCheckpoints", "{err}");
    let event = calls
        .iter()
        .find(|c| c.path.ends_with("/events"))
        .expect("a Warning Event");
    assert_eq!(event.body["reason"], json!(CHECKPOINT_CLEANUP_FAILED));
    assert_eq!(event.body["type"], json!("Warning"));
    assert!(w.object(JOB).is_some(), "the finalizer must hold the job");
    assert_eq!(keys(&b).await.len(), 6 + untouched.len());

    // With the credentials: the records go, then the finalizer, then the job.
    w.set_secret(secret(ACCESS_KEY, SECRET_KEY));
    let (result, calls) = w.reconcile().await;
    result.expect("cleanup");
    assert!(
        calls
            .iter()
            .any(|c| c.method == "PATCH" && c.path == JOB && c.content_type.contains("json-patch")),
        "the finalizer is removed"
    );
    assert!(
        w.object(JOB).is_none(),
        "the job is gone once its finalizer is"
    );
    let left = keys(&b).await;
    assert_eq!(
        left,
        untouched
            .iter()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>()
    );

    // Idempotent: nothing left to delete is a success.
    let config = ObjectStoreConfig {
        options: [
            ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string()),
        ]
        .into(),
        ..ObjectStoreConfig::for_job(
            &job(&weed, "")
                .spec
                .checkpoint
                .store
                .object_store
                .expect("object store"),
            Some("shop"),
            "payments",
        )
    };
    let again = object_checkpoints::delete(&config, None)
        .await
        .expect("delete");
    assert_eq!(again.deleted, 0);
    assert_eq!(again.kept, vec![untouched[0].to_string()]);
    assert_eq!(keys(&b).await, left);
}

/// A two-stage job whose spec asks for fewer repartition partitions (2) than its existing
/// repartition topic has (4, as every topic of this Kafka): the topic keeps its 4 and the merge
/// stage runs over them, so `repartitionLag` counts the merge-stage records of all 4 — read
/// after the repartition topic, with its count, not the spec's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_lag_counts_every_partition_of_an_existing_repartition_topic() {
    let weed = start_seaweedfs().await;
    let b = bucket(&weed);
    let repartition = "weir-shop-payments-repartition";
    for p in 0..PARTITIONS {
        let cp = PartitionCheckpoint {
            topic: repartition.to_string(),
            ..serde_json::from_slice(&record(p, 1, 1_000, Some(10 * i64::from(p + 1))))
                .expect("record")
        };
        let bytes = serde_json::to_vec(&cp).expect("record JSON");
        put(
            &b,
            &format!("jobs/shop/payments/merge/partition-{p}.json"),
            bytes,
        )
        .await;
    }
    let j = job(&weed, "repartition: {coPartitioned: false, partitions: 2}");
    let w = World::new(
        &serde_json::to_value(j).expect("job JSON"),
        Some(secret(ACCESS_KEY, SECRET_KEY)),
    );
    let (result, calls) = w.reconcile().await;
    result.expect("reconcile");
    let merge = w.assignment().merge.expect("a merge stage");
    assert_eq!(merge.workers.iter().map(Vec::len).sum::<usize>(), 4);
    // Σ (100 − 10·(p+1)) over the topic's 4 partitions.
    assert_eq!(
        status_of(&calls)["repartitionLag"],
        json!(4 * HIGH_WATERMARK - (10 + 20 + 30 + 40))
    );
}
