//! A running job edited, suspended and reset, on a real Kafka-protocol broker (nisshi) with
//! real worker processes (issue 18; docs/semantics.md, "Edits, resets and start times"): each
//! definition emits only complete windows, each equal to `weir run --input` over the same
//! records, and no key is written by two definitions; suspend and resume equals an uninterrupted
//! run; a reset to a time equals a new job started at that time.
//!
//! Records: 12 merchants, one record every 40 ms of event time over 8 minutes, in event-time
//! order, keyed and partitioned by merchant, with Kafka timestamps equal to their event times
//! (so that ListOffsets by time finds them), then one record per partition a day later that
//! closes every window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use support::broker::Broker;
use support::workers::{collect, free_port, result_key, weir_run_input, Seen, Workers};
use weir_crds::checkpoint::PartitionCheckpoint;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 2;
const MERCHANTS: usize = 12;
const STEP_MS: i64 = 40;
const MINUTE: i64 = 60_000;
const SPAN_MS: i64 = 8 * MINUTE;
const END: &str = "zz-end";

/// The first event time: the start of the hour before the current one (recent, so that no
/// retention by time applies to the records, whose timestamps are their event times).
fn t0() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now - now.rem_euclid(3_600_000) - 3_600_000
}

/// The repartition topic of job `name` (two-stage definitions).
fn repartition(name: &str) -> String {
    format!("weir.default.{name}.repartition")
}

/// One source record.
struct Rec {
    partition: i32,
    key: String,
    value: String,
    /// Its Kafka timestamp (`None`: the time it is produced).
    ts: Option<i64>,
}

fn records(t0: i64) -> Vec<Rec> {
    let ts = weir_engine::time::format;
    let mut out = Vec::new();
    for i in 0..(SPAN_MS / STEP_MS) {
        let t = t0 + i * STEP_MS;
        let m = (i as usize * 5) % MERCHANTS;
        let value = serde_json::json!({
            "ts": ts(t),
            "merchant": format!("m{m}"),
            "customer": format!("c{}", (i * 13) % 5),
            "amount": ((i * 37) % 1000) as f64 / 10.0,
        });
        out.push(Rec {
            partition: (m as i32) % PARTITIONS,
            key: format!("m{m}"),
            value: value.to_string(),
            ts: Some(t),
        });
    }
    // A broker may refuse a timestamp far ahead of its clock (Kafka's
    // log.message.timestamp.after.max.ms): these keep the time they are produced.
    for p in 0..PARTITIONS {
        let t = t0 + 86_400_000;
        out.push(Rec {
            partition: p,
            key: END.into(),
            value: serde_json::json!({"ts": ts(t), "merchant": END, "customer": END, "amount": 0})
                .to_string(),
            ts: None,
        });
    }
    out
}

/// A job definition.
#[derive(Clone)]
struct Def {
    name: &'static str,
    window: &'static str,
    group: &'static str,
    aggs: &'static str,
    /// More spec lines (`repartition: ...`, `reset: ...`), indented by two spaces.
    extra: String,
    start_from: String,
    sink: &'static str,
}

impl Def {
    fn new(window: &'static str) -> Def {
        Def {
            name: "e2e",
            window,
            group: "[merchant]",
            aggs: "[{name: n, fn: count}, {name: total, fn: sum, field: amount}]",
            extra: "repartition: {coPartitioned: true}".into(),
            start_from: "earliest".into(),
            sink: "out",
        }
    }

    fn two_stage(&self) -> bool {
        !self.extra.contains("coPartitioned: true")
    }

    fn yaml(&self, bootstrap: &str) -> String {
        format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: in, startFrom: "{start}"}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: {group}
  {extra}
  window: {window}
  aggregations: {aggs}
  sink: {{kafka: {{topic: {sink}}}}}
  parallelism: 2
  checkpoint: {{interval: 1s, store: {{configMap: {{}}}}}}
"#,
            name = self.name,
            start = self.start_from,
            group = self.group,
            extra = self.extra,
            window = self.window,
            aggs = self.aggs,
            sink = self.sink,
        )
    }

    fn fingerprint(&self) -> String {
        let job = weir_crds::parse_stream_job(&self.yaml("k:9092"))
            .unwrap()
            .job;
        weir_crds::definition::fingerprint(&job.spec)
    }
}

