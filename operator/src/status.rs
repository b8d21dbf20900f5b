//! The `status` step: a pure computation of a StreamJob's status, once per reconcile, from the
//! job, what observe read and the [`Outcome`] of validate → build → apply; and
//! [`needs_update`], which says whether it is worth a patch (not when only timestamps moved).
//! One small function per condition.
//!
//! Conditions, each with a reason a person can act on:
//! - `Ready`: results are flowing. False with `InvalidSpec`, `NameConflict`, `TopicNotFound`,
//!   `BrokerUnreachable`, `RepartitionTopicUnavailable` or `WorkersNotReady`; true with
//!   `Running`.
//! - `Progressing`: a change is rolling out (`RollingOut`); false with `UpToDate`, or with the
//!   blocking reason when nothing can roll out.
//! - `Degraded`: something needs attention even if results flow: the blocking reason,
//!   `RetentionShorterThanWindow`, `RepartitionPartitionsFixed`, `WorkersNotReady` (rollout
//!   done, workers still not ready), `StateFull` (partitions refused records recently: the
//!   workers' bound on open state is full, [`crate::state_full`]); false with `Healthy`.
//! - `Suspended`: only once a job was suspended, as a Job's: true with `Suspended` while
//!   `spec.suspend` is true, false with `Resumed` after.
//!
//! While suspended, `Ready` is false with `Suspended`, and `Progressing` is true with
//! `Suspending` while worker pods remain, then false with `Suspended`. Otherwise `Progressing`
//! is true with `Resetting` while a `spec.reset` is not applied on every source partition, then
//! with `DefinitionChanged` while partitions still compute a previous result definition
//! (`status.definition`, from the checkpoints), then with `RollingOut`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use weir_crds::definition::fingerprint;
use weir_crds::human_ms;
use weir_crds::{
    names, AutoscalingStatus, DefinitionStatus, ResetStatus, StreamJob, StreamJobStatus, Window,
    WindowType,
};

use crate::desired::Workers;
use crate::kafka::{KafkaFailure, UNREACHABLE};
use crate::observation::{NameConflict, Observation, TopicObservation};
use crate::outcome::Outcome;

