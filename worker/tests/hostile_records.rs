//! Hostile records on a real broker (nisshi) with real worker processes: a topic of 10,000
//! records, hostile ones of every category weir refuses mixed with good ones, is processed by
//! the same job as a topic of the good records alone. The workers never stop, every hostile
//! record is in the dead-letter topic with its reason (counted per reason), and the results of
//! the good records are byte-identical to the clean run's.
//!
//! The categories are one table ([`hostile_rows`]): add a row for a new reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::broker::{create_topic, Broker};
use support::workers::http_get;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 4;
const TOTAL: usize = 10_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// The sink producer's limit in this test's job, so that a result can be too large for it
/// without records the engine refuses as too large.
const SINK_MAX_BYTES: usize = 60_000;

/// What the test knows of the record a hostile row builds: its event time (that of the good
/// record before it in its partition) and a number unique to it.
struct At {
    ts: String,
    n: usize,
}

/// One category of hostile record: the reason it must be dead-lettered with, how many to
/// write, and the record (key, value).
struct Row {
    reason: &'static str,
    count: usize,
    /// A result too large for the sink, dead-lettered in the record's stead (its record is
    /// counted; the dead letter names the window, not a source offset).
    result: bool,
    make: fn(&At) -> (Vec<u8>, Vec<u8>),
}

