//! The engine against a deliberately naive reference: random out-of-order input over several
//! partitions, with idle partitions and bad records, for all three window types and every
//! aggregation. The reference keeps every accepted record and recomputes each window from
//! scratch; it shares no code with the engine beyond the job plan.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};
use weir_engine::agg::Output;
use weir_engine::engine::{Partial, PartialAggregate};
use weir_engine::protocol::{Action, PartitionProtocol, Role, StartPoint, Timing};
use weir_engine::{Engine, JobPlan, Record, RejectReason, WindowResult};

#[derive(Debug, Clone)]
enum Win {
    Tumbling(i64),
    Hopping(i64, i64),
    Session(i64),
}

#[derive(Debug, Clone)]
struct Job {
    window: Win,
    lateness: i64,
    grouped: bool,
    quantile: f64,
}

impl Job {
    fn yaml(&self) -> String {
        let window = match self.window {
            Win::Tumbling(s) => format!("{{type: tumbling, size: {s}ms"),
            Win::Hopping(s, sl) => format!("{{type: hopping, size: {s}ms, slide: {sl}ms"),
            Win::Session(g) => format!("{{type: session, gap: {g}ms"),
        };
        format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: t}}
spec:
  source:
    kafka: {{bootstrapServers: "k:9092", topic: in}}
    eventTime: {{field: t, format: epochMillis}}
  groupBy: {group}
  repartition: {{coPartitioned: true}}
  window: {window}, allowedLateness: {lateness}ms}}
  aggregations:
    - {{name: n, fn: count}}
    - {{name: sum, fn: sum, field: x}}
    - {{name: min, fn: min, field: x}}
    - {{name: max, fn: max, field: x}}
    - {{name: mean, fn: mean, field: x}}
    - {{name: sd, fn: stddev, field: x}}
    - {{name: var, fn: variance, field: x}}
    - {{name: distinct, fn: countDistinct, field: d}}
    - {{name: p, fn: percentile, field: x, quantile: {q}}}
    - {{name: first, fn: first, field: d}}
    - {{name: last, fn: last, field: d}}
  sink:
    kafka: {{topic: out}}
