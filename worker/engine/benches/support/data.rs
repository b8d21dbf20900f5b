//! Benchmark input shared by the engine benchmarks: ~100-byte JSON payment records.
// Each benchmark binary includes this file and uses part of it.
#![allow(dead_code)]

/// A job with the given window and aggregations over the benchmark records.
pub fn job_yaml(window: &str, aggregations: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: bench}}
spec:
  source:
    kafka: {{bootstrapServers: "k:9092", topic: payments}}
    eventTime: {{field: ts, format: rfc3339}}
  groupBy: [merchant]
  repartition: {{coPartitioned: true}}
  window: {window}
  aggregations: {aggregations}
  sink:
    kafka: {{topic: out}}
"#
    )
}

pub const COUNT_SUM_MEAN: &str =
    "[{name: n, fn: count}, {name: total, fn: sum, field: amount}, {name: avg, fn: mean, field: amount}]";

pub const ALL: &str = "[{name: n, fn: count}, {name: total, fn: sum, field: amount}, \
    {name: lo, fn: min, field: amount}, {name: hi, fn: max, field: amount}, \
    {name: avg, fn: mean, field: amount}, {name: sd, fn: stddev, field: amount}, \
    {name: var, fn: variance, field: amount}, {name: customers, fn: countDistinct, field: customer}, \
    {name: p99, fn: percentile, field: amount, quantile: 0.99}, \
    {name: first, fn: first, field: customer}, {name: last, fn: last, field: customer}]";

pub fn plan(window: &str, aggregations: &str) -> weir_engine::JobPlan {
    let job = weir_crds::parse_stream_job(&job_yaml(window, aggregations))
        .expect("bench job parses")
        .job;
    weir_engine::JobPlan::new(&job.spec).expect("bench job is valid")
}

/// `n` records over `groups` merchants, event time advancing `rate` records per second with up
/// to 500 ms of disorder. Deterministic.
pub fn records(n: usize, groups: u64, rate: u64) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = 1_767_225_601_000i64; // 2026-01-01T00:00:01Z: the disorder stays in minute 0
    (0..n)
        .map(|i| {
            let t = base + (i as i64 * 1000) / rate as i64 - (next() % 500) as i64;
            let ts = chrono::DateTime::from_timestamp_millis(t)
                .expect("in range")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let merchant = next() % groups;
            let customer = next() % 100_000;
            let cents = next() % 100_000;
            format!(
                r#"{{"ts":"{ts}","merchant":"m{merchant:07}","customer":"c{customer:06}","amount":{}.{:02}}}"#,
                cents / 100,
                cents % 100
            )
            .into_bytes()
        })
        .collect()
}