fn json(v: serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn good_key(_: &At) -> Vec<u8> {
    b"m1".to_vec()
}

/// Every category weir refuses, plus results too large for the sink. A row for a new reason
/// goes here; its count is what the test expects in the dead-letter topic.
fn hostile_rows() -> Vec<Row> {
    vec![
        Row {
            // A year typo: more than window.maxAheadOfClock (24 h) ahead of the worker's clock.
            reason: "future",
            count: 20,
            result: false,
            make: |a| {
                let ts = weir_engine::time::format(1_906_761_600_000 + a.n as i64); // 2030-06-04
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": ts, "merchant": "m1", "amount": 1, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            // Beyond what weir can write back as RFC 3339 (its window would end in year 10000).
            reason: "invalid_event_time",
            count: 10,
            result: false,
            make: |a| {
                let v =
                    r#"{"ts":"9999-12-31T23:59:59Z","merchant":"m1","amount":1,"customer":"c"}"#;
                (good_key(a), v.as_bytes().to_vec())
            },
        },
        Row {
            // The event-time field twice: parsers disagree on which one counts.
            reason: "duplicate_field",
            count: 20,
            result: false,
            make: |a| {
                let v = format!(
                    "{{\"ts\":\"{}\",\"merchant\":\"m1\",\"amount\":1,\"customer\":\"c\",\"ts\":\"{}\"}}",
                    a.ts, a.ts
                );
                (good_key(a), v.into_bytes())
            },
        },
        Row {
            reason: "invalid_json",
            count: 60,
            result: false,
            make: |a| {
                (
                    good_key(a),
                    format!("{{\"ts\":\"{}\",\"merchant\":", a.ts).into_bytes(),
                )
            },
        },
        Row {
            reason: "invalid_json",
            count: 40,
            result: false,
            make: |a| {
                let mut v = format!(
                    "{{\"ts\":\"{}\",\"merchant\":\"m1\",\"amount\":1,\"customer\":\"",
                    a.ts
                )
                .into_bytes();
                v.extend_from_slice(&[0xff, 0xfe, 0x80]);
                v.extend_from_slice(b"\"}");
                (good_key(a), v)
            },
        },
        Row {
            reason: "invalid_json",
            count: 20,
            result: false,
            make: |a| {
                let deep = "[".repeat(100_000);
                (
                    good_key(a),
                    format!(
                        "{{\"ts\":\"{}\",\"merchant\":\"m1\",\"amount\":1,\"x\":{deep}",
                        a.ts
                    )
                    .into_bytes(),
                )
            },
        },
        Row {
            reason: "invalid_json",
            count: 30,
            result: false,
            make: |a| (good_key(a), b"[1,2,3]".to_vec()),
        },
        Row {
            reason: "invalid_json",
            count: 30,
            result: false,
            make: |a| (good_key(a), Vec::new()),
        },
        Row {
            reason: "invalid_json",
            count: 3,
            result: false,
            make: |a| {
                // Over 2 MB, and unterminated: its dead letter is cut to fit.
                let pad = "p".repeat(2_100_000);
                (
                    good_key(a),
                    format!("{{\"ts\":\"{}\",\"merchant\":\"m1\",\"pad\":\"{pad}", a.ts)
                        .into_bytes(),
                )
            },
        },
        Row {
            reason: "wrong_type",
            count: 5,
            result: false,
            make: |a| {
                let s = "9".repeat(900_000) + "x";
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": "m1", "amount": s, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "wrong_type",
            count: 3,
            result: false,
            make: |a| {
                let s = "a".repeat(2_200_000);
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": "m1", "amount": s, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "wrong_type",
            count: 60,
            result: false,
            make: |a| {
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": "m1", "amount": {"x": 1}, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "wrong_type",
            count: 40,
            result: false,
            make: |a| {
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": ["m1"], "amount": 1, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "missing_field",
            count: 60,
            result: false,
            make: |a| {
                (
                    good_key(a),
                    json(serde_json::json!({"ts": a.ts, "merchant": "m1", "customer": "c"})),
                )
            },
        },
        Row {
            reason: "missing_field",
            count: 40,
            result: false,
            make: |a| {
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": null, "amount": 1, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "invalid_event_time",
            count: 60,
            result: false,
            make: |a| {
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": "yesterday", "merchant": "m1", "amount": 1, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "late",
            count: 60,
            result: false,
            make: |a| {
                let ts = weir_engine::time::format(T0 - 3_600_000 + a.n as i64);
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": ts, "merchant": "m1", "amount": 1, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "too_large",
            count: 5,
            result: false,
            make: |a| {
                // A group value over the bound on what one record keeps in a result.
                let merchant = format!("{}-{}", a.n, "g".repeat(600_000));
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": merchant, "amount": 1, "customer": "c"}),
                    ),
                )
            },
        },
        Row {
            reason: "too_large",
            count: 5,
            result: false,
            make: |a| {
                // A value `first`/`last` would keep, over the bound.
                let customer = "c".repeat(70_000);
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": "m1", "amount": 1, "customer": customer}),
                    ),
                )
            },
        },
        Row {
            reason: "too_large",
            count: 4,
            result: true,
            make: |a| {
                // Accepted (20 KB group, 20 KB kept twice), but its result is over the sink's limit.
                let merchant = format!("big-{}-{}", a.n, "b".repeat(20_000));
                let customer = "k".repeat(20_000);
                (
                    good_key(a),
                    json(
                        serde_json::json!({"ts": a.ts, "merchant": merchant, "amount": 1, "customer": customer}),
                    ),
                )
            },
        },
    ]
}

/// The merchant of good record `i`: its records are all in partition `merchant % 4`
/// (co-partitioned, as the job declares).
fn merchant_of(i: usize) -> usize {
    i * 7 % 50
}

/// A good record: merchant, amount and customer from `i`, event time `t`.
fn good(i: usize, t: i64) -> (Vec<u8>, Vec<u8>) {
    let merchant = format!("m{}", merchant_of(i));
    let value = serde_json::json!({
        "ts": weir_engine::time::format(t),
        "merchant": merchant,
        "amount": (i * 37 % 1000) as f64 / 10.0,
        "customer": format!("c{}", i * 13 % 97),
    });
    (merchant.into_bytes(), json(value))
}

/// (partition, key, value) in production order: the clean topic's records, and the hostile
/// topic's (the same good records in the same partitions and order, hostile ones between
/// them), and the hostile ones by reason.
type Recs = Vec<(i32, Vec<u8>, Vec<u8>)>;

fn topics() -> (Recs, Recs, BTreeMap<&'static str, usize>) {
    let rows = hostile_rows();
    let hostile_total: usize = rows.iter().map(|r| r.count).sum();
    let goods = TOTAL - hostile_total - PARTITIONS as usize;
    // Hostile records spread evenly among the good ones, after each partition's first.
    let mut schedule: Vec<usize> = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        schedule.extend(std::iter::repeat_n(r, row.count));
    }
    let every = goods / (hostile_total + 1);
    let (mut clean, mut hostile) = (Vec::new(), Vec::new());
    let mut expected = BTreeMap::new();
    let mut last_ts = vec![T0; PARTITIONS as usize];
    let mut next_hostile = schedule.iter();
    for i in 0..goods {
        let p = (merchant_of(i) % PARTITIONS as usize) as i32;
        let t = T0 + i as i64 * 5;
        let (k, v) = good(i, t);
        clean.push((p, k.clone(), v.clone()));
        hostile.push((p, k, v));
        last_ts[p as usize] = t;
        if i >= 8 && i % every == 0 {
            if let Some(&r) = next_hostile.next() {
                let at = At {
                    ts: weir_engine::time::format(last_ts[p as usize]),
                    n: hostile.len(),
                };
                let (k, v) = (rows[r].make)(&at);
                hostile.push((p, k, v));
                *expected.entry(rows[r].reason).or_insert(0) += 1;
            }
        }
    }
    assert!(
        next_hostile.next().is_none(),
        "not every hostile record placed"
    );
    // One record per partition far ahead closes every window.
    for p in 0..PARTITIONS {
        let (k, v) = good(0, T0 + 86_400_000);
        clean.push((p, k.clone(), v.clone()));
        hostile.push((p, k, v));
    }
    assert_eq!(hostile.len(), TOTAL);
    (clean, hostile, expected)
}

fn job_yaml(name: &str, bootstrap: &str, topic: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: {topic}, startFrom: earliest}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: [merchant]
  repartition: {{coPartitioned: true}}
  window: {{type: tumbling, size: 10s, allowedLateness: 2s}}
  aggregations:
    - {{name: n, fn: count}}
    - {{name: total, fn: sum, field: amount}}
    - {{name: p90, fn: percentile, field: amount, quantile: 0.9}}
    - {{name: customers, fn: countDistinct, field: customer}}
    - {{name: first, fn: first, field: customer}}
    - {{name: last, fn: last, field: customer}}
  sink:
    kafka: {{topic: {topic}-out, properties: {{message.max.bytes: "{SINK_MAX_BYTES}"}}}}
  deadLetter: {{kafka: {{topic: {topic}-dlq}}}}
  parallelism: 2
  checkpoint: {{interval: 1s, store: {{configMap: {{}}}}}}
"#
    )
}

fn produce(bootstrap: &str, topic: &str, recs: &Recs) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // One request at a time: nisshi 0.8.1 may store pipelined batches out of order and
        // refuse the later one (OutOfOrderSequenceNumber), a fatal error for this producer.
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "10")
        .create()
        .unwrap();
    for (part, k, v) in recs {
        let rec = BaseRecord::to(topic).key(k).payload(v).partition(*part);
        // Waits while the queue is full; any other error (a fatal error of the idempotent
        // producer fails every later send) fails the test instead of hanging it.
        weir_worker::kafka::send_when_room(&p, rec)
            .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// A topic's messages: (key, value, headers).
type Messages = Vec<(Vec<u8>, Vec<u8>, BTreeMap<String, String>)>;

/// Every message of `topic` (its high watermarks as of now).
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Messages {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "hostile-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
    }
    c.assign(&tpl).unwrap();
    let mut next: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().any(|(p, n)| *n < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: at {next:?} of {ends:?}"
        );
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let at = next.get_mut(&m.partition()).unwrap();
        if m.offset() < *at {
            continue;
        }
        // Several producers write these topics: re-read a hole the broker's answer skipped.
        if m.offset() > *at {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, m.partition(), Offset::Offset(*at))
                .unwrap();
            c.seek_partitions(tpl, Duration::from_secs(10)).unwrap();
            continue;
        }
        *at = m.offset() + 1;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
            headers,
        ));
    }
    out
}

