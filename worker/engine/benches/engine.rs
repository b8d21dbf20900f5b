//! Records/s of decode + aggregate on one core, in steady state, for the windows and
//! aggregations of issue 3.
//!
//! `cargo bench -p weir-engine --bench engine`. The input is one continuous stream of ~92-byte
//! JSON payment records over 10k merchants at 50k records per second of event time. Each
//! iteration first feeds 65 s of it (untimed) so every window type has its full state open, then
//! times the next 20 s of records, during which windows close and are emitted as they would in a
//! live stream (one hopping window per second, one tumbling window per minute). Emitted results
//! are built (values computed) but not serialised.
//!
//! After criterion's runs, the same measurement is repeated in alternating rounds, tumbling then
//! hopping, and the ratio hopping / tumbling of each round is printed (wall-clock and this
//! thread's CPU time): on a shared machine the absolute numbers drift with the load, the ratio
//! within one round much less. `WEIR_BENCH_RATIO_ROUNDS` sets the number of rounds (default 5;
//! 0 skips them); `-- ratio` as criterion's filter runs only these rounds.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_engine::{Engine, JobPlan, Record};

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/data.rs"]
mod data;

use cpu::thread_cpu_time;

const GROUPS: u64 = 10_000;
const RATE: u64 = 50_000;

fn feed(engine: &mut Engine, records: &[Vec<u8>], first_offset: usize) -> usize {
    let mut results = 0;
    for (i, v) in records.iter().enumerate() {
        let rec = Record {
            partition: 0,
            offset: (first_offset + i) as i64,
            key: None,
            timestamp: None,
            value: v,
        };
        // The data's disorder (500 ms) is within the allowed lateness: nothing is rejected.
        if engine.process(&rec).is_err() {
            panic!("benchmark record {i} rejected");
        }
        results += engine.take_results().len();
    }
    results
}

fn steady_state(plan: &JobPlan, warmup: &[Vec<u8>], measured: &[Vec<u8>], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += steady_state_once(plan, warmup, measured).0;
    }
    total
}

/// One steady-state run: wall-clock time of the measured part, and this thread's CPU time
/// during it (when the platform tells).
fn steady_state_once(
    plan: &JobPlan,
    warmup: &[Vec<u8>],
    measured: &[Vec<u8>],
) -> (Duration, Option<Duration>) {
    let mut engine = Engine::new(plan.clone(), [0]);
    feed(&mut engine, warmup, 0);
    let cpu = thread_cpu_time();
    let start = Instant::now();
    let results = feed(&mut engine, measured, warmup.len());
    let wall = start.elapsed();
    let cpu = thread_cpu_time().zip(cpu).map(|(b, a)| b.saturating_sub(a));
    std::hint::black_box(results);
    (wall, cpu)
}

/// Alternating rounds of tumbling and hopping with the same aggregations; prints each round's
/// throughput and ratio, then the median ratio.
fn ratio_rounds(rounds: usize, warmup: &[Vec<u8>], measured: &[Vec<u8>]) {
    let rate = |d: Duration| measured.len() as f64 / d.as_secs_f64() / 1e6;
    for (name, aggs) in [("count_sum_mean", data::COUNT_SUM_MEAN), ("all", data::ALL)] {
        let tumbling = data::plan("{type: tumbling, size: 1m, allowedLateness: 1s}", aggs);
        let hopping = data::plan(
            "{type: hopping, size: 1m, slide: 1s, allowedLateness: 1s}",
            aggs,
        );
        let (mut by_wall, mut by_cpu) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (tw, tc) = steady_state_once(&tumbling, warmup, measured);
            let (hw, hc) = steady_state_once(&hopping, warmup, measured);
            let wall = hw.as_secs_f64() / tw.as_secs_f64();
            by_wall.push(wall);
            let mut line = format!(
                "ratio {name} round {round}: wall tumbling {:.3} M/s, hopping {:.3} M/s, {wall:.2}x slower",
                rate(tw),
                rate(hw)
            );
            if let (Some(tc), Some(hc)) = (tc, hc) {
                let cpu = hc.as_secs_f64() / tc.as_secs_f64();
                by_cpu.push(cpu);
                line += &format!(
                    "; cpu tumbling {:.3} M/s, hopping {:.3} M/s, {cpu:.2}x slower",
                    rate(tc),
                    rate(hc)
                );
            }
            eprintln!("{line}");
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        if let Some(wall) = median(&mut by_wall) {
            let cpu = median(&mut by_cpu).map_or(String::new(), |c| format!(", cpu {c:.2}x"));
            eprintln!("ratio {name}: hopping 1m/1s vs tumbling 1m, median of {rounds} rounds: wall {wall:.2}x{cpu}");
        }
    }
}