"#,
            group = if self.grouped { "[g]" } else { "[]" },
            lateness = self.lateness,
            q = self.quantile,
        )
    }

    fn plan(&self) -> JobPlan {
        let job = weir_crds::parse_stream_job(&self.yaml()).unwrap().job;
        JobPlan::new(&job.spec).unwrap()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bad {
    None,
    NotJson,
    MissingX,
    TextX,
    ObjectGroup,
}

#[derive(Debug, Clone)]
enum Event {
    Record {
        partition: i32,
        t: i64,
        g: u8,
        x: i32,
        d: u8,
        bad: Bad,
    },
    Idle(i32),
}

/// A record as the engine sees it.
fn value(t: i64, g: u8, x: i32, d: u8, bad: Bad) -> String {
    match bad {
        Bad::None => json!({"t": t, "g": format!("g{g}"), "x": x, "d": format!("d{d}")}),
        Bad::NotJson => return format!("{{\"t\":{t},"),
        Bad::MissingX => json!({"t": t, "g": format!("g{g}"), "d": format!("d{d}")}),
        Bad::TextX => json!({"t": t, "g": format!("g{g}"), "x": "many", "d": "d"}),
        Bad::ObjectGroup => json!({"t": t, "g": {"id": g}, "x": x, "d": "d"}),
    }
    .to_string()
}

#[derive(Debug, Clone, Copy)]
struct Accepted {
    t: i64,
    seq: (i32, i64),
    x: i32,
    d: u8,
}

type Key = (String, i64, i64); // group JSON, start, end

/// The naive reference: per-partition watermarks, a monotonic engine watermark, and every
/// accepted record kept with the windows it was counted in.
/// The expected windows and rejects. `two_stage`: as computed in two stages, where stage 1 judges
/// a record by its own partition's watermark only (and counts it in that partition's progress),
/// and the merge stage counts it toward the windows still open by every partition's progress.
fn reference(
    job: &Job,
    events: &[Event],
    partitions: i32,
    two_stage: bool,
) -> (BTreeMap<Key, Vec<Accepted>>, Vec<RejectReason>) {
    // partition -> (watermark, idle); every partition is known from the start.
    let mut wm: BTreeMap<i32, (i64, bool)> =
        (0..partitions).map(|p| (p, (i64::MIN, false))).collect();
    let mut max_t: BTreeMap<i32, i64> = BTreeMap::new();
    let mut global = i64::MIN;
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut windows: BTreeMap<Key, Vec<Accepted>> = BTreeMap::new();
    let mut sessions: BTreeMap<String, Vec<Accepted>> = BTreeMap::new();
    let mut rejects = Vec::new();
    let recompute = |wm: &BTreeMap<i32, (i64, bool)>, global: &mut i64| {
        let active: Vec<i64> = wm
            .values()
            .filter(|(_, idle)| !idle)
            .map(|(w, _)| *w)
            .collect();
        let g = if active.is_empty() {
            wm.values().map(|(w, _)| *w).max().unwrap_or(i64::MIN)
        } else {
            *active.iter().min().unwrap()
        };
        *global = (*global).max(g);
    };
    for e in events {
        match *e {
            Event::Idle(p) => {
                if let Some(s) = wm.get_mut(&p) {
                    s.1 = true;
                }
                recompute(&wm, &mut global);
            }
            Event::Record {
                partition,
                t,
                g,
                x,
                d,
                bad,
            } => {
                let offset = offsets.entry(partition).or_insert(0);
                let seq = (partition, *offset);
                *offset += 1;
                wm.entry(partition).or_insert((i64::MIN, false));
                let reason = match bad {
                    Bad::NotJson => Some(RejectReason::InvalidJson),
                    Bad::MissingX => Some(RejectReason::MissingField),
                    Bad::TextX => Some(RejectReason::WrongType),
                    Bad::ObjectGroup if job.grouped => Some(RejectReason::WrongType),
                    _ => None,
                };
                if let Some(r) = reason {
                    rejects.push(r);
                    continue;
                }
                let bar = wm[&partition].0.max(global);
                let group = if job.grouped {
                    format!("\"g{g}\"")
                } else {
                    String::new()
                };
                let d = if bad == Bad::ObjectGroup { 255 } else { d };
                let rec = Accepted { t, seq, x, d };
                let accepted = match job.window {
                    Win::Tumbling(size) | Win::Hopping(size, _) => {
                        let slide = match job.window {
                            Win::Hopping(_, s) => s,
                            _ => size,
                        };
                        // Every window [s, s+size) with s a multiple of slide containing t.
                        let mut open = Vec::new();
                        let mut own_open = false;
                        let mut s = t.div_euclid(slide) * slide;
                        while s > t - size {
                            if s + size > bar {
                                open.push(s);
                            }
                            own_open |= s + size > wm[&partition].0;
                            s -= slide;
                        }
                        for s in &open {
                            windows
                                .entry((group.clone(), *s, s + size))
                                .or_default()
                                .push(rec);
                        }
                        if two_stage {
                            own_open
                        } else {
                            !open.is_empty()
                        }
                    }
                    Win::Session(_) => {
                        if t >= bar {
                            sessions.entry(group.clone()).or_default().push(rec);
                            true
                        } else {
                            false
                        }
                    }
                };
                if !accepted {
                    rejects.push(RejectReason::Late);
                    continue;
                }
                let m = max_t.entry(partition).or_insert(i64::MIN);
                *m = (*m).max(t);
                let w = wm.get_mut(&partition).unwrap();
                w.0 = w.0.max(*m - job.lateness);
                w.1 = false;
                recompute(&wm, &mut global);
            }
        }
    }
    if let Win::Session(gap) = job.window {
        for (group, mut recs) in sessions {
            recs.sort_by_key(|r| r.t);
            let mut current: Vec<Accepted> = Vec::new();
            for r in recs {
                if let Some(last) = current.last() {
                    if r.t - last.t >= gap {
                        let key = (group.clone(), current[0].t, last.t + gap);
                        windows.insert(key, std::mem::take(&mut current));
                    }
                }
                current.push(r);
            }
            if let Some(last) = current.last() {
                windows.insert((group.clone(), current[0].t, last.t + gap), current);
            }
        }
    }
    (windows, rejects)
}

fn group_json(r: &WindowResult) -> String {
    r.group_texts().collect::<Vec<_>>().join(",")
}

fn check_values(job: &Job, key: &Key, recs: &[Accepted], got: &[Value]) -> Result<(), String> {
    let n = recs.len() as f64;
    let xs: Vec<f64> = recs.iter().map(|r| f64::from(r.x)).collect();
    let sum: f64 = xs.iter().sum();
    let mean = sum / n;
    let var = if recs.len() < 2 {
        None
    } else {
        Some(xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0))
    };
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    let rank = ((job.quantile * n).ceil() as usize).clamp(1, recs.len());
    let nearest = sorted[rank - 1];
    let distinct: BTreeSet<u8> = recs.iter().map(|r| r.d).collect();
    let d_json = |d: u8| {
        if d == 255 {
            json!("d")
        } else {
            json!(format!("d{d}"))
        }
    };
    let first = recs
        .iter()
        .min_by_key(|r| (r.t, r.seq))
        .map(|r| d_json(r.d));
    let last = recs
        .iter()
        .max_by_key(|r| (r.t, r.seq))
        .map(|r| d_json(r.d));

    let f = |v: &Value| v.as_f64();
    let close = |a: Option<f64>, b: Option<f64>, rel: f64| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= rel * b.abs().max(1e-9),
        (None, None) => true,
        _ => false,
    };
    let checks: [(&str, bool); 11] = [
        ("count", got[0] == json!(recs.len())),
        ("sum", f(&got[1]) == Some(sum)),
        ("min", f(&got[2]) == sorted.first().copied()),
        ("max", f(&got[3]) == sorted.last().copied()),
        ("mean", f(&got[4]) == Some(mean)),
        ("stddev", close(f(&got[5]), var.map(f64::sqrt), 1e-9)),
        ("variance", close(f(&got[6]), var, 1e-9)),
        ("countDistinct", got[7] == json!(distinct.len())),
        ("percentile", close(f(&got[8]), Some(nearest), 0.01)),
        ("first", Some(&got[9]) == first.as_ref()),
        ("last", Some(&got[10]) == last.as_ref()),
    ];
    for (name, ok) in checks {
        if !ok {
            return Err(format!("{key:?} {name}: engine {got:?}, records {recs:?}"));
        }
    }
    Ok(())
}

