//! The `status` step: a pure computation of a StreamJob's status from the job, the outcome of
//! `desired` and what observe read; and [`needs_update`], which says whether it is worth a
//! patch (not when only timestamps moved).
//!
//! Conditions, each with a reason a person can act on:
//! - `Ready`: results are flowing. False with `InvalidSpec`, `TopicNotFound`,
//!   `BrokerUnreachable`, `RepartitionTopicUnavailable` or `WorkersNotReady`; true with
//!   `Running`.
//! - `Progressing`: a change is rolling out (`RollingOut`); false with `UpToDate`, or with the
//!   blocking reason when nothing can roll out.
//! - `Degraded`: something needs attention even if results flow: the blocking reason,
//!   `RetentionShorterThanWindow`, `RepartitionPartitionsFixed`, `WorkersNotReady` (rollout
//!   done, workers still not ready); false with `Healthy`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use weir_crds::{StreamJob, StreamJobStatus, Window, WindowType};

use crate::desired::{Desired, InvalidSpec};
use crate::names;
use crate::observed::{Observed, TopicObservation};

/// Condition types.
pub const READY: &str = "Ready";
/// See [`READY`].
pub const PROGRESSING: &str = "Progressing";
/// See [`READY`].
pub const DEGRADED: &str = "Degraded";

/// Condition reasons.
pub mod reason {
    /// The spec is invalid; the message names the fields.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The source topic does not exist.
    pub const TOPIC_NOT_FOUND: &str = "TopicNotFound";
    /// The operator could not read the topic's metadata.
    pub const BROKER_UNREACHABLE: &str = "BrokerUnreachable";
    /// window + allowedLateness is longer than the topic's retention.
    pub const RETENTION_SHORTER_THAN_WINDOW: &str = "RetentionShorterThanWindow";
    /// Fewer workers ready than wanted.
    pub const WORKERS_NOT_READY: &str = "WorkersNotReady";
    /// Every worker runs the current spec and assignment and is ready.
    pub const RUNNING: &str = "Running";
    /// The StatefulSet is rolling out a change.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Nothing is rolling out.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Nothing needs attention.
    pub const HEALTHY: &str = "Healthy";
    /// A two-stage job's repartition topic can be neither read nor created.
    pub const REPARTITION_TOPIC_UNAVAILABLE: &str = "RepartitionTopicUnavailable";
    /// `spec.repartition.partitions` differs from the existing repartition topic, which keeps
    /// its partitions.
    pub const REPARTITION_PARTITIONS_FIXED: &str = "RepartitionPartitionsFixed";
}

/// Where the StatefulSet stands against what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rollout {
    wanted: i32,
    replicas: i32,
    ready: i32,
    done: bool,
}

fn rollout(sts: Option<&StatefulSet>, wanted: Option<i32>) -> Rollout {
    let status = sts.and_then(|s| s.status.as_ref());
    let replicas = status.map_or(0, |s| s.replicas);
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let wanted = wanted
        .or_else(|| sts.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas))
        .unwrap_or(0);
    let generation_seen = match (
        sts.and_then(|s| s.metadata.generation),
        status.and_then(|s| s.observed_generation),
    ) {
        (Some(g), Some(o)) => o >= g,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let revision_done = match status {
        Some(s) => match (&s.current_revision, &s.update_revision) {
            (Some(c), Some(u)) => c == u,
            _ => true,
        },
        None => false,
    };
    Rollout {
        wanted,
        replicas,
        ready,
        done: sts.is_some()
            && generation_seen
            && revision_done
            && replicas == wanted
            && updated == wanted,
    }
}

/// A short description of the window, for `kubectl get sj`: `tumbling 1m`,
/// `hopping 1m every 10s`, `session gap 5m`, with `+10s late` when lateness is allowed.
pub fn window_summary(w: &Window) -> String {
    let d = |x: &Option<weir_crds::Duration>| x.as_ref().map_or("?", |d| d.0.as_str()).to_string();
    let mut s = match w.kind {
        WindowType::Tumbling => format!("tumbling {}", d(&w.size)),
        WindowType::Hopping => format!("hopping {} every {}", d(&w.size), d(&w.slide)),
        WindowType::Session => format!("session gap {}", d(&w.gap)),
    };
    if let Some(l) = &w.allowed_lateness {
        if l.as_millis().is_ok_and(|ms| ms > 0) {
            s.push_str(&format!(" +{} late", l.0));
        }
    }
    s
}

