//! The controller: one reconcile = [`observe`] (reads only) → validate and build
//! ([`desired`], pure) → [`apply`] (every desired resource, in order) → [`status::compute`]
//! (pure, once, from the observation and the [`Outcome`]), patched only when
//! [`status::needs_update`]. A bad spec is a status (`Ready=False, reason InvalidSpec`) and no
//! write but the status; every other failure is an [`Error`] retried with per-object
//! exponential backoff and jitter ([`error_policy`]), and written to the status too
//! ([`status::failed`]: a condition naming the step) with a Warning Event.
//!
//! No reconcile storm: the StreamJob watch starts a reconcile only when what the operator acts
//! on changed ([`reconcile_worthy`]: generation, deletion, finalizers, annotations), never for
//! the operator's own status writes; children unchanged since their last apply are not applied
//! again ([`Memory`]); lag alone is written at most every [`LAG_REFRESH`](crate::memory::LAG_REFRESH).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{
    DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Error as ControllerError};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::{reflector, watcher, Controller, PredicateConfig, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn, Span};
use weir_crds::names::{self, FIELD_MANAGER, FINALIZER};
use weir_crds::{StreamJob, StreamJobStatus};

use crate::apply::{apply, Target};
use crate::autoscale;
use crate::desired::{desired, worker_count, OperatorConfig};
use crate::error::Error;
use crate::kafka::KafkaClient;
use crate::memory::Memory;
use crate::metrics::{CategoryLabel, Metrics};
use crate::observation::{Observation, TopicObservation};
use crate::observe::{children, observe, repartition_of_deleted};
use crate::outcome::Outcome;
use crate::secrets::Resolved;
use crate::status::{self, reason};

/// Requeue after a successful reconcile of a Ready job without lag: a safety net, since watches
/// already trigger on every change of the job's spec and of its children.
pub const REQUEUE_HEALTHY: Duration = Duration::from_secs(300);
/// Requeue while the job is not Ready (workers starting, topic missing, brokers unreachable)
/// or reports lag: the Kafka side changes without any Kubernetes event. Lag is refreshed at
/// this cadence (and written at most this often, [`LAG_REFRESH`](crate::memory::LAG_REFRESH)).
pub const REQUEUE_WAITING: Duration = crate::memory::LAG_REFRESH;
/// Periodic requeues ([`REQUEUE_WAITING`], [`REQUEUE_HEALTHY`]) are lengthened by up to this
/// fraction of their period, by a different amount per job ([`spread`]). Without it, jobs
/// reconciled together (every job at startup, after a restart or a round of edits) come back
/// together, period after period: in the reconcile benchmark 1,000 jobs reconciled within 3.5 s
/// were requeued within the same 3.5 s every 30 s, and those bursts set the p99 of the quiet
/// phases.
pub const REQUEUE_SPREAD: f64 = 0.2;

/// `period` lengthened by a fraction of up to [`REQUEUE_SPREAD`] of it that depends on the job
/// (a hash of its namespace and name, uniform over the jobs): jobs that start together come back
/// spread over a fifth of the period, and as their periods differ they drift further apart with
/// every round instead of coming back in bursts. Never shorter than `period` (lag written on a
/// requeue is then always due, [`LAG_REFRESH`](crate::memory::LAG_REFRESH)); the same for a job
/// every time (testable, and a job's cadence does not wander).
pub fn spread(period: Duration, namespace: &str, name: &str) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    // The top 53 bits, as a fraction in [0, 1).
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    period + period.mul_f64(fraction * REQUEUE_SPREAD)
}
/// First retry delay after an error; doubles per consecutive failure of the same object.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Reconciles running at once, by default. Unbounded (kube-runtime's default), an operator
/// starting with 1,000 jobs runs 1,000 reconciles at once: as many HTTP/1 connections to the
/// API server and Kafka requests, 217 MB of RSS and a p99 of 8 s per reconcile in the benchmark
/// against 33 MB and 68 ms with 16 (docs/benchmarks.md), for no gain in throughput. Once the API
/// server is the bottleneck, more reconciles at once only queue there: in the benchmark 8 start
/// 1,000 jobs as fast as 16, with about half the p99 (issue 16).
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Normal Event reason: the number of workers changed (`from → to`).
pub const SCALED: &str = "Scaled";
/// Normal Event reason: a new worker template (spec or assignment) is fully rolled out.
pub const ROLLED_OUT: &str = "RolledOut";

