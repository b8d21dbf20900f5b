//! Hostile input never panics the record path: arbitrary bytes, and arbitrary JSON made of the
//! values that break parsers (duplicate keys, numbers at and beyond every range, event times at
//! the ends of the calendar, escapes, deep nesting, strings up to beyond
//! [`MAX_KEPT_BYTES`]), through decode, the engine (with a wall clock anywhere), and the
//! building of what the worker sends: a dead letter's reason and detail, a result's key and
//! value, a partial's bytes and their merge in the second stage.
//!
//! And nothing built exceeds its documented bound (docs/semantics.md, "Bounded output"): a
//! dead letter's detail (its `weir.error` header) is at most [`MAX_DETAIL_BYTES`]; a result's key
//! and value fit librdkafka's default `message.max.bytes` with the worker's overhead, so with
//! default limits no result is ever rerouted as `too_large`. (The worker cuts a dead letter's
//! key and value to its producer's limit: `fit` in `worker/src/outbox.rs`, tested there.)
//!
//! Bounded for CI: 256 cases per property by default (`PROPTEST_CASES` raises it), each a few
//! dozen records, for a handful of job shapes.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

#[path = "support/plan.rs"]
mod support;
use weir_engine::protocol::{Action, PartitionProtocol, Role, StartPoint, Timing};
use weir_engine::{JobPlan, Record, RejectReason, WindowResult, MAX_DETAIL_BYTES, MAX_KEPT_BYTES};

/// librdkafka's default `message.max.bytes`, which the sink producer has unless a job sets it.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// What the worker keeps free below it for librdkafka's record overhead
/// (`worker::outbox::OVERHEAD_BYTES`).
const OVERHEAD_BYTES: usize = 512;

/// The job shapes: every window type, every time format, nested and prefix paths, both guards.
const JOBS: [(&str, &str, &str); 5] = [
    (
        "{type: tumbling, size: 1m, allowedLateness: 10s}",
        "[g]",
        "{field: t, format: epochMillis}",
    ),
    (
        "{type: hopping, size: 1h, slide: 1s, maxAheadOfPartition: 1m}",
        "[g, p.q]",
        "{field: t, format: epochSeconds}",
    ),
    (
        "{type: session, gap: 30s, maxAheadOfClock: 1s}",
        "[g]",
        "{field: t, format: rfc3339}",
    ),
    (
        "{type: tumbling, size: 8760h}",
        "[p, p.q]",
        "{field: p.t, format: rfc3339}",
    ),
    (
        "{type: hopping, size: 8760h, slide: 1h}",
        "[]",
        "{field: t, format: epochMillis}",
    ),
];

const AGGREGATIONS: &str = "[{name: n, fn: count}, {name: s, fn: sum, field: x}, \
    {name: sd, fn: stddev, field: x}, {name: p, fn: percentile, field: x, quantile: 0.5}, \
    {name: d, fn: countDistinct, field: g}, {name: f, fn: first, field: x}, \
    {name: l, fn: last, field: g}]";

fn plan(job: usize) -> JobPlan {
    let (window, group_by, time) = JOBS[job % JOBS.len()];
    support::plan(window, group_by, AGGREGATIONS, time)
}

/// Numbers as written, at and beyond every boundary.
const NUMBERS: [&str; 22] = [
    "0",
    "-0",
    "-0.0",
    "1",
    "1.0",
    "1e400",
    "-1e400",
    "1e-400",
    "1.7976931348623157e308",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "12345678901234567890123",
    "253402300799999",
    "253402300800000",
    "-62135596800000",
    "1767225600000",
    "1767225600.5",
    "1e99999999999999999999",
];

/// Strings: event times at the ends of the calendar, escapes, text that looks like numbers.
const STRINGS: [&str; 12] = [
    r#""2026-01-01T00:00:00Z""#,
    r#""9999-12-31T23:59:59.999Z""#,
    r#""0001-01-01T00:00:00Z""#,
    r#""2026-01-01T00:00:00+14:00""#,
    r#""2026-13-01T00:00:00Z""#,
    r#""1e400""#,
    r#""NaN""#,
    r#"" 12.5 ""#,
    r#""\u0000\ud83d\ude00\"""#,
    r#""\ud800""#,
    r#""""#,
    r#""日本""#,
];

