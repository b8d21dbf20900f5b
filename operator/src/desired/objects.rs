//! The objects of the build step, one method each, from a validated job: metadata and labels,
//! the ServiceAccount, RoleBinding, Service, PodDisruptionBudget, and the partition-dependent
//! [`Workers`] (assignment, Role, job ConfigMap, checkpoint ConfigMaps, the repartition topic to
//! create). The StatefulSet is in `pod.rs`. Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_crds::assignment::Assignment;
use weir_crds::pod::CredentialsMount;
use weir_crds::{names, plan, StreamJob, StreamJobSpec};

use super::{
    config_hash, job_yaml, next_epoch, InvalidSpec, OperatorConfig, Workers, METRICS_PORT,
    METRICS_PORT_NAME,
};
use crate::observation::{existing_merge_partitions, Observation, TopicObservation};

/// The Secrets the spec references, each with where it is mounted; and the object-store
/// credentials (env, not mounted).
pub(super) struct Credentials {
    pub(super) mounted: Vec<(CredentialsMount, String)>,
    pub(super) object_store: Option<String>,
}

impl Credentials {
    pub(super) fn of(spec: &StreamJobSpec) -> Self {
        let mut mounted = Vec::new();
        let mut push = |mount: CredentialsMount, s: Option<&weir_crds::SecretReference>| {
            if let Some(s) = s {
                mounted.push((mount, s.secret_name.clone()));
            }
        };
        push(
            CredentialsMount::SOURCE,
            spec.source.kafka.credentials.as_ref(),
        );
        push(CredentialsMount::SINK, spec.sink.kafka.credentials.as_ref());
        push(
            CredentialsMount::DEAD_LETTER,
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
            .map(|(_, s)| s.clone())
            .chain(self.object_store.clone())
            .collect();
        set.into_iter().collect()
    }
}

/// Builds the objects of one job.
pub(super) struct Builder<'a> {
    pub(super) job: &'a StreamJob,
    pub(super) cfg: &'a OperatorConfig,
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    pub(super) owner: OwnerReference,
    /// [`names::worker_name`]: the StatefulSet, Service, ServiceAccount, ... of the job.
    pub(super) worker: String,
}