/// `weir run --input` of `def` over the records: results by key, without the windows of the
/// records that close everything.
fn reference(dir: &Path, def: &Def, recs: &[Rec], t0: i64) -> BTreeMap<String, Value> {
    let job = dir.join(format!("reference-{}.yaml", def.fingerprint()));
    std::fs::write(&job, def.yaml("k:9092")).unwrap();
    let last = weir_engine::time::format(t0 + SPAN_MS + 10 * MINUTE);
    let mut results = BTreeMap::new();
    for v in weir_run_input(dir, &job, recs.iter().map(|r| r.value.as_str()), None) {
        if v["window"]["start"].as_str().unwrap() < last.as_str() {
            results.insert(result_key(&v), v);
        }
    }
    assert!(
        results.len() > 20,
        "only {} reference results",
        results.len()
    );
    results
}

fn ms(text: &str) -> i64 {
    humantime::parse_rfc3339(text)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn start_ms(v: &Value) -> i64 {
    ms(v["window"]["start"].as_str().unwrap())
}

fn end_ms(v: &Value) -> i64 {
    ms(v["window"]["end"].as_str().unwrap())
}

/// The source partition of a result grouped by merchant.
fn partition_of(v: &Value) -> i32 {
    let m = v["group"]["merchant"].as_str().unwrap();
    m[1..].parse::<i32>().unwrap() % PARTITIONS
}

fn produce(bootstrap: &str, recs: &[Rec]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // One request at a time: nisshi 0.8.1 may store pipelined batches out of order and
        // refuse the later one (OutOfOrderSequenceNumber), a fatal error for this producer.
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "10")
        .create()
        .unwrap();
    for r in recs {
        let mut rec = BaseRecord::to("in")
            .key(r.key.as_bytes())
            .payload(r.value.as_bytes())
            .partition(r.partition);
        if let Some(ts) = r.ts {
            rec = rec.timestamp(ts);
        }
        // Waits while the queue is full; any other error (a fatal error of the idempotent
        // producer fails every later send) fails the test instead of hanging it.
        weir_worker::kafka::send_when_room(&p, rec)
            .unwrap_or_else(|e| panic!("producing the test's records: {e}"));
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Records in the source topic (every one produced must be there, else a missing window would
/// be the broker's doing).
fn stored(bootstrap: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks("in", p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// A broker with the topics, a directory, and the records.
struct Setup {
    broker: Broker,
    dir: tempfile::TempDir,
    t0: i64,
    recs: Vec<Rec>,
}

impl Setup {
    fn new() -> Setup {
        let broker = Broker::start();
        for (topic, n) in [("in", PARTITIONS), ("out", 1), ("out2", 1)] {
            support::broker::create_topic(WEIR, &broker.bootstrap, topic, n);
        }
        for job in ["e2e", "fresh"] {
            support::broker::create_topic(WEIR, &broker.bootstrap, &repartition(job), PARTITIONS);
        }
        let t0 = t0();
        Setup {
            broker,
            dir: tempfile::tempdir().unwrap(),
            t0,
            recs: records(t0),
        }
    }

    /// Records with event times before `t` (and `after`: from `t` on, with the closing ones).
    fn split(&self, t: i64) -> (&[Rec], &[Rec]) {
        let i = self
            .recs
            .iter()
            .position(|r| r.ts.is_none_or(|ts| ts >= t))
            .unwrap();
        self.recs.split_at(i)
    }

    /// Produce `recs` and check that the topic has them.
    fn produce(&self, recs: &[Rec]) {
        let before = stored(&self.broker.bootstrap);
        produce(&self.broker.bootstrap, recs);
        assert_eq!(
            stored(&self.broker.bootstrap) - before,
            recs.len() as i64,
            "records stored in the source topic"
        );
    }

    /// Two worker processes of `def`, checkpoints in `<dir>/<run>`.
    fn workers(&self, def: &Def, run: &str) -> Workers {
        self.workers_of(def, run, &[0, 1])
    }

    /// The worker processes of `ordinals` (of two) of `def`.
    fn workers_of(&self, def: &Def, run: &str, ordinals: &[usize]) -> Workers {
        let dir = self.dir.path().join(run);
        std::fs::create_dir_all(&dir).unwrap();
        let job = dir.join(format!("job-{}.yaml", def.fingerprint()));
        std::fs::write(&job, def.yaml(&self.broker.bootstrap)).unwrap();
        let assignment = dir.join("assignment.json");
        let mut plan = weir_crds::assignment::Assignment::round_robin(PARTITIONS, 2, 1);
        if def.two_stage() {
            plan = plan.with_merge(&repartition(def.name), PARTITIONS, PARTITIONS);
        }
        std::fs::write(&assignment, serde_json::to_string(&plan).unwrap()).unwrap();
        let mut w = Workers {
            dir: dir.clone(),
            job,
            assignment,
            env: vec![("RUST_LOG".into(), "info".into())],
            checkpoint_dir: Some(dir.join("checkpoints")),
            running: Vec::new(),
            // Log files of earlier starts in the directory are kept.
            starts: std::fs::read_dir(&dir).unwrap().count(),
            metrics_port: free_port(),
        };
        for ordinal in ordinals {
            w.start(*ordinal);
        }
        w
    }

    /// The source partitions' checkpoints of job `name` run in `run`.
    fn checkpoints(&self, run: &str, name: &str) -> Vec<Option<PartitionCheckpoint>> {
        (0..PARTITIONS)
            .map(|p| {
                let path: PathBuf = self
                    .dir
                    .path()
                    .join(run)
                    .join("checkpoints")
                    .join(name)
                    .join(format!("partition-{p}.json"));
                // The directory store keeps {version, checkpoint}.
                let v: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
                serde_json::from_value(v["checkpoint"].clone()).ok()
            })
            .collect()
    }

    /// Wait until every source partition's checkpoint of `run` says `ok`.
    fn wait_checkpoints(
        &self,
        run: &str,
        name: &str,
        workers: &Workers,
        what: &str,
        ok: impl Fn(&PartitionCheckpoint) -> bool,
    ) -> Vec<PartitionCheckpoint> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<_> = self.checkpoints(run, name);
            if all.iter().all(|c| c.as_ref().is_some_and(&ok)) {
                return all.into_iter().flatten().collect();
            }
            assert!(
                Instant::now() < deadline,
                "checkpoints never showed {what}: {all:?}\n{}",
                workers.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The sink's messages so far, by key (last wins), from message `from` on.
fn sink(seen: &Seen, from: usize) -> BTreeMap<String, Value> {
    seen.lock().unwrap()[from..]
        .iter()
        .map(|(k, v, _)| (k.clone(), serde_json::from_str(v).unwrap()))
        .collect()
}

/// Wait until the sink holds every key of `want` (from message `from` on).
fn wait_sink(seen: &Seen, from: usize, want: &BTreeMap<String, Value>, workers: &Workers) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = sink(seen, from);
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} results missing, for example {:?}\n{}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)],
            workers.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every message of the sink: (key, value), in order.
fn messages(seen: &Seen) -> Vec<(String, Value)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(k, v, _)| (k.clone(), serde_json::from_str(v).unwrap()))
        .collect()
}

/// Run `def1` over the records of the first 4.5 minutes, stop its workers (SIGTERM) after it
/// wrote its windows up to 4 minutes, start `def2` and give it the rest. `is_def2`: whether a
/// result is of the new definition.
fn edit(def1: Def, def2: Def, is_def2: fn(&Value) -> bool) {
    edit_with(def1, def2, is_def2, false)
}

/// [`edit`]; `rolling`: the workers change definition one at a time (worker 0, which owns
/// source and repartition partition 0, then worker 1 a few seconds later), so both definitions
/// run side by side for a while.
fn edit_with(def1: Def, def2: Def, is_def2: fn(&Value) -> bool, rolling: bool) {
    let s = Setup::new();
    let want1 = reference(s.dir.path(), &def1, &s.recs, s.t0);
    let want2 = reference(s.dir.path(), &def2, &s.recs, s.t0);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, reader) = collect(&s.broker.bootstrap, "out", 1, stop.clone());
    let edit_at = s.t0 + 4 * MINUTE + 30_000;
    let (before, after) = s.split(edit_at);

    let mut w1 = s.workers(&def1, "run");
    s.produce(before);
    let early: BTreeMap<String, Value> = want1
        .iter()
        .filter(|(_, v)| end_ms(v) <= s.t0 + 4 * MINUTE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    wait_sink(&seen, 0, &early, &w1);
    // Each source partition's last checkpoint of the first definition, when its worker stopped.
    let emitted_through = |p: usize| {
        let c = s.checkpoints("run", "e2e")[p]
            .clone()
            .expect("a checkpoint of the first definition");
        assert_eq!(c.definition.as_deref(), Some(def1.fingerprint().as_str()));
        c.progress.unwrap().emitted_through.unwrap()
    };
    let (w2, emitted) = if rolling {
        w1.stop_one(0);
        let e0 = emitted_through(0);
        let mut w2 = s.workers_of(&def2, "run", &[0]);
        // Worker 0 replays partition 0 for the new definition while worker 1 still runs the
        // old one: the merge stages skip each other's partials and markers.
        std::thread::sleep(Duration::from_secs(3));
        w1.stop_one(1);
        let e1 = emitted_through(1);
        w2.start(1);
        (w2, vec![e0, e1])
    } else {
        w1.stop();
        let emitted: Vec<i64> = (0..PARTITIONS as usize).map(emitted_through).collect();
        (s.workers(&def2, "run"), emitted)
    };
    let fp2 = def2.fingerprint();
    let new = s.wait_checkpoints("run", "e2e", &w2, "the new definition", |c| {
        c.definition.as_deref() == Some(fp2.as_str())
    });
    let results_from: Vec<i64> = new
        .iter()
        .map(|c| c.results_from.expect("resultsFrom after an edit"))
        .collect();
    // Not everything suppressed: the new definition starts within one new window of the edit.
    let size2 = want2
        .values()
        .map(|v| end_ms(v) - start_ms(v))
        .max()
        .unwrap();
    for (rf, e) in results_from.iter().zip(&emitted) {
        assert!(
            *rf <= e + size2,
            "resultsFrom {rf} is more than a window ({size2} ms) after the edit point {e}"
        );
    }
    s.produce(after);
    let from_of = |v: &Value| {
        if def2.two_stage() {
            *results_from.iter().max().unwrap()
        } else {
            results_from[partition_of(v) as usize]
        }
    };
    let expected2: BTreeMap<String, Value> = want2
        .iter()
        .filter(|(_, v)| start_ms(v) >= from_of(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!expected2.is_empty());
    let mut w2 = w2;
    wait_sink(&seen, 0, &expected2, &w2);
    w2.stop();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    let all = messages(&seen);
    let (mut keys1, mut keys2) = (BTreeSet::new(), BTreeSet::new());
    let (mut got1, mut got2) = (BTreeMap::new(), BTreeMap::new());
    for (k, v) in &all {
        assert_eq!(*k, result_key(v), "a key names its window and group");
        if is_def2(v) {
            keys2.insert(k.clone());
            got2.insert(k.clone(), v.clone());
        } else {
            keys1.insert(k.clone());
            got1.insert(k.clone(), v.clone());
        }
    }
    // The first definition: exactly its windows up to where it stopped, each as weir run.
    let through = |v: &Value| {
        if def1.two_stage() {
            *emitted.iter().min().unwrap()
        } else {
            emitted[partition_of(v) as usize]
        }
    };
    let expected1: BTreeMap<String, Value> = want1
        .iter()
        .filter(|(_, v)| end_ms(v) <= through(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        got1.len(),
        expected1.len(),
        "results of the first definition"
    );
    assert!(
        got1 == expected1,
        "the first definition's results differ from weir run"
    );
    // The second: exactly its complete windows, from resultsFrom on, each as weir run.
    let extra: Vec<&String> = got2
        .keys()
        .filter(|k| !expected2.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "the new definition wrote windows before resultsFrom {results_from:?}: {:?}",
        &extra[..extra.len().min(5)]
    );
    assert!(
        got2 == expected2,
        "the new definition's results differ from weir run"
    );
    println!(
        "first definition: {} results through {emitted:?}; second: {} results from {:?}",
        got1.len(),
        got2.len(),
        results_from
            .iter()
            .map(|t| weir_engine::time::format(*t))
            .collect::<Vec<_>>()
    );
    let shared: Vec<&String> = keys1.intersection(&keys2).collect();
    assert!(
        shared.is_empty(),
        "keys written by both definitions: {shared:?}"
    );
}

#[test]
fn a_window_edited_from_1m_to_2m_emits_complete_windows_of_each_definition() {
    edit(
        Def::new("{type: tumbling, size: 1m}"),
        Def::new("{type: tumbling, size: 2m}"),
        |v| end_ms(v) - start_ms(v) == 2 * MINUTE,
    );
}

#[test]
fn an_aggregation_added_emits_complete_windows_of_each_definition() {
    let mut def2 = Def::new("{type: tumbling, size: 1m}");
    def2.aggs = "[{name: n, fn: count}, {name: total, fn: sum, field: amount}, \
                 {name: top, fn: max, field: amount}]";
    edit(Def::new("{type: tumbling, size: 1m}"), def2, |v| {
        v["values"].get("top").is_some()
    });
}

#[test]
fn a_group_by_changed_to_a_field_that_is_not_the_key_runs_two_stages_exactly() {
    let mut def2 = Def::new("{type: tumbling, size: 1m}");
    def2.group = "[customer]";
    def2.extra = String::new();
    edit(Def::new("{type: tumbling, size: 1m}"), def2, |v| {
        v["group"].get("customer").is_some()
    });
}

#[test]
fn a_two_stage_job_edited_by_a_rolling_update_emits_complete_windows_of_each_definition() {
    // Grouped by merchant without declaring it co-partitioned: two stages.
    let mut def1 = Def::new("{type: tumbling, size: 1m}");
    def1.extra = String::new();
    let mut def2 = def1.clone();
    def2.window = "{type: tumbling, size: 2m}";
    edit_with(def1, def2, |v| end_ms(v) - start_ms(v) == 2 * MINUTE, true);
}

#[test]
fn suspended_and_resumed_workers_equal_an_uninterrupted_run() {
    let s = Setup::new();
    let def = Def::new("{type: tumbling, size: 1m}");
    let want = reference(s.dir.path(), &def, &s.recs, s.t0);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, reader) = collect(&s.broker.bootstrap, "out", 1, stop.clone());
    let (before, after) = s.split(s.t0 + 3 * MINUTE + 20_000);
    let mut w = s.workers(&def, "run");
    s.produce(before);
    let early: BTreeMap<String, Value> = want
        .iter()
        .filter(|(_, v)| end_ms(v) <= s.t0 + 3 * MINUTE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    wait_sink(&seen, 0, &early, &w);
    // Suspended: every worker stopped, final checkpoints written; records keep arriving.
    w.stop();
    s.produce(after);
    let mut w = s.workers(&def, "run");
    wait_sink(&seen, 0, &want, &w);
    w.stop();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let got = sink(&seen, 0);
    assert!(
        got == want,
        "results after suspend and resume differ from weir run"
    );
    for c in s.checkpoints("run", "e2e") {
        assert_eq!(c.unwrap().results_from, None, "no window suppressed");
    }
}

#[test]
fn a_reset_to_a_time_equals_a_new_job_started_at_that_time() {
    reset_to_a_time(Def::new("{type: tumbling, size: 1m}"));
}

#[test]
fn a_two_stage_job_reset_to_a_time_equals_a_new_job_started_at_that_time() {
    let mut def = Def::new("{type: tumbling, size: 1m}");
    def.group = "[customer]";
    def.extra = String::new();
    reset_to_a_time(def);
}

/// Run `def` over every record, then reset it to a time T, and start a new job of the same
/// definition at T (another name and sink) over the same records.
fn reset_to_a_time(def: Def) {
    let s = Setup::new();
    let want = reference(s.dir.path(), &def, &s.recs, s.t0);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, reader) = collect(&s.broker.bootstrap, "out", 1, stop.clone());
    let (seen2, reader2) = collect(&s.broker.bootstrap, "out2", 1, stop.clone());
    s.produce(&s.recs);
    let mut w = s.workers(&def, "run");
    wait_sink(&seen, 0, &want, &w);
    w.stop();
    let before = seen.lock().unwrap().len();

    // Reset the running job to T; and a new job started at T, over the same records.
    let t = s.t0 + 3 * MINUTE + 20_000;
    let at = weir_engine::time::format(t);
    let mut reset = def.clone();
    reset.extra = format!("{}\n  reset: {{to: \"{at}\"}}", def.extra);
    let mut fresh = def.clone();
    fresh.name = "fresh";
    fresh.start_from = at.clone();
    fresh.sink = "out2";
    let mut w = s.workers(&reset, "run");
    let mut w2 = s.workers(&fresh, "fresh");
    let first = t - t.rem_euclid(MINUTE) + MINUTE;
    let expected: BTreeMap<String, Value> = want
        .iter()
        .filter(|(_, v)| start_ms(v) >= first)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    wait_sink(&seen, before, &expected, &w);
    wait_sink(&seen2, 0, &expected, &w2);
    let applied = s.wait_checkpoints("run", "e2e", &w, "the reset applied", |c| {
        c.reset.as_deref() == Some(at.as_str())
    });
    for c in &applied {
        assert_eq!(c.results_from, Some(first));
    }
    w.stop();
    w2.stop();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    reader2.join().unwrap();
    let after_reset = sink(&seen, before);
    let new_job = sink(&seen2, 0);
    assert!(
        after_reset == new_job,
        "the reset job's results differ from a new job's"
    );
    assert!(
        after_reset == expected,
        "results from T differ from weir run"
    );
}
