//! The observe step's reads of the API server, apart from the checkpoints: the source's
//! credentials Secret (and the keys of it the workers would refuse), the job ConfigMap (the previous assignment) and the StatefulSet. Reads
//! only. A job ConfigMap or StatefulSet that is not the job's own is a [`NameConflict`]: its
//! content is not used.

use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use weir_crds::assignment::Assignment;
use weir_crds::{names, FieldError, StreamJob};

use crate::error::Error;
use crate::memory::{ChildKey, Memory};
use crate::observation::{KafkaConnection, NameConflict};
use crate::secrets::{secret_values, Resolved};

fn namespace(job: &StreamJob) -> String {
    job.metadata.namespace.clone().unwrap_or_default()
}

fn name(job: &StreamJob) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

/// How to reach the source ([`source_access`]), for a step that needs only that (the cleanup of
/// a deleted job).
pub async fn connection(
    client: &Client,
    job: &StreamJob,
) -> Result<Resolved<KafkaConnection>, Error> {
    Ok(source_access(client, job).await?.0)
}

/// How to reach the source: the spec's `properties`, overlaid with the keys of the credentials
/// Secret (read through the API; values never logged), keeping only the connection and
/// authentication properties the operator's own clients may use
/// (`weir_crds::properties::OPERATOR_ALLOWED`: a job's `debug`, `*.location` or plugin settings
/// never act inside the operator, and jobs that differ only in worker settings share clients).
/// [`Resolved::MissingSecret`] when the referenced Secret does not exist: the user must create
/// it, so it is reported as a status (BrokerUnreachable), not retried as an error.
///
/// And the Secret's keys that weir refuses for the clients it serves in the workers, each
/// naming the Secret and the key ([`weir_crds::properties::refused_secret_keys`]): they never
/// reach the operator's own clients, but the workers would refuse the Secret at startup.
pub async fn source_access(
    client: &Client,
    job: &StreamJob,
) -> Result<(Resolved<KafkaConnection>, Vec<FieldError>), Error> {
    let kafka = &job.spec.source.kafka;
    let mut properties = kafka.properties.clone();
    let mut refused_keys = Vec::new();
    if let Some(creds) = &kafka.credentials {
        let field = "spec.source.kafka.credentials";
        match secret_values(client, &namespace(job), &creds.secret_name, field).await? {
            Resolved::Ready(values) => {
                let roles = weir_crds::properties::source_secret_roles(&job.spec);
                refused_keys = weir_crds::properties::refused_secret_keys(
                    &creds.secret_name,
                    field,
                    values.keys(),
                    &roles,
                );
                properties.extend(values);
            }
            Resolved::MissingSecret { message } => {
                return Ok((Resolved::MissingSecret { message }, Vec::new()))
            }
        }
    }
    let connection = KafkaConnection {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        properties: weir_crds::properties::for_operator(&properties),
    };
    Ok((Resolved::Ready(connection), refused_keys))
}

/// `found` when it is the job's own; else the conflict it makes.
fn own<K>(found: Option<K>, job: &StreamJob) -> Result<Option<K>, NameConflict>
where
    K: k8s_openapi::Resource + kube::Resource,
{
    let uid = job.metadata.uid.as_deref();
    match found {
        Some(o) => match NameConflict::of(<K as k8s_openapi::Resource>::KIND, o.meta(), uid) {
            Some(conflict) => Err(conflict),
            None => Ok(Some(o)),
        },
        None => Ok(None),
    }
}

/// The assignment in the job ConfigMap, if it exists, is the job's own and parses (one that
/// does not parse is logged and ignored: the next assignment then starts above the
/// checkpoints' epochs), and the repartition topic it names (the job's own ConfigMap naming it
/// is what shows the topic is the job's, `weir_crds::topics::Claim`); or the conflict a
/// ConfigMap of that name that is not the job's makes. Read back from `memory` while the
/// operator's last apply of the ConfigMap, with the job as its owner, is remembered (nobody
/// changed it since: [`Memory::remembered`]), else from the API server.
pub async fn previous_assignment(
    client: &Client,
    memory: &Memory,
    job: &StreamJob,
) -> Result<Result<(Option<Assignment>, Option<String>), NameConflict>, Error> {
    let ns = namespace(job);
    let config_name = names::config_map_name(&name(job));
    let key = ChildKey {
        kind: <ConfigMap as k8s_openapi::Resource>::KIND,
        namespace: ns.clone(),
        name: config_name.clone(),
    };
    let uid = job.metadata.uid.as_deref();
    let remembered = memory
        .remembered(&key, Instant::now())
        .filter(|r| uid.is_some() && r.controller.as_deref() == uid);
    let text = match remembered {
        Some(r) => Some(r.data),
        None => {
            let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let found = config_maps.get_opt(&config_name).await.map_err(|source| {
                Error::ReadJobConfigMap {
                    name: config_name.clone(),
                    source,
                }
            })?;
            match own(found, job) {
                Ok(cm) => cm
                    .and_then(|cm| cm.data)
                    .and_then(|d| d.get(names::ASSIGNMENT_KEY).cloned()),
                Err(conflict) => return Ok(Err(conflict)),
            }
        }
    };
    let assignment = text.and_then(|text| match serde_json::from_str::<Assignment>(&text) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(configmap = %config_name, error = %e, "unreadable assignment");
            None
        }
    });
    let claimed = assignment
        .as_ref()
        .and_then(|a| a.merge.as_ref())
        .map(|m| m.topic.clone());
    Ok(Ok((assignment, claimed)))
}

/// The job's StatefulSet, if it exists and is the job's own; or the conflict one of that name
/// that is not makes.
pub async fn stateful_set(
    client: &Client,
    job: &StreamJob,
) -> Result<Result<Option<StatefulSet>, NameConflict>, Error> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace(job));
    let sts_name = names::worker_name(&name(job));
    let found = statefulsets
        .get_opt(&sts_name)
        .await
        .map_err(|source| Error::ReadStatefulSet {
            name: sts_name,
            source,
        })?;
    Ok(own(found, job))
}

/// A suspended job: how many of its worker pods exist, terminating ones included (metadata
/// only, by the job's selector); it reports `Suspending` until none is left. `None` (and no
/// request) for a job that is not suspended.
pub async fn suspended_worker_pods(
    client: &Client,
    job: &StreamJob,
) -> Result<Option<usize>, Error> {
    if !job.spec.suspend {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace(job));
    let selector = names::selector_string(&name(job));
    let listed = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListWorkerPods {
            job: name(job),
            source,
        })?;
    Ok(Some(listed.items.len()))
}
