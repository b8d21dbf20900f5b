//! Bytes of memory per open (group, window), against the raw size of what it must hold: the
//! group key's bytes plus the accumulators' state (count 8 B, double-double sum 16 B, mean 24 B).
//!
//! `cargo bench -p weir-engine --bench memory` prints a table. Memory is counted by an
//! instrumented global allocator (every heap byte the engine holds), not sampled RSS.
#![allow(clippy::unwrap_used)]

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use weir_engine::{Engine, Record};

#[path = "support/data.rs"]
mod data;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Raw state bytes of count + sum + mean.
const RAW_COUNT_SUM_MEAN: usize = 8 + 16 + 24;

fn main() {
    // `cargo test --all-targets` runs this too (without --bench); keep it quick there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let groups: u64 = if quick { 1_000 } else { 100_000 };
    println!(
        "| window | groups | state rows | open (group, window) | heap bytes | bytes/row | bytes/open window | raw bytes | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (aggs_name, aggs) in [
        ("count+sum+mean", data::COUNT_SUM_MEAN),
        ("all 11 aggregations", data::ALL),
    ] {
        for (name, window) in [
            (
                "tumbling 1m",
                "{type: tumbling, size: 1m, allowedLateness: 1s}",
            ),
            (
                "hopping 1m/1s",
                "{type: hopping, size: 1m, slide: 1s, allowedLateness: 1s}",
            ),
            (
                "session 30s",
                "{type: session, gap: 30s, allowedLateness: 1s}",
            ),
        ] {
            let plan = data::plan(window, aggs);
            let name = format!("{name}, {aggs_name}");
            // Records over 50 s of event time, so no window closes before we measure.
            let n = groups as usize * 5;
            let records = data::records(n, groups, n as u64 / 50);
            let key_bytes = "\"m0000000\"".len();
            let region = Region::new(GLOBAL);
            let mut engine = Engine::new(plan, [0]);
            for (i, v) in records.iter().enumerate() {
                let rec = Record {
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    timestamp: None,
                    value: v,
                };
                // The data's disorder (500 ms) is within the allowed lateness: nothing is rejected.
                assert!(engine.process(&rec).is_ok());
                // Hopping windows close every second; results leave the engine at once.
                drop(engine.take_results());
            }
            let stats = region.change();
            // stats_alloc counts reallocation growth in bytes_allocated already.
            let held = stats.bytes_allocated as isize - stats.bytes_deallocated as isize;
            let rows = engine.open_rows();
            let windows = engine.open_windows();
            let per_row = held as f64 / rows as f64;
            let per_window = held as f64 / windows as f64;
            let raw = (key_bytes + RAW_COUNT_SUM_MEAN) as f64;
            // Hopping keeps one row per (group, pane), shared by every window containing the pane.
            println!(
            "| {name} | {} | {rows} | {windows} | {held} | {per_row:.1} | {per_window:.1} | {raw:.0} | {:.2} |",
            engine.open_groups(),
            per_window / raw
        );
            drop(engine);
        }
    }
}
