//! The operator's own settings (its flags), read by the validate and build steps: a module of
//! its own so that both can use it without depending on each other.

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
    /// Whether the operator may reach an object store with its own identity (its environment,
    /// IRSA, workload identity) for a job that names no credentials Secret
    /// (`--object-store-operator-identity`). Off by default: on a cluster shared by teams, a
    /// job could otherwise make the operator read — and with `deleteOnJobDeletion` delete —
    /// whatever its identity reaches under any URL; such a job is `InvalidSpec`.
    pub object_store_operator_identity: bool,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            worker_image: format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            termination_grace_period_seconds: DEFAULT_TERMINATION_GRACE_SECONDS,
            object_store_operator_identity: false,
        }
    }
}

/// 60 s of flush (the worker's bound) + 30 s for the final checkpoint writes.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 90;

impl OperatorConfig {
    /// Whether the operator may reach `store`: with the credentials Secret the job names, or
    /// with its own identity when [`OperatorConfig::object_store_operator_identity`] allows it.
    /// Validation, the observe step and cleanup all ask this.
    pub fn may_reach(&self, store: &weir_crds::ObjectStore) -> bool {
        store.credentials.is_some() || self.object_store_operator_identity
    }
}
