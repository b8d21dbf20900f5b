//! The job lifecycle of issue 18 against the stateful fake API server (status subresource,
//! server-side apply, resourceVersions): suspend and resume, an edit of the result definition
//! taken up partition by partition, a reset. The checkpoints are written as the workers write
//! them (`PartitionCheckpoint` with `definition`, `resultsFrom` and `reset`), and each step is one
//! reconcile as the controller runs it; Events are every call to the Events API.

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/world.rs"]
mod world;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use weir_crds::checkpoint::{PartitionCheckpoint, Progress, CONFIG_MAP_KEY, FORMAT};
use weir_crds::definition::fingerprint;
use weir_crds::StreamJob;
use weir_operator::controller::{reconcile, spread, REQUEUE_HEALTHY, REQUEUE_STOPPING};

use apiserver::FakeApiServer;
use support::job;
use world::World;

const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const STS: &str = "/apis/apps/v1/namespaces/shop/statefulsets/payments-worker";
const CONFIG: &str = "/api/v1/namespaces/shop/configmaps/payments-config";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
/// Every partition's high watermark.
const HIGH: i64 = 100;
const PARTITIONS: i32 = 3;

fn server() -> FakeApiServer {
    world::shop_server(&job())
}

fn world() -> World {
    World::serving(server(), PARTITIONS, HIGH)
}

async fn reconcile_once(w: &World) -> Action {
    let j = w.jobs.get("payments").await.expect("the job");
    let guard = Arc::new(DeserializeGuard(Ok(j)));
    tokio::time::timeout(Duration::from_secs(20), reconcile(guard, w.ctx.clone()))
        .await
        .expect("reconcile finished")
        .expect("reconciled")
}

fn stored(w: &World, path: &str) -> Value {
    w.server
        .lock()
        .expect("server")
        .get(path)
        .cloned()
        .unwrap_or_else(|| panic!("{path} is stored"))
}

/// (status, reason) of condition `t` of the stored job; `None` when absent.
fn condition(w: &World, t: &str) -> Option<(String, String)> {
    let job = stored(w, JOB);
    let c = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason")))
}

fn is(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_string(), reason.to_string()))
}

/// Every Event written since the last call (created, or a repeat patched into a series), as
/// (type, reason, note).
fn take_events(w: &World) -> Vec<(String, String, String)> {
    let mut calls = w.calls.lock().expect("calls");
    let events = calls
        .iter()
        .filter(|c| c.path.starts_with(EVENTS) && c.method != "GET")
        .map(|c| {
            let s = |k: &str| c.body[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect();
    calls.clear();
    events
}

fn reasons(events: &[(String, String, String)]) -> Vec<&str> {
    events.iter().map(|(_, r, _)| r.as_str()).collect()
}

async fn patch_spec(w: &World, spec: Value) {
    w.jobs
        .patch(
            "payments",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec })),
        )
        .await
        .expect("spec patched");
}

/// What a worker writes for `partition`: progress up to `next_offset`, and the definition,
/// first result window and reset it runs.
fn record(
    partition: i32,
    next_offset: i64,
    definition: Option<&str>,
    results_from: Option<i64>,
    reset: Option<&str>,
) -> PartitionCheckpoint {
    PartitionCheckpoint {
        format: FORMAT,
        topic: "payments".to_string(),
        partition,
        epoch: 1,
        owner: format!("payments-worker-{partition}"),
        written_at_ms: 1_796_198_400_000,
        progress: Some(Progress {
            next_offset,
            replay_from: next_offset,
            ..Progress::default()
        }),
        definition: definition.map(str::to_string),
        results_from,
        reset: reset.map(str::to_string),
        released: false,
        state_full: None,
    }
}

/// Writes `cp` into its checkpoint ConfigMap as the worker does (a replace of the data; the
/// operator created the ConfigMap empty).
fn write_checkpoint(w: &World, cp: &PartitionCheckpoint) {
    let path = format!(
        "/api/v1/namespaces/shop/configmaps/payments-checkpoint-{}",
        cp.partition
    );
    let mut server = w.server.lock().expect("server");
    let mut cm = server
        .get(&path)
        .cloned()
        .unwrap_or_else(|| panic!("{path} created by the operator"));
    let text = serde_json::to_string(cp).expect("checkpoint JSON");
    cm["data"] = json!({ CONFIG_MAP_KEY: text });
    server.insert(&path, cm);
}

