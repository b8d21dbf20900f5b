//! The output path of a sparse job (about one record per group and window, so about a result
//! per record), on one thread, measured by this thread's CPU time in alternating rounds of the
//! way the worker does it now and the way it did before (issue 20):
//!
//! - **results**: records processed, the results taken a chunk at a time ([`RESULTS_CHUNK`])
//!   and written as a partition writes them ([`ResultText`]); the written chunk is given back
//!   to the engine ([`Engine::recycle_results`], now) or dropped (before);
//! - **partials** (stage 1 and 2 of a two-stage job, without the merge itself): records
//!   processed as stage 1, each partial written as its repartition message into one reused
//!   buffer ([`PartialAggregate::write_message`], now: by hand, since session 23) or with
//!   `Partial::to_bytes` (serde_json) after copying its group key (before), then read back as
//!   the merge stage reads it ([`Partial::from_bytes`], now: UTF-8 checked once, then read by
//!   hand; before: `serde_json::from_slice`).
//!
//! Both ways produce the same bytes (the benchmark checks it). The input is the pipeline
//! benchmark's sparse shape: 10,000 merchants, 6,000 records per minute of event time.
//! `cargo bench -p weir-engine --bench output`; `WEIR_BENCH_ROUNDS` sets the rounds (default 9),
//! `WEIR_BENCH_RECORDS` the records (default 300,000).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weir_engine::engine::{Partial, PartialAggregate};
use weir_engine::{Engine, JobPlan, Record, ResultText, WindowResult, RESULTS_CHUNK};

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/data.rs"]
mod data;

const GROUPS: u64 = 10_000;
/// Records per second of event time: 6,000 a minute over 10,000 merchants.
const RATE: u64 = 100;

/// This thread's CPU time; the benchmark needs it (Linux).
fn thread_cpu_time() -> Duration {
    cpu::thread_cpu_time().expect("/proc/thread-self/schedstat is readable")
}

fn record(i: usize, value: &[u8]) -> Record<'_> {
    Record {
        partition: 0,
        offset: i as i64,
        key: None,
        timestamp: None,
        value,
    }
}

/// One stage: CPU time, results, and a checksum of the written bytes.
fn results_round(plan: &JobPlan, records: &[Vec<u8>], recycle: bool) -> (Duration, u64, u64) {
    let mut engine = Engine::new(plan.clone(), [0]);
    let mut text = ResultText::default();
    let mut chunk: Vec<WindowResult> = Vec::new();
    let (mut results, mut sum) = (0u64, 0u64);
    let start = thread_cpu_time();
    for (i, v) in records.iter().enumerate() {
        if engine.process(&record(i, v)).is_err() {
            panic!("benchmark record {i} rejected");
        }
        let through = engine.results_emitted();
        loop {
            if recycle {
                engine.recycle_results(&mut chunk);
            } else {
                chunk.clear();
            }
            if engine.take_results_upto(through, RESULTS_CHUNK, &mut chunk) == 0 {
                break;
            }
            for r in &chunk {
                text.write(plan, r);
                results += 1;
                sum = sum
                    .wrapping_add(checksum(text.key.as_bytes()) ^ checksum(text.value.as_bytes()));
            }
        }
    }
    (thread_cpu_time() - start, results, sum)
}

/// Two stages' serialisation: CPU time, partials, and a checksum of the messages.
fn partials_round(plan: &JobPlan, records: &[Vec<u8>], now: bool) -> (Duration, u64, u64) {
    let mut engine = Engine::new(plan.clone(), [0]);
    engine.emit_partials();
    let mut buf = Vec::new();
    let (mut partials, mut sum) = (0u64, 0u64);
    let start = thread_cpu_time();
    for (i, v) in records.iter().enumerate() {
        if engine.process(&record(i, v)).is_err() {
            panic!("benchmark record {i} rejected");
        }
        for p in engine.take_partials() {
            let read = if now {
                p.write_message(&mut buf);
                sum = sum.wrapping_add(checksum(p.group.as_bytes()) ^ checksum(&buf));
                Partial::from_bytes(&buf)
            } else {
                let key = p.group.clone();
                let bytes = Partial::Aggregate(p).to_bytes();
                sum = sum.wrapping_add(checksum(key.as_bytes()) ^ checksum(&bytes));
                serde_json::from_slice::<Partial>(&bytes)
            };
            match read {
                Ok(Partial::Aggregate(a)) => {
                    std::hint::black_box::<PartialAggregate>(a);
                }
                _ => panic!("a partial not read back"),
            }
            partials += 1;
        }
    }
    (thread_cpu_time() - start, partials, sum)
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // Under `cargo test --benches` a tiny run, to prove the benchmark works.
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = env("WEIR_BENCH_ROUNDS", if full { 9 } else { 1 });
    let n = env("WEIR_BENCH_RECORDS", if full { 300_000 } else { 20_000 });
    let records = data::records(n, GROUPS, RATE);
    let plan = data::plan(
        "{type: tumbling, size: 1m, allowedLateness: 1s}",
        data::COUNT_SUM_MEAN,
    );
    eprintln!(
        "{n} sparse records ({GROUPS} merchants, {} a minute), tumbling 1m, count+sum+mean; \
         {rounds} rounds, this thread's CPU time",
        RATE * 60
    );
    type Round = fn(&JobPlan, &[Vec<u8>], bool) -> (Duration, u64, u64);
    let paths: [(&str, &str, &str, Round); 2] = [
        (
            "results",
            "chunks given back",
            "chunks dropped",
            results_round,
        ),
        (
            "partials",
            "write_message + from_bytes",
            "to_bytes + from_slice",
            partials_round,
        ),
    ];
    println!("| path | round | now | before | now / before | outputs | ns saved per output |");
    println!("|---|---|---|---|---|---|---|");
    for (path, now_name, before_name, round) in paths {
        let mut ratios = Vec::new();
        for r in 1..=rounds {
            // Alternating which goes first.
            let ((now, out_now, sum_now), (before, out_before, sum_before)) = if r % 2 == 1 {
                let a = round(&plan, &records, true);
                (a, round(&plan, &records, false))
            } else {
                let b = round(&plan, &records, false);
                (round(&plan, &records, true), b)
            };
            assert_eq!(
                (out_now, sum_now),
                (out_before, sum_before),
                "{path}: both ways write the same"
            );
            let ratio = now.as_secs_f64() / before.as_secs_f64();
            ratios.push(ratio);
            let saved = (before.as_secs_f64() - now.as_secs_f64()) * 1e9 / out_now.max(1) as f64;
            println!(
                "| {path} | {r} | {now_name}: {:.0} ms | {before_name}: {:.0} ms | {ratio:.3} | {out_now} | {saved:.0} |",
                now.as_secs_f64() * 1e3,
                before.as_secs_f64() * 1e3
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {path} | median | | | {:.3} (min {:.3}, max {:.3}) | | |",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
}
