//! The apply step: makes every resource of a [`Desired`] exist, in the order of
//! [`Desired::resources`] (which says why that order): creates the repartition topic, applies
//! each Kubernetes child with server-side apply ([`FIELD_MANAGER`], forced), creates the
//! checkpoint ConfigMaps that are missing. A child whose desired form has not changed since its
//! last successful apply (and that no one changed since, see [`Memory`]) is not applied again.
//! Returns what it did as an [`Applied`]; a Kubernetes write that fails is an [`Error`], retried
//! with backoff.
//!
//! Before anything is written, every child's name is checked ([`name_conflicts`]): an existing
//! object of that name is applied over (adopted) only when it is the job's own (its controller
//! owner reference is the job's uid). When one is not, nothing at all is written for the job —
//! not the topic, not the other children: a RoleBinding applied next to someone else's
//! ServiceAccount of the same name would grant that account the job's permissions — and
//! [`Applied::name_conflicts`] names it (status `Ready=False`, `NameConflict`). The check reads
//! only what nothing else tells: the job ConfigMap and the StatefulSet were read by observe, and
//! a child [`Memory`] knows as the job's own (applied, or seen by its watch) is not read again;
//! the others are read (metadata only) at once, before the first apply. So a steady reconcile
//! reads nothing more.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};
use weir_crds::names::{ASSIGNMENT_KEY, FIELD_MANAGER};
use weir_crds::plan::NewTopic;

use crate::desired::{Child, Desired, DesiredResource};
use crate::error::Error;
use crate::kafka::{KafkaClient, KafkaFailure};
use crate::memory::{controller_uid, fingerprint, ChildKey, Memory};
use crate::observation::{NameConflict, Observation};
use crate::outcome::Applied;

/// Checkpoint ConfigMaps created at once by one reconcile. A new job has one per partition (and
/// one per repartition partition): created one after the other, a 64-partition job's first
/// reconcile made 64 round trips, and was the slowest reconcile by far whenever the API server
/// was busy (docs/benchmarks.md).
pub const CREATE_CONCURRENCY: usize = 8;

/// Where apply writes: the API server, Kafka, and the job's namespace.
pub struct Target<'a> {
    /// The API client.
    pub client: &'a Client,
    /// The Kafka client (the repartition topic).
    pub kafka: &'a dyn KafkaClient,
    /// The job's namespace.
    pub namespace: &'a str,
    /// The children applied before, to skip those that have not changed.
    pub memory: &'a Memory,
}

/// Makes `desired` exist. `obs` gives the connection to the source's brokers and the checkpoint
/// ConfigMaps that exist already.
pub async fn apply(t: &Target<'_>, desired: &Desired, obs: &Observation) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    let conflicts = name_conflicts(t, desired, obs).await?;
    if !conflicts.is_empty() {
        applied.name_conflicts = conflicts;
        return Ok(applied);
    }
    for resource in desired.resources() {
        match resource {
            DesiredResource::Topic(topic) => {
                if let Err(failure) = create_topic(t, obs, topic).await {
                    // The workers could not run without it: nothing more is applied, and the
                    // status says why.
                    applied.repartition_topic_refused = Some(failure);
                    return Ok(applied);
                }
            }
            DesiredResource::Apply(child) => {
                if let Some(sts) = apply_child(t, child).await? {
                    applied.stateful_set = Some(Box::new(sts));
                }
            }
            DesiredResource::CreateIfAbsent(cms) => {
                create_missing(t, cms, &obs.existing_checkpoints).await?;
            }
        }
    }
    Ok(applied)
}

/// The objects that hold the name of a child of `desired` and are not the job's own: those
/// observe found (the job ConfigMap, the StatefulSet), then those of the other children read now,
/// all at once (metadata only), unless [`Memory`] knows them as the job's own.
pub async fn name_conflicts(
    t: &Target<'_>,
    desired: &Desired,
    obs: &Observation,
) -> Result<Vec<NameConflict>, Error> {
    let reads = desired
        .apply_order()
        .into_iter()
        .filter_map(|child| match child {
            // Read by observe: its conflicts are in obs.
            Child::ConfigMap(_) | Child::StatefulSet(_) => None,
            Child::ServiceAccount(o) => owner_read(t, o),
            Child::Role(o) => owner_read(t, o),
            Child::RoleBinding(o) => owner_read(t, o),
            Child::Service(o) => owner_read(t, o),
            Child::PodDisruptionBudget(o) => owner_read(t, o),
        });
    let read = futures::future::try_join_all(reads).await?;
    let mut conflicts = obs.name_conflicts.clone();
    conflicts.extend(read.into_iter().flatten());
    Ok(conflicts)
}

