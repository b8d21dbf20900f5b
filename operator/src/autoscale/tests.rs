//! The decision function alone, then in a simulated job: records arrive at a rate, the workers
//! read up to their capacity, a new count takes effect after a handoff delay, and the operator
//! samples and decides on its reconcile cadence.

use super::*;

fn policy(partitions: i32, min: i32, max: i32) -> Policy {
    Policy::new(
        &weir_crds::Autoscaling {
            min_replicas: min,
            max_replicas: max,
            target_lag_per_replica: Some(10_000),
        },
        partitions,
    )
}

#[test]
fn useful_counts_are_those_that_lower_the_partitions_per_worker() {
    assert_eq!(useful_counts(8), vec![1, 2, 3, 4, 8]);
    assert_eq!(useful_counts(6), vec![1, 2, 3, 6]);
    assert_eq!(useful_counts(12), vec![1, 2, 3, 4, 6, 12]);
    assert_eq!(useful_counts(1), vec![1]);
    assert_eq!(useful_counts(0), vec![1]);
    let p = policy(8, 1, 8);
    assert_eq!(round_up(&p, 5), 8);
    assert_eq!(round_up(&p, 3), 3);
    assert_eq!(
        round_up(&policy(8, 1, 6), 5),
        6,
        "maxReplicas bounds a useful count"
    );
    assert_eq!(round_up(&policy(8, 2, 8), 1), 2, "minReplicas");
    assert_eq!(
        round_up(&policy(3, 1, 10), 9),
        3,
        "never more than the partitions"
    );
}

/// Feeds `samples` of (lag, processed), 10 s apart, and returns the first decision that is not
/// `Warming`, or the last.
fn feed(a: &mut Autoscaler, p: &Policy, current: i32, samples: &[(i64, i64)]) -> Decision {
    let mut last = None;
    for (i, &(lag, processed)) in samples.iter().enumerate() {
        let at_ms = i as i64 * 10_000;
        a.observe(
            Sample {
                at_ms,
                lag,
                processed,
            },
            p,
        );
        let d = a.decide(p, current, at_ms);
        if d.reason != Reason::Warming {
            return d;
        }
        last = Some(d);
    }
    last.expect("at least one sample")
}

#[test]
fn growing_lag_over_target_scales_up_at_once() {
    let p = policy(12, 1, 12);
    let mut a = Autoscaler::default();
    // 2 workers read 2,000/s; lag grows 3,000/s from 30,000 (over the 20,000 target).
    let samples: Vec<(i64, i64)> = (0..7).map(|i| (30_000 + 30_000 * i, 20_000 * i)).collect();
    let d = feed(&mut a, &p, 2, &samples);
    assert_eq!(d.reason, Reason::LagGrowing, "{d:?}");
    // Arriving 5,000/s at 1,000/s per worker, plus the excess: more than 5 → the useful 6.
    assert_eq!(d.replicas, 6, "{d:?}");
}

#[test]
fn lag_over_target_that_drains_in_time_does_not_scale_up() {
    let p = policy(12, 1, 12);
    let mut a = Autoscaler::default();
    // 2 workers, lag draining at 1,000/s from 76,000: at 46,000 the excess is gone in 26 s.
    let samples: Vec<(i64, i64)> = (0..7).map(|i| (76_000 - 10_000 * i, 20_000 * i)).collect();
    let d = feed(&mut a, &p, 2, &samples);
    assert_eq!((d.replicas, d.reason), (2, Reason::LagDraining), "{d:?}");
}