/// Condition types.
pub const READY: &str = "Ready";
/// See [`READY`].
pub const PROGRESSING: &str = "Progressing";
/// See [`READY`].
pub const DEGRADED: &str = "Degraded";
/// See [`READY`]: present only once the job was suspended.
pub const SUSPENDED: &str = "Suspended";

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
    /// An object the job needs exists under its name and is not the job's (a child without the
    /// job's controller reference, or a repartition topic nothing shows is the job's); the
    /// message names it and says how to resolve it. Nothing is applied for the job meanwhile.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// `spec.suspend` is true (`Ready`, `Suspended`; `Progressing` once no worker pod is left).
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.suspend` is true and worker pods are still stopping (`Progressing`).
    pub const SUSPENDING: &str = "Suspending";
    /// `spec.suspend` went back to false (`Suspended=False`).
    pub const RESUMED: &str = "Resumed";
    /// A `spec.reset` is not yet applied on every source partition (`Progressing`).
    pub const RESETTING: &str = "Resetting";
    /// Source partitions still compute a previous result definition (`Progressing`).
    pub const DEFINITION_CHANGED: &str = "DefinitionChanged";
    /// `Progressing`: a new assignment moves partitions between running workers, and some are
    /// still with their previous worker (their checkpoints are of an older epoch).
    pub const HANDING_OFF: &str = "HandingOff";
    /// `Degraded`: partitions refused records recently because the workers' bound on open
    /// (group, window) state is full ([`crate::state_full`]).
    pub const STATE_FULL: &str = "StateFull";
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

/// Whether the StatefulSet finished its rollout and every replica it wants is ready: the
/// autoscaler samples only then.
pub fn workers_settled(sts: Option<&StatefulSet>) -> bool {
    let r = rollout(sts, None);
    r.done && r.ready == r.wanted
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

/// A condition before its generation and transition time are set: (ok, reason, message).
type Cond = (bool, &'static str, String);

/// What the status is computed from, resolved once: the observation, with what apply changed.
struct Facts<'a> {
    job: &'a StreamJob,
    obs: &'a Observation,
    /// The partition-dependent objects built, if any.
    workers: Option<&'a Workers>,
    /// The StatefulSet as applied this reconcile, else as observed.
    stateful_set: Option<&'a StatefulSet>,
    /// The repartition topic as observed, or unreachable when apply could not create it.
    repartition: Option<TopicObservation>,
    /// The brokers' answer when they refused to create the repartition topic (a Kafka error,
    /// which the status may show; [`KafkaFailure`]).
    repartition_answer: Option<String>,
    rollout: Rollout,
    /// The time of this reconcile, ms since the Unix epoch.
    now_ms: i64,
}

impl<'a> Facts<'a> {
    fn new(job: &'a StreamJob, outcome: &'a Outcome<'a>, obs: &'a Observation, now: &Time) -> Self {
        let workers = outcome.desired().and_then(|d| d.workers.as_ref());
        let applied = outcome.applied();
        let stateful_set = applied
            .and_then(|a| a.stateful_set.as_deref())
            .or(obs.stateful_set.as_ref());
        let refused = applied.and_then(|a| a.repartition_topic_refused.as_ref());
        let repartition = match refused {
            Some(failure) => Some(TopicObservation::BrokerUnreachable {
                detail: failure.detail().to_string(),
            }),
            None => obs.repartition.clone(),
        };
        let repartition_answer = match refused {
            Some(KafkaFailure::Refused(answer)) => Some(answer.clone()),
            _ => None,
        };
        let wanted = if job.spec.suspend {
            Some(0)
        } else {
            workers.map(|w| w.assignment.workers.len() as i32)
        };
        Facts {
            job,
            obs,
            workers,
            stateful_set,
            repartition,
            repartition_answer,
            rollout: rollout(stateful_set, wanted),
            now_ms: now.0.as_millisecond(),
        }
    }

    fn epoch(&self) -> i64 {
        self.workers.map_or(0, |w| w.assignment.epoch)
    }

    fn workers_msg(&self) -> String {
        format!(
            "{} of {} workers ready",
            self.rollout.ready, self.rollout.wanted
        )
    }
}

/// The reason that stops the job from being (re)configured at all, if any: an invalid spec,
/// names held by objects that are not the job's, the source topic missing or unreadable, or the
/// repartition topic another's or unavailable.
fn blocked(f: &Facts<'_>, outcome: &Outcome<'_>) -> Option<(&'static str, String)> {
    let spec = &f.job.spec;
    let topic = &spec.source.kafka.topic;
    let brokers = &spec.source.kafka.bootstrap_servers;
    if let Outcome::InvalidSpec(invalid) = outcome {
        let fix = if invalid.in_secret {
            "Fix the spec or the Secret; nothing is changed until then (the Secret is read again \
             every 30 s)"
        } else {
            "Fix the spec; nothing is changed until then"
        };
        return Some((reason::INVALID_SPEC, format!("{invalid}. {fix}")));
    }
    let conflicts = outcome
        .applied()
        .map_or(&[][..], |a| a.name_conflicts.as_slice());
    if !conflicts.is_empty() {
        return Some((
            reason::NAME_CONFLICT,
            name_conflict_message(f.job, conflicts),
        ));
    }
    if let Some(conflict) = f.obs.repartition_conflict() {
        let message = topic_conflict_message(conflict, brokers);
        return Some((reason::NAME_CONFLICT, message));
    }
    match (&f.obs.topic, &f.repartition) {
        (TopicObservation::NotFound, _) => Some((
            reason::TOPIC_NOT_FOUND,
            format!(
                "topic {topic} does not exist on {brokers}: create it, or correct \
                 spec.source.kafka.topic or bootstrapServers"
            ),
        )),
        (TopicObservation::CredentialsMissing { message }, _) => Some((
            reason::BROKER_UNREACHABLE,
            format!(
                "cannot read the metadata of topic {topic} from {brokers}: {message}. Create \
                 the Secret, or correct spec.source.kafka.credentials"
            ),
        )),
        (TopicObservation::BrokerUnreachable { .. }, _) => Some((
            reason::BROKER_UNREACHABLE,
            unreachable_message(topic, brokers),
        )),
        (TopicObservation::Found { .. }, _) if f.workers.is_none() => Some((
            reason::TOPIC_NOT_FOUND,
            format!("topic {topic} on {brokers} reports no partitions"),
        )),
        (TopicObservation::Found { .. }, Some(TopicObservation::BrokerUnreachable { .. })) => {
            let answer = f.repartition_answer.as_deref().unwrap_or(UNREACHABLE);
            Some((
                reason::REPARTITION_TOPIC_UNAVAILABLE,
                format!(
                    "the repartition topic {} (groups span source partitions, so results are \
                     merged in a second stage through it) can be neither read nor created on \
                     {brokers}: {answer}. Allow the job's Kafka identity to describe and create \
                     it, or create it yourself",
                    repartition_topic_name(f.job, f.obs)
                ),
            ))
        }
        (TopicObservation::Found { .. }, _) => None,
    }
}

/// What [`reason::BROKER_UNREACHABLE`] says when the brokers could not be asked: one text,
/// whatever failed — a refused connection, a timeout, a name that does not resolve, a TLS or
/// SASL handshake, an ACL. The job names the address, so the difference would tell its owner
/// which ports answer where the operator can reach; librdkafka's error is in the operator's
/// log (`observe::topics::source`), and the workers, in the job's namespace, log their own.
fn unreachable_message(topic: &weir_crds::TopicName, brokers: &str) -> String {
    format!(
        "cannot read the metadata of topic {topic} from {brokers}: no broker answered, or the \
         connection, its credentials or access to the topic was refused. Check \
         spec.source.kafka.bootstrapServers, that network policies let the operator reach the \
         brokers, and the credentials and ACLs (the operator uses only connection and \
         authentication properties, and a CA only as ssl.ca.pem). Which of these failed is not \
         shown here, as it would tell which ports answer at an address: the operator's log has \
         the error, and running workers log their own"
    )
}

/// What [`reason::NAME_CONFLICT`] says: which objects, and the ways out.
fn name_conflict_message(job: &StreamJob, conflicts: &[NameConflict]) -> String {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let objects: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
    let (exist, are) = if conflicts.len() == 1 {
        ("exists", "is")
    } else {
        ("exist", "are")
    };
    format!(
        "{} {exist} and {are} not this StreamJob's (no owner reference to it as controller): \
         the operator creates and changes nothing for the job until then. Delete or rename \
         {}, or give the StreamJob another name; to hand {} over to the job, add an owner \
         reference to StreamJob {name} (uid {uid}) with controller: true",
        objects.join(", "),
        if conflicts.len() == 1 { "it" } else { "them" },
        if conflicts.len() == 1 { "it" } else { "them" },
    )
}

/// `Ready`: every worker runs the current spec and assignment and is ready.
fn ready(f: &Facts<'_>) -> Cond {
    let r = &f.rollout;
    if r.done && r.ready >= r.wanted {
        let partitions: usize = f
            .workers
            .map_or(0, |w| w.assignment.workers.iter().map(Vec::len).sum());
        let msg = format!(
            "{} workers running {partitions} partitions (assignment epoch {})",
            r.wanted,
            f.epoch()
        );
        (true, reason::RUNNING, msg)
    } else {
        (false, reason::WORKERS_NOT_READY, f.workers_msg())
    }
}

/// `Ready` of a suspended job.
fn suspended_ready() -> Cond {
    let msg = "suspended (spec.suspend: true): no worker runs; the checkpoints, the job \
               ConfigMap and the topics are kept. Set spec.suspend: false to resume where the \
               workers stopped"
        .to_string();
    (false, reason::SUSPENDED, msg)
}

/// `Progressing` of a suspended job: `Suspending` while worker pods remain (each writes a final
/// checkpoint on SIGTERM), else `Suspended`.
fn suspended_progressing(f: &Facts<'_>) -> Cond {
    let left = f
        .obs
        .worker_pods
        .unwrap_or_else(|| usize::try_from(f.rollout.replicas).unwrap_or(0));
    if left > 0 {
        let msg =
            format!("suspending: {left} worker pod(s) stopping, each after a final checkpoint");
        (true, reason::SUSPENDING, msg)
    } else {
        let msg = "suspended: no worker pod is left".to_string();
        (false, reason::SUSPENDED, msg)
    }
}

/// `Progressing`: a reset being applied, then an edit of the result definition being taken up,
/// then a change rolling out.
fn progressing(f: &Facts<'_>, lifecycle: &Lifecycle) -> Cond {
    let r = &f.rollout;
    let workers = if r.done {
        String::new()
    } else {
        format!("; rolling out: {}", f.workers_msg())
    };
    if let Some(reset) = lifecycle.reset.as_ref().filter(|r| r.time.is_none()) {
        let msg = format!(
            "resetting to {} (spec.reset {}): {} of {} source partitions started again from \
             it{workers}",
            reset.to, reset.id, reset.applied_partitions, reset.partitions
        );
        return (true, reason::RESETTING, msg);
    }
    if let Some(d) = lifecycle
        .definition
        .as_ref()
        .filter(|d| d.previous_partitions > 0)
    {
        let msg = format!(
            "the result definition changed (now {}): {} of {} source partitions still run the \
             previous definition{workers}",
            d.fingerprint,
            d.previous_partitions,
            lifecycle.partitions.unwrap_or(d.previous_partitions)
        );
        return (true, reason::DEFINITION_CHANGED, msg);
    }
    let epoch = f.epoch();
    let behind = f
        .obs
        .checkpoint_marks
        .values()
        .filter(|m| m.epoch < epoch)
        .count();
    if f.workers.is_some() && behind > 0 {
        let msg = format!(
            "handing off partitions to the assignment of epoch {epoch}: {behind} of {} source \
             partitions still with their previous worker{workers}",
            f.obs.checkpoint_marks.len()
        );
        return (true, reason::HANDING_OFF, msg);
    }
    if r.done {
        let msg = "every worker runs the current spec and assignment".to_string();
        (false, reason::UP_TO_DATE, msg)
    } else {
        let msg = format!(
            "rolling out to {} workers (assignment epoch {}): {}",
            r.wanted,
            f.epoch(),
            f.workers_msg()
        );
        (true, reason::ROLLING_OUT, msg)
    }
}

/// `Degraded`: the first of retention shorter than the window, a repartition topic that keeps
/// another partition count than asked, workers not ready once the rollout is done, partitions
/// refusing records because the bound on open state is full.
fn degraded(f: &Facts<'_>) -> Cond {
    let retention = match &f.obs.topic {
        TopicObservation::Found { retention_ms, .. } => retention_warning(f.job, *retention_ms),
        _ => None,
    };
    if let Some(msg) = retention {
        return (true, reason::RETENTION_SHORTER_THAN_WINDOW, msg);
    }
    if let Some(msg) = repartition_warning(f.job, f.obs, f.repartition.as_ref()) {
        return (true, reason::REPARTITION_PARTITIONS_FIXED, msg);
    }
    let r = &f.rollout;
    if r.done && r.ready < r.wanted {
        let msg = format!("{}; see the worker pods' events and logs", f.workers_msg());
        return (true, reason::WORKERS_NOT_READY, msg);
    }
    if let Some(msg) = crate::state_full::warning(f.job, &f.obs.state_full, f.now_ms) {
        return (true, reason::STATE_FULL, msg);
    }
    (
        false,
        reason::HEALTHY,
        "nothing needs attention".to_string(),
    )
}

/// The conditions, with `observedGeneration`, and transition times kept from `previous` while
/// a condition's status does not change (`now` otherwise).
fn conditions(
    f: &Facts<'_>,
    outcome: &Outcome<'_>,
    lifecycle: &Lifecycle,
    previous: Option<&StreamJobStatus>,
    now: &Time,
) -> Vec<Condition> {
    let suspend = f.job.spec.suspend;
    let mut all: Vec<(&str, Cond)> = match blocked(f, outcome) {
        Some((why, msg)) => vec![
            (READY, (false, why, msg.clone())),
            (PROGRESSING, (false, why, msg.clone())),
            (DEGRADED, (true, why, msg)),
        ],
        None if suspend => vec![
            (READY, suspended_ready()),
            (PROGRESSING, suspended_progressing(f)),
            (DEGRADED, degraded(f)),
        ],
        None => vec![
            (READY, ready(f)),
            (PROGRESSING, progressing(f, lifecycle)),
            (DEGRADED, degraded(f)),
        ],
    };
    // As a Job's: absent until the job is first suspended, then True or False.
    if suspend {
        let msg = "spec.suspend is true: the workers are stopped".to_string();
        all.push((SUSPENDED, (true, reason::SUSPENDED, msg)));
    } else if previous.is_some_and(|p| p.conditions.iter().any(|c| c.type_ == SUSPENDED)) {
        let msg = "spec.suspend is false: the workers resume where they stopped".to_string();
        all.push((SUSPENDED, (false, reason::RESUMED, msg)));
    }
    let generation = f.job.metadata.generation;
    all.into_iter()
        .map(|(type_, (ok, reason, msg))| {
            let c = condition(type_, ok, reason, msg, generation);
            with_transition_time(c, previous, now)
        })
        .collect()
}

/// What the checkpoints say of the result definition and of the reset (DESIGN.md invariant 8),
/// for `status.definition` and `status.reset`.
struct Lifecycle {
    definition: Option<DefinitionStatus>,
    reset: Option<ResetStatus>,
    /// Source partitions, when known.
    partitions: Option<i32>,
}

fn time_of_ms(ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(Time)
}

/// `status.definition`: the spec's fingerprint, the source partitions whose checkpoint holds
/// another one (a checkpoint without one, written by a version before fingerprints, counts as
/// the current definition, as the workers read it), and once there is none, the latest first
/// window over the partitions.
pub fn definition_status(job: &StreamJob, obs: &Observation) -> DefinitionStatus {
    let current = fingerprint(&job.spec);
    let is_current = |d: &Option<String>| d.as_ref().is_none_or(|d| *d == current);
    let previous = obs
        .checkpoint_marks
        .values()
        .filter(|m| !is_current(&m.definition))
        .count();
    let results_from = if previous == 0 {
        obs.checkpoint_marks
            .values()
            .filter_map(|m| m.results_from_ms)
            .max()
            .and_then(time_of_ms)
    } else {
        None
    };
    DefinitionStatus {
        fingerprint: current,
        previous_partitions: i32::try_from(previous).unwrap_or(i32::MAX),
        results_from,
    }
}

/// `status.reset`: `spec.reset` and the source partitions whose checkpoint carries its identity;
/// its `time` is `now` when every one of the `partitions` does (kept from `previous` for the
/// same reset). Without `spec.reset`, the previous status's: the last reset stays recorded.
pub fn reset_status(
    job: &StreamJob,
    obs: &Observation,
    partitions: Option<i32>,
    previous: Option<&StreamJobStatus>,
    now: &Time,
) -> Option<ResetStatus> {
    let old = previous.and_then(|p| p.reset.as_ref());
    let Some(reset) = &job.spec.reset else {
        return old.cloned();
    };
    let id = reset.identity();
    let applied = obs
        .checkpoint_marks
        .values()
        .filter(|m| m.reset.as_deref() == Some(id.as_str()))
        .count();
    let applied = i32::try_from(applied).unwrap_or(i32::MAX);
    let partitions = partitions.unwrap_or(0);
    let old_time = old.filter(|o| o.id == id).and_then(|o| o.time.clone());
    let time = match old_time {
        Some(t) => Some(t),
        None if partitions > 0 && applied >= partitions => Some(now.clone()),
        None => None,
    };
    Some(ResetStatus {
        id,
        to: reset.to.text(),
        applied_partitions: applied,
        partitions,
        time,
    })
}

/// `c` with the transition time of `previous`'s condition of its type while its status is the
/// same, else `now`.
fn with_transition_time(
    mut c: Condition,
    previous: Option<&StreamJobStatus>,
    now: &Time,
) -> Condition {
    let old = previous
        .and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
        .filter(|o| o.status == c.status);
    c.last_transition_time = old.map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
    c
}

/// The status `job` should have, from what observe read (`obs`) and what this reconcile did
/// (`outcome`); `previous` is the status the job has now (its conditions' transition times are
/// kept while their status does not change); `now` the time of a transition.
pub fn compute(
    job: &StreamJob,
    outcome: &Outcome<'_>,
    obs: &Observation,
    previous: Option<&StreamJobStatus>,
    now: &Time,
) -> StreamJobStatus {
    let f = Facts::new(job, outcome, obs, now);
    let name = job.metadata.name.clone().unwrap_or_default();
    let previous_assignment = obs.previous_assignment.as_ref();
    let partitions = obs.topic.partitions().or_else(|| {
        previous_assignment.map(|a| a.workers.iter().map(Vec::len).sum::<usize>() as i32)
    });
    let sts_status = f.stateful_set.and_then(|s| s.status.as_ref());
    let lifecycle = Lifecycle {
        definition: Some(definition_status(job, obs)),
        reset: reset_status(job, obs, partitions, previous, now),
        partitions,
    };
    StreamJobStatus {
        observed_generation: job.metadata.generation,
        conditions: conditions(&f, outcome, &lifecycle, previous, now),
        replicas: sts_status.map_or(0, |s| s.replicas),
        ready_replicas: sts_status.and_then(|s| s.ready_replicas).unwrap_or(0),
        selector: Some(names::selector_string(&name)),
        window: Some(window_summary(&job.spec.window)),
        partitions,
        assignment_epoch: f
            .workers
            .map(|w| w.assignment.epoch)
            .or_else(|| previous_assignment.map(|a| a.epoch)),
        lag: obs.lag,
        repartition_lag: obs.repartition_lag,
        last_checkpoint_time: obs.last_checkpoint_time.clone(),
        autoscaling: autoscaling(obs, previous.and_then(|p| p.autoscaling.as_ref()), now),
        definition: lifecycle.definition,
        reset: lifecycle.reset,
    }
}

/// `status.autoscaling` from this reconcile's decision. The message keeps the numbers of the
/// last change of reason or count (not this reconcile's lag), so that a steady job's status is
/// not rewritten on every reconcile.
fn autoscaling(
    obs: &Observation,
    previous: Option<&AutoscalingStatus>,
    now: &Time,
) -> Option<AutoscalingStatus> {
    let d = obs.autoscale.as_ref()?;
    let reason = d.reason.as_str().to_string();
    let changed_count = previous.is_some_and(|p| p.desired_replicas != d.replicas);
    let same = previous.filter(|p| p.reason == reason && !changed_count);
    Some(AutoscalingStatus {
        desired_replicas: d.replicas,
        current_replicas: d.current,
        message: same.map_or_else(|| d.message.clone(), |p| p.message.clone()),
        last_scale_time: if changed_count {
            Some(now.clone())
        } else {
            previous.and_then(|p| p.last_scale_time.clone())
        },
        reason,
    })
}

/// The repartition topic the job uses (as observed), else the name it would create.
fn repartition_topic_name(job: &StreamJob, obs: &Observation) -> String {
    if let Some(t) = &obs.repartition_topic {
        return t.name.clone();
    }
    let name = job.metadata.name.as_deref().unwrap_or_default();
    weir_crds::repartition_topic(job.metadata.namespace.as_deref(), name)
}

/// Why a repartition topic that exists and that nothing of the job's claims is left alone, and
/// what a person can do.
fn topic_conflict_message(topic: &str, brokers: &str) -> String {
    format!(
        "the repartition topic {topic} already exists on {brokers}, and nothing shows it is this \
         job's (neither the job's ConfigMap nor its merge-stage checkpoints name it): the job \
         neither writes into it nor reads nor deletes it, and no worker is started. If it is left \
         from an earlier job of this name, or otherwise unused, delete it and the operator \
         creates it for this job; if it is in use by something else, give this job another name"
    )
}

/// The warning when `spec.repartition.partitions` asks for another count than the existing
/// repartition topic has: the topic keeps its count (see `desired`).
fn repartition_warning(
    job: &StreamJob,
    obs: &Observation,
    repartition: Option<&TopicObservation>,
) -> Option<String> {
    let wanted = job.spec.repartition.partitions?;
    let has = repartition?.partitions()?;
    (wanted != has).then(|| {
        format!(
            "the repartition topic {} has {has} partitions and keeps them, though \
             spec.repartition.partitions asks for {wanted}: each group's partials must keep \
             going to one merge. To change it, delete the job with \
             spec.checkpoint.deleteOnJobDeletion: true (its checkpoints and repartition topic go \
             with it) and create it again, or set spec.repartition.partitions back to {has}",
            repartition_topic_name(job, obs)
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

/// Whether `new` differs from `old` only in counts that move all the time (and timestamps):
/// the value of a known lag, the message of a `Degraded=True, reason StateFull` that stays so
/// (its partitions and their counts of refused records). Then it is written at most at the
/// requeue cadence (see `memory::LAG_REFRESH`), not on every reconcile. A lag that becomes known
/// or unknown, a condition that changes status or reason, is a change that matters.
pub fn only_counts_changed(old: &StreamJobStatus, new: &StreamJobStatus) -> bool {
    let known = |a: Option<i64>, b: Option<i64>| a.is_some() == b.is_some();
    if !known(old.lag, new.lag) || !known(old.repartition_lag, new.repartition_lag) {
        return false;
    }
    let mut same = new.clone();
    same.lag = old.lag;
    same.repartition_lag = old.repartition_lag;
    let was = find(Some(old), DEGRADED).filter(|c| c.reason == reason::STATE_FULL);
    let is = same.conditions.iter_mut().find(|c| c.type_ == DEGRADED);
    if let (Some(was), Some(is)) = (was, is) {
        if is.reason == was.reason && is.status == was.status {
            is.message.clone_from(&was.message);
        }
    }
    needs_update(old, new) && !needs_update(old, &same)
}

/// Whether `new` ends a rollout that `old` showed in progress: `Progressing` went from `True` to
/// `False` with reason `UpToDate` (every worker runs the current spec and assignment).
pub fn rolled_out(old: Option<&StreamJobStatus>, new: &StreamJobStatus) -> bool {
    let progressing = |s: &StreamJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)
            .map(|c| (c.status == "True", c.reason.clone()))
    };
    let was = old.and_then(progressing);
    let now = progressing(new);
    matches!(was, Some((true, _))) && now == Some((false, reason::UP_TO_DATE.to_string()))
}

/// The status of a job whose reconcile failed at `step` (an `Error::category`, such as
/// `ApplyRoleBinding` or `ReadObjectStoreCheckpoints`) with `message`: `previous` with
/// `Degraded=True` and `Progressing=False` naming the step and the message; `Ready` keeps a
/// previous `True` (running workers are not stopped by a failed reconcile), else is `False` with
/// the same reason. Lag, the other conditions (`Suspended`) and the other fields are kept from
/// `previous`: nothing new was read.
pub fn failed(
    job: &StreamJob,
    previous: Option<&StreamJobStatus>,
    step: &str,
    message: &str,
    now: &Time,
) -> StreamJobStatus {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut s = previous.cloned().unwrap_or_else(|| StreamJobStatus {
        selector: Some(names::selector_string(&name)),
        window: Some(window_summary(&job.spec.window)),
        ..StreamJobStatus::default()
    });
    let generation = job.metadata.generation;
    s.observed_generation = generation;
    let was_ready = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == READY))
        .filter(|c| c.status == "True");
    let ready = match was_ready {
        Some(c) => c.clone(),
        None => condition(READY, false, step, message.to_string(), generation),
    };
    let all = [
        ready,
        condition(PROGRESSING, false, step, message.to_string(), generation),
        condition(DEGRADED, true, step, message.to_string(), generation),
    ];
    // Others (`Suspended`) say what they said: nothing new was read.
    let kept = previous
        .into_iter()
        .flat_map(|p| &p.conditions)
        .filter(|c| ![READY, PROGRESSING, DEGRADED].contains(&c.type_.as_str()))
        .cloned();
    s.conditions = all
        .into_iter()
        .map(|c| with_transition_time(c, previous, now))
        .chain(kept)
        .collect();
    s
}

/// The condition `type_` of `s`, if present.
fn find<'a>(s: Option<&'a StreamJobStatus>, type_: &str) -> Option<&'a Condition> {
    s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Whether `s` shows the job suspended (`Suspended=True`).
pub fn is_suspended(s: Option<&StreamJobStatus>) -> bool {
    find(s, SUSPENDED).is_some_and(|c| c.status == "True")
}

/// The Normal Events (reason, message) that going from `old` to `new` announces, each once per
/// transition: `Suspended`, `Resumed`, `DefinitionChanged`, `DefinitionApplied`,
/// `ResetRequested`, `ResetApplied`. Pure: the same pair gives the same Events, and a status
/// written again unchanged gives none.
pub fn lifecycle_events(
    old: Option<&StreamJobStatus>,
    new: &StreamJobStatus,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let (was, is) = (is_suspended(old), is_suspended(Some(new)));
    if is && !was {
        out.push((
            event::SUSPENDED,
            "suspended: the workers stop, each after a final checkpoint".to_string(),
        ));
    }
    if was && !is && find(Some(new), SUSPENDED).is_some() {
        out.push((
            event::RESUMED,
            "resumed: the workers start again from their checkpoints".to_string(),
        ));
    }
    let old_def = old.and_then(|o| o.definition.as_ref());
    if let Some(d) = &new.definition {
        let was_pending = old_def.is_some_and(|o| o.previous_partitions > 0);
        let same = old_def.is_some_and(|o| o.fingerprint == d.fingerprint);
        if d.previous_partitions > 0 && !(same && was_pending) {
            out.push((
                event::DEFINITION_CHANGED,
                format!(
                    "the result definition changed (now {}): {} source partition(s) still run \
                     the previous one; the workers start the new one at a window boundary",
                    d.fingerprint, d.previous_partitions
                ),
            ));
        }
        let edited = old_def.is_some_and(|o| o.fingerprint != d.fingerprint);
        if d.previous_partitions == 0 && (was_pending || edited) {
            let from = match &d.results_from {
                Some(t) => format!("results of the new definition start at {}", t.0),
                None => {
                    "results of the new definition start where each partition started".to_string()
                }
            };
            out.push((
                event::DEFINITION_APPLIED,
                format!(
                    "every source partition computes the definition {}: {from}",
                    d.fingerprint
                ),
            ));
        }
    }
    let old_reset = old.and_then(|o| o.reset.as_ref());
    if let Some(r) = &new.reset {
        let same = old_reset.filter(|o| o.id == r.id);
        if same.is_none() && r.time.is_none() {
            out.push((
                event::RESET_REQUESTED,
                format!(
                    "reset {} requested: every source partition starts again from {}",
                    r.id, r.to
                ),
            ));
        }
        if r.time.is_some() && same.is_none_or(|o| o.time.is_none()) {
            out.push((
                event::RESET_APPLIED,
                format!(
                    "reset {} applied: all {} source partitions started again from {}",
                    r.id, r.partitions, r.to
                ),
            ));
        }
    }
    out
}

/// Reasons of the Normal Events of [`lifecycle_events`].
pub mod event {
    /// `spec.suspend` became true.
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.suspend` became false after being true.
    pub const RESUMED: &str = "Resumed";
    /// The spec's result definition differs from the one source partitions compute.
    pub const DEFINITION_CHANGED: &str = "DefinitionChanged";
    /// Every source partition computes the spec's definition.
    pub const DEFINITION_APPLIED: &str = "DefinitionApplied";
    /// A new `spec.reset` (another identity).
    pub const RESET_REQUESTED: &str = "ResetRequested";
    /// Every source partition applied the reset.
    pub const RESET_APPLIED: &str = "ResetApplied";
}
