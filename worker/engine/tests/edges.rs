//! Hand-written edge cases, each pinned to the exact output a person would compute by hand.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use weir_engine::{Engine, JobPlan, Record, RejectReason};

#[path = "support/plan.rs"]
mod support;
use support::plan;

const MILLIS: &str = "{field: t, format: epochMillis}";
const COUNT: &str = "[{name: n, fn: count}]";

/// Run lines as partition 0; results as parsed JSON, and rejections.
fn run(plan: JobPlan, lines: &[Value]) -> (Vec<Value>, Vec<(usize, RejectReason)>) {
    run_text(
        plan,
        &lines.iter().map(Value::to_string).collect::<Vec<_>>(),
    )
}

fn run_text(plan: JobPlan, lines: &[String]) -> (Vec<Value>, Vec<(usize, RejectReason)>) {
    let run = feed(plan, None, lines);
    (run.results, run.rejected)
}

/// What an engine gave for some lines, up to the end of its input.
struct Run {
    /// Result records, parsed.
    results: Vec<Value>,
    /// Their sink keys, as written.
    keys: Vec<String>,
    /// The result records, as written.
    texts: Vec<String>,
    /// (line, reason) of each refused line.
    rejected: Vec<(usize, RejectReason)>,
}

/// Lines as partition 0 of an engine whose wall clock reads `clock` (if given).
fn feed(plan: JobPlan, clock: Option<i64>, lines: &[String]) -> Run {
    let mut engine = Engine::new(plan, [0]);
    let mut rejected = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(now) = clock {
            engine.set_wall_clock(now);
        }
        let rec = Record {
            partition: 0,
            offset: i as i64,
            key: None,
            timestamp: None,
            value: line.as_bytes(),
        };
        if let Err(r) = engine.process(&rec) {
            rejected.push((i, r.reason));
        }
    }
    engine.finish();
    let results = engine.take_results();
    Run {
        results: results
            .iter()
            .map(|r| serde_json::from_str(&r.to_json(engine.plan())).unwrap())
            .collect(),
        keys: results.iter().map(|r| r.key_json(engine.plan())).collect(),
        texts: results.iter().map(|r| r.to_json(engine.plan())).collect(),
        rejected,
    }
}

fn windows(results: &[Value]) -> Vec<(String, String, Value)> {
    results
        .iter()
        .map(|r| {
            (
                r["window"]["start"].as_str().unwrap()[11..23].to_string(),
                r["window"]["end"].as_str().unwrap()[11..23].to_string(),
                r["values"]["n"].clone(),
            )
        })
        .collect()
}

fn w(start: &str, end: &str, n: u64) -> (String, String, Value) {
    (start.to_string(), end.to_string(), json!(n))
}

#[test]
fn a_record_exactly_on_a_boundary_opens_the_next_window() {
    let p = plan("{type: tumbling, size: 1m}", "[]", COUNT, MILLIS);
    let (out, rej) = run(p, &[json!({"t": 59_999}), json!({"t": 60_000})]);
    assert!(rej.is_empty());
    assert_eq!(
        windows(&out),
        [
            w("00:00:00.000", "00:01:00.000", 1),
            w("00:01:00.000", "00:02:00.000", 1)
        ]
    );
}

#[test]
fn lateness_exactly_at_the_boundary() {
    let p = || {
        plan(
            "{type: tumbling, size: 1m, allowedLateness: 10s}",
            "[]",
            COUNT,
            MILLIS,
        )
    };
    // Watermark 69_999 - 10_000 = 59_999 < 60_000: the first window is still open.
    let (out, rej) = run(p(), &[json!({"t": 69_999}), json!({"t": 1})]);
    assert!(rej.is_empty());
    assert_eq!(out[0]["values"]["n"], 1);
    assert_eq!(out[0]["window"]["start"], "1970-01-01T00:00:00.000Z");
    // Watermark 70_000 - 10_000 = 60_000 reaches the end of [0, 60 000): closed, so late.
    let (out, rej) = run(p(), &[json!({"t": 70_000}), json!({"t": 59_999})]);
    assert_eq!(rej, [(1, RejectReason::Late)]);
    assert_eq!(windows(&out), [w("00:01:00.000", "00:02:00.000", 1)]);
}

