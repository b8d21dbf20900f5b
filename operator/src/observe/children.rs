//! The observe step's reads of the API server, apart from the checkpoints: the source's
//! credentials Secret, the job ConfigMap (the previous assignment) and the StatefulSet. Reads
//! only.

use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use weir_crds::assignment::Assignment;
use weir_crds::{names, StreamJob};

use crate::error::Error;
use crate::memory::{ChildKey, Memory};
use crate::observation::KafkaConnection;
use crate::secrets::{secret_values, Resolved};

fn namespace(job: &StreamJob) -> String {
    job.metadata.namespace.clone().unwrap_or_default()
}

fn name(job: &StreamJob) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

/// How to reach the source: the spec's `properties`, overlaid with the keys of the credentials
/// Secret (read through the API; values never logged), keeping only the connection and
/// authentication properties the operator's own clients may use
/// (`weir_crds::properties::OPERATOR_ALLOWED`: a job's `debug`, `*.location` or plugin settings
/// never act inside the operator, and jobs that differ only in worker settings share clients).
/// [`Resolved::MissingSecret`] when the referenced Secret does not exist: the user must create
/// it, so it is reported as a status (BrokerUnreachable), not retried as an error.
pub async fn connection(
    client: &Client,
    job: &StreamJob,
) -> Result<Resolved<KafkaConnection>, Error> {
    let kafka = &job.spec.source.kafka;
    let mut properties = kafka.properties.clone();
    if let Some(creds) = &kafka.credentials {
        let field = "spec.source.kafka.credentials";
        match secret_values(client, &namespace(job), &creds.secret_name, field).await? {
            Resolved::Ready(values) => properties.extend(values),
            Resolved::MissingSecret { message } => return Ok(Resolved::MissingSecret { message }),
        }
    }
    Ok(Resolved::Ready(KafkaConnection {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        properties: weir_crds::properties::for_operator(&properties),
    }))
}

/// The assignment in the job ConfigMap, if it exists and parses (one that does not is logged
/// and ignored: the next assignment then starts above the checkpoints' epochs); and the
/// repartition topic it names if the job owns that ConfigMap (the job's UID in its owner
/// references): only then does it show the topic is the job's (`weir_crds::topics::Claim`).
/// Read back from `memory` while the operator's last apply of the ConfigMap is remembered
/// (nobody changed it since: [`Memory::remembered`]), else from the API server.
pub async fn previous_assignment(
    client: &Client,
    memory: &Memory,
    job: &StreamJob,
) -> Result<(Option<Assignment>, Option<String>), Error> {
    let ns = namespace(job);
    let config_name = names::config_map_name(&name(job));
    let key = ChildKey {
        kind: <ConfigMap as k8s_openapi::Resource>::KIND,
        namespace: ns.clone(),
        name: config_name.clone(),
    };
    let (text, owned) = match memory.remembered(&key, Instant::now()) {
        Some(r) => {
            let owned = job
                .metadata
                .uid
                .as_deref()
                .is_some_and(|uid| r.owners.iter().any(|o| o == uid));
            (Some(r.data), owned)
        }
        None => {
            let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let Some(cm) = config_maps.get_opt(&config_name).await.map_err(|source| {
                Error::ReadJobConfigMap {
                    name: config_name.clone(),
                    source,
                }
            })?
            else {
                return Ok((None, None));
            };
            let owned = owned_by(&cm.metadata, job);
            (
                cm.data.and_then(|d| d.get(names::ASSIGNMENT_KEY).cloned()),
                owned,
            )
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
        .filter(|_| owned)
        .and_then(|a| a.merge.as_ref())
        .map(|m| m.topic.clone());
    Ok((assignment, claimed))
}

/// Whether `job` (by UID) is among the owners of the object `meta` describes.
pub fn owned_by(meta: &kube::api::ObjectMeta, job: &StreamJob) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return false;
    };
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

/// The job's StatefulSet, if it exists.
pub async fn stateful_set(client: &Client, job: &StreamJob) -> Result<Option<StatefulSet>, Error> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace(job));
    let sts_name = names::worker_name(&name(job));
    statefulsets
        .get_opt(&sts_name)
        .await
        .map_err(|source| Error::ReadStatefulSet {
            name: sts_name,
            source,
        })
}
