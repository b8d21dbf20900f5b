//! The lag autoscaler's decision: pure, with the clock passed in (issue 19; docs/operator.md,
//! "Autoscaling").
//!
//! Each reconcile of a job with `spec.autoscaling` gives the [`Autoscaler`] a [`Sample`]: the
//! job's lag (records in the source topic not yet checkpointed, as `status.lag`) and how far its
//! workers have got (the sum of the checkpointed next offsets), at a time in milliseconds. From
//! the samples of the last [`Policy::trend`] it knows whether the lag grows or drains, how fast
//! the workers read, and so how fast records arrive. [`Autoscaler::decide`] then chooses a
//! replica count:
//!
//! - **Which counts.** Only counts that spread the partitions evenly enough that every worker
//!   added lowers the most partitions any worker reads ([`useful_counts`]): with 8 partitions,
//!   1, 2, 3, 4 and 8 (5 workers would still leave one worker with 2). Never more than the
//!   partitions, never outside `[minReplicas, maxReplicas]`.
//! - **Up, quickly.** When the lag is over `targetLagPerReplica` × workers and the workers do not
//!   drain it within [`Policy::drain_within`], the count that reads what arrives plus the excess
//!   within that time, from the measured rate per worker (or, before any rate is known, lag ÷
//!   target). At most once per [`Policy::up_cooldown`], so a handoff has time to show its effect.
//! - **Down, slowly.** The count is lowered only to the *highest* recommendation of the last
//!   [`Policy::stabilization`] and only that long after the last change (as the HPA's scale-down
//!   stabilisation window): a sawtooth lag whose peaks need N workers keeps N.
//!
//! Rates per worker are only learnt while the workers are saturated (lag over target): a worker
//! that keeps up reads what arrives, which says nothing of how much more it could read.

use std::collections::VecDeque;

/// What the decision needs to know of the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `spec.autoscaling.minReplicas`.
    pub min_replicas: i32,
    /// `spec.autoscaling.maxReplicas`.
    pub max_replicas: i32,
    /// `spec.autoscaling.targetLagPerReplica`, records.
    pub target_lag_per_replica: i64,
    /// Source partitions: never more workers.
    pub partitions: i32,
    /// The samples a trend is computed over, ms.
    pub trend_ms: i64,
    /// Lag over target that drains within this (ms) at the current rate does not scale up.
    pub drain_within_ms: i64,
    /// Least time between a change and a scale-up, ms.
    pub up_cooldown_ms: i64,
    /// Scale down only to the highest recommendation of this long, and this long after the
    /// last change, ms.
    pub stabilization_ms: i64,
}

/// Default `targetLagPerReplica`.
pub const DEFAULT_TARGET_LAG_PER_REPLICA: i64 = 10_000;

impl Policy {
    /// The policy of `spec.autoscaling` over `partitions`, with the default timings: a trend over
    /// 1 min, excess lag drained within 2 min, scale up at most every 30 s, scale down after 5
    /// min of stable recommendations.
    pub fn new(a: &weir_crds::Autoscaling, partitions: i32) -> Policy {
        Policy {
            min_replicas: a.min_replicas,
            max_replicas: a.max_replicas,
            target_lag_per_replica: a
                .target_lag_per_replica
                .unwrap_or(DEFAULT_TARGET_LAG_PER_REPLICA)
                .max(1),
            partitions,
            trend_ms: 60_000,
            drain_within_ms: 120_000,
            up_cooldown_ms: 30_000,
            stabilization_ms: 300_000,
        }
    }

    /// The smallest and largest counts the policy allows (at least 1, at most the partitions).
    fn bounds(&self) -> (i32, i32) {
        let top = self.max_replicas.min(self.partitions).max(1);
        (self.min_replicas.clamp(1, top), top)
    }
}