#[test]
fn a_window_closes_as_soon_as_the_watermark_reaches_its_end() {
    let mut e = Engine::new(
        plan("{type: tumbling, size: 10s}", "[]", COUNT, MILLIS),
        [0],
    );
    let mut feed = |t: i64| {
        let v = json!({ "t": t }).to_string();
        let rec = Record {
            partition: 0,
            offset: 0,
            key: None,
            timestamp: None,
            value: v.as_bytes(),
        };
        e.process(&rec).unwrap();
        e.take_results().len()
    };
    assert_eq!(feed(5_000), 0);
    assert_eq!(feed(9_999), 0);
    assert_eq!(feed(10_000), 1, "watermark 10 000 closes [0, 10 000)");
}

#[test]
fn sessions_merge_when_a_record_bridges_them() {
    let p = plan(
        "{type: session, gap: 10s, allowedLateness: 30s}",
        "[u]",
        "[{name: n, fn: count}, {name: first, fn: first, field: p}, {name: last, fn: last, field: p}]",
        MILLIS,
    );
    let (out, rej) = run(
        p,
        &[
            json!({"t": 0, "u": "a", "p": "x"}),
            json!({"t": 25_000, "u": "a", "p": "z"}),
            // 0..10 s and 25..35 s are apart; 9 s and 17 s bridge them (gaps 9, 8, 8 < 10).
            json!({"t": 17_000, "u": "a", "p": "y2"}),
            json!({"t": 9_000, "u": "a", "p": "y1"}),
            json!({"t": 50_000, "u": "a", "p": "later"}),
        ],
    );
    assert!(rej.is_empty());
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["window"]["start"], "1970-01-01T00:00:00.000Z");
    assert_eq!(out[0]["window"]["end"], "1970-01-01T00:00:35.000Z");
    assert_eq!(out[0]["values"], json!({"n": 4, "first": "x", "last": "z"}));
    assert_eq!(out[1]["window"]["start"], "1970-01-01T00:00:50.000Z");
    assert_eq!(out[1]["values"]["n"], 1);
}

#[test]
fn session_records_exactly_gap_apart_are_separate_sessions() {
    let p = plan("{type: session, gap: 10s}", "[]", COUNT, MILLIS);
    let (out, _) = run(p, &[json!({"t": 0}), json!({"t": 10_000})]);
    assert_eq!(
        windows(&out),
        [
            w("00:00:00.000", "00:00:10.000", 1),
            w("00:00:10.000", "00:00:20.000", 1)
        ]
    );
}

#[test]
fn hopping_windows_when_the_slide_does_not_divide_the_size() {
    // size 25 s, slide 10 s: windows start every 10 s. t = 3 s is in [-20, 5), [-10, 15) and
    // [0, 25); t = 27 s is in [10, 35) and [20, 45).
    let p = plan(
        "{type: hopping, size: 25s, slide: 10s}",
        "[]",
        COUNT,
        MILLIS,
    );
    let (out, rej) = run(p, &[json!({"t": 3_000}), json!({"t": 27_000})]);
    assert!(rej.is_empty());
    assert_eq!(
        windows(&out),
        [
            w("23:59:40.000", "00:00:05.000", 1),
            w("23:59:50.000", "00:00:15.000", 1),
            w("00:00:00.000", "00:00:25.000", 1),
            w("00:00:10.000", "00:00:35.000", 1),
            w("00:00:20.000", "00:00:45.000", 1),
        ]
    );
}

#[test]
fn a_partially_late_hopping_record_counts_only_toward_its_open_windows() {
    // size 20 s, slide 10 s. After t = 25 s the watermark is 25 s: [0, 20) is closed but
    // [10, 30) is open, so t = 15 s counts in [10, 30) only.
    let p = plan(
        "{type: hopping, size: 20s, slide: 10s}",
        "[]",
        COUNT,
        MILLIS,
    );
    let (out, rej) = run(
        p,
        &[
            json!({"t": 5_000}),
            json!({"t": 25_000}),
            json!({"t": 15_000}),
        ],
    );
    assert!(rej.is_empty());
    assert_eq!(
        windows(&out),
        [
            w("23:59:50.000", "00:00:10.000", 1),
            w("00:00:00.000", "00:00:20.000", 1),
            w("00:00:10.000", "00:00:30.000", 2),
            w("00:00:20.000", "00:00:40.000", 1),
        ]
    );
}

