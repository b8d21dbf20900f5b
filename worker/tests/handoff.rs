//! Live partition handoff (issue 19; DESIGN.md invariant 9), on a real Kafka-protocol broker
//! (nisshi) with real worker processes: under a steady load the assignment changes 1 → 4 → 2 →
//! 3 workers while they run, as the operator changes it (a new `assignment.json`, pods added
//! after it, pods removed with SIGTERM). No worker restarts for it.
//!
//! Asserted: the results equal `weir run --input` over the same records, with no key written
//! twice (0 lost, 0 duplicated, not merely deduplicated); worker 0, which keeps partition 0
//! throughout, started it once and read each of its records once (no replay), and worker 1
//! started its partition 1 once through two later changes; each change ends with every
//! partition's checkpoint at the new epoch, written by its new owner. Printed: the time each
//! change took, from the new assignment to the last partition taken by its new owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use support::broker::Broker;
use support::workers::{
    collect, free_port, http_get, result_key, series_value, weir_run_input, Workers,
};
use weir_crds::assignment::Assignment;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 4;
const MERCHANTS: usize = 24;
/// Event time between two records (all partitions together), in ms.
const STEP_MS: i64 = 10;
/// Records of the steady load (about 20 s at [`RATE`]).
const RECORDS: usize = 50_000;
/// Records produced per second.
const RATE: usize = 2_500;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const END: &str = "zz-end";

/// The repartition topic of a two-stage run.
const REPARTITION: &str = "weir.default.handoff.repartition";

/// The job; `two_stage`: without `coPartitioned`, so that partials go through the repartition
/// topic and the merge stage's partitions are handed off too.
fn job_yaml(bootstrap: &str, two_stage: bool) -> String {
    let co = if two_stage {
        ""
    } else {
        "repartition: {coPartitioned: true}"
    };
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: handoff}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: in}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: [merchant]
  {co}
  window: {{type: tumbling, size: 10s, allowedLateness: 1s}}
  aggregations: [{{name: n, fn: count}}, {{name: total, fn: sum, field: amount}}]
  sink: {{kafka: {{topic: out}}}}
  checkpoint: {{interval: 1s, store: {{configMap: {{}}}}}}
"#
    )
}

/// (partition, key, value) of every record, in the order produced: event time rising, each
/// merchant always in the same partition; then one record per partition a day later, which
/// closes every window.
fn records() -> Vec<(i32, String, String)> {
    let ts = weir_engine::time::format;
    let mut out: Vec<(i32, String, String)> = (0..RECORDS)
        .map(|i| {
            let m = (i * 7) % MERCHANTS;
            let value = serde_json::json!({
                "ts": ts(T0 + i as i64 * STEP_MS),
                "merchant": format!("m{m}"),
                "amount": ((i * 37) % 1000) as f64 / 10.0,
            });
            ((m as i32) % PARTITIONS, format!("m{m}"), value.to_string())
        })
        .collect();
    for p in 0..PARTITIONS {
        let value = serde_json::json!({"ts": ts(T0 + 86_400_000), "merchant": END, "amount": 0});
        out.push((p, END.into(), value.to_string()));
    }
    out
}

/// Produce `recs` at [`RATE`] records a second, counting them in `sent`.
fn produce(bootstrap: &str, recs: &[(i32, String, String)], sent: &AtomicUsize) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // One request at a time: nisshi 0.8.1 may store pipelined batches out of order and
        // refuse the later one (OutOfOrderSequenceNumber), a fatal error for this producer.
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let started = Instant::now();
    for (i, (partition, key, value)) in recs.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / RATE as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let rec = BaseRecord::to("in")
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .partition(*partition);
        // Waits while the queue is full; any other error (a fatal error of the idempotent
        // producer fails every later send) fails the test instead of hanging it.
        weir_worker::kafka::send_when_room(&p, rec)
            .unwrap_or_else(|e| panic!("producing the test's records: {e}"));
        sent.store(i + 1, Ordering::Relaxed);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// The assignment of `workers` workers under `epoch` (with the merge stage when `two_stage`).
fn plan(workers: usize, epoch: i64, two_stage: bool) -> Assignment {
    let a = Assignment::round_robin(PARTITIONS, workers, epoch);
    if two_stage {
        a.with_merge(REPARTITION, PARTITIONS, PARTITIONS)
    } else {
        a
    }
}

