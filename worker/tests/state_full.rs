//! The bound on open state (`--max-open-rows`) in both stages of a two-stage job, on a real
//! broker (nisshi) with real worker processes: records and partials over the bound are
//! dead-lettered as `state_full` (exactly those), no worker stops, the partitions' checkpoints
//! report the refusals (what the operator turns into `Degraded=True, reason StateFull`), and once
//! windows close the results hold exactly what was admitted.
//!
//! Three workers, one partition each, so that each worker's bound is one partition's and what is
//! refused does not depend on timing: worker 0 reads source partition 0, worker 1 source
//! partition 1, worker 2 merges the one repartition partition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use support::broker::{create_topic, Broker};
use support::workers::{collect, free_port, http_get, series_value, Workers};
use weir_crds::assignment::{Assignment, MergeAssignment};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const REPARTITION: &str = "weir.default.full.repartition";
/// Each worker's bound on open (group, window) rows.
const BOUND: usize = 50;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// The longest wait for what the workers do.
const WAIT: Duration = Duration::from_secs(90);

fn job_yaml(bootstrap: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: full}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: in, startFrom: earliest}}
    eventTime: {{field: ts, format: epochMillis}}
  groupBy: [g]
  window: {{type: tumbling, size: 10s, idleTimeout: 1h}}
  aggregations: [{{name: n, fn: count}}]
  sink: {{kafka: {{topic: out}}}}
  deadLetter: {{kafka: {{topic: dlq}}}}
  checkpoint: {{interval: 1s, store: {{configMap: {{}}}}}}
"#
    )
}