#[test]
fn low_lag_scales_down_only_after_the_stabilisation_window() {
    let p = policy(12, 1, 12);
    let mut a = Autoscaler::default();
    let mut current = 6;
    let mut changes = Vec::new();
    // Lag near zero, 500/s arriving and read.
    for i in 0..60 {
        let at_ms = i * 10_000;
        a.observe(
            Sample {
                at_ms,
                lag: 100,
                processed: 5_000 * i,
            },
            &p,
        );
        let d = a.decide(&p, current, at_ms);
        if d.replicas != current {
            changes.push((at_ms, d.replicas));
            current = d.replicas;
        }
    }
    assert_eq!(changes.len(), 1, "{changes:?}");
    let (at, to) = changes[0];
    assert!(
        at >= p.stabilization_ms * 9 / 10,
        "scaled down at {at} ms: {changes:?}"
    );
    // No rate is known (never saturated): lag alone calls for 1.
    assert_eq!(to, 1);
}

#[test]
fn bounds_are_enforced_even_without_a_trend() {
    let p = policy(8, 2, 4);
    let mut a = Autoscaler::default();
    assert_eq!(a.decide(&p, 7, 0).replicas, 4);
    assert_eq!(a.decide(&p, 7, 0).reason, Reason::Bounds);
    assert_eq!(a.decide(&p, 1, 0).replicas, 2);
    assert_eq!(a.decide(&p, 3, 0).reason, Reason::Warming);
}

#[test]
fn scale_up_waits_for_the_cooldown_after_a_change() {
    let p = policy(12, 1, 12);
    let mut a = Autoscaler::default();
    let grow: Vec<(i64, i64)> = (0..7).map(|i| (30_000 + 30_000 * i, 20_000 * i)).collect();
    let d = feed(&mut a, &p, 2, &grow);
    assert_eq!(d.replicas, 6);
    // Still growing right after (the new workers are not yet reading): no second step for 30 s.
    for (i, lag) in [(7, 250_000), (8, 280_000), (9, 310_000)] {
        a.observe(
            Sample {
                at_ms: i * 10_000,
                lag,
                processed: 140_000 + 20_000 * (i - 7),
            },
            &p,
        );
        let d = a.decide(&p, 6, i * 10_000);
        assert_eq!(d.replicas, 6, "at {i}: {d:?}");
    }
}

/// A simulated job: `arrival(t)` records/s, each worker reads up to `capacity`/s, a new count
/// takes effect `handoff_s` after the decision, and the operator decides every `every_s`.
struct Sim {
    policy: Policy,
    capacity: f64,
    handoff_s: i64,
    every_s: i64,
}

struct Trace {
    /// (second, replicas decided)
    changes: Vec<(i64, i32)>,
    /// (second, replicas running, lag)
    points: Vec<(i64, i32, f64)>,
}

impl Sim {
    fn run(&self, seconds: i64, arrival: impl Fn(i64) -> f64) -> Trace {
        let mut a = Autoscaler::default();
        let (mut lag, mut processed) = (0.0_f64, 0.0_f64);
        let mut running = self.policy.min_replicas;
        let mut decided = running;
        let mut pending: Option<(i64, i32)> = None;
        let mut trace = Trace {
            changes: Vec::new(),
            points: Vec::new(),
        };
        for t in 0..seconds {
            if let Some((at, n)) = pending {
                if t >= at {
                    running = n;
                    pending = None;
                }
            }
            lag += arrival(t);
            let read = lag.min(self.capacity * f64::from(running));
            lag -= read;
            processed += read;
            trace.points.push((t, running, lag));
            if t % self.every_s == 0 {
                a.observe(
                    Sample {
                        at_ms: t * 1000,
                        lag: lag as i64,
                        processed: processed as i64,
                    },
                    &self.policy,
                );
                let d = a.decide(&self.policy, decided, t * 1000);
                if d.replicas != decided {
                    decided = d.replicas;
                    trace.changes.push((t, decided));
                    pending = Some((t + self.handoff_s, decided));
                }
            }
        }
        trace
    }
}

fn sim() -> Sim {
    Sim {
        policy: policy(12, 1, 12),
        capacity: 1_000.0,
        handoff_s: 5,
        every_s: 10,
    }
}

