//! The lag autoscaler wired into the reconcile, against the stateful fake API server: the
//! checkpoints the workers write and the topic's high watermarks give the lag and the read rate,
//! a test clock gives the time, and the autoscaler owns the worker count (issue 19).

#[path = "support/api.rs"]
mod api;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/world.rs"]
mod world;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::core::DeserializeGuard;
use serde_json::{json, Value};
use weir_crds::names;
use weir_operator::controller::reconcile;

use support::{job_with, FixedKafka};
use world::World;

const NS: &str = "/api/v1/namespaces/shop";
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/streamjobs/payments";
const STS: &str = "/apis/apps/v1/namespaces/shop/statefulsets/payments-worker";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const PARTITIONS: i32 = 4;

struct Scene {
    w: World,
    kafka: Arc<FixedKafka>,
    clock: Arc<AtomicI64>,
}

impl Scene {
    fn new() -> Scene {
        let job = job_with(
            "parallelism: 1\nautoscaling: {minReplicas: 1, maxReplicas: 8, targetLagPerReplica: 1000}",
        );
        let server = world::shop_server(&job);
        let kafka = Arc::new(FixedKafka::new(PARTITIONS, 0));
        let clock = Arc::new(AtomicI64::new(0));
        let c = clock.clone();
        let w = World::over_with(Arc::new(Mutex::new(server)), kafka.clone(), move |ctx| {
            ctx.clock = Arc::new(move || c.load(Ordering::SeqCst));
        });
        Scene { w, kafka, clock }
    }

    /// The workers have read up to `next` in every partition, and the topic holds `high`.
    fn progress(&self, next: i64, high: i64) {
        self.kafka.set_high(high);
        let mut server = self.w.server.lock().expect("server");
        for p in 0..PARTITIONS {
            let record = json!({"format": 1, "topic": "payments", "partition": p, "epoch": 1,
                "owner": "payments-worker-0", "writtenAtMs": 1_000,
                "progress": {"nextOffset": next, "replayFrom": next, "watermark": null,
                             "emittedThrough": null}});
            server.insert(
                &format!("{NS}/configmaps/payments-checkpoint-{p}"),
                json!({"metadata": {"labels": names::checkpoint_labels("payments")},
                       "data": {"checkpoint.json": record.to_string()}}),
            );
        }
    }

    async fn reconcile_at(&self, seconds: i64) {
        self.clock.store(seconds * 1000, Ordering::SeqCst);
        let j = self.w.jobs.get("payments").await.expect("the job");
        tokio::time::timeout(
            Duration::from_secs(20),
            reconcile(Arc::new(DeserializeGuard(Ok(j))), self.w.ctx.clone()),
        )
        .await
        .expect("reconcile finished")
        .expect("reconciled");
    }

    fn stored(&self, path: &str) -> Value {
        self.w
            .server
            .lock()
            .expect("server")
            .get(path)
            .cloned()
            .unwrap_or_else(|| panic!("no {path}"))
    }

    fn replicas(&self) -> i64 {
        self.stored(STS)["spec"]["replicas"].as_i64().unwrap_or(-1)
    }