const KEYS: [&str; 6] = ["t", "g", "x", "p", "q", "zz"];

/// A JSON text (not always valid: a few deliberate breakages) built from the pieces above.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (0..NUMBERS.len()).prop_map(|i| NUMBERS[i].to_string()),
        (0..STRINGS.len()).prop_map(|i| STRINGS[i].to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        Just("true".to_string()),
        Just("null".to_string()),
        // Long strings: group values and first/last values near and beyond what one record may
        // keep (MAX_KEPT_BYTES), multi-byte characters included.
        long_string(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(((0..KEYS.len()), inner.clone()), 0..6).prop_map(|fields| {
                let body: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("\"{}\":{v}", KEYS[*k]))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
            proptest::collection::vec(inner, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
        ]
    })
}

/// A JSON string of up to a little over [`MAX_KEPT_BYTES`]; mostly short, since a record has
/// many leaves.
fn long_string() -> impl Strategy<Value = String> {
    let len = prop_oneof![
        8 => 100usize..2_000,
        1 => MAX_KEPT_BYTES / 2 - 300..MAX_KEPT_BYTES + 200,
    ];
    (len, any::<bool>()).prop_map(|(n, wide)| {
        let body = if wide {
            "é".repeat(n / 2)
        } else {
            "x".repeat(n)
        };
        format!("\"{body}\"")
    })
}