#[test]
fn a_ten_fold_burst_for_two_minutes_scales_up_quickly_and_back_after_the_window() {
    let s = sim();
    let (start, end) = (600, 720);
    // 600/s, one worker is enough; 6,000/s (10×) for two minutes.
    let trace = s.run(1_800, |t| {
        if (start..end).contains(&t) {
            6_000.0
        } else {
            600.0
        }
    });
    let changes = &trace.changes;
    eprintln!("decisions: {changes:?}");

    // Before the burst nothing changes.
    assert!(changes.iter().all(|&(t, _)| t >= start), "{changes:?}");
    // Up: at least 6 workers (enough for 6,000/s) decided within 60 s of the burst.
    let up = changes
        .iter()
        .find(|&&(_, n)| n >= 6)
        .unwrap_or_else(|| panic!("never reached 6 workers: {changes:?}"));
    assert!(
        up.0 - start <= 60,
        "6 workers only after {} s",
        up.0 - start
    );
    // The lag is back under target within 3 minutes of the burst's start, and stays there.
    let under = trace
        .points
        .iter()
        .filter(|&&(t, _, _)| t >= end)
        .find(|&&(_, n, lag)| lag <= 10_000.0 * f64::from(n))
        .unwrap_or_else(|| panic!("lag never back under target"));
    assert!(
        under.0 - start <= 180,
        "lag under target after {} s",
        under.0 - start
    );
    // Down: back to 1 worker, not before the stabilisation window after the burst ended,
    // and not much after it.
    let last = *changes.last().unwrap_or(&(0, 0));
    assert_eq!(last.1, 1, "{changes:?}");
    assert!(
        last.0 >= end + 270 && last.0 <= end + 420,
        "back to 1 at {} s",
        last.0
    );
    // Monotone: up, then down, no back and forth; few decisions.
    let peak = changes
        .iter()
        .position(|&(_, n)| n == changes.iter().map(|c| c.1).max().unwrap_or(0))
        .unwrap_or(0);
    assert!(
        changes[..=peak].windows(2).all(|w| w[0].1 < w[1].1),
        "{changes:?}"
    );
    assert!(
        changes[peak..].windows(2).all(|w| w[0].1 > w[1].1),
        "{changes:?}"
    );
    assert!(
        changes.len() <= 5,
        "{} decisions: {changes:?}",
        changes.len()
    );
}

#[test]
fn a_sawtooth_lag_does_not_flap() {
    let s = sim();
    // Every minute: 20 s at 5,000/s then 40 s at 200/s (1,800/s on average).
    let trace = s.run(3_600, |t| if t % 60 < 20 { 5_000.0 } else { 200.0 });
    let changes = &trace.changes;
    eprintln!("decisions: {changes:?}");
    // It settles within the first 10 minutes and then holds for the remaining 50.
    assert!(
        changes.iter().all(|&(t, _)| t < 600),
        "changes after settling: {changes:?}"
    );
    assert!(changes.len() <= 3, "{changes:?}");
    // And what it holds keeps up: the lag never runs away.
    let worst = trace
        .points
        .iter()
        .filter(|&&(t, _, _)| t >= 600)
        .map(|&(_, _, lag)| lag)
        .fold(0.0, f64::max);
    assert!(worst < 200_000.0, "lag reached {worst}");
}

#[test]
fn never_more_workers_than_partitions_or_max() {
    let mut s = sim();
    s.policy = policy(4, 1, 10);
    let trace = s.run(900, |_| 50_000.0);
    assert!(
        trace.changes.iter().all(|&(_, n)| n <= 4),
        "{:?}",
        trace.changes
    );
    assert_eq!(trace.changes.last().map(|c| c.1), Some(4));
    s.policy = policy(12, 1, 3);
    let trace = s.run(900, |_| 50_000.0);
    assert_eq!(
        trace.changes.last().map(|c| c.1),
        Some(3),
        "{:?}",
        trace.changes
    );
}
