//! The `desired` step: a pure function from a StreamJob and what observe read to the objects
//! that should exist. No I/O, no clock, no randomness: the same inputs give the same objects, so
//! a reconcile that changes nothing applies byte-identical objects.
//!
//! The controller applies [`Desired`] with server-side apply ([`crate::names::FIELD_MANAGER`]) in
//! the order of [`Desired::apply_order`] and creates [`Workers::checkpoint_config_maps`] only
//! when absent (never applied: see that field).
//!
//! When the partition count is unknown (topic missing, brokers unreachable) there is no
//! [`Workers`]: the Role, the job ConfigMap and the StatefulSet are left exactly as they are,
//! since server-side apply never deletes what it is not sent. Running workers keep their
//! assignment instead of being scaled to zero by an operator that merely lost sight of Kafka.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretEnvSource, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use weir_crds::assignment::Assignment;
use weir_crds::{FieldError, StreamJob, StreamJobSpec, WorkerTemplate};

use crate::names;
use crate::observe::NewTopic;
use crate::observed::{Observed, TopicObservation};

/// The operator's own settings that shape the workers.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Worker image when the spec names none (`spec.worker.image`).
    pub worker_image: String,
    /// Pull policy when the spec names none; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Grace period of a worker pod. The worker flushes for at most 60 s on SIGTERM, then
    /// writes its checkpoints; this must leave room for both.
    pub termination_grace_period_seconds: i64,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            worker_image: format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            termination_grace_period_seconds: DEFAULT_TERMINATION_GRACE_SECONDS,
        }
    }
}

/// Longest Kafka topic name.
pub const MAX_TOPIC_NAME: usize = 249;
/// 60 s of flush (the worker's bound) + 30 s for the final checkpoint writes.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 90;
/// Port of `/metrics`, `/healthz` and `/readyz`.
pub const METRICS_PORT: i32 = 8080;
/// Name of that port on the container and the Service.
pub const METRICS_PORT_NAME: &str = "metrics";
/// UID and GID the workers run as (the distroless `nonroot` user).
pub const WORKER_UID: i64 = 65532;
/// Where the job ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/weir";
/// Under which each credentials Secret gets its own directory (not under [`CONFIG_DIR`]: a
/// ConfigMap volume is read-only, so mount points cannot be created inside it).
pub const CREDENTIALS_DIR: &str = "/etc/weir-credentials";
/// Name of the worker container.
pub const CONTAINER_NAME: &str = "worker";

/// Environment variables the operator sets on the worker container; `spec.worker.env` may not
/// set them (or the ones that would break ordinals or fencing).
pub const RESERVED_ENV: &[&str] = &[
    "WEIR_NAMESPACE",
    "WEIR_JOB",
    "WEIR_ASSIGNMENT",
    "WEIR_LISTEN",
    "WEIR_ORDINAL",
    "WEIR_CHECKPOINT_DIR",
    "WEIR_SOURCE_CREDENTIALS_DIR",
    "WEIR_SINK_CREDENTIALS_DIR",
    "WEIR_DEAD_LETTER_CREDENTIALS_DIR",
];

/// A StreamJob the operator must not act on: every problem, each naming its field. The
/// controller sets `Ready=False, reason InvalidSpec` and applies nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", weir_crds::ValidationErrors(.errors.clone()))]
pub struct InvalidSpec {
    /// The problems (never empty).
    pub errors: Vec<FieldError>,
}