fn bench(c: &mut Criterion) {
    // Under `cargo test --benches` run a tiny version, just to prove the benchmark works.
    let full = std::env::args().any(|a| a == "--bench");
    let (warm_secs, measured_secs) = if full { (65, 20) } else { (2, 1) };
    // `WEIR_BENCH_SECONDS=warm,measured` shortens (or lengthens) the run, e.g. `62,5` while
    // iterating; select benchmarks with criterion's own filter (`-- hopping_1m_1s/all`).
    let (warm_secs, measured_secs) = match std::env::var("WEIR_BENCH_SECONDS") {
        Ok(v) => match v
            .split_once(',')
            .map(|(w, m)| (w.trim().parse(), m.trim().parse()))
        {
            Some((Ok(w), Ok(m))) if m > 0 => (w, m),
            _ => panic!("WEIR_BENCH_SECONDS must be `warm,measured` seconds, got {v:?}"),
        },
        Err(_) => (warm_secs, measured_secs),
    };
    let warm_n = (warm_secs * RATE) as usize;
    let measured_n = (measured_secs * RATE) as usize;
    let all = data::records(warm_n + measured_n, GROUPS, RATE);
    let (warmup, measured) = all.split_at(warm_n);
    let bytes: usize = measured.iter().map(Vec::len).sum();
    eprintln!(
        "{} warm-up + {} measured records, {:.1} bytes each on average",
        warm_n,
        measured_n,
        bytes as f64 / measured_n as f64
    );
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(measured_n as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    for (name, window, aggs) in [
        (
            "tumbling_1m/count_sum_mean",
            "{type: tumbling, size: 1m, allowedLateness: 1s}",
            data::COUNT_SUM_MEAN,
        ),
        (
            "hopping_1m_1s/count_sum_mean",
            "{type: hopping, size: 1m, slide: 1s, allowedLateness: 1s}",
            data::COUNT_SUM_MEAN,
        ),
        (
            "session_30s/count_sum_mean",
            "{type: session, gap: 30s, allowedLateness: 1s}",
            data::COUNT_SUM_MEAN,
        ),
        (
            "tumbling_1m/all",
            "{type: tumbling, size: 1m, allowedLateness: 1s}",
            data::ALL,
        ),
        (
            "hopping_1m_1s/all",
            "{type: hopping, size: 1m, slide: 1s, allowedLateness: 1s}",
            data::ALL,
        ),
    ] {
        let plan = data::plan(window, aggs);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| steady_state(&plan, warmup, measured, iters))
        });
    }
    // For orientation: JSON decode alone, the floor of the record path.
    let plan = data::plan(
        "{type: tumbling, size: 1m, allowedLateness: 1s}",
        data::COUNT_SUM_MEAN,
    );
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            let mut fields = weir_engine::decode::Fields::default();
            let mut ok = 0;
            for v in measured {
                ok += usize::from(plan.fields.decode(v, &mut fields).is_ok());
            }
            ok
        })
    });
    g.finish();
    let rounds = match std::env::var("WEIR_BENCH_RATIO_ROUNDS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WEIR_BENCH_RATIO_ROUNDS must be a number, got {v:?}")),
        Err(_) if full => 5,
        Err(_) => 1,
    };
    ratio_rounds(rounds, warmup, measured);
}

criterion_group!(benches, bench);
criterion_main!(benches);