/// Reasons of the conditions a user must act on: each new one is also a Warning Event.
const ACTIONABLE: &[&str] = &[
    reason::INVALID_SPEC,
    reason::TOPIC_NOT_FOUND,
    reason::BROKER_UNREACHABLE,
    reason::RETENTION_SHORTER_THAN_WINDOW,
    reason::REPARTITION_TOPIC_UNAVAILABLE,
    reason::REPARTITION_PARTITIONS_FIXED,
    reason::NAME_CONFLICT,
    reason::STATE_FULL,
];

/// Consecutive failures per object, for [`error_policy`]; reset by a successful reconcile.
#[derive(Debug, Default)]
pub struct Backoff {
    attempts: Mutex<HashMap<(String, String), u32>>,
}

impl Backoff {
    /// Records one more failure of (namespace, name) and returns the delay before the retry:
    /// `BACKOFF_BASE · 2^(failures−1)`, at most [`BACKOFF_MAX`], with equal jitter (uniform in
    /// [d/2, d]) so that many jobs failing together do not retry in lockstep.
    pub fn next_delay(&self, key: (String, String)) -> Duration {
        let mut map = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (*n - 1).min(16));
        let d = exp.min(BACKOFF_MAX);
        d / 2 + d.mul_f64(fastrand::f64() / 2.0)
    }

    /// Forgets the failures of (namespace, name).
    pub fn reset(&self, key: &(String, String)) {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Consecutive failures of (namespace, name).
    pub fn attempts(&self, key: &(String, String)) -> u32 {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Reads topics, creates and deletes repartition topics.
    pub kafka: Arc<dyn KafkaClient>,
    /// Operator settings that shape the workers.
    pub config: OperatorConfig,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Per-object failure counts.
    pub backoff: Backoff,
    /// The children applied, and when each job's lag was written (shared with the owned-object
    /// watches, which forget an apply on drift).
    pub memory: Arc<Memory>,
    /// Milliseconds on a monotonic clock, for the autoscaler (tests pass their own).
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Context {
    /// A context with fresh backoff state; Events are reported as `weir-operator` (and the pod
    /// name in `instance`, when given).
    pub fn new(
        client: Client,
        kafka: Arc<dyn KafkaClient>,
        config: OperatorConfig,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            kafka,
            config,
            metrics,
            backoff: Backoff::default(),
            memory: Arc::default(),
            clock: {
                let start = Instant::now();
                Arc::new(move || i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX))
            },
        }
    }
}

