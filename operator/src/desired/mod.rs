//! The build step (`desired`): a pure function from a validated StreamJob and what observe read
//! to every resource that should exist: the Kubernetes children, the checkpoint ConfigMaps and,
//! for a two-stage job, the repartition topic. No I/O, no clock, no randomness: the same inputs
//! give the same objects, so a reconcile that changes nothing applies byte-identical objects.
//!
//! The apply step goes through [`Desired::resources`] in order; [`Desired::apply_order`] is the
//! server-side-applied part of it.
//!
//! When the partition count is unknown (topic missing, brokers unreachable) there is no
//! [`Workers`]: the job ConfigMap and the StatefulSet are left exactly as they are, since
//! server-side apply never deletes what it is not sent. Running workers keep their assignment
//! instead of being scaled to zero by an operator that merely lost sight of Kafka. A suspended
//! job is the exception: its workers are built over the previous assignment, unchanged, with 0
//! replicas. The Role is
//! always built, with the rules known so far (the previous assignment's checkpoints, if any):
//! a RoleBinding is never applied without its Role.

mod objects;
mod pod;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use sha2::{Digest, Sha256};
use weir_crds::assignment::{Assignment, Shape};
use weir_crds::plan::NewTopic;
use weir_crds::{names, StreamJob, WorkerTemplate};

use crate::observation::Observation;
pub use crate::validate::InvalidSpec;
use crate::validate::{validate, Valid};

pub use crate::config::{OperatorConfig, DEFAULT_TERMINATION_GRACE_SECONDS};
pub use weir_crds::plan::worker_count;
pub use weir_crds::pod::{CONFIG_DIR, CREDENTIALS_DIR, METRICS_PORT};

/// Name of the metrics port on the container and the Service.
pub const METRICS_PORT_NAME: &str = "metrics";
/// UID and GID the workers run as (the distroless `nonroot` user).
pub const WORKER_UID: i64 = 65532;
/// Name of the worker container.
pub const CONTAINER_NAME: &str = "worker";

/// The objects that should exist for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The workers' identity.
    pub service_account: ServiceAccount,
    /// What the workers may do: get/update their checkpoint ConfigMaps, get the job ConfigMap,
    /// get the Secrets the spec references; nothing else. Without [`Workers`], the checkpoints
    /// of the previous assignment (those the running workers hold), if any.
    pub role: Role,
    /// Binds [`Desired::role`] to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// Headless Service over the workers' metrics port.
    pub service: Service,
    /// At most one worker down at a time for voluntary disruptions.
    pub pod_disruption_budget: PodDisruptionBudget,
    /// Everything that depends on the partition count; `None` when it is unknown.
    pub workers: Option<Workers>,
    /// Whether the job needs [`names::FINALIZER`]: only when its checkpoints must be deleted
    /// with it (`spec.checkpoint.deleteOnJobDeletion`).
    pub finalizer: bool,
}

/// The partition-dependent part of [`Desired`].
#[derive(Clone, Debug, PartialEq)]
pub struct Workers {
    /// The assignment written to the job ConfigMap.
    pub assignment: Assignment,
    /// [`config_hash`] of the job ConfigMap, also the pod-template annotation.
    pub config_hash: String,
    /// `job.yaml` and `assignment.json`.
    pub config_map: ConfigMap,
    /// The workers.
    pub stateful_set: StatefulSet,
    /// Checkpoint ConfigMaps (`configMap` store only), empty, to create when absent and never
    /// to apply: the workers replace them (PUT) with their own data, and an update by PUT makes
    /// the writer's manager (`Update` operation) own every field it sent, so an apply of this
    /// empty object could not remove `data` (our manager would own no data field) but would
    /// contend with the workers' labels and add a useless write per reconcile. Creating only
    /// when missing is simplest and touches the data never.
    ///
    /// They carry no owner reference on purpose: checkpoints outlive their job by default, so a
    /// job recreated under the same name resumes. With `deleteOnJobDeletion` the finalizer's
    /// cleanup deletes them by label ([`names::LABEL_JOB`]).
    pub checkpoint_config_maps: Vec<ConfigMap>,
    /// Two-stage jobs whose repartition topic does not exist yet: the topic to create (the
    /// workers produce into it and read it).
    pub repartition_topic: Option<NewTopic>,
}