    fn scaled_events(&self) -> Vec<String> {
        self.w
            .calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.method == "POST" && c.path == EVENTS && c.body["reason"] == "Scaled")
            .map(|c| c.body["note"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[tokio::test]
async fn growing_lag_scales_the_workers_up_and_a_quiet_topic_back_down_after_the_window() {
    let s = Scene::new();
    // One worker reads 125 records/s per partition (500/s), 2,000/s arrive: the lag grows.
    let (mut next, mut high) = (0, 0);
    s.progress(next, high);
    s.reconcile_at(0).await;
    assert_eq!(s.replicas(), 1);
    let mut t = 0;
    while t < 120 && s.replicas() == 1 {
        t += 30;
        next += 125 * 30;
        high += 500 * 30;
        s.progress(next, high);
        s.reconcile_at(t).await;
    }
    assert_eq!(s.replicas(), 4, "not scaled up by {t} s");
    assert!(t <= 60, "scaled up only after {t} s");
    let job = s.stored(JOB);
    let status = &job["status"]["autoscaling"];
    assert_eq!(status["desiredReplicas"], json!(4), "{status}");
    assert_eq!(status["reason"], json!("LagGrowing"), "{status}");
    assert!(status["lastScaleTime"].is_string(), "{status}");
    let events = s.scaled_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].starts_with("scaled from 1 to 4 workers: LagGrowing"),
        "{events:?}"
    );
    let assignment: Value = serde_json::from_str(
        s.stored(&format!("{NS}/configmaps/payments-config"))["data"]["assignment.json"]
            .as_str()
            .expect("assignment"),
    )
    .expect("JSON");
    assert_eq!(assignment["workers"].as_array().map(Vec::len), Some(4));

    // The workers catch up and the topic goes quiet (10 records/s): the count holds for the
    // stabilisation window, then drops back to one.
    let up_at = t;
    let mut down_at = None;
    while t < up_at + 600 {
        t += 30;
        high += 40 * 30;
        next = high;
        s.progress(next, high);
        s.reconcile_at(t).await;
        if s.replicas() < 4 && down_at.is_none() {
            down_at = Some(t);
            let status = &s.stored(JOB)["status"]["autoscaling"];
            assert_eq!(status["reason"], json!("LagLow"), "{status}");
            assert_eq!(status["desiredReplicas"], json!(1), "{status}");
        }
    }
    let down_at = down_at.expect("never scaled down");
    assert!(
        down_at - up_at >= 270,
        "scaled down {} s after scaling up",
        down_at - up_at
    );
    assert_eq!(s.replicas(), 1);
    let events = s.scaled_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events[1].starts_with("scaled from 4 to 1 workers: LagLow"),
        "{events:?}"
    );
}

#[tokio::test]
async fn scale_asks_are_ignored_while_the_autoscaler_owns_the_count() {
    let s = Scene::new();
    s.progress(0, 0);
    s.reconcile_at(0).await;
    // `kubectl scale --replicas=6` writes spec.parallelism; the autoscaler keeps the count.
    let mut job = s.stored(JOB);
    job["spec"]["parallelism"] = json!(6);
    s.w.server.lock().expect("server").insert(JOB, job);
    s.reconcile_at(30).await;
    assert_eq!(s.replicas(), 1);
    assert_eq!(
        s.stored(JOB)["status"]["autoscaling"]["desiredReplicas"],
        json!(1)
    );
}

#[tokio::test]
async fn no_decision_while_workers_are_not_ready() {
    let s = Scene::new();
    let (mut next, mut high) = (0, 0);
    s.progress(next, high);
    s.reconcile_at(0).await;
    // The pod never becomes ready (image pull, crash): the lag grows, but a new count would only
    // roll pods that cannot start; the autoscaler waits.
    let sts = s.stored(STS);
    let not_ready = |yes: bool| {
        let mut server = s.w.server.lock().expect("server");
        server.pods_not_ready = yes;
        server.insert(STS, sts.clone());
    };
    not_ready(true);
    for t in [30, 60, 90, 120] {
        next += 125 * 30;
        high += 500 * 30;
        s.progress(next, high);
        s.reconcile_at(t).await;
        assert_eq!(s.replicas(), 1, "at {t} s");
    }
    let status = &s.stored(JOB)["status"]["autoscaling"];
    assert_eq!(status["reason"], json!("RollingOut"), "{status}");
    // Ready again: it decides from fresh samples.
    not_ready(false);
    for t in [150, 180, 210] {
        next += 125 * 30;
        high += 500 * 30;
        s.progress(next, high);
        s.reconcile_at(t).await;
    }
    assert_eq!(s.replicas(), 4);
}
