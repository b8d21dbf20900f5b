//! The controller: one reconcile = [`observe`] (reads only) → validate and build
//! ([`desired`], pure) → [`apply`] (every desired resource, in order) → [`status::compute`]
//! (pure, once, from the observation and the [`Outcome`]), patched only when
//! [`status::needs_update`]. A bad spec is a status (`Ready=False, reason InvalidSpec`) and no
//! write but the status; every other failure is an [`Error`] retried with per-object
//! exponential backoff and jitter ([`error_policy`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, instrument, warn, Span};
use weir_crds::names::{self, FIELD_MANAGER, FINALIZER};
use weir_crds::{StreamJob, StreamJobStatus};

use crate::apply::{apply, Target};
use crate::desired::{desired, OperatorConfig};
use crate::error::Error;
use crate::kafka::KafkaClient;
use crate::metrics::{CategoryLabel, Metrics};
use crate::observe::{children, observe};
use crate::outcome::Outcome;
use crate::secrets::Resolved;
use crate::status::{self, reason};

/// Requeue after a successful reconcile: a safety net, since watches already trigger on every
/// change of the job and its children.
pub const REQUEUE_HEALTHY: Duration = Duration::from_secs(300);
/// Requeue while the job is not Ready (workers starting, topic missing, brokers unreachable)
/// or reports lag: the Kafka side changes without any Kubernetes event.
pub const REQUEUE_WAITING: Duration = Duration::from_secs(30);
/// First retry delay after an error; doubles per consecutive failure of the same object.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Reconciles running at once, by default. Unbounded (kube-runtime's default), an operator
/// starting with 1,000 jobs runs 1,000 reconciles at once: as many HTTP/1 connections to the
/// API server and Kafka requests, 217 MB of RSS and a p99 of 8 s per reconcile in the benchmark
/// against 33 MB and 68 ms with 16 (docs/benchmarks.md), for no gain in throughput.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Reasons of the conditions a user must act on: each new one is also a Warning Event.
const ACTIONABLE: &[&str] = &[
    reason::INVALID_SPEC,
    reason::TOPIC_NOT_FOUND,
    reason::BROKER_UNREACHABLE,
    reason::RETENTION_SHORTER_THAN_WINDOW,
    reason::REPARTITION_TOPIC_UNAVAILABLE,
    reason::REPARTITION_PARTITIONS_FIXED,
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

/// The controller the operator runs, before [`Controller::run`]: StreamJobs (through
/// [`DeserializeGuard`], so one malformed object cannot break the watch), cached without what
/// [`trim_for_cache`] drops, and the children it `.owns(...)`. The owned kinds are watched
/// (metadata only; kube-runtime keeps no cache of them) only with the operator's `managed-by`
/// label, so the operator sees its own children, not every ConfigMap of the cluster (and not
/// the checkpoint ConfigMaps, which workers rewrite every few seconds and which need no
/// reconcile). At most `concurrency` reconciles run at once (0: unbounded). [`run`] runs it;
/// the reconcile benchmark runs the same one.
pub fn controller(
    client: &Client,
    namespace: Option<&str>,
    concurrency: u16,
) -> Controller<DeserializeGuard<StreamJob>> {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY_OPERATOR
    ));
    // What Controller::new builds, with the trim between the watch and the cache.
    let (cache, writer) = reflector::store();
    let jobs = watcher(
        api::<DeserializeGuard<StreamJob>>(client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .modify(|job| trim_for_cache(job.meta_mut()))
    .reflect(writer)
    .applied_objects();
    Controller::for_stream(jobs, cache)
        .owns(api::<ConfigMap>(client, namespace), owned.clone())
        .owns(api::<StatefulSet>(client, namespace), owned.clone())
        .owns(api::<Service>(client, namespace), owned.clone())
        .owns(api::<ServiceAccount>(client, namespace), owned.clone())
        .owns(api::<Role>(client, namespace), owned.clone())
        .owns(api::<RoleBinding>(client, namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(client, namespace), owned)
        .with_config(ControllerConfig::default().concurrency(concurrency))
}

/// Runs [`controller`] until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller(&ctx.client, namespace, concurrency)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(job = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
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

/// observe → validate and build → apply → status, once.
async fn reconcile_children(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let obs = observe(&ctx.client, ctx.kafka.as_ref(), job, &ctx.config).await?;
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
            };
            let applied = apply(&target, desired, &obs).await?;
            Outcome::Built { desired, applied }
        }
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(job, &outcome, &obs, job.status.as_ref(), &now);
    patch_status(job, &status, ctx).await?;
    next_action(&outcome, &status)
}

/// What comes after a reconcile whose status is `status`:
/// - an invalid spec is permanent until the spec changes: nothing was touched (so nothing
///   churns), the status says why, and only an edit of the job triggers the next reconcile;
/// - a repartition topic Kafka refused is retried with backoff (the status says why);
/// - otherwise, soon while the job is not Ready or lags, else [`REQUEUE_HEALTHY`].
fn next_action(outcome: &Outcome<'_>, status: &StreamJobStatus) -> Result<Action, Error> {
    let Outcome::Built { desired, applied } = outcome else {
        return Ok(Action::await_change());
    };
    if let Some(message) = &applied.repartition_topic_refused {
        let topic = desired
            .workers
            .as_ref()
            .and_then(|w| w.repartition_topic.as_ref())
            .map(|t| t.name.clone())
            .unwrap_or_default();
        return Err(Error::CreateRepartitionTopic {
            topic,
            message: message.clone(),
        });
    }
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    tracing::debug!(ready, "applied");
    Ok(if ready && status.lag.unwrap_or(0) == 0 {
        Action::requeue(REQUEUE_HEALTHY)
    } else {
        Action::requeue(REQUEUE_WAITING)
    })
}

