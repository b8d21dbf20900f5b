//! The validate step: pure. Says whether the operator may act on a StreamJob at all, naming
//! every problem: [`weir_crds::StreamJobSpec::validate`], and what only the operator checks
//! (identity from the API server, names that must fit).
//! A job that fails is a status (`Ready=False, reason InvalidSpec`), never an error to retry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use weir_crds::{names, FieldError, StreamJob};

use crate::config::OperatorConfig;
use crate::observation::Observation;

/// A StreamJob the operator must not act on: every problem, each naming its field. The
/// controller sets `Ready=False, reason InvalidSpec` and applies nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", weir_crds::ValidationErrors(.errors.clone()))]
pub struct InvalidSpec {
    /// The problems (never empty).
    pub errors: Vec<FieldError>,
    /// Some problem lies in a Secret the spec names (a key the workers would refuse): editing
    /// the Secret resolves it, and no watch reports that, so the job is looked at again
    /// periodically instead of only after an edit of its spec.
    pub in_secret: bool,
}

impl InvalidSpec {
    /// One problem.
    pub fn one(path: &str, message: impl Into<String>) -> Self {
        InvalidSpec {
            errors: vec![field_error(path, message)],
            in_secret: false,
        }
    }
}

/// What validation established about a job the operator may act on.
#[derive(Clone, Debug, PartialEq)]
pub struct Valid {
    /// `metadata.name`, not empty.
    pub name: String,
    /// `metadata.namespace`, not empty.
    pub namespace: String,
    /// The owner reference of every child (the job has a uid).
    pub owner: OwnerReference,
}

/// Checks `job`, beyond [`weir_crds::StreamJobSpec::validate`] (which also refuses `WEIR_*` and
/// repeated names in `spec.worker.env`): it has a name, namespace and uid (as every object from
/// the API server does); an object store has a credentials Secret unless `config` lets the
/// operator use its own identity; the source's credentials Secret has no key the workers would
/// refuse (`obs.refused_secret_keys`: `plugin.library.paths`, `enable.auto.commit`, ...);
/// with the `configMap` store, the checkpoint ConfigMap names
/// fit in 253 characters (a repartition topic's name always fits Kafka's limit: it is
/// shortened with a hash, see `weir_crds::topics`).
pub fn validate(
    job: &StreamJob,
    obs: &Observation,
    config: &OperatorConfig,
) -> Result<Valid, InvalidSpec> {
    let spec = &job.spec;
    let mut errors = match spec.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    let store = spec.checkpoint.store.object_store.as_ref();
    if store.is_some_and(|s| !config.may_reach(s)) {
        errors.push(field_error(
            "spec.checkpoint.store.objectStore.credentials",
            "is required: name a Secret with the store's credentials (this operator does not \
             reach object stores with its own identity; its administrator can allow that with \
             --object-store-operator-identity, chart value objectStore.operatorIdentity)",
        ));
    }
    let in_secret = !obs.refused_secret_keys.is_empty();
    errors.extend(obs.refused_secret_keys.iter().cloned());
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(field_error("metadata.name", "is required"));
    }
    if namespace.is_empty() {
        errors.push(field_error("metadata.namespace", "is required"));
    }
    errors.extend(name_errors(job, &name, obs.topic.partitions()));
    let owner = owner_reference(job);
    if owner.is_none() && !name.is_empty() {
        errors.push(field_error(
            "metadata.uid",
            "is required (the job must come from the API server)",
        ));
    }
    match (errors.is_empty(), owner) {
        (true, Some(owner)) => Ok(Valid {
            name,
            namespace,
            owner,
        }),
        _ => Err(InvalidSpec { errors, in_secret }),
    }
}

/// Names derived from the job's that would not fit: the checkpoint ConfigMaps (never
/// shortened, see [`names::checkpoint_names_problem`], which `weir validate` uses too).
fn name_errors(job: &StreamJob, name: &str, partitions: Option<i32>) -> Vec<FieldError> {
    let configmap_store = job.spec.checkpoint.store.config_map.is_some();
    match partitions {
        Some(p) if configmap_store => {
            let merge = (!job.spec.co_partitioned())
                .then(|| weir_crds::plan::merge_partitions(&job.spec, None, p));
            names::checkpoint_names_problem(name, p, merge)
        }
        .map(|message| field_error("metadata.name", message))
        .into_iter()
        .collect(),
        _ => Vec::new(),
    }
}

fn field_error(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn owner_reference(job: &StreamJob) -> Option<OwnerReference> {
    let mut o = job.controller_owner_ref(&())?;
    o.block_owner_deletion = Some(true);
    Some(o)
}
