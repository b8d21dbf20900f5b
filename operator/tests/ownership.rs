//! Names held by objects the job does not own (issue 17, "a confused deputy"), against the
//! stateful fake API server: an existing `<job>-worker` or `<job>-config` object that is not the
//! job's own (no owner reference to it as controller) is left exactly as it is, nothing at all is
//! applied for the job, and the status (`Ready=False`, `NameConflict`) and a Warning Event name
//! it; one that carries the job's owner reference is adopted; once the foreign object is gone,
//! the next reconcile runs the job. Also what the check costs: reads of the children's owners
//! only before their first apply, all at once.

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/world.rs"]
mod world;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::DeleteParams;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, CustomResourceExt};
use serde_json::{json, Value};
use weir_crds::StreamJob;
use weir_operator::controller::{reconcile, spread, REQUEUE_HEALTHY, REQUEUE_WAITING};
use weir_operator::status::reason::NAME_CONFLICT;

use api::{assert_allowed, Call};
use apiserver::FakeApiServer;
use support::job;
use world::World;

const TIMEOUT: Duration = Duration::from_secs(10);
const NS: &str = "/api/v1/namespaces/shop";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop";
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const STATEFULSET: &str = "/apis/apps/v1/namespaces/shop/statefulsets/payments-worker";
const CONFIG_MAP: &str = "/api/v1/namespaces/shop/configmaps/payments-config";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

/// Another team's workload that happens to be called `payments-worker`.
fn foreign_stateful_set() -> Value {
    json!({
        "metadata": {"labels": {"app": "payments-worker", "team": "billing"}},
        "spec": {
            "replicas": 2,
            "serviceName": "payments-worker",
            "selector": {"matchLabels": {"app": "payments-worker"}},
            "template": {
                "metadata": {"labels": {"app": "payments-worker"}},
                "spec": {"containers": [{"name": "billing", "image": "billing:7"}]},
            },
        },
    })
}

/// A cluster holding the job and its credentials Secret, plus `existing` objects (path, body),
/// served to an operator whose Kafka has the 3-partition topic.
fn cluster(existing: &[(&str, Value)]) -> World {
    let mut server = FakeApiServer::new(&[StreamJob::crd()]);
    server.insert(
        &format!("{NS}/secrets/kafka-creds"),
        json!({"data": {"sasl.password": "czNjcmV0"}}),
    );
    server.insert(JOB, serde_json::to_value(job()).expect("job"));
    for (path, body) in existing {
        server.insert(path, body.clone());
    }
    World::serving(server, 3, 0)
}

/// The uid the API server gave the job.
fn job_uid(w: &World) -> String {
    let server = w.server.lock().expect("server");
    let job = server.get(JOB).expect("the job");
    job["metadata"]["uid"].as_str().expect("a uid").to_string()
}

fn stored(w: &World, path: &str) -> Option<Value> {
    w.server.lock().expect("server").get(path).cloned()
}

/// One reconcile of the job as stored: its action and the calls it made (each allowed by the
/// operator's RBAC).
async fn reconcile_once(w: &World) -> (Action, Vec<Call>) {
    let j: StreamJob = serde_json::from_value(stored(w, JOB).expect("the job")).expect("job");
    let before = w.calls.lock().expect("calls").len();
    let guard = Arc::new(DeserializeGuard(Ok(j)));
    let action = tokio::time::timeout(TIMEOUT, reconcile(guard, w.ctx.clone()))
        .await
        .expect("reconcile finished")
        .expect("a name conflict is a status, not an error");
    let calls = w.calls.lock().expect("calls")[before..].to_vec();
    calls.iter().for_each(assert_allowed);
    (action, calls)
}