struct Run {
    results: Vec<WindowResult>,
    rejects: Vec<RejectReason>,
}

fn run_engine(job: &Job, events: &[Event], partitions: i32) -> Result<Run, String> {
    let mut engine = Engine::new(job.plan(), 0..partitions);
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut results = Vec::new();
    let mut rejects = Vec::new();
    for e in events {
        match *e {
            Event::Idle(p) => engine.set_idle(p),
            Event::Record {
                partition,
                t,
                g,
                x,
                d,
                bad,
            } => {
                let offset = offsets.entry(partition).or_insert(0);
                let v = value(t, g, x, d, bad);
                let rec = Record {
                    partition,
                    offset: *offset,
                    key: None,
                    timestamp: None,
                    value: v.as_bytes(),
                };
                *offset += 1;
                if let Err(r) = engine.process(&rec) {
                    rejects.push(r.reason);
                }
            }
        }
        let batch = engine.take_results();
        for r in &batch {
            if r.end > engine.watermark() {
                return Err(format!(
                    "window [{}, {}) emitted before the watermark {} reached its end",
                    r.start,
                    r.end,
                    engine.watermark()
                ));
            }
        }
        results.extend(batch);
    }
    engine.finish();
    results.extend(engine.take_results());
    if engine.open_groups() != 0 || engine.open_rows() != 0 {
        return Err(format!(
            "state left after finish: {} groups, {} rows",
            engine.open_groups(),
            engine.open_rows()
        ));
    }
    Ok(Run { results, rejects })
}

fn compare(job: &Job, events: &[Event], partitions: i32) -> Result<(), String> {
    let run = run_engine(job, events, partitions)?;
    compare_run(job, events, partitions, &run, false)
}

fn compare_run(
    job: &Job,
    events: &[Event],
    partitions: i32,
    run: &Run,
    two_stage: bool,
) -> Result<(), String> {
    let (expected, expected_rejects) = reference(job, events, partitions, two_stage);
    if run.rejects != expected_rejects {
        return Err(format!(
            "rejects: engine {:?}, reference {:?}",
            run.rejects, expected_rejects
        ));
    }
    let mut got: BTreeMap<Key, &WindowResult> = BTreeMap::new();
    for r in &run.results {
        let key = (group_json(r), r.start, r.end);
        if got.insert(key.clone(), r).is_some() {
            return Err(format!("{key:?} emitted twice"));
        }
    }
    let got_keys: BTreeSet<_> = got.keys().cloned().collect();
    let want_keys: BTreeSet<_> = expected.keys().cloned().collect();
    if got_keys != want_keys {
        return Err(format!(
            "windows differ: only in engine {:?}, only in reference {:?}",
            got_keys.difference(&want_keys).collect::<Vec<_>>(),
            want_keys.difference(&got_keys).collect::<Vec<_>>()
        ));
    }
    for (key, recs) in &expected {
        let values: Vec<Value> = got[key].values.iter().map(Output::to_value).collect();
        check_values(job, key, recs, &values)?;
    }
    Ok(())
}