/// The read of the owner of the existing object named like `obj`, unless [`Memory`] knows it
/// as the job's own (the controller of `obj`, the job, is its controller too).
fn owner_read<'a, K>(
    t: &Target<'_>,
    obj: &'a K,
) -> Option<BoxFuture<'a, Result<Option<NameConflict>, Error>>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    <K as Resource>::DynamicType: Default,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let key = ChildKey::of(kind, obj.meta());
    let job_uid = controller_uid(obj.meta());
    if job_uid.is_some_and(|uid| t.memory.owned_by(&key, uid)) {
        return None;
    }
    let api: Api<K> = Api::namespaced(t.client.clone(), t.namespace);
    Some(
        async move {
            let found =
                api.get_metadata_opt(&key.name)
                    .await
                    .map_err(|source| Error::ReadOwner {
                        kind,
                        name: key.name.clone(),
                        source,
                    })?;
            Ok(found.and_then(|o| NameConflict::of(kind, &o.metadata, job_uid)))
        }
        .boxed(),
    )
}

/// Creates the repartition topic; a failure's detail is logged here, for the operator's
/// administrator (the status shows only what [`KafkaFailure::shown`] gives).
async fn create_topic(
    t: &Target<'_>,
    obs: &Observation,
    topic: &NewTopic,
) -> Result<(), KafkaFailure> {
    let Some(conn) = obs.connection.as_ref() else {
        let detail = "the source's connection is unknown".to_string();
        return Err(KafkaFailure::Unreachable(detail));
    };
    if let Err(failure) = t.kafka.create_topic(conn, topic).await {
        warn!(topic = %topic.name, bootstrap_servers = %conn.bootstrap_servers,
            error = %failure.detail(), "cannot create the repartition topic");
        return Err(failure);
    }
    info!(topic = %topic.name, partitions = topic.partitions, "created the repartition topic");
    Ok(())
}

/// Server-side apply of one child; the StatefulSet as applied, when it is one (the status
/// reads its generation).
async fn apply_child(
    t: &Target<'_>,
    child: Child<'_>,
) -> Result<Option<k8s_openapi::api::apps::v1::StatefulSet>, Error> {
    use Error as E;
    match child {
        Child::ServiceAccount(o) => {
            drop(ssa(t, o, |name, source| E::ApplyServiceAccount { name, source }).await?)
        }
        Child::Role(o) => drop(ssa(t, o, |name, source| E::ApplyRole { name, source }).await?),
        Child::RoleBinding(o) => {
            drop(ssa(t, o, |name, source| E::ApplyRoleBinding { name, source }).await?)
        }
        Child::ConfigMap(o) => {
            if ssa(t, o, |name, source| E::ApplyConfigMap { name, source })
                .await?
                .is_some()
            {
                // What the next reconcile's observe reads back (the previous assignment).
                let key = ChildKey::of(<ConfigMap as k8s_openapi::Resource>::KIND, o.meta());
                let assignment = o.data.as_ref().and_then(|d| d.get(ASSIGNMENT_KEY)).cloned();
                t.memory.attach(&key, assignment);
            }
        }
        Child::Service(o) => {
            drop(ssa(t, o, |name, source| E::ApplyService { name, source }).await?)
        }
        Child::StatefulSet(o) => {
            return ssa(t, o, |name, source| E::ApplyStatefulSet { name, source }).await;
        }
        Child::PodDisruptionBudget(o) => drop(
            ssa(t, o, |name, source| E::ApplyPodDisruptionBudget {
                name,
                source,
            })
            .await?,
        ),
    }
    Ok(None)
}

/// Server-side apply of one object with the operator's field manager, unless [`Memory`] says it
/// would change nothing (then `None`). `force`: the operator is the only writer of these fields;
/// a `kubectl edit` of them is reverted, not a conflict. `failed` names the action in the error.
async fn ssa<K>(
    t: &Target<'_>,
    obj: &K,
    failed: fn(String, kube::Error) -> Error,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(t.client.clone(), t.namespace);
    let name = obj.meta().name.clone().unwrap_or_default();
    let key = ChildKey::of(<K as k8s_openapi::Resource>::KIND, obj.meta());
    let print = fingerprint(obj);
    if t.memory.unchanged(&key, print, Instant::now()) {
        return Ok(None);
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|source| failed(name, source))?;
    t.memory.applied(key, print, applied.meta(), Instant::now());
    Ok(Some(applied))
}

/// Creates the ConfigMaps of `cms` that are not in `existing`, [`CREATE_CONCURRENCY`] at a
/// time. An AlreadyExists means a worker (or another reconcile) was first, which is fine.
async fn create_missing(
    t: &Target<'_>,
    cms: &[ConfigMap],
    existing: &BTreeSet<String>,
) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.namespace);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    let mut creates = Vec::new();
    for cm in cms {
        let name = cm.metadata.name.clone().unwrap_or_default();
        if !existing.contains(&name) {
            creates.push(create_one(&api, &pp, cm, name));
        }
    }
    let mut creates = futures::stream::iter(creates).buffer_unordered(CREATE_CONCURRENCY);
    while let Some(created) = creates.next().await {
        created?;
    }
    Ok(())
}

async fn create_one(
    api: &Api<ConfigMap>,
    pp: &PostParams,
    cm: &ConfigMap,
    name: String,
) -> Result<(), Error> {
    match api.create(pp, cm).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::CreateCheckpoint { name, source }),
    }
}
