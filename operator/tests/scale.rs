//! `kubectl scale streamjob/payments --replicas=2` (and an HPA's read-modify-write of `/scale`),
//! on the operator's side: against the stateful fake API server (`support/apiserver.rs`),
//! whose `/scale` subresource maps `spec.replicas` and `status.replicas`/`status.selector`
//! through the paths the CRD declares (`StreamJob::crd()`), as the API server does. The test
//! scales through that subresource with a real `kube::Client`, then checks that the next
//! reconcile applies a StatefulSet with the new replica count and a job ConfigMap with a new
//! assignment under a new epoch, and that what `/scale` reports (read by `kubectl`, HPA, KEDA)
//! follows.

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v1::Scale;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::CustomResourceExt;
use serde_json::{json, Value};
use weir_crds::assignment::Assignment;
use weir_crds::StreamJob;
use weir_operator::controller::reconcile;

use api::{assert_allowed, Call};
use apiserver::FakeApiServer;
use support::job;
use world::World;

const TIMEOUT: Duration = Duration::from_secs(10);
const PARTITIONS: i32 = 6;
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const CONFIG: &str = "/api/v1/namespaces/shop/configmaps/payments-config";
const STS: &str = "/apis/apps/v1/namespaces/shop/statefulsets/payments-worker";

impl World {
    fn new() -> World {
        let mut server = FakeApiServer::new(&[StreamJob::crd()]);
        server.insert(
            "/api/v1/namespaces/shop/secrets/kafka-creds",
            json!({"data": {"sasl.password": "czNjcmV0"}}),
        );
        server.create_as_kubectl(JOB, &serde_json::to_value(job()).expect("job JSON"));
        World::serving(server, PARTITIONS, 0)
    }

    fn object(&self, path: &str) -> Value {
        self.server
            .lock()
            .expect("server")
            .get(path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} is not stored"))
    }

    fn assignment(&self) -> Assignment {
        let cm = self.object(CONFIG);
        let text = cm["data"]["assignment.json"]
            .as_str()
            .expect("assignment.json");
        serde_json::from_str(text).expect("assignment")
    }

    fn resource_version(&self) -> u64 {
        self.server.lock().expect("server").resource_version()
    }

    /// One reconcile of the job as the API server has it now (what the controller's cache
    /// would hold), returning the calls it made, each allowed by the operator's RBAC.
    async fn reconcile(&self) -> Vec<Call> {
        let job = tokio::time::timeout(TIMEOUT, self.jobs.get("payments"))
            .await
            .expect("GET answered")
            .expect("the job");
        let before = self.calls.lock().expect("calls").len();
        let guard = Arc::new(DeserializeGuard(Ok(job)));
        tokio::time::timeout(TIMEOUT, reconcile(guard, self.ctx.clone()))
            .await
            .expect("reconcile finished")
            .expect("reconcile succeeded");
        let calls = self.calls.lock().expect("calls")[before..].to_vec();
        calls.iter().for_each(assert_allowed);
        calls
    }

    async fn scale(&self) -> Scale {
        tokio::time::timeout(TIMEOUT, self.jobs.get_scale("payments"))
            .await
            .expect("GET /scale answered")
            .expect("the scale subresource")
    }
}

fn every_partition_once(a: &Assignment) {
    let mut all: Vec<i32> = a.workers.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..PARTITIONS).collect::<Vec<_>>(), "{a:?}");
}

fn applied<'a>(calls: &'a [Call], path: &str) -> &'a Value {
    &calls
        .iter()
        .find(|c| c.method == "PATCH" && c.path == path)
        .unwrap_or_else(|| panic!("no apply of {path}"))
        .body
}