fn job_strategy() -> impl Strategy<Value = Job> {
    let window = prop_oneof![
        (1i64..=60).prop_map(|s| Win::Tumbling(s * 1000)),
        (1i64..=60, 1i64..=60).prop_map(|(a, b)| {
            let (size, slide) = if a >= b { (a, b) } else { (b, a) };
            Win::Hopping(size * 1000, slide * 1000)
        }),
        (1i64..=40).prop_map(|g| Win::Session(g * 1000)),
    ];
    (
        window,
        prop_oneof![Just(0i64), 1i64..=30_000],
        any::<bool>(),
        prop_oneof![Just(0.5), Just(0.99), 0.01f64..0.99],
    )
        .prop_map(|(window, lateness, grouped, quantile)| Job {
            window,
            lateness,
            grouped,
            quantile,
        })
}

/// Events over `partitions`: each partition's clock moves forward, and each record's time is
/// the clock plus jitter that is mostly backwards (out of order), sometimes far behind (late).
fn events_strategy(partitions: i32) -> impl Strategy<Value = Vec<Event>> {
    let bad = prop_oneof![
        20 => Just(Bad::None),
        1 => Just(Bad::NotJson),
        1 => Just(Bad::MissingX),
        1 => Just(Bad::TextX),
        1 => Just(Bad::ObjectGroup),
    ];
    let step = (
        0..partitions,
        0i64..4_000,
        prop_oneof![8 => -20_000i64..2_000, 1 => -120_000i64..0],
        0u8..6,
        -1000i32..1000,
        0u8..40,
        bad,
        0u8..30,
    );
    proptest::collection::vec(step, 1..300).prop_map(move |steps| {
        let mut clocks = vec![-50_000i64; partitions as usize];
        let mut events = Vec::new();
        for (p, advance, jitter, g, x, d, bad, idle) in steps {
            if idle == 0 {
                events.push(Event::Idle(p));
                continue;
            }
            let clock = &mut clocks[p as usize];
            *clock += advance;
            events.push(Event::Record {
                partition: p,
                t: *clock + jitter,
                g,
                x,
                d,
                bad,
            });
        }
        events
    })
}

/// 400 cases by default (about 5 s); `PROPTEST_CASES=20000` for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_naive_reference(
        job in job_strategy(),
        partitions in 1i32..=4,
        seed_events in events_strategy(4),
    ) {
        let events: Vec<Event> = seed_events
            .into_iter()
            .filter(|e| match e {
                Event::Record { partition, .. } | Event::Idle(partition) => *partition < partitions,
            })
            .collect();
        if let Err(e) = compare(&job, &events, partitions) {
            prop_assert!(false, "{}\njob: {:?}", e, job);
        }
    }

    /// Without idleness, results do not depend on how partitions interleave: any merge of the
    /// same per-partition sequences gives the same results.
    #[test]
    fn results_do_not_depend_on_partition_interleaving(
        job in job_strategy(),
        events in events_strategy(3),
        shuffle in proptest::collection::vec(any::<u32>(), 300),
    ) {
        let records: Vec<Event> = events.into_iter().filter(|e| matches!(e, Event::Record { .. })).collect();
        // Re-interleave: repeatedly take the next record of a pseudo-randomly chosen partition.
        let mut queues: Vec<Vec<Event>> = vec![Vec::new(); 3];
        for e in records.iter().rev() {
            if let Event::Record { partition, .. } = e {
                queues[*partition as usize].push(e.clone());
            }
        }
        let mut other = Vec::new();
        let mut i = 0;
        while queues.iter().any(|q| !q.is_empty()) {
            let nonempty: Vec<usize> = (0..3).filter(|q| !queues[*q].is_empty()).collect();
            let pick = nonempty[shuffle[i % shuffle.len()] as usize % nonempty.len()];
            other.push(queues[pick].pop().unwrap());
            i += 1;
        }
        let a = run_engine(&job, &records, 3).unwrap();
        let b = run_engine(&job, &other, 3).unwrap();
        let key = |r: &WindowResult| (group_json(r), r.start, r.end, r.values.clone());
        let mut ka: Vec<_> = a.results.iter().map(key).collect();
        let mut kb: Vec<_> = b.results.iter().map(key).collect();
        ka.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        kb.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        prop_assert_eq!(ka, kb);
        let mut ra = a.rejects.clone();
        let mut rb = b.rejects.clone();
        ra.sort();
        rb.sort();
        prop_assert_eq!(ra, rb);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Whatever bytes arrive, the record path answers with a result or a reason, never a panic,
    /// and a refused record leaves the state as it was.
    #[test]
    fn arbitrary_bytes_never_panic(
        values in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "\\{(\"[tgxd]\":(-?[0-9]{1,20}(\\.[0-9]{0,3})?(e[0-9]{1,3})?|\"[^\"]{0,5}\"|null|true|\\[\\]|\\{\\}),?){0,5}\\}?"
                    .prop_map(String::into_bytes),
            ],
            1..40,
        ),
    ) {
        let job = Job { window: Win::Hopping(10_000, 3_000), lateness: 1_000, grouped: true, quantile: 0.5 };
        let mut engine = Engine::new(job.plan(), [0]);
        for (i, v) in values.iter().enumerate() {
            let rows = engine.open_rows();
            let rec = Record { partition: 0, offset: i as i64, key: None, timestamp: None, value: v };
            if engine.process(&rec).is_err() {
                prop_assert_eq!(engine.open_rows(), rows);
            }
        }
        engine.finish();
    }
}