/// (status, reason, message) of the stored job's condition `t`.
fn condition(w: &World, t: &str) -> (String, String, String) {
    let job = stored(w, JOB).expect("the job");
    let c = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .cloned()
        .unwrap_or_else(|| panic!("no {t} condition in {}", job["status"]));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// `METHOD path` of every call that writes.
fn writes(calls: &[Call]) -> Vec<String> {
    api::writes(calls)
}

/// (type, reason, note) of every Event published.
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

/// The metadata-only reads of single objects (the owner checks), as `METHOD path`.
fn owner_reads(calls: &[Call]) -> Vec<String> {
    let mut reads: Vec<String> = calls
        .iter()
        .filter(|c| c.method == "GET" && c.accept.contains("as=PartialObjectMetadata;"))
        .map(Call::line)
        .collect();
    reads.sort();
    reads
}

/// Every object the operator would apply for the job, besides the StatefulSet and the job
/// ConfigMap.
fn other_children() -> Vec<String> {
    vec![
        format!("{NS}/serviceaccounts/payments-worker"),
        format!("{NS}/services/payments-worker"),
        format!("{RBAC}/roles/payments-worker"),
        format!("{RBAC}/rolebindings/payments-worker"),
        "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/payments-worker".to_string(),
    ]
}

/// A foreign object: the job gets `Ready=False NameConflict` naming it and a Warning Event;
/// nothing is written but the status and the Event; the object keeps its resourceVersion and
/// content.
async fn assert_refused(w: &World, path: &str, kind_and_name: &str) -> Vec<Call> {
    let before = stored(w, path).expect("the foreign object");
    let (action, calls) = reconcile_once(w).await;
    assert_eq!(
        action,
        Action::requeue(spread(REQUEUE_WAITING, "shop", "payments")),
        "looked at again: no watch sees the foreign object go"
    );
    assert_eq!(
        writes(&calls),
        [format!("PATCH {JOB}/status"), format!("POST {EVENTS}"),],
        "nothing applied, nothing created: only the status and the Event"
    );
    let after = stored(w, path).expect("still there");
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(after, before, "left exactly as it was");
    for child in other_children().into_iter().filter(|c| c != path) {
        assert!(stored(w, &child).is_none(), "{child} was created");
    }
    let (status, reason, message) = condition(w, "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", NAME_CONFLICT));
    assert!(message.contains(kind_and_name), "{message}");
    assert!(
        message.contains(&job_uid(w)),
        "says how to hand it over: {message}"
    );
    assert!(message.contains("Delete or rename"), "{message}");
    let events = events(&calls);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", NAME_CONFLICT)
    );
    assert!(events[0].2.contains(kind_and_name), "{events:?}");
    calls
}

#[tokio::test]
async fn a_stateful_set_the_job_does_not_own_is_left_alone_and_named() {
    let w = cluster(&[(STATEFULSET, foreign_stateful_set())]);
    let calls = assert_refused(&w, STATEFULSET, "StatefulSet payments-worker").await;
    // The status does not report the other team's pods as the job's workers.
    let job = stored(&w, JOB).expect("the job");
    assert_eq!(job["status"]["replicas"], json!(0), "{}", job["status"]);
    // The other children were checked too (none exists), before anything was written.
    let names: Vec<String> = other_children()
        .into_iter()
        .map(|p| format!("GET {p}"))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(owner_reads(&calls), sorted);

    // Still there: the same status, no second Event.
    let (_, calls) = reconcile_once(&w).await;
    assert!(writes(&calls).is_empty(), "{:?}", writes(&calls));
}

#[tokio::test]
async fn a_job_config_map_the_job_does_not_own_is_left_alone_and_named() {
    let assignment = json!({"epoch": 41, "workers": [[0, 1, 2]]}).to_string();
    let w = cluster(&[(
        CONFIG_MAP,
        json!({"data": {"assignment.json": assignment, "notes": "the payments team's"}}),
    )]);
    assert_refused(&w, CONFIG_MAP, "ConfigMap payments-config").await;
    // Its content is not taken for the job's previous assignment either (that would make the
    // next epoch 42).
    let job = stored(&w, JOB).expect("the job");
    assert_eq!(
        job["status"]["assignmentEpoch"],
        json!(1),
        "{}",
        job["status"]
    );
}

#[tokio::test]
async fn a_role_binding_the_job_does_not_own_stops_every_write() {
    // Read before the first apply (no observe read covers it). Applying the job's Role and
    // ServiceAccount first would let whatever that binding names use them.
    let binding = format!("{RBAC}/rolebindings/payments-worker");
    let w = cluster(&[(
        &binding,
        json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "edit"},
               "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "shop"}]}),
    )]);
    assert_refused(&w, &binding, "RoleBinding payments-worker").await;
    assert!(stored(&w, STATEFULSET).is_none());
    assert!(stored(&w, CONFIG_MAP).is_none());
}