/// (epoch, owner) of each partition's checkpoint: the source partitions, then (two-stage) the
/// merge stage's.
fn owners(workers: &Workers, two_stage: bool) -> Vec<(i64, String)> {
    let dir = workers.checkpoint_dir.as_ref().unwrap().join("handoff");
    let merge = dir.join("merge");
    let dirs: &[&std::path::Path] = if two_stage { &[&dir, &merge] } else { &[&dir] };
    dirs.iter()
        .flat_map(|d| (0..PARTITIONS).map(move |p| d.join(format!("partition-{p}.json"))))
        .map(|path| {
            let v: Value = std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let cp = &v["checkpoint"];
            (
                cp["epoch"].as_i64().unwrap_or(-1),
                cp["owner"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Publish `a` (as the operator does: write the file the workers read) and return when every
/// partition's checkpoint is at its epoch and written by its owner in `a`: the time it took.
/// `between` runs right after the file is written (pods added or removed).
fn change(workers: &mut Workers, a: &Assignment, between: impl FnOnce(&mut Workers)) -> Duration {
    let t = Instant::now();
    // Written whole and renamed, as the kubelet updates a mounted ConfigMap.
    let tmp = workers.assignment.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(a).unwrap()).unwrap();
    std::fs::rename(&tmp, &workers.assignment).unwrap();
    between(workers);
    let two_stage = a.merge.is_some();
    let stages = [Some(&a.workers), a.merge.as_ref().map(|m| &m.workers)];
    let want: Vec<(i64, String)> = stages
        .into_iter()
        .flatten()
        .flat_map(|ws| {
            (0..PARTITIONS).map(move |p| {
                let o = ws.iter().position(|w| w.contains(&p)).unwrap();
                (a.epoch, format!("e2e-worker-{o}"))
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while owners(workers, two_stage) != want {
        assert!(
            Instant::now() < deadline,
            "the assignment of epoch {} was not taken: {:?}, alive {:?}\n{}",
            a.epoch,
            owners(workers, two_stage),
            workers.alive(),
            workers.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

#[test]
fn workers_change_from_1_to_4_to_2_to_3_live_with_exact_results() {
    scale_live(false);
}

/// The same with two stages: the merge stage's partitions move too, and stage 2 writes the
/// results.
#[test]
fn a_two_stage_job_changes_from_1_to_4_to_2_to_3_workers_live_with_exact_results() {
    scale_live(true);
}

fn scale_live(two_stage: bool) {
    let broker = Broker::start();
    for (topic, n) in [("in", PARTITIONS), ("out", 1), (REPARTITION, PARTITIONS)] {
        support::broker::create_topic(WEIR, &broker.bootstrap, topic, n);
    }
    let dir = tempfile::tempdir().unwrap();
    let recs = records();
    let want: BTreeMap<String, Value> = {
        let job = dir.path().join("reference.yaml");
        std::fs::write(&job, job_yaml("k:9092", two_stage)).unwrap();
        let last = weir_engine::time::format(T0 + 3_600_000);
        weir_run_input(dir.path(), &job, recs.iter().map(|r| r.2.as_str()), None)
            .into_iter()
            .filter(|v| v["window"]["start"].as_str().unwrap() < last.as_str())
            .map(|v| (result_key(&v), v))
            .collect()
    };
    assert!(want.len() > 1_000, "{} reference results", want.len());

    let job = dir.path().join("job.yaml");
    std::fs::write(&job, job_yaml(&broker.bootstrap, two_stage)).unwrap();
    let assignment = dir.path().join("assignment.json");
    let epoch1 = plan(1, 1, two_stage);
    std::fs::write(&assignment, serde_json::to_string(&epoch1).unwrap()).unwrap();
    let mut w = Workers {
        dir: dir.path().to_path_buf(),
        job,
        assignment,
        env: vec![("RUST_LOG".into(), "info".into())],
        checkpoint_dir: Some(dir.path().join("checkpoints")),
        running: Vec::new(),
        starts: 0,
        metrics_port: free_port(),
    };
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let start = |w: &mut Workers, o: usize| w.start_with(o, Some(ports[o]), &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let (seen, reader) = collect(&broker.bootstrap, "out", 1, stop.clone());
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (bootstrap, sent) = (broker.bootstrap.clone(), sent.clone());
        let steady = recs[..RECORDS].to_vec();
        std::thread::spawn(move || produce(&bootstrap, &steady, &sent))
    };
    start(&mut w, 0);
    let wait_sent = |n: usize| {
        // The load sends RATE records a second; if it stops (its thread failed), fail here
        // rather than wait forever.
        let deadline = Instant::now() + Duration::from_secs((n / RATE) as u64 + 60);
        while sent.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "the load stopped at {} of {n} records",
                sent.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut took = Vec::new();
    wait_sent(RECORDS / 5);
    let a = plan(4, 2, two_stage);
    took.push((
        "1 → 4",
        change(&mut w, &a, |w| {
            for o in 1..4 {
                start(w, o);
            }
        }),
    ));
    wait_sent(RECORDS * 2 / 5);
    let a = plan(2, 3, two_stage);
    took.push((
        "4 → 2",
        change(&mut w, &a, |w| {
            // The StatefulSet removes the highest ordinals; their SIGTERM releases too.
            w.stop_one(3);
            w.stop_one(2);
        }),
    ));
    wait_sent(RECORDS * 3 / 5);
    let a = plan(3, 4, two_stage);
    took.push(("2 → 3", change(&mut w, &a, |w| start(w, 2))));
    load.join().unwrap();
    produce(&broker.bootstrap, &recs[RECORDS..], &AtomicUsize::new(0));

    // Every result arrives.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = seen.lock().unwrap().len();
        if got >= want.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {} results\n{}",
            want.len(),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Time for a result written twice to show.
    std::thread::sleep(Duration::from_secs(3));
    let (m0, m1) = (metrics(ports[0]), metrics(ports[1]));
    w.stop();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    let messages: Vec<(String, Value)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v, _)| (k.clone(), serde_json::from_str(v).unwrap()))
        .collect();
    let got: BTreeMap<String, Value> = messages.iter().cloned().collect();
    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    let wrong = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .count();
    let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
    assert_eq!(
        (missing, wrong, extra),
        (0, 0, 0),
        "results against weir run --input (missing, wrong, extra)"
    );
    assert_eq!(
        messages.len(),
        got.len(),
        "no result written twice: {} messages for {} keys",
        messages.len(),
        got.len()
    );

    // Worker 0 kept partition 0 from its start: started it once, read each record once.
    let series = |text: &str, name: &str, p: i32| {
        series_value(text, &format!(r#"{name}{{topic="in",partition="{p}"}}"#))
    };
    let in_p0 = recs.iter().filter(|r| r.0 == 0).count() as f64;
    assert_eq!(
        series(&m0, "weir_partition_starts_total", 0),
        Some(1.0),
        "{m0}"
    );
    assert_eq!(series(&m0, "weir_records_in_total", 0), Some(in_p0), "{m0}");
    assert_eq!(
        series_value(&m0, "weir_assignment_changes_total"),
        Some(3.0)
    );
    // Worker 1 took partition 1 at the first change and kept it through the next two.
    assert_eq!(
        series(&m1, "weir_partition_starts_total", 1),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        series_value(&m1, "weir_assignment_changes_total"),
        Some(2.0)
    );

    println!(
        "{}: {} results equal weir run --input, each written once ({} messages)",
        if two_stage { "two stages" } else { "one stage" },
        got.len(),
        messages.len()
    );
    println!("| change | new assignment → every partition taken by its new owner |");
    println!("|---|---|");
    for (what, t) in &took {
        println!("| {what} workers | {:.2} s |", t.as_secs_f64());
    }
}

/// An assignment of another shape (here: a partition more, as after partitions were added to the
/// source topic) cannot be taken live: the worker stops every partition with a final checkpoint,
/// released, and exits with an error saying so, for its pod to start again with it.
#[test]
fn an_assignment_of_another_shape_stops_the_worker_after_final_checkpoints() {
    let broker = Broker::start();
    for (topic, n) in [("in", PARTITIONS), ("out", 1)] {
        support::broker::create_topic(WEIR, &broker.bootstrap, topic, n);
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, job_yaml(&broker.bootstrap, false)).unwrap();
    let assignment = dir.path().join("assignment.json");
    let write = |a: &Assignment| {
        std::fs::write(&assignment, serde_json::to_string(a).unwrap()).unwrap();
    };
    write(&Assignment::round_robin(PARTITIONS, 1, 1));
    let mut w = Workers {
        dir: dir.path().to_path_buf(),
        job,
        assignment: assignment.clone(),
        env: vec![("RUST_LOG".into(), "info".into())],
        checkpoint_dir: Some(dir.path().join("checkpoints")),
        running: Vec::new(),
        starts: 0,
        metrics_port: free_port(),
    };
    w.start(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while owners(&w, false).iter().any(|(e, _)| *e != 1) {
        assert!(Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    write(&Assignment::round_robin(PARTITIONS + 1, 1, 2));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = w.running[0].child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running\n{}", w.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = w.logs();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("changed shape"), "{logs}");
    let dir = w.checkpoint_dir.as_ref().unwrap().join("handoff");
    for p in 0..PARTITIONS {
        let v: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("partition-{p}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["checkpoint"]["released"],
            Value::Bool(true),
            "partition {p}: {v}"
        );
    }
}