/// `k=v,...` as a map.
fn parse_selector(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("an equality selector");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[tokio::test]
async fn kubectl_scale_changes_parallelism_and_the_next_reconcile_reassigns() {
    let w = World::new();

    // The job as created: 3 workers for 6 partitions.
    let calls = w.reconcile().await;
    assert_eq!(applied(&calls, STS)["spec"]["replicas"], json!(3));
    let first = w.assignment();
    assert_eq!((first.epoch, first.workers.len()), (1, 3));
    every_partition_once(&first);
    let first_hash = w.object(STS)["spec"]["template"]["metadata"]["annotations"]
        ["weir.dev/config-hash"]
        .clone();

    // What /scale shows is what the operator wrote in the status.
    let scale = w.scale().await;
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let status = scale.status.expect("scale status");
    assert_eq!(status.replicas, 3);
    let selector = status.selector.expect("status.selector feeds /scale");
    // It selects exactly the worker pods: the StatefulSet's selector, which its pods carry.
    let sts = w.object(STS);
    let pod_labels: BTreeMap<String, String> =
        serde_json::from_value(sts["spec"]["template"]["metadata"]["labels"].clone())
            .expect("pod labels");
    let match_labels: BTreeMap<String, String> =
        serde_json::from_value(sts["spec"]["selector"]["matchLabels"].clone())
            .expect("matchLabels");
    let wanted = parse_selector(&selector);
    assert_eq!(wanted, match_labels);
    assert!(
        wanted.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{selector} does not select the pods labelled {pod_labels:?}"
    );

    // kubectl scale streamjob/payments --replicas=2: a merge patch of /scale.
    let pp = PatchParams {
        field_manager: Some("kubectl-scale".to_string()),
        ..PatchParams::default()
    };
    let scaled = tokio::time::timeout(
        TIMEOUT,
        w.jobs.patch_scale(
            "payments",
            &pp,
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        ),
    )
    .await
    .expect("PATCH /scale answered")
    .expect("PATCH /scale");
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(2));
    // That is spec.parallelism, a spec change (new generation).
    let job = w.object(JOB);
    assert_eq!(job["spec"]["parallelism"], json!(2));
    assert_eq!(job["metadata"]["generation"], json!(2));

    // The next reconcile: 2 workers, a new assignment under a new epoch, which the running
    // workers take without a restart: the pod template stays as it was.
    let calls = w.reconcile().await;
    let sts_body = applied(&calls, STS);
    assert_eq!(sts_body["spec"]["replicas"], json!(2));
    let cm_body = applied(&calls, CONFIG);
    let applied_assignment: Assignment =
        serde_json::from_str(cm_body["data"]["assignment.json"].as_str().expect("json"))
            .expect("assignment");
    assert_eq!(applied_assignment, w.assignment());
    assert_eq!(applied_assignment.epoch, 2);
    assert_eq!(applied_assignment.workers.len(), 2);
    every_partition_once(&applied_assignment);
    // The job ConfigMap was applied before the StatefulSet (a pod added by the scale-up must
    // mount the new assignment).
    let order: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "PATCH")
        .map(|c| c.path.as_str())
        .collect();
    let pos = |p: &str| order.iter().position(|o| *o == p).expect("applied");
    assert!(pos(CONFIG) < pos(STS), "{order:?}");
    assert_eq!(
        sts_body["spec"]["template"]["metadata"]["annotations"]["weir.dev/config-hash"], first_hash,
        "scaling rolls no pod: the workers take the new assignment live"
    );
    let status = &applied(&calls, &format!("{JOB}/status"))["status"];
    assert_eq!(status["observedGeneration"], json!(2));
    assert_eq!(status["assignmentEpoch"], json!(2));
    assert_eq!(status["replicas"], json!(2));

    // /scale follows.
    let scale = w.scale().await;
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let status = scale.status.expect("scale status");
    assert_eq!((status.replicas, status.selector), (2, Some(selector)));

    // Nothing else to do: another reconcile writes nothing that changes (same epoch).
    let rv = w.resource_version();
    w.reconcile().await;
    assert_eq!(
        w.resource_version(),
        rv,
        "a steady reconcile changed something"
    );
    assert_eq!(w.assignment().epoch, 2);
}

#[tokio::test]
async fn an_hpa_replacing_scale_is_honoured_too() {
    let w = World::new();
    w.reconcile().await;

    // An HPA reads /scale and writes it back with new spec.replicas (PUT, conditional on the
    // resourceVersion it read).
    let mut scale = w.scale().await;
    scale.spec.get_or_insert_default().replicas = Some(6);
    tokio::time::timeout(
        TIMEOUT,
        w.jobs
            .replace_scale("payments", &PostParams::default(), &scale),
    )
    .await
    .expect("PUT /scale answered")
    .expect("PUT /scale");
    // The same write again names a resourceVersion that is no longer current: refused.
    let stale = tokio::time::timeout(
        TIMEOUT,
        w.jobs
            .replace_scale("payments", &PostParams::default(), &scale),
    )
    .await
    .expect("PUT /scale answered");
    assert!(
        matches!(&stale, Err(kube::Error::Api(s)) if s.code == 409),
        "{stale:?}"
    );
    assert_eq!(w.object(JOB)["spec"]["parallelism"], json!(6));

    let calls = w.reconcile().await;
    assert_eq!(applied(&calls, STS)["spec"]["replicas"], json!(6));
    let a = w.assignment();
    assert_eq!((a.epoch, a.workers.len()), (2, 6));
    every_partition_once(&a);
    assert_eq!(w.scale().await.status.map(|s| s.replicas), Some(6));
}
