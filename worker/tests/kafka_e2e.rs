//! The worker runtime end to end, on a real Kafka-protocol broker (nisshi) with real worker
//! processes: results equal `weir run --input` on the same records, also when workers are
//! SIGKILLed and restarted (checkpoints in a directory, or on a real S3: SeaweedFS), bad and
//! late records reach the dead-letter topic, and an older owner is fenced out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use support::broker::Broker;
use support::seaweedfs::SeaweedFs;
use support::workers::{
    collect, collect_at, free_port, http_get, result_key, weir_run_input, Workers,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 4;
/// The repartition topic of the job `e2e` (two-stage scenarios).
const REPARTITION: &str = "weir.default.e2e.repartition";
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const END: &str = "zz-end";

/// One source record: key and value, in production order.
struct Rec {
    key: String,
    value: String,
    partition: Option<i32>,
}

/// `n` payments over 200 merchants, 5 ms of event time apart, up to 3 s out of order (under
/// the 5 s allowed lateness, so "late" means the same with 1 partition or 4), with bad records
/// of every kind and records 10 minutes late sprinkled in. Then one record per partition far
/// in the future, which closes every window (its own group is left out of comparisons).
fn records(n: usize, seed: u64) -> Vec<Rec> {
    records_over(n, seed, PARTITIONS, Spread::ByMerchant)
}

/// How records are spread over partitions.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Spread {
    /// Keyed by merchant: a merchant's records share a partition (co-partitioned).
    ByMerchant,
    /// Round-robin over the first `n` partitions, whatever the merchant: every merchant's
    /// records are in every one of them (the other partitions stay empty).
    RoundRobin(i32),
}

fn records_over(n: usize, seed: u64, partitions: i32, spread: Spread) -> Vec<Rec> {
    let mut s = seed | 1;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let ts = |t: i64| weir_engine::time::format(t);
    let mut out = Vec::with_capacity(n + 4);
    for i in 0..n {
        let r = rnd();
        let merchant = format!("m{}", r % 200);
        let base = T0 + i as i64 * 5;
        let amount = (rnd() % 100_000) as f64 / 100.0;
        let customer = format!("c{}", rnd() % 500);
        let value = if i % 997 == 5 {
            format!("{{\"ts\":\"{}\",\"merchant\":", ts(base))
        } else if i % 991 == 7 {
            serde_json::json!({"ts": ts(base), "merchant": merchant, "customer": customer})
                .to_string()
        } else if i % 983 == 11 {
            serde_json::json!({"ts": ts(base), "merchant": merchant, "amount": "lots", "customer": customer}).to_string()
        } else {
            // Out of order by up to 2.6 s (a permutation within blocks of 512 records), every
            // event time distinct: first/last never depend on how ties between partitions are
            // broken, which differs between Kafka and a file.
            let block = (i >> 9) as u64;
            let k = (block.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as usize;
            let t = if i > 5000 && i % 1009 == 3 {
                base - 600_000 + 1
            } else {
                T0 + 5 * ((i & !511) | ((i & 511) ^ k)) as i64
            };
            serde_json::json!({"ts": ts(t), "merchant": merchant, "amount": amount, "customer": customer}).to_string()
        };
        let partition = match spread {
            Spread::ByMerchant => None,
            Spread::RoundRobin(k) => Some((i % k as usize) as i32),
        };
        out.push(Rec {
            key: merchant,
            value,
            partition,
        });
    }
    let ends = match spread {
        Spread::ByMerchant => partitions,
        Spread::RoundRobin(k) => k,
    };
    for p in 0..ends {
        out.push(Rec {
            key: END.into(),
            value: serde_json::json!({"ts": ts(T0 + 86_400_000), "merchant": END, "amount": 0, "customer": "x"})
                .to_string(),
            partition: Some(p),
        });
    }
    out
}

fn job_yaml(bootstrap: &str, window: &str, store: &str) -> String {
    job_yaml_with(
        bootstrap,
        window,
        store,
        "[merchant]",
        "repartition: {coPartitioned: true}",
    )
}

/// `group`: the groupBy list; `extra`: more spec lines (indented by two spaces).
fn job_yaml_with(bootstrap: &str, window: &str, store: &str, group: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: e2e}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: in, startFrom: earliest}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: {group}
  {extra}
  window: {window}
  aggregations:
    - {{name: n, fn: count}}
    - {{name: total, fn: sum, field: amount}}
    - {{name: mean, fn: mean, field: amount}}
    - {{name: min, fn: min, field: amount}}
    - {{name: max, fn: max, field: amount}}
    - {{name: sd, fn: stddev, field: amount}}
    - {{name: customers, fn: countDistinct, field: customer}}
    - {{name: p90, fn: percentile, field: amount, quantile: 0.9}}
    - {{name: first, fn: first, field: customer}}
    - {{name: last, fn: last, field: customer}}
  sink: {{kafka: {{topic: out}}}}
  deadLetter: {{kafka: {{topic: dlq}}}}
  parallelism: 2
  checkpoint: {{interval: 1s, store: {store}}}