fn current_fingerprint(w: &World) -> String {
    let job: StreamJob = serde_json::from_value(stored(w, JOB)).expect("a StreamJob");
    fingerprint(&job.spec)
}

#[tokio::test]
async fn suspend_stops_the_workers_and_resume_changes_only_the_replicas() {
    let w = world();
    reconcile_once(&w).await;
    let fp = current_fingerprint(&w);
    for p in 0..PARTITIONS {
        write_checkpoint(&w, &record(p, 40, Some(&fp), None, None));
    }
    reconcile_once(&w).await;
    w.server
        .lock()
        .expect("server")
        .run_statefulset_controller();
    assert_eq!(condition(&w, "Ready"), is("True", "Running"));
    assert_eq!(condition(&w, "Suspended"), None, "never suspended yet");
    let config_before = stored(&w, CONFIG);
    let template_before = stored(&w, STS)["spec"]["template"].clone();
    take_events(&w);

    patch_spec(&w, json!({"suspend": true})).await;
    let action = reconcile_once(&w).await;
    assert_eq!(stored(&w, STS)["spec"]["replicas"], json!(0));
    assert_eq!(
        stored(&w, CONFIG)["data"],
        config_before["data"],
        "suspend is not in job.yaml"
    );
    assert_eq!(stored(&w, STS)["spec"]["template"], template_before);
    assert_eq!(condition(&w, "Suspended"), is("True", "Suspended"));
    assert_eq!(condition(&w, "Ready"), is("False", "Suspended"));
    assert_eq!(
        condition(&w, "Progressing"),
        is("True", "Suspending"),
        "the 3 pods still exist"
    );
    assert_eq!(action, Action::requeue(REQUEUE_STOPPING));
    let events = take_events(&w);
    assert_eq!(reasons(&events), ["Suspended"], "{events:?}");
    assert_eq!(events[0].0, "Normal");

    // The StatefulSet controller scales down: the pods terminate, then are gone.
    {
        let mut server = w.server.lock().expect("server");
        server.run_statefulset_controller();
        assert_eq!(server.end_grace_periods(), 3);
    }
    let action = reconcile_once(&w).await;
    assert_eq!(condition(&w, "Progressing"), is("False", "Suspended"));
    assert_eq!(condition(&w, "Ready"), is("False", "Suspended"));
    let status = &stored(&w, JOB)["status"];
    assert_eq!(status["replicas"], json!(0));
    assert_eq!(
        status["lag"],
        json!(3 * (HIGH - 40)),
        "lag still reported while suspended"
    );
    // Lag, but suspended: no 30 s requeue for it.
    assert_eq!(
        action,
        Action::requeue(spread(REQUEUE_HEALTHY, "shop", "payments"))
    );
    reconcile_once(&w).await;
    assert_eq!(take_events(&w), vec![], "nothing repeats");

    patch_spec(&w, json!({"suspend": false})).await;
    reconcile_once(&w).await;
    assert_eq!(stored(&w, STS)["spec"]["replicas"], json!(3));
    assert_eq!(
        stored(&w, CONFIG),
        config_before,
        "the job ConfigMap is untouched"
    );
    assert_eq!(
        stored(&w, STS)["spec"]["template"],
        template_before,
        "the same config hash: the pods do not roll"
    );
    assert_eq!(condition(&w, "Suspended"), is("False", "Resumed"));
    assert_eq!(condition(&w, "Ready"), is("True", "Running"));
    let events = take_events(&w);
    assert_eq!(reasons(&events), ["Resumed"], "not Scaled: {events:?}");
    reconcile_once(&w).await;
    assert_eq!(take_events(&w), vec![], "nothing repeats");
}