fn key_of(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The annotation `kubectl apply` (client-side, and most GitOps tools) keeps the whole applied
/// object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a cached StreamJob what the operator never reads and what makes up most of its
/// size: `managedFields` (a field set per manager: kubectl, the operator's status, `kubectl
/// scale`, ...) and the [`LAST_APPLIED`] annotation (a second copy of the spec). With 1,000
/// jobs the cache took 19.5 MB of heap with them, 2.6 MB without (docs/benchmarks.md). The
/// operator writes with server-side apply, which never needs them on the client.
pub fn trim_for_cache(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What starts a reconcile of a StreamJob: a change of its generation (the spec, `/scale`),
/// deletion, finalizers or annotations. Not its status: the operator's own status writes would
/// each start the next reconcile, which writes a new lag, and so on (a reconcile storm).
pub fn reconcile_worthy(job: &DeserializeGuard<StreamJob>) -> Option<u64> {
    let m = job.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.generation.hash(&mut h);
    m.deletion_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    m.finalizers.hash(&mut h);
    m.annotations.hash(&mut h);
    Some(h.finish())
}

/// The API of `K` in `namespace`, or in every namespace.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The trigger of an owned kind: its metadata watch (`config`: only the operator's children, by
/// the `managed-by` label), telling `memory` what it sees so that a child changed by someone
/// else is applied again ([`Memory::seen`]), and a child seen with the job's owner reference
/// needs no read of its owner before it is applied (a relist forgets them first,
/// [`Memory::relisting`]). The echo of the operator's own apply (the object at exactly the
/// `resourceVersion` the apply returned, [`Memory::is_echo`]) starts no reconcile: the
/// reconcile that wrote it has already acted on it. Without this, every child a reconcile
/// creates or changes started another reconcile of its job that found nothing to do (about 1.7
/// per job when 1,000 jobs start, each with a label-selected list of checkpoints). Deletions,
/// other writers and status updates (a StatefulSet's ready replicas) still do.
fn owned<K>(
    ctx: &Context,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: k8s_openapi::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let memory = ctx.memory.clone();
    let kind = <K as k8s_openapi::Resource>::KIND;
    watcher(
        api::<PartialObjectMeta<K>>(&ctx.client, namespace),
        config.clone(),
    )
    .try_filter(move |event| {
        let trigger = match event {
            watcher::Event::Apply(o) => {
                let echo = memory.is_echo(kind, o.meta());
                memory.seen(kind, o.meta(), false);
                !echo
            }
            watcher::Event::InitApply(o) => {
                memory.seen(kind, o.meta(), false);
                true
            }
            watcher::Event::Delete(o) => {
                memory.seen(kind, o.meta(), true);
                true
            }
            watcher::Event::Init => {
                memory.relisting(kind);
                true
            }
            watcher::Event::InitDone => true,
        };
        std::future::ready(trigger)
    })
    .touched_objects()
}

/// The controller the operator runs, before [`Controller::run`]: StreamJobs (through
/// [`DeserializeGuard`], so one malformed object cannot break the watch), cached without what
/// [`trim_for_cache`] drops, reconciled when [`reconcile_worthy`] changes; and the children it
/// owns. The owned kinds are watched (metadata only; kube-runtime keeps no cache of them) only
/// with the operator's `managed-by` label, so the operator sees its own children, not every
/// ConfigMap of the cluster (and not the checkpoint ConfigMaps, which workers rewrite every few
/// seconds and which need no reconcile). At most `concurrency` reconciles run at once (0:
/// unbounded). [`run`] runs it; the reconcile benchmark runs the same one.
pub fn controller(
    ctx: &Context,
    namespace: Option<&str>,
    concurrency: u16,
) -> Controller<DeserializeGuard<StreamJob>> {
    let client = &ctx.client;
    let config = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY_OPERATOR
    ));
    // What Controller::new builds, with the trim between the watch and the cache, and the
    // predicate after the cache (which must still see every status write).
    let (cache, writer) = reflector::store();
    let jobs = watcher(
        api::<DeserializeGuard<StreamJob>>(client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .modify(|job| trim_for_cache(job.meta_mut()))
    .reflect(writer)
    .applied_objects()
    .predicate_filter(reconcile_worthy, PredicateConfig::default());
    Controller::for_stream(jobs, cache)
        .owns_stream(owned::<ConfigMap>(ctx, namespace, &config))
        .owns_stream(owned::<StatefulSet>(ctx, namespace, &config))
        .owns_stream(owned::<Service>(ctx, namespace, &config))
        .owns_stream(owned::<ServiceAccount>(ctx, namespace, &config))
        .owns_stream(owned::<Role>(ctx, namespace, &config))
        .owns_stream(owned::<RoleBinding>(ctx, namespace, &config))
        .owns_stream(owned::<PodDisruptionBudget>(ctx, namespace, &config))
        .with_config(ControllerConfig::default().concurrency(concurrency))
}

/// Runs [`controller`] until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller(&ctx, namespace, concurrency)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(job = %obj, "reconciled"),
                Err(e) if is_expected(&e) => tracing::debug!(error = %e, "reconcile skipped"),
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
}

/// Whether a controller error needs no one's attention, so is logged at debug:
/// - a reconcile queued for a job deleted meanwhile (the deletions of its children queue
///   several): on every delete, and nothing to act on;
/// - a failed reconcile: [`error_policy`] has already logged it, with the retry delay.
pub fn is_expected(e: &ControllerError<Error, watcher::Error>) -> bool {
    matches!(
        e,
        ControllerError::ObjectNotFound(_) | ControllerError::ReconcilerFailed(..)
    )
}

/// One reconcile of one StreamJob, with metrics and backoff bookkeeping around
/// [`reconcile_job`].
#[instrument(skip_all, fields(namespace, name))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<StreamJob>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let key = key_of(guard.meta());
    Span::current().record("namespace", key.0.as_str());
    Span::current().record("name", key.1.as_str());
    ctx.metrics.reconciles.inc();
    let start = Instant::now();
    let result = match &guard.0 {
        Ok(job) => reconcile_job(Arc::new(job.clone()), &ctx).await,
        Err(invalid) => {
            // Not even the schema matches (the CRD changed under it, or validation was
            // bypassed): nothing can be computed, so tell the user and wait for an edit.
            let note = format!("cannot read the StreamJob: {invalid}");
            warn!(%note);
            publish(&ctx, guard.meta(), reason::INVALID_SPEC, &note).await;
            Ok(Action::await_change())
        }
    };
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.backoff.reset(&key),
        Err(e) => {
            ctx.metrics
                .failures
                .get_or_create(&CategoryLabel {
                    category: e.category().to_string(),
                })
                .inc();
        }
    }
    result
}