fn produce(bootstrap: &str, recs: &[(i32, String)]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // One request at a time: nisshi 0.8.1 may store pipelined batches out of order and
        // refuse the later one (OutOfOrderSequenceNumber), a fatal error for this producer.
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .unwrap();
    for (partition, value) in recs {
        let rec = BaseRecord::<(), _>::to("in")
            .payload(value.as_bytes())
            .partition(*partition);
        // Waits while the queue is full; any other error fails the test instead of hanging it.
        weir_worker::kafka::send_when_room(&p, rec)
            .unwrap_or_else(|e| panic!("producing the test's records: {e}"));
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn rec(partition: i32, t: i64, g: &str) -> (i32, String) {
    (partition, format!(r#"{{"ts":{t},"g":"{g}"}}"#))
}

/// `stateFull` of a partition's checkpoint in the workers' checkpoint directory.
fn state_full(workers: &Workers, merge: bool, partition: i32) -> Value {
    let mut path = workers.checkpoint_dir.clone().unwrap().join("full");
    if merge {
        path = path.join("merge");
    }
    let v: Value = std::fs::read(path.join(format!("partition-{partition}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    v["checkpoint"]["stateFull"].clone()
}

fn rejected(port: u16, topic: &str) -> Option<f64> {
    let text = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    series_value(
        &text,
        &format!(
            r#"weir_records_rejected_total{{topic="{topic}",partition="0",reason="state_full"}}"#
        ),
    )
}

#[test]
fn both_stages_dead_letter_what_is_over_the_bound_and_report_it_in_their_checkpoints() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    for (topic, n) in [("in", 2), ("out", 1), ("dlq", 1), (REPARTITION, 1)] {
        create_topic(WEIR, &broker.bootstrap, topic, n);
    }
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, job_yaml(&broker.bootstrap)).unwrap();
    let assignment = dir.path().join("assignment.json");
    let plan = Assignment {
        epoch: 1,
        workers: vec![vec![0], vec![1], vec![]],
        merge: Some(MergeAssignment {
            topic: REPARTITION.to_string(),
            sources: 2,
            workers: vec![vec![], vec![], vec![0]],
        }),
    };
    std::fs::write(&assignment, serde_json::to_string(&plan).unwrap()).unwrap();
    let mut w = Workers {
        dir: dir.path().to_path_buf(),
        job,
        assignment,
        env: Vec::new(),
        checkpoint_dir: Some(dir.path().join("checkpoints")),
        running: Vec::new(),
        starts: 0,
        metrics_port: free_port(),
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (o, port) in ports.iter().enumerate() {
        w.start_with(o, Some(*port), &["--max-open-rows", &BOUND.to_string()]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (dead, dead_reader) = collect(&broker.bootstrap, "dlq", 1, stop.clone());
    let (out, out_reader) = collect(&broker.bootstrap, "out", 1, stop.clone());

    // Source partition 1: one record of group a0 in the first window. Its watermark stays there,
    // so the merge stage closes no window and keeps every row it admits.
    let mut recs = vec![rec(1, T0, "a0")];
    // Source partition 0: 60 groups in the first window (10 over the bound: refused by stage
    // 1), then 30 groups in each of the next two windows (each record that moves time closes
    // the window before, which frees its rows) and one record in a fourth window. Stage 1
    // sends 50 + 30 + 30 partials; the merge stage admits the first window's 50 and refuses
    // the 60 others.
    recs.extend((0..60).map(|i| rec(0, T0 + i, &format!("a{i}"))));
    recs.extend((0..30).map(|i| rec(0, T0 + 10_000 + i, &format!("b{i}"))));
    recs.extend((0..30).map(|i| rec(0, T0 + 20_000 + i, &format!("c{i}"))));
    recs.push(rec(0, T0 + 30_000, "end"));
    produce(&broker.bootstrap, &recs);

    let count = |s: &Value| s["refused"].as_u64().unwrap_or(0);
    w.wait_for("the checkpoints to report the refusals", WAIT, |w| {
        count(&state_full(w, false, 0)) == 10 && count(&state_full(w, true, 0)) == 60
    });
    assert!(
        state_full(&w, false, 1).is_null(),
        "partition 1 refused nothing"
    );
    let last = state_full(&w, true, 0)["lastRefusedAtMs"].as_i64().unwrap();
    let now = weir_worker::runtime::now_ms();
    assert!(
        now - 60_000 < last && last <= now,
        "refused at {last}, now {now}"
    );
    assert_eq!(rejected(ports[0], "in"), Some(10.0));
    assert_eq!(rejected(ports[2], REPARTITION), Some(60.0));

    // Partition 1 moves on: the merge stage closes the three windows and frees its rows.
    produce(&broker.bootstrap, &[rec(1, T0 + 40_000, "a0")]);
    w.wait_for("the first window's results", WAIT, |_| {
        out.lock().unwrap().len() >= 50
    });
    std::thread::sleep(Duration::from_secs(2));
    let alive = w.alive();
    assert!(alive.iter().all(|(_, s)| s == "running"), "{alive:?}");
    w.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dead_reader.join().unwrap();
    out_reader.join().unwrap();

    // Dead letters: exactly the records and partials over the bound, each once, whole.
    let mut refused: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, value, h) in dead.lock().unwrap().iter() {
        assert_eq!(h["weir.reason"], "state_full", "{h:?}");
        let topic = h["weir.source.topic"].clone();
        let v: Value = serde_json::from_str(value).unwrap();
        let group = match topic.as_str() {
            "in" => v["g"].as_str().unwrap().to_string(),
            _ => {
                let g = v["partial"]["group"].as_str().unwrap();
                serde_json::from_str::<String>(g).unwrap()
            }
        };
        assert!(refused.entry(topic).or_default().insert(group), "twice");
    }
    let names = |p: &str, r: std::ops::Range<i32>| -> BTreeSet<String> {
        r.map(|i| format!("{p}{i}")).collect()
    };
    assert_eq!(refused["in"], names("a", 50..60), "refused by stage 1");
    let merge_refused: BTreeSet<String> = names("b", 0..30)
        .union(&names("c", 0..30))
        .cloned()
        .collect();
    assert_eq!(
        refused[REPARTITION], merge_refused,
        "refused by the merge stage"
    );
    assert_eq!(refused.len(), 2);

    // Results: what was admitted (a0 from both partitions), nothing of what was refused.
    let results: BTreeMap<String, u64> = out
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v, _)| {
            let v: Value = serde_json::from_str(v).unwrap();
            let g = v["group"]["g"].as_str().unwrap().to_string();
            (g, v["values"]["n"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(results.len(), 50, "{results:?}");
    assert_eq!(results["a0"], 2);
    assert!(names("a", 1..50).iter().all(|g| results[g] == 1));
    eprintln!(
        "state_full: stage 1 refused {}, the merge stage {}; {} results",
        refused["in"].len(),
        refused[REPARTITION].len(),
        results.len()
    );
}
