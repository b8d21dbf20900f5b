//! A partition that gets a record every few tens of milliseconds, on a real broker (nisshi)
//! with a real worker process. Its consumer is never quiet for the 100 ms it waits, and it
//! reads fewer than 256 records in seconds, so a loop that looks at its timers every 256
//! records, or when a wait times out, never looks: checkpoints, gauges and a two-stage job's
//! markers wait until the partition has read 256 more records. The partition loop looks after
//! every wait for a message instead (`worker/src/partition.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use support::broker::{create_topic, Broker};
use support::workers::{free_port, http_get, series_value, Workers};
use weir_crds::assignment::Assignment;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// A record every this often: 40 a second, 200 in the trickle.
const EVERY: Duration = Duration::from_millis(25);
const RECORDS: i64 = 200;

// The consumer fetches every 10 ms (`fetch.wait.max.ms`), so that each record reaches it well
// within its 100 ms wait, as from a Kafka broker, which answers a waiting fetch as soon as a
// record arrives. nisshi answers at the end of the fetch's wait (500 ms by default): the
// records would come in bursts, and the waits between them would time out.

fn job_yaml(bootstrap: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: slow}}
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topic: in
      startFrom: earliest
      properties: {{fetch.wait.max.ms: "10"}}
    eventTime: {{field: ts, format: epochMillis}}
  groupBy: [g]
  repartition: {{coPartitioned: true}}
  window: {{type: tumbling, size: 1m, idleTimeout: 1h}}
  aggregations: [{{name: n, fn: count}}]
  sink: {{kafka: {{topic: out}}}}
  checkpoint: {{interval: 1s, store: {{configMap: {{}}}}}}
"#
    )
}

/// The checkpoint's `nextOffset` of partition 0, if it was written.
fn checkpointed(dir: &Path) -> Option<i64> {
    let bytes = std::fs::read(dir.join("slow").join("partition-0.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["checkpoint"]["progress"]["nextOffset"].as_i64()
}

#[test]
fn a_partition_read_slowly_checkpoints_and_reports_on_time() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    for topic in ["in", "out"] {
        create_topic(WEIR, &broker.bootstrap, topic, 1);
    }
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, job_yaml(&broker.bootstrap)).unwrap();
    let assignment = dir.path().join("assignment.json");
    let plan = Assignment {
        epoch: 1,
        workers: vec![vec![0]],
        merge: None,
    };
    std::fs::write(&assignment, serde_json::to_string(&plan).unwrap()).unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let port = free_port();
    let mut w = Workers {
        dir: dir.path().to_path_buf(),
        job,
        assignment,
        env: Vec::new(),
        checkpoint_dir: Some(checkpoints.clone()),
        running: Vec::new(),
        starts: 0,
        metrics_port: port,
    };
    w.start(0);
    // Ready when the partition has started reading.
    let started = || {
        let text = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        series_value(
            &text,
            r#"weir_partition_starts_total{topic="in",partition="0"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    };
    w.wait_for("the partition to start", Duration::from_secs(60), |_| {
        started()
    });

    // Each record in its own request (no linger), one every EVERY.
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    for i in 0..RECORDS {
        let value = format!(r#"{{"ts":{},"g":"a"}}"#, T0 + i * 100);
        let rec = BaseRecord::<(), _>::to("in").payload(value.as_bytes());
        weir_worker::kafka::send_when_room(&p, rec)
            .unwrap_or_else(|e| panic!("producing the test's records: {e}"));
        if i % 20 == 19 {
            seen.push((start.elapsed(), i + 1, checkpointed(&checkpoints)));
        }
        std::thread::sleep(EVERY);
    }
    let trickle = start.elapsed();
    p.flush(Duration::from_secs(30)).unwrap();
    let metrics = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    let alive = w.alive();
    w.stop();
    println!("(elapsed, records produced, checkpointed nextOffset): {seen:?}");
    assert!(alive.iter().all(|(_, s)| s == "running"), "{alive:?}");
    assert!(
        trickle >= Duration::from_secs(4),
        "the trickle took {trickle:?}"
    );

    // With checkpoints every second, the partition's checkpoint two seconds before the end of
    // the trickle must hold at least the records produced two seconds before that.
    let (at, produced, offset) = seen
        .iter()
        .rev()
        .find(|(at, _, _)| *at + Duration::from_secs(2) <= trickle)
        .copied()
        .expect("a sample two seconds before the end");
    let earlier = seen
        .iter()
        .rev()
        .find(|(t, _, _)| *t + Duration::from_secs(2) <= at)
        .map_or(0, |s| s.1);
    assert!(
        offset.unwrap_or(0) >= earlier,
        "after {at:?} ({produced} records produced, {earlier} of them 2 s before), the \
         checkpoint held nextOffset {offset:?}: the partition's timers did not run while it \
         read slowly\n{}",
        w.logs()
    );
    // The watermark gauge follows too (it is refreshed every 2 s, with the timers).
    let watermark = series_value(
        &metrics,
        r#"weir_watermark_seconds{topic="in",partition="0"}"#,
    );
    let first = T0 as f64 / 1000.0;
    assert!(
        watermark.is_some_and(|wm| wm >= first + 10.0),
        "watermark gauge {watermark:?} at the end of the trickle; records up to {} s after {first}",
        RECORDS / 10
    );
}