"#
    )
}

/// `weir run --input` over the same values: the expected results by key, and rejections by
/// reason.
fn reference(
    dir: &Path,
    job: &Path,
    recs: &[Rec],
) -> (BTreeMap<String, Value>, BTreeMap<String, usize>) {
    let rejects = dir.join("rejects.jsonl");
    let lines = recs.iter().map(|r| r.value.as_str());
    let mut results = BTreeMap::new();
    let end_of_data = weir_engine::time::format(T0 + 86_400_000);
    for v in weir_run_input(dir, job, lines, Some(&rejects)) {
        // The windows of the records that close everything never close themselves.
        let last = v["window"]["end"].as_str().unwrap_or_default() > end_of_data.as_str();
        if v["group"]["merchant"] != END && !last {
            assert!(
                results.insert(result_key(&v), v).is_none(),
                "duplicate in weir run"
            );
        }
    }
    let mut reasons = BTreeMap::new();
    for line in std::fs::read_to_string(&rejects).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        *reasons
            .entry(v["reason"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    (results, reasons)
}

fn create_topics(bootstrap: &str) {
    create_topics_with(bootstrap, PARTITIONS)
}

fn create_topics_with(bootstrap: &str, partitions: i32) {
    for (topic, n) in [
        ("in", partitions),
        ("out", 3),
        ("dlq", 1),
        (REPARTITION, partitions),
    ] {
        support::broker::create_topic(WEIR, bootstrap, topic, n);
    }
}

/// Produce in batches, pausing between them so workers run (and die) while data arrives.
fn produce(bootstrap: &str, recs: &[Rec], pause: Duration) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // One request at a time: nisshi 0.8.1 may store pipelined batches out of order and
        // refuse the later one (OutOfOrderSequenceNumber), a fatal error for this producer.
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "10")
        .create()
        .unwrap();
    for (i, r) in recs.iter().enumerate() {
        let mut rec = BaseRecord::to("in")
            .key(r.key.as_bytes())
            .payload(r.value.as_bytes());
        if let Some(part) = r.partition {
            rec = rec.partition(part);
        }
        // Waits while the queue is full; any other error (a fatal error of the idempotent
        // producer fails every later send) fails the test instead of hanging it.
        weir_worker::kafka::send_when_room(&p, rec)
            .unwrap_or_else(|e| panic!("producing the test's records: {e}"));
        if i % 20_000 == 19_999 {
            p.flush(Duration::from_secs(30)).unwrap();
            std::thread::sleep(pause);
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

struct Scenario<'a> {
    window: &'static str,
    /// Partitions of the source topic.
    partitions: i32,
    /// Worker processes.
    workers: usize,
    /// How records are spread over the partitions.
    spread: Spread,
    /// groupBy, and other spec lines (`repartition: ...`, `window idleTimeout`).
    group: &'static str,
    extra: &'static str,
    records: usize,
    kills: usize,
    /// Checkpoints on a SeaweedFS S3 (with the workers' environment for it) instead of a
    /// directory.
    s3: Option<(&'a mut SeaweedFs, Vec<(String, String)>)>,
}

/// Start the scenario's SeaweedFS again if it exited (as an S3 outage would look to the
/// workers, which retry); the end of its log goes to stderr.
fn revive_store(s: &mut Scenario) {
    if let Some((weed, _)) = s.s3.as_mut() {
        weed.revive();
    }
}

/// Run the scenario; returns the final results deduplicated by key (last wins) and every
/// dead letter.
fn run(mut s: Scenario) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store = match &s.s3 {
        Some((weed, _)) => format!(
            "{{objectStore: {{url: \"s3://{}/runs/{}\", endpoint: \"{}\", region: us-east-1}}}}",
            support::seaweedfs::BUCKET,
            std::process::id(),
            weed.endpoint
        ),
        None => "{configMap: {}}".to_string(),
    };
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        job_yaml_with(&broker.bootstrap, s.window, &store, s.group, s.extra),
    )
    .unwrap();
    let recs = records_over(s.records, 0x5eed ^ s.records as u64, s.partitions, s.spread);
    let two_stage = !s.extra.contains("coPartitioned: true");
    let (expected, expected_rejects) = reference(dir.path(), &job, &recs);
    let enough = if s.group == "[]" { 10 } else { 1000 };
    assert!(
        expected.len() > enough,
        "only {} results expected",
        expected.len()
    );

    create_topics_with(&broker.bootstrap, s.partitions);
    let assignment = dir.path().join("assignment.json");
    let mut plan = weir_crds::assignment::Assignment::round_robin(s.partitions, s.workers, 1);
    if two_stage {
        plan = plan.with_merge(REPARTITION, s.partitions, s.partitions);
    }
    std::fs::write(&assignment, serde_json::to_string(&plan).unwrap()).unwrap();
    let mut workers = Workers {
        dir: dir.path().to_path_buf(),
        job: job.clone(),
        assignment,
        env: s
            .s3
            .as_ref()
            .map(|(_, env)| env.clone())
            .unwrap_or_default(),
        checkpoint_dir: s.s3.is_none().then(|| dir.path().join("checkpoints")),
        running: Vec::new(),
        starts: 0,
        metrics_port: free_port(),
    };
    for ordinal in 0..s.workers {
        workers.start(ordinal);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let read_at: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (results, results_reader) =
        collect_at(&broker.bootstrap, "out", 3, stop.clone(), read_at.clone());
    let (dead, dead_reader) = collect(&broker.bootstrap, "dlq", 1, stop.clone());
    let bootstrap = broker.bootstrap.clone();
    let pause = if s.kills > 0 {
        Duration::from_millis(700)
    } else {
        Duration::ZERO
    };
    let produced = recs.len() as i64;
    let producer = std::thread::spawn(move || produce(&bootstrap, &recs, pause));

    // Kill workers at random moments while the data arrives, and restart them.
    let mut rnd = 0x9e37_79b9_7f4a_7c15u64;
    for k in 0..s.kills {
        rnd ^= rnd << 13;
        rnd ^= rnd >> 7;
        rnd ^= rnd << 17;
        std::thread::sleep(Duration::from_millis(300 + rnd % 2000));
        revive_store(&mut s);
        let ordinal = workers.kill((rnd as usize >> 8) % workers.running.len());
        if k % 3 == 2 {
            std::thread::sleep(Duration::from_millis(500)); // sometimes both are down
        }
        workers.start(ordinal);
    }
    producer.join().unwrap();
    // Every record the producer had acknowledged is in the source topic (else missing windows
    // would be the broker's doing, not the workers').
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let stored: Vec<i64> = (0..s.partitions)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks("in", p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .collect();
    assert_eq!(
        stored.iter().sum::<i64>(),
        produced,
        "records in the source topic per partition: {stored:?}"
    );

    // Wait until every expected window is in the sink.
    let deadline = Instant::now() + Duration::from_secs(240);
    let final_results = loop {
        let got: BTreeMap<String, Value> = results
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v, _)| (k.clone(), serde_json::from_str(v).unwrap()))
            .collect();
        if expected.keys().all(|k| got.contains_key(k)) {
            break got;
        }
        revive_store(&mut s);
        if Instant::now() >= deadline {
            // Where the stall is: the reader behind the topic, or messages never in it.
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &broker.bootstrap)
                .create()
                .unwrap();
            let ends: Vec<_> = (0..3)
                .map(|p| c.fetch_watermarks("out", p, Duration::from_secs(10)))
                .collect();
            eprintln!(
                "sink topic `out`: read up to {:?}; (low, high) watermarks now {ends:?}; \
                 workers (ordinal, process): {:?}",
                read_at.lock().unwrap(),
                workers.alive()
            );
        }
        assert!(
            Instant::now() < deadline,
            "after 240 s only {} of {} windows arrived; missing, for example: {:?}\n{}{}",
            expected.keys().filter(|k| got.contains_key(*k)).count(),
            expected.len(),
            expected
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(8)
                .collect::<Vec<_>>(),
            workers.logs(),
            s.s3.as_mut()
                .map(|(weed, _)| weed.status())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    if s.kills == 0 {
        // Rejected records after a partition's last window may still be on their way (a
        // worker behind on a loaded machine): wait for as many dead letters as `weir run`
        // rejected, as for the results, before stopping the workers. Fewer after the deadline
        // fails below, with the reasons counted.
        let want: usize = expected_rejects.values().sum();
        let deadline = Instant::now() + Duration::from_secs(60);
        while dead.lock().unwrap().len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if s.kills == 0 && s.workers == 2 {
        check_metrics(workers.metrics_port);
    }
    workers.stop();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    results_reader.join().unwrap();
    dead_reader.join().unwrap();

    // Keys name their content: each message's key is its value's (group, window start, end).
    let all = results.lock().unwrap();
    for (k, v, _) in all.iter() {
        assert_eq!(*k, result_key(&serde_json::from_str(v).unwrap()));
    }
    // The deduplicated results are exactly the expected ones: nothing missing, nothing extra,
    // every value equal.
    let got: BTreeMap<&String, &Value> = final_results.iter().collect();
    let want: BTreeMap<&String, &Value> = expected.iter().collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(**k))
        .take(3)
        .collect();
    assert!(extra.is_empty(), "unexpected windows: {extra:?}");
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "window {k}");
    }
    eprintln!(
        "{} windows equal to weir run --input ({} partitions, {} workers, {}); {} result \
         messages ({} duplicates after {} kills)",
        expected.len(),
        s.partitions,
        s.workers,
        if two_stage { "two stages" } else { "one stage" },
        all.len(),
        all.len() - final_results.len(),
        s.kills
    );

    let dead = dead.lock().unwrap();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut places = BTreeSet::new();
    for (_, _, h) in dead.iter() {
        *reasons.entry(h["weir.reason"].clone()).or_insert(0) += 1;
        assert_eq!(h["weir.source.topic"], "in");
        assert!(h.contains_key("weir.error"));
        places.insert((
            h["weir.source.partition"].clone(),
            h["weir.source.offset"].clone(),
        ));
    }
    if s.kills == 0 {
        // Every rejected record exactly once, with the reason `weir run` gives.
        assert_eq!(reasons, expected_rejects, "dead letters by reason");
        assert_eq!(places.len(), dead.len(), "a record dead-lettered twice");
    } else {
        // After crashes a dead letter may be repeated, never lost.
        let distinct: usize = places.len();
        let mut distinct_reasons: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for (_, _, h) in dead.iter() {
            distinct_reasons
                .entry(h["weir.reason"].clone())
                .or_default()
                .insert((
                    h["weir.source.partition"].clone(),
                    h["weir.source.offset"].clone(),
                ));
        }
        let by_reason: BTreeMap<&String, usize> =
            distinct_reasons.iter().map(|(r, p)| (r, p.len())).collect();
        assert_eq!(
            distinct,
            expected_rejects.values().sum::<usize>(),
            "distinct dead letters; by reason {by_reason:?}, expected {expected_rejects:?}"
        );
    }
    for reason in ["invalid_json", "missing_field", "wrong_type", "late"] {
        assert!(
            reasons.contains_key(reason),
            "no {reason} dead letter: {reasons:?}"
        );
    }
}