/// Milliseconds as a short duration (`25h`, `1h30m`, `90s`, `250ms`).
fn human_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0s".to_string();
    }
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut rest = ms;
    let mut out = String::new();
    for (u, n) in units {
        if rest >= n {
            out.push_str(&format!("{}{u}", rest / n));
            rest %= n;
        }
    }
    out
}

/// The warning when records an open window may still need can be deleted by retention before
/// the window closes: window size (session: gap) + allowedLateness longer than `retention.ms`.
fn retention_warning(job: &StreamJob, retention_ms: Option<i64>) -> Option<String> {
    let retention = retention_ms.filter(|r| *r > 0)?;
    let w = &job.spec.window;
    let span = match w.kind {
        WindowType::Session => &w.gap,
        _ => &w.size,
    };
    let span_ms = span.as_ref()?.as_millis().ok()?;
    let late_ms = w
        .allowed_lateness
        .as_ref()
        .and_then(|l| l.as_millis().ok())
        .unwrap_or(0);
    let need = span_ms.saturating_add(late_ms);
    (need > retention).then(|| {
        format!(
            "window {} + allowedLateness {} = {} is longer than the retention of topic {} ({}): \
             after a restart, records an open window needs may already be deleted. Raise the \
             topic's retention.ms or shorten the window",
            human_ms(span_ms),
            human_ms(late_ms),
            human_ms(need),
            job.spec.source.kafka.topic,
            human_ms(retention)
        )
    })
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// The status `job` should have. `desired` is the outcome of [`crate::desired::desired`] for
/// this reconcile; `previous` the status the job has now (its conditions' transition times are
/// kept while their status does not change); `now` the time of a transition.
pub fn compute(
    job: &StreamJob,
    desired: Result<&Desired, &InvalidSpec>,
    obs: &Observed,
    previous: Option<&StreamJobStatus>,
    now: &Time,
) -> StreamJobStatus {
    let generation = job.metadata.generation;
    let name = job.metadata.name.clone().unwrap_or_default();
    let topic = &job.spec.source.kafka.topic;
    let brokers = &job.spec.source.kafka.bootstrap_servers;
    let workers = desired.ok().and_then(|d| d.workers.as_ref());
    let wanted = workers.map(|w| w.assignment.workers.len() as i32);
    let r = rollout(obs.stateful_set.as_ref(), wanted);
    let cond =
        |t: &str, ok: bool, reason: &str, msg: String| condition(t, ok, reason, msg, generation);

    // A reason that stops the job from being (re)configured at all.
    let blocked: Option<(&str, String)> = match (desired, &obs.topic) {
        (Err(invalid), _) => Some((
            reason::INVALID_SPEC,
            format!("{invalid}. Fix the spec; nothing is changed until then"),
        )),
        (Ok(_), TopicObservation::NotFound) => Some((
            reason::TOPIC_NOT_FOUND,
            format!(
                "topic {topic} does not exist on {brokers}: create it, or correct \
                 spec.source.kafka.topic or bootstrapServers"
            ),
        )),
        (Ok(_), TopicObservation::BrokerUnreachable { message }) => Some((
            reason::BROKER_UNREACHABLE,
            format!(
                "cannot read the metadata of topic {topic} from {brokers}: {message}. Check \
                 spec.source.kafka.bootstrapServers, the network and the credentials"
            ),
        )),
        (Ok(_), TopicObservation::Found { .. }) if workers.is_none() => Some((
            reason::TOPIC_NOT_FOUND,
            format!("topic {topic} on {brokers} reports no partitions"),
        )),
        (Ok(_), TopicObservation::Found { .. }) => match &obs.repartition {
            Some(TopicObservation::BrokerUnreachable { message }) => Some((
                reason::REPARTITION_TOPIC_UNAVAILABLE,
                format!(
                    "the repartition topic {} (groups span source partitions, so results are \
                     merged in a second stage through it) can be neither read nor created on \
                     {brokers}: {message}. Allow the job's Kafka identity to describe and create \
                     it, or create it yourself",
                    weir_crds::repartition_topic(job.metadata.namespace.as_deref(), &name)
                ),
            )),
            _ => None,
        },
    };
    let retention = match &obs.topic {
        TopicObservation::Found { retention_ms, .. } => retention_warning(job, *retention_ms),
        _ => None,
    };
    let fixed = repartition_warning(job, obs);
    let workers_msg = format!("{} of {} workers ready", r.ready, r.wanted);

    let (ready, progressing, degraded) = match &blocked {
        Some((why, msg)) => (
            cond(READY, false, why, msg.clone()),
            cond(PROGRESSING, false, why, msg.clone()),
            cond(DEGRADED, true, why, msg.clone()),
        ),
        None => {
            let epoch = workers.map_or(0, |w| w.assignment.epoch);
            let partitions: usize =
                workers.map_or(0, |w| w.assignment.workers.iter().map(Vec::len).sum());
            let ready = if r.done && r.ready >= r.wanted {
                cond(
                    READY,
                    true,
                    reason::RUNNING,
                    format!(
                        "{} workers running {partitions} partitions (assignment epoch {epoch})",
                        r.wanted
                    ),
                )
            } else {
                cond(READY, false, reason::WORKERS_NOT_READY, workers_msg.clone())
            };
            let progressing = if r.done {
                cond(
                    PROGRESSING,
                    false,
                    reason::UP_TO_DATE,
                    "every worker runs the current spec and assignment".to_string(),
                )
            } else {
                cond(
                    PROGRESSING,
                    true,
                    reason::ROLLING_OUT,
                    format!(
                        "rolling out to {} workers (assignment epoch {epoch}): {workers_msg}",
                        r.wanted
                    ),
                )
            };
            let degraded = match (&retention, &fixed) {
                (Some(msg), _) => cond(
                    DEGRADED,
                    true,
                    reason::RETENTION_SHORTER_THAN_WINDOW,
                    msg.clone(),
                ),
                (None, Some(msg)) => cond(
                    DEGRADED,
                    true,
                    reason::REPARTITION_PARTITIONS_FIXED,
                    msg.clone(),
                ),
                (None, None) if r.done && r.ready < r.wanted => cond(
                    DEGRADED,
                    true,
                    reason::WORKERS_NOT_READY,
                    format!("{workers_msg}; see the worker pods' events and logs"),
                ),
                (None, None) => cond(
                    DEGRADED,
                    false,
                    reason::HEALTHY,
                    "nothing needs attention".to_string(),
                ),
            };
            (ready, progressing, degraded)
        }
    };

    let conditions = [ready, progressing, degraded]
        .into_iter()
        .map(|mut c| {
            let old = previous
                .and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
                .filter(|o| o.status == c.status);
            c.last_transition_time =
                old.map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
            c
        })
        .collect();

    let previous_assignment = obs.previous_assignment.as_ref();
    let partitions = obs.topic.partitions().or_else(|| {
        previous_assignment.map(|a| a.workers.iter().map(Vec::len).sum::<usize>() as i32)
    });
    let sts_status = obs.stateful_set.as_ref().and_then(|s| s.status.as_ref());
    StreamJobStatus {
        observed_generation: generation,
        conditions,
        replicas: sts_status.map_or(0, |s| s.replicas),
        ready_replicas: sts_status.and_then(|s| s.ready_replicas).unwrap_or(0),
        selector: Some(names::selector_string(&name)),
        window: Some(window_summary(&job.spec.window)),
        partitions,
        assignment_epoch: workers
            .map(|w| w.assignment.epoch)
            .or_else(|| previous_assignment.map(|a| a.epoch)),
        lag: obs.lag,
        repartition_lag: obs.repartition_lag,
        last_checkpoint_time: obs.last_checkpoint_time.clone(),
    }
}

/// The warning when `spec.repartition.partitions` asks for another count than the existing
/// repartition topic has: the topic keeps its count (see `desired`).
fn repartition_warning(job: &StreamJob, obs: &Observed) -> Option<String> {
    let wanted = job.spec.repartition.partitions?;
    let has = obs.repartition.as_ref()?.partitions()?;
    (wanted != has).then(|| {
        let name = job.metadata.name.as_deref().unwrap_or_default();
        format!(
            "the repartition topic {} has {has} partitions and keeps them, though \
             spec.repartition.partitions asks for {wanted}: each group's partials must keep \
             going to one merge. To change it, delete the job with \
             spec.checkpoint.deleteOnJobDeletion: true (its checkpoints and repartition topic go \
             with it) and create it again, or set spec.repartition.partitions back to {has}",
            weir_crds::repartition_topic(job.metadata.namespace.as_deref(), name)
        )
    })
}

/// Whether `new` differs from `old` in anything but timestamps: the conditions'
/// `lastTransitionTime` and `lastCheckpointTime` alone never justify a patch (linkerd's
/// `eq_time_insensitive_conditions`).
pub fn needs_update(old: &StreamJobStatus, new: &StreamJobStatus) -> bool {
    let strip = |s: &StreamJobStatus| {
        let mut s = s.clone();
        s.last_checkpoint_time = None;
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(old) != strip(new)
}