/// Patches the status subresource when something other than a timestamp changed, and
/// publishes a Warning Event for each newly present condition a user must act on.
async fn patch_status(job: &StreamJob, new: &StreamJobStatus, ctx: &Context) -> Result<(), Error> {
    let old = job.status.as_ref();
    if old.is_some_and(|old| !status::needs_update(old, new)) {
        return Ok(());
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
                    || c.reason == reason::REPARTITION_PARTITIONS_FIXED));
        if is_new && relevant && ACTIONABLE.contains(&c.reason.as_str()) {
            publish(ctx, &job.metadata, &c.reason, &c.message).await;
        }
    }
    Ok(())
}

/// Publishes a Warning Event about the job. An Event that cannot be written is logged, not an
/// error: the status already says the same.
async fn publish(ctx: &Context, meta: &kube::api::ObjectMeta, reason: &str, note: &str) {
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
        type_: EventType::Warning,
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

/// Cleanup of a deleted job with `deleteOnJobDeletion`: deletes its checkpoints — the
/// ConfigMaps (by the job label), or the records in object storage — and, for a two-stage
/// job, then its repartition topic. Idempotent: deleting nothing succeeds.
/// A failure is retried with backoff and the job's deletion waits for it; for the object store
/// and the topic, a Warning Event says why (a missing Secret, refused credentials or ACLs).
async fn cleanup(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    cleanup_checkpoints(job, ctx, &ns, &name).await?;
    if !job.spec.co_partitioned() {
        let topic = weir_crds::repartition_topic(Some(&ns), &name);
        let deleted = match children::connection(&ctx.client, job).await? {
            Resolved::Ready(conn) => ctx.kafka.delete_topic(&conn, &topic).await,
            Resolved::MissingSecret { message } => Err(message),
        };
        if let Err(message) = deleted {
            let note = format!(
                "cannot delete the repartition topic {topic}: {message}; the StreamJob is \
                 deleted once it is (or remove its finalizer {FINALIZER})"
            );
            publish(ctx, &job.metadata, CHECKPOINT_CLEANUP_FAILED, &note).await;
            return Err(Error::DeleteRepartitionTopic { topic, message });
        }
        info!(%topic, "deleted the repartition topic");
    }
    Ok(Action::await_change())
}

async fn cleanup_checkpoints(
    job: &StreamJob,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    if job.spec.checkpoint.store.config_map.is_some() {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        let selector = names::checkpoint_selector(name);
        api.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector),
        )
        .await
        .map_err(|source| Error::DeleteCheckpoints {
            job: name.to_string(),
            source,
        })?;
    } else if let Some(store) = &job.spec.checkpoint.store.object_store {
        if store.credentials.is_none() && !ctx.config.object_store_operator_identity {
            // The job was refused (InvalidSpec): no worker ran, and the operator must not delete
            // with its own identity what the URL names. Say so; do not hold the deletion.
            let note = "object-store checkpoints not deleted: the job names no credentials \
                        Secret and this operator does not use its own identity \
                        (--object-store-operator-identity)";
            publish(ctx, &job.metadata, CHECKPOINT_CLEANUP_FAILED, note).await;
            return Ok(());
        }
        if let Err(e) = crate::object_checkpoints::cleanup(&ctx.client, job, store).await {
            let note = format!(
                "{e}; the StreamJob is deleted once they are (or remove its finalizer {FINALIZER})"
            );
            publish(ctx, &job.metadata, CHECKPOINT_CLEANUP_FAILED, &note).await;
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_neither_managed_fields_nor_the_last_applied_copy() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut meta = ObjectMeta {
            name: Some("payments".to_string()),
            annotations: Some(
                [
                    (LAST_APPLIED.to_string(), "{...}".to_string()),
                    ("team".to_string(), "payments".to_string()),
                ]
                .into(),
            ),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..ObjectMeta::default()
        };
        trim_for_cache(&mut meta);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations,
            Some([("team".to_string(), "payments".to_string())].into())
        );
        // What reconciles read stays.
        assert_eq!(meta.name.as_deref(), Some("payments"));
        assert_eq!(meta.finalizers, Some(vec![FINALIZER.to_string()]));
        let mut only_last_applied = ObjectMeta {
            annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
            ..ObjectMeta::default()
        };
        trim_for_cache(&mut only_last_applied);
        assert_eq!(only_last_applied.annotations, None);
    }

    #[test]
    fn backoff_doubles_per_failure_with_jitter_caps_and_resets() {
        let b = Backoff::default();
        let k = ("ns".to_string(), "job".to_string());
        let other = ("ns".to_string(), "other".to_string());
        for n in 0..12u32 {
            let d = b.next_delay(k.clone());
            let full = BACKOFF_BASE.saturating_mul(1 << n).min(BACKOFF_MAX);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {n}: {d:?} not in [{full:?}/2, {full:?}]"
            );
        }
        assert_eq!(b.attempts(&k), 12);
        // Per object: another job starts from the base delay.
        assert!(b.next_delay(other.clone()) <= BACKOFF_BASE);
        b.reset(&k);
        assert_eq!(b.attempts(&k), 0);
        assert_eq!(b.attempts(&other), 1);
    }
}