/// The running worker's /metrics passes `promtool check metrics` and shows its partitions.
fn check_metrics(port: u16) {
    let get = |path| http_get(port, path).unwrap_or_else(|| panic!("{path} answered"));
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200);
    let (status, body) = get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        r#"weir_records_in_total{topic="in",partition="0"}"#,
        r#"weir_records_in_total{topic="in",partition="2"}"#,
        "weir_results_emitted_total",
        "weir_checkpoint_duration_seconds_bucket",
        "weir_watermark_seconds",
        "weir_consumer_lag_records",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle}:\n{body}");
    }
    let said = support::promtool::check(&body);
    assert!(said.is_empty(), "promtool check metrics: {said}");
}

#[test]
fn workers_on_a_real_broker_equal_weir_run_on_the_same_records() {
    run(Scenario {
        window: "{type: tumbling, size: 10s, allowedLateness: 5s}",
        partitions: PARTITIONS,
        workers: 2,
        spread: Spread::ByMerchant,
        group: "[merchant]",
        extra: "repartition: {coPartitioned: true}",
        records: 200_000,
        kills: 0,
        s3: None,
    });
}

#[test]
fn killed_and_restarted_workers_give_the_clean_results() {
    run(Scenario {
        window: "{type: hopping, size: 30s, slide: 10s, allowedLateness: 5s}",
        partitions: PARTITIONS,
        workers: 2,
        spread: Spread::ByMerchant,
        group: "[merchant]",
        extra: "repartition: {coPartitioned: true}",
        records: 200_000,
        kills: 6,
        s3: None,
    });
}