impl Builder<'_> {
    pub(super) fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(names::labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    pub(super) fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(names::selector_labels(self.name)),
            ..LabelSelector::default()
        }
    }

    pub(super) fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(&self.worker),
            ..ServiceAccount::default()
        }
    }

    pub(super) fn role_binding(&self) -> RoleBinding {
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

    pub(super) fn service(&self) -> Service {
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

    pub(super) fn pdb(&self) -> PodDisruptionBudget {
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

    /// The assignment: the plan's (stage 1 and, for a two-stage job, the merge stage over the
    /// repartition topic's partitions, spread over the same workers), under the next epoch; and
    /// the repartition topic to create when Kafka said it is missing.
    fn assignment(
        &self,
        obs: &Observation,
        partitions: i32,
    ) -> (Assignment, Option<plan::NewTopic>) {
        let spec = &self.job.spec;
        // The autoscaler owns the count when the job has one; else `parallelism`, in bounds.
        let count = match &obs.autoscale {
            Some(d) => d.replicas.clamp(1, partitions.max(1)),
            None => plan::worker_count(spec, partitions),
        };
        let topic = self.repartition_topic(obs);
        let previous = obs.previous_assignment.as_ref();
        let existing = existing_merge_partitions(obs.repartition.as_ref(), previous, &topic);
        let merge_partitions = plan::merge_partitions(spec, existing, partitions);
        let mut a = plan::assignment(spec, &topic, partitions, count, merge_partitions, 0);
        a.epoch = next_epoch(&a, previous, obs.max_checkpoint_epoch);
        let source_retention = match &obs.topic {
            TopicObservation::Found { retention_ms, .. } => *retention_ms,
            _ => None,
        };
        let create = match (&a.merge, &obs.repartition) {
            (Some(_), Some(TopicObservation::NotFound)) => Some(plan::new_repartition_topic(
                spec,
                &topic,
                merge_partitions,
                source_retention,
            )),
            _ => None,
        };
        (a, create)
    }

    /// The repartition topic the job uses: the one observe found claimed, else (nothing read
    /// yet) the job's new name, which it may only create ([`weir_crds::topics`]).
    fn repartition_topic(&self, obs: &Observation) -> String {
        match &obs.repartition_topic {
            Some(t) => t.name.clone(),
            None => weir_crds::repartition_topic(Some(self.namespace), self.name),
        }
    }

    pub(super) fn workers(
        &self,
        obs: &Observation,
        partitions: i32,
    ) -> Result<Workers, InvalidSpec> {
        let (assignment, repartition_topic) = self.assignment(obs, partitions);
        self.workers_for(assignment, repartition_topic)
    }

    /// The workers of a suspended job whose partition count is unknown (topic missing, brokers
    /// unreachable): the previous assignment as it is, so that the StatefulSet still goes to 0
    /// replicas while the job ConfigMap keeps what the workers will resume with.
    pub(super) fn suspended_workers(&self, previous: &Assignment) -> Result<Workers, InvalidSpec> {
        self.workers_for(previous.clone(), None)
    }

    fn workers_for(
        &self,
        assignment: Assignment,
        repartition_topic: Option<plan::NewTopic>,
    ) -> Result<Workers, InvalidSpec> {
        let spec = &self.job.spec;
        let partitions: i32 = assignment.workers.iter().map(Vec::len).sum::<usize>() as i32;
        let count = assignment.workers.len() as i32;
        let merge_partitions: i32 = assignment
            .merge
            .as_ref()
            .map_or(0, |m| m.workers.iter().map(Vec::len).sum::<usize>() as i32);
        let job_yaml = job_yaml(self.job)?;
        let assignment_json = serde_json::to_string(&assignment)
            .map_err(|e| InvalidSpec::one("spec", format!("assignment cannot be written: {e}")))?;
        let hash = config_hash(&job_yaml, &assignment.shape());
        let config_name = names::config_map_name(self.name);
        let checkpoints = self.checkpoint_names(partitions, merge_partitions);
        let credentials = Credentials::of(spec);
        let config_map = ConfigMap {
            metadata: self.meta(&config_name),
            data: Some(BTreeMap::from([
                (names::JOB_KEY.to_string(), job_yaml),
                (names::ASSIGNMENT_KEY.to_string(), assignment_json),
            ])),
            ..ConfigMap::default()
        };
        // Suspended: no pod runs; the assignment, the job ConfigMap and the template stay as
        // they are, so that resuming changes the replica count and nothing else.
        let replicas = if spec.suspend { 0 } else { count };
        Ok(Workers {
            stateful_set: self.stateful_set(replicas, &config_name, &hash, &credentials),
            checkpoint_config_maps: self.checkpoint_config_maps(&checkpoints),
            assignment,
            config_hash: hash,
            config_map,
            repartition_topic,
        })
    }

    /// The checkpoint ConfigMaps `names`, empty, labelled for the job and not owned (see
    /// [`Workers::checkpoint_config_maps`]).
    fn checkpoint_config_maps(&self, checkpoints: &[String]) -> Vec<ConfigMap> {
        checkpoints
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
            .collect()
    }

    /// The names of the checkpoint ConfigMaps of `partitions` source and `merge_partitions`
    /// merge-stage partitions (none with an object store).
    fn checkpoint_names(&self, partitions: i32, merge_partitions: i32) -> Vec<String> {
        if self.job.spec.checkpoint.store.config_map.is_none() {
            return Vec::new();
        }
        (0..partitions)
            .filter_map(|p| names::checkpoint_config_map_name(self.name, p))
            .chain(
                (0..merge_partitions)
                    .filter_map(|p| names::merge_checkpoint_config_map_name(self.name, p)),
            )
            .collect()
    }

    /// The workers' Role with the rules known so far: their checkpoint ConfigMaps for the
    /// assignment `assignment` (the one being built, else the previous one, else none), the job
    /// ConfigMap, the Secrets the spec references. It exists even when the partition count is
    /// unknown: the RoleBinding needs it (the API server's escalation check reads the Role's
    /// rules, and answers 404 for a binding to a missing Role), and running workers keep the
    /// checkpoints of the assignment they run.
    pub(super) fn worker_role(&self, assignment: Option<&Assignment>) -> Role {
        let count = |workers: &[Vec<i32>]| workers.iter().map(Vec::len).sum::<usize>() as i32;
        let (partitions, merge) = assignment.map_or((0, 0), |a| {
            let merge = a.merge.as_ref().map_or(0, |m| count(&m.workers));
            (count(&a.workers), merge)
        });
        let checkpoints = self.checkpoint_names(partitions, merge);
        let legacy = self.legacy_checkpoint_names(merge);
        let config = names::config_map_name(self.name);
        self.role(
            &checkpoints,
            &legacy,
            &config,
            &Credentials::of(&self.job.spec),
        )
    }

    /// The names the merge stage's checkpoint ConfigMaps had before this version
    /// ([`names::legacy_merge_checkpoint_config_map_name`]), which the workers read to resume
    /// from (none with an object store). Never created, never writable: the same name may be
    /// the stage-1 checkpoint of the job `<job>-merge` (docs/checkpoints.md, "Migration").
    fn legacy_checkpoint_names(&self, merge_partitions: i32) -> Vec<String> {
        if self.job.spec.checkpoint.store.config_map.is_none() {
            return Vec::new();
        }
        (0..merge_partitions)
            .filter_map(|p| names::legacy_merge_checkpoint_config_map_name(self.name, p))
            .collect()
    }

    fn role(
        &self,
        checkpoints: &[String],
        legacy: &[String],
        config: &str,
        creds: &Credentials,
    ) -> Role {
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
        if !legacy.is_empty() {
            // Read only: a worker of the previous version can no longer write there, which
            // fences it during the upgrade (docs/checkpoints.md, "Migration").
            rules.push(rule("configmaps", legacy.to_vec(), &["get"]));
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
}