/// Scaling moves partitions, not pods (DESIGN.md invariant 9; docs/operator.md "Scaling"): a new
/// assignment in the job ConfigMap, the replica count, the same pod template; `Progressing`
/// shows the handoff until every source partition's checkpoint is at the new epoch.
#[tokio::test]
async fn a_scale_hands_partitions_off_without_rolling_and_shows_until_done() {
    let w = world();
    reconcile_once(&w).await;
    let fp = current_fingerprint(&w);
    for p in 0..PARTITIONS {
        write_checkpoint(&w, &record(p, 40, Some(&fp), None, None));
    }
    reconcile_once(&w).await;
    w.server
        .lock()
        .expect("server")
        .run_statefulset_controller();
    reconcile_once(&w).await;
    assert_eq!(condition(&w, "Progressing"), is("False", "UpToDate"));
    let template_before = stored(&w, STS)["spec"]["template"].clone();

    patch_spec(&w, json!({"parallelism": 2})).await;
    reconcile_once(&w).await;
    assert_eq!(stored(&w, STS)["spec"]["replicas"], json!(2));
    assert_eq!(
        stored(&w, STS)["spec"]["template"],
        template_before,
        "the pods do not roll"
    );
    let assignment: Value = serde_json::from_str(
        stored(&w, CONFIG)["data"]["assignment.json"]
            .as_str()
            .expect("assignment.json"),
    )
    .expect("assignment JSON");
    assert_eq!(assignment["epoch"], json!(2));
    assert_eq!(condition(&w, "Progressing"), is("True", "HandingOff"));

    // The workers take the assignment: partition 2 moves first, then the others write at the
    // new epoch (a kept partition's next checkpoint).
    let at_epoch_2 = |p| PartitionCheckpoint {
        epoch: 2,
        ..record(p, 50, Some(&fp), None, None)
    };
    write_checkpoint(&w, &at_epoch_2(2));
    w.server
        .lock()
        .expect("server")
        .run_statefulset_controller();
    reconcile_once(&w).await;
    assert_eq!(condition(&w, "Progressing"), is("True", "HandingOff"));
    let message = stored(&w, JOB)["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .and_then(|c| c["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert!(message.contains("2 of 3 source partitions"), "{message}");
    for p in 0..2 {
        write_checkpoint(&w, &at_epoch_2(p));
    }
    reconcile_once(&w).await;
    assert_eq!(condition(&w, "Progressing"), is("False", "UpToDate"));
}

#[tokio::test]
async fn kubectl_scale_while_suspended_only_records_the_parallelism() {
    let w = world();
    reconcile_once(&w).await;
    patch_spec(&w, json!({"suspend": true})).await;
    reconcile_once(&w).await;
    take_events(&w);
    patch_spec(&w, json!({"parallelism": 2})).await;
    reconcile_once(&w).await;
    assert_eq!(stored(&w, STS)["spec"]["replicas"], json!(0));
    let assignment: Value = serde_json::from_str(
        stored(&w, CONFIG)["data"]["assignment.json"]
            .as_str()
            .expect("assignment.json"),
    )
    .expect("assignment JSON");
    assert_eq!(assignment["workers"].as_array().map(Vec::len), Some(2));
    assert!(
        !reasons(&take_events(&w)).contains(&"Scaled"),
        "no worker started or stopped"
    );
    patch_spec(&w, json!({"suspend": false})).await;
    reconcile_once(&w).await;
    assert_eq!(stored(&w, STS)["spec"]["replicas"], json!(2));
}

#[tokio::test]
async fn an_edit_of_the_definition_shows_until_every_partition_took_it_up() {
    let w = world();
    reconcile_once(&w).await;
    let old = current_fingerprint(&w);
    for p in 0..PARTITIONS {
        write_checkpoint(&w, &record(p, HIGH, Some(&old), None, None));
    }
    reconcile_once(&w).await;
    let status = stored(&w, JOB)["status"].clone();
    assert_eq!(
        status["definition"],
        json!({"fingerprint": old, "previousPartitions": 0})
    );
    assert_eq!(condition(&w, "Progressing"), is("False", "UpToDate"));
    take_events(&w);

    // window 1m → 2m.
    patch_spec(
        &w,
        json!({"window": {"type": "tumbling", "size": "2m", "allowedLateness": "10s"}}),
    )
    .await;
    let new = current_fingerprint(&w);
    assert_ne!(new, old);
    let action = reconcile_once(&w).await;
    let status = stored(&w, JOB)["status"].clone();
    assert_eq!(
        status["definition"],
        json!({"fingerprint": new, "previousPartitions": 3})
    );
    assert_eq!(
        condition(&w, "Progressing"),
        is("True", "DefinitionChanged")
    );
    let progressing = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or_default();
    assert!(
        progressing["message"].as_str().is_some_and(
            |m| m.contains("3 of 3 source partitions still run the previous definition")
        ),
        "{progressing}"
    );
    assert_eq!(
        action,
        Action::requeue(spread(
            weir_operator::controller::REQUEUE_WAITING,
            "shop",
            "payments"
        )),
        "Ready and no lag, but the edit shows only in the checkpoints: looked at again soon"
    );
    let events = take_events(&w);
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "DefinitionChanged"),
        "{events:?}"
    );

    // Two partitions took it up (as the workers write it: the first window of the new
    // definition), one still runs the old one.
    let from = [1_796_198_520_000, 1_796_198_640_000];
    write_checkpoint(&w, &record(0, HIGH, Some(&new), Some(from[0]), None));
    write_checkpoint(&w, &record(1, HIGH, Some(&new), Some(from[1]), None));
    reconcile_once(&w).await;
    assert_eq!(
        stored(&w, JOB)["status"]["definition"]["previousPartitions"],
        json!(1)
    );
    assert_eq!(
        condition(&w, "Progressing"),
        is("True", "DefinitionChanged")
    );
    assert_eq!(take_events(&w), vec![], "DefinitionChanged only once");

    write_checkpoint(&w, &record(2, HIGH, Some(&new), Some(from[0]), None));
    reconcile_once(&w).await;
    let status = stored(&w, JOB)["status"].clone();
    // The latest first window over the partitions: 2026-12-02T08:04:00Z.
    assert_eq!(
        status["definition"],
        json!({"fingerprint": new, "previousPartitions": 0,
               "resultsFrom": "2026-12-02T08:04:00Z"})
    );
    assert_eq!(condition(&w, "Progressing"), is("False", "UpToDate"));
    let events = take_events(&w);
    let applied: Vec<_> = events
        .iter()
        .filter(|(_, r, _)| r == "DefinitionApplied")
        .collect();
    assert_eq!(applied.len(), 1, "{events:?}");
    assert_eq!(applied[0].0, "Normal");
    assert!(
        applied[0]
            .2
            .contains("results of the new definition start at 2026-12-02T08:04:00Z"),
        "{applied:?}"
    );
    reconcile_once(&w).await;
    assert_eq!(take_events(&w), vec![], "nothing repeats");
}