/// One Kubernetes object to server-side apply, borrowed from a [`Desired`].
#[derive(Clone, Copy, Debug)]
pub enum Child<'a> {
    /// A ServiceAccount.
    ServiceAccount(&'a ServiceAccount),
    /// A Role.
    Role(&'a Role),
    /// A RoleBinding.
    RoleBinding(&'a RoleBinding),
    /// A ConfigMap.
    ConfigMap(&'a ConfigMap),
    /// A Service.
    Service(&'a Service),
    /// A StatefulSet.
    StatefulSet(&'a StatefulSet),
    /// A PodDisruptionBudget.
    PodDisruptionBudget(&'a PodDisruptionBudget),
}

/// One resource that should exist, borrowed from a [`Desired`], with how it is made to exist.
#[derive(Clone, Copy, Debug)]
pub enum DesiredResource<'a> {
    /// A Kafka topic to create (it does not exist yet).
    Topic(&'a NewTopic),
    /// A Kubernetes object to server-side apply.
    Apply(Child<'a>),
    /// ConfigMaps to create when absent, never to apply ([`Workers::checkpoint_config_maps`]).
    CreateIfAbsent(&'a [ConfigMap]),
}

impl Desired {
    /// The objects to server-side apply, in order: identity and permissions first, then the job
    /// ConfigMap, then the StatefulSet. The ConfigMap goes before the StatefulSet because a pod
    /// created from the new template (new config hash) must mount the new assignment, not the
    /// previous one.
    pub fn apply_order(&self) -> Vec<Child<'_>> {
        self.resources()
            .into_iter()
            .filter_map(|r| match r {
                DesiredResource::Apply(child) => Some(child),
                _ => None,
            })
            .collect()
    }

    /// Every resource, in the order apply makes them exist:
    /// 1. identity and permissions, then the job ConfigMap ([`Self::apply_order`]). The job
    ///    ConfigMap, owned by the job, names the repartition topic in its assignment: it is the
    ///    claim that shows the topic is the job's ([`weir_crds::topics::Claim::Assignment`]), so
    ///    it is written before the topic exists, and a crash between the two never leaves a
    ///    topic nothing claims (which the next reconcile would have to call a name conflict);
    /// 2. the repartition topic, the one external resource, which the operator can neither own
    ///    by reference nor roll back. When Kafka refuses it (ACLs, say) nothing after it is
    ///    applied: no worker is started or rolled for a topic that does not exist (workers
    ///    already running wait for it);
    /// 3. the Service;
    /// 4. the checkpoint ConfigMaps, after the Role naming them and right before the
    ///    StatefulSet, so that workers find their (fenced) checkpoint objects in place;
    /// 5. the StatefulSet, then the PodDisruptionBudget.
    pub fn resources(&self) -> Vec<DesiredResource<'_>> {
        let w = self.workers.as_ref();
        let mut out = Vec::new();
        let apply = DesiredResource::Apply;
        out.push(apply(Child::ServiceAccount(&self.service_account)));
        out.push(apply(Child::Role(&self.role)));
        out.push(apply(Child::RoleBinding(&self.role_binding)));
        if let Some(w) = w {
            out.push(apply(Child::ConfigMap(&w.config_map)));
            if let Some(t) = &w.repartition_topic {
                out.push(DesiredResource::Topic(t));
            }
        }
        out.push(apply(Child::Service(&self.service)));
        if let Some(w) = w {
            out.push(DesiredResource::CreateIfAbsent(&w.checkpoint_config_maps));
            out.push(apply(Child::StatefulSet(&w.stateful_set)));
        }
        out.push(apply(Child::PodDisruptionBudget(
            &self.pod_disruption_budget,
        )));
        out
    }
}

/// The epoch of assignment `a`: the previous one when nothing changed (the partition-to-worker
/// mapping and, for a two-stage job, the merge stage), else one more than any epoch seen
/// (previous assignment or checkpoints), 1 for a new job.
pub fn next_epoch(
    a: &Assignment,
    previous: Option<&Assignment>,
    max_checkpoint_epoch: Option<i64>,
) -> i64 {
    let seen = max_checkpoint_epoch.unwrap_or(0);
    // A job that has no merge stage now keeps its epoch over a previous one that had (the pods
    // roll through the config hash anyway), as it always has.
    let same_merge = |p: &Assignment| a.merge.is_none() || p.merge == a.merge;
    match previous {
        Some(p) if p.workers == a.workers && same_merge(p) && p.epoch >= seen => p.epoch,
        Some(p) => p.epoch.max(seen) + 1,
        None => seen + 1,
    }
}

/// Hash of what the workers cannot take while running: the pod-template annotation that rolls
/// them when the spec they run (`job.yaml`) or the assignment's [`Shape`] changes (partitions
/// added to the source topic, another repartition topic). Who owns which partition, and the
/// epoch, are left out: running workers take a new assignment of the same shape without a
/// restart (DESIGN.md invariant 9), so scaling changes the StatefulSet's replicas and nothing
/// else. 32 hex digits of SHA-256.
pub fn config_hash(job_yaml: &str, shape: &Shape) -> String {
    let mut h = Sha256::new();
    h.update(job_yaml.as_bytes());
    h.update([0u8]);
    h.update(serde_json::to_string(shape).unwrap_or_default().as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The StreamJob as the workers read it (`job.yaml`): apiVersion, kind, metadata name and
/// namespace, and the spec resolved for the workers: `parallelism` (the assignment says who
/// reads what; written as 1), `autoscaling`, `worker` (pod settings, which the worker binary
/// never reads) and `suspend` (which only sets the StatefulSet's replicas to 0) are dropped. So
/// scaling, changing a pod's resources, or suspending and resuming, does not change `job.yaml`
/// nor roll the pods through the config hash.
pub fn job_yaml(job: &StreamJob) -> Result<String, InvalidSpec> {
    let mut spec = job.spec.clone();
    spec.parallelism = 1;
    spec.autoscaling = None;
    spec.worker = WorkerTemplate::default();
    spec.suspend = false;
    let mut resolved = StreamJob::new(&job.metadata.name.clone().unwrap_or_default(), spec);
    resolved.metadata.namespace = job.metadata.namespace.clone();
    serde_norway::to_string(&resolved)
        .map_err(|e| InvalidSpec::one("spec", format!("cannot be written as YAML: {e}")))
}

/// validate, then build: the objects that should exist for `job`, or why it must not run. Pure.
pub fn desired(
    job: &StreamJob,
    obs: &Observation,
    cfg: &OperatorConfig,
) -> Result<Desired, InvalidSpec> {
    let valid = validate(job, obs, cfg)?;
    build(job, &valid, obs, cfg)
}

/// The build step proper, for a job [`validate`] accepted. Fails only when the job cannot be
/// written as the workers' YAML.
pub fn build(
    job: &StreamJob,
    valid: &Valid,
    obs: &Observation,
    cfg: &OperatorConfig,
) -> Result<Desired, InvalidSpec> {
    let b = objects::Builder {
        job,
        cfg,
        name: &valid.name,
        namespace: &valid.namespace,
        owner: valid.owner.clone(),
        worker: names::worker_name(&valid.name),
    };
    // A repartition topic that is not the job's: nothing that would name it, write into it or
    // read it (the job ConfigMap, the StatefulSet) is applied; the status says NameConflict.
    // A suspended job goes to 0 replicas even then: over its previous assignment, unchanged.
    let workers = match (obs.topic.partitions(), &obs.previous_assignment) {
        (_, _) if obs.repartition_conflict().is_some() => None,
        (Some(p), _) => Some(b.workers(obs, p)?),
        (None, Some(previous)) if job.spec.suspend => Some(b.suspended_workers(previous)?),
        (None, _) => None,
    };
    let assignment = workers.as_ref().map(|w| &w.assignment);
    Ok(Desired {
        role: b.worker_role(assignment.or(obs.previous_assignment.as_ref())),
        service_account: b.service_account(),
        role_binding: b.role_binding(),
        service: b.service(),
        pod_disruption_budget: b.pdb(),
        workers,
        finalizer: job.spec.checkpoint.delete_on_job_deletion,
    })
}