/// Replica counts for which one more worker lowers the most partitions a worker reads:
/// for each value of ⌈partitions / n⌉, its smallest n. Ascending; `[1]` for 0 or 1 partitions.
pub fn useful_counts(partitions: i32) -> Vec<i32> {
    let p = partitions.max(1);
    let mut out: Vec<i32> = Vec::new();
    let mut last = i32::MAX;
    for n in 1..=p {
        let per = (p + n - 1) / n;
        if per < last {
            out.push(n);
            last = per;
        }
    }
    out
}

/// The smallest useful count at or above `n`, within the policy's bounds.
fn round_up(policy: &Policy, n: i32) -> i32 {
    let (lo, hi) = policy.bounds();
    let useful = useful_counts(policy.partitions);
    let n = n.clamp(lo, hi);
    useful
        .iter()
        .copied()
        .find(|&u| u >= n && u >= lo)
        .unwrap_or(hi)
        .clamp(lo, hi)
}

/// One observation of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When, ms (any monotonic origin; the same for every sample of a job).
    pub at_ms: i64,
    /// Records not yet checkpointed, summed over the source partitions.
    pub lag: i64,
    /// Checkpointed next offsets, summed over the source partitions: how far the workers got.
    pub processed: i64,
}

/// Why the count is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not enough samples for a trend yet; the count is only brought within bounds.
    Warming,
    /// The lag is over target and the workers do not drain it in time: scaled up.
    LagGrowing,
    /// The lag is over target but drains in time: unchanged.
    LagDraining,
    /// The lag is within target: unchanged.
    WithinTarget,
    /// Fewer workers would do, but not for the whole stabilisation window yet.
    Stabilizing,
    /// Fewer workers did for the whole stabilisation window: scaled down.
    LagLow,
    /// Scaling up waits for the cooldown after the last change.
    Cooldown,
    /// The count was outside `[minReplicas, min(maxReplicas, partitions)]`.
    Bounds,
    /// The workers are not all ready on the current template yet: no sample, no decision.
    RollingOut,
    /// The job is suspended (`spec.suspend`): the count it resumes with is kept.
    Suspended,
}

impl Reason {
    /// The reason as written in status and Events (`LagGrowing`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Warming => "Warming",
            Reason::LagGrowing => "LagGrowing",
            Reason::LagDraining => "LagDraining",
            Reason::WithinTarget => "WithinTarget",
            Reason::Stabilizing => "Stabilizing",
            Reason::LagLow => "LagLow",
            Reason::Cooldown => "Cooldown",
            Reason::Bounds => "Bounds",
            Reason::RollingOut => "RollingOut",
            Reason::Suspended => "Suspended",
        }
    }
}

/// What [`Autoscaler::decide`] chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The replica count to run.
    pub replicas: i32,
    /// The count that ran when it decided.
    pub current: i32,
    /// The count the lag and rates alone call for (rounded to a useful count, within bounds).
    pub recommended: i32,
    /// Why.
    pub reason: Reason,
    /// For a person: the numbers behind it.
    pub message: String,
}

/// The lag and rates at the last sample.
#[derive(Clone, Copy, Debug)]
struct Trend {
    lag: i64,
    /// `targetLagPerReplica` × workers.
    allowed: i64,
    workers: i32,
    saturated: bool,
    /// Records/s the lag grew (negative: drained).
    lag_slope: f64,
    read_rate: f64,
    arrival: f64,
}

impl Trend {
    fn describe(&self) -> String {
        format!(
            "lag {} (target {} for {} workers), {} {:.0}/s, read {:.0}/s, arriving {:.0}/s",
            self.lag,
            self.allowed,
            self.workers,
            if self.lag_slope >= 0.0 {
                "growing"
            } else {
                "draining"
            },
            self.lag_slope.abs(),
            self.read_rate,
            self.arrival
        )
    }
}

/// A job's autoscaler state: recent samples and recommendations, the last change.
#[derive(Clone, Debug, Default)]
pub struct Autoscaler {
    samples: VecDeque<Sample>,
    /// (at_ms, recommended count), for the scale-down stabilisation.
    recommendations: VecDeque<(i64, i32)>,
    last_change_ms: Option<i64>,
    /// Records per second one worker read while saturated (smoothed).
    per_worker_rate: Option<f64>,
}