#[test]
fn killed_workers_with_checkpoints_on_s3_give_the_clean_results() {
    use support::seaweedfs::{ACCESS_KEY, SECRET_KEY};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut weed = rt.block_on(SeaweedFs::start(|endpoint| async move {
        use weir_worker::checkpoint::{CheckpointStore, ObjectStoreConfig, ObjectStoreStore};
        let store = ObjectStoreStore::new(&ObjectStoreConfig {
            url: format!("s3://{}/ready", support::seaweedfs::BUCKET),
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            allow_http: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ..ObjectStoreConfig::default()
        })
        .map_err(|e| e.to_string())?;
        store.get(0).await.map(|_| ()).map_err(|e| e.to_string())
    }));
    run(Scenario {
        window: "{type: session, gap: 500ms, allowedLateness: 5s}",
        partitions: PARTITIONS,
        workers: 2,
        spread: Spread::ByMerchant,
        group: "[merchant]",
        extra: "repartition: {coPartitioned: true}",
        records: 200_000,
        kills: 5,
        s3: Some((
            &mut weed,
            vec![
                ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ],
        )),
    });
}

/// Two workers believe they own the same partitions: the one with the newer assignment epoch
/// takes the checkpoints over, and the older one stops (DESIGN.md invariant 2).
#[test]
fn an_older_owner_is_fenced_out_by_a_newer_epoch() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        job_yaml(
            &broker.bootstrap,
            "{type: tumbling, size: 10s, allowedLateness: 5s}",
            "{configMap: {}}",
        ),
    )
    .unwrap();
    create_topics(&broker.bootstrap);
    produce(&broker.bootstrap, &records(20_000, 7), Duration::ZERO);
    let checkpoints = dir.path().join("checkpoints");
    let start = |name: &str, epoch: i64| {
        let assignment = dir.path().join(format!("assignment-{name}.json"));
        std::fs::write(
            &assignment,
            format!(r#"{{"epoch": {epoch}, "workers": [[0, 1, 2, 3]]}}"#),
        )
        .unwrap();
        Command::new(WEIR)
            .args(["worker", "--job"])
            .arg(&job)
            .arg("--assignment")
            .arg(&assignment)
            // A short handoff timeout: the old owner never sees the new assignment (another
            // file), so the new one takes the partitions after it, and the old one, fenced while
            // its assignment still gives them, gives up after it.
            .args([
                "--ordinal",
                "0",
                "--listen",
                "127.0.0.1:0",
                "--handoff-timeout",
                "2",
                "--checkpoint-dir",
            ])
            .arg(&checkpoints)
            .env("HOSTNAME", format!("{name}-0"))
            // WEIR_E2E_WORKER_LOG=info (or debug) to see more of the workers on a failure.
            .env(
                "RUST_LOG",
                std::env::var("WEIR_E2E_WORKER_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let owners = || -> Vec<(i64, String)> {
        (0..PARTITIONS)
            .map(|p| {
                let path = checkpoints.join("e2e").join(format!("partition-{p}.json"));
                let v: Value = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null);
                let cp = &v["checkpoint"];
                (
                    cp["epoch"].as_i64().unwrap_or(-1),
                    cp["owner"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                owners()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut old = start("old", 1);
    wait_for("the old owner's checkpoints", &|| {
        owners().iter().all(|(e, o)| *e == 1 && o == "old-0")
    });
    let mut new = start("new", 2);
    wait_for("the new owner's checkpoints", &|| {
        owners().iter().all(|(e, o)| *e == 2 && o == "new-0")
    });

    // The old worker finds out at its next checkpoint write and stops every partition; as its
    // assignment still gives it them and no newer one comes within the handoff timeout, it
    // exits with an error so that its pod restarts and reads the assignment afresh.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = old.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old owner kept running");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut old.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "old owner exited successfully:\n{log}");
    assert!(log.contains("newer owner"), "{log}");
    assert!(log.contains("epoch 2"), "{log}");

    // The newer owner is unaffected and keeps checkpointing.
    std::thread::sleep(Duration::from_secs(2));
    assert!(new.try_wait().unwrap().is_none(), "the new owner stopped");
    assert!(
        owners().iter().all(|(e, o)| *e == 2 && o == "new-0"),
        "{:?}",
        owners()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &new.id().to_string()])
        .status();
    assert!(
        new.wait().unwrap().success(),
        "graceful stop of the new owner failed"
    );
}

/// Groups that span partitions (DESIGN.md invariant 5): records round-robin over 8 partitions,
/// so every merchant is in all of them; grouped by merchant, and one global group. Two stages
/// give the results of `weir run --input` whatever the number of workers.
#[test]
fn two_stage_jobs_equal_weir_run_with_1_2_3_and_8_workers() {
    for (group, workers) in [
        ("[merchant]", 1),
        ("[merchant]", 2),
        ("[merchant]", 3),
        ("[merchant]", 8),
        ("[]", 1),
        ("[]", 3),
        ("[]", 8),
    ] {
        run(Scenario {
            window: "{type: tumbling, size: 10s, allowedLateness: 5s}",
            partitions: 8,
            workers,
            spread: Spread::RoundRobin(8),
            group,
            extra: "",
            records: 40_000,
            kills: 0,
            s3: None,
        });
    }
}

/// The kill test of the runtime, for a two-stage job: workers running both stages are killed
/// at random; the deduplicated results equal a clean run.
#[test]
fn killed_two_stage_workers_give_the_clean_results() {
    run(Scenario {
        window: "{type: hopping, size: 30s, slide: 10s, allowedLateness: 5s}",
        partitions: PARTITIONS,
        workers: 2,
        spread: Spread::RoundRobin(PARTITIONS),
        group: "[merchant]",
        extra: "",
        records: 200_000,
        kills: 6,
        s3: None,
    });
}

/// A source partition that never gets a record does not hold the second stage back beyond the
/// idle timeout: every window arrives (without idleness none would).
#[test]
fn an_idle_source_partition_does_not_stall_two_stage_results() {
    run(Scenario {
        window: "{type: tumbling, size: 10s, allowedLateness: 5s, idleTimeout: 2s}",
        partitions: 4,
        workers: 2,
        spread: Spread::RoundRobin(3),
        group: "[merchant]",
        extra: "",
        records: 40_000,
        kills: 0,
        s3: None,
    });
}