#[tokio::test]
async fn objects_that_carry_the_jobs_owner_reference_are_adopted() {
    let w = cluster(&[]);
    let uid = job_uid(&w);
    let owner = json!([{"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob",
                        "name": "payments", "uid": uid, "controller": true}]);
    let mut sts = foreign_stateful_set();
    sts["metadata"]["ownerReferences"] = owner.clone();
    let account = format!("{NS}/serviceaccounts/payments-worker");
    {
        let mut server = w.server.lock().expect("server");
        server.insert(STATEFULSET, sts);
        server.insert(
            &account,
            json!({"metadata": {"ownerReferences": owner, "labels": {"team": "payments"}}}),
        );
    }
    let (_, calls) = reconcile_once(&w).await;
    // Only the Normal Event of the adopted StatefulSet's new replica count.
    assert_eq!(
        events(&calls),
        [(
            "Normal".to_string(),
            "Scaled".to_string(),
            "scaled from 2 to 3 workers".to_string()
        )]
    );
    let (status, reason, _) = condition(&w, "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Running"));
    // Applied over: the operator's labels and workers.
    let sts = stored(&w, STATEFULSET).expect("the StatefulSet");
    assert_eq!(
        sts["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        json!("weir-operator")
    );
    assert_eq!(sts["spec"]["replicas"], json!(3));
    let account = stored(&w, &account).expect("the ServiceAccount");
    assert_eq!(
        account["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        json!("weir-operator")
    );
}

#[tokio::test]
async fn the_job_runs_once_the_foreign_object_is_deleted() {
    let w = cluster(&[(STATEFULSET, foreign_stateful_set())]);
    reconcile_once(&w).await;
    assert_eq!(condition(&w, "Ready").1, NAME_CONFLICT);

    // The other team renames theirs.
    let sets: Api<StatefulSet> = Api::namespaced(w.ctx.client.clone(), "shop");
    tokio::time::timeout(
        TIMEOUT,
        sets.delete("payments-worker", &DeleteParams::default()),
    )
    .await
    .expect("DELETE answered")
    .expect("deleted");
    assert!(stored(&w, STATEFULSET).is_none());

    let (action, _) = reconcile_once(&w).await;
    assert_eq!(
        action,
        Action::requeue(spread(REQUEUE_HEALTHY, "shop", "payments"))
    );
    let (status, reason, message) = condition(&w, "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Running"),
        "{message}"
    );
    let sts = stored(&w, STATEFULSET).expect("the job's StatefulSet");
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["uid"],
        json!(job_uid(&w))
    );
}

#[tokio::test]
async fn owners_are_read_once_before_the_first_apply_and_never_in_a_steady_reconcile() {
    let w = cluster(&[]);
    let (_, first) = reconcile_once(&w).await;
    let mut want: Vec<String> = other_children()
        .into_iter()
        .map(|p| format!("GET {p}"))
        .collect();
    want.sort();
    assert_eq!(
        owner_reads(&first),
        want,
        "the five children observe does not read"
    );
    // Every owner read comes before the first write.
    let first_write = first
        .iter()
        .position(|c| c.method != "GET")
        .expect("writes");
    let last_owner_read = first
        .iter()
        .rposition(|c| c.accept.contains("as=PartialObjectMetadata;"))
        .expect("owner reads");
    assert!(last_owner_read < first_write);

    // Everything applied is known as the job's own: no owner read, and nothing written.
    let (_, steady) = reconcile_once(&w).await;
    assert_eq!(owner_reads(&steady), Vec::<String>::new());
    assert!(writes(&steady).is_empty(), "{:?}", writes(&steady));
}

/// The owner reads are made at once, not one after the other: this API server answers none of
/// them until all five are waiting (read one at a time, the first would wait for ever and the
/// reconcile time out).
#[tokio::test]
async fn owner_reads_are_made_at_once() {
    use http_body_util::BodyExt;
    let mut server = FakeApiServer::new(&[StreamJob::crd()]);
    server.insert(
        &format!("{NS}/secrets/kafka-creds"),
        json!({"data": {"sasl.password": "czNjcmV0"}}),
    );
    server.insert(JOB, serde_json::to_value(job()).expect("job"));
    let stored_job: StreamJob =
        serde_json::from_value(server.get(JOB).cloned().expect("job")).expect("job");
    let (client, mut handle) = api::mock_client();
    let answering = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut most_held = 0;
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            let call = Call::new(&parts, &bytes);
            let owner_read =
                call.method == "GET" && call.accept.contains("as=PartialObjectMetadata;");
            held.push((call, send));
            if owner_read && held.len() < 5 {
                continue;
            }
            most_held = most_held.max(held.len());
            for (call, send) in held.drain(..) {
                let (code, reply) = server.handle(&call);
                let response = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).expect("reply"),
                    ))
                    .expect("response");
                send.send_response(response);
            }
        }
        most_held
    });
    let kafka = Arc::new(support::FixedKafka::new(3, 0));
    let ctx = Arc::new(weir_operator::controller::Context::new(
        client,
        kafka,
        support::cfg(),
        weir_operator::metrics::Metrics::default(),
        None,
    ));
    let guard = Arc::new(DeserializeGuard(Ok(stored_job)));
    tokio::time::timeout(TIMEOUT, reconcile(guard, ctx.clone()))
        .await
        .expect("the owner reads were made one after the other")
        .expect("reconciled");
    drop(ctx);
    let most_held = tokio::time::timeout(TIMEOUT, answering)
        .await
        .expect("the client is gone")
        .expect("server task");
    assert_eq!(most_held, 5, "five owner reads waiting together");
}
