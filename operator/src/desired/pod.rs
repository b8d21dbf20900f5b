//! The workers' StatefulSet, built in parts: the environment and mounts the worker reads
//! ([`weir_crds::pod`], the contract with `weir worker`), the container, the pod, the set.
//! Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretEnvSource, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_crds::names;
use weir_crds::pod::{env, ASSIGNMENT_FILE, CONFIG_DIR, JOB_FILE, LISTEN, METRICS_PORT};

use super::objects::{Builder, Credentials};
use super::{CONTAINER_NAME, METRICS_PORT_NAME, WORKER_UID};

/// The container's environment, volumes and mounts.
struct Wiring {
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
}

/// What the operator tells every worker: its namespace, where the job ConfigMap's files are,
/// where to listen; the job ConfigMap and a writable `/tmp` (the root filesystem is
/// read-only); then a directory per credentials Secret, named by its variable.
fn wiring(config: &str, creds: &Credentials) -> Wiring {
    let mut env = vec![
        EnvVar {
            name: env::NAMESPACE.to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        plain_env(env::JOB, JOB_FILE),
        plain_env(env::ASSIGNMENT, ASSIGNMENT_FILE),
        plain_env(env::LISTEN, LISTEN),
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
    for (m, secret) in &creds.mounted {
        let volume = format!("{}-credentials", m.role);
        let dir = m.dir();
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
        env.push(plain_env(m.env, &dir));
    }
    Wiring {
        env,
        volumes,
        mounts,
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(METRICS_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID),
        run_as_group: Some(WORKER_UID),
        fs_group: Some(WORKER_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

impl Builder<'_> {
    /// The worker container: `weir worker` with the operator's environment, then the spec's.
    fn container(
        &self,
        mut env: Vec<EnvVar>,
        mounts: Vec<VolumeMount>,
        creds: &Credentials,
    ) -> Container {
        let w = &self.job.spec.worker;
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
        Container {
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
            security_context: Some(container_security()),
            volume_mounts: Some(mounts),
            ..Container::default()
        }
    }

    /// The worker pod.
    fn pod(&self, config: &str, creds: &Credentials) -> PodSpec {
        let spec = &self.job.spec;
        let w = &spec.worker;
        let wiring = wiring(config, creds);
        PodSpec {
            service_account_name: Some(self.worker.clone()),
            // Only the ConfigMap checkpoint store talks to the API server.
            automount_service_account_token: Some(spec.checkpoint.store.config_map.is_some()),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(self.cfg.termination_grace_period_seconds),
            security_context: Some(pod_security()),
            containers: vec![self.container(wiring.env, wiring.mounts, creds)],
            volumes: Some(wiring.volumes),
            image_pull_secrets: (!w.image_pull_secrets.is_empty())
                .then(|| w.image_pull_secrets.clone()),
            node_selector: (!w.node_selector.is_empty()).then(|| w.node_selector.clone()),
            tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
            ..PodSpec::default()
        }
    }

    /// The workers: `replicas` pods mounting the job ConfigMap `config`, whose template carries
    /// the config `hash` (so they roll when the spec or the assignment changes).
    pub(super) fn stateful_set(
        &self,
        replicas: i32,
        config: &str,
        hash: &str,
        creds: &Credentials,
    ) -> StatefulSet {
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
                        labels: Some(names::labels(self.name)),
                        annotations: Some(BTreeMap::from([(
                            names::ANNOTATION_CONFIG_HASH.to_string(),
                            hash.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(self.pod(config, creds)),
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