#[tokio::test]
async fn checkpoints_without_a_fingerprint_are_the_current_definition() {
    let w = world();
    reconcile_once(&w).await;
    for p in 0..PARTITIONS {
        write_checkpoint(&w, &record(p, HIGH, None, None, None));
    }
    reconcile_once(&w).await;
    assert_eq!(
        stored(&w, JOB)["status"]["definition"]["previousPartitions"],
        json!(0)
    );
    assert_eq!(condition(&w, "Progressing"), is("False", "UpToDate"));
    let events = take_events(&w);
    assert!(
        !reasons(&events).iter().any(|r| r.starts_with("Definition")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_reset_is_recorded_and_shows_until_every_partition_applied_it() {
    let w = world();
    reconcile_once(&w).await;
    let fp = current_fingerprint(&w);
    for p in 0..PARTITIONS {
        write_checkpoint(&w, &record(p, HIGH, Some(&fp), None, None));
    }
    reconcile_once(&w).await;
    let job_yaml = |w: &World| {
        stored(w, CONFIG)["data"]["job.yaml"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let yaml_before = job_yaml(&w);
    take_events(&w);

    patch_spec(
        &w,
        json!({"reset": {"to": "2026-12-01T08:00:00Z", "id": "incident-42"}}),
    )
    .await;
    reconcile_once(&w).await;
    assert_ne!(job_yaml(&w), yaml_before, "the workers get the reset");
    assert!(job_yaml(&w).contains("incident-42"));
    let id = "2026-12-01T08:00:00.000Z#incident-42";
    let status = stored(&w, JOB)["status"].clone();
    assert_eq!(
        status["reset"],
        json!({"id": id, "to": "2026-12-01T08:00:00.000Z", "appliedPartitions": 0,
               "partitions": 3})
    );
    assert_eq!(
        status["definition"]["fingerprint"],
        json!(fp),
        "a reset is not a new definition"
    );
    assert_eq!(condition(&w, "Progressing"), is("True", "Resetting"));
    let events = take_events(&w);
    assert_eq!(reasons(&events), ["ResetRequested"], "{events:?}");
    assert!(events[0].2.contains(id), "{events:?}");

    let from = 1_796_112_000_000;
    write_checkpoint(&w, &record(0, 7, Some(&fp), Some(from), Some(id)));
    reconcile_once(&w).await;
    assert_eq!(
        stored(&w, JOB)["status"]["reset"]["appliedPartitions"],
        json!(1)
    );
    assert_eq!(condition(&w, "Progressing"), is("True", "Resetting"));
    assert_eq!(take_events(&w), vec![], "ResetRequested only once");

    for p in 1..PARTITIONS {
        write_checkpoint(&w, &record(p, 7, Some(&fp), Some(from), Some(id)));
    }
    reconcile_once(&w).await;
    let status = stored(&w, JOB)["status"].clone();
    assert_eq!(status["reset"]["appliedPartitions"], json!(3));
    let time = status["reset"]["time"].clone();
    assert!(time.is_string(), "applied at a time: {}", status["reset"]);
    assert_eq!(
        status["definition"]["resultsFrom"],
        json!("2026-12-01T08:00:00Z")
    );
    assert_eq!(condition(&w, "Progressing"), is("False", "UpToDate"));
    let events = take_events(&w);
    // Progressing ends: the change (the pods rolled for the reset) is done.
    assert_eq!(
        reasons(&events),
        ["ResetApplied", "RolledOut"],
        "{events:?}"
    );

    // Acted on once: later reconciles change nothing, and the record outlives spec.reset.
    reconcile_once(&w).await;
    assert_eq!(take_events(&w), vec![]);
    assert_eq!(stored(&w, JOB)["status"]["reset"]["time"], time);
    patch_spec(&w, json!({"reset": null})).await;
    assert!(stored(&w, JOB)["spec"]["reset"].is_null(), "reset removed");
    reconcile_once(&w).await;
    assert_eq!(stored(&w, JOB)["status"]["reset"]["id"], json!(id));
    assert_eq!(take_events(&w), vec![]);
}

/// Status writes (patches of the status subresource) since the calls were last taken.
fn status_writes(w: &World) -> usize {
    w.calls
        .lock()
        .expect("calls")
        .iter()
        .filter(|c| c.path.starts_with(&format!("{JOB}/status")) && c.method != "GET")
        .count()
}

#[tokio::test]
async fn a_partition_refusing_records_for_room_degrades_the_job_with_one_warning() {
    let w = world();
    reconcile_once(&w).await;
    let fp = current_fingerprint(&w);
    for p in 0..PARTITIONS {
        write_checkpoint(&w, &record(p, HIGH, Some(&fp), None, None));
    }
    reconcile_once(&w).await;
    w.server
        .lock()
        .expect("server")
        .run_statefulset_controller();
    reconcile_once(&w).await;
    assert_eq!(condition(&w, "Degraded"), is("False", "Healthy"));
    take_events(&w);

    // Partition 1's worker refused records as state_full just now.
    let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let full = |refused, at| PartitionCheckpoint {
        state_full: Some(weir_crds::checkpoint::StateFull {
            refused,
            last_refused_at_ms: at,
        }),
        ..record(1, HIGH, Some(&fp), None, None)
    };
    write_checkpoint(&w, &full(25, now_ms));
    let action = reconcile_once(&w).await;
    assert_eq!(condition(&w, "Degraded"), is("True", "StateFull"));
    assert_eq!(condition(&w, "Ready"), is("True", "Running"));
    let message = stored(&w, JOB)["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Degraded")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("source partition 1 (25 records refused)"),
        "{message}"
    );
    // Looked at again soon: the condition ends by time alone, which no watch reports.
    assert_ne!(
        action,
        Action::requeue(spread(REQUEUE_HEALTHY, "shop", "payments"))
    );
    let events = take_events(&w);
    assert_eq!(reasons(&events), ["StateFull"], "{events:?}");
    assert_eq!(events[0].0, "Warning");
    assert_eq!(events[0].2, message);

    // Nothing new, or only more records refused (within the lag's 30 s): no write, no Event.
    reconcile_once(&w).await;
    write_checkpoint(&w, &full(40, now_ms + 1_000));
    reconcile_once(&w).await;
    assert_eq!(status_writes(&w), 0);
    assert_eq!(take_events(&w), vec![]);

    // No refusal for more than 5 minutes: Healthy again, once, without an Event.
    write_checkpoint(&w, &full(40, now_ms - 301_000));
    reconcile_once(&w).await;
    assert_eq!(condition(&w, "Degraded"), is("False", "Healthy"));
    assert_eq!(status_writes(&w), 1);
    assert_eq!(take_events(&w), vec![]);
    reconcile_once(&w).await;
    assert_eq!(status_writes(&w), 0);
}
