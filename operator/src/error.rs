//! The one error type of a reconcile: each variant names the action that failed and carries the
//! object it was acting on and the source. A bad spec is not an error (it is a status:
//! `Ready=False, reason InvalidSpec`); everything here is transient and retried with backoff.

/// A reconcile step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the credentials Secret of the source.
    #[error("reading Secret {name}: {source}")]
    ReadSecret {
        /// The Secret.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Reading the job ConfigMap (the previous assignment).
    #[error("reading ConfigMap {name}: {source}")]
    ReadJobConfigMap {
        /// The ConfigMap.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Listing the job's checkpoint ConfigMaps.
    #[error("listing the checkpoint ConfigMaps of {job}: {source}")]
    ReadCheckpoints {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Reading the job's StatefulSet.
    #[error("reading StatefulSet {name}: {source}")]
    ReadStatefulSet {
        /// The StatefulSet.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Reading who owns an existing object named like one of the job's children, before its
    /// first apply.
    #[error("reading the owner of {kind} {name}: {source}")]
    ReadOwner {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the ServiceAccount.
    #[error("applying ServiceAccount {name}: {source}")]
    ApplyServiceAccount {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the Role.
    #[error("applying Role {name}: {source}")]
    ApplyRole {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the RoleBinding.
    #[error("applying RoleBinding {name}: {source}")]
    ApplyRoleBinding {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the job ConfigMap.
    #[error("applying ConfigMap {name}: {source}")]
    ApplyConfigMap {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Creating a checkpoint ConfigMap (an AlreadyExists is not an error).
    #[error("creating checkpoint ConfigMap {name}: {source}")]
    CreateCheckpoint {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the Service.
    #[error("applying Service {name}: {source}")]
    ApplyService {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the StatefulSet.
    #[error("applying StatefulSet {name}: {source}")]
    ApplyStatefulSet {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Applying the PodDisruptionBudget.
    #[error("applying PodDisruptionBudget {name}: {source}")]
    ApplyPodDisruptionBudget {
        /// The object.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Patching the StreamJob's status.
    #[error("patching the status of StreamJob {name}: {source}")]
    PatchStatus {
        /// The job.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Removing the finalizer after `deleteOnJobDeletion` was turned off.
    #[error("removing the finalizer of StreamJob {name}: {source}")]
    RemoveFinalizer {
        /// The job.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Deleting the checkpoint ConfigMaps of a deleted job.
    #[error("deleting the checkpoint ConfigMaps of {job}: {source}")]
    DeleteCheckpoints {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Deleting the workers' StatefulSet of a deleted job, before its checkpoints.
    #[error("deleting StatefulSet {name}: {source}")]
    DeleteStatefulSet {
        /// The StatefulSet.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Listing the worker pods of a deleted or suspended job, to wait until they are gone.
    #[error("listing the worker pods of {job}: {source}")]
    ListWorkerPods {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Reading the object-store checkpoints of a job that has no previous assignment (so the
    /// epoch to start above is unknown): the Secret missing, the store unreachable, refused.
    #[error("reading the object-store checkpoints of {job}: {message}")]
    ReadObjectStoreCheckpoints {
        /// The job.
        job: String,
        /// What failed (never contains credentials).
        message: String,
    },
    /// Deleting the object-store checkpoints of a deleted job.
    #[error("deleting the object-store checkpoints of {job}: {message}")]
    DeleteObjectStoreCheckpoints {
        /// The job.
        job: String,
        /// What failed (never contains credentials).
        message: String,
    },
    /// Creating the repartition topic of a two-stage job (the status says why, too).
    #[error("creating the repartition topic {topic}: {message}")]
    CreateRepartitionTopic {
        /// The topic.
        topic: String,
        /// What the brokers answered, or that they could not be reached
        /// ([`KafkaFailure::shown`](crate::kafka::KafkaFailure::shown)): never librdkafka's
        /// connection error, which the status and Events would show to the job's owner.
        message: String,
    },
    /// Deleting the repartition topic of a deleted job with `deleteOnJobDeletion`.
    #[error("deleting the repartition topic {topic}: {message}")]
    DeleteRepartitionTopic {
        /// The topic.
        topic: String,
        /// What the brokers answered, or that they could not be reached
        /// ([`KafkaFailure::shown`](crate::kafka::KafkaFailure::shown)): never librdkafka's
        /// connection error, which the status and Events would show to the job's owner.
        message: String,
    },
    /// The kube-runtime finalizer helper failed (adding or removing the finalizer, or the
    /// apply/cleanup it ran).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, stable label for the failure metric and the Event reason.
    pub fn category(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::ReadSecret { .. } => "ReadSecret",
            Error::ReadJobConfigMap { .. } => "ReadJobConfigMap",
            Error::ReadCheckpoints { .. } => "ReadCheckpoints",
            Error::ReadStatefulSet { .. } => "ReadStatefulSet",
            Error::ReadOwner { .. } => "ReadOwner",
            Error::ApplyServiceAccount { .. } => "ApplyServiceAccount",
            Error::ApplyRole { .. } => "ApplyRole",
            Error::ApplyRoleBinding { .. } => "ApplyRoleBinding",
            Error::ApplyConfigMap { .. } => "ApplyConfigMap",
            Error::CreateCheckpoint { .. } => "CreateCheckpoint",
            Error::ApplyService { .. } => "ApplyService",
            Error::ApplyStatefulSet { .. } => "ApplyStatefulSet",
            Error::ApplyPodDisruptionBudget { .. } => "ApplyPodDisruptionBudget",
            Error::PatchStatus { .. } => "PatchStatus",
            Error::RemoveFinalizer { .. } => "RemoveFinalizer",
            Error::DeleteCheckpoints { .. } => "DeleteCheckpoints",
            Error::DeleteStatefulSet { .. } => "DeleteStatefulSet",
            Error::ListWorkerPods { .. } => "ListWorkerPods",
            Error::ReadObjectStoreCheckpoints { .. } => "ReadObjectStoreCheckpoints",
            Error::DeleteObjectStoreCheckpoints { .. } => "DeleteObjectStoreCheckpoints",
            Error::CreateRepartitionTopic { .. } => "CreateRepartitionTopic",
            Error::DeleteRepartitionTopic { .. } => "DeleteRepartitionTopic",
            Error::Finalizer(e) => match e.as_ref() {
                F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner.category(),
                F::AddFinalizer(_) => "AddFinalizer",
                F::RemoveFinalizer(_) => "RemoveFinalizer",
                F::UnnamedObject | F::InvalidFinalizer => "Finalizer",
            },
        }
    }

    /// The error for a person: what failed and why, without the debug form of an API error
    /// (`applying RoleBinding payments-worker: rolebindings.rbac.authorization.k8s.io
    /// "payments-worker" not found (NotFound, HTTP 404)`), then what to check.
    pub fn describe(&self) -> String {
        let full = self.to_string();
        let what = match self.kube_error() {
            Some(e @ kube::Error::Api(s)) => {
                let action = full.strip_suffix(&format!(": {e}")).unwrap_or(&full);
                format!("{action}: {} ({}, HTTP {})", s.message, s.reason, s.code)
            }
            _ => full,
        };
        format!("{what}. {}", self.hint())
    }

    /// What a person can check, by the kind of failure.
    fn hint(&self) -> &'static str {
        const RETRY: &str = "The operator retries with growing delays";
        match (self, self.kube_error()) {
            (Error::ReadObjectStoreCheckpoints { .. }, _) => {
                "Check spec.checkpoint.store.objectStore (URL, endpoint), that the store is \
                 reachable from the operator, and its credentials Secret; the operator retries \
                 with growing delays"
            }
            (Error::ReadSecret { .. }, _) => {
                "Check that the Secret exists in the job's namespace; the operator retries with \
                 growing delays"
            }
            (_, Some(kube::Error::Api(s))) if s.code == 401 || s.code == 403 => {
                "The operator's ServiceAccount may not do this: check its ClusterRole (the \
                 chart's rbac); the operator retries with growing delays"
            }
            (_, Some(kube::Error::Api(s))) if s.code == 409 => {
                "Another writer changed the object at the same time; the operator retries"
            }
            (_, Some(kube::Error::Api(s))) if s.code == 422 || s.code == 400 => {
                "The API server refused the object: check admission webhooks and policies in \
                 the namespace; the operator retries with growing delays"
            }
            _ => RETRY,
        }
    }

    /// The Kubernetes API error underneath, if any.
    pub fn kube_error(&self) -> Option<&kube::Error> {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::ReadSecret { source, .. }
            | Error::ReadJobConfigMap { source, .. }
            | Error::ReadCheckpoints { source, .. }
            | Error::ReadStatefulSet { source, .. }
            | Error::ReadOwner { source, .. }
            | Error::ApplyServiceAccount { source, .. }
            | Error::ApplyRole { source, .. }
            | Error::ApplyRoleBinding { source, .. }
            | Error::ApplyConfigMap { source, .. }
            | Error::CreateCheckpoint { source, .. }
            | Error::ApplyService { source, .. }
            | Error::ApplyStatefulSet { source, .. }
            | Error::ApplyPodDisruptionBudget { source, .. }
            | Error::PatchStatus { source, .. }
            | Error::RemoveFinalizer { source, .. }
            | Error::DeleteCheckpoints { source, .. }
            | Error::DeleteStatefulSet { source, .. }
            | Error::ListWorkerPods { source, .. } => Some(source),
            Error::ReadObjectStoreCheckpoints { .. }
            | Error::DeleteObjectStoreCheckpoints { .. }
            | Error::CreateRepartitionTopic { .. }
            | Error::DeleteRepartitionTopic { .. } => None,
            Error::Finalizer(e) => match e.as_ref() {
                F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner.kube_error(),
                F::AddFinalizer(source) | F::RemoveFinalizer(source) => Some(source),
                F::UnnamedObject | F::InvalidFinalizer => None,
            },
        }
    }
}