impl Autoscaler {
    /// Add a sample (older samples than the trend window are forgotten). A sample whose
    /// `processed` went down (a reset, checkpoints deleted) starts the history again.
    pub fn observe(&mut self, s: Sample, policy: &Policy) {
        if let Some(last) = self.samples.back() {
            if s.processed < last.processed || s.at_ms < last.at_ms {
                self.samples.clear();
            }
        }
        self.samples.push_back(s);
        while let Some(first) = self.samples.front() {
            if s.at_ms - first.at_ms > policy.trend_ms && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// While a change rolls out: `current` stays (within bounds), nothing is sampled, and the
    /// next trend starts once every worker is ready.
    pub fn rolling_out(&mut self, policy: &Policy, current: i32, now_ms: i64) -> Decision {
        self.hold(
            policy,
            current,
            now_ms,
            Reason::RollingOut,
            "waiting for every worker to be ready before the next decision",
        )
    }

    /// While the job is suspended: `current` stays (within bounds), so that it resumes with
    /// the count it had; nothing is sampled.
    pub fn suspended(&mut self, policy: &Policy, current: i32, now_ms: i64) -> Decision {
        self.hold(
            policy,
            current,
            now_ms,
            Reason::Suspended,
            "suspended: no decision until the job resumes",
        )
    }

    fn hold(
        &mut self,
        policy: &Policy,
        current: i32,
        now_ms: i64,
        reason: Reason,
        message: &str,
    ) -> Decision {
        self.samples.clear();
        let (lo, hi) = policy.bounds();
        let replicas = current.clamp(lo, hi);
        let reason = if replicas == current {
            reason
        } else {
            Reason::Bounds
        };
        self.decision(
            replicas,
            replicas,
            current,
            now_ms,
            reason,
            message.to_string(),
        )
    }

    /// The replica count to run now, `current` being what runs.
    pub fn decide(&mut self, policy: &Policy, current: i32, now_ms: i64) -> Decision {
        let (lo, hi) = policy.bounds();
        let (first, last) = match (self.samples.front(), self.samples.back()) {
            (Some(f), Some(l)) if l.at_ms - f.at_ms >= policy.trend_ms / 2 => (*f, *l),
            _ => {
                let replicas = current.clamp(lo, hi);
                return self.decision(
                    replicas,
                    replicas,
                    current,
                    now_ms,
                    if replicas != current {
                        Reason::Bounds
                    } else {
                        Reason::Warming
                    },
                    format!(
                        "{} samples so far, a trend needs {} s",
                        self.samples.len(),
                        policy.trend_ms / 2000
                    ),
                );
            }
        };
        let trend = self.trend(policy, current, first, last);
        let recommended = round_up(policy, self.recommend(policy, &trend));
        self.recommendations.push_back((now_ms, recommended));
        while let Some(&(at, _)) = self.recommendations.front() {
            if now_ms - at > policy.stabilization_ms {
                self.recommendations.pop_front();
            } else {
                break;
            }
        }
        let (replicas, reason) = self.choose(policy, current, recommended, trend.saturated, now_ms);
        self.decision(
            replicas,
            recommended,
            current,
            now_ms,
            reason,
            trend.describe(),
        )
    }

    /// The lag and rates from the last two samples (a burst shows at once; the stabilisation
    /// window, not an average, keeps a sawtooth's peaks in view), and the rate per worker
    /// learnt while saturated.
    fn trend(&mut self, policy: &Policy, current: i32, first: Sample, last: Sample) -> Trend {
        let prev = self.samples.iter().rev().nth(1).copied().unwrap_or(first);
        let secs = ((last.at_ms - prev.at_ms) as f64 / 1000.0).max(0.001);
        let read_rate = (last.processed - prev.processed) as f64 / secs;
        let lag_slope = (last.lag - prev.lag) as f64 / secs;
        let lag = last.lag.max(0);
        let workers = current.max(1);
        let allowed = policy
            .target_lag_per_replica
            .saturating_mul(i64::from(workers));
        let saturated = lag > allowed;
        if saturated && read_rate > 0.0 {
            let rate = read_rate / f64::from(workers);
            self.per_worker_rate = Some(match self.per_worker_rate {
                Some(old) => 0.5 * old + 0.5 * rate,
                None => rate,
            });
        }
        Trend {
            lag,
            allowed,
            workers,
            saturated,
            lag_slope,
            read_rate,
            arrival: (read_rate + lag_slope).max(0.0),
        }
    }

    /// The count the trend calls for, before rounding to a useful count.
    fn recommend(&self, policy: &Policy, t: &Trend) -> i32 {
        let target = policy.target_lag_per_replica;
        let by_lag = i32::try_from((t.lag + target - 1) / target).unwrap_or(i32::MAX);
        let drain_s = policy.drain_within_ms as f64 / 1000.0;
        if t.saturated {
            let excess = (t.lag - t.allowed) as f64;
            if t.lag_slope < 0.0 && excess / -t.lag_slope <= drain_s {
                return t.workers;
            }
            let wanted = match self.per_worker_rate {
                Some(rate) if rate > 0.0 => ((t.arrival + excess / drain_s) / rate)
                    .ceil()
                    .min(f64::from(i32::MAX)) as i32,
                _ => by_lag,
            };
            return wanted.max(t.workers + 1);
        }
        // Within target: enough workers to read what arrives with a fifth to spare, when their
        // rate is known, and to hold the lag within target. Before any rate is known the lag
        // alone decides; a count too small then saturates, which measures the rate.
        let by_rate = match self.per_worker_rate {
            Some(rate) if rate > 0.0 => (t.arrival * 1.2 / rate).ceil() as i32,
            _ => 1,
        };
        by_rate.max(by_lag).min(t.workers)
    }

    /// From the recommendation to the count: bounds, then up at once (after the cooldown),
    /// down only to the highest recommendation of the stabilisation window.
    fn choose(
        &self,
        policy: &Policy,
        current: i32,
        recommended: i32,
        saturated: bool,
        now_ms: i64,
    ) -> (i32, Reason) {
        let (lo, hi) = policy.bounds();
        let since_change = self.last_change_ms.map(|t| now_ms - t);
        if current < lo || current > hi {
            return (current.clamp(lo, hi), Reason::Bounds);
        }
        if recommended > current {
            if since_change.is_some_and(|d| d < policy.up_cooldown_ms) {
                return (current, Reason::Cooldown);
            }
            return (recommended, Reason::LagGrowing);
        }
        if recommended < current {
            // The highest recommendation over the window, which must have been observed for
            // the whole window since the last change.
            let held = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(current);
            let observed_since = self.recommendations.front().map_or(now_ms, |&(at, _)| at);
            let long_enough = since_change.is_none_or(|d| d >= policy.stabilization_ms)
                && now_ms - observed_since >= policy.stabilization_ms * 9 / 10;
            if held < current && long_enough {
                return (held, Reason::LagLow);
            }
            return (current, Reason::Stabilizing);
        }
        if saturated {
            (current, Reason::LagDraining)
        } else {
            (current, Reason::WithinTarget)
        }
    }

    fn decision(
        &mut self,
        replicas: i32,
        recommended: i32,
        current: i32,
        now_ms: i64,
        reason: Reason,
        numbers: String,
    ) -> Decision {
        if replicas != current {
            self.last_change_ms = Some(now_ms);
            // A new count starts a new trend: the old rates were of the old count.
            self.samples.clear();
        }
        let message = if replicas == current {
            format!("{replicas} workers: {numbers}")
        } else {
            format!("{current} → {replicas} workers: {numbers}")
        };
        Decision {
            replicas,
            current,
            recommended,
            reason,
            message,
        }
    }
}

#[cfg(test)]
mod tests;