/// A record value: mostly JSON objects, some broken, some arbitrary bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json_text().prop_map(String::into_bytes),
        1 => json_text().prop_map(|t| format!("\u{feff}{t}").into_bytes()),
        1 => json_text().prop_map(|t| {
            let mut b = t.into_bytes();
            b.truncate(b.len() / 2);
            b
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// What a run built: dead letters, results (both stages), partials.
#[derive(Default, Debug)]
struct Built {
    dead_letters: usize,
    results: usize,
    partials: usize,
    /// Bytes of the largest result's key and value.
    largest_result: usize,
}

/// Everything a worker builds from one action, as the bytes it would send; panics are the bug.
fn build(action: &Action, plan: &JobPlan, merge: &mut Option<PartitionProtocol>, n: &mut Built) {
    match action {
        Action::DeadLetter(r) => {
            assert!(RejectReason::ALL.contains(&r.reason));
            assert!(!r.detail.is_empty(), "{r:?}");
            assert!(
                r.detail.len() <= MAX_DETAIL_BYTES,
                "a detail of {} bytes: {:?}",
                r.detail.len(),
                r.reason
            );
            n.dead_letters += 1;
        }
        Action::Result(r) => {
            n.largest_result = n.largest_result.max(check_result(r, plan));
            n.results += 1;
        }
        Action::Partial { partial, .. } => {
            n.partials += 1;
            let bytes = weir_engine::engine::Partial::Aggregate(partial.clone()).to_bytes();
            if let Some(m) = merge {
                let mut out = Vec::new();
                m.partial(0, &bytes, &mut out);
                m.expand_results(&mut out);
                for a in &out {
                    if let Action::Result(r) = a {
                        n.largest_result = n.largest_result.max(check_result(r, plan));
                        n.results += 1;
                    }
                    assert!(!matches!(a, Action::Unreadable { .. }), "{a:?}");
                }
            }
        }
        _ => {}
    }
}

/// Checks a result; its size (key and value).
fn check_result(r: &WindowResult, plan: &JobPlan) -> usize {
    let (value_text, key_text) = (r.to_json(plan), r.key_json(plan));
    let size = key_text.len() + value_text.len();
    assert!(
        size + OVERHEAD_BYTES <= DEFAULT_MESSAGE_MAX_BYTES,
        "a result of {size} bytes (key {}, value {})",
        key_text.len(),
        value_text.len()
    );
    let value: serde_json::Value = serde_json::from_str(&value_text).unwrap();
    let key: serde_json::Value = serde_json::from_str(&key_text).unwrap();
    for edge in ["start", "end"] {
        let t = value["window"][edge].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "window {edge} {t} is not RFC 3339"
        );
    }
    assert_eq!(key["start"], value["window"]["start"]);
    assert_eq!(key["end"], value["window"]["end"]);
    size
}

fn run(
    job: usize,
    two_stage: bool,
    wall_clock: i64,
    values: &[Vec<u8>],
    key: Option<&[u8]>,
) -> Built {
    let mut n = Built::default();
    let plan = plan(job);
    let timing = Timing::new(&plan, 1000);
    let role = if two_stage {
        Role::Partials { partitions: 1 }
    } else {
        Role::Results
    };
    let mut source = PartitionProtocol::new(
        plan.clone(),
        role,
        0,
        timing,
        StartPoint::Fresh { offset: 0 },
        0,
    );
    let mut merge = two_stage.then(|| {
        PartitionProtocol::new(
            plan.clone(),
            Role::Merge { sources: 1 },
            0,
            timing,
            StartPoint::Fresh { offset: 0 },
            0,
        )
    });
    let mut out = Vec::new();
    source.begin(&mut out);
    for (i, v) in values.iter().enumerate() {
        source.set_wall_clock(wall_clock);
        let rec = Record {
            partition: 0,
            offset: i as i64,
            key,
            timestamp: Some(wall_clock),
            value: v,
        };
        let _ = source.record(&rec, i as i64, &mut out);
        source.expand_results(&mut out);
        for a in out.drain(..) {
            build(&a, &plan, &mut merge, &mut n);
        }
    }
    source.tick(1_000_000, &mut out);
    source.end_of_input(&mut out);
    source.expand_results(&mut out);
    for a in out.drain(..) {
        build(&a, &plan, &mut merge, &mut n);
    }
    if let Some(m) = &mut merge {
        m.end_of_input(&mut out);
        m.expand_results(&mut out);
        for a in out.drain(..) {
            build(&a, &plan, &mut None, &mut n);
        }
    }
    n
}

/// The harness reaches every builder: good records give results (through both stages), bad
/// ones dead letters. (Otherwise the properties below could pass by building nothing.)
#[test]
fn the_harness_builds_dead_letters_results_and_partials() {
    let values: Vec<Vec<u8>> = [
        r#"{"t":1767225600000,"g":"a","x":1}"#,
        r#"{"t":1767225660000,"g":12345678901234567890123,"x":-0}"#,
        r#"{"t":1767225600000,"g":"a","t":1}"#,
        r#"{"t":253402300799999,"g":"a","x":1}"#,
        "not json",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for two_stage in [false, true] {
        let n = run(0, two_stage, 1_767_225_600_000, &values, None);
        assert_eq!(n.dead_letters, 3, "{n:?}");
        assert_eq!(n.results, 2, "{n:?}");
        assert_eq!(n.partials > 0, two_stage, "{n:?}");
    }
}

/// The size bound is reached: a group value just under what a record may keep (it keeps `g`
/// twice: as its group and as `last`) gives a result (its key and value both hold it), one just
/// over is dead-lettered as `too_large`.
#[test]
fn the_largest_values_a_record_may_keep_give_a_result_within_the_bound() {
    let group = |len: usize| {
        format!(r#"{{"t":1767225600000,"g":"{}","x":1}}"#, "x".repeat(len)).into_bytes()
    };
    let near = MAX_KEPT_BYTES / 2 - 1_000;
    let values = [group(near), group(MAX_KEPT_BYTES / 2 + 1_000)];
    for two_stage in [false, true] {
        let n = run(0, two_stage, 1_767_225_600_000, &values, None);
        assert_eq!((n.dead_letters, n.results), (1, 1), "{n:?}");
        assert!(n.largest_result > 2 * near, "{n:?}");
    }
}

/// Wall clocks: now, the ends of the calendar and of i64.
fn wall_clock() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(1_767_225_600_000i64),
        Just(weir_engine::time::MAX_TIME),
        Just(weir_engine::time::MIN_TIME),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_json_never_panics(
        job in 0..JOBS.len(),
        two_stage in any::<bool>(),
        clock in wall_clock(),
        values in proptest::collection::vec(value(), 1..40),
    ) {
        run(job, two_stage, clock, &values, Some(b"k"));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        job in 0..JOBS.len(),
        clock in wall_clock(),
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..20),
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
    ) {
        run(job, false, clock, &values, key.as_deref());
    }
}