impl InvalidSpec {
    fn one(path: &str, message: impl Into<String>) -> Self {
        InvalidSpec {
            errors: vec![FieldError {
                path: path.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// The objects that should exist for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The workers' identity.
    pub service_account: ServiceAccount,
    /// Binds [`Workers::role`] to the ServiceAccount.
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
    /// What the workers may do: get/update their checkpoint ConfigMaps, get the job ConfigMap,
    /// get the Secrets the spec references; nothing else.
    pub role: Role,
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
    /// Two-stage jobs whose repartition topic does not exist yet: the topic to create before
    /// the StatefulSet (the workers produce into it and read it).
    pub repartition_topic: Option<NewTopic>,
}

/// Partitions of the repartition topic `topic` of a two-stage job whose source has `sources`
/// partitions. An existing topic keeps its count: routing is by hash of the group modulo the
/// count, so a change would send a group's partials of one window to two merges, each closing
/// a partial result. When the topic could not be read, the previous assignment's count (the
/// running workers' view). Otherwise (to create it) `spec.repartition.partitions`, by default
/// the source's count.
fn repartition_partitions(spec: &StreamJobSpec, obs: &Observed, topic: &str, sources: i32) -> i32 {
    let wanted = spec.repartition.partitions.unwrap_or(sources);
    match &obs.repartition {
        Some(TopicObservation::Found { .. }) => obs
            .repartition
            .as_ref()
            .and_then(TopicObservation::partitions)
            .unwrap_or(wanted),
        Some(TopicObservation::BrokerUnreachable { .. }) => obs
            .previous_assignment
            .as_ref()
            .and_then(|a| a.merge.as_ref())
            .filter(|m| m.topic == topic)
            .map(|m| m.workers.iter().map(Vec::len).sum::<usize>() as i32)
            .filter(|p| *p > 0)
            .unwrap_or(wanted),
        Some(TopicObservation::NotFound) | None => wanted,
    }
}

/// Configs of a new repartition topic. Partials are needed until the second stage has
/// checkpointed past them, like the source records until the first stage has: the source's
/// `retention.ms` when known, otherwise the brokers' default.
fn repartition_configs(source: &TopicObservation) -> BTreeMap<String, String> {
    let mut c = BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]);
    if let TopicObservation::Found {
        retention_ms: Some(ms),
        ..
    } = source
    {
        c.insert("retention.ms".to_string(), ms.to_string());
    }
    c
}

/// One object to apply, borrowed from a [`Desired`], in apply order.
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

impl Desired {
    /// The objects to server-side apply, in order: identity and permissions first, then the job
    /// ConfigMap, then the StatefulSet. The ConfigMap goes before the StatefulSet because a pod
    /// created from the new template (new config hash) must mount the new assignment, not the
    /// previous one. Checkpoint ConfigMaps are not in this list (create-if-absent; create them
    /// after the Role and before the StatefulSet).
    pub fn apply_order(&self) -> Vec<Child<'_>> {
        let mut out = vec![Child::ServiceAccount(&self.service_account)];
        if let Some(w) = &self.workers {
            out.push(Child::Role(&w.role));
        }
        out.push(Child::RoleBinding(&self.role_binding));
        if let Some(w) = &self.workers {
            out.push(Child::ConfigMap(&w.config_map));
        }
        out.push(Child::Service(&self.service));
        if let Some(w) = &self.workers {
            out.push(Child::StatefulSet(&w.stateful_set));
        }
        out.push(Child::PodDisruptionBudget(&self.pod_disruption_budget));
        out
    }
}

/// Number of workers for `partitions`: `spec.parallelism` (what `/scale` sets), kept within
/// `spec.autoscaling`'s bounds when present, and never more than the partitions (an extra
/// worker would own nothing) nor fewer than one.
pub fn worker_count(spec: &StreamJobSpec, partitions: i32) -> i32 {
    let mut n = spec.parallelism;
    if let Some(a) = &spec.autoscaling {
        n = n.max(a.min_replicas).min(a.max_replicas);
    }
    n.min(partitions).max(1)
}

/// The assignment for `partitions` over `workers`: round-robin (balanced, deterministic). Its
/// epoch is the previous one when the partition-to-worker mapping is unchanged, else one more
/// than any epoch seen (previous assignment or checkpoints), 1 for a new job.
pub fn next_assignment(
    partitions: i32,
    workers: i32,
    previous: Option<&Assignment>,
    max_checkpoint_epoch: Option<i64>,
) -> Assignment {
    let mut a = Assignment::round_robin(partitions, workers.max(1) as usize, 0);
    let seen = max_checkpoint_epoch.unwrap_or(0);
    a.epoch = match previous {
        Some(p) if p.workers == a.workers && p.epoch >= seen => p.epoch,
        Some(p) => p.epoch.max(seen) + 1,
        None => seen + 1,
    };
    a
}

/// Hash of the job ConfigMap's content: the pod-template annotation that rolls the workers
/// when the spec they run or the assignment changes. 32 hex digits of SHA-256.
pub fn config_hash(job_yaml: &str, assignment_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(job_yaml.as_bytes());
    h.update([0u8]);
    h.update(assignment_json.as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The StreamJob as the workers read it (`job.yaml`): apiVersion, kind, metadata name and
/// namespace, and the spec resolved for the workers: `parallelism` is the number of workers
/// actually run, `autoscaling` and `worker` (pod settings, which the worker binary never reads)
/// are dropped. So scaling 5 → 6 workers over 3 partitions, or changing a pod's resources,
/// does not change `job.yaml` nor roll the pods through the config hash.
pub fn job_yaml(job: &StreamJob, workers: i32) -> Result<String, InvalidSpec> {
    let mut spec = job.spec.clone();
    spec.parallelism = workers;
    spec.autoscaling = None;
    spec.worker = WorkerTemplate::default();
    let mut resolved = StreamJob::new(&job.metadata.name.clone().unwrap_or_default(), spec);
    resolved.metadata.namespace = job.metadata.namespace.clone();
    serde_norway::to_string(&resolved)
        .map_err(|e| InvalidSpec::one("spec", format!("cannot be written as YAML: {e}")))
}

/// The objects that should exist for `job`, or why it must not run. Pure.
///
/// Checks, beyond [`StreamJobSpec::validate`]: the job has a name, namespace and uid (as every
/// object from the API server does); `spec.worker.env` neither repeats a name nor sets one of
/// [`RESERVED_ENV`]; with the `configMap` store, the checkpoint ConfigMap names fit in 253
/// characters.
pub fn desired(
    job: &StreamJob,
    obs: &Observed,
    cfg: &OperatorConfig,
) -> Result<Desired, InvalidSpec> {
    let spec = &job.spec;
    let mut errors = match spec.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    errors.extend(env_errors(&spec.worker));
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(field_error("metadata.name", "is required"));
    }
    if namespace.is_empty() {
        errors.push(field_error("metadata.namespace", "is required"));
    }
    let partitions = obs.topic.partitions();
    let configmap_store = spec.checkpoint.store.config_map.is_some();
    if let (true, Some(p)) = (configmap_store, partitions) {
        if names::checkpoint_config_map_name(&name, p - 1).is_none() {
            errors.push(field_error(
                "metadata.name",
                format!(
                    "is too long for the checkpoint ConfigMaps {name}-checkpoint-<partition> \
                     (at most 253 characters with {p} partitions): shorten it or use \
                     spec.checkpoint.store.objectStore"
                ),
            ));
        }
    }
    if !spec.co_partitioned() {
        let topic = weir_crds::repartition_topic(Some(&namespace), &name);
        if topic.len() > MAX_TOPIC_NAME {
            errors.push(field_error(
                "metadata.name",
                format!(
                    "is too long for the repartition topic {topic} ({} characters; Kafka allows \
                     {MAX_TOPIC_NAME}): shorten it, or declare co-partitioned groups \
                     (spec.repartition.coPartitioned) if they are",
                    topic.len()
                ),
            ));
        }
    }
    let owner = owner_reference(job);
    if owner.is_none() && !name.is_empty() {
        errors.push(field_error(
            "metadata.uid",
            "is required (the job must come from the API server)",
        ));
    }
    let owner = match (errors.is_empty(), owner) {
        (true, Some(o)) => o,
        _ => return Err(InvalidSpec { errors }),
    };

    let b = Builder {
        job,
        cfg,
        name: &name,
        namespace: &namespace,
        owner,
        worker: names::worker_name(&name),
    };
    let workers = match partitions {
        Some(p) => Some(b.workers(obs, p)?),
        None => None,
    };
    Ok(Desired {
        service_account: b.service_account(),
        role_binding: b.role_binding(),
        service: b.service(),
        pod_disruption_budget: b.pdb(),
        workers,
        finalizer: spec.checkpoint.delete_on_job_deletion,
    })
}

fn field_error(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn env_errors(w: &WorkerTemplate) -> Vec<FieldError> {
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for (i, e) in w.env.iter().enumerate() {
        let path = format!("spec.worker.env[{i}].name");
        if RESERVED_ENV.contains(&e.name.as_str()) {
            errors.push(field_error(
                &path,
                format!("{} is set by the operator", e.name),
            ));
        } else if !seen.insert(e.name.as_str()) {
            errors.push(field_error(&path, format!("duplicate name {}", e.name)));
        }
    }
    errors
}

fn owner_reference(job: &StreamJob) -> Option<OwnerReference> {
    let mut o = job.controller_owner_ref(&())?;
    o.block_owner_deletion = Some(true);
    Some(o)
}

/// The Secrets the spec references, each with the directory it is mounted at and the env
/// variable naming that directory; and the object-store credentials (env, not mounted).
struct Credentials {
    mounted: Vec<(&'static str, String, &'static str)>,
    object_store: Option<String>,
}

impl Credentials {
    fn of(spec: &StreamJobSpec) -> Self {
        let mut mounted = Vec::new();
        let mut push =
            |role: &'static str, env: &'static str, s: Option<&weir_crds::SecretReference>| {
                if let Some(s) = s {
                    mounted.push((role, s.secret_name.clone(), env));
                }
            };
        push(
            "source",
            "WEIR_SOURCE_CREDENTIALS_DIR",
            spec.source.kafka.credentials.as_ref(),
        );
        push(
            "sink",
            "WEIR_SINK_CREDENTIALS_DIR",
            spec.sink.kafka.credentials.as_ref(),
        );
        push(
            "dead-letter",
            "WEIR_DEAD_LETTER_CREDENTIALS_DIR",
            spec.dead_letter
                .as_ref()
                .and_then(|d| d.kafka.credentials.as_ref()),
        );
        let object_store = spec
            .checkpoint
            .store
            .object_store
            .as_ref()
            .and_then(|o| o.credentials.as_ref())
            .map(|s| s.secret_name.clone());
        Credentials {
            mounted,
            object_store,
        }
    }

    /// Every referenced Secret name, sorted, once.
    fn secret_names(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .mounted
            .iter()
            .map(|(_, s, _)| s.clone())
            .chain(self.object_store.clone())
            .collect();
        set.into_iter().collect()
    }
}

struct Builder<'a> {
    job: &'a StreamJob,
    cfg: &'a OperatorConfig,
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
    worker: String,
}

impl Builder<'_> {
    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(names::labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(names::selector_labels(self.name)),
            ..LabelSelector::default()
        }
    }

    fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(&self.worker),
            ..ServiceAccount::default()
        }
    }

    fn role_binding(&self) -> RoleBinding {
        RoleBinding {
            metadata: self.meta(&self.worker),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_string(),
                kind: "Role".to_string(),
                name: self.worker.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_string(),
                name: self.worker.clone(),
                namespace: Some(self.namespace.to_string()),
                ..Subject::default()
            }]),
        }
    }

    fn service(&self) -> Service {
        Service {
            metadata: self.meta(&self.worker),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".to_string()),
                selector: Some(names::selector_labels(self.name)),
                // Metrics matter most while a worker replays and is not ready yet.
                publish_not_ready_addresses: Some(true),
                ports: Some(vec![ServicePort {
                    name: Some(METRICS_PORT_NAME.to_string()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String(METRICS_PORT_NAME.to_string())),
                    protocol: Some("TCP".to_string()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn pdb(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(&self.worker),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(self.selector()),
                // A crash-looping worker must not block a node drain.
                unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    fn workers(&self, obs: &Observed, partitions: i32) -> Result<Workers, InvalidSpec> {
        let spec = &self.job.spec;
        let count = worker_count(spec, partitions);
        let mut assignment = next_assignment(
            partitions,
            count,
            obs.previous_assignment.as_ref(),
            obs.max_checkpoint_epoch,
        );
        // Two-stage jobs (groups that span partitions): the repartition topic's partitions go
        // to the same workers. A change of the second stage is a change of assignment.
        let topic = weir_crds::repartition_topic(Some(self.namespace), self.name);
        let merge_partitions =
            (!spec.co_partitioned()).then(|| repartition_partitions(spec, obs, &topic, partitions));
        // Created (by the controller, before the StatefulSet) only when Kafka said it is missing.
        let repartition_topic = match (merge_partitions, &obs.repartition) {
            (Some(r), Some(TopicObservation::NotFound)) => Some(NewTopic {
                name: topic.clone(),
                partitions: r,
                replication_factor: spec.repartition.replication_factor,
                configs: repartition_configs(&obs.topic),
            }),
            _ => None,
        };
        if let Some(r) = merge_partitions {
            let epoch = assignment.epoch;
            assignment = assignment.with_merge(&topic, r, partitions);
            if let Some(p) = &obs.previous_assignment {
                if p.epoch == epoch && p.merge != assignment.merge {
                    assignment.epoch = epoch + 1;
                }
            }
        }
        let job_yaml = job_yaml(self.job, count)?;
        let assignment_json = serde_json::to_string(&assignment)
            .map_err(|e| InvalidSpec::one("spec", format!("assignment cannot be written: {e}")))?;
        let hash = config_hash(&job_yaml, &assignment_json);
        let config_name = names::config_map_name(self.name);
        let checkpoints: Vec<String> = if spec.checkpoint.store.config_map.is_some() {
            (0..partitions)
                .filter_map(|p| names::checkpoint_config_map_name(self.name, p))
                .chain(
                    (0..merge_partitions.unwrap_or(0))
                        .filter_map(|p| names::merge_checkpoint_config_map_name(self.name, p)),
                )
                .collect()
        } else {
            Vec::new()
        };
        let credentials = Credentials::of(spec);
        let config_map = ConfigMap {
            metadata: self.meta(&config_name),
            data: Some(BTreeMap::from([
                (names::JOB_KEY.to_string(), job_yaml),
                (names::ASSIGNMENT_KEY.to_string(), assignment_json),
            ])),
            ..ConfigMap::default()
        };
        let checkpoint_config_maps = checkpoints
            .iter()
            .map(|n| ConfigMap {
                metadata: ObjectMeta {
                    name: Some(n.clone()),
                    namespace: Some(self.namespace.to_string()),
                    labels: Some(names::checkpoint_labels(self.name)),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            })
            .collect();
        Ok(Workers {
            role: self.role(&checkpoints, &config_name, &credentials),
            stateful_set: self.stateful_set(count, &config_name, &hash, &credentials),
            assignment,
            config_hash: hash,
            config_map,
            checkpoint_config_maps,
            repartition_topic,
        })
    }

    fn role(&self, checkpoints: &[String], config: &str, creds: &Credentials) -> Role {
        let rule = |resource: &str, names: Vec<String>, verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec![resource.to_string()]),
            resource_names: Some(names),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..PolicyRule::default()
        };
        // A rule with no resourceNames would grant every object of the kind: emit a rule only
        // when it names something.
        let mut rules = Vec::new();
        if !checkpoints.is_empty() {
            rules.push(rule("configmaps", checkpoints.to_vec(), &["get", "update"]));
        }
        rules.push(rule("configmaps", vec![config.to_string()], &["get"]));
        let secrets = creds.secret_names();
        if !secrets.is_empty() {
            rules.push(rule("secrets", secrets, &["get"]));
        }
        Role {
            metadata: self.meta(&self.worker),
            rules: Some(rules),
        }
    }

    fn stateful_set(
        &self,
        replicas: i32,
        config: &str,
        hash: &str,
        creds: &Credentials,
    ) -> StatefulSet {
        let spec = &self.job.spec;
        let w = &spec.worker;
        let mut env = vec![
            EnvVar {
                name: "WEIR_NAMESPACE".to_string(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.namespace".to_string(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            plain_env("WEIR_JOB", &format!("{CONFIG_DIR}/{}", names::JOB_KEY)),
            plain_env(
                "WEIR_ASSIGNMENT",
                &format!("{CONFIG_DIR}/{}", names::ASSIGNMENT_KEY),
            ),
            plain_env("WEIR_LISTEN", &format!("0.0.0.0:{METRICS_PORT}")),
        ];
        let mut volumes = vec![
            Volume {
                name: "config".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config.to_string(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ];
        let mut mounts = vec![
            mount("config", CONFIG_DIR),
            VolumeMount {
                name: "tmp".to_string(),
                mount_path: "/tmp".to_string(),
                ..VolumeMount::default()
            },
        ];
        for (role, secret, var) in &creds.mounted {
            let volume = format!("{role}-credentials");
            let dir = format!("{CREDENTIALS_DIR}/{role}");
            volumes.push(Volume {
                name: volume.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    // Readable by the owner and the pod's fsGroup only.
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(mount(&volume, &dir));
            env.push(plain_env(var, &dir));
        }
        env.extend(w.env.iter().cloned());
        let env_from = creds.object_store.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            }]
        });
        let probe = |path: &str, period: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_string()),
                port: IntOrString::String(METRICS_PORT_NAME.to_string()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(3),
            ..Probe::default()
        };
        let container = Container {
            name: CONTAINER_NAME.to_string(),
            image: Some(
                w.image
                    .clone()
                    .unwrap_or_else(|| self.cfg.worker_image.clone()),
            ),
            image_pull_policy: w
                .image_pull_policy
                .clone()
                .or_else(|| self.cfg.image_pull_policy.clone()),
            args: Some(vec!["worker".to_string()]),
            env: Some(env),
            env_from,
            ports: Some(vec![ContainerPort {
                name: Some(METRICS_PORT_NAME.to_string()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            }]),
            liveness_probe: Some(probe("/healthz", 10)),
            readiness_probe: Some(probe("/readyz", 5)),
            resources: w.resources.clone(),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_string()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(mounts),
            ..Container::default()
        };
        let pod_labels = names::labels(self.name);
        let pod = PodSpec {
            service_account_name: Some(self.worker.clone()),
            // Only the ConfigMap checkpoint store talks to the API server.
            automount_service_account_token: Some(spec.checkpoint.store.config_map.is_some()),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(self.cfg.termination_grace_period_seconds),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            image_pull_secrets: (!w.image_pull_secrets.is_empty())
                .then(|| w.image_pull_secrets.clone()),
            node_selector: (!w.node_selector.is_empty()).then(|| w.node_selector.clone()),
            tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
            ..PodSpec::default()
        };
        StatefulSet {
            metadata: self.meta(&self.worker),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                selector: self.selector(),
                service_name: Some(self.worker.clone()),
                // Workers are independent: start and stop them all at once.
                pod_management_policy: Some("Parallel".to_string()),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(BTreeMap::from([(
                            names::ANNOTATION_CONFIG_HASH.to_string(),
                            hash.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}