/// A crash after a checkpoint, and a replay from the engine's replay point, give the same
/// results and rejections as a run without the crash: the recovery protocol the worker runs
/// (`weir_engine::protocol`, DESIGN.md invariant 3), driven without I/O. One partition, as the
/// worker runs one engine per partition.
fn replay_equals_clean_run(job: &Job, events: &[Event], crashes: &[usize]) -> Result<(), String> {
    let values: Vec<String> = events
        .iter()
        .filter_map(|e| match *e {
            Event::Record {
                t, g, x, d, bad, ..
            } => Some(value(t, g, x, d, bad)),
            Event::Idle(_) => None,
        })
        .collect();
    let record = |i: usize| Record {
        partition: 0,
        offset: i as i64,
        key: None,
        timestamp: None,
        value: values[i].as_bytes(),
    };
    let key = |r: &WindowResult| (group_json(r), r.start, r.end);

    // The clean run.
    let mut clean = Engine::new(job.plan(), [0]);
    let mut want = BTreeMap::new();
    let mut want_rejects = BTreeMap::new();
    for i in 0..values.len() {
        if let Err(r) = clean.process(&record(i)) {
            want_rejects.insert(i, r.reason);
        }
        for r in clean.take_results() {
            want.insert(key(&r), r.values);
        }
    }
    clean.finish();
    for r in clean.take_results() {
        want.insert(key(&r), r.values);
    }

    // The run with crashes, through the production protocol: at each crash point a checkpoint
    // falls due, the partition is dropped, and a new one resumes from the checkpoint.
    let mut points: Vec<usize> = crashes.iter().map(|c| c % (values.len() + 1)).collect();
    points.sort_unstable();
    let mut got: BTreeMap<Key, Vec<Output>> = BTreeMap::new();
    let plan = job.plan();
    let timing = Timing::new(&plan, 1_000);
    let start =
        |at: StartPoint| PartitionProtocol::new(plan.clone(), Role::Results, 0, timing, at, 0);
    let mut partition = start(StartPoint::Fresh { offset: 0 });
    let mut out = Vec::new();
    let keep = |out: &mut Vec<Action>, got: &mut BTreeMap<Key, Vec<Output>>| {
        for a in out.drain(..) {
            // Results emitted before the crash are not in `out`: the protocol suppressed them
            // (the replay only rebuilt part of them).
            if let Action::Result(r) = a {
                if let Some(old) = got.insert(key(&r), r.values.clone()) {
                    if old != r.values {
                        return Err(format!("{:?} emitted twice with different values", key(&r)));
                    }
                }
            }
        }
        Ok(())
    };
    let mut next = 0usize;
    let mut seen_before = 0usize; // records processed before the last checkpoint
    for point in points.into_iter().chain([values.len()]) {
        while next < point {
            let outcome = partition.record(&record(next), 0, &mut out);
            partition.expand_results(&mut out);
            match (outcome, want_rejects.get(&next)) {
                (Ok(()), None) => {}
                (Err(r), Some(w)) if r == *w => {}
                (o, w) => {
                    return Err(format!(
                        "offset {next}: after recovery {o:?}, clean run {w:?} (checkpoint at {seen_before})"
                    ))
                }
            }
            next += 1;
            keep(&mut out, &mut got)?;
        }
        if point == values.len() {
            break;
        }
        // Checkpoint, crash, resume.
        partition.tick(timing.checkpoint_interval_ms, &mut out);
        partition.expand_results(&mut out);
        let Some(Action::Checkpoint(progress)) = out.pop() else {
            return Err(format!("no checkpoint due at offset {point}"));
        };
        keep(&mut out, &mut got)?;
        let replay_from = progress.replay_from;
        if replay_from as usize > point {
            return Err(format!(
                "replay point {replay_from} is after the next offset {point}"
            ));
        }
        partition = start(StartPoint::Checkpoint(progress));
        next = replay_from as usize;
        seen_before = point;
    }
    partition.end_of_input(&mut out);
    partition.expand_results(&mut out);
    for a in out {
        if let Action::Result(r) = a {
            got.insert(key(&r), r.values);
        }
    }
    if got != want {
        let gk: BTreeSet<_> = got.keys().collect();
        let wk: BTreeSet<_> = want.keys().collect();
        return Err(format!(
            "results differ: only after recovery {:?}, only in clean run {:?}, values differ at {:?}",
            gk.difference(&wk).collect::<Vec<_>>(),
            wk.difference(&gk).collect::<Vec<_>>(),
            want.iter().find(|(k, v)| got.get(*k).is_some_and(|g| g != *v)).map(|(k, _)| k),
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn recovery_from_a_checkpoint_equals_the_clean_run(
        job in job_strategy(),
        events in events_strategy(1),
        spikes in proptest::collection::vec(prop_oneof![4 => Just(0i64), 1 => 0i64..60_000], 300),
        crashes in proptest::collection::vec(any::<usize>(), 1..5),
    ) {
        // Records far ahead of the clock make the watermark at the replay point matter: the
        // records after them are late only because of a record before the replay point.
        let events: Vec<Event> = events
            .into_iter()
            .zip(spikes.iter().cycle())
            .map(|(e, s)| match e {
                Event::Record { partition, t, g, x, d, bad } => {
                    Event::Record { partition, t: t + s, g, x, d, bad }
                }
                idle => idle,
            })
            .collect();
        if let Err(e) = replay_equals_clean_run(&job, &events, &crashes) {
            prop_assert!(false, "{}\njob: {:?}", e, job);
        }
    }
}

/// Two stages (DESIGN.md invariant 5): one stage-1 engine per partition emitting partials, routed
/// by group to `merges` merge-stage engines, with each partition's watermark sent to every merge-stage
/// engine after its partials. Every partial travels as the repartition topic's bytes, and
/// `resend` re-sends earlier partials (as a restarted stage 1 does) at random points.
fn run_two_stages(
    job: &Job,
    events: &[Event],
    partitions: i32,
    merges: usize,
    resend: &[(usize, usize)],
) -> Result<Run, String> {
    let plan = job.plan();
    let mut stage1: Vec<Engine> = (0..partitions)
        .map(|p| {
            let mut e = Engine::new(plan.clone(), [p]);
            e.emit_partials();
            e
        })
        .collect();
    let mut stage2: Vec<Engine> = (0..merges)
        .map(|_| Engine::new(plan.clone(), 0..partitions))
        .collect();
    let mut idle = vec![false; partitions as usize];
    let mut offsets = vec![0i64; partitions as usize];
    let mut log_offsets = vec![0i64; merges];
    let mut sent: Vec<PartialAggregate> = Vec::new();
    let mut results = Vec::new();
    let mut rejects = Vec::new();
    let route = |p: &PartialAggregate| p.group.bytes().map(usize::from).sum::<usize>() % merges;
    let deliver =
        |stage2: &mut Vec<Engine>, log_offsets: &mut Vec<i64>, msg: &Partial, to: usize| {
            let bytes = msg.to_bytes();
            let msg = Partial::from_bytes(&bytes).map_err(|e| format!("partial bytes: {e}"))?;
            let offset = log_offsets[to];
            log_offsets[to] += 1;
            match msg {
                Partial::Aggregate(p) => {
                    let merged = stage2[to].merge_partial(to as i32, offset, &p);
                    assert!(merged.is_ok(), "no row limit: nothing refused");
                }
                Partial::Watermark {
                    source,
                    watermark,
                    idle,
                    ..
                } => stage2[to].source_watermark(source, watermark, idle),
            }
            Ok::<(), String>(())
        };
    let mut resend = resend.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        let p = match *e {
            Event::Idle(p) => {
                idle[p as usize] = true;
                stage1[p as usize].flush_partials(offsets[p as usize]);
                p
            }
            Event::Record {
                partition,
                t,
                g,
                x,
                d,
                bad,
            } => {
                let v = value(t, g, x, d, bad);
                let offset = &mut offsets[partition as usize];
                let rec = Record {
                    partition,
                    offset: *offset,
                    key: None,
                    timestamp: None,
                    value: v.as_bytes(),
                };
                *offset += 1;
                let engine = &mut stage1[partition as usize];
                match engine.process(&rec) {
                    Err(r) => rejects.push(r.reason),
                    Ok(()) => idle[partition as usize] = false,
                }
                if !engine.take_results().is_empty() {
                    return Err("a stage-1 engine emitted results".into());
                }
                partition
            }
        };
        for partial in stage1[p as usize].take_partials() {
            let to = route(&partial);
            sent.push(partial.clone());
            deliver(
                &mut stage2,
                &mut log_offsets,
                &Partial::Aggregate(partial),
                to,
            )?;
        }
        while let Some((at, which)) = resend.peek() {
            if *at > i || sent.is_empty() {
                break;
            }
            let again = sent[which % sent.len()].clone();
            let to = route(&again);
            deliver(
                &mut stage2,
                &mut log_offsets,
                &Partial::Aggregate(again),
                to,
            )?;
            resend.next();
        }
        let wm = stage1[p as usize].watermark();
        let marker = Partial::Watermark {
            source: p,
            watermark: (wm != i64::MIN).then_some(wm),
            idle: idle[p as usize],
            tag: None,
            results_from: None,
        };
        for to in 0..merges {
            deliver(&mut stage2, &mut log_offsets, &marker, to)?;
        }
        for s in stage2.iter_mut() {
            results.extend(s.take_results());
        }
    }
    // End of input: every stage-1 engine flushes, then says so.
    for p in 0..partitions {
        let engine = &mut stage1[p as usize];
        engine.finish();
        for partial in engine.take_partials() {
            let to = route(&partial);
            deliver(
                &mut stage2,
                &mut log_offsets,
                &Partial::Aggregate(partial),
                to,
            )?;
        }
        if engine.open_rows() != 0 {
            return Err(format!(
                "stage 1 of partition {p} kept {} rows",
                engine.open_rows()
            ));
        }
    }
    for s in stage2.iter_mut() {
        s.finish();
        results.extend(s.take_results());
        if s.open_rows() != 0 || s.open_groups() != 0 {
            return Err(format!(
                "the merge stage kept {} rows, {} groups",
                s.open_rows(),
                s.open_groups()
            ));
        }
    }
    Ok(Run { results, rejects })
}

fn aligned_job_strategy() -> impl Strategy<Value = Job> {
    job_strategy().prop_filter("aligned windows", |j| !matches!(j.window, Win::Session(_)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Two stages give the results of one engine reading every partition, for every aggregation,
    /// with partials re-sent at random, however many merge-stage engines share the groups.
    #[test]
    fn two_stages_equal_the_naive_reference(
        job in aligned_job_strategy(),
        partitions in 1i32..=4,
        merges in 1usize..=3,
        seed_events in events_strategy(4),
        resend in proptest::collection::vec((0usize..300, any::<usize>()), 0..20),
    ) {
        let events: Vec<Event> = seed_events
            .into_iter()
            .filter(|e| match e {
                Event::Record { partition, .. } | Event::Idle(partition) => *partition < partitions,
            })
            .collect();
        let mut resend = resend;
        resend.sort();
        let run = run_two_stages(&job, &events, partitions, merges, &resend);
        let run = match run {
            Ok(r) => r,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\njob: {job:?}"))),
        };
        if let Err(e) = compare_run(&job, &events, partitions, &run, true) {
            prop_assert!(false, "{}\njob: {:?}", e, job);
        }
    }
}