#[test]
fn the_global_group_and_an_empty_string_group() {
    let p = plan("{type: tumbling, size: 1m}", "[]", COUNT, MILLIS);
    let (out, _) = run(p, &[json!({"t": 1})]);
    assert_eq!(out[0]["group"], json!({}));
    let p = plan("{type: tumbling, size: 1m}", "[g]", COUNT, MILLIS);
    let (out, _) = run(
        p,
        &[
            json!({"t": 1, "g": ""}),
            json!({"t": 2, "g": 0}),
            json!({"t": 3, "g": false}),
        ],
    );
    let groups: Vec<_> = out.iter().map(|r| r["group"]["g"].clone()).collect();
    assert_eq!(groups, [json!(""), json!(0), json!(false)]);
}

#[test]
fn groups_keep_their_json_type_and_numbers_compare_by_exact_value() {
    let p = plan("{type: tumbling, size: 1m}", "[g]", COUNT, MILLIS);
    let lines: Vec<String> = [
        r#"{"t":1,"g":"1"}"#,
        r#"{"t":2,"g":1}"#,
        r#"{"t":3,"g":1.0}"#,
        r#"{"t":4,"g":10e-1}"#,
        r#"{"t":5,"g":12345678901234567890123}"#,
        r#"{"t":6,"g":12345678901234567890124}"#,
        r#"{"t":7,"g":12345678901234567890124}"#,
        r#"{"t":8,"g":-0}"#,
        r#"{"t":9,"g":0}"#,
        r#"{"t":10,"g":-0.0}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, rejected) = run_text(p, &lines);
    assert!(rejected.is_empty(), "{rejected:?}");
    // As written in the result (the JSON text, before any f64 parse).
    let text: Vec<String> = out
        .iter()
        .map(|r| format!("{}={}", r["group"]["g"], r["values"]["n"]))
        .collect();
    // "1" is text, not the number 1; 1, 1.0 and 10e-1 are one number; the two big integers stay
    // apart (as f64 they would be one); -0 is 0.
    assert_eq!(
        text,
        [
            r#""1"=1"#,
            "0=3",
            "1=3",
            // Parsed back as f64 here; the written bytes are exact (next test).
            "1.2345678901234568e+22=1",
            "1.2345678901234568e+22=2",
        ]
    );
}

#[test]
fn big_integer_groups_are_written_exactly() {
    let p = plan("{type: tumbling, size: 1m}", "[g]", COUNT, MILLIS);
    let lines = [
        r#"{"t":1,"g":12345678901234567890123}"#.to_string(),
        r#"{"t":2,"g":12345678901234567890124}"#.to_string(),
    ];
    let keys = feed(p, None, &lines).keys;
    assert_eq!(
        keys,
        [
            r#"{"group":{"g":12345678901234567890123},"start":"1970-01-01T00:00:00.000Z","end":"1970-01-01T00:01:00.000Z"}"#,
            r#"{"group":{"g":12345678901234567890124},"start":"1970-01-01T00:00:00.000Z","end":"1970-01-01T00:01:00.000Z"}"#,
        ]
    );
}

/// `first` and `last` write the value exactly as it came, by the group rule (`-0` is `0`,
/// `1.0` is `1`, big integers stay themselves); `min` and `max` compute in f64 and write the
/// nearest double (`-0` as `0`).
#[test]
fn first_and_last_write_numbers_exactly_min_and_max_as_doubles() {
    let p = plan(
        "{type: tumbling, size: 1m}",
        "[g]",
        "[{name: f, fn: first, field: x}, {name: l, fn: last, field: x}, \
          {name: lo, fn: min, field: x}, {name: hi, fn: max, field: x}]",
        MILLIS,
    );
    let lines: Vec<String> = [
        r#"{"t":1,"g":"a","x":12345678901234567890123}"#,
        r#"{"t":2,"g":"a","x":12345678901234567890124}"#,
        r#"{"t":1,"g":"b","x":-0}"#,
        r#"{"t":2,"g":"b","x":10e-1}"#,
        r#"{"t":1,"g":"c","x":-0.0}"#,
        r#"{"t":2,"g":"c","x":0.1000000000000000000001}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = feed(p, None, &lines);
    assert!(run.rejected.is_empty(), "{:?}", run.rejected);
    let values: Vec<&str> = run
        .texts
        .iter()
        .map(|t| t.split_once(r#""values":"#).map_or("", |(_, v)| v))
        .collect();
    assert_eq!(
        values,
        [
            r#"{"f":12345678901234567890123,"l":12345678901234567890124,"lo":1.2345678901234568e+22,"hi":1.2345678901234568e+22}}"#,
            r#"{"f":0,"l":1,"lo":0.0,"hi":1.0}}"#,
            r#"{"f":0,"l":0.1000000000000000000001,"lo":0.0,"hi":0.1}}"#,
        ]
    );
}

#[test]
fn non_finite_huge_and_textual_numbers() {
    let p = plan(
        "{type: tumbling, size: 1m}",
        "[]",
        "[{name: n, fn: count}, {name: s, fn: sum, field: x}, {name: m, fn: max, field: x}, {name: a, fn: mean, field: x}]",
        MILLIS,
    );
    let lines: Vec<String> = [
        r#"{"t":1,"x":1e308}"#,
        r#"{"t":2,"x":1e308}"#,
        r#"{"t":3,"x":"NaN"}"#,
        r#"{"t":4,"x":"inf"}"#,
        r#"{"t":5,"x":1e400}"#,
        r#"{"t":6,"x":"-2.5e3"}"#,
        r#"{"t":7,"x":true}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, rej) = run_text(p, &lines);
    assert_eq!(
        rej,
        [
            (2, RejectReason::WrongType),
            (3, RejectReason::WrongType),
            (4, RejectReason::InvalidJson),
            (6, RejectReason::WrongType),
        ]
    );
    // 1e308 + 1e308 overflows: written as null, never as inf.
    assert_eq!(
        out[0]["values"],
        json!({"n": 3, "s": null, "m": 1e308, "a": null})
    );
}

#[test]
fn unicode_names_values_and_deep_paths() {
    let p = plan(
        "{type: tumbling, size: 1m}",
        "[\"ключ\", a.b.c.d.e]",
        "[{name: n, fn: count}, {name: last, fn: last, field: \"текст\"}]",
        "{field: meta.time.at, format: rfc3339}",
    );
    let line = json!({
        "meta": {"time": {"at": "2026-03-01T10:00:00+09:00"}},
        "ключ": "日本 \"quoted\"",
        "a": {"b": {"c": {"d": {"e": 7}}}},
        "текст": "🙂"
    });
    let (out, rej) = run(p, &[line]);
    assert!(rej.is_empty(), "{rej:?}");
    assert_eq!(
        out[0],
        json!({
            "window": {"start": "2026-03-01T01:00:00.000Z", "end": "2026-03-01T01:01:00.000Z"},
            "group": {"ключ": "日本 \"quoted\"", "a.b.c.d.e": 7},
            "values": {"n": 1, "last": "🙂"}
        })
    );
}

#[test]
fn missing_fields_and_wrong_types_are_rejected_with_a_reason() {
    let p = plan(
        "{type: tumbling, size: 1m}",
        "[a.b]",
        "[{name: s, fn: sum, field: x}]",
        MILLIS,
    );
    let mut e = Engine::new(p, [0]);
    let reject = |e: &mut Engine, v: Value| {
        let text = v.to_string();
        let rec = Record {
            partition: 0,
            offset: 0,
            key: None,
            timestamp: None,
            value: text.as_bytes(),
        };
        e.process(&rec).unwrap_err()
    };
    let r = reject(&mut e, json!({"t": 1, "x": 1}));
    assert_eq!(
        (r.reason, r.detail.as_str()),
        (RejectReason::MissingField, "missing group field a.b")
    );
    let r = reject(&mut e, json!({"t": 1, "a": {"b": null}, "x": 1}));
    assert_eq!(r.reason, RejectReason::MissingField);
    let r = reject(&mut e, json!({"t": 1, "a": {"b": [1]}, "x": 1}));
    assert_eq!(r.reason, RejectReason::WrongType);
    let r = reject(&mut e, json!({"t": 1, "a": {"b": 1}}));
    assert_eq!(
        (r.reason, r.detail.as_str()),
        (RejectReason::MissingField, "missing field x")
    );
    let r = reject(&mut e, json!({"a": {"b": 1}, "x": 1}));
    assert_eq!(r.reason, RejectReason::MissingField);
    let r = reject(&mut e, json!({"t": "soon", "a": {"b": 1}, "x": 1}));
    assert_eq!(r.reason, RejectReason::InvalidEventTime);
    let r = reject(&mut e, json!([1, 2]));
    assert_eq!(r.reason, RejectReason::InvalidJson);
    assert_eq!(e.stats().accepted, 0);
    assert_eq!(e.open_rows(), 0, "rejected records leave no state");
}

#[test]
fn first_and_last_ties_go_to_arrival_order() {
    let p = plan(
        "{type: tumbling, size: 1m}",
        "[]",
        "[{name: first, fn: first, field: v}, {name: last, fn: last, field: v}]",
        MILLIS,
    );
    let (out, _) = run(
        p,
        &[
            json!({"t": 5, "v": "b"}),
            json!({"t": 5, "v": "a"}),
            json!({"t": 5, "v": "c"}),
        ],
    );
    assert_eq!(out[0]["values"], json!({"first": "b", "last": "c"}));
}

#[test]
fn an_idle_partition_stops_holding_back_the_others() {
    let p = plan("{type: tumbling, size: 10s}", "[]", COUNT, MILLIS);
    let mut e = Engine::new(p, [0, 1]);
    let rec = |t: i64| json!({ "t": t }).to_string().into_bytes();
    let feed = |e: &mut Engine, p: i32, t: i64| {
        let v = rec(t);
        e.process(&Record {
            partition: p,
            offset: 0,
            key: None,
            timestamp: None,
            value: &v,
        })
    };
    feed(&mut e, 0, 1_000).unwrap();
    feed(&mut e, 0, 25_000).unwrap();
    assert!(
        e.take_results().is_empty(),
        "partition 1 has said nothing yet"
    );
    e.set_idle(1);
    let r = e.take_results();
    assert_eq!((r.len(), r[0].start, r[0].end), (1, 0, 10_000));
    // Partition 1 comes back behind: its record is late for the window already emitted.
    let late = feed(&mut e, 1, 5_000).unwrap_err();
    assert_eq!(late.reason, RejectReason::Late);
    feed(&mut e, 1, 21_000).unwrap();
    assert!(e.take_results().is_empty());
}

#[test]
fn kafka_timestamps_and_message_keys() {
    let yaml = r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: t}
spec:
  source: {kafka: {bootstrapServers: "k:9092", topic: in}}
  groupByKey: true
  window: {type: tumbling, size: 1s}
  aggregations: [{name: n, fn: count}]
  sink: {kafka: {topic: out}}
"#;
    let job = weir_crds::parse_stream_job(yaml).unwrap().job;
    let mut e = Engine::new(JobPlan::new(&job.spec).unwrap(), [0]);
    let rec = |key: Option<&'static [u8]>, ts: Option<i64>| Record {
        partition: 0,
        offset: 0,
        key,
        timestamp: ts,
        value: b"{}",
    };
    e.process(&rec(Some(b"k1"), Some(1_500))).unwrap();
    assert_eq!(
        e.process(&rec(None, Some(1_500))).unwrap_err().reason,
        RejectReason::MissingField
    );
    assert_eq!(
        e.process(&rec(Some(b"k1"), None)).unwrap_err().reason,
        RejectReason::InvalidEventTime
    );
    assert_eq!(
        e.process(&rec(Some(&[0xff, 0xfe]), Some(1)))
            .unwrap_err()
            .reason,
        RejectReason::WrongType
    );
    e.finish();
    let r = e.take_results();
    assert_eq!(
        r[0].to_json(e.plan()),
        r#"{"window":{"start":"1970-01-01T00:00:01.000Z","end":"1970-01-01T00:00:02.000Z"},"group":{"key":"k1"},"values":{"n":1}}"#
    );
}

/// Lines through an engine whose wall clock reads `now`: results and rejections.
fn run_at(plan: JobPlan, now: i64, lines: &[String]) -> (Vec<Value>, Vec<(usize, RejectReason)>) {
    let run = feed(plan, Some(now), lines);
    (run.results, run.rejected)
}

const DAY: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;

fn at(t: i64) -> String {
    json!({ "t": t }).to_string()
}

#[test]
fn a_record_far_ahead_of_the_wall_clock_is_refused_and_moves_nothing() {
    let p = || plan("{type: tumbling, size: 1m}", "[]", COUNT, MILLIS);
    let good: Vec<String> = (0..5).map(|i| at(NOW - 60_000 + i * 1000)).collect();
    let (expected, none) = run_at(p(), NOW, &good);
    assert!(none.is_empty());
    let mut lines = good.clone();
    // A typo in the year, then the rest of the good records: none of them becomes late.
    lines.insert(2, at(NOW + 365 * DAY));
    lines.insert(3, at(NOW + DAY + 1));
    // Exactly at the bound: taken (and, like any record that far ahead, it closes the rest).
    lines.push(at(NOW + DAY));
    let (out, rejected) = run_at(p(), NOW, &lines);
    assert_eq!(
        rejected,
        [(2, RejectReason::Future), (3, RejectReason::Future)]
    );
    // The record exactly a day ahead is taken (its own window), the others' results unchanged.
    assert_eq!(out.len(), expected.len() + 1);
    assert_eq!(out[..expected.len()], expected[..]);
}

#[test]
fn max_ahead_of_clock_is_configurable() {
    let p = plan(
        "{type: tumbling, size: 1m, maxAheadOfClock: 1h}",
        "[]",
        COUNT,
        MILLIS,
    );
    let (_, rejected) = run_at(p, NOW, &[at(NOW + 3_600_000), at(NOW + 3_600_001)]);
    assert_eq!(rejected, [(1, RejectReason::Future)]);
}

#[test]
fn an_outlier_ahead_of_its_partition_is_refused_when_asked_and_a_real_jump_is_taken() {
    let window = "{type: tumbling, size: 1m, maxAheadOfPartition: 1h}";
    let p = || plan(window, "[]", COUNT, MILLIS);
    // Replaying history a year old: the wall clock cannot tell an outlier.
    let old = NOW - 365 * DAY;
    let mut lines: Vec<String> = (0..10).map(|i| at(old + i * 1000)).collect();
    lines.insert(5, at(old + 30 * DAY));
    let (_, rejected) = run_at(p(), NOW, &lines);
    assert_eq!(rejected, [(5, RejectReason::Future)]);
    // Without the option the outlier is taken and the records after it are late.
    let (_, rejected) = run_at(
        plan("{type: tumbling, size: 1m}", "[]", COUNT, MILLIS),
        NOW,
        &lines,
    );
    assert_eq!(rejected.len(), 5, "{rejected:?}");
    assert!(rejected.iter().all(|(_, r)| *r == RejectReason::Late));

    // A real jump (a gap in the data): the first AHEAD_IN_A_ROW - 1 records after it are
    // refused, then the partition moves on.
    let n = weir_engine::engine::AHEAD_IN_A_ROW as i64;
    let mut lines: Vec<String> = vec![at(old)];
    lines.extend((0..n + 5).map(|i| at(old + 2 * DAY + i)));
    let (out, rejected) = run_at(p(), NOW, &lines);
    assert_eq!(rejected.len() as i64, n - 1, "{rejected:?}");
    assert!(rejected.iter().all(|(_, r)| *r == RejectReason::Future));
    let counted: i64 = out.iter().map(|r| r["values"]["n"].as_i64().unwrap()).sum();
    assert_eq!(counted, 1 + 6);
}

#[test]
fn event_times_whose_windows_cannot_be_written_are_refused() {
    let p = || plan("{type: tumbling, size: 1h}", "[]", COUNT, MILLIS);
    let max = weir_engine::time::MAX_TIME;
    let min = weir_engine::time::MIN_TIME;
    let lines = [
        at(min),
        at(min + 3_600_000),
        at(max),
        at(max - 3_600_000 + 1),
        at(max - 3_600_000),
    ];
    let (out, rejected) = run_at(p(), max, &lines);
    assert_eq!(
        rejected,
        [
            (0, RejectReason::InvalidEventTime),
            (2, RejectReason::InvalidEventTime),
            (3, RejectReason::InvalidEventTime),
        ]
    );
    for r in &out {
        for edge in ["start", "end"] {
            let text = r["window"][edge].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                "{edge} {text} is not RFC 3339"
            );
        }
    }
    assert_eq!(out.len(), 2);
}

#[test]
fn a_duplicated_key_the_job_reads_refuses_the_record() {
    let p = plan("{type: tumbling, size: 1m}", "[g]", COUNT, MILLIS);
    let lines: Vec<String> = [
        r#"{"t":1,"g":"a","t":999999}"#,
        r#"{"t":2,"g":"a","g":"b"}"#,
        r#"{"t":3,"g":"a","other":1,"other":2}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, rejected) = run_text(p, &lines);
    assert_eq!(
        rejected,
        [
            (0, RejectReason::DuplicateField),
            (1, RejectReason::DuplicateField)
        ]
    );
    assert_eq!(out.len(), 1);
}