/// Retry after a failed reconcile: exponential backoff per object, with jitter.
pub fn error_policy(
    guard: Arc<DeserializeGuard<StreamJob>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = key_of(guard.meta());
    let delay = ctx.backoff.next_delay(key.clone());
    warn!(namespace = %key.0, name = %key.1, category = error.category(), %error,
        retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The finalizer is used only when the checkpoints must go with the job
/// (`spec.checkpoint.deleteOnJobDeletion`, i.e. [`Desired::finalizer`]); it is added when the
/// setting is turned on, removed when it is turned off, and its cleanup runs when a job that
/// has it is deleted.
async fn reconcile_job(job: Arc<StreamJob>, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = job.metadata.deletion_timestamp.is_some();
    let finalizer_index = job.finalizers().iter().position(|f| f == FINALIZER);
    if deleting && finalizer_index.is_some() && !stop_workers(&job, ctx).await? {
        // Checkpoints and the repartition topic go only once no worker can write them: a
        // terminating worker still checkpoints and sends partials (and a broker that creates
        // topics on use would bring the deleted topic back).
        return Ok(Action::requeue(REQUEUE_STOPPING));
    }
    if job.spec.checkpoint.delete_on_job_deletion || (deleting && finalizer_index.is_some()) {
        return finalizer(&jobs, FINALIZER, job, |event| async move {
            match event {
                Finalizer::Apply(job) => reconcile_children(&job, ctx).await,
                Finalizer::Cleanup(job) => cleanup(&job, ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
    }
    if deleting {
        // Children go with the job through their owner references; checkpoints are kept.
        return Ok(Action::await_change());
    }
    if let Some(i) = finalizer_index {
        // deleteOnJobDeletion was turned off: the checkpoints now outlive the job, so the
        // finalizer must go. The resourceVersion makes the merge patch (which replaces the whole
        // list) fail rather than drop a finalizer added meanwhile. It triggers the next reconcile.
        let mut remaining = job.finalizers().to_vec();
        remaining.remove(i);
        let patch = serde_json::json!({
            "metadata": {"finalizers": remaining, "resourceVersion": job.resource_version()},
        });
        jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::RemoveFinalizer { name, source })?;
        return Ok(Action::await_change());
    }
    reconcile_children(&job, ctx).await
}

/// observe → validate and build → apply → status, once. A failure after observe started is
/// written to the status too ([`report_failure`]) before it is retried with backoff.
async fn reconcile_children(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let obs = match observe(
        &ctx.client,
        ctx.kafka.as_ref(),
        &ctx.memory,
        job,
        &ctx.config,
    )
    .await
    {
        Ok(obs) => obs,
        Err(e) => return Err(report_failure(job, ctx, e).await),
    };
    let mut obs = obs;
    obs.autoscale = autoscale(job, ctx, &obs);
    let built = desired(job, &obs, &ctx.config);
    let outcome = match &built {
        Err(invalid) => {
            info!(%invalid, "invalid spec");
            Outcome::InvalidSpec(invalid)
        }
        Ok(desired) => {
            let target = Target {
                client: &ctx.client,
                kafka: ctx.kafka.as_ref(),
                namespace: &ns,
                memory: &ctx.memory,
            };
            match apply(&target, desired, &obs).await {
                Ok(applied) => Outcome::Built { desired, applied },
                Err(e) => return Err(report_failure(job, ctx, e).await),
            }
        }
    };
    announce_scaling(job, ctx, &obs, &outcome).await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(job, &outcome, &obs, job.status.as_ref(), &now);
    patch_status(job, &status, ctx).await?;
    next_action(job, &outcome, &status)
}

/// The autoscaler's decision for a job with `spec.autoscaling` (none without, or before the
/// partition count is known). It samples the lag only while every worker is ready on the current
/// template: a rollout in progress says nothing about the new count's rate.
fn autoscale(job: &StreamJob, ctx: &Context, obs: &Observation) -> Option<autoscale::Decision> {
    let key = key_of(&job.metadata);
    let Some(spec) = &job.spec.autoscaling else {
        ctx.memory.forget_autoscaler(&key);
        return None;
    };
    let partitions = obs.topic.partitions()?;
    let policy = autoscale::Policy::new(spec, partitions);
    let current = obs.previous_assignment.as_ref().map_or_else(
        || worker_count(&job.spec, partitions),
        |a| a.workers.len() as i32,
    );
    let settled = status::workers_settled(obs.stateful_set.as_ref());
    let now = (ctx.clock)();
    let decision = ctx.memory.with_autoscaler(&key, |a| {
        if job.spec.suspend {
            return a.suspended(&policy, current, now);
        }
        if !settled {
            return a.rolling_out(&policy, current, now);
        }
        if let (Some(lag), Some(processed)) = (obs.lag, obs.processed) {
            a.observe(
                autoscale::Sample {
                    at_ms: now,
                    lag,
                    processed,
                },
                &policy,
            );
        }
        a.decide(&policy, current, now)
    });
    if decision.replicas != current {
        info!(from = current, to = decision.replicas, reason = decision.reason.as_str(), message = %decision.message, "autoscaler");
    }
    Some(decision)
}

/// Writes a failed reconcile to the status ([`status::failed`]: `Degraded` and `Progressing`
/// name the step and say what to check) and, when the step is a new one, publishes a Warning
/// Event with the step as reason. Returns `error`, which the controller retries with backoff;
/// a status that cannot be written is only logged (the error is the better news).
async fn report_failure(job: &StreamJob, ctx: &Context, error: Error) -> Error {
    let step = error.category();
    let message = error.describe();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let old = job.status.as_ref();
    let new = status::failed(job, old, step, &message, &now);
    if let Err(e) = patch_status(job, &new, ctx).await {
        warn!(error = %e, "cannot write the failure to the status");
    }
    let known = old
        .into_iter()
        .flat_map(|o| &o.conditions)
        .any(|c| c.type_ == status::DEGRADED && c.reason == step);
    if !known {
        publish(ctx, &job.metadata, step, &message).await;
    }
    error
}

/// Publishes a Normal Event when apply changed the number of workers (`kubectl scale`, an
/// autoscaler, a new partition count): "scaled from 2 to 3 workers".
async fn announce_scaling(
    job: &StreamJob,
    ctx: &Context,
    obs: &Observation,
    outcome: &Outcome<'_>,
) {
    let replicas = |s: &StatefulSet| s.spec.as_ref().and_then(|s| s.replicas);
    let from = obs.stateful_set.as_ref().and_then(replicas);
    let to = outcome
        .applied()
        .and_then(|a| a.stateful_set.as_deref())
        .and_then(replicas);
    // Suspending and resuming are announced as such (`Suspended`, `Resumed`), not as scaling.
    let suspending = job.spec.suspend && to == Some(0);
    let resuming = from == Some(0) && status::is_suspended(job.status.as_ref());
    if let (Some(from), Some(to)) = (from, to) {
        if from != to && !suspending && !resuming {
            let note = match &obs.autoscale {
                Some(d) if d.replicas == to => format!(
                    "scaled from {from} to {to} workers: {} ({})",
                    d.reason.as_str(),
                    d.message
                ),
                _ => format!("scaled from {from} to {to} workers"),
            };
            info!(from, to, "scaled");
            publish_as(ctx, &job.metadata, EventType::Normal, SCALED, &note).await;
        }
    }
}

/// What comes after a reconcile whose status is `status`:
/// - an invalid spec is permanent until the spec changes: nothing was touched (so nothing
///   churns), the status says why, and only an edit of the job triggers the next reconcile
///   (unless the problem is in a Secret, which no watch reports: then soon, as a job that is
///   not Ready);
/// - a repartition topic Kafka refused is retried with backoff (the status says why);
/// - a suspended job: [`REQUEUE_STOPPING`] while its worker pods stop, then
///   [`REQUEUE_HEALTHY`] whatever its lag (lag grows while suspended);
/// - otherwise, soon while the job is not Ready, lags or is progressing (a reset or an edit is
///   taken up in the checkpoints, which no watch reports), else [`REQUEUE_HEALTHY`].
fn next_action(
    job: &StreamJob,
    outcome: &Outcome<'_>,
    status: &StreamJobStatus,
) -> Result<Action, Error> {
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let (desired, applied) = match outcome {
        Outcome::Built { desired, applied } => (desired, applied),
        // A Secret's keys: fixed in the Secret, which no watch reports.
        Outcome::InvalidSpec(invalid) if invalid.in_secret => {
            return Ok(Action::requeue(spread(REQUEUE_WAITING, ns, name)));
        }
        Outcome::InvalidSpec(_) => return Ok(Action::await_change()),
    };
    if let Some(failure) = &applied.repartition_topic_refused {
        let topic = desired
            .workers
            .as_ref()
            .and_then(|w| w.repartition_topic.as_ref())
            .map(|t| t.name.clone())
            .unwrap_or_default();
        return Err(Error::CreateRepartitionTopic {
            topic,
            message: failure.to_string(),
        });
    }
    let has = |type_: &str, state: &str, reason: Option<&str>| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == state && reason.is_none_or(|r| c.reason == r))
    };
    let ready = has(status::READY, "True", None);
    tracing::debug!(ready, "applied");
    if job.spec.suspend {
        // Worker pods stopping: no watch says when the last is gone. Once none is left, lag
        // grows as records arrive, and that is expected: no sooner requeue for it.
        // Blocked (brokers unreachable, ...): looked at again soon, as any job that is blocked.
        return Ok(
            if has(status::PROGRESSING, "True", Some(reason::SUSPENDING)) {
                Action::requeue(REQUEUE_STOPPING)
            } else if has(status::READY, "False", Some(reason::SUSPENDED)) {
                Action::requeue(spread(REQUEUE_HEALTHY, ns, name))
            } else {
                Action::requeue(spread(REQUEUE_WAITING, ns, name))
            },
        );
    }
    // A reset or an edit being taken up shows only in the checkpoints, which no watch reports.
    // An autoscaled job is sampled on the short period whatever its state.
    let progressing = has(status::PROGRESSING, "True", None);
    let autoscaled = job.spec.autoscaling.is_some();
    // Refusals show only in the checkpoints too; and the condition clears by time alone.
    let state_full = has(status::DEGRADED, "True", Some(reason::STATE_FULL));
    Ok(
        if ready && !progressing && !autoscaled && !state_full && status.lag.unwrap_or(0) == 0 {
            Action::requeue(spread(REQUEUE_HEALTHY, ns, name))
        } else {
            Action::requeue(spread(REQUEUE_WAITING, ns, name))
        },
    )
}

/// Patches the status subresource when something other than a timestamp changed (lag alone at
/// most every [`LAG_REFRESH`](crate::memory::LAG_REFRESH) per job), and publishes a Warning Event for each newly present
/// condition a user must act on, and a Normal Event when a rollout is done.
async fn patch_status(job: &StreamJob, new: &StreamJobStatus, ctx: &Context) -> Result<(), Error> {
    let old = job.status.as_ref();
    let key = key_of(&job.metadata);
    let now = Instant::now();
    if let Some(old) = old {
        let lag_not_due = status::only_counts_changed(old, new) && !ctx.memory.lag_due(&key, now);
        if !status::needs_update(old, new) || lag_not_due {
            return Ok(());
        }
    }
    let name = job.name_any();
    let api: Api<StreamJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "status": new,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::PatchStatus {
        name: name.clone(),
        source,
    })?;
    ctx.memory.lag_written(key, now);
    for c in &new.conditions {
        let is_new = !old.is_some_and(|o| {
            o.conditions
                .iter()
                .any(|p| p.type_ == c.type_ && p.reason == c.reason && p.status == c.status)
        });
        // Ready carries every blocking reason; Degraded adds the warnings.
        let relevant = (c.type_ == status::READY && c.status == "False")
            || (c.type_ == status::DEGRADED
                && (c.reason == reason::RETENTION_SHORTER_THAN_WINDOW
                    || c.reason == reason::REPARTITION_PARTITIONS_FIXED
                    || c.reason == reason::STATE_FULL));
        if is_new && relevant && ACTIONABLE.contains(&c.reason.as_str()) {
            publish(ctx, &job.metadata, &c.reason, &c.message).await;
        }
    }
    for (reason, note) in status::lifecycle_events(old, new) {
        info!(reason, %note, "lifecycle");
        publish_as(ctx, &job.metadata, EventType::Normal, reason, &note).await;
    }
    if status::rolled_out(old, new) {
        let ready = new.conditions.iter().find(|c| c.type_ == status::READY);
        let note = match ready {
            Some(c) if c.status == "True" => format!("rolled out: {}", c.message),
            _ => "rolled out: every worker runs the current spec and assignment".to_string(),
        };
        publish_as(ctx, &job.metadata, EventType::Normal, ROLLED_OUT, &note).await;
    }
    Ok(())
}

/// Publishes a Warning Event about the job (see [`publish_as`]).
async fn publish(ctx: &Context, meta: &kube::api::ObjectMeta, reason: &str, note: &str) {
    publish_as(ctx, meta, EventType::Warning, reason, note).await;
}

/// Publishes an Event about the job. An Event that cannot be written is logged, not an error:
/// the status already says the same.
async fn publish_as(
    ctx: &Context,
    meta: &kube::api::ObjectMeta,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let reference = ObjectReference {
        api_version: Some(StreamJob::api_version(&()).into_owned()),
        kind: Some(StreamJob::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    };
    // The Events API limits a note to 1 kB.
    let mut note = note.to_string();
    if note.len() > 1024 {
        let mut cut = 1021;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, reason, "cannot publish Event");
    }
}

/// Event reason when the checkpoints of a deleted job cannot be deleted (the deletion waits).
pub const CHECKPOINT_CLEANUP_FAILED: &str = "CheckpointCleanupFailed";

/// Reason of `Ready=False`, and of a Normal Event, while a deleted job waits for its worker
/// pods to stop before its checkpoints and repartition topic are deleted.
pub const STOPPING_WORKERS: &str = "StoppingWorkers";

/// How soon a deleted or suspended job looks again while its worker pods terminate (no watch
/// tells the operator when a pod is gone; a pod has `terminationGracePeriodSeconds`, 90 s by
/// default, to write its last checkpoint).
pub const REQUEUE_STOPPING: Duration = Duration::from_secs(5);

mod deletion;
use deletion::{cleanup, stop_workers};

#[cfg(test)]
mod tests;