/// Worker processes of one job; each must still be running at the end.
struct Workers(Vec<Child>);

impl Workers {
    fn start(dir: &std::path::Path, name: &str, yaml: &str) -> Workers {
        let job = dir.join(format!("{name}.yaml"));
        std::fs::write(&job, yaml).unwrap();
        let plan = weir_crds::assignment::Assignment::round_robin(PARTITIONS, 2, 1);
        let assignment = dir.join(format!("{name}-assignment.json"));
        std::fs::write(&assignment, serde_json::to_string(&plan).unwrap()).unwrap();
        let children = (0..2)
            .map(|ordinal| {
                let log = std::fs::File::create(dir.join(format!("{name}-{ordinal}.log"))).unwrap();
                Command::new(WEIR)
                    .args(["worker", "--job"])
                    .arg(&job)
                    .arg("--assignment")
                    .arg(&assignment)
                    .args(["--ordinal", &ordinal.to_string(), "--listen", "127.0.0.1:0"])
                    .arg("--checkpoint-dir")
                    .arg(dir.join("checkpoints"))
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap()
            })
            .collect();
        Workers(children)
    }

    /// Panics if a worker exited.
    fn assert_running(&mut self, what: &str, dir: &std::path::Path) {
        for (i, c) in self.0.iter_mut().enumerate() {
            if let Some(status) = c.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join(format!("{what}-{i}.log")))
                    .unwrap_or_default();
                panic!("{what} worker {i} exited ({status}):\n{log}");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Results by key, the windows of the records that close everything left out.
fn results(msgs: &Messages) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let end = weir_engine::time::format(T0 + 86_400_000);
    msgs.iter()
        .filter(|(k, _, _)| !String::from_utf8_lossy(k).contains(&end))
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn hostile_records_are_dead_lettered_and_leave_the_good_results_unchanged() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (clean, hostile, expected) = topics();
    for topic in ["clean", "hostile"] {
        // Room for the records over 2 MB (Kafka's default max.message.bytes is ~1 MB).
        let mut settings = weir_worker::kafka::ClientSettings::default();
        settings.set("bootstrap.servers", broker.bootstrap.as_str());
        let source = weir_crds::plan::NewTopic {
            name: topic.to_string(),
            partitions: PARTITIONS,
            replication_factor: None,
            configs: [("max.message.bytes".to_string(), "10000000".to_string())].into(),
        };
        weir_worker::tools::create_topic_with(&settings, &source).unwrap();
        create_topic(WEIR, &broker.bootstrap, &format!("{topic}-out"), 2);
        create_topic(WEIR, &broker.bootstrap, &format!("{topic}-dlq"), 1);
    }
    let mut clean_workers = Workers::start(
        dir.path(),
        "clean",
        &job_yaml("clean", &broker.bootstrap, "clean"),
    );
    let mut hostile_workers = Workers::start(
        dir.path(),
        "hostile",
        &job_yaml("hostile", &broker.bootstrap, "hostile"),
    );
    produce(&broker.bootstrap, "clean", &clean);
    produce(&broker.bootstrap, "hostile", &hostile);
    // Every record is in its topic (the broker took the large ones too).
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    for (topic, n) in [("clean", clean.len()), ("hostile", hostile.len())] {
        let stored: i64 = (0..PARTITIONS)
            .map(|p| {
                let (low, high) = c
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum();
        assert_eq!(stored, n as i64, "records in {topic}");
    }

    // Until both have written every window of the clean run (and as many dead letters as
    // written), or a deadline.
    let hostile_total: usize = expected.values().sum();
    let result_rows: usize = hostile_rows()
        .iter()
        .filter(|r| r.result)
        .map(|r| r.count)
        .sum();
    let deadline = Instant::now() + Duration::from_secs(180);
    let (want, got, dead) = loop {
        std::thread::sleep(Duration::from_secs(2));
        clean_workers.assert_running("clean", dir.path());
        hostile_workers.assert_running("hostile", dir.path());
        let want = results(&read_all(&broker.bootstrap, "clean-out", 2));
        let got = results(&read_all(&broker.bootstrap, "hostile-out", 2));
        let dead = read_all(&broker.bootstrap, "hostile-dlq", 1);
        let done = want.len() > 100
            && want.keys().all(|k| got.contains_key(k))
            && dead.len() >= hostile_total;
        if done || Instant::now() > deadline {
            eprintln!(
                "{} clean results, {} hostile results, {} of {hostile_total} dead letters",
                want.len(),
                got.len(),
                dead.len()
            );
            break (want, got, dead);
        }
    };
    clean_workers.assert_running("clean", dir.path());
    hostile_workers.assert_running("hostile", dir.path());
    assert!(
        read_all(&broker.bootstrap, "clean-dlq", 1).is_empty(),
        "the clean run dead-lettered"
    );

    let seen: BTreeMap<&str, usize> = dead.iter().fold(BTreeMap::new(), |mut m, (_, _, h)| {
        *m.entry(h.get("weir.reason").map_or("", String::as_str))
            .or_insert(0) += 1;
        m
    });
    eprintln!("dead letters by reason: {seen:?}; written: {expected:?}");
    // The good records' results, byte for byte.
    assert!(want.len() > 100, "only {} clean results", want.len());
    assert_eq!(
        got.len(),
        want.len(),
        "result windows: hostile run vs clean run"
    );
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "window {}", String::from_utf8_lossy(k));
    }

    // Every hostile record dead-lettered once, with its reason.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut places = std::collections::BTreeSet::new();
    let mut results_too_large = 0;
    for (k, v, h) in &dead {
        let reason = h.get("weir.reason").cloned().unwrap_or_default();
        *reasons.entry(reason.clone()).or_insert(0) += 1;
        let error = &h["weir.error"];
        assert!(
            error.len() <= weir_engine::MAX_DETAIL_BYTES,
            "a {}-byte weir.error",
            error.len()
        );
        assert!(
            k.len() + v.len() < 1_000_000,
            "a dead letter of {} bytes",
            k.len() + v.len()
        );
        if h.contains_key("weir.window.start") {
            results_too_large += 1;
            assert_eq!(reason, "too_large");
        } else {
            assert!(
                places.insert((
                    h["weir.source.partition"].clone(),
                    h["weir.source.offset"].clone()
                )),
                "dead-lettered twice"
            );
        }
        if v.len() > 1_000_000 - 10_000 || h.contains_key("weir.truncated") {
            assert!(
                h.contains_key("weir.value.size"),
                "a cut dead letter without its size: {h:?}"
            );
        }
    }
    assert_eq!(
        results_too_large, result_rows,
        "results too large for the sink"
    );
    let truncated = dead
        .iter()
        .filter(|(_, _, h)| h.contains_key("weir.truncated"))
        .count();
    assert_eq!(
        truncated,
        3 + 3,
        "dead letters of records over 2 MB, cut to fit"
    );
    assert_eq!(
        reasons,
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<String, usize>>(),
        "dead letters by reason"
    );
    eprintln!(
        "{} windows equal; dead letters by reason: {reasons:?}",
        want.len()
    );
}

/// The value of an unlabelled metric in `/metrics`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let text = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits up to 120 s for `done`, checking `alive` on the way.
fn wait_for(what: &str, mut alive: impl FnMut(), mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        alive();
        assert!(Instant::now() < deadline, "waited 120 s for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_failing_partition_stops_alone_and_is_retried_from_its_checkpoint() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    for (topic, n) in [("solo", PARTITIONS), ("solo-out", 1), ("solo-dlq", 1)] {
        create_topic(WEIR, &broker.bootstrap, topic, n);
    }
    // Partition 1's checkpoint cannot be read: a directory where its file belongs.
    let blocker = dir.path().join("checkpoints/solo/partition-1.json");
    std::fs::create_dir_all(&blocker).unwrap();
    let port = support::broker::free_port();
    let job = dir.path().join("solo.yaml");
    std::fs::write(&job, job_yaml("solo", &broker.bootstrap, "solo")).unwrap();
    let assignment = dir.path().join("solo-assignment.json");
    let plan = weir_crds::assignment::Assignment::round_robin(PARTITIONS, 1, 1);
    std::fs::write(&assignment, serde_json::to_string(&plan).unwrap()).unwrap();
    let log = dir.path().join("solo.log");
    let mut worker = Workers(vec![Command::new(WEIR)
        .args(["worker", "--job"])
        .arg(&job)
        .arg("--assignment")
        .arg(&assignment)
        .args(["--ordinal", "0", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .env("RUST_LOG", "warn")
        .env("WEIR_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap()]);
    // Records of group `p<partition>` in each partition, then one far ahead to close windows.
    let mut recs: Recs = Vec::new();
    for i in 0..2_000usize {
        let p = (i % PARTITIONS as usize) as i32;
        let ts = weir_engine::time::format(T0 + i as i64 * 5);
        let v = serde_json::json!({"ts": ts, "merchant": format!("p{p}"), "amount": 1, "customer": "c"});
        recs.push((p, b"k".to_vec(), json(v)));
    }
    for p in 0..PARTITIONS {
        let ts = weir_engine::time::format(T0 + 86_400_000);
        let v = serde_json::json!({"ts": ts, "merchant": format!("p{p}"), "amount": 1, "customer": "c"});
        recs.push((p, b"k".to_vec(), json(v)));
    }
    produce(&broker.bootstrap, "solo", &recs);
    let groups = |bootstrap: &str| -> std::collections::BTreeSet<String> {
        read_all(bootstrap, "solo-out", 1)
            .iter()
            .map(|(_, v, _)| {
                let v: serde_json::Value = serde_json::from_slice(v).unwrap();
                v["group"]["merchant"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let running = |w: &mut Workers| w.assert_running("solo", dir.path());
    let bootstrap = broker.bootstrap.clone();
    // The other partitions go on: their results arrive while partition 1 keeps failing.
    wait_for(
        "the healthy partitions' results",
        || {},
        || {
            ["p0", "p2", "p3"]
                .iter()
                .all(|g| groups(&bootstrap).contains(*g))
        },
    );
    running(&mut worker);
    assert!(!groups(&bootstrap).contains("p1"), "partition 1 ran");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("partition failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{text}"));
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["partition"], 1, "{line}");
    let code = |path| http_get(port, path).map_or(0, |r| r.0);
    assert_eq!(code("/healthz"), 200);
    assert_eq!(code("/readyz"), 503);
    assert_eq!(metric(port, "weir_partitions_failing"), Some(1.0));
    assert!(metric(port, "weir_partition_failures_total") >= Some(1.0));

    // Once the cause is gone, its retry starts it from its checkpoint and the worker is ready.
    std::fs::remove_dir(&blocker).unwrap();
    wait_for(
        "partition 1 to recover",
        || {},
        || groups(&bootstrap).contains("p1") && code("/readyz") == 200,
    );
    running(&mut worker);
    assert_eq!(metric(port, "weir_partitions_failing"), Some(0.0));
}
